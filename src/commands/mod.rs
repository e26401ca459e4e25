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
        Command::Consent(command) => failed_at_run_time(consent::run(command)),
        Command::Erase(args) => failed_at_run_time(rights::erase(&args)),
        Command::ReapplyErasures(args) => failed_at_run_time(rights::reapply(&args)),
        Command::Export(args) => failed_at_run_time(rights::export(&args)),
        Command::Audit(args) => failed_at_run_time(rights::audit(&args)),
    }
}

/// A consent or rights command that fails once it runs (a store, registry or server that
/// cannot be reached) exits 1, as `run` does: 2 is for a bad argument or configuration,
/// which are found before anything runs, so that a supplier's script knows to retry.
fn failed_at_run_time(result: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    match result {
        Err(error) if !reader_gone(&error) => {
            eprintln!("p1guard: {error:#}");
            Ok(ExitCode::FAILURE)
        }
        result => result,
    }
}
