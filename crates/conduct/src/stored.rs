//! The storage form of what p1guard keeps on its own disk between runs: records waiting in a
//! sink's outbox, and the reducer's per-meter state. Compact (postcard), exact (register
//! values stay integers, times keep their nanoseconds), and private to p1guard: it is not a
//! contract (the record JSON is), and a leading version byte makes a later format refuse to
//! misread an earlier one.

use std::borrow::Cow;
use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::consent::PurposeSet;
use crate::identity::Pseudonym;
use crate::level::Granularity;
use crate::record::{Clock, Kind, Quality, Record, Values};
use crate::sink::{MeterName, SinkRecord};

/// The first byte of everything stored: the format. Format 2 follows it with a CRC-32C of
/// the rest: a page of the outbox's file damaged inside a batch (zeroed by a worn SD card)
/// may leave SQLite's structure whole, and zeros read as records of their own.
const FORMAT: u8 = 2;

/// Format 1, the same without the checksum, as an earlier p1guard stored: still read.
const FORMAT_UNCHECKED: u8 = 1;

/// The checksum of format 2.
const CHECKSUM: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Stored bytes that cannot be read back.
#[derive(Debug, thiserror::Error)]
pub enum StoredError {
    /// Written in another format (by another version of p1guard).
    #[error("stored in format {found}, this p1guard reads format {FORMAT}")]
    Format {
        /// The format byte found.
        found: u8,
    },
    /// Cut short or damaged.
    #[error("damaged: {0}")]
    Damaged(#[from] postcard::Error),
    /// Bytes changed since they were stored.
    #[error("damaged: the checksum does not match")]
    Checksum,
}

/// A record as stored, its meter named by `M`.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredRecord<'a, M> {
    meter: M,
    granularity: Granularity,
    kind: Kind,
    seconds: i64,
    nanoseconds: i32,
    quality: Quality,
    clock: Clock,
    values: Cow<'a, Values>,
    purposes: PurposeSet,
}

impl<'a, M> StoredRecord<'a, M> {
    /// `record`'s stored form, its meter named `meter`.
    pub(crate) fn of<N>(record: &'a Record<N>, meter: M) -> StoredRecord<'a, M> {
        StoredRecord {
            meter,
            granularity: record.granularity,
            kind: record.kind,
            seconds: record.time.as_second(),
            nanoseconds: record.time.subsec_nanosecond(),
            quality: record.quality,
            clock: record.clock,
            values: Cow::Borrowed(&record.values),
            purposes: record.purposes,
        }
    }

    /// The record back, its meter named `meter`.
    pub(crate) fn into_record<N>(self, meter: N) -> Result<Record<N>, StoredError> {
        let time = Timestamp::new(self.seconds, self.nanoseconds)
            .map_err(|_| StoredError::Damaged(postcard::Error::SerdeDeCustom))?;
        Ok(Record {
            meter,
            granularity: self.granularity,
            kind: self.kind,
            time,
            quality: self.quality,
            clock: self.clock,
            values: self.values.into_owned(),
            purposes: self.purposes,
        })
    }
}

/// A sink's name for a meter, as stored.
#[derive(Clone, Serialize, Deserialize)]
enum StoredName<'a> {
    Raw(Cow<'a, [u8]>),
    Pseudonym([u8; 16]),
}

/// Appends `value`'s stored form, format byte and checksum first, to `out`.
pub(crate) fn encode(value: &impl Serialize, out: &mut Vec<u8>) {
    let start = out.len();
    out.push(FORMAT);
    out.extend([0; 4]);
    // Writing into a Vec cannot fail, and every stored type serialises.
    let written = std::mem::take(out);
    *out = postcard::to_extend(value, written).expect("stored types serialise into a Vec");
    let checksum = CHECKSUM.checksum(&out[start + 5..]);
    out[start + 1..start + 5].copy_from_slice(&checksum.to_le_bytes());
}

/// Reads back what [`encode`] wrote, or an earlier p1guard in format 1.
pub(crate) fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, StoredError> {
    let cut_short = || StoredError::Damaged(postcard::Error::DeserializeUnexpectedEnd);
    match bytes.split_first() {
        Some((&FORMAT, rest)) => {
            let (checksum, payload) = rest.split_first_chunk::<4>().ok_or_else(cut_short)?;
            if u32::from_le_bytes(*checksum) != CHECKSUM.checksum(payload) {
                return Err(StoredError::Checksum);
            }
            Ok(postcard::from_bytes(payload)?)
        }
        Some((&FORMAT_UNCHECKED, rest)) => Ok(postcard::from_bytes(rest)?),
        Some((&found, _)) => Err(StoredError::Format { found }),
        None => Err(cut_short()),
    }
}

impl<'a> StoredName<'a> {
    fn of(name: &'a MeterName) -> StoredName<'a> {
        match name {
            MeterName::Raw(raw) => StoredName::Raw(Cow::Borrowed(raw)),
            MeterName::Pseudonym(pseudonym) => StoredName::Pseudonym(pseudonym.to_bytes()),
        }
    }

    fn into_name(self) -> MeterName {
        match self {
            StoredName::Raw(raw) => MeterName::Raw(Arc::from(&raw[..])),
            StoredName::Pseudonym(bytes) => MeterName::Pseudonym(Pseudonym::from_bytes(bytes)),
        }
    }
}

/// Appends the stored form of `records` to `out`: one row of a sink's outbox, a batch as
/// it was committed.
pub fn encode_batch(records: &[SinkRecord], out: &mut Vec<u8>) {
    let stored: Vec<_> = records
        .iter()
        .map(|record| StoredRecord::of(record, StoredName::of(&record.meter)))
        .collect();
    encode(&stored, out);
}

/// The records [`encode_batch`] stored in `bytes`.
pub fn decode_batch(bytes: &[u8]) -> Result<Vec<SinkRecord>, StoredError> {
    let stored: Vec<StoredRecord<'_, StoredName<'_>>> = decode(bytes)?;
    stored
        .into_iter()
        .map(|record| {
            let meter = StoredName::into_name(record.meter.clone());
            record.into_record(meter)
        })
        .collect()
}

/// Appends `record`'s stored form alone to `out`: a row of the outbox's first layout, one
/// record per row, which [`decode_record`] reads to carry such rows over.
pub fn encode_record(record: &SinkRecord, out: &mut Vec<u8>) {
    encode(
        &StoredRecord::of(record, StoredName::of(&record.meter)),
        out,
    );
}

/// The record [`encode_record`] stored in `bytes`.
pub fn decode_record(bytes: &[u8]) -> Result<SinkRecord, StoredError> {
    let stored: StoredRecord<'_, StoredName<'_>> = decode(bytes)?;
    let meter = StoredName::into_name(stored.meter.clone());
    stored.into_record(meter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{IdentityKey, MeterRef};
    use crate::record::{LiveValues, PhaseValues, Registers};

    fn record(meter: MeterName) -> SinkRecord {
        let phase = PhaseValues {
            voltage_v: Some(231.4),
            current_a: None,
            power_import_w: Some(0.1 + 0.2),
            power_export_w: Some(-0.0),
        };
        Record {
            meter,
            granularity: Granularity::Live,
            kind: Kind::Electricity,
            time: Timestamp::new(1_780_000_000, 123_456_789).unwrap(),
            quality: Quality::Interpolated,
            clock: Clock::Receiver,
            values: Values::Electricity {
                registers: Registers {
                    import: [None, Some(1_234_567), Some(i64::MAX)],
                    export: [Some(0), None, Some(-5)],
                },
                live: Some(Box::new(LiveValues {
                    power_import_w: Some(f64::MAX),
                    power_export_w: None,
                    phases: [phase; 3],
                    tariff: Some(2),
                    power_failures: Some(u32::MAX),
                    long_power_failures: None,
                })),
            },
            purposes: PurposeSet::ALL,
        }
    }

    #[test]
    fn records_come_back_exactly_under_either_name() {
        let key = IdentityKey::from_bytes([4; 32]);
        let meter = MeterRef::new(Arc::from(&b"4530303731"[..]), &key);
        for name in [
            MeterName::Raw(Arc::from(&b"4530303731"[..])),
            MeterName::Pseudonym(meter.pseudonym()),
        ] {
            let record = record(name);
            let mut bytes = Vec::new();
            encode_record(&record, &mut bytes);
            assert_eq!(decode_record(&bytes).unwrap(), record);
        }
    }

    #[test]
    fn a_batch_comes_back_exactly_in_order() {
        let key = IdentityKey::from_bytes([4; 32]);
        let meter = MeterRef::new(Arc::from(&b"4530303731"[..]), &key);
        let batch = vec![
            record(MeterName::Raw(Arc::from(&b"4530303731"[..]))),
            record(MeterName::Pseudonym(meter.pseudonym())),
            Record {
                granularity: Granularity::Billing,
                ..record(MeterName::Raw(Arc::from(&b"E0"[..])))
            },
        ];
        let mut bytes = Vec::new();
        encode_batch(&batch, &mut bytes);
        assert_eq!(decode_batch(&bytes).unwrap(), batch);
        assert!(decode_batch(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn another_format_or_damage_is_refused() {
        let mut bytes = Vec::new();
        encode_record(&record(MeterName::Raw(Arc::from(&b"E0"[..]))), &mut bytes);
        let mut other = bytes.clone();
        other[0] = FORMAT + 1;
        assert!(matches!(
            decode_record(&other),
            Err(StoredError::Format { found }) if found == FORMAT + 1
        ));
        assert!(matches!(
            decode_record(&bytes[..bytes.len() / 2]),
            Err(StoredError::Checksum)
        ));
        assert!(decode_record(&[]).is_err());
        assert!(decode_record(&[FORMAT, 0, 0]).is_err());
    }

    /// A damaged page of the outbox may leave the file's structure whole and zero the end of
    /// a batch; zeros read as records of their own (a meter named by nothing, in 1970), so
    /// each batch carries a checksum.
    #[test]
    fn a_batch_whose_end_was_zeroed_is_refused_not_read_as_other_records() {
        let batch = vec![record(MeterName::Raw(Arc::from(&b"E0"[..]))); 40];
        let mut bytes = Vec::new();
        encode_batch(&batch, &mut bytes);
        let mut zeroed = bytes.clone();
        let end = zeroed.len();
        zeroed[end / 2..].fill(0);
        assert!(matches!(decode_batch(&zeroed), Err(StoredError::Checksum)));
        // Without the checksum, as format 1 stored it, the zeros do read as records.
        let mut unchecked = vec![FORMAT_UNCHECKED];
        unchecked.extend(&zeroed[5..]);
        let misread = decode_batch(&unchecked).unwrap();
        assert_eq!(misread.len(), batch.len());
        assert_ne!(misread, batch);
    }

    #[test]
    fn what_an_earlier_p1guard_stored_without_a_checksum_is_read() {
        let batch = vec![record(MeterName::Raw(Arc::from(&b"E0"[..])))];
        let mut bytes = Vec::new();
        encode_batch(&batch, &mut bytes);
        let mut unchecked = vec![FORMAT_UNCHECKED];
        unchecked.extend(&bytes[5..]);
        assert_eq!(decode_batch(&unchecked).unwrap(), batch);
    }
}
