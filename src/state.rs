//! p1guard's state: where it lives by default (the pseudonym key, the consent registry, the
//! outbox, the SQLite store), and how its files are made. They hold meter ids and readings,
//! so a folder p1guard creates is its user's only (0700), and so is a file (0600).

use std::fs::{DirBuilder, Permissions};
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rusqlite::Connection;

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

/// Creates the folder holding `path`, and the folders above it, where they are missing: the
/// user's only.
pub fn create_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

/// Opens the SQLite file at `path` in WAL mode, creating it (the user's only) and its folder
/// if need be. SQLite gives the WAL and shared-memory files the database file's mode.
pub fn open_sqlite(path: &Path) -> anyhow::Result<Connection> {
    create_parent(path)?;
    let new = !path.exists();
    let connection = Connection::open(path).map_err(|error| cannot_open(path, error))?;
    if new {
        std::fs::set_permissions(path, Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
    }
    connection
        .pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
        .map_err(|error| cannot_open(path, error))?;
    Ok(connection)
}

/// SQLite's error opening `path`, with the system's reason where it has one.
fn cannot_open(path: &Path, error: rusqlite::Error) -> anyhow::Error {
    let error = anyhow::Error::from(error);
    match os_error(path) {
        Some(os) => error.context(format!("cannot open {}: {os}", path.display())),
        None => error.context(format!("cannot open {}", path.display())),
    }
}

/// Why the system would not let `path`, or the WAL file SQLite keeps beside it, be opened
/// for writing: SQLite says only "unable to open database file" (a folder left to root by
/// one `sudo p1guard run` says "Permission denied" here).
fn os_error(path: &Path) -> Option<std::io::Error> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    [path, Path::new(&wal)].into_iter().find_map(|file| {
        let exists = file.exists();
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(!exists)
            .truncate(false)
            .open(file)
        {
            Ok(_) => {
                if !exists {
                    let _ = std::fs::remove_file(file);
                }
                None
            }
            Err(error) => Some(error),
        }
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn a_folder_p1guard_may_not_write_is_named_with_the_systems_reason() {
        let root = std::env::temp_dir().join(format!("p1guard-readonly-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, Permissions::from_mode(0o500)).unwrap();
        let path = root.join("outbox.sqlite");
        // Root may write anywhere: the folder is then read-only by a file standing in its way.
        let blocked = if std::fs::write(root.join("probe"), b"").is_ok() {
            std::fs::remove_file(root.join("probe")).unwrap();
            std::fs::set_permissions(&root, Permissions::from_mode(0o700)).unwrap();
            std::fs::create_dir(&path).unwrap();
            "Is a directory"
        } else {
            "Permission denied"
        };
        let error = format!("{:#}", open_sqlite(&path).err().unwrap());
        std::fs::set_permissions(&root, Permissions::from_mode(0o700)).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        assert!(error.contains(blocked), "{error}");
        assert!(error.contains("outbox.sqlite"), "{error}");
    }

    #[test]
    fn what_p1guard_creates_is_its_users_only_and_what_exists_is_left_as_it_is() {
        let root = std::env::temp_dir().join(format!("p1guard-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, Permissions::from_mode(0o755)).unwrap();
        let path = root.join("new/deeper/store.sqlite");
        let connection = open_sqlite(&path).unwrap();
        connection
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&root.join("new")), 0o700);
        assert_eq!(mode(&root.join("new/deeper")), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&root.join("new/deeper/store.sqlite-wal")), 0o600);
        assert_eq!(
            mode(&root),
            0o755,
            "an existing folder is the user's to set"
        );
        drop(connection);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
