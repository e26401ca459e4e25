//! The COSEM line grammar. It knows shapes, not codes: any `A-B:C.D.E` followed by `(...)`
//! groups is an object, and each group is typed by its shape alone. The one exception, times
//! without an `S`/`W` flag, is the parser's to apply where a time is expected
//! ([`unflagged_time`]). The code and the number, read on every line, are read by hand (the
//! code with nom's parser signature, the number as a whole group's content); the tests hold
//! them to the combinator grammar they replaced.

use nom::IResult;
use nom::error::{Error, ErrorKind};

use crate::obis::Obis;
use crate::value::{Decimal, MeterTime};

/// `A-B:C.D.E` with an optional `*F`, or `.F` as DSMR 4.2.2's own example writes it
/// (`1-0:31.7.0.255`). Both separators mean the same: `.255` is the code without `F`, as `*255`
/// is, and any other `.F` is that `F`, as `*F` is.
///
/// Each field is a decimal of at most 255, as nom's `u8` reads it, but read by hand: this runs
/// on every line of every telegram, and a chain of combinators costs several times as much.
/// The tests hold it to the combinator grammar it replaced.
pub(crate) fn obis(input: &[u8]) -> IResult<&[u8], Obis> {
    const SEPARATORS: [u8; 4] = *b"-:..";
    let fail = || Err(nom::Err::Error(Error::new(input, ErrorKind::Digit)));
    let mut fields = [0u8, 0, 0, 0, 0, 255];
    let Some((a, mut at)) = small_decimal(input, 0) else {
        return fail();
    };
    fields[0] = a;
    for (field, separator) in fields[1..5].iter_mut().zip(SEPARATORS) {
        if input.get(at) != Some(&separator) {
            return fail();
        }
        let Some((value, end)) = small_decimal(input, at + 1) else {
            return fail();
        };
        (*field, at) = (value, end);
    }
    if let Some(b'*' | b'.') = input.get(at)
        && let Some((f, end)) = small_decimal(input, at + 1)
    {
        (fields[5], at) = (f, end);
    }
    let [a, b, c, d, e, f] = fields;
    Ok((&input[at..], Obis { a, b, c, d, e, f }))
}

/// The decimal of at most 255 at `input[at..]`, and where it ends; `None` without a digit or
/// above 255. Codes' fields have one to three digits: those are read without a loop.
#[inline(always)]
fn small_decimal(input: &[u8], at: usize) -> Option<(u8, usize)> {
    let digit = |i: usize| {
        input
            .get(i)
            .map(|b| b.wrapping_sub(b'0'))
            .filter(|d| *d <= 9)
    };
    let first = digit(at)?;
    let Some(second) = digit(at + 1) else {
        return Some((first, at + 1));
    };
    let two = u32::from(first) * 10 + u32::from(second);
    let Some(third) = digit(at + 2) else {
        return Some((two as u8, at + 2));
    };
    if digit(at + 3).is_some() {
        return many_digits(input, at);
    }
    let three = two * 10 + u32::from(third);
    (three <= 255).then_some((three as u8, at + 3))
}

/// [`small_decimal`] for four digits or more (leading zeros), as nom's `u8` reads them.
#[cold]
fn many_digits(input: &[u8], at: usize) -> Option<(u8, usize)> {
    let mut value = 0u32;
    let mut end = at;
    while let Some(&digit) = input.get(end)
        && digit.is_ascii_digit()
    {
        value = value * 10 + u32::from(digit - b'0');
        if value > 255 {
            return None;
        }
        end += 1;
    }
    Some((value as u8, end))
}

/// `[-]digits[.digits][*unit]` filling all of `content`: the value and the unit. `None` when
/// `content` is not that shape, has neither a decimal point nor a unit, or has more than 18
/// digits (an `i64` mantissa). One pass that reads the digits as it checks them.
fn number(content: &[u8]) -> Option<(Decimal, Option<&[u8]>)> {
    let negative = content.first() == Some(&b'-');
    let mut at = usize::from(negative);
    let mut magnitude = 0u64;
    let digits = |at: &mut usize, magnitude: &mut u64| {
        let start = *at;
        while let Some(&digit) = content.get(*at)
            && digit.is_ascii_digit()
        {
            *magnitude = magnitude
                .wrapping_mul(10)
                .wrapping_add(u64::from(digit - b'0'));
            *at += 1;
        }
        *at - start
    };
    let integer = digits(&mut at, &mut magnitude);
    if integer == 0 {
        return None;
    }
    let mut fraction = 0;
    if content.get(at) == Some(&b'.') {
        at += 1;
        fraction = digits(&mut at, &mut magnitude);
        if fraction == 0 {
            return None;
        }
    }
    let unit = match content.get(at) {
        None => None,
        Some(b'*') if at + 1 < content.len() => {
            let unit = &content[at + 1..];
            if !unit.iter().all(u8::is_ascii_alphanumeric) {
                return None;
            }
            Some(unit)
        }
        Some(_) => return None,
    };
    if (fraction == 0 && unit.is_none()) || integer + fraction > 18 {
        return None;
    }
    let magnitude = magnitude as i64; // below 10^18: no wrap happened
    let value = Decimal {
        mantissa: if negative { -magnitude } else { magnitude },
        scale: fraction as u16,
    };
    Some((value, unit))
}

/// One in every byte of a word: the SWAR helpers below read eight bytes as one word, for
/// [`MeterTime::from_digits`] (every telegram has a time or two) and [`close_or_newline`].
const ONES: u64 = u64::from_le_bytes([1; 8]);

/// How many of `word`'s bytes, from the first (lowest), are ASCII digits: 0 to 8.
pub(crate) fn leading_digits(word: u64) -> usize {
    // A digit's high nibble is 3 and stays 3 when 6 is added. (Adding 6 carries out of a byte
    // only from 0xFA up, which is no digit, so it cannot change what comes before it.)
    let high = word & (ONES * 0xF0);
    let high_plus_six = word.wrapping_add(ONES * 6) & (ONES * 0xF0);
    let not_digit = (high ^ (ONES * 0x30)) | (high_plus_six ^ (ONES * 0x30));
    // The high bit of each byte of `not_digit` that is not zero, without carries between bytes.
    let marks = ((not_digit & (ONES * 0x7F)).wrapping_add(ONES * 0x7F) | not_digit) & (ONES * 0x80);
    marks.trailing_zeros() as usize / 8
}

/// The two-digit values of the bytes of `word`, paired from the first: (`12`, `34`, ...) for
/// `b"12345678"`. Each pair's value is its lane's low byte; the bytes must be digits.
pub(crate) fn digit_pairs(word: u64) -> u64 {
    let values = word.wrapping_sub(ONES * u64::from(b'0'));
    (values.wrapping_mul(10) + (values >> 8)) & 0x00FF_00FF_00FF_00FF
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
        Some((value, unit)) => Shape::Number { value, unit },
        None => Shape::Text,
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

/// A `(...)` group as [`group`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    /// A group whose `)` is at `close`, and what follows it.
    Next { close: usize, then: Then },
    /// The line ends before the group does; the next line starts at `next_line`.
    Malformed { next_line: usize },
}

/// What follows a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Then {
    /// Another group, whose `(` is right after the `)`.
    Group,
    /// The end of the line; the next line starts at `next_line` (past the LF).
    LineEnd { next_line: usize },
}

/// The group whose `(` is at `text[open]`, in `text`: the rest of the body, lines ending in LF
/// or CR LF, the last one at the end of `text`. A group ends at the `)` that is followed by `(`
/// or by the end of the line, so a value may itself hold parentheses, as in the Belgian
/// firmware line `1-0:0.2.0((ER11))`.
///
/// Line and group boundaries are found in this one scan: the parser does not split the body
/// into lines first.
pub(crate) fn group(text: &[u8], open: usize) -> Group {
    let mut from = open + 1;
    loop {
        let Some(at) = close_or_newline(text, from) else {
            return Group::Malformed {
                next_line: text.len(),
            };
        };
        if text[at] == b'\n' {
            return Group::Malformed { next_line: at + 1 };
        }
        let then = match &text[at + 1..] {
            [b'(', ..] => Then::Group,
            [] | [b'\r'] => Then::LineEnd {
                next_line: text.len(),
            },
            [b'\n', ..] => Then::LineEnd { next_line: at + 2 },
            [b'\r', b'\n', ..] => Then::LineEnd { next_line: at + 3 },
            _ => {
                from = at + 1;
                continue;
            }
        };
        return Group::Next { close: at, then };
    }
}

/// The first `)` or LF in `text[from..]`. Groups are short, too short for memchr's set-up, so
/// this reads eight bytes at a time as one word (SWAR): a byte equal to `)` or LF is a zero
/// byte of the word XORed with eight of it, and the borrow of subtracting one from each byte
/// marks the first zero byte exactly.
fn close_or_newline(text: &[u8], from: usize) -> Option<usize> {
    const HIGH_BITS: u64 = ONES << 7;
    let zero_bytes = |word: u64| word.wrapping_sub(ONES) & !word & HIGH_BITS;
    let mut at = from;
    while let Some(chunk) = text.get(at..).and_then(<[u8]>::first_chunk::<8>) {
        let word = u64::from_le_bytes(*chunk);
        let found = zero_bytes(word ^ (ONES * u64::from(b')')))
            | zero_bytes(word ^ (ONES * u64::from(b'\n')));
        if found != 0 {
            return Some(at + found.trailing_zeros() as usize / 8);
        }
        at += 8;
    }
    let rest = text.get(at..)?;
    rest.iter()
        .position(|&b| b == b')' || b == b'\n')
        .map(|i| at + i)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The combinator grammar that the hand-written [`obis`] and [`number`] replaced on the
    /// hot path: the specification they are held to.
    mod combinators {
        use nom::bytes::complete::take_while1;
        use nom::character::complete::{char, digit1, satisfy, u8};
        use nom::combinator::opt;
        use nom::sequence::preceded;
        use nom::{IResult, Parser};

        use crate::obis::Obis;
        use crate::value::Decimal;

        pub fn obis(input: &[u8]) -> IResult<&[u8], Obis> {
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

        pub fn number(input: &[u8]) -> Option<(Decimal, Option<&[u8]>)> {
            let parts: IResult<&[u8], _> = (
                opt(char('-')),
                digit1,
                opt(preceded(char('.'), digit1)),
                opt(preceded(
                    char('*'),
                    take_while1(|b: u8| b.is_ascii_alphanumeric()),
                )),
            )
                .parse(input);
            let Ok(([], (sign, int, frac, unit))) = parts else {
                return None;
            };
            if frac.is_none() && unit.is_none() {
                return None;
            }
            let frac: &[u8] = frac.unwrap_or_default();
            if int.len() + frac.len() > 18 {
                return None;
            }
            let magnitude = int
                .iter()
                .chain(frac)
                .fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'));
            let mantissa = if sign.is_some() {
                -magnitude
            } else {
                magnitude
            };
            let scale = frac.len() as u16;
            Some((Decimal { mantissa, scale }, unit))
        }
    }

    /// Bytes drawn from `alphabet`, up to `len` of them.
    fn made_of(alphabet: &'static [u8], len: usize) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(proptest::sample::select(alphabet), 0..len)
    }

    /// Text shaped like a code: five or six numbers (some above 255, some with leading zeros)
    /// with separators that are mostly right.
    fn code_like() -> impl Strategy<Value = Vec<u8>> {
        let number = prop_oneof![
            (0u16..300).prop_map(|n| n.to_string()),
            (0u16..300).prop_map(|n| format!("00{n}")),
            Just(String::new()),
        ];
        let separator = prop_oneof![
            8 => Just(None),
            1 => proptest::sample::select(&b"-:.*(x"[..]).prop_map(Some),
        ];
        (
            proptest::collection::vec((number, separator), 6),
            any::<bool>(),
            made_of(b"(0123456789*.", 4),
        )
            .prop_map(|(fields, sixth, tail)| {
                let mut text = Vec::new();
                let right = [b'-', b':', b'.', b'.', b'*'];
                let count = if sixth { 6 } else { 5 };
                for (i, (number, separator)) in fields.into_iter().take(count).enumerate() {
                    if i > 0 {
                        text.push(separator.unwrap_or(right[i - 1]));
                    }
                    text.extend(number.bytes());
                }
                text.extend(tail);
                text
            })
    }

    /// Text shaped like a number: sign, digits (up to 20), a point, more digits, a unit.
    fn number_like() -> impl Strategy<Value = Vec<u8>> {
        (
            made_of(b"-", 2),
            made_of(b"0123456789", 20),
            made_of(b".", 2),
            made_of(b"0123456789", 12),
            made_of(b"*", 2),
            made_of(b"kWhAV3m*.-( ", 5),
        )
            .prop_map(|parts| [parts.0, parts.1, parts.2, parts.3, parts.4, parts.5].concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn obis_reads_as_the_combinator_grammar(
            input in prop_oneof![code_like(), made_of(b"0123456789-:.*(", 24)],
        ) {
            let ours = obis(&input).ok();
            let reference = combinators::obis(&input).ok();
            prop_assert_eq!(ours, reference, "{}", input.escape_ascii());
        }

        #[test]
        fn groups_are_found_in_one_pass_as_line_by_line(
            text in made_of(b"((()))\r\n\nx1", 48),
        ) {
            prop_assert_eq!(
                groups_in_one_pass(&text),
                groups_line_by_line(&text),
                "{}",
                text.escape_ascii()
            );
        }

        #[test]
        fn a_close_or_newline_is_found_eight_bytes_at_a_time_as_one_by_one(
            text in proptest::collection::vec(
                prop_oneof![any::<u8>(), proptest::sample::select(&b")\n\x28\x0b\x2a"[..])],
                0..40,
            ),
            from in 0usize..40,
        ) {
            let one_by_one = text
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, b)| **b == b')' || **b == b'\n')
                .map(|(i, _)| i);
            prop_assert_eq!(close_or_newline(&text, from), one_by_one);
        }

        #[test]
        fn digits_are_checked_and_paired_eight_bytes_at_a_time_as_one_by_one(
            bytes in proptest::array::uniform8(prop_oneof![
                3 => proptest::sample::select(&b"0123456789"[..]),
                1 => proptest::sample::select(&b"/:\xfa\xff"[..]),
                1 => any::<u8>(),
            ]),
        ) {
            let word = u64::from_le_bytes(bytes);
            let count = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
            prop_assert_eq!(leading_digits(word), count);
            if count == 8 {
                let pairs = digit_pairs(word).to_le_bytes();
                for (pair, digits) in pairs.iter().step_by(2).zip(bytes.chunks_exact(2)) {
                    prop_assert_eq!(*pair, (digits[0] - b'0') * 10 + (digits[1] - b'0'));
                }
            }
        }

        #[test]
        fn numbers_read_as_the_combinator_grammar(
            input in prop_oneof![number_like(), made_of(b"0123456789-.*kW", 24)],
        ) {
            prop_assert_eq!(
                number(&input),
                combinators::number(&input),
                "{}",
                input.escape_ascii()
            );
        }
    }

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

    /// The groups of each line of `text` that starts with `(`, found by [`group`] in one pass:
    /// `Ok` with every group's content, or `Err` with none if the line is malformed.
    fn groups_in_one_pass(text: &[u8]) -> Vec<Result<Vec<&[u8]>, ()>> {
        let mut lines = Vec::new();
        let mut start = 0;
        while start < text.len() {
            if text[start] != b'(' {
                start = text[start..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(text.len(), |i| start + i + 1);
                continue;
            }
            let mut groups = Vec::new();
            let mut open = start;
            lines.push(loop {
                match group(text, open) {
                    Group::Next { close, then } => {
                        groups.push(&text[open + 1..close]);
                        match then {
                            Then::Group => open = close + 1,
                            Then::LineEnd { next_line } => {
                                start = next_line;
                                break Ok(groups);
                            }
                        }
                    }
                    Group::Malformed { next_line } => {
                        start = next_line;
                        break Err(());
                    }
                }
            });
        }
        lines
    }

    /// The same, line by line: the text split at each LF, a CR before it trimmed, and each
    /// line's groups split off one after another. The specification [`group`] is held to.
    fn groups_line_by_line(text: &[u8]) -> Vec<Result<Vec<&[u8]>, ()>> {
        fn line_groups(mut line: &[u8]) -> Result<Vec<&[u8]>, ()> {
            let mut groups = Vec::new();
            while !line.is_empty() {
                let close = (1..line.len())
                    .find(|&i| line[i] == b')' && matches!(line.get(i + 1), None | Some(b'(')))
                    .ok_or(())?;
                groups.push(&line[1..close]);
                line = &line[close + 1..];
            }
            Ok(groups)
        }
        text.split(|&b| b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            .filter(|line| line.first() == Some(&b'('))
            .map(line_groups)
            .collect()
    }

    #[test]
    fn groups_may_hold_parentheses() {
        let groups = |text| groups_in_one_pass(text);
        assert_eq!(groups(b"((ER11))"), [Ok(vec![&b"(ER11)"[..]])]);
        assert_eq!(groups(b"(a)(b)()"), [Ok(vec![&b"a"[..], b"b", b""])]);
        assert_eq!(groups(b"(1)x"), [Err(())]);
        assert_eq!(groups(b"(1)(2"), [Err(())]);
        assert_eq!(
            groups(b"(1)\r\n(2)\n(3"),
            [Ok(vec![&b"1"[..]]), Ok(vec![b"2"]), Err(())]
        );
        assert_eq!(groups(b"(1)\r\r\n(2)\r"), [Err(()), Ok(vec![&b"2"[..]])]);
        assert_eq!(groups(b"(1\n2)"), [Err(())]);
        // A CR ends a line only before its LF or at the end.
        assert_eq!(groups(b"()\r("), [Err(())]);
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
