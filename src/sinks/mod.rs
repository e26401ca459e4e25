//! Sinks: where records leave the process. Each runs as its own task behind a bounded
//! channel, and sees records only through its [`SinkPolicy`]: at or under its ceiling, named
//! as its identity allows. A failed write is retried until it succeeds: an outage delays
//! records, it never drops them. Only when the process is stopping and a sink still fails
//! after a grace period are its remaining records given up, counted and logged, so that a
//! dead store cannot keep SIGTERM from ending the process. (A durable outbox, which keeps
//! them across a restart, comes with the reliability work.)

mod mqtt;
mod sqlite;
mod stdout;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use p1guard_conduct::{Record, SinkPolicy, SinkRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::log_limit::LogLimit;
use crate::metrics::Metrics;

pub use self::mqtt::{MqttSettings, MqttSink};
pub use self::sqlite::SqliteSink;
pub use self::stdout::StdoutSink;

/// The records one batch of telegrams yielded, shared by every sink.
pub type Batch = Arc<Vec<Record>>;

/// How often sinks run their housekeeping (retention).
const MAINTENANCE_EVERY: Duration = Duration::from_secs(3600);

/// How long a failing sink keeps retrying once the process is stopping.
const GRACE_AT_SHUTDOWN: Duration = Duration::from_secs(10);

/// A destination for records.
pub trait Sink: Send + 'static {
    /// Writes records (already admitted by the sink's policy). An error means nothing of the
    /// batch may be assumed written; the batch is offered again.
    fn write(
        &mut self,
        records: &[SinkRecord<'_>],
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Housekeeping on a timer, such as deleting records past their retention.
    fn maintain(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }

    /// Makes everything written durable before the process exits.
    fn flush(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// What a sink's task is fed from, and reports to.
pub struct Feed {
    /// The sink's ceiling and identity: the only way its records are seen.
    pub policy: SinkPolicy,
    /// Batches from the reduce task.
    pub batches: mpsc::Receiver<Batch>,
    /// Where the sink's counters are.
    pub metrics: Arc<Metrics>,
    /// The sink's place in [`Metrics::sinks`].
    pub index: usize,
    /// Fires when the process is stopping.
    pub shutdown: CancellationToken,
}

/// Feeds `sink` every batch of `feed` through its policy until the channel closes, then
/// flushes it.
pub async fn drive(mut sink: impl Sink, feed: Feed) {
    let Feed {
        policy,
        mut batches,
        metrics,
        index,
        shutdown,
    } = feed;
    let counters = &metrics.sinks[index];
    let name = &counters.name;
    let mut maintenance = tokio::time::interval(MAINTENANCE_EVERY);
    let mut failures = LogLimit::per_minute();
    let mut give_up_at = None;
    loop {
        let batch = tokio::select! {
            batch = batches.recv() => batch,
            _ = maintenance.tick() => {
                if let Err(error) = sink.maintain().await {
                    tracing::warn!(sink = %name, "housekeeping failed: {error:#}");
                }
                continue;
            }
        };
        let Some(batch) = batch else { break };
        counters.queued.fetch_sub(1, Relaxed);
        let admitted: Vec<SinkRecord<'_>> = batch.iter().filter_map(|r| policy.admit(r)).collect();
        if admitted.is_empty() {
            continue;
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        let written = loop {
            let Err(error) = sink.write(&admitted).await else {
                break true;
            };
            if shutdown.is_cancelled()
                && Instant::now() >= *give_up_at.get_or_insert(Instant::now() + GRACE_AT_SHUTDOWN)
            {
                tracing::error!(sink = %name, records = admitted.len(), "stopping: records not written: {error:#}");
                break false;
            }
            let delay = backoff.next_delay();
            if let Some(suppressed) = failures.allow(Instant::now()) {
                tracing::warn!(sink = %name, suppressed, "write failed, retrying in {delay:?}: {error:#}");
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
            }
        };
        let tally = if written {
            &counters.records
        } else {
            &counters.lost
        };
        for record in &admitted {
            tally[record.record().granularity as usize].fetch_add(1, Relaxed);
        }
    }
    if let Err(error) = sink.flush().await {
        tracing::error!(sink = %name, "final flush failed: {error:#}");
    }
}
