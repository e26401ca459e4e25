//! The pseudonym key file: 64 hex digits, created with mode 0600 on first use so that the same
//! meter keeps the same pseudonym across restarts.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use p1guard_conduct::IdentityKey;

use crate::topology::config::Config;

/// `identity.key` in p1guard's state directory.
pub fn default_path() -> anyhow::Result<PathBuf> {
    Ok(crate::state::dir()?.join("identity.key"))
}

/// The key `config` names (`[identity] key_file`, or the default path), created if missing;
/// but a fleet worker's key must be the fleet's one key, copied there, never a new one:
/// a worker with a key of its own would give every meter a second pseudonym.
pub fn of(config: &Config) -> anyhow::Result<IdentityKey> {
    let path = match &config.identity_key {
        Some(path) => path.clone(),
        None => default_path()?,
    };
    if config.fleet().is_some() && !path.exists() {
        anyhow::bail!(
            "identity key {} is missing: every worker of a fleet needs a copy of the fleet's one key (a new key would name every meter differently)",
            path.display()
        );
    }
    load_or_create(&path)
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
    getrandom::fill(&mut key)
        .map_err(|error| anyhow::anyhow!("no randomness for a new identity key: {error}"))?;
    crate::state::create_parent(path)?;
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
    fn a_fleet_worker_refuses_a_missing_key_and_reads_the_fleet_s_copy() {
        let dir = std::env::temp_dir().join(format!("p1guard-fleet-key-{}", std::process::id()));
        let path = dir.join("identity.key");
        let config = crate::topology::config::parse(
            &format!(
                "[identity]\nkey_file = {path:?}\n\
                 [[sources]]\nname = \"fleet\"\ntype = \"nats\"\nurl = \"nats://127.0.0.1\"\npartitions = 16\n\
                 [[sinks]]\ntype = \"stdout\"\nmax_granularity = \"daily\"\n"
            ),
            Vec::new(),
        )
        .unwrap();
        let refused = of(&config).unwrap_err().to_string();
        assert!(
            refused.contains("needs a copy of the fleet's one key"),
            "{refused}"
        );
        assert!(!path.exists(), "no key of its own was made");

        fs::create_dir_all(&dir).unwrap();
        fs::write(&path, format!("{}\n", "5a".repeat(32))).unwrap();
        assert_eq!(of(&config).unwrap(), IdentityKey::from_bytes([0x5a; 32]));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_malformed_key_is_refused() {
        assert!(parse("abc").is_err());
        assert!(parse(&"g".repeat(64)).is_err());
        assert!(parse(&"0a".repeat(32)).is_ok());
    }
}
