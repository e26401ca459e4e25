//! End-to-end tests of the `p1guard` binary. One test binary, one module per command.

mod parse;
mod replay;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `../shared/captures`: public recordings from other projects, read in place, never copied.
fn captures_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/captures");
    assert!(
        dir.is_dir(),
        "the shared captures are expected beside the repository, at {}",
        dir.display()
    );
    dir
}

/// Runs `p1guard` with `args` and returns what it did.
fn p1guard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_p1guard"))
        .args(args)
        .output()
        .expect("the p1guard binary runs")
}
