//! The daemon's data flow: sources -> reduce task (parse, code of conduct) -> commit task
//! (the outbox) -> sinks, each a tokio task. Sources, the reduce task and the commit task
//! are joined by bounded channels (one batch is committed while the next is reduced); the
//! commit task and each sink by the sink's durable outbox, so a slow or dead sink holds
//! up no one until its share of the disk is full. One cancellation token stops the sources;
//! everything they sent is then reduced, committed and written (or left in the outbox at the
//! end of the shutdown grace) before [`run`] returns.

pub mod config;
pub mod reduce;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use p1guard_conduct::{
    Arrival, Calendar, Consent, Granularity, IdentityKey, MaxGaps, Reducer, ReducerConfig,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::backoff::Backoff;
use crate::fleet::snapshot::Partitions;
use crate::outbox::{Outbox, OutboxSink, Staged, Stager};
use crate::sinks::{NoLongerLive, Stopping};
use crate::sources::{self, Input, SourceId, SourceKind};
use crate::telemetry::log_limit::LogLimit;
use crate::telemetry::metrics::Metrics;

use self::config::Config;
use self::reduce::{ArrivalOf, FrameReducer};

/// Frames waiting for the reduce task.
const FRAME_QUEUE: usize = 1024;
/// Frames the reduce task takes at once; their records are committed as one batch.
const BATCH_FRAMES: usize = 256;
/// How often acknowledged records are deleted from the outbox when no batch comes.
const TIDY_EVERY: Duration = Duration::from_secs(1);
/// Staged batches waiting for the commit task: one is committed while the next is reduced.
const STAGED_QUEUE: usize = 2;

/// Opens every sink, starts every source, and runs until the sources end (replays) or
/// `stopping.shutdown` fires and everything in flight has been written, or given up once
/// `stopping.give_up` fires. `ready` is called once sinks are open and sources started.
/// Counts into `metrics`, made for the configuration's sources and sinks; returns them.
pub async fn run(
    config: Config,
    key: IdentityKey,
    metrics: Arc<Metrics>,
    stopping: Stopping,
    no_longer_live: &NoLongerLive,
    ready: impl FnOnce(),
) -> anyhow::Result<Arc<Metrics>> {
    let shutdown = stopping.shutdown.clone();
    if let Some(address) = config.metrics_listen {
        crate::telemetry::server::start(address, metrics.clone(), shutdown.clone()).await?;
    }
    let finest = config
        .sinks
        .iter()
        .map(|s| s.policy.ceiling())
        .max()
        .unwrap_or(Granularity::Billing);

    let reducer_config = ReducerConfig {
        calendar: Calendar::netherlands(config.billing),
        finest,
        max_gaps: MaxGaps::default(),
    };
    let mut reducer = Reducer::new(reducer_config, config.consent, key);
    // A replay starts over each run (its files are read from the start), so only live
    // sources continue the reducer's state across a restart.
    let checkpoint = config
        .sources
        .iter()
        .any(|s| !matches!(s.kind, SourceKind::Replay { .. }));
    let outbox_sinks = config
        .sinks
        .iter()
        .zip(&metrics.sinks)
        .map(|(sink, counters)| OutboxSink {
            name: &sink.name,
            policy: sink.policy,
            max_bytes: sink.outbox_max_bytes,
            counters: Arc::clone(counters),
        })
        .collect();
    let path = crate::outbox::path(config.outbox.as_deref())?;
    let (outbox, inlets) =
        tokio::task::block_in_place(|| Outbox::open(&path, outbox_sinks, checkpoint, &mut reducer))
            .with_context(|| format!("opening the outbox {}", path.display()))?;

    let mut sink_tasks = JoinSet::new();
    for ((index, sink), inlet) in config.sinks.into_iter().enumerate().zip(inlets) {
        let counters = Arc::clone(&metrics.sinks[index]);
        sink.start(inlet, counters, &stopping, no_longer_live, &mut sink_tasks)?;
    }

    let arrivals = config.sources.iter().map(|s| arrival(&s.kind)).collect();
    let (accepted, accepted_by): (Vec<_>, Vec<_>) =
        config.sources.iter().map(|_| watch::channel(0)).unzip();
    let (frames, received) = mpsc::channel(FRAME_QUEUE);
    let (staged, to_commit) = mpsc::channel(STAGED_QUEUE);
    let stager = outbox.stager();
    // What a fleet source's partitions are committed to, for their snapshots.
    let partitions = Arc::new(Partitions::default());
    let reduce_task = tokio::spawn(reduce(
        received,
        reducer,
        arrivals,
        stager,
        staged,
        metrics.clone(),
    ));
    let commit_task = tokio::spawn(commit_all(
        to_commit,
        outbox,
        accepted,
        Arc::clone(&partitions),
        metrics.clone(),
        stopping.give_up.clone(),
    ));

    let mut source_tasks = JoinSet::new();
    for ((index, source), accepted) in config.sources.into_iter().enumerate().zip(accepted_by) {
        let task = sources::run(
            SourceId(index),
            source,
            frames.clone(),
            accepted,
            Arc::clone(&partitions),
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
    let mut outbox = match commit_task.await {
        Ok(outbox) => Some(outbox),
        Err(error) => {
            tracing::error!("the commit task failed: {error}");
            failed.get_or_insert(anyhow::anyhow!("the commit task failed: {error}"));
            None
        }
    };
    let mut failures = LogLimit::per_minute();
    while let Some(joined) = sink_tasks.join_next().await {
        if let Err(error) = joined {
            failed.get_or_insert(anyhow::anyhow!("a sink task failed: {error}"));
        }
        // As each sink ends: a sink stuck past the hard stop then leaves only its own
        // records for the next start, not what the others wrote.
        if let Some(outbox) = &mut outbox {
            delete_written(outbox, &mut failures);
        }
    }
    if let Some(outbox) = outbox {
        tokio::task::block_in_place(|| outbox.finish());
    }
    match failed {
        None => Ok(metrics),
        Some(error) => Err(error),
    }
}

/// What a source's receive clock says about its meters' clocks: a serial line or TCP stream
/// delivers telegrams as they are sent, a broker may hold them, a replay has no clock.
fn arrival(source: &SourceKind) -> ArrivalOf {
    match source {
        SourceKind::Serial(_) | SourceKind::Tcp { .. } => Arrival::Direct,
        SourceKind::Mqtt { .. } | SourceKind::Nats(_) => Arrival::Relayed,
        SourceKind::Replay { .. } => Arrival::Recorded,
    }
}

/// A batch for the commit task: its records and the reducer's state, how far each source's
/// messages are in it, and for fleet partitions how far their streams are and the states
/// of the meters it moved (partition, meter, state).
struct Batch {
    staged: Staged,
    marks: Vec<Option<u64>>,
    positions: BTreeMap<u16, u64>,
    partition_states: Vec<(u16, Vec<u8>, Vec<u8>)>,
}

/// Parses frames, applies the code of conduct, and stages each batch's records for every
/// sink's outbox with the reducer's state, for the commit task. `arrivals` says, per source,
/// how its receive clock judges meter clocks.
async fn reduce<C: Consent>(
    mut frames: mpsc::Receiver<Input>,
    reducer: Reducer<C>,
    arrivals: Vec<ArrivalOf>,
    stager: Stager,
    to_commit: mpsc::Sender<Batch>,
    metrics: Arc<Metrics>,
) {
    let sources = arrivals.len();
    let mut reducer = FrameReducer::new(reducer, metrics.clone(), arrivals);
    let mut pending = Vec::with_capacity(BATCH_FRAMES);
    let mut records = Vec::new();
    while frames.recv_many(&mut pending, BATCH_FRAMES).await > 0 {
        let mut marks = vec![None; sources];
        let mut positions = BTreeMap::new();
        for input in pending.drain(..) {
            match input {
                Input::Frame(received) => {
                    metrics.frames_queued.fetch_sub(1, Relaxed);
                    let frame = received.frame.as_frame();
                    let (source, at, partition) =
                        (received.source, received.at, received.partition);
                    // A bad telegram is counted and logged there: its error needs nothing more.
                    let _ = reducer.reduce(source, &frame, at, partition, &mut records);
                }
                Input::MessageEnd { source, message } => marks[source.0] = Some(message),
                Input::Position {
                    partition,
                    sequence,
                } => {
                    positions.insert(partition, sequence);
                }
                Input::Restore { partition, states } => reducer.restore(partition, &states),
            }
        }
        reducer.publish_counters();
        let staged = stager.stage(&records, reducer.reducer_mut());
        records.clear();
        let partition_states = (staged.checkpoint().iter())
            .filter_map(|(id, state)| {
                let partition = reducer.partition_of(id)?;
                Some((partition, id.clone(), state.clone()))
            })
            .collect();
        let batch = Batch {
            staged,
            marks,
            positions,
            partition_states,
        };
        if to_commit.send(batch).await.is_err() {
            tracing::error!("the commit task stopped; what is read now is not stored");
            return;
        }
    }
}

/// Commits each batch to the outbox, then tells each source how far its input is accepted;
/// between batches, deletes what the sinks wrote. Returns the outbox once the reduce task
/// has ended, its inlets closed.
async fn commit_all(
    mut batches: mpsc::Receiver<Batch>,
    mut outbox: Outbox,
    accepted: Vec<watch::Sender<u64>>,
    partitions: Arc<Partitions>,
    metrics: Arc<Metrics>,
    give_up: tokio_util::sync::CancellationToken,
) -> Outbox {
    let mut tidy = tokio::time::interval(TIDY_EVERY);
    let mut failures = LogLimit::per_minute();
    loop {
        let Batch {
            mut staged,
            marks,
            positions,
            partition_states,
        } = tokio::select! {
            batch = batches.recv() => match batch {
                Some(batch) => batch,
                None => break,
            },
            _ = tidy.tick() => {
                delete_written(&mut outbox, &mut failures);
                continue;
            }
        };
        let committed = staged.is_empty() || {
            wait_for_room(&mut outbox, &mut failures, &give_up).await;
            commit(&mut outbox, &mut staged, &give_up, &metrics).await
        };
        // Before the sources hear of it, and only what is on disk: a snapshot covers no
        // more than this worker's outbox holds.
        if committed {
            partitions.committed(&positions, &partition_states);
        }
        for (sender, mark) in accepted.iter().zip(marks) {
            if let Some(message) = mark {
                sender.send_replace(message);
            }
        }
    }
    outbox.close_inlets();
    outbox
}

/// Deletes from the outbox what every sink has written. It fails on a full disk, which the
/// loops that call it wait out, so the failure is logged rate-limited.
fn delete_written(outbox: &mut Outbox, failures: &mut LogLimit) {
    if let Err(error) = tokio::task::block_in_place(|| outbox.delete_acknowledged())
        && let Some(suppressed) = failures.allow(Instant::now())
    {
        tracing::warn!(
            suppressed,
            "cannot delete written records from the outbox: {error:#}"
        );
    }
}

/// Waits while a sink's share of the outbox is full, or its disk nearly is (back-pressure
/// on every source: a record is never dropped to make room), deleting what the sinks write
/// meanwhile, until the shutdown grace is over.
async fn wait_for_room(
    outbox: &mut Outbox,
    failures: &mut LogLimit,
    give_up: &tokio_util::sync::CancellationToken,
) {
    let mut logs = LogLimit::per_minute();
    loop {
        delete_written(outbox, failures);
        let full: Vec<&str> = outbox.full().collect();
        let short = tokio::task::block_in_place(|| outbox.disk_short());
        if (full.is_empty() && short.is_none()) || give_up.is_cancelled() {
            return;
        }
        if let Some(suppressed) = logs.allow(Instant::now()) {
            match short {
                Some(room) => tracing::warn!(
                    suppressed,
                    room,
                    "outbox disk nearly full: input waits until the sinks write"
                ),
                None => {
                    tracing::warn!(suppressed, sinks = %full.join(", "), "outbox full: input waits until the sink writes")
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            () = give_up.cancelled() => {}
        }
    }
}

/// Commits `staged`, retrying while the disk refuses (full, read-only) until the shutdown
/// grace is over; records that could not be committed by then are counted as not written,
/// and the answer is false.
async fn commit(
    outbox: &mut Outbox,
    staged: &mut Staged,
    give_up: &tokio_util::sync::CancellationToken,
    metrics: &Metrics,
) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut logs = LogLimit::per_minute();
    loop {
        let error = match tokio::task::block_in_place(|| outbox.commit(staged)) {
            Ok(()) => return true,
            Err(error) => error,
        };
        if give_up.is_cancelled() {
            tracing::error!(
                "the shutdown grace is over and the outbox still refuses records: {error:#}"
            );
            for (sink, lost) in metrics.sinks.iter().zip(staged.lost()) {
                for (tally, count) in sink.lost.iter().zip(lost) {
                    tally.fetch_add(count, Relaxed);
                }
            }
            return false;
        }
        let delay = backoff.next_delay();
        if let Some(suppressed) = logs.allow(Instant::now()) {
            tracing::error!(
                suppressed,
                "cannot store records in the outbox, input waits (retrying in {delay:?}): {error:#}"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = give_up.cancelled() => {}
        }
    }
}
