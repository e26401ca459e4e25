//! Telegram benchmarks: the full parse of three real-shaped telegrams (ours and the `dsmr5`
//! crate's), framing a 10 MB stream, and a steady-state allocation check that fails the run if
//! our framer + parser allocate once warmed up.
//!
//! `cargo bench --bench telegram`; the telegrams are read at run time from the golden fixtures.

use std::alloc::System;
use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use p1guard_telegram::{Framer, FramerConfig, Parser, Value};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

// Counts every allocation in this binary. A hand-written counting `GlobalAlloc` would need
// `unsafe impl`, which the workspace's `forbid(unsafe_code)` rules out even here.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// (bench name, fixture path relative to the root package).
const TELEGRAMS: [(&str, &str); 3] = [
    ("dsmr5_nl", "crates/telegram/tests/golden/dsmr5_nl.txt"),
    (
        "dsmr42_kaifa",
        "crates/telegram/tests/golden/dsmr42_kaifa.txt",
    ),
    (
        "fluvius_emucs",
        "crates/telegram/tests/golden/fluvius_emucs.txt",
    ),
];

fn load(path: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn telegrams() -> impl Iterator<Item = (&'static str, Vec<u8>)> {
    TELEGRAMS.iter().map(|&(name, path)| (name, load(path)))
}

/// One telegram through our whole pipeline, as a daemon does it with a long-lived framer and
/// parser: frame, CRC, every line parsed, every value read (numbers as `f64`), meter time to
/// UTC. Returns the number of objects.
fn ours(framer: &mut Framer, parser: &mut Parser, bytes: &[u8]) -> usize {
    framer.push(bytes);
    let mut objects = 0;
    while let Some(item) = framer.next_frame() {
        let frame = item.expect("the fixture frames");
        let telegram = parser.parse(&frame).expect("the fixture parses");
        for object in telegram.objects() {
            black_box(object.obis());
            for value in object.values() {
                if let Value::Number(number) = value {
                    black_box(number.value.to_f64());
                }
                black_box(value);
            }
            objects += 1;
        }
        black_box(telegram.time().map(|t| t.utc()));
    }
    objects
}

/// The same bytes through the `dsmr5` crate: its `Reader` (framing into a 2 KiB buffer),
/// `to_telegram` (CRC) and `OBIS::parse` on every line, numbers converted to `f64`. It has
/// no UTC conversion, so it does a little less than [`ours`]. Returns (objects parsed, lines it
/// rejected).
fn theirs(bytes: &[u8]) -> (usize, usize) {
    let (mut parsed, mut rejected) = (0, 0);
    for readout in dsmr5::Reader::new(bytes.iter().map(|&b| Ok::<u8, ()>(b))) {
        let readout = readout.expect("dsmr5 reads the fixture");
        let telegram = readout.to_telegram().expect("dsmr5 accepts the CRC");
        for object in telegram.objects() {
            match object {
                Ok(object) => {
                    black_box(dsmr5_number(&object));
                    black_box(object);
                    parsed += 1;
                }
                Err(error) => {
                    black_box(error);
                    rejected += 1;
                }
            }
        }
    }
    (parsed, rejected)
}

fn dsmr5_number(object: &dsmr5::OBIS<'_>) -> Option<f64> {
    use dsmr5::OBIS::*;
    match object {
        MeterReadingTo(_, v)
        | MeterReadingBy(_, v)
        | PowerDelivered(v)
        | PowerReceived(v)
        | InstantaneousVoltage(_, v)
        | InstantaneousActivePowerPlus(_, v)
        | InstantaneousActivePowerNeg(_, v)
        | SlaveMeterReading(_, _, Some(v)) => Some(f64::from(v)),
        PowerFailures(n)
        | LongPowerFailures(n)
        | VoltageSags(_, n)
        | VoltageSwells(_, n)
        | InstantaneousCurrent(_, n)
        | SlaveDeviceType(_, Some(n)) => Some(n.0 as f64),
        _ => None,
    }
}

/// Steady-state allocations per telegram: a check, not a timing. Panics if our framer +
/// parser allocate at all once they have seen the telegram.
fn allocations(_: &mut Criterion) {
    const ROUNDS: usize = 1000;
    for (name, bytes) in telegrams() {
        let (mut framer, mut parser) = (Framer::new(FramerConfig::default()), Parser::new());
        let objects = ours(&mut framer, &mut parser, &bytes); // warm-up
        let region = Region::new(GLOBAL);
        for _ in 0..ROUNDS {
            black_box(ours(&mut framer, &mut parser, &bytes));
        }
        let stats = region.change();
        let ours_per = (stats.allocations + stats.reallocations) as f64 / ROUNDS as f64;

        let region = Region::new(GLOBAL);
        let (parsed, rejected) = theirs(&bytes);
        let stats = region.change();
        let theirs_per = stats.allocations + stats.reallocations;

        eprintln!(
            "allocations/telegram {name}: p1guard {ours_per} ({objects} objects), \
             dsmr5 {theirs_per} ({parsed} objects parsed, {rejected} lines rejected)"
        );
        assert!(
            ours_per == 0.0,
            "{name}: p1guard allocates {ours_per} times per telegram in steady state"
        );
    }
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Elements(1));
    for (name, bytes) in telegrams() {
        let (mut framer, mut parser) = (Framer::new(FramerConfig::default()), Parser::new());
        group.bench_function(name, |b| {
            b.iter(|| ours(&mut framer, &mut parser, black_box(&bytes)));
        });
    }
    group.finish();
}

// dsmr5 0.4 reads all three fixtures (CRC included) but rejects the lines it does not know:
// the Fluvius-only objects (0-0:96.1.4, 1-0:1.4.0, 1-0:1.6.0, 0-0:98.1.0, ...) come back as
// `Err`, which is cheaper than parsing them; `allocations` prints the counts.
fn dsmr5(c: &mut Criterion) {
    let mut group = c.benchmark_group("dsmr5");
    group.throughput(Throughput::Elements(1));
    for (name, bytes) in telegrams() {
        group.bench_function(name, |b| b.iter(|| theirs(black_box(&bytes))));
    }
    group.finish();
}

/// ~10 MB of back-to-back DSMR 5 telegrams pushed in 4 KiB reads, every frame drained.
fn framer(c: &mut Criterion) {
    const TARGET: usize = 10 * 1000 * 1000;
    let telegram = load(TELEGRAMS[0].1);
    assert!(telegram.ends_with(b"\r\n"), "the fixture ends in CRLF");
    let copies = TARGET.div_ceil(telegram.len());
    let stream = telegram.repeat(copies);
    let drain = |stream: &[u8]| {
        let mut framer = Framer::new(FramerConfig::default());
        let mut frames = 0;
        for chunk in stream.chunks(4096) {
            framer.push(chunk);
            while let Some(item) = framer.next_frame() {
                black_box(item.expect("the stream frames").bytes().len());
                frames += 1;
            }
        }
        framer.finish();
        assert!(framer.next_frame().is_none());
        frames
    };
    assert_eq!(drain(&stream), copies);
    eprintln!("framer/10MB: {} bytes, {copies} telegrams", stream.len());

    let mut group = c.benchmark_group("framer");
    group.throughput(Throughput::ElementsAndBytes {
        elements: copies as u64,
        bytes: stream.len() as u64,
    });
    group.sample_size(30);
    group.bench_function("10MB", |b| b.iter(|| drain(black_box(&stream))));
    group.finish();
}

criterion_group!(benches, allocations, parse, dsmr5, framer);
criterion_main!(benches);
