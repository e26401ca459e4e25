//! Where consent comes from: a lookup `(meter, instant) -> level per purpose`, so that a
//! change takes effect exactly at its effective time, also when old data is replayed later,
//! and a record reaches a destination only under the consent for the purpose it serves.

use std::sync::{Arc, PoisonError, RwLock};

use hashbrown::HashTable;
use jiff::Timestamp;

use crate::identity::normalise_equipment_id;
use crate::level::{Granularity, Level};

/// How many purposes one process serves at most: a purpose set is a 16-bit mask.
pub const MAX_PURPOSES: usize = 16;

/// A purpose a destination serves, as an index into the process's list of purposes
/// ([`ConsentTable::purpose`]). `PurposeId::DEFAULT` is the purpose named `default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PurposeId(u8);

impl PurposeId {
    /// The purpose of a sink that names none.
    pub const DEFAULT: PurposeId = PurposeId(0);

    /// The index in the process's list of purposes.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A set of purposes: those under which a record may leave the process.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct PurposeSet(u16);

impl PurposeSet {
    /// No purpose.
    pub const NONE: PurposeSet = PurposeSet(0);
    /// Every purpose.
    pub const ALL: PurposeSet = PurposeSet(u16::MAX);

    /// Whether `purpose` is in the set.
    pub fn contains(self, purpose: PurposeId) -> bool {
        self.0 & (1 << purpose.0) != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// The levels in force for one meter at one instant, purpose by purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels([Level; MAX_PURPOSES]);

impl Levels {
    /// `level` for every purpose.
    pub const fn uniform(level: Level) -> Levels {
        Levels([level; MAX_PURPOSES])
    }

    /// The level for `purpose`.
    pub fn of(&self, purpose: PurposeId) -> Level {
        self.0[purpose.index()]
    }

    /// Changes the level of stored purpose `purpose` (of every purpose for
    /// [`EVERY_PURPOSE`]) to `to` of it, among the first `served`.
    fn change(&mut self, purpose: u8, served: usize, to: impl Fn(Level) -> Level) {
        let levels = &mut self.0[..served];
        let changed = match purpose {
            EVERY_PURPOSE => levels,
            purpose => levels
                .get_mut(usize::from(purpose)..=usize::from(purpose))
                .unwrap_or_default(),
        };
        for level in changed {
            *level = to(*level);
        }
    }

    /// The purposes under which a record of `granularity` may leave.
    pub fn allowing(&self, granularity: Granularity) -> PurposeSet {
        let mut set = 0u16;
        for (index, level) in self.0.iter().enumerate() {
            if level.allows(granularity) {
                set |= 1 << index;
            }
        }
        PurposeSet(set)
    }
}

/// The consent in force for a meter at an instant. `meter` is the equipment identifier as
/// [`normalise_equipment_id`](crate::normalise_equipment_id) leaves it.
pub trait Consent {
    /// The levels in force for `meter` at `at`, purpose by purpose.
    fn levels(&self, meter: &[u8], at: Timestamp) -> Levels;
}

/// One level for every meter and purpose, changing at given instants: the shape of a single
/// household's consent history, and of `p1guard replay --consent L --consent-change T=L`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeline {
    initial: Level,
    /// Sorted by time; a change applies from its instant on (inclusive).
    changes: Vec<(Timestamp, Level)>,
}

impl Timeline {
    /// `initial` until the first change, then each change from its effective instant on.
    pub fn new(initial: Level, mut changes: Vec<(Timestamp, Level)>) -> Timeline {
        changes.sort_by_key(|(at, _)| *at); // stable: of two changes at one instant, the later listed wins
        Timeline { initial, changes }
    }

    /// The same level always.
    pub fn constant(level: Level) -> Timeline {
        Timeline::new(level, Vec::new())
    }

    /// The level at `at`.
    pub fn at(&self, at: Timestamp) -> Level {
        let in_force = self.changes.partition_point(|(from, _)| *from <= at);
        in_force
            .checked_sub(1)
            .map_or(self.initial, |i| self.changes[i].1)
    }
}

impl Consent for Timeline {
    fn levels(&self, _meter: &[u8], at: Timestamp) -> Levels {
        Levels::uniform(self.at(at))
    }
}

/// Which purposes a consent change is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One purpose.
    Purpose(PurposeId),
    /// Every purpose, present and future (an erasure, a configured level).
    Every,
    /// Not a level from `from` on but an erasure's mark: every purpose's level at instants
    /// up to `from` is at most billing, so that nothing finer dated before an erasure is
    /// stored again when it arrives late (the change's level is not used).
    ErasedThrough,
}

/// One change of a meter's consent, as the table keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// From when (inclusive).
    pub from: Timestamp,
    /// The new level.
    pub level: Level,
    /// For which purposes.
    pub scope: Scope,
}

/// Every meter's consent over time, shared: the reducer asks it on the hot path while whoever
/// keeps consent (the configuration, the registry) adds changes, so a running daemon sees a
/// change without a restart. Clones share one table.
///
/// A meter's level for a purpose at an instant is that of its latest change in force then
/// (for that purpose or for every purpose; of two at one instant, the one added last);
/// before its first change, the table's default. Where withdrawals erase what they no longer
/// allow ([`ConsentTable::reach_back_through`]), the levels the reducer is given are also
/// at most the lowest the purpose has had since, up to now (billing aside, which the tax
/// authority keeps): a record a withdrawal would have purged is not stored when it arrives
/// after it. Compact, as a fleet's registry is millions of meters: ids live in one arena,
/// changes in another, and the index holds only a slot number per meter.
#[derive(Debug, Clone)]
pub struct ConsentTable {
    shared: Arc<RwLock<Table>>,
}

#[derive(Debug)]
struct Table {
    default: Level,
    purposes: Vec<String>,
    /// Slot numbers into `meters`, hashed by the meter's id.
    index: HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    meters: Vec<Meter>,
    /// Every meter's normalised id, back to back.
    ids: Vec<u8>,
    /// Every meter's changes, each meter's contiguous and in force order.
    changes: Vec<Stored>,
    /// Through when withdrawals reach back, if they do (see [`ConsentTable`]): now, as the
    /// daemon keeps telling the table (the table reads no clock).
    reach_back: Option<i64>,
}

/// Where a meter's id and changes are.
#[derive(Debug, Clone, Copy)]
struct Meter {
    id_start: u32,
    id_len: u16,
    changes_len: u16,
    changes_start: u32,
}

/// A change in 16 bytes: its instant in seconds, level and purpose index
/// ([`EVERY_PURPOSE`] for every purpose).
#[derive(Debug, Clone, Copy)]
struct Stored {
    from: i64,
    level: Level,
    purpose: u8,
}

const EVERY_PURPOSE: u8 = u8::MAX;
/// The purpose index of an erasure's mark ([`Scope::ErasedThrough`]).
const ERASED_THROUGH: u8 = u8::MAX - 1;

/// Why a change could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    /// The id is empty or holds control bytes.
    #[error("not a meter id: empty, or with control characters")]
    NotAnId,
    /// One meter with more changes than a table keeps.
    #[error("a meter with more than 65535 consent changes")]
    TooManyChanges,
    /// More meters or bytes of id than a table keeps.
    #[error("the consent table is full")]
    Full,
}

impl ConsentTable {
    /// `default` for every meter and purpose until a change is added; `purposes` are the
    /// purposes served, `default` first whether named or not (at most [`MAX_PURPOSES`],
    /// duplicates ignored).
    pub fn new<'a>(default: Level, purposes: impl IntoIterator<Item = &'a str>) -> ConsentTable {
        let mut names = vec!["default".to_owned()];
        for name in purposes {
            if !names.iter().any(|n| n == name) && names.len() < MAX_PURPOSES {
                names.push(name.to_owned());
            }
        }
        let table = Table {
            default,
            purposes: names,
            index: HashTable::new(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            meters: Vec::new(),
            ids: Vec::new(),
            changes: Vec::new(),
            reach_back: None,
        };
        ConsentTable {
            shared: Arc::new(RwLock::new(table)),
        }
    }

    /// Makes withdrawals in force at `now` reach back, as when they erase the stored records
    /// they no longer allow: a record dated before one is judged by the level left (at least
    /// billing), so that none arrives late to be stored after the purge. The daemon calls it
    /// again as time passes, so that a withdrawal reaches back once it is in force.
    pub fn reach_back_through(&self, now: Timestamp) {
        self.shared
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .reach_back = Some(now.as_second());
    }

    /// The purpose named `name`, if served.
    pub fn purpose(&self, name: &str) -> Option<PurposeId> {
        let table = self.read();
        let index = table.purposes.iter().position(|n| n == name)?;
        Some(PurposeId(index as u8))
    }

    /// The purposes served, in [`PurposeId`] order.
    pub fn purposes(&self) -> Vec<String> {
        self.read().purposes.clone()
    }

    /// Adds a change for the meter `id` (as sent, any case).
    pub fn add(&self, id: &[u8], change: Change) -> Result<(), ChangeError> {
        let mut normalised = Vec::new();
        let id = normalise_equipment_id(id, &mut normalised).ok_or(ChangeError::NotAnId)?;
        let mut table = self.shared.write().unwrap_or_else(PoisonError::into_inner);
        table.add(id, change)
    }

    /// Adds many changes under one lock: loading a registry. The table is locked while
    /// `changes` is consumed, so the iterator must not ask the table anything.
    pub fn add_all<'a>(
        &self,
        changes: impl IntoIterator<Item = (&'a [u8], Change)>,
    ) -> Result<(), ChangeError> {
        let mut normalised = Vec::new();
        let mut table = self.shared.write().unwrap_or_else(PoisonError::into_inner);
        for (id, change) in changes {
            let id = normalise_equipment_id(id, &mut normalised).ok_or(ChangeError::NotAnId)?;
            table.add(id, change)?;
        }
        Ok(())
    }

    /// The level of meters without changes.
    pub fn default_level(&self) -> Level {
        self.read().default
    }

    /// The level for `meter` (normalised or not) and `purpose` at `at`, as its changes give
    /// it: what was recorded, not reaching back (the reducer's [`Consent::levels`] does).
    pub fn level(&self, meter: &[u8], purpose: PurposeId, at: Timestamp) -> Level {
        let mut normalised = Vec::new();
        let table = self.read();
        match normalise_equipment_id(meter, &mut normalised) {
            Some(id) => table.levels(id, at.as_second(), None).of(purpose),
            None => table.default,
        }
    }

    /// The first instant after `after` from which the meter's level for `purpose` allows
    /// `granularity` again, as its changes give it (not reaching back): where what a
    /// withdrawal at `after` purges ends, when a later grant allows it again.
    pub fn allowed_again(
        &self,
        meter: &[u8],
        purpose: PurposeId,
        granularity: Granularity,
        after: Timestamp,
    ) -> Option<Timestamp> {
        let mut normalised = Vec::new();
        let id = normalise_equipment_id(meter, &mut normalised)?;
        let table = self.read();
        let later = (table.changes_of(id).iter()).filter(|c| c.from > after.as_second());
        let again = later
            .map(|c| c.from)
            .find(|&from| table.levels(id, from, None).of(purpose).allows(granularity))?;
        Timestamp::from_second(again).ok()
    }

    /// How many meters have changes of their own.
    pub fn listed(&self) -> usize {
        self.read().meters.len()
    }

    /// Bytes the table holds per listed meter, spare capacity included.
    pub fn bytes_per_meter(&self) -> usize {
        let table = self.read();
        // The index's usable capacity is 7/8 of its slots, each with a control byte.
        let bytes = table.index.capacity() * 8 / 7 * (size_of::<u32>() + 1)
            + table.meters.capacity() * size_of::<Meter>()
            + table.ids.capacity()
            + table.changes.capacity() * size_of::<Stored>();
        bytes / table.meters.len().max(1)
    }

    /// Gives spare capacity back after a load, and the copies a meter's changes left behind
    /// when they moved to the end of the arena.
    pub fn shrink_to_fit(&self) {
        let mut table = self.shared.write().unwrap_or_else(PoisonError::into_inner);
        let Table {
            index,
            hasher,
            meters,
            ids,
            changes,
            ..
        } = &mut *table;
        let live: usize = meters.iter().map(|m| usize::from(m.changes_len)).sum();
        if live < changes.len() {
            let mut compact = Vec::with_capacity(live);
            for meter in meters.iter_mut() {
                let start = meter.changes_start as usize;
                let new_start = compact.len() as u32; // fits: at most the old arena's length
                compact.extend_from_slice(&changes[start..start + usize::from(meter.changes_len)]);
                meter.changes_start = new_start;
            }
            *changes = compact;
        }
        index.shrink_to_fit(|&slot| hash_of(hasher, meter_id(ids, meters[slot as usize])));
        meters.shrink_to_fit();
        ids.shrink_to_fit();
        changes.shrink_to_fit();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        // A writer that panicked left a whole table behind (adds are single operations).
        self.shared.read().unwrap_or_else(PoisonError::into_inner)
    }
}

fn hash_of(hasher: &hashbrown::DefaultHashBuilder, id: &[u8]) -> u64 {
    use std::hash::BuildHasher as _;
    hasher.hash_one(id)
}

fn meter_id(ids: &[u8], meter: Meter) -> &[u8] {
    let start = meter.id_start as usize;
    &ids[start..start + usize::from(meter.id_len)]
}

impl Table {
    fn slot(&self, id: &[u8]) -> Option<u32> {
        let hash = hash_of(&self.hasher, id);
        let (ids, meters) = (&self.ids, &self.meters);
        self.index
            .find(hash, |&slot| meter_id(ids, meters[slot as usize]) == id)
            .copied()
    }

    fn add(&mut self, id: &[u8], change: Change) -> Result<(), ChangeError> {
        let purpose = match change.scope {
            Scope::Every => EVERY_PURPOSE,
            Scope::ErasedThrough => ERASED_THROUGH,
            Scope::Purpose(purpose) => purpose.0,
        };
        let stored = Stored {
            from: change.from.as_second(),
            level: change.level,
            purpose,
        };
        let slot = match self.slot(id) {
            Some(slot) => slot as usize,
            None => {
                let id_len = u16::try_from(id.len()).map_err(|_| ChangeError::NotAnId)?;
                let id_start = u32::try_from(self.ids.len()).map_err(|_| ChangeError::Full)?;
                let slot = u32::try_from(self.meters.len()).map_err(|_| ChangeError::Full)?;
                let changes_start =
                    u32::try_from(self.changes.len()).map_err(|_| ChangeError::Full)?;
                self.ids.extend_from_slice(id);
                self.meters.push(Meter {
                    id_start,
                    id_len,
                    changes_len: 0,
                    changes_start,
                });
                let hash = hash_of(&self.hasher, id);
                let (ids, meters, hasher) = (&self.ids, &self.meters, &self.hasher);
                self.index.insert_unique(hash, slot, |&s| {
                    hash_of(hasher, meter_id(ids, meters[s as usize]))
                });
                slot as usize
            }
        };
        let meter = &mut self.meters[slot];
        let len = usize::from(meter.changes_len);
        let changes_len = meter
            .changes_len
            .checked_add(1)
            .ok_or(ChangeError::TooManyChanges)?;
        let start = meter.changes_start as usize;
        // A meter's changes stay contiguous: unless they end the arena, they move to its end.
        if start + len != self.changes.len() {
            let new_start = u32::try_from(self.changes.len()).map_err(|_| ChangeError::Full)?;
            self.changes.extend_from_within(start..start + len);
            meter.changes_start = new_start;
        }
        meter.changes_len = changes_len;
        let start = meter.changes_start as usize;
        self.changes.push(stored);
        // In force order: by instant, and (the sort being stable) in the order added.
        self.changes[start..].sort_by_key(|c| c.from);
        Ok(())
    }

    /// The meter's changes, in force order (none for a meter without any).
    fn changes_of(&self, id: &[u8]) -> &[Stored] {
        let Some(slot) = self.slot(id) else {
            return &[];
        };
        let meter = self.meters[slot as usize];
        let start = meter.changes_start as usize;
        &self.changes[start..start + usize::from(meter.changes_len)]
    }

    /// The levels at `at`; with `reach_back` (now), capped by the withdrawals in force since.
    fn levels(&self, id: &[u8], at: i64, reach_back: Option<i64>) -> Levels {
        let served = self.purposes.len();
        let mut levels = Levels::uniform(Level::None);
        levels.0[..served].fill(self.default);
        let changes = self.changes_of(id);
        let mut erased = false;
        // The lowest level each purpose was given after `at`, up to now.
        let mut since = Levels::uniform(Level::Live);
        for change in changes {
            match change.purpose {
                ERASED_THROUGH => erased |= at <= change.from,
                _ if change.from > at => {
                    if reach_back.is_some_and(|now| change.from <= now) {
                        since.change(change.purpose, served, |l| l.min(change.level));
                    }
                }
                purpose => levels.change(purpose, served, |_| change.level),
            }
        }
        let ceiling = if erased { Level::Billing } else { Level::Live };
        for (level, lowest) in levels.0[..served].iter_mut().zip(since.0) {
            *level = (*level).min(ceiling).min(lowest.max(Level::Billing));
        }
        levels
    }
}

impl Consent for ConsentTable {
    fn levels(&self, meter: &[u8], at: Timestamp) -> Levels {
        let table = self.read();
        table.levels(meter, at.as_second(), table.reach_back)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_change_takes_effect_exactly_at_its_instant() {
        let timeline = Timeline::new(
            Level::Daily,
            vec![
                (t("2026-03-29T12:00:00Z"), Level::None),
                (t("2026-03-29T06:00:00Z"), Level::Live),
            ],
        );
        assert_eq!(timeline.at(t("2026-03-29T05:59:59Z")), Level::Daily);
        assert_eq!(timeline.at(t("2026-03-29T06:00:00Z")), Level::Live);
        assert_eq!(timeline.at(t("2026-03-29T11:59:59Z")), Level::Live);
        assert_eq!(timeline.at(t("2026-03-29T12:00:00Z")), Level::None);
    }

    #[test]
    fn an_erasure_caps_every_purpose_at_billing_up_to_its_instant_and_not_after() {
        let table = ConsentTable::new(Level::Billing, ["insight"]);
        let insight = table.purpose("insight").unwrap();
        let change = |from, level, scope| Change {
            from: t(from),
            level,
            scope,
        };
        let meter = b"4530";
        table
            .add(
                meter,
                change("2026-01-01T00:00:00Z", Level::Live, Scope::Every),
            )
            .unwrap();
        table
            .add(
                meter,
                change("2026-06-01T12:00:00Z", Level::Billing, Scope::ErasedThrough),
            )
            .unwrap();
        for purpose in [PurposeId::DEFAULT, insight] {
            assert_eq!(
                table.level(meter, purpose, t("2025-12-31T23:59:59Z")),
                Level::Billing
            );
            assert_eq!(
                table.level(meter, purpose, t("2026-03-01T00:00:00Z")),
                Level::Billing
            );
            assert_eq!(
                table.level(meter, purpose, t("2026-06-01T12:00:00Z")),
                Level::Billing
            );
            assert_eq!(
                table.level(meter, purpose, t("2026-06-01T12:00:01Z")),
                Level::Live,
                "after the erasure, the consent in force holds"
            );
        }
        // A level below billing is not raised by the mark.
        table
            .add(
                meter,
                change("2026-02-01T00:00:00Z", Level::None, Scope::Every),
            )
            .unwrap();
        assert_eq!(
            table.level(meter, insight, t("2026-03-01T00:00:00Z")),
            Level::None
        );
        // Other meters are untouched.
        assert_eq!(
            table.level(b"4531", insight, t("2026-03-01T00:00:00Z")),
            Level::Billing
        );
    }

    /// Where withdrawals purge, a record dated before one in force now is judged by the level
    /// left, down to billing, purpose by purpose; a withdrawal still to come reaches back only
    /// once it is in force, and without purging nothing reaches back.
    #[test]
    fn a_withdrawal_in_force_reaches_back_to_what_it_would_have_purged() {
        let now: Timestamp = "2026-12-07T12:00:00Z".parse().unwrap();
        let purging = ConsentTable::new(Level::Billing, ["insight"]);
        purging.reach_back_through(now);
        let keeping = ConsentTable::new(Level::Billing, ["insight"]);
        let insight = purging.purpose("insight").unwrap();
        let default = PurposeId::DEFAULT;
        let ago = |hours: i64| now - jiff::SignedDuration::from_hours(hours);
        let changes = [
            (ago(10), Level::Live, Scope::Every),
            (ago(8), Level::Daily, Scope::Purpose(default)),
            (ago(6), Level::Live, Scope::Purpose(default)),
            (ago(4), Level::None, Scope::Purpose(insight)),
            (
                now + jiff::SignedDuration::from_hours(2),
                Level::None,
                Scope::Every,
            ),
        ];
        for table in [&purging, &keeping] {
            for (from, level, scope) in changes {
                table.add(b"4530", Change { from, level, scope }).unwrap();
            }
        }
        let level =
            |table: &ConsentTable, purpose, at| Consent::levels(table, b"4530", at).of(purpose);
        // Before the lowering to daily: daily, though live was in force then.
        assert_eq!(level(&purging, default, ago(9)), Level::Daily);
        assert_eq!(level(&keeping, default, ago(9)), Level::Live);
        // From the re-grant on: live again, the withdrawal to come not yet in force.
        assert_eq!(level(&purging, default, ago(6)), Level::Live);
        assert_eq!(level(&purging, default, ago(1)), Level::Live);
        // Insight, withdrawn to none: billing before (the tax authority keeps it), none after.
        assert_eq!(level(&purging, insight, ago(9)), Level::Billing);
        assert_eq!(level(&purging, insight, ago(5)), Level::Billing);
        assert_eq!(level(&keeping, insight, ago(5)), Level::Live);
        assert_eq!(level(&purging, insight, ago(3)), Level::None);
        // Where what a withdrawal purged ends: at the grant that allows it again, if any.
        let again = |purpose, granularity, after| {
            keeping.allowed_again(b"4530", purpose, granularity, after)
        };
        assert_eq!(
            again(default, Granularity::QuarterHour, ago(8)),
            Some(ago(6))
        );
        assert_eq!(again(default, Granularity::Daily, ago(8)), Some(ago(6)));
        assert_eq!(again(insight, Granularity::Live, ago(4)), None);
    }

    #[test]
    fn each_meter_follows_its_changes_purpose_by_purpose_and_the_rest_the_default() {
        let table = ConsentTable::new(Level::Billing, ["insight", "default", "tariff"]);
        let reader = table.clone();
        let insight = table.purpose("insight").unwrap();
        let tariff = table.purpose("tariff").unwrap();
        assert_eq!(table.purpose("default"), Some(PurposeId::DEFAULT));
        assert_eq!(table.purposes(), ["default", "insight", "tariff"]);
        let every = |from, level| Change {
            from: t(from),
            level,
            scope: Scope::Every,
        };
        let one = |purpose, from, level| Change {
            from: t(from),
            level,
            scope: Scope::Purpose(purpose),
        };
        table
            .add(b" 4b38a5 ", every("2026-01-01T00:00:00Z", Level::None))
            .unwrap();
        assert_eq!(
            table.add(b"45\x0030", every("2026-01-01T00:00:00Z", Level::Live)),
            Err(ChangeError::NotAnId)
        );
        table
            .add(b"4530", one(insight, "2026-06-01T08:00:00Z", Level::Live))
            .unwrap();
        table
            .add(
                b"4531",
                one(tariff, "2026-06-01T00:00:00Z", Level::QuarterHour),
            )
            .unwrap();
        // Added later, but in force earlier: the order is the instants'.
        table
            .add(b"4530", one(tariff, "2026-05-01T00:00:00Z", Level::Daily))
            .unwrap();
        table
            .add(b"4530", every("2026-06-01T10:00:00Z", Level::Billing))
            .unwrap();
        table
            .add(b"4530", one(insight, "2026-06-01T10:00:00Z", Level::Daily))
            .unwrap();

        let level = |id: &[u8], purpose, at| reader.level(id, purpose, t(at));
        assert_eq!(
            level(b"4B38A5", PurposeId::DEFAULT, "2026-06-01T12:00:00Z"),
            Level::None,
            "normalised, and shared"
        );
        assert_eq!(
            level(b"4B38A5", tariff, "2025-12-31T23:59:59Z"),
            Level::Billing
        );
        assert_eq!(
            level(b"4530", insight, "2026-06-01T07:59:59Z"),
            Level::Billing
        );
        assert_eq!(level(b"4530", insight, "2026-06-01T08:00:00Z"), Level::Live);
        assert_eq!(level(b"4530", tariff, "2026-05-02T00:00:00Z"), Level::Daily);
        assert_eq!(
            level(b"4530", PurposeId::DEFAULT, "2026-05-02T00:00:00Z"),
            Level::Billing
        );
        // Two changes at one instant: the one added last wins.
        assert_eq!(
            level(b"4530", insight, "2026-06-01T10:00:00Z"),
            Level::Daily
        );
        assert_eq!(
            level(b"4530", tariff, "2026-06-01T10:00:00Z"),
            Level::Billing
        );
        assert_eq!(
            level(b"4531", tariff, "2026-06-01T10:00:00Z"),
            Level::QuarterHour
        );
        assert_eq!(
            level(b"4532", tariff, "2026-06-01T10:00:00Z"),
            Level::Billing
        );
        assert_eq!(reader.listed(), 3);

        let levels = reader.levels(b"4530", t("2026-06-01T09:00:00Z"));
        let set = levels.allowing(Granularity::QuarterHour);
        assert!(set.contains(insight) && !set.contains(tariff));
        assert!(
            !set.contains(PurposeId(5)),
            "a purpose not served is allowed nothing"
        );
    }

    #[test]
    fn shrinking_leaves_no_moved_copies_behind_and_changes_no_answer() {
        let table = ConsentTable::new(Level::Billing, ["insight"]);
        let insight = table.purpose("insight").unwrap();
        let meters: Vec<String> = (0..50).map(|n| format!("4530{n:04}")).collect();
        // Interleaved, as a registry fills: each meter's later changes move its run to the
        // end of the arena.
        for round in 0..3i64 {
            for meter in &meters {
                let change = Change {
                    from: Timestamp::from_second(1_700_000_000 + round * 86_400).unwrap(),
                    level: Level::ALL[(round as usize + meter.len()) % 5],
                    scope: Scope::Purpose(insight),
                };
                table.add(meter.as_bytes(), change).unwrap();
            }
        }
        let instants = [1_699_999_999, 1_700_000_000, 1_700_050_000, 1_700_200_000];
        let answers = |table: &ConsentTable| -> Vec<Levels> {
            let mut answers = Vec::new();
            for meter in &meters {
                for at in instants {
                    let at = Timestamp::from_second(at).unwrap();
                    answers.push(table.levels(meter.as_bytes(), at));
                }
            }
            answers
        };
        let before = answers(&table);
        let arena = |table: &ConsentTable| table.read().changes.len();
        assert!(arena(&table) > 150, "moved copies: {}", arena(&table));
        table.shrink_to_fit();
        assert_eq!(arena(&table), 150);
        assert_eq!(answers(&table), before);
    }

    #[test]
    fn a_meter_with_one_change_costs_well_under_100_bytes() {
        let table = ConsentTable::new(Level::Billing, []);
        let changes: Vec<(Vec<u8>, Change)> = (0..100_000u64)
            .map(|n| {
                let id = format!("45303035343030303031{n:014}").into_bytes();
                let change = Change {
                    from: Timestamp::from_second(1_700_000_000 + n as i64).unwrap(),
                    level: Level::Daily,
                    scope: Scope::Purpose(PurposeId::DEFAULT),
                };
                (id, change)
            })
            .collect();
        table
            .add_all(changes.iter().map(|(id, c)| (id.as_slice(), *c)))
            .unwrap();
        table.shrink_to_fit();
        let bytes = table.bytes_per_meter();
        assert!(bytes < 80, "{bytes} bytes per meter");
    }
}
