//! Where each record is published, and as what: pure functions from records to messages.

use p1guard_conduct::{Field, Granularity, Kind, Quantity, SinkRecord};
use serde_json::{Map, Value, json};

use super::config::TopicLayout;

/// One MQTT message to publish (QoS 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic.
    pub topic: String,
    /// The payload.
    pub payload: Vec<u8>,
    /// Whether the broker keeps it for later subscribers.
    pub retain: bool,
}

impl Message {
    /// A retained message: state and configuration topics, so a subscriber that starts
    /// later (a restarted Home Assistant) sees the latest at once.
    pub fn retained(topic: String, payload: impl Into<Vec<u8>>) -> Message {
        Message {
            topic,
            payload: payload.into(),
            retain: true,
        }
    }
}

/// A meter's name made safe as one topic level and as a Home Assistant id: anything but
/// ASCII letters, digits, `-` and `_` becomes `_`, so an id sent by a meter can never add a
/// level or a wildcard.
pub fn topic_level(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => c,
            _ => '_',
        })
        .collect()
}

/// The state topic of a meter's records of one granularity and kind in the p1guard layout.
pub fn state_topic(prefix: &str, meter: &str, granularity: Granularity, kind: Kind) -> String {
    format!("{prefix}/{meter}/{granularity}/{}", kind.name())
}

/// The messages of a write in one layout. Stateful only for dsmr-reader's `dsmr/json`,
/// which holds the whole last reading (electricity and gas) as dsmr-reader publishes it.
#[derive(Debug)]
pub struct Layout {
    kind: TopicLayout,
    prefix: String,
    reading: Map<String, Value>,
}

impl Layout {
    /// `kind` under `prefix`.
    pub fn new(kind: TopicLayout, prefix: String) -> Layout {
        Layout {
            kind,
            prefix,
            reading: Map::new(),
        }
    }

    /// Appends the messages of `records` to `out`.
    pub fn messages(&mut self, records: &[SinkRecord], out: &mut Vec<Message>) {
        let prefix = &self.prefix;
        match self.kind {
            TopicLayout::P1guard => {
                for record in records {
                    let r = record;
                    let meter = topic_level(&record.meter.to_string());
                    let topic = state_topic(prefix, &meter, r.granularity, r.kind);
                    let mut payload = Vec::new();
                    record.write_json(&mut payload).expect("JSON in memory");
                    out.push(Message::retained(topic, payload));
                }
            }
            TopicLayout::DsmrReader => {
                let mut changed = false;
                for record in records {
                    for (field, value) in dsmr_reader_fields(record) {
                        let text = match &value {
                            Value::String(text) => text.clone(),
                            other => other.to_string(),
                        };
                        out.push(Message::retained(format!("{prefix}/reading/{field}"), text));
                        self.reading.insert(field, value);
                        changed = true;
                    }
                }
                if changed {
                    let json = Value::Object(self.reading.clone()).to_string();
                    out.push(Message::retained(format!("{prefix}/json"), json));
                }
            }
        }
    }
}

/// dsmr-reader's name of a quantity, and the factor from p1guard's unit to its unit
/// (dsmr-reader gives power in kW), or `None` for a quantity dsmr-reader has no reading
/// field for.
pub fn dsmr_reader_name(quantity: Quantity) -> Option<(&'static str, f64)> {
    use Quantity::*;
    const KW: f64 = 0.001;
    Some(match quantity {
        EnergyImportT1 => ("electricity_delivered_1", 1.0),
        EnergyImportT2 => ("electricity_delivered_2", 1.0),
        EnergyExportT1 => ("electricity_returned_1", 1.0),
        EnergyExportT2 => ("electricity_returned_2", 1.0),
        PowerImport => ("electricity_currently_delivered", KW),
        PowerExport => ("electricity_currently_returned", KW),
        PowerImportL1 => ("phase_currently_delivered_l1", KW),
        PowerImportL2 => ("phase_currently_delivered_l2", KW),
        PowerImportL3 => ("phase_currently_delivered_l3", KW),
        PowerExportL1 => ("phase_currently_returned_l1", KW),
        PowerExportL2 => ("phase_currently_returned_l2", KW),
        PowerExportL3 => ("phase_currently_returned_l3", KW),
        VoltageL1 => ("phase_voltage_l1", 1.0),
        VoltageL2 => ("phase_voltage_l2", 1.0),
        VoltageL3 => ("phase_voltage_l3", 1.0),
        CurrentL1 => ("phase_power_current_l1", 1.0),
        CurrentL2 => ("phase_power_current_l2", 1.0),
        CurrentL3 => ("phase_power_current_l3", 1.0),
        GasVolume => ("extra_device_delivered", 1.0),
        EnergyImport | EnergyExport | Tariff | PowerFailures | LongPowerFailures => return None,
        WaterVolume | HeatEnergy => return None,
    })
}

/// A live record as dsmr-reader's reading fields (kWh, kW, V, A, m³), for the scripts and
/// dashboards written against its MQTT topics. Boundary records have no dsmr-reader
/// equivalent and yield nothing.
pub fn dsmr_reader_fields(record: &SinkRecord) -> Map<String, Value> {
    let r = record;
    let mut fields = Map::new();
    if r.granularity != Granularity::Live {
        return fields;
    }
    for (quantity, field) in r.fields() {
        let Some((name, factor)) = dsmr_reader_name(quantity) else {
            continue;
        };
        let value = match field {
            // Rounded to a micro-unit: W / 1000 leaves binary noise (2.6630000000000003).
            Field::Float(number) if factor != 1.0 => json!((number * factor * 1e6).round() / 1e6),
            field => json!(field),
        };
        fields.insert(name.to_owned(), value);
    }
    if !fields.is_empty() {
        let time = match r.kind {
            Kind::Gas => "extra_device_timestamp",
            _ => "timestamp",
        };
        fields.insert(time.into(), json!(r.time.to_string()));
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meter_name_can_never_add_a_topic_level_or_a_wildcard() {
        assert_eq!(topic_level("4530303533"), "4530303533");
        assert_eq!(topic_level("E/+/#x y\u{e9}"), "E____x_y_");
    }

    #[test]
    fn fields_are_renamed_and_scaled_as_dsmr_reader_names_them() {
        let name = dsmr_reader_name;
        let renamed = |n: &'static str, f: f64| Some((n, f));
        assert_eq!(
            name(Quantity::EnergyImportT1),
            renamed("electricity_delivered_1", 1.0)
        );
        assert_eq!(
            name(Quantity::EnergyExportT2),
            renamed("electricity_returned_2", 1.0)
        );
        assert_eq!(
            name(Quantity::PowerImport),
            renamed("electricity_currently_delivered", 0.001)
        );
        assert_eq!(
            name(Quantity::PowerExportL3),
            renamed("phase_currently_returned_l3", 0.001)
        );
        assert_eq!(name(Quantity::VoltageL2), renamed("phase_voltage_l2", 1.0));
        assert_eq!(
            name(Quantity::CurrentL1),
            renamed("phase_power_current_l1", 1.0)
        );
        assert_eq!(
            name(Quantity::GasVolume),
            renamed("extra_device_delivered", 1.0)
        );
        // dsmr-reader has no field for these.
        assert_eq!(name(Quantity::EnergyImport), None);
        assert_eq!(name(Quantity::Tariff), None);
        assert_eq!(name(Quantity::WaterVolume), None);
    }
}
