//! The stores the rights commands reach: every configured sink, opened for reading back and
//! erasing rather than for writing. Each kind's own code lives with the sink (sqlite.rs,
//! mqtt/retained.rs, influx/); this is only the dispatch. What they say to each other is in
//! [`crate::held`].

use jiff::Timestamp;
use p1guard_conduct::{Granularity, Identity};

use crate::held::{Held, Purge, Purged};
use crate::outbox::OutboxStore;
use crate::sinks::{InfluxSink, RetainedMessages, SinkConfig, SinkKind, SqliteSink};

/// A configured sink, opened to read back and erase, with the records waiting for it in
/// the outbox.
pub struct Store {
    /// The sink's name.
    pub name: String,
    /// The sink's configuration (ceiling, identity, purpose, kind).
    pub config: SinkConfig,
    kind: Opened,
    outbox: Option<OutboxStore>,
}

enum Opened {
    Sqlite(SqliteSink),
    Mqtt(Box<RetainedMessages>),
    Influx(InfluxSink),
    /// Standard output keeps nothing.
    Nothing,
    /// A store that could not be reached (a broker that is down): what waits for it in the
    /// outbox is still erased, so that none of it is written once the store is back.
    Unreachable(anyhow::Error),
}

impl Store {
    /// Opens the store behind `config`.
    pub async fn open(config: &SinkConfig) -> anyhow::Result<Store> {
        let kind = match &config.kind {
            SinkKind::Sqlite { path, retention } => {
                let path = match path {
                    Some(path) => path.clone(),
                    None => crate::state::dir()?.join("p1guard.sqlite"),
                };
                Opened::Sqlite(SqliteSink::open(&path, *retention)?)
            }
            SinkKind::Stdout => Opened::Nothing,
            SinkKind::Mqtt(settings) => {
                match RetainedMessages::connect(&config.name, settings).await {
                    Ok(retained) => Opened::Mqtt(Box::new(retained)),
                    Err(error) => Opened::Unreachable(error),
                }
            }
            SinkKind::Influxdb(settings) => Opened::Influx(InfluxSink::new(settings.clone())?),
        };
        let outbox = crate::outbox::path(config.outbox.as_deref())?;
        Ok(Store {
            name: config.name.clone(),
            config: config.clone(),
            kind,
            outbox: OutboxStore::open(&outbox, &config.name)?,
        })
    }

    /// `sqlite`, `mqtt`, `influxdb` or `stdout`.
    pub fn type_name(&self) -> &'static str {
        self.config.kind.type_name()
    }

    /// How the store names meters.
    pub fn identity(&self) -> Identity {
        self.config.policy.identity()
    }

    /// Whether the store keeps anything at all.
    pub fn keeps_records(&self) -> bool {
        !matches!(self.kind, Opened::Nothing)
    }

    /// How long the store keeps records of `granularity`: a SQLite store's configured
    /// retention, else privacy.md's default (billing: the fiscal retention).
    pub fn retention(&self, granularity: Granularity) -> std::time::Duration {
        match &self.config.kind {
            SinkKind::Sqlite { retention, .. } => {
                retention[granularity as usize].unwrap_or(std::time::Duration::MAX)
            }
            _ => crate::sinks::default_retention(granularity),
        }
    }

    /// Billing records dated at or after this are inside the store's fiscal retention.
    pub fn fiscal_cutoff(&self, now: Timestamp) -> Timestamp {
        let retention = self.retention(Granularity::Billing);
        let retention =
            jiff::SignedDuration::try_from(retention).unwrap_or(jiff::SignedDuration::MAX);
        now.checked_sub(retention).unwrap_or(Timestamp::MIN)
    }

    /// Every meter name the store, or its outbox, holds records of.
    pub async fn meters(&mut self) -> anyhow::Result<Vec<String>> {
        let mut meters = match &mut self.kind {
            Opened::Sqlite(store) => store.stored_meters()?,
            Opened::Mqtt(store) => store.stored_meters().await?,
            Opened::Influx(store) => store.stored_meters().await?,
            Opened::Nothing => Vec::new(),
            Opened::Unreachable(error) => return Err(unreachable(error)),
        };
        if let Some(outbox) = &self.outbox {
            meters.extend(outbox.meters()?);
            meters.sort_unstable();
            meters.dedup();
        }
        Ok(meters)
    }

    /// Erases what `purge` covers, in the outbox first (so that nothing waiting there is
    /// written after the store was purged, and even when the store cannot be reached), then
    /// in the store.
    pub async fn purge(&mut self, purge: &Purge) -> anyhow::Result<Purged> {
        if purge.meters.is_empty() {
            return Ok(Purged::default());
        }
        let waiting = match &mut self.outbox {
            Some(outbox) => outbox.purge(purge)?,
            None => Purged::default(),
        };
        let stored = match &mut self.kind {
            Opened::Sqlite(store) => store.purge(purge),
            Opened::Mqtt(store) => store.purge(purge).await,
            Opened::Influx(store) => store.purge(purge).await,
            Opened::Nothing => Ok(Purged::default()),
            Opened::Unreachable(error) => Err(unreachable(error)),
        };
        match stored {
            Ok(mut purged) => {
                purged.add(waiting);
                Ok(purged)
            }
            Err(error) => Err(error.context(format!(
                "the {} record(s) waiting for it in the outbox were erased, the store's own were not",
                waiting.erased
            ))),
        }
    }

    /// The records of `meters` (every record if `None`), those waiting for the store in the
    /// outbox included, or `None` if the store cannot be read back and nothing waits for it.
    pub async fn read(&mut self, meters: Option<&[String]>) -> anyhow::Result<Option<Vec<Held>>> {
        let stored = match &mut self.kind {
            Opened::Sqlite(store) => store.read(meters).map(Some)?,
            Opened::Mqtt(store) => store.read(meters).await.map(Some)?,
            Opened::Influx(store) => store.read(meters).await?,
            Opened::Nothing => None,
            Opened::Unreachable(error) => return Err(unreachable(error)),
        };
        let waiting = match &self.outbox {
            Some(outbox) => outbox.read(meters)?,
            None => Vec::new(),
        };
        Ok(match stored {
            Some(mut held) => {
                held.extend(waiting);
                Some(held)
            }
            None if waiting.is_empty() => None,
            None => Some(waiting),
        })
    }

    /// Lets go of connections.
    pub async fn close(self) {
        if let Opened::Mqtt(store) = self.kind {
            store.close().await;
        }
    }
}

/// The error of an unreachable store, again for each use.
fn unreachable(error: &anyhow::Error) -> anyhow::Error {
    anyhow::anyhow!("{error:#}")
}
