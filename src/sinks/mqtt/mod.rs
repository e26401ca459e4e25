//! Records published to an MQTT broker, QoS 1 and retained, with a Last Will that marks
//! the sink `offline` and Home Assistant discovery on live sinks.
//!
//! A write returns only once the broker has acknowledged every message of it. The session
//! is clean, so nothing depends on the broker remembering it: if the connection drops first,
//! the write fails and the whole batch is published again on the next connection (records
//! are retained and idempotent, so a repeat is harmless). Until then the batch waits in the
//! sink's bounded queue, which back-pressures the pipeline; a durable outbox can take that
//! queue's place without changing this contract.

mod config;
mod discovery;
mod retained;
mod topics;

use std::borrow::Cow;
use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context as _, bail};
use jiff::{SignedDuration, Timestamp};
use p1guard_conduct::{MeterName, SinkRecord};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, Incoming, LastWill, Outgoing, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use self::config::{MqttConfig, MqttSettings, TopicLayout};
use self::discovery::Discovery;
pub use self::retained::RetainedMessages;
use self::topics::{Layout, Message};
use super::{Sink, WriteError};
use crate::backoff::Backoff;
use crate::telemetry::log_limit::LogLimit;

/// How long a write waits for a connection before failing (and being retried).
const CONNECT_WAIT: Duration = Duration::from_secs(10);

/// How long a write waits for the broker's next acknowledgement before failing.
const ACK_WAIT: Duration = Duration::from_secs(60);

/// Publishes handed to the client at once; the rest wait for acknowledgements.
const REQUEST_CAPACITY: usize = 1024;

/// Unacknowledged publishes on the wire.
const INFLIGHT: u16 = 512;

/// How long (in the meters' time) the household's meter may be silent while another meter
/// sends before that one takes its place on dsmr-reader's topics: the grid operator swapped
/// the meter. A gateway's meters send in turn, seconds apart.
const SWAPPED_AFTER: SignedDuration = SignedDuration::from_mins(10);

/// What the connection task reports to the sink.
#[derive(Debug)]
enum Delivery {
    /// A new connection (a clean session).
    Connected,
    /// The connection dropped; whatever was not acknowledged is not delivered.
    Lost(String),
    /// A publish went out with this packet id.
    Sent(u16),
    /// The broker acknowledged this packet id.
    Acked(u16),
    /// Home Assistant (re)started: its discovery configs should be published again.
    HomeAssistantOnline,
}

/// Publishes records; see the module documentation for the delivery contract.
pub struct MqttSink {
    client: AsyncClient,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    connection: JoinHandle<()>,
    connected: bool,
    /// A new connection or a Home Assistant restart: availability and every discovery
    /// config go out at once (`attend`), or with a write that comes first.
    announce_all: bool,
    layout: Layout,
    availability: String,
    discovery: Option<Discovery>,
    outgoing: Vec<Message>,
    /// The sink's name and settings, for the housekeeping connection.
    name: String,
    settings: MqttSettings,
    /// dsmr-reader's topics have room for one meter: the first one published, and the
    /// latest time of its records. A TCP gateway may carry more, which no check of the
    /// configuration can know.
    household: Option<(MeterName, Timestamp)>,
    /// Meters that were the household's until this write: their entities are removed.
    swapped_out: Vec<MeterName>,
    /// Their config topics, emptied with every write until one succeeds.
    retired: Vec<String>,
    strangers: LogLimit,
}

impl MqttSink {
    /// Starts connecting in the background; writes wait for the connection.
    pub fn connect(name: &str, settings: MqttSettings) -> anyhow::Result<MqttSink> {
        let MqttSettings {
            broker,
            prefix,
            layout,
            discovery_prefix,
        } = settings.clone();
        let availability = format!("{prefix}/status");
        let mut options = crate::broker::options(&broker)?;
        options
            .set_clean_session(true)
            .set_inflight(INFLIGHT)
            .set_request_channel_capacity(REQUEST_CAPACITY)
            .set_last_will(LastWill::new(
                &availability,
                "offline",
                QoS::AtLeastOnce,
                true,
            ));
        let (client, events) = AsyncClient::new(options, REQUEST_CAPACITY);
        let discovery = discovery_prefix
            .map(|p| Discovery::new(p, prefix.clone(), layout, availability.clone()));
        let status = discovery.as_ref().map(Discovery::status_topic);
        let (report, deliveries) = mpsc::unbounded_channel();
        let address = broker.describe();
        let connection = tokio::spawn(run_connection(
            name.to_owned(),
            address,
            events,
            report,
            status,
        ));
        Ok(MqttSink {
            client,
            deliveries,
            connection,
            connected: false,
            announce_all: true,
            layout: Layout::new(layout, prefix),
            availability,
            discovery,
            outgoing: Vec::new(),
            name: name.to_owned(),
            settings,
            household: None,
            swapped_out: Vec::new(),
            retired: Vec::new(),
            strangers: LogLimit::per_minute(),
        })
    }

    /// The records this sink may publish: on dsmr-reader's topics, only the household's
    /// meter's (the first one published, until it falls silent for [`SWAPPED_AFTER`] while
    /// another sends: the household's records up to then, the new meter's from then on);
    /// another meter's would overwrite its readings, and Home Assistant would take each
    /// drop for a meter reset. They are left out and said. A swapped meter's Home Assistant
    /// entities are removed.
    fn of_one_meter<'r>(&mut self, records: &'r [SinkRecord]) -> Cow<'r, [SinkRecord]> {
        if self.settings.layout != TopicLayout::DsmrReader || records.is_empty() {
            return Cow::Borrowed(records);
        }
        let (household, latest) = self
            .household
            .get_or_insert_with(|| (records[0].meter.clone(), records[0].time));
        if records.iter().all(|r| r.meter == *household) {
            *latest = records.iter().map(|r| r.time).fold(*latest, Timestamp::max);
            return Cow::Borrowed(records);
        }
        let mut mine = Vec::with_capacity(records.len());
        for record in records {
            if record.meter != *household
                && record.time > latest.checked_add(SWAPPED_AFTER).unwrap_or(Timestamp::MAX)
            {
                tracing::warn!(
                    sink = %self.name,
                    silent_minutes = record.time.duration_since(*latest).as_mins(),
                    "the meter on dsmr-reader's topics fell silent while another meter sends: \
                     the new meter's readings are published from now on (a swapped meter)"
                );
                self.swapped_out
                    .push(std::mem::replace(household, record.meter.clone()));
            }
            if record.meter == *household {
                *latest = (*latest).max(record.time);
                mine.push(record.clone());
            }
        }
        if mine.len() < records.len()
            && let Some(suppressed) = self.strangers.allow(std::time::Instant::now())
        {
            tracing::error!(
                sink = %self.name,
                suppressed,
                records = records.len() - mine.len(),
                "records of a second meter are not published: layout dsmr_reader has room for \
                 one meter's readings (a gateway with several meters needs layout p1guard)"
            );
        }
        Cow::Owned(mine)
    }

    /// Takes the connection task's news that needs no waiting.
    fn take_news(&mut self) {
        while let Ok(delivery) = self.deliveries.try_recv() {
            self.note(delivery);
        }
    }

    fn note(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Connected => {
                self.connected = true;
                self.announce_all = true;
            }
            Delivery::Lost(_) => self.connected = false,
            Delivery::HomeAssistantOnline => self.announce_all = true,
            // Late news of a failed write's messages: nothing waits for them any more.
            Delivery::Sent(_) | Delivery::Acked(_) => {}
        }
    }

    /// Waits until connected, or fails after [`CONNECT_WAIT`].
    async fn await_connection(&mut self) -> anyhow::Result<()> {
        self.take_news();
        let deadline = tokio::time::Instant::now() + CONNECT_WAIT;
        while !self.connected {
            match tokio::time::timeout_at(deadline, self.deliveries.recv()).await {
                Ok(Some(delivery)) => self.note(delivery),
                Ok(None) => bail!("the MQTT connection task has stopped"),
                Err(_) => bail!("not connected to the broker"),
            }
        }
        Ok(())
    }

    /// Puts availability, Home Assistant's subscription and every discovery config in
    /// front of `self.outgoing` when the connection is new or Home Assistant restarted.
    async fn announce(&mut self) -> anyhow::Result<()> {
        if !self.announce_all {
            return Ok(());
        }
        let mut first = vec![Message::retained(self.availability.clone(), "online")];
        if let Some(discovery) = &self.discovery {
            self.client
                .subscribe(discovery.status_topic(), QoS::AtLeastOnce)
                .await
                .context("subscribing to Home Assistant's status")?;
            discovery.all(&mut first);
        }
        self.outgoing.splice(0..0, first);
        self.announce_all = false;
        Ok(())
    }

    /// Publishes `self.outgoing` and waits until the broker has acknowledged all of it.
    async fn publish_outgoing(&mut self) -> anyhow::Result<()> {
        let total = self.outgoing.len();
        let mut messages = std::mem::take(&mut self.outgoing).into_iter().peekable();
        let mut handed = 0;
        let mut sent = 0;
        let mut waiting = HashSet::new();
        let result = loop {
            while let Some(message) = messages.peek() {
                let published = self.client.try_publish(
                    message.topic.as_str(),
                    QoS::AtLeastOnce,
                    message.retain,
                    message.payload.clone(),
                );
                if published.is_err() {
                    break; // the client's queue is full: wait for acknowledgements
                }
                messages.next();
                handed += 1;
            }
            if sent == total && waiting.is_empty() {
                break Ok(());
            }
            let delivery = match tokio::time::timeout(ACK_WAIT, self.deliveries.recv()).await {
                Ok(Some(delivery)) => delivery,
                Ok(None) => break Err(anyhow::anyhow!("the MQTT connection task has stopped")),
                Err(_) => {
                    break Err(anyhow::anyhow!(
                        "the broker acknowledged nothing for {ACK_WAIT:?}"
                    ));
                }
            };
            match delivery {
                Delivery::Sent(pkid) if sent < handed => {
                    sent += 1;
                    waiting.insert(pkid);
                }
                Delivery::Acked(pkid) => {
                    waiting.remove(&pkid);
                }
                Delivery::Lost(error) => {
                    self.connected = false;
                    break Err(anyhow::anyhow!(
                        "connection lost before the broker acknowledged: {error}"
                    ));
                }
                other => self.note(other),
            }
        };
        self.outgoing.clear();
        result
    }
}

impl Sink for MqttSink {
    async fn write(&mut self, records: &[SinkRecord]) -> Result<(), WriteError> {
        self.await_connection().await?;
        self.outgoing.clear();
        let records = self.of_one_meter(records);
        if let Some(discovery) = &mut self.discovery {
            discovery.announce(&records, &mut self.outgoing);
            for meter in &self.swapped_out {
                self.retired.extend(discovery.retire(&meter.to_string()));
            }
        }
        self.swapped_out.clear();
        let emptied = self
            .retired
            .iter()
            .map(|t| Message::retained(t.clone(), Vec::new()));
        self.outgoing.extend(emptied);
        self.layout.messages(&records, &mut self.outgoing);
        self.announce().await?;
        if self.outgoing.is_empty() {
            return Ok(());
        }
        self.publish_outgoing().await?;
        self.retired.clear();
        Ok(())
    }

    fn forget(&mut self, meters: &[String]) {
        if let Some(discovery) = &mut self.discovery {
            discovery.forget(meters);
        }
    }

    /// The broker's CONNACK (the connection task logs it either way); then availability
    /// goes out at once, not with the first record, which may be a while away (a meter slow
    /// to send, a cable not yet plugged in): Home Assistant shows the entities available.
    async fn check(&mut self) -> anyhow::Result<String> {
        self.await_connection().await?;
        self.attend().await?;
        Ok(String::new())
    }

    /// News from the connection: a new one, or Home Assistant restarting, is announced at
    /// once rather than with the next write (which may be a quarter of an hour away).
    async fn wants_attention(&mut self) {
        loop {
            match self.deliveries.recv().await {
                Some(delivery) => self.note(delivery),
                None => return std::future::pending().await,
            }
            if self.announce_all && self.connected {
                return;
            }
        }
    }

    /// Publishes availability and the discovery configs.
    async fn attend(&mut self) -> anyhow::Result<()> {
        self.outgoing.clear();
        self.announce().await?;
        self.publish_outgoing()
            .await
            .context("announcing availability and discovery")
    }

    /// Clears retained records past their retention, over a connection of its own.
    async fn maintain(&mut self) -> anyhow::Result<()> {
        let mut retained = RetainedMessages::connect(&self.name, &self.settings).await?;
        let expired = retained.expire(jiff::Timestamp::now()).await;
        retained.close().await;
        let expired = expired?;
        if expired > 0 {
            tracing::info!(sink = %self.name, expired, "cleared retained records past their retention");
        }
        Ok(())
    }

    /// Marks the sink `offline` (what the Last Will would say) and disconnects. Without a
    /// connection there is nobody to tell, and nothing to wait for.
    async fn flush(&mut self) -> anyhow::Result<()> {
        self.take_news();
        let result = async {
            if !self.connected {
                return Ok(());
            }
            self.outgoing.clear();
            self.outgoing
                .push(Message::retained(self.availability.clone(), "offline"));
            self.publish_outgoing().await
        }
        .await;
        let _ = self.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.connection).await;
        self.connection.abort();
        result
    }
}

/// Polls the client's event loop: reconnects with backoff and reports what the sink waits
/// for. `status` is Home Assistant's status topic, when discovery is on.
async fn run_connection(
    name: String,
    address: String,
    mut events: EventLoop,
    report: mpsc::UnboundedSender<Delivery>,
    status: Option<String>,
) {
    let mut backoff = Backoff::reconnect();
    let mut failures = crate::telemetry::log_limit::LogLimit::per_minute();
    loop {
        let delivery = match events.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                tracing::info!(sink = %name, %address, "connected");
                backoff.reset();
                Delivery::Connected
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Delivery::Sent(pkid),
            Ok(Event::Incoming(Incoming::PubAck(ack))) => Delivery::Acked(ack.pkid),
            Ok(Event::Incoming(Incoming::Publish(message)))
                if Some(message.topic.as_str()) == status.as_deref()
                    && message.payload.as_ref() == b"online" =>
            {
                tracing::info!(sink = %name, "Home Assistant is online: publishing discovery again");
                Delivery::HomeAssistantOnline
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(ConnectionError::RequestsDone) => {
                return;
            }
            Ok(_) => continue,
            Err(error) => {
                let delay = backoff.next_delay();
                if let Some(suppressed) = failures.allow(std::time::Instant::now()) {
                    let error = crate::broker::describe(&error);
                    tracing::warn!(sink = %name, %address, suppressed, "MQTT connection lost or refused ({error}); retrying in {delay:?}");
                }
                if report.send(Delivery::Lost(error.to_string())).is_err() {
                    return;
                }
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        if report.send(delivery).is_err() {
            return;
        }
    }
}
