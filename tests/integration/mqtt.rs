//! MQTT end to end against a real mosquitto: a fleet's telegrams in, records out, Home
//! Assistant discovery, dsmr-reader's topics, and a broker restart that loses nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use p1guard_simulator::{MeterSpec, Style};
use serde_json::{Value, json};

use crate::daemon::{Daemon, count_after};
use crate::mosquitto::{Mosquitto, Seen, Watcher, publish_all, retained};
use crate::scratch;

const PATIENCE: Duration = Duration::from_secs(30);

/// A DSMR 5 meter with a gas meter, numbered `n`.
fn meter(n: u64) -> MeterSpec {
    MeterSpec {
        style: Style::Dsmr5,
        equipment_id: format!("E00530000123456{n:02}"),
        gas_id: Some(format!("G00530000123456{n:02}")),
        seed: n,
    }
}

/// `count` telegrams of meter `n`, one second apart from `from`.
fn telegrams(n: u64, from: &str, count: usize) -> Vec<Vec<u8>> {
    crate::telegrams(meter(n), from, count)
}

/// Each telegram as one message on `p1/<n>/telegram`.
fn messages(n: u64, telegrams: Vec<Vec<u8>>) -> Vec<(String, Vec<u8>)> {
    telegrams
        .into_iter()
        .map(|t| (format!("p1/{n}/telegram"), t))
        .collect()
}

/// The equipment id as the meter sends it: hex-encoded ASCII.
fn sent_id(id: &str) -> String {
    id.bytes().map(|b| format!("{b:02X}")).collect()
}

/// An MQTT source named `fleet` on `p1/+/telegram`, with `extra` settings.
pub fn mqtt_source(broker: &Mosquitto, extra: &str) -> String {
    format!(
        r#"
        [[sources]]
        name = "fleet"
        type = "mqtt"
        url = "{}"
        topic = "p1/+/telegram"
        {extra}
        "#,
        broker.url()
    )
}

#[test]
fn a_message_bigger_than_any_telegram_is_taken_once_and_the_fleet_goes_on() {
    let dir = scratch("mqtt-poison");
    let broker = Mosquitto::start(&dir);
    let config = format!(
        r#"
        [consent]
        default = "live"
        {source}
        [[sinks]]
        type = "stdout"
        max_granularity = "live"
        "#,
        source = mqtt_source(&broker, ""),
    );
    let daemon = Daemon::start(&dir, &config);
    daemon.wait_for_log("subscribed to p1/+/telegram", 1, PATIENCE);
    // 600 KiB of line noise with telegram marks in it, then a meter's telegrams.
    let noise: Vec<u8> = (0..600 * 1024u32)
        .map(|i| match i % 997 {
            0 => b'/',
            500 => b'!',
            _ => (i.wrapping_mul(2_654_435_761) >> 24) as u8,
        })
        .collect();
    let mut sent = vec![("p1/9/telegram".to_owned(), noise)];
    sent.extend(messages(1, telegrams(1, "2026-06-01T10:00:00Z", 10)));
    publish_all(broker.port, "meters", sent);
    daemon.wait_for_output(r#""granularity":"live","kind":"electricity""#, 10, PATIENCE);
    let finished = daemon.terminate();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(
        finished.stderr.matches("connected").count(),
        1,
        "taken once, not redelivered at every reconnect:\n{}",
        finished.stderr
    );
    assert_eq!(count_after(&finished.stderr, "source fleet:", "ok"), 10);
}

#[test]
fn a_fleet_over_mqtt_survives_a_broker_restart_without_losing_a_record() {
    let dir = scratch("mqtt-restart");
    let mut broker = Mosquitto::start(&dir);
    let watcher = Watcher::start(broker.port, "watcher", &["records/#"]);
    let config = format!(
        r#"
        [consent]
        default = "live"
        {source}
        [[sinks]]
        name = "broker"
        type = "mqtt"
        url = "{url}"
        prefix = "records"
        max_granularity = "live"

        [[sinks]]
        type = "stdout"
        max_granularity = "live"
        "#,
        // mosquitto 2.0.11 forgets a shared subscription's members when it restarts, so
        // this source subscribes on its own (the sharing test covers `$share`).
        source = mqtt_source(&broker, ""),
        url = broker.url(),
    );
    let daemon = Daemon::start(&dir, &config);
    daemon.wait_for_log("subscribed to p1/+/telegram", 1, PATIENCE);

    // Before the restart: two meters, one message holding two telegrams back to back, and
    // a telegram cut in half (counted, skipped, the rest still read).
    let mut one = telegrams(1, "2026-06-01T10:00:00Z", 20);
    let later = one.split_off(10);
    let mut first = messages(1, one);
    let mut two = telegrams(2, "2026-06-01T10:00:00Z", 12);
    let cut = two.pop().unwrap();
    let pair = two.split_off(8).concat();
    first.extend(messages(2, two));
    first.push(("p1/2/telegram".into(), pair));
    first.push(("p1/2/telegram".into(), cut[..cut.len() / 2].to_vec()));
    publish_all(broker.port, "meters", first);
    daemon.wait_for_output(r#""granularity":"live","kind":"electricity""#, 21, PATIENCE);

    broker.restart();
    // Back online at once, not only with the next record.
    watcher.wait_until(PATIENCE, |seen| {
        let online = seen
            .iter()
            .filter(|s| s.topic == "records/status" && s.payload == "online");
        online.count() >= 2
    });
    // After it: more of meter 1, which the source finds waiting in its persistent session
    // even if it has not reconnected yet.
    publish_all(broker.port, "meters", messages(1, later));
    daemon.wait_for_output(r#""granularity":"live","kind":"electricity""#, 31, PATIENCE);
    let finished = daemon.terminate();
    assert!(finished.status.success(), "{}", finished.stderr);
    // A message taken just before the restart may come again (the broker had not yet heard
    // it was taken): at least once, never lost.
    assert!(
        count_after(&finished.stderr, "source fleet:", "ok") >= 31,
        "{}",
        finished.stderr
    );
    assert!(count_after(&finished.stderr, "source fleet:", "parse_error") >= 1);

    // Every record on stdout reached the broker's subscriber, in spite of the restart: the
    // same JSON, on <prefix>/<meter>/<granularity>/<kind>. (A write cut by the restart is
    // published again whole, so a record may arrive twice; none may be missing.)
    let records: BTreeSet<String> = finished
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        records.len(),
        finished
            .stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .count()
    );
    let published = |seen: &[Seen]| -> BTreeSet<String> {
        seen.iter()
            .filter(|s| s.topic != "records/status")
            .map(|s| s.payload.clone())
            .collect()
    };
    let seen = watcher.wait_until(PATIENCE, |seen| published(seen).is_superset(&records));
    assert_eq!(
        published(&seen),
        records,
        "nothing but the records was published"
    );
    for message in seen.iter().filter(|s| s.topic != "records/status") {
        let record: Value = serde_json::from_str(&message.payload).unwrap();
        let expected = format!(
            "records/{}/{}/{}",
            record["meter"].as_str().unwrap(),
            record["granularity"].as_str().unwrap(),
            record["kind"].as_str().unwrap()
        );
        assert_eq!(message.topic, expected);
    }
    // A pseudonymous sink: no meter id in any topic or payload.
    for id in [
        "E0053000012345601",
        "E0053000012345602",
        "G0053000012345601",
    ] {
        let id = sent_id(id);
        assert!(
            seen.iter()
                .all(|s| !s.topic.contains(&id) && !s.payload.contains(&id))
        );
    }
    // The sink said goodbye: availability is offline, as its Last Will would have said.
    let status: Vec<_> = seen
        .iter()
        .filter(|s| s.topic == "records/status")
        .collect();
    assert_eq!(status.first().map(|s| s.payload.as_str()), Some("online"));
    let watcher_latest = watcher.wait_until(PATIENCE, |seen| {
        seen.iter()
            .rev()
            .find(|s| s.topic == "records/status")
            .is_some_and(|s| s.payload == "offline")
    });
    assert!(!watcher_latest.is_empty());
}

/// Home Assistant's documented MQTT sensor schema, as far as p1guard uses it: the keys a
/// sensor config may have, and for each device class the state classes and units it
/// accepts (developers.home-assistant.io, "Sensor entity" and "MQTT sensor").
mod home_assistant {
    pub const SENSOR_KEYS: &[&str] = &[
        "name",
        "unique_id",
        "state_topic",
        "value_template",
        "expire_after",
        "availability_topic",
        "payload_available",
        "payload_not_available",
        "device",
        "origin",
        "device_class",
        "state_class",
        "unit_of_measurement",
    ];
    pub const STATE_CLASSES: &[&str] = &["measurement", "total", "total_increasing"];

    /// The units a device class accepts, and whether it may be a `measurement`.
    pub fn device_class(class: &str) -> Option<(&'static [&'static str], bool)> {
        Some(match class {
            "energy" => (
                &[
                    "J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal",
                    "Mcal", "Gcal",
                ],
                false,
            ),
            "gas" => (&["L", "m³", "ft³", "CCF"], false),
            "water" => (&["L", "gal", "m³", "ft³", "CCF"], false),
            "power" => (&["mW", "W", "kW", "MW", "GW", "TW", "BTU/h"], true),
            "voltage" => (&["µV", "mV", "V", "kV", "MV"], true),
            "current" => (&["mA", "A"], true),
            _ => return None,
        })
    }
}

#[test]
fn home_assistant_discovery_and_dsmr_reader_topics_describe_what_is_published() {
    let dir = scratch("mqtt-discovery");
    let broker = Mosquitto::start(&dir);
    let watcher = Watcher::start(
        broker.port,
        "watcher",
        &["homeassistant/#", "home/#", "dsmr/#"],
    );
    // One household's meter on a TCP dongle: dsmr-reader's topics have room for one meter.
    let (dongle, server) = crate::dongle(telegrams(1, &crate::now(), 3));
    let config = format!(
        r#"
        [consent]
        default = "live"

        [[sources]]
        name = "dongle"
        type = "tcp"
        address = "{dongle}"

        [[sinks]]
        name = "home-assistant"
        type = "mqtt"
        url = "{url}"
        prefix = "home"
        max_granularity = "live"
        identity = "raw"

        [[sinks]]
        name = "dsmr"
        type = "mqtt"
        url = "{url}"
        layout = "dsmr_reader"
        prefix = "dsmr"
        max_granularity = "live"
        identity = "raw"
        discovery = false

        [[sinks]]
        type = "stdout"
        max_granularity = "live"
        identity = "raw"
        "#,
        url = broker.url(),
    );
    let daemon = Daemon::start(&dir, &config);
    let _connection = server.join().unwrap();
    daemon.wait_for_output(r#""granularity":"live""#, 3, PATIENCE);
    let id = sent_id("E0053000012345601");
    let state = format!("home/{id}/live/electricity");
    watcher.wait_until(PATIENCE, |seen| {
        seen.iter().filter(|s| s.topic == state).count() == 3
            && seen
                .iter()
                .filter(|s| s.topic == "dsmr/reading/timestamp")
                .count()
                == 3
    });
    let latest = watcher.latest();

    // The last live record of each kind, as stdout shows it.
    let stdout = daemon.stdout();
    let mut live: BTreeMap<String, Value> = BTreeMap::new();
    for line in stdout
        .lines()
        .filter(|l| l.contains(r#""granularity":"live""#))
    {
        let record: Value = serde_json::from_str(line).unwrap();
        live.insert(record["kind"].as_str().unwrap().to_owned(), record);
    }
    assert!(live.contains_key("electricity"), "{stdout}");

    // One entity per value of each live record, under one device, each config valid.
    let configs: BTreeMap<&str, Value> = latest
        .iter()
        .filter(|(topic, _)| topic.starts_with("homeassistant/"))
        .map(|(topic, payload)| (topic.as_str(), serde_json::from_str(payload).unwrap()))
        .collect();
    let mut expected = BTreeSet::new();
    for (kind, record) in &live {
        for field in record["values"].as_object().unwrap().keys() {
            expected.insert(format!(
                "homeassistant/sensor/p1guard_{id}/{kind}_{field}/config"
            ));
        }
    }
    assert_eq!(
        configs
            .keys()
            .map(|t| t.to_string())
            .collect::<BTreeSet<_>>(),
        expected
    );
    let mut unique_ids = BTreeSet::new();
    for (topic, config) in &configs {
        let config = config.as_object().unwrap();
        for key in config.keys() {
            assert!(
                home_assistant::SENSOR_KEYS.contains(&key.as_str()),
                "{topic}: {key}"
            );
        }
        let text = |key: &str| config.get(key).and_then(Value::as_str);
        assert!(
            unique_ids.insert(text("unique_id").unwrap().to_owned()),
            "{topic}"
        );
        // The electricity meter is one device; each M-Bus meter its own, behind it, whose
        // one sensor takes the device's name.
        let electricity = format!("p1guard_{id}");
        if topic.contains("/electricity_") {
            assert!(text("name").is_some_and(|n| !n.is_empty()), "{topic}");
            assert_eq!(config["device"]["identifiers"], json!([electricity]));
            assert_eq!(
                config["device"]["name"],
                "Electricity meter E0053000012345601"
            );
        } else {
            assert_eq!(
                config["device"]["identifiers"],
                json!([format!("{electricity}_gas")])
            );
            assert_eq!(config["device"]["via_device"], json!(electricity));
            assert_eq!(config["name"], Value::Null, "{topic}");
        }
        assert_eq!(text("availability_topic"), Some("home/status"));
        assert_eq!(text("payload_available"), Some("online"));
        assert_eq!(text("payload_not_available"), Some("offline"));
        if let Some(class) = text("state_class") {
            assert!(
                home_assistant::STATE_CLASSES.contains(&class),
                "{topic}: {class}"
            );
        }
        if let Some(class) = text("device_class") {
            let (units, measurement) = home_assistant::device_class(class)
                .unwrap_or_else(|| panic!("{topic}: device_class {class}"));
            let unit = text("unit_of_measurement").unwrap_or_else(|| panic!("{topic}: no unit"));
            assert!(units.contains(&unit), "{topic}: {unit} for {class}");
            let state_class = text("state_class").unwrap();
            assert!(measurement || state_class != "measurement", "{topic}");
            if ["energy", "gas", "water"].contains(&class) {
                assert_eq!(
                    state_class, "total_increasing",
                    "{topic}: the energy dashboard"
                );
            }
        }
        // The state topic holds the record, and the template names one of its values.
        let state_topic = text("state_topic").unwrap();
        let state: Value = serde_json::from_str(&latest[state_topic]).unwrap();
        let template = text("value_template").unwrap();
        let field = template
            .strip_prefix("{{ value_json['values']['")
            .and_then(|t| t.split_once("']"))
            .map(|(field, _)| field)
            .unwrap_or_else(|| panic!("{topic}: {template}"));
        assert!(
            state["values"][field].is_number(),
            "{topic}: {field} in {state}"
        );
        assert!(topic.ends_with(&format!("_{field}/config")));
    }
    let energy = &configs[format!(
        "homeassistant/sensor/p1guard_{id}/electricity_energy_import_t1_kwh/config"
    )
    .as_str()];
    assert_eq!(energy["device_class"], "energy");
    assert_eq!(energy["unit_of_measurement"], "kWh");
    let power = &configs
        [format!("homeassistant/sensor/p1guard_{id}/electricity_power_import_w/config").as_str()];
    assert_eq!(
        (
            power["device_class"].as_str(),
            power["state_class"].as_str()
        ),
        (Some("power"), Some("measurement"))
    );
    assert_eq!(latest["home/status"], "online");

    // dsmr-reader's topics carry the same last reading, in its units (kW for power).
    let electricity = &live["electricity"]["values"];
    let reading =
        |field: &str| -> f64 { latest[&format!("dsmr/reading/{field}")].parse().unwrap() };
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert!(close(
        reading("electricity_delivered_1"),
        electricity["energy_import_t1_kwh"].as_f64().unwrap()
    ));
    assert!(close(
        reading("electricity_returned_2"),
        electricity["energy_export_t2_kwh"].as_f64().unwrap()
    ));
    assert!(close(
        reading("electricity_currently_delivered") * 1000.0,
        electricity["power_import_w"].as_f64().unwrap()
    ));
    assert!(close(
        reading("electricity_currently_returned") * 1000.0,
        electricity["power_export_w"].as_f64().unwrap()
    ));
    assert!(close(
        reading("phase_voltage_l1"),
        electricity["voltage_l1_v"].as_f64().unwrap()
    ));
    assert!(close(
        reading("phase_power_current_l2"),
        electricity["current_l2_a"].as_f64().unwrap()
    ));
    let json: Value = serde_json::from_str(&latest["dsmr/json"]).unwrap();
    assert_eq!(json["timestamp"], live["electricity"]["time"]);
    assert!(close(
        json["phase_currently_delivered_l1"].as_f64().unwrap() * 1000.0,
        electricity["power_import_l1_w"].as_f64().unwrap()
    ));
    if let Some(gas) = live.get("gas") {
        assert!(close(
            reading("extra_device_delivered"),
            gas["values"]["volume_m3"].as_f64().unwrap()
        ));
    }

    // Home Assistant restarts: every config is published again, without waiting for data.
    let announced = |seen: &[Seen]| {
        seen.iter()
            .filter(|s| s.topic.starts_with("homeassistant/sensor/"))
            .count()
    };
    let before = announced(&watcher.seen());
    publish_all(
        broker.port,
        "home-assistant",
        vec![("homeassistant/status".into(), b"online".to_vec())],
    );
    let seen = watcher.wait_until(PATIENCE, |seen| announced(seen) >= before + configs.len());
    assert_eq!(announced(&seen), before + configs.len());

    let finished = daemon.terminate();
    assert!(finished.status.success(), "{}", finished.stderr);
    watcher.wait_until(PATIENCE, |seen| {
        seen.iter()
            .rev()
            .find(|s| s.topic == "home/status")
            .is_some_and(|s| s.payload == "offline")
    });
}

#[test]
fn workers_in_a_shared_group_split_a_fleet_between_them() {
    let dir = scratch("mqtt-shared");
    let broker = Mosquitto::start(&dir);
    // One key for both, so that a telegram taken twice would be the same record twice.
    let key = dir.join("identity.key");
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
    let worker = |name: &str| {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            r#"
            [identity]
            key_file = {key:?}

            [consent]
            default = "live"
            {source}
            [[sinks]]
            type = "stdout"
            max_granularity = "live"
            "#,
            source = mqtt_source(
                &broker,
                &format!("shared_group = \"workers\"\nclient_id = \"{name}\"")
            ),
        );
        let daemon = Daemon::start(&dir, &config);
        daemon.wait_for_log("subscribed to $share/workers/p1/+/telegram", 1, PATIENCE);
        daemon
    };
    let (a, b) = (worker("worker-a"), worker("worker-b"));
    let fleet: Vec<_> = (1..=10)
        .flat_map(|n| messages(n, telegrams(n, "2026-06-01T10:00:00Z", 20)))
        .collect();
    publish_all(broker.port, "meters", fleet);

    let live = r#""granularity":"live","kind":"electricity""#;
    let taken = || a.stdout().matches(live).count() + b.stdout().matches(live).count();
    let deadline = std::time::Instant::now() + PATIENCE;
    while taken() < 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the workers took {} of 200",
            taken()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (a, b) = (a.terminate(), b.terminate());
    assert!(
        a.status.success() && b.status.success(),
        "{}\n{}",
        a.stderr,
        b.stderr
    );
    // Each telegram is one (meter, time): the union must be the whole fleet, once.
    let telegrams = |stdout: &str| -> Vec<(String, String)> {
        let live = stdout.lines().filter(|l| l.contains(live));
        live.map(|line| {
            let record: Value = serde_json::from_str(line).unwrap();
            let field = |name: &str| record[name].as_str().unwrap().to_owned();
            (field("meter"), field("time"))
        })
        .collect()
    };
    let (from_a, from_b) = (telegrams(&a.stdout), telegrams(&b.stdout));
    assert!(
        !from_a.is_empty() && !from_b.is_empty(),
        "both workers took a share"
    );
    let all: BTreeSet<_> = from_a.iter().chain(&from_b).collect();
    assert_eq!(
        all.len(),
        from_a.len() + from_b.len(),
        "no telegram went to both"
    );
    let meters: BTreeSet<_> = all.iter().map(|(meter, _)| meter).collect();
    assert_eq!(
        (meters.len(), all.len()),
        (10, 200),
        "every telegram of every meter"
    );
}

/// A CA, and a certificate for 127.0.0.1 it signed, as PEM files in `dir`: (ca, cert, key).
fn certificates(dir: &std::path::Path) -> [std::path::PathBuf; 3] {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let files = ["ca.pem", "server.pem", "server.key"].map(|name| dir.join(name));
    std::fs::write(&files[0], ca.pem()).unwrap();
    std::fs::write(&files[1], server.pem()).unwrap();
    std::fs::write(&files[2], key.serialize_pem()).unwrap();
    for file in &files {
        // mosquitto reads them after dropping root.
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
    }
    files
}

#[test]
fn tls_and_a_password_protect_both_ways_and_a_wrong_password_is_said_plainly() {
    let dir = scratch("mqtt-tls");
    let [ca, cert, key] = certificates(&dir);
    let passwords = dir.join("passwords");
    std::fs::write(&passwords, "p1guard:s3cret\n").unwrap();
    std::fs::set_permissions(
        &passwords,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let hashed =
        std::process::Command::new(crate::daemon::require("mosquitto_passwd", "mosquitto"))
            .arg("-U")
            .arg(&passwords)
            .status()
            .unwrap();
    assert!(hashed.success());
    let broker = Mosquitto::start_with(
        &dir,
        Some(&format!(
            "allow_anonymous false\npassword_file {}\ncafile {}\ncertfile {}\nkeyfile {}\n",
            passwords.display(),
            ca.display(),
            cert.display(),
            key.display()
        )),
    );
    let watcher = Watcher::start(broker.port, "watcher", &["records/#"]);
    let config = |password: &str| {
        format!(
            r#"
            [consent]
            default = "live"

            [[sources]]
            name = "fleet"
            type = "mqtt"
            url = "mqtts://127.0.0.1:{port}"
            topic = "p1/+/telegram"
            ca_file = {ca:?}
            username = "p1guard"
            password = {{ env = "BROKER_PASSWORD" }}

            [[sinks]]
            type = "mqtt"
            url = "mqtts://127.0.0.1:{port}"
            prefix = "records"
            ca_file = {ca:?}
            username = "p1guard"
            password = {{ env = "BROKER_PASSWORD" }}
            max_granularity = "live"

            [[sinks]]
            type = "stdout"
            max_granularity = "live"
            "#,
            port = broker.secure_port,
        )
        .replace("BROKER_PASSWORD", password)
    };

    // A wrong password: the log says the broker refused, and why.
    let wrong = Daemon::start_with_env(&dir, &config("WRONG"), &[("WRONG", "guess")]);
    wrong.wait_for_log("refused by the broker", 2, PATIENCE);
    assert!(wrong.terminate().status.success());

    // The right one: telegrams in and records out, both over TLS.
    let daemon = Daemon::start_with_env(&dir, &config("RIGHT"), &[("RIGHT", "s3cret")]);
    daemon.wait_for_log("subscribed to p1/+/telegram", 1, PATIENCE);
    publish_all(
        broker.port,
        "meters",
        messages(1, telegrams(1, "2026-06-01T10:00:00Z", 5)),
    );
    daemon.wait_for_output(r#""granularity":"live","kind":"electricity""#, 5, PATIENCE);
    let finished = daemon.terminate();
    assert!(finished.status.success(), "{}", finished.stderr);
    let records: BTreeSet<String> = finished
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(str::to_owned)
        .collect();
    let seen = watcher.wait_until(PATIENCE, |seen| {
        records.iter().all(|r| seen.iter().any(|s| &s.payload == r))
    });
    assert!(
        seen.iter()
            .any(|s| s.topic == "records/status" && s.payload == "offline")
    );
}

/// The sink says `online` as soon as it is connected, not with the first record: Home
/// Assistant shows the entities available while the meter has yet to send.
#[test]
fn a_sink_says_online_before_the_first_telegram() {
    let dir = scratch("mqtt-online-at-once");
    let broker = Mosquitto::start(&dir);
    let (dongle, server) = crate::dongle(Vec::new());
    let config = format!(
        r#"
        [consent]
        default = "live"

        [[sources]]
        name = "dongle"
        type = "tcp"
        address = "{dongle}"

        [[sinks]]
        name = "home-assistant"
        type = "mqtt"
        url = "{url}"
        prefix = "home"
        max_granularity = "live"
        "#,
        url = broker.url(),
    );
    let watcher = Watcher::start(broker.port, "watcher", &["home/status"]);
    let daemon = Daemon::start(&dir, &config);
    let _connection = server.join().unwrap();
    watcher.wait_until(PATIENCE, |seen| seen.iter().any(|s| s.payload == "online"));
    let finished = daemon.terminate();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(count_after(&finished.stderr, "source dongle:", "ok"), 0);
}

/// dsmr-reader's topics have room for one meter. A TCP gateway that turns out to carry two
/// (no check of the configuration can know) gets the first one's readings published, the
/// second's left out and said, rather than both mixed on one topic.
#[test]
fn dsmr_reader_topics_carry_the_first_meter_of_a_gateway_and_say_so_of_a_second() {
    let dir = scratch("mqtt-dsmr-reader-gateway");
    let broker = Mosquitto::start(&dir);
    let now = crate::now();
    let interleaved = telegrams(1, &now, 3)
        .into_iter()
        .zip(telegrams(2, &now, 3))
        .flat_map(|(first, second)| [first, second])
        .collect();
    let (gateway, server) = crate::dongle(interleaved);
    let config = format!(
        r#"
        [consent]
        default = "live"

        [[sources]]
        name = "gateway"
        type = "tcp"
        address = "{gateway}"

        [[sinks]]
        name = "dsmr"
        type = "mqtt"
        url = "{url}"
        layout = "dsmr_reader"
        prefix = "dsmr"
        max_granularity = "live"

        [[sinks]]
        type = "stdout"
        max_granularity = "live"
        identity = "raw"
        "#,
        url = broker.url(),
    );
    let watcher = Watcher::start(broker.port, "watcher", &["homeassistant/#", "dsmr/json"]);
    let daemon = Daemon::start(&dir, &config);
    let _connection = server.join().unwrap();
    daemon.wait_for_output(r#""granularity":"live""#, 6, PATIENCE);
    daemon.wait_for_log("records of a second meter are not published", 1, PATIENCE);
    let finished = daemon.terminate();
    assert!(finished.status.success(), "{}", finished.stderr);
    let seen = watcher.seen();
    let devices: BTreeSet<&str> = (seen.iter())
        .filter(|s| s.topic.ends_with("/config"))
        .filter_map(|s| s.topic.split('/').nth(2))
        .collect();
    assert_eq!(devices.len(), 1, "one household's entities: {devices:?}");
    let readings: Vec<Value> = (seen.iter())
        .filter(|s| s.topic == "dsmr/json")
        .map(|s| serde_json::from_str(&s.payload).unwrap())
        .collect();
    // Each reading is one of the first meter's, none the second's.
    let imports = |id: &str| -> Vec<f64> {
        let id = sent_id(id);
        (finished.stdout.lines())
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .filter(|r| r["meter"] == id.as_str() && r["kind"] == "electricity")
            .map(|r| r["values"]["energy_import_t1_kwh"].as_f64().unwrap())
            .collect()
    };
    let (first, second) = (imports("E0053000012345601"), imports("E0053000012345602"));
    assert!(
        !first.is_empty() && !second.is_empty(),
        "{}",
        finished.stdout
    );
    assert!(!readings.is_empty());
    for reading in &readings {
        let delivered = reading["electricity_delivered_1"].as_f64().unwrap();
        assert!(
            first.contains(&delivered) && !second.contains(&delivered),
            "{delivered}: first {first:?}, second {second:?}"
        );
    }
}

/// A meter the grid operator swapped: once the household's meter has been silent for ten
/// minutes while another sends, dsmr-reader's topics carry the new meter's readings, not
/// none until p1guard restarts, and Home Assistant has the new meter's device in place of the
/// old one's.
#[test]
fn dsmr_reader_topics_follow_a_swapped_meter() {
    let dir = scratch("mqtt-dsmr-reader-swap");
    let broker = Mosquitto::start(&dir);
    let old_meter_from = crate::now();
    let new_meter_from = (old_meter_from.parse::<jiff::Timestamp>().unwrap()
        + jiff::SignedDuration::from_mins(45))
    .to_string();
    let mut telegrams_sent = telegrams(1, &old_meter_from, 3);
    telegrams_sent.extend(telegrams(2, &new_meter_from, 3));
    let (dongle, server) = crate::dongle(telegrams_sent);
    let config = format!(
        r#"
        [consent]
        default = "live"

        [[sources]]
        name = "p1"
        type = "tcp"
        address = "{dongle}"

        [[sinks]]
        name = "dsmr"
        type = "mqtt"
        url = "{url}"
        layout = "dsmr_reader"
        prefix = "dsmr"
        max_granularity = "live"

        [[sinks]]
        type = "stdout"
        max_granularity = "live"
        identity = "raw"
        "#,
        url = broker.url(),
    );
    let watcher = Watcher::start(broker.port, "watcher", &["dsmr/json", "homeassistant/#"]);
    let daemon = Daemon::start(&dir, &config);
    let _connection = server.join().unwrap();
    daemon.wait_for_log("a swapped meter", 1, PATIENCE);
    daemon.wait_for_output(r#""granularity":"live""#, 6, PATIENCE);
    let finished = daemon.terminate();
    assert!(finished.status.success(), "{}", finished.stderr);
    let imports = |id: &str| -> Vec<f64> {
        let id = sent_id(id);
        (finished.stdout.lines())
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .filter(|r| r["meter"] == id.as_str() && r["kind"] == "electricity")
            .map(|r| r["values"]["energy_import_t1_kwh"].as_f64().unwrap())
            .collect()
    };
    let (old, new) = (imports("E0053000012345601"), imports("E0053000012345602"));
    assert_eq!((old.len(), new.len()), (3, 3), "{}", finished.stdout);
    // dsmr-reader's JSON is published once per write, with the write's latest reading: the
    // new meter's last one ends the topic, and nothing of the old one comes after it.
    let json = |seen: &[Seen]| -> Vec<Value> {
        (seen.iter())
            .filter(|s| s.topic == "dsmr/json")
            .map(|s| serde_json::from_str(&s.payload).unwrap())
            .collect()
    };
    let seen = watcher.wait_until(PATIENCE, |seen| {
        json(seen)
            .last()
            .is_some_and(|r| r["electricity_delivered_1"] == new[2])
    });
    let delivered: Vec<f64> = (json(&seen).iter())
        .map(|r| r["electricity_delivered_1"].as_f64().unwrap())
        .collect();
    let first_new = delivered.iter().position(|d| new.contains(d));
    let first_new = first_new.unwrap_or_else(|| panic!("{delivered:?}: none of {new:?}"));
    assert!(
        delivered[..first_new].iter().all(|d| old.contains(d))
            && delivered[first_new..].iter().all(|d| new.contains(d)),
        "{delivered:?}: the old meter's {old:?}, then the new one's {new:?}"
    );
    assert!(
        !finished
            .stderr
            .contains("records of a second meter are not published"),
        "{}",
        finished.stderr
    );

    // Both meters were announced; the old one's entities were removed again.
    let device = |topic: &str| topic.split('/').nth(2).map(str::to_owned);
    let configs = |seen: &[Seen]| -> Vec<String> {
        (seen.iter())
            .filter(|s| s.topic.ends_with("/config") && !s.payload.is_empty())
            .filter_map(|s| device(&s.topic))
            .collect()
    };
    let announced = configs(&seen);
    let devices: BTreeSet<&String> = announced.iter().collect();
    assert_eq!(devices.len(), 2, "both meters announced: {devices:?}");
    let kept = retained(&broker, "after-the-swap", "homeassistant/#");
    let kept: BTreeSet<String> = configs(&kept).into_iter().collect();
    assert!(!kept.is_empty(), "{kept:?}");
    assert_eq!(
        kept.iter().collect::<Vec<_>>(),
        vec![announced.last().unwrap()],
        "only the new meter's device is left in Home Assistant"
    );
}

/// An erasure on a sink with dsmr-reader's topics clears them and the meter's discovery
/// configs, which that layout announces too.
#[test]
fn an_erasure_clears_dsmr_reader_topics_and_their_discovery_configs() {
    let dir = scratch("mqtt-erased-dsmr-reader");
    let broker = Mosquitto::start(&dir);
    let (dongle, server) = crate::dongle(telegrams(1, &crate::now(), 3));
    let config = format!(
        r#"
        [identity]
        key_file = "{dir}/identity.key"

        [consent]
        default = "live"
        registry = "{dir}/consent.sqlite"

        [[sources]]
        name = "dongle"
        type = "tcp"
        address = "{dongle}"

        [[sinks]]
        name = "dsmr"
        type = "mqtt"
        url = "{url}"
        layout = "dsmr_reader"
        prefix = "dsmr"
        max_granularity = "live"
        "#,
        dir = dir.display(),
        url = broker.url(),
    );
    let watcher = Watcher::start(broker.port, "watcher", &["homeassistant/#", "dsmr/#"]);
    let daemon = Daemon::start(&dir, &config);
    let _connection = server.join().unwrap();
    let configs = |seen: &[Seen]| seen.iter().filter(|s| s.topic.ends_with("/config")).count();
    watcher.wait_until(PATIENCE, |seen| {
        configs(seen) > 0 && seen.iter().any(|s| s.topic == "dsmr/json")
    });
    let finished = daemon.terminate();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(configs(&retained(&broker, "before", "homeassistant/#")) > 0);

    let erased = std::process::Command::new(env!("CARGO_BIN_EXE_p1guard"))
        .args(["erase", "--config"])
        .arg(dir.join("p1guard.toml"))
        .args(["--meter", "E0053000012345601"])
        .env("STATE_DIRECTORY", &dir)
        .output()
        .unwrap();
    assert!(
        erased.status.success(),
        "{}",
        String::from_utf8_lossy(&erased.stderr)
    );
    for filter in ["homeassistant/#", "dsmr/#"] {
        let left = retained(&broker, "after", filter);
        let left: Vec<&str> = (left.iter())
            .filter(|s| !s.payload.is_empty() && !s.topic.ends_with("/status"))
            .map(|s| s.topic.as_str())
            .collect();
        assert_eq!(left, Vec::<&str>::new(), "{filter}");
    }
}

/// An erasure clears a meter's discovery configs, and a running daemon does not bring them
/// back when Home Assistant restarts (it publishes every config it announced then), while it
/// still announces the other meters again.
#[test]
fn an_erased_meter_is_not_announced_again_when_home_assistant_restarts() {
    let dir = scratch("mqtt-erased-discovery");
    let broker = Mosquitto::start(&dir);
    let watcher = Watcher::start(broker.port, "watcher", &["homeassistant/#"]);
    let config = format!(
        r#"
        [identity]
        key_file = "{dir}/identity.key"

        [consent]
        default = "live"
        registry = "{dir}/consent.sqlite"

        {source}

        [[sinks]]
        name = "home-assistant"
        type = "mqtt"
        url = "{url}"
        prefix = "home"
        max_granularity = "live"
        "#,
        dir = dir.display(),
        source = mqtt_source(&broker, ""),
        url = broker.url(),
    );
    let daemon = Daemon::start(&dir, &config);
    daemon.wait_for_log("running", 1, PATIENCE);
    for n in [1, 2] {
        publish_all(
            broker.port,
            "meters",
            messages(n, telegrams(n, &crate::now(), 2)),
        );
    }
    // A device's configs: `homeassistant/sensor/p1guard_<meter>/<entity>/config`.
    let device = |topic: &str| topic.split('/').nth(2).map(str::to_owned);
    let announced = |seen: &[Seen], device_name: &str| -> BTreeSet<String> {
        (seen.iter())
            .filter(|s| device(&s.topic).as_deref() == Some(device_name) && !s.payload.is_empty())
            .map(|s| s.topic.clone())
            .collect()
    };
    watcher.wait_until(PATIENCE, |seen| {
        seen.iter()
            .filter_map(|s| device(&s.topic))
            .collect::<BTreeSet<_>>()
            .len()
            == 2
    });

    let erased = std::process::Command::new(env!("CARGO_BIN_EXE_p1guard"))
        .args(["erase", "--config"])
        .arg(dir.join("p1guard.toml"))
        .args(["--meter", "E0053000012345601", "--reference", "AVG-1"])
        .env("STATE_DIRECTORY", &dir)
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&erased.stdout);
    assert!(
        erased.status.success(),
        "{answer}{}",
        String::from_utf8_lossy(&erased.stderr)
    );
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let erased_device = format!("p1guard_{}", answer["meter"].as_str().unwrap());
    // Each device's configs go out at once: all were announced by the time the erasure ended.
    let seen = watcher.seen();
    let kept_device = (seen.iter().filter_map(|s| device(&s.topic)))
        .find(|d| *d != erased_device)
        .unwrap();
    let erased_configs = announced(&seen, &erased_device);
    let kept_configs = announced(&seen, &kept_device);
    assert!(!erased_configs.is_empty() && !kept_configs.is_empty());
    let cleared = |seen: &[Seen]| {
        erased_configs.iter().all(|topic| {
            (seen.iter().rev().find(|s| &s.topic == topic)).is_some_and(|s| s.payload.is_empty())
        })
    };
    watcher.wait_until(PATIENCE, cleared);
    // The daemon takes the erasure's consent event in and purges what it no longer allows.
    daemon.wait_for_log("purged what lowered consent no longer allows", 1, PATIENCE);

    let before = watcher.seen().len();
    publish_all(
        broker.port,
        "home-assistant",
        vec![("homeassistant/status".into(), b"online".to_vec())],
    );
    let seen = watcher.wait_until(PATIENCE, |seen| {
        announced(&seen[before..], &kept_device).is_superset(&kept_configs)
    });
    assert_eq!(announced(&seen[before..], &erased_device), BTreeSet::new());
    assert!(cleared(&seen), "an erased meter's config came back");

    let finished = daemon.terminate();
    assert!(finished.status.success(), "{}", finished.stderr);
}
