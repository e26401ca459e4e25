//! A P1 cable: the serial port is opened with the configured settings and reopened with
//! backoff when it disappears (USB cable pulled), without restarting the process.

use std::path::PathBuf;

use serde::Deserialize;
use tokio::io::AsyncReadExt as _;
use tokio_serial::{SerialPortBuilderExt as _, SerialStream};
use tokio_util::sync::CancellationToken;

use super::{Closed, Framing};
use crate::backoff::Backoff;
use crate::config::Checker;
use crate::telemetry::log_limit::LogLimit;

/// `[[sources]]` `type = "serial"` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// The device, e.g. `/dev/p1` or `/dev/serial/by-id/...`.
    pub device: PathBuf,
    /// `dsmr5` (default), `dsmr4` or `dsmr2`.
    pub preset: Option<String>,
    /// Overrides of the preset.
    pub baud: Option<u32>,
    /// 7 or 8.
    pub data_bits: Option<u8>,
    /// none, even or odd.
    pub parity: Option<String>,
    /// 1 or 2.
    pub stop_bits: Option<u8>,
}

/// A serial line's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSettings {
    /// The device path.
    pub device: PathBuf,
    /// Bits per second.
    pub baud: u32,
    /// 7 or 8.
    pub data_bits: tokio_serial::DataBits,
    /// Parity.
    pub parity: tokio_serial::Parity,
    /// 1 or 2.
    pub stop_bits: tokio_serial::StopBits,
}

impl SerialConfig {
    /// The line's settings, and whether its preset clears bit 7; every problem noted.
    pub fn check(self, checker: &mut Checker<'_>, at: &str) -> Option<(SerialSettings, bool)> {
        let SerialConfig {
            device,
            preset,
            baud,
            data_bits,
            parity,
            stop_bits,
        } = self;
        let preset = preset.as_deref().unwrap_or("dsmr5");
        let Some(preset) = SerialPreset::by_name(preset) else {
            checker.problem(
                at,
                format!("preset {preset:?}: expected dsmr5, dsmr4 or dsmr2"),
            );
            return None;
        };
        let mut settings = preset.settings(device);
        if let Some(baud) = baud {
            if baud == 0 {
                checker.problem(at, "baud must be positive");
            }
            settings.baud = baud;
        }
        match data_bits {
            None => {}
            Some(7) => settings.data_bits = tokio_serial::DataBits::Seven,
            Some(8) => settings.data_bits = tokio_serial::DataBits::Eight,
            Some(n) => checker.problem(at, format!("data_bits {n}: expected 7 or 8")),
        }
        match parity.as_deref() {
            None => {}
            Some("none") => settings.parity = tokio_serial::Parity::None,
            Some("even") => settings.parity = tokio_serial::Parity::Even,
            Some("odd") => settings.parity = tokio_serial::Parity::Odd,
            Some(other) => {
                checker.problem(at, format!("parity {other:?}: expected none, even or odd"));
            }
        }
        match stop_bits {
            None => {}
            Some(1) => settings.stop_bits = tokio_serial::StopBits::One,
            Some(2) => settings.stop_bits = tokio_serial::StopBits::Two,
            Some(n) => checker.problem(at, format!("stop_bits {n}: expected 1 or 2")),
        }
        Some((settings, preset.clear_bit7))
    }
}

impl SerialSettings {
    /// The device and line, for `check-config`.
    pub fn describe(&self) -> String {
        use tokio_serial::{DataBits, Parity, StopBits};
        let data_bits = match self.data_bits {
            DataBits::Five => 5,
            DataBits::Six => 6,
            DataBits::Seven => 7,
            DataBits::Eight => 8,
        };
        let parity = match self.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        let stop_bits = match self.stop_bits {
            StopBits::One => 1,
            StopBits::Two => 2,
        };
        format!(
            "{} at {} {data_bits}{parity}{stop_bits}",
            self.device.display(),
            self.baud
        )
    }
}

/// Serial settings per DSMR version (ecosystem.md).
#[derive(Debug, Clone, Copy)]
struct SerialPreset {
    baud: u32,
    data_bits: tokio_serial::DataBits,
    parity: tokio_serial::Parity,
    clear_bit7: bool,
}

impl SerialPreset {
    fn by_name(name: &str) -> Option<SerialPreset> {
        use tokio_serial::{DataBits, Parity};
        let preset = |baud, data_bits, parity, clear_bit7| SerialPreset {
            baud,
            data_bits,
            parity,
            clear_bit7,
        };
        match name {
            "dsmr5" => Some(preset(115_200, DataBits::Eight, Parity::None, false)),
            // Sources disagree on 8N1 vs 7E1: reading 8N1 and clearing bit 7 copes with both.
            "dsmr4" => Some(preset(115_200, DataBits::Eight, Parity::None, true)),
            "dsmr2" => Some(preset(9_600, DataBits::Seven, Parity::Even, false)),
            _ => None,
        }
    }

    fn settings(self, device: PathBuf) -> SerialSettings {
        SerialSettings {
            device,
            baud: self.baud,
            data_bits: self.data_bits,
            parity: self.parity,
            stop_bits: tokio_serial::StopBits::One,
        }
    }
}

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
