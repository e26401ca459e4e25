//! The configuration file as written: serde's view, before validation. Every table denies
//! unknown fields, so a typo is an error rather than a silently ignored setting.

use std::collections::BTreeMap;
use std::path::PathBuf;

use p1guard_conduct::{BillingCadence, Level};
use serde::Deserialize;

use super::secret::SecretRef;

/// `[identity]`: how meters are pseudonymised.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The pseudonym key file (64 hex digits, created 0600 if missing).
    pub key_file: Option<PathBuf>,
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// `address:port` to serve `GET /metrics` on, e.g. `127.0.0.1:9187`.
    pub listen: String,
}

/// `[consent]`: the level of each meter.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    /// Level of meters not listed; billing (no consent needed) if absent.
    pub default: Option<Level>,
    /// Equipment id as the meter sends it -> level.
    #[serde(default)]
    pub meters: BTreeMap<String, Level>,
    /// Billing boundaries: bi_monthly (default) or monthly.
    pub billing_cadence: Option<BillingCadence>,
}

/// The settings every `[[sources]]` entry has, whatever its type. (Serde cannot flatten and
/// deny unknown fields at once, so an entry is split into these and its type's own.)
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// Unique name in logs and metrics; the type if absent.
    pub name: Option<String>,
    /// Insert the CR that LF-only captures have lost.
    #[serde(default)]
    pub lf_to_crlf: bool,
    /// Clear bit 7 of every byte (7E1 read as 8N1); serial presets set it where needed.
    pub clear_bit7: Option<bool>,
    /// AES-128 key (32 hex digits) of an encrypting meter.
    pub key: Option<SecretRef>,
    /// Authentication key; Smarty's public one if absent.
    pub auth_key: Option<SecretRef>,
    /// The GCM tag covers no authentication key.
    #[serde(default)]
    pub no_auth_key: bool,
}

impl Source {
    /// The keys of [`Source`].
    pub const FIELDS: &[&str] = &[
        "name",
        "lf_to_crlf",
        "clear_bit7",
        "key",
        "auth_key",
        "no_auth_key",
    ];
}

/// The source types and their settings.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceKind {
    /// A P1 cable.
    Serial {
        /// The device, e.g. `/dev/p1` or `/dev/serial/by-id/...`.
        device: PathBuf,
        /// `dsmr5` (default), `dsmr4` or `dsmr2`.
        preset: Option<String>,
        /// Overrides of the preset.
        baud: Option<u32>,
        /// 7 or 8.
        data_bits: Option<u8>,
        /// none, even or odd.
        parity: Option<String>,
        /// 1 or 2.
        stop_bits: Option<u8>,
    },
    /// A TCP P1 dongle or ser2net.
    Tcp {
        /// `host:port`.
        address: String,
        /// Reconnect when nothing arrived for this long; 60 s if absent.
        read_timeout_secs: Option<u64>,
    },
    /// Capture files.
    Replay {
        /// The captures, read one after the other.
        files: Vec<PathBuf>,
        /// `max` (default), `realtime`, or a factor.
        speed: Option<String>,
    },
    /// A fleet's telegrams from an MQTT broker.
    Mqtt {
        /// `mqtt://host[:port]` or `mqtts://host[:port]`.
        url: String,
        /// Topic filter, e.g. `p1/+/telegram`.
        topic: String,
        /// Share the subscription with other workers of this group (`$share/<group>/...`).
        shared_group: Option<String>,
        /// The session's client id; `p1guard-<host>-<name>` if absent.
        client_id: Option<String>,
        /// User name for the broker.
        username: Option<String>,
        /// Password for the broker.
        password: Option<SecretRef>,
        /// PEM file of the CA that signed the broker's certificate; the system's roots if
        /// absent.
        ca_file: Option<PathBuf>,
    },
}
