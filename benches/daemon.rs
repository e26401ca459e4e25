//! The daemon end to end: `p1guard run` (release build) replaying six hours of a 1 s DSMR 5
//! meter (21,600 telegrams) at full speed through sources, channels, reduce task and the
//! SQLite store, at quarter-hour consent (a supplier's store) and at live consent with every
//! telegram stored (a household's own). Process start and SQLite open are included, as a
//! user would see them.
//!
//! `cargo bench --bench daemon`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use jiff::Timestamp;
use p1guard_simulator::{MeterSpec, Style};

const TELEGRAMS: u64 = 6 * 3600;

fn workdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("p1guard-bench-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

fn capture(dir: &Path) -> PathBuf {
    let spec = MeterSpec {
        style: Style::Dsmr5,
        equipment_id: "E0053000012345621".into(),
        gas_id: Some("G0053000012345621".into()),
        seed: 5,
    };
    let start = "2026-06-01T00:00:00Z".parse::<Timestamp>().expect("a time");
    let end = start + jiff::SignedDuration::from_secs(TELEGRAMS as i64);
    let path = dir.join("capture.txt");
    std::fs::write(
        &path,
        p1guard_simulator::stream(spec, start, end, Vec::new()),
    )
    .expect("the capture is written");
    path
}

fn config(dir: &Path, capture: &Path, level: &str) -> PathBuf {
    let path = dir.join(format!("{level}.toml"));
    let store = dir.join(format!("{level}.sqlite"));
    let text = format!(
        r#"
        [consent]
        default = "{level}"

        [[sources]]
        type = "replay"
        files = [{capture:?}]

        [[sinks]]
        type = "sqlite"
        path = {store:?}
        max_granularity = "{level}"
        identity = "pseudonym"
        retention_days = {{ live = 36500, quarter_hour = 36500, daily = 36500, billing = 36500 }}
        "#
    );
    std::fs::write(&path, text).expect("the config is written");
    path
}

fn run(dir: &Path, config: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_p1guard"))
        .args(["run", "--config"])
        .arg(config)
        .env("STATE_DIRECTORY", dir)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .status()
        .expect("p1guard runs");
    assert!(status.success(), "p1guard run failed");
}

fn daemon(c: &mut Criterion) {
    let dir = workdir();
    let capture = capture(&dir);
    let mut group = c.benchmark_group("daemon_replay_6h_dsmr5_into_sqlite");
    group.throughput(Throughput::Elements(TELEGRAMS));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    for level in ["quarter_hour", "live"] {
        let config = config(&dir, &capture, level);
        group.bench_function(level, |b| b.iter(|| run(&dir, &config)));
    }
    group.finish();
    let _ = std::fs::remove_dir_all(dir);
}

criterion_group!(benches, daemon);
criterion_main!(benches);
