//! A fleet's telegrams from an MQTT broker: each message holds one telegram or several back
//! to back, from any meter (the telegram's equipment id says whose, not the topic).
//!
//! The session is persistent and the subscription QoS 1: the broker keeps whatever p1guard
//! has not acknowledged, across a reconnect or a restart of either side. A message is
//! acknowledged only once the records it yielded are committed to every sink's outbox (or it
//! yielded none), so a crash loses nothing the broker let go of; what the broker sends again
//! after one is recognised by the reducer's saved state and not counted twice. The broker's
//! limit on unacknowledged messages per client (mosquitto's `max_inflight_messages`, 20 by
//! default) bounds how many are in flight; raise it for a large fleet.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Publish, QoS};
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Closed, Framing};
use crate::backoff::Backoff;
use crate::broker::{Broker, Connection};
use crate::config::{Checker, SecretRef};
use crate::telemetry::log_limit::LogLimit;

/// Requests waiting for the event loop: acknowledgements (a batch's worth), a subscription,
/// a disconnect.
const REQUEST_CAPACITY: usize = 1024;

/// The largest message the source reads: MQTT's own limit. A message the client refused
/// would be redelivered through the persistent session at every reconnect, for ever, and
/// hold up every meter behind it; one taken is framed, and what is not a telegram in it is
/// counted and skipped. Brokers bound what publishers send (mosquitto's
/// `message_size_limit`).
const MAX_INCOMING: usize = 268_435_455;

/// How long to wait for the client's disconnect to reach the broker when stopping.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

/// `[[sources]]` `type = "mqtt"` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSourceConfig {
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: String,
    /// Topic filter, e.g. `p1/+/telegram`.
    pub topic: String,
    /// Share the subscription with other workers of this group (`$share/<group>/...`).
    pub shared_group: Option<String>,
    /// The session's client id; `p1guard-<host>-<name>` if absent.
    pub client_id: Option<String>,
    /// User name for the broker.
    pub username: Option<String>,
    /// Password for the broker.
    pub password: Option<SecretRef>,
    /// PEM file of the CA that signed the broker's certificate; the system's roots if
    /// absent.
    pub ca_file: Option<PathBuf>,
}

impl MqttSourceConfig {
    /// The broker and the filter subscribed to (`$share/<group>/` included), for the source
    /// `name`; every problem noted.
    pub fn check(
        self,
        checker: &mut Checker<'_>,
        at: &str,
        name: &str,
    ) -> Option<(Broker, String)> {
        let MqttSourceConfig {
            url,
            topic,
            shared_group,
            client_id,
            username,
            password,
            ca_file,
        } = self;
        let connection = Connection {
            url,
            client_id,
            username,
            password,
            ca_file,
        };
        let broker = Broker::check(checker, at, name, connection);
        if topic.is_empty() || topic.starts_with("$share/") {
            checker.problem(
                at,
                format!("topic {topic:?}: expected a topic filter (share it with shared_group)"),
            );
        }
        let subscription = match shared_group {
            Some(group) if group.is_empty() || group.contains(['/', '+', '#']) => {
                checker.problem(
                    at,
                    format!("shared_group {group:?}: expected a name without / + #"),
                );
                topic
            }
            Some(group) => format!("$share/{group}/{topic}"),
            None => topic,
        };
        Some((broker?, subscription))
    }
}

/// The client's options: a persistent session on `broker`. Fails if TLS cannot be set up (a
/// CA file missing or holding no certificate, no trusted roots on the system).
pub fn options(broker: &Broker) -> anyhow::Result<MqttOptions> {
    let mut options = crate::broker::options(broker)?;
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_request_channel_capacity(REQUEST_CAPACITY)
        .set_max_packet_size(MAX_INCOMING, crate::broker::MAX_PACKET);
    Ok(options)
}

pub async fn run(
    name: &str,
    broker: &Broker,
    subscription: &str,
    mut framing: Framing,
    mut accepted: watch::Receiver<u64>,
    shutdown: &CancellationToken,
) -> Result<(), Closed> {
    // Checked at start (`super::check`); this fails only if the CA file went since.
    let options = match options(broker) {
        Ok(options) => options,
        Err(error) => {
            tracing::error!(source = %name, "cannot set up the MQTT client: {error:#}");
            return Ok(());
        }
    };
    let (client, mut events) = AsyncClient::new(options, REQUEST_CAPACITY);
    let mut backoff = Backoff::reconnect();
    let mut failures = LogLimit::per_minute();
    let mut connects = LogLimit::per_minute();
    let address = format!("{}:{}", broker.host, broker.port);
    // Messages read on this connection and not yet acknowledged, by number.
    let mut unacknowledged = VecDeque::new();
    loop {
        acknowledge(&client, &mut unacknowledged, *accepted.borrow_and_update());
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            changed = accepted.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
            event = events.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Incoming::Publish(message))) => {
                let number = framing.push_message(&message.payload).await?;
                if message.qos != QoS::AtMostOnce {
                    unacknowledged.push_back((number, message));
                }
            }
            Ok(Event::Incoming(Incoming::ConnAck(connack))) => {
                if let Some(suppressed) = connects.allow(Instant::now()) {
                    tracing::info!(source = %name, %address, session_present = connack.session_present, suppressed, "connected");
                }
                framing.set_connected(true);
                backoff.reset();
                // A session the broker kept has its subscription (and mosquitto 2.0 loses a
                // restored shared subscription that is subscribed again).
                if !connack.session_present
                    && let Err(error) = client.try_subscribe(subscription, QoS::AtLeastOnce)
                {
                    tracing::error!(source = %name, "cannot subscribe to {subscription}: {error}");
                }
            }
            Ok(Event::Incoming(Incoming::SubAck(suback))) => {
                let refused = suback
                    .return_codes
                    .iter()
                    .any(|code| matches!(code, rumqttc::SubscribeReasonCode::Failure));
                if refused {
                    tracing::error!(source = %name, "the broker refused the subscription to {subscription}");
                } else {
                    tracing::info!(source = %name, "subscribed to {subscription}");
                }
            }
            Ok(_) => {}
            Err(error) => {
                framing.set_connected(false);
                // Their packet ids mean nothing on the next connection: the broker sends
                // them again.
                unacknowledged.clear();
                let delay = backoff.next_delay();
                if let Some(suppressed) = failures.allow(Instant::now()) {
                    let error = crate::broker::describe(&error);
                    tracing::warn!(source = %name, %address, suppressed, "MQTT connection lost or refused ({error}); retrying in {delay:?}");
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    // A clean goodbye: the session, and whatever was not acknowledged, stays on the broker
    // for the next start. What was read is reduced and committed as the pipeline drains.
    let _ = client.try_disconnect();
    let deadline = tokio::time::Instant::now() + DISCONNECT_WAIT;
    while let Ok(Ok(event)) = tokio::time::timeout_at(deadline, events.poll()).await {
        if let Event::Outgoing(rumqttc::Outgoing::Disconnect) = event {
            break;
        }
    }
    framing.set_connected(false);
    Ok(())
}

/// Acknowledges the messages up to number `accepted`, as far as the client's request queue
/// has room; the rest on a later call.
fn acknowledge(client: &AsyncClient, unacknowledged: &mut VecDeque<(u64, Publish)>, accepted: u64) {
    while let Some((number, message)) = unacknowledged.front() {
        if *number > accepted || client.try_ack(message).is_err() {
            return;
        }
        unacknowledged.pop_front();
    }
}
