//! The durable outbox end to end: p1guard killed mid-work, a broker and a database down for
//! a while, a full disk, a sink's full share, and SIGTERM with nowhere to write. What each
//! store ends up holding is compared with an undisturbed run, or with the stdout sink of the
//! same run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use p1guard_simulator::{MeterSpec, Simulator, Style};

use crate::daemon::{Daemon, count_after, signal};
use crate::influx::{Server, expected_series, exported_as, printed, victoria_metrics};
use crate::mosquitto::{Mosquitto, Seen, Watcher, publish_all};
use crate::mqtt::mqtt_source;
use crate::{Row, free_address, scratch, sqlite_rows};

pub const PATIENCE: Duration = Duration::from_secs(30);

/// How long a server stays down in the outage tests.
const OUTAGE: Duration = Duration::from_secs(20);

/// How a live electricity record starts on stdout: one per telegram.
const LIVE: &str = r#""granularity":"live","kind":"electricity""#;

/// Retention that keeps every record of a capture dated months ago.
pub const KEEP_ALL: &str =
    "retention_days = { live = 36500, quarter_hour = 36500, daily = 36500, billing = 36500 }";

pub fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

/// Now, to the second.
fn now() -> Timestamp {
    at(&crate::now())
}

/// The id as the meter sends it, hex-encoded: how `[consent.meters]` names it.
pub fn sent(id: &str) -> String {
    id.bytes().map(|b| format!("{b:02X}")).collect()
}

/// Meter `n` of `style`, with a gas meter.
pub fn meter(n: u64, style: Style) -> MeterSpec {
    MeterSpec {
        style,
        equipment_id: format!("E00530000987654{n:02}"),
        gas_id: Some(format!("G00530000987654{n:02}")),
        seed: 1000 + n,
    }
}

/// Meter 1's DSMR 5 telegrams (one a second) from `from` until `to`, as `dir/capture.txt`.
fn capture(dir: &Path, from: Timestamp, to: Timestamp) -> PathBuf {
    let path = dir.join("capture.txt");
    std::fs::write(
        &path,
        p1guard_simulator::stream(meter(1, Style::Dsmr5), from, to, Vec::new()),
    )
    .unwrap();
    path
}

/// Polls `done` every 20 ms until it holds; fails saying `what` (and what `state` says
/// then) after `timeout`.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
    state: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "waited {timeout:?} for {what}; {}",
            state()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens the SQLite store at `path` to read while p1guard writes it; `None` before the sink
/// created it.
pub fn open_store(path: &Path) -> Option<rusqlite::Connection> {
    if !path.exists() {
        return None;
    }
    let connection = rusqlite::Connection::open(path).ok()?;
    connection.busy_timeout(Duration::from_secs(5)).ok()?;
    Some(connection)
}

/// The rows of the store at `path` so far (0 before it exists).
pub fn row_count(path: &Path) -> usize {
    open_store(path)
        .and_then(|c| {
            c.query_row("SELECT count(*) FROM records", [], |row| {
                row.get::<_, i64>(0)
            })
            .ok()
        })
        .map_or(0, |n| n as usize)
}

/// The records of the JSON lines in `stdout`, as a set of their texts.
fn records(stdout: &str) -> BTreeSet<String> {
    stdout
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(str::to_owned)
        .collect()
}

/// What a [`Watcher`] of `records/#` received, but the sink's availability.
fn published(seen: &[Seen]) -> BTreeSet<String> {
    seen.iter()
        .filter(|s| s.topic != "records/status")
        .map(|s| s.payload.clone())
        .collect()
}

/// The summary's lines of sinks that gave records up or left some in the outbox.
fn undelivered(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("sink "))
        .filter(|l| l.contains("NOT WRITTEN") || l.contains("; in the outbox"))
        .collect()
}

/// Fails unless the run ended well with every record written: nothing given up, nothing
/// left in an outbox, and no commit refused by a full disk (the reserve keeps SQLite from
/// it).
fn delivered_everything(finished: &crate::daemon::Finished) {
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        !finished
            .stderr
            .contains("cannot store records in the outbox"),
        "{}",
        finished.stderr
    );
    assert_eq!(
        undelivered(&finished.stderr),
        Vec::<&str>::new(),
        "every sink wrote everything: {}",
        finished.stderr
    );
}

/// Fails unless `got` and `expected` hold the same rows, saying how they differ.
pub fn same_rows(what: &str, got: &[Row], expected: &[Row]) {
    if got == expected {
        return;
    }
    let got_set: BTreeSet<&Row> = got.iter().collect();
    let expected_set: BTreeSet<&Row> = expected.iter().collect();
    let missing: Vec<_> = expected_set.difference(&got_set).take(5).collect();
    let extra: Vec<_> = got_set.difference(&expected_set).take(5).collect();
    panic!(
        "{what}: {} rows where the uninterrupted run stored {}; missing (first 5): \
         {missing:#?}; not in the uninterrupted run (first 5): {extra:#?}",
        got.len(),
        expected.len()
    );
}

/// Samples `count` for `period` (a server's outage): each sample once the count has grown
/// since the last, a second apart at the least. Fails if it stalls for 5 s.
fn keeps_growing(what: &str, period: Duration, count: impl Fn() -> usize) -> Vec<usize> {
    let end = Instant::now() + period;
    let mut samples = vec![count()];
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(1));
        let last = *samples.last().unwrap();
        wait_until(
            &format!("{what} to grow past {last}"),
            Duration::from_secs(5),
            || count() > last,
            || format!("samples so far: {samples:?}"),
        );
        samples.push(count());
    }
    samples
}

/// Stops `server` with SIGTERM, as systemd would (it saves what it holds), and waits for it
/// to exit. [`Server::restart`] starts it again on the same address and data.
fn stop(server: &mut Server) {
    let mut child = server.child.take().expect("the server runs");
    signal(child.id(), "TERM");
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// 1. Killed mid-work.

/// Meters in the fleet; meter `i` consents to `FLEET_LEVELS[i % 4]`, the last one to live.
pub const FLEET: u64 = 24;
pub const FLEET_LEVELS: [&str; 4] = ["quarter_hour", "daily", "none", "live"];

/// The fleet's telegrams, one a message on topic `p1/<n>/telegram`, meter after meter at
/// each instant (so the last message is the last meter's, which consents to live); and the
/// last telegram's time.
pub fn fleet_messages() -> (Vec<(String, Vec<u8>)>, Timestamp) {
    // Three hours of DSMR 4 across the local midnight that begins June (22:00Z in summer
    // time): a billing boundary with monthly billing.
    let (from, to) = (at("2026-05-31T20:30:00Z"), at("2026-05-31T23:30:00Z"));
    let mut meters: Vec<Simulator> = (0..FLEET)
        .map(|n| Simulator::new(meter(n, Style::Dsmr4), from, to, Vec::new()))
        .collect();
    let mut messages = Vec::new();
    let mut last = None;
    'instants: loop {
        for (n, simulator) in meters.iter_mut().enumerate() {
            let Some((time, telegram)) = simulator.next() else {
                break 'instants;
            };
            last = Some(time);
            messages.push((format!("p1/{n}/telegram"), telegram));
        }
    }
    (messages, last.unwrap())
}

/// A fleet read by `source` (a `[[sources]]` table) into a live store and a quarter-hour
/// store in `dir`, the pseudonyms made with `key`.
pub fn fleet_config(dir: &Path, key: &Path, source: &str) -> String {
    fleet_config_of(FLEET, dir, key, source)
}

/// [`fleet_config`] for a fleet of `fleet` meters, meter `i` consenting to
/// `FLEET_LEVELS[i % 4]`.
pub fn fleet_config_of(fleet: u64, dir: &Path, key: &Path, source: &str) -> String {
    let meters: String = (0..fleet)
        .map(|n| {
            let id = sent(&meter(n, Style::Dsmr4).equipment_id);
            format!("\"{id}\" = \"{}\"\n", FLEET_LEVELS[n as usize % 4])
        })
        .collect();
    format!(
        r#"
        [identity]
        key_file = {key:?}

        [consent]
        default = "billing"
        billing_cadence = "monthly"
        [consent.meters]
        {meters}

        {source}

        [[sinks]]
        name = "live"
        type = "sqlite"
        path = {live:?}
        max_granularity = "live"
        {KEEP_ALL}

        [[sinks]]
        name = "quarter"
        type = "sqlite"
        path = {quarter:?}
        max_granularity = "quarter_hour"
        {KEEP_ALL}
        "#,
        live = dir.join("live.sqlite"),
        quarter = dir.join("quarter.sqlite"),
    )
}

/// Whether the live store at `path` holds the last telegram of every meter that consents to
/// live: the last message has been reduced, and so has every message before it.
pub fn fleet_done(path: &Path, last: Timestamp) -> bool {
    let live_meters = (0..FLEET).filter(|n| FLEET_LEVELS[*n as usize % 4] == "live");
    let held = open_store(path).and_then(|c| {
        c.query_row(
            "SELECT count(DISTINCT meter) FROM records
             WHERE granularity = 'live' AND kind = 'electricity' AND time = ?1",
            [last.as_second()],
            |row| row.get::<_, i64>(0),
        )
        .ok()
    });
    held.is_some_and(|n| n as usize == live_meters.count())
}

/// An MQTT fleet whose p1guard is killed with SIGKILL five times while it works through
/// the broker's queue, restarted each time on the same state directory, stores exactly the
/// rows an uninterrupted run stores: what the broker was told was taken is in the outbox,
/// what is in the outbox reaches the stores, what the broker delivers again is recognised
/// from the reducer's saved state, and writing a record twice writes it the same.
#[test]
fn a_fleet_killed_five_times_stores_exactly_what_an_uninterrupted_run_stores() {
    let dir = scratch("outbox-killed");
    let key = dir.join("identity.key");
    std::fs::write(&key, format!("{}\n", "3c".repeat(32))).unwrap();
    let (messages, last) = fleet_messages();
    let patience = Duration::from_secs(60);

    // The reference: one run from the first message to the last.
    let reference = dir.join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    let broker = Mosquitto::start(&reference);
    let config = fleet_config(&reference, &key, &mqtt_source(&broker, ""));
    let started = Instant::now();
    let daemon = Daemon::start(&reference, &config);
    daemon.wait_for_log("subscribed to p1/+/telegram", 1, PATIENCE);
    publish_all(broker.port, "meters", messages.clone());
    let live = reference.join("live.sqlite");
    wait_until(
        "the uninterrupted run to store the last telegram",
        patience,
        || fleet_done(&live, last),
        || format!("{} live rows", row_count(&live)),
    );
    let finished = daemon.terminate();
    assert!(finished.status.success(), "{}", finished.stderr);
    let uninterrupted = started.elapsed();
    let expected_live = sqlite_rows(&live);
    let expected_quarter = sqlite_rows(&reference.join("quarter.sqlite"));
    let granularities: BTreeSet<&str> = expected_quarter
        .iter()
        .map(|r| r.granularity.as_str())
        .collect();
    assert_eq!(
        granularities,
        BTreeSet::from(["billing", "daily", "quarter_hour"]),
        "the capture crosses a local midnight at mixed consent"
    );

    // The same telegrams to a fresh broker and state directory, p1guard killed five times.
    let killed = dir.join("killed");
    std::fs::create_dir_all(&killed).unwrap();
    let broker = Mosquitto::start(&killed);
    let config = fleet_config(&killed, &key, &mqtt_source(&broker, ""));
    let (live, quarter) = (killed.join("live.sqlite"), killed.join("quarter.sqlite"));
    let mut daemon = Daemon::start(&killed, &config);
    daemon.wait_for_log("subscribed to p1/+/telegram", 1, PATIENCE);
    let publisher = {
        let (port, messages) = (broker.port, messages.clone());
        std::thread::spawn(move || publish_all(port, "meters", messages))
    };
    // (live rows, quarter-hour store rows) when each kill landed.
    let mut at_kills = Vec::new();
    for kill in 1..=5 {
        let threshold = expected_live.len() * kill / 6;
        wait_until(
            &format!("{threshold} live rows before kill {kill}"),
            patience,
            || row_count(&live) >= threshold,
            || {
                format!(
                    "{} live rows; kills so far at {at_kills:?}",
                    row_count(&live)
                )
            },
        );
        drop(daemon); // SIGKILL: no goodbye, no flush, no summary
        at_kills.push((row_count(&live), row_count(&quarter)));
        daemon = Daemon::start(&killed, &config);
    }
    wait_until(
        "the last restart to store the last telegram",
        patience,
        || fleet_done(&live, last),
        || format!("{} live rows; kills at {at_kills:?}", row_count(&live)),
    );
    let finished = daemon.terminate();
    publisher.join().expect("every message was published");
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("continuing from the saved state"),
        "the last start continued every meter's series: {}",
        finished.stderr
    );
    let (got_live, got_quarter) = (sqlite_rows(&live), sqlite_rows(&quarter));

    // Each kill landed mid-work, later than the one before (the quarter-hour store, whose
    // rows come every quarter of an hour, may be complete before the last).
    let live_at_kills: Vec<usize> = at_kills.iter().map(|k| k.0).collect();
    assert!(
        live_at_kills.windows(2).all(|w| w[0] < w[1]),
        "kills at {at_kills:?}"
    );
    assert!(
        at_kills[4].0 < got_live.len() && at_kills[0].1 < got_quarter.len(),
        "the last kill came before the end: kills at {at_kills:?}, finally {} and {} rows",
        got_live.len(),
        got_quarter.len()
    );
    same_rows("the live store", &got_live, &expected_live);
    same_rows("the quarter-hour store", &got_quarter, &expected_quarter);
    println!(
        "uninterrupted run {uninterrupted:?}; {} messages; {} live and {} quarter-hour rows; \
         kills at {at_kills:?}",
        messages.len(),
        got_live.len(),
        got_quarter.len()
    );
}

// 2. and 3. A server down for a while.

/// A replay of four minutes of telegrams at ten times real time (24 s), live consent, into
/// a stdout sink `screen`, a SQLite store `store` at `store`, and `sink` (TOML).
fn paced_config(dir: &Path, store: &Path, sink: &str) -> String {
    let to = now();
    let capture = capture(dir, to - SignedDuration::from_mins(4), to);
    format!(
        r#"
        [consent]
        default = "live"

        [[sources]]
        name = "capture"
        type = "replay"
        files = [{capture:?}]
        speed = "10"

        [[sinks]]
        name = "screen"
        type = "stdout"
        max_granularity = "live"

        [[sinks]]
        name = "store"
        type = "sqlite"
        path = {store:?}
        max_granularity = "live"
        {sink}
        "#
    )
}

/// While the broker an MQTT sink publishes to is down for 20 s, the SQLite store goes on
/// growing; once it is back, every record reaches the broker's subscriber.
#[test]
fn the_broker_down_for_a_while_holds_up_no_other_sink() {
    let dir = scratch("outbox-broker-down");
    let mut broker = Mosquitto::start(&dir);
    let watcher = Watcher::start(broker.port, "watcher", &["records/#"]);
    let store = dir.join("store.sqlite");
    let sink = format!(
        r#"
        [[sinks]]
        name = "broker"
        type = "mqtt"
        url = "{}"
        prefix = "records"
        max_granularity = "live"
        discovery = false
        "#,
        broker.url()
    );
    let daemon = Daemon::start(&dir, &paced_config(&dir, &store, &sink));
    watcher.wait_until(PATIENCE, |seen| published(seen).len() >= 5);

    let (finished, during) = outage(
        daemon,
        &store,
        &mut broker,
        Mosquitto::stop,
        Mosquitto::spawn,
    );
    let records = records(&finished.stdout);
    let seen = watcher.wait_until(PATIENCE, |seen| published(seen).is_superset(&records));
    assert_eq!(
        published(&seen),
        records,
        "the subscriber got every record, and nothing else"
    );
    println!(
        "SQLite rows while the broker was down: {during:?}; {} records in all",
        records.len()
    );
    assert_eq!(
        count_after(&finished.stderr, "sink broker:", "live"),
        count_after(&finished.stderr, "sink screen:", "live"),
        "{}",
        finished.stderr
    );
}

/// Takes `server` down with `down` for [`OUTAGE`] while `daemon` runs, checking that the
/// SQLite store at `store` keeps growing meanwhile, brings it back with `up`, and waits for
/// the run to end: it ends well, says the sink writes again, leaves nothing undelivered, and
/// the store holds every record stdout shows, more than during the outage. Returns how the
/// run finished and the store's rows sampled during the outage.
fn outage<S>(
    daemon: Daemon,
    store: &Path,
    server: &mut S,
    down: impl FnOnce(&mut S),
    up: impl FnOnce(&mut S),
) -> (crate::daemon::Finished, Vec<usize>) {
    down(server);
    let during = keeps_growing("the SQLite store", OUTAGE, || row_count(store));
    daemon.wait_for_log("write failed, retrying", 1, PATIENCE);
    up(server);
    let finished = daemon.wait();
    delivered_everything(&finished);
    assert!(
        finished.stderr.contains("writing again after"),
        "{}",
        finished.stderr
    );
    let shown = records(&finished.stdout).len();
    assert_eq!(row_count(store), shown, "the store holds what stdout shows");
    assert!(
        *during.last().unwrap() < shown,
        "the outage ended before the replay did: {during:?} of {shown}"
    );
    (finished, during)
}

/// While the VictoriaMetrics an InfluxDB sink writes to is down for 20 s, the SQLite store
/// goes on growing; once it is back (on the same data), it holds every record stdout shows.
#[test]
fn the_database_down_for_a_while_delays_only_its_own_records() {
    let dir = scratch("outbox-database-down");
    let mut vm = victoria_metrics(&dir, free_address());
    let store = dir.join("store.sqlite");
    let sink = format!(
        r#"
        [[sinks]]
        name = "influx"
        type = "influxdb"
        api = "v2"
        url = "http://{}"
        org = "household"
        flush_interval_ms = 50
        max_granularity = "live"
        "#,
        vm.address
    );
    let daemon = Daemon::start(&dir, &paced_config(&dir, &store, &sink));
    wait_until(
        "the first records in the store",
        PATIENCE,
        || row_count(&store) >= 5,
        String::new,
    );

    let (finished, during) = outage(daemon, &store, &mut vm, stop, Server::restart);
    let printed = printed(&finished.stdout);
    let expected = expected_series(&printed, None);
    assert_eq!(exported_as(&vm, &expected).0, expected);
    println!(
        "SQLite rows while the database was down: {during:?}; {} records in all",
        printed.len()
    );
}

// 4. A full disk.

/// A tmpfs mounted for one test, unmounted when dropped (after the p1guard declared after it
/// has been killed), even if the test fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount`'s syntax, e.g. `4m`) at `at`; why not, if it cannot.
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "p1guard-test"])
            .arg(at)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// `GET /metrics` from p1guard at `address`; `None` once it has exited.
fn scrape(address: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// The lines of a scrape that say how far each sink has got and what waits for it.
fn sink_progress(scrape: &str) -> Vec<&str> {
    scrape
        .lines()
        .filter(|l| l.starts_with("p1guard_outbox_") || l.starts_with("p1guard_sink_records_total"))
        .filter(|l| !l.ends_with(" 0"))
        .collect()
}

/// Each file in `dir` and its size.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, entry.metadata().unwrap().len())
        })
        .collect();
    files.sort();
    files
}

/// The outbox on a disk too small for what an unreachable InfluxDB sink has not written:
/// once the disk is nearly full (the outbox keeps a reserve, without which SQLite could not
/// even delete), input waits (and says so) rather than dropping anything; once the server
/// answers on the address it was configured with, the sink writes what waited, which makes
/// room, the process goes on reading, and every record reaches the server.
#[test]
fn a_full_disk_holds_input_back_and_loses_nothing() {
    let dir = scratch("outbox-full-disk");
    let disk = match Tmpfs::mount(&dir.join("disk"), "16m") {
        Ok(disk) => disk,
        Err(why) => match std::env::var("P1GUARD_TMPFS_SKIP") {
            Ok(reason) if !reason.is_empty() => {
                println!("SKIPPED: the full-disk outbox test: {reason} ({why})");
                return;
            }
            _ => panic!(
                "cannot mount a tmpfs for the outbox ({why}): this test needs root; run it as \
                 root, or set P1GUARD_TMPFS_SKIP to the reason it cannot (scripts/test does so \
                 when it does not run as root, and says it skipped this test)"
            ),
        },
    };
    let (address, metrics) = (free_address(), free_address());
    let to = at("2026-06-01T12:00:00Z");
    let capture = capture(&dir, to - SignedDuration::from_hours(8), to);
    let telegrams = 8 * 3600;
    let config = format!(
        r#"
        [daemon]
        outbox = "{outbox}"

        [metrics]
        listen = "{metrics}"

        [consent]
        default = "live"

        [[sources]]
        name = "capture"
        type = "replay"
        files = [{capture:?}]
        speed = "max"

        [[sinks]]
        name = "screen"
        type = "stdout"
        max_granularity = "live"

        [[sinks]]
        name = "influx"
        type = "influxdb"
        api = "v2"
        url = "http://{address}"
        org = "household"
        flush_interval_ms = 50
        max_granularity = "live"
        "#,
        outbox = disk.0.join("outbox.sqlite").display(),
    );
    let daemon = Daemon::start(&dir, &config);
    daemon.wait_for_log(
        "outbox disk nearly full: input waits until the sinks write",
        1,
        PATIENCE,
    );
    let shown_when_full = daemon.stdout().matches(LIVE).count();
    assert!(
        shown_when_full < telegrams,
        "the disk filled before the replay's end"
    );

    let vm = victoria_metrics(&dir, address);
    // The replay reads on to its last telegram (and p1guard ends once it is written).
    let read_all =
        format!(r#"p1guard_telegrams_total{{source="capture",result="ok"}} {telegrams}"#);
    wait_until(
        "the replay to go on once the server took what waited",
        Duration::from_secs(45),
        || scrape(metrics).is_none_or(|scrape| scrape.contains(&read_all)),
        || {
            let scrape = scrape(metrics).unwrap_or_default();
            format!(
                "{shown_when_full} live records shown when the disk filled, {} now; \
                 {:?}; on the disk: {:?}",
                daemon.stdout().matches(LIVE).count(),
                sink_progress(&scrape),
                listing(&disk.0)
            )
        },
    );
    let finished = daemon.wait();
    delivered_everything(&finished);
    let printed = printed(&finished.stdout);
    assert_eq!(
        count_after(&finished.stderr, "source capture:", "ok"),
        telegrams as u64,
        "every telegram of the capture was read"
    );
    let expected = expected_series(&printed, None);
    let (stored, _) = exported_as(&vm, &expected);
    assert!(
        stored == expected,
        "VictoriaMetrics holds {} series, expected {}",
        stored.len(),
        expected.len()
    );
    drop(disk);
}

// 5. SIGTERM with every network sink down.

/// A household's TCP dongle, its screen, and an MQTT and an InfluxDB sink at `broker` and
/// `database`: `source` (TOML) replaces the dongle when given.
fn household(source: &str, broker: &str, database: std::net::SocketAddr) -> String {
    format!(
        r#"
        [daemon]
        shutdown_grace_secs = 2

        [consent]
        default = "live"
        {source}
        [[sinks]]
        name = "screen"
        type = "stdout"
        max_granularity = "live"

        [[sinks]]
        name = "broker"
        type = "mqtt"
        url = "{broker}"
        prefix = "records"
        max_granularity = "live"
        discovery = false

        [[sinks]]
        name = "influx"
        type = "influxdb"
        api = "v2"
        url = "http://{database}"
        org = "household"
        max_granularity = "live"
        flush_interval_ms = 10
        "#
    )
}

/// SIGTERM while neither the broker nor the database answers ends p1guard within the grace,
/// with exit 0 and every record they have not taken left in their outboxes; the next start
/// (with nothing more to read) delivers exactly those records to both once they are up, and
/// then ends.
#[test]
fn sigterm_with_every_network_sink_down_exits_within_the_grace_and_the_next_start_delivers_the_rest()
 {
    let dir = scratch("outbox-sigterm");
    let mut broker = Mosquitto::start(&dir);
    let watcher = Watcher::start(broker.port, "watcher", &["records/#"]);
    broker.stop();
    let database = free_address();

    let telegrams = crate::telegrams(meter(5, Style::Dsmr5), &crate::now(), 5);
    let (dongle, server) = crate::dongle(telegrams);
    let source = format!(
        r#"
        [[sources]]
        name = "dongle"
        type = "tcp"
        address = "{dongle}"
        "#
    );
    let first = Daemon::start(&dir, &household(&source, &broker.url(), database));
    first.wait_for_output(LIVE, 5, PATIENCE);
    let _connection = server.join().unwrap();
    let signalled = Instant::now();
    let first = first.terminate();
    let took = signalled.elapsed();

    assert!(
        took < Duration::from_secs(6),
        "took {took:?}: {}",
        first.stderr
    );
    assert_eq!(first.status.code(), Some(0), "{}", first.stderr);
    assert!(
        first.stderr.contains("the shutdown grace (2s) is over"),
        "{}",
        first.stderr
    );
    let shown = printed(&first.stdout);
    assert!(shown.len() >= 5, "{}", first.stdout);
    for sink in ["sink broker:", "sink influx:"] {
        let waiting = count_after(&first.stderr, sink, "in the outbox");
        assert_eq!(waiting, shown.len() as u64, "{}", first.stderr);
    }
    assert!(
        !first.stderr.contains("NOT WRITTEN"),
        "nothing was given up: {}",
        first.stderr
    );
    assert!(
        first
            .stderr
            .contains("records not yet written wait in the outbox for the next start"),
        "{}",
        first.stderr
    );

    // Both servers come up; p1guard starts again with nothing more to read.
    broker.spawn();
    let vm = victoria_metrics(&dir, database);
    let empty = dir.join("nothing.txt");
    std::fs::write(&empty, "").unwrap();
    let replay = format!(
        r#"
        [[sources]]
        name = "dongle"
        type = "replay"
        files = [{empty:?}]
        "#
    );
    let second = Daemon::start(&dir, &household(&replay, &broker.url(), database)).wait();
    delivered_everything(&second);
    assert!(
        second
            .stderr
            .contains("records from the last run wait in the outbox"),
        "{}",
        second.stderr
    );
    assert_eq!(
        second.stdout, "",
        "the screen showed everything the first time"
    );

    let records = records(&first.stdout);
    let seen = watcher.wait_until(PATIENCE, |seen| published(seen).is_superset(&records));
    assert_eq!(published(&seen), records);
    let expected = expected_series(&shown, None);
    assert_eq!(exported_as(&vm, &expected).0, expected);
}

// 6. A sink's full share.

/// An MQTT sink whose broker is down, with a share of 1 MiB: once its outbox holds that
/// much, input waits (and says so) with the share not overrun; once the broker is back,
/// every record reaches its subscriber and none is given up.
#[test]
fn a_sinks_full_share_of_the_outbox_holds_input_back() {
    let dir = scratch("outbox-full-share");
    let mut broker = Mosquitto::start(&dir);
    let watcher = Watcher::start(broker.port, "watcher", &["records/#"]);
    broker.stop();
    let to = at("2026-06-01T12:00:00Z");
    let capture = capture(&dir, to - SignedDuration::from_hours(3), to);
    let config = format!(
        r#"
        [consent]
        default = "live"

        [[sources]]
        name = "capture"
        type = "replay"
        files = [{capture:?}]
        speed = "max"

        [[sinks]]
        name = "screen"
        type = "stdout"
        max_granularity = "live"

        [[sinks]]
        name = "broker"
        type = "mqtt"
        url = "{url}"
        prefix = "records"
        max_granularity = "live"
        discovery = false
        outbox_max_mib = 1
        "#,
        url = broker.url(),
    );
    let daemon = Daemon::start(&dir, &config);
    daemon.wait_for_log(
        "outbox full: input waits until the sink writes",
        1,
        PATIENCE,
    );
    // Held for a second more, in which the replay at full speed would have read to its end
    // (and its outbox grown past 2 MiB): the broker's share is not overrun, and input waits.
    let shown_when_full = daemon.stdout().lines().count();
    std::thread::sleep(Duration::from_secs(1));
    let outbox = rusqlite::Connection::open(dir.join("outbox.sqlite")).unwrap();
    let waiting: i64 = outbox
        .query_row(
            "SELECT coalesce(sum(length(batch)), 0) FROM batches
             WHERE sink = (SELECT id FROM sinks WHERE name = 'broker')",
            [],
            |row| row.get(0),
        )
        .unwrap();
    drop(outbox);
    let shown_while_full = daemon.stdout().lines().count();

    broker.spawn();
    let finished = daemon.wait();
    delivered_everything(&finished);
    let records = records(&finished.stdout);
    assert!(
        shown_while_full < records.len(),
        "input waited while the share was full: {shown_when_full} then {shown_while_full} \
         of {} records shown",
        records.len()
    );
    // One batch (256 telegrams' records) may cross the line.
    assert!(
        (1 << 20..(1 << 20) + (256 << 10)).contains(&waiting),
        "{waiting} bytes waited for the broker, whose share is 1 MiB"
    );
    assert_eq!(
        count_after(&finished.stderr, "source capture:", "ok"),
        3 * 3600
    );
    let seen = watcher.wait_until(PATIENCE, |seen| published(seen).is_superset(&records));
    assert_eq!(published(&seen), records);
    println!(
        "{shown_when_full}, a second later {shown_while_full}, of {} records shown when the \
         share was full; {waiting} bytes waited",
        records.len()
    );
}

/// A damaged outbox (a power cut on a worn SD card) is moved aside, kept for recovery, and a
/// new one started: a daemon that failed at every start would hold up every meter for good.
#[test]
fn a_damaged_outbox_is_moved_aside_and_a_new_one_started() {
    let dir = scratch("outbox-damaged");
    let capture = capture(&dir, at("2026-06-01T00:00:00Z"), at("2026-06-01T01:00:00Z"));
    let outbox = dir.join("outbox.sqlite");
    let damaged = [b"SQLite format 3\0".as_slice(), &[0xA5; 8176]].concat();
    std::fs::write(&outbox, &damaged).unwrap();
    let config = format!(
        r#"
        [consent]
        default = "quarter_hour"

        [daemon]
        outbox = {outbox:?}

        [[sources]]
        name = "capture"
        type = "replay"
        files = [{capture:?}]

        [[sinks]]
        name = "screen"
        type = "stdout"
        max_granularity = "quarter_hour"
        "#
    );
    let finished = Daemon::start(&dir, &config).wait();

    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("is damaged") && finished.stderr.contains("a new one started"),
        "{}",
        finished.stderr
    );
    assert_eq!(
        records(&finished.stdout).len(),
        5,
        "electricity 00:00 to 00:45, gas 00:00: {}",
        finished.stdout
    );
    let aside: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.to_string_lossy().contains("outbox.sqlite.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), damaged, "kept as it was");
}
