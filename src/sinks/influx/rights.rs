//! The rights commands' side of InfluxDB: what the server holds of a meter, read back and
//! erased.

use p1guard_conduct::Granularity;

use super::InfluxSink;
use crate::rights::{Held, Purge, Purged};

impl InfluxSink {
    /// Every meter name with records.
    pub async fn stored_meters(&mut self) -> anyhow::Result<Vec<String>> {
        anyhow::bail!("influxdb: listing meters is not built yet")
    }

    /// Erases what `purge` covers.
    pub async fn purge(&mut self, purge: &Purge) -> anyhow::Result<Purged> {
        let _ = (purge, Granularity::Billing);
        anyhow::bail!("influxdb: erasing is not built yet")
    }

    /// The records of `meters` (every record if `None`), or `None` where the server cannot
    /// be read back.
    pub async fn read(&mut self, meters: Option<&[String]>) -> anyhow::Result<Option<Vec<Held>>> {
        let _ = meters;
        anyhow::bail!("influxdb: reading back is not built yet")
    }
}
