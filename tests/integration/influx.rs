//! The InfluxDB sink end to end against real servers started on free ports: VictoriaMetrics
//! for the v2 write API (and the v1 one, whose `db` it keeps as a label), InfluxDB 1.x for
//! the v1 API with authentication and a retention policy per granularity. What the servers
//! hold is compared with the stdout sink's records of the same run.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use p1guard_simulator::Style;
use serde_json::Value;

use crate::daemon::{Daemon, count_after, require};
use crate::free_address;
use crate::run::write_capture;
use crate::scratch;

const PATIENCE: Duration = Duration::from_secs(30);

/// The simulated meter's ids as sent (hex-encoded): never in a pseudonymous store.
const METER_IDS: [&str; 2] = ["E0053000012345621", "G0053000012345621"];

fn hex(id: &str) -> String {
    id.bytes().map(|b| format!("{b:02X}")).collect()
}

/// A free port on 127.0.0.1 (free when asked; nothing else here takes ports).
/// An HTTP/1.0 request (so the answer is neither chunked nor kept alive): status and body.
fn http(address: SocketAddr, method: &str, target: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("the server accepts");
    write!(
        stream,
        "{method} {target} HTTP/1.0\r\nHost: test\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
    (status.expect("a status line"), body.to_owned())
}

/// `path?key=value&...` with the values percent-encoded.
fn target(path: &str, query: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("http://test").unwrap();
    url.set_path(path);
    url.query_pairs_mut().extend_pairs(query);
    format!("{}?{}", url.path(), url.query().unwrap_or(""))
}

/// A server process on a free port with its data in a scratch directory; killed on drop.
struct Server {
    binary: PathBuf,
    args: Vec<String>,
    address: SocketAddr,
    /// A path that answers 2xx once the server is ready.
    health: &'static str,
    child: Option<Child>,
}

impl Server {
    /// Starts `binary` with `args`, then waits until `GET health` succeeds.
    fn start(
        binary: PathBuf,
        args: Vec<String>,
        address: SocketAddr,
        health: &'static str,
    ) -> Server {
        let mut server = Server {
            binary,
            args,
            address,
            health,
            child: None,
        };
        server.restart();
        server
    }

    /// Starts the process (again, on the same port and data).
    fn restart(&mut self) {
        let child = Command::new(&self.binary)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", self.binary.display()));
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let up = TcpStream::connect(self.address).is_ok()
                && (200..300).contains(&http(self.address, "GET", self.health, "").0);
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not come up",
                self.binary.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// VictoriaMetrics on `address`, keeping everything (the captures are dated in the past).
fn victoria_metrics(dir: &Path, address: SocketAddr) -> Server {
    let binary = require("victoria-metrics", "victoria-metrics");
    let args = [
        "-httpListenAddr",
        &address.to_string(),
        "-storageDataPath",
        &dir.join("vm-data").display().to_string(),
        "-retentionPeriod",
        "100y",
    ];
    Server::start(binary, args.map(str::to_owned).to_vec(), address, "/health")
}

/// InfluxDB 1.x with authentication on, its RPC port on a free port too.
fn influxd(dir: &Path) -> Server {
    let binary = require("influxd", "influxdb");
    let address = free_address();
    let config = dir.join("influxd.conf");
    let data = |name: &str| dir.join("influxd").join(name).display().to_string();
    std::fs::write(
        &config,
        format!(
            "reporting-disabled = true\nbind-address = \"{}\"\n\
             [meta]\n  dir = {:?}\n\
             [data]\n  dir = {:?}\n  wal-dir = {:?}\n\
             [http]\n  bind-address = \"{address}\"\n  auth-enabled = true\n  log-enabled = false\n",
            free_address(),
            data("meta"),
            data("data"),
            data("wal"),
        ),
    )
    .unwrap();
    let args = vec!["-config".to_owned(), config.display().to_string()];
    Server::start(binary, args, address, "/ping")
}

/// Runs InfluxQL as the admin; the results.
fn influxql(server: &Server, query: &str) -> Value {
    let path = target(
        "/query",
        &[
            ("u", "admin"),
            ("p", "admin-pw"),
            ("epoch", "s"),
            ("q", query),
        ],
    );
    let (status, body) = http(server.address, "POST", &path, "");
    assert_eq!(status, 200, "{query}: {body}");
    let results: Value = serde_json::from_str(&body).unwrap();
    assert!(!body.contains("\"error\""), "{query}: {body}");
    results
}

/// The records a run printed on stdout, as JSON.
fn printed(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON record"))
        .collect()
}

/// One stored number: (series name, granularity, meter, db label) -> [(time, value)].
type Series = BTreeMap<(String, String, String, Option<String>), Vec<(i64, f64)>>;

/// What VictoriaMetrics should hold for `records`: a series per kind and value, the
/// quality too (a string field, which VictoriaMetrics stores as 0).
fn expected_series(records: &[Value], db: Option<&str>) -> Series {
    let mut series = Series::new();
    for record in records {
        let text = |key: &str| record[key].as_str().unwrap().to_owned();
        let time = timestamp(&text("time")).as_millisecond();
        let mut fields: Vec<(String, f64)> = record["values"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, v)| (name.clone(), v.as_f64().unwrap()))
            .collect();
        fields.push(("quality".into(), 0.0));
        for (field, value) in fields {
            let key = (
                format!("{}_{field}", text("kind")),
                text("granularity"),
                text("meter"),
                db.map(str::to_owned),
            );
            series.entry(key).or_default().push((time, value));
        }
    }
    series
        .values_mut()
        .for_each(|points| points.sort_by_key(|p| p.0));
    series
}

fn timestamp(text: &str) -> jiff::Timestamp {
    text.parse().expect("an RFC 3339 time")
}

/// What VictoriaMetrics holds once it equals `expected`, or after [`PATIENCE`]: new
/// series become searchable shortly after they are written. With the export's text.
fn exported_as(server: &Server, expected: &Series) -> (Series, String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (stored, text) = exported(server);
        if stored == *expected || Instant::now() > deadline {
            return (stored, text);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Everything VictoriaMetrics holds of the record measurements, and the export's text.
fn exported(server: &Server) -> (Series, String) {
    http(server.address, "GET", "/internal/force_flush", "");
    let path = target(
        "/api/v1/export",
        &[(
            "match[]",
            r#"{__name__=~"(electricity|gas|water|heat)_.*"}"#,
        )],
    );
    let (status, body) = http(server.address, "GET", &path, "");
    assert_eq!(status, 200, "{body}");
    let mut series = Series::new();
    for line in body.lines() {
        let line: Value = serde_json::from_str(line).unwrap();
        let metric = line["metric"].as_object().unwrap();
        let labels: BTreeSet<&str> = metric.keys().map(String::as_str).collect();
        let known = BTreeSet::from(["__name__", "granularity", "meter", "db"]);
        assert!(labels.is_subset(&known), "unexpected labels: {metric:?}");
        let label = |key: &str| metric.get(key).map(|v| v.as_str().unwrap().to_owned());
        let key = (
            label("__name__").unwrap(),
            label("granularity").unwrap(),
            label("meter").unwrap(),
            label("db"),
        );
        let times = line["timestamps"].as_array().unwrap();
        let values = line["values"].as_array().unwrap();
        let points = times
            .iter()
            .zip(values)
            .map(|(t, v)| (t.as_i64().unwrap(), v.as_f64().unwrap()));
        series.entry(key).or_default().extend(points);
    }
    series
        .values_mut()
        .for_each(|points| points.sort_by_key(|p| p.0));
    (series, body)
}

/// A replay of the spring-forward night at quarter-hour consent, every record on stdout,
/// and `sinks` (TOML) besides.
fn replay_config(capture: &Path, sinks: &str) -> String {
    let sinks = format!(
        r#"
        [[sinks]]
        name = "screen"
        type = "stdout"
        max_granularity = "quarter_hour"
        {sinks}
        "#
    );
    crate::replay_config(capture, "max", &sinks)
}

fn capture(dir: &Path) -> PathBuf {
    write_capture(
        dir,
        Style::Dsmr4,
        "2026-03-28T20:00:00Z",
        "2026-03-29T04:00:00Z",
    )
}

fn at_most_daily(records: &[Value]) -> Vec<Value> {
    let coarse = |r: &&Value| matches!(r["granularity"].as_str(), Some("billing" | "daily"));
    records.iter().filter(coarse).cloned().collect()
}

#[test]
fn victoria_metrics_holds_every_record_through_both_write_apis() {
    let dir = scratch("influx-vm");
    let vm = victoria_metrics(&dir, free_address());
    let sinks = format!(
        r#"
        [[sinks]]
        name = "v2"
        type = "influxdb"
        api = "v2"
        url = "http://{address}"
        org = "household"
        max_granularity = "quarter_hour"

        [[sinks]]
        name = "v1"
        type = "influxdb"
        api = "v1"
        url = "http://{address}/"
        database = "daily_only"
        gzip = false
        batch_records = 7
        max_granularity = "daily"
        "#,
        address = vm.address
    );
    let finished = Daemon::start(&dir, &replay_config(&capture(&dir), &sinks)).wait();
    assert!(finished.status.success(), "{}", finished.stderr);

    let records = printed(&finished.stdout);
    let kinds = |g: &str| records.iter().filter(|r| r["granularity"] == g).count();
    assert_eq!(
        (kinds("quarter_hour"), kinds("daily")),
        (40, 2),
        "32 + 8 quarter hours, a midnight"
    );
    // The v2 sink's series carry no db label (VictoriaMetrics drops the bucket); the v1
    // sink's carry its database, and none is finer than its daily ceiling.
    let mut expected = expected_series(&records, None);
    expected.extend(expected_series(
        &at_most_daily(&records),
        Some("daily_only"),
    ));
    let (stored, text) = exported_as(&vm, &expected);
    assert_eq!(stored, expected);
    for id in METER_IDS {
        assert!(
            !text.contains(&hex(id)) && !text.contains(id),
            "{id} in:\n{text}"
        );
    }
    assert!(
        !finished.stderr.contains("retrying"),
        "no write failed: {}",
        finished.stderr
    );
}

#[test]
fn records_wait_for_a_server_that_is_down_and_all_arrive() {
    let dir = scratch("influx-outage");
    let address = free_address();
    let sinks = format!(
        r#"
        [[sinks]]
        name = "v2"
        type = "influxdb"
        api = "v2"
        url = "http://{address}"
        org = "household"
        flush_interval_ms = 50
        max_granularity = "quarter_hour"
        "#
    );
    let daemon = Daemon::start(&dir, &replay_config(&capture(&dir), &sinks));
    daemon.wait_for_log("write failed, retrying", 1, PATIENCE);
    let vm = victoria_metrics(&dir, address);
    let finished = daemon.wait();
    assert!(finished.status.success(), "{}", finished.stderr);

    let records = printed(&finished.stdout);
    assert_eq!(records.len(), 42, "{}", finished.stdout);
    let expected = expected_series(&records, None);
    assert_eq!(exported_as(&vm, &expected).0, expected);
    assert!(
        !finished.stderr.contains("NOT WRITTEN"),
        "{}",
        finished.stderr
    );
}

/// An InfluxDB 1.x with an admin, database `p1guard` with a retention policy per
/// granularity, and a user `p1guard` who may write to it.
fn influxd_for_p1guard(dir: &Path) -> Server {
    let server = influxd(dir);
    // The first user may be created without credentials, and must be an admin.
    let (status, body) = http(
        server.address,
        "POST",
        &target(
            "/query",
            &[(
                "q",
                "CREATE USER admin WITH PASSWORD 'admin-pw' WITH ALL PRIVILEGES",
            )],
        ),
        "",
    );
    assert_eq!(status, 200, "{body}");
    influxql(&server, r#"CREATE DATABASE "p1guard""#);
    // The capture is dated in the past: keep everything, or the server refuses it as
    // beyond retention.
    for granularity in ["billing", "daily", "quarter_hour"] {
        influxql(
            &server,
            &format!(
                r#"CREATE RETENTION POLICY "{granularity}" ON "p1guard" DURATION INF REPLICATION 1"#
            ),
        );
    }
    influxql(&server, "CREATE USER p1guard WITH PASSWORD 'writer-pw'");
    influxql(&server, r#"GRANT WRITE ON "p1guard" TO "p1guard""#);
    server
}

/// A v1 sink writing to `database` as `user`, whose password is in the environment.
fn v1_sink(server: &Server, database: &str, user: &str) -> String {
    format!(
        r#"
        [[sinks]]
        name = "influx"
        type = "influxdb"
        api = "v1"
        url = "http://{}"
        database = "{database}"
        username = "{user}"
        password = {{ env = "P1GUARD_TEST_INFLUX_PASSWORD" }}
        max_granularity = "quarter_hour"
        "#,
        server.address
    )
}

fn password(password: &str) -> [(&str, &str); 1] {
    [("P1GUARD_TEST_INFLUX_PASSWORD", password)]
}

/// One stored point: (retention policy, measurement, time, tags and fields).
type Point = (String, String, i64, BTreeMap<String, String>);

/// A tag or field as text, numbers as floats (JSON has `0.0` where InfluxDB says `0`).
fn cell(value: &Value) -> String {
    match value {
        Value::Number(n) => n.as_f64().unwrap().to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[test]
fn influxdb_1_holds_each_granularity_in_its_own_retention_policy() {
    let dir = scratch("influx-v1");
    let server = influxd_for_p1guard(&dir);
    let config = replay_config(&capture(&dir), &v1_sink(&server, "p1guard", "p1guard"));
    let finished = Daemon::start_with_env(&dir, &config, &password("writer-pw")).wait();
    assert!(finished.status.success(), "{}", finished.stderr);

    let mut expected: BTreeSet<Point> = BTreeSet::new();
    for record in printed(&finished.stdout) {
        let text = |key: &str| record[key].as_str().unwrap().to_owned();
        let mut columns: BTreeMap<String, String> = record["values"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, v)| (name.clone(), cell(v)))
            .collect();
        for key in ["granularity", "meter", "quality"] {
            columns.insert(key.into(), text(key));
        }
        let time = timestamp(&text("time")).as_second();
        expected.insert((text("granularity"), text("kind"), time, columns));
    }
    let mut stored: BTreeSet<Point> = BTreeSet::new();
    for rp in ["autogen", "billing", "daily", "quarter_hour"] {
        for kind in ["electricity", "gas"] {
            let results = influxql(
                &server,
                &format!(r#"SELECT * FROM "p1guard"."{rp}"."{kind}""#),
            );
            let Some(series) = results["results"][0]["series"].as_array() else {
                continue;
            };
            for one in series {
                let names = one["columns"].as_array().unwrap();
                for row in one["values"].as_array().unwrap() {
                    let row = row.as_array().unwrap();
                    let columns = names.iter().zip(row).skip(1).filter(|(_, v)| !v.is_null());
                    let columns = columns
                        .map(|(name, v)| (name.as_str().unwrap().to_owned(), cell(v)))
                        .collect();
                    stored.insert((rp.into(), kind.into(), row[0].as_i64().unwrap(), columns));
                }
            }
        }
    }
    assert_eq!(
        expected.len(),
        42,
        "32 + 8 quarter hours, midnight for both meters"
    );
    assert_eq!(stored, expected);
}

#[test]
fn a_write_influxdb_refuses_is_dropped_with_a_clear_line() {
    let dir = scratch("influx-refused");
    let server = influxd_for_p1guard(&dir);
    let config = replay_config(&capture(&dir), &v1_sink(&server, "missing", "admin"));
    let finished = Daemon::start_with_env(&dir, &config, &password("admin-pw")).wait();
    assert!(finished.status.success(), "{}", finished.stderr);

    let refused = r#"records dropped, the store refused with status 404: {"error":"database not found: \"missing\""}"#;
    assert!(finished.stderr.contains(refused), "{}", finished.stderr);
    assert!(!finished.stderr.contains("retrying"), "{}", finished.stderr);
    let printed = printed(&finished.stdout);
    let count = |g: &str| printed.iter().filter(|r| r["granularity"] == g).count() as u64;
    assert_eq!(
        count_after(&finished.stderr, "sink influx:", "NOT WRITTEN daily"),
        count("daily")
    );
    assert_eq!(
        count_after(&finished.stderr, "sink influx:", "quarter_hour"),
        count("quarter_hour")
    );
    assert!(
        finished
            .stderr
            .contains("sink influx: written none; NOT WRITTEN"),
        "{}",
        finished.stderr
    );
}
