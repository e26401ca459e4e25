//! Sources: thin async drivers that read bytes from the outside world, frame them, and pass
//! whole frames on. Parsing and everything after it happens in the pipeline's reduce task.

mod mqtt;
mod replay;
mod serial;
mod tcp;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use jiff::Timestamp;
use p1guard_telegram::{Error, OwnedFrame};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::decode::Deframer;
use crate::log_limit::LogLimit;
use crate::metrics::{Metrics, Outcome};
use crate::topology::config::{SourceConfig, SourceKind};

/// A frame on its way to the reduce task.
#[derive(Debug)]
pub struct Received {
    /// Index of the source in the configuration (and in [`Metrics::sources`]).
    pub source: usize,
    /// The frame, not yet CRC-checked or parsed.
    pub frame: OwnedFrame,
    /// When its last byte arrived: the date of telegrams without a meter clock.
    pub at: Timestamp,
}

/// The reduce task has stopped: the source should stop too.
#[derive(Debug)]
pub struct Closed;

/// Runs one source until it ends (a replay's last file) or `shutdown` fires.
pub async fn run(
    index: usize,
    config: SourceConfig,
    frames: mpsc::Sender<Received>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let framing = Framing::new(index, &config, frames, metrics);
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
        } => mqtt::run(&name, &broker, &subscription, framing, &shutdown).await,
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
        SourceKind::Serial(_) | SourceKind::Tcp { .. } | SourceKind::Replay { .. } => Ok(()),
    }
}

/// A source's framing state: its [`Deframer`], the channel to the reduce task, and the
/// counting and rate-limited logging of frames that fail to frame or decrypt.
pub struct Framing {
    source: usize,
    deframer: Deframer,
    frames: mpsc::Sender<Received>,
    metrics: Arc<Metrics>,
    log_limit: LogLimit,
}

impl Framing {
    fn new(
        source: usize,
        config: &SourceConfig,
        frames: mpsc::Sender<Received>,
        metrics: Arc<Metrics>,
    ) -> Framing {
        Framing {
            source,
            deframer: Deframer::new(&config.input),
            frames,
            metrics,
            log_limit: LogLimit::per_minute(),
        }
    }

    fn name(&self) -> &str {
        &self.metrics.sources[self.source].name
    }

    /// Marks the source connected or not, for metrics.
    fn set_connected(&self, connected: bool) {
        self.metrics.sources[self.source]
            .connected
            .store(connected, Relaxed);
    }

    /// Frames `chunk` and sends every complete frame on; waits while the reduce task is busy.
    pub async fn push(&mut self, chunk: &[u8]) -> Result<(), Closed> {
        self.deframer.push(chunk);
        self.forward(&mut |_| None).await
    }

    /// Like [`Framing::push`], but first waits as long as `pace` says for each frame.
    pub async fn push_paced(
        &mut self,
        chunk: &[u8],
        pace: &mut impl FnMut(&OwnedFrame) -> Option<std::time::Duration>,
    ) -> Result<(), Closed> {
        self.deframer.push(chunk);
        self.forward(pace).await
    }

    /// One message that holds whole telegrams (an MQTT payload), framed on its own: a
    /// telegram cut short in one message never merges with the next.
    pub async fn push_message(&mut self, message: &[u8]) -> Result<(), Closed> {
        self.deframer.push(message);
        self.end_of_stream().await
    }

    /// The stream broke (device gone, connection dropped, file ended): a frame in progress is
    /// reported as truncated, and the next bytes start a new stream.
    pub async fn end_of_stream(&mut self) -> Result<(), Closed> {
        self.deframer.finish();
        let result = self.forward(&mut |_| None).await;
        self.deframer.reset();
        result
    }

    async fn forward(
        &mut self,
        pace: &mut impl FnMut(&OwnedFrame) -> Option<std::time::Duration>,
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
                at: Timestamp::now(),
            };
            // Counted before sending, so the reduce task never takes off more than was put on.
            self.metrics.frames_queued.fetch_add(1, Relaxed);
            if self.frames.send(received).await.is_err() {
                self.metrics.frames_queued.fetch_sub(1, Relaxed);
                return Err(Closed);
            }
        }
        Ok(())
    }

    /// Counts and (rate-limited) logs a frame that failed before parsing.
    fn reject(&mut self, error: Error) {
        self.metrics.sources[self.source].count(Outcome::of(error.kind));
        if let Some(suppressed) = self.log_limit.allow(Instant::now()) {
            tracing::warn!(source = %self.name(), suppressed, "skipped a bad frame: {error}");
        }
    }
}
