//! The COSEM line grammar, written with nom. It knows shapes, not codes: any `A-B:C.D.E`
//! followed by `(...)` groups is an object, and each group is typed by its shape alone.

use nom::bytes::complete::take_while1;
use nom::character::complete::{char, digit1, u8};
use nom::combinator::opt;
use nom::sequence::preceded;
use nom::{IResult, Parser};

use crate::obis::Obis;
use crate::value::{Decimal, MeterTime};

/// `A-B:C.D.E` with an optional `*F`.
pub(crate) fn obis(input: &[u8]) -> IResult<&[u8], Obis> {
    // Each field is a decimal of at most 255: nom's `u8` fails on overflow.
    (
        u8,
        preceded(char('-'), u8),
        preceded(char(':'), u8),
        preceded(char('.'), u8),
        preceded(char('.'), u8),
        opt(preceded(char('*'), u8)),
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
/// ids and hex messages made only of digits stay text; a time needs its `S`/`W` flag.
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
        assert_eq!(shape(b""), Shape::Empty);
    }
}
