//! Consent from the configuration: a default level and per-meter levels. The registry with
//! history replaces it behind the same [`Consent`] trait.
//!
//! Ids are matched without regard to ASCII case: Dutch meters send their id hex-encoded, and
//! `a5` written for `A5` (or lower-cased on its way through an environment override) must not
//! quietly give a meter the default level.

use std::collections::HashMap;

use jiff::Timestamp;
use p1guard_conduct::{Consent, Level};

/// Each meter's level, constant over time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterLevels {
    default: Level,
    meters: HashMap<Box<[u8]>, Level>,
}

impl MeterLevels {
    /// `default` for every meter not in `meters` (equipment id as sent -> level).
    pub fn new(default: Level, meters: impl IntoIterator<Item = (Vec<u8>, Level)>) -> MeterLevels {
        let meters = meters
            .into_iter()
            .map(|(mut id, level)| {
                id.make_ascii_uppercase();
                (id.into_boxed_slice(), level)
            })
            .collect();
        MeterLevels { default, meters }
    }

    /// The level of meters not listed.
    pub fn default_level(&self) -> Level {
        self.default
    }

    /// How many meters have their own level.
    pub fn listed(&self) -> usize {
        self.meters.len()
    }
}

impl Consent for MeterLevels {
    fn level(&self, meter: &[u8], _at: Timestamp) -> Level {
        if self.meters.is_empty() {
            return self.default;
        }
        let mut upper = [0u8; 128];
        let level = match upper.get_mut(..meter.len()) {
            Some(upper) => {
                upper.copy_from_slice(meter);
                upper.make_ascii_uppercase();
                self.meters.get(&*upper)
            }
            None => self.meters.get(&*meter.to_ascii_uppercase()),
        };
        level.copied().unwrap_or(self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_meters_have_their_own_level_and_the_rest_the_default() {
        let levels = MeterLevels::new(Level::Billing, [(b"4530303434".to_vec(), Level::Live)]);
        let now = Timestamp::UNIX_EPOCH;
        assert_eq!(levels.level(b"4530303434", now), Level::Live);
        assert_eq!(levels.level(b"4530303435", now), Level::Billing);
    }

    #[test]
    fn ids_match_whatever_their_case() {
        let levels = MeterLevels::new(Level::Billing, [(b"4b38a5".to_vec(), Level::None)]);
        let now = Timestamp::UNIX_EPOCH;
        assert_eq!(levels.level(b"4B38A5", now), Level::None);
        assert_eq!(levels.level(b"4b38A5", now), Level::None);
        let long = vec![b'a'; 300];
        let levels = MeterLevels::new(Level::Billing, [(long.clone(), Level::Daily)]);
        assert_eq!(levels.level(&long.to_ascii_uppercase(), now), Level::Daily);
    }
}
