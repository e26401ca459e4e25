//! Typed values: exact decimals with their unit, meter times, and text as sent.

use std::fmt;

use jiff::{Timestamp, civil, tz::Offset};

/// An exact decimal as the meter wrote it: `mantissa / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decimal {
    /// The digits without the decimal point.
    pub mantissa: i64,
    /// How many of the digits follow the decimal point.
    pub scale: u8,
}

const POW10: [f64; 19] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18,
];

impl Decimal {
    /// The nearest `f64`: a single correctly rounded division, so `123.456` stays `123.456`.
    pub fn to_f64(self) -> f64 {
        self.times_ten_to(0)
    }

    /// The value times `10^exponent`, still with a single rounding, so `6545766 Wh` is exactly
    /// the `f64` nearest `6545.766 kWh`.
    pub fn times_ten_to(self, exponent: i32) -> f64 {
        let shift = i32::from(self.scale) - exponent;
        let power = |n: i32| POW10[n.unsigned_abs().min(18) as usize];
        if shift >= 0 {
            self.mantissa as f64 / power(shift)
        } else {
            self.mantissa as f64 * power(shift)
        }
    }
}

/// A number with the unit the meter sent, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Number<'a> {
    /// The value.
    pub value: Decimal,
    /// The unit (`kWh`, `kW`, `m3`, `V`, ...), as sent.
    pub unit: Option<&'a str>,
}

impl Number<'_> {
    /// The value in kWh, from `kWh`, `Wh` or `MWh`.
    pub fn kwh(&self) -> Option<f64> {
        self.scaled(&[("kWh", 0), ("Wh", -3), ("MWh", 3)])
    }

    /// The value in W, from `W` or `kW`.
    pub fn watts(&self) -> Option<f64> {
        self.scaled(&[("W", 0), ("kW", 3)])
    }

    /// The value if its unit is `unit` (compared without regard to case).
    pub fn in_unit(&self, unit: &str) -> Option<f64> {
        self.scaled(&[(unit, 0)])
    }

    /// The value times `10^exponent` for the first unit in `units` that matches.
    fn scaled(&self, units: &[(&str, i32)]) -> Option<f64> {
        let unit = self.unit?;
        let &(_, exponent) = units.iter().find(|(u, _)| u.eq_ignore_ascii_case(unit))?;
        Some(self.value.times_ten_to(exponent))
    }
}

/// Summer or winter time, as the meter's `S`/`W` flag says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dst {
    /// `S`: UTC+2.
    Summer,
    /// `W`: UTC+1.
    Winter,
}

/// A meter clock reading `YYMMDDhhmmss` with its `S`/`W` flag, kept as sent so that an
/// impossible date is a value to report rather than a failure to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MeterTime {
    fields: [u8; 6],
    dst: Option<Dst>,
}

/// Why a [`MeterTime`] has no instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum TimeFlag {
    /// No such date or time, such as `632525252525W` or all zeros.
    #[error("impossible date")]
    Impossible,
    /// A real date before 2001, which meters send for "never" (`000101000001W`, 1970's epoch).
    #[error("placeholder date")]
    Placeholder,
    /// No `S`/`W` flag (DSMR 2.2 and 3 gas capture times); only the civil time is known.
    #[error("local time without S/W flag")]
    Unflagged,
}

impl TimeFlag {
    /// The flag's stable snake_case name.
    pub const fn name(self) -> &'static str {
        match self {
            TimeFlag::Impossible => "impossible_time",
            TimeFlag::Placeholder => "placeholder_time",
            TimeFlag::Unflagged => "unflagged_time",
        }
    }
}

impl MeterTime {
    /// Reads `YYMMDDhhmmss` optionally followed by `S` or `W`; `None` if it is not that shape.
    pub fn from_digits(text: &[u8]) -> Option<MeterTime> {
        let (digits, dst) = match text {
            [digits @ .., b'S'] => (digits, Some(Dst::Summer)),
            [digits @ .., b'W'] => (digits, Some(Dst::Winter)),
            digits => (digits, None),
        };
        if digits.len() != 12 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let mut fields = [0; 6];
        for (field, pair) in fields.iter_mut().zip(digits.chunks_exact(2)) {
            *field = (pair[0] - b'0') * 10 + (pair[1] - b'0');
        }
        Some(MeterTime { fields, dst })
    }

    /// The flag, if the meter sent one.
    pub fn dst(&self) -> Option<Dst> {
        self.dst
    }

    /// The wall-clock time, if it is a possible date. Two-digit years 70-99 are 19xx.
    pub fn civil(&self) -> Option<civil::DateTime> {
        let [yy, month, day, hour, minute, second] = self.fields;
        let year = if yy >= 70 { 1900 } else { 2000 } + i16::from(yy);
        let as_i8 = |v: u8| v as i8; // every field is below 100
        civil::DateTime::new(
            year,
            as_i8(month),
            as_i8(day),
            as_i8(hour),
            as_i8(minute),
            as_i8(second),
            0,
        )
        .ok()
    }

    /// The instant in UTC: `S` is UTC+2, `W` is UTC+1, and nothing is guessed.
    pub fn utc(&self) -> Result<Timestamp, TimeFlag> {
        let civil = self.civil().ok_or(TimeFlag::Impossible)?;
        if civil.year() < 2001 {
            return Err(TimeFlag::Placeholder);
        }
        let hours = match self.dst.ok_or(TimeFlag::Unflagged)? {
            Dst::Summer => 2,
            Dst::Winter => 1,
        };
        Offset::constant(hours)
            .to_timestamp(civil)
            .map_err(|_| TimeFlag::Impossible)
    }
}

impl fmt::Display for MeterTime {
    /// As the meter wrote it: `YYMMDDhhmmss` and the flag.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for field in self.fields {
            write!(f, "{field:02}")?;
        }
        match self.dst {
            Some(Dst::Summer) => f.write_str("S"),
            Some(Dst::Winter) => f.write_str("W"),
            None => Ok(()),
        }
    }
}

/// One `(...)` group of an object line, typed by its shape alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// `()`.
    Empty,
    /// Digits with a decimal point or a unit: `(001.19*kW)`, `(0.998)`, `(-03.618*kW)`.
    Number(Number<'a>),
    /// `YYMMDDhhmmssS` or `...W`.
    Time(MeterTime),
    /// Anything else, as sent: ids, hex-encoded messages, tariff codes, OBIS references.
    Text(&'a [u8]),
}

impl<'a> Value<'a> {
    /// The number, if this is one.
    pub fn number(&self) -> Option<Number<'a>> {
        match *self {
            Value::Number(n) => Some(n),
            _ => None,
        }
    }

    /// The meter time, if this is one.
    pub fn time(&self) -> Option<MeterTime> {
        match *self {
            Value::Time(t) => Some(t),
            _ => None,
        }
    }

    /// The text, if this is text.
    pub fn text(&self) -> Option<&'a [u8]> {
        match *self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    /// A whole number written as text without a unit, such as a tariff `(0002)` or a count
    /// `(00013)`.
    pub fn count(&self) -> Option<u32> {
        let text = self.text()?;
        if text.is_empty() || text.len() > 9 || !text.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(text.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> Result<String, TimeFlag> {
        MeterTime::from_digits(text.as_bytes())
            .unwrap()
            .utc()
            .map(|t| t.to_string())
    }

    #[test]
    fn summer_and_winter_flags_give_the_offset() {
        assert_eq!(utc("101209113020W"), Ok("2010-12-09T10:30:20Z".into()));
        assert_eq!(utc("200512135409S"), Ok("2020-05-12T11:54:09Z".into()));
    }

    #[test]
    fn impossible_placeholder_and_unflagged_times_are_flagged() {
        assert_eq!(utc("632525252525W"), Err(TimeFlag::Impossible));
        assert_eq!(utc("000000000000W"), Err(TimeFlag::Impossible));
        assert_eq!(utc("000101000001W"), Err(TimeFlag::Placeholder));
        assert_eq!(utc("700101010000W"), Err(TimeFlag::Placeholder));
        assert_eq!(utc("161107190000"), Err(TimeFlag::Unflagged));
    }

    #[test]
    fn displays_as_sent() {
        let t = MeterTime::from_digits(b"632525252525W").unwrap();
        assert_eq!(t.to_string(), "632525252525W");
    }

    #[test]
    fn units_are_normalised_exactly() {
        let n = |m, s, unit| Number {
            value: Decimal {
                mantissa: m,
                scale: s,
            },
            unit: Some(unit),
        };
        assert_eq!(n(123_456_789, 3, "kWh").kwh(), Some(123_456.789));
        assert_eq!(n(6_545_766, 0, "Wh").kwh(), Some(6_545.766));
        assert_eq!(n(244, 3, "kW").watts(), Some(244.0));
        assert_eq!(n(244, 3, "kW").kwh(), None);
    }
}
