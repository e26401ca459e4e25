//! A fleet's telegrams from an MQTT broker: each message holds one telegram or several back
//! to back, from any meter (the telegram's equipment id says whose, not the topic).
//!
//! The session is persistent and the subscription QoS 1, and a message is acknowledged only
//! once its telegrams are queued for the reduce task: the broker keeps whatever p1guard has
//! not taken, across a reconnect or a restart of either side.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, QoS};
use tokio_util::sync::CancellationToken;

use super::{Closed, Framing};
use crate::backoff::Backoff;
use crate::config::Broker;
use crate::log_limit::LogLimit;

/// Acknowledgements waiting for the event loop: at most one per message the broker has in
/// flight to us.
const REQUEST_CAPACITY: usize = 64 * 1024;

/// How long to wait for the client's disconnect to reach the broker when stopping.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);

pub async fn run(
    name: &str,
    broker: &Broker,
    subscription: &str,
    mut framing: Framing,
    shutdown: &CancellationToken,
) -> Result<(), Closed> {
    let mut options = match crate::broker::options(broker) {
        Ok(options) => options,
        Err(error) => {
            tracing::error!(source = %name, "cannot set up the MQTT client: {error:#}");
            return Ok(());
        }
    };
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_request_channel_capacity(REQUEST_CAPACITY);
    let (client, mut events) = AsyncClient::new(options, REQUEST_CAPACITY);
    let mut backoff = Backoff::reconnect();
    let mut failures = LogLimit::per_minute();
    let address = format!("{}:{}", broker.host, broker.port);
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => break,
            event = events.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Incoming::Publish(message))) => {
                framing.push_message(&message.payload).await?;
                if let Err(error) = client.try_ack(&message) {
                    // The broker sends it again on the next connection.
                    tracing::warn!(source = %name, "could not acknowledge a message: {error}");
                }
            }
            Ok(Event::Incoming(Incoming::ConnAck(connack))) => {
                tracing::info!(source = %name, %address, session_present = connack.session_present, "connected");
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
    // A clean goodbye; the session, and anything not yet acknowledged, stays on the broker.
    if client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(DISCONNECT_WAIT, async {
            while let Ok(event) = events.poll().await {
                if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
    framing.set_connected(false);
    Ok(())
}
