//! The consent registry: an append-only log of consent events per meter and the erasure
//! ledger, in one SQLite file. History is never rewritten: a correction is a new event, and
//! triggers refuse UPDATE and DELETE on both tables, also from a hand-held `sqlite3`.
//!
//! Meters are kept as the equipment id normalised (as sent, upper case): the registry is the
//! supplier's record of whose consent it holds. The erasure ledger names meters only by
//! pseudonym, so that erased ids are not kept in clear.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::Duration;

use anyhow::Context as _;
use jiff::Timestamp;
use p1guard_conduct::{Change, ChangeError, ConsentTable, Level, Scope};
use rusqlite::{Connection, Transaction, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

mod follow;
pub use self::follow::{Purging, follow};

/// The purpose of an event for every purpose (an erasure, a configured level).
pub const EVERY_PURPOSE: &str = "*";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS consent_events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    meter          TEXT    NOT NULL, -- equipment id as sent, normalised (trimmed, upper case)
    level          TEXT    NOT NULL CHECK (level IN ('none', 'billing', 'daily', 'quarter_hour', 'live')),
    purpose        TEXT    NOT NULL, -- the purpose a sink serves, or '*' for every purpose
    effective_from INTEGER NOT NULL, -- Unix seconds UTC, inclusive
    recorded_at    INTEGER NOT NULL, -- Unix seconds UTC
    reference      TEXT,             -- the supplier's consent key or request number
    source         TEXT    NOT NULL CHECK (source IN ('cli', 'import', 'api'))
    -- and `erasure`, added by ERASURE_COLUMN
);
CREATE INDEX IF NOT EXISTS consent_events_by_meter ON consent_events (meter, seq);
CREATE TRIGGER IF NOT EXISTS consent_events_are_never_updated
BEFORE UPDATE ON consent_events
BEGIN SELECT RAISE(ABORT, 'consent_events is append-only: record a correction as a new event'); END;
CREATE TRIGGER IF NOT EXISTS consent_events_are_never_deleted
BEFORE DELETE ON consent_events
BEGIN SELECT RAISE(ABORT, 'consent_events is append-only: record a correction as a new event'); END;

CREATE TABLE IF NOT EXISTS erasures (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    pseudonym    TEXT    NOT NULL, -- never the equipment id in clear
    requested_at INTEGER NOT NULL, -- Unix seconds UTC: records dated up to here were erased
    reference    TEXT,             -- the data subject's request number
    answer       TEXT    NOT NULL  -- JSON: per store what was erased and what was kept
);
CREATE INDEX IF NOT EXISTS erasures_by_pseudonym ON erasures (pseudonym);
CREATE TRIGGER IF NOT EXISTS erasures_are_never_updated
BEFORE UPDATE ON erasures
BEGIN SELECT RAISE(ABORT, 'the erasure ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS erasures_are_never_deleted
BEFORE DELETE ON erasures
BEGIN SELECT RAISE(ABORT, 'the erasure ledger is append-only'); END;

-- How far this registry has taken each fleet consent stream's messages in.
CREATE TABLE IF NOT EXISTS fleet_streams (
    stream  TEXT    PRIMARY KEY,
    through INTEGER NOT NULL
);
";

/// 1 for an erasure's event, which also marks every record of the meter dated up to its
/// `effective_from` as erased (billing aside), so that none comes back when it arrives late.
/// Added to every registry that lacks it, new or made before the mark existed, so that the
/// column is defined once. Adding a column is no UPDATE: the triggers allow it.
const ERASURE_COLUMN: &str = "ALTER TABLE consent_events ADD COLUMN erasure INTEGER NOT NULL DEFAULT 0 CHECK (erasure IN (0, 1))";

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventSource {
    /// `p1guard consent grant|withdraw`, `p1guard erase`.
    Cli,
    /// `p1guard consent import`.
    Import,
    /// Another program writing the registry.
    Api,
}

impl EventSource {
    fn name(self) -> &'static str {
        match self {
            EventSource::Cli => "cli",
            EventSource::Import => "import",
            EventSource::Api => "api",
        }
    }

    fn from_name(name: &str) -> Option<EventSource> {
        match name {
            "cli" => Some(EventSource::Cli),
            "import" => Some(EventSource::Import),
            "api" => Some(EventSource::Api),
            _ => None,
        }
    }
}

/// A consent event to record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NewEvent {
    /// The equipment id, normalised.
    pub meter: String,
    /// The level from `effective_from` on.
    pub level: Level,
    /// A purpose, or [`EVERY_PURPOSE`].
    pub purpose: String,
    /// From when (inclusive).
    pub effective_from: Timestamp,
    /// The supplier's consent key or request number.
    pub reference: Option<String>,
    /// Who recorded it.
    pub source: EventSource,
    /// Whether it is an erasure's: every record of the meter dated up to `effective_from`
    /// is erased, billing inside the fiscal retention aside, and may not be stored again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub erasure: bool,
}

/// A recorded consent event, as `consent history` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// Its place in the log.
    pub seq: i64,
    /// The equipment id, normalised.
    pub meter: String,
    /// The level from `effective_from` on.
    pub level: Level,
    /// A purpose, or `*` for every purpose.
    pub purpose: String,
    /// From when (inclusive).
    pub effective_from: Timestamp,
    /// When it was recorded.
    pub recorded_at: Timestamp,
    /// The supplier's consent key or request number.
    pub reference: Option<String>,
    /// Who recorded it.
    pub source: EventSource,
    /// Whether it is an erasure's: every record of the meter dated up to `effective_from`
    /// is erased, billing inside the fiscal retention aside, and may not be stored again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub erasure: bool,
}

/// An erasure ledger entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Erasure {
    /// Its place in the ledger.
    pub seq: i64,
    /// The meter's pseudonym.
    pub pseudonym: String,
    /// When the erasure was asked for: records dated up to it were erased.
    pub requested_at: Timestamp,
    /// The data subject's request number.
    pub reference: Option<String>,
    /// Per store, what was erased and what was kept.
    pub answer: serde_json::Value,
}

/// The registry file.
pub struct Registry {
    connection: Connection,
    /// The file, to name in errors.
    path: PathBuf,
}

impl Registry {
    /// Opens (creating if needed) the registry at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Registry> {
        // WAL: the daemon reads new events while a command appends them.
        let connection = crate::state::open_sqlite(path).context("the consent registry")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.busy_timeout(Duration::from_secs(10))?;
        connection
            .execute_batch(SCHEMA)
            .with_context(|| format!("{} is not a consent registry", path.display()))?;
        let has_erasure: bool = connection.query_row(
            "SELECT count(*) FROM pragma_table_info('consent_events') WHERE name = 'erasure'",
            [],
            |row| row.get(0),
        )?;
        if !has_erasure {
            connection.execute(ERASURE_COLUMN, [])?;
        }
        Ok(Registry {
            connection,
            path: path.to_owned(),
        })
    }

    /// The context of a failed write: the file, which may be read-only to this user.
    fn writing(&self) -> String {
        format!(
            "cannot write to the consent registry {}",
            self.path.display()
        )
    }

    /// The registry file a configuration names: its own, or the state directory's.
    pub fn path(configured: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
        match configured {
            Some(path) => Ok(path.clone()),
            None => Ok(crate::state::dir()?.join("consent.sqlite")),
        }
    }

    /// Appends events, all or none; returns the last one's `seq`.
    pub fn append(&mut self, events: &[NewEvent], now: Timestamp) -> anyhow::Result<i64> {
        let context = self.writing();
        let transaction = self.connection.transaction().context(context.clone())?;
        let last = insert(&transaction, events, now).context(context.clone())?;
        transaction.commit().context(context)?;
        Ok(last)
    }

    /// The last event's `seq` (0 for none).
    pub fn last_seq(&self) -> anyhow::Result<i64> {
        Ok(self.connection.query_row(
            "SELECT coalesce(max(seq), 0) FROM consent_events",
            [],
            |row| row.get(0),
        )?)
    }

    /// How far this registry has taken in fleet consent stream `stream` (0: nothing yet).
    pub fn taken_in(&self, stream: &str) -> anyhow::Result<u64> {
        let through: Option<i64> = self
            .connection
            .query_row(
                "SELECT through FROM fleet_streams WHERE stream = ?1",
                [stream],
                |row| row.get(0),
            )
            .or_else(|error| match error {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                error => Err(error),
            })?;
        Ok(through.map_or(0, |n| n as u64))
    }

    /// Appends the events of message `seq` of fleet consent stream `stream`, recorded at
    /// `recorded_at`, unless this registry has taken that message in already (a command and
    /// the daemon may both catch up on one file; messages come in order). Whether they
    /// were new.
    pub fn take_in(
        &mut self,
        stream: &str,
        seq: u64,
        events: &[NewEvent],
        recorded_at: Timestamp,
    ) -> anyhow::Result<bool> {
        let transaction = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let through: i64 = transaction.query_row(
            "SELECT coalesce(max(through), 0) FROM fleet_streams WHERE stream = ?1",
            [stream],
            |row| row.get(0),
        )?;
        if seq as i64 <= through {
            return Ok(false);
        }
        insert(&transaction, events, recorded_at)?;
        transaction.execute(
            "INSERT OR REPLACE INTO fleet_streams (stream, through) VALUES (?1, ?2)",
            params![stream, seq as i64],
        )?;
        transaction.commit()?;
        Ok(true)
    }

    /// Adds to `table` every event after `after` (a `seq`), in order; returns the last `seq`
    /// seen. Events for purposes the table does not serve are passed over.
    pub fn load_into(&self, table: &ConsentTable, after: i64) -> anyhow::Result<i64> {
        let mut query = self.connection.prepare_cached(
            "SELECT seq, meter, level, purpose, effective_from, erasure FROM consent_events
             WHERE seq > ?1 ORDER BY seq",
        )?;
        let mut rows = query.query([after])?;
        let mut last = after;
        let mut changes: Vec<(String, Change)> = Vec::new();
        while let Some(row) = rows.next()? {
            let seq: i64 = row.get(0)?;
            last = seq;
            let level = Level::from_str(row.get_ref(2)?.as_str()?)?;
            let Some(scope) = scope_of(table, row.get_ref(3)?.as_str()?) else {
                continue;
            };
            let from = Timestamp::from_second(row.get(4)?).unwrap_or(Timestamp::MIN);
            let change = Change { from, level, scope };
            if row.get(5)? {
                changes.push((row.get(1)?, erased_through(from)));
            }
            changes.push((row.get(1)?, change));
            if changes.len() == 65_536 {
                add(table, &mut changes)?;
            }
        }
        add(table, &mut changes)?;
        Ok(last)
    }

    /// Every event after `after`, in order.
    pub fn events_after(&self, after: i64) -> anyhow::Result<Vec<Event>> {
        self.events("WHERE seq > ?1 ORDER BY seq", [after])
    }

    /// Every event recorded to take effect later than it was recorded, in order.
    pub fn scheduled_events(&self) -> anyhow::Result<Vec<Event>> {
        self.events("WHERE effective_from > recorded_at ORDER BY seq", [])
    }

    /// The meter's events, oldest first.
    pub fn history(&self, meter: &str) -> anyhow::Result<Vec<Event>> {
        self.events("WHERE meter = ?1 ORDER BY seq", [meter])
    }

    fn events(&self, filter: &str, params: impl rusqlite::Params) -> anyhow::Result<Vec<Event>> {
        let mut query = self.connection.prepare(&format!(
            "SELECT seq, meter, level, purpose, effective_from, recorded_at, reference, source,
                    erasure
             FROM consent_events {filter}"
        ))?;
        let rows = query.query_map(params, |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, i64>(5)?,
                row.get::<_, Option<String>>(6)?,
                row.get::<_, String>(7)?,
                row.get::<_, bool>(8)?,
            ))
        })?;
        let mut events = Vec::new();
        for row in rows {
            let (seq, meter, level, purpose, from, recorded, reference, source, erasure) = row?;
            events.push(Event {
                seq,
                meter,
                level: level.parse()?,
                purpose,
                effective_from: Timestamp::from_second(from)?,
                recorded_at: Timestamp::from_second(recorded)?,
                reference,
                source: EventSource::from_name(&source)
                    .with_context(|| format!("event {seq}: unknown source {source:?}"))?,
                erasure,
            });
        }
        Ok(events)
    }

    /// Every meter with events.
    pub fn meters(&self) -> anyhow::Result<Vec<String>> {
        let mut query = self
            .connection
            .prepare("SELECT DISTINCT meter FROM consent_events")?;
        let rows = query.query_map([], |row| row.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Each meter's consent changes (not erasures) as the instants they took effect, in
    /// order: where a lowered consent's purge erased records
    /// ([`crate::rights::withdrawn_through`]).
    pub fn consent_instants(&self) -> anyhow::Result<HashMap<String, Vec<Timestamp>>> {
        let mut query = self.connection.prepare(
            "SELECT meter, effective_from FROM consent_events WHERE erasure = 0
             ORDER BY meter, effective_from",
        )?;
        let rows = query.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        let mut instants: HashMap<String, Vec<Timestamp>> = HashMap::new();
        for row in rows {
            let (meter, from): (String, i64) = row?;
            instants
                .entry(meter)
                .or_default()
                .push(Timestamp::from_second(from)?);
        }
        Ok(instants)
    }

    /// Whether the registry already holds a consent event like `event`: its meter, level,
    /// purpose, effective instant and reference (an import run twice).
    pub fn holds(&self, event: &NewEvent) -> anyhow::Result<bool> {
        let mut query = self.connection.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM consent_events WHERE meter = ?1 AND level = ?2
             AND purpose = ?3 AND effective_from = ?4 AND reference IS ?5 AND erasure = 0)",
        )?;
        let held = query.query_row(
            params![
                event.meter,
                event.level.name(),
                event.purpose,
                event.effective_from.as_second(),
                event.reference,
            ],
            |row| row.get(0),
        )?;
        Ok(held)
    }

    /// Appends an erasure to the ledger.
    pub fn record_erasure(
        &self,
        pseudonym: &str,
        requested_at: Timestamp,
        reference: Option<&str>,
        answer: &serde_json::Value,
    ) -> anyhow::Result<i64> {
        self.connection
            .execute(
                "INSERT INTO erasures (pseudonym, requested_at, reference, answer)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    pseudonym,
                    requested_at.as_second(),
                    reference,
                    answer.to_string()
                ],
            )
            .with_context(|| self.writing())?;
        Ok(self.connection.last_insert_rowid())
    }

    /// Every erasure, oldest first; only the meter's if `pseudonym` is given.
    pub fn erasures(&self, pseudonym: Option<&str>) -> anyhow::Result<Vec<Erasure>> {
        let mut query = self.connection.prepare(
            "SELECT seq, pseudonym, requested_at, reference, answer FROM erasures
             WHERE ?1 IS NULL OR pseudonym = ?1 ORDER BY seq",
        )?;
        let rows = query.query_map([pseudonym], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, String>(4)?,
            ))
        })?;
        let mut erasures = Vec::new();
        for row in rows {
            let (seq, pseudonym, requested_at, reference, answer) = row?;
            erasures.push(Erasure {
                seq,
                pseudonym,
                requested_at: Timestamp::from_second(requested_at)?,
                reference,
                answer: serde_json::from_str(&answer)?,
            });
        }
        Ok(erasures)
    }
}

/// Inserts `events`, recorded at `recorded_at`; the last one's `seq`.
fn insert(
    transaction: &Transaction<'_>,
    events: &[NewEvent],
    recorded_at: Timestamp,
) -> anyhow::Result<i64> {
    let mut insert = transaction.prepare_cached(
        "INSERT INTO consent_events
         (meter, level, purpose, effective_from, recorded_at, reference, source, erasure)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for event in events {
        insert.execute(params![
            event.meter,
            event.level.name(),
            event.purpose,
            event.effective_from.as_second(),
            recorded_at.as_second(),
            event.reference,
            event.source.name(),
            event.erasure,
        ])?;
    }
    Ok(transaction.last_insert_rowid())
}

/// What an event's purpose covers in `table`: every purpose, one it serves, or (`None`) one
/// it does not serve.
fn scope_of(table: &ConsentTable, purpose: &str) -> Option<Scope> {
    if purpose == EVERY_PURPOSE {
        Some(Scope::Every)
    } else {
        table.purpose(purpose).map(Scope::Purpose)
    }
}

impl Event {
    /// Adds the event to `table`, unless its purpose is one the table does not serve.
    pub fn apply(&self, table: &ConsentTable) -> anyhow::Result<()> {
        if self.erasure {
            table
                .add(self.meter.as_bytes(), erased_through(self.effective_from))
                .map_err(|error| anyhow::anyhow!("event {}: {error}", self.seq))?;
        }
        if let Some(scope) = scope_of(table, &self.purpose) {
            let change = Change {
                from: self.effective_from,
                level: self.level,
                scope,
            };
            table
                .add(self.meter.as_bytes(), change)
                .map_err(|error| anyhow::anyhow!("event {}: {error}", self.seq))?;
        }
        Ok(())
    }
}

/// An erasure's mark in the table: nothing finer than billing dated up to `at`.
fn erased_through(at: Timestamp) -> Change {
    Change {
        from: at,
        level: Level::Billing,
        scope: Scope::ErasedThrough,
    }
}

fn add(table: &ConsentTable, changes: &mut Vec<(String, Change)>) -> anyhow::Result<()> {
    table
        .add_all(changes.iter().map(|(id, c)| (id.as_bytes(), *c)))
        .map_err(|error: ChangeError| anyhow::anyhow!("a registry event: {error}"))?;
    changes.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use p1guard_conduct::PurposeId;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "p1guard-registry-{name}-{}.sqlite",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        path
    }

    fn event(meter: &str, level: Level, purpose: &str, from: &str) -> NewEvent {
        NewEvent {
            meter: meter.into(),
            level,
            purpose: purpose.into(),
            effective_from: from.parse().unwrap(),
            reference: Some("K-1".into()),
            source: EventSource::Cli,
            erasure: false,
        }
    }

    /// A registry the user cannot write (another user's, a read-only mount) is named, not
    /// left to SQLite's "attempt to write a readonly database".
    #[test]
    fn a_registry_that_cannot_be_written_is_named() {
        let path = scratch("read-only");
        let mut registry = Registry::open(&path).unwrap();
        registry
            .connection
            .pragma_update(None, "query_only", true)
            .unwrap();
        let events = [event("4530", Level::Live, "*", "2026-06-01T12:00:00Z")];
        let error = registry.append(&events, Timestamp::now()).unwrap_err();
        let named = format!("cannot write to the consent registry {}", path.display());
        assert!(format!("{error:#}").starts_with(&named), "{error:#}");
        let error = (registry.record_erasure("p", Timestamp::now(), None, &Default::default()))
            .unwrap_err();
        assert!(format!("{error:#}").starts_with(&named), "{error:#}");
    }

    #[test]
    fn a_registry_made_before_erasure_marks_gains_the_column_and_keeps_its_events() {
        let path = scratch("first-schema");
        // SCHEMA has no column for the mark, as registries made before it: opening adds it.
        let old = Connection::open(&path).unwrap();
        old.execute_batch(SCHEMA).unwrap();
        old.execute(
            "INSERT INTO consent_events (meter, level, purpose, effective_from, recorded_at, source)
             VALUES ('4530', 'live', '*', 0, 0, 'cli')",
            [],
        )
        .unwrap();
        drop(old);

        let mut registry = Registry::open(&path).unwrap();
        let mut erasure = event("4530", Level::Billing, "*", "2026-06-01T12:00:00Z");
        erasure.erasure = true;
        registry.append(&[erasure], Timestamp::now()).unwrap();
        let history = registry.history("4530").unwrap();
        assert_eq!(
            history.iter().map(|e| e.erasure).collect::<Vec<_>>(),
            [false, true]
        );
        let table = ConsentTable::new(Level::None, ["insight"]);
        registry.load_into(&table, 0).unwrap();
        let at = |t: &str| t.parse().unwrap();
        let insight = table.purpose("insight").unwrap();
        assert_eq!(
            table.level(b"4530", insight, at("2026-05-01T00:00:00Z")),
            Level::Billing
        );
        assert_eq!(
            table.level(b"4530", insight, at("2026-06-01T12:00:01Z")),
            Level::Billing
        );
        drop(registry);
        // Opened again: the column is there, not added twice.
        Registry::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_fleet_streams_messages_are_taken_in_once_each_with_their_recording_time() {
        let path = scratch("fleet");
        let mut registry = Registry::open(&path).unwrap();
        let mut again = Registry::open(&path).unwrap();
        let recorded: Timestamp = "2026-06-01T12:00:00Z".parse().unwrap();
        let events = [event("4530", Level::Billing, "*", "2026-06-01T00:00:00Z")];
        assert_eq!(registry.taken_in("P1_CONSENT").unwrap(), 0);
        assert!(
            registry
                .take_in("P1_CONSENT", 4, &events, recorded)
                .unwrap()
        );
        // The daemon and a command catching up on one file: the message goes in once.
        assert!(!again.take_in("P1_CONSENT", 4, &events, recorded).unwrap());
        assert!(!again.take_in("P1_CONSENT", 3, &events, recorded).unwrap());
        assert_eq!(registry.taken_in("P1_CONSENT").unwrap(), 4);
        assert_eq!(registry.taken_in("OTHER_CONSENT").unwrap(), 0);
        let history = registry.history("4530").unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(history[0].recorded_at, recorded);
        assert_eq!(registry.last_seq().unwrap(), history[0].seq);
    }

    #[test]
    fn events_load_incrementally_and_history_is_never_rewritten() {
        let path = scratch("log");
        let mut registry = Registry::open(&path).unwrap();
        let now: Timestamp = "2026-06-01T12:00:00Z".parse().unwrap();
        registry
            .append(
                &[
                    event("4530", Level::Live, "insight", "2026-06-01T00:00:00Z"),
                    event("4531", Level::Daily, "unserved", "2026-06-01T00:00:00Z"),
                ],
                now,
            )
            .unwrap();
        let table = ConsentTable::new(Level::Billing, ["insight"]);
        let insight = table.purpose("insight").unwrap();
        let seen = registry.load_into(&table, 0).unwrap();
        assert_eq!(seen, 2);
        let at = "2026-06-02T00:00:00Z".parse().unwrap();
        assert_eq!(table.level(b"4530", insight, at), Level::Live);
        assert_eq!(table.level(b"4530", PurposeId::DEFAULT, at), Level::Billing);
        assert_eq!(table.listed(), 1, "a purpose not served is passed over");

        registry
            .append(
                &[event("4530", Level::Billing, "*", "2026-06-01T06:00:00Z")],
                now,
            )
            .unwrap();
        assert_eq!(registry.load_into(&table, seen).unwrap(), 3);
        assert_eq!(table.level(b"4530", insight, at), Level::Billing);

        let history = registry.history("4530").unwrap();
        assert_eq!(history.len(), 2);
        let answer = serde_json::json!([{"store": "store", "erased": 3}]);
        registry
            .record_erasure("9b31f0c0fa12763d69e2a6c088f529a3", now, None, &answer)
            .unwrap();
        assert_eq!(history[0].recorded_at, now);
        for edit in [
            "UPDATE consent_events SET level = 'live'",
            "DELETE FROM consent_events WHERE seq = 1",
            "UPDATE erasures SET reference = 'x'",
            "DELETE FROM erasures",
        ] {
            let error = registry.connection.execute(edit, []).unwrap_err();
            assert!(error.to_string().contains("append-only"), "{edit}: {error}");
        }
        assert_eq!(registry.history("4530").unwrap(), history);
        std::fs::remove_file(&path).unwrap();
    }
}
