//! The durable outbox's throughput, in records per second. The records are those of 200
//! DSMR 5 meters sending every second for five minutes at live consent (a record per
//! telegram, and the quarter-hour readings), into one sink at `live`.
//!
//! - `reduce_only`: parse and reduce the telegrams, batch by batch: the baseline.
//! - `reduce_and_append`: the same, each batch's records admitted, encoded and committed
//!   with the state of the meters the batch moved, one transaction per batch of 256
//!   telegrams, as the reduce task does. The difference to the baseline is the outbox's cost.
//! - `drain`: a sink reading every record back in order (the first 64 batches from memory,
//!   the rest from the file), acknowledging and deleting them.
//!
//! `cargo bench --bench outbox`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jiff::Timestamp;
use p1guard::outbox::{Outbox, OutboxSink};
use p1guard::telemetry::metrics::Metrics;
use p1guard_conduct::{
    Arrival, BillingCadence, Calendar, Granularity, Identity, IdentityKey, Level, MaxGaps, Record,
    Reducer, ReducerConfig, SinkPolicy, Timeline,
};
use p1guard_simulator::{MeterSpec, Simulator, Style};
use p1guard_telegram::{Framer, FramerConfig, Parser};

const METERS: usize = 200;
const SECONDS: i64 = 300;
/// Telegrams per batch, as the reduce task takes them.
const BATCH: usize = 256;

fn reducer() -> Reducer<Timeline> {
    let config = ReducerConfig {
        calendar: Calendar::netherlands(BillingCadence::BiMonthly),
        finest: Granularity::Live,
        max_gaps: MaxGaps::default(),
    };
    Reducer::new(
        config,
        Timeline::constant(Level::Live),
        IdentityKey::from_bytes([5; 32]),
    )
}

/// The telegrams of the fleet, second by second, as they would arrive.
fn telegrams() -> Vec<Vec<u8>> {
    let start = "2026-06-01T06:00:00Z".parse::<Timestamp>().unwrap();
    let end = start + jiff::SignedDuration::from_secs(SECONDS);
    let mut meters: Vec<Simulator> = (0..METERS)
        .map(|i| {
            let spec = MeterSpec {
                style: Style::Dsmr5,
                equipment_id: format!("E{:016}", i),
                gas_id: Some(format!("G{:016}", i)),
                seed: i as u64,
            };
            Simulator::new(spec, start, end, Vec::new())
        })
        .collect();
    let mut telegrams = Vec::new();
    loop {
        let mut any = false;
        for meter in &mut meters {
            let mut telegram = Vec::new();
            if meter.next_into(&mut telegram).is_some() {
                telegrams.push(telegram);
                any = true;
            }
        }
        if !any {
            return telegrams;
        }
    }
}

/// Parses and reduces `chunk` into `records`.
fn reduce(
    reducer: &mut Reducer<Timeline>,
    parser: &mut Parser,
    chunk: &[Vec<u8>],
    records: &mut Vec<Record>,
) {
    for bytes in chunk {
        let mut framer = Framer::new(FramerConfig::default());
        framer.push(bytes);
        let frame = framer.next_frame().unwrap().unwrap();
        let telegram = parser.parse(&frame).unwrap();
        reducer.reduce(&telegram, Arrival::Recorded(Timestamp::MAX), records);
    }
}

fn scratch(n: u64) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("p1guard-bench-outbox-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("outbox-{n}.sqlite"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

fn open(
    path: &std::path::Path,
    reducer: &mut Reducer<Timeline>,
) -> (Outbox, p1guard::outbox::Inlet) {
    let metrics = Arc::new(Metrics::new([], ["owner"]));
    let sinks = vec![OutboxSink {
        name: "owner",
        policy: SinkPolicy::new(Granularity::Live, Identity::Raw).unwrap(),
        max_bytes: u64::MAX,
        counters: Arc::clone(&metrics.sinks[0]),
    }];
    let (outbox, mut inlets) = Outbox::open(path, sinks, true, reducer).unwrap();
    (outbox, inlets.pop().unwrap())
}

fn outbox(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let telegrams = telegrams();
    let mut parser = Parser::new();
    let mut counting = reducer();
    let mut records = Vec::new();
    reduce(&mut counting, &mut parser, &telegrams, &mut records);
    let count = records.len();
    eprintln!("outbox: {} telegrams, {count} records", telegrams.len());
    let mut group = c.benchmark_group("outbox");
    group.throughput(Throughput::Elements(count as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    let mut run = 0;

    group.bench_function("reduce_only", |b| {
        b.iter(|| {
            let mut reducer = reducer();
            for chunk in telegrams.chunks(BATCH) {
                records.clear();
                reduce(&mut reducer, &mut parser, chunk, &mut records);
            }
        })
    });

    group.bench_function("reduce_and_append", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                run += 1;
                let path = scratch(run);
                let mut reducer = reducer();
                let (mut outbox, _inlet) = open(&path, &mut reducer);
                let stager = outbox.stager();
                runtime.block_on(async {
                    let started = Instant::now();
                    for chunk in telegrams.chunks(BATCH) {
                        records.clear();
                        reduce(&mut reducer, &mut parser, chunk, &mut records);
                        let mut staged = stager.stage(&records, &mut reducer);
                        outbox.commit(&mut staged).unwrap();
                    }
                    total += started.elapsed();
                });
            }
            total
        })
    });

    group.bench_function("drain", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                run += 1;
                let path = scratch(run);
                let mut reducer = reducer();
                let (mut outbox, mut inlet) = open(&path, &mut reducer);
                let stager = outbox.stager();
                runtime.block_on(async {
                    for chunk in telegrams.chunks(BATCH) {
                        records.clear();
                        reduce(&mut reducer, &mut parser, chunk, &mut records);
                        let mut staged = stager.stage(&records, &mut reducer);
                        outbox.commit(&mut staged).unwrap();
                    }
                    outbox.close_inlets();
                    let started = Instant::now();
                    let mut drained = 0;
                    while let Some(batch) = inlet.next().await.unwrap() {
                        drained += batch.records.len();
                        inlet.acknowledge(batch.through);
                        outbox.delete_acknowledged().unwrap();
                    }
                    total += started.elapsed();
                    assert_eq!(drained, count);
                });
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, outbox);
criterion_main!(benches);
