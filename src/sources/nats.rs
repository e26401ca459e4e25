//! A fleet's telegrams from a NATS JetStream stream: meters publish on `p1.<meter>.telegram`
//! (or MQTT `p1/<meter>/telegram` through the server's MQTT listener), the server's subject
//! mapping puts each meter on a partition (`p1.part.<p>.<meter>`), and one stream with file
//! storage keeps them (`config/nats/nats-server.conf`).
//!
//! The workers of a fleet (one configuration started N times) share the partitions by
//! leases ([`crate::fleet::lease`]): each reads only the partitions it owns, so one worker at
//! a time reduces a meter. A partition is read by a pull consumer of its own, filtered to
//! `p1.part.<p>.*`, in batches: the stream's order is each meter's order. A message is
//! acknowledged once the records it yielded are committed to every sink's outbox. Each
//! owned partition's reducer state is snapshotted with the stream sequence it covers
//! ([`crate::fleet::snapshot`]) every few seconds and when the partition is handed over; its
//! next owner, or this worker after a restart, continues from the snapshot and reads the
//! stream again from just after it. A telegram's receive time is the stream's timestamp of
//! its message, so that reading a partition again yields the same records.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull::MessagesError;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt as _;
use futures_util::stream::{SelectAll, Stream};
use jiff::Timestamp;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Closed, Framing};
use crate::backoff::Backoff;
use crate::config::{Checker, Secret, SecretRef};
use crate::fleet::lease::{Leases, MIN_TTL, WorkerId};
use crate::fleet::snapshot::{Partitions, SaveError, Snapshots};
use crate::telemetry::log_limit::LogLimit;

/// Messages a consumer is asked for at once: one wake-up of the source per batch.
const BATCH: usize = 256;

/// The most partitions a stream may have: each is a consumer on the server.
const MAX_PARTITIONS: u16 = 1024;

/// How long the server waits for an acknowledgement before it delivers a message again:
/// longer than a commit takes while the outbox has room.
const ACK_WAIT: Duration = Duration::from_secs(60);

/// How long the stream p1guard creates keeps a telegram: it holds every meter's telegrams as
/// sent, whatever their consent, so no longer than live readings may be kept (privacy.md's 7
/// days); a fleet stopped longer than that loses what expired unread.
const STREAM_MAX_AGE: Duration = Duration::from_secs(7 * 86_400);

/// How long a lease lasts unless renewed, unless configured: how long a dead worker's
/// partitions wait for a new owner.
const LEASE_TTL: Duration = Duration::from_secs(10);

/// How often each owned partition's state is snapshotted, if it changed: how much of the
/// stream its next owner reads again.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(2);

/// `[[sources]]` `type = "nats"` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSourceConfig {
    /// `nats://host[:port]` or `tls://host[:port]`.
    pub url: String,
    /// The stream holding `p1.part.>`; created if missing.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// The server mapping's partition count.
    pub partitions: u16,
    /// User name for the server.
    pub username: Option<String>,
    /// Password for the server.
    pub password: Option<SecretRef>,
    /// A `.creds` file (JWT and nkey seed) instead of a password.
    pub creds_file: Option<PathBuf>,
    /// PEM file of the CA that signed the server's certificate (`tls://`).
    pub ca_file: Option<PathBuf>,
    /// How long a partition's lease lasts unless renewed (every worker of a fleet the same).
    pub lease_ttl_secs: Option<u64>,
}

fn default_stream() -> String {
    "P1".into()
}

/// A checked `nats` source.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// The server's URL, as written.
    pub url: String,
    /// The stream's name.
    pub stream: String,
    /// Partitions `0..partitions`.
    pub partitions: u16,
    /// How long a partition's lease lasts unless renewed.
    pub lease_ttl: Duration,
    credentials: Credentials,
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
enum Credentials {
    None,
    Password(String, Secret),
    File(PathBuf),
}

impl NatsSourceConfig {
    /// The source's settings, every problem noted.
    pub fn check(self, checker: &mut Checker<'_>, at: &str) -> Option<NatsSettings> {
        let NatsSourceConfig {
            url,
            stream,
            partitions,
            username,
            password,
            creds_file,
            ca_file,
            lease_ttl_secs,
        } = self;
        let problems = checker.count();
        let tls = url.starts_with("tls://");
        if !(tls || url.starts_with("nats://")) || url.len() <= "nats://".len() {
            checker.problem(at, "url: expected nats://host[:port] or tls://host[:port]");
        }
        if ca_file.is_some() && !tls {
            checker.problem(at, "ca_file needs a tls:// url");
        }
        if stream.is_empty()
            || !stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            checker.problem(
                at,
                format!("stream {stream:?}: expected a name of letters, digits, _ and -"),
            );
        }
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            checker.problem(
                at,
                format!("partitions = {partitions}: expected 1 to {MAX_PARTITIONS}, the server mapping's count"),
            );
        }
        let lease_ttl = lease_ttl_secs.map_or(LEASE_TTL, Duration::from_secs);
        if lease_ttl < MIN_TTL {
            checker.problem(
                at,
                format!("lease_ttl_secs must be at least {}", MIN_TTL.as_secs()),
            );
        }
        let credentials = match (username, password, creds_file) {
            (None, None, None) => Credentials::None,
            (Some(user), Some(password), None) => match password.resolve() {
                Ok(password) => Credentials::Password(user, password),
                Err(error) => {
                    checker.problem(at, format!("password: {error}"));
                    Credentials::None
                }
            },
            (None, None, Some(file)) => Credentials::File(file),
            (Some(_), None, None) | (None, Some(_), None) => {
                checker.problem(at, "username and password go together");
                Credentials::None
            }
            (_, _, Some(_)) => {
                checker.problem(at, "creds_file excludes username and password");
                Credentials::None
            }
        };
        (checker.count() == problems).then_some(NatsSettings {
            url,
            stream,
            partitions,
            lease_ttl,
            credentials,
            ca_file,
        })
    }
}

impl NatsSettings {
    /// What `check-config` says of it.
    pub fn describe(&self) -> String {
        format!(
            "stream {} ({} partitions) on {}",
            self.stream, self.partitions, self.url
        )
    }

    /// A connection to the server, with the configured credentials and TLS.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .name("p1guard");
        options = match &self.credentials {
            Credentials::None => options,
            Credentials::Password(user, password) => {
                options.user_and_password(user.clone(), password.expose().to_owned())
            }
            Credentials::File(file) => options.credentials_file(file).await?,
        };
        if let Some(ca_file) = &self.ca_file {
            options = options.add_root_certificates(ca_file.clone());
        }
        if self.url.starts_with("tls://") {
            options = options.require_tls(true);
        }
        Ok(options.connect(&self.url).await?)
    }
}

/// A message read and not yet acknowledged: its number in [`Framing`]'s count and its
/// partition.
type Unacknowledged = VecDeque<(u64, u16, jetstream::Message)>;

/// What the consumers of the owned partitions deliver, tagged with the partition.
type Deliveries =
    SelectAll<Pin<Box<dyn Stream<Item = (u16, Result<jetstream::Message, MessagesError>)> + Send>>>;

pub async fn run(
    name: &str,
    settings: &NatsSettings,
    mut framing: Framing,
    mut accepted: watch::Receiver<u64>,
    partitions: &Partitions,
    shutdown: &CancellationToken,
) -> Result<(), Closed> {
    let mut backoff = Backoff::reconnect();
    let mut failures = LogLimit::per_minute();
    let mut unacknowledged = Unacknowledged::new();
    while !shutdown.is_cancelled() {
        let mut worker = Worker {
            name,
            settings,
            framing: &mut framing,
            accepted: &mut accepted,
            partitions,
            unacknowledged: &mut unacknowledged,
            reading: BTreeMap::new(),
            handing_over: BTreeMap::new(),
            deliveries: Deliveries::new(),
            failures: LogLimit::per_minute(),
        };
        match worker.run(&mut backoff, shutdown).await {
            Ok(()) => break,
            Err(Failure::Closed) => return Err(Closed),
            Err(Failure::Nats(error)) => {
                framing.set_connected(false);
                // The server delivers them again; the leases, dropped, expire, and the
                // partitions are claimed afresh from their snapshots.
                unacknowledged.clear();
                partitions.forget_all();
                let delay = backoff.next_delay();
                if let Some(suppressed) = failures.allow(Instant::now()) {
                    tracing::warn!(source = %name, url = %settings.url, suppressed, "NATS connection lost or refused ({error:#}); retrying in {delay:?}");
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    framing.set_connected(false);
    Ok(())
}

enum Failure {
    Closed,
    Nats(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Failure {
        Failure::Nats(error.into())
    }
}

/// One connection's worth of a fleet worker: the partitions it reads and hands over.
struct Worker<'a> {
    name: &'a str,
    settings: &'a NatsSettings,
    framing: &'a mut Framing,
    accepted: &'a mut watch::Receiver<u64>,
    partitions: &'a Partitions,
    unacknowledged: &'a mut Unacknowledged,
    /// The owned partitions being read: how to stop each, and the number of the last
    /// message read from it.
    reading: BTreeMap<u16, (CancellationToken, u64)>,
    /// Partitions stopped for a hand-over, until what was read of them is committed: the
    /// number of the last message read from each.
    handing_over: BTreeMap<u16, u64>,
    deliveries: Deliveries,
    failures: LogLimit,
}

impl Worker<'_> {
    /// Connects, joins the fleet, and reads the partitions it is given until `shutdown`;
    /// then hands them over, their state saved, and leaves.
    async fn run(
        &mut self,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<(), Failure> {
        let settings = self.settings;
        let client = settings.connect().await?;
        let context = jetstream::new(client.clone());
        let stream = context
            .get_or_create_stream(stream::Config {
                name: settings.stream.clone(),
                subjects: vec!["p1.part.>".into()],
                storage: stream::StorageType::File,
                max_age: STREAM_MAX_AGE,
                ..Default::default()
            })
            .await?;
        let bucket = |what| format!("p1guard_{what}_{}", settings.stream);
        let mut snapshots =
            Snapshots::open(&context, &bucket("snapshots"), settings.lease_ttl / 3).await?;
        let me = WorkerId::random()?;
        let leases = Leases::start(
            &context,
            &bucket("leases"),
            me,
            settings.partitions,
            settings.lease_ttl,
        )
        .await?;
        let (mut owned, mut releasing) = (leases.owned(), leases.releasing());
        tracing::info!(source = %self.name, url = %settings.url, stream = %settings.stream, partitions = settings.partitions, worker = %me, "connected; joining the fleet");
        self.framing.set_connected(true);
        backoff.reset();
        let mut snapshot_round = tokio::time::interval(SNAPSHOT_EVERY);
        loop {
            let through = *self.accepted.borrow_and_update();
            acknowledge(self.unacknowledged, through).await?;
            self.hand_over_committed(through, &leases, &mut snapshots)
                .await;
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = self.accepted.changed() => if changed.is_err() {
                    break;
                },
                changed = owned.changed() => {
                    changed.map_err(|_| anyhow::anyhow!("the lease keeper stopped"))?;
                    self.follow(&owned, &releasing, &stream, &mut snapshots).await?;
                }
                changed = releasing.changed() => {
                    changed.map_err(|_| anyhow::anyhow!("the lease keeper stopped"))?;
                    self.follow(&owned, &releasing, &stream, &mut snapshots).await?;
                }
                _ = snapshot_round.tick() => self.save_snapshots(&mut snapshots).await,
                delivery = self.deliveries.next(), if !self.deliveries.is_empty() => {
                    let Some((partition, message)) = delivery else { continue };
                    self.take(partition, message?).await?;
                }
            }
        }
        self.leave(leases, &mut snapshots).await;
        client.flush().await?;
        Ok(())
    }

    /// Starts reading the partitions newly owned, and stops reading those no longer owned:
    /// a partition being handed over once what was read of it is committed, a lost one at
    /// once.
    async fn follow(
        &mut self,
        owned: &watch::Receiver<BTreeSet<u16>>,
        releasing: &watch::Receiver<BTreeSet<u16>>,
        stream: &stream::Stream,
        snapshots: &mut Snapshots,
    ) -> Result<(), Failure> {
        // `releasing` first: the leases publish it first.
        let releasing = releasing.borrow().clone();
        let owned = owned.borrow().clone();
        let gone: Vec<u16> = (self.reading.keys())
            .filter(|partition| !owned.contains(partition))
            .copied()
            .collect();
        for partition in gone {
            let Some((stop, last_read)) = self.reading.remove(&partition) else {
                continue;
            };
            stop.cancel();
            if releasing.contains(&partition) {
                self.handing_over.insert(partition, last_read);
            } else {
                tracing::warn!(source = %self.name, partition, "partition lost: its lease was not renewed in time");
                self.partitions.forget(partition);
            }
        }
        for &partition in owned.difference(&self.reading.keys().copied().collect()) {
            self.claim(partition, stream, snapshots).await?;
        }
        Ok(())
    }

    /// Starts reading `partition` from its last snapshot: the reducer continues its meters
    /// from their saved states, and the stream is read from just after what the snapshot
    /// covers.
    async fn claim(
        &mut self,
        partition: u16,
        stream: &stream::Stream,
        snapshots: &mut Snapshots,
    ) -> Result<(), Failure> {
        let state = snapshots.load(partition).await?;
        let start = state.through + 1;
        tracing::info!(source = %self.name, partition, meters = state.meters(), from = start, "partition taken over");
        (self.framing.restore(partition, state.states()).await)
            .map_err(|Closed| Failure::Closed)?;
        self.partitions.claim(partition, state);
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: format!("p1.part.{partition}.*"),
                ack_policy: consumer::AckPolicy::All,
                ack_wait: ACK_WAIT,
                inactive_threshold: ACK_WAIT,
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .messages()
            .await?;
        let stop = CancellationToken::new();
        let delivered = messages
            .map(move |message| (partition, message))
            .take_until(stop.clone().cancelled_owned());
        self.deliveries.push(Box::pin(delivered));
        self.reading.insert(partition, (stop, 0));
        Ok(())
    }

    /// Frames a message of `partition` for the reduce task.
    async fn take(&mut self, partition: u16, message: jetstream::Message) -> Result<(), Failure> {
        let Some(reading) = self.reading.get_mut(&partition) else {
            // Read before its partition stopped; the next owner reads it again.
            return Ok(());
        };
        let (at, sequence) = match message.info() {
            Ok(info) => (
                Timestamp::from_nanosecond(info.published.unix_timestamp_nanos()).ok(),
                info.stream_sequence,
            ),
            Err(error) => return Err(Failure::Nats(anyhow::anyhow!(error))),
        };
        let number = self
            .framing
            .push_partition_message(&message.payload, at, partition, sequence)
            .await
            .map_err(|Closed| Failure::Closed)?;
        reading.1 = number;
        self.unacknowledged.push_back((number, partition, message));
        Ok(())
    }

    /// Hands over the partitions whose messages read are all committed by message `through`:
    /// their snapshots are written, then their leases may go.
    async fn hand_over_committed(
        &mut self,
        through: u64,
        leases: &Leases,
        snapshots: &mut Snapshots,
    ) {
        let committed: Vec<u16> = (self.handing_over.iter())
            .filter(|&(_, &last_read)| last_read <= through)
            .map(|(&partition, _)| partition)
            .collect();
        for partition in committed {
            self.handing_over.remove(&partition);
            self.save_snapshot(partition, true, snapshots).await;
            self.partitions.forget(partition);
            leases.released(partition);
        }
    }

    /// Writes the snapshot of each partition being read whose state changed.
    async fn save_snapshots(&mut self, snapshots: &mut Snapshots) {
        let reading: Vec<u16> = self.reading.keys().copied().collect();
        for partition in reading {
            if !self.save_snapshot(partition, false, snapshots).await
                && let Some((stop, _)) = self.reading.remove(&partition)
            {
                stop.cancel();
                self.partitions.forget(partition);
            }
        }
    }

    /// Writes `partition`'s snapshot if it changed (or `even_unchanged`); false if another
    /// worker has written it since, which makes the partition theirs.
    async fn save_snapshot(
        &mut self,
        partition: u16,
        even_unchanged: bool,
        snapshots: &mut Snapshots,
    ) -> bool {
        let Some(encoded) = self.partitions.take_snapshot(partition, even_unchanged) else {
            return true;
        };
        match snapshots.save(partition, encoded).await {
            Ok(()) => true,
            Err(error @ SaveError::Lost(_)) => {
                tracing::warn!(source = %self.name, partition, "{error}: partition lost");
                false
            }
            Err(error) => {
                if let Some(suppressed) = self.failures.allow(Instant::now()) {
                    tracing::warn!(source = %self.name, suppressed, "{error}; the next owner reads more of the stream again");
                }
                true
            }
        }
    }

    /// Leaves the fleet: stops reading, acknowledges what is committed within a second, and
    /// hands every partition over with its snapshot.
    async fn leave(&mut self, leases: Leases, snapshots: &mut Snapshots) {
        leases.stop();
        for (partition, (stop, last_read)) in std::mem::take(&mut self.reading) {
            stop.cancel();
            self.handing_over.insert(partition, last_read);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            let through = *self.accepted.borrow_and_update();
            if acknowledge(self.unacknowledged, through).await.is_err() {
                break;
            }
            self.hand_over_committed(through, &leases, snapshots).await;
            if self.handing_over.is_empty()
                || !matches!(
                    tokio::time::timeout_at(deadline, self.accepted.changed()).await,
                    Ok(Ok(()))
                )
            {
                break;
            }
        }
        // What is not committed by now stays unacknowledged: the next owner reads it again
        // from the snapshot, which covers only what is committed.
        self.hand_over_committed(u64::MAX, &leases, snapshots).await;
        match tokio::time::timeout(Duration::from_secs(2), leases.stopped()).await {
            Ok(Ok(())) => tracing::info!(source = %self.name, "left the fleet"),
            Ok(Err(error)) => {
                tracing::warn!(source = %self.name, "leaving the fleet: {error:#}; the leases expire instead")
            }
            Err(_) => {
                tracing::warn!(source = %self.name, "leaving the fleet took too long; the leases expire instead")
            }
        }
    }
}

/// Acknowledges the messages up to number `accepted`: one acknowledgement per partition,
/// of its last message, which acknowledges the earlier ones too (`AckPolicy::All`), so the
/// server handles one per batch rather than one per telegram.
async fn acknowledge(unacknowledged: &mut Unacknowledged, accepted: u64) -> Result<(), Failure> {
    let mut last = BTreeMap::new();
    while let Some(&(number, partition, _)) = unacknowledged.front() {
        if number > accepted {
            break;
        }
        if let Some((_, _, message)) = unacknowledged.pop_front() {
            last.insert(partition, message);
        }
    }
    for message in last.values() {
        message
            .ack()
            .await
            .map_err(|error| anyhow::anyhow!(error))?;
    }
    Ok(())
}
