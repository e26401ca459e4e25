//! Where each record is published, and as what: pure functions from records to messages.

use p1guard_conduct::{Granularity, Kind, SinkRecord};
use serde_json::{Map, Value, json};

use crate::config::TopicLayout;

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
    pub fn messages(&mut self, records: &[SinkRecord<'_>], out: &mut Vec<Message>) {
        let prefix = &self.prefix;
        match self.kind {
            TopicLayout::P1guard => {
                for record in records {
                    let r = record.record();
                    let meter = topic_level(&record.meter().to_string());
                    let topic = state_topic(prefix, &meter, r.granularity, r.kind);
                    let payload = serde_json::to_vec(record).expect("a record serialises");
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

/// A record's values as the record JSON's `values` object.
pub fn values(record: &SinkRecord<'_>) -> Map<String, Value> {
    match serde_json::to_value(record.values_json()) {
        Ok(Value::Object(values)) => values,
        _ => Map::new(),
    }
}

/// dsmr-reader's name of a record field, and the factor from p1guard's unit to its unit
/// (dsmr-reader gives power in kW).
pub fn dsmr_reader_name(kind: Kind, field: &str) -> Option<(String, f64)> {
    let name = match (kind, field) {
        (Kind::Gas, "volume_m3") => return Some(("extra_device_delivered".into(), 1.0)),
        (Kind::Electricity, field) => field,
        _ => return None,
    };
    let renamed = match name {
        "energy_import_t1_kwh" => "electricity_delivered_1",
        "energy_export_t1_kwh" => "electricity_returned_1",
        "energy_import_t2_kwh" => "electricity_delivered_2",
        "energy_export_t2_kwh" => "electricity_returned_2",
        "power_import_w" => return Some(("electricity_currently_delivered".into(), 0.001)),
        "power_export_w" => return Some(("electricity_currently_returned".into(), 0.001)),
        _ => {
            // Per phase: power_import_l1_w, voltage_l1_v, current_l1_a, ...
            let (quantity, phase) = name.rsplit_once('_')?.0.rsplit_once('_')?;
            let l = phase
                .strip_prefix('l')
                .filter(|n| matches!(*n, "1" | "2" | "3"))?;
            return match quantity {
                "power_import" => Some((format!("phase_currently_delivered_l{l}"), 0.001)),
                "power_export" => Some((format!("phase_currently_returned_l{l}"), 0.001)),
                "voltage" => Some((format!("phase_voltage_l{l}"), 1.0)),
                "current" => Some((format!("phase_power_current_l{l}"), 1.0)),
                _ => None,
            };
        }
    };
    Some((renamed.into(), 1.0))
}

/// A live record as dsmr-reader's reading fields (kWh, kW, V, A, m³), for the scripts and
/// dashboards written against its MQTT topics. Boundary records have no dsmr-reader
/// equivalent and yield nothing.
pub fn dsmr_reader_fields(record: &SinkRecord<'_>) -> Map<String, Value> {
    let r = record.record();
    let mut fields = Map::new();
    if r.granularity != Granularity::Live {
        return fields;
    }
    for (field, value) in values(record) {
        let Some((name, factor)) = dsmr_reader_name(r.kind, &field) else {
            continue;
        };
        let value = match value.as_f64() {
            // Rounded to a micro-unit: W / 1000 leaves binary noise (2.6630000000000003).
            Some(number) if factor != 1.0 => json!((number * factor * 1e6).round() / 1e6),
            _ => value,
        };
        fields.insert(name, value);
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
        let name = |kind, field| dsmr_reader_name(kind, field);
        let renamed = |n: &str, f: f64| Some((n.to_owned(), f));
        assert_eq!(
            name(Kind::Electricity, "energy_import_t1_kwh"),
            renamed("electricity_delivered_1", 1.0)
        );
        assert_eq!(
            name(Kind::Electricity, "energy_export_t2_kwh"),
            renamed("electricity_returned_2", 1.0)
        );
        assert_eq!(
            name(Kind::Electricity, "power_import_w"),
            renamed("electricity_currently_delivered", 0.001)
        );
        assert_eq!(
            name(Kind::Electricity, "power_export_l3_w"),
            renamed("phase_currently_returned_l3", 0.001)
        );
        assert_eq!(
            name(Kind::Electricity, "voltage_l2_v"),
            renamed("phase_voltage_l2", 1.0)
        );
        assert_eq!(
            name(Kind::Electricity, "current_l1_a"),
            renamed("phase_power_current_l1", 1.0)
        );
        assert_eq!(
            name(Kind::Gas, "volume_m3"),
            renamed("extra_device_delivered", 1.0)
        );
        // dsmr-reader has no field for these.
        assert_eq!(name(Kind::Electricity, "energy_import_kwh"), None);
        assert_eq!(name(Kind::Electricity, "tariff"), None);
        assert_eq!(name(Kind::Electricity, "voltage_l4_v"), None);
        assert_eq!(name(Kind::Water, "volume_m3"), None);
    }
}
