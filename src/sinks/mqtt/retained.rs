//! The rights commands' side of an MQTT sink: the broker keeps the last record of each state
//! topic and every discovery config, retained. They are read by subscribing (a broker sends
//! what it retains at once) and erased by an empty retained publish on each topic.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use jiff::Timestamp;
use p1guard_conduct::Granularity;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, Outgoing, QoS};
use tokio::time::Instant;

use super::config::{MqttSettings, TopicLayout};
use super::topics::topic_level;
use crate::held::{Held, Purge, Purged};

/// How long the broker may take to answer at all.
const ANSWER_WAIT: Duration = Duration::from_secs(10);

/// After the subscription is acknowledged, the retained messages are in flight: they are
/// taken to be complete once none came for this long. Messages published meanwhile (a
/// running daemon's records, which the broker forwards unretained) do not count: on a busy
/// broker the wait would never end.
const QUIET: Duration = Duration::from_millis(500);

/// Topic filters per SUBSCRIBE packet when many meters are read or purged at once.
const FILTERS_AT_ONCE: usize = 1000;

/// A short-lived connection to a sink's broker, for reading and erasing retained messages.
pub struct RetainedMessages {
    client: AsyncClient,
    events: EventLoop,
    prefix: String,
    layout: TopicLayout,
    discovery_prefix: Option<String>,
}

impl RetainedMessages {
    /// Connects to the broker of the sink `name`, as the sink's client id with `-rights-` and
    /// the process id: a command and the daemon purging at once must not take each other's
    /// session over.
    pub async fn connect(name: &str, settings: &MqttSettings) -> anyhow::Result<Self> {
        let mut broker = settings.broker.clone();
        broker.client_id = format!("{}-rights-{}", broker.client_id, std::process::id());
        let mut options = crate::broker::options(&broker)?;
        options.set_clean_session(true);
        let (client, mut events) = AsyncClient::new(options, 1024);
        let connected = tokio::time::timeout(ANSWER_WAIT, async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(error) => return Err(crate::broker::describe(&error)),
                }
            }
        });
        match connected.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => bail!("sink {name}: {}: {error}", broker.describe()),
            Err(_) => bail!("sink {name}: {}: no answer", broker.describe()),
        }
        Ok(RetainedMessages {
            client,
            events,
            prefix: settings.prefix.clone(),
            layout: settings.layout,
            // Both layouts announce their entities.
            discovery_prefix: settings.discovery_prefix.clone(),
        })
    }

    /// Every retained message under `filters`, by topic. Filters go out [`FILTERS_AT_ONCE`]
    /// to a SUBSCRIBE, each packet's retained messages taken before the next; the
    /// subscriptions end with the connection.
    async fn retained(&mut self, filters: &[String]) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
        let mut found = BTreeMap::new();
        for chunk in filters.chunks(FILTERS_AT_ONCE) {
            let subscriptions = chunk
                .iter()
                .map(|filter| rumqttc::SubscribeFilter::new(filter.clone(), QoS::AtLeastOnce));
            self.client.subscribe_many(subscriptions).await?;
            let answer_by = Instant::now() + ANSWER_WAIT;
            // Set once the subscription is acknowledged, and moved on by each retained message.
            let mut quiet_by: Option<Instant> = None;
            loop {
                let deadline = quiet_by.unwrap_or(answer_by);
                let event = match tokio::time::timeout_at(deadline, self.events.poll()).await {
                    Err(_) if quiet_by.is_some() => break,
                    Err(_) => bail!("the broker did not acknowledge the subscription"),
                    Ok(event) => event.map_err(|e| anyhow::anyhow!(crate::broker::describe(&e)))?,
                };
                match event {
                    Event::Incoming(Incoming::SubAck(_)) => quiet_by = Some(Instant::now() + QUIET),
                    Event::Incoming(Incoming::Publish(message)) if message.retain => {
                        if !message.payload.is_empty() {
                            found.insert(message.topic.clone(), message.payload.to_vec());
                        }
                        if quiet_by.is_some() {
                            quiet_by = Some(Instant::now() + QUIET);
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(found)
    }

    /// Empties each of `topics` (an empty retained publish) and waits for the broker.
    async fn clear(&mut self, topics: &[String]) -> anyhow::Result<()> {
        let mut unacknowledged = 0usize;
        for topic in topics {
            self.client
                .publish(topic, QoS::AtLeastOnce, true, Vec::new())
                .await?;
            unacknowledged += 1;
            // The client's request queue is bounded: drain acknowledgements as we go.
            while unacknowledged >= 512 {
                unacknowledged -= self.next_ack().await?;
            }
        }
        while unacknowledged > 0 {
            unacknowledged -= self.next_ack().await?;
        }
        Ok(())
    }

    /// 1 when the next event is a PUBACK, else 0.
    async fn next_ack(&mut self) -> anyhow::Result<usize> {
        let event = tokio::time::timeout(ANSWER_WAIT, self.events.poll())
            .await
            .context("the broker acknowledged nothing")?
            .map_err(|e| anyhow::anyhow!(crate::broker::describe(&e)))?;
        Ok(usize::from(matches!(
            event,
            Event::Incoming(Incoming::PubAck(_))
        )))
    }

    /// The state topics' filter for `meter` (`+` for every meter).
    fn state_filter(&self, meter: &str) -> String {
        match self.layout {
            TopicLayout::P1guard => format!("{}/{meter}/+/+", self.prefix),
            // One household's meter, unnamed in its topics.
            TopicLayout::DsmrReader => format!("{}/#", self.prefix),
        }
    }

    /// Every meter name with retained records.
    pub async fn stored_meters(&mut self) -> anyhow::Result<Vec<String>> {
        if self.layout == TopicLayout::DsmrReader {
            return Ok(Vec::new());
        }
        let filter = self.state_filter("+");
        let topics = self.retained(&[filter]).await?;
        let mut meters: Vec<String> = topics
            .keys()
            .filter_map(|t| t.strip_prefix(&format!("{}/", self.prefix)))
            .filter_map(|rest| rest.split('/').next())
            .map(str::to_owned)
            .collect();
        meters.dedup();
        Ok(meters)
    }

    /// The retained records of `meters` (every meter if `None`).
    pub async fn read(&mut self, meters: Option<&[String]>) -> anyhow::Result<Vec<Held>> {
        if self.layout == TopicLayout::DsmrReader {
            return Ok(Vec::new()); // dsmr-reader's topics hold values, not records
        }
        let filters: Vec<String> = match meters {
            None => vec![self.state_filter("+")],
            Some(meters) => meters
                .iter()
                .map(|m| self.state_filter(&topic_level(m)))
                .collect(),
        };
        let messages = self.retained(&filters).await?;
        Ok(messages
            .values()
            .filter_map(|payload| held(payload))
            .collect())
    }

    /// Empties every retained topic of the purge's meters that it covers.
    pub async fn purge(&mut self, purge: &Purge) -> anyhow::Result<Purged> {
        let live = purge.granularities.contains(&Granularity::Live);
        let mut filters = Vec::new();
        for meter in &purge.meters {
            let meter = topic_level(meter);
            filters.push(self.state_filter(&meter));
            if let Some(discovery) = self.discovery_prefix.as_ref().filter(|_| live) {
                filters.push(format!("{discovery}/sensor/p1guard_{meter}/+/config"));
            }
        }
        filters.dedup(); // dsmr-reader's layout has one filter for any meter
        let mut purged = Purged::default();
        let mut doomed = Vec::new();
        for (topic, payload) in self.retained(&filters).await? {
            if topic.ends_with("/config") {
                doomed.push(topic); // discovery: the live entities of the meter
                continue;
            }
            let covered = match (self.layout, held(&payload)) {
                (TopicLayout::DsmrReader, _) => live,
                (TopicLayout::P1guard, Some(record)) => {
                    if purge.keeps(record.granularity, record.time) {
                        purged.kept += 1;
                    }
                    purge.covers(record.granularity, record.time)
                }
                // Not a record of ours: a granularity in its topic says what it is.
                (TopicLayout::P1guard, None) => topic
                    .rsplit('/')
                    .nth(1)
                    .and_then(|g| g.parse::<Granularity>().ok())
                    .is_some_and(|g| purge.granularities.contains(&g)),
            };
            if covered {
                doomed.push(topic);
            }
        }
        self.clear(&doomed).await?;
        purged.erased = doomed.len() as u64;
        Ok(purged)
    }

    /// Empties every retained record older than its granularity's retention (privacy.md's
    /// defaults); returns how many. dsmr-reader's topics hold the household's latest live
    /// readings, replaced every telegram: all of them go once the latest is past the live
    /// retention (a meter that stopped sending).
    pub async fn expire(&mut self, now: Timestamp) -> anyhow::Result<u64> {
        let messages = self.retained(&[self.state_filter("+")]).await?;
        let expired = |time: Timestamp, granularity: Granularity| {
            let retention = crate::sinks::default_retention(granularity);
            let retention = jiff::SignedDuration::try_from(retention).unwrap_or_default();
            now.checked_sub(retention).is_ok_and(|cutoff| time < cutoff)
        };
        let doomed: Vec<String> = match self.layout {
            TopicLayout::DsmrReader => {
                let latest = latest_reading(&self.prefix, &messages);
                match latest.is_some_and(|time| expired(time, Granularity::Live)) {
                    true => (messages.into_keys())
                        .filter(|topic| is_dsmr_reader_reading(&self.prefix, topic))
                        .collect(),
                    false => Vec::new(),
                }
            }
            TopicLayout::P1guard => messages
                .into_iter()
                .filter(|(_, payload)| {
                    held(payload).is_some_and(|record| expired(record.time, record.granularity))
                })
                .map(|(topic, _)| topic)
                .collect(),
        };
        self.clear(&doomed).await?;
        Ok(doomed.len() as u64)
    }

    /// Disconnects.
    pub async fn close(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Ok(event) = self.events.poll().await {
                if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// The time of the latest reading under dsmr-reader's topics: its electricity and its gas
/// reading each say theirs.
fn latest_reading(prefix: &str, messages: &BTreeMap<String, Vec<u8>>) -> Option<Timestamp> {
    ["timestamp", "extra_device_timestamp"]
        .into_iter()
        .filter_map(|field| messages.get(&format!("{prefix}/reading/{field}")))
        .filter_map(|text| std::str::from_utf8(text).ok()?.parse::<Timestamp>().ok())
        .max()
}

/// Whether `topic` holds one of dsmr-reader's readings: a field, or them all as JSON.
fn is_dsmr_reader_reading(prefix: &str, topic: &str) -> bool {
    topic.strip_prefix(prefix).is_some_and(|rest| {
        rest == "/json"
            || rest
                .strip_prefix("/reading/")
                .is_some_and(|f| !f.is_empty())
    })
}

/// A retained record, if the payload is one.
fn held(payload: &[u8]) -> Option<Held> {
    let record: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let meter = record["meter"].as_str()?.to_owned();
    let granularity = record["granularity"].as_str()?.parse().ok()?;
    let time = record["time"].as_str()?.parse::<Timestamp>().ok()?;
    Some(Held {
        meter,
        granularity,
        time,
        record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsmr_readers_latest_reading_is_the_later_of_electricitys_and_gas() {
        let message = |topic: &str, text: &str| (topic.to_owned(), text.as_bytes().to_vec());
        let mut messages = BTreeMap::from([
            message("dsmr/reading/timestamp", "2026-11-20T10:05:00Z"),
            message("dsmr/reading/electricity_delivered_1", "4312.087"),
            message("dsmr/json", "{}"),
        ]);
        let at = |text: &str| text.parse::<Timestamp>().ok();
        assert_eq!(
            latest_reading("dsmr", &messages),
            at("2026-11-20T10:05:00Z")
        );
        messages.extend([message(
            "dsmr/reading/extra_device_timestamp",
            "2026-11-21T00:00:00Z",
        )]);
        assert_eq!(
            latest_reading("dsmr", &messages),
            at("2026-11-21T00:00:00Z")
        );
        assert_eq!(latest_reading("other", &messages), None);
        let readings: Vec<&String> = (messages.keys())
            .filter(|topic| is_dsmr_reader_reading("dsmr", topic))
            .collect();
        assert_eq!(readings.len(), 4);
        assert!(!is_dsmr_reader_reading("dsmr", "dsmr/status"));
        assert!(!is_dsmr_reader_reading("dsmr", "dsmrx/json"));
    }
}
