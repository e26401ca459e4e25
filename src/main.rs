//! p1guard: reads DSMR smart-meter P1 telegrams and passes them on only as finely as the
//! meter's owner consented to.

mod backoff;
mod broker;
mod cli;
mod commands;
mod config;
mod decode;
mod hex;
mod identity_key;
mod log_limit;
mod metrics;
mod metrics_server;
mod pace;
mod pipeline;
mod sinks;
mod sources;
mod state;
mod systemd;

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("p1guard: {error:#}");
            ExitCode::from(2)
        }
    }
}
