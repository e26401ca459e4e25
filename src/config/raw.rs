//! The configuration file as written: serde's view, before validation. Every table denies
//! unknown fields, so a typo is an error rather than a silently ignored setting.

use std::collections::BTreeMap;
use std::path::PathBuf;

use p1guard_conduct::{BillingCadence, Granularity, Level};
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

/// The settings every `[[sinks]]` entry has, whatever its type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sink {
    /// Unique name in logs and metrics; the type if absent.
    pub name: Option<String>,
    /// The finest granularity this sink receives.
    pub max_granularity: Granularity,
    /// `pseudonym` (default) or `raw` (only with max_granularity live).
    pub identity: Option<String>,
}

impl Sink {
    /// The keys of [`Sink`].
    pub const FIELDS: &[&str] = &["name", "max_granularity", "identity"];
}

/// The sink types and their settings.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkKind {
    /// The embedded store.
    Sqlite {
        /// The database file; `p1guard.sqlite` in the state directory if absent.
        path: Option<PathBuf>,
        /// Days to keep records of each granularity; privacy.md's defaults where absent.
        #[serde(default)]
        retention_days: BTreeMap<Granularity, u32>,
    },
    /// JSON lines on standard output.
    Stdout {},
    /// Records published to an MQTT broker.
    Mqtt {
        /// `mqtt://host[:port]` or `mqtts://host[:port]`.
        url: String,
        /// Topic prefix; `p1guard` if absent.
        prefix: Option<String>,
        /// `p1guard` (default) or `dsmr_reader`.
        layout: Option<String>,
        /// Home Assistant discovery; on by default for a live sink.
        discovery: Option<bool>,
        /// Home Assistant's discovery prefix; `homeassistant` if absent.
        discovery_prefix: Option<String>,
        /// The client id; `p1guard-<host>-<name>` if absent.
        client_id: Option<String>,
        /// User name for the broker.
        username: Option<String>,
        /// Password for the broker.
        password: Option<SecretRef>,
        /// PEM file of the CA that signed the broker's certificate; the system's roots if
        /// absent.
        ca_file: Option<PathBuf>,
    },
    /// An InfluxDB server (or another that speaks its write API).
    Influxdb(Box<Influxdb>),
}

/// The connection settings MQTT sources and sinks share, gathered after reading.
pub struct Connection {
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: String,
    /// The client id, if given.
    pub client_id: Option<String>,
    /// User name for the broker.
    pub username: Option<String>,
    /// Password for the broker.
    pub password: Option<SecretRef>,
    /// The CA's PEM file.
    pub ca_file: Option<PathBuf>,
}

/// `[[sinks]]` `type = "influxdb"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Influxdb {
    /// `v2` (`/api/v2/write`, buckets) or `v1` (`/write`, database and retention
    /// policies).
    pub api: String,
    /// `http://host:port` or `https://...`.
    pub url: String,
    /// v2: the organisation.
    pub org: Option<String>,
    /// v2: the API token; none for a server without authentication.
    pub token: Option<SecretRef>,
    /// v2: granularity -> bucket; `p1guard_<granularity>` where absent.
    #[serde(default)]
    pub buckets: BTreeMap<Granularity, String>,
    /// v1: the database; `p1guard` if absent.
    pub database: Option<String>,
    /// v1: granularity -> retention policy; the granularity's name where absent.
    #[serde(default)]
    pub retention_policies: BTreeMap<Granularity, String>,
    /// v1: basic authentication, with `password`.
    pub username: Option<String>,
    /// v1: the password of `username`.
    pub password: Option<SecretRef>,
    /// Records per request; 5000 if absent.
    pub batch_records: Option<usize>,
    /// How long a record may wait for others to fill a request; 1000 ms if absent.
    pub flush_interval_ms: Option<u64>,
    /// Compress request bodies; on if absent.
    pub gzip: Option<bool>,
}
