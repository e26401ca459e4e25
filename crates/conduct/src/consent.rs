//! Where consent comes from: a lookup `(meter, instant) -> level`, so that a change takes
//! effect exactly at its effective time, also when old data is replayed later.

use jiff::Timestamp;

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
}
