//! `p1guard check-config`: validates a configuration and says what it would run, or lists
//! every problem.

use std::process::ExitCode;

use crate::cli::CheckConfigArgs;
use crate::config::{self, SinkKind, SourceKind};

pub fn run(args: &CheckConfigArgs) -> anyhow::Result<ExitCode> {
    let config = match config::load(&args.config) {
        Ok(config) => config,
        Err(problems) => {
            eprint!("{}: {problems}", args.config.display());
            return Ok(ExitCode::from(2));
        }
    };
    println!("{}: valid", args.config.display());
    println!(
        "consent: {} by default, {} meter(s) listed; billing {:?}",
        config.consent.default_level(),
        config.consent.listed(),
        config.billing,
    );
    for source in &config.sources {
        let what = match &source.kind {
            SourceKind::Serial(serial) => format!(
                "{} at {} baud, {:?} data bits, parity {:?}",
                serial.device.display(),
                serial.baud,
                serial.data_bits,
                serial.parity
            ),
            SourceKind::Tcp { address, .. } => address.clone(),
            SourceKind::Replay { files, speed } => {
                format!("{} file(s), speed {speed:?}", files.len())
            }
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
        let place = match &sink.kind {
            SinkKind::Sqlite {
                path: Some(path), ..
            } => format!(" at {}", path.display()),
            SinkKind::Sqlite { path: None, .. } => " in the state directory".to_owned(),
            SinkKind::Stdout => String::new(),
        };
        println!(
            "sink {} ({}){place}: up to {}, meters named by {:?}",
            sink.name,
            sink.kind.type_name(),
            sink.policy.ceiling(),
            sink.policy.identity(),
        );
    }
    Ok(ExitCode::SUCCESS)
}
