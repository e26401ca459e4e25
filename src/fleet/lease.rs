//! Partition ownership by leases in a JetStream KV bucket: server 2.9 has no consumer groups
//! that rebalance themselves, so the workers of a fleet share the partitions through the
//! bucket.
//!
//! Each worker writes a heartbeat `worker.<id>` and, for each partition it owns, a lease
//! `partition.<p>` whose value is its id; it writes them again every third of the TTL, each
//! lease by compare-and-set on its revision, so a lease someone else has taken is never
//! renewed. Server 2.9 has no per-key TTL: the bucket's `max_age` is the TTL, after which the
//! server removes what was not written again.
//!
//! Expiry needs no agreement between clocks: a worker deems an entry expired once it has seen
//! the same revision for a TTL on its own monotonic clock ([`Board`]), and a holder lets go
//! of a lease five sixths of a TTL after it sent its last successful renewal. A renewal is
//! sent before anyone sees it, so the holder has let go before anyone takes over.
//!
//! Who owns what ([`plan`]): with N live workers (an unexpired heartbeat or lease) each owns
//! ⌊P/N⌋ or ⌈P/N⌉ of the P partitions; a worker over its share hands the extra over, a worker
//! under it claims free partitions. Every worker reckons the same shares from the same bucket.
//!
//! Handing over ([`Leases`]): a partition to give up moves from [`Leases::owned`] to
//! [`Leases::releasing`]; its consumer stops, saves its state and calls [`Leases::released`],
//! and only then is the lease deleted, so the next owner starts from the saved state. A
//! partition that leaves `owned` without appearing in `releasing` was lost (not renewed in
//! time): someone else may own it already, so its consumer stops without saving.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt as _;
use futures_util::future::join_all;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{MissedTickBehavior, sleep_until, timeout_at};
use tokio_util::sync::CancellationToken;

use crate::telemetry::log_limit::LogLimit;

/// The shortest TTL [`Leases::start`] accepts: requests time out after a sixth of it.
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// A worker of a fleet, named afresh at each start: a restarted worker is a newcomer, and its
/// predecessor's leases expire rather than being mistaken for its own.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerId(u64);

impl WorkerId {
    /// A new id from the operating system's random source.
    pub fn random() -> Result<WorkerId, getrandom::Error> {
        getrandom::u64().map(WorkerId)
    }

    /// The id a lease's value or a heartbeat's key names: 16 hex digits.
    fn parse(text: &[u8]) -> Option<WorkerId> {
        let bytes = crate::hex::decode::<8>(std::str::from_utf8(text).ok()?)?;
        Some(WorkerId(u64::from_be_bytes(bytes)))
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A key of the lease bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    /// `partition.<p>`: the lease of partition p; its value is the holder's id.
    Partition(u16),
    /// `worker.<id>`: a worker's heartbeat.
    Worker(WorkerId),
}

impl Key {
    fn parse(key: &str) -> Option<Key> {
        if let Some(partition) = key.strip_prefix("partition.") {
            return partition.parse().ok().map(Key::Partition);
        }
        let id = key.strip_prefix("worker.")?;
        WorkerId::parse(id.as_bytes()).map(Key::Worker)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Partition(partition) => write!(f, "partition.{partition}"),
            Key::Worker(id) => write!(f, "worker.{id}"),
        }
    }
}

/// What a worker has seen of the lease bucket: each key's last entry, and since when it has
/// seen that entry unchanged. An entry unchanged for a TTL is expired whatever it says: its
/// writer stopped writing it, and the server, which removes it after `max_age` by its own
/// clock, says nothing when it does.
#[derive(Debug)]
pub struct Board {
    ttl: Duration,
    partitions: BTreeMap<u16, Seen>,
    workers: BTreeMap<WorkerId, Seen>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    revision: u64,
    /// A lease's holder, or a heartbeat's worker; `None` once deleted (and for a lease whose
    /// value names no worker, which is no lease).
    holder: Option<WorkerId>,
    since: Instant,
}

impl Board {
    /// An empty board for leases lasting `ttl`.
    pub fn new(ttl: Duration) -> Board {
        Board {
            ttl,
            partitions: BTreeMap::new(),
            workers: BTreeMap::new(),
        }
    }

    /// Takes in an entry of the bucket seen at `now`; `value` is `None` for a deletion. A
    /// revision older than the one known is ignored (a watch that starts over delivers again),
    /// and so are keys that are neither leases nor heartbeats.
    pub fn observe(&mut self, key: &str, revision: u64, value: Option<&[u8]>, now: Instant) {
        match Key::parse(key) {
            Some(Key::Partition(partition)) => {
                let holder = value.and_then(WorkerId::parse);
                see(&mut self.partitions, partition, revision, holder, now);
            }
            Some(Key::Worker(id)) => {
                see(&mut self.workers, id, revision, value.map(|_| id), now);
            }
            None => {}
        }
    }

    /// `partition`'s key is gone from the bucket (the server removed it after the TTL).
    pub fn forget(&mut self, partition: u16) {
        self.partitions.remove(&partition);
    }

    /// The revision a claim of `partition` must replace: its key's last, 0 for none.
    pub fn revision(&self, partition: u16) -> u64 {
        self.partitions
            .get(&partition)
            .map_or(0, |seen| seen.revision)
    }

    /// The holders of unexpired leases, and the live workers: those with an unexpired
    /// heartbeat or lease. Expired heartbeats are dropped: every start names a new worker.
    pub fn current(&mut self, now: Instant) -> (BTreeMap<u16, WorkerId>, BTreeSet<WorkerId>) {
        let ttl = self.ttl;
        let fresh = |seen: &Seen| now.duration_since(seen.since) < ttl;
        self.workers.retain(|_, seen| fresh(seen));
        let holders: BTreeMap<u16, WorkerId> = self
            .partitions
            .iter()
            .filter(|(_, seen)| fresh(seen))
            .filter_map(|(&partition, seen)| Some((partition, seen.holder?)))
            .collect();
        let live = (self.workers.values().filter_map(|seen| seen.holder))
            .chain(holders.values().copied())
            .collect();
        (holders, live)
    }
}

/// Records `revision` of `key` unless a later one is known.
fn see<K: Ord>(
    seen: &mut BTreeMap<K, Seen>,
    key: K,
    revision: u64,
    holder: Option<WorkerId>,
    now: Instant,
) {
    let entry = seen.entry(key).or_insert(Seen {
        revision,
        holder,
        since: now,
    });
    if revision > entry.revision {
        *entry = Seen {
            revision,
            holder,
            since: now,
        };
    }
}

/// What a worker is to do with the leases this round.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Free partitions to claim, the most preferred first.
    pub claim: Vec<u16>,
    /// Partitions of this worker to hand over.
    pub release: Vec<u16>,
}

/// This round's claims and hand-overs for worker `me`, given the holders of unexpired leases
/// (`me`'s own included), the live workers and `me`'s partitions already being handed over
/// (still held, not to be handed over twice).
///
/// The shares: with n live workers, each owns P/n partitions, and the P%n workers holding the
/// most now (then the smallest ids) one more. Reaching even shares thus moves no partition
/// that need not move, and shares stay put once reached.
pub fn plan(
    partitions: u16,
    me: WorkerId,
    holders: &BTreeMap<u16, WorkerId>,
    live: &BTreeSet<WorkerId>,
    releasing: &BTreeSet<u16>,
) -> Plan {
    let leases = || holders.range(..partitions);
    let mut counts: BTreeMap<WorkerId, usize> = live.iter().map(|&id| (id, 0)).collect();
    counts.entry(me).or_default();
    for (_, holder) in leases() {
        *counts.entry(*holder).or_default() += 1;
    }
    let mut ranked: Vec<(WorkerId, usize)> = counts.into_iter().collect();
    ranked.sort_by_key(|&(id, count)| (Reverse(count), id));
    let rank = (ranked.iter().position(|&(id, _)| id == me)).expect("counted above");
    let total = usize::from(partitions);
    let share = total / ranked.len() + usize::from(rank < total % ranked.len());

    let mine: Vec<u16> = leases()
        .filter(|(_, holder)| **holder == me)
        .map(|(&partition, _)| partition)
        .collect();
    let mut plan = Plan::default();
    if mine.len() > share {
        let leaving = mine.iter().filter(|p| releasing.contains(p)).count();
        let more = (mine.len() - share).saturating_sub(leaving);
        plan.release = (mine.iter().rev())
            .filter(|p| !releasing.contains(p))
            .take(more)
            .copied()
            .collect();
    } else {
        // Each worker starts looking at a place of its own, so that workers starting together
        // do not all race for the same partitions.
        let start = u16::try_from(me.0 % u64::from(partitions)).expect("below partitions");
        plan.claim = (start..partitions)
            .chain(0..start)
            .filter(|p| !holders.contains_key(p))
            .take(share - mine.len())
            .collect();
    }
    plan
}

/// A worker's share of a fleet's partitions, kept by a task of its own: it renews the leases,
/// claims and hands over partitions as workers come and go, and tells the consumer through
/// [`Leases::owned`] and [`Leases::releasing`]. Dropped, it stops at once and releases
/// nothing, as a killed process would: its leases expire after the TTL.
pub struct Leases {
    me: WorkerId,
    owned: watch::Receiver<BTreeSet<u16>>,
    releasing: watch::Receiver<BTreeSet<u16>>,
    released: mpsc::UnboundedSender<u16>,
    stop: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Leases {
    /// Joins as `me` the fleet whose leases are in `bucket` (made if missing), sharing
    /// `partitions` partitions by leases that last `ttl` unless renewed. Every worker of a
    /// fleet must use the same `ttl`: it is the bucket's, and a different one is refused.
    pub async fn start(
        jetstream: &jetstream::Context,
        bucket: &str,
        me: WorkerId,
        partitions: u16,
        ttl: Duration,
    ) -> anyhow::Result<Leases> {
        ensure!(partitions > 0, "a fleet needs at least one partition");
        ensure!(
            ttl >= MIN_TTL,
            "a lease TTL of {ttl:?} is below {MIN_TTL:?}"
        );
        let mut jetstream = jetstream.clone();
        // A request that takes longer fails, and the next round tries again while the
        // leases still last.
        jetstream.set_timeout(ttl / 6);
        let kv = open_bucket(&jetstream, bucket, ttl).await?;
        let (owned_tx, owned) = watch::channel(BTreeSet::new());
        let (releasing_tx, releasing) = watch::channel(BTreeSet::new());
        let (released, released_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let driver = Driver {
            kv,
            me,
            partitions,
            ttl,
            board: Board::new(ttl),
            caught_up: false,
            held: BTreeMap::new(),
            releasing: BTreeMap::new(),
            owned_tx,
            releasing_tx,
            stopping: false,
            failures: LogLimit::per_minute(),
        };
        let task = tokio::spawn(driver.run(stop.clone(), released_rx));
        Ok(Leases {
            me,
            owned,
            releasing,
            released,
            stop,
            task: Some(task),
        })
    }

    /// This worker.
    pub fn worker(&self) -> WorkerId {
        self.me
    }

    /// The partitions this worker may read now. One that leaves this set is either in
    /// [`Leases::releasing`] (save, then [`Leases::released`]) or lost (stop without saving).
    pub fn owned(&self) -> watch::Receiver<BTreeSet<u16>> {
        self.owned.clone()
    }

    /// The partitions being handed over: their consumers stop reading, save their state and
    /// say so with [`Leases::released`]. A partition leaves this set once its lease is gone;
    /// without the call, a TTL after it entered.
    pub fn releasing(&self) -> watch::Receiver<BTreeSet<u16>> {
        self.releasing.clone()
    }

    /// `partition`'s consumer has stopped and saved its state: its lease may go.
    pub fn released(&self, partition: u16) {
        // Once the driver has stopped, nothing is held and nothing waits for this.
        let _ = self.released.send(partition);
    }

    /// Leaves the fleet: every partition is handed over through [`Leases::releasing`] as
    /// usual, then the heartbeat is deleted; the others take over without waiting for a TTL.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits for the driver to finish after [`Leases::stop`]: once every partition is handed
    /// over (`owned` and `releasing` both empty), it only deletes the heartbeat.
    pub async fn stopped(mut self) -> anyhow::Result<()> {
        let task = self.task.take().expect("the driver runs until stopped");
        task.await.context("the lease driver panicked")?
    }
}

impl Drop for Leases {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The lease bucket: its stream's `max_age` is the leases' TTL (no per-key TTL before
/// 2.11), and every worker of a fleet must use the same.
async fn open_bucket(
    jetstream: &jetstream::Context,
    bucket: &str,
    ttl: Duration,
) -> anyhow::Result<kv::Store> {
    let (kv, bucket_ttl) = super::open_bucket(jetstream, bucket, "lease", ttl).await?;
    ensure!(
        bucket_ttl == ttl,
        "the lease bucket {bucket} has a TTL of {bucket_ttl:?}, not {ttl:?}: every worker of a \
         fleet must use the same"
    );
    Ok(kv)
}

/// A lease this worker holds.
#[derive(Debug, Clone, Copy)]
struct Held {
    /// The revision of its last write, which the next renewal replaces.
    revision: u64,
    /// Unless renewed by then, it is let go: five sixths of a TTL after the last successful
    /// renewal was sent.
    deadline: Instant,
}

/// The task behind [`Leases`].
struct Driver {
    kv: kv::Store,
    me: WorkerId,
    partitions: u16,
    ttl: Duration,
    board: Board,
    /// Whether the watch has delivered the bucket as it was: until then, the board would make
    /// this worker think itself alone.
    caught_up: bool,
    held: BTreeMap<u16, Held>,
    /// Partitions being handed over, and when to stop waiting for their consumer.
    releasing: BTreeMap<u16, Instant>,
    owned_tx: watch::Sender<BTreeSet<u16>>,
    releasing_tx: watch::Sender<BTreeSet<u16>>,
    /// Leaving the fleet: handing everything over, claiming nothing.
    stopping: bool,
    failures: LogLimit,
}

impl Driver {
    async fn run(
        mut self,
        stop: CancellationToken,
        mut released: mpsc::UnboundedReceiver<u16>,
    ) -> anyhow::Result<()> {
        let mut rounds = tokio::time::interval(self.ttl / 3);
        rounds.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut entries = None;
        loop {
            self.let_go_of_lapsed();
            if self.stopping && self.held.is_empty() {
                break;
            }
            // Nothing waits past a lease's deadline, however slow the server: at the
            // deadline, the loop comes round and lets the lease go.
            let deadline = self.held.values().map(|held| held.deadline).min();
            let cutoff = tokio::time::Instant::from_std(
                deadline.unwrap_or_else(|| Instant::now() + self.ttl),
            );
            tokio::select! {
                () = stop.cancelled(), if !self.stopping => self.stop_all(),
                Some(partition) = released.recv() => {
                    let _ = timeout_at(cutoff, self.hand_over(partition)).await;
                }
                entry = next_entry(&mut entries) => {
                    if !self.take_in(entry) {
                        entries = None;
                    }
                }
                _ = rounds.tick() => {
                    if entries.is_none() {
                        entries = timeout_at(cutoff, self.watch()).await.ok().flatten();
                    }
                    let _ = timeout_at(cutoff, self.round()).await;
                }
                () = sleep_until(cutoff) => {}
            }
        }
        let heartbeat = Key::Worker(self.me).to_string();
        self.kv
            .delete(&heartbeat)
            .await
            .with_context(|| format!("cannot delete the heartbeat {heartbeat}"))
    }

    /// A watch of the whole bucket, from each key's last entry on; `None` after a failure,
    /// which the next round tries again.
    async fn watch(&mut self) -> Option<kv::Watch> {
        match self.kv.watch_with_history(">").await {
            Ok(entries) => Some(entries),
            Err(error) => {
                self.fail("cannot watch the lease bucket", &error);
                None
            }
        }
    }

    /// Puts an entry from the watch on the board; false if the watch failed or ended.
    fn take_in(&mut self, entry: Option<Result<kv::Entry, kv::WatcherError>>) -> bool {
        match entry {
            Some(Ok(entry)) => {
                let value = (entry.operation == kv::Operation::Put).then_some(&entry.value[..]);
                self.board
                    .observe(&entry.key, entry.revision, value, Instant::now());
                self.caught_up |= entry.seen_current;
                true
            }
            Some(Err(error)) => {
                self.fail("the watch of the lease bucket failed", &error);
                false
            }
            None => false,
        }
    }

    /// Lets go of the leases whose deadline has passed: another worker may take them now.
    fn let_go_of_lapsed(&mut self) {
        let now = Instant::now();
        let lapsed: Vec<u16> = (self.held.iter())
            .filter(|(_, held)| held.deadline <= now)
            .map(|(&partition, _)| partition)
            .collect();
        for partition in lapsed {
            tracing::warn!(worker = %self.me, partition, "lease not renewed in time: lost");
            self.lose(partition);
        }
    }

    /// Every third of the TTL: renew the leases and the heartbeat, give up on consumers that
    /// did not confirm a hand-over, and rebalance.
    async fn round(&mut self) {
        self.renew().await;
        let now = Instant::now();
        let overdue: Vec<u16> = (self.releasing.iter())
            .filter(|(_, wait)| **wait <= now)
            .map(|(&partition, _)| partition)
            .collect();
        for partition in overdue {
            tracing::warn!(worker = %self.me, partition, "no consumer confirmed the hand-over; releasing anyway");
            self.hand_over(partition).await;
        }
        if self.caught_up && !self.stopping {
            self.rebalance().await;
        }
        self.publish();
    }

    /// Writes the heartbeat and every held lease again, all at once.
    async fn renew(&mut self) {
        let sent = Instant::now();
        let value = self.me.to_string();
        let heartbeat = self
            .kv
            .put(Key::Worker(self.me).to_string(), value.clone().into());
        let leases = join_all(self.held.iter().map(|(&partition, held)| {
            let key = Key::Partition(partition).to_string();
            let update = self.kv.update(key, value.clone().into(), held.revision);
            async move { (partition, update.await) }
        }));
        let (heartbeat, leases) = tokio::join!(heartbeat, leases);
        if let Err(error) = heartbeat {
            self.fail("cannot write the heartbeat", &error);
        }
        for (partition, renewed) in leases {
            match renewed {
                Ok(revision) => self.hold(partition, revision, sent, &value),
                Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    self.recover(partition).await;
                }
                // The lease lasts until its deadline: the next round tries again.
                Err(error) => self.fail(&format!("cannot renew partition {partition}"), &error),
            }
        }
    }

    /// After a renewal of `partition` found another revision than this worker's last: either
    /// a write whose acknowledgement was lost (the lease still names this worker, and its
    /// revision is taken on, the deadline kept) or another worker's lease.
    async fn recover(&mut self, partition: u16) {
        let ours = match self.kv.entry(Key::Partition(partition).to_string()).await {
            Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                let ours = WorkerId::parse(&entry.value) == Some(self.me);
                if let Some(held) = self.held.get_mut(&partition).filter(|_| ours) {
                    held.revision = entry.revision;
                }
                ours
            }
            Ok(_) => false,
            Err(error) => {
                // Unknown: the lease lasts until its deadline, and the next round tries again.
                self.fail(&format!("cannot read partition {partition}"), &error);
                return;
            }
        };
        if !ours {
            tracing::warn!(worker = %self.me, partition, "lease gone or taken by another worker: lost");
            self.lose(partition);
        }
    }

    /// Hands over the extra partitions and claims free ones, as [`plan`] says.
    async fn rebalance(&mut self) {
        let now = Instant::now();
        let (mut holders, live) = self.board.current(now);
        // This worker knows its own leases better than the watch, which may lag.
        holders.retain(|_, holder| *holder != self.me);
        holders.extend(self.held.keys().map(|&partition| (partition, self.me)));
        let releasing = self.releasing.keys().copied().collect();
        let plan = plan(self.partitions, self.me, &holders, &live, &releasing);
        if !plan.release.is_empty() {
            tracing::info!(worker = %self.me, partitions = ?plan.release, workers = live.len(), "handing over");
            for partition in plan.release {
                self.releasing.insert(partition, now + self.ttl);
            }
            self.publish();
        }
        let value = self.me.to_string();
        for partition in plan.claim {
            self.claim(partition, &value).await;
        }
    }

    /// Takes `partition`'s lease by compare-and-set on the revision the board knows of it.
    async fn claim(&mut self, partition: u16, value: &str) {
        let key = Key::Partition(partition).to_string();
        let revision = self.board.revision(partition);
        let mut sent = Instant::now();
        let mut claimed = self
            .kv
            .update(&key, value.to_owned().into(), revision)
            .await;
        if claimed
            .as_ref()
            .is_err_and(|error| error.kind() == kv::UpdateErrorKind::WrongLastRevision)
        {
            // The server removed the expired lease, or another worker was quicker: read the
            // key again, and claim what it holds now if no one holds it.
            let Some(revision) = self.refresh(partition).await else {
                return;
            };
            sent = Instant::now();
            claimed = self
                .kv
                .update(&key, value.to_owned().into(), revision)
                .await;
        }
        match claimed {
            Ok(revision) => {
                tracing::info!(worker = %self.me, partition, "claimed");
                self.hold(partition, revision, sent, value);
            }
            Err(error) if error.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
            Err(error) => self.fail(&format!("cannot claim partition {partition}"), &error),
        }
    }

    /// Reads `partition`'s key afresh onto the board; the revision a claim is to replace if
    /// no one holds it (0: no key), `None` if someone does or the key cannot be read.
    async fn refresh(&mut self, partition: u16) -> Option<u64> {
        match self.kv.entry(Key::Partition(partition).to_string()).await {
            Ok(Some(entry)) => {
                let value = (entry.operation == kv::Operation::Put).then_some(&entry.value[..]);
                self.board
                    .observe(&entry.key, entry.revision, value, Instant::now());
                (entry.operation != kv::Operation::Put).then_some(entry.revision)
            }
            Ok(None) => {
                self.board.forget(partition);
                Some(0)
            }
            Err(error) => {
                self.fail(&format!("cannot read partition {partition}"), &error);
                None
            }
        }
    }

    /// Records a successful write of `partition`'s lease at `revision`, sent at `sent`.
    fn hold(&mut self, partition: u16, revision: u64, sent: Instant, value: &str) {
        let deadline = sent + self.ttl * 5 / 6;
        self.held.insert(partition, Held { revision, deadline });
        let key = Key::Partition(partition).to_string();
        self.board
            .observe(&key, revision, Some(value.as_bytes()), Instant::now());
    }

    /// Stops holding `partition` without deleting its lease: it is someone else's, or will be.
    fn lose(&mut self, partition: u16) {
        self.held.remove(&partition);
        self.releasing.remove(&partition);
        self.publish();
    }

    /// Deletes the lease of a partition being handed over, once its consumer confirmed or
    /// the wait is over. A confirmation of anything else (a partition lost meanwhile, or
    /// already released) is ignored.
    async fn hand_over(&mut self, partition: u16) {
        if self.releasing.remove(&partition).is_none() {
            return;
        }
        let Some(held) = self.held.remove(&partition) else {
            return;
        };
        let key = Key::Partition(partition).to_string();
        match self
            .kv
            .delete_expect_revision(&key, Some(held.revision))
            .await
        {
            Ok(()) => tracing::info!(worker = %self.me, partition, "handed over"),
            // Not renewed any more, it expires after the TTL instead.
            Err(error) => self.fail(&format!("cannot release partition {partition}"), &error),
        }
        self.publish();
    }

    /// Starts handing every partition over, to leave the fleet.
    fn stop_all(&mut self) {
        self.stopping = true;
        let wait = Instant::now() + self.ttl;
        for &partition in self.held.keys() {
            self.releasing.entry(partition).or_insert(wait);
        }
        self.publish();
    }

    /// Tells the consumer what changed: `releasing` first, so that a partition leaving
    /// `owned` is found there when it is being handed over.
    fn publish(&self) {
        let releasing: BTreeSet<u16> = self.releasing.keys().copied().collect();
        let owned: BTreeSet<u16> = (self.held.keys())
            .filter(|partition| !self.releasing.contains_key(partition))
            .copied()
            .collect();
        self.releasing_tx
            .send_if_modified(|now| replace(now, releasing));
        self.owned_tx.send_if_modified(|now| replace(now, owned));
    }

    fn fail(&mut self, what: &str, error: &dyn std::error::Error) {
        if let Some(suppressed) = self.failures.allow(Instant::now()) {
            tracing::warn!(worker = %self.me, suppressed, "{what}: {error}");
        }
    }
}

/// The next entry of the watch; never, without one.
async fn next_entry(
    entries: &mut Option<kv::Watch>,
) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match entries {
        Some(entries) => entries.next().await,
        None => std::future::pending().await,
    }
}

/// Sets `current` to `new`; whether that changed it.
fn replace(current: &mut BTreeSet<u16>, new: BTreeSet<u16>) -> bool {
    let changed = *current != new;
    *current = new;
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(count: u64) -> Vec<WorkerId> {
        (1..=count).map(WorkerId).collect()
    }

    /// Runs rounds of `workers` (each planning on the same leases, in turn, claims applied if
    /// still free and hand-overs at once) until a whole round changes nothing; the rounds it
    /// took.
    fn settle(
        partitions: u16,
        workers: &[WorkerId],
        holders: &mut BTreeMap<u16, WorkerId>,
    ) -> usize {
        let live: BTreeSet<WorkerId> = workers.iter().copied().collect();
        for round in 0..20 {
            let mut changed = false;
            for &me in workers {
                let plan = plan(partitions, me, holders, &live, &BTreeSet::new());
                for partition in plan.release {
                    assert_eq!(holders.remove(&partition), Some(me));
                    changed = true;
                }
                for partition in plan.claim {
                    assert!(
                        holders.insert(partition, me).is_none(),
                        "claimed a held partition"
                    );
                    changed = true;
                }
            }
            if !changed {
                return round;
            }
        }
        panic!("no settling in 20 rounds: {holders:?}");
    }

    fn shares(holders: &BTreeMap<u16, WorkerId>) -> Vec<usize> {
        let mut counts: BTreeMap<WorkerId, usize> = BTreeMap::new();
        for holder in holders.values() {
            *counts.entry(*holder).or_default() += 1;
        }
        let mut shares: Vec<usize> = counts.into_values().collect();
        shares.sort_unstable();
        shares
    }

    #[test]
    fn a_lone_worker_claims_everything_from_its_own_starting_place() {
        let me = WorkerId(19);
        let plan = plan(16, me, &BTreeMap::new(), &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(
            plan.claim,
            [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2]
        );
        assert!(plan.release.is_empty());
    }

    #[test]
    fn workers_starting_together_settle_on_even_shares_and_stay() {
        let workers = ids(3);
        let mut holders = BTreeMap::new();
        let rounds = settle(16, &workers, &mut holders);
        assert!(rounds <= 2, "took {rounds} rounds");
        assert_eq!(shares(&holders), [5, 5, 6]);
        assert_eq!(holders.len(), 16);
        // Settled means every worker's plan is empty: nothing flaps.
        let live = workers.iter().copied().collect();
        for &me in &workers {
            assert_eq!(
                plan(16, me, &holders, &live, &BTreeSet::new()),
                Plan::default()
            );
        }
    }

    #[test]
    fn a_newcomer_gets_its_share_and_only_the_extra_partitions_move() {
        let mut workers = ids(3);
        let mut holders = BTreeMap::new();
        settle(16, &workers, &mut holders);
        let before = holders.clone();
        workers.push(WorkerId(4));
        let rounds = settle(16, &workers, &mut holders);
        assert!(rounds <= 2, "took {rounds} rounds");
        assert_eq!(shares(&holders), [4, 4, 4, 4]);
        let moved = before.iter().filter(|(p, w)| holders[p] != **w).count();
        assert_eq!(moved, 4, "only the newcomer's share moved");
    }

    #[test]
    fn the_partitions_of_a_dead_worker_are_shared_by_the_rest() {
        let mut workers = ids(3);
        let mut holders = BTreeMap::new();
        settle(16, &workers, &mut holders);
        let dead = workers.remove(0);
        holders.retain(|_, holder| *holder != dead);
        settle(16, &workers, &mut holders);
        assert_eq!(shares(&holders), [8, 8]);
    }

    #[test]
    fn the_largest_holders_keep_the_larger_shares() {
        // 10 partitions, 3 workers: shares 4, 3, 3. The worker holding 4 keeps them though
        // its id is the largest; the two with 3 stay.
        let [a, b, c] = [WorkerId(1), WorkerId(2), WorkerId(3)];
        let holders: BTreeMap<u16, WorkerId> = (0..10)
            .map(|p| (p, [c, c, c, c, a, a, a, b, b, b][usize::from(p)]))
            .collect();
        let live = BTreeSet::from([a, b, c]);
        for me in [a, b, c] {
            assert_eq!(
                plan(10, me, &holders, &live, &BTreeSet::new()),
                Plan::default()
            );
        }
    }

    #[test]
    fn a_worker_over_its_share_hands_over_its_last_partitions_once() {
        let [a, b] = [WorkerId(1), WorkerId(2)];
        let holders: BTreeMap<u16, WorkerId> = (0..8).map(|p| (p, a)).collect();
        let live = BTreeSet::from([a, b]);
        let first = plan(8, a, &holders, &live, &BTreeSet::new());
        assert_eq!(first.release, [7, 6, 5, 4]);
        // While those are being handed over, no more go.
        let releasing = BTreeSet::from([7, 6]);
        assert_eq!(plan(8, a, &holders, &live, &releasing).release, [5, 4]);
        let releasing = BTreeSet::from([7, 6, 5, 4]);
        assert_eq!(plan(8, a, &holders, &live, &releasing), Plan::default());
        // The newcomer claims only what is free.
        assert!(
            plan(8, b, &holders, &live, &BTreeSet::new())
                .claim
                .is_empty()
        );
    }

    #[test]
    fn leases_beyond_the_partition_count_are_ignored() {
        let [a, b] = [WorkerId(1), WorkerId(2)];
        let holders = BTreeMap::from([(20, a), (21, a), (22, a)]);
        let live = BTreeSet::from([a, b]);
        assert_eq!(plan(4, b, &holders, &live, &BTreeSet::new()).claim.len(), 2);
        assert!(
            plan(4, a, &holders, &live, &BTreeSet::new())
                .release
                .is_empty()
        );
    }

    #[test]
    fn an_entry_unchanged_for_a_ttl_is_expired() {
        let ttl = Duration::from_secs(9);
        let t0 = Instant::now();
        let [a, b] = [WorkerId(0xa), WorkerId(0xb)];
        let mut board = Board::new(ttl);
        board.observe("partition.3", 10, Some(b"000000000000000a"), t0);
        board.observe("worker.000000000000000b", 11, Some(b""), t0);
        let (holders, live) = board.current(t0 + Duration::from_secs(8));
        assert_eq!(holders, BTreeMap::from([(3, a)]));
        assert_eq!(live, BTreeSet::from([a, b]));

        // a renews (a new revision), b does not.
        board.observe(
            "partition.3",
            12,
            Some(b"000000000000000a"),
            t0 + Duration::from_secs(6),
        );
        let (holders, live) = board.current(t0 + ttl);
        assert_eq!(holders, BTreeMap::from([(3, a)]));
        assert_eq!(live, BTreeSet::from([a]));
        let (holders, live) = board.current(t0 + Duration::from_secs(15));
        assert!(holders.is_empty() && live.is_empty());
        // An expired lease's revision is what a claim replaces.
        assert_eq!(board.revision(3), 12);
        board.forget(3);
        assert_eq!(board.revision(3), 0);
    }

    #[test]
    fn older_revisions_deletions_and_foreign_values_are_no_leases() {
        let t0 = Instant::now();
        let a = WorkerId(0xa);
        let mut board = Board::new(Duration::from_secs(9));
        board.observe("partition.1", 20, Some(b"000000000000000a"), t0);
        board.observe("partition.1", 19, Some(b"000000000000000b"), t0);
        board.observe("partition.2", 21, Some(b"000000000000000a"), t0);
        board.observe("partition.2", 22, None, t0);
        board.observe("partition.3", 23, Some(b"someone"), t0);
        board.observe("snapshot.1", 24, Some(b"000000000000000a"), t0);
        board.observe("worker.nothex", 25, Some(b""), t0);
        let (holders, live) = board.current(t0);
        assert_eq!(holders, BTreeMap::from([(1, a)]));
        assert_eq!(live, BTreeSet::from([a]));
        assert_eq!(board.revision(2), 22);
        assert_eq!(board.revision(3), 23);
    }

    #[test]
    fn worker_ids_are_sixteen_hex_digits_both_ways() {
        let id = WorkerId::random().unwrap();
        let text = id.to_string();
        assert_eq!(text.len(), 16);
        assert_eq!(WorkerId::parse(text.as_bytes()), Some(id));
        assert_eq!(
            Key::parse(&Key::Worker(id).to_string()),
            Some(Key::Worker(id))
        );
        assert_eq!(Key::parse("partition.63"), Some(Key::Partition(63)));
        assert_eq!(Key::parse("partition.70000"), None);
        assert_ne!(WorkerId::random().unwrap(), id);
    }
}
