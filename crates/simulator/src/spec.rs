//! What the caller describes: the meter's generation ([`Style`]), its identifiers and seed
//! ([`MeterSpec`]), and the periods it stays silent ([`Gap`]).

use jiff::Timestamp;

/// Which generation of meter to imitate: it sets the telegram interval, the gas capture
/// period, the header and the version line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Style {
    /// DSMR 5.0.2 (`/ISk5\2MT382-1000`, version 50): a telegram every second, gas captured
    /// every 5 minutes.
    Dsmr5,
    /// DSMR 4.2 (`/KFM5KAIFA-METER`, version 42): a telegram every 10 seconds, gas captured
    /// every full hour.
    Dsmr4,
}

impl Style {
    /// Seconds between two telegrams: 1 for DSMR 5, 10 for DSMR 4.
    pub const fn interval_seconds(self) -> i64 {
        match self {
            Style::Dsmr5 => 1,
            Style::Dsmr4 => 10,
        }
    }

    /// Seconds between two gas captures: 300 for DSMR 5, 3600 for DSMR 4. Captures fall on
    /// multiples of this in UTC, which are also local 5-minute marks and full hours.
    pub const fn gas_capture_seconds(self) -> i64 {
        match self {
            Style::Dsmr5 => 300,
            Style::Dsmr4 => 3600,
        }
    }

    pub(crate) const fn header(self) -> &'static [u8] {
        match self {
            Style::Dsmr5 => b"/ISk5\\2MT382-1000",
            Style::Dsmr4 => b"/KFM5KAIFA-METER",
        }
    }

    pub(crate) const fn version(self) -> &'static [u8] {
        match self {
            Style::Dsmr5 => b"50",
            Style::Dsmr4 => b"42",
        }
    }
}

/// The meter to simulate: its generation, identifiers and the seed that decides the
/// household (its appliances, solar panels, heating) and every random draw.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MeterSpec {
    /// Generation of meter.
    pub style: Style,
    /// Equipment identifier as text (ASCII, such as `E0012345678901234`); the telegram
    /// carries it hex-encoded in `0-0:96.1.1`, as Dutch meters do.
    pub equipment_id: String,
    /// The gas meter's identifier, hex-encoded in `0-1:96.1.0`; `None` for a household
    /// without a gas meter (no M-Bus lines at all).
    pub gas_id: Option<String>,
    /// Seed of everything random.
    pub seed: u64,
}

/// A period in which the meter sends nothing (a logger outage, a pulled cable): no telegram
/// has a time in `[from, to)`. The household's consumption goes on, so the registers after a
/// gap have grown by what was used during it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gap {
    /// First silent instant.
    pub from: Timestamp,
    /// First instant after the gap.
    pub to: Timestamp,
}
