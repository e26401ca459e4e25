//! p1guard's state directory: the pseudonym key and, by default, the SQLite store.

use std::path::PathBuf;

use anyhow::Context as _;

/// systemd's `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/p1guard`, else
/// `~/.local/state/p1guard`.
pub fn dir() -> anyhow::Result<PathBuf> {
    let env = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("STATE_DIRECTORY")
        .or_else(|| env("XDG_STATE_HOME").map(|d| d.join("p1guard")))
        .or_else(|| env("HOME").map(|d| d.join(".local/state/p1guard")))
        .context("no state directory: set STATE_DIRECTORY or HOME, or give paths explicitly")
}
