//! The consent registry and the data subject's rights, end to end through the binary, against
//! a real SQLite store and a real mosquitto: grant, run, audit, export, erase (fiscal billing
//! kept), a restored backup caught by the audit and erased again, withdrawal purging stored
//! rows and retained messages, a registry that refuses edits by hand, and a running daemon
//! that follows the registry.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};
use p1guard_simulator::{MeterSpec, Style};
use serde_json::Value;

use crate::daemon::{Daemon, count_after};
use crate::mosquitto::{Mosquitto, Seen, Watcher, publish_all};
use crate::{p1guard, scratch, sqlite_rows};

const PATIENCE: Duration = Duration::from_secs(30);

/// The household's meter, as printed on it.
const PRINTED_ID: &str = "E0054000012345678";

fn meter() -> MeterSpec {
    MeterSpec {
        style: Style::Dsmr4,
        equipment_id: PRINTED_ID.into(),
        gas_id: Some("G0054000012345678".into()),
        seed: 12,
    }
}

/// The id as the meter sends it: hex-encoded.
fn sent_id() -> String {
    PRINTED_ID.bytes().map(|b| format!("{b:02X}")).collect()
}

/// The last billing boundary (local midnight on the 1st of an odd month) at least a day
/// ago: a capture around it has billing, daily and quarter-hour readings, all inside their
/// default retention.
fn last_billing_boundary() -> Timestamp {
    let amsterdam = TimeZone::get("Europe/Amsterdam").unwrap();
    let mut day = amsterdam.to_datetime(Timestamp::now()).date() - 1.day();
    while !(day.day() == 1 && day.month() % 2 == 1) {
        day -= 1.day();
    }
    amsterdam
        .to_ambiguous_timestamp(day.to_datetime(jiff::civil::Time::midnight()))
        .unambiguous()
        .unwrap()
}

/// Six hours of the meter around the last billing boundary, as `dir/capture.txt`.
fn capture(dir: &Path) -> (PathBuf, Timestamp) {
    let boundary = last_billing_boundary();
    let from = boundary - SignedDuration::from_hours(3);
    let to = boundary + SignedDuration::from_hours(3);
    let path = dir.join("capture.txt");
    std::fs::write(
        &path,
        p1guard_simulator::stream(meter(), from, to, Vec::new()),
    )
    .unwrap();
    (path, from)
}

/// A replay of `capture` into a SQLite store and an MQTT broker, both pseudonymous at
/// quarter hours, with the key, the registry and the store in `dir`.
fn config(dir: &Path, capture: &Path, broker: &Mosquitto) -> PathBuf {
    let path = dir.join("p1guard.toml");
    let text = format!(
        r#"
        [identity]
        key_file = "{dir}/identity.key"

        [consent]
        registry = "{dir}/consent.sqlite"

        [[sources]]
        type = "replay"
        files = [{capture:?}]

        [[sinks]]
        name = "store"
        type = "sqlite"
        path = "{dir}/store.sqlite"
        max_granularity = "quarter_hour"

        [[sinks]]
        name = "broker"
        type = "mqtt"
        url = "{url}"
        prefix = "supplier"
        max_granularity = "quarter_hour"
        "#,
        dir = dir.display(),
        url = broker.url(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `p1guard` with `args`, expecting `status`; its stdout.
fn run(args: &[&str], status: i32) -> String {
    let Output {
        status: got,
        stdout,
        stderr,
    } = p1guard(args);
    let stdout = String::from_utf8(stdout).unwrap();
    let stderr = String::from_utf8_lossy(&stderr);
    assert_eq!(
        got.code(),
        Some(status),
        "p1guard {args:?}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}"
    );
    stdout
}

/// The retained messages a subscriber that connects now receives under `filter`.
fn retained(broker: &Mosquitto, client: &str, filter: &str) -> Vec<Seen> {
    let watcher = Watcher::start(broker.port, client, &[filter]);
    std::thread::sleep(Duration::from_millis(500));
    watcher.seen()
}

fn granularities(rows: &[crate::Row]) -> BTreeSet<String> {
    rows.iter().map(|r| r.granularity.clone()).collect()
}

#[test]
fn an_erasure_keeps_only_fiscal_billing_and_a_restored_backup_is_erased_again() {
    let dir = scratch("rights-erase");
    let broker = Mosquitto::start(&dir);
    let (capture, from) = capture(&dir);
    let config = config(&dir, &capture, &broker);
    let config = config.to_str().unwrap();
    let store = dir.join("store.sqlite");

    // Consent as printed on the meter; history names it as the meter sends it.
    let granted = run(
        &[
            "consent",
            "grant",
            "--config",
            config,
            "--meter",
            PRINTED_ID,
            "--level",
            "quarter_hour",
            "--from",
            &(from - SignedDuration::from_hours(24)).to_string(),
            "--reference",
            "K-2041",
        ],
        0,
    );
    assert!(granted.contains(r#""recorded":1"#), "{granted}");
    Daemon::start(&dir, &std::fs::read_to_string(config).unwrap()).wait();
    let rows = sqlite_rows(&store);
    assert_eq!(
        granularities(&rows),
        BTreeSet::from(["billing".into(), "daily".into(), "quarter_hour".into()]),
        "{rows:#?}"
    );
    let billing_rows = rows.iter().filter(|r| r.granularity == "billing").count();
    let before = retained(&broker, "before", "supplier/+/+/+");
    assert!(before.len() >= 6, "{before:#?}");

    let audit = run(&["audit", "--config", config], 0);
    assert!(audit.contains(r#""clean":true"#), "{audit}");

    // Access: every record held, once, with the consent history.
    let export: Value = serde_json::from_str(&run(
        &[
            "export",
            "--config",
            config,
            "--meter",
            &sent_id().to_lowercase(),
        ],
        0,
    ))
    .unwrap();
    let pseudonym = export["meter"].as_str().unwrap().to_owned();
    assert_eq!(export["records"].as_array().unwrap().len(), rows.len());
    assert!(
        export["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["meter"] == pseudonym)
    );
    assert_eq!(export["consent"][0]["reference"], "K-2041");
    assert_eq!(export["consent"][0]["meter"], sent_id());
    let csv = run(
        &[
            "export", "--config", config, "--meter", PRINTED_ID, "--format", "csv",
        ],
        0,
    );
    assert_eq!(
        csv.lines().count(),
        rows.len() + 1,
        "a header and a row per record"
    );
    assert!(csv.starts_with("meter,granularity,kind,time,quality,clock,energy_import_t1_kwh"));

    std::fs::copy(&store, dir.join("backup.sqlite")).unwrap();

    // Erasure: everything but the billing readings the tax authority needs.
    let answer: Value = serde_json::from_str(&run(
        &[
            "erase",
            "--config",
            config,
            "--meter",
            PRINTED_ID,
            "--reference",
            "AVG-17",
        ],
        0,
    ))
    .unwrap();
    let stores = answer["stores"].as_array().unwrap();
    assert_eq!(stores[0]["store"], "store");
    assert_eq!(stores[0]["erased"], rows.len() - billing_rows);
    assert_eq!(stores[0]["kept"], billing_rows);
    assert!(
        stores[0]["kept_because"]
            .as_str()
            .unwrap()
            .contains("fiscal retention (7 years)")
    );
    assert_eq!(stores[1]["store"], "broker");
    assert!(stores[1]["erased"].as_u64().unwrap() >= 4, "{answer:#}");
    assert!(stores[1]["kept"].as_u64().unwrap() >= 1, "{answer:#}");
    assert_eq!(answer["meter"], pseudonym);
    assert!(
        !answer.to_string().contains(&sent_id()),
        "the answer names no raw id"
    );
    let left = sqlite_rows(&store);
    assert_eq!(granularities(&left), BTreeSet::from(["billing".into()]));
    assert_eq!(left.len(), billing_rows);
    let after = retained(&broker, "after", "supplier/+/+/+");
    assert!(
        !after.is_empty() && after.iter().all(|m| m.topic.contains("/billing/")),
        "only billing is retained: {after:#?}"
    );
    let history = run(
        &[
            "consent", "history", "--config", config, "--meter", PRINTED_ID,
        ],
        0,
    );
    let last: Value = serde_json::from_str(history.lines().last().unwrap()).unwrap();
    assert_eq!(
        (&last["level"], &last["purpose"]),
        (&"billing".into(), &"*".into())
    );

    // A backup from before the erasure comes back: the audit sees it, reapplying erases it.
    std::fs::copy(dir.join("backup.sqlite"), &store).unwrap();
    for stale in ["store.sqlite-wal", "store.sqlite-shm"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    let audit = run(&["audit", "--config", config], 1);
    assert!(
        audit.contains("erasure ledger") && audit.contains(r#""clean":false"#),
        "{audit}"
    );
    let reapplied = run(&["reapply-erasures", "--config", config], 0);
    assert!(
        reapplied.contains(&format!(r#""erased":{}"#, rows.len() - billing_rows)),
        "{reapplied}"
    );
    let again = run(&["reapply-erasures", "--config", config], 0);
    assert!(again.contains(r#""erased":0"#), "idempotent: {again}");
    let audit = run(&["audit", "--config", config], 0);
    assert!(audit.contains(r#""clean":true"#), "{audit}");
    assert_eq!(sqlite_rows(&store), left);
}

#[test]
fn a_withdrawal_purges_rows_and_retained_messages_and_the_registry_refuses_edits() {
    let dir = scratch("rights-withdraw");
    let broker = Mosquitto::start(&dir);
    let (capture, from) = capture(&dir);
    let config = config(&dir, &capture, &broker);
    let config = config.to_str().unwrap();
    let store = dir.join("store.sqlite");
    let before_capture = (from - SignedDuration::from_hours(24)).to_string();
    run(
        &[
            "consent",
            "grant",
            "--config",
            config,
            "--meter",
            &sent_id(),
            "--level",
            "quarter_hour",
            "--from",
            &before_capture,
        ],
        0,
    );
    Daemon::start(&dir, &std::fs::read_to_string(config).unwrap()).wait();
    assert!(granularities(&sqlite_rows(&store)).contains("quarter_hour"));
    let quarter_hours = |seen: &[Seen]| {
        seen.iter()
            .filter(|m| m.topic.contains("/quarter_hour/"))
            .count()
    };
    assert!(quarter_hours(&retained(&broker, "before", "supplier/#")) >= 2);

    let withdrawn: Value = serde_json::from_str(&run(
        &[
            "consent",
            "withdraw",
            "--config",
            config,
            "--meter",
            PRINTED_ID,
            "--to",
            "daily",
            "--reference",
            "W-9",
        ],
        0,
    ))
    .unwrap();
    assert_eq!(withdrawn["purged"][0]["store"], "store");
    assert!(
        withdrawn["purged"][0]["erased"].as_u64().unwrap() > 0,
        "{withdrawn:#}"
    );
    assert_eq!(
        granularities(&sqlite_rows(&store)),
        BTreeSet::from(["billing".into(), "daily".into()])
    );
    let after = retained(&broker, "after", "supplier/#");
    assert_eq!(quarter_hours(&after), 0, "{after:#?}");
    assert!(
        after.iter().any(|m| m.topic.contains("/daily/")),
        "{after:#?}"
    );
    let audit = run(&["audit", "--config", config], 0);
    assert!(audit.contains(r#""clean":true"#), "{audit}");

    // By hand, history cannot be rewritten.
    let registry = rusqlite::Connection::open(dir.join("consent.sqlite")).unwrap();
    for edit in [
        "UPDATE consent_events SET level = 'live'",
        "DELETE FROM consent_events",
    ] {
        let error = registry.execute(edit, []).unwrap_err().to_string();
        assert!(error.contains("append-only"), "{edit}: {error}");
    }
    let history = run(
        &[
            "consent", "history", "--config", config, "--meter", PRINTED_ID,
        ],
        0,
    );
    let levels: Vec<String> = history
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["level"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(levels, ["quarter_hour", "daily"]);
}

#[test]
fn a_running_daemon_follows_a_grant_and_a_withdrawal() {
    let dir = scratch("rights-follow");
    let broker = Mosquitto::start(&dir);
    let config = format!(
        r#"
        [identity]
        key_file = "{dir}/identity.key"

        [consent]
        registry = "{dir}/consent.sqlite"

        [[sources]]
        name = "fleet"
        type = "mqtt"
        url = "{url}"
        topic = "p1/+/telegram"

        [[sinks]]
        type = "stdout"
        max_granularity = "live"
        "#,
        dir = dir.display(),
        url = broker.url(),
    );
    let daemon = Daemon::start(&dir, &config);
    // Subscribed: a telegram sent before would find no session to wait in.
    daemon.wait_for_log("subscribed to p1/+/telegram", 1, PATIENCE);
    let path = dir.join("p1guard.toml");
    let path = path.to_str().unwrap();
    let live = r#""granularity":"live","kind":"electricity""#;
    // A DSMR 5 meter: a telegram each second, so each one sent is dated after the last.
    let dsmr5 = MeterSpec {
        style: Style::Dsmr5,
        ..meter()
    };
    let send = |count: usize| {
        let telegrams = crate::telegrams(dsmr5.clone(), &crate::now(), count);
        let messages = telegrams
            .into_iter()
            .map(|t| ("p1/12/telegram".to_owned(), t))
            .collect();
        publish_all(broker.port, "meter", messages);
    };

    // At billing (the default) no live record comes out.
    send(1);

    run(
        &[
            "consent", "grant", "--config", path, "--meter", PRINTED_ID, "--level", "live",
        ],
        0,
    );
    daemon.wait_for_log("consent registry: new events", 1, PATIENCE);
    std::thread::sleep(Duration::from_secs(1)); // telegrams dated after the grant
    send(1);
    daemon.wait_for_output(live, 1, PATIENCE);

    run(
        &[
            "consent", "withdraw", "--config", path, "--meter", PRINTED_ID,
        ],
        0,
    );
    daemon.wait_for_log("consent registry: new events", 2, PATIENCE);
    std::thread::sleep(Duration::from_secs(1));
    send(1);
    std::thread::sleep(Duration::from_secs(2));
    let finished = daemon.terminate();
    assert_eq!(count_after(&finished.stderr, "source fleet:", "ok"), 3);
    assert_eq!(
        finished.stdout.matches(live).count(),
        1,
        "only the telegram between grant and withdrawal: {}",
        finished.stdout
    );
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        !finished.stderr.contains(&sent_id()),
        "logs carry no raw id"
    );
}

#[test]
fn a_running_daemon_purges_a_withdrawal_at_its_effective_instant() {
    let dir = scratch("rights-scheduled");
    let broker = Mosquitto::start(&dir);
    let (capture, from) = capture(&dir);
    let config = config(&dir, &capture, &broker);
    let config = config.to_str().unwrap();
    let store = dir.join("store.sqlite");
    let before_capture = (from - SignedDuration::from_hours(24)).to_string();
    run(
        &[
            "consent",
            "grant",
            "--config",
            config,
            "--meter",
            PRINTED_ID,
            "--level",
            "quarter_hour",
            "--from",
            &before_capture,
        ],
        0,
    );
    Daemon::start(&dir, &std::fs::read_to_string(config).unwrap()).wait();
    assert!(granularities(&sqlite_rows(&store)).contains("quarter_hour"));

    // The same stores, now behind a daemon that reads an idle fleet source.
    let daemon_config = std::fs::read_to_string(config).unwrap().replace(
        &format!("type = \"replay\"\n        files = [{capture:?}]"),
        &format!(
            "type = \"mqtt\"\n        url = \"{}\"\n        topic = \"p1/+/telegram\"",
            broker.url()
        ),
    );
    assert!(
        daemon_config.contains("type = \"mqtt\"\n        url"),
        "{daemon_config}"
    );
    let daemon = Daemon::start(&dir, &daemon_config);
    daemon.wait_for_log("running", 1, PATIENCE);
    let effective = Timestamp::now() + SignedDuration::from_secs(3);
    let effective = Timestamp::from_second(effective.as_second())
        .unwrap()
        .to_string();
    let answer = run(
        &[
            "consent", "withdraw", "--config", config, "--meter", PRINTED_ID, "--to", "daily",
            "--from", &effective,
        ],
        0,
    );
    assert!(
        answer.contains("at its effective instant, by the running daemon"),
        "{answer}"
    );
    assert!(
        granularities(&sqlite_rows(&store)).contains("quarter_hour"),
        "not before"
    );
    daemon.wait_for_log("purged what lowered consent no longer allows", 1, PATIENCE);
    assert!(
        Timestamp::now() >= effective.parse().unwrap(),
        "not before its instant"
    );
    let finished = daemon.terminate();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(
        granularities(&sqlite_rows(&store)),
        BTreeSet::from(["billing".into(), "daily".into()])
    );
    let left = retained(&broker, "after", "supplier/#");
    assert!(
        left.iter().all(|m| !m.topic.contains("/quarter_hour/")),
        "{left:#?}"
    );
}

/// An erasure while the broker is down erases the store it can reach, says which one it
/// could not, exits 1, and still writes its ledger entry: `reapply-erasures` finishes it
/// once the broker is back, and a subscriber then receives none of the meter's readings.
#[test]
fn an_erasure_with_a_store_down_is_finished_by_reapply_erasures() {
    let dir = scratch("rights-erase-down");
    let mut broker = Mosquitto::start(&dir);
    let (capture, from) = capture(&dir);
    let config = config(&dir, &capture, &broker);
    let config = config.to_str().unwrap();
    let before_capture = (from - SignedDuration::from_hours(24)).to_string();
    let grant = [
        "consent",
        "grant",
        "--config",
        config,
        "--meter",
        PRINTED_ID,
        "--level",
        "quarter_hour",
        "--from",
        &before_capture,
    ];
    run(&grant, 0);
    Daemon::start(&dir, &std::fs::read_to_string(config).unwrap()).wait();
    let readings = |broker: &Mosquitto, client: &str| {
        retained(broker, client, "supplier/+/+/+")
            .into_iter()
            .filter(|m| !m.topic.contains("/billing/"))
            .count()
    };
    assert!(readings(&broker, "before") >= 4);

    broker.stop();
    let answer: Value = serde_json::from_str(&run(
        &["erase", "--config", config, "--meter", PRINTED_ID],
        1,
    ))
    .unwrap();
    let stores = answer["stores"].as_array().unwrap();
    let store = |name: &str| stores.iter().find(|s| s["store"] == name).unwrap();
    assert!(store("store")["erased"].as_u64().unwrap() > 0, "{answer:#}");
    assert!(store("store")["failed"].is_null(), "{answer:#}");
    assert!(store("broker")["failed"].is_string(), "{answer:#}");
    assert!(answer["ledger_entry"].as_i64().is_some(), "{answer:#}");

    broker.spawn();
    let reapplied = run(&["reapply-erasures", "--config", config], 0);
    assert!(reapplied.contains(r#""store":"broker""#), "{reapplied}");
    assert_eq!(readings(&broker, "after"), 0, "{reapplied}");
}
