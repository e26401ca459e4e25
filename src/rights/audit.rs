//! The audit: every store that can be read back, checked record by record against the
//! registry, the sink's ceiling, the retention and the erasure ledger.

use std::collections::HashMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use p1guard_conduct::{
    CAPTURE_TOLERANCE_SECONDS, ConsentTable, Granularity, Identity, IdentityKey, Level,
    MAX_CLOCK_SKEW_SECONDS, MBUS_LIVE_MAX_AGE_SECONDS, PurposeId, normalise_equipment_id,
};
use serde::Serialize;

use super::store::Store;
use super::{erased_through, withdrawn_through};
use crate::registry::Erasure;
use crate::sinks::SinkConfig;

/// Retention is enforced by housekeeping on a timer: a record this much past its retention
/// is not yet a violation.
const HOUSEKEEPING_SLACK: Duration = Duration::from_secs(2 * 3600);

/// Records are never dated further ahead than a meter's clock is trusted.
const FUTURE_TOLERANCE: SignedDuration = SignedDuration::from_secs(MAX_CLOCK_SKEW_SECONDS);

/// A live M-Bus record is dated by its capture but judged at the telegram that carried it:
/// from a little before the capture (the two clocks drift) to the oldest a capture may be to
/// make a live record. Consent at any instant of that span may have allowed it.
const MBUS_JUDGED_FROM: SignedDuration = SignedDuration::from_secs(-CAPTURE_TOLERANCE_SECONDS);
const MBUS_JUDGED_UNTIL: SignedDuration = SignedDuration::from_secs(MBUS_LIVE_MAX_AGE_SECONDS);

/// One record a store should not hold, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The sink's name.
    pub store: String,
    /// The meter as the store names it; on a pseudonymous store, a raw id is shown by its
    /// pseudonym only.
    pub meter: String,
    /// The record's granularity.
    pub granularity: String,
    /// The record's kind.
    pub kind: String,
    /// The record's instant.
    pub time: Timestamp,
    /// What is wrong.
    pub reason: String,
}

/// What one store held, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checked {
    /// The sink's name.
    pub store: String,
    /// Records read back; `None` for a store that cannot be read back.
    pub records: Option<u64>,
    /// Of them, violations.
    pub violations: u64,
}

/// What the registry says, for the audit.
pub struct Registered<'a> {
    /// Consent as loaded from the configuration and the registry.
    pub consent: &'a ConsentTable,
    /// Every meter the registry or the configuration names.
    pub meters: &'a [String],
    /// The erasure ledger.
    pub erasures: &'a [Erasure],
    /// Each meter's consent changes ([`Registry::consent_instants`]), when a withdrawal
    /// purges the stores (`purge_on_withdrawal`); `None` when it does not.
    ///
    /// [`Registry::consent_instants`]: crate::registry::Registry::consent_instants
    pub consent_changes: Option<&'a HashMap<String, Vec<Timestamp>>>,
}

/// Checks every store of `sinks`; returns the violations and what each store held.
pub async fn audit(
    sinks: &[SinkConfig],
    key: &IdentityKey,
    registered: &Registered<'_>,
    now: Timestamp,
) -> anyhow::Result<(Vec<Violation>, Vec<Checked>)> {
    let Registered {
        consent,
        meters: registry_meters,
        erasures,
        consent_changes,
    } = *registered;
    // Pseudonymous stores name meters by pseudonym: the registry's ids, mapped back.
    let ids: HashMap<String, &str> = registry_meters
        .iter()
        .map(|id| (key.pseudonym(id.as_bytes()).to_string(), id.as_str()))
        .collect();
    let mut erased: HashMap<&str, Timestamp> = HashMap::new();
    for erasure in erasures {
        let at = erased
            .entry(erasure.pseudonym.as_str())
            .or_insert(erasure.requested_at);
        *at = (*at).max(erasure.requested_at);
    }
    let mut violations = Vec::new();
    let mut checked = Vec::new();
    let mut normalised = Vec::new();
    for config in sinks {
        let mut store = Store::open(config).await?;
        let held = store.read(None).await?;
        let retention =
            Granularity::ALL.map(|g| store.retention(g).saturating_add(HOUSEKEEPING_SLACK));
        let fiscal_from = store.fiscal_cutoff(now);
        store.close().await;
        let Some(held) = held else {
            checked.push(Checked {
                store: config.name.clone(),
                records: None,
                violations: 0,
            });
            continue;
        };
        let before = violations.len();
        let purpose = config.policy.purpose();
        // Per meter, what lowered consent for this purpose purged, and through when.
        let mut withdrawn: HashMap<String, [Option<Timestamp>; 4]> = HashMap::new();
        for record in &held {
            let mut problems = Vec::new();
            let pseudonymous = ids.contains_key(&record.meter) || is_pseudonym(&record.meter);
            // Who: the pseudonym, and the id when the store (raw) or the registry says it.
            let (pseudonym, id) = match config.policy.identity() {
                Identity::Pseudonym => {
                    if !pseudonymous {
                        problems.push("a raw meter id in a pseudonymous store".to_owned());
                    }
                    (
                        record.meter.clone(),
                        ids.get(&record.meter).map(|id| id.to_string()),
                    )
                }
                Identity::Raw => {
                    let id = normalise_equipment_id(record.meter.as_bytes(), &mut normalised)
                        .map(|id| String::from_utf8_lossy(id).into_owned())
                        .unwrap_or_default();
                    (key.pseudonym(id.as_bytes()).to_string(), Some(id))
                }
            };
            let g = record.granularity;
            if g > config.policy.ceiling() {
                problems.push(format!(
                    "finer than the sink's ceiling ({})",
                    config.policy.ceiling()
                ));
            }
            // Erasures and withdrawals alike keep billing inside the fiscal retention.
            let fiscal = g == Granularity::Billing && record.time >= fiscal_from;
            let erased_at = (erased.get(pseudonym.as_str()).copied())
                .filter(|&at| record.time <= erased_through(at) && !fiscal);
            let mbus_live =
                g == Granularity::Live && record.record["kind"].as_str() != Some("electricity");
            let level = match &id {
                Some(id) if mbus_live => mbus_live_level(consent, id, purpose, record.time),
                Some(id) => consent.level(id.as_bytes(), purpose, record.time),
                None => consent.default_level(),
            };
            let withdrawn_at = match (&id, consent_changes) {
                (Some(id), Some(changes)) => withdrawn.entry(id.clone()).or_insert_with(|| {
                    let instants = changes.get(id).map_or(&[][..], Vec::as_slice);
                    withdrawn_through(consent, id, purpose, instants, now)
                })[g as usize]
                    .filter(|&at| record.time <= at && !fiscal),
                _ => None,
            };
            // The table marks what an erasure covers as billing for every purpose, so that it
            // is not stored again: such a record is the ledger's to report, not a consent it
            // may well have had; and one a withdrawal purged is the registry's.
            if let Some(at) = erased_at {
                problems.push(format!("erased on {at} (erasure ledger)"));
            } else if let Some(at) = withdrawn_at {
                problems.push(format!(
                    "purged when consent for purpose {} was lowered on {at} (consent registry)",
                    config.purpose
                ));
            } else if !level.allows(g) {
                problems.push(format!(
                    "consent for purpose {} at that instant was {level}",
                    config.purpose
                ));
            }
            let kept_for =
                SignedDuration::try_from(retention[g as usize]).unwrap_or(SignedDuration::MAX);
            if record.time < now.checked_sub(kept_for).unwrap_or(Timestamp::MIN) {
                problems.push(format!("older than the {g} retention"));
            }
            if record.time > now.checked_add(FUTURE_TOLERANCE).unwrap_or(Timestamp::MAX) {
                problems.push("dated more than a day ahead".to_owned());
            }
            if !problems.is_empty() {
                let meter = match config.policy.identity() {
                    Identity::Pseudonym if !pseudonymous => {
                        format!("pseudonym {}", key.pseudonym(record.meter.as_bytes()))
                    }
                    _ => record.meter.clone(),
                };
                violations.push(Violation {
                    store: config.name.clone(),
                    meter,
                    granularity: g.name().to_owned(),
                    kind: record.record["kind"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    time: record.time,
                    reason: problems.join("; "),
                });
            }
        }
        checked.push(Checked {
            store: config.name.clone(),
            records: Some(held.len() as u64),
            violations: (violations.len() - before) as u64,
        });
    }
    Ok((violations, checked))
}

/// The level a live M-Bus record captured at `captured` was judged by: live if consent
/// allowed it at any instant its telegram may have had, else the level at its capture.
fn mbus_live_level(
    consent: &ConsentTable,
    id: &str,
    purpose: PurposeId,
    captured: Timestamp,
) -> Level {
    let from = captured.checked_add(MBUS_JUDGED_FROM).unwrap_or(captured);
    let until = captured.checked_add(MBUS_JUDGED_UNTIL).unwrap_or(captured);
    let live = Granularity::Live;
    let at_first = consent.level(id.as_bytes(), purpose, from);
    let later = consent.allowed_again(id.as_bytes(), purpose, live, from);
    match later {
        _ if at_first.allows(live) => at_first,
        Some(at) if at <= until => Level::Live,
        _ => consent.level(id.as_bytes(), purpose, captured),
    }
}

/// A pseudonym is 32 lower-case hex digits that do not spell an id: a 16-character id as
/// Dutch meters send it, hex-encoded, is 32 such digits too. (16 random bytes spell printable
/// ASCII about once in nine million; the registry's meters' pseudonyms are known for sure.)
fn is_pseudonym(name: &str) -> bool {
    name.len() == 32
        && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && crate::hex::printable(name.as_bytes()).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_mbus_record_is_judged_at_any_instant_its_telegram_may_have_had() {
        use p1guard_conduct::{Change, Scope};
        let captured: Timestamp = "2026-12-05T23:00:00Z".parse().unwrap();
        let level = |grant_after_capture: i64| {
            let table = ConsentTable::new(Level::Billing, []);
            let from = captured + SignedDuration::from_secs(grant_after_capture);
            let change = Change {
                from,
                level: Level::Live,
                scope: Scope::Every,
            };
            table.add(b"E0012345678901234", change).unwrap();
            mbus_live_level(&table, "E0012345678901234", PurposeId::DEFAULT, captured)
        };
        // Granted live before the capture, or after it but before its telegram may have come.
        assert_eq!(level(-60), Level::Live);
        assert_eq!(level(180), Level::Live);
        assert_eq!(level(3600), Level::Live);
        // Granted only later: no telegram carrying this capture was judged live.
        assert_eq!(level(3601), Level::Billing);
    }

    #[test]
    fn an_id_hex_encoded_to_32_digits_is_no_pseudonym() {
        let key = IdentityKey::from_bytes([7; 32]);
        assert!(is_pseudonym(
            &key.pseudonym(b"E001234567890123").to_string()
        ));
        assert!(!is_pseudonym("45303031323334353637383930313233"));
        assert!(!is_pseudonym("E001234567890123"));
        assert!(!is_pseudonym(&"ab".repeat(17)));
    }
}
