//! Errors: small, `Copy`, allocation-free, and always pointing at a place in the stream.

use std::fmt;

/// What went wrong with a frame or a line of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ErrorKind {
    /// The CRC after `!` does not match the bytes from `/` through `!`.
    #[error("CRC mismatch: telegram says {expected:04X}, bytes give {computed:04X}")]
    CrcMismatch {
        /// The CRC the telegram carries.
        expected: u16,
        /// The CRC computed over the received bytes.
        computed: u16,
    },
    /// A frame grew past the framer's size cap without reaching `!`.
    #[error("frame longer than the size cap")]
    TooLong,
    /// A frame was cut short: a new `/` or the end of the stream came before `!`.
    #[error("frame truncated before its end marker '!'")]
    Truncated,
    /// The first line is not a `/XXX5...` identification header.
    #[error("malformed identification header")]
    BadHeader,
    /// A line does not start with an `A-B:C.D.E` OBIS code (each part 0..=255).
    #[error("malformed OBIS code")]
    BadObis,
    /// The values after an OBIS code are not a sequence of `(...)` groups.
    #[error("malformed value group")]
    BadValue,
    /// An encrypted frame's header or length does not fit the DLMS general-global-cipher layout.
    #[error("malformed DLMS encrypted frame")]
    BadCipherFrame,
    /// AES-GCM authentication failed: wrong key, wrong authentication key, or damaged frame.
    #[error("decryption failed: authentication tag mismatch")]
    Decryption,
}

impl ErrorKind {
    /// The kind's stable snake_case name, as used in JSON output and summaries.
    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::CrcMismatch { .. } => "crc_mismatch",
            ErrorKind::TooLong => "too_long",
            ErrorKind::Truncated => "truncated",
            ErrorKind::BadHeader => "bad_header",
            ErrorKind::BadObis => "bad_obis",
            ErrorKind::BadValue => "bad_value",
            ErrorKind::BadCipherFrame => "bad_cipher_frame",
            ErrorKind::Decryption => "decryption",
        }
    }
}

/// An error with its position: `offset` is the byte offset in the stream the framer was fed,
/// `line` the 1-based line within the telegram (0 where the error is not tied to a line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{kind} at byte {offset}{}", OnLine(*.line))]
pub struct Error {
    /// What went wrong.
    pub kind: ErrorKind,
    /// Byte offset in the stream.
    pub offset: u64,
    /// 1-based line in the telegram, 0 if none.
    pub line: u32,
}

impl Error {
    pub(crate) const fn new(kind: ErrorKind, offset: u64, line: u32) -> Self {
        Error { kind, offset, line }
    }
}

/// `, line N` after an error's offset; nothing for an error not tied to a line (line 0).
struct OnLine(u32);

impl fmt::Display for OnLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            line => write!(f, ", line {line}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_names_its_line_only_when_it_has_one() {
        assert_eq!(
            Error::new(ErrorKind::Truncated, 2565, 0).to_string(),
            "frame truncated before its end marker '!' at byte 2565"
        );
        assert_eq!(
            Error::new(ErrorKind::BadObis, 40, 3).to_string(),
            "malformed OBIS code at byte 40, line 3"
        );
    }
}
