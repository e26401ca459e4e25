//! The consent registry and the data subject's rights, end to end through the binary, against
//! a real SQLite store and a real mosquitto: grant, run, audit, export, erase (fiscal billing
//! kept), a restored backup caught by the audit and erased again, withdrawal purging stored
//! rows and retained messages (and a restored backup's again), a registry that refuses edits by hand, a running daemon
//! that follows the registry, `consent import` and its bad rows, `erase --to none`, `export
//! --output`, and `audit` on an invalid configuration.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};
use p1guard_simulator::{MeterSpec, Style};
use serde_json::Value;

use crate::daemon::{Daemon, count_after};
use crate::mosquitto::{Mosquitto, Seen, publish_all, retained};
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
    sent(PRINTED_ID)
}

/// `printed`, as a meter sends it: hex-encoded.
fn sent(printed: &str) -> String {
    printed.bytes().map(|b| format!("{b:02X}")).collect()
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

/// The household of most tests here: its meter's capture around the last billing boundary,
/// a broker, and the configuration that replays the capture into the store and the broker,
/// all in the test's own directory.
struct Household {
    dir: PathBuf,
    broker: Mosquitto,
    /// `dir/capture.txt`, which the configuration replays.
    capture: PathBuf,
    /// The capture's first instant.
    from: Timestamp,
    config: PathBuf,
    /// The SQLite store.
    store: PathBuf,
}

impl Household {
    /// A household nobody has recorded consent for yet.
    fn new(test: &str) -> Household {
        let dir = scratch(test);
        let broker = Mosquitto::start(&dir);
        let (capture, from) = capture(&dir);
        let config = config(&dir, &capture, &broker);
        let store = dir.join("store.sqlite");
        Household {
            dir,
            broker,
            capture,
            from,
            config,
            store,
        }
    }

    /// A household whose meter (named by `meter`: printed or as sent) was granted
    /// quarter-hour consent from a day before the capture, with `reference`, and whose
    /// capture was then replayed into the store and the broker.
    fn granted_and_replayed(test: &str, meter: &str, reference: Option<&str>) -> Household {
        let household = Household::new(test);
        let granted = household.grant(meter, "quarter_hour", reference);
        assert!(granted.contains(r#""recorded":1"#), "{granted}");
        household.replay();
        household
    }

    /// The configuration, for the command line.
    fn config(&self) -> &str {
        self.config.to_str().unwrap()
    }

    /// A day before the capture starts: consent from then covers all of it.
    fn before_capture(&self) -> String {
        (self.from - SignedDuration::from_hours(24)).to_string()
    }

    /// `consent grant` of `level` for `meter` from [`Household::before_capture`]; its answer.
    fn grant(&self, meter: &str, level: &str, reference: Option<&str>) -> String {
        let before_capture = self.before_capture();
        let mut args = vec![
            "consent",
            "grant",
            "--config",
            self.config(),
            "--meter",
            meter,
            "--level",
            level,
            "--from",
            &before_capture,
        ];
        if let Some(reference) = reference {
            args.extend(["--reference", reference]);
        }
        run(&args, 0)
    }

    /// `p1guard run` of the configuration, to the capture's end.
    fn replay(&self) {
        let config = std::fs::read_to_string(&self.config).unwrap();
        let finished = Daemon::start(&self.dir, &config).wait();
        assert!(finished.status.success(), "{}", finished.stderr);
    }

    /// What the store holds.
    fn rows(&self) -> Vec<crate::Row> {
        sqlite_rows(&self.store)
    }

    /// `consent history` of `meter`, one JSON object per event.
    fn history(&self, meter: &str) -> Vec<Value> {
        run(
            &[
                "consent",
                "history",
                "--config",
                self.config(),
                "--meter",
                meter,
            ],
            0,
        )
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
    }
}

/// Runs `p1guard` with `args`, expecting `status`; its stdout and stderr.
fn run_output(args: &[&str], status: i32) -> (String, String) {
    let Output {
        status: got,
        stdout,
        stderr,
    } = p1guard(args);
    let stdout = String::from_utf8(stdout).unwrap();
    let stderr = String::from_utf8(stderr).unwrap();
    assert_eq!(
        got.code(),
        Some(status),
        "p1guard {args:?}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}"
    );
    (stdout, stderr)
}

/// Runs `p1guard` with `args`, expecting `status`; its stdout.
fn run(args: &[&str], status: i32) -> String {
    run_output(args, status).0
}

/// `audit` of `config` exits 0 and finds every store clean.
fn audit_is_clean(config: &str) {
    let audit = run(&["audit", "--config", config], 0);
    assert!(audit.contains(r#""clean":true"#), "{audit}");
}

fn granularities(rows: &[crate::Row]) -> BTreeSet<String> {
    rows.iter().map(|r| r.granularity.clone()).collect()
}

#[test]
fn an_erasure_keeps_only_fiscal_billing_and_a_restored_backup_is_erased_again() {
    // Consent as printed on the meter; history names it as the meter sends it.
    let household = Household::granted_and_replayed("rights-erase", PRINTED_ID, Some("K-2041"));
    let (dir, broker, config, store) = (
        &household.dir,
        &household.broker,
        household.config(),
        &household.store,
    );
    let rows = household.rows();
    assert_eq!(
        granularities(&rows),
        BTreeSet::from(["billing".into(), "daily".into(), "quarter_hour".into()]),
        "{rows:#?}"
    );
    let billing_rows = rows.iter().filter(|r| r.granularity == "billing").count();
    let before = retained(broker, "before", "supplier/+/+/+");
    assert!(before.len() >= 6, "{before:#?}");

    audit_is_clean(config);

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

    std::fs::copy(store, dir.join("backup.sqlite")).unwrap();

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
    let left = household.rows();
    assert_eq!(granularities(&left), BTreeSet::from(["billing".into()]));
    assert_eq!(left.len(), billing_rows);
    let after = retained(broker, "after", "supplier/+/+/+");
    assert!(
        !after.is_empty() && after.iter().all(|m| m.topic.contains("/billing/")),
        "only billing is retained: {after:#?}"
    );
    let history = household.history(PRINTED_ID);
    let last = history.last().unwrap();
    assert_eq!(
        (&last["level"], &last["purpose"], &last["erasure"]),
        (&"billing".into(), &"*".into(), &true.into())
    );

    // The meter's telegrams from before the erasure arrive again (a late gateway, a
    // replay): nothing they carry comes back but the billing readings the erasure kept.
    household.replay();
    assert_eq!(household.rows(), left);
    let late = retained(broker, "late", "supplier/+/+/+");
    assert!(
        late.iter().all(|m| m.topic.contains("/billing/")),
        "only billing is retained: {late:#?}"
    );

    // A backup from before the erasure comes back: the audit sees it, reapplying erases it.
    std::fs::copy(dir.join("backup.sqlite"), store).unwrap();
    for stale in ["store.sqlite-wal", "store.sqlite-shm"] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    let audit = run(&["audit", "--config", config], 1);
    assert!(audit.contains(r#""clean":false"#), "{audit}");
    // Each is reported as the erasure's, not as a consent the meter had when it was recorded.
    let reasons: BTreeSet<String> = (audit.lines())
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter_map(|v| Some(v.get("reason")?.as_str()?.to_owned()))
        .collect();
    assert_eq!(reasons.len(), 1, "one erasure, one reason: {audit}");
    let reason = reasons.first().unwrap();
    assert!(
        reason.starts_with("erased on ") && reason.ends_with("(erasure ledger)"),
        "{audit}"
    );
    let reapplied = run(&["reapply-erasures", "--config", config], 0);
    assert!(
        reapplied.contains(&format!(r#""erased":{}"#, rows.len() - billing_rows)),
        "{reapplied}"
    );
    let again = run(&["reapply-erasures", "--config", config], 0);
    assert!(again.contains(r#""erased":0"#), "idempotent: {again}");
    audit_is_clean(config);
    assert_eq!(household.rows(), left);
}

/// A meter whose clock runs an hour fast has records dated after the erasure was asked for,
/// held when it was: they are erased too, and the audit finds nothing left.
#[test]
fn an_erasure_takes_the_records_a_fast_meter_clock_dated_ahead() {
    let household = Household::new("rights-erase-ahead");
    let now = Timestamp::now();
    let stream = p1guard_simulator::stream(
        meter(),
        now - SignedDuration::from_hours(2),
        now + SignedDuration::from_hours(1),
        Vec::new(),
    );
    std::fs::write(&household.capture, stream).unwrap();
    household.grant(PRINTED_ID, "quarter_hour", None);
    household.replay();
    let ahead = |rows: &[crate::Row]| rows.iter().filter(|r| r.time > now.as_second()).count();
    assert!(ahead(&household.rows()) > 0, "records dated ahead of now");
    let config = household.config();
    run(&["erase", "--config", config, "--meter", PRINTED_ID], 0);
    let left = household.rows();
    assert_eq!(ahead(&left), 0, "{left:#?}");
    assert!(granularities(&left).iter().all(|g| g == "billing"));
    audit_is_clean(config);
}

/// A broker busy with a running daemon's records, which it forwards as they come, never falls
/// quiet; the rights commands take what it retains and end all the same.
#[test]
fn audit_and_export_end_while_records_keep_coming_to_the_broker() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

    let household = Household::granted_and_replayed("rights-busy-broker", PRINTED_ID, None);
    let rows = household.rows().len();
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (stop, port) = (Arc::clone(&stop), household.broker.port);
        std::thread::spawn(move || {
            let options = rumqttc::MqttOptions::new("busy-daemon", "127.0.0.1", port);
            let (client, mut connection) = rumqttc::Client::new(options, 64);
            std::thread::spawn(move || for _ in connection.iter() {});
            while !stop.load(Relaxed) {
                let topic = "supplier/0123456789abcdef0123456789abcdef/live/electricity";
                let _ = client.publish(topic, rumqttc::QoS::AtMostOnce, false, b"{}".to_vec());
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = client.disconnect();
        })
    };
    let config = household.config();
    let within = |args: &[&str]| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_p1guard"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + PATIENCE;
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("p1guard {args:?} did not end within {PATIENCE:?} on a busy broker");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "p1guard {args:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    let audit = within(&["audit", "--config", config]);
    assert!(audit.contains(r#""clean":true"#), "{audit}");
    let export: Value = serde_json::from_str(&within(&[
        "export", "--config", config, "--meter", PRINTED_ID,
    ]))
    .unwrap();
    assert_eq!(export["records"].as_array().unwrap().len(), rows);
    stop.store(true, Relaxed);
    busy.join().unwrap();
}

/// `stream` as a meter that sends its id unencoded, as `id`, would send it: each telegram's
/// id line replaced and its CRC made anew.
fn sent_unencoded(stream: &[u8], id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut telegram = String::new();
    for line in std::str::from_utf8(stream).unwrap().split_inclusive('\n') {
        if line.starts_with('!') {
            telegram.push('!');
            let crc = p1guard_telegram::crc16(telegram.as_bytes());
            out.extend(format!("{telegram}{crc:04X}\r\n").bytes());
            telegram.clear();
        } else if line.starts_with("0-0:96.1.1(") {
            telegram += &format!("0-0:96.1.1({id})\r\n");
        } else {
            telegram += line;
        }
    }
    assert!(telegram.is_empty(), "the stream ends with a whole telegram");
    out
}

/// Some meters send their id unencoded, in digits (`09610` in a recorded DSMR 3 telegram),
/// which a meter printed so would send hex-encoded: the digits name both, and consent,
/// access and erasure reach the meter that sends them as they are.
#[test]
fn a_meter_that_sends_its_id_as_plain_digits_is_granted_exported_and_erased_by_them() {
    let household = Household::new("rights-digits");
    let stream = std::fs::read(&household.capture).unwrap();
    std::fs::write(&household.capture, sent_unencoded(&stream, "09610")).unwrap();
    let granted: Value =
        serde_json::from_str(&household.grant("09610", "quarter_hour", None)).unwrap();
    assert!(granted["alias"].is_string(), "both forms: {granted}");
    household.replay();
    let rows = household.rows();
    assert!(
        granularities(&rows).contains("quarter_hour"),
        "the grant reached the meter: {rows:#?}"
    );
    let config = household.config();
    let export: Value =
        serde_json::from_str(&run(&["export", "--config", config, "--meter", "09610"], 0)).unwrap();
    assert_eq!(export["records"].as_array().unwrap().len(), rows.len());
    let (erased, warning) = run_output(&["erase", "--config", config, "--meter", "09610"], 0);
    assert!(warning.is_empty(), "{warning}");
    assert!(
        !erased.contains("09610"),
        "the answer names no raw id: {erased}"
    );
    assert_eq!(
        granularities(&household.rows()),
        BTreeSet::from(["billing".into()])
    );
    audit_is_clean(config);
    // A ledger entry for each form, each with what was erased of it: the answer is their sum.
    let erased: Value = serde_json::from_str(&erased).unwrap();
    let export: Value =
        serde_json::from_str(&run(&["export", "--config", config, "--meter", "09610"], 0)).unwrap();
    let entries = export["erasures"].as_array().unwrap();
    let seqs: Vec<&Value> = entries.iter().map(|e| &e["seq"]).collect();
    assert_eq!(
        seqs,
        [&erased["ledger_entry"], &erased["alias_ledger_entry"]]
    );
    let of_store = |answer: &Value| answer[0]["erased"].as_u64().unwrap();
    let each: Vec<u64> = entries.iter().map(|e| of_store(&e["answer"])).collect();
    assert_eq!(
        each.iter().sum::<u64>(),
        of_store(&erased["stores"]),
        "{each:?}"
    );
    assert!(
        each.contains(&0),
        "the form no meter sends held nothing: {each:?}"
    );
}

#[test]
fn erasing_a_meter_nobody_knows_is_recorded_and_said_to_be_unknown() {
    let household = Household::granted_and_replayed("rights-unknown", PRINTED_ID, None);
    let config = household.config();
    let erase = |meter| run_output(&["erase", "--config", config, "--meter", meter], 0).1;
    // A typo in the printed id: not this household's meter.
    let typo = erase("E0054000012345679");
    assert!(
        typo.contains("no store held a record of this meter"),
        "{typo}"
    );
    assert!(
        !typo.contains("E005400001234567"),
        "no id in the message: {typo}"
    );
    assert_eq!(household.history("E0054000012345679").len(), 1);
    // The household's meter, printed in lower case, is the one it names.
    let known = erase(&PRINTED_ID.to_lowercase());
    assert!(known.is_empty(), "{known}");
    assert_eq!(
        granularities(&household.rows()),
        BTreeSet::from(["billing".into()])
    );
}

#[test]
fn a_withdrawal_purges_rows_and_retained_messages_and_the_registry_refuses_edits() {
    // Consent as the meter sends its id.
    let household = Household::granted_and_replayed("rights-withdraw", &sent_id(), None);
    let (broker, config) = (&household.broker, household.config());
    let before = household.rows();
    assert!(granularities(&before).contains("quarter_hour"));
    let backup = household.dir.join("backup.sqlite");
    std::fs::copy(&household.store, &backup).unwrap();
    let quarter_hours = |seen: &[Seen]| {
        seen.iter()
            .filter(|m| m.topic.contains("/quarter_hour/"))
            .count()
    };
    assert!(quarter_hours(&retained(broker, "before", "supplier/#")) >= 2);

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
        granularities(&household.rows()),
        BTreeSet::from(["billing".into(), "daily".into()])
    );
    let after = retained(broker, "after", "supplier/#");
    assert_eq!(quarter_hours(&after), 0, "{after:#?}");
    assert!(
        after.iter().any(|m| m.topic.contains("/daily/")),
        "{after:#?}"
    );
    audit_is_clean(config);
    let left = household.rows();

    // A backup from before the withdrawal comes back: the audit finds every record the
    // withdrawal purged, by the registry's lowered consent, and reapplying erases them again.
    std::fs::copy(&backup, &household.store).unwrap();
    for stale in ["store.sqlite-wal", "store.sqlite-shm"] {
        let _ = std::fs::remove_file(household.dir.join(stale));
    }
    let audit = run(&["audit", "--config", config], 1);
    let violations: Vec<Value> = (audit.lines())
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|v| v.get("reason").is_some())
        .collect();
    let purged = before.len() - left.len();
    assert_eq!(violations.len(), purged, "{audit}");
    for violation in &violations {
        assert_eq!(violation["granularity"], "quarter_hour", "{violation}");
        let reason = violation["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("purged when consent for purpose default was lowered on ")
                && reason.ends_with("(consent registry)"),
            "{reason}"
        );
    }
    let reapplied = run(&["reapply-erasures", "--config", config], 0);
    let last: Value = serde_json::from_str(reapplied.lines().last().unwrap()).unwrap();
    assert_eq!(last["lowered_consent"]["stores"][0]["store"], "store");
    assert_eq!(
        last["lowered_consent"]["stores"][0]["erased"], purged,
        "{reapplied}"
    );
    assert_eq!(household.rows(), left);
    audit_is_clean(config);

    // By hand, history cannot be rewritten.
    let registry = rusqlite::Connection::open(household.dir.join("consent.sqlite")).unwrap();
    for edit in [
        "UPDATE consent_events SET level = 'live'",
        "DELETE FROM consent_events",
    ] {
        let error = registry.execute(edit, []).unwrap_err().to_string();
        assert!(error.contains("append-only"), "{edit}: {error}");
    }
    let levels: Vec<String> = household
        .history(PRINTED_ID)
        .iter()
        .map(|event| event["level"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(levels, ["quarter_hour", "daily"]);
}

/// A withdrawal to `none` erases everything but the billing readings the tax authority needs,
/// and the audit, which finds what a withdrawal purged, leaves those alone too.
#[test]
fn a_withdrawal_to_none_keeps_fiscal_billing_and_the_audit_agrees() {
    let household = Household::granted_and_replayed("rights-withdraw-none", PRINTED_ID, None);
    let config = household.config();
    run(
        &[
            "consent", "withdraw", "--config", config, "--meter", PRINTED_ID, "--to", "none",
        ],
        0,
    );
    let left = household.rows();
    assert!(!left.is_empty(), "fiscal billing is kept");
    assert_eq!(granularities(&left), BTreeSet::from(["billing".into()]));
    audit_is_clean(config);
}

/// A withdrawal recorded with an effective time in the past reaches back: what arrives after
/// it dated before it (a replay, a late gateway, a fleet behind) is judged by the level left,
/// so nothing is stored that its purge would have erased, and the audit agrees.
#[test]
fn records_that_arrive_after_a_withdrawal_dated_before_it_are_not_stored_finer() {
    let household = Household::new("rights-withdrawal-reaches-back");
    let config = household.config();
    let granted = household.grant(PRINTED_ID, "quarter_hour", None);
    assert!(granted.contains(r#""recorded":1"#), "{granted}");
    let withdrawn_at = (household.from + SignedDuration::from_hours(2)).to_string();
    run(
        &[
            "consent",
            "withdraw",
            "--config",
            config,
            "--meter",
            PRINTED_ID,
            "--to",
            "daily",
            "--from",
            &withdrawn_at,
        ],
        0,
    );
    household.replay();
    let stored = household.rows();
    assert!(!stored.is_empty());
    assert!(
        !granularities(&stored).contains("quarter_hour"),
        "{stored:#?}"
    );
    audit_is_clean(config);
}

/// A withdrawal purges what its level no longer allows only up to where a later grant allows
/// it again: importing a withdrawal and the grant that ends it keeps the readings after the
/// grant, which the consent in force at their instant allows, and the audit agrees.
#[test]
fn a_withdrawal_ended_by_a_later_grant_purges_only_up_to_that_grant() {
    let household = Household::granted_and_replayed("rights-withdrawal-regrant", PRINTED_ID, None);
    let config = household.config();
    let withdrawn = household.from + SignedDuration::from_hours(1);
    let granted = household.from + SignedDuration::from_hours(2);
    let file = household.dir.join("events.csv");
    let rows = [
        format!("{PRINTED_ID},billing,{withdrawn},W-1"),
        format!("{PRINTED_ID},quarter_hour,{granted},G-1"),
    ];
    std::fs::write(&file, rows.join("\n") + "\n").unwrap();
    let imported = run(
        &[
            "consent",
            "import",
            "--config",
            config,
            file.to_str().unwrap(),
        ],
        0,
    );
    assert!(imported.contains(r#""withdrawals":1"#), "{imported}");
    let quarter_hours: Vec<i64> = (household.rows().into_iter())
        .filter(|row| row.granularity == "quarter_hour")
        .map(|row| row.time)
        .collect();
    assert!(
        !quarter_hours.is_empty(),
        "the readings after the grant are kept"
    );
    assert!(
        quarter_hours.iter().all(|&t| t >= granted.as_second()),
        "{quarter_hours:?}"
    );
    audit_is_clean(config);
}

/// A withdrawal corrected by an event for the same instant recorded after it (of two at one
/// instant, the one recorded last holds) was never in force, and purges nothing.
#[test]
fn a_withdrawal_corrected_at_its_own_instant_purges_nothing() {
    let household =
        Household::granted_and_replayed("rights-withdrawal-corrected", PRINTED_ID, None);
    let before = household.rows();
    let at = household.from + SignedDuration::from_hours(1);
    let file = household.dir.join("events.csv");
    let rows = [
        format!("{PRINTED_ID},billing,{at},W-1"),
        format!("{PRINTED_ID},quarter_hour,{at},W-1-corrected"),
    ];
    std::fs::write(&file, rows.join("\n") + "\n").unwrap();
    let config = household.config();
    run(
        &[
            "consent",
            "import",
            "--config",
            config,
            file.to_str().unwrap(),
        ],
        0,
    );
    assert_eq!(household.rows(), before);
    audit_is_clean(config);
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
    let household = Household::granted_and_replayed("rights-scheduled", PRINTED_ID, None);
    let (dir, broker, capture, config) = (
        &household.dir,
        &household.broker,
        &household.capture,
        household.config(),
    );
    assert!(granularities(&household.rows()).contains("quarter_hour"));

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
    let daemon = Daemon::start(dir, &daemon_config);
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
        granularities(&household.rows()).contains("quarter_hour"),
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
        granularities(&household.rows()),
        BTreeSet::from(["billing".into(), "daily".into()])
    );
    let left = retained(broker, "after", "supplier/#");
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
    let mut household = Household::granted_and_replayed("rights-erase-down", PRINTED_ID, None);
    let config = household.config.to_str().unwrap().to_owned();
    let config = config.as_str();
    let readings = |broker: &Mosquitto, client: &str| {
        retained(broker, client, "supplier/+/+/+")
            .into_iter()
            .filter(|m| !m.topic.contains("/billing/"))
            .count()
    };
    assert!(readings(&household.broker, "before") >= 4);

    household.broker.stop();
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

    household.broker.spawn();
    let reapplied = run(&["reapply-erasures", "--config", config], 0);
    assert!(reapplied.contains(r#""store":"broker""#), "{reapplied}");
    assert_eq!(readings(&household.broker, "after"), 0, "{reapplied}");
}

/// What waits in the outbox for a broker that is down is erased with the meter, although the
/// broker itself cannot be reached: once it is back, the next start publishes none of the
/// meter's readings but the billing ones the law keeps.
#[test]
fn an_erasure_with_the_broker_down_erases_what_waits_for_it_in_the_outbox() {
    let mut household = Household::new("rights-erase-waiting");
    let granted = household.grant(PRINTED_ID, "quarter_hour", None);
    assert!(granted.contains(r#""recorded":1"#), "{granted}");
    let mut config = std::fs::read_to_string(&household.config).unwrap();
    let outbox = household.dir.join("outbox.sqlite");
    config.push_str(&format!(
        "\n[daemon]\nshutdown_grace_secs = 1\noutbox = {outbox:?}\n"
    ));
    std::fs::write(&household.config, &config).unwrap();
    household.broker.stop();
    let first = Daemon::start(&household.dir, &config);
    first.wait_for_log("source finished", 1, PATIENCE);
    let first = first.terminate();
    assert!(
        first.stderr.contains("wait in the outbox"),
        "{}",
        first.stderr
    );

    let answer: Value = serde_json::from_str(&run(
        &[
            "erase",
            "--config",
            household.config(),
            "--meter",
            PRINTED_ID,
        ],
        1,
    ))
    .unwrap();
    let stores = answer["stores"].as_array().unwrap();
    let broker = stores.iter().find(|s| s["store"] == "broker").unwrap();
    let failed = broker["failed"].as_str().unwrap_or_default();
    assert!(
        failed.contains("waiting for it in the outbox were erased"),
        "{answer:#}"
    );

    household.broker.spawn();
    std::fs::write(&household.capture, b"").unwrap();
    let second = Daemon::start(&household.dir, &config).wait();
    assert!(second.status.success(), "{}", second.stderr);
    let published = retained(&household.broker, "after", "supplier/+/+/+");
    assert!(
        published.iter().all(|m| m.topic.contains("/billing/")),
        "{published:#?}"
    );
}

/// What a running daemon holds in memory for a broker that is down, retrying the write, is
/// erased with the meter too: once the broker is back, the daemon publishes none of the
/// meter's readings but the billing ones the law keeps.
#[test]
fn an_erasure_while_the_daemon_retries_a_broker_that_is_down_is_not_published_later() {
    let mut household = Household::new("rights-erase-held");
    let granted = household.grant(PRINTED_ID, "quarter_hour", None);
    assert!(granted.contains(r#""recorded":1"#), "{granted}");
    let mut config = std::fs::read_to_string(&household.config).unwrap();
    let outbox = household.dir.join("outbox.sqlite");
    config.push_str(&format!("\n[daemon]\noutbox = {outbox:?}\n"));
    std::fs::write(&household.config, &config).unwrap();
    household.broker.stop();
    let daemon = Daemon::start(&household.dir, &config);
    daemon.wait_for_log("source finished", 1, PATIENCE);
    daemon.wait_for_log("write failed, retrying", 1, PATIENCE);

    run(
        &[
            "erase",
            "--config",
            household.config(),
            "--meter",
            PRINTED_ID,
        ],
        1,
    );
    household.broker.spawn();
    let finished = daemon.wait();
    assert!(finished.status.success(), "{}", finished.stderr);
    let published = retained(&household.broker, "after", "supplier/+/+/+");
    assert!(
        published.iter().any(|m| m.topic.contains("/billing/")),
        "{published:#?}"
    );
    assert!(
        published.iter().all(|m| m.topic.contains("/billing/")),
        "{published:#?}"
    );
    assert!(
        finished
            .stderr
            .contains("held records were erased from the outbox meanwhile"),
        "{}",
        finished.stderr
    );
    // What the erasure took out of the outbox is not counted as waiting there.
    assert!(
        !finished
            .stderr
            .contains("wait in the outbox for the next start"),
        "{}",
        finished.stderr
    );
}

/// A bad argument exits 2 before anything is done; a registry that cannot be opened, a
/// failure at run time, exits 1, so that a supplier's script knows to retry.
#[test]
fn a_bad_argument_exits_2_and_a_failure_at_run_time_exits_1() {
    let household = Household::new("rights-exit-status");
    let config = household.config();
    let grant = |meter: &str, purpose: &str, status| {
        let args = [
            "consent",
            "grant",
            "--config",
            config,
            "--meter",
            meter,
            "--level",
            "live",
            "--purpose",
            purpose,
        ];
        run_output(&args, status).1
    };
    assert!(grant(" ", "default", 2).contains("is not a meter id"));
    assert!(grant(PRINTED_ID, "Not A Name", 2).contains("purpose"));

    let text = std::fs::read_to_string(&household.config).unwrap();
    let registry = format!("{}/consent.sqlite", household.dir.display());
    let unreachable = text.replace(&registry, "/proc/p1guard-nowhere/consent.sqlite");
    assert_ne!(unreachable, text);
    let elsewhere = household.dir.join("unreachable.toml");
    std::fs::write(&elsewhere, unreachable).unwrap();
    let config = elsewhere.to_str().unwrap();
    let (_, stderr) = run_output(&["audit", "--config", config], 1);
    assert!(stderr.contains("/proc/p1guard-nowhere"), "{stderr}");
    let args = [
        "consent", "grant", "--config", config, "--meter", PRINTED_ID, "--level", "live",
    ];
    run_output(&args, 1);
}

/// `consent import` takes ids both ways, a header, an optional purpose; a file with bad rows
/// records nothing and names each bad row by line and reason; the imported level is the
/// one a replay then stores at, and nothing finer.
#[test]
fn an_import_records_every_row_or_none_names_bad_rows_by_line_and_its_levels_hold() {
    let household = Household::new("rights-import");
    let config = household.config();
    let before_capture = household.before_capture();
    let neighbour = "E0054000099999991";
    let good = [
        "Meter,Level,Effective_From,Reference,Purpose".to_owned(), // as a spreadsheet saves it
        format!("{},daily,{before_capture},K-3001", sent_id().to_lowercase()),
        format!("{neighbour},quarter_hour,2026-01-01T00:00:00+01:00,K-3002,insight"),
    ];
    let bad = [
        "E0054000099999992,hourly,2026-01-01T00:00:00Z,K-3003".to_owned(),
        "E0054000099999993,daily,yesterday,K-3004".to_owned(),
        "E0054000099999994,daily,2026-01-01T00:00:00Z".to_owned(),
    ];
    let file = household.dir.join("consents.csv");
    let mut text = ([&good[..], &bad[..1]].concat().join("\n") + "\n").into_bytes();
    // Blank lines, as spreadsheets leave them, with Windows line ends: lines still count.
    text.extend(b"\r\n\r\n");
    text.extend((bad[1..].join("\r\n") + "\r\n").into_bytes());
    text.extend(b"E0054000099999995,daily,2026-01-01T00:00:00Z,K-\xe9\n"); // Latin-1
    std::fs::write(&file, text).unwrap();
    let file = file.to_str().unwrap();

    // Bad rows: nothing recorded, each named by its line (the header is line 1).
    let (stdout, stderr) = run_output(&["consent", "import", "--config", config, file], 1);
    assert_eq!(stdout, "");
    let expected = format!(
        "p1guard: {file}: 4 bad row(s), nothing recorded:\n  \
         line 4: unknown consent level \"hourly\"; expected one of none, billing, daily, \
         quarter_hour, live\n  \
         line 7: effective_from \"yesterday\": expected RFC 3339\n  \
         line 8: expected meter,level,effective_from,reference[,purpose], got 3 fields\n  \
         line 9: field 4 is not UTF-8\n"
    );
    assert_eq!(stderr, expected);
    assert_eq!(
        household.history(PRINTED_ID),
        Vec::<Value>::new(),
        "all or none"
    );

    // Only the good rows: recorded; the purpose no sink serves is said.
    let file = household.dir.join("good.csv");
    std::fs::write(&file, good.join("\n") + "\n").unwrap();
    let (stdout, stderr) = run_output(
        &[
            "consent",
            "import",
            "--config",
            config,
            file.to_str().unwrap(),
        ],
        0,
    );
    assert_eq!(stdout, "{\"recorded\":2}\n");
    assert_eq!(
        stderr,
        "p1guard: no sink serves purpose \"insight\": recorded, but it opens no destination\n"
    );
    let history = household.history(PRINTED_ID);
    assert_eq!(history.len(), 1, "{history:#?}");
    let event = &history[0];
    assert_eq!(event["meter"], sent_id());
    assert_eq!(event["level"], "daily");
    assert_eq!(event["purpose"], "default");
    assert_eq!(event["source"], "import");
    assert_eq!(event["reference"], "K-3001");
    assert_eq!(event["effective_from"], before_capture);
    let history = household.history(&sent(neighbour));
    assert_eq!(history.len(), 1, "{history:#?}");
    assert_eq!(
        (&history[0]["level"], &history[0]["purpose"]),
        (&"quarter_hour".into(), &"insight".into())
    );
    assert_eq!(history[0]["effective_from"], "2025-12-31T23:00:00Z");
    assert_eq!(history[0]["reference"], "K-3002");

    // The same file again, with a row twice: nothing recorded twice, and said.
    std::fs::write(&file, [&good[..], &good[1..2]].concat().join("\n") + "\n").unwrap();
    let file = file.to_str().unwrap();
    let (stdout, _) = run_output(&["consent", "import", "--config", config, file], 0);
    assert_eq!(stdout, "{\"already_recorded\":3,\"recorded\":0}\n");
    assert_eq!(household.history(PRINTED_ID).len(), 1);

    // The store takes quarter hours, the import allowed daily: daily it is.
    household.replay();
    assert_eq!(
        granularities(&household.rows()),
        BTreeSet::from(["billing".into(), "daily".into()])
    );
}

/// `audit` on a configuration that does not parse, or names a sink type that does not
/// exist, exits 2 and says what is wrong; the same configuration made right audits clean.
#[test]
fn audit_exits_2_naming_the_problem_when_the_configuration_is_invalid() {
    let dir = scratch("rights-audit-config");
    let capture = dir.join("capture.txt");
    std::fs::write(&capture, "").unwrap();
    let valid = format!(
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
        "#,
        dir = dir.display(),
    );
    let audit = |name: &str, text: &str, status: i32| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap().to_owned();
        let (stdout, stderr) = run_output(&["audit", "--config", &path], status);
        (path, stdout, stderr)
    };

    let (_, stdout, _) = audit("valid.toml", &valid, 0);
    assert!(stdout.contains(r#""clean":true"#), "{stdout}");

    let (path, stdout, stderr) = audit(
        "unknown-sink.toml",
        &valid.replace("\"sqlite\"", "\"kafka\""),
        2,
    );
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!(
            "p1guard: {path}: 1 problem in the configuration:\n  \
             - sinks[0] (line 12): unknown variant `kafka`, expected one of `sqlite`, `stdout`, `mqtt`, \
             `influxdb`\n"
        )
    );

    let (path, stdout, stderr) = audit(
        "unparsable.toml",
        &valid.replace("[[sinks]]", "[[sinks]"),
        2,
    );
    assert_eq!(stdout, "");
    assert!(
        stderr.starts_with(&format!(
            "p1guard: {path}: 1 problem in the configuration:\n"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("TOML syntax: unclosed array table"),
        "{stderr}"
    );
}

/// `erase --to none` (the contract has ended): the erasure keeps fiscal billing like any
/// erasure, and the event it records lowers every purpose to `none`, so that later
/// telegrams of the meter store nothing, where a neighbour with consent goes on.
#[test]
fn an_erasure_to_none_keeps_fiscal_billing_and_later_telegrams_store_nothing() {
    let household =
        Household::granted_and_replayed("rights-erase-none", PRINTED_ID, Some("K-2043"));
    let config = household.config();
    let rows = household.rows();
    let billing: Vec<_> = rows
        .iter()
        .filter(|r| r.granularity == "billing")
        .cloned()
        .collect();
    assert!(
        !billing.is_empty() && billing.len() < rows.len(),
        "{rows:#?}"
    );
    let neighbour = MeterSpec {
        equipment_id: "E0054000099999995".into(),
        gas_id: None,
        seed: 13,
        ..meter()
    };
    household.grant(&neighbour.equipment_id, "quarter_hour", None);

    let answer: Value = serde_json::from_str(&run(
        &[
            "erase",
            "--config",
            config,
            "--meter",
            PRINTED_ID,
            "--reference",
            "AVG-18",
            "--to",
            "none",
        ],
        0,
    ))
    .unwrap();
    let requested_at = answer["requested_at"].as_str().unwrap().to_owned();
    assert_eq!(
        answer["consent"],
        serde_json::json!({"level": "none", "purpose": "*", "from": requested_at})
    );
    let store = &answer["stores"][0];
    assert_eq!(store["store"], "store");
    assert_eq!(store["erased"], rows.len() - billing.len());
    assert_eq!(store["kept"], billing.len());
    assert!(
        store["kept_because"]
            .as_str()
            .unwrap()
            .contains("fiscal retention (7 years)"),
        "{answer:#}"
    );
    assert_eq!(household.rows(), billing);
    let history = household.history(PRINTED_ID);
    let last = history.last().unwrap();
    assert_eq!(last["level"], "none");
    assert_eq!(last["purpose"], "*");
    assert_eq!(last["source"], "cli");
    assert_eq!(last["reference"], "AVG-18");
    assert_eq!(last["effective_from"], requested_at);

    // Three hours of both meters, from just after the next full hour: the gas meter's
    // hourly capture in the first telegram is then dated after the erasure too.
    let erased_at: Timestamp = requested_at.parse().unwrap();
    let next_hour = Timestamp::from_second((erased_at.as_second() / 3600 + 1) * 3600).unwrap();
    let from = next_hour + SignedDuration::from_mins(1);
    let to = from + SignedDuration::from_hours(3);
    let mut later = p1guard_simulator::stream(meter(), from, to, Vec::new());
    later.extend(p1guard_simulator::stream(neighbour, from, to, Vec::new()));
    std::fs::write(&household.capture, later).unwrap();
    household.replay();
    let after = household.rows();
    let (erased_meter, others): (Vec<_>, Vec<_>) =
        after.into_iter().partition(|r| r.meter == billing[0].meter);
    assert_eq!(erased_meter, billing, "nothing new for the erased meter");
    assert!(
        others
            .iter()
            .filter(|r| r.granularity == "quarter_hour")
            .count()
            >= 11,
        "the neighbour's quarter hours: {others:#?}"
    );
    audit_is_clean(config);
}

/// `export --output` writes what standard output would get: the JSON object, or with
/// `--format csv` a header and a row per record.
#[test]
fn an_export_to_a_file_holds_what_standard_output_would_as_json_and_as_csv() {
    let household =
        Household::granted_and_replayed("rights-export-file", PRINTED_ID, Some("K-2044"));
    let config = household.config();
    let rows = household.rows();
    assert!(!rows.is_empty());
    let pseudonym = rows[0].meter.clone();
    let export = |format: &str, output: Option<&Path>| {
        let mut args = vec![
            "export", "--config", config, "--meter", PRINTED_ID, "--format", format,
        ];
        if let Some(output) = output {
            args.extend(["--output", output.to_str().unwrap()]);
        }
        run(&args, 0)
    };

    let json_file = household.dir.join("export.json");
    assert_eq!(export("json", Some(&json_file)), "", "nothing on stdout");
    let written = std::fs::read_to_string(&json_file).unwrap();
    assert_eq!(written, export("json", None));
    let json: Value = serde_json::from_str(&written).unwrap();
    assert_eq!(json["meter"], pseudonym);
    let records = json["records"].as_array().unwrap();
    assert_eq!(records.len(), rows.len());
    assert!(records.iter().all(|r| r["meter"] == pseudonym));
    assert_eq!(json["consent"][0]["reference"], "K-2044");

    let csv_file = household.dir.join("export.csv");
    assert_eq!(export("csv", Some(&csv_file)), "", "nothing on stdout");
    let written = std::fs::read_to_string(&csv_file).unwrap();
    assert_eq!(written, export("csv", None));
    let mut lines = written.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("meter,granularity,kind,time,quality,clock,energy_import_t1_kwh")
    );
    let body: Vec<&str> = lines.collect();
    assert_eq!(body.len(), rows.len(), "one row per record");
    assert!(body.iter().all(|l| l.starts_with(&format!("{pseudonym},"))));
    let csv_granularities: BTreeSet<String> = body
        .iter()
        .map(|l| l.split(',').nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(csv_granularities, granularities(&rows));
}
