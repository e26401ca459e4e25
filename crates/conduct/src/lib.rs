//! The Dutch smart-meter code of conduct as code.
//!
//! Consent levels `none < billing < daily < quarter_hour < live` are cumulative. The
//! [`Reducer`] turns each meter's telegrams into boundary readings (billing, daily, quarter
//! hour) and live records, each only if the consent in force at the record's own instant
//! allows it; a [`SinkPolicy`] lets a record through to a destination only at or under the
//! destination's ceiling, naming the meter by an HMAC pseudonym unless the destination is the
//! owner's own `live` sink. Consent is per purpose: a record carries the purposes whose
//! consent allowed it, and reaches only the destinations serving one of them. Pure: no I/O,
//! no clock.
//!
//! Choices where privacy.md is silent, as a privacy officer would sign them:
//! - A telegram without an equipment identifier yields nothing (it cannot be attributed to a
//!   consent), and is counted.
//! - A meter time that is impossible or a placeholder makes the telegram yield nothing; a
//!   telegram not later than the meter's previous one is a repeat and yields nothing.
//! - DSMR 2.2/3 telegrams carry no time: they are dated by the receiver and say so
//!   (`"clock":"receiver"`); their gas capture times carry no S/W flag, are placed in
//!   Europe/Amsterdam, and in the repeated autumn hour are skipped rather than guessed.
//! - M-Bus device ids never appear in records, on any sink: records name the household's
//!   electricity meter only.
//! - Tariff registers beyond 2 (Hungary's 1.8.3/1.8.4) are not billing registers here and
//!   are left out; totals (`1.8.0`) are kept where the meter sends them.
//! - A boundary reading that consent does not allow is counted as withheld, a boundary that
//!   consent allows but no observation fills is counted as missing.

#![forbid(unsafe_code)]

mod calendar;
mod consent;
mod identity;
mod level;
mod quantity;
mod record;
mod reducer;
mod sink;
mod stored;

pub use crate::calendar::{BillingCadence, Calendar};
pub use crate::consent::{
    Change, ChangeError, Consent, ConsentTable, Levels, MAX_PURPOSES, PurposeId, PurposeSet, Scope,
    Timeline,
};
pub use crate::identity::{Identity, IdentityKey, MeterRef, Pseudonym, normalise_equipment_id};
pub use crate::level::{Granularity, Level, UnknownName};
pub use crate::quantity::{Quantity, Unit};
pub use crate::record::{
    Clock, Field, Kind, LiveValues, Milli, PhaseValues, Quality, Record, Registers, Values,
};
pub use crate::reducer::{
    Arrival, CAPTURE_TOLERANCE_SECONDS, CLOCK_JUMP_SECONDS, Counters, MAX_CLOCK_SKEW_SECONDS,
    MBUS_LIVE_MAX_AGE_SECONDS, MaxGaps, Reducer, ReducerConfig,
};
pub use crate::sink::{MeterName, PolicyError, SinkPolicy, SinkRecord};
pub use crate::stored::{StoredError, decode_batch, decode_record, encode_batch, encode_record};
