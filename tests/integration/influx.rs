//! The InfluxDB sink end to end against real servers started on free ports: VictoriaMetrics
//! for the v2 write API (and the v1 one, whose `db` it keeps as a label), InfluxDB 1.x for
//! the v1 API with authentication and a retention policy per granularity. What the servers
//! hold is compared with the stdout sink's records of the same run; so is what `export`
//! reads back from them, before `erase` leaves only the billing records the fiscal retention
//! keeps.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jiff::tz::TimeZone;
use jiff::{SignedDuration, ToSpan as _};
use p1guard_conduct::IdentityKey;
use p1guard_simulator::{MeterSpec, Style};
use serde_json::Value;

use crate::daemon::{Daemon, count_after, require};
use crate::run::write_capture;
use crate::{free_address, p1guard, scratch};

const PATIENCE: Duration = Duration::from_secs(30);

/// The simulated meter's ids as sent (hex-encoded): never in a pseudonymous store.
const METER_IDS: [&str; 2] = ["E0053000012345621", "G0053000012345621"];

fn hex(id: &str) -> String {
    id.bytes().map(|b| format!("{b:02X}")).collect()
}

/// An HTTP/1.0 request (so the answer is neither chunked nor kept alive): status and body.
pub(crate) fn http(address: SocketAddr, method: &str, target: &str, body: &str) -> (u16, String) {
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
pub(crate) fn target(path: &str, query: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("http://test").unwrap();
    url.set_path(path);
    url.query_pairs_mut().extend_pairs(query);
    format!("{}?{}", url.path(), url.query().unwrap_or(""))
}

/// A server process on a free port with its data in a scratch directory; killed on drop.
pub(crate) struct Server {
    binary: PathBuf,
    args: Vec<String>,
    pub(crate) address: SocketAddr,
    /// A path that answers 2xx once the server is ready.
    health: &'static str,
    pub(crate) child: Option<Child>,
}

impl Server {
    /// Starts `binary` with `args`, then waits until `GET health` succeeds.
    pub(crate) fn start(
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
    pub(crate) fn restart(&mut self) {
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

/// VictoriaMetrics on `address`, keeping everything (the captures are dated in the past), and
/// one sample per instant of a series, as the README asks of it.
pub(crate) fn victoria_metrics(dir: &Path, address: SocketAddr) -> Server {
    let binary = require("victoria-metrics", "victoria-metrics");
    let args = [
        "-httpListenAddr",
        &address.to_string(),
        "-storageDataPath",
        &dir.join("vm-data").display().to_string(),
        "-retentionPeriod",
        "100y",
        "-dedup.minScrapeInterval",
        "1ms",
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
pub(crate) fn printed(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON record"))
        .collect()
}

/// One stored number: (series name, granularity, meter, db label) -> [(time, value)].
pub(crate) type Series = BTreeMap<(String, String, String, Option<String>), Vec<(i64, f64)>>;

/// What VictoriaMetrics should hold for `records`: a series per kind and value, the
/// quality too (a string field, which VictoriaMetrics stores as 0).
pub(crate) fn expected_series(records: &[Value], db: Option<&str>) -> Series {
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
pub(crate) fn exported_as(server: &Server, expected: &Series) -> (Series, String) {
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
    // Both APIs' start checks pass: VictoriaMetrics serves no bucket lookup, so the v2
    // sink's check is an empty write there too.
    let accepted = "answers and accepts p1guard's credentials";
    assert_eq!(
        finished.stderr.matches(accepted).count(),
        2,
        "{}",
        finished.stderr
    );
    assert!(
        !finished.stderr.contains("not reachable at start"),
        "{}",
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
    // Said at start, and said again when it recovered.
    for line in [
        "not reachable at start, records wait for it",
        "writing again after",
    ] {
        assert!(
            finished.stderr.contains(line),
            "{line:?}: {}",
            finished.stderr
        );
    }

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

/// An InfluxDB 1.x with an admin (`admin`, `admin-pw`) and database `p1guard`.
fn influxd_with_admin(dir: &Path) -> Server {
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
    server
}

/// Writes line protocol into `policy` of database `p1guard` as the admin.
fn write_as_admin(server: &Server, policy: &str, lines: &str) {
    let query = [
        ("db", "p1guard"),
        ("rp", policy),
        ("precision", "s"),
        ("u", "admin"),
        ("p", "admin-pw"),
    ];
    let (status, body) = http(server.address, "POST", &target("/write", &query), lines);
    assert_eq!(status, 204, "{body}");
}

/// An InfluxDB 1.x with an admin, database `p1guard` with a retention policy per
/// granularity, and a user `p1guard` who may write to it.
fn influxd_for_p1guard(dir: &Path) -> Server {
    let server = influxd_with_admin(dir);
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
    // A user who may only write cannot see the retention policies, let alone create them:
    // said once, at the first write.
    let warning = "cannot check the retention policies";
    assert_eq!(
        finished.stderr.matches(warning).count(),
        1,
        "{}",
        finished.stderr
    );
    // Deleting what is past its retention needs only the right to write.
    assert!(
        !finished
            .stderr
            .contains("cannot delete records past their retention"),
        "{}",
        finished.stderr
    );
    // Checked at start: the server is there and takes the writer's credentials.
    assert!(
        finished
            .stderr
            .contains("answers and accepts p1guard's credentials"),
        "{}",
        finished.stderr
    );

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
fn a_wrong_password_is_said_at_start() {
    let dir = scratch("influx-password");
    let server = influxd_for_p1guard(&dir);
    let config = replay_config(&capture(&dir), &v1_sink(&server, "p1guard", "p1guard"));
    let finished = Daemon::start_with_env(&dir, &config, &password("wrong")).wait();
    let said = "not reachable at start, records wait for it: http://";
    let line = finished.stderr.lines().find(|l| l.contains(said));
    assert!(
        line.is_some_and(|l| l.contains("refuses p1guard's credentials (401 Unauthorized)")),
        "{}",
        finished.stderr
    );
    assert!(
        !finished.stderr.contains("wrong"),
        "the password is never logged"
    );
}

/// A database missing on the server (one restored, or started empty) is no reason to drop
/// records: p1guard creates it, with a retention policy per granularity, as Telegraf creates
/// its database, and every record arrives.
#[test]
fn a_missing_database_is_created_and_every_record_arrives() {
    let dir = scratch("influx-missing-database");
    let server = influxd_for_p1guard(&dir);
    // Yesterday evening: inside the quarter-hour retention p1guard gives the new database.
    let today = jiff::Timestamp::now().as_second() / 86_400 * 86_400;
    let midnight = jiff::Timestamp::from_second(today).unwrap();
    let from = (midnight - SignedDuration::from_hours(4)).to_string();
    let to = (midnight + SignedDuration::from_hours(1)).to_string();
    let capture = write_capture(&dir, Style::Dsmr4, &from, &to);
    let config = replay_config(&capture, &v1_sink(&server, "restored", "admin"));
    let finished = Daemon::start_with_env(&dir, &config, &password("admin-pw")).wait();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        !finished.stderr.contains("NOT WRITTEN"),
        "{}",
        finished.stderr
    );
    let policies = influxql(&server, r#"SHOW RETENTION POLICIES ON "restored""#);
    let names: BTreeSet<String> = policies["results"][0]["series"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[0].as_str().unwrap().to_owned())
        .collect();
    for policy in ["billing", "daily", "quarter_hour", "live"] {
        assert!(names.contains(policy), "{policy}: {policies}");
    }
    let mut stored = 0;
    for rp in ["billing", "daily", "quarter_hour"] {
        for kind in ["electricity", "gas"] {
            let count = influxql(
                &server,
                &format!(r#"SELECT count("quality") FROM "restored"."{rp}"."{kind}""#),
            );
            stored += count["results"][0]["series"][0]["values"][0][1]
                .as_u64()
                .unwrap_or(0);
        }
    }
    assert_eq!(stored, printed(&finished.stdout).len() as u64);
}

/// The times of the records of `meter` InfluxDB holds in `policy` of database `p1guard`.
fn times_held(server: &Server, policy: &str, meter: &str) -> Vec<i64> {
    let select =
        format!(r#"SELECT "quality" FROM "p1guard"."{policy}"./.*/ WHERE "meter" = '{meter}'"#);
    let results = influxql(server, &select);
    let mut times: Vec<i64> = (results["results"][0]["series"].as_array().into_iter())
        .flatten()
        .flat_map(|series| series["values"].as_array().unwrap())
        .map(|row| row[0].as_i64().unwrap())
        .collect();
    times.sort_unstable();
    times
}

/// The shard group duration of each retention policy of database `p1guard`.
fn shard_groups(server: &Server) -> BTreeMap<String, String> {
    let policies = influxql(server, r#"SHOW RETENTION POLICIES ON "p1guard""#);
    let rows = policies["results"][0]["series"][0]["values"].as_array();
    (rows.into_iter().flatten())
        .map(|row| (cell(&row[0]), cell(&row[2])))
        .collect()
}

/// InfluxDB drops records only with their whole shard group, once its end is past the
/// retention: in the policies an earlier p1guard created (InfluxDB's default groups, a day
/// long for a week's policy), live records stayed up to eight days. p1guard deletes what is
/// past its retention itself, as the SQLite store does, and gives the live policy groups of
/// an hour; records inside their retention stay.
#[test]
fn influxdb_1_keeps_no_record_past_its_retention() {
    let dir = scratch("influx-v1-retention");
    let server = influxd_with_admin(&dir);
    let now = jiff::Timestamp::now().as_second();
    let midnight = now / 86_400 * 86_400;
    let meter = "0123456789abcdef0123456789abcdef";
    // Each policy as an earlier p1guard created it, holding a record dated the last UTC
    // midnight its retention ago (past it, but in a day-long group that ends after it) and
    // one a day inside it. Written while the policy kept a day more: InfluxDB refuses
    // records older than a policy's retention.
    let mut expected = BTreeMap::new();
    for (policy, days) in [("live", 7), ("quarter_hour", 90)] {
        let names = format!(r#""{policy}" ON "p1guard""#);
        influxql(
            &server,
            &format!(
                "CREATE RETENTION POLICY {names} DURATION {}d REPLICATION 1",
                days + 1
            ),
        );
        let (stale, inside) = (midnight - days * 86_400, now - (days - 1) * 86_400);
        let lines: String = [stale, inside]
            .map(|time| {
                format!(
                    "electricity,granularity={policy},meter={meter} quality=\"measured\" {time}\n"
                )
            })
            .concat();
        write_as_admin(&server, policy, &lines);
        influxql(
            &server,
            &format!("ALTER RETENTION POLICY {names} DURATION {days}d"),
        );
        // InfluxDB itself keeps the stale record: the defect.
        assert_eq!(
            times_held(&server, policy, meter),
            [stale, inside],
            "{policy}"
        );
        expected.insert(policy, vec![inside]);
    }
    assert_eq!(shard_groups(&server)["live"], "24h0m0s");

    // Yesterday evening: every record of the run is inside its retention, and stays.
    let capture = write_capture(
        &dir,
        Style::Dsmr4,
        &jiff::Timestamp::from_second(midnight - 4 * 3600)
            .unwrap()
            .to_string(),
        &jiff::Timestamp::from_second(midnight + 3600)
            .unwrap()
            .to_string(),
    );
    let config = replay_config(&capture, &v1_sink(&server, "p1guard", "admin"));
    let finished = Daemon::start_with_env(&dir, &config, &password("admin-pw")).wait();
    assert!(finished.status.success(), "{}", finished.stderr);
    for (policy, inside) in &expected {
        assert_eq!(&times_held(&server, policy, meter), inside, "{policy}");
    }
    assert_eq!(
        shard_groups(&server),
        BTreeMap::from(
            [
                ("autogen", "168h0m0s"),
                ("billing", "168h0m0s"),
                ("daily", "168h0m0s"),
                ("quarter_hour", "24h0m0s"),
                ("live", "1h0m0s"),
            ]
            .map(|(policy, hours)| (policy.to_owned(), hours.to_owned()))
        )
    );
    assert!(
        finished
            .stderr
            .contains("shortened the shard groups of retention policy live from 24h0m0s to 1 h"),
        "{}",
        finished.stderr
    );
    let printed = printed(&finished.stdout);
    let mut stored = 0;
    for policy in ["billing", "daily", "quarter_hour"] {
        let count = influxql(
            &server,
            &format!(
                r#"SELECT count("quality") FROM "p1guard"."{policy}"./.*/ WHERE "meter" != '{meter}'"#
            ),
        );
        stored += (count["results"][0]["series"].as_array().into_iter())
            .flatten()
            .map(|series| series["values"][0][1].as_u64().unwrap())
            .sum::<u64>();
    }
    assert_eq!(stored, printed.len() as u64);
}

/// A write the server refuses for good (here a field of another type than the one it holds)
/// is dropped, counted as NOT WRITTEN and said in one clear line, and the others are written.
/// The server stores the rest of such a partial write, and the counts say so: what is counted
/// written is what the server holds.
#[test]
fn a_write_influxdb_refuses_is_dropped_with_a_clear_line() {
    let dir = scratch("influx-refused");
    let server = influxd_for_p1guard(&dir);
    // The quarter-hour electricity series already holds its tariff-1 energy as text, in the
    // shard (InfluxDB types fields per shard) the capture's records go to.
    let (status, body) = http(
        server.address,
        "POST",
        &target(
            "/write",
            &[
                ("db", "p1guard"),
                ("rp", "quarter_hour"),
                ("precision", "s"),
                ("u", "admin"),
                ("p", "admin-pw"),
            ],
        ),
        // 2026-03-28T21:00:00Z, inside the capture.
        "electricity energy_import_t1_kwh=\"text\" 1774731600",
    );
    assert_eq!(status, 204, "{body}");
    let config = replay_config(&capture(&dir), &v1_sink(&server, "p1guard", "admin"));
    let finished = Daemon::start_with_env(&dir, &config, &password("admin-pw")).wait();
    // Records were given up: the run says so in its exit status too.
    assert_eq!(finished.status.code(), Some(1), "{}", finished.stderr);
    let refused = "records dropped, the store refused with status 400: ";
    let line = finished.stderr.lines().find(|l| l.contains(refused));
    assert!(
        line.is_some_and(|l| l.contains("field type conflict")),
        "{}",
        finished.stderr
    );
    assert!(!finished.stderr.contains("retrying"), "{}", finished.stderr);
    let printed = printed(&finished.stdout);
    let count = |g: &str| printed.iter().filter(|r| r["granularity"] == g).count() as u64;
    let not_written = count_after(&finished.stderr, "sink influx:", "NOT WRITTEN quarter_hour");
    // `written daily N, quarter_hour M; NOT WRITTEN quarter_hour K`
    let written = count_after(&finished.stderr, "sink influx:", ", quarter_hour");
    assert!(not_written > 0, "{}", finished.stderr);
    assert_eq!(written + not_written, count("quarter_hour"));
    let mut held = 0;
    for kind in ["electricity", "gas"] {
        let query = format!(r#"SELECT count("quality") FROM "p1guard"."quarter_hour"."{kind}""#);
        let answer = influxql(&server, &query);
        held += answer["results"][0]["series"][0]["values"][0][1]
            .as_u64()
            .unwrap_or(0);
    }
    assert_eq!(written, held, "{}", finished.stderr);
    assert_eq!(
        count_after(&finished.stderr, "sink influx:", "written daily"),
        count("daily")
    );
}

// The rights commands against the servers: `p1guard run` fills them, then `export`, `audit`
// and `erase` go through the binary, and what the server holds afterwards is asked of it
// directly.

/// The identity key of the rights tests, so that they can name the meter's pseudonym.
const KEY: [u8; 32] = [5; 32];

/// The meter whose records are erased (with its gas meter's), as printed on it, and a
/// neighbour's, whose records stay.
const ERASED: &str = "E0053000012345621";
const NEIGHBOUR: &str = "E0053000087654321";

fn spec(id: &str, seed: u64) -> MeterSpec {
    MeterSpec {
        style: Style::Dsmr4,
        equipment_id: id.into(),
        gas_id: Some(id.replacen('E', "G", 1)),
        seed,
    }
}

fn pseudonym(id: &str) -> String {
    IdentityKey::from_bytes(KEY)
        .pseudonym(hex(id).as_bytes())
        .to_string()
}

/// The last local midnight on the 1st of a month at least a day ago: with monthly billing,
/// a capture around it has billing, daily and quarter-hour records, all inside their
/// default retention (the audit checks it).
fn last_month_start() -> jiff::Timestamp {
    let amsterdam = TimeZone::get("Europe/Amsterdam").unwrap();
    let yesterday = amsterdam.to_datetime(jiff::Timestamp::now()).date() - 1.day();
    let midnight = yesterday
        .first_of_month()
        .to_datetime(jiff::civil::Time::midnight());
    amsterdam
        .to_ambiguous_timestamp(midnight)
        .unambiguous()
        .unwrap()
}

/// Writes a configuration replaying both meters three hours either side of
/// [`last_month_start`] into stdout and `sinks` (TOML), with the key and the consent registry
/// in `dir`; its path.
fn rights_config(dir: &Path, sinks: &str) -> PathBuf {
    let boundary = last_month_start();
    let (from, to) = (
        boundary - SignedDuration::from_hours(3),
        boundary + SignedDuration::from_hours(3),
    );
    let [erased, neighbour] = [(ERASED, 53), (NEIGHBOUR, 7)].map(|(id, seed)| {
        let path = dir.join(format!("{id}.txt"));
        std::fs::write(
            &path,
            p1guard_simulator::stream(spec(id, seed), from, to, Vec::new()),
        )
        .unwrap();
        path
    });
    std::fs::write(dir.join("identity.key"), hex_key()).unwrap();
    let config = format!(
        r#"
        [identity]
        key_file = "{dir}/identity.key"

        [consent]
        default = "quarter_hour"
        billing_cadence = "monthly"
        registry = "{dir}/consent.sqlite"

        [[sources]]
        name = "erased"
        type = "replay"
        files = [{erased:?}]
        speed = "max"

        [[sources]]
        name = "neighbour"
        type = "replay"
        files = [{neighbour:?}]
        speed = "max"

        [[sinks]]
        name = "screen"
        type = "stdout"
        max_granularity = "quarter_hour"
        {sinks}
        "#,
        dir = dir.display(),
    );
    let path = dir.join("p1guard.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn hex_key() -> String {
    KEY.map(|b| format!("{b:02x}")).concat()
}

/// Runs `p1guard` with `args`; its stdout, after checking it exited with `status`.
fn command(args: &[&str], status: i32) -> String {
    let output = p1guard(args);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        output.status.code(),
        Some(status),
        "p1guard {args:?}\n--- stdout:\n{stdout}\n--- stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Records as a set of their JSON texts, for comparisons that ignore order.
fn texts(records: &[Value]) -> BTreeSet<String> {
    records.iter().map(Value::to_string).collect()
}

/// What a rights round saw.
struct Round {
    /// Every record the run printed.
    printed: Vec<Value>,
    /// The records of [`ERASED`] the run printed, as the server keeps them.
    of_meter: Vec<Value>,
    /// `erase`'s answer for each store, by name.
    erased: BTreeMap<String, Value>,
    /// The billing record written eight years back, past the fiscal retention.
    stale: Value,
}

/// A billing record of [`ERASED`] dated eight years ago, past the fiscal retention: erasing
/// must not keep it with the recent ones. Its line protocol and its record JSON.
fn stale_billing() -> (String, Value) {
    let time = jiff::Timestamp::now() - SignedDuration::from_hours(8 * 365 * 24);
    let time = jiff::Timestamp::from_second(time.as_second()).unwrap();
    let meter = pseudonym(ERASED);
    let line = format!(
        "electricity,granularity=billing,meter={meter} energy_import_kwh=1.5,quality=\"measured\" {}\n",
        time.as_second()
    );
    let record = serde_json::json!({
        "meter": meter,
        "granularity": "billing",
        "kind": "electricity",
        "time": time.to_string(),
        "quality": "measured",
        "values": {"energy_import_kwh": 1.5},
    });
    (line, record)
}

/// `p1guard audit`, expecting `status`; its output.
fn audit(config: &Path, status: i32) -> String {
    command(&["audit", "--config", config.to_str().unwrap()], status)
}

/// `p1guard export` of `meter` (as printed or as sent): its records.
fn export(config: &Path, meter: &str) -> Vec<Value> {
    let config = config.to_str().unwrap();
    let text = command(&["export", "--config", config, "--meter", meter], 0);
    let export: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(export["meter"], pseudonym(ERASED).as_str());
    export["records"].as_array().unwrap().clone()
}

/// `run`, then `audit` (clean) and `export` of [`ERASED`] (checked against what the run
/// printed, as `held` says each record is kept), then [`stale_billing`] is given to `stale`
/// to write, and `export` shows it too; then `erase`.
fn rights_round(
    config: &Path,
    run: Daemon,
    held: impl Fn(&Value) -> Value,
    stale: impl FnOnce(&str),
) -> Round {
    let finished = run.wait();
    assert!(finished.status.success(), "{}", finished.stderr);
    let printed = printed(&finished.stdout);
    let name = pseudonym(ERASED);
    let of_meter: Vec<Value> = printed
        .iter()
        .filter(|r| r["meter"] == name.as_str())
        .map(&held)
        .collect();
    let count = |g: &str| of_meter.iter().filter(|r| r["granularity"] == g).count();
    assert_eq!(
        (count("billing"), count("daily"), count("quarter_hour")),
        (2, 2, 24 + 6),
        "electricity and gas at a month's first midnight, and six hours of quarter hours"
    );
    let audited = audit(config, 0);
    assert!(audited.contains(r#""clean":true"#), "{audited}");
    assert_eq!(texts(&export(config, ERASED)), texts(&of_meter));

    let (line, record) = stale_billing();
    stale(&line);
    let mut with_stale = of_meter.clone();
    with_stale.push(held(&record));
    assert_eq!(texts(&export(config, ERASED)), texts(&with_stale));

    let config = config.to_str().unwrap();
    let answer = command(&["erase", "--config", config, "--meter", ERASED], 0);
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let erased = answer["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|store| (store["store"].as_str().unwrap().to_owned(), store.clone()))
        .collect();
    Round {
        printed,
        of_meter,
        erased,
        stale: record,
    }
}

impl Round {
    /// The erased meter's billing records.
    fn billing(&self) -> Vec<Value> {
        let billing = |r: &&Value| r["granularity"] == "billing";
        self.of_meter.iter().filter(billing).cloned().collect()
    }
}

/// The records of `meter` in `printed` of each granularity: (billing, other).
fn split(printed: &[Value], meter: &str, ceiling: &[&str]) -> (u64, u64) {
    let of = |billing: bool| {
        printed
            .iter()
            .filter(|r| r["meter"] == meter)
            .filter(|r| ceiling.contains(&r["granularity"].as_str().unwrap()))
            .filter(|r| (r["granularity"] == "billing") == billing)
            .count() as u64
    };
    (of(true), of(false))
}

#[test]
fn influxdb_1_erases_all_but_fiscal_billing_and_reads_back_what_it_holds() {
    let dir = scratch("influx-v1-rights");
    let server = influxd_with_admin(&dir);
    std::fs::write(dir.join("influx-password"), "admin-pw").unwrap();
    // No retention policies yet: p1guard creates them, its user being an admin.
    let sinks = format!(
        r#"
        [[sinks]]
        name = "influx"
        type = "influxdb"
        api = "v1"
        url = "http://{}"
        username = "admin"
        password = {{ file = "{}/influx-password" }}
        max_granularity = "quarter_hour"
        "#,
        server.address,
        dir.display()
    );
    let config = rights_config(&dir, &sinks);
    let run = Daemon::start(&dir, &std::fs::read_to_string(&config).unwrap());
    // The stale record goes where an earlier configuration could have put it: p1guard
    // reads every retention policy, and DELETE spans them.
    let write_stale = |line: &str| write_as_admin(&server, "autogen", line);
    let round = rights_round(&config, run, Value::clone, write_stale);

    let policies = influxql(&server, r#"SHOW RETENTION POLICIES ON "p1guard""#);
    let durations: BTreeMap<&str, &str> = policies["results"][0]["series"][0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row[0].as_str().unwrap(), row[1].as_str().unwrap()))
        .collect();
    assert_eq!(
        durations,
        BTreeMap::from([
            ("autogen", "0s"),
            ("billing", "61368h0m0s"),
            ("daily", "17520h0m0s"),
            ("quarter_hour", "2160h0m0s"),
            ("live", "168h0m0s"),
        ]),
        "privacy.md's retention: 2557, 730, 90 and 7 days"
    );

    // Erased: all but the billing records inside the fiscal retention, the stale one too.
    let name = pseudonym(ERASED);
    let (billing, other) = split(&round.printed, &name, &GRANULARITIES);
    let answer = &round.erased["influx"];
    assert_eq!(
        (answer["erased"].as_u64(), answer["kept"].as_u64()),
        (Some(other + 1), Some(billing)),
        "{answer}"
    );
    assert!(answer["kept_because"].is_string(), "{answer}");
    let audited = audit(&config, 0);
    assert!(audited.contains(r#""clean":true"#), "{audited}");
    // The meter as sent (hex) names the same meter as printed.
    assert_eq!(
        texts(&export(&config, &hex(ERASED))),
        texts(&round.billing())
    );

    // The server holds the erased meter's billing records only; the neighbour's all.
    let rows = |meter: &str| -> BTreeMap<String, usize> {
        let mut rows = BTreeMap::new();
        for rp in ["autogen", "billing", "daily", "quarter_hour", "live"] {
            let results = influxql(
                &server,
                &format!(r#"SELECT * FROM "p1guard"."{rp}"./.*/ WHERE "meter" = '{meter}'"#),
            );
            for series in results["results"][0]["series"]
                .as_array()
                .into_iter()
                .flatten()
            {
                *rows.entry(rp.to_owned()).or_default() +=
                    series["values"].as_array().unwrap().len();
            }
        }
        rows
    };
    assert_eq!(rows(&name), BTreeMap::from([("billing".to_owned(), 2)]));
    let neighbour = pseudonym(NEIGHBOUR);
    let (billing, other) = split(&round.printed, &neighbour, &GRANULARITIES);
    assert_eq!(
        rows(&neighbour).values().sum::<usize>() as u64,
        billing + other
    );
}

/// The granularities a quarter-hour sink holds.
const GRANULARITIES: [&str; 3] = ["billing", "daily", "quarter_hour"];

/// A record held by two stores is exported once, as the one that kept the most of it:
/// SQLite's, with its `quality`, rather than VictoriaMetrics', which keeps no string field.
#[test]
fn a_record_in_two_stores_is_exported_once_as_fully_as_one_kept_it() {
    let dir = scratch("influx-export-twice");
    let vm = victoria_metrics(&dir, free_address());
    let sinks = format!(
        r#"
        [[sinks]]
        name = "vm"
        type = "influxdb"
        api = "v2"
        url = "http://{address}"
        org = "household"
        max_granularity = "quarter_hour"

        [[sinks]]
        name = "store"
        type = "sqlite"
        path = "{dir}/store.sqlite"
        max_granularity = "quarter_hour"
        "#,
        address = vm.address,
        dir = dir.display(),
    );
    let config = rights_config(&dir, &sinks);
    let finished = Daemon::start(&dir, &std::fs::read_to_string(&config).unwrap()).wait();
    assert!(finished.status.success(), "{}", finished.stderr);
    let name = pseudonym(ERASED);
    let printed: Vec<Value> = (printed(&finished.stdout).into_iter())
        .filter(|r| r["meter"] == name.as_str())
        .collect();
    assert_eq!(texts(&export(&config, ERASED)), texts(&printed));
}

#[test]
fn victoria_metrics_erases_whole_series_and_keeps_fiscal_billing_ones() {
    let dir = scratch("influx-vm-rights");
    let vm = victoria_metrics(&dir, free_address());
    // Both APIs on one server: each sink reads back and erases its own series only (the
    // v1 sink's carry its database as the db label), as the audit of the daily one shows.
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
        url = "http://{address}"
        database = "daily_only"
        max_granularity = "daily"
        "#,
        address = vm.address
    );
    let config = rights_config(&dir, &sinks);
    let run = Daemon::start(&dir, &std::fs::read_to_string(&config).unwrap());
    // VictoriaMetrics keeps no string field: the quality is not read back.
    let without_quality = |record: &Value| {
        let mut record = record.clone();
        record.as_object_mut().unwrap().remove("quality");
        record
    };
    // The stale record joins the v2 sink's electricity billing series (no db label).
    let write_stale = |line: &str| {
        let (status, body) = http(vm.address, "POST", "/api/v2/write?precision=s", line);
        assert_eq!(status, 204, "{body}");
    };
    let round = rights_round(&config, run, without_quality, write_stale);

    // Each sink erased its own series but the billing ones, which are kept whole: with the
    // recent billing record, the stale one stays, and the answer and the audit say so.
    let name = pseudonym(ERASED);
    for (store, ceiling, stuck) in [
        ("v2", &GRANULARITIES[..], true),
        ("v1", &GRANULARITIES[..2], false),
    ] {
        let (billing, other) = split(&round.printed, &name, ceiling);
        let answer = &round.erased[store];
        assert_eq!(
            (answer["erased"].as_u64(), answer["kept"].as_u64()),
            (Some(other), Some(billing)),
            "{answer}"
        );
        let note = answer["note"].as_str().unwrap_or_default();
        assert!(note.contains("whole series"), "{answer}");
        assert_eq!(note.contains("1 record"), stuck, "{answer}");
    }
    let stale = round.stale.clone();
    let audited = audit(&config, 1);
    let violations: Vec<Value> = audited
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|v: &Value| v.get("reason").is_some())
        .collect();
    assert_eq!(violations.len(), 1, "{audited}");
    assert_eq!(violations[0]["store"], "v2");
    assert_eq!(violations[0]["time"], stale["time"]);
    let reason = violations[0]["reason"].as_str().unwrap();
    assert!(reason.contains("erasure ledger"), "{reason}");
    let mut left = round.billing();
    left.push(without_quality(&stale));
    assert_eq!(texts(&export(&config, &hex(ERASED))), texts(&left));

    // What the server holds: the neighbour's records all, the erased meter's billing ones.
    let neighbour = pseudonym(NEIGHBOUR);
    let kept = |r: &&Value| r["meter"] == neighbour.as_str() || r["granularity"] == "billing";
    let kept: Vec<Value> = round.printed.iter().filter(kept).cloned().collect();
    let mut expected = expected_series(&[&kept[..], &[stale]].concat(), None);
    expected.extend(expected_series(&at_most_daily(&kept), Some("daily_only")));
    assert_eq!(exported_as(&vm, &expected).0, expected);
}
