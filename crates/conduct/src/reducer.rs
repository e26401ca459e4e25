//! The reducer: telegrams in, records out, no finer than each meter's consent at the instant
//! a record is about.
//!
//! For each meter and register series (electricity registers at telegram time; each M-Bus
//! device at its own capture time), a boundary B yields a reading when an observation lies
//! exactly on B (`measured`), or when consecutive observations t_prev < B < t_cur are at most
//! the granularity's max gap apart (`interpolated`, linear, rounded to the register's 0.001
//! resolution). Any other boundary is counted as missing, never guessed from farther data.

use std::borrow::Cow;
use std::sync::Arc;

use hashbrown::HashMap;
use jiff::Timestamp;
use p1guard_telegram::{Direction, EnergyRegister, MbusKind, MeterTime, Phase, Telegram, TimeFlag};
use serde::{Deserialize, Serialize};

use crate::calendar::{Calendar, Period};
use crate::consent::{Consent, PurposeSet};
use crate::identity::{IdentityKey, MeterRef, normalise_equipment_id};
use crate::level::Granularity;
use crate::record::{
    Clock, Kind, LiveValues, Milli, PhaseValues, Quality, Record, Registers, Values,
};
use crate::stored::{self, StoredError, StoredRecord};

/// The longest gap between two observations across which a boundary is interpolated, in
/// seconds (privacy.md's defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxGaps {
    /// Quarter-hour electricity: 15 minutes.
    pub quarter_hour: i64,
    /// Hourly M-Bus: 1 hour.
    pub hourly: i64,
    /// Daily: 24 hours.
    pub daily: i64,
    /// Billing: 24 hours.
    pub billing: i64,
}

impl Default for MaxGaps {
    fn default() -> Self {
        MaxGaps {
            quarter_hour: 15 * 60,
            hourly: 3600,
            daily: 24 * 3600,
            billing: 24 * 3600,
        }
    }
}

/// What the reducer produces.
#[derive(Debug, Clone)]
pub struct ReducerConfig {
    /// Local midnights and the billing cadence.
    pub calendar: Calendar,
    /// The finest granularity any sink takes: nothing finer is even computed.
    pub finest: Granularity,
    /// Interpolation limits.
    pub max_gaps: MaxGaps,
}

/// What the reducer has seen and done, for logs and metrics. Arrays are indexed by
/// [`Granularity`] order: billing, daily, quarter_hour, live.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Telegrams offered.
    pub telegrams: u64,
    /// Records produced.
    pub records: [u64; 4],
    /// Boundaries consent allowed but no observation could fill.
    pub missing: [u64; 4],
    /// Readings that existed but consent at their instant did not allow.
    pub withheld: [u64; 4],
    /// Telegrams without an equipment identifier (nobody to attribute them to).
    pub without_meter_id: u64,
    /// Times not trusted: telegrams whose meter time is impossible or a placeholder, or
    /// jumped far ahead and was not confirmed by the next telegram; M-Bus captures dated
    /// after their telegram.
    pub bad_time: u64,
    /// Telegrams not later than the meter's previous one (repeats, clock steps back).
    pub out_of_order: u64,
    /// M-Bus devices not read, once per telegram, because a device of the same kind is on a
    /// lower channel (two gas meters): a record names its kind, not its channel, so both
    /// would make one series. Not kept in checkpoints.
    #[serde(skip)]
    pub another_of_its_kind: u64,
}

impl Counters {
    /// Adds what `other` counted.
    fn add(&mut self, other: &Counters) {
        self.telegrams += other.telegrams;
        for g in 0..4 {
            self.records[g] += other.records[g];
            self.missing[g] += other.missing[g];
            self.withheld[g] += other.withheld[g];
        }
        self.without_meter_id += other.without_meter_id;
        self.bad_time += other.bad_time;
        self.out_of_order += other.out_of_order;
        self.another_of_its_kind += other.another_of_its_kind;
    }
}

/// How far past a meter's previous telegram its clock may jump before the next telegram must
/// confirm the new time (a meter back from a long outage is confirmed one telegram later; a
/// clock glitch to 2068 is not, and is dropped).
pub const CLOCK_JUMP_SECONDS: i64 = 3600;

/// How far after its telegram an M-Bus capture may be dated (clock drift between the two
/// devices); anything later is not trusted.
pub const CAPTURE_TOLERANCE_SECONDS: i64 = 300;

/// How old an M-Bus capture may be at its telegram to make a live record: hourly captures,
/// the slowest meters make, are carried within the hour; an older one is no live reading
/// (a device that missed its captures), though it still counts for the boundaries. The
/// audit judges a live M-Bus record by consent anywhere in that span, as the record keeps
/// only the capture's time.
pub const MBUS_LIVE_MAX_AGE_SECONDS: i64 = 3600;

/// How far a meter's clock may be from the receiver's before a live source's telegram is not
/// trusted (a Raspberry Pi's clock before NTP, a meter set to 2068).
pub const MAX_CLOCK_SKEW_SECONDS: i64 = 24 * 3600;

/// When a telegram arrived, and what the receive clock can say about the meter's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Read from the meter as it was sent (serial, TCP): a meter time more than
    /// [`MAX_CLOCK_SKEW_SECONDS`] from this instant, either way, is not trusted.
    Direct(Timestamp),
    /// Relayed by a broker that may have held it (MQTT): it can be old, but a meter time more
    /// than [`MAX_CLOCK_SKEW_SECONDS`] after this instant is not trusted.
    Relayed(Timestamp),
    /// Read back from a recording at this instant: the telegrams may be years old, but a
    /// record is never dated in the future, so a meter time more than
    /// [`MAX_CLOCK_SKEW_SECONDS`] after it is not trusted. It dates telegrams without a clock.
    Recorded(Timestamp),
}

impl Arrival {
    /// The receive instant: the date of telegrams without a clock of their own.
    pub fn at(self) -> Timestamp {
        match self {
            Arrival::Direct(at) | Arrival::Relayed(at) | Arrival::Recorded(at) => at,
        }
    }

    /// Whether a meter time `meter` (Unix seconds) can be believed.
    fn trusts(self, meter: i64) -> bool {
        let skew = |at: Timestamp| meter - at.as_second();
        match self {
            Arrival::Direct(at) => skew(at).abs() <= MAX_CLOCK_SKEW_SECONDS,
            Arrival::Relayed(at) | Arrival::Recorded(at) => skew(at) <= MAX_CLOCK_SKEW_SECONDS,
        }
    }
}

/// Boundary schedule of one granularity.
#[derive(Debug, Clone, Copy)]
enum Boundaries {
    /// Every `n` seconds of UTC.
    Every(i64),
    /// Local midnights.
    Day,
    /// Billing boundaries.
    Billing,
}

/// Electricity registers as kept between telegrams: `[import total, t1, t2, export total, t1,
/// t2]` with a presence mask, half the size of `Registers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct RegisterState {
    values: [Milli; 6],
    present: u8,
}

impl RegisterState {
    fn from_registers(registers: &Registers) -> RegisterState {
        let mut state = RegisterState {
            values: [0; 6],
            present: 0,
        };
        for (slot, value) in registers.import.iter().chain(&registers.export).enumerate() {
            if let Some(value) = value {
                state.values[slot] = *value;
                state.present |= 1 << slot;
            }
        }
        state
    }

    fn to_registers(self) -> Registers {
        let get = |slot: usize| (self.present & (1 << slot) != 0).then_some(self.values[slot]);
        Registers {
            import: [get(0), get(1), get(2)],
            export: [get(3), get(4), get(5)],
        }
    }
}

/// A series value that can be interpolated.
trait Reading: Copy {
    /// `self + (next - self) * num / den`, rounded to the resolution and kept between the two.
    fn towards(self, next: Self, num: i64, den: i64) -> Self;
}

impl Reading for Milli {
    fn towards(self, next: Milli, num: i64, den: i64) -> Milli {
        let delta = i128::from(next - self) * i128::from(num);
        let den = i128::from(den);
        let (quotient, remainder) = (delta / den, delta % den);
        let rounded = if 2 * remainder.abs() >= den {
            quotient + delta.signum()
        } else {
            quotient
        };
        let value = (i128::from(self) + rounded)
            .clamp(i128::from(self.min(next)), i128::from(self.max(next)));
        value as Milli // between two i64 values, so it fits
    }
}

impl Reading for RegisterState {
    fn towards(self, next: RegisterState, num: i64, den: i64) -> RegisterState {
        let present = self.present & next.present;
        let mut values = [0; 6];
        for (slot, value) in values.iter_mut().enumerate() {
            if present & (1 << slot) != 0 {
                *value = self.values[slot].towards(next.values[slot], num, den);
            }
        }
        RegisterState { values, present }
    }
}

/// An observation of a series: Unix seconds and the reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Observation<V> {
    t: i64,
    value: V,
}

/// An M-Bus device's series; it exists from the device's first observation on.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MbusSeries {
    channel: u8,
    last: Observation<Milli>,
    /// The capture `last` was read from, as sent: the same capture again (DSMR 5 repeats it
    /// for 5 minutes, DSMR 4 for an hour) is known before anything is converted. Checkpoints
    /// leave it out; after a restore the next capture takes the longer way.
    #[serde(skip)]
    capture: Option<MeterTime>,
}

/// Everything kept per meter between telegrams.
#[derive(Debug, Clone)]
struct MeterState {
    meter: MeterRef,
    electricity: Option<Observation<RegisterState>>,
    mbus: Vec<MbusSeries>,
}

/// A telegram whose time jumped far ahead of its meter's timeline, reduced against a copy of
/// the meter's state and held until the meter's next telegram confirms or refutes the jump.
#[derive(Debug)]
struct Held {
    t: i64,
    state: MeterState,
    records: Vec<Record>,
    counters: Counters,
}

/// A meter's state as a checkpoint keeps it (the meter's id is the key).
#[derive(Serialize, Deserialize)]
struct StoredState<'a> {
    electricity: Option<Observation<RegisterState>>,
    mbus: Cow<'a, [MbusSeries]>,
    held: Option<StoredHeld<'a>>,
}

/// A held telegram as a checkpoint keeps it.
#[derive(Serialize, Deserialize)]
struct StoredHeld<'a> {
    t: i64,
    electricity: Option<Observation<RegisterState>>,
    mbus: Cow<'a, [MbusSeries]>,
    records: Vec<StoredRecord<'a, ()>>,
    counters: Counters,
}

/// Boundary periods shared by all meters: in a live fleet they are all on the same day.
#[derive(Debug, Clone, Default)]
struct PeriodCache {
    day: Period,
    billing: Period,
}

/// Reduces telegrams to records under a consent lookup.
#[derive(Debug)]
pub struct Reducer<C> {
    config: ReducerConfig,
    consent: C,
    key: IdentityKey,
    /// Equipment id to index in `states`: the map stays small per meter, the states dense.
    /// Hashed with foldhash, not SipHash: one lookup per telegram, and the ids are short.
    index: HashMap<Arc<[u8]>, u32>,
    states: Vec<MeterState>,
    /// Telegrams held for confirmation, by index in `states`: rare, so kept apart from the
    /// dense states.
    held: HashMap<u32, Held>,
    /// The normalised id of the telegram at hand, reused between telegrams.
    id: Vec<u8>,
    periods: PeriodCache,
    counters: Counters,
    /// The slots whose state changed since the last [`Reducer::save_changed`], once each
    /// (`is_changed` is their bit set).
    changed: Vec<u32>,
    is_changed: Vec<u64>,
}

/// The pieces of a reducer one telegram's work needs besides the meter's state.
struct Step<'a, C> {
    config: &'a ReducerConfig,
    consent: &'a C,
    periods: &'a mut PeriodCache,
    counters: &'a mut Counters,
    out: &'a mut Vec<Record>,
}

impl<C: Consent> Reducer<C> {
    /// A reducer naming meters with `key`'s pseudonyms and asking `consent` at every record's
    /// instant.
    pub fn new(config: ReducerConfig, consent: C, key: IdentityKey) -> Reducer<C> {
        Reducer {
            config,
            consent,
            key,
            index: HashMap::new(),
            states: Vec::new(),
            held: HashMap::new(),
            id: Vec::new(),
            periods: PeriodCache::default(),
            counters: Counters::default(),
            changed: Vec::new(),
            is_changed: Vec::new(),
        }
    }

    /// What has been seen so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// How many meters have state.
    pub fn meter_count(&self) -> usize {
        self.states.len()
    }

    /// Bytes of state per meter, spare capacity included: the index's slots (with their
    /// control byte), the dense states, and the heap behind each (id with its reference
    /// counts, M-Bus series).
    pub fn state_bytes_per_meter(&self) -> usize {
        let index = self.index.capacity() * (size_of::<(Arc<[u8]>, u32)>() + 1);
        let states = self.states.capacity() * size_of::<MeterState>();
        let heap: usize = self
            .states
            .iter()
            .map(|s| 16 + s.meter.raw().len() + s.mbus.capacity() * size_of::<MbusSeries>())
            .sum();
        (index + states + heap) / self.states.len().max(1)
    }

    /// Appends to `out` the records `telegram` yields. `arrival` dates telegrams that carry no
    /// time of their own (DSMR 2.2 and 3), and rules out meter times its clock contradicts.
    ///
    /// A telegram dated more than [`CLOCK_JUMP_SECONDS`] after its meter's previous one is
    /// held: its records come out with the meter's next telegram if that one continues from
    /// it, and are dropped (counted as `bad_time`) if the meter's old timeline goes on.
    pub fn reduce(&mut self, telegram: &Telegram<'_>, arrival: Arrival, out: &mut Vec<Record>) {
        self.counters.telegrams += 1;
        let Some(id) = telegram
            .equipment_id()
            .and_then(|sent| normalise_equipment_id(sent, &mut self.id))
        else {
            self.counters.without_meter_id += 1;
            return;
        };
        let (t, clock) = match telegram.time() {
            None => (arrival.at().as_second(), Clock::Receiver),
            Some(time) => match meter_instant(time, &self.config.calendar) {
                Some(t) if arrival.trusts(t) => (t, Clock::Meter),
                _ => {
                    self.counters.bad_time += 1;
                    return;
                }
            },
        };
        let slot = slot_of(&mut self.index, &mut self.states, &self.key, id);
        self.mark_changed(slot);
        if let Some(held) = self.held_of(slot) {
            if held.t < t && t - held.t <= CLOCK_JUMP_SECONDS {
                self.states[slot] = held.state;
                out.extend(held.records);
                self.counters.add(&held.counters);
            } else {
                self.counters.bad_time += 1;
            }
        }
        let state = &mut self.states[slot];
        let last = state.electricity.map(|last| last.t);
        if last.is_some_and(|last| t <= last) {
            self.counters.out_of_order += 1;
            return;
        }
        if last.is_some_and(|last| t - last > CLOCK_JUMP_SECONDS) {
            let mut held = Held {
                t,
                state: state.clone(),
                records: Vec::new(),
                counters: Counters::default(),
            };
            let mut step = Step {
                config: &self.config,
                consent: &self.consent,
                periods: &mut self.periods,
                counters: &mut held.counters,
                out: &mut held.records,
            };
            step.telegram(&mut held.state, telegram, t, clock);
            self.held.insert(slot as u32, held);
            return;
        }
        let mut step = Step {
            config: &self.config,
            consent: &self.consent,
            periods: &mut self.periods,
            counters: &mut self.counters,
            out,
        };
        step.telegram(state, telegram, t, clock);
    }
}

impl<C> Reducer<C> {
    /// Hands `save` the state of every meter whose state changed since the last call, with
    /// its normalised equipment id: what a checkpoint keeps so that a restarted reducer
    /// ([`Reducer::restore`]) continues every series as if it had never stopped. (The ids
    /// are the process's own state, like the consent registry's; no sink sees them this
    /// way.)
    pub fn save_changed(&mut self, mut save: impl FnMut(&[u8], &[u8])) {
        let mut bytes = Vec::new();
        for slot in self.changed.drain(..) {
            self.is_changed[slot as usize / 64] &= !(1 << (slot % 64));
            let state = &self.states[slot as usize];
            let held = self.held.get(&slot).map(|held| StoredHeld {
                t: held.t,
                electricity: held.state.electricity,
                mbus: Cow::Borrowed(&held.state.mbus),
                records: held
                    .records
                    .iter()
                    .map(|record| StoredRecord::of(record, ()))
                    .collect(),
                counters: held.counters.clone(),
            });
            let stored = StoredState {
                electricity: state.electricity,
                mbus: Cow::Borrowed(&state.mbus),
                held,
            };
            bytes.clear();
            stored::encode(&stored, &mut bytes);
            save(state.meter.raw(), &bytes);
        }
    }

    /// Continues meter `id` (normalised) from the state [`Reducer::save_changed`] handed out
    /// for it.
    pub fn restore(&mut self, id: &[u8], state: &[u8]) -> Result<(), StoredError> {
        let stored: StoredState<'_> = stored::decode(state)?;
        let slot = slot_of(&mut self.index, &mut self.states, &self.key, id);
        let meter = self.states[slot].meter.clone();
        let held = match stored.held {
            None => None,
            Some(held) => {
                let records = held
                    .records
                    .into_iter()
                    .map(|record| record.into_record(meter.clone()))
                    .collect::<Result<_, _>>()?;
                let state = MeterState {
                    meter: meter.clone(),
                    electricity: held.electricity,
                    mbus: held.mbus.into_owned(),
                };
                Some(Held {
                    t: held.t,
                    state,
                    records,
                    counters: held.counters,
                })
            }
        };
        self.states[slot] = MeterState {
            meter,
            electricity: stored.electricity,
            mbus: stored.mbus.into_owned(),
        };
        match held {
            Some(held) => self.held.insert(slot as u32, held),
            None => self.held.remove(&(slot as u32)),
        };
        Ok(())
    }

    /// The telegram held for `slot`, taken out; most reducers hold none and skip the hash.
    fn held_of(&mut self, slot: usize) -> Option<Held> {
        if self.held.is_empty() {
            return None;
        }
        self.held.remove(&(slot as u32))
    }

    fn mark_changed(&mut self, slot: usize) {
        let (word, bit) = (slot / 64, 1 << (slot % 64));
        if word >= self.is_changed.len() {
            self.is_changed.resize(word + 1, 0);
        }
        if self.is_changed[word] & bit == 0 {
            self.is_changed[word] |= bit;
            self.changed.push(slot as u32);
        }
    }
}

/// The slot of meter `id` (normalised) in `states`, a new one if it has none yet.
fn slot_of(
    index: &mut HashMap<Arc<[u8]>, u32>,
    states: &mut Vec<MeterState>,
    key: &IdentityKey,
    id: &[u8],
) -> usize {
    if let Some(&slot) = index.get(id) {
        return slot as usize;
    }
    let id: Arc<[u8]> = Arc::from(id);
    let meter = MeterRef::new(Arc::clone(&id), key);
    index.insert(id, states.len() as u32);
    states.push(MeterState {
        meter,
        electricity: None,
        mbus: Vec::new(),
    });
    states.len() - 1
}

impl<C: Consent> Step<'_, C> {
    fn telegram(&mut self, state: &mut MeterState, telegram: &Telegram<'_>, t: i64, clock: Clock) {
        self.electricity(state, telegram, t, clock);
        self.mbus(state, telegram, t);
    }

    /// The purposes whose consent allows `granularity` for `meter` at `t`.
    fn allowing(&self, meter: &MeterRef, t: i64, granularity: Granularity) -> PurposeSet {
        let at = Timestamp::from_second(t).unwrap_or(Timestamp::MIN);
        self.consent.levels(meter.raw(), at).allowing(granularity)
    }

    /// The first boundary of `schedule` strictly after `t`.
    fn next_after(&mut self, schedule: Boundaries, t: i64) -> Option<i64> {
        let calendar = &self.config.calendar;
        match schedule {
            Boundaries::Every(step) => Some((t.div_euclid(step) + 1) * step),
            Boundaries::Day => {
                if !self.periods.day.contains(t) {
                    self.periods.day = calendar.day(t)?;
                }
                Some(self.periods.day.end)
            }
            Boundaries::Billing => {
                if !self.periods.billing.contains(t) {
                    self.periods.billing = calendar.billing_period(t)?;
                }
                Some(self.periods.billing.end)
            }
        }
    }

    /// Readings at every boundary in `(previous, current]` (only `current` itself for a first
    /// observation), each handed to `emit` if consent at that boundary allows it.
    fn boundaries<V: Reading>(
        &mut self,
        meter: &MeterRef,
        schedules: [(Granularity, Boundaries, i64); 3],
        previous: Option<Observation<V>>,
        current: Observation<V>,
        mut emit: impl FnMut(&mut Self, Granularity, i64, Quality, V, PurposeSet),
    ) {
        for (granularity, schedule, max_gap) in schedules {
            if granularity > self.config.finest {
                continue;
            }
            let lower = previous.map_or(current.t - 1, |p| p.t);
            let mut next = self.next_after(schedule, lower);
            while let Some(boundary) = next.filter(|b| *b <= current.t) {
                let reading = match previous {
                    _ if boundary == current.t => Some((Quality::Measured, current.value)),
                    Some(p) if current.t - p.t <= max_gap => {
                        let value = p
                            .value
                            .towards(current.value, boundary - p.t, current.t - p.t);
                        Some((Quality::Interpolated, value))
                    }
                    _ => None,
                };
                let purposes = self.allowing(meter, boundary, granularity);
                let allowed = !purposes.is_empty();
                let g = granularity as usize;
                match (reading, allowed) {
                    (Some((quality, value)), true) => {
                        emit(self, granularity, boundary, quality, value, purposes)
                    }
                    (Some(_), false) => self.counters.withheld[g] += 1,
                    (None, true) => self.counters.missing[g] += 1,
                    (None, false) => {}
                }
                next = self.next_after(schedule, boundary);
            }
        }
    }

    fn push(&mut self, record: Record) {
        self.counters.records[record.granularity as usize] += 1;
        self.out.push(record);
    }

    fn electricity(
        &mut self,
        state: &mut MeterState,
        telegram: &Telegram<'_>,
        t: i64,
        clock: Clock,
    ) {
        let registers = registers(telegram);
        let gaps = self.config.max_gaps;
        if !registers.is_empty() {
            let current = Observation {
                t,
                value: RegisterState::from_registers(&registers),
            };
            let schedules = [
                (Granularity::Billing, Boundaries::Billing, gaps.billing),
                (Granularity::Daily, Boundaries::Day, gaps.daily),
                (
                    Granularity::QuarterHour,
                    Boundaries::Every(15 * 60),
                    gaps.quarter_hour,
                ),
            ];
            let meter = &state.meter;
            self.boundaries(
                meter,
                schedules,
                state.electricity,
                current,
                |step, granularity, b, quality, value, purposes| {
                    step.push(Record {
                        meter: meter.clone(),
                        granularity,
                        kind: Kind::Electricity,
                        time: Timestamp::from_second(b).unwrap_or(Timestamp::MIN),
                        quality,
                        clock,
                        values: Values::Electricity {
                            registers: value.to_registers(),
                            live: None,
                        },
                        purposes,
                    });
                },
            );
            state.electricity = Some(current);
        }
        if self.config.finest == Granularity::Live {
            let live = live_values(telegram);
            // A meter that reports no electricity (a heat meter's P1 port) has no live reading.
            if registers.is_empty() && live.fields().next().is_none() {
                return;
            }
            let purposes = self.allowing(&state.meter, t, Granularity::Live);
            if !purposes.is_empty() {
                self.push(Record {
                    meter: state.meter.clone(),
                    granularity: Granularity::Live,
                    kind: Kind::Electricity,
                    time: Timestamp::from_second(t).unwrap_or(Timestamp::MIN),
                    quality: Quality::Measured,
                    clock,
                    values: Values::Electricity {
                        registers,
                        live: Some(Box::new(live)),
                    },
                    purposes,
                });
            } else {
                self.counters.withheld[Granularity::Live as usize] += 1;
            }
        }
    }

    /// The M-Bus devices' readings of a telegram dated `telegram_t`.
    fn mbus(&mut self, state: &mut MeterState, telegram: &Telegram<'_>, telegram_t: i64) {
        let gaps = self.config.max_gaps;
        let schedules = [
            (Granularity::Billing, Boundaries::Billing, gaps.billing),
            (Granularity::Daily, Boundaries::Day, gaps.daily),
            (
                Granularity::QuarterHour,
                Boundaries::Every(3600),
                gaps.hourly,
            ),
        ];
        let mut devices = [None; 4];
        let mut count = 0;
        for device in telegram.mbus_devices() {
            devices[count] = Some(device);
            count += 1;
        }
        // Only the lowest channel's device of each kind is read (see `another_of_its_kind`).
        // A slot without a reading (`0-1:96.1.0()`, `(700101010000W)(00000000)`: no device
        // behind it) is no device of its kind.
        let mut kinds = [None; 4];
        if count > 1 {
            for (kind, device) in kinds.iter_mut().zip(&devices) {
                let present = device.filter(|device| device.reading().is_some());
                *kind = present.and_then(|device| device.kind());
            }
        }
        for (index, device) in devices.into_iter().flatten().enumerate() {
            if kinds[index].is_some() && kinds[..index].contains(&kinds[index]) {
                self.counters.another_of_its_kind += 1;
                continue;
            }
            let Some(reading) = device.reading() else {
                continue;
            };
            let series = state.mbus.iter().position(|s| s.channel == device.channel);
            if series.is_some_and(|index| state.mbus[index].capture == Some(reading.captured)) {
                continue; // the same capture again
            }
            let Some(kind) = device.kind().map(kind_of) else {
                continue;
            };
            let unit = if kind == Kind::Heat { "GJ" } else { "m3" };
            let (Some(t), Some(value)) = (
                meter_instant(reading.captured, &self.config.calendar),
                reading.value.thousandths_in(unit),
            ) else {
                continue;
            };
            if t > telegram_t + CAPTURE_TOLERANCE_SECONDS {
                self.counters.bad_time += 1;
                continue;
            }
            let previous = series.map(|index| state.mbus[index].last);
            if previous.is_some_and(|p| t <= p.t) {
                continue; // not after the capture the series is at
            }
            let current = Observation { t, value };
            let meter = &state.meter;
            let record = |granularity, b: i64, quality, value, purposes| Record {
                meter: meter.clone(),
                granularity,
                kind,
                time: Timestamp::from_second(b).unwrap_or(Timestamp::MIN),
                quality,
                clock: Clock::Meter,
                values: Values::Mbus(value),
                purposes,
            };
            self.boundaries(
                meter,
                schedules,
                previous,
                current,
                |step, granularity, b, quality, value, purposes| {
                    step.push(record(granularity, b, quality, value, purposes));
                },
            );
            if self.config.finest == Granularity::Live
                && telegram_t - t <= MBUS_LIVE_MAX_AGE_SECONDS
            {
                // Live records are judged at their telegram's time, dated by the capture.
                let purposes = self.allowing(meter, telegram_t, Granularity::Live);
                if !purposes.is_empty() {
                    self.push(record(
                        Granularity::Live,
                        t,
                        Quality::Measured,
                        value,
                        purposes,
                    ));
                } else {
                    self.counters.withheld[Granularity::Live as usize] += 1;
                }
            }
            let capture = Some(reading.captured);
            match series {
                Some(index) => {
                    (state.mbus[index].last, state.mbus[index].capture) = (current, capture)
                }
                None => {
                    state.mbus.reserve_exact(1); // most homes have one device: no spare slots
                    state.mbus.push(MbusSeries {
                        channel: device.channel,
                        last: current,
                        capture,
                    });
                }
            }
        }
    }
}

fn kind_of(kind: MbusKind) -> Kind {
    match kind {
        MbusKind::Gas => Kind::Gas,
        MbusKind::Water => Kind::Water,
        MbusKind::Heat => Kind::Heat,
    }
}

/// A meter time (the meter's clock, an M-Bus capture) as an instant. Times without an S/W
/// flag (DSMR 2.2 and 3) are local time, placed in Europe/Amsterdam, except in the repeated
/// hour of October, which is skipped rather than guessed.
fn meter_instant(time: MeterTime, calendar: &Calendar) -> Option<i64> {
    match time.utc() {
        Ok(instant) => Some(instant.as_second()),
        Err(TimeFlag::Unflagged) => {
            let ambiguous = calendar.zone().to_ambiguous_timestamp(time.civil()?);
            Some(ambiguous.unambiguous().ok()?.as_second())
        }
        Err(_) => None,
    }
}

/// The six electricity registers a record carries, in Wh: tariffs 0 (total) to 2 (others are
/// not billing registers in the Netherlands), each read by its code (the first object with
/// it, as every other value is read).
fn registers(telegram: &Telegram<'_>) -> Registers {
    let read = |direction| {
        std::array::from_fn(|tariff| {
            let register = EnergyRegister {
                direction,
                tariff: tariff as u8,
            };
            telegram.energy_wh(register)
        })
    };
    Registers {
        import: read(Direction::Import),
        export: read(Direction::Export),
    }
}

fn live_values(telegram: &Telegram<'_>) -> LiveValues {
    LiveValues {
        power_import_w: telegram.power_import_w(),
        power_export_w: telegram.power_export_w(),
        phases: Phase::ALL.map(|phase| PhaseValues {
            voltage_v: telegram.voltage_v(phase),
            current_a: telegram.current_a(phase),
            power_import_w: telegram.phase_power_import_w(phase),
            power_export_w: telegram.phase_power_export_w(phase),
        }),
        tariff: telegram.tariff(),
        power_failures: telegram.power_failures(),
        long_power_failures: telegram.long_power_failures(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_rounds_half_away_from_zero_and_stays_between() {
        assert_eq!(1000.towards(2000, 1, 2), 1500);
        assert_eq!(1000.towards(1001, 1, 2), 1001);
        assert_eq!(1000.towards(1001, 1, 3), 1000);
        assert_eq!(1001.towards(1000, 1, 2), 1000);
        assert_eq!(5.towards(5, 7, 9), 5);
    }

    #[test]
    fn no_source_trusts_a_meter_time_more_than_a_day_ahead() {
        let at = Timestamp::from_second(1_800_000_000).unwrap();
        let ahead = |seconds| at.as_second() + seconds;
        for arrival in [
            Arrival::Direct(at),
            Arrival::Relayed(at),
            Arrival::Recorded(at),
        ] {
            assert!(arrival.trusts(ahead(MAX_CLOCK_SKEW_SECONDS)), "{arrival:?}");
            assert!(
                !arrival.trusts(ahead(MAX_CLOCK_SKEW_SECONDS + 1)),
                "{arrival:?}"
            );
        }
        // A recording or a broker may hold telegrams for years; a live line may not.
        assert!(Arrival::Recorded(at).trusts(ahead(-5 * 365 * 86_400)));
        assert!(Arrival::Relayed(at).trusts(ahead(-5 * 365 * 86_400)));
        assert!(!Arrival::Direct(at).trusts(ahead(-MAX_CLOCK_SKEW_SECONDS - 1)));
    }

    #[test]
    fn register_state_round_trips() {
        let registers = Registers {
            import: [None, Some(1), Some(2)],
            export: [None, Some(3), None],
        };
        assert_eq!(
            RegisterState::from_registers(&registers).to_registers(),
            registers
        );
    }
}
