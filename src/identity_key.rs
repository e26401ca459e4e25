//! The pseudonym key file: 64 hex digits, created with mode 0600 on first use so that the same
//! meter keeps the same pseudonym across restarts.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use p1guard_conduct::IdentityKey;

/// `identity.key` in p1guard's state directory.
pub fn default_path() -> anyhow::Result<PathBuf> {
    Ok(crate::state::dir()?.join("identity.key"))
}

/// Reads the key at `path`, or creates it (mode 0600) from the system's random source.
pub fn load_or_create(path: &Path) -> anyhow::Result<IdentityKey> {
    match fs::read_to_string(path) {
        Ok(text) => parse(text.trim()).with_context(|| format!("identity key {}", path.display())),
        Err(error) if error.kind() == ErrorKind::NotFound => create(path),
        Err(error) => {
            Err(error).with_context(|| format!("cannot read identity key {}", path.display()))
        }
    }
}

fn parse(text: &str) -> anyhow::Result<IdentityKey> {
    let key = crate::hex::decode(text).context("expected 64 hex digits")?;
    Ok(IdentityKey::from_bytes(key))
}

fn create(path: &Path) -> anyhow::Result<IdentityKey> {
    let mut key = [0u8; 32];
    fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut key))
        .context("cannot read /dev/urandom for a new identity key")?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| writeln!(file, "{hex}"))
        .with_context(|| format!("cannot create identity key {}", path.display()))?;
    Ok(IdentityKey::from_bytes(key))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_missing_key_is_created_private_and_then_reused() {
        let dir = std::env::temp_dir().join(format!("p1guard-key-test-{}", std::process::id()));
        let path = dir.join("nested/identity.key");
        let created = load_or_create(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_or_create(&path).unwrap(), created);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_malformed_key_is_refused() {
        assert!(parse("abc").is_err());
        assert!(parse(&"g".repeat(64)).is_err());
        assert!(parse(&"0a".repeat(32)).is_ok());
    }
}
