//! Consent from the configuration: a default level and per-meter levels. The registry with
//! history replaces it behind the same [`Consent`] trait.

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
            .map(|(id, level)| (id.into_boxed_slice(), level))
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
        self.meters.get(meter).copied().unwrap_or(self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_meters_have_their_own_level_and_the_rest_the_default() {
        let levels = MeterLevels::new(Level::Billing, [(b"E0044".to_vec(), Level::Live)]);
        let now = Timestamp::UNIX_EPOCH;
        assert_eq!(levels.level(b"E0044", now), Level::Live);
        assert_eq!(levels.level(b"E0045", now), Level::Billing);
    }
}
