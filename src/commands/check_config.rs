//! `p1guard check-config`: validates a configuration and says what it would run, or lists
//! every problem.

use std::process::ExitCode;

use p1guard_conduct::BillingCadence;

use crate::cli::ConfigArg;
use crate::topology::config;

pub fn run(args: &ConfigArg) -> anyhow::Result<ExitCode> {
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
        "consent: {} by default, {} meter(s) listed, then the registry {}; billing readings {}",
        config.consent.default_level(),
        config.meters_listed,
        config
            .registry
            .as_ref()
            .map_or("in the state directory".into(), |p| p.display().to_string()),
        match config.billing {
            BillingCadence::BiMonthly => "bi-monthly",
            BillingCadence::Monthly => "monthly",
        },
    );
    for source in &config.sources {
        println!("{}", source.describe());
    }
    for sink in &config.sinks {
        println!("{}", sink.describe());
    }
    Ok(ExitCode::SUCCESS)
}
