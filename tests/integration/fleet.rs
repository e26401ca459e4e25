//! A fleet on NATS JetStream end to end: meters publish on `p1.<meter>.telegram` (or MQTT
//! `p1/<meter>/telegram` on the server's MQTT listener), a real `nats-server` maps each meter
//! to its partition and keeps the stream, and p1guard workers share the partitions by
//! leases, each partition's state handed from owner to owner by snapshot.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use p1guard_simulator::{Simulator, Style};
use rusqlite::OpenFlags;

use crate::daemon::Daemon;
use crate::mosquitto::free_port;
use crate::mosquitto::publish_all;
use crate::nats::{NatsServer, shipped_config};
use crate::outbox::{
    PATIENCE, at, fleet_config, fleet_config_of, fleet_done, fleet_messages, meter, row_count,
    same_rows, sent, wait_until,
};
use crate::{Row, scratch, sqlite_rows};

/// Partitions of the shipped server config's mapping, and so of the source.
const PARTITIONS: u16 = 16;

/// A `nats-server` with the shipped example config (`config/nats/nats-server.conf`) but for
/// its addresses and store, its MQTT listener on `mqtt_port`.
fn nats_server_with_mqtt(dir: &Path, mqtt_port: u16) -> NatsServer {
    let config = shipped_config(dir, mqtt_port);
    assert!(
        config.contains(&format!("{{{{partition({PARTITIONS},1)}}}}")),
        "the example maps meters to {PARTITIONS} partitions"
    );
    NatsServer::start(dir, &config, Some(mqtt_port))
}

fn nats_server(dir: &Path) -> NatsServer {
    nats_server_with_mqtt(dir, free_port())
}

/// Publishes `messages` (MQTT topics `p1/<meter>/telegram`, as the meters name them) on
/// the NATS subjects the server's MQTT listener would make of them, each acknowledged by
/// the stream.
fn publish(server: &NatsServer, messages: Vec<(String, Vec<u8>)>) {
    let url = server.url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let client = async_nats::connect(&url).await.expect("a NATS connection");
        let stream = async_nats::jetstream::new(client);
        // As a worker makes it, should none have yet.
        stream
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: "P1".into(),
                subjects: vec!["p1.part.>".into()],
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .expect("the stream");
        let mut acks = Vec::new();
        for (topic, payload) in messages {
            let subject = topic.replace('/', ".");
            acks.push(
                stream
                    .publish(subject, payload.into())
                    .await
                    .expect("published"),
            );
            if acks.len() == 256 {
                for ack in acks.drain(..) {
                    ack.await.expect("the stream took it");
                }
            }
        }
        for ack in acks {
            ack.await.expect("the stream took it");
        }
    });
}

/// The fleet's source: `server`'s stream `P1`, its leases lasting 2 s (a restarted
/// worker waits that long for its predecessor's partitions).
fn nats_source(server: &NatsServer) -> String {
    format!(
        r#"
        [[sources]]
        name = "fleet"
        type = "nats"
        url = "{}"
        stream = "P1"
        partitions = {PARTITIONS}
        lease_ttl_secs = 2
        "#,
        server.url()
    )
}

/// A fleet on JetStream whose p1guard is killed with SIGKILL three times while it reads the
/// stream, restarted each time, stores exactly the rows an uninterrupted run stores, and the
/// same rows as the fleet over MQTT would: the stream lets go only of what the outbox holds.
#[test]
fn a_fleet_on_jetstream_killed_three_times_stores_exactly_what_an_uninterrupted_run_stores() {
    let dir = scratch("fleet-nats");
    let key = dir.join("identity.key");
    std::fs::write(&key, format!("{}\n", "3c".repeat(32))).unwrap();
    let (messages, last) = fleet_messages();
    let patience = Duration::from_secs(60);

    let reference = dir.join("reference");
    std::fs::create_dir_all(&reference).unwrap();
    let server = nats_server(&reference);
    let config = fleet_config(&reference, &key, &nats_source(&server));
    let daemon = Daemon::start(&reference, &config);
    daemon.wait_for_log("connected", 1, PATIENCE);
    let started = Instant::now();
    publish(&server, messages.clone());
    let live = reference.join("live.sqlite");
    wait_until(
        "the uninterrupted run to store the last telegram",
        patience,
        || fleet_done(&live, last),
        || format!("{} live rows", row_count(&live)),
    );
    // Every partition's consumer has delivered everything: nothing more comes.
    let settled = |path: &Path| {
        let before = row_count(path);
        std::thread::sleep(Duration::from_secs(2));
        row_count(path) == before
    };
    wait_until(
        "the stores to settle",
        patience,
        || settled(&live) && settled(&reference.join("quarter.sqlite")),
        String::new,
    );
    let uninterrupted = started.elapsed();
    let finished = daemon.terminate();
    assert!(finished.status.success(), "{}", finished.stderr);
    let expected_live = sqlite_rows(&live);
    let expected_quarter = sqlite_rows(&reference.join("quarter.sqlite"));
    assert!(!expected_quarter.is_empty());
    drop(server);

    // The whole stream is written first (into the stream a first start made), then read by
    // a p1guard killed three times.
    let killed = dir.join("killed");
    std::fs::create_dir_all(&killed).unwrap();
    let server = nats_server(&killed);
    let config = fleet_config(&killed, &key, &nats_source(&server));
    let (live, quarter) = (killed.join("live.sqlite"), killed.join("quarter.sqlite"));
    let daemon = Daemon::start(&killed, &config);
    daemon.wait_for_log("connected", 1, PATIENCE);
    assert!(daemon.terminate().status.success());
    publish(&server, messages.clone());
    let mut daemon = Daemon::start(&killed, &config);
    let mut at_kills = Vec::new();
    for kill in 1..=3 {
        let threshold = expected_live.len() * kill / 4;
        wait_until(
            &format!("{threshold} live rows before kill {kill}"),
            patience,
            || row_count(&live) >= threshold,
            || format!("{} live rows; kills at {at_kills:?}", row_count(&live)),
        );
        drop(daemon); // SIGKILL
        at_kills.push(row_count(&live));
        daemon = Daemon::start(&killed, &config);
    }
    // Partitions are read side by side, so the last meter's last telegram may be stored
    // before others': wait for as many rows as the uninterrupted run stored (rows lost would
    // never come), then compare them.
    wait_until(
        "the last restart to store as many rows as the uninterrupted run",
        patience,
        || row_count(&live) >= expected_live.len() && row_count(&quarter) >= expected_quarter.len(),
        || {
            format!(
                "{} of {} live rows, {} of {} quarter-hour rows; kills at {at_kills:?}",
                row_count(&live),
                expected_live.len(),
                row_count(&quarter),
                expected_quarter.len()
            )
        },
    );
    let finished = daemon.terminate();
    assert!(finished.status.success(), "{}", finished.stderr);
    assert!(
        at_kills.windows(2).all(|w| w[0] < w[1]) && at_kills[2] < expected_live.len(),
        "each kill landed mid-work: {at_kills:?} of {}",
        expected_live.len()
    );
    same_rows("the live store", &sqlite_rows(&live), &expected_live);
    same_rows(
        "the quarter-hour store",
        &sqlite_rows(&quarter),
        &expected_quarter,
    );
    println!(
        "uninterrupted run {uninterrupted:?} for {} messages; kills at {at_kills:?} of {} live rows",
        messages.len(),
        expected_live.len()
    );
}

/// Meters of the fleet the workers share, and how often each sends: one of its 10 s
/// telegrams every 14 minutes, each meter at its own second, over two days across the
/// first of June (a monthly billing boundary).
const SHARED_FLEET: u64 = 1000;
const EVERY_SECONDS: i64 = 14 * 60;

/// Messages as published: (MQTT topic, payload).
type Messages = Vec<(String, Vec<u8>)>;

/// The shared fleet's telegrams in time order, on topics `p1/<n>/telegram`: those of every
/// tenth meter (`n % 10 == 1`) apart, for the server's MQTT listener; and how many are of
/// meters that consent to live (`n % 4 == 3`).
fn shared_fleet_messages() -> (Messages, Messages, usize) {
    let (from, to) = (at("2026-05-30T22:00:00Z"), at("2026-06-01T22:00:00Z"));
    let mut sent = Vec::new();
    let mut telegram = Vec::new();
    for n in 0..SHARED_FLEET {
        let second = (n as i64 * 10) % EVERY_SECONDS;
        let mut simulator = Simulator::new(meter(n, Style::Dsmr4), from, to, Vec::new());
        telegram.clear();
        while let Some(time) = simulator.next_into(&mut telegram) {
            if (time.as_second() - from.as_second()) % EVERY_SECONDS == second {
                sent.push((time, n, telegram.clone()));
            }
            telegram.clear();
        }
    }
    sent.sort_unstable_by_key(|&(time, n, _)| (time, n));
    let live = sent.iter().filter(|&&(_, n, _)| n % 4 == 3).count();
    let (mqtt, nats): (Vec<_>, Vec<_>) = sent.into_iter().partition(|&(_, n, _)| n % 10 == 1);
    let topics = |sent: Vec<(jiff::Timestamp, u64, Vec<u8>)>| -> Messages {
        (sent.into_iter())
            .map(|(_, n, telegram)| (format!("p1/{n}/telegram"), telegram))
            .collect()
    };
    (topics(nats), topics(mqtt), live)
}

/// A worker of the shared fleet: its state directory (its outbox and its two stores).
struct Worker {
    dir: PathBuf,
    config: String,
}

impl Worker {
    fn new(dir: &Path, name: &str, key: &Path, server: &NatsServer) -> Worker {
        Worker::of(SHARED_FLEET, dir, name, key, server)
    }

    /// A worker of a fleet of `fleet` meters.
    fn of(fleet: u64, dir: &Path, name: &str, key: &Path, server: &NatsServer) -> Worker {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = fleet_config_of(fleet, &dir, key, &nats_source(server));
        std::fs::write(dir.join("p1guard.toml"), &config).unwrap();
        Worker { dir, config }
    }

    /// `p1guard <args> --config <its config>`, its state directory its own.
    fn command(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_p1guard"))
            .args(args)
            .arg("--config")
            .arg(self.dir.join("p1guard.toml"))
            .env("STATE_DIRECTORY", &self.dir)
            .output()
            .expect("p1guard runs")
    }

    fn start(&self) -> Daemon {
        Daemon::start(&self.dir, &self.config)
    }

    fn stores(&self) -> [PathBuf; 2] {
        [
            self.dir.join("live.sqlite"),
            self.dir.join("quarter.sqlite"),
        ]
    }
}

/// The rows of every store of `workers`, as one set.
fn union(workers: &[&Worker]) -> BTreeSet<Row> {
    (workers.iter().flat_map(|w| w.stores()))
        .flat_map(|store| rows_so_far(&store))
        .collect()
}

/// The rows of a worker's store, none while it is not created yet (a newcomer's store
/// appears with its first commit).
fn rows_so_far(store: &Path) -> Vec<Row> {
    let created = rusqlite::Connection::open_with_flags(store, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|connection| {
            connection.query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'records'",
                [],
                |row| row.get::<_, i64>(0),
            )
        });
    if matches!(created, Ok(1)) {
        sqlite_rows(store)
    } else {
        Vec::new()
    }
}

/// Waits until the stores of `workers` hold `expected` rows between them and have stopped
/// growing.
fn wait_for_union(workers: &[&Worker], expected: usize, what: &str) {
    wait_until(
        what,
        Duration::from_secs(120),
        || union(workers).len() >= expected,
        || format!("{} of {expected} rows", union(workers).len()),
    );
    wait_until(
        "the stores to settle",
        PATIENCE,
        || {
            let before = union(workers).len();
            std::thread::sleep(Duration::from_secs(2));
            union(workers).len() == before
        },
        String::new,
    );
}

/// Three workers share a fleet of 1,000 meters at mixed consent (two days, some meters
/// through the server's MQTT listener); one is killed with SIGKILL mid-run and a fourth
/// added, then the killed one comes back (as systemd restarts it: what its outbox held
/// reaches its stores). Between them the stores hold exactly what one worker alone stores
/// from the same stream, record for record: each partition's next owner continues its
/// meters from the snapshot, and what it reads again it writes the same.
#[test]
fn workers_sharing_a_fleet_store_exactly_what_one_worker_stores_across_a_kill_and_a_newcomer() {
    let dir = scratch("fleet-workers");
    let key = dir.join("identity.key");
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
    let generated = Instant::now();
    let (nats_messages, mqtt_messages, live) = shared_fleet_messages();
    let generated = generated.elapsed();
    let mqtt_port = free_port();
    let server = nats_server_with_mqtt(&dir, mqtt_port);
    let published = Instant::now();
    let count = nats_messages.len() + mqtt_messages.len();
    publish(&server, nats_messages);
    publish_all(mqtt_port, "fleet-gateway", mqtt_messages);
    let published = published.elapsed();

    // One worker alone on the whole stream.
    let alone = Worker::new(&dir, "alone", &key, &server);
    let daemon = alone.start();
    let began = Instant::now();
    wait_for_stream_read(&alone, live);
    let alone_took = began.elapsed();
    let finished = daemon.terminate();
    assert!(finished.status.success(), "{}", finished.stderr);
    let expected = union(&[&alone]);
    assert!(
        expected.iter().any(|row| row.granularity == "quarter_hour")
            && expected.iter().any(|row| row.granularity == "live"),
        "the fleet makes live and quarter-hour rows"
    );
    // The workers start afresh: no leases, no snapshots.
    forget_the_fleet(&server);

    let workers: Vec<Worker> = ["a", "b", "c", "d"]
        .iter()
        .map(|name| Worker::new(&dir, name, &key, &server))
        .collect();
    let all: Vec<&Worker> = workers.iter().collect();
    let a = workers[0].start();
    let b = workers[1].start();
    let c = workers[2].start();
    let third = expected.len() / 3;
    wait_until(
        &format!("{third} rows before the kill"),
        Duration::from_secs(120),
        || union(&all).len() >= third,
        || format!("{} rows", union(&all).len()),
    );
    drop(b); // SIGKILL
    let at_kill = union(&all).len();
    let d = workers[3].start();
    d.wait_for_log("partition taken over", 1, PATIENCE);
    let b = workers[1].start();
    wait_for_union(
        &all,
        expected.len(),
        "the workers to store what one worker stored",
    );
    for daemon in [a, b, c, d] {
        let finished = daemon.terminate();
        assert!(finished.status.success(), "{}", finished.stderr);
        assert!(
            !finished.stderr.contains("could not be read"),
            "every snapshot restores: {}",
            finished.stderr
        );
    }
    let got: Vec<Row> = union(&all).into_iter().collect();
    let expected: Vec<Row> = expected.into_iter().collect();
    same_rows("the workers' stores together", &got, &expected);
    let shares: Vec<usize> = workers.iter().map(|w| union(&[w]).len()).collect();
    assert!(
        shares.iter().all(|&n| n > 0),
        "every worker stored some: {shares:?}"
    );
    println!(
        "{count} messages of {SHARED_FLEET} meters (generated in {generated:?}, published in \
         {published:?}); one worker read them in {alone_took:?} into {} rows; killed at {at_kill}; \
         rows per worker {shares:?}",
        expected.len()
    );
}

/// Waits until `worker` has stored a live electricity record for each of the `live`
/// telegrams of meters that consent to live, and its stores have stopped growing.
fn wait_for_stream_read(worker: &Worker, live: usize) {
    let [store, _] = worker.stores();
    let live_rows = || {
        rusqlite::Connection::open(&store)
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM records WHERE granularity = 'live' AND kind = 'electricity'",
                    [],
                    |row| row.get::<_, i64>(0),
                )
            })
            .map_or(0, |n| n as usize)
    };
    wait_until(
        "the single worker to store every live telegram",
        Duration::from_secs(180),
        || live_rows() >= live,
        || format!("{} of {live} live telegrams", live_rows()),
    );
    wait_for_union(&[worker], 0, "the single worker's stores to settle");
}

/// Deletes the fleet's lease and snapshot buckets: the next workers start from the stream's
/// first message.
fn forget_the_fleet(server: &NatsServer) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let jetstream = server.jetstream().await;
        for bucket in ["p1guard_leases_P1", "p1guard_snapshots_P1"] {
            jetstream
                .delete_stream(format!("KV_{bucket}"))
                .await
                .expect("the bucket's stream is deleted");
        }
    });
}

/// Consent recorded for a fleet reaches every worker. A withdrawal recorded through an
/// office's configuration (the same fleet, its own registry; it reads nothing) is taken in
/// by both running workers' registries: whichever worker holds the meter's rows purges
/// them, and neither stores anything finer than billing of it afterwards, while the other
/// meters go on.
#[test]
fn consent_recorded_for_a_fleet_reaches_every_worker() {
    let dir = scratch("fleet-consent");
    let key = dir.join("identity.key");
    std::fs::write(&key, format!("{}\n", "6b".repeat(32))).unwrap();
    let server = nats_server(&dir);
    let (mut messages, _) = fleet_messages();
    let second_half = messages.split_off(messages.len() / 2);
    let workers: Vec<Worker> = ["a", "b"]
        .iter()
        .map(|name| Worker::of(24, &dir, name, &key, &server))
        .collect();
    let office = Worker::of(24, &dir, "office", &key, &server);
    let all: Vec<&Worker> = workers.iter().collect();
    let daemons: Vec<Daemon> = workers.iter().map(Worker::start).collect();

    // Meter 3 consents to live, meter 7 too; the stores name them by pseudonym.
    let (withdrawn, kept) = (
        sent(&meter(3, Style::Dsmr4).equipment_id),
        sent(&meter(7, Style::Dsmr4).equipment_id),
    );
    let finer_than_billing = |pseudonym: &str| {
        union(&all)
            .into_iter()
            .filter(|row| row.meter == pseudonym && row.granularity != "billing")
            .count()
    };
    // What a command answers names the meter by pseudonym.
    let record = |args: &[&str]| -> String {
        let output = office.command(args);
        assert!(output.status.success(), "{output:?}");
        let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        answer["meter"].as_str().unwrap().to_owned()
    };
    let pseudonym = record(&["export", "--meter", &withdrawn]);
    publish(&server, messages);
    wait_until(
        "meter 3's rows finer than billing",
        PATIENCE,
        || finer_than_billing(&pseudonym) > 0,
        String::new,
    );
    let kept = record(&["consent", "grant", "--meter", &kept, "--level", "live"]);
    let answered = record(&[
        "consent",
        "withdraw",
        "--meter",
        &withdrawn,
        "--from",
        "2026-05-31T00:00:00Z",
        "--reference",
        "request-17",
    ]);
    assert_eq!(answered, pseudonym);
    // The workers purge once what is in flight is written, seconds from now.
    for daemon in &daemons {
        daemon.wait_for_log("events recorded for the fleet taken in", 1, PATIENCE);
    }
    wait_until(
        "the workers to purge meter 3's rows finer than billing",
        PATIENCE,
        || finer_than_billing(&pseudonym) == 0,
        || format!("{} left", finer_than_billing(&pseudonym)),
    );

    let before = finer_than_billing(&kept);
    publish(&server, second_half);
    wait_until(
        "meter 7's next rows",
        PATIENCE,
        || finer_than_billing(&kept) > before,
        String::new,
    );
    wait_for_union(&all, 0, "the workers' stores to settle");
    assert_eq!(
        finer_than_billing(&pseudonym),
        0,
        "nothing finer than billing of meter 3 after its withdrawal"
    );
    for worker in &workers {
        let history = worker.command(&["consent", "history", "--meter", &withdrawn]);
        let history = String::from_utf8_lossy(&history.stdout);
        assert!(
            history.contains("request-17") && history.contains(r#""level":"billing""#),
            "{history}"
        );
    }
    for daemon in daemons {
        let finished = daemon.terminate();
        assert!(finished.status.success(), "{}", finished.stderr);
    }
}
