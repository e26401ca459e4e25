//! Sinks: where records leave the process. Each runs as its own task, fed from its own
//! outbox ([`crate::outbox`]), which only ever holds what the sink's [`SinkPolicy`]
//! admitted: records at or under its ceiling, named as its identity allows (the reduce task
//! applies the policy before anything is stored, so a pseudonymous sink's outbox holds no
//! raw id). A failed write is retried until it succeeds: an outage delays records, it never
//! drops them, and it delays no other sink. When the process is stopping and a sink still
//! fails at the end of the grace, what it has not written stays in its outbox for the next
//! start. Only a refusal for good (an HTTP 4xx) or a reader gone (stdout) gives records up,
//! counted and logged.

mod influx;
mod mqtt;
mod sqlite;
mod stdout;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use p1guard_conduct::{Granularity, Identity, Kind, MeterName, SinkPolicy, SinkRecord};
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{Checker, Entry};
use crate::outbox::Inlet;
use crate::telemetry::log_limit::LogLimit;
use crate::telemetry::metrics::SinkMetrics;

pub use self::influx::{InfluxApi, InfluxConfig, InfluxSettings, InfluxSink};
pub use self::mqtt::{MqttConfig, MqttSettings, MqttSink, RetainedMessages, TopicLayout};
pub use self::sqlite::{SqliteConfig, SqliteSink};
pub use self::stdout::StdoutSink;

/// The settings every `[[sinks]]` entry has, whatever its type. (Serde cannot flatten and
/// deny unknown fields at once, so an entry is split into these and its type's own.)
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkEntry {
    /// The finest granularity this sink receives.
    pub max_granularity: Granularity,
    /// `pseudonym` (default) or `raw` (only with max_granularity live).
    pub identity: Option<String>,
    /// The purpose the sink serves, whose consent its records need; `default` if absent.
    pub purpose: Option<String>,
    /// The sink's share of the outbox, in MiB; 1024 if absent.
    pub outbox_max_mib: Option<u64>,
}

impl SinkEntry {
    /// The keys of [`SinkEntry`].
    pub const FIELDS: &[&str] = &["max_granularity", "identity", "purpose", "outbox_max_mib"];
}

/// Each sink type's own settings, as written.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkSettings {
    /// The embedded store.
    Sqlite(SqliteConfig),
    /// JSON lines on standard output.
    Stdout {},
    /// Records published to an MQTT broker.
    Mqtt(MqttConfig),
    /// An InfluxDB server (or another that speaks its write API).
    Influxdb(Box<InfluxConfig>),
}

/// Whether `name` can name a purpose: a-z, 0-9, `_` and `-`, as sinks and consent events
/// write it.
pub fn is_purpose_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// One sink, checked.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Unique among sinks.
    pub name: String,
    /// Ceiling, identity and purpose.
    pub policy: SinkPolicy,
    /// The name of the purpose it serves (the policy holds its index).
    pub purpose: String,
    /// Where it writes.
    pub kind: SinkKind,
    /// The outbox file (shared by every sink); the state directory's `outbox.sqlite` if
    /// `None`.
    pub outbox: Option<std::path::PathBuf>,
    /// Its share of the outbox: when full, input waits.
    pub outbox_max_bytes: u64,
}

/// Where a sink writes.
#[derive(Debug, Clone)]
pub enum SinkKind {
    /// The embedded SQLite store.
    Sqlite {
        /// The database file; the state directory's `p1guard.sqlite` if `None`.
        path: Option<std::path::PathBuf>,
        /// How long records of each granularity are kept, indexed like [`Granularity::ALL`].
        retention: [Option<Duration>; 4],
    },
    /// JSON lines on standard output.
    Stdout,
    /// Records published to an MQTT broker.
    Mqtt(MqttSettings),
    /// An InfluxDB server.
    Influxdb(InfluxSettings),
}

impl SinkConfig {
    /// The sink `entry` describes, every problem noted.
    pub fn check(
        checker: &mut Checker<'_>,
        entry: Entry<SinkEntry, SinkSettings>,
    ) -> Option<SinkConfig> {
        let Entry {
            at,
            name,
            common: entry,
            settings,
        } = entry;
        let at = at.as_str();
        let identity = match entry.identity.as_deref() {
            None | Some("pseudonym") => Identity::Pseudonym,
            Some("raw") => Identity::Raw,
            Some(other) => {
                checker.problem(at, format!("identity {other:?}: expected pseudonym or raw"));
                return None;
            }
        };
        let policy = match SinkPolicy::new(entry.max_granularity, identity) {
            Ok(policy) => policy,
            Err(error) => {
                checker.problem(at, error);
                return None;
            }
        };
        let purpose = entry.purpose.unwrap_or_else(|| "default".to_owned());
        if !is_purpose_name(&purpose) {
            checker.problem(
                at,
                format!("purpose {purpose:?}: expected a name of a-z, 0-9, _ and -"),
            );
        }
        let outbox_max_bytes = match entry.outbox_max_mib {
            None => crate::outbox::DEFAULT_MAX_BYTES,
            Some(0) => {
                checker.problem(at, "outbox_max_mib: must be positive");
                crate::outbox::DEFAULT_MAX_BYTES
            }
            Some(mib) => mib.saturating_mul(1 << 20),
        };
        let kind = match settings {
            SinkSettings::Sqlite(sqlite) => {
                let (path, retention) = sqlite.check(checker, at);
                SinkKind::Sqlite { path, retention }
            }
            SinkSettings::Stdout {} => SinkKind::Stdout,
            SinkSettings::Mqtt(mqtt) => SinkKind::Mqtt(mqtt.check(checker, at, &name, policy)?),
            SinkSettings::Influxdb(influx) => SinkKind::Influxdb(influx.check(checker, at)?),
        };
        Some(SinkConfig {
            name,
            policy,
            purpose,
            kind,
            outbox: None,
            outbox_max_bytes,
        })
    }

    /// What `check-config` says of the sink.
    pub fn describe(&self) -> String {
        let place = match &self.kind {
            SinkKind::Sqlite {
                path: Some(path), ..
            } => format!(" at {}", path.display()),
            SinkKind::Sqlite { path: None, .. } => " in the state directory".to_owned(),
            SinkKind::Stdout => String::new(),
            SinkKind::Mqtt(mqtt) => mqtt.describe(),
            SinkKind::Influxdb(influx) => influx.describe(),
        };
        format!(
            "sink {} ({}){place}: up to {} under the consent for purpose {}, meters named by {}",
            self.name,
            self.kind.type_name(),
            self.policy.ceiling(),
            self.purpose,
            match self.policy.identity() {
                Identity::Raw => "their equipment id",
                Identity::Pseudonym => "pseudonym",
            },
        )
    }
}

impl SinkConfig {
    /// Opens the sink and starts its task in `tasks`, fed from its outbox's `inlet`. Fails
    /// if the sink cannot be set up at all (a store that cannot be opened, TLS that cannot
    /// be built).
    pub fn start(
        self,
        inlet: Inlet,
        counters: Arc<SinkMetrics>,
        stopping: &Stopping,
        no_longer_live: &NoLongerLive,
        tasks: &mut JoinSet<()>,
    ) -> anyhow::Result<()> {
        let SinkConfig { name, kind, .. } = self;
        let batching = match &kind {
            SinkKind::Influxdb(settings) => settings.batching,
            SinkKind::Sqlite { .. } | SinkKind::Stdout | SinkKind::Mqtt(_) => Batching::IMMEDIATE,
        };
        let feed = Feed {
            batching,
            inlet,
            counters,
            shutdown: stopping.shutdown.clone(),
            give_up: stopping.give_up.clone(),
            no_longer_live: Some(no_longer_live.sender.subscribe()),
        };
        match kind {
            SinkKind::Sqlite { path, retention } => {
                let path = match path {
                    Some(path) => path,
                    None => crate::state::dir()?.join("p1guard.sqlite"),
                };
                let store = SqliteSink::open(&path, retention)
                    .with_context(|| format!("sink {name}: opening {}", path.display()))?;
                tasks.spawn(drive(store, feed));
            }
            SinkKind::Stdout => {
                tasks.spawn(drive(StdoutSink::new(), feed));
            }
            SinkKind::Mqtt(settings) => {
                let client = MqttSink::connect(&name, settings)
                    .with_context(|| format!("sink {name}: setting up"))?;
                tasks.spawn(drive(client, feed));
            }
            SinkKind::Influxdb(settings) => {
                let influx = InfluxSink::new(settings)
                    .with_context(|| format!("sink {name}: setting up"))?;
                tasks.spawn(drive(influx, feed));
            }
        }
        Ok(())
    }
}

impl SinkKind {
    /// `sqlite`, `stdout`, `mqtt` or `influxdb`.
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::Sqlite { .. } => "sqlite",
            SinkKind::Stdout => "stdout",
            SinkKind::Mqtt(_) => "mqtt",
            SinkKind::Influxdb(_) => "influxdb",
        }
    }
}

/// Meters the running sinks may no longer show live: the registry follower tells them when a
/// lowered consent comes due (a withdrawal, an erasure), so that a sink that announces meters
/// by itself (Home Assistant discovery, published again whenever Home Assistant restarts)
/// stops announcing what the purge cleared.
#[derive(Debug, Clone)]
pub struct NoLongerLive {
    sender: broadcast::Sender<Arc<Forgotten>>,
}

/// Meters no longer live on one sink, named as that sink names them.
#[derive(Debug)]
pub struct Forgotten {
    sink: String,
    meters: Vec<String>,
}

impl Default for NoLongerLive {
    fn default() -> NoLongerLive {
        NoLongerLive {
            sender: broadcast::channel(1024).0,
        }
    }
}

impl NoLongerLive {
    /// Tells the sink named `sink` that it may no longer show `meters` (named as it names
    /// them) live.
    pub fn tell(&self, sink: &str, meters: Vec<String>) {
        if meters.is_empty() {
            return;
        }
        let sink = sink.to_owned();
        // No sink listening (a command, not the daemon): nobody to tell.
        let _ = self.sender.send(Arc::new(Forgotten { sink, meters }));
    }
}

/// How the process stops: `shutdown` stops the sources (and everything read drains
/// through); `give_up` ends the grace after it, and sinks leave what they have not written
/// in their outboxes.
#[derive(Debug, Clone, Default)]
pub struct Stopping {
    /// Fires at SIGTERM/SIGINT.
    pub shutdown: CancellationToken,
    /// Fires when the shutdown grace is over.
    pub give_up: CancellationToken,
}

/// Days billing records are kept: the tax authority's 7 years (and the leap days in them).
pub const FISCAL_RETENTION_DAYS: u32 = 7 * 365 + 2;

/// Retention of each granularity (billing, daily, quarter_hour, live) unless configured:
/// privacy.md's defaults of 7 years, 24 months, 90 days and 7 days.
pub const DEFAULT_RETENTION_DAYS: [u32; 4] = [FISCAL_RETENTION_DAYS, 2 * 365, 90, 7];

/// privacy.md's default retention of `granularity`.
pub fn default_retention(granularity: Granularity) -> Duration {
    Duration::from_secs(u64::from(DEFAULT_RETENTION_DAYS[granularity as usize]) * 86_400)
}

/// How often sinks run their housekeeping (retention).
const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);

/// How long a sink may take to flush once it has given up.
const FLUSH_AFTER_GIVING_UP: Duration = Duration::from_secs(2);

/// The longest wait between two attempts at a write, whatever a store asks for.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// A destination for records.
pub trait Sink: Send + 'static {
    /// Writes records (admitted by the sink's policy). A [`WriteError::Retry`] means nothing
    /// of the batch may be assumed written; the batch is offered again.
    fn write(
        &mut self,
        records: &[SinkRecord],
    ) -> impl Future<Output = Result<(), WriteError>> + Send;

    /// Whether the server is there and lets p1guard in (a ping, the credentials, an MQTT
    /// CONNACK), checked once at start: what to say of it, or why not. Must not wait longer
    /// than a connection attempt.
    fn check(&mut self) -> impl Future<Output = anyhow::Result<String>> + Send {
        async { Ok(String::new()) }
    }

    /// Housekeeping on a timer, such as deleting records past their retention.
    fn maintain(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Resolves when the sink has work of its own between writes, such as announcing
    /// itself on a new connection; [`drive`] then calls [`Sink::attend`]. Must be
    /// cancel-safe: it races the next batch.
    fn wants_attention(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }

    /// Does what [`Sink::wants_attention`] announced.
    fn attend(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Stops announcing `meters` (named as this sink names them), whose live readings it
    /// may no longer show: their consent was lowered, and their stored records purged.
    fn forget(&mut self, _meters: &[String]) {}

    /// Makes everything written durable before the process exits.
    fn flush(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// When held records are written: once `max_records` are held, or `max_wait` after the
/// first of them arrived, whichever comes first; the channel closing writes what is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Records per write, at least 1; more held are written in several.
    pub max_records: usize,
    /// How long a record may wait for others.
    pub max_wait: Duration,
}

impl Batching {
    /// Each incoming batch written as it comes: for stores where a write is cheap.
    pub const IMMEDIATE: Batching = Batching {
        max_records: usize::MAX,
        max_wait: Duration::ZERO,
    };
}

/// A write the store refused for good (an HTTP 4xx other than 413 and 429): retrying cannot
/// help, so the records are dropped, counted as not written, and the reason logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused with status {status}: {message}")]
pub struct Refused {
    /// The HTTP status.
    pub status: u16,
    /// What the store said.
    pub message: String,
    /// How many records of each granularity the store did not take: a sink writing each
    /// granularity to its own place may be refused for some only, and a store may drop some
    /// points of a write and keep the rest (InfluxDB's partial write says how many).
    pub not_written: [usize; 4],
}

/// How a write failed: what [`drive`] does next depends on it.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The store could not take the records now: the write is tried again after the backoff,
    /// and not before `after` when the store said when (429 or 503 with `Retry-After`).
    #[error("{error:#}")]
    Retry {
        /// What went wrong.
        error: anyhow::Error,
        /// The store's own hint.
        after: Option<Duration>,
    },
    /// The store refused (some of) the records for good.
    #[error("{0}")]
    Refused(Refused),
    /// Nobody is left to deliver to (stdout's reader closed the pipe): every record of the
    /// write is dropped, counted as not written.
    #[error("{0}")]
    Gone(String),
}

/// Any other failure (a lost connection, a busy file) is worth another try.
impl From<anyhow::Error> for WriteError {
    fn from(error: anyhow::Error) -> WriteError {
        WriteError::Retry { error, after: None }
    }
}

/// What a sink's task is fed from, and reports to.
pub struct Feed {
    /// How records are gathered into writes.
    pub batching: Batching,
    /// The sink's outbox.
    pub inlet: Inlet,
    /// The sink's counters.
    pub counters: Arc<SinkMetrics>,
    /// Fires when the process is stopping: a failing write is retried at once.
    pub shutdown: CancellationToken,
    /// Fires when the shutdown grace is over: what is not written by then stays in the
    /// outbox.
    pub give_up: CancellationToken,
    /// News of meters no longer live; `None` once nobody can tell any more.
    pub no_longer_live: Option<broadcast::Receiver<Arc<Forgotten>>>,
}

/// Feeds `sink` the records of its outbox, gathered as its batching says, until the outbox
/// is closed and empty or the shutdown grace is over; acknowledges what is written (or
/// given up for good); then flushes.
pub async fn drive(mut sink: impl Sink, feed: Feed) {
    let Feed {
        batching,
        mut inlet,
        counters,
        shutdown,
        give_up,
        mut no_longer_live,
    } = feed;
    let mut writer = Writer {
        max_records: batching.max_records.max(1),
        counters: &counters,
        shutdown,
        give_up,
        failures: LogLimit::per_minute(),
        refusals: LogLimit::per_minute(),
    };
    // A file damaged while p1guard runs fails each read alike: said a few times a minute.
    // (Damage there at the start moves the file aside.)
    let mut unreadable = LogLimit::per_minute();
    let name = &writer.counters.name;
    // Said once at start, either way; a sink that cannot reach its server still starts, and
    // its records wait.
    tokio::select! {
        checked = sink.check() => match checked {
            Ok(what) => {
                writer.counters.up.store(true, Relaxed);
                if !what.is_empty() {
                    tracing::info!(sink = %name, "{what}");
                }
            }
            Err(error) => {
                tracing::warn!(sink = %name, "not reachable at start, records wait for it: {error:#}");
            }
        },
        () = writer.give_up.cancelled() => {}
    }
    // Not at once: a sink's first moments are for announcing itself and the backlog.
    let first = tokio::time::Instant::now() + MAINTENANCE_EVERY;
    let mut maintenance = tokio::time::interval_at(first, MAINTENANCE_EVERY);
    // The records waiting to be written, and the outbox numbers they span.
    let mut held: Vec<SinkRecord> = Vec::new();
    let mut held_from = inlet.acknowledged() + 1;
    let mut held_through = inlet.acknowledged();
    let mut due = None;
    let mut open = true;
    while open && !writer.give_up.is_cancelled() {
        tokio::select! {
            next = inlet.next() => match next {
                Ok(Some(batch)) => {
                    if held.is_empty() {
                        held_from = batch.first;
                    }
                    held_through = batch.through;
                    if batch.records.is_empty() {
                        // Erased while it waited: nothing to write, but its numbers are done.
                        if held.is_empty() {
                            inlet.acknowledge(held_through);
                        }
                    } else {
                        held.extend(batch.records);
                        due.get_or_insert(tokio::time::Instant::now() + batching.max_wait);
                    }
                }
                Ok(None) => open = false,
                Err(error) => {
                    if let Some(suppressed) = unreadable.allow(Instant::now()) {
                        tracing::error!(sink = %name, suppressed, "cannot read the outbox: {error:#}");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = writer.give_up.cancelled() => {}
                    }
                }
            },
            () = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {}
            _ = maintenance.tick() => {
                if let Err(error) = sink.maintain().await {
                    tracing::warn!(sink = %name, "housekeeping failed: {error:#}");
                }
                continue;
            }
            news = next_forgotten(&mut no_longer_live) => {
                match news {
                    Ok(forgotten) if forgotten.sink == *name => sink.forget(&forgotten.meters),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::warn!(sink = %name, missed, "missed news of meters no longer live");
                    }
                    Err(broadcast::error::RecvError::Closed) => no_longer_live = None,
                }
                continue;
            }
            () = sink.wants_attention() => {
                if let Err(error) = sink.attend().await {
                    tracing::warn!(sink = %name, "{error:#}");
                }
                continue;
            }
            () = writer.give_up.cancelled() => break,
        }
        let is_due = due.is_some_and(|due| due <= tokio::time::Instant::now());
        if held.len() >= batching.max_records || is_due || (!open && !held.is_empty()) {
            let mut waiting = Waiting {
                handed_out: held.len(),
                records: std::mem::take(&mut held),
                inlet: &mut inlet,
                first: held_from,
                through: held_through,
            };
            if !batching.max_wait.is_zero() {
                // They waited for others: an erasure may have come first.
                writer.drop_erased(&mut waiting, 0);
            }
            if writer.write(&mut sink, &mut waiting).await {
                inlet.acknowledge(held_through);
            }
            due = None;
        }
    }
    let flushed = if writer.give_up.is_cancelled() {
        tokio::time::timeout(FLUSH_AFTER_GIVING_UP, sink.flush()).await
    } else {
        Ok(sink.flush().await)
    };
    match flushed {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(sink = %name, "final flush failed: {error:#}"),
        Err(_) => tracing::error!(sink = %name, "final flush given up"),
    }
}

/// The next news of meters no longer live; never, once nobody can tell.
async fn next_forgotten(
    receiver: &mut Option<broadcast::Receiver<Arc<Forgotten>>>,
) -> Result<Arc<Forgotten>, broadcast::error::RecvError> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// How a write ended.
enum Delivery {
    /// Every record is stored.
    Written,
    /// The store refused (some of) them.
    Refused(Refused),
    /// The destination is gone for good.
    Gone,
    /// The shutdown grace is over: the records stay in the outbox.
    Deferred,
}

/// Writes held records for [`drive`], retrying as the sink's errors say, and counts them.
struct Writer<'m> {
    max_records: usize,
    counters: &'m SinkMetrics,
    shutdown: CancellationToken,
    give_up: CancellationToken,
    failures: LogLimit,
    refusals: LogLimit,
}

impl Writer<'_> {
    /// Writes the waiting records, at most `max_records` per write; whether every record is
    /// settled (written, erased, or given up for good) rather than left for the next start.
    async fn write(&mut self, sink: &mut impl Sink, waiting: &mut Waiting<'_>) -> bool {
        let mut written = 0;
        while written < waiting.records.len() {
            let (delivery, end) = self.deliver(sink, waiting, written).await;
            let mut sent = [0usize; 4];
            for record in &waiting.records[written..end] {
                sent[record.granularity as usize] += 1;
            }
            for (g, sent) in sent.into_iter().enumerate() {
                let lost = match &delivery {
                    Delivery::Written => 0,
                    Delivery::Refused(refused) => refused.not_written[g].min(sent),
                    Delivery::Gone => sent,
                    Delivery::Deferred => return false,
                };
                self.counters.records[g].fetch_add((sent - lost) as u64, Relaxed);
                self.counters.lost[g].fetch_add(lost as u64, Relaxed);
            }
            written = end;
        }
        true
    }

    /// Writes the waiting records from index `from`, at most `max_records` of them, until the
    /// sink succeeds or refuses them, or the shutdown grace is over (a write in progress then
    /// is abandoned, and the records stay in the outbox); and where the records it wrote end.
    /// Before each retry, records erased from the outbox meanwhile are dropped.
    async fn deliver(
        &mut self,
        sink: &mut impl Sink,
        waiting: &mut Waiting<'_>,
        from: usize,
    ) -> (Delivery, usize) {
        let name = &self.counters.name;
        let mut backoff = Backoff::new(Duration::from_millis(100), MAX_RETRY_DELAY);
        let mut failed_since: Option<Instant> = None;
        loop {
            let end = waiting
                .records
                .len()
                .min(from.saturating_add(self.max_records));
            if end == from {
                return (Delivery::Written, end); // every one of them was erased
            }
            let records = &waiting.records[from..end];
            let written = tokio::select! {
                written = sink.write(records), if !self.give_up.is_cancelled() => written,
                () = self.give_up.cancelled() => return (Delivery::Deferred, end),
            };
            let up = !matches!(written, Err(WriteError::Retry { .. }));
            let was_up = self.counters.up.swap(up, Relaxed);
            if up && !was_up {
                let down = failed_since.map(|since| since.elapsed());
                tracing::info!(sink = %name, "writing again{}", down.map_or(String::new(), |d| format!(" after {:.0?} of failures", d)));
            }
            let (error, after) = match written {
                Ok(()) => return (Delivery::Written, end),
                Err(WriteError::Gone(why)) => {
                    if let Some(suppressed) = self.refusals.allow(Instant::now()) {
                        tracing::error!(sink = %name, suppressed, records = records.len(), "records dropped: {why}");
                    }
                    return (Delivery::Gone, end);
                }
                Err(WriteError::Refused(refused)) => {
                    if let Some(suppressed) = self.refusals.allow(Instant::now()) {
                        tracing::error!(sink = %name, suppressed, records = records.len(), "records dropped, the store {refused}");
                    }
                    return (Delivery::Refused(refused), end);
                }
                Err(WriteError::Retry { error, after }) => (error, after),
            };
            failed_since.get_or_insert_with(Instant::now);
            let mut delay = backoff.next_delay();
            if let Some(after) = after {
                delay = delay.max(after).min(MAX_RETRY_DELAY);
            }
            if let Some(suppressed) = self.failures.allow(Instant::now()) {
                tracing::warn!(sink = %name, suppressed, "write failed, retrying in {delay:?}: {error:#}");
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled(), if !self.shutdown.is_cancelled() => {}
                () = self.give_up.cancelled() => {}
            }
            self.drop_erased(waiting, from);
        }
    }

    /// Drops the waiting records from index `from` on that an erasure took out of the
    /// outbox since they were handed out, so that what `erase` or a withdrawal's purge
    /// erased is not written once the store is back. Records before `from` are written.
    fn drop_erased(&self, waiting: &mut Waiting<'_>, from: usize) {
        let left = match waiting.inlet.erased_among(
            waiting.first,
            waiting.through,
            waiting.handed_out,
        ) {
            Ok(Some(left)) => left,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(sink = %self.counters.name, "cannot tell whether held records were erased: {error:#}");
                return;
            }
        };
        waiting.handed_out = left.len();
        // A record's key is erased with every record of that key: a purge covers meters,
        // granularities and instants, so keys are either left or gone.
        let left: HashSet<_> = left.iter().map(record_key).collect();
        let before = waiting.records.len();
        let mut index = 0;
        waiting.records.retain(|record| {
            index += 1;
            index <= from || left.contains(&record_key(record))
        });
        let erased = before - waiting.records.len();
        if erased > 0 {
            tracing::info!(sink = %self.counters.name, erased, "held records were erased from the outbox meanwhile: not written");
        }
    }
}

/// Records [`drive`] holds for a write, and the outbox numbers they span.
struct Waiting<'i> {
    records: Vec<SinkRecord>,
    /// How many records of those numbers the outbox held when last looked at.
    handed_out: usize,
    inlet: &'i mut Inlet,
    first: i64,
    through: i64,
}

/// What names a record in every store: a store overwrites a record of the same key.
fn record_key(record: &SinkRecord) -> (&MeterName, Granularity, Kind, jiff::Timestamp) {
    (&record.meter, record.granularity, record.kind, record.time)
}
