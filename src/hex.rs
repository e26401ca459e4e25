//! Hex text to bytes: keys given on the command line or kept in files, and meter ids, which
//! Dutch and Belgian meters send hex-encoded.

/// `2 * N` hex digits (either case) to `N` bytes; `None` for anything else.
pub fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut bytes = [0u8; N];
    for (byte, i) in bytes.iter_mut().zip((0..text.len()).step_by(2)) {
        *byte = u8::from_str_radix(&text[i..i + 2], 16).ok()?;
    }
    Some(bytes)
}

/// The text that hex-encoded `text` spells, when it is an even number of hex digits (either
/// case) that decode to printable ASCII, as Dutch and Belgian meters send their ids
/// (`4530303534` is `E0054`); `None` for anything else, empty text included.
pub fn printable(text: &[u8]) -> Option<String> {
    let digit = |b: u8| char::from(b).to_digit(16);
    let spelled: Option<String> = text
        .chunks(2)
        .map(|pair| match *pair {
            [high, low] => {
                let byte = (digit(high)? * 16 + digit(low)?) as u8;
                byte.is_ascii_graphic().then_some(char::from(byte))
            }
            _ => None,
        })
        .collect();
    spelled.filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::{decode, printable};

    #[test]
    fn hex_spelling_printable_ascii_is_read_and_nothing_else() {
        assert_eq!(printable(b"4530303534").as_deref(), Some("E0054"));
        assert_eq!(printable(b"4a4b").as_deref(), Some("JK"), "either case");
        assert_eq!(printable(b"453"), None, "odd length");
        assert_eq!(printable(b"4520"), None, "a space is not printable");
        assert_eq!(printable(b"0A"), None, "nor is a control character");
        assert_eq!(printable(b"+1"), None, "a sign is no digit");
        assert_eq!(printable(b"E0054"), None);
        assert_eq!(printable(b""), None);
    }

    #[test]
    fn exactly_two_digits_per_byte() {
        assert_eq!(decode::<2>("0aFF"), Some([0x0A, 0xFF]));
        assert_eq!(decode::<2>("0aF"), None);
        assert_eq!(decode::<2>("0aFFF0"), None);
        assert_eq!(decode::<1>("zz"), None);
        assert_eq!(decode::<1>("+1"), None, "from_str_radix would take a sign");
    }
}
