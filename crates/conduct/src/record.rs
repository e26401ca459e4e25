//! Records: what the reducer yields and sinks receive, in architecture.md's JSON shape.

use jiff::Timestamp;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use crate::identity::MeterRef;
use crate::level::Granularity;
use crate::sink::SinkRecord;

/// What a record measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Registers {
    /// `1-0:1.8.0`, `1-0:1.8.1`, `1-0:1.8.2`.
    pub import: [Option<Milli>; 3],
    /// `1-0:2.8.0`, `1-0:2.8.1`, `1-0:2.8.2`.
    pub export: [Option<Milli>; 3],
}

impl Registers {
    /// Every present register with its field name.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, Milli)> + '_ {
        const IMPORT: [&str; 3] = [
            "energy_import_kwh",
            "energy_import_t1_kwh",
            "energy_import_t2_kwh",
        ];
        const EXPORT: [&str; 3] = [
            "energy_export_kwh",
            "energy_export_t1_kwh",
            "energy_export_t2_kwh",
        ];
        let import = IMPORT.into_iter().zip(self.import);
        let export = EXPORT.into_iter().zip(self.export);
        import
            .chain(export)
            .filter_map(|(name, v)| Some((name, v?)))
    }

    /// Whether no register is present.
    pub fn is_empty(&self) -> bool {
        self.fields().next().is_none()
    }
}

/// One phase's instantaneous values.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
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
#[derive(Debug, Clone, Copy, PartialEq, Default)]
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

/// A record's values. Only live electricity records carry instantaneous values: boundary
/// records are register readings and nothing else.
#[derive(Debug, Clone, PartialEq)]
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

/// One reading of one meter at one instant and granularity.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Whose meter.
    pub meter: MeterRef,
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
}

fn milli_to_f64(milli: Milli) -> f64 {
    milli as f64 / 1000.0
}

const PHASE_FIELDS: [[&str; 4]; 3] = [
    [
        "power_import_l1_w",
        "power_export_l1_w",
        "voltage_l1_v",
        "current_l1_a",
    ],
    [
        "power_import_l2_w",
        "power_export_l2_w",
        "voltage_l2_v",
        "current_l2_a",
    ],
    [
        "power_import_l3_w",
        "power_export_l3_w",
        "voltage_l3_v",
        "current_l3_a",
    ],
];

/// One of a record's values, as stores receive it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Field {
    /// A reading in its unit (kWh, m3, GJ, W, V, A).
    Float(f64),
    /// A count or code: the tariff in force, power failures.
    Count(u32),
}

impl Record {
    /// Calls `f` with each present value and its field name, in the order of the record
    /// JSON's `values` object; every store names and types values through this one list.
    pub fn try_for_each_value<E>(
        &self,
        mut f: impl FnMut(&'static str, Field) -> Result<(), E>,
    ) -> Result<(), E> {
        match &self.values {
            Values::Mbus(milli) => {
                let name = match self.kind {
                    Kind::Heat => "energy_gj",
                    _ => "volume_m3",
                };
                f(name, Field::Float(milli_to_f64(*milli)))
            }
            Values::Electricity { registers, live } => {
                for (name, milli) in registers.fields() {
                    f(name, Field::Float(milli_to_f64(milli)))?;
                }
                let Some(live) = live else { return Ok(()) };
                let mut float = |name, v: Option<f64>| match v {
                    Some(v) => f(name, Field::Float(v)),
                    None => Ok(()),
                };
                float("power_import_w", live.power_import_w)?;
                float("power_export_w", live.power_export_w)?;
                for (phase, names) in live.phases.iter().zip(PHASE_FIELDS) {
                    float(names[0], phase.power_import_w)?;
                    float(names[1], phase.power_export_w)?;
                    float(names[2], phase.voltage_v)?;
                    float(names[3], phase.current_a)?;
                }
                let counts = [
                    ("tariff", live.tariff),
                    ("power_failures", live.power_failures),
                    ("long_power_failures", live.long_power_failures),
                ];
                for (name, count) in counts {
                    if let Some(count) = count {
                        f(name, Field::Count(count))?;
                    }
                }
                Ok(())
            }
        }
    }
}

struct ValuesJson<'a>(&'a Record);

impl Serialize for ValuesJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        self.0.try_for_each_value(|name, value| match value {
            Field::Float(v) => map.serialize_entry(name, &v),
            Field::Count(n) => map.serialize_entry(name, &n),
        })?;
        map.end()
    }
}

impl<'a> SinkRecord<'a> {
    /// The record's `values` object on its own, for stores that keep the other fields in
    /// columns.
    pub fn values_json(&self) -> impl Serialize + 'a {
        ValuesJson(self.record())
    }
}

impl Serialize for SinkRecord<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.record();
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("meter", &format_args!("{}", self.meter()))?;
        map.serialize_entry("granularity", &r.granularity)?;
        map.serialize_entry("kind", &r.kind)?;
        map.serialize_entry("time", &format_args!("{}", r.time))?;
        map.serialize_entry("quality", &r.quality)?;
        if r.clock == Clock::Receiver {
            map.serialize_entry("clock", &r.clock)?;
        }
        map.serialize_entry("values", &ValuesJson(r))?;
        map.end()
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
}
