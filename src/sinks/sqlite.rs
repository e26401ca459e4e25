//! The embedded store: one SQLite table of records, unique on (meter, granularity, kind,
//! time), so a replayed boundary overwrites itself instead of adding a duplicate. Records
//! older than their granularity's retention are deleted on a timer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use jiff::Timestamp;
use p1guard_conduct::{Clock, Granularity, SinkRecord};
use rusqlite::{Connection, params};
use serde::Deserialize;

use super::{Sink, WriteError};
use crate::config::Checker;
use crate::held::{Columns, Held, Purge, Purged};

/// `[[sinks]]` `type = "sqlite"` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqliteConfig {
    /// The database file; `p1guard.sqlite` in the state directory if absent.
    pub path: Option<PathBuf>,
    /// Days to keep records of each granularity; privacy.md's defaults where absent.
    #[serde(default)]
    pub retention_days: BTreeMap<Granularity, u32>,
}

impl SqliteConfig {
    /// The store's file (the state directory's if `None`) and how long records of each
    /// granularity are kept (indexed like [`Granularity::ALL`]), every problem noted.
    pub fn check(
        self,
        checker: &mut Checker<'_>,
        at: &str,
    ) -> (Option<PathBuf>, [Option<Duration>; 4]) {
        let days = |days: u32| Some(Duration::from_secs(u64::from(days) * 86_400));
        let mut retention = super::DEFAULT_RETENTION_DAYS.map(days);
        for (granularity, kept) in self.retention_days {
            if kept == 0 {
                checker.problem(
                    at,
                    format!("retention_days.{granularity}: must be positive"),
                );
            }
            retention[granularity as usize] = days(kept);
        }
        (self.path, retention)
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    meter       TEXT    NOT NULL, -- pseudonym; the raw id only on the owner's own live store
    granularity TEXT    NOT NULL, -- billing, daily, quarter_hour, live
    kind        TEXT    NOT NULL, -- electricity, gas, water, heat
    time        INTEGER NOT NULL, -- the boundary (live: the telegram), Unix seconds UTC
    quality     TEXT    NOT NULL, -- measured, interpolated
    clock       TEXT    NOT NULL, -- meter, or receiver for telegrams without a clock
    readings    TEXT    NOT NULL, -- the record's values object, JSON
    PRIMARY KEY (meter, granularity, kind, time)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_age ON records (granularity, time);
";

const UPSERT: &str = "
INSERT INTO records (meter, granularity, kind, time, quality, clock, readings)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
ON CONFLICT (meter, granularity, kind, time) DO UPDATE SET
    quality = excluded.quality, clock = excluded.clock, readings = excluded.readings
";

/// A SQLite database of records.
pub struct SqliteSink {
    connection: Connection,
    /// Indexed like [`Granularity::ALL`].
    retention: [Option<Duration>; 4],
}

impl SqliteSink {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path, retention: [Option<Duration>; 4]) -> anyhow::Result<SqliteSink> {
        // WAL: readers (Grafana, sqlite3) never block the writer; NORMAL sync is durable
        // across a process crash, and an SD card is spared a sync per transaction.
        let connection = crate::state::open_sqlite(path)?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        // Deleted readings (retention, erasure) are overwritten, not left in free pages where
        // a copy of the file would still carry them.
        connection.pragma_update(None, "secure_delete", "ON")?;
        connection.busy_timeout(Duration::from_secs(5))?;
        connection.execute_batch(SCHEMA)?;
        Ok(SqliteSink {
            connection,
            retention,
        })
    }

    fn insert(&mut self, records: &[SinkRecord]) -> rusqlite::Result<()> {
        let transaction = self.connection.transaction()?;
        {
            let mut upsert = transaction.prepare_cached(UPSERT)?;
            for record in records {
                let r = record;
                let mut readings = Vec::new();
                record
                    .write_values_json(&mut readings)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
                let readings = String::from_utf8(readings)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
                upsert.execute(params![
                    record.meter.to_string(),
                    r.granularity.name(),
                    r.kind.name(),
                    r.time.as_second(),
                    r.quality.name(),
                    r.clock.name(),
                    readings,
                ])?;
            }
        }
        transaction.commit()
    }

    fn delete_expired(&mut self, now: Timestamp) -> rusqlite::Result<usize> {
        let mut deleted = 0;
        for (granularity, keep) in Granularity::ALL.iter().zip(self.retention) {
            let Some(keep) = keep else { continue };
            let cutoff = now.as_second() - keep.as_secs() as i64;
            deleted += self.connection.execute(
                "DELETE FROM records WHERE granularity = ?1 AND time < ?2",
                params![granularity.name(), cutoff],
            )?;
        }
        Ok(deleted)
    }
}

/// The rights commands' side: what the store holds, read back and erased.
impl SqliteSink {
    /// Every meter name with records.
    pub fn stored_meters(&self) -> anyhow::Result<Vec<String>> {
        let mut query = self
            .connection
            .prepare("SELECT DISTINCT meter FROM records")?;
        let meters = query.query_map([], |row| row.get(0))?;
        Ok(meters.collect::<Result<_, _>>()?)
    }

    /// Deletes what `purge` covers, in one transaction; secure_delete overwrites the rows.
    pub fn purge(&mut self, purge: &Purge) -> anyhow::Result<Purged> {
        let transaction = self.connection.transaction()?;
        let mut purged = Purged::default();
        for meter in &purge.meters {
            for &granularity in &purge.granularities {
                let (until, kept_from) = purge.seconds(granularity);
                purged.erased += transaction.execute(
                    "DELETE FROM records WHERE meter = ?1 AND granularity = ?2
                     AND time <= ?3 AND time < ?4",
                    params![meter, granularity.name(), until, kept_from],
                )? as u64;
                purged.kept += transaction.query_row::<i64, _, _>(
                    "SELECT count(*) FROM records WHERE meter = ?1 AND granularity = ?2
                     AND time <= ?3 AND time >= ?4",
                    params![meter, granularity.name(), until, kept_from],
                    |row| row.get(0),
                )? as u64;
            }
        }
        transaction.commit()?;
        if purged.erased > 0 {
            // Fold the WAL into the file, so no copy of the erased rows lingers in it.
            self.connection
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        }
        Ok(purged)
    }

    /// The records of `meters`, or every record, in the record JSON. A meter's records are
    /// found by the primary key, whatever else the store holds.
    pub fn read(&self, meters: Option<&[String]>) -> anyhow::Result<Vec<Held>> {
        const COLUMNS: &str = "SELECT meter, granularity, kind, time, quality, clock, readings \
                               FROM records";
        let mut held = Vec::new();
        let mut collect = |rows: &mut rusqlite::Rows<'_>| -> anyhow::Result<()> {
            while let Some(row) = rows.next()? {
                held.push(held_of(row)?);
            }
            Ok(())
        };
        match meters {
            None => {
                let mut query = self.connection.prepare(&format!(
                    "{COLUMNS} ORDER BY meter, time, granularity, kind"
                ))?;
                collect(&mut query.query([])?)?;
            }
            Some(meters) => {
                let mut query = self.connection.prepare(&format!(
                    "{COLUMNS} WHERE meter = ?1 ORDER BY time, granularity, kind"
                ))?;
                for meter in meters {
                    collect(&mut query.query([meter])?)?;
                }
            }
        }
        Ok(held)
    }
}

/// A row of `records` as the record JSON.
fn held_of(row: &rusqlite::Row<'_>) -> anyhow::Result<Held> {
    let granularity: String = row.get(1)?;
    let clock: String = row.get(5)?;
    let columns = Columns {
        meter: row.get(0)?,
        granularity: granularity.parse()?,
        kind: row.get_ref(2)?.as_str()?,
        time: Timestamp::from_second(row.get(3)?)?,
        quality: Some(row.get_ref(4)?.as_str()?),
        receiver_clock: clock == Clock::Receiver.name(),
        values: serde_json::from_str(row.get_ref(6)?.as_str()?)?,
    };
    Ok(columns.held())
}

impl Sink for SqliteSink {
    async fn write(&mut self, records: &[SinkRecord]) -> Result<(), WriteError> {
        // SQLite blocks; let the runtime move this worker's other tasks elsewhere meanwhile.
        Ok(tokio::task::block_in_place(|| self.insert(records)).context("writing records")?)
    }

    async fn maintain(&mut self) -> anyhow::Result<()> {
        let deleted = tokio::task::block_in_place(|| self.delete_expired(Timestamp::now()))?;
        if deleted > 0 {
            tracing::info!(deleted, "deleted records past their retention");
        }
        Ok(())
    }

    /// Deletes what expired meanwhile, then folds the WAL into the file (every write is a
    /// committed transaction already).
    async fn flush(&mut self) -> anyhow::Result<()> {
        self.maintain().await?;
        tokio::task::block_in_place(|| {
            self.connection
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        })
        .context("checkpointing")
    }
}

#[cfg(test)]
mod tests {
    use p1guard_conduct::{
        Arrival, BillingCadence, Calendar, Identity, IdentityKey, MaxGaps, Record, Reducer,
        ReducerConfig, SinkPolicy, Timeline,
    };
    use p1guard_simulator::{MeterSpec, Style};
    use p1guard_telegram::{Framer, FramerConfig, Parser};

    use super::*;

    /// Two days of a DSMR 4 meter reduced at quarter-hour consent.
    fn records() -> Vec<Record> {
        let spec = MeterSpec {
            style: Style::Dsmr4,
            equipment_id: "E0046000012345626".into(),
            gas_id: None,
            seed: 4,
        };
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let stream = p1guard_simulator::stream(
            spec,
            at("2026-06-01T00:00:00Z"),
            at("2026-06-03T00:00:00Z"),
            Vec::new(),
        );
        let config = ReducerConfig {
            calendar: Calendar::netherlands(BillingCadence::BiMonthly),
            finest: Granularity::QuarterHour,
            max_gaps: MaxGaps::default(),
        };
        let consent = Timeline::constant(p1guard_conduct::Level::QuarterHour);
        let mut reducer = Reducer::new(config, consent, IdentityKey::from_bytes([1; 32]));
        let (mut framer, mut parser) = (Framer::new(FramerConfig::default()), Parser::new());
        framer.push(&stream);
        framer.finish();
        let mut records = Vec::new();
        while let Some(frame) = framer.next_frame() {
            let telegram = parser.parse(&frame.unwrap()).unwrap();
            reducer.reduce(&telegram, Arrival::Recorded(Timestamp::MAX), &mut records);
        }
        records
    }

    fn count(sink: &SqliteSink, granularity: Granularity) -> i64 {
        sink.connection
            .query_row(
                "SELECT count(*) FROM records WHERE granularity = ?1",
                [granularity.name()],
                |row| row.get(0),
            )
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_boundary_written_twice_is_one_row_and_old_rows_expire() {
        let records = records();
        let policy = SinkPolicy::new(Granularity::QuarterHour, Identity::Pseudonym).unwrap();
        let admitted: Vec<_> = records.iter().filter_map(|r| policy.admit(r)).collect();
        let day = Duration::from_secs(86_400);
        let path =
            std::env::temp_dir().join(format!("p1guard-sqlite-{}.sqlite", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut sink = SqliteSink::open(&path, [None, None, Some(day), None]).unwrap();

        sink.write(&admitted).await.unwrap();
        sink.write(&admitted).await.unwrap();
        assert_eq!(count(&sink, Granularity::QuarterHour), 2 * 96);
        assert_eq!(
            count(&sink, Granularity::Daily),
            2,
            "midnights of 2 and 3 June"
        );

        // At noon on 3 June, with a day's retention, the 36 hours of quarter hours before noon
        // on 2 June have expired; the last 12 hours remain.
        let now = "2026-06-03T12:00:00Z".parse::<Timestamp>().unwrap();
        let deleted = sink.delete_expired(now).unwrap();
        assert_eq!(deleted, 36 * 4);
        assert_eq!(count(&sink, Granularity::QuarterHour), 12 * 4);
        assert_eq!(
            count(&sink, Granularity::Daily),
            2,
            "daily has no retention set"
        );
        drop(sink);
        std::fs::remove_file(&path).unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn deleted_readings_do_not_linger_in_the_file() {
        let records = records();
        let policy = SinkPolicy::new(Granularity::QuarterHour, Identity::Pseudonym).unwrap();
        let admitted: Vec<_> = records.iter().filter_map(|r| policy.admit(r)).collect();
        let path = std::env::temp_dir().join(format!(
            "p1guard-sqlite-delete-{}.sqlite",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let day = Duration::from_secs(86_400);
        let mut sink = SqliteSink::open(&path, [None, None, Some(day), None]).unwrap();
        sink.write(&admitted).await.unwrap();
        let checkpoint = "PRAGMA wal_checkpoint(TRUNCATE);";
        sink.connection.execute_batch(checkpoint).unwrap();
        // Every quarter hour that retention deletes below, with its readings, unless a row
        // that stays holds the same readings (the daily reading of a midnight).
        let rows = |sql: &str| -> Vec<(i64, String)> {
            let cutoff = "2026-06-02T12:00:00Z".parse::<Timestamp>().unwrap();
            let mut query = sink.connection.prepare(sql).unwrap();
            let rows = query.query_map([cutoff.as_second()], |row| Ok((row.get(0)?, row.get(1)?)));
            rows.unwrap().map(Result::unwrap).collect()
        };
        let expiring =
            "SELECT time, readings FROM records WHERE granularity = 'quarter_hour' AND time < ?1";
        let staying =
            "SELECT time, readings FROM records WHERE granularity <> 'quarter_hour' OR time >= ?1";
        let staying: Vec<String> = rows(staying).into_iter().map(|(_, r)| r).collect();
        let expiring: Vec<(i64, String)> = rows(expiring)
            .into_iter()
            .filter(|(_, readings)| !staying.contains(readings))
            .collect();
        assert!(expiring.len() > 100, "{expiring:?}");
        let in_file = || -> Vec<i64> {
            let file = std::fs::read(&path).unwrap();
            let found = |readings: &String| {
                file.windows(readings.len())
                    .any(|w| w == readings.as_bytes())
            };
            expiring
                .iter()
                .filter(|(_, r)| found(r))
                .map(|(t, _)| *t)
                .collect()
        };
        assert_eq!(in_file().len(), expiring.len(), "written");
        let now = "2026-06-03T12:00:00Z".parse::<Timestamp>().unwrap();
        assert_eq!(sink.delete_expired(now).unwrap(), 36 * 4);
        sink.flush().await.unwrap();
        drop(sink);
        assert_eq!(
            in_file(),
            Vec::<i64>::new(),
            "deleted, but still in the file"
        );
        std::fs::remove_file(&path).unwrap();
    }
}
