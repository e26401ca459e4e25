//! Connecting to an MQTT broker: the settings the MQTT source and sink share, checked in
//! one place, and the client options built from them, with TLS through rustls and ring (no
//! C toolchain for the Raspberry Pi build).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{ConnectionError, MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use crate::config::{Checker, Secret, SecretRef};

/// The connection settings MQTT sources and sinks share, gathered after reading.
#[derive(Debug)]
pub struct Connection {
    /// `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub url: String,
    /// The client id, if given.
    pub client_id: Option<String>,
    /// User name for the broker.
    pub username: Option<String>,
    /// Password for the broker.
    pub password: Option<SecretRef>,
    /// The CA's PEM file.
    pub ca_file: Option<PathBuf>,
}

/// How to reach an MQTT broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS, and whose roots verify the broker.
    pub tls: Option<TlsRoots>,
    /// The session's client id.
    pub client_id: String,
    /// User name and password.
    pub credentials: Option<(String, Secret)>,
}

impl Broker {
    /// The broker of an MQTT source or sink named `name`, with every problem noted.
    pub fn check(
        checker: &mut Checker<'_>,
        at: &str,
        name: &str,
        connection: Connection,
    ) -> Option<Broker> {
        let Connection {
            url,
            client_id,
            username,
            password,
            ca_file,
        } = connection;
        let Some((host, port, tls)) = parse_mqtt_url(&url) else {
            checker.problem(
                at,
                format!("url {url:?}: expected mqtt://host[:port] or mqtts://host[:port]"),
            );
            return None;
        };
        let tls = match (tls, ca_file) {
            (true, None) => Some(TlsRoots::System),
            (true, Some(file)) => Some(TlsRoots::CaFile(file)),
            (false, None) => None,
            (false, Some(_)) => {
                checker.problem(at, "ca_file needs an mqtts:// url");
                None
            }
        };
        let password_given = password.is_some();
        let password = password.and_then(|p| {
            p.resolve()
                .map_err(|e| checker.problem(at, format!("password: {e}")))
                .ok()
        });
        let credentials = match (username, password) {
            (Some(user), Some(password)) => Some((user, password)),
            (None, None) => None,
            // Already reported: the password could not be read.
            (Some(_), None) if password_given => None,
            _ => {
                checker.problem(at, "username and password go together");
                None
            }
        };
        // The host in the default keeps workers that share a fleet from taking each other's
        // session, and stays the same across restarts, as a persistent session needs.
        let client_id = client_id.unwrap_or_else(|| format!("p1guard-{}-{name}", host_name()));
        if client_id.is_empty() || client_id.len() > 65_535 {
            checker.problem(at, "client_id is empty or too long");
        }
        Some(Broker {
            host: host.to_owned(),
            port,
            tls,
            client_id,
            credentials,
        })
    }

    /// `mqtt[s]://host:port as client_id`, for logs (no password).
    pub fn describe(&self) -> String {
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        let Broker {
            host,
            port,
            client_id,
            ..
        } = self;
        format!("{scheme}://{host}:{port} as {client_id}")
    }
}

/// What verifies a broker's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsRoots {
    /// The operating system's trusted roots.
    System,
    /// One CA's PEM file.
    CaFile(PathBuf),
}

/// This machine's name, for default MQTT client ids.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// `mqtt://host[:port]` or `mqtts://host[:port]` (an IPv6 host in brackets) as
/// (host, port, tls).
fn parse_mqtt_url(url: &str) -> Option<(&str, u16, bool)> {
    let (authority, tls) = match url.split_once("://")? {
        ("mqtt", rest) => (rest, false),
        ("mqtts", rest) => (rest, true),
        _ => return None,
    };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']')?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':')?)),
            }
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(port) => port.parse().ok()?,
        None if tls => 8883,
        None => 1883,
    };
    let valid = !host.is_empty() && !host.contains(['/', '@', '?', '#', ' ', '[', ']']);
    valid.then_some((host, port, tls))
}

/// How often the client pings an idle broker; a dead connection is noticed within 1.5 times
/// this.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The largest packet sent or taken (the fleet source takes more): several telegrams of up
/// to 8 KiB each fit.
pub const MAX_PACKET: usize = 256 * 1024;

/// rumqttc's options for `broker`.
pub fn options(broker: &Broker) -> anyhow::Result<MqttOptions> {
    let mut options = MqttOptions::new(&broker.client_id, &broker.host, broker.port);
    options.set_keep_alive(KEEP_ALIVE);
    options.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    if let Some((user, password)) = &broker.credentials {
        options.set_credentials(user, password.expose());
    }
    if let Some(roots) = &broker.tls {
        let tls = tls_config(roots)?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
    }
    Ok(options)
}

fn tls_config(roots: &TlsRoots) -> anyhow::Result<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    match roots {
        TlsRoots::System => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                anyhow::bail!("no trusted roots found on this system: {:?}", found.errors);
            }
            store.add_parsable_certificates(found.certs);
        }
        TlsRoots::CaFile(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("reading {}", path.display()))?;
            for cert in certs {
                store
                    .add(cert)
                    .with_context(|| format!("a certificate in {}", path.display()))?;
            }
            if store.is_empty() {
                anyhow::bail!("{} holds no certificate", path.display());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(config)
}

/// A connection error in a user's words.
pub fn describe(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ConnectionRefused(code) => format!("refused by the broker: {code:?}"),
        other => other.to_string(),
    }
}
