//! Where consent comes from: a lookup `(meter, instant) -> level`, so that a change takes
//! effect exactly at its effective time, also when old data is replayed later.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use jiff::Timestamp;

use crate::identity::normalise_equipment_id;
use crate::level::Level;

/// The consent in force for a meter at an instant. `meter` is the equipment identifier as
/// [`normalise_equipment_id`](crate::normalise_equipment_id) leaves it.
pub trait Consent {
    /// The level in force for `meter` at `at`.
    fn level(&self, meter: &[u8], at: Timestamp) -> Level;
}

/// One level for every meter, changing at given instants: the shape of a single household's
/// consent history, and of `p1guard replay --consent L --consent-change T=L`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    initial: Level,
    /// Sorted by time; a change applies from its instant on (inclusive).
    changes: Vec<(Timestamp, Level)>,
}

impl Timeline {
    /// `initial` until the first change, then each change from its effective instant on.
    pub fn new(initial: Level, mut changes: Vec<(Timestamp, Level)>) -> Timeline {
        changes.sort_by_key(|(at, _)| *at); // stable: of two changes at one instant, the later listed wins
        Timeline { initial, changes }
    }

    /// The same level always.
    pub fn constant(level: Level) -> Timeline {
        Timeline::new(level, Vec::new())
    }

    /// The level at `at`.
    pub fn at(&self, at: Timestamp) -> Level {
        let in_force = self.changes.partition_point(|(from, _)| *from <= at);
        in_force
            .checked_sub(1)
            .map_or(self.initial, |i| self.changes[i].1)
    }
}

impl Consent for Timeline {
    fn level(&self, _meter: &[u8], at: Timestamp) -> Level {
        self.at(at)
    }
}

/// Every meter's consent over time, shared: the reducer asks it on the hot path while whoever
/// keeps consent (the configuration, a registry) changes it in place, so a running daemon sees
/// a change without a restart. Clones share one table. Meters without a timeline of their own
/// follow the default one.
#[derive(Debug, Clone)]
pub struct ConsentTable {
    shared: Arc<RwLock<Table>>,
}

#[derive(Debug)]
struct Table {
    default: Timeline,
    /// By normalised equipment id.
    meters: HashMap<Box<[u8]>, Timeline>,
}

impl ConsentTable {
    /// `default` for every meter until one is given a timeline of its own.
    pub fn new(default: Timeline) -> ConsentTable {
        let table = Table {
            default,
            meters: HashMap::new(),
        };
        ConsentTable {
            shared: Arc::new(RwLock::new(table)),
        }
    }

    /// Gives the meter `id` (as sent or printed, any case) its own timeline, replacing any it
    /// had. `false` for an id that names no meter (empty, control bytes).
    pub fn set(&self, id: &[u8], timeline: Timeline) -> bool {
        let mut normalised = Vec::new();
        let Some(id) = normalise_equipment_id(id, &mut normalised) else {
            return false;
        };
        let mut table = self.shared.write().unwrap_or_else(PoisonError::into_inner);
        table.meters.insert(Box::from(id), timeline);
        true
    }

    /// The level of meters without a timeline of their own, at `at`.
    pub fn default_at(&self, at: Timestamp) -> Level {
        let table = self.shared.read().unwrap_or_else(PoisonError::into_inner);
        table.default.at(at)
    }

    /// How many meters have a timeline of their own.
    pub fn listed(&self) -> usize {
        let table = self.shared.read().unwrap_or_else(PoisonError::into_inner);
        table.meters.len()
    }
}

impl Consent for ConsentTable {
    fn level(&self, meter: &[u8], at: Timestamp) -> Level {
        // A writer that panicked left a whole table behind (inserts are single operations).
        let table = self.shared.read().unwrap_or_else(PoisonError::into_inner);
        table.meters.get(meter).unwrap_or(&table.default).at(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_takes_effect_exactly_at_its_instant() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let timeline = Timeline::new(
            Level::Daily,
            vec![
                (t("2026-03-29T12:00:00Z"), Level::None),
                (t("2026-03-29T06:00:00Z"), Level::Live),
            ],
        );
        assert_eq!(timeline.at(t("2026-03-29T05:59:59Z")), Level::Daily);
        assert_eq!(timeline.at(t("2026-03-29T06:00:00Z")), Level::Live);
        assert_eq!(timeline.at(t("2026-03-29T11:59:59Z")), Level::Live);
        assert_eq!(timeline.at(t("2026-03-29T12:00:00Z")), Level::None);
    }

    #[test]
    fn each_listed_meter_has_its_timeline_and_the_rest_the_default() {
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        let table = ConsentTable::new(Timeline::constant(Level::Billing));
        let reader = table.clone();
        assert!(table.set(b" 4b38a5 ", Timeline::constant(Level::None)));
        assert!(!table.set(b"45\x0030", Timeline::constant(Level::Live)));
        let withdrawn = Timeline::new(Level::Live, vec![(t("2026-06-01T10:00:00Z"), Level::Daily)]);
        table.set(b"4530", withdrawn);

        let now = t("2026-06-01T12:00:00Z");
        assert_eq!(
            reader.level(b"4B38A5", now),
            Level::None,
            "normalised, and shared"
        );
        assert_eq!(
            reader.level(b"4530", t("2026-06-01T09:59:59Z")),
            Level::Live
        );
        assert_eq!(reader.level(b"4530", now), Level::Daily);
        assert_eq!(reader.level(b"4531", now), Level::Billing);
        assert_eq!(
            (reader.listed(), reader.default_at(now)),
            (2, Level::Billing)
        );
    }
}
