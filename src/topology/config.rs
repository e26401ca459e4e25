//! The daemon's configuration: the document's sections (identity, consent, metrics), its
//! sources and sinks, each read by its own kind, and the checks that span them (unique
//! names, one store per file, topics that cannot mix households). Built by
//! [`crate::config`]'s checker, so every problem is reported at once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use p1guard_conduct::{BillingCadence, Change, ConsentTable, Level, MAX_PURPOSES, Scope};
use serde::Deserialize;
use toml::Table;

use crate::config::{self, Checker, Problems};
use crate::sinks::{SinkConfig, SinkEntry, SinkKind, TopicLayout};
use crate::sources::{NatsSettings, SourceConfig, SourceEntry, SourceKind};

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The pseudonym key file; the state directory's `identity.key` if `None`.
    pub identity_key: Option<PathBuf>,
    /// Each meter's consent: the configured levels, to which the registry's events are added.
    pub consent: ConsentTable,
    /// The meters `[consent] meters` lists, normalised (upper case), each also as sent when
    /// listed by its printed id.
    pub listed_meters: Vec<String>,
    /// How many entries `[consent] meters` has.
    pub meters_listed: usize,
    /// The consent registry's file; the state directory's `consent.sqlite` if `None`.
    pub registry: Option<PathBuf>,
    /// Whether a withdrawal erases the stored records it no longer allows.
    pub purge_on_withdrawal: bool,
    /// Billing boundaries.
    pub billing: BillingCadence,
    /// Where telegrams come from.
    pub sources: Vec<SourceConfig>,
    /// Where records go.
    pub sinks: Vec<SinkConfig>,
    /// Where to serve `GET /metrics`, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// How long SIGTERM waits for the sinks before leaving what they have not written in
    /// the outbox.
    pub shutdown_grace: std::time::Duration,
    /// The outbox's file; the state directory's `outbox.sqlite` if `None`.
    pub outbox: Option<PathBuf>,
    /// Allowed, but probably not meant: said by `check-config` and logged at start.
    pub warnings: Vec<String>,
}

impl Config {
    /// The fleet stream this worker reads, if any (one at most): its consent is recorded in
    /// the fleet's consent stream.
    pub fn fleet(&self) -> Option<&NatsSettings> {
        self.sources.iter().find_map(|source| match &source.kind {
            SourceKind::Nats(settings) => Some(settings),
            _ => None,
        })
    }
}

/// Reads the configuration file at `path`, with the process's `P1GUARD_*` overrides.
pub fn load(path: &Path) -> Result<Config, Problems> {
    config::load(path, |checker, document| {
        Reader { checker }.config(document)
    })
}

/// The speeds P1 ports send at: DSMR 2.2 and 3, then DSMR 4 and 5.
const P1_BAUD_RATES: [u32; 2] = [9_600, 115_200];

/// Reads a configuration's text with the environment `vars`.
pub fn parse(
    text: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, Problems> {
    config::parse(text, vars, |checker, document| {
        Reader { checker }.config(document)
    })
}

/// `[identity]`: how meters are pseudonymised.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The pseudonym key file (64 hex digits, created 0600 if missing).
    pub key_file: Option<PathBuf>,
}

/// `[daemon]`: how the process runs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Daemon {
    /// Seconds SIGTERM waits for the sinks; 20 if absent (systemd kills at 30).
    pub shutdown_grace_secs: Option<u64>,
    /// The outbox's SQLite file; `outbox.sqlite` in the state directory if absent.
    pub outbox: Option<PathBuf>,
}

/// The shutdown grace unless configured: well under systemd's `TimeoutStopSec=30`.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 20;

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// `address:port` to serve `GET /metrics` on, e.g. `127.0.0.1:9187`.
    pub listen: String,
}

/// `[consent]`: the level of each meter. A meter's level for a purpose is that of its
/// latest registry event for the purpose in force; before its first, its `meters` entry, and
/// for a meter not listed, `default`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consent {
    /// Level of meters not listed; billing (no consent needed) if absent.
    pub default: Option<Level>,
    /// Equipment id as the meter sends it or as printed on it -> level, for every purpose.
    #[serde(default)]
    pub meters: BTreeMap<String, Level>,
    /// Billing boundaries: bi_monthly (default) or monthly.
    pub billing_cadence: Option<BillingCadence>,
    /// The registry's SQLite file; `consent.sqlite` in the state directory if absent.
    pub registry: Option<PathBuf>,
    /// Erase the stored records a withdrawal no longer allows; on if absent.
    pub purge_on_withdrawal: Option<bool>,
}

/// Builds a [`Config`] with a [`Checker`], noting every problem on the way.
struct Reader<'c, 'p> {
    checker: &'c mut Checker<'p>,
}

impl<'p> Deref for Reader<'_, 'p> {
    type Target = Checker<'p>;

    fn deref(&self) -> &Checker<'p> {
        self.checker
    }
}

impl DerefMut for Reader<'_, '_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.checker
    }
}

impl Reader<'_, '_> {
    fn config(&mut self, mut document: Table) -> Config {
        let identity: Identity = document
            .remove("identity")
            .and_then(|v| self.read("identity", v))
            .unwrap_or_default();
        let consent: Consent = document
            .remove("consent")
            .and_then(|v| self.read("consent", v))
            .unwrap_or_default();
        let metrics: Option<Metrics> = document
            .remove("metrics")
            .and_then(|v| self.read("metrics", v));
        let daemon: Daemon = document
            .remove("daemon")
            .and_then(|v| self.read("daemon", v))
            .unwrap_or_default();
        let grace = daemon
            .shutdown_grace_secs
            .unwrap_or(DEFAULT_SHUTDOWN_GRACE_SECS);
        if grace == 0 {
            self.problem("daemon", "shutdown_grace_secs: must be positive");
        }
        let metrics_listen = metrics.and_then(|m| match m.listen.parse::<SocketAddr>() {
            Ok(address) => Some(address),
            Err(_) => {
                let listen = m.listen;
                self.problem(
                    "metrics",
                    format!("listen {listen:?}: expected address:port"),
                );
                None
            }
        });
        let sources = self.entries("sources", SourceEntry::FIELDS, document.remove("sources"));
        let sinks = self.entries("sinks", SinkEntry::FIELDS, document.remove("sinks"));
        for unknown in document.keys() {
            self.problem(
                unknown,
                "unknown section (expected identity, consent, daemon, metrics, sources, sinks)",
            );
        }

        let sources: Vec<SourceConfig> = sources
            .into_iter()
            .filter_map(|entry| SourceConfig::check(self.checker, entry))
            .collect();
        let mut sinks: Vec<SinkConfig> = sinks
            .into_iter()
            .filter_map(|entry| SinkConfig::check(self.checker, entry))
            .collect();

        let default = consent.default.unwrap_or(Level::Billing);
        let purposes: BTreeSet<&str> = sinks.iter().map(|s| s.purpose.as_str()).collect();
        if purposes.len() + usize::from(!purposes.contains("default")) > MAX_PURPOSES {
            self.problem(
                "sinks",
                format!("more than {MAX_PURPOSES} purposes: sinks serve {purposes:?}"),
            );
        }
        let consent_table = ConsentTable::new(default, purposes);
        for sink in &mut sinks {
            let purpose = consent_table.purpose(&sink.purpose).unwrap_or_default();
            sink.policy = sink.policy.serving(purpose);
            sink.outbox.clone_from(&daemon.outbox);
        }
        let mut listed_meters = Vec::new();
        // The meter each entry names (as sent), with the entry and its level: one meter
        // listed as printed and as sent must be listed at one level.
        let mut named: BTreeMap<String, (String, Level)> = BTreeMap::new();
        let meters_listed = consent.meters.len();
        for (id, level) in consent.meters {
            // Pasted ids carry spaces; inside one, a space is a mistake.
            let id = id.trim().to_owned();
            let configured = Change {
                from: Timestamp::MIN,
                level,
                scope: Scope::Every,
            };
            if id.is_empty()
                || !id.bytes().all(|b| b.is_ascii_graphic())
                || consent_table.add(id.as_bytes(), configured).is_err()
            {
                self.problem(
                    "consent.meters",
                    format!("{id:?}: a meter id is the equipment id as sent, printable ASCII"),
                );
                continue;
            }
            listed_meters.push(id.trim().to_ascii_uppercase());
            // The id as printed on the meter (`E0054…`), which Home Assistant shows and
            // `consent grant` takes, stands for the hex the meter sends, as it does there.
            // The id as written is kept too: a meter may send its id unencoded.
            let Ok(forms) = crate::rights::meter_forms(&id) else {
                continue;
            };
            for sent in forms.all() {
                match named.get(sent) {
                    Some((other, other_level)) if *other_level != level => self.problem(
                        "consent.meters",
                        format!(
                            "{other:?} ({other_level}) and {id:?} ({level}) are one meter: \
                             list it once"
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        named.insert(sent.clone(), (id.clone(), level));
                    }
                }
                if !listed_meters.contains(sent) {
                    let _ = consent_table.add(sent.as_bytes(), configured);
                    listed_meters.push(sent.clone());
                }
            }
        }
        // Two stores in one file would mix their identities and prune each other's rows.
        let stores = sinks.iter().filter_map(|s| match &s.kind {
            SinkKind::Sqlite { path, .. } => Some(
                path.as_deref()
                    .map_or("the default store".into(), Path::to_string_lossy),
            ),
            SinkKind::Stdout | SinkKind::Mqtt(_) | SinkKind::Influxdb(_) => None,
        });
        let stores: Vec<_> = stores.collect();
        let mut seen = BTreeSet::new();
        for store in &stores {
            if !seen.insert(store) {
                self.problem("sinks", format!("two sqlite sinks share {store}"));
            }
        }
        // A fleet (or several sources) shows more than one meter.
        let fleet: Vec<&str> = sources
            .iter()
            .filter(|s| s.kind.is_fleet())
            .map(|s| s.name.as_str())
            .collect();
        // Workers sharing a stream must name each meter alike: one key, given to each.
        let mut streams = sources
            .iter()
            .filter(|s| matches!(s.kind, SourceKind::Nats(_)));
        let shared = streams.next();
        if let Some(second) = streams.next() {
            self.problem(
                "sources",
                format!(
                    "source {} (nats): a worker reads one fleet stream; run another worker for another",
                    second.name
                ),
            );
        }
        if let Some(source) = shared
            && identity.key_file.is_none()
        {
            self.problem(
                "identity.key_file",
                format!(
                    "source {} (nats) shares its fleet with other workers, which must all use the same pseudonym key: give its file as [identity] key_file (copy the state directory's identity.key to each)",
                    source.name
                ),
            );
        }
        let many_meters = !fleet.is_empty() || sources.len() > 1;
        for sink in &sinks {
            if let SinkKind::Mqtt(settings) = &sink.kind
                && settings.layout == TopicLayout::DsmrReader
                && many_meters
            {
                self.problem(
                    &format!("sinks.{}", sink.name),
                    "layout dsmr_reader publishes every meter on the same topics, so one household would read another's: it needs a single meter (one serial, TCP or replay source)",
                );
            }
        }
        // Two sinks announcing to one Home Assistant under one discovery prefix, naming
        // meters alike, announce the same config topics and unique ids: each overwrites the
        // other's retained config, and Home Assistant's entities switch unit and state topic
        // at every restart. Never meant, so refused, as two stores in one file are. (Ids that
        // include the sink would keep them apart, but change every existing user's entities.)
        let mut announcers: HashMap<_, &str> = HashMap::new();
        for sink in &sinks {
            let SinkKind::Mqtt(settings) = &sink.kind else {
                continue;
            };
            let Some(prefix) = &settings.discovery_prefix else {
                continue;
            };
            let broker = &settings.broker;
            let place = (
                broker.host.to_ascii_lowercase(),
                broker.port,
                prefix.as_str(),
                sink.policy.identity(),
            );
            if let Some(first) = announcers.insert(place, &sink.name) {
                self.problem(
                    &format!("sinks.{}", sink.name),
                    format!(
                        "announces the same Home Assistant entities as sink {first} (discovery under {prefix}/ on {}:{}, meters named alike), which would switch between the two sinks' settings: set discovery = false on one of them",
                        broker.host, broker.port
                    ),
                );
            }
        }
        let mut warnings = Vec::new();
        // A cable at another speed reads only noise: allowed (a converter may need it), said.
        for source in &sources {
            if let SourceKind::Serial(serial) = &source.kind
                && !P1_BAUD_RATES.contains(&serial.baud)
            {
                warnings.push(format!(
                    "source {}: {} baud is no P1 speed (9600 for DSMR 2.2 and 3, 115200 for DSMR 4 and 5): check the setting if no telegram arrives",
                    source.name, serial.baud
                ));
            }
        }
        if !fleet.is_empty() && default > Level::Billing {
            warnings.push(format!(
                "consent.default = \"{default}\" gives every meter of the fleet (source {}) {default} readings, but daily and finer readings are opt-in per meter: list the meters that consented under [consent] meters",
                fleet.join(", ")
            ));
        }
        if sources.is_empty() && !self.has_problem_in("sources") {
            self.problem("sources", "no [[sources]]: nothing to read");
        }
        if sinks.is_empty() && !self.has_problem_in("sinks") {
            self.problem("sinks", "no [[sinks]]: nowhere to write");
        }
        Config {
            identity_key: identity.key_file,
            consent: consent_table,
            listed_meters,
            meters_listed,
            registry: consent.registry,
            purge_on_withdrawal: consent.purge_on_withdrawal.unwrap_or(true),
            billing: consent.billing_cadence.unwrap_or_default(),
            sources,
            sinks,
            metrics_listen,
            shutdown_grace: std::time::Duration::from_secs(grace),
            outbox: daemon.outbox,
            warnings,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use p1guard_conduct::{Granularity, Identity};

    use super::*;
    use crate::broker::{TlsRoots, host_name};
    use crate::config::Secret;
    use crate::sinks::{Batching, InfluxApi, MqttSettings};

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn a_serial_source_takes_its_preset_and_overrides() {
        let config = parse(
            r#"
            [consent]
            default = "daily"
            meters = { "4530303435303034303130313639373135" = "live" }

            [[sources]]
            type = "serial"
            device = "/dev/p1"
            preset = "dsmr4"

            [[sources]]
            name = "old meter"
            type = "serial"
            device = "/dev/ttyUSB1"
            preset = "dsmr2"
            baud = 19200

            [[sinks]]
            type = "stdout"
            max_granularity = "live"
            identity = "raw"
            "#,
            no_env(),
        )
        .unwrap();
        assert_eq!(config.consent.default_level(), Level::Daily);
        assert_eq!(config.consent.listed(), 1);
        let SourceKind::Serial(dsmr4) = &config.sources[0].kind else {
            panic!("serial expected");
        };
        assert_eq!(dsmr4.baud, 115_200);
        assert_eq!(dsmr4.data_bits, tokio_serial::DataBits::Eight);
        assert!(
            config.sources[0].input.clear_bit7,
            "DSMR 4 reads 8N1 and clears bit 7"
        );
        let SourceKind::Serial(dsmr2) = &config.sources[1].kind else {
            panic!("serial expected");
        };
        assert_eq!(
            (dsmr2.baud, dsmr2.data_bits, dsmr2.parity),
            (
                19_200,
                tokio_serial::DataBits::Seven,
                tokio_serial::Parity::Even
            )
        );
        assert_eq!(config.sources[1].name, "old meter");
        assert_eq!(config.sinks[0].policy.identity(), Identity::Raw);
    }

    #[test]
    fn each_sink_serves_a_purpose_and_the_registry_is_configured() {
        let config = parse(
            r#"
            [consent]
            registry = "/var/lib/p1guard/consent.sqlite"
            purge_on_withdrawal = false

            [[sources]]
            type = "tcp"
            address = "dongle.local:2000"

            [[sinks]]
            name = "archive"
            type = "stdout"
            max_granularity = "daily"

            [[sinks]]
            name = "app"
            type = "stdout"
            max_granularity = "quarter_hour"
            purpose = "insight"
            "#,
            no_env(),
        )
        .unwrap();
        let purposes: Vec<_> = config.sinks.iter().map(|s| s.policy.purpose()).collect();
        assert_eq!(purposes[0], p1guard_conduct::PurposeId::DEFAULT);
        assert_eq!(Some(purposes[1]), config.consent.purpose("insight"));
        assert_ne!(purposes[0], purposes[1]);
        assert_eq!(
            config.registry.as_deref(),
            Some(Path::new("/var/lib/p1guard/consent.sqlite"))
        );
        assert!(!config.purge_on_withdrawal);

        let sinks: String = (0..17)
            .map(|n| {
                format!(
                    "[[sinks]]\nname = \"s{n}\"\ntype = \"stdout\"\nmax_granularity = \"daily\"\npurpose = \"p{n}\"\n"
                )
            })
            .collect();
        let problems = parse(
            &format!(
                "[[sources]]\ntype = \"tcp\"\naddress = \"d:1\"\n{sinks}[[sinks]]\ntype = \"stdout\"\nmax_granularity = \"daily\"\npurpose = \"Insight App\"\n"
            ),
            no_env(),
        )
        .unwrap_err()
        .to_string();
        assert!(problems.contains("more than 16 purposes"), "{problems}");
        assert!(
            problems.contains(r#"purpose "Insight App": expected a name of a-z, 0-9, _ and -"#),
            "{problems}"
        );
    }

    #[test]
    fn a_replay_speed_is_a_factor_written_as_a_number_or_a_word() {
        let capture = std::env::temp_dir().join(format!("p1guard-speed-{}", std::process::id()));
        std::fs::write(&capture, "").unwrap();
        let config = |speed: &str| {
            parse(
                &format!(
                    "[[sources]]\ntype = \"replay\"\nfiles = [{capture:?}]\nspeed = {speed}\n\
                     [[sinks]]\ntype = \"stdout\"\nmax_granularity = \"daily\"\n"
                ),
                no_env(),
            )
        };
        for (written, factor) in [
            ("60", 60.0),
            ("0.5", 0.5),
            ("\"60\"", 60.0),
            ("\"realtime\"", 1.0),
        ] {
            let config = config(written).unwrap_or_else(|p| panic!("{written}: {p}"));
            let SourceKind::Replay { speed, .. } = &config.sources[0].kind else {
                panic!("replay expected")
            };
            assert_eq!(*speed, crate::pace::Speed::Factor(factor), "{written}");
        }
        assert!(config("0").unwrap_err().to_string().contains("speed \"0\""));
        std::fs::remove_file(&capture).unwrap();
    }

    #[test]
    fn a_huge_value_is_not_echoed_whole() {
        let huge = "x".repeat(50 * 1024 * 1024);
        let problems = parse(&format!("[metrics]\nlisten = \"{huge}\"\n"), no_env())
            .unwrap_err()
            .to_string();
        assert!(problems.len() < 2000, "{} bytes", problems.len());
        assert!(problems.contains("more bytes)"), "{problems}");
    }

    #[test]
    fn a_problem_says_on_which_line_its_section_starts_and_which_variable_set_it() {
        let text = "[consent]\ndefault = \"billing\"\n\n[[sinks]]\ntype = \"stdout\"\n\
                    max_granularity = \"daily\"\nidentity = \"raw\"\n";
        let env = vec![("P1GUARD_CONSENT__DEFAULT".to_owned(), "hourly".to_owned())];
        let problems = parse(text, env).unwrap_err();
        assert_eq!(problems.0.len(), 3, "{problems}");
        assert!(
            problems.0[0].starts_with("consent (line 1): unknown variant `hourly`")
                && problems.0[0].ends_with("(P1GUARD_CONSENT__DEFAULT sets consent.default)"),
            "{problems}"
        );
        assert!(
            problems.0[1].starts_with("sinks[0] (line 4): raw meter identity"),
            "{problems}"
        );
        // A section that is not there has no line.
        assert_eq!(problems.0[2], "sources: no [[sources]]: nothing to read");
    }

    #[test]
    fn a_serial_speed_no_meter_sends_at_is_said() {
        let config = |baud: u32| {
            let text = format!(
                "[[sources]]\ntype = \"serial\"\ndevice = \"/dev/ttyUSB0\"\nbaud = {baud}\n\
                 [[sinks]]\ntype = \"stdout\"\nmax_granularity = \"daily\"\n"
            );
            parse(&text, no_env()).unwrap()
        };
        assert_eq!(config(115_200).warnings, Vec::<String>::new());
        assert_eq!(config(9_600).warnings, Vec::<String>::new());
        let typo = config(11_520).warnings;
        assert_eq!(typo.len(), 1, "{typo:?}");
        assert!(
            typo[0].starts_with("source serial: 11520 baud is no P1 speed"),
            "{typo:?}"
        );
    }

    #[test]
    fn one_meter_listed_as_printed_and_as_sent_must_be_listed_at_one_level() {
        let listed = |meters: &str| {
            parse(
                &format!(
                    "[consent]\nmeters = {{ {meters} }}\n\
                     [[sources]]\ntype = \"tcp\"\naddress = \"dongle.local:8088\"\n\
                     [[sinks]]\ntype = \"stdout\"\nmax_granularity = \"live\"\n"
                ),
                no_env(),
            )
        };
        let problems = listed(
            r#""E0054000012345678" = "live", "4530303534303030303132333435363738" = "billing""#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            problems.contains(
                "\"4530303534303030303132333435363738\" (billing) and \"E0054000012345678\" \
                 (live) are one meter: list it once"
            ),
            "{problems}"
        );
        let agreeing = listed(
            r#""E0054000012345678 " = "live", "4530303534303030303132333435363738" = "live""#,
        )
        .unwrap();
        assert_eq!(agreeing.meters_listed, 2, "as many as the entries");
        assert_eq!(
            agreeing.consent.level(
                b"4530303534303030303132333435363738",
                p1guard_conduct::PurposeId::DEFAULT,
                Timestamp::UNIX_EPOCH
            ),
            Level::Live
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let problems = parse(
            r#"
            [consent]
            default = "hourly"

            [[sources]]
            type = "tcp"
            address = "dongle.local"

            [[sources]]
            type = "serial"
            device = "/dev/p1"
            preset = "dsmr9"

            [[sources]]
            type = "replay"
            files = ["/nonexistent/capture.txt"]
            speed = "warp"

            [[sinks]]
            type = "sqlite"
            max_granularity = "quarter_hour"
            identity = "raw"

            [[sinks]]
            type = "stdout"
            max_granularity = "live"
            colour = true

            [mqtt]
            host = "localhost"

            [metrics]
            listen = "everywhere"
            "#,
            no_env(),
        )
        .unwrap_err();
        let text = problems.to_string();
        for expected in [
            "consent (line 2): unknown variant `hourly`",
            "sources[0] (line 5): address \"dongle.local\": expected host:port",
            "sources[1] (line 9): preset \"dsmr9\"",
            "sources[2] (line 14): /nonexistent/capture.txt: No such file",
            "sources[2] (line 14): speed \"warp\"",
            "sinks[0] (line 19): raw meter identity is only allowed on sinks whose max_granularity is live",
            "sinks[1] (line 24): unknown field `colour`",
            "mqtt (line 29): unknown section",
            "metrics (line 32): listen \"everywhere\": expected address:port",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        assert_eq!(problems.0.len(), 9, "{text}");
    }

    #[test]
    fn a_nats_source_takes_the_issue_s_shape_and_needs_a_shared_pseudonym_key() {
        let source = r#"
            [[sources]]
            name = "fleet"
            type = "nats"
            url = "nats://127.0.0.1:4222"
            stream = "P1"
            partitions = 64

            [[sinks]]
            type = "stdout"
            max_granularity = "daily"
            "#;
        let problems = parse(source, no_env()).unwrap_err().to_string();
        assert!(
            problems.contains("identity.key_file: source fleet (nats) shares its fleet"),
            "{problems}"
        );

        let config = parse(
            &format!("[identity]\nkey_file = \"/etc/p1guard/identity.key\"\n{source}"),
            no_env(),
        )
        .unwrap();
        assert_eq!(
            config.sources[0].describe(),
            "source fleet (nats): stream P1 (64 partitions) on nats://127.0.0.1:4222"
        );
        assert!(config.sources[0].kind.is_fleet());
        let second = "[[sources]]\nname = \"second\"\ntype = \"nats\"\nurl = \"nats://127.0.0.1\"\npartitions = 8\n";
        let problems = parse(
            &format!("[identity]\nkey_file = \"/etc/p1guard/identity.key\"\n{second}{source}"),
            no_env(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            problems.contains("source fleet (nats): a worker reads one fleet stream"),
            "{problems}"
        );

        let problems = parse(
            r#"
            [identity]
            key_file = "/etc/p1guard/identity.key"

            [[sources]]
            type = "nats"
            url = "mqtt://127.0.0.1"
            stream = "p1.part"
            partitions = 0
            username = "worker"
            lease_ttl_secs = 0

            [[sinks]]
            type = "stdout"
            "#,
            no_env(),
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "url: expected nats://host[:port] or tls://host[:port]",
            "stream \"p1.part\": expected a name of letters, digits, _ and -",
            "partitions = 0: expected 1 to 1024",
            "username and password go together",
            "lease_ttl_secs must be at least 1",
        ] {
            assert!(
                problems.contains(expected),
                "{expected:?} missing from:\n{problems}"
            );
        }
    }

    #[test]
    fn mqtt_sources_and_sinks_take_a_broker_url_and_topics() {
        let secret = std::env::temp_dir().join(format!("p1guard-broker-{}", std::process::id()));
        std::fs::write(&secret, "s3cret\n").unwrap();
        let config = parse(
            &r#"
            [[sources]]
            name = "fleet"
            type = "mqtt"
            url = "mqtts://broker.example:8884"
            topic = "p1/+/telegram"
            shared_group = "workers"
            client_id = "worker-1"
            username = "p1guard"
            password = { file = "SECRET" }

            [[sinks]]
            type = "mqtt"
            url = "mqtt://[::1]"
            max_granularity = "live"
            "#
            .replace("SECRET", &secret.to_string_lossy()),
            no_env(),
        )
        .unwrap();
        std::fs::remove_file(&secret).unwrap();
        let SourceKind::Mqtt {
            broker,
            subscription,
        } = &config.sources[0].kind
        else {
            panic!("{config:?}")
        };
        assert_eq!(subscription, "$share/workers/p1/+/telegram");
        assert_eq!(
            (broker.host.as_str(), broker.port),
            ("broker.example", 8884)
        );
        assert_eq!(broker.tls, Some(TlsRoots::System));
        assert_eq!(broker.client_id, "worker-1");
        let (user, password) = broker.credentials.as_ref().unwrap();
        assert_eq!((user.as_str(), password.expose()), ("p1guard", "s3cret"));
        assert!(!format!("{config:?}").contains("s3cret"));

        let SinkKind::Mqtt(MqttSettings {
            broker,
            prefix,
            layout,
            discovery_prefix,
        }) = &config.sinks[0].kind
        else {
            panic!("{config:?}")
        };
        assert_eq!(
            (broker.host.as_str(), broker.port, &broker.tls),
            ("::1", 1883, &None)
        );
        assert_eq!(broker.client_id, format!("p1guard-{}-mqtt", host_name()));
        assert_eq!(
            (prefix.as_str(), *layout),
            ("p1guard", TopicLayout::P1guard)
        );
        assert_eq!(
            discovery_prefix.as_deref(),
            Some("homeassistant"),
            "on for a live sink"
        );

        // dsmr-reader's topics, for one household's meter.
        let config = parse(
            r#"
            [[sources]]
            type = "tcp"
            address = "dongle.local:2000"

            [[sinks]]
            name = "dsmr"
            type = "mqtt"
            url = "mqtt://localhost"
            layout = "dsmr_reader"
            prefix = "dsmr"
            max_granularity = "live"
            discovery = false
            "#,
            no_env(),
        )
        .unwrap();
        let SinkKind::Mqtt(MqttSettings {
            layout,
            discovery_prefix,
            ..
        }) = &config.sinks[0].kind
        else {
            panic!("{config:?}")
        };
        assert_eq!(
            (*layout, discovery_prefix),
            (TopicLayout::DsmrReader, &None)
        );
    }

    #[test]
    fn mqtt_settings_are_checked() {
        let problems = parse(
            r#"
            [[sources]]
            type = "mqtt"
            name = "mqtt1"
            url = "tcp://broker:1883"
            topic = "$share/g/p1/#"

            [[sources]]
            type = "mqtt"
            name = "mqtt2"
            url = "mqtt://broker:1883"
            topic = "p1/#"
            shared_group = "a/b"
            ca_file = "/etc/ca.pem"
            username = "p1guard"

            [[sinks]]
            type = "mqtt"
            name = "mqtt3"
            url = "mqtt://broker:port"
            max_granularity = "daily"
            discovery = true
            layout = "homie"
            prefix = "p1/#"

            [[sinks]]
            type = "mqtt"
            name = "mqtt4"
            url = "mqtt://broker"
            layout = "dsmr_reader"
            max_granularity = "quarter_hour"
            "#,
            no_env(),
        )
        .unwrap_err();
        let text = problems.to_string();
        for expected in [
            "sources[0] (line 2): url \"tcp://broker:1883\": expected mqtt://host[:port] or mqtts://host[:port]",
            "sources[0] (line 2): topic \"$share/g/p1/#\": expected a topic filter (share it with shared_group)",
            "sources[1] (line 8): ca_file needs an mqtts:// url",
            "sources[1] (line 8): username and password go together",
            "sources[1] (line 8): shared_group \"a/b\": expected a name without / + #",
            "sinks[0] (line 17): url \"mqtt://broker:port\"",
            "sinks[0] (line 17): prefix \"p1/#\"",
            "sinks[0] (line 17): layout \"homie\"",
            "sinks[0] (line 17): discovery needs max_granularity = \"live\"",
            "sinks[1] (line 26): layout dsmr_reader carries live readings only",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        assert_eq!(problems.0.len(), 10, "{text}");
    }

    #[test]
    fn two_sinks_announcing_the_same_home_assistant_entities_are_refused() {
        let config = |second: &str| {
            parse(
                &format!(
                    r#"
                    [[sources]]
                    type = "tcp"
                    name = "dongle"
                    address = "192.168.1.20:8088"

                    [[sinks]]
                    type = "mqtt"
                    name = "records"
                    url = "mqtt://broker"
                    max_granularity = "live"
                    identity = "raw"

                    [[sinks]]
                    type = "mqtt"
                    name = "dsmr-reader"
                    layout = "dsmr_reader"
                    max_granularity = "live"
                    {second}
                    "#
                ),
                no_env(),
            )
        };
        let problems = config(
            r#"url = "mqtt://BROKER:1883"
                                 identity = "raw""#,
        )
        .unwrap_err()
        .to_string();
        assert!(
            problems.contains(
                "sinks.dsmr-reader: announces the same Home Assistant entities as sink records (discovery under homeassistant/ on BROKER:1883, meters named alike)"
            ),
            "{problems}"
        );
        // Apart: discovery off on one, another broker, another prefix, or meters named
        // otherwise (a raw id and a pseudonym are different entities).
        for apart in [
            "url = \"mqtt://broker\"\nidentity = \"raw\"\ndiscovery = false",
            "url = \"mqtt://other-broker\"\nidentity = \"raw\"",
            "url = \"mqtt://broker:1884\"\nidentity = \"raw\"",
            "url = \"mqtt://broker\"\nidentity = \"raw\"\ndiscovery_prefix = \"ha2\"",
            "url = \"mqtt://broker\"\nidentity = \"pseudonym\"",
        ] {
            if let Err(problems) = config(apart) {
                panic!("{apart}: {problems}");
            }
        }
    }

    #[test]
    fn a_fleet_gets_no_shared_topics_and_a_generous_default_is_questioned() {
        let fleet = |default: &str, layout: &str| {
            parse(
                &format!(
                    r#"
                    [consent]
                    default = "{default}"

                    [[sources]]
                    name = "fleet"
                    type = "mqtt"
                    url = "mqtt://broker:1883"
                    topic = "p1/+/telegram"

                    [[sinks]]
                    name = "app"
                    type = "mqtt"
                    url = "mqtt://broker:1883"
                    layout = "{layout}"
                    max_granularity = "live"
                    discovery = false
                    "#
                ),
                no_env(),
            )
        };
        let problems = fleet("billing", "dsmr_reader").unwrap_err().to_string();
        assert!(
            problems
                .contains("sinks.app: layout dsmr_reader publishes every meter on the same topics"),
            "{problems}"
        );
        assert!(fleet("billing", "p1guard").unwrap().warnings.is_empty());
        let warnings = fleet("daily", "p1guard").unwrap().warnings;
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("opt-in per meter"), "{warnings:?}");
    }

    #[test]
    fn secrets_are_read_from_their_file_and_never_shown() {
        let key = "AE3A2A8A6B1F3C4D5E6F708192A3B4C5";
        let dir = std::env::temp_dir().join(format!("p1guard-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, format!("{key}\n")).unwrap();
        let text = format!(
            r#"
            [[sources]]
            type = "tcp"
            address = "192.0.2.7:8088"
            key = {{ file = {:?} }}

            [[sinks]]
            type = "stdout"
            max_granularity = "daily"
            "#,
            file.display().to_string()
        );
        let config = parse(&text, no_env()).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        let cipher = config.sources[0].input.cipher.expect("a key");
        assert_eq!(cipher.key[0], 0xAE);
        assert!(format!("{config:?}").contains("cipher: Some(CipherKeys([redacted]))"));
    }

    #[test]
    fn environment_overrides_apply_before_validation() {
        let text = r#"
            [[sources]]
            type = "tcp"
            address = "192.0.2.7:8088"

            [[sinks]]
            type = "stdout"
            max_granularity = "daily"
        "#;
        let vars = [
            ("P1GUARD_SINKS__0__MAX_GRANULARITY", "quarter_hour"),
            ("P1GUARD_CONSENT__DEFAULT", "none"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let config = parse(text, vars).unwrap();
        assert_eq!(config.sinks[0].policy.ceiling(), Granularity::QuarterHour);
        assert_eq!(config.consent.default_level(), Level::None);
    }

    #[test]
    fn influxdb_sinks_take_their_api_settings_and_defaults() {
        let dir = std::env::temp_dir().join(format!("p1guard-influx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (token, password) = (dir.join("token"), dir.join("password"));
        std::fs::write(&token, "t0ken\n").unwrap();
        std::fs::write(&password, "s3cret").unwrap();
        let text = format!(
            r#"
            [[sources]]
            type = "tcp"
            address = "192.0.2.7:8088"

            [[sinks]]
            name = "cloud"
            type = "influxdb"
            api = "v2"
            url = "https://influx.example:8086"
            org = "energy"
            token = {{ file = {:?} }}
            buckets = {{ daily = "days" }}
            max_granularity = "daily"

            [[sinks]]
            name = "home"
            type = "influxdb"
            api = "v1"
            url = "http://127.0.0.1:8086"
            username = "p1"
            password = {{ file = {:?} }}
            retention_policies = {{ live = "a_week" }}
            batch_records = 100
            flush_interval_ms = 0
            gzip = false
            max_granularity = "live"
            "#,
            token.display().to_string(),
            password.display().to_string()
        );
        let config = parse(&text, no_env()).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
        let SinkKind::Influxdb(cloud) = &config.sinks[0].kind else {
            panic!("influxdb expected");
        };
        assert_eq!(cloud.url, "https://influx.example:8086");
        assert!(cloud.gzip);
        assert_eq!(
            cloud.batching,
            Batching {
                max_records: 5000,
                max_wait: Duration::from_secs(1)
            }
        );
        let InfluxApi::V2 {
            org,
            token,
            buckets,
        } = &cloud.api
        else {
            panic!("v2 expected");
        };
        assert_eq!(org, "energy");
        assert_eq!(token.as_ref().map(Secret::expose), Some("t0ken"));
        assert_eq!(
            buckets,
            &[
                "p1guard_billing",
                "days",
                "p1guard_quarter_hour",
                "p1guard_live"
            ]
        );
        let SinkKind::Influxdb(home) = &config.sinks[1].kind else {
            panic!("influxdb expected");
        };
        assert!(!home.gzip);
        assert_eq!(
            home.batching,
            Batching {
                max_records: 100,
                max_wait: Duration::ZERO
            }
        );
        let InfluxApi::V1 {
            database,
            retention_policies,
            credentials,
        } = &home.api
        else {
            panic!("v1 expected");
        };
        assert_eq!(database, "p1guard");
        assert_eq!(
            retention_policies,
            &["billing", "daily", "quarter_hour", "a_week"]
        );
        let (username, password) = credentials.as_ref().expect("credentials");
        assert_eq!((username.as_str(), password.expose()), ("p1", "s3cret"));
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("t0ken") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn influxdb_settings_are_checked() {
        let problems = parse(
            r#"
            [[sources]]
            type = "tcp"
            address = "192.0.2.7:8088"

            [[sinks]]
            type = "influxdb"
            name = "influxdb1"
            api = "v2"
            url = "influx.example:8086"
            database = "p1guard"
            batch_records = 0
            max_granularity = "daily"

            [[sinks]]
            type = "influxdb"
            name = "influxdb2"
            api = "v1"
            url = "ftp://influx.example"
            org = "energy"
            username = "p1"
            retention_policies = { daily = "" }
            max_granularity = "daily"

            [[sinks]]
            type = "influxdb"
            name = "influxdb3"
            api = "v3"
            url = "http://influx.example"
            max_granularity = "daily"

            [[sinks]]
            type = "influxdb"
            name = "influxdb4"
            api = "v2"
            url = "http://influx.example"
            org = "energy"
            bucket = "p1guard"
            max_granularity = "daily"
            "#,
            no_env(),
        )
        .unwrap_err();
        let text = problems.to_string();
        for expected in [
            "sinks[0] (line 6): url \"influx.example:8086\": expected http(s)://host:port",
            "sinks[0] (line 6): database is a setting of api v1",
            "sinks[0] (line 6): api v2 needs an org",
            "sinks[0] (line 6): batch_records must be positive",
            "sinks[1] (line 15): url \"ftp://influx.example\": expected http(s)://host:port",
            "sinks[1] (line 15): org is a setting of api v2",
            "sinks[1] (line 15): retention_policies.daily: empty",
            "sinks[1] (line 15): username and password go together",
            "sinks[2] (line 25): api \"v3\": expected v2 or v1",
            "sinks[3] (line 32): unknown field `bucket`",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
        assert_eq!(problems.0.len(), 10, "{text}");
    }
}
