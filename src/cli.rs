//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Reads DSMR smart-meter P1 telegrams and passes them on only as finely as the meter's
/// owner consented to.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Frame, check and parse telegrams from a file or stdin; print one JSON object per frame.
    ///
    /// Exit status: 0 if every frame parsed cleanly, 1 if any frame or line failed, 2 if the
    /// input could not be read.
    Parse(ParseArgs),
}

#[derive(Debug, Args)]
pub struct ParseArgs {
    /// Capture file to read; `-` or nothing for stdin.
    #[arg(default_value = "-")]
    pub input: PathBuf,

    /// Insert the CR that captures stored with LF-only line endings have lost. Real meters
    /// send CRLF, so without this such captures fail their CRC.
    #[arg(long)]
    pub lf_to_crlf: bool,

    /// Clear bit 7 of every byte: a 7E1 line (DSMR 2.2-4) recorded as 8N1.
    #[arg(long)]
    pub clear_bit7: bool,

    /// AES-128 key (32 hex digits) of an encrypting meter (Luxembourg Smarty, Austria).
    #[arg(long, value_name = "HEX", value_parser = parse_key)]
    pub key: Option<[u8; 16]>,

    /// Authentication key (32 hex digits) for encrypted frames; Smarty's public key if not
    /// given.
    #[arg(long, value_name = "HEX", value_parser = parse_key, requires = "key")]
    pub auth_key: Option<[u8; 16]>,

    /// The meter's GCM tag covers no associated data (no authentication key).
    #[arg(long, requires = "key", conflicts_with = "auth_key")]
    pub no_auth_key: bool,

    /// Print only totals: frames, valid telegrams, errors by kind, meters seen, speed.
    #[arg(long)]
    pub summary: bool,
}

/// 32 hex digits to 16 bytes.
fn parse_key(text: &str) -> Result<[u8; 16], String> {
    let digits = text.as_bytes();
    if digits.len() != 32 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err("expected 32 hex digits".into());
    }
    let mut key = [0u8; 16];
    for (byte, pair) in key.iter_mut().zip(digits.chunks_exact(2)) {
        // Both digits are ASCII hex, checked above.
        *byte = u8::from_str_radix(std::str::from_utf8(pair).unwrap_or("00"), 16).unwrap_or(0);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_32_hex_digits() {
        assert_eq!(
            parse_key("000102030405060708090a0b0c0d0eFF").unwrap()[15],
            0xFF
        );
        assert!(parse_key("0001").is_err());
        assert!(parse_key("zz0102030405060708090a0b0c0d0e0f").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
