//! `p1guard check-config`: validates a configuration and says what it would run, or lists
//! every problem.

use std::process::ExitCode;

use p1guard_conduct::BillingCadence;
use tokio_serial::{DataBits, Parity, StopBits};

use crate::cli::CheckConfigArgs;
use crate::pace::Speed;
use crate::topology::config::{self, SourceKind};

pub fn run(args: &CheckConfigArgs) -> anyhow::Result<ExitCode> {
    let config = match config::load(&args.config) {
        Ok(config) => config,
        Err(problems) => {
            eprint!("{}: {problems}", args.config.display());
            return Ok(ExitCode::from(2));
        }
    };
    println!("{}: valid", args.config.display());
    for warning in &config.warnings {
        eprintln!("{}: warning: {warning}", args.config.display());
    }
    println!(
        "consent: {} by default, {} meter(s) listed; billing readings {}",
        config.consent.default_at(jiff::Timestamp::now()),
        config.consent.listed(),
        match config.billing {
            BillingCadence::BiMonthly => "bi-monthly",
            BillingCadence::Monthly => "monthly",
        },
    );
    for source in &config.sources {
        let what = match &source.kind {
            SourceKind::Serial(serial) => {
                let data_bits = match serial.data_bits {
                    DataBits::Five => 5,
                    DataBits::Six => 6,
                    DataBits::Seven => 7,
                    DataBits::Eight => 8,
                };
                let parity = match serial.parity {
                    Parity::None => 'N',
                    Parity::Even => 'E',
                    Parity::Odd => 'O',
                };
                let stop_bits = match serial.stop_bits {
                    StopBits::One => 1,
                    StopBits::Two => 2,
                };
                let bit7 = if source.input.clear_bit7 {
                    ", bit 7 cleared"
                } else {
                    ""
                };
                format!(
                    "{} at {} {data_bits}{parity}{stop_bits}{bit7}",
                    serial.device.display(),
                    serial.baud
                )
            }
            SourceKind::Tcp { address, .. } => address.clone(),
            SourceKind::Replay { files, speed } => {
                let speed = match speed {
                    Speed::Max => "as fast as possible".to_owned(),
                    Speed::Factor(factor) => format!("{factor}× real time"),
                };
                format!("{} file(s), {speed}", files.len())
            }
            SourceKind::Mqtt {
                broker,
                subscription,
            } => format!("{subscription} on {}", broker.describe()),
        };
        let encrypted = if source.input.cipher.is_some() {
            ", decrypting"
        } else {
            ""
        };
        println!(
            "source {} ({}): {what}{encrypted}",
            source.name,
            source.kind.type_name()
        );
    }
    for sink in &config.sinks {
        println!("{}", sink.describe());
    }
    Ok(ExitCode::SUCCESS)
}
