//! The COSEM line grammar, written with nom. It knows shapes, not codes: any `A-B:C.D.E`
//! followed by `(...)` groups is an object, and each group is typed by its shape alone. The one
//! exception, times without an `S`/`W` flag, is the parser's to apply where a time is expected
//! ([`unflagged_time`]).

use nom::bytes::complete::take_while1;
use nom::character::complete::{char, digit1, satisfy, u8};
use nom::combinator::opt;
use nom::sequence::preceded;
use nom::{IResult, Parser};

use crate::obis::Obis;
use crate::value::{Decimal, MeterTime};

/// `A-B:C.D.E` with an optional `*F`, or `.F` as DSMR 4.2.2's own example writes it
/// (`1-0:31.7.0.255`). Both separators mean the same: `.255` is the code without `F`, as `*255`
/// is, and any other `.F` is that `F`, as `*F` is.
pub(crate) fn obis(input: &[u8]) -> IResult<&[u8], Obis> {
    // Each field is a decimal of at most 255: nom's `u8` fails on overflow.
    (
        u8,
        preceded(char('-'), u8),
        preceded(char(':'), u8),
        preceded(char('.'), u8),
        preceded(char('.'), u8),
        opt(preceded(satisfy(|c| c == '*' || c == '.'), u8)),
    )
        .map(|(a, b, c, d, e, f)| Obis {
            a,
            b,
            c,
            d,
            e,
            f: f.unwrap_or(255),
        })
        .parse(input)
}

/// `[-]digits[.digits][*unit]`: sign, integer digits, fraction digits, unit.
type NumberParts<'a> = (Option<char>, &'a [u8], Option<&'a [u8]>, Option<&'a [u8]>);

fn number(input: &[u8]) -> IResult<&[u8], NumberParts<'_>> {
    (
        opt(char('-')),
        digit1,
        opt(preceded(char('.'), digit1)),
        opt(preceded(
            char('*'),
            take_while1(|b: u8| b.is_ascii_alphanumeric()),
        )),
    )
        .parse(input)
}

/// What a group's content is, by shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape<'a> {
    Empty,
    Number {
        value: Decimal,
        unit: Option<&'a [u8]>,
    },
    Time(MeterTime),
    Text,
}

/// Types the content of one `(...)` group. A number needs a decimal point or a unit, so that
/// ids and hex messages made only of digits stay text; a time needs its `S`/`W` flag (either
/// case).
pub(crate) fn shape(content: &[u8]) -> Shape<'_> {
    if content.is_empty() {
        return Shape::Empty;
    }
    if content.len() == 13
        && let Some(time) = MeterTime::from_digits(content).filter(|t| t.dst().is_some())
    {
        return Shape::Time(time);
    }
    match number(content) {
        Ok(([], (sign, int, frac, unit))) if frac.is_some() || unit.is_some() => {
            let frac = frac.unwrap_or_default();
            if int.len() + frac.len() > 18 {
                return Shape::Text;
            }
            let digits = int.iter().chain(frac);
            let magnitude = digits.fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'));
            let mantissa = if sign.is_some() {
                -magnitude
            } else {
                magnitude
            };
            Shape::Number {
                value: Decimal {
                    mantissa,
                    scale: frac.len() as u8,
                },
                unit,
            }
        }
        _ => Shape::Text,
    }
}

/// A time without an `S`/`W` flag: twelve digits whose fields fit a clock reading (month 1-12,
/// day 1-31, hour 0-23, minute and second 0-59). Only for a group where a time is expected:
/// elsewhere twelve digits may well be an id or a counter, which [`shape`] leaves as text.
pub(crate) fn unflagged_time(content: &[u8]) -> Option<MeterTime> {
    if content.len() != 12 {
        return None;
    }
    MeterTime::from_digits(content).filter(MeterTime::fields_fit)
}

/// What comes next on an object line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group<'a> {
    /// A `(content)` group, and the rest of the line after it.
    Next { content: &'a [u8], rest: &'a [u8] },
    /// The end of the line.
    End,
    /// Something that is not a well-formed group.
    Malformed,
}

/// Splits the next `(...)` group off `line`. A group ends at the `)` that is followed by `(`
/// or by the end of the line, so a value may itself hold parentheses, as in the Belgian
/// firmware line `1-0:0.2.0((ER11))`.
pub(crate) fn next_group(line: &[u8]) -> Group<'_> {
    match line.first() {
        None => return Group::End,
        Some(b'(') => {}
        Some(_) => return Group::Malformed,
    }
    let mut from = 1;
    // Groups are short: a plain scan beats memchr's set-up here.
    while let Some(i) = line[from..].iter().position(|&b| b == b')') {
        let close = from + i;
        match line.get(close + 1) {
            None | Some(b'(') => {
                return Group::Next {
                    content: &line[1..close],
                    rest: &line[close + 1..],
                };
            }
            Some(_) => from = close + 1,
        }
    }
    Group::Malformed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn obis_fields_stop_at_255() {
        assert_eq!(obis(b"1-0:1.8.1(").unwrap().1, Obis::new(1, 0, 1, 8, 1));
        assert_eq!(obis(b"1-0:1.8.0*255(").unwrap().1, Obis::new(1, 0, 1, 8, 0));
        assert_eq!(obis(b"0-0:96.1.255*7(").unwrap().1.f, 7);
        assert!(obis(b"1-0:256.8.1(").is_err());
        assert!(obis(b"1-0:1.8.X(").is_err());
    }

    #[test]
    fn a_dotted_f_is_read_as_star_f() {
        // DSMR 4.2.2's own example writes `1-0:31.7.0.255(001*A)`.
        assert_eq!(
            obis(b"1-0:31.7.0.255(").unwrap().1,
            Obis::new(1, 0, 31, 7, 0)
        );
        assert_eq!(
            obis(b"1-0:31.7.0.255(").unwrap().1,
            obis(b"1-0:31.7.0*255(").unwrap().1
        );
        // Any other F is kept, as after `*`.
        assert_eq!(obis(b"1-0:1.8.0.1(").unwrap().1.f, 1);
        assert_eq!(
            obis(b"1-0:1.8.0.1(").unwrap().1,
            obis(b"1-0:1.8.0*1(").unwrap().1
        );
        // Still at most 255, and one F only.
        assert!(!matches!(obis(b"1-0:1.8.0.256("), Ok((b"(", _))));
        assert!(!matches!(obis(b"1-0:1.8.0.255*255("), Ok((b"(", _))));
        assert!(!matches!(obis(b"1-0:1.8.0.("), Ok((b"(", _))));
    }

    #[test]
    fn groups_may_hold_parentheses() {
        let groups = |mut line: &'static [u8]| {
            let mut out = Vec::new();
            loop {
                match next_group(line) {
                    Group::Next { content, rest } => {
                        out.push(content);
                        line = rest;
                    }
                    Group::End => return Ok(out),
                    Group::Malformed => return Err(out),
                }
            }
        };
        assert_eq!(groups(b"((ER11))"), Ok(vec![&b"(ER11)"[..]]));
        assert_eq!(groups(b"(a)(b)()"), Ok(vec![&b"a"[..], b"b", b""]));
        assert_eq!(groups(b"(1)x"), Err(vec![]));
        assert_eq!(groups(b"(1)(2"), Err(vec![&b"1"[..]]));
    }

    #[test]
    fn shapes() {
        let number = |m, s, unit: Option<&'static [u8]>| Shape::Number {
            value: Decimal {
                mantissa: m,
                scale: s,
            },
            unit,
        };
        assert_eq!(shape(b"000004.426*kWh"), number(4426, 3, Some(b"kWh")));
        assert_eq!(shape(b"-03.618*kW"), number(-3618, 3, Some(b"kW")));
        assert_eq!(shape(b"0.998"), number(998, 3, None));
        assert_eq!(shape(b"2147483647*s"), number(2_147_483_647, 0, Some(b"s")));
        assert_eq!(shape(b"0002"), Shape::Text);
        assert_eq!(shape(b"0-0:96.7.19"), Shape::Text);
        assert_eq!(shape(b"1.0.smth smth-123"), Shape::Text);
        assert_eq!(shape(b"161107190000"), Shape::Text);
        assert!(matches!(shape(b"632525252525W"), Shape::Time(_)));
        assert!(matches!(shape(b"101209113020w"), Shape::Time(_)));
        assert_eq!(shape(b""), Shape::Empty);
    }

    #[test]
    fn twelve_digits_are_a_time_only_where_a_time_is_expected_and_the_fields_fit() {
        let unflagged = |text: &[u8]| unflagged_time(text).is_some_and(|t| t.dst().is_none());
        assert!(unflagged(b"161107190000"));
        assert!(
            unflagged(b"000101000001"),
            "a placeholder date has fitting fields"
        );
        assert!(unflagged(b"991231235959"));
        // Fields out of range: an id or a counter, not a time.
        for text in [
            &b"000000000000"[..],
            b"161307190000",
            b"161100190000",
            b"161132190000",
            b"161107240000",
            b"161107196000",
            b"161107190060",
            b"303132333435", // hex-encoded ASCII digits never have a month 1-12
        ] {
            assert_eq!(unflagged_time(text), None, "{}", text.escape_ascii());
        }
        // Where no time is expected, twelve digits stay text whatever they look like.
        assert_eq!(shape(b"161107190000"), Shape::Text);
        // Other lengths and flagged times are not unflagged times; flagged ones are times
        // anywhere.
        assert_eq!(unflagged_time(b"1611071900"), None);
        assert_eq!(unflagged_time(b"161107190000W"), None);
        assert!(matches!(shape(b"161107190000W"), Shape::Time(_)));
    }
}
