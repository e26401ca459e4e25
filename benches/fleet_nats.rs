//! Fleet ingest from NATS JetStream: 10,000 DSMR 5 meters, each publishing a telegram a
//! second on `p1.<meter>.telegram` (one message per telegram), sent as fast as the server
//! takes them, into one or two `p1guard run` workers (release build) sharing the stream's
//! 16 partitions by leases (`[[sources]] type = "nats"`).
//!
//! The rig of `benches/fleet.rs`, with nats-server in mosquitto's place: the bench starts
//! `nats-server` on a free port with JetStream (file storage in a scratch directory) and the
//! fleet's subject mapping (`p1.*.telegram` to `p1.part.<partition(16)>.<meter>`, as
//! `config/nats/nats-server.conf` has it), creates the stream `P1` (`p1.part.>`, file
//! storage) as a worker would, and starts the workers: the same configuration, each with a
//! state directory and a `/metrics` port of its own. Before timing, it waits until the
//! partitions have settled among the workers (every partition owned, each worker owning
//! some, and no lease moving for 3 s), so that the windows measure the steady state.
//!
//! One server and one set of workers run through all iterations of a variant; every
//! iteration carries the next `SECONDS` seconds of the fleet (10,000 x `SECONDS`
//! telegrams). Timed: from the first byte published until the sum over the workers of
//! `p1guard_telegrams_total{result="ok"}` on their `/metrics` counts every telegram.
//! Generating and encoding the telegrams is not timed.
//!
//! The publisher is one plain TCP connection speaking the NATS client protocol, the `PUB`
//! frames encoded beforehand into one buffer (core publishes, no acknowledgement per
//! message; a `PING` after the last waits for the server's `PONG`, so that the server has
//! read them all), which costs little CPU. After each window the stream's message count is
//! checked against what was published: the server dropped none. The CPU time (utime + stime
//! from `/proc`) of each worker, of nats-server and of the publishing thread over each
//! window is printed on stderr; at the end of a variant the median and range over its
//! windows of telegrams/s and of each one's CPU per telegram. On loopback, the kernel's
//! delivery of what a process sends is mostly charged to the sender.
//!
//! Before the windows, untimed by criterion but reported: `SECONDS` seconds of the fleet
//! published into the stream with no worker running (the server's cost of taking telegrams
//! in alone), then the workers started on that backlog until they have counted it (the cost
//! of reading the stream with nothing published meanwhile, the workers' start-up and, with
//! several, the partitions' moves included).
//!
//! Variants: a stdout sink at `daily` with consent `quarter_hour` for every meter, and
//! `stdout_live` (consent and sink at `live`: every telegram is a record through the
//! outbox), each with 1 and 2 workers.
//!
//! `cargo bench --bench fleet_nats`; needs `nats-server` 2.9 or later (`apt-get install
//! nats-server`). To time another build of p1guard in the same rig, name its binary in
//! `P1GUARD_BENCH_BINARY`; to keep the workers' and the server's logs and state (not the
//! stream's store), set `P1GUARD_BENCH_KEEP_LOGS`; to try another partition count,
//! `P1GUARD_BENCH_PARTITIONS`. `P1GUARD_BENCH_NATS_CONFIG` is added to
//! the server's configuration (say `prof_port: 6060`, for the server's own pprof profile:
//! `curl -o cpu.pprof 'http://127.0.0.1:6060/debug/pprof/profile?seconds=10'`).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use p1guard_simulator::Simulator;

#[path = "rig/mod.rs"]
mod rig;

use rig::{
    Process, TICKS_PER_SECOND, cpu_ticks, fleet_meters, free_port, require, stat_ticks,
    telegrams_ok, us_per_telegram, wait_for_port, workdir,
};

/// Meters in the fleet.
const METERS: usize = 10_000;
/// Seconds of the fleet's telegrams per iteration.
const SECONDS: usize = 10;
/// Telegrams per iteration.
const TELEGRAMS: u64 = (METERS * SECONDS) as u64;
/// The source's name in the config and in `/metrics`.
const SOURCE: &str = "fleet";
/// The stream of partition subjects.
const STREAM: &str = "P1";
/// Partitions of the server's mapping and of the source: the shipped example's 16, or
/// `P1GUARD_BENCH_PARTITIONS`.
fn partitions() -> u16 {
    std::env::var("P1GUARD_BENCH_PARTITIONS").map_or(16, |count| {
        count
            .parse()
            .expect("P1GUARD_BENCH_PARTITIONS: a partition count")
    })
}
/// A timed window that does not end by then fails the bench.
const TIMEOUT: Duration = Duration::from_secs(120);
/// How long no lease may move before the partitions count as settled.
const SETTLED_AFTER: Duration = Duration::from_secs(3);

/// CPU time the calling thread has used so far, in clock ticks.
fn thread_ticks() -> u64 {
    stat_ticks("/proc/thread-self/stat")
}

/// The server's configuration: JetStream storing in `dir`, and the fleet's mapping of
/// `p1.<meter>.telegram` onto the partitions (as `config/nats/nats-server.conf`).
fn nats_config(dir: &Path) -> String {
    let partitions = partitions();
    format!(
        "server_name: p1-bench\n\
         jetstream {{ store_dir: {:?} }}\n\
         mappings = {{ \"p1.*.telegram\": \"p1.part.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}\" }}\n",
        dir.join("jetstream")
    )
}

fn start_nats(dir: &Path) -> (Process, u16) {
    let binary = require("nats-server", "nats-server");
    let port = free_port();
    let config = dir.join("nats-server.conf");
    let mut text = nats_config(dir);
    if let Ok(extra) = std::env::var("P1GUARD_BENCH_NATS_CONFIG") {
        text.push_str(&extra);
        text.push('\n');
    }
    std::fs::write(&config, text).expect("the server config is written");
    let child = Command::new(binary)
        .arg("-c")
        .arg(&config)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("nats-server.log")).expect("a log file"))
        .spawn()
        .expect("nats-server starts");
    let process = Process {
        child,
        name: "nats-server",
    };
    wait_for_port(port, "nats-server");
    (process, port)
}

fn p1guard_config(dir: &Path, key: &Path, server: u16, metrics: u16, sink: Sink) -> PathBuf {
    let partitions = partitions();
    let (consent, granularity) = match sink {
        Sink::StdoutLive => ("live", "live"),
        Sink::Stdout => ("quarter_hour", "daily"),
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
type = "nats"
url = "nats://127.0.0.1:{server}"
stream = "{STREAM}"
partitions = {partitions}
lease_ttl_secs = 2

[[sinks]]
type = "stdout"
max_granularity = "{granularity}"
"#
    );
    let path = dir.join("p1guard.toml");
    std::fs::write(&path, &text).expect("the config is written");
    path
}

/// One `p1guard run` of the fleet.
struct Worker {
    process: Process,
    /// Its state directory, which holds its log too.
    dir: PathBuf,
    metrics: u16,
}

/// What a worker's log says of its partitions so far.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
struct Leases {
    taken_over: usize,
    handed_over: usize,
    lost: usize,
}

impl Leases {
    fn owned(&self) -> i64 {
        self.taken_over as i64 - self.handed_over as i64 - self.lost as i64
    }
}

impl Worker {
    fn start(dir: &Path, key: &Path, server: u16, sink: Sink) -> Worker {
        std::fs::create_dir_all(dir).expect("a state directory");
        let metrics = free_port();
        let config = p1guard_config(dir, key, server, metrics, sink);
        let binary = std::env::var_os("P1GUARD_BENCH_BINARY").map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_p1guard")),
            PathBuf::from,
        );
        let child = Command::new(binary)
            .args(["run", "--config"])
            .arg(&config)
            .env("STATE_DIRECTORY", dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("p1guard.log")).expect("a log file"))
            .spawn()
            .expect("p1guard runs");
        let process = Process {
            child,
            name: "p1guard",
        };
        wait_for_port(metrics, "p1guard's /metrics");
        Worker {
            process,
            dir: dir.to_owned(),
            metrics,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("p1guard.log")).unwrap_or_default()
    }

    fn leases(&self) -> Leases {
        let log = self.log();
        let count = |what: &str| log.lines().filter(|line| line.contains(what)).count();
        Leases {
            taken_over: count("partition taken over"),
            handed_over: count("handed over"),
            lost: count("partition lost"),
        }
    }

    fn ok(&self) -> u64 {
        telegrams_ok(self.metrics, SOURCE).expect("p1guard serves /metrics")
    }
}

/// The whole fleet's meters, each going on from where it stopped.
struct Fleet {
    meters: Vec<(String, Simulator)>,
    /// Reused buffers.
    telegram: Vec<u8>,
    frames: Vec<u8>,
}

impl Fleet {
    fn new() -> Fleet {
        let meters = fleet_meters(METERS, |id| format!("p1.{id}.telegram"));
        Fleet {
            meters,
            telegram: Vec::with_capacity(16 * 1024),
            frames: Vec::new(),
        }
    }

    /// The next `seconds` seconds of every meter as NATS `PUB` frames, second by second a
    /// telegram a message.
    fn next_frames(&mut self, seconds: usize) -> &[u8] {
        self.frames.clear();
        for _ in 0..seconds {
            for (subject, simulator) in &mut self.meters {
                self.telegram.clear();
                simulator
                    .next_into(&mut self.telegram)
                    .expect("the day has not ended");
                publish(&mut self.frames, subject, &self.telegram);
            }
        }
        &self.frames
    }
}

/// A core NATS publish.
fn publish(out: &mut Vec<u8>, subject: &str, payload: &[u8]) {
    let mut head = String::with_capacity(64);
    let _ = write!(head, "PUB {subject} {}\r\n", payload.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// A publisher connection to the server, speaking the client protocol.
struct Publisher {
    stream: TcpStream,
}

impl Publisher {
    /// Connects and waits until the server has taken the CONNECT.
    fn connect(port: u16) -> Publisher {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("the server accepts");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let mut publisher = Publisher { stream };
        publisher.send(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"bench-fleet-publisher\",\
              \"lang\":\"rust\",\"version\":\"0\",\"protocol\":1}\r\nPING\r\n",
        );
        publisher.until_pong();
        publisher
    }

    fn send(&mut self, frames: &[u8]) {
        self.stream.write_all(frames).expect("the server takes it");
    }

    /// PING, and waits for the PONG: the server has read every frame before.
    fn flush(&mut self) {
        self.send(b"PING\r\n");
        self.until_pong();
    }

    fn until_pong(&mut self) {
        let mut received = Vec::new();
        let mut buffer = [0u8; 4096];
        while !received.windows(6).any(|w| w == b"PONG\r\n") {
            let n = self.stream.read(&mut buffer).expect("the server answers");
            assert!(
                n > 0,
                "the server closed the connection: {}",
                String::from_utf8_lossy(&received)
            );
            received.extend_from_slice(&buffer[..n]);
        }
        assert!(
            !received.windows(4).any(|w| w == b"-ERR"),
            "the server refused: {}",
            String::from_utf8_lossy(&received)
        );
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

#[derive(Clone, Copy)]
enum Sink {
    Stdout,
    StdoutLive,
}

/// One timed window's figures.
struct Window {
    elapsed: Duration,
    /// CPU ticks of each worker.
    workers: Vec<u64>,
    nats: u64,
    publisher: u64,
    /// The whole bench process (the publisher and the polling of `/metrics`).
    bench: u64,
}

/// A server, its stream, and the workers reading it, with the fleet that publishes to them.
struct Rig {
    dir: PathBuf,
    runtime: tokio::runtime::Runtime,
    nats: Process,
    port: u16,
    workers: Vec<Worker>,
    fleet: Fleet,
    /// Telegrams counted ok so far, by each worker.
    ingested: Vec<u64>,
    /// Telegrams published so far.
    published: u64,
    /// The workers' partitions once settled.
    settled: Vec<Leases>,
    windows: Vec<Window>,
}

impl Rig {
    fn start(variant: &str, sink: Sink, workers: usize) -> Rig {
        let dir = workdir("p1guard-bench-fleet-nats", variant);
        let key = dir.join("identity.key");
        std::fs::write(&key, format!("{}\n", "5a".repeat(32))).expect("the key is written");
        let (nats, port) = start_nats(&dir);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let mut rig = Rig {
            dir: dir.clone(),
            runtime,
            nats,
            port,
            workers: Vec::new(),
            fleet: Fleet::new(),
            ingested: vec![0; workers],
            published: 0,
            settled: Vec::new(),
            windows: Vec::new(),
        };
        // As a worker makes it, should none have yet: published before, nothing is lost.
        rig.runtime.block_on(async {
            let client = async_nats::connect(format!("nats://127.0.0.1:{port}"))
                .await
                .expect("a NATS connection");
            jetstream::new(client)
                .get_or_create_stream(stream::Config {
                    name: STREAM.into(),
                    subjects: vec!["p1.part.>".into()],
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .expect("the stream is made");
        });
        eprintln!(
            "fleet_nats/{variant}: timing {}",
            std::env::var("P1GUARD_BENCH_BINARY")
                .unwrap_or_else(|_| env!("CARGO_BIN_EXE_p1guard").to_owned())
        );
        // Untimed by criterion, but reported: the server's cost of taking the telegrams into
        // the stream alone, with no worker reading ...
        rig.fleet.next_frames(SECONDS);
        let frames = std::mem::take(&mut rig.fleet.frames);
        let mut publisher = Publisher::connect(port);
        let nats_ticks = cpu_ticks(rig.nats.pid());
        let publishing = thread_ticks();
        let started = Instant::now();
        publisher.send(&frames);
        publisher.flush();
        let published = started.elapsed();
        let publisher_ticks = thread_ticks() - publishing;
        drop(publisher);
        rig.fleet.frames = frames;
        rig.published = TELEGRAMS;
        while rig.stream_messages() < rig.published {
            assert!(
                started.elapsed() < TIMEOUT,
                "the stream did not take the telegrams"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let stored = started.elapsed();
        let nats_ticks = cpu_ticks(rig.nats.pid()) - nats_ticks;
        let us = |t: u64| us_per_telegram(t, TELEGRAMS);
        eprintln!(
            "fleet_nats/{variant}: ingest alone (no worker): {TELEGRAMS} telegrams ({} bytes of PUB frames) \
             in the stream after {:.3} s ({:.0}/s; all published after {:.3} s); CPU us/telegram: nats-server {:.2}, publisher {:.2}",
            rig.fleet.frames.len(),
            stored.as_secs_f64(),
            TELEGRAMS as f64 / stored.as_secs_f64(),
            published.as_secs_f64(),
            us(nats_ticks),
            us(publisher_ticks),
        );
        // ... and the workers' and the server's cost of reading them with nothing published
        // meanwhile: the workers start on a stream that holds them, and claim the partitions
        // as they come (with several workers, while the partitions move among them).
        let nats_ticks = cpu_ticks(rig.nats.pid());
        let started = Instant::now();
        rig.workers = (0..workers)
            .map(|i| Worker::start(&dir.join(format!("worker-{i}")), &key, port, sink))
            .collect();
        while rig.ingested.iter().sum::<u64>() < rig.published {
            assert!(
                started.elapsed() < TIMEOUT,
                "the workers did not read the stream; see {}",
                rig.dir.display()
            );
            std::thread::sleep(Duration::from_millis(2));
            rig.ingested = rig.workers.iter().map(Worker::ok).collect();
        }
        let drained = started.elapsed();
        let workers_ticks: Vec<u64> = (rig.workers.iter())
            .map(|worker| cpu_ticks(worker.process.pid()))
            .collect();
        let nats_ticks = cpu_ticks(rig.nats.pid()) - nats_ticks;
        eprintln!(
            "fleet_nats/{variant}: stream read alone (workers started on it): {} telegrams counted by {:?} \
             after {:.3} s ({:.0}/s, start-up included); CPU us/telegram: p1guard {:.2} ({}, start-up included), nats-server {:.2}",
            rig.ingested.iter().sum::<u64>(),
            rig.ingested,
            drained.as_secs_f64(),
            TELEGRAMS as f64 / drained.as_secs_f64(),
            us(workers_ticks.iter().sum()),
            (workers_ticks.iter())
                .map(|&t| format!("{:.2}", us(t)))
                .collect::<Vec<_>>()
                .join(" + "),
            us(nats_ticks),
        );
        rig.settle(variant);
        rig.wait_until_quiet();
        rig
    }

    /// Waits until every partition is owned, each worker owns some, and no lease moved for
    /// `SETTLED_AFTER`.
    fn settle(&mut self, variant: &str) {
        let started = Instant::now();
        let mut last = Vec::new();
        let mut since = Instant::now();
        loop {
            for worker in &mut self.workers {
                worker.process.check_alive();
            }
            let leases: Vec<Leases> = self.workers.iter().map(Worker::leases).collect();
            let owned: Vec<i64> = leases.iter().map(Leases::owned).collect();
            let settled = owned.iter().sum::<i64>() == i64::from(partitions())
                && owned.iter().all(|&o| o > 0);
            if leases != last {
                last = leases;
                since = Instant::now();
            } else if settled && since.elapsed() >= SETTLED_AFTER {
                eprintln!(
                    "fleet_nats/{variant}: partitions settled after {:.1} s: {owned:?} ({last:?})",
                    started.elapsed().as_secs_f64()
                );
                self.settled = last;
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "the partitions did not settle: {owned:?}; see {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the ok counts stop moving.
    fn wait_until_quiet(&mut self) {
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now: Vec<u64> = self.workers.iter().map(Worker::ok).collect();
            if now == self.ingested {
                return;
            }
            self.ingested = now;
        }
    }

    fn stream_messages(&self) -> u64 {
        let port = self.port;
        self.runtime.block_on(async {
            let client = async_nats::connect(format!("nats://127.0.0.1:{port}"))
                .await
                .expect("a NATS connection");
            let mut stream = jetstream::new(client)
                .get_stream(STREAM)
                .await
                .expect("the stream");
            stream.info().await.expect("its info").state.messages
        })
    }

    fn ticks(&self) -> (Vec<u64>, u64, u64) {
        (
            self.workers
                .iter()
                .map(|worker| cpu_ticks(worker.process.pid()))
                .collect(),
            cpu_ticks(self.nats.pid()),
            cpu_ticks(std::process::id()),
        )
    }

    /// One timed window: the next `SECONDS` seconds of the fleet.
    fn window(&mut self) -> Duration {
        for worker in &mut self.workers {
            worker.process.check_alive();
        }
        self.nats.check_alive();
        self.fleet.next_frames(SECONDS);
        // Borrowed out of the fleet for the window, and given back for reuse.
        let frames = std::mem::take(&mut self.fleet.frames);
        let before: u64 = self.ingested.iter().sum();
        let target = before + TELEGRAMS;
        let mut publisher = Publisher::connect(self.port);
        let ticks = self.ticks();
        let publishing = thread_ticks();
        let started = Instant::now();
        publisher.send(&frames);
        publisher.flush();
        let published = started.elapsed();
        self.fleet.frames = frames;
        let publisher_ticks = thread_ticks() - publishing;
        let mut counted;
        loop {
            counted = self.workers.iter().map(Worker::ok).collect::<Vec<u64>>();
            if counted.iter().sum::<u64>() >= target {
                break;
            }
            if started.elapsed() > TIMEOUT {
                panic!(
                    "the workers ingested {} of {TELEGRAMS} telegrams in {TIMEOUT:?}; the stream holds {} of {} published",
                    counted.iter().sum::<u64>() - before,
                    self.stream_messages(),
                    self.published + TELEGRAMS,
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let elapsed = started.elapsed();
        let after = self.ticks();
        drop(publisher);
        self.published += TELEGRAMS;
        let held = self.stream_messages();
        assert_eq!(held, self.published, "the stream holds what was published");
        let total: u64 = counted.iter().sum();
        if total > target {
            eprintln!(
                "fleet_nats: {} telegrams more than published were counted (read again after a hand-over?)",
                total - target
            );
        }
        let shares: Vec<u64> = (counted.iter().zip(&self.ingested))
            .map(|(now, then)| now - then)
            .collect();
        self.ingested = counted;
        let window = Window {
            elapsed,
            workers: (after.0.iter().zip(&ticks.0)).map(|(a, b)| a - b).collect(),
            nats: after.1 - ticks.1,
            publisher: publisher_ticks,
            bench: after.2 - ticks.2,
        };
        let us = |t: u64| us_per_telegram(t, TELEGRAMS);
        eprintln!(
            "fleet_nats: {TELEGRAMS} telegrams in {:.3} s ({:.0}/s; all published after {:.3} s); \
             shares {shares:?}; CPU us/telegram: p1guard {:.2} ({}), nats-server {:.2}, publisher {:.2}, bench process {:.2}",
            elapsed.as_secs_f64(),
            TELEGRAMS as f64 / elapsed.as_secs_f64(),
            published.as_secs_f64(),
            us(window.workers.iter().sum()),
            (window.workers.iter())
                .map(|&t| format!("{:.2}", us(t)))
                .collect::<Vec<_>>()
                .join(" + "),
            us(window.nats),
            us(window.publisher),
            us(window.bench),
        );
        self.windows.push(window);
        elapsed
    }

    fn finish(mut self, variant: &str) {
        let windows = &self.windows;
        let mut rates: Vec<f64> = (windows.iter())
            .map(|w| TELEGRAMS as f64 / w.elapsed.as_secs_f64())
            .collect();
        let series = |f: &dyn Fn(&Window) -> u64| -> Vec<f64> {
            windows
                .iter()
                .map(|w| us_per_telegram(f(w), TELEGRAMS))
                .collect()
        };
        let mut lines = vec![format!("telegrams/s {}", spread(&mut rates, 0))];
        lines.push(format!(
            "CPU us/telegram: p1guard (all workers) {}",
            spread(&mut series(&|w| w.workers.iter().sum()), 2)
        ));
        for i in 0..self.workers.len() {
            lines.push(format!(
                "  worker {i} {}",
                spread(&mut series(&|w| w.workers[i]), 2)
            ));
        }
        lines.push(format!(
            "  nats-server {}",
            spread(&mut series(&|w| w.nats), 2)
        ));
        lines.push(format!(
            "  publisher {}",
            spread(&mut series(&|w| w.publisher), 2)
        ));
        lines.push(format!(
            "  bench process {}",
            spread(&mut series(&|w| w.bench), 2)
        ));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let wall: f64 = windows.iter().map(|w| w.elapsed.as_secs_f64()).sum();
        let all: u64 = windows
            .iter()
            .map(|w| w.workers.iter().sum::<u64>() + w.nats + w.bench)
            .sum();
        lines.push(format!(
            "machine busy {:.0}% of its {cores} cores over the windows",
            all as f64 / TICKS_PER_SECOND / wall / cores as f64 * 100.0
        ));
        eprintln!(
            "fleet_nats/{variant}: {} windows of {TELEGRAMS} telegrams (median [min, max]):\n  {}",
            windows.len(),
            lines.join("\n  ")
        );
        let leases: Vec<Leases> = self.workers.iter().map(Worker::leases).collect();
        if leases != self.settled {
            eprintln!(
                "fleet_nats/{variant}: leases moved during the windows: {:?} -> {leases:?}",
                self.settled
            );
        }
        eprintln!(
            "fleet_nats/{variant}: telegrams per worker {:?}",
            self.ingested
        );
        for (i, worker) in self.workers.iter_mut().enumerate() {
            worker.process.stop();
            let log = worker.log();
            let summary: Vec<&str> = log
                .lines()
                .filter(|l| {
                    l.starts_with("source ") || l.starts_with("conduct: ") || l.starts_with("sink ")
                })
                .collect();
            eprintln!(
                "fleet_nats/{variant}: worker {i}'s summary:\n{}\nits warnings and errors:\n{}",
                summary.join("\n"),
                warnings(&log).join("\n")
            );
        }
        self.nats.stop();
        let log = std::fs::read_to_string(self.dir.join("nats-server.log")).unwrap_or_default();
        let noteworthy: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("[WRN]") || l.contains("[ERR]"))
            .collect();
        if !noteworthy.is_empty() {
            eprintln!(
                "fleet_nats/{variant}: nats-server's warnings:\n{}",
                noteworthy.join("\n")
            );
        }
        if std::env::var_os("P1GUARD_BENCH_KEEP_LOGS").is_some() {
            let _ = std::fs::remove_dir_all(self.dir.join("jetstream"));
            eprintln!(
                "fleet_nats/{variant}: logs and state kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The WARN and ERROR lines of a worker's log, alike ones but for their partition counted
/// once: `<count> x <first time> <line>`.
fn warnings(log: &str) -> Vec<String> {
    let mut kinds: Vec<(String, &str, usize)> = Vec::new();
    for line in log.lines() {
        if !(line.contains(" WARN ") || line.contains(" ERROR ")) {
            continue;
        }
        let (time, rest) = line.split_once(' ').unwrap_or(("", line));
        let mut words: Vec<&str> = Vec::new();
        for word in rest.split(' ') {
            if word.starts_with("partition=") {
                continue;
            }
            let number = word.trim_end_matches(':');
            let number = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
            words.push(
                match (
                    number && words.last() == Some(&"partition"),
                    word.ends_with(':'),
                ) {
                    (true, true) => "<p>:",
                    (true, false) => "<p>",
                    (false, _) => word,
                },
            );
        }
        let kind = words.join(" ");
        match kinds.iter_mut().find(|(k, _, _)| *k == kind) {
            Some((_, _, count)) => *count += 1,
            None => kinds.push((kind, time, 1)),
        }
    }
    kinds
        .into_iter()
        .map(|(kind, time, count)| format!("{count} x {time} {kind}"))
        .collect()
}

/// `median [min, max]` of `values`.
fn spread(values: &mut [f64], decimals: usize) -> String {
    if values.is_empty() {
        return "-".into();
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    format!(
        "{median:.decimals$} [{:.decimals$}, {:.decimals$}]",
        values[0],
        values[n - 1]
    )
}

fn fleet_nats(c: &mut Criterion) {
    let mut group = c.benchmark_group("fleet_10k_meters_nats");
    group.throughput(Throughput::Elements(TELEGRAMS));
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_secs(20));
    for (variant, sink, workers) in [
        ("stdout_daily_1_worker", Sink::Stdout, 1),
        ("stdout_daily_2_workers", Sink::Stdout, 2),
        ("stdout_live_1_worker", Sink::StdoutLive, 1),
        ("stdout_live_2_workers", Sink::StdoutLive, 2),
    ] {
        // Started on first use, so that a filter (`cargo bench --bench fleet_nats -- live`)
        // starts only what it runs.
        let mut rig = None;
        group.bench_function(variant, |b| {
            let rig = rig.get_or_insert_with(|| Rig::start(variant, sink, workers));
            b.iter_custom(|iters| (0..iters).map(|_| rig.window()).sum())
        });
        if let Some(rig) = rig {
            rig.finish(variant);
        }
    }
    group.finish();
}

criterion_group!(benches, fleet_nats);
criterion_main!(benches);
