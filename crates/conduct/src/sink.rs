//! Fan-out: what each destination may receive. A record reaches a sink only if the consent
//! for the purpose the sink serves allowed it and it is at or under the sink's granularity
//! ceiling, and it names its meter the way the sink's identity allows; there is no other way
//! to get a record out of this crate.

use std::fmt;
use std::sync::Arc;

use crate::consent::PurposeId;
use crate::identity::Identity;
use crate::level::Granularity;
use crate::record::Record;

/// A sink's ceiling, identity and purpose, checked together: raw meter ids only go to `live`
/// sinks, which are the household's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SinkPolicy {
    ceiling: Granularity,
    identity: Identity,
    purpose: PurposeId,
}

/// A sink configuration the code of conduct does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Raw identity was asked for on a sink that is not the owner's own.
    #[error(
        "raw meter identity is only allowed on sinks whose max_granularity is live (the owner's own), not {0}"
    )]
    RawIdentityBelowLive(Granularity),
}

impl SinkPolicy {
    /// A policy for the `default` purpose, if the code of conduct allows it.
    pub fn new(ceiling: Granularity, identity: Identity) -> Result<SinkPolicy, PolicyError> {
        if identity == Identity::Raw && ceiling != Granularity::Live {
            return Err(PolicyError::RawIdentityBelowLive(ceiling));
        }
        Ok(SinkPolicy {
            ceiling,
            identity,
            purpose: PurposeId::DEFAULT,
        })
    }

    /// The same policy for a sink serving `purpose`.
    pub fn serving(self, purpose: PurposeId) -> SinkPolicy {
        SinkPolicy { purpose, ..self }
    }

    /// The purpose the sink serves.
    pub fn purpose(&self) -> PurposeId {
        self.purpose
    }

    /// The finest granularity the sink receives.
    pub fn ceiling(&self) -> Granularity {
        self.ceiling
    }

    /// How the sink names meters.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// The record as this sink may see it, named as the sink names meters, or `None` if the
    /// consent for the sink's purpose did not allow it or it is finer than the ceiling. What
    /// a sink's queue holds: a pseudonymous sink's copy carries no raw id at all.
    pub fn admit(&self, record: &Record) -> Option<SinkRecord> {
        if record.granularity > self.ceiling || !record.purposes.contains(self.purpose) {
            return None;
        }
        let meter = match self.identity {
            Identity::Raw => MeterName::Raw(Arc::clone(record.meter.raw_shared())),
            Identity::Pseudonym => MeterName::Pseudonym(record.meter.pseudonym()),
        };
        Some(record.named(meter))
    }
}

/// A record admitted to one sink: at or under its ceiling, its meter named as the sink may
/// name it. Serialises to architecture.md's record JSON.
pub type SinkRecord = Record<MeterName>;

/// A meter's name on one sink.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum MeterName {
    /// The equipment id as sent (hex-encoded on Dutch meters): owner (`live`) sinks only.
    Raw(Arc<[u8]>),
    /// The HMAC pseudonym.
    Pseudonym(crate::identity::Pseudonym),
}

impl fmt::Display for MeterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Ids are ASCII as sent (hex on Dutch meters): written at once when they are.
            MeterName::Raw(raw) => match std::str::from_utf8(raw) {
                Ok(text) if text.is_ascii() => f.write_str(text),
                _ => raw
                    .iter()
                    .try_for_each(|&b| fmt::Write::write_char(f, char::from(b))),
            },
            MeterName::Pseudonym(p) => p.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;

    use super::*;
    use crate::identity::{IdentityKey, MeterRef};
    use crate::record::{Clock, Kind, Quality, Registers, Values};

    fn record(granularity: Granularity) -> Record {
        Record {
            meter: MeterRef::new(
                std::sync::Arc::from(&b"4B384547303034303436333935353037"[..]),
                &IdentityKey::from_bytes([9; 32]),
            ),
            granularity,
            kind: Kind::Electricity,
            time: "2026-03-29T01:00:00Z".parse::<Timestamp>().unwrap(),
            quality: Quality::Measured,
            clock: Clock::Meter,
            values: Values::Electricity {
                registers: Registers {
                    import: [None, Some(1_234_567), Some(2_345_678)],
                    export: [None, Some(0), Some(12_500)],
                },
                live: None,
            },
            purposes: crate::consent::PurposeSet::ALL,
        }
    }

    #[test]
    fn raw_identity_needs_a_live_ceiling() {
        assert!(SinkPolicy::new(Granularity::Live, Identity::Raw).is_ok());
        assert_eq!(
            SinkPolicy::new(Granularity::Daily, Identity::Raw),
            Err(PolicyError::RawIdentityBelowLive(Granularity::Daily))
        );
    }

    #[test]
    fn records_finer_than_the_ceiling_are_not_admitted() {
        let policy = SinkPolicy::new(Granularity::Daily, Identity::Pseudonym).unwrap();
        assert!(policy.admit(&record(Granularity::Billing)).is_some());
        assert!(policy.admit(&record(Granularity::Daily)).is_some());
        assert!(policy.admit(&record(Granularity::QuarterHour)).is_none());
        assert!(policy.admit(&record(Granularity::Live)).is_none());
    }

    fn json_of(record: &SinkRecord) -> String {
        let mut out = Vec::new();
        record.write_json(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn json_follows_the_record_contract() {
        let policy = SinkPolicy::new(Granularity::QuarterHour, Identity::Pseudonym).unwrap();
        let record = record(Granularity::QuarterHour);
        let json = json_of(&policy.admit(&record).unwrap());
        let pseudonym =
            IdentityKey::from_bytes([9; 32]).pseudonym(b"4B384547303034303436333935353037");
        assert_eq!(
            json,
            format!(
                r#"{{"meter":"{pseudonym}","granularity":"quarter_hour","kind":"electricity","time":"2026-03-29T01:00:00Z","quality":"measured","values":{{"energy_import_t1_kwh":1234.567,"energy_import_t2_kwh":2345.678,"energy_export_t1_kwh":0.0,"energy_export_t2_kwh":12.5}}}}"#
            )
        );
        let owner = SinkPolicy::new(Granularity::Live, Identity::Raw).unwrap();
        let json = json_of(&owner.admit(&record).unwrap());
        assert!(json.starts_with(r#"{"meter":"4B384547303034303436333935353037","#));
    }
}
