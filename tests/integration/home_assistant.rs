//! MQTT discovery as a user sees it: a real Home Assistant Core (installed by
//! `scripts/install-home-assistant`) and a real mosquitto, and p1guard announcing a DSMR 5
//! meter with a gas meter. Home Assistant must render every announced sensor with the value
//! p1guard published, show the meters as devices named by their serials (the gas meter
//! behind the electricity meter), accept the sensors for its energy dashboard, find the
//! announcements again after a restart that lost them, show the sensors unavailable once
//! p1guard stops, and keep a sensor's last state, without a warning, when a telegram lacks
//! its value.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use p1guard_simulator::{MeterSpec, Style};
use serde_json::{Value, json};

use crate::daemon::Daemon;
use crate::mosquitto::{Mosquitto, Seen, Watcher, free_port, publish_all, publish_retained};
use crate::scratch;

/// The version `scripts/install-home-assistant` installs.
const HA_VERSION: &str = "2024.3.3";
/// Home Assistant's start, generous: it imports hundreds of modules on a busy machine.
const STARTUP: Duration = Duration::from_secs(180);
/// Anything else Home Assistant or p1guard is waited for.
const PATIENCE: Duration = Duration::from_secs(60);
/// The least time the restarted Home Assistant gets before its recorder's next
/// five-minute statistics run (see [`clock_ahead`]); twice its first start is added.
const LEAD: Duration = Duration::from_secs(30);

const ELECTRICITY_ID: &str = "E0054000012345678";
const GAS_ID: &str = "G0054000012345678";

/// The meter: DSMR 5 with a gas meter on its M-Bus.
fn meter() -> MeterSpec {
    MeterSpec {
        style: Style::Dsmr5,
        equipment_id: ELECTRICITY_ID.into(),
        gas_id: Some(GAS_ID.into()),
        seed: 7,
    }
}

/// The `hass` that `scripts/install-home-assistant` installed (`P1GUARD_HASS`, as
/// `scripts/test` sets it, or the installer's default place), or `None` when
/// `P1GUARD_HA_SKIP` says it could not be installed on this machine.
fn hass() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("P1GUARD_HASS").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "P1GUARD_HASS={} is not a file; run scripts/install-home-assistant",
            path.display()
        );
        return Some(path);
    }
    let venv = std::env::var_os("P1GUARD_HA_VENV")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(format!(".cache/p1guard/home-assistant-{HA_VERSION}"))
        });
    let path = venv.join("bin/hass");
    if path.is_file() {
        return Some(path);
    }
    if let Some(reason) = std::env::var("P1GUARD_HA_SKIP")
        .ok()
        .filter(|r| !r.is_empty())
    {
        println!(
            "SKIPPED: the Home Assistant test: Home Assistant could not be installed here: {reason}"
        );
        return None;
    }
    panic!(
        "Home Assistant is not installed (P1GUARD_HASS is unset and there is no {}): \
         run scripts/install-home-assistant, which prints the path to put in P1GUARD_HASS \
         (scripts/test does both)",
        path.display()
    );
}

#[test]
fn home_assistant_renders_every_announced_sensor_and_the_energy_dashboard_accepts_them() {
    let Some(hass) = hass() else { return };
    let faketime = faketime_library();
    let dir = scratch("home-assistant");
    let broker = Mosquitto::start(&dir);
    let watcher = Watcher::start(broker.port, "watcher", &["homeassistant/#", "home/#"]);
    let mut ha = HomeAssistant::new(hass, faketime, &dir.join("home-assistant"));
    let began = Instant::now();
    ha.start(0);
    ha.onboard();
    let lead = (LEAD + 2 * began.elapsed()).min(Duration::from_secs(240));
    ha.add_mqtt(broker.port);

    let config = format!(
        r#"
        [consent]
        default = "live"

        [[sources]]
        name = "meter"
        type = "mqtt"
        url = "{url}"
        topic = "p1/+/telegram"

        [[sinks]]
        name = "home-assistant"
        type = "mqtt"
        url = "{url}"
        prefix = "home"
        max_granularity = "live"
        identity = "raw"
        "#,
        url = broker.url(),
    );
    let daemon = Daemon::start(&dir, &config);
    daemon.wait_for_log("subscribed to p1/+/telegram", 1, PATIENCE);
    // Across 10:05, so the gas meter's five-minute reading is among them.
    let mut telegrams = crate::telegrams(meter(), "2026-06-01T10:04:57Z", 8).into_iter();
    let mut send = |count: usize| {
        let messages = telegrams
            .by_ref()
            .take(count)
            .map(|t| ("p1/1/telegram".to_owned(), t))
            .collect();
        publish_all(broker.port, "meter", messages);
    };
    send(4);
    // Until p1guard published `n` electricity states, and a gas state.
    let electricity = |n: usize| {
        move |seen: &[Seen]| {
            let state = |kind: &str| {
                let suffix = format!("/live/{kind}");
                seen.iter()
                    .filter(move |s| s.topic.starts_with("home/") && s.topic.ends_with(&suffix))
                    .count()
            };
            state("electricity") >= n && state("gas") > 0
        }
    };
    watcher.wait_until(PATIENCE, electricity(4));
    let announced = announced(&watcher);
    assert!(
        announced.values().any(|c| kind_of(c) == "gas"),
        "no gas sensor announced: {announced:#?}"
    );

    // a) Every announced sensor, rendered from the latest state p1guard published.
    let entities = ha.entities(&announced);
    ha.wait_for_values(&announced, &entities, &watcher);

    // b) The electricity meter a device named by its serial; the gas meter one of its own,
    // connected through it.
    let devices = ha.devices(&announced, &entities);
    let (electricity_device, gas_device) = (&devices["electricity"], &devices["gas"]);
    let name = |device: &Value| device["name"].as_str().unwrap_or_default().to_owned();
    assert!(
        name(electricity_device).contains(ELECTRICITY_ID),
        "the electricity meter's device is named {:?}, not by its serial {ELECTRICITY_ID}: {electricity_device:#}",
        name(electricity_device)
    );
    assert_ne!(
        electricity_device["id"], gas_device["id"],
        "the gas meter has no device of its own: {gas_device:#}"
    );
    assert_eq!(
        gas_device["via_device_id"], electricity_device["id"],
        "the gas meter's device is not connected via the electricity meter's: {gas_device:#}\n{electricity_device:#}"
    );
    println!(
        "devices: electricity {:?}, gas {:?}",
        name(electricity_device),
        name(gas_device)
    );

    // c) The energy dashboard: grid import and export by tariff, and gas. Until the
    // recorder's first five-minute run, the only complaint allowed is that it has not
    // compiled statistics yet.
    let entity = |field: &str| -> String {
        let config = announced
            .values()
            .find(|config| field_of(config) == field)
            .unwrap_or_else(|| panic!("no sensor announced for {field}: {announced:#?}"));
        entities[config["unique_id"].as_str().unwrap()]
            .entity_id
            .clone()
    };
    let grid_from = |field: &str| {
        json!({"stat_energy_from": entity(field), "stat_cost": null,
               "entity_energy_price": null, "number_energy_price": null})
    };
    let grid_to = |field: &str| {
        json!({"stat_energy_to": entity(field), "stat_compensation": null,
               "entity_energy_price": null, "number_energy_price": null})
    };
    let prefs = json!({
        "type": "energy/save_prefs",
        "energy_sources": [
            {
                "type": "grid",
                "flow_from": [grid_from("energy_import_t1_kwh"), grid_from("energy_import_t2_kwh")],
                "flow_to": [grid_to("energy_export_t1_kwh"), grid_to("energy_export_t2_kwh")],
                "cost_adjustment_day": 0.0,
            },
            {
                "type": "gas",
                "stat_energy_from": entity("volume_m3"),
                "stat_cost": null,
                "entity_energy_price": null,
                "number_energy_price": null,
            },
        ],
    });
    ha.call(prefs);
    let issues = energy_issues(&ha.call(json!({"type": "energy/validate"})));
    assert!(
        issues
            .iter()
            .all(|(kind, _)| kind == "statistics_not_defined"),
        "the energy dashboard rejects p1guard's sensors: {issues:#?}"
    );

    // e) Home Assistant restarts, and the retained announcements are gone: only p1guard's
    // answer to Home Assistant's birth message brings the sensors back. Its clock comes back
    // just before a five-minute boundary, so the recorder compiles the statistics the energy
    // dashboard needs soon after.
    ha.stop();
    let topics: Vec<String> = announced.keys().cloned().collect();
    let cleared = |seen: &[Seen]| {
        topics.iter().all(|t| {
            seen.iter()
                .rev()
                .find(|s| &s.topic == t)
                .is_some_and(|s| s.payload.is_empty())
        })
    };
    publish_retained(
        broker.port,
        "cleaner",
        topics.iter().map(|t| (t.clone(), Vec::new())).collect(),
    );
    watcher.wait_until(PATIENCE, cleared);
    let ahead = clock_ahead(lead.as_secs());
    let restarted = Instant::now();
    ha.start(ahead);
    watcher.wait_until(PATIENCE, |seen| {
        topics.iter().all(|t| {
            seen.iter()
                .rev()
                .find(|s| &s.topic == t)
                .is_some_and(|s| !s.payload.is_empty())
        })
    });
    assert_eq!(
        announced_again(&watcher, &announced),
        announced,
        "p1guard announced something else after the restart"
    );
    send(4);
    watcher.wait_until(PATIENCE, electricity(8));
    ha.wait_for_values(&announced, &entities, &watcher);

    // c) again, once the recorder compiled statistics: no issue at all.
    let compiled = restarted + lead + Duration::from_secs(10);
    let deadline = compiled.max(Instant::now()) + PATIENCE;
    let mut issues;
    loop {
        issues = energy_issues(&ha.call(json!({"type": "energy/validate"})));
        if issues.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        issues.is_empty(),
        "the energy dashboard still reports issues {:?} after its statistics run (clock {ahead} s ahead): {issues:#?}\n{}",
        restarted.elapsed(),
        ha.log_tail()
    );

    // d) p1guard stops: its `offline` on the availability topic makes every sensor
    // unavailable.
    let finished = daemon.terminate();
    assert!(finished.status.success(), "{}", finished.stderr);
    ha.wait_until(
        "every sensor unavailable after p1guard stopped",
        PATIENCE,
        || {
            let states = ha.states();
            let available: Vec<_> = entities
                .values()
                .filter(|e| states.get(&e.entity_id).is_none_or(|s| s != "unavailable"))
                .map(|e| (&e.entity_id, states.get(&e.entity_id)))
                .collect();
            available
                .is_empty()
                .then_some(())
                .ok_or(format!("{available:?}"))
        },
    );

    ha.stop();

    // Nothing Home Assistant found wrong with what p1guard announced or published.
    let mut words: Vec<&str> = entities.values().map(|e| e.entity_id.as_str()).collect();
    words.extend(announced.values().filter_map(|c| c["unique_id"].as_str()));
    let complaints = ha.complaints(&words);
    assert!(
        complaints.is_empty(),
        "Home Assistant complained:\n{}",
        complaints.join("\n")
    );
    drop((ha, watcher, broker));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_value_keeps_its_sensor_without_a_template_warning_and_a_silent_meter_goes_unavailable()
{
    let Some(hass) = hass() else { return };
    let dir = scratch("home-assistant-missing");
    let broker = Mosquitto::start(&dir);
    let watcher = Watcher::start(broker.port, "watcher", &["homeassistant/#", "home/#"]);
    let mut ha = HomeAssistant::new(hass, faketime_library(), &dir.join("home-assistant"));
    ha.start(0);
    ha.onboard();
    ha.add_mqtt(broker.port);
    let config = format!(
        r#"
        [consent]
        default = "live"

        [[sources]]
        name = "meter"
        type = "mqtt"
        url = "{url}"
        topic = "p1/+/telegram"

        [[sinks]]
        name = "home-assistant"
        type = "mqtt"
        url = "{url}"
        prefix = "home"
        max_granularity = "live"
        identity = "raw"
        "#,
        url = broker.url(),
    );
    let daemon = Daemon::start(&dir, &config);
    daemon.wait_for_log("subscribed to p1/+/telegram", 1, PATIENCE);
    let send = |telegrams: Vec<Vec<u8>>| {
        let messages = telegrams
            .into_iter()
            .map(|t| ("p1/1/telegram".to_owned(), t))
            .collect();
        publish_all(broker.port, "meter", messages);
    };
    let mut telegrams = crate::telegrams(meter(), "2026-06-01T10:00:02Z", 3).into_iter();
    let electricity_states = |seen: &[Seen]| {
        seen.iter()
            .filter(|s| s.topic.starts_with("home/") && s.topic.ends_with("/live/electricity"))
            .count()
    };
    send(telegrams.by_ref().take(2).collect());
    watcher.wait_until(PATIENCE, |seen| electricity_states(seen) >= 2);
    let announced: BTreeMap<String, Value> = announced(&watcher)
        .into_iter()
        .filter(|(_, c)| kind_of(c) == "electricity")
        .collect();
    let entities = ha.entities(&announced);
    ha.wait_for_values(&announced, &entities, &watcher);
    let entity = |field: &str| -> String {
        let config = announced
            .values()
            .find(|config| field_of(config) == field)
            .unwrap_or_else(|| panic!("no sensor announced for {field}: {announced:#?}"));
        entities[config["unique_id"].as_str().unwrap()]
            .entity_id
            .clone()
    };
    let missing = ["energy_import_t1_kwh", "voltage_l2_v", "tariff"];
    let kept: Vec<String> = missing.iter().map(|field| entity(field)).collect();
    let before = ha.states();

    // A telegram without the tariff 1 import register, the voltage of phase 2 and the
    // tariff in force: its record has none of these values.
    let lines = ["1-0:1.8.1(", "1-0:52.7.0(", "0-0:96.14.0("];
    let telegram = without(telegrams.next().unwrap(), &lines);
    send(vec![telegram]);
    let seen = watcher.wait_until(PATIENCE, |seen| electricity_states(seen) >= 3);
    let last = seen
        .iter()
        .rev()
        .find(|s| s.topic.ends_with("/live/electricity"))
        .unwrap();
    let record: Value = serde_json::from_str(&last.payload).unwrap();
    for field in missing {
        assert!(
            record["values"].get(field).is_none(),
            "the record still has {field}: {record:#}"
        );
    }

    // Home Assistant took the record (the sensors of the values it has show them), and the
    // sensors without a value kept their last state: a counter that dropped to 0 or unknown
    // and came back would be booked as a reset by the energy dashboard. The tariff is a text
    // sensor, which would show an empty state.
    ha.wait_for_values_keeping(&announced, &entities, &watcher, &before);
    let after = ha.states();
    for id in &kept {
        assert_eq!(
            after.get(id),
            before.get(id),
            "{id} did not keep its state when its value was missing"
        );
    }
    let last_sent = Instant::now();

    // A cable gone silent, while p1guard runs: after a minute without a reading, Home
    // Assistant shows the meter's sensors unavailable, not its last values as current.
    ha.wait_until(
        "the silent meter's sensors unavailable",
        Duration::from_secs(120),
        || {
            let states = ha.states();
            let available: Vec<(&String, Option<&String>)> = (entities.values())
                .map(|e| (&e.entity_id, states.get(&e.entity_id)))
                .filter(|(_, state)| state.map(String::as_str) != Some("unavailable"))
                .collect();
            match available.is_empty() {
                true => Ok(()),
                false => Err(format!("still showing {available:?}")),
            }
        },
    );
    let silent = last_sent.elapsed();
    assert!(
        silent >= Duration::from_secs(55),
        "unavailable after {silent:?} of silence already"
    );
    let finished = daemon.terminate();
    assert!(finished.status.success(), "{}", finished.stderr);
    ha.stop();

    // And Home Assistant found nothing wrong with rendering the templates of the values
    // that were missing.
    let mut words: Vec<&str> = entities.values().map(|e| e.entity_id.as_str()).collect();
    words.extend(announced.values().filter_map(|c| c["unique_id"].as_str()));
    let complaints = ha.complaints(&words);
    assert!(
        complaints.is_empty(),
        "Home Assistant complained:\n{}",
        complaints.join("\n")
    );
    drop((ha, watcher, broker));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `telegram` without its lines that start with one of `codes`, its CRC made right again.
fn without(telegram: Vec<u8>, codes: &[&str]) -> Vec<u8> {
    let text = String::from_utf8(telegram).expect("a DSMR 5 telegram is text");
    let end = text.find('!').expect("a telegram ends with !");
    let body: String = text[..=end]
        .split_inclusive("\r\n")
        .filter(|line| !codes.iter().any(|code| line.starts_with(code)))
        .collect();
    for code in codes {
        assert!(text.contains(code), "no {code} line in {text}");
    }
    let crc = p1guard_telegram::crc16(body.as_bytes());
    format!("{body}{crc:04X}\r\n").into_bytes()
}

/// The discovery configs on the broker now, by topic: the latest message of each config
/// topic, unless that deleted it (an empty payload).
fn announced(watcher: &Watcher) -> BTreeMap<String, Value> {
    watcher
        .latest()
        .into_iter()
        .filter(|(topic, payload)| {
            topic.starts_with("homeassistant/") && topic.ends_with("/config") && !payload.is_empty()
        })
        .map(|(topic, payload)| {
            let config = serde_json::from_str(&payload)
                .unwrap_or_else(|e| panic!("{topic}: {e}: {payload}"));
            (topic, config)
        })
        .collect()
}

/// The configs of `before`'s topics as published again after the retained ones were
/// cleared.
fn announced_again(watcher: &Watcher, before: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    let mut again = announced(watcher);
    again.retain(|topic, _| before.contains_key(topic));
    again
}

/// The record kind a sensor's state topic holds: its last level (`.../live/gas`).
fn kind_of(config: &Value) -> &str {
    let topic = config["state_topic"].as_str().unwrap_or_default();
    topic.rsplit('/').next().unwrap_or_default()
}

/// The record value a sensor's template picks: the last name in `{{ value_json.values.X }}`
/// or `{{ value_json['values']['X'] }}`, before any filter (`| default(...)`).
fn field_of(config: &Value) -> &str {
    let template = config["value_template"].as_str().unwrap_or_default();
    let expression = template
        .trim()
        .trim_start_matches("{{")
        .trim_end_matches("}}")
        .split('|')
        .next()
        .unwrap_or_default()
        .trim();
    expression
        .rsplit(['.', '[', ']', '\'', '"'])
        .find(|part| !part.trim().is_empty())
        .unwrap_or_default()
        .trim()
}

/// The issues of an `energy/validate` answer, as (type, affected entities).
fn energy_issues(result: &Value) -> Vec<(String, Value)> {
    let lists = ["energy_sources", "device_consumption"];
    lists
        .iter()
        .flat_map(|key| result[key].as_array().cloned().unwrap_or_default())
        .flat_map(|source| source.as_array().cloned().unwrap_or_default())
        .map(|issue| {
            let kind = issue["type"].as_str().unwrap_or_default().to_owned();
            (kind, issue["affected_entities"].clone())
        })
        .collect()
}

/// How many seconds ahead Home Assistant's clock must be for the recorder's next
/// statistics run (at ten seconds past every fifth minute, for the five minutes before)
/// to come `lead` seconds after now. A state it holds then is compiled into the statistics
/// the energy dashboard checks for; without this the test would wait up to five minutes.
fn clock_ahead(lead: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (300 - (now + lead) % 300) % 300
}

/// One entity of the entity registry.
#[derive(Debug, Clone)]
struct Entity {
    entity_id: String,
    device_id: String,
}

/// A Home Assistant Core in a config directory of the test's own, on a free port; killed
/// with everything it started when dropped.
struct HomeAssistant {
    hass: PathBuf,
    /// libfaketime, which sets its clock ahead.
    faketime: PathBuf,
    dir: PathBuf,
    port: u16,
    child: RefCell<Option<Child>>,
    token: Option<String>,
}

impl HomeAssistant {
    /// A fresh config directory: the integrations the test uses and nothing else
    /// (`frontend` and the other defaults come anyway), the location and currency set so
    /// nothing is looked up.
    fn new(hass: PathBuf, faketime: PathBuf, dir: &Path) -> HomeAssistant {
        std::fs::create_dir_all(dir).unwrap();
        let port = free_port();
        std::fs::write(
            dir.join("configuration.yaml"),
            format!(
                "homeassistant:\n  \
                   name: p1guard test\n  \
                   latitude: 52.37\n  \
                   longitude: 4.89\n  \
                   elevation: 0\n  \
                   unit_system: metric\n  \
                   time_zone: UTC\n  \
                   currency: EUR\n  \
                   country: NL\n\
                 http:\n  \
                   server_host: 127.0.0.1\n  \
                   server_port: {port}\n\
                 api:\n\
                 config:\n\
                 energy:\n\
                 recorder:\n\
                 logger:\n  \
                   default: info\n"
            ),
        )
        .unwrap();
        HomeAssistant {
            hass,
            faketime,
            dir: dir.to_owned(),
            port,
            child: RefCell::new(None),
            token: None,
        }
    }

    /// Starts it, its clock `ahead` seconds ahead of the machine's, in a process group of
    /// its own, and waits until it runs (its onboarding answers, then, once onboarded, its
    /// API says `RUNNING`).
    fn start(&mut self, ahead: u64) {
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("hass.out"))
            .unwrap();
        let mut command = Command::new(&self.hass);
        command.arg("-c").arg(&self.dir).arg("--skip-pip");
        if ahead > 0 {
            // Preloaded into hass itself (not through the `faketime` program, which would
            // stand between it and its signals), and only for the wall clock: timers keep
            // real time.
            command
                .env("LD_PRELOAD", &self.faketime)
                .env("FAKETIME", format!("+{ahead}"))
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        command
            .stdin(Stdio::null())
            .stdout(output.try_clone().unwrap())
            .stderr(output);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        *self.child.get_mut() = Some(command.spawn().expect("hass starts"));
        if self.token.is_none() {
            self.wait_until("the onboarding API", STARTUP, || {
                match self.http("GET", "/api/onboarding", "", "") {
                    Ok((200, _)) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            });
        } else {
            self.wait_running();
        }
    }

    /// Waits until its API says it has started (`RUNNING`).
    fn wait_running(&self) {
        self.wait_until("Home Assistant running", STARTUP, || {
            match self.http("GET", "/api/config", "", "") {
                Ok((200, body)) if body.contains(r#""state":"RUNNING""#) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
    }

    /// Makes the owner's account and logs in as it.
    fn onboard(&mut self) {
        let client_id = format!("http://127.0.0.1:{}/", self.port);
        let user = json!({
            "client_id": client_id,
            "name": "p1guard",
            "username": "p1guard",
            "password": "p1guard-test-password",
            "language": "en",
        });
        let created = self.post("/api/onboarding/users", &user);
        let code = created["auth_code"]
            .as_str()
            .expect("an auth code")
            .to_owned();
        let form = format!("grant_type=authorization_code&code={code}&client_id={client_id}");
        let tokens = self.request(
            "POST",
            "/auth/token",
            "application/x-www-form-urlencoded",
            &form,
        );
        let token = tokens["access_token"].as_str().expect("an access token");
        self.token = Some(token.to_owned());
        self.wait_running();
    }

    /// Adds the MQTT integration as a user does: its config flow, with the broker's
    /// address (discovery on `homeassistant/`, as by default).
    fn add_mqtt(&self, port: u16) {
        let flow = self.post(
            "/api/config/config_entries/flow",
            &json!({"handler": "mqtt"}),
        );
        let id = flow["flow_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no flow: {flow}"));
        let step = json!({"broker": "127.0.0.1", "port": port});
        let done = self.post(&format!("/api/config/config_entries/flow/{id}"), &step);
        assert_eq!(
            done["type"],
            "create_entry",
            "the MQTT integration was not added: {done}\n{}",
            self.log_tail()
        );
        assert_eq!(
            done["result"]["state"],
            "loaded",
            "{done}\n{}",
            self.log_tail()
        );
    }

    /// The entity registry's entry of every announced sensor, by unique id, once all are
    /// there.
    fn entities(&self, announced: &BTreeMap<String, Value>) -> BTreeMap<String, Entity> {
        let wanted: BTreeSet<&str> = announced
            .values()
            .map(|c| c["unique_id"].as_str().expect("a unique id"))
            .collect();
        self.wait_until("an entity of every announced sensor", PATIENCE, || {
            let list = self.call(json!({"type": "config/entity_registry/list"}));
            let entities: BTreeMap<String, Entity> = list
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["platform"] == "mqtt")
                .filter_map(|e| {
                    let unique_id = e["unique_id"].as_str()?;
                    wanted.contains(unique_id).then(|| {
                        let entity = Entity {
                            entity_id: e["entity_id"].as_str().unwrap().to_owned(),
                            device_id: e["device_id"].as_str().unwrap_or_default().to_owned(),
                        };
                        (unique_id.to_owned(), entity)
                    })
                })
                .collect();
            let missing: Vec<_> = wanted
                .iter()
                .filter(|id| !entities.contains_key(**id))
                .collect();
            if missing.is_empty() {
                Ok(entities)
            } else {
                Err(format!("missing {missing:?}"))
            }
        })
    }

    /// Waits until every announced sensor's state is the number its template picks from
    /// the latest state message on its topic.
    fn wait_for_values(
        &self,
        announced: &BTreeMap<String, Value>,
        entities: &BTreeMap<String, Entity>,
        watcher: &Watcher,
    ) {
        self.wait_for_values_keeping(announced, entities, watcher, &BTreeMap::new());
    }

    /// As [`Self::wait_for_values`], but a sensor whose value the latest state message
    /// lacks must show its state in `before` (by entity id).
    fn wait_for_values_keeping(
        &self,
        announced: &BTreeMap<String, Value>,
        entities: &BTreeMap<String, Entity>,
        watcher: &Watcher,
        before: &BTreeMap<String, String>,
    ) {
        self.wait_until(
            "every sensor showing p1guard's latest value",
            PATIENCE,
            || {
                let latest = watcher.latest();
                let states = self.states();
                let mut wrong = Vec::new();
                for (topic, config) in announced {
                    let entity = &entities[config["unique_id"].as_str().unwrap()];
                    let field = field_of(config);
                    let state_topic = config["state_topic"].as_str().unwrap_or_default();
                    let expected = latest
                        .get(state_topic)
                        .and_then(|payload| serde_json::from_str::<Value>(payload).ok())
                        .and_then(|state| state["values"][field].as_f64());
                    let shown = states.get(&entity.entity_id);
                    let value = shown.and_then(|s| s.parse::<f64>().ok());
                    let kept = before.get(&entity.entity_id);
                    let same = match (value, expected) {
                        (Some(v), Some(e)) => (v - e).abs() <= 1e-9 * e.abs().max(1.0),
                        (_, None) => kept.is_some() && shown == kept,
                        _ => false,
                    };
                    if !same {
                        wrong.push(format!(
                            "{} ({topic}, {:?}): shows {shown:?}, {state_topic} holds {expected:?}, \
                             showed {kept:?} before",
                            entity.entity_id, config["value_template"]
                        ));
                    }
                }
                if wrong.is_empty() {
                    Ok(())
                } else {
                    Err(wrong.join("\n"))
                }
            },
        );
    }

    /// The devices of the announced sensors by record kind (`electricity`, `gas`), each the
    /// one device of all sensors of its kind.
    fn devices(
        &self,
        announced: &BTreeMap<String, Value>,
        entities: &BTreeMap<String, Entity>,
    ) -> BTreeMap<String, Value> {
        let list = self.call(json!({"type": "config/device_registry/list"}));
        let by_id: BTreeMap<&str, &Value> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["id"].as_str().unwrap(), d))
            .collect();
        let mut devices: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
        for config in announced.values() {
            let entity = &entities[config["unique_id"].as_str().unwrap()];
            devices
                .entry(kind_of(config).to_owned())
                .or_default()
                .insert(entity.device_id.as_str());
        }
        devices
            .into_iter()
            .map(|(kind, ids)| {
                assert_eq!(ids.len(), 1, "the {kind} sensors are on {ids:?}: {list:#}");
                let id = ids.into_iter().next().unwrap();
                let device = by_id.get(id).unwrap_or_else(|| {
                    panic!("the {kind} sensors have no device ({id:?}): {list:#}")
                });
                (kind, (*device).clone())
            })
            .collect()
    }

    /// Every entity's state, by entity id.
    fn states(&self) -> BTreeMap<String, String> {
        let states = self.request("GET", "/api/states", "", "");
        states
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let id = s["entity_id"].as_str().unwrap().to_owned();
                (id, s["state"].as_str().unwrap_or_default().to_owned())
            })
            .collect()
    }

    /// Stops it as its service manager would (SIGTERM to the group), so it saves its
    /// registries and recorder; kills the group if it has not ended within a minute.
    fn stop(&mut self) {
        let mut child = self.child.get_mut().take().expect("Home Assistant runs");
        signal_group(child.id(), "TERM");
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                signal_group(child.id(), "KILL");
                let _ = child.wait();
                panic!(
                    "Home Assistant did not stop within {PATIENCE:?}\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            status.success(),
            "Home Assistant stopped with {status}\n{}",
            self.log_tail()
        );
    }

    /// Calls `f` until it answers `Ok`; panics with its last `Err`, and Home Assistant's
    /// log, after `timeout` or if Home Assistant ended.
    fn wait_until<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Result<T, String>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match f() {
                Ok(value) => return value,
                Err(last) => last,
            };
            let ended = self
                .child
                .borrow_mut()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                ended.is_none() && Instant::now() < deadline,
                "gave up waiting {timeout:?} for {what}{}: {last}\n{}",
                ended.map_or(String::new(), |status| format!(
                    " (Home Assistant ended: {status})"
                )),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// An API request, its JSON answer; panics with the log if it fails.
    fn request(&self, method: &str, path: &str, content_type: &str, body: &str) -> Value {
        match self.http(method, path, content_type, body) {
            Ok((200 | 201, text)) => serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}")),
            other => panic!("{method} {path}: {other:?}\n{}", self.log_tail()),
        }
    }

    fn post(&self, path: &str, body: &Value) -> Value {
        self.request("POST", path, "application/json", &body.to_string())
    }

    /// One HTTP/1.1 request, with the access token once there is one: status and body.
    fn http(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> Result<(u16, String), String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let auth = self
            .token
            .as_ref()
            .map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let kind = if content_type.is_empty() {
            String::new()
        } else {
            format!("Content-Type: {content_type}\r\n")
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n{auth}{kind}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.port,
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .map_err(|e| e.to_string())?;
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| format!("no complete answer: {}", String::from_utf8_lossy(&response)))?;
        let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
        let mut body = response[split + 4..].to_vec();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status in {head:?}"))?;
        if head.contains("transfer-encoding: chunked") {
            body = dechunk(&body)?;
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// One websocket API command on a connection of its own: its result; panics with the
    /// log if it failed.
    fn call(&self, command: Value) -> Value {
        let token = self.token.as_deref().expect("onboarded");
        let answer = websocket_call(self.port, token, command.clone());
        match answer {
            Ok(result) => result,
            Err(e) => panic!("{command}: {e}\n{}", self.log_tail()),
        }
    }

    /// The end of Home Assistant's log (and of what it printed, where its log is not).
    fn log_tail(&self) -> String {
        let mut tail = String::new();
        for file in ["home-assistant.log", "hass.out"] {
            let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(60);
            tail += &format!(
                "--- {file} (last {} lines):\n{}\n",
                lines.len() - from,
                lines[from..].join("\n")
            );
        }
        tail
    }

    /// Every warning or error Home Assistant logged in both runs that names MQTT, a
    /// template, p1guard or one of `words` (entity ids), with the lines that follow it.
    fn complaints(&self, words: &[&str]) -> Vec<String> {
        let mut found = Vec::new();
        for file in ["home-assistant.log.1", "home-assistant.log"] {
            let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
            // An entry is its first line and the traceback lines after it.
            let mut entries: Vec<String> = Vec::new();
            for line in text.lines() {
                match entries.last_mut() {
                    Some(entry) if !line.starts_with("20") => {
                        entry.push('\n');
                        entry.push_str(line);
                    }
                    _ => entries.push(line.to_owned()),
                }
            }
            for entry in entries {
                let level = entry.split_whitespace().nth(2).unwrap_or_default();
                if matches!(level, "INFO" | "DEBUG") {
                    continue;
                }
                let lower = entry.to_lowercase();
                let named = ["mqtt", "template", "p1guard"]
                    .iter()
                    .chain(words)
                    .any(|word| lower.contains(&word.to_lowercase()));
                if named {
                    found.push(entry);
                }
            }
        }
        found
    }
}

impl Drop for HomeAssistant {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.get_mut().take() {
            signal_group(child.id(), "KILL");
            let _ = child.wait();
        }
    }
}

/// libfaketime's multi-threaded build, as Debian's `faketime` package installs it.
fn faketime_library() -> PathBuf {
    let multiarch = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("faketime"));
    let dirs = multiarch.chain(["/usr/lib/faketime".into(), "/usr/local/lib/faketime".into()]);
    dirs.map(|dir| dir.join("libfaketimeMT.so.1"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "libfaketime is not installed; run scripts/install-home-assistant \
                 (it installs Debian's faketime) or apt-get install faketime"
            )
        })
}

/// Sends signal `name` to the process group led by `pid`.
fn signal_group(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args(["-s", name, "--", &format!("-{pid}")])
        .status();
}

/// The body of a chunked HTTP answer.
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk without its size")?;
        let size = String::from_utf8_lossy(&data[..end]);
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
            .map_err(|e| format!("chunk size {size:?}: {e}"))?;
        data = &data[end + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(data.get(..size).ok_or("a chunk cut short")?);
        data = data.get(size + 2..).ok_or("a chunk cut short")?;
    }
}

/// Logs in to Home Assistant's websocket API with `token` and sends `command`: the
/// `result` of the answer to it.
fn websocket_call(port: u16, token: &str, mut command: Value) -> Result<Value, String> {
    let stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let url = format!("ws://127.0.0.1:{port}/api/websocket");
    let (mut socket, _) = tungstenite::client(url.as_str(), stream).map_err(|e| e.to_string())?;
    let receive = |socket: &mut tungstenite::WebSocket<TcpStream>| -> Result<Value, String> {
        loop {
            match socket.read().map_err(|e| e.to_string())? {
                tungstenite::Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).map_err(|e| format!("{e}: {text}"));
                }
                tungstenite::Message::Close(frame) => return Err(format!("closed: {frame:?}")),
                _ => {}
            }
        }
    };
    let send = |socket: &mut tungstenite::WebSocket<TcpStream>, message: &Value| {
        socket
            .send(tungstenite::Message::text(message.to_string()))
            .map_err(|e| e.to_string())
    };
    let hello = receive(&mut socket)?;
    if hello["type"] != "auth_required" {
        return Err(format!("no auth_required: {hello}"));
    }
    send(&mut socket, &json!({"type": "auth", "access_token": token}))?;
    let auth = receive(&mut socket)?;
    if auth["type"] != "auth_ok" {
        return Err(format!("not logged in: {auth}"));
    }
    command["id"] = json!(1);
    send(&mut socket, &command)?;
    loop {
        let answer = receive(&mut socket)?;
        if answer["id"] != 1 || answer["type"] != "result" {
            continue;
        }
        let _ = socket.close(None);
        return if answer["success"] == true {
            Ok(answer["result"].clone())
        } else {
            Err(format!("failed: {answer}"))
        };
    }
}
