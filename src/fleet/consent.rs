//! One consent registry for a fleet: every worker keeps its own registry file, and consent
//! events recorded for the fleet are published to a JetStream stream (`<stream>_CONSENT`,
//! subject `p1guard.consent.<stream>`) that every worker takes into its registry, in the
//! stream's order and each message once. The registry's follower then applies them (and
//! purges what they withdraw) as it applies events recorded on the spot, so every worker
//! judges every meter by the same history.
//!
//! The consent commands, given a fleet's configuration, publish instead of appending, then
//! catch their own registry up: whichever worker's configuration they are run with, every
//! worker sees the event within a second or two.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt as _;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::registry::{NewEvent, Registry};
use crate::sources::NatsSettings;
use crate::telemetry::log_limit::LogLimit;

/// Events per message: a consent import of a million rows is a thousand messages.
const EVENTS_PER_MESSAGE: usize = 1000;

/// How often the daemon looks for new events in the stream.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// One message of the stream: events recorded together.
#[derive(Serialize, Deserialize)]
struct Message {
    recorded_at: Timestamp,
    events: Vec<NewEvent>,
}

/// A fleet's consent stream.
pub struct ConsentStream {
    context: jetstream::Context,
    name: String,
    subject: String,
}

impl ConsentStream {
    /// Connects to the fleet's server and opens (making it if missing) the consent stream
    /// of the fleet's stream.
    pub async fn open(settings: &NatsSettings) -> anyhow::Result<ConsentStream> {
        let client = settings.connect().await?;
        let context = jetstream::new(client);
        let name = format!("{}_CONSENT", settings.stream);
        let subject = format!("p1guard.consent.{}", settings.stream);
        context
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject.clone()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot open or create the consent stream {name}"))?;
        Ok(ConsentStream {
            context,
            name,
            subject,
        })
    }

    /// Publishes `events`, recorded at `recorded_at`, each message acknowledged by the
    /// stream before the next is sent.
    pub async fn publish(&self, events: &[NewEvent], recorded_at: Timestamp) -> anyhow::Result<()> {
        for chunk in events.chunks(EVENTS_PER_MESSAGE) {
            let message = Message {
                recorded_at,
                events: chunk.to_vec(),
            };
            let payload = serde_json::to_vec(&message)?;
            let ack = self
                .context
                .publish(self.subject.clone(), payload.into())
                .await
                .with_context(|| format!("cannot publish to the consent stream {}", self.name))?;
            ack.await
                .with_context(|| format!("the consent stream {} did not take it", self.name))?;
        }
        Ok(())
    }

    /// Takes into `registry` every message of the stream it has not taken in yet, up to the
    /// stream's last at the time of asking; the number of events appended.
    pub async fn catch_up(&self, registry: &mut Registry) -> anyhow::Result<usize> {
        let stream = self.context.get_stream(&self.name).await?;
        let last = stream.cached_info().state.last_sequence;
        let from = registry.taken_in(&self.name)? + 1;
        if from > last {
            return Ok(0);
        }
        let consumer = stream
            .create_consumer(consumer::pull::Config {
                ack_policy: consumer::AckPolicy::None,
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        let mut appended = 0;
        while let Some(message) = messages.next().await {
            let message = message.map_err(|error| anyhow::anyhow!(error))?;
            let seq = message
                .info()
                .map_err(|error| anyhow::anyhow!(error))?
                .stream_sequence;
            match serde_json::from_slice::<Message>(&message.payload) {
                Ok(Message {
                    recorded_at,
                    events,
                }) => {
                    if registry.take_in(&self.name, seq, &events, recorded_at)? {
                        appended += events.len();
                    }
                }
                // Taken in as nothing, so that one bad message stops no one.
                Err(error) => {
                    tracing::error!(stream = %self.name, seq, "a consent message that is not one: {error}");
                    registry.take_in(&self.name, seq, &[], Timestamp::now())?;
                }
            }
            if seq >= last {
                break;
            }
        }
        Ok(appended)
    }
}

/// The daemon's part: takes the fleet's consent events into the registry at `path` every
/// second until `shutdown`, for the registry's follower to apply.
pub async fn follow(settings: NatsSettings, path: &Path, shutdown: CancellationToken) {
    let mut failures = LogLimit::per_minute();
    let mut tick = tokio::time::interval(POLL_EVERY);
    let mut stream = None;
    let mut registry = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let caught_up = async {
            if stream.is_none() {
                stream = Some(ConsentStream::open(&settings).await?);
            }
            if registry.is_none() {
                registry = Some(Registry::open(path)?);
            }
            match (&stream, &mut registry) {
                (Some(stream), Some(registry)) => stream.catch_up(registry).await,
                _ => Ok(0),
            }
        };
        match caught_up.await {
            Ok(0) => {}
            Ok(events) => tracing::info!(events, "consent: events recorded for the fleet taken in"),
            Err(error) => {
                stream = None;
                if let Some(suppressed) = failures.allow(Instant::now()) {
                    tracing::warn!(
                        suppressed,
                        "consent: cannot take in the fleet's events: {error:#}"
                    );
                }
            }
        }
    }
}
