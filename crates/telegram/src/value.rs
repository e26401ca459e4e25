//! Typed values: exact decimals with their unit, meter times, and text as sent.

use std::fmt;

use jiff::civil::{self, Weekday};
use jiff::{Timestamp, tz::Offset};

use crate::grammar;

/// An exact decimal as the meter wrote it: `mantissa / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decimal {
    /// The digits without the decimal point.
    pub mantissa: i64,
    /// How many of the digits follow the decimal point, at most 18. (A `u16` rather than a
    /// `u8`: a copy of a value carries the gap after it, and a gap of seven bytes is copied in
    /// two overlapping words, which stalls store forwarding where the copy is read.)
    pub scale: u16,
}

/// The powers of ten an `f64` holds exactly, up to `10^22`: a decimal's scale (at most 18)
/// less a unit's exponent (-3 from Wh to kWh) stays within them.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

impl Decimal {
    /// The nearest `f64`: a single correctly rounded division, so `123.456` stays `123.456`.
    pub fn to_f64(self) -> f64 {
        self.times_ten_to(0)
    }

    /// The value times `10^exponent` as an integer: exact, and rounded half away from zero
    /// where digits are dropped; `None` if it does not fit an `i64`. For counting in a
    /// register's resolution (Wh, litres), where floating point would round twice.
    pub fn times_ten_to_integer(self, exponent: i32) -> Option<i64> {
        let shift = exponent - i32::from(self.scale);
        if shift >= 0 {
            return self
                .mantissa
                .checked_mul(10i64.checked_pow(shift.unsigned_abs())?);
        }
        // Below 10^-18 of the mantissa's unit, which has at most 18 digits: rounds to 0.
        let Some(divisor) = 10i64.checked_pow(shift.unsigned_abs()) else {
            return Some(0);
        };
        let (quotient, remainder) = (self.mantissa / divisor, self.mantissa % divisor);
        let away = if 2 * remainder.unsigned_abs() >= divisor.unsigned_abs() {
            self.mantissa.signum()
        } else {
            0
        };
        Some(quotient + away)
    }

    /// The value times `10^exponent`, still with a single rounding, so `6545766 Wh` is exactly
    /// the `f64` nearest `6545.766 kWh`.
    pub fn times_ten_to(self, exponent: i32) -> f64 {
        let shift = i32::from(self.scale) - exponent;
        let power = |n: i32| {
            let n = n.unsigned_abs();
            POW10
                .get(n as usize)
                .copied()
                .unwrap_or_else(|| 10f64.powf(n as f64))
        };
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

    /// The value in Wh, exact: from `kWh`, `Wh` or `MWh` by integer arithmetic (see
    /// [`Decimal::times_ten_to_integer`]).
    pub fn wh(&self) -> Option<i64> {
        let exponent = self.exponent_of(&[("kWh", 3), ("Wh", 0), ("MWh", 6)])?;
        self.value.times_ten_to_integer(exponent)
    }

    /// The value in W, from `W` or `kW`.
    pub fn watts(&self) -> Option<f64> {
        self.scaled(&[("W", 0), ("kW", 3)])
    }

    /// The value in thousandths of `unit` (litres for `m3`, MJ for `GJ`), exact, if its unit
    /// is `unit` (compared without regard to case).
    pub fn thousandths_in(&self, unit: &str) -> Option<i64> {
        let exponent = self.exponent_of(&[(unit, 3)])?;
        self.value.times_ten_to_integer(exponent)
    }

    /// The value if its unit is `unit` (compared without regard to case).
    pub fn in_unit(&self, unit: &str) -> Option<f64> {
        self.scaled(&[(unit, 0)])
    }

    /// The value times `10^exponent` for the first unit in `units` that matches.
    fn scaled(&self, units: &[(&str, i32)]) -> Option<f64> {
        Some(self.value.times_ten_to(self.exponent_of(units)?))
    }

    /// The exponent of the first unit in `units` that matches, ignoring case. Meters send
    /// units as the standard writes them, so an exact match is tried first: it is a length
    /// and a word compared, where ignoring case compares byte by byte.
    fn exponent_of(&self, units: &[(&str, i32)]) -> Option<i32> {
        let unit = self.unit?;
        let &(_, exponent) = units
            .iter()
            .find(|(u, _)| *u == unit)
            .or_else(|| units.iter().find(|(u, _)| u.eq_ignore_ascii_case(unit)))?;
        Some(exponent)
    }
}

/// Summer or winter time, as the meter's `S`/`W` flag says. Some meters (Landis+Gyr E350,
/// DSMR 4) write the flag in lower case; `s` and `w` mean the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dst {
    /// `S`: UTC+2.
    Summer,
    /// `W`: UTC+1.
    Winter,
}

/// A meter clock reading `YYMMDDhhmmss` with its `S`/`W` flag, kept as sent so that an
/// impossible date is a value to report rather than a failure to parse.
///
/// What is known about it beyond the digits: [`MeterTime::utc`] says why there is no instant
/// ([`TimeFlag`]), and [`MeterTime::flag_contradicts_date`] whether the instant rests on a flag
/// that the date contradicts.
///
/// Its seven bytes are aligned to eight so that a copy is one word, not two overlapping ones
/// (see [`Decimal::scale`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(align(8))]
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
    /// Reads `YYMMDDhhmmss` optionally followed by `S` or `W` (or `s`, `w`: the same flags in
    /// lower case); `None` if it is not that shape. Any two digits are accepted in each field,
    /// so that an impossible date is still a value.
    pub fn from_digits(text: &[u8]) -> Option<MeterTime> {
        let (digits, dst) = match text {
            [digits @ .., b'S' | b's'] => (digits, Some(Dst::Summer)),
            [digits @ .., b'W' | b'w'] => (digits, Some(Dst::Winter)),
            digits => (digits, None),
        };
        // Eight digits and four, each checked and paired as one word: every telegram has a
        // time or two.
        let (head, tail) = digits.split_first_chunk::<8>()?;
        let tail: &[u8; 4] = tail.try_into().ok()?;
        let head = u64::from_le_bytes(*head);
        let tail = u64::from(u32::from_le_bytes(*tail));
        if grammar::leading_digits(head) != 8 || grammar::leading_digits(tail) < 4 {
            return None;
        }
        let (head, tail) = (grammar::digit_pairs(head), grammar::digit_pairs(tail));
        let pair = |word: u64, index: u32| (word >> (16 * index)) as u8;
        let fields = [
            pair(head, 0),
            pair(head, 1),
            pair(head, 2),
            pair(head, 3),
            pair(tail, 0),
            pair(tail, 1),
        ];
        Some(MeterTime { fields, dst })
    }

    /// Sets digit `index` (0 to 11) of `YYMMDDhhmmss` to `digit` (0 to 9); `false` if there is
    /// no such digit.
    pub(crate) fn set_digit(&mut self, index: usize, digit: u8) -> bool {
        let Some(field) = self.fields.get_mut(index / 2) else {
            return false;
        };
        let (tens, ones) = (*field / 10, *field % 10);
        *field = if index.is_multiple_of(2) {
            digit * 10 + ones
        } else {
            tens * 10 + digit
        };
        true
    }

    /// The flag, if the meter sent one.
    pub fn dst(&self) -> Option<Dst> {
        self.dst
    }

    /// Whether each field is in its range: month 1-12, day 1-31, hour 0-23, minute and second
    /// 0-59. This is the shape of a clock reading, not a calendar check (`310231...` fits).
    pub(crate) fn fields_fit(&self) -> bool {
        let [_, month, day, hour, minute, second] = self.fields;
        (1..=12).contains(&month)
            && (1..=31).contains(&day)
            && hour <= 23
            && minute <= 59
            && second <= 59
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

    /// Whether the `S`/`W` flag contradicts the date: `S` for an instant outside European
    /// summer time, `W` for one inside it. Summer time runs from the last Sunday of March,
    /// 01:00 UTC, to the last Sunday of October, 01:00 UTC, and the check is exact: in the hour
    /// that October repeats (02:00-02:59 local) both flags are right, and in the hour that March
    /// skips (02:00-02:59 local) neither is.
    ///
    /// The flag is still what [`MeterTime::utc`] uses (a meter whose clock is an hour off in
    /// its summer time setting is still an hour off, and guessing would hide it); this only
    /// says that the instant is doubtful. Always `false` for a time without an instant.
    pub fn flag_contradicts_date(&self) -> bool {
        let (Ok(instant), Some(dst)) = (self.utc(), self.dst) else {
            return false;
        };
        european_summer_time(instant).is_some_and(|summer| summer != (dst == Dst::Summer))
    }
}

/// Whether `instant` falls in European summer time (CEST), by the EU rule in force since 1996.
fn european_summer_time(instant: Timestamp) -> Option<bool> {
    let year = Offset::UTC.to_datetime(instant).year();
    let switch = |month| {
        let sunday = civil::Date::new(year, month, 31)
            .ok()?
            .nth_weekday_of_month(-1, Weekday::Sunday)
            .ok()?;
        Offset::UTC.to_timestamp(sunday.at(1, 0, 0, 0)).ok()
    };
    Some((switch(3)?..switch(10)?).contains(&instant))
}

impl fmt::Display for MeterTime {
    /// As the meter wrote it: `YYMMDDhhmmss` and the flag, always in upper case.
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
    /// `YYMMDDhhmmssS` or `...W` (`s`, `w` too) anywhere; or `YYMMDDhhmmss` without a flag
    /// where a time is expected and its fields fit (see [`Parser`](crate::Parser)).
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

    /// Whether this is text that ends in a unit, `digits*letters` with something else among
    /// the digits (`0002X5.467*kWh`): a number the meter or the line damaged, since a number
    /// with a unit is read as one. Kept as sent; `parse` flags it. (A code reference such as
    /// `0-0:96.7.19*255` has no letter after its `*`, and is not one.)
    pub fn is_damaged_number(&self) -> bool {
        let Some(text) = self.text() else {
            return false;
        };
        let Some(star) = text.iter().rposition(|&b| b == b'*') else {
            return false;
        };
        let (number, unit) = (&text[..star], &text[star + 1..]);
        !unit.is_empty()
            && unit.iter().all(u8::is_ascii_alphanumeric)
            && unit.iter().any(u8::is_ascii_alphabetic)
            && number.iter().any(u8::is_ascii_digit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_ending_in_a_unit_is_a_damaged_number() {
        let damaged = |text: &[u8]| Value::Text(text).is_damaged_number();
        assert!(damaged(b"0002X5.467*kWh"));
        assert!(damaged(b"00.1.2*kW"));
        assert!(damaged(b"12,345*m3"), "a comma for a point");
        for text in [
            &b"0-0:96.7.19*255"[..],
            b"4530303534",
            b"ER11",
            b"*kWh",
            b"1234*",
            b"12*k W",
        ] {
            assert!(!damaged(text), "{}", text.escape_ascii());
        }
    }

    /// Reads `YYMMDDhhmmss[SsWw]` a byte at a time: the specification [`MeterTime::from_digits`]
    /// is held to.
    fn from_digits_one_by_one(text: &[u8]) -> Option<MeterTime> {
        let (digits, dst) = match text {
            [digits @ .., b'S' | b's'] => (digits, Some(Dst::Summer)),
            [digits @ .., b'W' | b'w'] => (digits, Some(Dst::Winter)),
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

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(20_000))]

        #[test]
        fn integer_scaling_is_exact_and_rounds_half_away_from_zero(
            mantissa in -999_999_999_999_999_999i64..=999_999_999_999_999_999,
            scale in 0u16..=18,
            exponent in -6i32..=24,
        ) {
            let decimal = Decimal { mantissa, scale };
            // The same in i128, where nothing overflows: |mantissa| * 10^(exponent - scale).
            let shift = exponent - i32::from(scale);
            let magnitude = i128::from(mantissa).unsigned_abs();
            let scaled = if shift >= 0 {
                10u128.checked_pow(shift as u32).and_then(|p| magnitude.checked_mul(p))
            } else {
                let divisor = 10u128.pow(shift.unsigned_abs());
                Some(magnitude / divisor + u128::from(2 * (magnitude % divisor) >= divisor))
            };
            let expected = scaled
                .and_then(|m| i64::try_from(m).ok())
                .map(|m| if mantissa < 0 { -m } else { m });
            proptest::prop_assert_eq!(decimal.times_ten_to_integer(exponent), expected);
        }

        /// The float reading is the decimal's value in the unit asked for: what parsing its
        /// digits with that exponent gives (the nearest `f64`), or within a rounding of it
        /// where the mantissa has more digits than an `f64` holds. (A Wh reading with 17
        /// decimals once came out a hundred times too large in kWh.)
        #[test]
        fn float_scaling_is_the_nearest_float_to_the_scaled_decimal(
            mantissa in -999_999_999_999_999_999i64..=999_999_999_999_999_999,
            scale in 0u16..=18,
            exponent in -4i32..=6,
        ) {
            let decimal = Decimal { mantissa, scale };
            let nearest: f64 = format!("{mantissa}e{}", exponent - i32::from(scale))
                .parse()
                .expect("a float");
            let ours = decimal.times_ten_to(exponent);
            if mantissa.unsigned_abs() < 1 << 53 {
                proptest::prop_assert_eq!(ours, nearest);
            } else {
                proptest::prop_assert!((ours - nearest).abs() <= nearest.abs() * 2.5e-16);
            }
        }

        #[test]
        fn times_are_read_a_word_at_a_time_as_one_by_one(
            digits in proptest::collection::vec(
                proptest::sample::select(&b"01234567890123456789012345678901234567890123/:x\xfa"[..]),
                11..=13,
            ),
            flag in proptest::option::of(proptest::sample::select(&b"SsWwx1"[..])),
        ) {
            let text = [&digits[..], flag.as_slice()].concat();
            proptest::prop_assert_eq!(
                MeterTime::from_digits(&text),
                from_digits_one_by_one(&text),
                "{}",
                text.escape_ascii()
            );
        }
    }

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
    fn lower_case_flags_read_as_upper_case() {
        // Landis+Gyr E350 (DSMR 4) writes the flag in lower case.
        assert_eq!(utc("101209113020w"), Ok("2010-12-09T10:30:20Z".into()));
        assert_eq!(utc("200512135409s"), Ok("2020-05-12T11:54:09Z".into()));
        let lower = MeterTime::from_digits(b"101209113020w").unwrap();
        assert_eq!(lower.dst(), Some(Dst::Winter));
        assert_eq!(Some(lower), MeterTime::from_digits(b"101209113020W"));
        assert_eq!(MeterTime::from_digits(b"101209113020x"), None);
    }

    fn contradicts(text: &str) -> bool {
        let time = MeterTime::from_digits(text.as_bytes()).unwrap();
        let contradicts = time.flag_contradicts_date();
        if contradicts {
            assert!(time.utc().is_ok(), "{text}: the flag is still used");
        }
        contradicts
    }

    #[test]
    fn a_flag_that_contradicts_the_date_is_used_and_reported() {
        assert!(contradicts("240713141530W"), "W in July");
        assert!(contradicts("240115101010S"), "S in January");
        assert_eq!(utc("240713141530W"), Ok("2024-07-13T13:15:30Z".into()));
        assert!(!contradicts("240713141530S"));
        assert!(!contradicts("240115101010W"));
        // Summer time starts on 2024-03-31 at 01:00 UTC: 02:00 W becomes 03:00 S, and
        // 02:00-02:59 local does not exist.
        assert!(!contradicts("240331015959W"));
        assert!(contradicts("240331020000W"));
        assert!(contradicts("240331023000S"));
        assert!(!contradicts("240331030000S"));
        // It ends on 2024-10-27 at 01:00 UTC: 03:00 S becomes 02:00 W, so 02:00-02:59 local
        // comes twice and either flag is right for that hour.
        assert!(!contradicts("241027020000S"));
        assert!(!contradicts("241027025959S"));
        assert!(contradicts("241027030000S"));
        assert!(!contradicts("241027020000W"));
        assert!(!contradicts("241027025959W"));
        assert!(contradicts("241027015959W"));
        // Different Sundays in other years: 2026-03-29 and 2026-10-25.
        assert!(contradicts("260329020000W"));
        assert!(!contradicts("260328020000W"));
        assert!(contradicts("261025030000S"));
        assert!(!contradicts("261024030000S"));
        // Only a time with an instant can contradict its date.
        assert!(!contradicts("161107190000"));
        assert!(!contradicts("000101000001S"));
        assert!(!contradicts("632525252525S"));
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
        assert_eq!(n(123_456_789, 3, "kWh").wh(), Some(123_456_789));
        assert_eq!(n(6_545_766, 0, "Wh").wh(), Some(6_545_766));
        assert_eq!(n(12, 0, "MWh").wh(), Some(12_000_000));
        assert_eq!(n(314_726_048_113, 7, "kWh").wh(), Some(31_472_605));
        assert_eq!(n(244, 3, "kW").wh(), None);
        assert_eq!(n(1_234_567, 3, "m3").thousandths_in("m3"), Some(1_234_567));
        assert_eq!(n(1_234_567, 3, "m3").thousandths_in("GJ"), None);
        // Units in another case mean the same.
        assert_eq!(n(6_545_766, 0, "WH").kwh(), Some(6_545.766));
        assert_eq!(n(1_234, 3, "M3").in_unit("m3"), Some(1.234));
    }
}
