//! Sources: thin async drivers that read bytes from the outside world, frame them, and pass
//! whole frames on. Parsing and everything after it happens in the pipeline's reduce task.
//! Each kind's file holds its settings as written, their checks and its driver; this one the
//! settings every source shares and the dispatch by type.

mod mqtt;
mod nats;
mod replay;
mod serial;
mod tcp;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use jiff::Timestamp;
use p1guard_telegram::{Error, OwnedFrame};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use self::mqtt::MqttSourceConfig;
pub use self::nats::NatsSettings;
use self::nats::NatsSourceConfig;
use self::replay::ReplayConfig;
pub use self::serial::{SerialConfig, SerialSettings};
use self::tcp::TcpConfig;
use crate::broker::Broker;
use crate::config::{Checker, Entry, SecretRef};
use crate::decode::{CipherKeys, Deframer, InputOptions};
use crate::fleet::snapshot::Partitions;
use crate::pace::Speed;
use crate::telemetry::metrics::{Metrics, Outcome, SourceMetrics};

/// One source.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Unique among sources.
    pub name: String,
    /// Line repairs and decryption.
    pub input: InputOptions,
    /// What it reads.
    pub kind: SourceKind,
}

/// What a source reads.
#[derive(Debug, Clone)]
pub enum SourceKind {
    /// A serial port.
    Serial(SerialSettings),
    /// A TCP stream.
    Tcp {
        /// `host:port`.
        address: String,
        /// Reconnect after this long without data.
        read_timeout: Duration,
    },
    /// Capture files.
    Replay {
        /// Read in order.
        files: Vec<PathBuf>,
        /// Pace.
        speed: Speed,
    },
    /// Telegrams published to an MQTT broker.
    Mqtt {
        /// The broker.
        broker: Broker,
        /// The filter subscribed to, `$share/<group>/` included when shared.
        subscription: String,
    },
    /// A fleet's telegrams in a NATS JetStream stream, by partition.
    Nats(NatsSettings),
}

/// The settings every `[[sources]]` entry has, whatever its type. (Serde cannot flatten and
/// deny unknown fields at once, so an entry is split into these and its type's own.)
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceEntry {
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

impl SourceEntry {
    /// The keys of [`SourceEntry`].
    pub const FIELDS: &[&str] = &["lf_to_crlf", "clear_bit7", "key", "auth_key", "no_auth_key"];
}

/// Each source type's own settings, as written.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SourceSettings {
    /// A P1 cable.
    Serial(SerialConfig),
    /// A TCP P1 dongle or ser2net.
    Tcp(TcpConfig),
    /// Capture files.
    Replay(ReplayConfig),
    /// A fleet's telegrams from an MQTT broker.
    Mqtt(MqttSourceConfig),
    /// A fleet's telegrams from a NATS JetStream stream.
    Nats(NatsSourceConfig),
}

impl SourceConfig {
    /// The source `entry` describes, every problem noted.
    pub fn check(
        checker: &mut Checker<'_>,
        entry: Entry<SourceEntry, SourceSettings>,
    ) -> Option<SourceConfig> {
        let Entry {
            at,
            name,
            common: source,
            settings,
        } = entry;
        let at = at.as_str();
        let problems_before = checker.count();
        let (kind, preset_clears_bit7) = match settings {
            SourceSettings::Serial(serial) => {
                let (settings, clears_bit7) = serial.check(checker, at)?;
                (SourceKind::Serial(settings), clears_bit7)
            }
            SourceSettings::Tcp(tcp) => {
                let (address, read_timeout) = tcp.check(checker, at);
                let kind = SourceKind::Tcp {
                    address,
                    read_timeout,
                };
                (kind, false)
            }
            SourceSettings::Replay(replay) => {
                let (files, speed) = replay.check(checker, at);
                (SourceKind::Replay { files, speed }, false)
            }
            SourceSettings::Mqtt(mqtt) => {
                let (broker, subscription) = mqtt.check(checker, at, &name)?;
                let kind = SourceKind::Mqtt {
                    broker,
                    subscription,
                };
                (kind, false)
            }
            SourceSettings::Nats(nats) => (SourceKind::Nats(nats.check(checker, at)?), false),
        };
        let cipher = cipher(checker, at, source.key, source.auth_key, source.no_auth_key);
        let input = InputOptions {
            lf_to_crlf: source.lf_to_crlf,
            clear_bit7: source.clear_bit7.unwrap_or(preset_clears_bit7),
            cipher,
        };
        (checker.count() == problems_before).then_some(SourceConfig { name, input, kind })
    }

    /// What `check-config` says of the source.
    pub fn describe(&self) -> String {
        let what = match &self.kind {
            SourceKind::Serial(serial) => {
                let bit7 = if self.input.clear_bit7 {
                    ", bit 7 cleared"
                } else {
                    ""
                };
                format!("{}{bit7}", serial.describe())
            }
            SourceKind::Tcp { address, .. } => address.clone(),
            SourceKind::Replay { files, speed } => replay::describe(files, *speed),
            SourceKind::Mqtt {
                broker,
                subscription,
            } => format!("{subscription} on {}", broker.describe()),
            SourceKind::Nats(settings) => settings.describe(),
        };
        let encrypted = if self.input.cipher.is_some() {
            ", decrypting"
        } else {
            ""
        };
        format!(
            "source {} ({}): {what}{encrypted}",
            self.name,
            self.kind.type_name()
        )
    }
}

impl SourceKind {
    /// `serial`, `tcp`, `replay`, `mqtt` or `nats`.
    pub fn type_name(&self) -> &'static str {
        match self {
            SourceKind::Serial(_) => "serial",
            SourceKind::Tcp { .. } => "tcp",
            SourceKind::Replay { .. } => "replay",
            SourceKind::Mqtt { .. } => "mqtt",
            SourceKind::Nats(_) => "nats",
        }
    }

    /// Whether it brings a fleet's telegrams (many meters), rather than one meter's.
    pub fn is_fleet(&self) -> bool {
        matches!(self, SourceKind::Mqtt { .. } | SourceKind::Nats(_))
    }
}

/// The keys of an encrypting meter, every problem noted.
fn cipher(
    checker: &mut Checker<'_>,
    at: &str,
    key: Option<SecretRef>,
    auth_key: Option<SecretRef>,
    no_auth_key: bool,
) -> Option<CipherKeys> {
    let mut read = |what: &str, secret: SecretRef| -> Option<[u8; 16]> {
        let resolved = secret
            .resolve()
            .map_err(|e| checker.problem(at, format!("{what}: {e}")));
        let key = crate::hex::decode(resolved.ok()?.expose());
        if key.is_none() {
            checker.problem(at, format!("{what}: expected 32 hex digits"));
        }
        key
    };
    let key = key.and_then(|k| read("key", k));
    let auth_key = auth_key.and_then(|k| read("auth_key", k));
    let Some(key) = key else {
        if auth_key.is_some() || no_auth_key {
            checker.problem(at, "auth_key and no_auth_key need a key");
        }
        return None;
    };
    match (auth_key, no_auth_key) {
        (Some(_), true) => {
            checker.problem(at, "auth_key and no_auth_key exclude each other");
            None
        }
        (Some(auth_key), false) => Some(CipherKeys {
            key,
            auth_key: Some(auth_key),
        }),
        (None, true) => Some(CipherKeys {
            key,
            auth_key: None,
        }),
        (None, false) => Some(CipherKeys::smarty(key)),
    }
}

/// Which source, by its place in the configuration (and in [`Metrics::sources`]): what the
/// reduce task keeps per source is looked up by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceId(pub usize);

/// A frame on its way to the reduce task.
#[derive(Debug)]
pub struct Received {
    /// The source it came from.
    pub source: SourceId,
    /// The frame, not yet CRC-checked or parsed.
    pub frame: OwnedFrame,
    /// When its last byte arrived: the date of telegrams without a meter clock.
    pub at: Timestamp,
    /// The fleet partition it was read from (a `nats` source), whose state its meter's is.
    pub partition: Option<u16>,
}

/// What a source hands the reduce task.
#[derive(Debug)]
pub enum Input {
    /// A frame to parse and reduce.
    Frame(Received),
    /// Every frame of the source's messages up to number `message` is ahead of this: once
    /// the batch holding it is committed, the source may acknowledge them.
    MessageEnd {
        /// The source.
        source: SourceId,
        /// The source's own count of messages.
        message: u64,
    },
    /// Every frame of fleet partition `partition`'s stream up to sequence `sequence` is ahead
    /// of this: once the batch holding it is committed, a snapshot may say so.
    Position {
        /// The partition.
        partition: u16,
        /// Its stream's sequence.
        sequence: u64,
    },
    /// A fleet partition taken over: its meters continue from these states (normalised id,
    /// state as [`p1guard_conduct::Reducer::save_changed`] gave them), ahead of its frames.
    Restore {
        /// The partition.
        partition: u16,
        /// Its meters' states.
        states: Vec<(Vec<u8>, Vec<u8>)>,
    },
}

/// The reduce task has stopped: the source should stop too.
#[derive(Debug)]
pub struct Closed;

/// Runs one source until it ends (a replay's last file) or `shutdown` fires. `accepted`
/// says up to which message (as numbered by [`Framing::push_message`]) the source's input is
/// committed to the outbox, and `partitions` what a fleet source's partitions are.
pub async fn run(
    source: SourceId,
    config: SourceConfig,
    frames: mpsc::Sender<Input>,
    accepted: watch::Receiver<u64>,
    partitions: Arc<Partitions>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let framing = Framing::new(source, &config, frames, metrics);
    let name = config.name;
    let ended = match config.kind {
        SourceKind::Serial(settings) => serial::run(&name, &settings, framing, &shutdown).await,
        SourceKind::Tcp {
            address,
            read_timeout,
        } => tcp::run(&name, &address, read_timeout, framing, &shutdown).await,
        SourceKind::Replay { files, speed } => {
            replay::run(&name, &files, speed, framing, &shutdown).await
        }
        SourceKind::Mqtt {
            broker,
            subscription,
        } => mqtt::run(&name, &broker, &subscription, framing, accepted, &shutdown).await,
        SourceKind::Nats(settings) => {
            nats::run(&name, &settings, framing, accepted, &partitions, &shutdown).await
        }
    };
    match ended {
        Ok(()) if shutdown.is_cancelled() => tracing::debug!(source = %name, "source stopped"),
        Ok(()) => tracing::info!(source = %name, "source finished"),
        Err(Closed) => tracing::debug!(source = %name, "pipeline closed"),
    }
}

/// Sets up, without connecting, what a source needs before it starts (an MQTT source's client
/// options, TLS roots included), so that a source that could never run stops p1guard at start
/// as a sink that cannot be opened does. Devices, peers and brokers that are not there yet
/// are waited for instead; replay files were checked with the configuration.
pub fn check(config: &SourceConfig) -> anyhow::Result<()> {
    match &config.kind {
        SourceKind::Mqtt { broker, .. } => mqtt::options(broker).map(drop),
        SourceKind::Serial(_)
        | SourceKind::Tcp { .. }
        | SourceKind::Replay { .. }
        | SourceKind::Nats(_) => Ok(()),
    }
}

/// A source's framing state: its [`Deframer`], the channel to the reduce task, and the
/// counting and rate-limited logging of frames that fail to frame or decrypt.
pub struct Framing {
    source: SourceId,
    deframer: Deframer,
    frames: mpsc::Sender<Input>,
    /// Messages ended so far.
    messages: u64,
    /// The source's counters.
    counters: Arc<SourceMetrics>,
    /// The pipeline's, for the queue's depth.
    metrics: Arc<Metrics>,
}

impl Framing {
    fn new(
        source: SourceId,
        config: &SourceConfig,
        frames: mpsc::Sender<Input>,
        metrics: Arc<Metrics>,
    ) -> Framing {
        Framing {
            source,
            deframer: Deframer::new(&config.input),
            frames,
            messages: 0,
            counters: Arc::clone(&metrics.sources[source.0]),
            metrics,
        }
    }

    fn name(&self) -> &str {
        &self.counters.name
    }

    /// Marks the source connected or not, for metrics.
    fn set_connected(&self, connected: bool) {
        self.counters.connected.store(connected, Relaxed);
    }

    /// Frames `chunk` and sends every complete frame on; waits while the reduce task is busy.
    pub async fn push(&mut self, chunk: &[u8]) -> Result<(), Closed> {
        self.deframer.push(chunk);
        self.forward(&mut |_| None, None, None).await
    }

    /// Like [`Framing::push`], but first waits as long as `pace` says for each frame.
    pub async fn push_paced(
        &mut self,
        chunk: &[u8],
        pace: &mut impl FnMut(&OwnedFrame) -> Option<std::time::Duration>,
    ) -> Result<(), Closed> {
        self.deframer.push(chunk);
        self.forward(pace, None, None).await
    }

    /// One message that holds whole telegrams (an MQTT payload), framed on its own: a
    /// telegram cut short in one message never merges with the next. Returns the message's
    /// number, which the `accepted` watch of [`run`] reaches once it is committed.
    pub async fn push_message(&mut self, message: &[u8]) -> Result<u64, Closed> {
        self.deframer.push(message);
        self.deframer.finish();
        let result = self.forward(&mut |_| None, None, None).await;
        self.deframer.reset();
        result?;
        self.end_message().await
    }

    /// Like [`Framing::push_message`], for message `sequence` of fleet partition
    /// `partition`'s stream, its telegrams received at `at` (the stream's own timestamp, the
    /// same each time the message is read) rather than now.
    pub async fn push_partition_message(
        &mut self,
        message: &[u8],
        at: Option<Timestamp>,
        partition: u16,
        sequence: u64,
    ) -> Result<u64, Closed> {
        self.deframer.push(message);
        self.deframer.finish();
        let result = self.forward(&mut |_| None, at, Some(partition)).await;
        self.deframer.reset();
        result?;
        let position = Input::Position {
            partition,
            sequence,
        };
        self.frames.send(position).await.map_err(|_| Closed)?;
        self.end_message().await
    }

    /// Hands the reduce task the states fleet partition `partition`'s meters continue from,
    /// ahead of the partition's frames.
    pub async fn restore(
        &mut self,
        partition: u16,
        states: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), Closed> {
        let restore = Input::Restore { partition, states };
        self.frames.send(restore).await.map_err(|_| Closed)
    }

    /// Marks the end of a message: it is accepted once what came before is committed.
    async fn end_message(&mut self) -> Result<u64, Closed> {
        self.messages += 1;
        let end = Input::MessageEnd {
            source: self.source,
            message: self.messages,
        };
        self.frames.send(end).await.map_err(|_| Closed)?;
        Ok(self.messages)
    }

    /// The stream broke (device gone, connection dropped, file ended): a frame in progress is
    /// reported as truncated, and the next bytes start a new stream.
    pub async fn end_of_stream(&mut self) -> Result<(), Closed> {
        self.deframer.finish();
        let result = self.forward(&mut |_| None, None, None).await;
        self.deframer.reset();
        result
    }

    /// Sends every complete frame on, received at `at` (now if `None`) from `partition`.
    async fn forward(
        &mut self,
        pace: &mut impl FnMut(&OwnedFrame) -> Option<std::time::Duration>,
        at: Option<Timestamp>,
        partition: Option<u16>,
    ) -> Result<(), Closed> {
        while let Some(next) = self.deframer.next_frame() {
            let frame = match next {
                Ok(frame) => OwnedFrame::from(frame),
                Err(error) => {
                    self.reject(error);
                    continue;
                }
            };
            if let Some(delay) = pace(&frame) {
                tokio::time::sleep(delay).await;
            }
            let received = Received {
                source: self.source,
                frame,
                at: at.unwrap_or_else(Timestamp::now),
                partition,
            };
            // Counted before sending, so the reduce task never takes off more than was put on.
            self.metrics.frames_queued.fetch_add(1, Relaxed);
            if self.frames.send(Input::Frame(received)).await.is_err() {
                self.metrics.frames_queued.fetch_sub(1, Relaxed);
                return Err(Closed);
            }
        }
        Ok(())
    }

    /// Counts and (rate-limited) logs a frame that failed before parsing.
    fn reject(&mut self, error: Error) {
        self.counters.count(Outcome::of(error.kind));
        if let Some(suppressed) = self.counters.may_log_bad_input() {
            tracing::warn!(source = %self.name(), suppressed, "skipped a bad frame: {error}");
        }
    }
}
