//! Home Assistant MQTT discovery: one device per meter, one sensor entity per register or
//! instantaneous value, with the device and state classes and units the energy dashboard
//! needs (ecosystem.md). Pure: entities in, retained config messages out.

use std::collections::BTreeMap;

use p1guard_conduct::{Granularity, Kind, MeterName, Quantity, SinkRecord, Unit};
use serde_json::{Value, json};

use super::config::TopicLayout;
use super::topics::{Message, dsmr_reader_name, state_topic, topic_level};

/// How Home Assistant should treat one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entity {
    /// Shown in Home Assistant.
    pub name: &'static str,
    /// `energy`, `power`, ... or none.
    pub device_class: Option<&'static str>,
    /// `total_increasing` for counters, `measurement` for instantaneous values.
    pub state_class: Option<&'static str>,
    /// The unit, as Home Assistant spells it.
    pub unit: Option<&'static str>,
}

/// A device class and a state class.
type Classes = (Option<&'static str>, Option<&'static str>);

const ENERGY: Classes = (Some("energy"), Some("total_increasing"));
const POWER: Classes = (Some("power"), Some("measurement"));
const VOLTAGE: Classes = (Some("voltage"), Some("measurement"));
const CURRENT: Classes = (Some("current"), Some("measurement"));
const COUNT: Classes = (None, Some("total_increasing"));

/// Seconds without a reading after which Home Assistant shows a sensor unavailable: a cable
/// pulled or a dongle gone silent, while p1guard itself (the availability topic) runs. An
/// electricity meter sends every 1 to 10 s; an M-Bus meter's capture comes every 5 minutes
/// (DSMR 5) or every hour (DSMR 4).
fn expire_after(kind: Kind) -> u32 {
    match kind {
        Kind::Electricity => 60,
        _ => 2 * 3600,
    }
}

/// The entity of a quantity; its unit is the quantity's.
pub fn entity_of(quantity: Quantity) -> Entity {
    use Quantity::*;
    let (name, (device_class, state_class)) = match quantity {
        EnergyImport => ("Energy import", ENERGY),
        EnergyImportT1 => ("Energy import tariff 1", ENERGY),
        EnergyImportT2 => ("Energy import tariff 2", ENERGY),
        EnergyExport => ("Energy export", ENERGY),
        EnergyExportT1 => ("Energy export tariff 1", ENERGY),
        EnergyExportT2 => ("Energy export tariff 2", ENERGY),
        PowerImport => ("Power import", POWER),
        PowerExport => ("Power export", POWER),
        PowerImportL1 => ("Power import L1", POWER),
        PowerImportL2 => ("Power import L2", POWER),
        PowerImportL3 => ("Power import L3", POWER),
        PowerExportL1 => ("Power export L1", POWER),
        PowerExportL2 => ("Power export L2", POWER),
        PowerExportL3 => ("Power export L3", POWER),
        VoltageL1 => ("Voltage L1", VOLTAGE),
        VoltageL2 => ("Voltage L2", VOLTAGE),
        VoltageL3 => ("Voltage L3", VOLTAGE),
        CurrentL1 => ("Current L1", CURRENT),
        CurrentL2 => ("Current L2", CURRENT),
        CurrentL3 => ("Current L3", CURRENT),
        Tariff => ("Tariff", (None, None)),
        PowerFailures => ("Power failures", COUNT),
        LongPowerFailures => ("Long power failures", COUNT),
        GasVolume => ("Gas", (Some("gas"), Some("total_increasing"))),
        WaterVolume => ("Water", (Some("water"), Some("total_increasing"))),
        HeatEnergy => ("Heat", ENERGY),
    };
    Entity {
        name,
        device_class,
        state_class,
        // Home Assistant spells units as SI does (`m³`).
        unit: quantity.unit().map(Unit::symbol),
    }
}

/// Where discovery configs go and what their entities point at.
#[derive(Debug, Clone)]
pub struct Discovery {
    /// Home Assistant's discovery prefix, `homeassistant` by default.
    pub prefix: String,
    /// The sink's topic prefix.
    pub state_prefix: String,
    /// The sink's layout: where the state of an entity is.
    pub layout: TopicLayout,
    /// The availability topic (the client's Last Will).
    pub availability: String,
    /// Every config published so far, by topic: published again when Home Assistant
    /// restarts or the connection is new.
    configs: BTreeMap<String, Vec<u8>>,
}

impl Discovery {
    /// No entity announced yet.
    pub fn new(
        prefix: String,
        state_prefix: String,
        layout: TopicLayout,
        availability: String,
    ) -> Discovery {
        Discovery {
            prefix,
            state_prefix,
            layout,
            availability,
            configs: BTreeMap::new(),
        }
    }

    /// The topic Home Assistant announces its restarts on.
    pub fn status_topic(&self) -> String {
        format!("{}/status", self.prefix)
    }

    /// Appends the config of every entity of `records` not announced before, electricity
    /// first: Home Assistant links an M-Bus meter's device (`via_device`) only to a device
    /// that already exists. Only live records make entities: they are the ones Home
    /// Assistant shows.
    pub fn announce(&mut self, records: &[SinkRecord], out: &mut Vec<Message>) {
        let live = records
            .iter()
            .filter(|r| r.granularity == Granularity::Live);
        let (electricity, mbus): (Vec<_>, Vec<_>) = live.partition(|r| r.kind == Kind::Electricity);
        for record in electricity.iter().chain(&mbus) {
            self.announce_record(record, out);
        }
    }

    fn announce_record(&mut self, record: &SinkRecord, out: &mut Vec<Message>) {
        let r = record;
        let name = &record.meter;
        let meter = topic_level(&name.to_string());
        let new = out.len();
        for (quantity, _) in r.fields() {
            let object = format!("{}_{}", quantity.kind().name(), quantity.name());
            let topic = format!("{}/sensor/p1guard_{meter}/{object}/config", self.prefix);
            if self.configs.contains_key(&topic) {
                continue;
            }
            let Some(config) = self.config(&meter, name, quantity) else {
                continue;
            };
            let payload = config.to_string().into_bytes();
            self.configs.insert(topic.clone(), payload.clone());
            out.push(Message::retained(topic, payload));
        }
        // In topic order, as `all` publishes them.
        out[new..].sort_by(|a, b| a.topic.cmp(&b.topic));
    }

    /// Forgets the configs of `meters`: they are not published again (when Home Assistant
    /// restarts) unless a live record of the meter comes again.
    pub fn forget(&mut self, meters: &[String]) {
        for meter in meters {
            let device = format!("{}/sensor/p1guard_{}/", self.prefix, topic_level(meter));
            self.configs.retain(|topic, _| !topic.starts_with(&device));
        }
    }

    /// Forgets the entities of `meter` and returns their config topics, to be emptied: on
    /// dsmr-reader's topics, a swapped meter's device would otherwise show the new meter's
    /// readings under the old serial.
    pub fn retire(&mut self, meter: &str) -> Vec<String> {
        let device = format!("{}/sensor/p1guard_{}/", self.prefix, topic_level(meter));
        let retired: Vec<String> = (self.configs.keys())
            .filter(|topic| topic.starts_with(&device))
            .cloned()
            .collect();
        for topic in &retired {
            self.configs.remove(topic);
        }
        retired
    }

    /// Every config announced so far.
    pub fn all(&self, out: &mut Vec<Message>) {
        let configs = self.configs.iter();
        out.extend(
            configs.map(|(topic, payload)| Message::retained(topic.clone(), payload.clone())),
        );
    }

    /// Whether entities of `meter`'s electricity device were announced: an M-Bus device is
    /// linked only to a device that exists (a heat meter's P1 port has none).
    fn has_electricity_device(&self, meter: &str) -> bool {
        let electricity = format!("{}/sensor/p1guard_{meter}/electricity_", self.prefix);
        (self.configs.range(electricity.clone()..).next())
            .is_some_and(|(topic, _)| topic.starts_with(&electricity))
    }

    /// The config payload of one entity, or `None` for a quantity without one in this
    /// layout. `meter` names topics and ids; `name` is the meter's name on this sink.
    fn config(&self, meter: &str, name: &MeterName, quantity: Quantity) -> Option<Value> {
        let mut entity = entity_of(quantity);
        let (kind, field) = (quantity.kind(), quantity.name());
        let (state_topic, value) = match self.layout {
            TopicLayout::P1guard => (
                state_topic(&self.state_prefix, meter, Granularity::Live, kind),
                // Not `value_json.values.X`: Jinja finds a dict's `values()` method first.
                format!("value_json['values']['{field}']"),
            ),
            TopicLayout::DsmrReader => {
                let (name, factor) = dsmr_reader_name(quantity)?;
                if factor != 1.0 {
                    entity.unit = Some("kW"); // dsmr-reader's power unit
                }
                let topic = format!("{}/json", self.state_prefix);
                (topic, format!("value_json.{name}"))
            }
        };
        let value_template = value_template(&value, &entity);
        let mut config = json!({
            "unique_id": format!("p1guard_{meter}_{}_{field}", kind.name()),
            "state_topic": state_topic,
            "value_template": value_template,
            "expire_after": expire_after(kind),
            "availability_topic": self.availability,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device(meter, name, kind, self.has_electricity_device(meter)),
            // An M-Bus meter's one sensor is its device: named "Gas meter on E00…", not
            // "Gas meter on E00… Gas".
            "name": if kind == Kind::Electricity { Value::from(entity.name) } else { Value::Null },
            "origin": {
                "name": "p1guard",
                "sw_version": env!("CARGO_PKG_VERSION"),
            },
        });
        let fields = config.as_object_mut().expect("an object");
        let optional = [
            ("device_class", entity.device_class),
            ("state_class", entity.state_class),
            ("unit_of_measurement", entity.unit),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                fields.insert(key.to_owned(), Value::String(value.to_owned()));
            }
        }
        Some(config)
    }
}

/// The template that picks `value` out of a state message, keeping the sensor's last state
/// when a message lacks it (a telegram without one phase's voltage): a counter must never
/// drop to 0 or `unknown`, which the energy dashboard would book as a reset, and an undefined
/// value makes Home Assistant log a warning at every message. A numeric sensor ignores an
/// empty state (`homeassistant/components/mqtt/sensor.py`, "Ignore empty state"); a text
/// sensor would show it, so it is given its own state back (`this`).
fn value_template(value: &str, entity: &Entity) -> String {
    let numeric = entity.state_class.is_some() || entity.unit.is_some();
    let kept = if numeric { "''" } else { "this.state" };
    format!("{{{{ {value} | default({kept}) }}}}")
}

/// The Home Assistant device an entity of `kind` belongs to: the electricity meter, or one
/// device per M-Bus meter linked to it (`via_device`) where it has one, as Home Assistant's
/// own DSMR integration shows them.
fn device(meter: &str, name: &MeterName, kind: Kind, linked: bool) -> Value {
    let electricity = format!("p1guard_{meter}");
    let serial = serial(name);
    if kind == Kind::Electricity {
        let mut device = json!({
            "identifiers": [electricity],
            "name": format!("Electricity meter {serial}"),
            "model": "DSMR P1",
            "manufacturer": "p1guard",
        });
        if let MeterName::Raw(_) = name {
            device["serial_number"] = Value::from(serial);
        }
        return device;
    }
    let (label, model) = match kind {
        Kind::Gas => ("Gas meter", "M-Bus gas meter"),
        Kind::Water => ("Water meter", "M-Bus water meter"),
        _ => ("Heat meter", "M-Bus heat meter"),
    };
    let mut device = json!({
        "identifiers": [format!("{electricity}_{}", kind.name())],
        "name": format!("{label} on {serial}"),
        "model": model,
        "manufacturer": "p1guard",
    });
    if linked {
        device["via_device"] = Value::from(electricity);
    }
    device
}

/// How a meter is called in Home Assistant: a raw equipment id decoded to the serial printed
/// on the meter (`4530303132...` is `E0012...`) when it is hex-encoded printable ASCII; a
/// pseudonym, or an id sent as plain text, as it is.
fn serial(name: &MeterName) -> String {
    let MeterName::Raw(raw) = name else {
        return name.to_string();
    };
    crate::hex::printable(raw).unwrap_or_else(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use p1guard_conduct::Values;

    use super::*;

    #[test]
    fn registers_are_total_increasing_and_instantaneous_values_measurements() {
        for quantity in Quantity::ALL {
            let entity = entity_of(quantity);
            let expected = match (quantity.is_register(), quantity.unit()) {
                (true, _) => Some("total_increasing"),
                (false, Some(_)) => Some("measurement"),
                (false, None) => entity.state_class, // counts and the tariff: their own
            };
            assert_eq!(entity.state_class, expected, "{quantity:?}");
            assert_eq!(entity.unit.is_some(), entity.device_class.is_some());
        }
        let gas = Entity {
            name: "Gas",
            device_class: Some("gas"),
            state_class: Some("total_increasing"),
            unit: Some("m³"),
        };
        assert_eq!(entity_of(Quantity::GasVolume), gas);
        let heat = entity_of(Quantity::HeatEnergy);
        assert_eq!((heat.device_class, heat.unit), (Some("energy"), Some("GJ")));
        let tariff = entity_of(Quantity::Tariff);
        assert_eq!((tariff.device_class, tariff.state_class), (None, None));
    }

    #[test]
    fn a_raw_hex_id_is_shown_as_the_serial_printed_on_the_meter() {
        let raw = |id: &[u8]| MeterName::Raw(id.into());
        assert_eq!(
            serial(&raw(b"4530303132333435363738393031323334")),
            "E0012345678901234"
        );
        assert_eq!(serial(&raw(b"1ESY1161234567")), "1ESY1161234567");
        assert_eq!(serial(&raw(b"0A0B")), "0A0B", "not printable");
    }

    #[test]
    fn an_mbus_meter_is_its_own_device_behind_the_electricity_meter() {
        let name = MeterName::Raw(b"4530".as_slice().into());
        let gas = device("4530", &name, Kind::Gas, true);
        assert_eq!(gas["via_device"], "p1guard_4530");
        assert_eq!(gas["identifiers"], json!(["p1guard_4530_gas"]));
        let electricity = device("4530", &name, Kind::Electricity, true);
        assert!(electricity.get("via_device").is_none());
        assert_eq!(electricity["serial_number"], "E0");
    }

    /// Home Assistant links a device only to one that exists: a heat meter's P1 port (a
    /// Warmtelink) reports no electricity, so its heat meter's device stands alone.
    #[test]
    fn an_mbus_meter_is_linked_only_to_an_electricity_device_that_was_announced() {
        let record = |meter: &str, kind: Kind, values: Values| SinkRecord {
            meter: MeterName::Raw(meter.as_bytes().into()),
            granularity: Granularity::Live,
            kind,
            time: jiff::Timestamp::UNIX_EPOCH,
            quality: p1guard_conduct::Quality::Measured,
            clock: p1guard_conduct::Clock::Meter,
            values,
            purposes: p1guard_conduct::PurposeSet::ALL,
        };
        let power = p1guard_conduct::LiveValues {
            power_import_w: Some(500.0),
            ..p1guard_conduct::LiveValues::default()
        };
        let records = [
            record("4530", Kind::Heat, Values::Mbus(12_000)),
            record(
                "4530",
                Kind::Electricity,
                Values::Electricity {
                    registers: p1guard_conduct::Registers::default(),
                    live: Some(Box::new(power)),
                },
            ),
            record("4531", Kind::Heat, Values::Mbus(12_000)),
        ];
        let mut discovery = Discovery::new(
            "homeassistant".into(),
            "home".into(),
            TopicLayout::P1guard,
            "home/status".into(),
        );
        let mut out = Vec::new();
        discovery.announce(&records, &mut out);
        let via = |topic: &str| {
            let message = (out.iter().find(|m| m.topic == topic)).expect(topic);
            let config: Value = serde_json::from_slice(&message.payload).unwrap();
            config["device"].get("via_device").cloned()
        };
        let heat = |meter| format!("homeassistant/sensor/p1guard_{meter}/heat_energy_gj/config");
        assert_eq!(via(&heat("4530")), Some("p1guard_4530".into()));
        assert_eq!(via(&heat("4531")), None);
    }
}
