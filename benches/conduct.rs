//! The privacy pipeline's speed and memory: one day of a 1 s DSMR 5 meter (86,400 telegrams)
//! through framer, parser, reducer and a sink policy to JSON, at quarter-hour consent (what a
//! supplier keeps) and at live consent (a household's own dashboard); and the reducer's state
//! per meter with a million meters.
//!
//! `cargo bench --bench conduct`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jiff::{SignedDuration, Timestamp};
use p1guard_conduct::{
    Arrival, BillingCadence, Calendar, Granularity, Identity, IdentityKey, Level, MaxGaps, Reducer,
    ReducerConfig, SinkPolicy, Timeline,
};
use p1guard_simulator::{MeterSpec, Simulator, Style};
use p1guard_telegram::{Framer, FramerConfig, Parser};

fn spec(equipment_id: String) -> MeterSpec {
    MeterSpec {
        style: Style::Dsmr5,
        equipment_id,
        gas_id: Some("G0039001936990619".into()),
        seed: 1,
    }
}

fn config(finest: Granularity) -> ReducerConfig {
    ReducerConfig {
        calendar: Calendar::netherlands(BillingCadence::BiMonthly),
        finest,
        max_gaps: MaxGaps::default(),
    }
}

/// Frames, parses, reduces and encodes `stream`, read in the replay source's 64 KiB reads (so
/// that the framer's buffer stays as small as in the daemon, rather than copying the whole
/// day); returns the bytes of JSON produced.
fn pipeline(stream: &[u8], level: Level, policy: SinkPolicy, out: &mut Vec<u8>) -> usize {
    let mut reducer = Reducer::new(
        config(policy.ceiling()),
        Timeline::constant(level),
        IdentityKey::from_bytes([1; 32]),
    );
    let mut framer = Framer::new(FramerConfig::default());
    let mut parser = Parser::new();
    let mut records = Vec::new();
    out.clear();
    for read in stream.chunks(64 * 1024) {
        framer.push(read);
        while let Some(frame) = framer.next_frame() {
            let telegram = parser.parse(&frame.expect("framed")).expect("valid");
            reducer.reduce(&telegram, Arrival::Recorded(Timestamp::MAX), &mut records);
            for record in records.drain(..) {
                if let Some(admitted) = policy.admit(&record) {
                    admitted.write_json(&mut *out).expect("JSON in memory");
                    out.push(b'\n');
                }
            }
        }
    }
    out.len()
}

fn one_day(c: &mut Criterion) {
    let start: Timestamp = "2026-06-15T00:00:00Z".parse().expect("RFC 3339");
    let end = start + SignedDuration::from_hours(24);
    let stream =
        p1guard_simulator::stream(spec("E0071004210987654".into()), start, end, Vec::new());
    let mut group = c.benchmark_group("pipeline");
    group.sample_size(10);
    group.throughput(Throughput::Elements(86_400));
    let mut out = Vec::new();
    let cases = [
        (
            "dsmr5_day_quarter_hour",
            Level::QuarterHour,
            SinkPolicy::new(Granularity::QuarterHour, Identity::Pseudonym),
        ),
        (
            "dsmr5_day_live",
            Level::Live,
            SinkPolicy::new(Granularity::Live, Identity::Pseudonym),
        ),
    ];
    for (name, level, policy) in cases {
        let policy = policy.expect("valid policy");
        group.bench_function(name, |b| {
            b.iter(|| black_box(pipeline(&stream, level, policy, &mut out)))
        });
    }
    group.finish();
}

/// A million meters, one telegram each: the reducer's state per meter, printed.
fn state_per_meter(_: &mut Criterion) {
    const METERS: usize = 1_000_000;
    let start: Timestamp = "2026-06-15T12:00:00Z".parse().expect("RFC 3339");
    let mut reducer = Reducer::new(
        config(Granularity::QuarterHour),
        Timeline::constant(Level::QuarterHour),
        IdentityKey::from_bytes([1; 32]),
    );
    let (mut parser, mut bytes, mut records) = (Parser::new(), Vec::new(), Vec::new());
    for meter in 0..METERS {
        let mut simulator = Simulator::new(
            spec(format!("E{meter:016}")),
            start,
            start + SignedDuration::from_secs(1),
            Vec::new(),
        );
        bytes.clear();
        simulator.next_into(&mut bytes).expect("one telegram");
        let mut framer = Framer::new(FramerConfig::default());
        framer.push(&bytes);
        let telegram = parser
            .parse(&framer.next_frame().expect("frame").expect("framed"))
            .expect("valid");
        reducer.reduce(&telegram, Arrival::Recorded(Timestamp::MAX), &mut records);
        records.clear();
    }
    eprintln!(
        "reducer state: {} meters, {} bytes per meter (map slots incl. spare capacity, ids, M-Bus series)",
        reducer.meter_count(),
        reducer.state_bytes_per_meter()
    );
}

criterion_group!(benches, one_day, state_per_meter);
criterion_main!(benches);
