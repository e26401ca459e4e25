//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use jiff::Timestamp;
use p1guard_conduct::{Granularity, Identity, Level};

use crate::decode::{CipherKeys, InputOptions};
use crate::pace::Speed;
use crate::rights::MeterForms;

/// Reads DSMR smart-meter P1 telegrams and passes them on only as finely as the meter's
/// owner consented to.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Frame, check and parse telegrams from a file or stdin; print one JSON object per frame.
    ///
    /// Exit status: 0 if every frame parsed cleanly, 1 if any frame or line failed, 2 if the
    /// input could not be read.
    Parse(ParseArgs),
    /// Reduce captures to the records the code of conduct allows; print them as JSON lines.
    ///
    /// Deterministic: records are dated by the meters' clocks, so the same input gives the same
    /// output. Exit status: 0, or 2 if an input or the identity key could not be read.
    Replay(ReplayArgs),
    /// Run the daemon: sources, code of conduct and sinks as the configuration says.
    ///
    /// Stops cleanly on SIGTERM or SIGINT (everything read is written first), or when every
    /// source has ended (replays). Exit status: 0 after a clean stop; 2 if the configuration is
    /// invalid (a restart would not help); 1 if a source or a sink cannot be set up at start
    /// (an MQTT CA file missing or without a certificate, a store that cannot be opened), or
    /// for any later failure (worth a restart).
    Run(ConfigArg),
    /// Check a configuration: list every problem (exit 2), or say what it would run.
    CheckConfig(ConfigArg),
    /// Record consent in the registry: grant, withdraw, history, import.
    #[command(subcommand)]
    Consent(ConsentCommand),
    /// Erase every record of a meter in every store, except billing records inside the fiscal
    /// retention; print the answer (JSON) and write it to the erasure ledger.
    Erase(EraseArgs),
    /// Erase again, in every store, whatever the erasure ledger says was erased: after a
    /// backup was restored. Idempotent.
    ReapplyErasures(ConfigArg),
    /// Everything held about a meter: its records in every store that can be read back, its
    /// consent history and its erasures.
    Export(ExportArgs),
    /// Check every store that can be read back against the registry, the ceilings, the
    /// retention and the erasure ledger.
    ///
    /// Exit status: 0 when every record is allowed, 1 when not, 2 for a configuration problem.
    Audit(ConfigArg),
}

/// `--config`: every command that reads the configuration takes it this one way.
#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The configuration file (TOML); `P1GUARD_SECTION__KEY` variables override its settings.
    #[arg(
        long,
        short,
        value_name = "FILE",
        default_value = "/etc/p1guard/p1guard.toml"
    )]
    pub config: PathBuf,
}

/// `p1guard consent ...`.
#[derive(Debug, Subcommand)]
pub enum ConsentCommand {
    /// Record a consent: the meter's level for a purpose from an instant on.
    Grant(GrantArgs),
    /// Record a withdrawal, and erase the stored records it no longer allows.
    Withdraw(WithdrawArgs),
    /// Print a meter's consent events, oldest first, as JSON lines.
    History(MeterArgs),
    /// Record many consents from a CSV file: `meter,level,effective_from,reference[,purpose]`.
    /// All rows or none.
    Import(ImportArgs),
}

/// A meter, as the rights commands take it.
#[derive(Debug, Args)]
pub struct MeterArgs {
    /// The configuration file and its registry.
    #[command(flatten)]
    pub config: ConfigArg,
    /// The equipment id as the meter sends it (hex, any case) or as printed on the meter;
    /// held as the meter sends it, normalised, in each form it may be sent in.
    #[arg(long, value_name = "ID", value_parser = parse_meter)]
    pub meter: MeterForms,
}

/// `p1guard consent grant`.
#[derive(Debug, Args)]
pub struct GrantArgs {
    /// The configuration and the meter.
    #[command(flatten)]
    pub meter: MeterArgs,
    /// The level consented to: none, billing, daily, quarter_hour or live.
    #[arg(long, value_name = "LEVEL")]
    pub level: Level,
    /// What the consent is for: the `purpose` of the sinks it opens.
    #[arg(long, default_value = "default", value_parser = parse_purpose)]
    pub purpose: String,
    /// From when (RFC 3339); now if absent.
    #[arg(long, value_name = "RFC3339")]
    pub from: Option<Timestamp>,
    /// The supplier's consent key or request number.
    #[arg(long)]
    pub reference: Option<String>,
}

/// `p1guard consent withdraw`.
#[derive(Debug, Args)]
pub struct WithdrawArgs {
    /// The configuration and the meter.
    #[command(flatten)]
    pub meter: MeterArgs,
    /// The level left after the withdrawal.
    #[arg(long, value_name = "LEVEL", default_value = "billing")]
    pub to: Level,
    /// The purpose withdrawn from.
    #[arg(long, default_value = "default", value_parser = parse_purpose)]
    pub purpose: String,
    /// From when (RFC 3339); now if absent.
    #[arg(long, value_name = "RFC3339")]
    pub from: Option<Timestamp>,
    /// The withdrawal's request number.
    #[arg(long)]
    pub reference: Option<String>,
}

/// `p1guard consent import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The configuration file and its registry.
    #[command(flatten)]
    pub config: ConfigArg,
    /// CSV rows `meter,level,effective_from,reference[,purpose]`; a header row is skipped.
    #[arg(value_name = "FILE.csv")]
    pub file: PathBuf,
}

/// `p1guard erase`.
#[derive(Debug, Args)]
pub struct EraseArgs {
    /// The configuration and the meter.
    #[command(flatten)]
    pub meter: MeterArgs,
    /// The erasure request's number.
    #[arg(long)]
    pub reference: Option<String>,
    /// The meter's level from now on, for every purpose: billing, or none when the contract
    /// has ended.
    #[arg(long, value_enum, default_value_t = ErasedTo::Billing)]
    pub to: ErasedTo,
}

/// `erase --to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ErasedTo {
    /// Billing readings go on (no consent needed).
    Billing,
    /// Nothing at all.
    None,
}

/// `p1guard export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The configuration and the meter.
    #[command(flatten)]
    pub meter: MeterArgs,
    /// `json` (one object) or `csv` (one row per record).
    #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
    pub format: ExportFormat,
    /// Where to write; standard output if absent.
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

/// `export --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// `{"meter", "records", "consent", "erasures"}`.
    Json,
    /// One row per record.
    Csv,
}

/// How input bytes are read: line repairs and decryption.
#[derive(Debug, Args)]
pub struct InputArgs {
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
}

impl From<&InputArgs> for InputOptions {
    fn from(args: &InputArgs) -> InputOptions {
        let cipher = args.key.map(|key| CipherKeys {
            key,
            auth_key: match (args.no_auth_key, args.auth_key) {
                (true, _) => None,
                (false, Some(auth_key)) => Some(auth_key),
                (false, None) => CipherKeys::smarty(key).auth_key,
            },
        });
        InputOptions {
            lf_to_crlf: args.lf_to_crlf,
            clear_bit7: args.clear_bit7,
            cipher,
        }
    }
}

/// `p1guard parse`.
#[derive(Debug, Args)]
pub struct ParseArgs {
    /// Capture file to read; `-` or nothing for stdin.
    #[arg(default_value = "-")]
    pub input: PathBuf,

    /// How the input is read.
    #[command(flatten)]
    pub input_args: InputArgs,

    /// Print only totals: frames, valid telegrams, errors by kind, meters seen, speed.
    #[arg(long)]
    pub summary: bool,
}

/// `p1guard replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Capture files, each a stream of telegrams back to back; `-` for stdin.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,

    /// How the inputs are read.
    #[command(flatten)]
    pub input_args: InputArgs,

    /// Consent level of every meter until the first change: none, billing, daily,
    /// quarter_hour or live. Billing needs no consent, so it is the default.
    #[arg(long, default_value = "billing", value_name = "LEVEL")]
    pub consent: Level,

    /// A consent change taking effect at an instant, e.g. `2026-03-29T10:00:00Z=live`.
    /// Repeatable.
    #[arg(long = "consent-change", value_name = "RFC3339=LEVEL", value_parser = parse_change)]
    pub consent_changes: Vec<(Timestamp, Level)>,

    /// The finest granularity printed (the sink's ceiling).
    #[arg(long, default_value = "live", value_name = "GRANULARITY")]
    pub max_granularity: Granularity,

    /// How records name meters; `raw` only with `--max-granularity live`.
    #[arg(long, value_enum, default_value_t = IdentityArg::Pseudonym)]
    pub identity: IdentityArg,

    /// File holding the pseudonym key (64 hex digits), created with mode 0600 if missing.
    /// Defaults to `identity.key` in p1guard's state directory.
    #[arg(long, value_name = "FILE")]
    pub identity_key: Option<PathBuf>,

    /// `max` (as fast as possible), `realtime`, or a speed-up factor such as `60`.
    #[arg(long, default_value = "max")]
    pub speed: Speed,
}

/// `--identity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IdentityArg {
    /// The equipment id as sent.
    Raw,
    /// The HMAC pseudonym.
    Pseudonym,
}

impl From<IdentityArg> for Identity {
    fn from(arg: IdentityArg) -> Identity {
        match arg {
            IdentityArg::Raw => Identity::Raw,
            IdentityArg::Pseudonym => Identity::Pseudonym,
        }
    }
}

fn parse_meter(text: &str) -> Result<MeterForms, String> {
    crate::rights::meter_forms(text).map_err(|error| format!("{error:#}"))
}

fn parse_purpose(text: &str) -> Result<String, String> {
    crate::rights::purpose_name(text).map_err(|error| format!("{error:#}"))
}

fn parse_change(text: &str) -> Result<(Timestamp, Level), String> {
    let (at, level) = text.split_once('=').ok_or("expected RFC3339=LEVEL")?;
    let at = at
        .parse::<Timestamp>()
        .map_err(|e| format!("{at:?} is not an RFC 3339 time: {e}"))?;
    Ok((at, level.parse::<Level>().map_err(|e| e.to_string())?))
}

/// 32 hex digits to 16 bytes.
fn parse_key(text: &str) -> Result<[u8; 16], String> {
    crate::hex::decode(text).ok_or_else(|| "expected 32 hex digits".into())
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
    fn consent_changes() {
        let (at, level) = parse_change("2026-03-29T10:00:00Z=live").unwrap();
        assert_eq!(
            (at.to_string().as_str(), level),
            ("2026-03-29T10:00:00Z", Level::Live)
        );
        assert!(parse_change("2026-03-29T10:00:00Z=hourly").is_err());
        assert!(parse_change("yesterday=live").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
