//! The daemon's data flow: sources -> reduce task (parse, code of conduct) -> sinks, each a
//! tokio task, joined by bounded channels so a slow sink slows the sources instead of
//! growing memory. One cancellation token stops the sources; everything they sent is then
//! reduced and written before [`run`] returns.

pub mod config;
pub mod reduce;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use p1guard_conduct::{
    Arrival, Calendar, Consent, Granularity, IdentityKey, MaxGaps, Reducer, ReducerConfig,
    SinkPolicy,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::sinks::{Batch, Stopping};
use crate::sources::{self, Received, SourceId, SourceKind};
use crate::telemetry::metrics::{Metrics, SinkMetrics};

use self::config::Config;
use self::reduce::{ArrivalOf, FrameReducer};

/// Frames waiting for the reduce task.
const FRAME_QUEUE: usize = 1024;
/// Batches waiting for each sink.
const BATCH_QUEUE: usize = 64;
/// Frames the reduce task takes at once; their records go to the sinks as one batch.
const BATCH_FRAMES: usize = 256;

/// Opens every sink, starts every source, and runs until the sources end (replays) or
/// `stopping.shutdown` fires and everything in flight has been written, or given up once
/// `stopping.give_up` fires. `ready` is called once sinks are open and sources started.
/// Returns the counters.
pub async fn run(
    config: Config,
    key: IdentityKey,
    stopping: Stopping,
    ready: impl FnOnce(),
) -> anyhow::Result<Arc<Metrics>> {
    let shutdown = stopping.shutdown.clone();
    let metrics = Arc::new(Metrics::new(
        config.sources.iter().map(|s| s.name.as_str()),
        config.sinks.iter().map(|s| s.name.as_str()),
    ));
    if let Some(address) = config.metrics_listen {
        crate::telemetry::server::start(address, metrics.clone(), shutdown.clone()).await?;
    }
    let finest = config
        .sinks
        .iter()
        .map(|s| s.policy.ceiling())
        .max()
        .unwrap_or(Granularity::Billing);

    let mut sink_tasks = JoinSet::new();
    let mut to_sinks = Vec::new();
    for (index, sink) in config.sinks.into_iter().enumerate() {
        let (batches, receiver) = mpsc::channel(BATCH_QUEUE);
        let counters = Arc::clone(&metrics.sinks[index]);
        let policy = sink.policy;
        sink.start(receiver, counters, &stopping, &mut sink_tasks)?;
        to_sinks.push(Outlet {
            policy,
            queue: batches,
            counters: Arc::clone(&metrics.sinks[index]),
        });
    }

    let reducer_config = ReducerConfig {
        calendar: Calendar::netherlands(config.billing),
        finest,
        max_gaps: MaxGaps::default(),
    };
    let reducer = Reducer::new(reducer_config, config.consent, key);
    let arrivals = config.sources.iter().map(|s| arrival(&s.kind)).collect();
    let (frames, received) = mpsc::channel(FRAME_QUEUE);
    let reduce_task = tokio::spawn(reduce(
        received,
        reducer,
        arrivals,
        to_sinks,
        metrics.clone(),
    ));

    let mut source_tasks = JoinSet::new();
    for (index, source) in config.sources.into_iter().enumerate() {
        let task = sources::run(
            SourceId(index),
            source,
            frames.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        source_tasks.spawn(task);
    }
    drop(frames);
    ready();

    // Sources end first; their senders dropping ends the reduce task, whose senders
    // dropping ends the sinks after they have written everything queued. A task that
    // panicked stops the rest the same way, and every task is still joined.
    let mut failed = None;
    while let Some(joined) = source_tasks.join_next().await {
        if let Err(error) = joined {
            tracing::error!("a source task failed: {error}");
            shutdown.cancel();
            failed.get_or_insert(anyhow::anyhow!("a source task failed: {error}"));
        }
    }
    if let Err(error) = reduce_task.await {
        tracing::error!("the reduce task failed: {error}");
        failed.get_or_insert(anyhow::anyhow!("the reduce task failed: {error}"));
    }
    while let Some(joined) = sink_tasks.join_next().await {
        if let Err(error) = joined {
            failed.get_or_insert(anyhow::anyhow!("a sink task failed: {error}"));
        }
    }
    match failed {
        None => Ok(metrics),
        Some(error) => Err(error),
    }
}

/// Where the reduce task hands a sink its records: through the sink's policy, into its queue.
struct Outlet {
    policy: SinkPolicy,
    queue: mpsc::Sender<Batch>,
    counters: Arc<SinkMetrics>,
}

/// What a source's receive clock says about its meters' clocks: a serial line or TCP stream
/// delivers telegrams as they are sent, a broker may hold them, a replay has no clock.
fn arrival(source: &SourceKind) -> ArrivalOf {
    match source {
        SourceKind::Serial(_) | SourceKind::Tcp { .. } => Arrival::Direct,
        SourceKind::Mqtt { .. } => Arrival::Relayed,
        SourceKind::Replay { .. } => Arrival::Recorded,
    }
}

/// Parses frames, applies the code of conduct, and hands each batch's records to every sink
/// through that sink's policy.
/// `arrivals` says, per source, how its receive clock judges meter clocks.
async fn reduce<C: Consent>(
    mut frames: mpsc::Receiver<Received>,
    reducer: Reducer<C>,
    arrivals: Vec<ArrivalOf>,
    sinks: Vec<Outlet>,
    metrics: Arc<Metrics>,
) {
    let mut reducer = FrameReducer::new(reducer, metrics.clone(), arrivals);
    let mut pending = Vec::with_capacity(BATCH_FRAMES);
    let mut records = Vec::new();
    while frames.recv_many(&mut pending, BATCH_FRAMES).await > 0 {
        metrics
            .frames_queued
            .fetch_sub(pending.len() as i64, Relaxed);
        for received in pending.drain(..) {
            let frame = received.frame.as_frame();
            // A bad telegram is counted and logged there: its error needs nothing more here.
            let _ = reducer.reduce(received.source, &frame, received.at, &mut records);
        }
        reducer.publish_counters();
        if records.is_empty() {
            continue;
        }
        // Each sink's queue gets only what its policy admits, named as it names meters.
        for Outlet {
            policy,
            queue,
            counters,
        } in &sinks
        {
            let batch: Batch = records.iter().filter_map(|r| policy.admit(r)).collect();
            if batch.is_empty() {
                continue;
            }
            counters.queued.fetch_add(1, Relaxed);
            if queue.send(batch).await.is_err() {
                counters.queued.fetch_sub(1, Relaxed);
                tracing::error!(sink = %counters.name, "sink stopped; its records are lost");
            }
        }
        records.clear();
    }
}
