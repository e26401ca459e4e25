//! InfluxDB line protocol for records, second precision: one line per record,
//!
//! ```text
//! electricity,granularity=quarter_hour,meter=<pseudonym> energy_import_t1_kwh=1234.567,...,quality="measured" 1774746000
//! ```
//!
//! The measurement is the record's kind; the two tags are the few, low-cardinality ones the
//! data is queried by (tags sorted by key, as InfluxDB prefers); the fields are the record
//! JSON's values under the same names, plus its quality (and its clock when it is the
//! receiver's), and the timestamp is the boundary.

use std::fmt::{self, Write as _};

use p1guard_conduct::{Clock, Field, SinkRecord};

/// Appends `record`'s line (with its newline) to `out`.
pub fn encode(out: &mut String, record: &SinkRecord) {
    let r = record;
    // Kind and granularity names are fixed snake_case words: nothing to escape.
    let _ = write!(
        out,
        "{},granularity={},meter={} ",
        r.kind.name(),
        r.granularity.name(),
        TagValue(&record.meter)
    );
    for (quantity, field) in r.fields() {
        let name = quantity.name();
        let _ = match field {
            Field::Float(v) => write!(out, "{name}={v},"),
            Field::Count(n) => write!(out, "{name}={n}i,"),
        };
    }
    let _ = write!(out, "quality=\"{}\"", r.quality.name());
    if r.clock == Clock::Receiver {
        let _ = write!(out, ",clock=\"{}\"", r.clock.name());
    }
    let _ = writeln!(out, " {}", r.time.as_second());
}

/// A tag value with line protocol's escapes: a backslash before commas, equals signs and
/// spaces. (A pseudonym is hex; a raw meter id is whatever the meter sends.)
struct TagValue<T>(T);

impl<T: fmt::Display> fmt::Display for TagValue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Escaper<'a, 'b>(&'a mut fmt::Formatter<'b>);
        impl fmt::Write for Escaper<'_, '_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                for c in s.chars() {
                    if matches!(c, ',' | '=' | ' ') {
                        self.0.write_char('\\')?;
                    }
                    self.0.write_char(c)?;
                }
                Ok(())
            }
        }
        write!(Escaper(f), "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use jiff::Timestamp;
    use p1guard_conduct::{
        Granularity, Identity, IdentityKey, Kind, LiveValues, MeterRef, PhaseValues, Quality,
        Record, Registers, SinkPolicy, Values,
    };

    use super::*;

    fn record(id: &[u8], granularity: Granularity, kind: Kind, values: Values) -> Record {
        Record {
            meter: MeterRef::new(Arc::from(id), &IdentityKey::from_bytes([9; 32])),
            granularity,
            kind,
            time: "2026-03-29T01:00:00Z".parse::<Timestamp>().unwrap(),
            quality: Quality::Measured,
            clock: Clock::Meter,
            values,
            purposes: p1guard_conduct::PurposeSet::ALL,
        }
    }

    fn line(record: &Record, identity: Identity) -> String {
        let policy = SinkPolicy::new(Granularity::Live, identity).unwrap();
        let mut out = String::new();
        encode(&mut out, &policy.admit(record).unwrap());
        out
    }

    #[test]
    fn a_boundary_reading_is_one_line_of_float_fields() {
        let registers = Registers {
            import: [None, Some(1_234_567), Some(2_345_678)],
            export: [None, Some(0), Some(12_500)],
        };
        let electricity = Values::Electricity {
            registers,
            live: None,
        };
        let r = record(
            b"4B38",
            Granularity::QuarterHour,
            Kind::Electricity,
            electricity,
        );
        let pseudonym = IdentityKey::from_bytes([9; 32]).pseudonym(b"4B38");
        assert_eq!(
            line(&r, Identity::Pseudonym),
            format!(
                "electricity,granularity=quarter_hour,meter={pseudonym} energy_import_t1_kwh=1234.567,energy_import_t2_kwh=2345.678,energy_export_t1_kwh=0,energy_export_t2_kwh=12.5,quality=\"measured\" 1774746000\n"
            )
        );
        let mut gas = record(
            b"4B38",
            Granularity::Daily,
            Kind::Gas,
            Values::Mbus(12_785_123),
        );
        gas.quality = Quality::Interpolated;
        assert_eq!(
            line(&gas, Identity::Pseudonym),
            format!(
                "gas,granularity=daily,meter={pseudonym} volume_m3=12785.123,quality=\"interpolated\" 1774746000\n"
            )
        );
    }

    #[test]
    fn counts_are_integers_and_a_receiver_clock_is_said() {
        let live = LiveValues {
            power_import_w: Some(1234.0),
            phases: [
                PhaseValues {
                    voltage_v: Some(230.1),
                    ..PhaseValues::default()
                },
                PhaseValues::default(),
                PhaseValues::default(),
            ],
            tariff: Some(2),
            power_failures: Some(4),
            ..LiveValues::default()
        };
        let values = Values::Electricity {
            registers: Registers {
                import: [Some(5), None, None],
                export: [None; 3],
            },
            live: Some(Box::new(live)),
        };
        let mut r = record(b"E0053", Granularity::Live, Kind::Electricity, values);
        r.clock = Clock::Receiver;
        assert_eq!(
            line(&r, Identity::Raw),
            "electricity,granularity=live,meter=E0053 energy_import_kwh=0.005,power_import_w=1234,voltage_l1_v=230.1,tariff=2i,power_failures=4i,quality=\"measured\",clock=\"receiver\" 1774746000\n"
        );
    }

    #[test]
    fn a_raw_meter_id_is_escaped() {
        let r = record(b"a b,c=d", Granularity::Live, Kind::Water, Values::Mbus(1));
        assert_eq!(
            line(&r, Identity::Raw),
            "water,granularity=live,meter=a\\ b\\,c\\=d volume_m3=0.001,quality=\"measured\" 1774746000\n"
        );
    }
}
