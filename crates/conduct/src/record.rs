//! Records: what the reducer yields and sinks receive, in architecture.md's JSON shape.

use std::io;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::consent::PurposeSet;
use crate::identity::MeterRef;
use crate::level::Granularity;
use crate::quantity::Quantity;
use crate::sink::MeterName;

/// What a record measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The electricity meter itself.
    Electricity,
    /// An M-Bus gas meter (m3).
    Gas,
    /// An M-Bus water meter (m3).
    Water,
    /// An M-Bus heat meter (GJ).
    Heat,
}

impl Kind {
    /// The snake_case name used in JSON and storage.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Electricity => "electricity",
            Kind::Gas => "gas",
            Kind::Water => "water",
            Kind::Heat => "heat",
        }
    }
}

/// Whether a reading was read at its instant or interpolated between two that were.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// An observation lay exactly on the boundary.
    Measured,
    /// Linear between the observations either side, within the granularity's max gap.
    Interpolated,
}

impl Quality {
    /// The snake_case name used in JSON and storage.
    pub const fn name(self) -> &'static str {
        match self {
            Quality::Measured => "measured",
            Quality::Interpolated => "interpolated",
        }
    }
}

/// Whose clock dated the record: the meter's, or (DSMR 2.2 and 3 telegrams carry no time)
/// the receiver's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    /// The meter's own clock, from the telegram.
    Meter,
    /// The time the telegram was received.
    Receiver,
}

impl Clock {
    /// The snake_case name used in JSON and storage.
    pub const fn name(self) -> &'static str {
        match self {
            Clock::Meter => "meter",
            Clock::Receiver => "receiver",
        }
    }
}

/// A register reading in thousandths of its unit (Wh for kWh, litres for m3, MJ for GJ):
/// the registers' resolution, which keeps interpolation and rounding exact.
pub type Milli = i64;

/// The electricity registers: `[total, tariff 1, tariff 2]` for import and for export.
///
/// The serde derives on the value types give their storage form (outbox, checkpoint); the
/// record JSON is written by [`Record::write_json`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Registers {
    /// `1-0:1.8.0`, `1-0:1.8.1`, `1-0:1.8.2`.
    pub import: [Option<Milli>; 3],
    /// `1-0:2.8.0`, `1-0:2.8.1`, `1-0:2.8.2`.
    pub export: [Option<Milli>; 3],
}

impl Registers {
    /// Every present register with its quantity.
    pub fn fields(&self) -> impl Iterator<Item = (Quantity, Milli)> + '_ {
        use Quantity::*;
        let import = [EnergyImport, EnergyImportT1, EnergyImportT2].into_iter();
        let export = [EnergyExport, EnergyExportT1, EnergyExportT2].into_iter();
        let import = import.zip(self.import);
        let export = export.zip(self.export);
        import
            .chain(export)
            .filter_map(|(quantity, v)| Some((quantity, v?)))
    }

    /// Whether no register is present.
    pub fn is_empty(&self) -> bool {
        self.fields().next().is_none()
    }
}

/// One phase's instantaneous values.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PhaseValues {
    /// Voltage, V.
    pub voltage_v: Option<f64>,
    /// Current, A.
    pub current_a: Option<f64>,
    /// Power drawn, W.
    pub power_import_w: Option<f64>,
    /// Power delivered back, W.
    pub power_export_w: Option<f64>,
}

/// What only live records carry: the telegram's instantaneous values.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LiveValues {
    /// Power drawn, W.
    pub power_import_w: Option<f64>,
    /// Power delivered back, W.
    pub power_export_w: Option<f64>,
    /// L1, L2, L3.
    pub phases: [PhaseValues; 3],
    /// Tariff in force.
    pub tariff: Option<u32>,
    /// Power failures so far.
    pub power_failures: Option<u32>,
    /// Long power failures so far.
    pub long_power_failures: Option<u32>,
}

impl LiveValues {
    /// Every present value with its quantity.
    pub fn fields(&self) -> impl Iterator<Item = (Quantity, Field)> + '_ {
        use Quantity::*;
        const PHASES: [[Quantity; 4]; 3] = [
            [PowerImportL1, PowerExportL1, VoltageL1, CurrentL1],
            [PowerImportL2, PowerExportL2, VoltageL2, CurrentL2],
            [PowerImportL3, PowerExportL3, VoltageL3, CurrentL3],
        ];
        let totals = [
            (PowerImport, self.power_import_w),
            (PowerExport, self.power_export_w),
        ];
        let phases = self
            .phases
            .iter()
            .zip(PHASES)
            .flat_map(|(phase, [i, e, v, c])| {
                [
                    (i, phase.power_import_w),
                    (e, phase.power_export_w),
                    (v, phase.voltage_v),
                    (c, phase.current_a),
                ]
            });
        let counts = [
            (Tariff, self.tariff),
            (PowerFailures, self.power_failures),
            (LongPowerFailures, self.long_power_failures),
        ];
        let floats = totals.into_iter().chain(phases);
        let floats = floats.filter_map(|(q, v)| Some((q, Field::Float(v?))));
        let counts = counts
            .into_iter()
            .filter_map(|(q, n)| Some((q, Field::Count(n?))));
        floats.chain(counts)
    }
}

/// A record's values. Only live electricity records carry instantaneous values: boundary
/// records are register readings and nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Values {
    /// Electricity registers, and instantaneous values on live records.
    Electricity {
        /// The registers.
        registers: Registers,
        /// Present exactly on live records.
        live: Option<Box<LiveValues>>,
    },
    /// An M-Bus device's counter (m3 for gas and water, GJ for heat).
    Mbus(Milli),
}

/// One reading of one meter at one instant and granularity. The reducer names the meter by a
/// [`MeterRef`] (raw id and pseudonym); a sink's policy turns that into the one name the sink
/// may see ([`SinkRecord`](crate::SinkRecord)).
#[derive(Debug, Clone, PartialEq)]
pub struct Record<M = MeterRef> {
    /// Whose meter.
    pub meter: M,
    /// How fine.
    pub granularity: Granularity,
    /// What it measures.
    pub kind: Kind,
    /// The boundary, or for live records the telegram's (or M-Bus capture) time.
    pub time: Timestamp,
    /// Measured or interpolated.
    pub quality: Quality,
    /// Whose clock.
    pub clock: Clock,
    /// The readings.
    pub values: Values,
    /// The purposes whose consent, at the instant the record is judged at, allows it: the
    /// destinations it may reach are those serving one of them. Not part of the record JSON.
    pub purposes: PurposeSet,
}

fn milli_to_f64(milli: Milli) -> f64 {
    milli as f64 / 1000.0
}

/// One of a record's values, as stores receive it. Serialises as the bare number.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Field {
    /// A reading in its unit (kWh, m3, GJ, W, V, A).
    Float(f64),
    /// A count or code: the tariff in force, power failures.
    Count(u32),
}

impl<M> Record<M> {
    /// The same reading, with its meter named `meter`.
    pub(crate) fn named<N>(&self, meter: N) -> Record<N> {
        Record {
            meter,
            granularity: self.granularity,
            kind: self.kind,
            time: self.time,
            quality: self.quality,
            clock: self.clock,
            values: self.values.clone(),
            purposes: self.purposes,
        }
    }

    /// Each present value with its quantity, in the order of the record JSON's `values`
    /// object (that of [`Quantity::ALL`]); every store names and types values through this
    /// one list. (An M-Bus counter on an electricity record, which the reducer never makes,
    /// has no quantity and is left out.)
    pub fn fields(&self) -> impl Iterator<Item = (Quantity, Field)> + '_ {
        let (counter, registers, live) = match &self.values {
            Values::Mbus(milli) => (Quantity::mbus(self.kind).map(|q| (q, *milli)), None, None),
            Values::Electricity { registers, live } => (None, Some(registers), live.as_deref()),
        };
        let registers = registers.into_iter().flat_map(Registers::fields);
        let counters = counter.into_iter().chain(registers);
        let counters =
            counters.map(|(quantity, milli)| (quantity, Field::Float(milli_to_f64(milli))));
        counters.chain(live.into_iter().flat_map(LiveValues::fields))
    }
}

/// architecture.md's record JSON, written with its fixed keys in place: serde_json writes every
/// value (each number, and the meter's name with its escaping), while the keys and punctuation,
/// which never need escaping, are copied as they are. A map serialised through serde would
/// scan every key for characters to escape, and on a live record the keys are half the bytes
/// (see the pipeline bench). Only a record a sink's policy named can be written: a
/// [`MeterRef`] is never written out.
impl Record<MeterName> {
    /// Appends the record's JSON object (no newline) to `out`.
    pub fn write_json<W: io::Write>(&self, mut out: W) -> io::Result<()> {
        out.write_all(b"{\"meter\":")?;
        serde_json::to_writer(&mut out, &format_args!("{}", self.meter))?;
        out.write_all(b",\"granularity\":")?;
        serde_json::to_writer(&mut out, self.granularity.name())?;
        out.write_all(b",\"kind\":")?;
        serde_json::to_writer(&mut out, self.kind.name())?;
        out.write_all(b",\"time\":")?;
        serde_json::to_writer(&mut out, &format_args!("{}", self.time))?;
        out.write_all(b",\"quality\":")?;
        serde_json::to_writer(&mut out, self.quality.name())?;
        if self.clock == Clock::Receiver {
            out.write_all(b",\"clock\":")?;
            serde_json::to_writer(&mut out, self.clock.name())?;
        }
        out.write_all(b",\"values\":")?;
        self.write_values_json(&mut out)?;
        out.write_all(b"}")
    }

    /// Appends the record's `values` object on its own to `out`, for stores that keep the
    /// other fields in columns.
    pub fn write_values_json<W: io::Write>(&self, mut out: W) -> io::Result<()> {
        out.write_all(b"{")?;
        for (index, (quantity, field)) in self.fields().enumerate() {
            if index > 0 {
                out.write_all(b",")?;
            }
            out.write_all(quantity.json_key().as_bytes())?;
            serde_json::to_writer(&mut out, &field)?;
        }
        out.write_all(b"}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(value: impl Serialize) -> String {
        serde_json::to_string(&value).unwrap()
    }

    #[test]
    fn names_are_the_json_names() {
        for kind in [Kind::Electricity, Kind::Gas, Kind::Water, Kind::Heat] {
            assert_eq!(json(kind), format!("\"{}\"", kind.name()));
        }
        for quality in [Quality::Measured, Quality::Interpolated] {
            assert_eq!(json(quality), format!("\"{}\"", quality.name()));
        }
        for clock in [Clock::Meter, Clock::Receiver] {
            assert_eq!(json(clock), format!("\"{}\"", clock.name()));
        }
    }

    /// The record JSON as architecture.md defines it, serialised as a map through serde (as
    /// records were before [`Record::write_json`]): what the writer must write, byte for byte.
    fn contract(record: &Record<MeterName>) -> String {
        use serde::ser::{SerializeMap, Serializer};
        struct Map<'a, V>(Vec<(&'a str, V)>);
        impl<V: Serialize> Serialize for Map<'_, V> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.0.len()))?;
                for (key, value) in &self.0 {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Entry<'a> {
            Text(String),
            Values(Map<'a, Field>),
        }
        let text = |text: &str| Entry::Text(text.to_owned());
        let mut entries = vec![
            ("meter", Entry::Text(record.meter.to_string())),
            ("granularity", text(record.granularity.name())),
            ("kind", text(record.kind.name())),
            ("time", Entry::Text(record.time.to_string())),
            ("quality", text(record.quality.name())),
        ];
        if record.clock == Clock::Receiver {
            entries.push(("clock", text(record.clock.name())));
        }
        let values = record
            .fields()
            .map(|(quantity, field)| (quantity.name(), field));
        entries.push(("values", Entry::Values(Map(values.collect()))));
        serde_json::to_string(&Map(entries)).unwrap()
    }

    fn written(record: &Record<MeterName>) -> String {
        let mut out = Vec::new();
        record.write_json(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_written_json_is_the_contract_object_in_its_order() {
        let key = crate::identity::IdentityKey::from_bytes([1; 32]);
        let live = LiveValues {
            power_import_w: Some(612.5),
            power_export_w: Some(0.0),
            phases: [PhaseValues {
                voltage_v: Some(229.9),
                current_a: None,
                power_import_w: Some(1e-3),
                power_export_w: Some(-0.0),
            }; 3],
            tariff: Some(2),
            power_failures: None,
            long_power_failures: Some(u32::MAX),
        };
        let electricity = Values::Electricity {
            registers: Registers {
                import: [None, Some(4_312_087), Some(-1)],
                export: [Some(0), None, Some(i64::MAX)],
            },
            live: Some(Box::new(live)),
        };
        let mut record = Record {
            meter: MeterName::Raw(std::sync::Arc::from(&b"E0\"\\\x01\xe9"[..])),
            granularity: Granularity::Live,
            kind: Kind::Electricity,
            time: Timestamp::from_second(1_780_000_123).unwrap(),
            quality: Quality::Measured,
            clock: Clock::Receiver,
            values: electricity,
            purposes: PurposeSet::ALL,
        };
        // A raw id is written as sent, escaped where JSON needs it.
        assert_eq!(written(&record), contract(&record));
        record.meter = MeterName::Pseudonym(key.pseudonym(b"E0"));
        record.clock = Clock::Meter;
        assert_eq!(written(&record), contract(&record));
        record.values = Values::Electricity {
            registers: Registers::default(),
            live: None,
        };
        assert_eq!(written(&record), contract(&record));
        assert!(written(&record).ends_with(r#""values":{}}"#));
        (record.kind, record.values) = (Kind::Gas, Values::Mbus(7_831_424));
        (record.granularity, record.quality) = (Granularity::Daily, Quality::Interpolated);
        assert_eq!(written(&record), contract(&record));
    }

    #[test]
    fn values_come_in_the_order_of_all_quantities() {
        let phase = PhaseValues {
            voltage_v: Some(230.0),
            current_a: Some(1.0),
            power_import_w: Some(200.0),
            power_export_w: Some(0.0),
        };
        let live = LiveValues {
            power_import_w: Some(600.0),
            power_export_w: Some(0.0),
            phases: [phase; 3],
            tariff: Some(1),
            power_failures: Some(2),
            long_power_failures: Some(3),
        };
        let values = Values::Electricity {
            registers: Registers {
                import: [Some(1); 3],
                export: [Some(2); 3],
            },
            live: Some(Box::new(live)),
        };
        let key = crate::identity::IdentityKey::from_bytes([1; 32]);
        let mut record = Record {
            meter: MeterRef::new(std::sync::Arc::from(&b"E0"[..]), &key),
            granularity: Granularity::Live,
            kind: Kind::Electricity,
            time: Timestamp::UNIX_EPOCH,
            quality: Quality::Measured,
            clock: Clock::Meter,
            values,
            purposes: PurposeSet::ALL,
        };
        // The registers are the table's electricity registers, which boundary records carry;
        // live records add the rest of the electricity quantities.
        let (registers, live_only): (Vec<_>, Vec<_>) = Quantity::ALL
            .into_iter()
            .filter(|q| q.kind() == Kind::Electricity)
            .partition(|q| q.is_register());
        let Values::Electricity {
            registers: read,
            live: Some(instant),
        } = &record.values
        else {
            unreachable!("an electricity record with live values")
        };
        assert_eq!(read.fields().map(|(q, _)| q).collect::<Vec<_>>(), registers);
        assert_eq!(
            instant.fields().map(|(q, _)| q).collect::<Vec<_>>(),
            live_only
        );
        let mut expected = Quantity::ALL.to_vec();
        let electricity: Vec<_> = record.fields().map(|(q, _)| q).collect();
        let mbus = expected.split_off(electricity.len());
        assert_eq!(electricity, expected);
        for quantity in mbus {
            record.kind = quantity.kind();
            record.values = Values::Mbus(1500);
            let fields: Vec<_> = record.fields().collect();
            assert_eq!(fields, [(quantity, Field::Float(1.5))]);
        }
    }
}
