//! Secrets (decryption keys, later passwords and tokens): read from a file or an environment
//! variable, never written in the configuration itself, never printed.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// Where a secret is kept: `{ file = "/etc/p1guard/key" }` or `{ env = "P1_KEY" }`.
#[derive(Debug)]
pub struct SecretRef {
    file: Option<PathBuf>,
    env: Option<String>,
}

/// The table form of [`SecretRef`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretTable {
    file: Option<PathBuf>,
    env: Option<String>,
}

/// Anything but the table form (such as the key itself, written inline) fails with a fixed
/// message: serde's own would quote the value, and the value may be the secret.
impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<SecretRef, D::Error> {
        let value = toml::Value::deserialize(deserializer)?;
        let table: Option<SecretTable> = match value {
            toml::Value::Table(_) => value.try_into().ok(),
            _ => None,
        };
        let table = table.ok_or_else(|| serde::de::Error::custom(SHAPE))?;
        Ok(SecretRef {
            file: table.file,
            env: table.env,
        })
    }
}

/// What a secret looks like in the configuration.
const SHAPE: &str =
    "a secret is `{ file = \"...\" }` or `{ env = \"...\" }`, never the value itself";

/// A secret's text. Its `Debug` says `[redacted]`, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl SecretRef {
    /// Reads the secret, trimmed of surrounding whitespace. Errors name where it was looked
    /// for, never what was found.
    pub fn resolve(&self) -> Result<Secret, String> {
        let text = match (&self.file, &self.env) {
            (Some(path), None) => read_limited(path)
                .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?,
            (None, Some(name)) => std::env::var(name)
                .map_err(|_| format!("environment variable {name} is not set"))?,
            _ => return Err(SHAPE.into()),
        };
        Ok(Secret(text.trim().to_owned()))
    }
}

/// The largest secret file read: keys, passwords and tokens are short, and
/// `{ file = "/dev/zero" }` must not exhaust memory.
const SECRET_FILE_LIMIT: u64 = 64 * 1024;

fn read_limited(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(SECRET_FILE_LIMIT + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > SECRET_FILE_LIMIT {
        return Err(std::io::Error::other(format!(
            "larger than {} KiB: not a key, password or token",
            SECRET_FILE_LIMIT / 1024
        )));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_file_is_read_only_up_to_a_limit() {
        let endless = SecretRef {
            file: Some("/dev/zero".into()),
            env: None,
        };
        let error = endless.resolve().unwrap_err();
        assert!(error.contains("larger than 64 KiB"), "{error}");
    }

    #[test]
    fn a_secret_is_never_printed() {
        let secret = Secret("00112233445566778899AABBCCDDEEFF".into());
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
    }

    #[test]
    fn a_secret_written_inline_is_refused_without_being_repeated() {
        let value = toml::Value::String("00112233445566778899AABBCCDDEEFF".into());
        let error = value.try_into::<SecretRef>().unwrap_err().to_string();
        assert!(error.contains("never the value itself"), "{error}");
        assert!(!error.contains("0011223344"), "{error}");
    }

    #[test]
    fn a_secret_comes_from_exactly_one_place() {
        let both = SecretRef {
            file: Some("/nonexistent".into()),
            env: Some("HOME".into()),
        };
        assert!(both.resolve().is_err());
        let missing = SecretRef {
            file: None,
            env: Some("P1GUARD_TEST_SURELY_UNSET".into()),
        };
        assert_eq!(
            missing.resolve(),
            Err("environment variable P1GUARD_TEST_SURELY_UNSET is not set".into())
        );
    }
}
