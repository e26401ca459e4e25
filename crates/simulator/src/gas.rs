//! The gas meter's side: hot-water draws on top of heating, and the readings the meter
//! captures every few minutes or every hour.

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::format::{local_fields, push_time};
use crate::household::When;

/// A gas draw: `(millilitres per hour, seconds)`, how often and when.
pub(crate) struct GasUse {
    pub(crate) ml_per_hour: u64,
    pub(crate) seconds: i64,
    pub(crate) per_hour: f64,
    pub(crate) when: When,
    /// Only in households cooking on gas.
    pub(crate) gas_hob: bool,
}

pub(crate) const GAS_USES: &[GasUse] = &[
    // morning shower
    GasUse {
        ml_per_hour: 1_900_000,
        seconds: 480,
        per_hour: 1.2,
        when: When::Morning,
        gas_hob: false,
    },
    // evening shower or bath
    GasUse {
        ml_per_hour: 1_700_000,
        seconds: 600,
        per_hour: 0.25,
        when: When::Evening,
        gas_hob: false,
    },
    // hot tap
    GasUse {
        ml_per_hour: 1_200_000,
        seconds: 60,
        per_hour: 1.5,
        when: When::Active,
        gas_hob: false,
    },
    // cooking on gas
    GasUse {
        ml_per_hour: 450_000,
        seconds: 1800,
        per_hour: 0.9,
        when: When::Meal,
        gas_hob: true,
    },
];

/// A gas draw over `[from, until)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Drawing {
    pub(crate) until: i64,
    pub(crate) ml_per_hour: u64,
}

/// A gas reading as the meter captured it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GasCapture {
    /// `YYMMDDhhmmssS|W` of the capture.
    pub(crate) text: [u8; 13],
    pub(crate) litres: u64,
}

impl GasCapture {
    pub(crate) fn new(tz: &TimeZone, at: i64, litres: u64) -> GasCapture {
        let text = match Timestamp::from_second(at) {
            Ok(ts) => {
                let offset = tz.to_offset(ts);
                let mut text = Vec::with_capacity(13);
                push_time(
                    &mut text,
                    local_fields(offset.to_datetime(ts)),
                    offset.seconds() == 7200,
                );
                text.try_into().unwrap_or(*b"000101000001W")
            }
            // Only before the year -9999: the meter's "never" placeholder instead.
            Err(_) => *b"000101000001W",
        };
        GasCapture { text, litres }
    }
}
