//! The fixed-width text of a telegram's values: zero-padded decimals, kW, meter times with
//! their `S`/`W` flag, and hex identifiers.

/// Upper-case hex of `bytes`, as meters encode identifiers.
pub(crate) fn hex(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .flat_map(|b| [b >> 4, b & 0xF])
        .map(|nibble| b"0123456789ABCDEF"[usize::from(nibble)])
        .collect()
}

/// `value` in decimal, zero-padded to at least `width` digits (at most 20).
pub(crate) fn push_uint(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut n = value;
    let mut first = digits.len();
    while n > 0 {
        first -= 1;
        digits[first] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let first = first.min(digits.len() - width.clamp(1, digits.len()));
    out.extend_from_slice(&digits[first..]);
}

/// `value` thousandths (or tenths, per `decimals`) as `int.frac` with `int` zero-padded.
pub(crate) fn push_fixed(out: &mut Vec<u8>, value: u64, int_width: usize, decimals: u32) {
    let scale = 10u64.pow(decimals);
    push_uint(out, value / scale, int_width);
    out.push(b'.');
    push_uint(out, value % scale, decimals as usize);
}

/// Watts as `kW` with 3 decimals, `99.999` at most as the format allows.
pub(crate) fn push_kw(out: &mut Vec<u8>, watts: u64) {
    push_fixed(out, watts.min(99_999), 2, 3);
    out.extend_from_slice(b"*kW");
}

/// `YYMMDDhhmmss` and the `S`/`W` flag.
pub(crate) fn push_time(out: &mut Vec<u8>, fields: [u8; 6], summer: bool) {
    let mut text = [if summer { b'S' } else { b'W' }; 13];
    for (pair, field) in text.chunks_exact_mut(2).zip(fields) {
        pair[0] = b'0' + field / 10;
        pair[1] = b'0' + field % 10;
    }
    out.extend_from_slice(&text);
}

/// `YY`, month, day, hour, minute, second of a civil time.
pub(crate) fn local_fields(local: jiff::civil::DateTime) -> [u8; 6] {
    [
        local.year().rem_euclid(100) as u8,
        local.month() as u8,
        local.day() as u8,
        local.hour() as u8,
        local.minute() as u8,
        local.second() as u8,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats_are_fixed_width() {
        let mut out = Vec::new();
        push_fixed(&mut out, 123_456, 6, 3);
        out.push(b' ');
        push_kw(&mut out, 1193);
        out.push(b' ');
        push_fixed(&mut out, 2298, 3, 1);
        out.push(b' ');
        push_uint(&mut out, 2, 4);
        assert_eq!(out, b"000123.456 01.193*kW 229.8 0002");
    }
}
