//! One module per subcommand.

mod parse;
mod replay;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// Runs the chosen subcommand and returns its exit status.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Parse(args) => parse::run(&args),
        Command::Replay(args) => replay::run(&args),
    }
}
