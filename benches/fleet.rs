//! Fleet ingest from a real mosquitto: 10,000 DSMR 5 meters, each publishing a telegram a
//! second on `p1/<meter>/telegram`, sent as fast as the broker takes them, into `p1guard run`
//! (release build) subscribed to `p1/+/telegram` at QoS 1 with a persistent session.
//!
//! One broker and one daemon run through all iterations of a variant, as a supplier's ingest
//! node would: the meters' simulators go on from where the last iteration stopped, so every
//! iteration carries the next `SECONDS` seconds of the fleet (10,000 x `SECONDS` telegrams)
//! and the daemon sees a fleet it already knows. Timed: from the first byte published until
//! the daemon's `/metrics` counts every telegram parsed and reduced
//! (`p1guard_telegrams_total{result="ok"}`). Generating and encoding the telegrams is not.
//!
//! The publisher is one plain TCP connection with the MQTT packets encoded beforehand into
//! one buffer (QoS 1 PUBLISH, PUBACKs read and dropped by a second thread), so it costs little
//! CPU on a small machine. The CPU time (utime + stime from `/proc/<pid>/stat`) of p1guard,
//! mosquitto and the publisher over each timed window is printed on stderr, as a share of one
//! core and of the machine.
//!
//! Variants: a stdout sink at `daily` (stdout to /dev/null) and a SQLite sink at
//! `quarter_hour`, each meter publishing its own telegram every second; and the stdout sink
//! fed by gateways that send each meter's `SECONDS` seconds as one message (the source takes
//! a message of several telegrams), which shows what the broker's per-message cost leaves of
//! p1guard's own. Consent `quarter_hour` for every meter; and `stdout_live`, consent and
//! sink at `live`, where every telegram is a record through the outbox: the cost of
//! durability.
//!
//! `cargo bench --bench fleet`; needs `mosquitto` (`apt-get install mosquitto`). To time
//! another build of p1guard in the same rig (an earlier commit, side by side), name its
//! binary in `P1GUARD_BENCH_BINARY`.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use p1guard_simulator::Simulator;

#[path = "rig/mod.rs"]
mod rig;

use rig::{
    Process, TICKS_PER_SECOND, cpu_ticks, fleet_meters, free_port, require, telegrams_ok,
    us_per_telegram, wait_for_port, workdir,
};

/// Meters in the fleet.
const METERS: usize = 10_000;
/// Seconds of the fleet's telegrams per iteration.
const SECONDS: usize = 10;
/// Telegrams per iteration.
const TELEGRAMS: u64 = (METERS * SECONDS) as u64;
/// The source's name in the config and in `/metrics`.
const SOURCE: &str = "fleet";
/// A timed window that does not end by then fails the bench.
const TIMEOUT: Duration = Duration::from_secs(120);

/// The mosquitto configuration: unlimited queue and in-flight window towards the daemon (the
/// defaults drop messages beyond 1000 queued and send only 20 unacknowledged), no
/// persistence (sessions live in memory for the bench's life).
fn mosquitto_config(port: u16) -> String {
    format!(
        "listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         max_queued_messages 0\n\
         max_inflight_messages 0\n\
         log_dest stderr\n\
         log_type error\n"
    )
}

fn start_mosquitto(dir: &Path) -> (Process, u16) {
    let binary = require("mosquitto", "mosquitto");
    let port = free_port();
    let config = dir.join("mosquitto.conf");
    // Started as root, mosquitto drops to its own user, which must still read here.
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .expect("the scratch directory is opened up");
    std::fs::write(&config, mosquitto_config(port)).expect("the broker config is written");
    let child = Command::new(binary)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()
        .expect("mosquitto starts");
    let process = Process {
        child,
        name: "mosquitto",
    };
    wait_for_port(port, "mosquitto");
    (process, port)
}

fn p1guard_config(dir: &Path, broker: u16, metrics: u16, sink: &Sink) -> PathBuf {
    let consent = match sink {
        Sink::StdoutLive => "live",
        Sink::Stdout | Sink::Sqlite => "quarter_hour",
    };
    let sink = match sink {
        Sink::Stdout => "type = \"stdout\"\nmax_granularity = \"daily\"".to_owned(),
        Sink::StdoutLive => "type = \"stdout\"\nmax_granularity = \"live\"".to_owned(),
        Sink::Sqlite => format!(
            "type = \"sqlite\"\npath = {:?}\nmax_granularity = \"quarter_hour\"",
            dir.join("store.sqlite")
        ),
    };
    let text = format!(
        r#"[identity]
key_file = {key:?}

[consent]
default = "{consent}"

[metrics]
listen = "127.0.0.1:{metrics}"

[[sources]]
name = "{SOURCE}"
type = "mqtt"
url = "mqtt://127.0.0.1:{broker}"
topic = "p1/+/telegram"
client_id = "p1guard-bench-fleet"

[[sinks]]
{sink}
"#,
        key = dir.join("identity.key"),
    );
    let path = dir.join("p1guard.toml");
    std::fs::write(&path, &text).expect("the config is written");
    eprintln!("fleet: p1guard config {}:\n{text}", path.display());
    path
}

fn start_p1guard(dir: &Path, config: &Path) -> Process {
    let binary = std::env::var_os("P1GUARD_BENCH_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_p1guard")),
        PathBuf::from,
    );
    eprintln!("fleet: timing {}", binary.display());
    let child = Command::new(binary)
        .args(["run", "--config"])
        .arg(config)
        .env("STATE_DIRECTORY", dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("p1guard.log")).expect("a log file"))
        .spawn()
        .expect("p1guard runs");
    Process {
        child,
        name: "p1guard",
    }
}

/// The whole fleet's meters, each going on from where it stopped.
struct Fleet {
    meters: Vec<(String, Simulator)>,
    /// Reused buffers.
    telegram: Vec<u8>,
    packets: Vec<u8>,
    packet_id: u16,
}

impl Fleet {
    fn new() -> Fleet {
        let meters = fleet_meters(METERS, |id| format!("p1/{id}/telegram"));
        Fleet {
            meters,
            telegram: Vec::with_capacity(16 * 1024),
            packets: Vec::new(),
            packet_id: 0,
        }
    }

    /// The next `seconds` seconds of every meter as QoS 1 PUBLISH packets: second by second
    /// a telegram a message, or each meter's `seconds` telegrams in one message.
    fn next_packets(&mut self, seconds: usize, messages: Messages) -> &[u8] {
        self.packets.clear();
        let (rounds, per_message) = match messages {
            Messages::PerTelegram => (seconds, 1),
            Messages::PerGateway => (1, seconds),
        };
        for _ in 0..rounds {
            for (topic, simulator) in &mut self.meters {
                self.telegram.clear();
                for _ in 0..per_message {
                    simulator
                        .next_into(&mut self.telegram)
                        .expect("the day has not ended");
                }
                self.packet_id = self.packet_id.checked_add(1).unwrap_or(1);
                publish(&mut self.packets, topic, self.packet_id, &self.telegram);
            }
        }
        &self.packets
    }
}

/// How telegrams travel in messages.
#[derive(Clone, Copy)]
enum Messages {
    /// Each meter publishes its own telegram every second.
    PerTelegram,
    /// A gateway publishes each meter's window of telegrams as one message.
    PerGateway,
}

/// MQTT 3.1.1 remaining length.
fn remaining_length(out: &mut Vec<u8>, mut length: usize) {
    loop {
        let byte = (length % 128) as u8;
        length /= 128;
        if length == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A PUBLISH at QoS 1.
fn publish(out: &mut Vec<u8>, topic: &str, packet_id: u16, payload: &[u8]) {
    out.push(0x32);
    remaining_length(out, 2 + topic.len() + 2 + payload.len());
    out.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    out.extend_from_slice(topic.as_bytes());
    out.extend_from_slice(&packet_id.to_be_bytes());
    out.extend_from_slice(payload);
}

/// A CONNECT with a clean session and no keep-alive.
fn connect(client_id: &str) -> Vec<u8> {
    let mut out = vec![0x10];
    remaining_length(&mut out, 10 + 2 + client_id.len());
    out.extend_from_slice(b"\x00\x04MQTT\x04\x02\x00\x00");
    out.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    out.extend_from_slice(client_id.as_bytes());
    out
}

/// A publisher connection: CONNECT sent, a thread reading (and dropping) CONNACK and PUBACKs.
struct Publisher {
    stream: TcpStream,
    reader: std::thread::JoinHandle<u64>,
}

impl Publisher {
    fn connect(port: u16) -> Publisher {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("the broker accepts");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        stream
            .write_all(&connect("bench-fleet-publisher"))
            .expect("CONNECT is sent");
        let mut incoming = stream.try_clone().expect("a second handle");
        let reader = std::thread::spawn(move || {
            let mut buffer = vec![0u8; 1 << 16];
            let mut total = 0u64;
            while let Ok(n) = incoming.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            total
        });
        Publisher { stream, reader }
    }

    fn send(&mut self, packets: &[u8]) {
        self.stream.write_all(packets).expect("the broker takes it");
    }

    /// DISCONNECT; returns the bytes the broker sent (CONNACK and PUBACKs, 4 bytes each).
    fn close(mut self) -> u64 {
        let _ = self.stream.write_all(&[0xE0, 0x00]);
        let _ = self.stream.shutdown(Shutdown::Write);
        self.reader.join().expect("the reader thread")
    }
}

#[derive(Clone, Copy)]
enum Sink {
    Stdout,
    StdoutLive,
    Sqlite,
}

/// A broker and a daemon subscribed to it, with the fleet that publishes to them.
struct Rig {
    dir: PathBuf,
    messages: Messages,
    mosquitto: Process,
    broker: u16,
    p1guard: Process,
    metrics: u16,
    fleet: Fleet,
    /// Telegrams counted ok so far.
    ingested: u64,
    /// Over every timed window.
    totals: Totals,
}

#[derive(Default)]
struct Totals {
    windows: u32,
    telegrams: u64,
    wall: Duration,
    p1guard: u64,
    mosquitto: u64,
    publisher: u64,
}

impl Rig {
    fn start(variant: &str, sink: Sink, messages: Messages) -> Rig {
        let dir = workdir("p1guard-bench-fleet", variant);
        let (mosquitto, broker) = start_mosquitto(&dir);
        let metrics = free_port();
        let config = p1guard_config(&dir, broker, metrics, &sink);
        let p1guard = start_p1guard(&dir, &config);
        wait_for_port(metrics, "p1guard's /metrics");
        let mut rig = Rig {
            dir,
            messages,
            mosquitto,
            broker,
            p1guard,
            metrics,
            fleet: Fleet::new(),
            ingested: 0,
            totals: Totals::default(),
        };
        // One second of the fleet, untimed, until it arrives: the subscription is in place
        // (a message published before it would be lost) and every meter known.
        let deadline = Instant::now() + Duration::from_secs(30);
        while rig.ingested == 0 {
            assert!(
                Instant::now() < deadline,
                "p1guard did not receive the first telegrams; see {}",
                rig.dir.join("p1guard.log").display()
            );
            let mut publisher = Publisher::connect(rig.broker);
            publisher.send(rig.fleet.next_packets(1, Messages::PerTelegram));
            publisher.close();
            std::thread::sleep(Duration::from_millis(200));
            rig.ingested = telegrams_ok(rig.metrics, SOURCE).unwrap_or(0);
        }
        rig.wait_until_quiet();
        rig
    }

    /// Waits until the ok count stops moving.
    fn wait_until_quiet(&mut self) {
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = telegrams_ok(self.metrics, SOURCE).expect("p1guard serves /metrics");
            if now == self.ingested {
                return;
            }
            self.ingested = now;
        }
    }

    /// One timed window: the next `SECONDS` seconds of the fleet.
    fn window(&mut self) -> Duration {
        self.p1guard.check_alive();
        self.mosquitto.check_alive();
        let packets = self.fleet.next_packets(SECONDS, self.messages);
        let target = self.ingested + TELEGRAMS;
        let mut publisher = Publisher::connect(self.broker);
        let ticks = [
            cpu_ticks(self.p1guard.pid()),
            cpu_ticks(self.mosquitto.pid()),
            cpu_ticks(std::process::id()),
        ];
        let started = Instant::now();
        publisher.send(packets);
        let published = started.elapsed();
        let mut counted;
        loop {
            counted = telegrams_ok(self.metrics, SOURCE).expect("p1guard serves /metrics");
            if counted >= target {
                break;
            }
            assert!(
                started.elapsed() < TIMEOUT,
                "p1guard ingested {} of {TELEGRAMS} telegrams in {TIMEOUT:?}",
                counted - self.ingested
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let elapsed = started.elapsed();
        let used = [
            cpu_ticks(self.p1guard.pid()) - ticks[0],
            cpu_ticks(self.mosquitto.pid()) - ticks[1],
            cpu_ticks(std::process::id()) - ticks[2],
        ];
        let acks = publisher.close();
        assert_eq!(
            counted, target,
            "more telegrams than published were counted"
        );
        self.ingested = counted;
        let share = |t: u64| t as f64 / TICKS_PER_SECOND / elapsed.as_secs_f64() * 100.0;
        eprintln!(
            "fleet: {TELEGRAMS} telegrams in {:.3} s ({:.0}/s; all published at QoS 1 after {:.3} s, {} PUBACKs); \
             CPU of one core: p1guard {:.0}%, mosquitto {:.0}%, publisher {:.0}%",
            elapsed.as_secs_f64(),
            TELEGRAMS as f64 / elapsed.as_secs_f64(),
            published.as_secs_f64(),
            acks.saturating_sub(4) / 4,
            share(used[0]),
            share(used[1]),
            share(used[2]),
        );
        let totals = &mut self.totals;
        totals.windows += 1;
        totals.telegrams += TELEGRAMS;
        totals.wall += elapsed;
        totals.p1guard += used[0];
        totals.mosquitto += used[1];
        totals.publisher += used[2];
        elapsed
    }

    fn finish(mut self, variant: &str) {
        let totals = &self.totals;
        let wall = totals.wall.as_secs_f64();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let share = |t: u64| t as f64 / TICKS_PER_SECOND / wall * 100.0;
        eprintln!(
            "fleet/{variant}: {} windows, {} telegrams in {wall:.2} s = {:.0} telegrams/s; \
             CPU p1guard {:.0}% of a core ({:.0}% of the machine's {cores} cores, {:.1} us/telegram), \
             mosquitto {:.0}% of a core ({:.0}% of the machine), publisher {:.0}% of a core",
            totals.windows,
            totals.telegrams,
            totals.telegrams as f64 / wall,
            share(totals.p1guard),
            share(totals.p1guard) / cores,
            us_per_telegram(totals.p1guard, totals.telegrams),
            share(totals.mosquitto),
            share(totals.mosquitto) / cores,
            share(totals.publisher),
        );
        self.p1guard.stop();
        let log = std::fs::read_to_string(self.dir.join("p1guard.log")).unwrap_or_default();
        let summary: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.starts_with("source ") || l.starts_with("conduct: ") || l.starts_with("sink ")
            })
            .collect();
        eprintln!(
            "fleet/{variant}: p1guard's summary:\n{}",
            summary.join("\n")
        );
        self.mosquitto.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fleet(c: &mut Criterion) {
    let mut group = c.benchmark_group("fleet_10k_meters_mosquitto");
    group.throughput(Throughput::Elements(TELEGRAMS));
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    // About one window a sample at QoS 1 (~3-3.5 s each here); criterion may warn that 10
    // samples take a little longer.
    group.measurement_time(Duration::from_secs(30));
    for (variant, sink, messages) in [
        ("stdout_daily", Sink::Stdout, Messages::PerTelegram),
        ("sqlite_quarter_hour", Sink::Sqlite, Messages::PerTelegram),
        ("stdout_live", Sink::StdoutLive, Messages::PerTelegram),
        (
            "stdout_daily_gateway_batches",
            Sink::Stdout,
            Messages::PerGateway,
        ),
    ] {
        // Started on first use, so that a filter (`cargo bench --bench fleet -- sqlite`)
        // starts only what it runs.
        let mut rig = None;
        group.bench_function(variant, |b| {
            let rig = rig.get_or_insert_with(|| Rig::start(variant, sink, messages));
            b.iter_custom(|iters| (0..iters).map(|_| rig.window()).sum())
        });
        if let Some(rig) = rig {
            rig.finish(variant);
        }
    }
    group.finish();
}

criterion_group!(benches, fleet);
criterion_main!(benches);
