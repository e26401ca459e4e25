//! Hex text to bytes, for keys given on the command line or kept in files.

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

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn exactly_two_digits_per_byte() {
        assert_eq!(decode::<2>("0aFF"), Some([0x0A, 0xFF]));
        assert_eq!(decode::<2>("0aF"), None);
        assert_eq!(decode::<2>("0aFFF0"), None);
        assert_eq!(decode::<1>("zz"), None);
        assert_eq!(decode::<1>("+1"), None, "from_str_radix would take a sign");
    }
}
