//! `p1guard replay` end to end: a simulated day of a meter through the binary.

use jiff::{SignedDuration, Timestamp};
use p1guard_simulator::{MeterSpec, Style};
use serde_json::Value;

use crate::{p1guard, scratch};

/// Six hours of a DSMR 4 meter with gas, written as a capture file.
fn capture(dir: &std::path::Path) -> String {
    let spec = MeterSpec {
        style: Style::Dsmr4,
        equipment_id: "E0026004150987321".into(),
        gas_id: Some("G0039001936990619".into()),
        seed: 5,
    };
    let start: Timestamp = "2026-03-28T21:00:00Z".parse().unwrap();
    let stream = p1guard_simulator::stream(
        spec,
        start,
        start + SignedDuration::from_hours(6),
        Vec::new(),
    );
    let path = dir.join("capture.txt");
    std::fs::write(&path, stream).unwrap();
    path.to_str().unwrap().to_owned()
}

fn records(stdout: &[u8]) -> Vec<Value> {
    std::str::from_utf8(stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

#[test]
fn replay_is_deterministic_and_respects_consent() {
    let dir = scratch("deterministic");
    let (file, key) = (capture(&dir), dir.join("identity.key"));
    let args = [
        "replay",
        "--consent",
        "quarter_hour",
        "--identity-key",
        key.to_str().unwrap(),
        &file,
    ];
    let first = p1guard(&args);
    let second = p1guard(&args);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        first.stdout, second.stdout,
        "same input, same key: byte-identical output"
    );
    let records = records(&first.stdout);
    // 6 hours: 24 quarter hours of electricity, 6 hours of gas, one local midnight.
    let count = |granularity: &str, kind: &str| {
        records
            .iter()
            .filter(|r| r["granularity"] == granularity && r["kind"] == kind)
            .count()
    };
    assert_eq!(count("quarter_hour", "electricity"), 24);
    assert_eq!(count("quarter_hour", "gas"), 6);
    assert_eq!(count("daily", "electricity"), 1);
    assert_eq!(
        count("live", "electricity"),
        0,
        "no live records at quarter-hour consent"
    );
    assert!(
        records
            .iter()
            .all(|r| r["meter"].as_str().unwrap().len() == 32),
        "pseudonyms only"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_consent_change_takes_effect_at_its_instant() {
    let dir = scratch("consent-change");
    let (file, key) = (capture(&dir), dir.join("identity.key"));
    let output = p1guard(&[
        "replay",
        "--consent",
        "billing",
        "--consent-change",
        "2026-03-29T01:00:00Z=live",
        "--identity-key",
        key.to_str().unwrap(),
        &file,
    ]);
    let live: Vec<String> = records(&output.stdout)
        .iter()
        .filter(|r| r["granularity"] == "live" && r["kind"] == "electricity")
        .map(|r| r["time"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        live.first().map(String::as_str),
        Some("2026-03-29T01:00:00Z")
    );
    assert_eq!(live.len(), 2 * 360, "two hours of 10 s telegrams");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn raw_identity_is_refused_below_live() {
    let dir = scratch("raw-refused");
    let (file, key) = (capture(&dir), dir.join("identity.key"));
    let refused = p1guard(&[
        "replay",
        "--identity",
        "raw",
        "--max-granularity",
        "daily",
        "--identity-key",
        key.to_str().unwrap(),
        &file,
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("raw meter identity is only allowed")
    );
    assert!(refused.stdout.is_empty());

    let owner = p1guard(&[
        "replay",
        "--consent",
        "live",
        "--identity",
        "raw",
        "--identity-key",
        key.to_str().unwrap(),
        &file,
    ]);
    let records = records(&owner.stdout);
    let raw_id: String = "E0026004150987321"
        .bytes()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert!(!records.is_empty() && records.iter().all(|r| r["meter"] == raw_id.as_str()));
    std::fs::remove_dir_all(dir).unwrap();
}

/// `[consent] meters` names a meter as it sends its id (hex) or as its id is printed on it,
/// which Home Assistant shows and `consent grant` takes: both give it its level.
#[test]
fn a_meter_listed_by_its_printed_id_gets_its_consent() {
    let dir = scratch("consent-printed-id");
    let file = capture(&dir);
    for (run, listed) in ["E0026004150987321", "e0026004150987321", SENT_ID]
        .into_iter()
        .enumerate()
    {
        // A state directory of its own: its outbox and reducer start afresh.
        let state = dir.join(run.to_string());
        std::fs::create_dir_all(&state).unwrap();
        let config = format!(
            r#"
            [consent]
            default = "billing"

            [consent.meters]
            "{listed}" = "live"

            [[sources]]
            name = "capture"
            type = "replay"
            files = [{file:?}]
            speed = "max"

            [[sinks]]
            name = "out"
            type = "stdout"
            max_granularity = "live"
            identity = "raw"
            "#
        );
        let finished = crate::daemon::Daemon::start(&state, &config).wait();
        assert!(finished.status.success(), "{listed}: {}", finished.stderr);
        let records = records(finished.stdout.as_bytes());
        let live = records
            .iter()
            .filter(|r| r["granularity"] == "live" && r["kind"] == "electricity")
            .filter(|r| r["meter"] == SENT_ID)
            .count();
        assert_eq!(live, 6 * 360, "{listed}: six hours of 10 s telegrams, live");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `E0026004150987321` as the meter sends it.
const SENT_ID: &str = "4530303236303034313530393837333231";
