//! A supplier's fleet: 1,000 simulated meters at mixed consent levels publish over MQTT,
//! and every series stored or published is exactly what privacy.md allows for its meter.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use p1guard_conduct::IdentityKey;
use p1guard_simulator::{MeterSpec, Simulator, Style};
use serde_json::Value;

use crate::daemon::Daemon;
use crate::mosquitto::{Mosquitto, Watcher, free_port, publish_all};
use crate::{scratch, sqlite_rows};

const METERS: usize = 1000;
/// The identity key, so the test can name each meter's pseudonym.
const KEY: [u8; 32] = [7; 32];
/// Consent of meter `i` is `LEVELS[i % 5]`; `billing` is the configured default and so
/// is not listed.
const LEVELS: [&str; 5] = ["none", "billing", "daily", "quarter_hour", "live"];
const GRANULARITIES: [&str; 4] = ["billing", "daily", "quarter_hour", "live"];

fn equipment_id(i: usize) -> String {
    format!("E{i:016}")
}

/// The id as the meter sends it, hex-encoded; the consent registry's key.
fn sent(id: &str) -> String {
    id.bytes().map(|b| format!("{b:02X}")).collect()
}

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

/// A (granularity, kind, time) series point.
type Point = (String, String, i64);

/// What privacy.md allows at `level` for this capture, up to `ceiling`: from 22:20Z to
/// 23:40Z on 28 February 2026, across local midnight into 1 March, a billing day, with a
/// DSMR 4 telegram every 2 minutes (gas captured hourly).
fn allowed(level: &str, ceiling: &str) -> BTreeSet<Point> {
    let rank = |g: &str| GRANULARITIES.iter().position(|x| *x == g);
    let finest = rank(level).map(|l| l.min(rank(ceiling).unwrap()));
    let midnight = at("2026-02-28T23:00:00Z").as_second();
    let mut points = BTreeSet::new();
    let mut add = |g: &str, kind: &str, time: i64| {
        if finest.is_some_and(|f| rank(g).unwrap() <= f) {
            points.insert((g.to_owned(), kind.to_owned(), time));
        }
    };
    for kind in ["electricity", "gas"] {
        add("billing", kind, midnight);
        add("daily", kind, midnight);
    }
    // Quarter hours from the first telegram's to the last's; gas at its full-hour
    // captures (22:00Z is the capture the first telegram carries).
    let quarter_hours = (at("2026-02-28T22:30:00Z").as_second()
        ..=at("2026-02-28T23:30:00Z").as_second())
        .step_by(900);
    for time in quarter_hours {
        add("quarter_hour", "electricity", time);
    }
    for time in [midnight - 3600, midnight] {
        add("quarter_hour", "gas", time);
    }
    points
}

#[test]
fn a_thousand_meters_at_mixed_consent_store_only_what_each_allows() {
    let dir = scratch("supplier");
    let broker = Mosquitto::start(&dir);
    let watcher = Watcher::start(broker.port, "insight-app", &["insight/#"]);
    let key_file = dir.join("identity.key");
    std::fs::write(&key_file, KEY.map(|b| format!("{b:02x}")).concat()).unwrap();
    let store = dir.join("supplier.sqlite");
    let metrics = free_port();

    let meters: String = (0..METERS)
        .filter(|i| LEVELS[i % 5] != "billing")
        .map(|i| format!("\"{}\" = \"{}\"\n", sent(&equipment_id(i)), LEVELS[i % 5]))
        .collect();
    let config = format!(
        r#"
        [identity]
        key_file = {key_file:?}

        [metrics]
        listen = "127.0.0.1:{metrics}"

        [consent]
        default = "billing"
        [consent.meters]
        {meters}

        [[sources]]
        name = "fleet"
        type = "mqtt"
        url = "{url}"
        topic = "p1/+/telegram"

        # The supplier's own store.
        [[sinks]]
        name = "store"
        type = "sqlite"
        path = {store:?}
        max_granularity = "quarter_hour"
        retention_days = {{ quarter_hour = 36500, daily = 36500, billing = 36500 }}

        # An energy-insight app: days at most.
        [[sinks]]
        name = "insight"
        type = "mqtt"
        url = "{url}"
        prefix = "insight"
        max_granularity = "daily"
        "#,
        url = broker.url(),
    );
    let daemon = Daemon::start(&dir, &config);
    daemon.wait_for_log("subscribed to p1/+/telegram", 1, Duration::from_secs(30));

    let mut messages = Vec::new();
    for i in 0..METERS {
        let spec = MeterSpec {
            style: Style::Dsmr4,
            equipment_id: equipment_id(i),
            gas_id: Some(format!("G{i:016}")),
            seed: i as u64,
        };
        let simulator = Simulator::new(
            spec,
            at("2026-02-28T22:20:00Z"),
            at("2026-02-28T23:40:01Z"),
            Vec::new(),
        );
        messages.extend(
            simulator
                .step_by(12)
                .map(|(_, telegram)| (format!("p1/{i}/telegram"), telegram)),
        );
    }
    let total = messages.len();
    assert_eq!(total, METERS * 41);
    publish_all(broker.port, "meters", messages);

    // Wait until every telegram went through, then stop.
    let ok = format!(r#"p1guard_telegrams_total{{source="fleet",result="ok"}} {total}"#);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !crate::run::http_get(([127, 0, 0, 1], metrics).into(), "/metrics").contains(&ok) {
        assert!(
            Instant::now() < deadline,
            "not all {total} telegrams were taken"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let finished = daemon.terminate();
    assert!(finished.status.success(), "{}", finished.stderr);

    // Each meter's stored series, by pseudonym.
    let key = IdentityKey::from_bytes(KEY);
    let pseudonym = |i: usize| key.pseudonym(sent(&equipment_id(i)).as_bytes()).to_string();
    let mut stored: BTreeMap<String, BTreeSet<Point>> = BTreeMap::new();
    for row in sqlite_rows(&store) {
        stored
            .entry(row.meter)
            .or_default()
            .insert((row.granularity, row.kind, row.time));
    }
    let insight = watcher.wait_until(Duration::from_secs(30), |seen| {
        seen.iter().filter(|s| s.topic != "insight/status").count()
            >= (0..METERS)
                .map(|i| allowed(LEVELS[i % 5], "daily").len())
                .sum()
    });
    let mut published: BTreeMap<String, BTreeSet<Point>> = BTreeMap::new();
    for message in insight.iter().filter(|s| s.topic != "insight/status") {
        let record: Value = serde_json::from_str(&message.payload).unwrap();
        let time = at(record["time"].as_str().unwrap()).as_second();
        let text = |key: &str| record[key].as_str().unwrap().to_owned();
        published.entry(text("meter")).or_default().insert((
            text("granularity"),
            text("kind"),
            time,
        ));
    }

    for i in 0..METERS {
        let level = LEVELS[i % 5];
        let name = pseudonym(i);
        let store_has = stored.remove(&name).unwrap_or_default();
        assert_eq!(
            store_has,
            allowed(level, "quarter_hour"),
            "meter {i} at {level} in the store"
        );
        let app_has = published.remove(&name).unwrap_or_default();
        assert_eq!(
            app_has,
            allowed(level, "daily"),
            "meter {i} at {level} in the app"
        );
    }
    assert!(
        stored.is_empty(),
        "rows of unknown meters: {:?}",
        stored.keys()
    );
    assert!(
        published.is_empty(),
        "records of unknown meters: {:?}",
        published.keys()
    );
}
