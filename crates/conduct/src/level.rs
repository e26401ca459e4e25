//! Consent levels and record granularities.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How finely a meter's owner allows its data to be read, ordered and cumulative: a meter at
/// `Daily` yields billing and daily records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Nothing: telegrams are only counted.
    None,
    /// Register readings at billing boundaries (no consent needed: contract and law).
    Billing,
    /// + readings at every local midnight (opt-in).
    Daily,
    /// + electricity every 15 minutes, gas, water and heat every hour (explicit opt-in).
    QuarterHour,
    /// + every telegram with its instantaneous values (the household itself).
    Live,
}

/// How fine one record is. Ordered from coarse to fine, like [`Level`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// A reading at a billing boundary.
    Billing,
    /// A reading at a local midnight.
    Daily,
    /// A reading every quarter hour (electricity) or full hour (M-Bus devices).
    QuarterHour,
    /// A telegram as it came.
    Live,
}

impl Granularity {
    /// Every granularity, coarse to fine.
    pub const ALL: [Granularity; 4] = [
        Granularity::Billing,
        Granularity::Daily,
        Granularity::QuarterHour,
        Granularity::Live,
    ];

    /// The name used in records and configuration.
    pub const fn name(self) -> &'static str {
        match self {
            Granularity::Billing => "billing",
            Granularity::Daily => "daily",
            Granularity::QuarterHour => "quarter_hour",
            Granularity::Live => "live",
        }
    }

    /// The consent level that allows records of this granularity.
    pub const fn required_level(self) -> Level {
        match self {
            Granularity::Billing => Level::Billing,
            Granularity::Daily => Level::Daily,
            Granularity::QuarterHour => Level::QuarterHour,
            Granularity::Live => Level::Live,
        }
    }
}

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 5] = [
        Level::None,
        Level::Billing,
        Level::Daily,
        Level::QuarterHour,
        Level::Live,
    ];

    /// Whether a meter at this level may yield records of `granularity`.
    pub fn allows(self, granularity: Granularity) -> bool {
        self >= granularity.required_level()
    }

    /// The name used in configuration and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::Billing => "billing",
            Level::Daily => "daily",
            Level::QuarterHour => "quarter_hour",
            Level::Live => "live",
        }
    }
}

/// A name that is not a level or granularity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}; expected one of {expected}")]
pub struct UnknownName {
    what: &'static str,
    name: String,
    expected: String,
}

/// The member of `all` whose name is `name`.
fn by_name<T: Copy>(
    all: &[T],
    name_of: fn(T) -> &'static str,
    what: &'static str,
    name: &str,
) -> Result<T, UnknownName> {
    all.iter()
        .copied()
        .find(|t| name_of(*t) == name)
        .ok_or_else(|| UnknownName {
            what,
            name: name.into(),
            expected: all
                .iter()
                .map(|t| name_of(*t))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

impl FromStr for Level {
    type Err = UnknownName;

    fn from_str(name: &str) -> Result<Level, UnknownName> {
        by_name(&Level::ALL, Level::name, "consent level", name)
    }
}

impl FromStr for Granularity {
    type Err = UnknownName;

    fn from_str(name: &str) -> Result<Granularity, UnknownName> {
        by_name(&Granularity::ALL, Granularity::name, "granularity", name)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_cumulative() {
        assert!(Level::Daily.allows(Granularity::Billing));
        assert!(Level::Daily.allows(Granularity::Daily));
        assert!(!Level::Daily.allows(Granularity::QuarterHour));
        assert!(!Level::None.allows(Granularity::Billing));
        assert!(Level::Live.allows(Granularity::Live));
    }

    #[test]
    fn names_round_trip() {
        for level in Level::ALL {
            assert_eq!(level.name().parse::<Level>(), Ok(level));
        }
        for granularity in Granularity::ALL {
            assert_eq!(granularity.name().parse::<Granularity>(), Ok(granularity));
        }
        assert!("hourly".parse::<Granularity>().is_err());
    }
}
