//! End-to-end tests of the `p1guard` binary. One test binary, one module per command.

mod daemon;
mod demo;
mod fleet;
mod home_assistant;
mod influx;
mod mosquitto;
mod mqtt;
mod nats;
mod outbox;
mod parse;
mod replay;
mod rights;
mod run;
mod supplier;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `../shared/captures`: public recordings from other projects, read in place, never copied.
fn captures_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/captures");
    assert!(
        dir.is_dir(),
        "the shared captures are expected beside the repository, at {}",
        dir.display()
    );
    dir
}

/// Runs `p1guard` with `args` and returns what it did.
fn p1guard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_p1guard"))
        .args(args)
        .output()
        .expect("the p1guard binary runs")
}

/// A scratch directory for one test, removed and made afresh.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("p1guard-it-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// One row of the SQLite store's `records` table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    meter: String,
    granularity: String,
    kind: String,
    time: i64,
    quality: String,
    clock: String,
    readings: String,
}

/// Every row of the store at `path`, in key order.
fn sqlite_rows(path: &Path) -> Vec<Row> {
    let connection = rusqlite::Connection::open(path).expect("the store opens");
    let mut query = connection
        .prepare("SELECT meter, granularity, kind, time, quality, clock, readings FROM records ORDER BY meter, granularity, kind, time")
        .expect("the records table exists");
    let rows = query.query_map([], |row| {
        Ok(Row {
            meter: row.get(0)?,
            granularity: row.get(1)?,
            kind: row.get(2)?,
            time: row.get(3)?,
            quality: row.get(4)?,
            clock: row.get(5)?,
            readings: row.get(6)?,
        })
    });
    rows.expect("rows").map(|row| row.expect("a row")).collect()
}

/// `count` telegrams of `meter`, one interval apart from `from`, each on its own.
fn telegrams(meter: p1guard_simulator::MeterSpec, from: &str, count: usize) -> Vec<Vec<u8>> {
    let from: jiff::Timestamp = from.parse().unwrap();
    let to = from + jiff::SignedDuration::from_hours(24);
    let mut simulator = p1guard_simulator::Simulator::new(meter, from, to, Vec::new());
    (0..count)
        .map(|_| {
            let mut telegram = Vec::new();
            simulator.next_into(&mut telegram).expect("a telegram");
            telegram
        })
        .collect()
}

/// A P1 dongle on a free local port: it sends `telegrams` to the first client and keeps the
/// connection open until the returned thread's stream is dropped.
fn dongle(telegrams: Vec<Vec<u8>>) -> (SocketAddr, std::thread::JoinHandle<std::net::TcpStream>) {
    use std::io::Write as _;
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    let address = listener.local_addr().expect("a local address");
    let server = std::thread::spawn(move || {
        let (mut connection, _) = listener.accept().expect("p1guard connects");
        for telegram in &telegrams {
            connection.write_all(telegram).expect("p1guard reads");
        }
        connection
    });
    (address, server)
}

/// Now, to the second, as RFC 3339: serial and TCP sources trust only meter clocks within a
/// day of their own.
fn now() -> String {
    jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
        .expect("now is a valid instant")
        .to_string()
}

/// A local address nobody listens on now, for a server the test starts.
fn free_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("a local address")
}

/// A replay of `capture` at `speed` with quarter-hour consent, into `sinks` (TOML).
fn replay_config(capture: &Path, speed: &str, sinks: &str) -> String {
    format!(
        r#"
        [consent]
        default = "quarter_hour"

        [[sources]]
        name = "capture"
        type = "replay"
        files = [{capture:?}]
        speed = "{speed}"
        {sinks}
        "#
    )
}
