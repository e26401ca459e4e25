//! A fleet on NATS JetStream end to end: meters publish on `p1.<meter>.telegram`, a real
//! `nats-server` maps each meter to its partition and keeps the stream, and p1guard's `nats`
//! source reads every partition, acknowledging what its outbox holds.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::{Daemon, require};
use crate::outbox::{
    PATIENCE, fleet_config, fleet_done, fleet_messages, row_count, same_rows, wait_until,
};
use crate::{free_address, scratch, sqlite_rows};

/// Partitions of the shipped server config's mapping, and so of the source.
const PARTITIONS: u16 = 64;

/// A `nats-server` with the shipped example config (`config/nats/nats-server.conf`) but for
/// its addresses and store, killed when dropped.
struct NatsServer {
    child: Child,
    port: u16,
}

impl NatsServer {
    /// Starts one in `dir` on free ports, and waits until it takes connections.
    fn start(dir: &Path) -> NatsServer {
        let binary = require("nats-server", "nats-server");
        let port = free_address().port();
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nats/nats-server.conf");
        let example = std::fs::read_to_string(example).unwrap();
        assert!(
            example.contains(&format!("{{{{partition({PARTITIONS},1)}}}}")),
            "the example maps meters to {PARTITIONS} partitions"
        );
        let config = dir.join("nats-server.conf");
        let mut text = example;
        for (shipped, here) in [
            ("listen: 0.0.0.0:4222", format!("listen: 127.0.0.1:{port}")),
            (
                "store_dir: /var/lib/nats",
                format!("store_dir: {:?}", dir.join("jetstream")),
            ),
            ("port: 1883", format!("port: {}", free_address().port())),
        ] {
            assert!(text.contains(shipped), "the example says {shipped:?}");
            text = text.replace(shipped, &here);
        }
        std::fs::write(&config, text).unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("nats-server.log")).unwrap())
            .spawn()
            .expect("nats-server starts");
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {port}: see {}",
                dir.join("nats-server.log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        NatsServer { child, port }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// The fleet's source: every partition of `server`'s stream `P1`.
fn nats_source(server: &NatsServer) -> String {
    format!(
        r#"
        [[sources]]
        name = "fleet"
        type = "nats"
        url = "{}"
        stream = "P1"
        partitions = {PARTITIONS}
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
    let server = NatsServer::start(&reference);
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
    let server = NatsServer::start(&killed);
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
