//! A real `nats-server` with JetStream on free ports, and what a fleet takes from it: the
//! subject mapping that puts each meter on a partition, ingress through its MQTT listener,
//! and the partition leases among workers (`p1guard::fleet::lease`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use p1guard::fleet::lease::{Leases, WorkerId};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::daemon::{require, signal};
use crate::mosquitto::{free_port, publish_all};
use crate::scratch;

/// A `nats-server`, killed when dropped.
pub struct NatsServer {
    child: Child,
    /// Where it takes NATS clients, on 127.0.0.1.
    pub port: u16,
    log: PathBuf,
}

impl NatsServer {
    /// Starts one in `dir` with the configuration file `config`, its client listener on a free
    /// port of 127.0.0.1 (whatever `config` says), and waits until it takes connections, on
    /// `mqtt_port` too if its configuration opens one.
    pub fn start(dir: &Path, config: &str, mqtt_port: Option<u16>) -> NatsServer {
        let binary = require("nats-server", "nats-server");
        let port = free_port();
        let file = dir.join("nats-server.conf");
        std::fs::write(&file, config).unwrap();
        let log = dir.join("nats-server.log");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&file)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("nats-server starts");
        let mut server = NatsServer { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in [Some(port), mqtt_port].into_iter().flatten() {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                let exited = server.child.try_wait().unwrap();
                assert!(
                    exited.is_none() && Instant::now() < deadline,
                    "nats-server did not listen on {port} ({exited:?}):\n{}",
                    std::fs::read_to_string(&server.log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Freezes the server (SIGSTOP): it holds its connections and answers nothing.
    pub fn freeze(&self) {
        signal(self.child.id(), "STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        signal(self.child.id(), "CONT");
    }

    /// A JetStream context on a connection of its own.
    pub async fn jetstream(&self) -> jetstream::Context {
        let client = async_nats::connect(self.url())
            .await
            .expect("a NATS connection");
        jetstream::new(client)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test server's configuration: JetStream storing in `dir`, and the fleet's mapping of
/// `p1.<meter>.telegram` onto `partitions` partitions.
pub fn mapping_config(dir: &Path, partitions: u16) -> String {
    format!(
        "server_name: p1-test\n\
         jetstream {{ store_dir: {:?} }}\n\
         mappings = {{ \"p1.*.telegram\": \"p1.part.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}\" }}\n",
        dir.join("jetstream")
    )
}

/// The example configuration as shipped (`config/nats/nats-server.conf`), storing in `dir`,
/// its MQTT listener on `mqtt_port` of 127.0.0.1.
pub fn shipped_config(dir: &Path, mqtt_port: u16) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nats/nats-server.conf");
    let shipped = std::fs::read_to_string(path).unwrap();
    let mut config = shipped.clone();
    for (setting, test) in [
        (
            "store_dir: /var/lib/nats",
            format!("store_dir: {:?}", dir.join("jetstream")),
        ),
        (
            "    port: 1883",
            format!("    host: 127.0.0.1\n    port: {mqtt_port}"),
        ),
    ] {
        assert_eq!(
            shipped.matches(setting).count(),
            1,
            "the example sets {setting:?} once"
        );
        config = config.replace(setting, &test);
    }
    config
}

/// The stream a nats source reads: every partition subject, on disk.
async fn partition_stream(jetstream: &jetstream::Context) -> stream::Stream {
    jetstream
        .get_or_create_stream(stream::Config {
            name: "P1".into(),
            subjects: vec!["p1.part.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("the stream is made")
}

/// The subjects of the first `count` messages of `stream`, in order, once it holds them.
async fn stored_subjects(stream: &mut stream::Stream, count: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = stream.info().await.expect("stream info").state.messages;
        if held >= count {
            assert_eq!(held, count, "the stream holds what was published, no more");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stream holds {held} of {count} messages"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut subjects = Vec::new();
    for sequence in 1..=count {
        let message = stream.get_raw_message(sequence).await.expect("a message");
        subjects.push(message.subject.to_string());
    }
    subjects
}

/// Each meter's partitions, from subjects `p1.part.<p>.<meter>`.
fn partitions_by_meter(subjects: &[String]) -> BTreeMap<String, BTreeSet<u16>> {
    let mut meters: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for subject in subjects {
        let rest = subject
            .strip_prefix("p1.part.")
            .expect("a partition subject");
        let (partition, meter) = rest.split_once('.').expect("p1.part.<p>.<meter>");
        let partition = partition.parse().expect("a partition number");
        meters
            .entry(meter.to_string())
            .or_default()
            .insert(partition);
    }
    meters
}

fn meter(i: usize) -> String {
    format!("E0044007315{i:06}")
}

/// 200 meters publishing three times each on `p1.<meter>.telegram`: the server puts each on
/// one partition, always the same, every partition gets some, and the stream holds them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mapping_puts_each_meter_on_one_partition_and_uses_them_all() {
    let dir = scratch("nats-mapping");
    let server = NatsServer::start(&dir, &mapping_config(&dir, 8), None);
    let jetstream = server.jetstream().await;
    let mut stream = partition_stream(&jetstream).await;
    let client = jetstream.client();
    for round in 0..3 {
        for i in 0..200 {
            let subject = format!("p1.{}.telegram", meter(i));
            client
                .publish(subject, format!("{round}").into())
                .await
                .unwrap();
        }
    }
    client.flush().await.unwrap();

    let meters = partitions_by_meter(&stored_subjects(&mut stream, 600).await);
    assert_eq!(
        meters.keys().cloned().collect::<Vec<_>>(),
        (0..200).map(meter).collect::<Vec<_>>()
    );
    let mut per_partition = [0; 8];
    for (meter, partitions) in &meters {
        assert_eq!(
            partitions.len(),
            1,
            "{meter} is on partitions {partitions:?}"
        );
        let partition: u16 = *partitions.first().unwrap();
        per_partition[usize::from(partition)] += 1;
    }
    assert!(
        per_partition.iter().all(|&meters| meters > 0),
        "meters per partition: {per_partition:?}"
    );
    println!("meters per partition: {per_partition:?}");
}

/// The example configuration as shipped: MQTT QoS 1 publishes to `p1/<meter>/telegram` on
/// its MQTT listener land on `p1.part.<p>.<meter>`, the same partition as the meter's NATS
/// publishes, one of its 64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_publishes_land_on_the_meters_partitions() {
    let dir = scratch("nats-mqtt");
    let mqtt_port = free_port();
    let server = NatsServer::start(&dir, &shipped_config(&dir, mqtt_port), Some(mqtt_port));
    let jetstream = server.jetstream().await;
    let mut stream = partition_stream(&jetstream).await;

    let messages: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("p1/{}/telegram", meter(i)), b"mqtt".to_vec()))
        .collect();
    tokio::task::spawn_blocking(move || publish_all(mqtt_port, "nats-mqtt-test", messages))
        .await
        .unwrap();
    let client = jetstream.client();
    for i in 0..20 {
        let subject = format!("p1.{}.telegram", meter(i));
        client.publish(subject, "nats".into()).await.unwrap();
    }
    client.flush().await.unwrap();

    let subjects = stored_subjects(&mut stream, 40).await;
    let meters = partitions_by_meter(&subjects);
    assert_eq!(meters.len(), 20);
    for (meter, partitions) in &meters {
        assert_eq!(
            partitions.len(),
            1,
            "{meter}: MQTT and NATS on {partitions:?}"
        );
        assert!(
            *partitions.first().unwrap() < 16,
            "the example has 16 partitions"
        );
    }
    let first = stream.get_raw_message(1).await.unwrap();
    assert_eq!(
        first.payload.as_ref(),
        b"mqtt",
        "the MQTT publishes came first, intact"
    );
    println!("MQTT and NATS: {}", subjects[..3].join(", "));
}

/// Partitions of the lease test.
const PARTITIONS: u16 = 16;

/// The lease TTL of the lease test: short, so that expiry is seen in seconds.
const TTL: Duration = Duration::from_secs(3);

/// Who reads which partition now, across the fleet, as its consumers say; a partition
/// started by one while another reads it is an overlap.
#[derive(Debug, Default)]
struct Register {
    reading: BTreeMap<u16, WorkerId>,
    overlaps: Vec<String>,
}

impl Register {
    fn start(&mut self, partition: u16, worker: WorkerId) {
        if let Some(other) = self.reading.insert(partition, worker) {
            self.overlaps.push(format!(
                "{worker} started partition {partition} while {other} read it"
            ));
        }
    }

    fn stop(&mut self, partition: u16, worker: WorkerId) {
        if self.reading.get(&partition) == Some(&worker) {
            self.reading.remove(&partition);
        }
    }
}

/// A worker of the fleet: its `Leases` and a consumer that follows them as the nats source
/// will, handing partitions over at once.
struct Worker {
    id: WorkerId,
    owned: watch::Receiver<BTreeSet<u16>>,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    async fn start(server: &NatsServer, register: &Arc<Mutex<Register>>) -> Worker {
        let id = WorkerId::random().unwrap();
        let leases = Leases::start(&server.jetstream().await, "leases", id, PARTITIONS, TTL)
            .await
            .expect("the worker joins");
        let owned = leases.owned();
        let stop = CancellationToken::new();
        let task = tokio::spawn(consume(leases, register.clone(), stop.clone()));
        Worker {
            id,
            owned,
            stop,
            task,
        }
    }

    /// Kills it as SIGKILL would: nothing is handed over, and it reads nothing any more.
    async fn kill(self, register: &Mutex<Register>) {
        self.task.abort();
        assert!(self.task.await.unwrap_err().is_cancelled());
        register
            .lock()
            .unwrap()
            .reading
            .retain(|_, worker| *worker != self.id);
    }

    /// Stops it as SIGTERM would: it hands everything over and leaves.
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().expect("the worker leaves cleanly");
    }
}

/// Reads what `leases` owns (as the register shows), stops a partition that leaves it and
/// confirms a hand-over at once; after `stop`, leaves the fleet.
async fn consume(
    leases: Leases,
    register: Arc<Mutex<Register>>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let me = leases.worker();
    let (mut owned, mut releasing) = (leases.owned(), leases.releasing());
    let mut reading = BTreeSet::new();
    let mut stopping = false;
    loop {
        let handing_over = releasing.borrow_and_update().clone();
        let now: BTreeSet<u16> = (owned.borrow_and_update().difference(&handing_over))
            .copied()
            .collect();
        {
            let mut register = register.lock().unwrap();
            for &partition in reading.difference(&now) {
                register.stop(partition, me);
            }
            for &partition in now.difference(&reading) {
                register.start(partition, me);
            }
        }
        for &partition in &handing_over {
            leases.released(partition);
        }
        reading = now;
        if stopping && reading.is_empty() && handing_over.is_empty() {
            break;
        }
        tokio::select! {
            () = stop.cancelled(), if !stopping => {
                leases.stop();
                stopping = true;
            }
            changed = owned.changed() => if changed.is_err() { break },
            changed = releasing.changed() => if changed.is_err() { break },
        }
    }
    leases.stopped().await
}

/// Each worker's number of partitions, smallest first, once every partition is owned by one
/// of `workers` and none by two; `None` before. Workers' sets overlapping panics.
fn shares(workers: &[&Worker]) -> Option<Vec<usize>> {
    let sets: Vec<BTreeSet<u16>> = workers.iter().map(|w| w.owned.borrow().clone()).collect();
    let total: usize = sets.iter().map(BTreeSet::len).sum();
    let union: BTreeSet<u16> = sets.iter().flatten().copied().collect();
    assert_eq!(union.len(), total, "a partition owned twice: {sets:?}");
    let mut shares: Vec<usize> = sets.iter().map(BTreeSet::len).collect();
    shares.sort_unstable();
    (total == usize::from(PARTITIONS)).then_some(shares)
}

/// Waits until `workers` own every partition in `expected` shares, sampling every 20 ms;
/// how long that took.
async fn settle(workers: &[&Worker], expected: &[usize], within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = shares(workers);
        if now.as_deref() == Some(expected) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "shares {now:?}, not {expected:?}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three workers share 16 partitions 5/5/6; one killed, its partitions wait out the TTL and
/// are taken over; a newcomer gets its share within seconds; one that stops hands its
/// partitions over without a TTL's wait. No partition is read by two workers at any moment,
/// and a worker with another TTL is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_share_partitions_by_leases_and_take_over_from_the_dead() {
    let dir = scratch("nats-leases");
    let server = NatsServer::start(&dir, &mapping_config(&dir, PARTITIONS), None);
    let register = Arc::new(Mutex::new(Register::default()));

    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(Worker::start(&server, &register).await);
    }
    let first = settle(
        &workers.iter().collect::<Vec<_>>(),
        &[5, 5, 6],
        Duration::from_secs(20),
    )
    .await;

    let dead = workers.remove(0);
    let orphans = dead.owned.borrow().len();
    dead.kill(&register).await;
    let killed = Instant::now();
    // Until the dead worker's leases expire, nobody takes its partitions.
    tokio::time::sleep(TTL / 2).await;
    let survivors: Vec<&Worker> = workers.iter().collect();
    let owned: usize = survivors.iter().map(|w| w.owned.borrow().len()).sum();
    assert_eq!(
        owned,
        usize::from(PARTITIONS) - orphans,
        "taken over before the TTL"
    );
    settle(&survivors, &[8, 8], 3 * TTL).await;
    let takeover = killed.elapsed();
    assert!(
        takeover >= TTL * 2 / 3,
        "taken over after {takeover:?}, before the TTL"
    );

    workers.push(Worker::start(&server, &register).await);
    let newcomer = settle(
        &workers.iter().collect::<Vec<_>>(),
        &[5, 5, 6],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        workers[2].owned.borrow().len(),
        5,
        "the newcomer has its share"
    );

    let leaving = workers.remove(0);
    let stopped = Instant::now();
    leaving.stop().await;
    settle(&workers.iter().collect::<Vec<_>>(), &[8, 8], TTL).await;
    let handover = stopped.elapsed();

    let refused = Leases::start(
        &server.jetstream().await,
        "leases",
        WorkerId::random().unwrap(),
        PARTITIONS,
        TTL * 2,
    )
    .await
    .err()
    .expect("another TTL is refused");
    assert!(refused.to_string().contains("TTL"), "{refused:#}");

    let register = register.lock().unwrap();
    assert!(register.overlaps.is_empty(), "{:#?}", register.overlaps);
    assert_eq!(register.reading.len(), usize::from(PARTITIONS));
    println!(
        "3 workers settled in {first:?}; a killed worker's {orphans} partitions taken over \
         after {takeover:?} (TTL {TTL:?}); a newcomer had its share after {newcomer:?}; a \
         stopping worker's partitions taken over after {handover:?}"
    );
}

/// A worker cut off from the server (frozen) lets its partitions go before their leases can
/// have expired for anyone else, five sixths of a TTL after its last renewal at most; once
/// the server is back, it takes them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_lets_go_before_its_leases_expire_and_comes_back() {
    let dir = scratch("nats-cut-off");
    let server = NatsServer::start(&dir, &mapping_config(&dir, PARTITIONS), None);
    let register = Arc::new(Mutex::new(Register::default()));
    let worker = Worker::start(&server, &register).await;
    settle(&[&worker], &[16], Duration::from_secs(10)).await;

    server.freeze();
    let frozen = Instant::now();
    let mut owned = worker.owned.clone();
    tokio::time::timeout(TTL, owned.wait_for(BTreeSet::is_empty))
        .await
        .expect("let go within a TTL")
        .unwrap();
    let let_go = frozen.elapsed();
    assert!(
        let_go >= TTL / 3,
        "let go after {let_go:?}, before a renewal could fail"
    );
    server.thaw();
    let back = settle(&[&worker], &[16], Duration::from_secs(15)).await;
    assert!(register.lock().unwrap().overlaps.is_empty());
    println!(
        "cut off: let go {let_go:?} after the server froze (TTL {TTL:?}); all back {back:?} after it thawed"
    );
}
