//! The durable outbox: what each sink is yet to write, on disk, so that nothing accepted is
//! lost to a crash and a sink that is down holds up no one but itself.
//!
//! One SQLite file (WAL) holds every sink's outbox and the reducer's checkpoint. The commit
//! task is its only writer: for each batch of frames it appends, as one row per sink, the
//! records each sink's policy admitted, numbered per sink; saves the state of every meter
//! the batch moved; and deletes what sinks have acknowledged, in one transaction. A row per
//! batch rather than per record: SQLite's cost is per row, and the fleet bench measured
//! ~8 us per record for a row each (append and delete), a third of the whole pipeline's. Only then are the batch's
//! inputs acknowledged (an MQTT message, [`crate::sources`]). Each sink's task reads its own
//! outbox in order through an [`Inlet`]: from memory while it keeps up (checked against the
//! file, so that what an erasure deleted there is not written), from the file when it has
//! fallen behind or the process restarted, and acknowledges what its server took. Sink
//! writes are idempotent (a record's key is its meter, granularity, kind and time), so what
//! a crash makes a sink write twice is written the same.
//!
//! WAL with `synchronous = NORMAL`: a commit survives the process being killed; the last
//! commits before a power cut may not (the sources then deliver those inputs again, as far
//! as they keep them: an MQTT broker does, a serial meter does not).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::Duration;

use anyhow::Context as _;
use p1guard_conduct::{Consent, Record, Reducer, SinkPolicy, SinkRecord};
use rusqlite::{Connection, OptionalExtension as _, params};
use tokio::sync::{mpsc, watch};

use crate::held::{Held, Purge, Purged};
use crate::telemetry::metrics::SinkMetrics;

/// The outbox file unless configured: `outbox.sqlite` in the state directory.
pub fn path(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    match configured {
        Some(path) => Ok(path.to_owned()),
        None => Ok(crate::state::dir()?.join("outbox.sqlite")),
    }
}

/// A sink's share of the outbox unless configured: 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// Free space the outbox leaves on its file system (counting the file's own free pages,
/// which new records reuse): room for the write-ahead log to take the deletes that empty the
/// outbox once the sinks write again. Below it, input waits; at zero, SQLite could not even
/// delete.
pub const DISK_RESERVE: u64 = 8 << 20;

/// The write-ahead log is folded into the file at about this size, and cut back to it.
const WAL_LIMIT: u64 = 4 << 20;

/// How long the reducer's state of a meter that has gone quiet is kept: longer than any gap
/// a boundary is interpolated across (a day), so a restart within it continues every series.
const CHECKPOINT_KEPT: Duration = Duration::from_secs(2 * 86_400);

/// Batches a sink's task may have in memory ahead of it; later ones it reads from the file.
const IN_MEMORY: usize = 64;

/// Records a sink's task reads from the file at once, in whole batches.
const READ_AT_ONCE: usize = 4096;

/// `batches` holds, per sink, one row per committed batch: records numbered `seq..=through`,
/// of which `records` are left (an erasure takes some out and rewrites the row). A rowid
/// table, since a batch is often larger than a page.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sinks (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS batches (
    sink INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    through INTEGER NOT NULL,
    records INTEGER NOT NULL,
    batch BLOB NOT NULL,
    PRIMARY KEY (sink, seq)
);
CREATE TABLE IF NOT EXISTS reducer (
    meter BLOB PRIMARY KEY,
    state BLOB NOT NULL,
    saved_at INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Whether `error` is SQLite finding the file damaged (not a database, or malformed).
fn is_damaged(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref().is_some_and(finds_damage))
}

/// Whether SQLite's `error` says the file is damaged.
fn finds_damage(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(failure, _)
            if matches!(
                failure.code,
                rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
            )
    )
}

/// SQLite's quick check of every page, its findings as a damaged file's error. Opening reads
/// only the tables' b-tree pages; a batch's overflow pages, most of the file, are read when a
/// sink reads the batch, and one damaged there (a power cut on a worn SD card) would fail
/// that read every second, for good, while the outbox grows. It reads the file once.
fn check_every_page(connection: &Connection) -> anyhow::Result<()> {
    let verdict: String = connection.query_row("PRAGMA quick_check(1)", [], |row| row.get(0))?;
    if verdict == "ok" {
        return Ok(());
    }
    Err(damaged(verdict))
}

/// Whether the file at `path` is empty while its WAL is not: cut to nothing, with the pages
/// the WAL's frames build on. SQLite would open it as a new file and say nothing of what
/// waited. (A file in WAL mode has its header written before the WAL has a frame.)
fn is_empty_beside_its_wal(path: &Path) -> bool {
    let length = |path: &Path| std::fs::metadata(path).map_or(0, |m| m.len());
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    path.exists() && length(path) == 0 && length(Path::new(&wal)) > 0
}

/// The error of a file found damaged, as SQLite gives it, for [`is_damaged`].
fn damaged(why: String) -> anyhow::Error {
    let corrupt = rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT);
    rusqlite::Error::SqliteFailure(corrupt, Some(why)).into()
}

/// Moves the file at `path`, with its WAL, to `<path>.damaged-<Unix seconds>`; its new path.
fn set_aside(path: &Path) -> anyhow::Result<PathBuf> {
    // Two starts in one second (a restart loop) must not overwrite the first file set aside.
    let second = jiff::Timestamp::now().as_second();
    let aside = (0..)
        .map(|n| {
            let mut aside = path.as_os_str().to_owned();
            aside.push(format!(".damaged-{second}"));
            if n > 0 {
                aside.push(format!("-{n}"));
            }
            PathBuf::from(aside)
        })
        .find(|aside| !aside.exists())
        .expect("some name is free");
    std::fs::rename(path, &aside)
        .with_context(|| format!("cannot move the damaged outbox {} aside", path.display()))?;
    for (suffix, keep) in [("-wal", true), ("-shm", false)] {
        let mut beside = path.as_os_str().to_owned();
        beside.push(suffix);
        let beside = PathBuf::from(beside);
        if beside.exists() {
            let _ = if keep {
                let mut moved = aside.as_os_str().to_owned();
                moved.push(suffix);
                std::fs::rename(&beside, moved)
            } else {
                std::fs::remove_file(&beside)
            };
        }
    }
    Ok(aside)
}

/// Opens the outbox file at `path`, creating it and its folder if need be.
fn open_file(path: &Path) -> anyhow::Result<Connection> {
    let mut connection = crate::state::open_sqlite(path)?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.pragma_update(None, "journal_size_limit", WAL_LIMIT as i64)?;
    // Erased records are overwritten, not left in free pages.
    connection.pragma_update(None, "secure_delete", "ON")?;
    connection.busy_timeout(Duration::from_secs(5))?;
    connection.execute_batch(SCHEMA)?;
    carry_over_rows_of_records(&mut connection)?;
    Ok(connection)
}

/// Moves what waits in a file of the outbox's first layout (`outbox`, a row per record)
/// into `batches`, a batch of one per record, so that no record waiting across the upgrade
/// is lost.
fn carry_over_rows_of_records(connection: &mut Connection) -> rusqlite::Result<()> {
    let exists: bool = connection.query_row(
        "SELECT count(*) > 0 FROM sqlite_schema WHERE type = 'table' AND name = 'outbox'",
        [],
        |row| row.get(0),
    )?;
    if !exists {
        return Ok(());
    }
    let transaction = connection.transaction()?;
    let (mut moved, mut unreadable) = (0u64, 0u64);
    {
        let mut rows = transaction.prepare("SELECT sink, seq, record FROM outbox")?;
        let mut rows = rows.query([])?;
        let mut insert = transaction.prepare(
            "INSERT INTO batches (sink, seq, through, records, batch) VALUES (?1, ?2, ?2, 1, ?3)",
        )?;
        while let Some(row) = rows.next()? {
            match p1guard_conduct::decode_record(row.get_ref(2)?.as_blob()?) {
                Ok(record) => {
                    let mut batch = Vec::new();
                    p1guard_conduct::encode_batch(std::slice::from_ref(&record), &mut batch);
                    let (sink, seq): (i64, i64) = (row.get(0)?, row.get(1)?);
                    insert.execute(params![sink, seq, batch])?;
                    moved += 1;
                }
                Err(_) => unreadable += 1,
            }
        }
    }
    transaction.execute_batch("DROP TABLE outbox")?;
    transaction.commit()?;
    if moved + unreadable > 0 {
        tracing::info!(
            records = moved,
            unreadable,
            "the outbox's waiting records are carried over to its new layout"
        );
    }
    Ok(())
}

/// The id of sink `name` in the file, a new one if it has none.
fn sink_id(connection: &Connection, name: &str) -> rusqlite::Result<i64> {
    connection.execute(
        "INSERT INTO sinks (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
        [name],
    )?;
    connection.query_row("SELECT id FROM sinks WHERE name = ?1", [name], |row| {
        row.get(0)
    })
}

/// Drops what waits for sinks no longer configured: it has nowhere to go, and the rights
/// commands, which reach the configured sinks, could not erase it.
fn forget_removed_sinks(connection: &Connection, sinks: &[OutboxSink<'_>]) -> rusqlite::Result<()> {
    let mut query = connection.prepare("SELECT id, name FROM sinks")?;
    let known: Vec<(i64, String)> = query
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (id, name) in known {
        if sinks.iter().any(|sink| sink.name == name) {
            continue;
        }
        let dropped: i64 = connection.query_row(
            "SELECT coalesce(sum(records), 0) FROM batches WHERE sink = ?1",
            [id],
            |row| row.get(0),
        )?;
        connection.execute("DELETE FROM batches WHERE sink = ?1", [id])?;
        connection.execute("DELETE FROM sinks WHERE id = ?1", [id])?;
        if dropped > 0 {
            tracing::warn!(sink = %name, records = dropped, "no sink of this name is configured any more: the records that waited for it are dropped");
        }
    }
    Ok(())
}

/// One sink as the outbox's writer knows it.
#[derive(Clone)]
pub struct OutboxSink<'a> {
    /// The sink's name: its outbox is found by it across restarts.
    pub name: &'a str,
    /// Who may see what.
    pub policy: SinkPolicy,
    /// Its share of the disk.
    pub max_bytes: u64,
    /// Its counters, where the outbox's depth shows.
    pub counters: Arc<SinkMetrics>,
}

/// The outbox's writer, owned by the reduce task.
pub struct Outbox {
    connection: Connection,
    /// The folder the file is in, whose file system's free space is watched.
    dir: PathBuf,
    sinks: Vec<Slot>,
    /// Whether the reducer's state is saved (not for replays, which start over each run).
    checkpoint: bool,
}

/// What the writer keeps per sink.
struct Slot {
    id: i64,
    policy: SinkPolicy,
    max_bytes: u64,
    counters: Arc<SinkMetrics>,
    /// The number the next record gets.
    next: i64,
    /// Records and bytes in the file.
    depth: (u64, u64),
    /// Everything up to this number has been deleted.
    deleted_through: i64,
    shared: Arc<Shared>,
    in_memory: Option<mpsc::Sender<Sequenced>>,
}

/// What a sink's writer and its [`Inlet`] share.
struct Shared {
    committed: watch::Sender<Committed>,
    /// The sink has written (or given up for good) every record up to this number.
    acked: AtomicI64,
}

/// How far a sink's outbox has been committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Committed {
    /// The last record's number.
    through: i64,
    /// No more will come: the reduce task has ended.
    closed: bool,
}

/// Records of one sink in order: numbers `first..=through` (some may have been erased
/// since).
#[derive(Debug)]
pub struct Sequenced {
    /// The first record's number.
    pub first: i64,
    /// The last number this covers.
    pub through: i64,
    /// The records.
    pub records: Vec<SinkRecord>,
}

/// Stages batches for an [`Outbox`] while it commits the previous one: each sink's policy,
/// and whether the reducer's state is saved.
pub struct Stager {
    policies: Vec<SinkPolicy>,
    checkpoint: bool,
}

impl Stager {
    /// Encodes `records` for each sink as its policy admits them, with the state of every
    /// meter `reducer` moved since the last batch.
    pub fn stage<C: Consent>(&self, records: &[Record], reducer: &mut Reducer<C>) -> Staged {
        let sinks = self
            .policies
            .iter()
            .map(|policy| {
                let admitted: Vec<SinkRecord> =
                    records.iter().filter_map(|r| policy.admit(r)).collect();
                if admitted.is_empty() {
                    return None;
                }
                let mut encoded = Vec::with_capacity(160 * admitted.len());
                p1guard_conduct::encode_batch(&admitted, &mut encoded);
                Some(StagedSink {
                    first: None,
                    records: admitted,
                    encoded,
                })
            })
            .collect();
        let mut checkpoint = Vec::new();
        if self.checkpoint {
            reducer.save_changed(|meter, state| checkpoint.push((meter.to_vec(), state.to_vec())));
        }
        Staged { sinks, checkpoint }
    }
}

/// One batch's records for every sink, encoded, with the reducer's state, ready to commit
/// (and to commit again, with the same numbers, if the disk refused it).
pub struct Staged {
    sinks: Vec<Option<StagedSink>>,
    checkpoint: Vec<(Vec<u8>, Vec<u8>)>,
}

struct StagedSink {
    /// The first record's number, given at the first attempt to commit.
    first: Option<i64>,
    records: Vec<SinkRecord>,
    /// The records' stored form: the batch's row.
    encoded: Vec<u8>,
}

impl Staged {
    /// The states of the meters the batch moved (normalised id, state).
    pub fn checkpoint(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.checkpoint
    }

    /// Whether the batch changed nothing on disk.
    pub fn is_empty(&self) -> bool {
        self.sinks.iter().all(Option::is_none) && self.checkpoint.is_empty()
    }

    /// Per sink, its records by granularity: what is lost if the batch cannot be committed.
    pub fn lost(&self) -> Vec<[u64; 4]> {
        self.sinks
            .iter()
            .map(|staged| {
                let mut counts = [0; 4];
                for record in staged.iter().flat_map(|s| &s.records) {
                    counts[record.granularity as usize] += 1;
                }
                counts
            })
            .collect()
    }
}

impl Outbox {
    /// Opens the outbox at `path` for `sinks`, restoring `reducer`'s state if `checkpoint`;
    /// and each sink's [`Inlet`], in the same order. A file SQLite finds damaged is moved
    /// aside and a new one started, as journald does with a damaged journal: a daemon that
    /// cannot start would hold up every meter for good.
    pub fn open<C: Consent>(
        path: &Path,
        sinks: Vec<OutboxSink<'_>>,
        checkpoint: bool,
        reducer: &mut Reducer<C>,
    ) -> anyhow::Result<(Outbox, Vec<Inlet>)> {
        match Outbox::open_as_is(path, sinks.clone(), checkpoint, reducer) {
            Err(error) if is_damaged(&error) => {
                let aside = set_aside(path)?;
                tracing::error!(
                    "the outbox {} is damaged ({error:#}): moved to {} and a new one started; \
                     the records that waited in it are not written (sqlite3's .recover may get \
                     them back)",
                    path.display(),
                    aside.display()
                );
                Outbox::open_as_is(path, sinks, checkpoint, reducer)
            }
            opened => opened,
        }
    }

    fn open_as_is<C: Consent>(
        path: &Path,
        sinks: Vec<OutboxSink<'_>>,
        checkpoint: bool,
        reducer: &mut Reducer<C>,
    ) -> anyhow::Result<(Outbox, Vec<Inlet>)> {
        if is_empty_beside_its_wal(path) {
            return Err(damaged(
                "the file is empty while its WAL holds pages".into(),
            ));
        }
        let connection = open_file(path)?;
        check_every_page(&connection)?;
        forget_removed_sinks(&connection, &sinks)?;
        let mut slots = Vec::new();
        let mut inlets = Vec::new();
        for sink in sinks {
            let id = sink_id(&connection, sink.name)?;
            let (first, last, records, bytes): (Option<i64>, Option<i64>, i64, i64) = connection
                .query_row(
                    "SELECT min(seq), max(through), coalesce(sum(records), 0),
                     coalesce(sum(length(batch)), 0) FROM batches WHERE sink = ?1",
                    [id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                )?;
            let through = last.unwrap_or(0);
            let (records, bytes) = (records as u64, bytes as u64);
            if records > 0 {
                tracing::info!(sink = %sink.name, records, bytes, "records from the last run wait in the outbox");
            }
            let (committed, watching) = watch::channel(Committed {
                through,
                closed: false,
            });
            let shared = Arc::new(Shared {
                committed,
                acked: AtomicI64::new(first.map_or(through, |first| first - 1)),
            });
            let (in_memory, batches) = mpsc::channel(IN_MEMORY);
            sink.counters.set_outbox_depth(records, bytes);
            inlets.push(Inlet {
                reader: open_file(path)?,
                sink: id,
                batches: Some(batches),
                committed: watching,
                shared: Arc::clone(&shared),
                next: first.unwrap_or(through + 1),
                pending: None,
            });
            slots.push(Slot {
                id,
                policy: sink.policy,
                max_bytes: sink.max_bytes,
                counters: sink.counters,
                next: through + 1,
                depth: (records, bytes),
                deleted_through: first.map_or(through, |first| first - 1),
                shared,
                in_memory: Some(in_memory),
            });
        }
        let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => dir.to_owned(),
            None => PathBuf::from("."),
        };
        let outbox = Outbox {
            connection,
            dir,
            sinks: slots,
            checkpoint,
        };
        if checkpoint {
            outbox.restore(reducer)?;
        }
        Ok((outbox, inlets))
    }

    /// Continues `reducer` from the states saved in the last two days.
    fn restore<C: Consent>(&self, reducer: &mut Reducer<C>) -> anyhow::Result<()> {
        let oldest = jiff::Timestamp::now().as_second() - CHECKPOINT_KEPT.as_secs() as i64;
        self.connection
            .execute("DELETE FROM reducer WHERE saved_at < ?1", [oldest])?;
        let mut query = self
            .connection
            .prepare("SELECT meter, state FROM reducer")?;
        let mut rows = query.query([])?;
        let (mut restored, mut unreadable) = (0u64, 0u64);
        while let Some(row) = rows.next()? {
            let meter: Vec<u8> = row.get(0)?;
            let state: Vec<u8> = row.get(1)?;
            match reducer.restore(&meter, &state) {
                Ok(()) => restored += 1,
                Err(error) => {
                    unreadable += 1;
                    if unreadable == 1 {
                        tracing::warn!(
                            "a meter's saved state is not readable, it starts afresh: {error}"
                        );
                    }
                }
            }
        }
        if restored + unreadable > 0 {
            tracing::info!(
                meters = restored,
                unreadable,
                "continuing from the saved state"
            );
        }
        Ok(())
    }

    /// What the reduce task needs to stage batches for this outbox.
    pub fn stager(&self) -> Stager {
        Stager {
            policies: self.sinks.iter().map(|slot| slot.policy).collect(),
            checkpoint: self.checkpoint,
        }
    }

    /// The sinks whose share of the disk is used up: the next batch waits for them.
    pub fn full(&self) -> impl Iterator<Item = &str> {
        self.sinks
            .iter()
            .filter(|slot| slot.depth.1 >= slot.max_bytes)
            .map(|slot| slot.counters.name.as_str())
    }

    /// The room left for records, if it is under [`DISK_RESERVE`]: the file system's free
    /// space and the file's free pages.
    pub fn disk_short(&self) -> Option<u64> {
        let free = rustix::fs::statvfs(&self.dir).ok()?;
        let free = free.f_bavail.saturating_mul(free.f_frsize);
        let pages = |pragma: &str| {
            self.connection
                .pragma_query_value(None, pragma, |row| row.get::<_, i64>(0))
                .map_or(0, |n| n as u64)
        };
        let reusable = pages("freelist_count").saturating_mul(pages("page_size"));
        let room = free.saturating_add(reusable);
        (room < DISK_RESERVE).then_some(room)
    }

    /// Numbers `staged`'s records (at the first attempt), writes them and deletes what the
    /// sinks acknowledged, in one transaction, then hands each sink its records. On an error (a full disk) nothing is written, and the
    /// same `staged` can be committed again.
    pub fn commit(&mut self, staged: &mut Staged) -> anyhow::Result<()> {
        let now = jiff::Timestamp::now().as_second();
        let transaction = self.connection.transaction()?;
        {
            let mut insert = transaction.prepare_cached(
                "INSERT INTO batches (sink, seq, through, records, batch)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (slot, staged) in self.sinks.iter_mut().zip(&mut staged.sinks) {
                let Some(staged) = staged else { continue };
                let count = staged.records.len() as i64;
                let first = *staged.first.get_or_insert_with(|| {
                    let first = slot.next;
                    slot.next += count;
                    first
                });
                insert.execute(params![
                    slot.id,
                    first,
                    first + count - 1,
                    count,
                    staged.encoded
                ])?;
            }
            let mut save = transaction.prepare_cached(
                "INSERT OR REPLACE INTO reducer (meter, state, saved_at) VALUES (?1, ?2, ?3)",
            )?;
            for (meter, state) in &staged.checkpoint {
                save.execute(params![meter, state, now])?;
            }
        }
        let deleted = delete_acked(&transaction, &self.sinks)?;
        transaction.commit()?;
        self.deleted(deleted);
        for (slot, staged) in self.sinks.iter_mut().zip(&mut staged.sinks) {
            let Some(staged) = staged.take() else {
                continue;
            };
            let bytes = staged.encoded.len();
            let count = staged.records.len() as u64;
            slot.depth = (slot.depth.0 + count, slot.depth.1 + bytes as u64);
            slot.counters.set_outbox_depth(slot.depth.0, slot.depth.1);
            let first = staged.first.expect("numbered when inserted");
            let through = first + count as i64 - 1;
            // Into memory first, then the number: an inlet that sees the number and finds
            // nothing in memory knows to read the file.
            if let Some(in_memory) = &slot.in_memory {
                let _ = in_memory.try_send(Sequenced {
                    first,
                    through,
                    records: staged.records,
                });
            }
            slot.shared
                .committed
                .send_modify(|committed| committed.through = through);
        }
        Ok(())
    }

    /// Deletes what the sinks acknowledged since the last commit.
    pub fn delete_acknowledged(&mut self) -> anyhow::Result<()> {
        if self
            .sinks
            .iter()
            .all(|slot| slot.shared.acked.load(Acquire) <= slot.deleted_through)
        {
            return Ok(());
        }
        let transaction = self.connection.transaction()?;
        let deleted = delete_acked(&transaction, &self.sinks)?;
        transaction.commit()?;
        self.deleted(deleted);
        Ok(())
    }

    fn deleted(&mut self, deleted: Vec<Option<(i64, u64, u64)>>) {
        for (slot, deleted) in self.sinks.iter_mut().zip(deleted) {
            if let Some((through, records, bytes)) = deleted {
                slot.deleted_through = through;
                slot.depth = if through >= slot.next - 1 {
                    // Nothing left: exact even where an erasure made batches smaller than
                    // they were counted.
                    (0, 0)
                } else {
                    (
                        slot.depth.0.saturating_sub(records),
                        slot.depth.1.saturating_sub(bytes),
                    )
                };
                slot.counters.set_outbox_depth(slot.depth.0, slot.depth.1);
            }
        }
    }

    /// Tells every sink's inlet that nothing more will come.
    pub fn close_inlets(&mut self) {
        for slot in &mut self.sinks {
            slot.in_memory = None;
            slot.shared
                .committed
                .send_modify(|committed| committed.closed = true);
        }
    }

    /// Deletes what the sinks acknowledged last and says what is left for the next start.
    pub fn finish(mut self) {
        if let Err(error) = self.delete_acknowledged() {
            tracing::error!("cannot delete what the sinks wrote from the outbox: {error:#}");
        }
        for slot in &self.sinks {
            let (records, bytes) = slot.depth;
            if records > 0 {
                tracing::warn!(sink = %slot.counters.name, records, bytes, "records not yet written wait in the outbox for the next start");
            }
        }
    }
}

/// Deletes, in `transaction`, each sink's acknowledged batches: per sink, the number
/// acknowledged, and the records and bytes deleted. (Sinks acknowledge whole batches; a batch
/// only partly acknowledged stays until the rest is.)
fn delete_acked(
    transaction: &rusqlite::Transaction<'_>,
    sinks: &[Slot],
) -> rusqlite::Result<Vec<Option<(i64, u64, u64)>>> {
    let mut delete = transaction.prepare_cached(
        "DELETE FROM batches WHERE sink = ?1 AND seq <= ?2 AND through <= ?2
         RETURNING records, length(batch)",
    )?;
    sinks
        .iter()
        .map(|slot| {
            let acked = slot.shared.acked.load(Acquire);
            if acked <= slot.deleted_through {
                return Ok(None);
            }
            let mut rows = delete.query(params![slot.id, acked])?;
            let (mut records, mut bytes) = (0, 0);
            while let Some(row) = rows.next()? {
                records += row.get::<_, i64>(0)? as u64;
                bytes += row.get::<_, i64>(1)? as u64;
            }
            Ok(Some((acked, records, bytes)))
        })
        .collect()
}

/// A sink's side of its outbox: its records in order, and its acknowledgements.
pub struct Inlet {
    reader: Connection,
    sink: i64,
    /// Batches handed over in memory; `None` once the writer dropped its end.
    batches: Option<mpsc::Receiver<Sequenced>>,
    committed: watch::Receiver<Committed>,
    shared: Arc<Shared>,
    /// The number of the next record to hand out.
    next: i64,
    /// A batch from memory that lies beyond a stretch still to be read from the file.
    pending: Option<Sequenced>,
}

impl Inlet {
    /// The next records, in order, or `None` once the outbox is closed and every record has
    /// been handed out. Cancel-safe.
    pub async fn next(&mut self) -> anyhow::Result<Option<Sequenced>> {
        loop {
            if self.pending.is_none()
                && let Some(batches) = &mut self.batches
            {
                match batches.try_recv() {
                    Ok(batch) => self.pending = Some(batch),
                    Err(mpsc::error::TryRecvError::Empty) => {}
                    Err(mpsc::error::TryRecvError::Disconnected) => self.batches = None,
                }
            }
            if let Some(batch) = self.pending.take() {
                if batch.through < self.next {
                    continue; // already read from the file
                }
                if batch.first == self.next {
                    self.next = batch.through + 1;
                    return self.still_waiting(batch).map(Some);
                }
                if batch.first > self.next {
                    let until = batch.first - 1;
                    self.pending = Some(batch);
                    return self.read(until).map(Some);
                }
                // A batch that begins before what was read: read the rest from the file.
                let through = batch.through;
                return self.read(through).map(Some);
            }
            let committed = *self.committed.borrow_and_update();
            if committed.through >= self.next {
                return self.read(committed.through).map(Some);
            }
            if committed.closed {
                return Ok(None);
            }
            match &mut self.batches {
                Some(batches) => tokio::select! {
                    batch = batches.recv() => match batch {
                        Some(batch) => self.pending = Some(batch),
                        None => self.batches = None,
                    },
                    changed = self.committed.changed() => if changed.is_err() {
                        return Ok(None);
                    },
                },
                None => {
                    if self.committed.changed().await.is_err() {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// `batch`, handed over in memory, as its row now is: an erasure since it was committed
    /// may have taken records out, and the file is what a sink writes from.
    fn still_waiting(&mut self, mut batch: Sequenced) -> anyhow::Result<Sequenced> {
        tokio::task::block_in_place(|| -> anyhow::Result<()> {
            let left: Option<i64> = self
                .reader
                .prepare_cached("SELECT records FROM batches WHERE sink = ?1 AND seq = ?2")?
                .query_row(params![self.sink, batch.first], |row| row.get(0))
                .optional()?;
            match left {
                None => batch.records.clear(),
                Some(left) if left as usize == batch.records.len() => {}
                Some(_) => {
                    let row: Vec<u8> = self
                        .reader
                        .prepare_cached("SELECT batch FROM batches WHERE sink = ?1 AND seq = ?2")?
                        .query_row(params![self.sink, batch.first], |row| row.get(0))?;
                    batch.records = p1guard_conduct::decode_batch(&row)?;
                }
            }
            Ok(())
        })
        .context("reading the outbox")?;
        Ok(batch)
    }

    /// The records of the batches numbered `first..=through`, handed out and not yet
    /// acknowledged, that still wait, if fewer than `handed_out` do: an erasure (`erase`, a
    /// withdrawal's purge) took them out of the file, and a sink holding them in memory,
    /// retrying a write, must not write them. `None` if none was taken out.
    pub fn erased_among(
        &mut self,
        first: i64,
        through: i64,
        handed_out: usize,
    ) -> anyhow::Result<Option<Vec<SinkRecord>>> {
        tokio::task::block_in_place(|| -> anyhow::Result<Option<Vec<SinkRecord>>> {
            let left: i64 = self
                .reader
                .prepare_cached(
                    "SELECT COALESCE(SUM(records), 0) FROM batches
                     WHERE sink = ?1 AND seq >= ?2 AND seq <= ?3",
                )?
                .query_row(params![self.sink, first, through], |row| row.get(0))?;
            if left as usize >= handed_out {
                return Ok(None);
            }
            let mut query = self.reader.prepare_cached(
                "SELECT batch FROM batches WHERE sink = ?1 AND seq >= ?2 AND seq <= ?3
                 ORDER BY seq",
            )?;
            let mut rows = query.query(params![self.sink, first, through])?;
            let mut records = Vec::with_capacity(left as usize);
            while let Some(row) = rows.next()? {
                records.extend(p1guard_conduct::decode_batch(row.get_ref(0)?.as_blob()?)?);
            }
            Ok(Some(records))
        })
        .context("reading the outbox")
    }

    /// Reads the batches from the next number through `until` from the file, whole batches
    /// up to about [`READ_AT_ONCE`] records. Where SQLite finds the file damaged (a page gone
    /// bad while p1guard runs; damage there at the start moves the file aside), it reads one
    /// batch at a time, and skips the one it cannot read: the sink goes on past it.
    fn read(&mut self, until: i64) -> anyhow::Result<Sequenced> {
        let first = self.next;
        let (records, through) = match self.read_batches(first, until) {
            Err(error) if is_damaged(&error) => self.read_one_batch(first, until)?,
            read => read.context("reading the outbox")?,
        };
        self.next = through + 1;
        Ok(Sequenced {
            first,
            through,
            records,
        })
    }

    /// The first batch from `first` through `until`, or none and its last number if SQLite
    /// cannot read it; an error if it cannot even tell where that batch ends.
    fn read_one_batch(&mut self, first: i64, until: i64) -> anyhow::Result<(Vec<SinkRecord>, i64)> {
        tokio::task::block_in_place(|| {
            // The table's own pages, not the batch's: readable where the batch is not.
            let (seq, through, count): (i64, i64, i64) = self
                .reader
                .prepare_cached(
                    "SELECT seq, through, records FROM batches
                     WHERE sink = ?1 AND seq >= ?2 AND seq <= ?3 ORDER BY seq LIMIT 1",
                )?
                .query_row(params![self.sink, first, until], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .context("reading the outbox, which SQLite finds damaged")?;
            let batch: rusqlite::Result<Vec<u8>> = self
                .reader
                .prepare_cached("SELECT batch FROM batches WHERE sink = ?1 AND seq = ?2")?
                .query_row(params![self.sink, seq], |row| row.get(0));
            match batch {
                Ok(batch) => match p1guard_conduct::decode_batch(&batch) {
                    Ok(records) => Ok((records, through)),
                    Err(error) => {
                        tracing::error!(
                            "skipped a batch of {count} records in the outbox: {error}"
                        );
                        Ok((Vec::new(), through))
                    }
                },
                Err(error) if finds_damage(&error) => {
                    tracing::error!(
                        "skipped a batch of {count} records in the outbox, where SQLite finds \
                         the file damaged: {error}"
                    );
                    Ok((Vec::new(), through))
                }
                Err(error) => Err(anyhow::Error::new(error).context("reading the outbox")),
            }
        })
    }

    /// [`Inlet::read`]'s batches, as the file holds them.
    fn read_batches(&mut self, first: i64, until: i64) -> anyhow::Result<(Vec<SinkRecord>, i64)> {
        tokio::task::block_in_place(|| -> anyhow::Result<(Vec<SinkRecord>, i64)> {
            let mut query = self.reader.prepare_cached(
                "SELECT through, batch FROM batches WHERE sink = ?1 AND seq >= ?2 AND seq <= ?3
                     ORDER BY seq",
            )?;
            let mut rows = query.query(params![self.sink, first, until])?;
            let mut records = Vec::new();
            let mut unreadable = 0;
            while let Some(row) = rows.next()? {
                match p1guard_conduct::decode_batch(row.get_ref(1)?.as_blob()?) {
                    Ok(batch) => records.extend(batch),
                    Err(error) => {
                        unreadable += 1;
                        if unreadable == 1 {
                            tracing::error!("skipped a batch in the outbox: {error}");
                        }
                    }
                }
                if records.len() >= READ_AT_ONCE {
                    return Ok((records, row.get(0)?));
                }
            }
            Ok((records, until))
        })
    }

    /// The sink has written, or given up for good, every record through `through`: the
    /// outbox may delete them.
    pub fn acknowledge(&self, through: i64) {
        self.shared.acked.fetch_max(through, Release);
    }

    /// The last number acknowledged.
    pub fn acknowledged(&self) -> i64 {
        self.shared.acked.load(Relaxed)
    }
}

/// The outbox opened by the rights commands, to erase what waits in it too.
pub struct OutboxStore {
    connection: Connection,
    sink: Option<i64>,
}

impl OutboxStore {
    /// Sink `name`'s outbox in the file at `path`, if there is such a file.
    pub fn open(path: &Path, name: &str) -> anyhow::Result<Option<OutboxStore>> {
        if !path.exists() {
            return Ok(None);
        }
        let connection = open_file(path)?;
        let sink = connection
            .query_row("SELECT id FROM sinks WHERE name = ?1", [name], |row| {
                row.get(0)
            })
            .optional()?;
        Ok(Some(OutboxStore { connection, sink }))
    }

    /// Each of the sink's waiting batches in order: its number, and its records.
    fn batches(&self) -> anyhow::Result<Vec<(i64, Vec<SinkRecord>)>> {
        let Some(sink) = self.sink else {
            return Ok(Vec::new());
        };
        let mut query = self
            .connection
            .prepare("SELECT seq, batch FROM batches WHERE sink = ?1 ORDER BY seq")?;
        let mut rows = query.query([sink])?;
        let mut batches = Vec::new();
        while let Some(row) = rows.next()? {
            let records = p1guard_conduct::decode_batch(row.get_ref(1)?.as_blob()?)?;
            batches.push((row.get(0)?, records));
        }
        Ok(batches)
    }

    /// The meter names the sink's waiting records carry.
    pub fn meters(&self) -> anyhow::Result<Vec<String>> {
        let mut meters = std::collections::BTreeSet::new();
        for (_, records) in self.batches()? {
            meters.extend(records.iter().map(|record| record.meter.to_string()));
        }
        Ok(meters.into_iter().collect())
    }

    /// The waiting records of `meters` (every waiting record if `None`), in the record JSON.
    pub fn read(&self, meters: Option<&[String]>) -> anyhow::Result<Vec<Held>> {
        let mut held = Vec::new();
        for record in self.batches()?.into_iter().flat_map(|(_, records)| records) {
            let meter = record.meter.to_string();
            if meters.is_some_and(|meters| !meters.contains(&meter)) {
                continue;
            }
            let mut json = Vec::new();
            record.write_json(&mut json)?;
            held.push(Held {
                meter,
                granularity: record.granularity,
                time: record.time,
                record: serde_json::from_slice(&json)?,
            });
        }
        Ok(held)
    }

    /// Erases the waiting records `purge` covers: each batch holding some is written again
    /// without them (with `secure_delete`, over the old bytes), or deleted if none is left.
    pub fn purge(&mut self, purge: &Purge) -> anyhow::Result<Purged> {
        let Some(sink) = self.sink else {
            return Ok(Purged::default());
        };
        let batches = self.batches()?;
        let transaction = self.connection.transaction()?;
        let mut purged = Purged::default();
        {
            let mut rewrite = transaction.prepare(
                "UPDATE batches SET records = ?3, batch = ?4 WHERE sink = ?1 AND seq = ?2",
            )?;
            let mut delete =
                transaction.prepare("DELETE FROM batches WHERE sink = ?1 AND seq = ?2")?;
            for (seq, mut records) in batches {
                let before = records.len();
                records.retain(|record| {
                    if !purge.meters.contains(&record.meter.to_string()) {
                        return true;
                    }
                    purged.kept += u64::from(purge.keeps(record.granularity, record.time));
                    !purge.covers(record.granularity, record.time)
                });
                if records.len() == before {
                    continue;
                }
                purged.erased += (before - records.len()) as u64;
                if records.is_empty() {
                    delete.execute(params![sink, seq])?;
                } else {
                    let mut batch = Vec::new();
                    p1guard_conduct::encode_batch(&records, &mut batch);
                    rewrite.execute(params![sink, seq, records.len() as i64, batch])?;
                }
            }
        }
        transaction.commit()?;
        if purged.erased > 0 {
            self.connection
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use jiff::Timestamp;
    use p1guard_conduct::{
        Arrival, BillingCadence, Calendar, Granularity, Identity, IdentityKey, Level, MaxGaps,
        Reducer, ReducerConfig, SinkPolicy, Timeline,
    };
    use p1guard_simulator::{MeterSpec, Style, stream};
    use p1guard_telegram::{Framer, FramerConfig, Parser};

    use super::*;
    use crate::telemetry::metrics::Metrics;

    type TestReducer = Reducer<Timeline>;

    fn reducer() -> TestReducer {
        let config = ReducerConfig {
            calendar: Calendar::netherlands(BillingCadence::BiMonthly),
            finest: Granularity::QuarterHour,
            max_gaps: MaxGaps::default(),
        };
        Reducer::new(
            config,
            Timeline::constant(Level::QuarterHour),
            IdentityKey::from_bytes([1; 32]),
        )
    }

    fn policy() -> SinkPolicy {
        SinkPolicy::new(Granularity::QuarterHour, Identity::Pseudonym).unwrap()
    }

    /// A day of a DSMR 4 meter (a telegram every 10 s, gas hourly) across a billing
    /// boundary, in chunks of 30 telegrams.
    fn chunks() -> Vec<Vec<u8>> {
        let at = |t: &str| t.parse::<Timestamp>().unwrap();
        let spec = MeterSpec {
            style: Style::Dsmr4,
            equipment_id: "E0046000012345626".into(),
            gas_id: Some("G0046000012345626".into()),
            seed: 7,
        };
        let bytes = stream(
            spec,
            at("2026-06-30T12:00:00Z"),
            at("2026-07-01T12:00:00Z"),
            Vec::new(),
        );
        let mut framer = Framer::new(FramerConfig::default());
        framer.push(&bytes);
        framer.finish();
        let mut chunks = vec![Vec::new()];
        let mut frames = 0;
        while let Some(frame) = framer.next_frame() {
            chunks.last_mut().unwrap().extend(frame.unwrap().bytes());
            frames += 1;
            if frames % 30 == 0 {
                chunks.push(Vec::new());
            }
        }
        chunks
    }

    /// The records `reducer` makes of `chunk`.
    fn reduce(reducer: &mut TestReducer, chunk: &[u8]) -> Vec<Record> {
        let (mut framer, mut parser) = (Framer::new(FramerConfig::default()), Parser::new());
        framer.push(chunk);
        framer.finish();
        let mut records = Vec::new();
        while let Some(frame) = framer.next_frame() {
            let telegram = parser.parse(&frame.unwrap()).unwrap();
            reducer.reduce(&telegram, Arrival::Recorded(Timestamp::MAX), &mut records);
        }
        records
    }

    fn open(path: &Path, reducer: &mut TestReducer) -> (Outbox, Inlet, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new([], ["store"]));
        let sinks = vec![OutboxSink {
            name: "store",
            policy: policy(),
            max_bytes: DEFAULT_MAX_BYTES,
            counters: Arc::clone(&metrics.sinks[0]),
        }];
        let (outbox, mut inlets) = Outbox::open(path, sinks, true, reducer).unwrap();
        (outbox, inlets.pop().unwrap(), metrics)
    }

    fn scratch(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("p1guard-outbox-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("outbox.sqlite")
    }

    /// Reduces `chunk` and commits its records.
    fn commit(outbox: &mut Outbox, reducer: &mut TestReducer, chunk: &[u8]) -> Vec<SinkRecord> {
        let records = reduce(reducer, chunk);
        let mut staged = outbox.stager().stage(&records, reducer);
        outbox.commit(&mut staged).unwrap();
        records.iter().filter_map(|r| policy().admit(r)).collect()
    }

    /// Everything `inlet` hands out after number `after` once `outbox` is closed: in order,
    /// nothing skipped.
    async fn read_all(
        inlet: &mut Inlet,
        outbox: &mut Outbox,
        after: i64,
    ) -> (i64, Vec<SinkRecord>) {
        outbox.close_inlets();
        let mut records = Vec::new();
        let mut through = after;
        while let Some(batch) = inlet.next().await.unwrap() {
            assert_eq!(batch.first, through + 1, "in order, nothing skipped");
            through = batch.through;
            records.extend(batch.records);
        }
        (through, records)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_sink_behind_reads_from_the_file_what_memory_no_longer_holds_in_order() {
        let path = scratch("order");
        let chunks = chunks();
        assert!(
            chunks.len() > IN_MEMORY * 2,
            "more batches than memory holds"
        );
        let mut reducer = reducer();
        let (mut outbox, mut inlet, metrics) = open(&path, &mut reducer);
        // The sink takes the first batch from memory, then falls behind.
        let mut expected = commit(&mut outbox, &mut reducer, &chunks[0]);
        let first = inlet.next().await.unwrap().unwrap();
        assert_eq!(first.records, expected);
        for chunk in &chunks[1..] {
            expected.extend(commit(&mut outbox, &mut reducer, chunk));
        }
        let depth = &metrics.sinks[0];
        assert_eq!(depth.outbox_records.load(Relaxed), expected.len() as u64);
        let (through, rest) = read_all(&mut inlet, &mut outbox, first.through).await;
        assert_eq!([first.records, rest].concat(), expected);
        assert_eq!(through, expected.len() as i64);

        inlet.acknowledge(through);
        outbox.delete_acknowledged().unwrap();
        assert_eq!(depth.outbox_records.load(Relaxed), 0);
        assert_eq!(depth.outbox_bytes.load(Relaxed), 0);
    }

    /// Whichever one page of the file is zeroed (a power cut on a worn SD card), the outbox is
    /// found damaged at the start and moved aside, or reads whole, or skips the damaged batch
    /// by its checksum: never opened only to fail each read for good, nor read as other
    /// records.
    #[tokio::test(flavor = "multi_thread")]
    async fn any_damaged_page_is_found_at_the_start_or_never_read_wrong() {
        let path = scratch("damaged-page");
        let mut writer = reducer();
        // A day's records, twenty times over, in one batch many pages long: most of the file
        // is the batch's overflow pages.
        let waiting = {
            let (mut outbox, _inlet, _) = open(&path, &mut writer);
            let day: Vec<Record> = (chunks().iter())
                .flat_map(|chunk| reduce(&mut writer, chunk))
                .collect();
            let records: Vec<Record> = (0..20).flat_map(|_| day.iter().cloned()).collect();
            let mut staged = outbox.stager().stage(&records, &mut writer);
            outbox.commit(&mut staged).unwrap();
            (records.iter())
                .filter_map(|r| policy().admit(r))
                .collect::<Vec<_>>()
        };
        let whole = std::fs::read(&path).unwrap();
        let pages = whole.len() / 4096;
        assert!(pages > 4, "{pages} pages");
        let dir = path.parent().unwrap();
        for page in 0..pages {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir).unwrap();
            let mut damaged = whole.clone();
            damaged[page * 4096..(page + 1) * 4096].fill(0);
            std::fs::write(&path, damaged).unwrap();

            let (mut outbox, mut inlet, _) = open(&path, &mut reducer());
            let moved_aside = (std::fs::read_dir(dir).unwrap()).any(|entry| {
                (entry.unwrap().file_name().to_string_lossy()).starts_with("outbox.sqlite.damaged-")
            });
            outbox.close_inlets();
            let mut read = Vec::new();
            while let Some(batch) = inlet.next().await.unwrap_or_else(|error| {
                panic!("page {page} damaged: opened, then reading failed: {error:#}")
            }) {
                read.extend(batch.records);
            }
            // Whole, or the damaged batch skipped (its checksum); never other records.
            assert!(
                read.is_empty() || (!moved_aside && read == waiting),
                "page {page} damaged: {} records read of {}",
                read.len(),
                waiting.len()
            );
        }
    }

    /// A page of a batch that goes bad while p1guard runs, after the start's check, fails its
    /// read: that batch is skipped, and the sink goes on with the batches before and after it.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_batch_damaged_while_running_is_skipped_and_the_rest_read() {
        let path = scratch("damaged-while-running");
        let mut writer = reducer();
        let chunks = chunks();
        let (before, after) = {
            let (mut outbox, _inlet, _) = open(&path, &mut writer);
            let (first, rest) = chunks.split_at(6);
            let (day, last) = rest.split_at(rest.len() - 6);
            let mut before = Vec::new();
            for chunk in first {
                before.extend(commit(&mut outbox, &mut writer, chunk));
            }
            let day: Vec<Record> = (day.iter())
                .flat_map(|chunk| reduce(&mut writer, chunk))
                .collect();
            let many: Vec<Record> = (0..20).flat_map(|_| day.iter().cloned()).collect();
            let mut staged = outbox.stager().stage(&many, &mut writer);
            outbox.commit(&mut staged).unwrap();
            let mut after = Vec::new();
            for chunk in last {
                after.extend(commit(&mut outbox, &mut writer, chunk));
            }
            (before, after)
        };
        assert!(!before.is_empty() && !after.is_empty());
        let overflow: Vec<i64> = Connection::open(&path)
            .unwrap()
            .prepare("SELECT pageno FROM dbstat WHERE name = 'batches' AND pagetype = 'overflow'")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(overflow.len() > 2, "{overflow:?}");

        // Opened whole; then a page of the long batch is zeroed under it.
        let (mut outbox, mut inlet, _) = open(&path, &mut reducer());
        let page = overflow[overflow.len() / 2];
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let at = (page as u64 - 1) * 4096;
        std::os::unix::fs::FileExt::write_all_at(&file, &[0; 4096], at).unwrap();

        outbox.close_inlets();
        let mut read = Vec::new();
        while let Some(batch) = inlet.next().await.expect("read past the damaged batch") {
            read.extend(batch.records);
        }
        assert_eq!(read, [before, after].concat());
    }

    /// A file cut to nothing beside the WAL of a killed process is damaged too: SQLite would
    /// open it as a new, empty outbox, and the records that waited would be lost unsaid.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_outbox_cut_to_nothing_beside_its_wal_is_moved_aside() {
        let running = scratch("cut-to-nothing-running");
        let mut writer = reducer();
        let (mut outbox, _inlet, _) = open(&running, &mut writer);
        for chunk in &chunks()[..10] {
            commit(&mut outbox, &mut writer, chunk);
        }
        let path = scratch("cut-to-nothing");
        let dir = path.parent().unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let wal = |path: &Path| PathBuf::from(format!("{}-wal", path.display()));
        std::fs::copy(wal(&running), wal(&path)).unwrap();
        std::fs::write(&path, b"").unwrap();

        let (_, _, metrics) = open(&path, &mut reducer());
        let aside: Vec<String> = (std::fs::read_dir(dir).unwrap())
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("outbox.sqlite.damaged-"))
            .collect();
        assert_eq!(aside.len(), 2, "the file and its WAL, kept: {aside:?}");
        assert_eq!(metrics.sinks[0].outbox_records.load(Relaxed), 0);
    }

    /// A restart loop may find the outbox damaged twice in one second: both are kept.
    #[tokio::test(flavor = "multi_thread")]
    async fn outboxes_set_aside_in_one_second_are_all_kept() {
        let path = scratch("set-aside-twice");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        for damage in [b"first".as_slice(), b"second"] {
            let garbage = [b"SQLite format 3\0".as_slice(), damage, &[0xA5; 8000]].concat();
            std::fs::write(&path, garbage).unwrap();
            open(&path, &mut reducer());
        }
        let mut kept: Vec<Vec<u8>> = (std::fs::read_dir(path.parent().unwrap()).unwrap())
            .map(|entry| entry.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("outbox.sqlite.damaged-"))
            .map(|p| std::fs::read(p).unwrap()[16..22].to_vec())
            .collect();
        kept.sort();
        assert_eq!(kept, [b"first\xA5".to_vec(), b"second".to_vec()]);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn what_a_sink_did_not_acknowledge_and_the_reducers_state_outlive_the_process() {
        let path = scratch("restart");
        let chunks = chunks();
        let (before, after) = chunks.split_at(chunks.len() / 2);
        let mut whole = reducer();
        let uninterrupted: Vec<SinkRecord> = chunks
            .iter()
            .flat_map(|chunk| reduce(&mut whole, chunk))
            .filter_map(|r| policy().admit(&r))
            .collect();

        // The first run commits half the day; its sink writes one batch; then it stops.
        let mut first = reducer();
        let (mut outbox, mut inlet, _) = open(&path, &mut first);
        for chunk in before {
            commit(&mut outbox, &mut first, chunk);
        }
        let batch = inlet.next().await.unwrap().unwrap();
        inlet.acknowledge(batch.through);
        let mut written = batch.records;
        outbox.finish();
        drop(inlet);

        // The next starts afresh from the file: the rest of the first run's records wait,
        // and the reducer continues every series as if it had not stopped.
        let mut second = reducer();
        let (mut outbox, mut inlet, metrics) = open(&path, &mut second);
        assert!(metrics.sinks[0].outbox_records.load(Relaxed) > 0);
        for chunk in after {
            commit(&mut outbox, &mut second, chunk);
        }
        let after = inlet.acknowledged();
        written.extend(read_all(&mut inlet, &mut outbox, after).await.1);
        assert_eq!(written, uninterrupted);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn access_and_erasure_reach_what_waits_and_billing_inside_the_fiscal_retention_is_kept() {
        let path = scratch("purge");
        let mut reducer = reducer();
        let (mut outbox, mut inlet, _) = open(&path, &mut reducer);
        let mut committed = Vec::new();
        for chunk in chunks() {
            committed.extend(commit(&mut outbox, &mut reducer, &chunk));
        }
        let meter = committed[0].meter.to_string();
        let billing = committed
            .iter()
            .filter(|r| r.granularity == Granularity::Billing)
            .count() as u64;
        assert!(billing > 0);
        let mut store = OutboxStore::open(&path, "store").unwrap().unwrap();
        assert_eq!(store.meters().unwrap(), std::slice::from_ref(&meter));
        // An access request sees what waits, as the record JSON.
        let waiting = store.read(Some(std::slice::from_ref(&meter))).unwrap();
        let json: Vec<_> = committed
            .iter()
            .map(|r| {
                let mut json = Vec::new();
                r.write_json(&mut json).unwrap();
                serde_json::from_slice::<serde_json::Value>(&json).unwrap()
            })
            .collect();
        assert_eq!(
            waiting.into_iter().map(|h| h.record).collect::<Vec<_>>(),
            json
        );
        assert!(
            store
                .read(Some(&["someone else".into()]))
                .unwrap()
                .is_empty()
        );
        let purged = store
            .purge(&Purge {
                meters: vec![meter],
                granularities: Granularity::ALL.to_vec(),
                dated_until: None,
                keep_billing_from: Some(Timestamp::UNIX_EPOCH),
            })
            .unwrap();
        assert_eq!(
            (purged.erased, purged.kept),
            (committed.len() as u64 - billing, billing)
        );
        // What the sink then reads is the billing records only, numbers and all.
        let (through, left) = read_all(&mut inlet, &mut outbox, 0).await;
        assert_eq!(through, committed.len() as i64);
        assert!(left.iter().all(|r| r.granularity == Granularity::Billing));
        assert_eq!(left.len() as u64, billing);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn records_waiting_in_the_first_layout_a_row_each_are_carried_over() {
        let path = scratch("layout");
        let mut reducer = reducer();
        let waiting: Vec<SinkRecord> = reduce(&mut reducer, &chunks()[0])
            .iter()
            .filter_map(|r| policy().admit(r))
            .collect();
        assert!(!waiting.is_empty());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE sinks (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
             INSERT INTO sinks VALUES (1, 'store');
             CREATE TABLE outbox (sink INTEGER NOT NULL, seq INTEGER NOT NULL,
                 meter TEXT NOT NULL, granularity INTEGER NOT NULL, time INTEGER NOT NULL,
                 record BLOB NOT NULL, PRIMARY KEY (sink, seq)) WITHOUT ROWID;",
        )
        .unwrap();
        for (seq, record) in (41..).zip(&waiting) {
            let mut bytes = Vec::new();
            p1guard_conduct::encode_record(record, &mut bytes);
            old.execute(
                "INSERT INTO outbox VALUES (1, ?1, ?2, ?3, ?4, ?5)",
                params![
                    seq,
                    record.meter.to_string(),
                    record.granularity as u8,
                    record.time.as_second(),
                    bytes
                ],
            )
            .unwrap();
        }
        drop(old);

        let (mut outbox, mut inlet, metrics) = open(&path, &mut reducer);
        let depth = metrics.sinks[0].outbox_records.load(Relaxed);
        assert_eq!(depth, waiting.len() as u64);
        let (through, carried) = read_all(&mut inlet, &mut outbox, 40).await;
        assert_eq!(carried, waiting);
        assert_eq!(through, 40 + waiting.len() as i64);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn what_waits_for_a_sink_no_longer_configured_is_dropped() {
        let path = scratch("removed");
        let mut reducer = reducer();
        let (mut outbox, _inlet, _) = open(&path, &mut reducer);
        commit(&mut outbox, &mut reducer, &chunks()[0]);
        outbox.finish();
        let store = OutboxStore::open(&path, "store").unwrap().unwrap();
        assert!(!store.meters().unwrap().is_empty());

        let metrics = Arc::new(Metrics::new([], ["renamed"]));
        let sinks = vec![OutboxSink {
            name: "renamed",
            policy: policy(),
            max_bytes: DEFAULT_MAX_BYTES,
            counters: Arc::clone(&metrics.sinks[0]),
        }];
        let (_outbox, _inlets) = Outbox::open(&path, sinks, true, &mut reducer).unwrap();
        let store = OutboxStore::open(&path, "store").unwrap().unwrap();
        assert!(store.meters().unwrap().is_empty());
        let count: i64 = store
            .connection
            .query_row("SELECT count(*) FROM batches", [], |row| row.get(0))
            .unwrap();
        assert_eq!(count, 0);
    }
}
