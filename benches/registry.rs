//! The consent registry at a supplier's scale: a SQLite registry of 1,000,000 meters with 1-3
//! consent events each (about 2 million events; purposes `default` and `insight`, effective
//! over 2025-2026), as `p1guard run` loads it at start into the in-memory `ConsentTable`
//! (`Registry::load_into` + `shrink_to_fit`), and the lookup the reducer makes for every
//! record (`Consent::levels(meter, at)`): on random meters of the million, whose entries are
//! mostly out of cache as at a fleet's ingest; on the same 1,024 meters over and over, the
//! lookup's own cost; and on meters the registry does not list.
//!
//! Criterion cannot measure memory: the table's own account (`bytes_per_meter`, spare
//! capacity included) and the heap it really holds (counted by the allocator) are printed once
//! on stderr, for the loaded table, for the same events added meter by meter, and for a table
//! where every meter has exactly one event.
//!
//! The registry's log is in the order a supplier's would be: every meter's first event (the
//! initial import), then the second events in random order, then the third. The file is
//! written once (about 40 s) into a scratch directory and removed at the end; the whole run
//! takes about 2 1/2 minutes.
//!
//! `cargo bench --bench registry`.

use std::alloc::System;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jiff::Timestamp;
use p1guard::registry::{EventSource, NewEvent, Registry};
use p1guard_conduct::{Change, Consent as _, ConsentTable, Level, PurposeId, Scope};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

// Counts every allocation in this binary, for the heap the table holds. A hand-written
// counting `GlobalAlloc` would need `unsafe impl`, which the workspace forbids.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Meters in the registry.
const METERS: u64 = 1_000_000;
/// Lookups prepared (a power of two), each on a random meter at a random instant.
const QUERIES: usize = 1 << 16;
/// 2025-01-01T00:00:00Z and 2027-01-01T00:00:00Z: the span of effective instants.
const FROM: i64 = 1_735_689_600;
const UNTIL: i64 = 1_798_761_600;

/// SplitMix64: deterministic, so every run measures the same registry.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The equipment id of meter `n` as the meter sends it: a 17-character id as printed
/// (`E0054000012345678`), hex-encoded in upper case. `listed` false gives an id no meter of
/// the registry has.
fn meter_id(n: u64, listed: bool) -> [u8; 34] {
    let serial = 10_000_000 + n * 37 + u64::from(!listed);
    let printed = format!("E00{:02}{serial:012}", 30 + n % 50);
    let mut hex = [0u8; 34];
    for (pair, byte) in hex.chunks_exact_mut(2).zip(printed.bytes()) {
        pair.copy_from_slice(format!("{byte:02X}").as_bytes());
    }
    hex
}

fn text(id: &[u8; 34]) -> String {
    String::from_utf8_lossy(id).into_owned()
}

/// Every meter's events, in log order (see the module's doc).
fn events() -> Vec<NewEvent> {
    let mut rng = Rng(0x5EED);
    let mut rounds: [Vec<NewEvent>; 3] = Default::default();
    for n in 0..METERS {
        let id = text(&meter_id(n, true));
        let count = 1 + rng.below(3) as usize;
        let mut instants: Vec<i64> = (0..count)
            .map(|_| FROM + rng.below((UNTIL - FROM) as u64) as i64)
            .collect();
        instants.sort_unstable();
        for (round, at) in instants.into_iter().enumerate() {
            let purpose = if rng.below(3) == 0 {
                "insight"
            } else {
                "default"
            };
            rounds[round].push(NewEvent {
                meter: id.clone(),
                level: Level::ALL[rng.below(5) as usize],
                purpose: purpose.to_owned(),
                effective_from: Timestamp::from_second(at).expect("an instant in range"),
                reference: Some(format!("C{}-{:07}", 2025 + round, rng.below(10_000_000))),
                source: EventSource::Import,
                erasure: false,
            });
        }
    }
    let [first, mut second, mut third] = rounds;
    for later in [&mut second, &mut third] {
        for i in (1..later.len()).rev() {
            later.swap(i, rng.below(i as u64 + 1) as usize);
        }
    }
    first.into_iter().chain(second).chain(third).collect()
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("p1guard-bench-registry-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// Writes `events` into a new registry at `path`, a batch of 100,000 per transaction.
fn write_registry(path: &Path, events: &[NewEvent]) {
    let started = Instant::now();
    let mut registry = Registry::open(path).expect("the registry opens");
    let now = Timestamp::from_second(UNTIL).expect("an instant");
    for batch in events.chunks(100_000) {
        registry
            .append(batch, now)
            .expect("the events are recorded");
    }
    drop(registry);
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    eprintln!(
        "registry: {} events of {METERS} meters written in {:.1} s, {} MB",
        events.len(),
        started.elapsed().as_secs_f64(),
        size / 1_000_000
    );
}

fn table() -> ConsentTable {
    ConsentTable::new(Level::Billing, ["insight"])
}

/// What `p1guard run` does at start.
fn load(registry: &Registry) -> ConsentTable {
    let table = table();
    registry.load_into(&table, 0).expect("the registry loads");
    table.shrink_to_fit();
    table
}

/// Builds a table with `build` and prints what it holds per meter: its own account and the
/// heap it holds (the allocator's count of bytes allocated and not freed since).
fn memory(name: &str, build: impl FnOnce() -> ConsentTable) -> ConsentTable {
    let region = Region::new(GLOBAL);
    let table = build();
    let stats = region.change();
    // A reallocation counts its growth as allocated and its shrinking as deallocated.
    let held = stats.bytes_allocated as isize - stats.bytes_deallocated as isize;
    let meters = table.listed().max(1);
    eprintln!(
        "consent table, {name}: {meters} meters, bytes_per_meter {} (heap held {} bytes per meter)",
        table.bytes_per_meter(),
        held / meters as isize
    );
    table
}

/// The events added straight to a table, without SQLite.
fn add_all(table: &ConsentTable, events: &[&NewEvent]) {
    // Looked up before `add_all`, which holds the table's lock while it takes the changes.
    let insight = table.purpose("insight").expect("served");
    let purpose = |name: &str| match name {
        "insight" => Scope::Purpose(insight),
        _ => Scope::Purpose(PurposeId::DEFAULT),
    };
    table
        .add_all(events.iter().map(|e| {
            let change = Change {
                from: e.effective_from,
                level: e.level,
                scope: purpose(&e.purpose),
            };
            (e.meter.as_bytes(), change)
        }))
        .expect("the changes are added");
    table.shrink_to_fit();
}

fn registry(c: &mut Criterion) {
    let dir = scratch();
    let path = dir.join("consent.sqlite");
    let events = events();
    write_registry(&path, &events);
    let registry = Registry::open(&path).expect("the registry opens");

    // Memory, printed once.
    let first: Vec<&NewEvent> = events.iter().take(METERS as usize).collect();
    drop(memory("1 event per meter", || {
        let table = table();
        add_all(&table, &first);
        table
    }));
    let mut grouped: Vec<&NewEvent> = events.iter().collect();
    grouped.sort_by(|a, b| a.meter.cmp(&b.meter));
    drop(memory("1-3 events per meter, added meter by meter", || {
        let table = table();
        add_all(&table, &grouped);
        table
    }));
    drop(grouped);
    drop(first);
    let loaded = memory(
        "1-3 events per meter, loaded from the registry in log order",
        || load(&registry),
    );
    drop(events);
    assert_eq!(loaded.listed(), METERS as usize);

    let mut group = c.benchmark_group("registry");
    group.sample_size(10);
    group.throughput(Throughput::Elements(METERS));
    group.bench_function("load_1m_meters", |b| {
        b.iter_with_large_drop(|| load(&registry))
    });
    group.finish();

    // Random meters of the million (the table's memory mostly out of cache, as at a fleet's
    // ingest), the same 1,024 meters over and over (in cache: the lookup's own cost), and
    // meters the registry does not list.
    let mut rng = Rng(0x10_0C);
    let mut queries = |among: u64, listed: bool| -> Vec<([u8; 34], Timestamp)> {
        (0..QUERIES)
            .map(|_| {
                let id = meter_id(rng.below(among), listed);
                let at = FROM - 180 * 86_400 + rng.below((UNTIL - FROM) as u64) as i64;
                (id, Timestamp::from_second(at).expect("an instant"))
            })
            .collect()
    };
    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(1));
    let cases = [
        ("listed_meter", METERS, true),
        ("listed_meter_of_1024", 1024, true),
        ("unlisted_meter", METERS, false),
    ];
    for (name, among, listed) in cases {
        let queries = queries(among, listed);
        let mut next = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                next = (next + 1) & (QUERIES - 1);
                let (id, at) = &queries[next];
                loaded.levels(black_box(id), *at)
            })
        });
    }
    group.finish();

    drop(registry);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, registry);
criterion_main!(benches);
