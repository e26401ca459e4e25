//! p1guard: reads DSMR smart-meter P1 telegrams and passes them on only as finely as the
//! meter's owner consented to. The daemon and commands are the library `p1guard`.

use std::process::ExitCode;

use clap::Parser as _;
use p1guard::{cli, commands};

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        // `p1guard export ... | head`: the reader has what it wanted.
        Err(error) if commands::reader_gone(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("p1guard: {error:#}");
            ExitCode::from(2)
        }
    }
}
