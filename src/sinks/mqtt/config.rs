//! `[[sinks]]` `type = "mqtt"`: its settings as written, their checks, and what `check-config`
//! says of them.

use std::path::PathBuf;

use p1guard_conduct::{Granularity, SinkPolicy};
use serde::Deserialize;

use crate::broker::{Broker, Connection};
use crate::config::{Checker, SecretRef};

/// The settings as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: String,
    /// Topic prefix; `p1guard` if absent.
    pub prefix: Option<String>,
    /// `p1guard` (default) or `dsmr_reader`.
    pub layout: Option<String>,
    /// Home Assistant discovery; on by default for a live sink.
    pub discovery: Option<bool>,
    /// Home Assistant's discovery prefix; `homeassistant` if absent.
    pub discovery_prefix: Option<String>,
    /// The client id; `p1guard-<host>-<name>` if absent.
    pub client_id: Option<String>,
    /// User name for the broker.
    pub username: Option<String>,
    /// Password for the broker.
    pub password: Option<SecretRef>,
    /// PEM file of the CA that signed the broker's certificate; the system's roots if
    /// absent.
    pub ca_file: Option<PathBuf>,
}

/// Where and how an MQTT sink publishes.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// The broker.
    pub broker: Broker,
    /// Topic prefix of records and availability.
    pub prefix: String,
    /// Which topics records go to.
    pub layout: TopicLayout,
    /// Home Assistant's discovery prefix, if discovery configs are published.
    pub discovery_prefix: Option<String>,
}

/// Where an MQTT sink publishes records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicLayout {
    /// `<prefix>/<meter>/<granularity>/<kind>`, the record as JSON.
    P1guard,
    /// dsmr-reader's `dsmr/reading/<field>` and `dsmr/json`, for the scripts written for it.
    DsmrReader,
}

impl MqttConfig {
    /// The settings of the sink `name` at `at` with `policy`, every problem noted.
    pub fn check(
        self,
        checker: &mut Checker<'_>,
        at: &str,
        name: &str,
        policy: SinkPolicy,
    ) -> Option<MqttSettings> {
        let MqttConfig {
            url,
            prefix,
            layout,
            discovery,
            discovery_prefix,
            client_id,
            username,
            password,
            ca_file,
        } = self;
        let connection = Connection {
            url,
            client_id,
            username,
            password,
            ca_file,
        };
        let broker = Broker::check(checker, at, name, connection);
        let prefix = prefix.unwrap_or_else(|| "p1guard".to_owned());
        if prefix.is_empty() || prefix.contains(['+', '#']) || prefix.ends_with('/') {
            checker.problem(
                at,
                format!("prefix {prefix:?}: expected a topic without + # or a trailing /"),
            );
        }
        let layout = match layout.as_deref() {
            None | Some("p1guard") => TopicLayout::P1guard,
            Some("dsmr_reader") => TopicLayout::DsmrReader,
            Some(other) => {
                checker.problem(
                    at,
                    format!("layout {other:?}: expected p1guard or dsmr_reader"),
                );
                TopicLayout::P1guard
            }
        };
        let live = policy.ceiling() == Granularity::Live;
        if layout == TopicLayout::DsmrReader && !live {
            checker.problem(
                at,
                "layout dsmr_reader carries live readings only: it needs max_granularity = \"live\"",
            );
        }
        if discovery == Some(true) && !live {
            checker.problem(
                at,
                "discovery needs max_granularity = \"live\": Home Assistant shows live values",
            );
        }
        let discovery_prefix = (discovery.unwrap_or(live) && live)
            .then(|| discovery_prefix.unwrap_or_else(|| "homeassistant".to_owned()));
        Some(MqttSettings {
            broker: broker?,
            prefix,
            layout,
            discovery_prefix,
        })
    }
}

impl MqttSettings {
    /// Where records go, for `check-config`.
    pub fn describe(&self) -> String {
        let MqttSettings {
            broker,
            prefix,
            layout,
            discovery_prefix,
        } = self;
        let topics = match layout {
            TopicLayout::P1guard => format!("{prefix}/<meter>/<granularity>/<kind>"),
            TopicLayout::DsmrReader => "dsmr/reading/<field>, dsmr/json".to_owned(),
        };
        let discovery = discovery_prefix
            .as_ref()
            .map_or(String::new(), |p| format!(", discovery under {p}/"));
        format!(" on {}: {topics}{discovery}", broker.describe())
    }
}
