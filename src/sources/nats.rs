//! A fleet's telegrams from a NATS JetStream stream: meters publish on `p1.<meter>.telegram`
//! (or MQTT `p1/<meter>/telegram` through the server's MQTT listener), the server's subject
//! mapping puts each meter on a partition (`p1.part.<p>.<meter>`), and one stream with file
//! storage keeps them (`config/nats/nats-server.conf`).
//!
//! Each partition is read by a durable pull consumer of its own (`p1guard-<p>`, filtered to
//! `p1.part.<p>.*`), in batches: the stream's order is each meter's order. A message is
//! acknowledged once the records it yielded are committed to every sink's outbox, so the
//! stream lets go of nothing p1guard could still lose; what it delivers again after a crash
//! is recognised by the reducer's saved state. A telegram's receive time is the stream's
//! timestamp of its message, so that reading a partition again yields the same records.
//!
//! One worker reads every partition; sharing them among workers is the lease issue's part.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt as _;
use jiff::Timestamp;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Closed, Framing};
use crate::backoff::Backoff;
use crate::config::{Checker, Secret, SecretRef};
use crate::telemetry::log_limit::LogLimit;

/// Messages a consumer is asked for at once: one wake-up of the source per batch.
const BATCH: usize = 256;

/// The most partitions a stream may have: each is a consumer on the server.
const MAX_PARTITIONS: u16 = 1024;

/// How long the server waits for an acknowledgement before it delivers a message again:
/// longer than a commit takes while the outbox has room.
const ACK_WAIT: Duration = Duration::from_secs(60);

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

    async fn connect(&self) -> anyhow::Result<async_nats::Client> {
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

/// A message read and not yet acknowledged: its number in [`Framing`]'s count.
type Unacknowledged = VecDeque<(u64, jetstream::Message)>;

pub async fn run(
    name: &str,
    settings: &NatsSettings,
    mut framing: Framing,
    mut accepted: watch::Receiver<u64>,
    shutdown: &CancellationToken,
) -> Result<(), Closed> {
    let mut backoff = Backoff::reconnect();
    let mut failures = LogLimit::per_minute();
    let mut unacknowledged = Unacknowledged::new();
    while !shutdown.is_cancelled() {
        let read = read(
            name,
            settings,
            &mut framing,
            &mut accepted,
            &mut unacknowledged,
            &mut backoff,
            shutdown,
        );
        match read.await {
            Ok(()) => break,
            Err(Failure::Closed) => return Err(Closed),
            Err(Failure::Nats(error)) => {
                framing.set_connected(false);
                // The server delivers them again after ACK_WAIT.
                unacknowledged.clear();
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

/// Connects, makes sure the stream and every partition's consumer exist, and reads until
/// `shutdown` (then acknowledges what was accepted meanwhile, for at most a second).
async fn read(
    name: &str,
    settings: &NatsSettings,
    framing: &mut Framing,
    accepted: &mut watch::Receiver<u64>,
    unacknowledged: &mut Unacknowledged,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Result<(), Failure> {
    let client = settings.connect().await?;
    let context = jetstream::new(client.clone());
    let stream = context
        .get_or_create_stream(stream::Config {
            name: settings.stream.clone(),
            subjects: vec!["p1.part.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let mut partitions = Vec::with_capacity(usize::from(settings.partitions));
    for partition in 0..settings.partitions {
        let consumer = take_over(&stream, partition).await?;
        partitions.push(
            consumer
                .stream()
                .max_messages_per_batch(BATCH)
                .messages()
                .await?,
        );
    }
    let mut messages = futures_util::stream::select_all(partitions);
    tracing::info!(source = %name, url = %settings.url, stream = %settings.stream, partitions = settings.partitions, "connected");
    framing.set_connected(true);
    backoff.reset();
    loop {
        let through = *accepted.borrow_and_update();
        acknowledge(unacknowledged, through).await?;
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = accepted.changed() => if changed.is_err() {
                break;
            },
            message = messages.next() => {
                let Some(message) = message else {
                    return Err(Failure::Nats(anyhow::anyhow!("the consumers ended")));
                };
                let message = message?;
                let at = stamp(&message);
                let number = framing
                    .push_message_at(&message.payload, at)
                    .await
                    .map_err(|Closed| Failure::Closed)?;
                unacknowledged.push_back((number, message));
            }
        }
    }
    // What is committed by now is acknowledged; the rest is delivered again next start.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while !unacknowledged.is_empty()
        && let Ok(Ok(())) = tokio::time::timeout_at(deadline, accepted.changed()).await
    {
        let through = *accepted.borrow_and_update();
        acknowledge(unacknowledged, through).await?;
    }
    client.flush().await?;
    Ok(())
}

/// Partition `partition`'s consumer, reading from just after what was acknowledged: what a
/// worker that was killed had been given and never acknowledged is delivered now, rather
/// than once the server's `ACK_WAIT` for it runs out.
async fn take_over(
    stream: &stream::Stream,
    partition: u16,
) -> anyhow::Result<consumer::PullConsumer> {
    let durable = format!("p1guard-{partition}");
    let deliver_policy = match stream.consumer_info(&durable).await {
        Ok(info) if info.num_ack_pending == 0 => {
            return stream
                .get_consumer(&durable)
                .await
                .map_err(|e| anyhow::anyhow!(e));
        }
        Ok(info) => {
            stream.delete_consumer(&durable).await?;
            consumer::DeliverPolicy::ByStartSequence {
                start_sequence: info.ack_floor.stream_sequence + 1,
            }
        }
        // None yet: from the stream's start.
        Err(_) => consumer::DeliverPolicy::All,
    };
    let config = consumer::pull::Config {
        durable_name: Some(durable),
        filter_subject: format!("p1.part.{partition}.*"),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        deliver_policy,
        ..Default::default()
    };
    Ok(stream.create_consumer(config).await?)
}

/// When the stream took `message`: its receive time, the same each time it is read.
fn stamp(message: &jetstream::Message) -> Option<Timestamp> {
    let published = message.info().ok()?.published;
    Timestamp::from_nanosecond(published.unix_timestamp_nanos()).ok()
}

/// Acknowledges the messages up to number `accepted`.
async fn acknowledge(unacknowledged: &mut Unacknowledged, accepted: u64) -> Result<(), Failure> {
    while let Some((number, message)) = unacknowledged.front() {
        if *number > accepted {
            break;
        }
        message
            .ack()
            .await
            .map_err(|error| anyhow::anyhow!(error))?;
        unacknowledged.pop_front();
    }
    Ok(())
}
