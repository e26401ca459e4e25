//! Connecting to an MQTT broker: the client options the MQTT source and sink share, with
//! TLS through rustls and ring (no C toolchain for the Raspberry Pi build).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{ConnectionError, MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use crate::config::{Broker, TlsRoots};

/// How often the client pings an idle broker; a dead connection is noticed within 1.5 times
/// this.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The largest message taken: several telegrams of up to 8 KiB each fit.
const MAX_INCOMING: usize = 256 * 1024;

/// rumqttc's options for `broker`.
pub fn options(broker: &Broker) -> anyhow::Result<MqttOptions> {
    let mut options = MqttOptions::new(&broker.client_id, &broker.host, broker.port);
    options.set_keep_alive(KEEP_ALIVE);
    options.set_max_packet_size(MAX_INCOMING, MAX_INCOMING);
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
