//! A TCP P1 dongle or ser2net: the same raw byte stream as a cable. Reconnects with backoff
//! when the connection drops or stays silent longer than the read timeout.

use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{Closed, Framing};
use crate::backoff::Backoff;
use crate::config::Checker;
use crate::telemetry::log_limit::LogLimit;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `[[sources]]` `type = "tcp"` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// `host:port`.
    pub address: String,
    /// Reconnect when nothing arrived for this long; 60 s if absent.
    pub read_timeout_secs: Option<u64>,
}

impl TcpConfig {
    /// The address and read timeout, every problem noted.
    pub fn check(self, checker: &mut Checker<'_>, at: &str) -> (String, Duration) {
        let TcpConfig {
            address,
            read_timeout_secs,
        } = self;
        let has_port = address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !has_port {
            checker.problem(at, format!("address {address:?}: expected host:port"));
        }
        if read_timeout_secs == Some(0) {
            checker.problem(at, "read_timeout_secs must be positive");
        }
        (
            address,
            Duration::from_secs(read_timeout_secs.unwrap_or(60)),
        )
    }
}

pub async fn run(
    name: &str,
    address: &str,
    read_timeout: Duration,
    mut framing: Framing,
    shutdown: &CancellationToken,
) -> Result<(), Closed> {
    let mut backoff = Backoff::reconnect();
    let mut connect_failures = LogLimit::per_minute();
    let mut buf = vec![0u8; 4096];
    loop {
        let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address));
        let connected = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            connected = connect => connected,
        };
        match connected {
            Ok(Ok(mut stream)) => {
                tracing::info!(source = %name, %address, "connected");
                framing.set_connected(true);
                let lost = loop {
                    let read = tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        read = tokio::time::timeout(read_timeout, stream.read(&mut buf)) => read,
                    };
                    match read {
                        Err(_) => break format!("nothing received for {read_timeout:?}"),
                        Ok(Ok(0)) => break "closed by the peer".to_owned(),
                        Ok(Ok(n)) => {
                            backoff.reset();
                            framing.push(&buf[..n]).await?;
                        }
                        Ok(Err(error)) => break error.to_string(),
                    }
                };
                framing.set_connected(false);
                framing.end_of_stream().await?;
                tracing::warn!(source = %name, %address, "connection lost ({lost}); reconnecting");
            }
            Ok(Err(error)) => connect_failed(name, address, &error, &mut connect_failures),
            Err(_) => connect_failed(name, address, &"timed out", &mut connect_failures),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

fn connect_failed(name: &str, address: &str, error: &dyn std::fmt::Display, limit: &mut LogLimit) {
    if let Some(suppressed) = limit.allow(std::time::Instant::now()) {
        tracing::warn!(source = %name, %address, suppressed, "cannot connect: {error}; retrying");
    }
}
