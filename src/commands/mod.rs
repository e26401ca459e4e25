//! One module per subcommand.

mod check_config;
mod consent;
mod parse;
mod replay;
mod rights;
mod run;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// Whether a command failed only because whoever read its standard output stopped reading
/// (a closed pipe): every command that prints ends there, as Unix tools do.
pub fn reader_gone(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Runs the chosen subcommand and returns its exit status.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Parse(args) => parse::run(&args),
        Command::Replay(args) => replay::run(&args),
        Command::Run(args) => run::run(&args),
        Command::CheckConfig(args) => check_config::run(&args),
        Command::Consent(command) => consent::run(command),
        Command::Erase(args) => rights::erase(&args),
        Command::ReapplyErasures(args) => rights::reapply(&args),
        Command::Export(args) => rights::export(&args),
        Command::Audit(args) => rights::audit(&args),
    }
}
