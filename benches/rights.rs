//! The data subject's rights at a supplier's scale, timed as a privacy officer meets them:
//! whole `p1guard` processes, start-up and configuration included.
//!
//! - `consent import` of 1,000,000 rows (a supplier's initial import: one row per meter,
//!   levels from billing to live, effective over 2026) into a new registry.
//! - `export` of one meter with a year of quarter hours (the issue asks for under 5 s), as
//!   JSON and as CSV, from a SQLite store that holds 20 other meters' years as well.
//!
//! The year is real output of the daemon: `p1guard run` replays two days of a simulated DSMR 4
//! meter (with gas) at quarter-hour consent into the store, and the bench then copies those
//! two days' rows back over the 364 days before them (the time shifted by whole days), and
//! copies the meter's year to 20 other meters. Before timing, one export is read back and
//! must hold every row of the meter.
//!
//! `cargo bench --bench rights`; about 3 minutes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use jiff::{SignedDuration, Timestamp};
use p1guard_simulator::{MeterSpec, Style};

/// Rows of the import.
const IMPORT_ROWS: u64 = 1_000_000;
/// The meter exported, as printed on it.
const METER: &str = "E0054000012345678";
/// Other meters in the store, each with a year like the exported meter's.
const NEIGHBOURS: u32 = 20;

fn p1guard(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_p1guard"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("p1guard runs");
    assert!(
        output.status.success(),
        "p1guard {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// A replay of `capture` into a pseudonymous SQLite store at quarter hours, with its key,
/// its store and the registry `registry` in `dir`.
fn config(dir: &Path, capture: &Path, registry: &str) -> PathBuf {
    let path = dir.join(format!("{registry}.toml"));
    let text = format!(
        r#"
        [identity]
        key_file = "{dir}/identity.key"

        [consent]
        registry = "{dir}/{registry}.sqlite"

        [[sources]]
        type = "replay"
        files = [{capture:?}]

        [[sinks]]
        name = "store"
        type = "sqlite"
        path = "{dir}/store.sqlite"
        max_granularity = "quarter_hour"
        "#,
        dir = dir.display(),
    );
    std::fs::write(&path, text).expect("the configuration is written");
    path
}

/// Two days of the meter, ending yesterday, as `dir/capture.txt`; and its first instant.
fn capture(dir: &Path) -> (PathBuf, Timestamp) {
    let to = Timestamp::now() - SignedDuration::from_hours(24);
    let from = to - SignedDuration::from_hours(48);
    let spec = MeterSpec {
        style: Style::Dsmr4,
        equipment_id: METER.into(),
        gas_id: Some("G0054000012345678".into()),
        seed: 12,
    };
    let path = dir.join("capture.txt");
    let stream = p1guard_simulator::stream(spec, from, to, Vec::new());
    std::fs::write(&path, stream).expect("the capture is written");
    (path, from)
}

/// Copies the store's two days back over the year before them, then the meter's year to
/// [`NEIGHBOURS`] other meters (the store's schema is the README's). The meter's rows.
fn spread_over_a_year(store: &Path) -> u64 {
    let connection = rusqlite::Connection::open(store).expect("the store opens");
    connection
        .execute_batch(
            "CREATE TEMP TABLE days AS SELECT * FROM records;
             BEGIN;",
        )
        .expect("the two days are copied");
    for back in (2..365).step_by(2) {
        connection
            .execute(
                "INSERT OR IGNORE INTO records \
                 SELECT meter, granularity, kind, time - ?1, quality, clock, readings FROM days \
                 WHERE granularity IN ('quarter_hour', 'daily')",
                [back * 86_400],
            )
            .expect("a copy of the two days");
    }
    connection.execute_batch("COMMIT;").expect("committed");
    let rows: i64 = connection
        .query_row("SELECT count(*) FROM records", [], |row| row.get(0))
        .expect("a count");
    connection.execute_batch("BEGIN;").expect("a transaction");
    for n in 1..=NEIGHBOURS {
        connection
            .execute(
                "INSERT INTO records \
                 SELECT 'neighbour-' || ?1, granularity, kind, time, quality, clock, readings \
                 FROM records WHERE meter NOT LIKE 'neighbour-%'",
                [n],
            )
            .expect("a neighbour's year");
    }
    connection.execute_batch("COMMIT;").expect("committed");
    rows as u64
}

/// A consent file of [`IMPORT_ROWS`] meters, one row each.
fn consents(path: &Path) {
    const LEVELS: [&str; 6] = [
        "billing",
        "daily",
        "daily",
        "quarter_hour",
        "quarter_hour",
        "live",
    ];
    let mut text = String::with_capacity(80 * IMPORT_ROWS as usize);
    text.push_str("meter,level,effective_from,reference\n");
    let year_start = Timestamp::from_second(1_767_222_000).expect("2026-01-01T00:00:00+01:00");
    for n in 0..IMPORT_ROWS {
        let from = year_start + SignedDuration::from_secs((n * 31 % 31_536_000) as i64);
        text.push_str(&format!(
            "E00{:02}{:012},{},{from},K-{n:07}\n",
            30 + n % 50,
            10_000_000 + n * 37,
            LEVELS[(n % 6) as usize],
        ));
    }
    std::fs::write(path, text).expect("the consent file is written");
}

fn remove_registry(dir: &Path, name: &str) {
    for suffix in ["sqlite", "sqlite-wal", "sqlite-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("{name}.{suffix}")));
    }
}

fn rights(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("p1guard-bench-rights-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let (capture, from) = capture(&dir);

    // The store: two real days, spread over a year.
    let export_config = config(&dir, &capture, "consent");
    let export_config = export_config.to_str().expect("a UTF-8 path");
    let before = (from - SignedDuration::from_hours(24)).to_string();
    p1guard(&[
        "consent",
        "grant",
        "--config",
        export_config,
        "--meter",
        METER,
        "--level",
        "quarter_hour",
        "--from",
        &before,
    ]);
    p1guard(&["run", "--config", export_config]);
    let rows = spread_over_a_year(&dir.join("store.sqlite"));
    let exported = dir.join("export.json");
    let output = exported.to_str().expect("a UTF-8 path");
    let export = |format: &str| {
        p1guard(&[
            "export",
            "--config",
            export_config,
            "--meter",
            METER,
            "--format",
            format,
            "--output",
            output,
        ]);
    };
    export("json");
    let answer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&exported).expect("the export")).expect("JSON");
    let records = answer["records"].as_array().expect("records").len() as u64;
    assert_eq!(records, rows, "the export holds every row of the meter");
    let quarter_hours = answer["records"]
        .as_array()
        .expect("records")
        .iter()
        .filter(|r| r["granularity"] == "quarter_hour")
        .count();
    eprintln!(
        "rights: the exported meter has {rows} records ({quarter_hours} quarter hours), the store {} meters",
        NEIGHBOURS + 1
    );

    let mut group = c.benchmark_group("export_a_year_of_quarter_hours");
    group.sample_size(10);
    group.throughput(Throughput::Elements(rows));
    for format in ["json", "csv"] {
        group.bench_function(format, |b| b.iter(|| export(format)));
    }
    group.finish();

    // The import, each time into a new registry.
    let import_config = config(&dir, &capture, "import");
    let import_config = import_config.to_str().expect("a UTF-8 path");
    let file = dir.join("consents.csv");
    consents(&file);
    let file = file.to_str().expect("a UTF-8 path");
    let mut group = c.benchmark_group("consent_import");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(60));
    group.throughput(Throughput::Elements(IMPORT_ROWS));
    group.bench_function("1m_rows_into_a_new_registry", |b| {
        b.iter_batched(
            || remove_registry(&dir, "import"),
            |()| {
                let answer = p1guard(&["consent", "import", "--config", import_config, file]);
                assert_eq!(answer, format!("{{\"recorded\":{IMPORT_ROWS}}}\n"));
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();

    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, rights);
criterion_main!(benches);
