//! Telegram benchmarks: the full parse of three real-shaped meters' telegrams (ours and the
//! `dsmr5` crate's), framing a 10 MB stream, and a steady-state allocation check that fails the
//! run if our framer + parser allocate once warmed up.
//!
//! `cargo bench --bench telegram`; the telegrams are made at run time from the golden fixtures:
//! a minute of each meter, one telegram a second, each differing from the one before as a
//! meter's do (see [`a_minute_of`]). Parsing one telegram over and over would measure a parser
//! that keeps what did not change at a rate no meter gives it.

use std::alloc::System;
use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use p1guard_telegram::{Framer, FramerConfig, Parser, Value, crc16};
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

/// Each fixture as a minute of its meter's telegrams.
fn telegrams() -> impl Iterator<Item = (&'static str, Vec<Vec<u8>>)> {
    TELEGRAMS
        .iter()
        .map(|&(name, path)| (name, a_minute_of(&load(path))))
}

/// Sixty telegrams of the meter that sent `telegram`, a second apart, as a meter's differ:
/// the clock's seconds count on, every instantaneous value (`1-0:C.7.0`: power, voltage,
/// current, and Fluvius's average demand `1-0:1.4.0`) gets new last two digits, the import
/// registers (`1-0:1.8.x`) a new last digit, and the CRC is made again. The widths stay, as
/// DSMR fixes them.
fn a_minute_of(telegram: &[u8]) -> Vec<Vec<u8>> {
    let mut random = 0x2545_F491_4F6C_DD1Du64;
    let mut digit = move || {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        b'0' + (random % 10) as u8
    };
    let bang = telegram.iter().rposition(|&b| b == b'!').expect("a '!'");
    (0..60u8)
        .map(|second| {
            let mut next = telegram.to_vec();
            let mut start = 0;
            while let Some(end) = next[start..bang].iter().position(|&b| b == b'\n') {
                let line = &mut next[start..start + end];
                start += end + 1;
                let Some(open) = line.iter().position(|&b| b == b'(') else {
                    continue;
                };
                let (code, value) = line.split_at_mut(open);
                let close = value.iter().position(|&b| b == b')').expect("a ')'");
                let value = &mut value[1..close];
                let changed = match code.split(|&b| b == b'.').collect::<Vec<_>>()[..] {
                    _ if code == b"0-0:1.0.0" => {
                        value[10..12].copy_from_slice(&[b'0' + second / 10, b'0' + second % 10]);
                        0
                    }
                    [b"1-0:1", b"4", b"0"] | [_, b"7", b"0"] if code.starts_with(b"1-0:") => 2,
                    [b"1-0:1", b"8", _] => 1,
                    _ => 0,
                };
                let digits = value.iter().enumerate().filter(|(_, b)| b.is_ascii_digit());
                let places: Vec<usize> = digits.map(|(i, _)| i).collect();
                for &i in places.iter().rev().take(changed) {
                    value[i] = digit();
                }
            }
            let crc = format!("{:04X}", crc16(&next[..=bang]));
            next[bang + 1..bang + 5].copy_from_slice(crc.as_bytes());
            next
        })
        .collect()
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
    for (name, minute) in telegrams() {
        let (mut framer, mut parser) = (Framer::new(FramerConfig::default()), Parser::new());
        let objects = ours(&mut framer, &mut parser, &minute[0]); // warm-up
        let region = Region::new(GLOBAL);
        for bytes in minute.iter().cycle().take(ROUNDS) {
            black_box(ours(&mut framer, &mut parser, bytes));
        }
        let stats = region.change();
        let ours_per = (stats.allocations + stats.reallocations) as f64 / ROUNDS as f64;

        let region = Region::new(GLOBAL);
        let (parsed, rejected) = theirs(&minute[0]);
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
    for (name, minute) in telegrams() {
        let (mut framer, mut parser) = (Framer::new(FramerConfig::default()), Parser::new());
        let mut telegrams = minute.iter().cycle();
        group.bench_function(name, |b| {
            b.iter(|| {
                let bytes = telegrams.next().expect("endless");
                ours(&mut framer, &mut parser, black_box(bytes))
            });
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
    for (name, minute) in telegrams() {
        let mut telegrams = minute.iter().cycle();
        group.bench_function(name, |b| {
            b.iter(|| theirs(black_box(telegrams.next().expect("endless"))));
        });
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
