//! The README's first command: `p1guard run --config config/demo.toml` replays the bundled
//! capture into the embedded store and stdout.

use std::path::{Path, PathBuf};
use std::process::Command;

use jiff::Timestamp;
use p1guard_simulator::{MeterSpec, Style};

use crate::{scratch, sqlite_rows};

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// 70 minutes of a DSMR 4 meter (a telegram every 10 s, gas hourly) across local midnight
/// into 1 March 2026, a bi-monthly billing day: quarter hours, a daily and a billing boundary.
fn demo_capture() -> Vec<u8> {
    let spec = MeterSpec {
        style: Style::Dsmr4,
        equipment_id: "E0046000012345626".into(),
        gas_id: Some("G0046000012345626".into()),
        seed: 2026,
    };
    let at = |s: &str| s.parse::<Timestamp>().unwrap();
    p1guard_simulator::stream(
        spec,
        at("2026-02-28T22:25:00Z"),
        at("2026-02-28T23:35:00Z"),
        Vec::new(),
    )
}

#[test]
fn the_demo_capture_is_the_simulators_output() {
    let path = repository().join("config/demo/capture.txt");
    let expected = demo_capture();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let bundled =
        std::fs::read(&path).expect("config/demo/capture.txt (UPDATE_GOLDEN=1 writes it)");
    assert!(
        bundled == expected,
        "config/demo/capture.txt is stale: run with UPDATE_GOLDEN=1"
    );
}

#[test]
fn the_demo_prints_records_and_stores_them() {
    let state = scratch("demo");
    let store: PathBuf = state.join("demo.sqlite");
    let output = Command::new(env!("CARGO_BIN_EXE_p1guard"))
        .args(["run", "--config", "config/demo.toml"])
        .current_dir(repository())
        .env("XDG_STATE_HOME", &state)
        .env("P1GUARD_SINKS__0__PATH", &store)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let printed: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |granularity: &str, kind: &str| {
        printed
            .iter()
            .filter(|r| r["granularity"] == granularity && r["kind"] == kind)
            .count()
    };
    // 22:30 .. 23:30 UTC: five quarter hours. Gas is captured on full hours: the 22:00 reading
    // comes with the first telegram, the 23:00 one (local midnight) at 23:00.
    assert_eq!(count("quarter_hour", "electricity"), 5, "{stdout}");
    assert_eq!(count("quarter_hour", "gas"), 2, "{stdout}");
    assert_eq!(count("daily", "electricity"), 1, "{stdout}");
    assert_eq!(count("billing", "electricity"), 1, "{stdout}");
    assert_eq!(
        count("live", "electricity"),
        0,
        "the demo consents to quarter hours only"
    );
    assert!(stderr.contains("source demo: telegrams ok 420"), "{stderr}");

    let rows = sqlite_rows(&store);
    assert_eq!(
        rows.len(),
        printed.len(),
        "the store holds what stdout shows"
    );
}
