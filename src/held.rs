//! What the rights commands ask of a store and what it answers: a [`Purge`] to carry out, what
//! it [`Purged`], and each record it holds, read back as [`Held`]. Every store's own code
//! speaks it (each sink kind's, and the outbox's for what waits); `rights` only dispatches, so
//! neither depends on the other.

use jiff::Timestamp;
use p1guard_conduct::Granularity;
use serde::Serialize;

/// What to erase from one store: the records of some meters (as the store names them), of
/// some granularities, dated up to an instant, except billing records still inside the
/// fiscal retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purge {
    /// The meter's names in this store: its pseudonym, or on a raw-identity store its id.
    pub meters: Vec<String>,
    /// The granularities to erase.
    pub granularities: Vec<Granularity>,
    /// Only records dated at or before this instant; every record if `None`.
    pub dated_until: Option<Timestamp>,
    /// Billing records dated at or after this instant are kept (fiscal retention).
    pub keep_billing_from: Option<Timestamp>,
}

impl Purge {
    /// Whether a record of `granularity` dated `time` is to be erased.
    pub fn covers(&self, granularity: Granularity, time: Timestamp) -> bool {
        self.granularities.contains(&granularity)
            && self.dated_until.is_none_or(|until| time <= until)
            && !self.keeps(granularity, time)
    }

    /// For stores that erase with a query: the Unix seconds up to which records of
    /// `granularity` are covered, and from which they are kept (the fiscal exception; never
    /// for other granularities).
    pub fn seconds(&self, granularity: Granularity) -> (i64, i64) {
        let until = self.dated_until.map_or(i64::MAX, |t| t.as_second());
        let kept_from = match granularity {
            Granularity::Billing => self.keep_billing_from.map_or(i64::MAX, |t| t.as_second()),
            _ => i64::MAX,
        };
        (until, kept_from)
    }

    /// Whether a record of `granularity` dated `time` is kept by the fiscal exception.
    pub fn keeps(&self, granularity: Granularity, time: Timestamp) -> bool {
        granularity == Granularity::Billing
            && self.granularities.contains(&granularity)
            && self.keep_billing_from.is_some_and(|from| time >= from)
            && self.dated_until.is_none_or(|until| time <= until)
    }
}

/// What one store did with a purge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Purged {
    /// Records (or retained messages, or series) erased.
    pub erased: u64,
    /// Records kept because the law requires them (billing inside the fiscal retention).
    pub kept: u64,
    /// What the store cannot do, or did differently (a store that erases whole series).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Purged {
    /// Adds what another purge of the same store did; the first note stands.
    pub fn add(&mut self, other: Purged) {
        self.erased += other.erased;
        self.kept += other.kept;
        self.note = self.note.take().or(other.note);
    }
}

/// One record read back from a store.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    /// The meter as the store names it.
    pub meter: String,
    /// Its granularity.
    pub granularity: Granularity,
    /// The record's instant.
    pub time: Timestamp,
    /// The record as architecture.md's record JSON (as far as the store keeps it).
    pub record: serde_json::Value,
}

/// A record's fields as a store that keeps them in columns reads them back: put together as
/// the record JSON (architecture.md) here, for every such store alike.
pub struct Columns<'a> {
    /// The meter as the store names it.
    pub meter: String,
    /// Its granularity.
    pub granularity: Granularity,
    /// Its kind's name.
    pub kind: &'a str,
    /// The record's instant.
    pub time: Timestamp,
    /// Measured or interpolated, where the store kept it.
    pub quality: Option<&'a str>,
    /// Whether the receiver's clock dated it (the record JSON says `clock` only then).
    pub receiver_clock: bool,
    /// The `values` object.
    pub values: serde_json::Map<String, serde_json::Value>,
}

impl Columns<'_> {
    /// The record read back.
    pub fn held(self) -> Held {
        let mut record = serde_json::Map::new();
        record.insert("meter".into(), self.meter.clone().into());
        record.insert("granularity".into(), self.granularity.name().into());
        record.insert("kind".into(), self.kind.into());
        record.insert("time".into(), self.time.to_string().into());
        if let Some(quality) = self.quality {
            record.insert("quality".into(), quality.into());
        }
        if self.receiver_clock {
            record.insert("clock".into(), "receiver".into());
        }
        record.insert("values".into(), self.values.into());
        Held {
            meter: self.meter,
            granularity: self.granularity,
            time: self.time,
            record: record.into(),
        }
    }
}
