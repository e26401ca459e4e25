//! Consent from the configuration: a default level and per-meter levels. The registry with
//! history replaces it behind the same [`Consent`] trait.
//!
//! Listed ids are normalised as the reducer normalises the ids telegrams send (trimmed,
//! upper-cased): `a5` written for `A5`, or lower-cased on its way through an environment
//! override, must not quietly give a meter the default level.

use std::collections::HashMap;

use jiff::Timestamp;
use p1guard_conduct::{Consent, Level, normalise_equipment_id};

/// Each meter's level, constant over time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterLevels {
    default: Level,
    meters: HashMap<Box<[u8]>, Level>,
}

impl MeterLevels {
    /// `default` for every meter not in `meters` (equipment id as sent -> level). An id that
    /// normalises to nothing (empty, control bytes) can match no telegram and is left out.
    pub fn new(default: Level, meters: impl IntoIterator<Item = (Vec<u8>, Level)>) -> MeterLevels {
        let mut normalised = Vec::new();
        let meters = meters
            .into_iter()
            .filter_map(|(id, level)| {
                let id = normalise_equipment_id(&id, &mut normalised)?;
                Some((Box::from(id), level))
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
    /// `meter` is normalised: the reducer only asks about normalised ids.
    fn level(&self, meter: &[u8], _at: Timestamp) -> Level {
        self.meters.get(meter).copied().unwrap_or(self.default)
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
    fn listed_ids_are_normalised_as_telegram_ids_are() {
        let levels = MeterLevels::new(
            Level::Billing,
            [
                (b" 4b38a5 ".to_vec(), Level::None),
                (b"45\x0030".to_vec(), Level::Live),
            ],
        );
        let now = Timestamp::UNIX_EPOCH;
        assert_eq!(levels.level(b"4B38A5", now), Level::None);
        assert_eq!(
            levels.listed(),
            1,
            "an id with a control byte matches nothing"
        );
    }
}
