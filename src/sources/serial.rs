//! A P1 cable: the serial port is opened with the configured settings and reopened with
//! backoff when it disappears (USB cable pulled), without restarting the process.

use tokio::io::AsyncReadExt as _;
use tokio_serial::{SerialPortBuilderExt as _, SerialStream};
use tokio_util::sync::CancellationToken;

use super::{Closed, Framing};
use crate::backoff::Backoff;
use crate::log_limit::LogLimit;
use crate::topology::config::SerialSettings;

pub async fn run(
    name: &str,
    settings: &SerialSettings,
    mut framing: Framing,
    shutdown: &CancellationToken,
) -> Result<(), Closed> {
    let device = settings.device.display();
    let mut backoff = Backoff::reconnect();
    let mut open_failures = LogLimit::per_minute();
    let mut buf = vec![0u8; 4096];
    loop {
        match open(settings) {
            Ok(mut port) => {
                tracing::info!(source = %name, %device, baud = settings.baud, "serial port open");
                framing.set_connected(true);
                let lost = loop {
                    let read = tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        read = port.read(&mut buf) => read,
                    };
                    match read {
                        Ok(0) => break "end of file".to_owned(),
                        Ok(n) => {
                            backoff.reset();
                            framing.push(&buf[..n]).await?;
                        }
                        Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(error) => break error.to_string(),
                    }
                };
                framing.set_connected(false);
                framing.end_of_stream().await?;
                tracing::warn!(source = %name, %device, "serial port lost ({lost}); reopening");
            }
            Err(error) => {
                if let Some(suppressed) = open_failures.allow(std::time::Instant::now()) {
                    tracing::warn!(source = %name, %device, suppressed, "cannot open serial port: {error}; retrying");
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

fn open(settings: &SerialSettings) -> tokio_serial::Result<SerialStream> {
    tokio_serial::new(settings.device.to_string_lossy(), settings.baud)
        .data_bits(settings.data_bits)
        .parity(settings.parity)
        .stop_bits(settings.stop_bits)
        .flow_control(tokio_serial::FlowControl::None)
        .open_native_async()
}
