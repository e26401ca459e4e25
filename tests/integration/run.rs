//! `p1guard run` end to end: real files, a real SQLite store, a real TCP connection, a real
//! pty pair for the serial line, and real signals.

use std::io::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use p1guard_simulator::{MeterSpec, Style};

use crate::daemon::{Daemon, count_after, require, signal};
use crate::{p1guard, scratch, sqlite_rows};

const PATIENCE: Duration = Duration::from_secs(30);

/// How a live electricity record starts on stdout: one per telegram.
const LIVE: &str = r#""granularity":"live","kind":"electricity""#;

fn meter(style: Style) -> MeterSpec {
    MeterSpec {
        style,
        equipment_id: "E0053000012345621".into(),
        gas_id: Some("G0053000012345621".into()),
        seed: 53,
    }
}

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

/// `count` telegrams of the test's DSMR 5 meter, one second apart from now: a serial or TCP
/// source trusts only meter clocks within a day of its own.
fn telegrams(count: usize) -> Vec<Vec<u8>> {
    crate::telegrams(meter(Style::Dsmr5), &crate::now(), count)
}

/// The test meter's telegrams from `from` to `to`, as `dir/capture.txt`.
pub(crate) fn write_capture(dir: &Path, style: Style, from: &str, to: &str) -> std::path::PathBuf {
    let capture = dir.join("capture.txt");
    let stream = p1guard_simulator::stream(meter(style), at(from), at(to), Vec::new());
    std::fs::write(&capture, stream).unwrap();
    capture
}

/// A replay into a SQLite store and stdout, both at quarter hours.
fn replay_config(capture: &Path, store: &Path, speed: &str) -> String {
    let sinks = format!(
        r#"
        [[sinks]]
        name = "store"
        type = "sqlite"
        path = {store:?}
        max_granularity = "quarter_hour"
        # Retention counts from today: keep the capture's old readings.
        retention_days = {{ quarter_hour = 36500, daily = 36500, billing = 36500 }}

        [[sinks]]
        type = "stdout"
        max_granularity = "quarter_hour"
        "#
    );
    crate::replay_config(capture, speed, &sinks)
}

#[test]
fn replaying_into_sqlite_twice_gives_identical_rows() {
    let dir = scratch("run-idempotent");
    let capture = write_capture(
        &dir,
        Style::Dsmr4,
        "2026-03-28T20:00:00Z",
        "2026-03-29T04:00:00Z",
    );
    let store = dir.join("store.sqlite");
    let config = replay_config(&capture, &store, "max");

    let first = Daemon::start(&dir, &config).wait();
    assert!(first.status.success(), "{}", first.stderr);
    let rows = sqlite_rows(&store);
    let second = Daemon::start(&dir, &config).wait();
    assert!(second.status.success(), "{}", second.stderr);

    // 8 hours into the spring-forward night: 32 quarter hours of electricity and 8 hours of
    // gas from 20:00Z, and a daily reading at local midnight (23:00Z).
    let count = |g: &str, k: &str| {
        rows.iter()
            .filter(|r| r.granularity == g && r.kind == k)
            .count()
    };
    assert_eq!(count("quarter_hour", "electricity"), 32);
    assert_eq!(count("quarter_hour", "gas"), 8);
    assert_eq!(count("daily", "electricity"), 1);
    assert_eq!(
        first.stdout.lines().count(),
        rows.len(),
        "stdout and the store got the same records"
    );
    assert_eq!(
        sqlite_rows(&store),
        rows,
        "a replayed boundary overwrites itself"
    );
    // A pseudonymous store never holds the meter's id (sent hex-encoded), nor the gas meter's.
    let ids = ["E0053000012345621", "G0053000012345621"]
        .map(|id| id.bytes().map(|b| format!("{b:02X}")).collect::<String>());
    for row in &rows {
        let pseudonym = row.meter.len() == 32 && row.meter.bytes().all(|b| b.is_ascii_hexdigit());
        assert!(pseudonym, "{row:?}");
        assert!(
            ids.iter().all(|id| !format!("{row:?}").contains(id)),
            "{row:?}"
        );
    }
}

/// SIGTERM, and SIGHUP (a closed terminal) alike, stop the sources; everything already read
/// reaches every sink.
#[test]
fn sigterm_or_sighup_during_a_replay_loses_nothing_already_reduced() {
    for signal in ["TERM", "HUP"] {
        let dir = scratch(&format!("run-sig{signal}"));
        let capture = write_capture(
            &dir,
            Style::Dsmr5,
            "2026-06-01T00:00:00Z",
            "2026-06-01T06:00:00Z",
        );
        let store = dir.join("store.sqlite");
        // 600× real time: six meter hours take 36 s, and a quarter hour passes every 1.5 s.
        let daemon = Daemon::start(&dir, &replay_config(&capture, &store, "600"));
        daemon.wait_for_output("\n", 4, PATIENCE);
        let finished = daemon.stop_with(signal);

        assert!(
            finished.status.success(),
            "exit 0 after SIG{signal}: {}",
            finished.stderr
        );
        let reduced = count_after(&finished.stderr, "conduct:", "quarter_hour");
        let printed = finished.stdout.lines().count() as u64;
        let stored = sqlite_rows(&store).len() as u64;
        assert!(
            finished
                .stderr
                .contains(&format!("SIG{signal}: stopping sources")),
            "{}",
            finished.stderr
        );
        assert!(reduced >= 4, "{}", finished.stderr);
        // The whole capture gives 24 quarter hours; the signal came long before its end.
        assert!(reduced < 24, "stopped early: {}", finished.stderr);
        assert_eq!(
            (printed, stored),
            (reduced, reduced),
            "every reduced record reached both sinks"
        );
    }
}

/// A household's own setup: consent live, a TCP dongle named `dongle` at `address` (with
/// `source_settings` added), every record on stdout (a sink named `screen`).
/// A cable that garbles everything for a while: telegrams whose CRC fails (found by the
/// reduce task) and telegrams cut short (found by the source's framing), twelve of each,
/// between good ones. The source logs five of them in the minute, whichever task found them,
/// skips them all and keeps the good ones.
#[test]
fn a_source_logs_bad_input_five_times_a_minute_whichever_task_finds_it() {
    let dir = scratch("run-log-limit");
    let mut capture = Vec::new();
    for (i, mut telegram) in telegrams(36).into_iter().enumerate() {
        match i % 3 {
            0 => {}
            1 => {
                // A digit of the first reading turned into another: the CRC fails.
                let at = telegram.windows(2).position(|w| w == b"*k").unwrap() - 1;
                telegram[at] = if telegram[at] == b'1' { b'2' } else { b'1' };
            }
            _ => telegram.truncate(telegram.len() / 2),
        }
        capture.extend(telegram);
    }
    let path = dir.join("capture.txt");
    std::fs::write(&path, capture).unwrap();
    let store = dir.join("store.sqlite");
    let finished = Daemon::start(&dir, &replay_config(&path, &store, "max")).wait();
    assert!(finished.status.success(), "{}", finished.stderr);
    let logged: Vec<&str> = (finished.stderr.lines())
        .filter(|line| line.contains("skipped a bad"))
        .collect();
    assert_eq!(logged.len(), 5, "{}", finished.stderr);
    // Every one was counted and skipped, and the good ones kept.
    assert!(
        (finished.stderr).contains("telegrams ok 12, crc_error 12, parse_error 12,"),
        "{}",
        finished.stderr
    );
}

fn household_over_tcp(address: std::net::SocketAddr, source_settings: &str) -> String {
    format!(
        r#"
        [consent]
        default = "live"

        [[sources]]
        name = "dongle"
        type = "tcp"
        address = "{address}"
        {source_settings}

        [[sinks]]
        name = "screen"
        type = "stdout"
        max_granularity = "live"
        "#
    )
}

#[test]
fn a_tcp_source_reconnects_after_a_drop_mid_telegram() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server_telegrams = telegrams(5);
    let server = std::thread::spawn(move || {
        // First connection: a whole telegram, then half of the next, then the line drops.
        let (mut first, _) = listener.accept().unwrap();
        first.write_all(&server_telegrams[0]).unwrap();
        first.write_all(&server_telegrams[1][..300]).unwrap();
        drop(first);
        // The reconnection: the rest, then stay connected until the test is done.
        let (mut second, _) = listener.accept().unwrap();
        for telegram in &server_telegrams[2..] {
            second.write_all(telegram).unwrap();
        }
        second
    });
    let dir = scratch("run-tcp");
    let daemon = Daemon::start(&dir, &household_over_tcp(address, ""));
    daemon.wait_for_output(LIVE, 4, PATIENCE);
    let _connection = server.join().unwrap();
    let finished = daemon.terminate();

    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(count_after(&finished.stderr, "source dongle:", "ok"), 4);
    assert_eq!(
        count_after(&finished.stderr, "source dongle:", "parse_error"),
        1,
        "the cut telegram"
    );
    assert!(
        finished
            .stderr
            .contains("connection lost (closed by the peer); reconnecting")
    );
    assert_eq!(
        finished.stdout.matches(LIVE).count(),
        4,
        "one live record per whole telegram"
    );
}

#[test]
fn a_live_source_trusts_no_meter_clock_a_day_away_from_its_own() {
    let first_of = |id: &str, from: Timestamp| {
        let spec = MeterSpec {
            equipment_id: id.into(),
            ..meter(Style::Dsmr5)
        };
        crate::telegrams(spec, &from.to_string(), 1).remove(0)
    };
    let mut sent = telegrams(4);
    let last = sent.pop().unwrap();
    sent.push(first_of("E0053000000002068", at("2068-06-01T10:00:00Z")));
    let two_days_ago = at(&crate::now()) - jiff::SignedDuration::from_hours(48);
    sent.push(first_of("E0053000000000002", two_days_ago));
    sent.push(last);
    let (address, server) = crate::dongle(sent);
    let dir = scratch("run-tcp-clock");
    let daemon = Daemon::start(&dir, &household_over_tcp(address, ""));
    daemon.wait_for_output(LIVE, 4, PATIENCE);
    let _connection = server.join().unwrap();
    let finished = daemon.terminate();

    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(count_after(&finished.stderr, "source dongle:", "ok"), 6);
    assert_eq!(count_after(&finished.stderr, "conduct:", "bad time"), 2);
    assert_eq!(
        finished.stdout.matches(LIVE).count(),
        4,
        "only the meter whose clock agrees: {}",
        finished.stdout
    );
    assert!(!finished.stdout.contains("2068"), "{}", finished.stdout);
}

#[test]
fn a_silent_tcp_source_reconnects_after_its_read_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server_telegrams = telegrams(2);
    let server = std::thread::spawn(move || {
        // A dongle that sends one telegram and then hangs without closing the connection.
        let (mut hung, _) = listener.accept().unwrap();
        hung.write_all(&server_telegrams[0]).unwrap();
        let (mut fresh, _) = listener.accept().unwrap();
        fresh.write_all(&server_telegrams[1]).unwrap();
        (hung, fresh)
    });
    let dir = scratch("run-tcp-timeout");
    let daemon = Daemon::start(&dir, &household_over_tcp(address, "read_timeout_secs = 1"));
    daemon.wait_for_output(LIVE, 2, PATIENCE);
    let _connections = server.join().unwrap();
    let finished = daemon.terminate();

    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        finished
            .stderr
            .contains("connection lost (nothing received for 1s); reconnecting"),
        "{}",
        finished.stderr
    );
    assert_eq!(count_after(&finished.stderr, "source dongle:", "ok"), 2);
}

/// `GET path` on `address`, HTTP/1.1 with `Connection: close`; the whole response.
pub(crate) fn http_get(address: std::net::SocketAddr, path: &str) -> String {
    use std::io::Read as _;
    let mut stream = std::net::TcpStream::connect(address).expect("the metrics endpoint accepts");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: p1guard\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// A real Prometheus scrapes p1guard each second and answers queries of its counters: the
/// endpoint speaks Prometheus's text format, and no meter id is among the labels.
#[test]
fn prometheus_scrapes_counters_without_meter_ids() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let metrics_address = crate::free_address();
    let server_telegrams = telegrams(2);
    let server = std::thread::spawn(move || {
        let (mut connection, _) = listener.accept().unwrap();
        for telegram in &server_telegrams {
            connection.write_all(telegram).unwrap();
        }
        connection
    });
    let dir = scratch("run-metrics");
    let daemon = Daemon::start(
        &dir,
        &format!(
            "[metrics]\nlisten = \"{metrics_address}\"\n{}",
            household_over_tcp(address, "")
        ),
    );
    daemon.wait_for_output(LIVE, 2, PATIENCE);
    let _connection = server.join().unwrap();
    let prometheus = prometheus(&dir, metrics_address);
    // The sink counts a batch just after writing it: query until a scrape has it.
    let sink = r#"p1guard_sink_records_total{sink="screen",granularity="live"}"#;
    let deadline = Instant::now() + PATIENCE;
    while query(&prometheus, sink).as_deref() != Some("3") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let answers: Vec<(&str, Option<String>)> = [
        r#"up{job="p1guard"}"#,
        r#"p1guard_telegrams_total{source="dongle",result="ok"}"#,
        r#"p1guard_telegrams_total{source="dongle",result="crc_error"}"#,
        r#"p1guard_source_connected{source="dongle"}"#,
        r#"p1guard_queue_depth{queue="frames"}"#,
        r#"p1guard_conduct_records_total{granularity="live"}"#,
        sink,
    ]
    .into_iter()
    .map(|series| (series, query(&prometheus, series)))
    .collect();
    let (status, labels) = crate::influx::http(
        prometheus.address,
        "GET",
        &crate::influx::target("/api/v1/series", &[("match[]", r#"{job="p1guard"}"#)]),
        "",
    );
    let elsewhere = http_get(metrics_address, "/");
    let finished = daemon.terminate();

    assert!(finished.status.success(), "{}", finished.stderr);
    let expected = ["1", "2", "0", "1", "0", "3", "3"];
    for ((series, answer), expected) in answers.iter().zip(expected) {
        assert_eq!(
            answer.as_deref(),
            Some(expected),
            "{series} in {answers:#?}"
        );
    }
    assert_eq!(status, 200, "{labels}");
    let meter_id: String = "E0053000012345621"
        .bytes()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert!(labels.contains("p1guard_sink_records_total"), "{labels}");
    assert!(
        !labels.contains(&meter_id) && !labels.contains("E0053000012345621"),
        "a meter id among the labels:\n{labels}"
    );
    assert!(elsewhere.starts_with("HTTP/1.1 404"), "{elsewhere}");
}

/// Prometheus scraping p1guard's `/metrics` at `target` each second.
fn prometheus(dir: &Path, target: std::net::SocketAddr) -> crate::influx::Server {
    let binary = require("prometheus", "prometheus");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "scrape_configs:\n  - job_name: p1guard\n    scrape_interval: 1s\n    \
             static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let address = crate::free_address();
    let args = [
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", dir.join("prometheus").display()),
        format!("--web.listen-address={address}"),
    ];
    crate::influx::Server::start(binary, args.to_vec(), address, "/-/ready")
}

/// The value of the one series `query` selects, as Prometheus answers it now.
fn query(prometheus: &crate::influx::Server, query: &str) -> Option<String> {
    let (_, body) = crate::influx::http(
        prometheus.address,
        "GET",
        &crate::influx::target("/api/v1/query", &[("query", query)]),
        "",
    );
    let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
    let value = &answer["data"]["result"][0]["value"][1];
    value.as_str().map(str::to_owned)
}

/// A serial line pair: p1guard reads `dir/p1`, the test writes `dir/meter`.
struct PtyPair {
    socat: Child,
}

impl PtyPair {
    fn start(dir: &Path) -> PtyPair {
        let socat = require("socat", "socat");
        let link = |name: &str| format!("pty,raw,echo=0,link={}", dir.join(name).display());
        let child = Command::new(socat)
            .args([link("meter"), link("p1")])
            .stderr(Stdio::null())
            .spawn()
            .expect("socat starts");
        let deadline = Instant::now() + PATIENCE;
        while !(dir.join("meter").exists() && dir.join("p1").exists()) {
            assert!(Instant::now() < deadline, "socat made no pty pair");
            std::thread::sleep(Duration::from_millis(10));
        }
        PtyPair { socat: child }
    }

    /// Writes telegrams into the meter's end at 115200 baud's pace (11,520 bytes/s).
    fn send(&self, dir: &Path, telegrams: &[Vec<u8>]) {
        let mut line = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("meter"))
            .unwrap();
        for telegram in telegrams {
            line.write_all(telegram).unwrap();
            std::thread::sleep(Duration::from_secs_f64(telegram.len() as f64 / 11_520.0));
        }
    }

    /// Pulls the cable: the pty pair disappears.
    fn pull(mut self) {
        signal(self.socat.id(), "TERM");
        self.socat.wait().unwrap();
    }
}

/// A test that fails half-way leaves no socat behind.
impl Drop for PtyPair {
    fn drop(&mut self) {
        if self.socat.try_wait().ok().flatten().is_none() {
            let _ = self.socat.kill();
            let _ = self.socat.wait();
        }
    }
}

#[test]
fn a_serial_line_is_reopened_after_the_cable_is_pulled() {
    let dir = scratch("run-serial");
    let pty = PtyPair::start(&dir);
    let daemon = Daemon::start(
        &dir,
        &format!(
            r#"
            [consent]
            default = "live"

            [[sources]]
            name = "p1"
            type = "serial"
            device = "{}"
            preset = "dsmr5"

            [[sinks]]
            type = "stdout"
            max_granularity = "live"
            "#,
            dir.join("p1").display()
        ),
    );
    daemon.wait_for_log("serial port open", 1, PATIENCE);
    let sent = telegrams(20);
    pty.send(&dir, &sent[..10]);
    daemon.wait_for_output(LIVE, 10, PATIENCE);

    pty.pull();
    daemon.wait_for_log("serial port lost", 1, PATIENCE);
    let pty = PtyPair::start(&dir);
    daemon.wait_for_log("serial port open", 2, PATIENCE);
    pty.send(&dir, &sent[10..]);
    daemon.wait_for_output(LIVE, 20, PATIENCE);
    let finished = daemon.terminate();
    pty.pull();

    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(
        count_after(&finished.stderr, "source p1:", "ok"),
        20,
        "{}",
        finished.stderr
    );
    assert_eq!(
        count_after(&finished.stderr, "source p1:", "parse_error"),
        0
    );
}

#[test]
fn systemd_hears_ready_watchdog_pings_and_stopping() {
    let dir = scratch("run-systemd");
    let socket_path = dir.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = format!(
        r#"
        [[sources]]
        type = "tcp"
        address = "{}"

        [[sinks]]
        type = "stdout"
        max_granularity = "billing"
        "#,
        listener.local_addr().unwrap()
    );
    let daemon = Daemon::start_with_env(
        &dir,
        &config,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let mut heard = Vec::new();
    let mut buf = [0u8; 256];
    while heard.iter().filter(|m| *m == "WATCHDOG=1").count() < 2 {
        let n = socket.recv(&mut buf).expect("a notification");
        heard.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
    }
    let finished = daemon.terminate();
    socket.set_nonblocking(true).unwrap();
    while let Ok(n) = socket.recv(&mut buf) {
        heard.push(String::from_utf8_lossy(&buf[..n]).trim().to_owned());
    }

    assert!(finished.status.success(), "{}", finished.stderr);
    assert_eq!(
        heard.first().map(String::as_str),
        Some("READY=1"),
        "{heard:?}"
    );
    assert!(heard.iter().any(|m| m == "STOPPING=1"), "{heard:?}");
}

#[test]
fn a_broken_config_lists_all_its_problems() {
    let dir = scratch("run-broken-config");
    let path = dir.join("broken.toml");
    std::fs::write(
        &path,
        r#"
        [consent]
        default = "sometimes"

        [[sources]]
        type = "serial"
        device = "/dev/p1"
        baud = "fast"

        [[sources]]
        type = "tcp"
        address = "no-port"

        [[sinks]]
        type = "sqlite"
        max_granularity = "daily"
        identity = "raw"

        [[sinks]]
        name = "sqlite"
        type = "stdout"
        max_granularity = "daily"
        "#,
    )
    .unwrap();
    let path = path.to_str().unwrap();
    for args in [
        vec!["check-config", "--config", path],
        vec!["run", "--config", path],
    ] {
        let output = p1guard(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        for problem in [
            "5 problems in the configuration",
            "consent (line 2): unknown variant `sometimes`",
            "sources[0] (line 5): invalid type: string \"fast\", expected u32",
            "sources[1] (line 10): address \"no-port\": expected host:port",
            "sinks[0] (line 14): raw meter identity is only allowed on sinks whose max_granularity is live",
            // Named by its type, the first sink has the second's name, though it has a
            // problem of its own.
            "sinks: the name \"sqlite\" is used twice",
        ] {
            assert!(
                stderr.contains(problem),
                "{args:?}: {problem:?} missing from:\n{stderr}"
            );
        }
    }
}

#[test]
fn the_example_configs_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["demo", "hobbyist", "supplier"] {
        let path = root.join(format!("config/{name}.toml"));
        let output = Command::new(env!("CARGO_BIN_EXE_p1guard"))
            .args(["check-config", "--config", path.to_str().unwrap()])
            .current_dir(root)
            // Secrets are read when the configuration is checked: supplier.toml's token.
            .env("INFLUX_TOKEN", "example-token")
            .env("MQTT_PASSWORD", "example-password")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A source and a sink that pass the configuration's checks but cannot be set up at start:
/// p1guard stops before it is ready, with the same status whichever it is, 1 (worth a
/// restart), not 2 (a configuration error systemd should not restart into) nor 0.
#[test]
fn a_source_or_a_sink_that_cannot_be_set_up_exits_1_alike() {
    let dir = scratch("run-setup-failures");
    let not_pem = dir.join("not-a-ca.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let store = dir.join("store-is-a-directory");
    std::fs::create_dir(&store).unwrap();
    let capture = write_capture(
        &dir,
        Style::Dsmr5,
        "2026-06-01T00:00:00Z",
        "2026-06-01T00:01:00Z",
    );
    // Nobody listens there: the setup fails before any connection is tried.
    let broker = crate::free_address();
    let fleet = |ca_file: &Path| {
        format!(
            r#"
            [[sources]]
            name = "fleet"
            type = "mqtt"
            url = "mqtts://{broker}"
            topic = "p1/+/telegram"
            ca_file = {ca_file:?}

            [[sinks]]
            name = "screen"
            type = "stdout"
            max_granularity = "billing"
            "#
        )
    };
    let cases = [
        (
            "source fleet: setting up",
            "missing-ca.pem",
            fleet(&dir.join("missing-ca.pem")),
        ),
        (
            "source fleet: setting up",
            "holds no certificate",
            fleet(&not_pem),
        ),
        (
            "sink store:",
            "store-is-a-directory",
            replay_config(&capture, &store, "max"),
        ),
    ];
    for (failed, why, config) in cases {
        let path = dir.join("p1guard.toml");
        std::fs::write(&path, &config).unwrap();
        let checked = p1guard(&["check-config", "--config", path.to_str().unwrap()]);
        assert!(
            checked.status.success(),
            "{failed}: the configuration is valid: {}",
            String::from_utf8_lossy(&checked.stderr)
        );

        let finished = Daemon::start(&dir, &config).wait();
        assert_eq!(
            finished.status.code(),
            Some(1),
            "{failed}: {}",
            finished.stderr
        );
        let error = finished
            .stderr
            .lines()
            .find(|line| line.contains(failed))
            .unwrap_or_else(|| panic!("{failed:?} missing from:\n{}", finished.stderr));
        assert!(error.contains(why), "{why:?} missing from {error:?}");
        assert!(!finished.stderr.contains("running"), "{}", finished.stderr);
    }
}

/// SIGTERM ends p1guard though its stdout sink is stuck in a write nobody reads: the sink's
/// records stay in the outbox for the next start, so nothing was given up (exit 0), and the
/// counters are printed as at any end. What the other sink wrote leaves the outbox, so the
/// next start does not write it again.
#[test]
fn a_stdout_nobody_reads_does_not_keep_sigterm_from_ending_p1guard() {
    let dir = scratch("run-blocked-stdout");
    let capture = write_capture(
        &dir,
        Style::Dsmr5,
        "2026-06-01T00:00:00Z",
        "2026-06-01T01:00:00Z",
    );
    let store = dir.join("store.sqlite");
    let config = dir.join("p1guard.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [daemon]
            shutdown_grace_secs = 1

            [consent]
            default = "live"

            [[sources]]
            type = "replay"
            files = [{capture:?}]

            [[sinks]]
            name = "screen"
            type = "stdout"
            max_granularity = "live"

            [[sinks]]
            name = "store"
            type = "sqlite"
            path = {store:?}
            max_granularity = "live"
            retention_days = {{ live = 36500, quarter_hour = 36500, daily = 36500, billing = 36500 }}
            "#
        ),
    )
    .unwrap();
    // Its stdout is a pipe the test holds and never reads: it fills, and writes block.
    let mut child = Command::new(env!("CARGO_BIN_EXE_p1guard"))
        .args(["run", "--config"])
        .arg(&config)
        .env("STATE_DIRECTORY", &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _unread = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    std::thread::sleep(Duration::from_secs(2));
    let signalled = Instant::now();
    signal(child.id(), "TERM");
    let status = wait_at_most(&mut child, Duration::from_secs(15));
    let took = signalled.elapsed();
    let log = log.join().unwrap();
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(
        log.contains("exiting without it, its records in the outbox"),
        "{log}"
    );
    assert!(log.contains("source replay:"), "the counters: {log}");
    assert!(!log.contains("NOT WRITTEN"), "{log}");
    assert_eq!(status.code(), Some(0), "{log}");
    let stored = sqlite_rows(&store).len() as u64;
    assert_eq!(
        stored,
        count_after(&log, "sink store:", "live") + 5,
        "{log}"
    );
    let outbox = rusqlite::Connection::open(dir.join("outbox.sqlite")).unwrap();
    let waiting = |sink: &str| -> i64 {
        outbox
            .query_row(
                "SELECT coalesce(sum(records), 0) FROM batches
                 JOIN sinks ON sinks.id = batches.sink WHERE sinks.name = ?1",
                [sink],
                |row| row.get(0),
            )
            .unwrap()
    };
    assert!(waiting("screen") > 0);
    assert_eq!(waiting("store"), 0, "{log}");
}

/// The child's exit status, or a failed test (with the child killed) after `limit`.
fn wait_at_most(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("p1guard did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
