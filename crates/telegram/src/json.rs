//! JSON in the shape of p1guard's `parse` contract (architecture.md): one object per
//! telegram, OBIS codes as keys, numbers in the unit the meter sent, times in RFC 3339 UTC.
//!
//! Flags are snake_case names, each shown only where it applies:
//! - on a time value, `"flag"`: `impossible_time`, `placeholder_time` or `unflagged_time` (the
//!   value is then the digits as sent, see [`TimeFlag`](crate::TimeFlag)), or
//!   `flag_contradicts_date` (the value is the instant the meter's `S`/`W` flag gives, see
//!   [`MeterTime::flag_contradicts_date`](crate::MeterTime::flag_contradicts_date));
//! - on a text value, `"flag"`: `damaged_number` for text that ends in a unit (see
//!   [`Value::is_damaged_number`]);
//! - on a telegram, `"flags"` after `"crc"`: a list, for now only `crc_missing` (see
//!   [`Telegram::crc_missing`]).

use std::fmt::{self, Write as _};

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::error::{Error, ErrorKind};
use crate::telegram::{Object, Telegram};
use crate::value::Value;

/// Bytes shown one char per byte (Latin-1), so that odd header bytes such as `\xAB` survive
/// instead of being replaced.
struct Latin1<'a>(&'a [u8]);

impl fmt::Display for Latin1<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|&b| f.write_char(char::from(b)))
    }
}

impl Serialize for Latin1<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

struct Hex4(u16);

impl Serialize for Hex4 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&format_args!("{:04X}", self.0))
    }
}

struct Crc(u16);

impl Serialize for Crc {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("expected", &Hex4(self.0))?;
        map.serialize_entry("valid", &true)?; // a telegram exists only if its CRC verified
        map.end()
    }
}

impl Serialize for Value<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match *self {
            Value::Empty => map.serialize_entry("value", &())?,
            Value::Text(text) => {
                map.serialize_entry("value", &Latin1(text))?;
                if self.is_damaged_number() {
                    map.serialize_entry("flag", DAMAGED_NUMBER)?;
                }
            }
            Value::Number(number) => {
                map.serialize_entry("value", &number.value.to_f64())?;
                if let Some(unit) = number.unit {
                    map.serialize_entry("unit", unit)?;
                }
            }
            Value::Time(time) => match time.utc() {
                Ok(instant) => {
                    map.serialize_entry("value", &format_args!("{instant}"))?;
                    if time.flag_contradicts_date() {
                        map.serialize_entry("flag", FLAG_CONTRADICTS_DATE)?;
                    }
                }
                Err(flag) => {
                    map.serialize_entry("value", &format_args!("{time}"))?;
                    map.serialize_entry("flag", flag.name())?;
                }
            },
        }
        map.end()
    }
}

/// The flag of text that ends in a unit: a number damaged on the way (see
/// [`Value::is_damaged_number`]).
const DAMAGED_NUMBER: &str = "damaged_number";

/// The flag of a time whose `S`/`W` flag contradicts its date.
const FLAG_CONTRADICTS_DATE: &str = "flag_contradicts_date";

/// The flag of a telegram without the CRC its version requires.
const CRC_MISSING: &str = "crc_missing";

struct Values<'t>(Object<'t>);

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.values())
    }
}

struct Objects<'t>(Telegram<'t>);

impl Serialize for Objects<'_> {
    /// A code that occurs twice keeps its first line, as [`Telegram::object`] does.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        let objects = self.0.objects();
        for (i, object) in objects.clone().enumerate() {
            if objects
                .clone()
                .take(i)
                .all(|earlier| earlier.obis() != object.obis())
            {
                map.serialize_entry(&format_args!("{}", object.obis()), &Values(object))?;
            }
        }
        map.end()
    }
}

impl Serialize for Telegram<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("header", &Latin1(self.header()))?;
        map.serialize_entry("crc", &self.crc().map(Crc))?;
        if self.crc_missing() {
            map.serialize_entry("flags", &[CRC_MISSING])?;
        }
        let time = self.time().and_then(|t| t.utc().ok());
        map.serialize_entry("time", &time.map(|t| t.to_string()))?;
        map.serialize_entry("objects", &Objects(*self))?;
        if !self.line_errors().is_empty() {
            map.serialize_entry("errors", self.line_errors())?;
        }
        map.end()
    }
}

impl Serialize for Error {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("kind", self.kind.name())?;
        map.serialize_entry("offset", &self.offset)?;
        if self.line > 0 {
            map.serialize_entry("line", &self.line)?;
        }
        if let ErrorKind::CrcMismatch { expected, computed } = self.kind {
            map.serialize_entry("expected", &Hex4(expected))?;
            map.serialize_entry("computed", &Hex4(computed))?;
        }
        map.end()
    }
}

/// One line of `p1guard parse` output: the telegram, or `{"error": ...}` for a frame that
/// failed.
pub struct Outcome<'t>(pub Result<Telegram<'t>, Error>);

impl Serialize for Outcome<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Ok(telegram) => telegram.serialize(serializer),
            Err(error) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("error", error)?;
                map.end()
            }
        }
    }
}
