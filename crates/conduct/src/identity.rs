//! Who a record is about. A pseudonym is the first 32 hex digits of HMAC-SHA256(key,
//! equipment id): it protects, it does not anonymise, so it is still personal data.

use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// An equipment id as the code of conduct knows it: surrounding whitespace trimmed and ASCII
/// letters upper-cased (Dutch ids are hex, and `4b38` is `4B38`), written into `out`. `None`
/// for an empty id or one with control bytes: such a telegram has no meter to attribute it to.
/// Consent lookups and pseudonyms see only normalised ids: one meter, one identity.
pub fn normalise_equipment_id<'a>(sent: &[u8], out: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    let id = sent.trim_ascii();
    if id.is_empty() || id.iter().any(u8::is_ascii_control) {
        return None;
    }
    out.clear();
    out.extend(id.iter().map(u8::to_ascii_uppercase));
    Some(out)
}

/// The secret behind pseudonyms. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityKey([u8; 32]);

impl IdentityKey {
    /// A key from its 32 bytes (the key file's content).
    pub fn from_bytes(bytes: [u8; 32]) -> IdentityKey {
        IdentityKey(bytes)
    }

    /// The pseudonym of the equipment id `raw`.
    pub fn pseudonym(&self, raw: &[u8]) -> Pseudonym {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(raw);
        let digest = mac.finalize().into_bytes();
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        Pseudonym(first)
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentityKey(<redacted>)")
    }
}

/// 128 bits of HMAC: shown as 32 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pseudonym([u8; 16]);

impl Pseudonym {
    /// Its 16 bytes, for the storage form.
    pub(crate) fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    /// The pseudonym of these 16 bytes, as stored.
    pub(crate) fn from_bytes(bytes: [u8; 16]) -> Pseudonym {
        Pseudonym(bytes)
    }
}

impl fmt::Display for Pseudonym {
    /// 32 lower-case hex digits, written at once: every record a sink receives carries one,
    /// and a JSON writer escapes each piece it is handed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 32];
        for (pair, byte) in hex.chunks_exact_mut(2).zip(self.0) {
            pair[0] = DIGITS[usize::from(byte >> 4)];
            pair[1] = DIGITS[usize::from(byte & 0xF)];
        }
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

/// How a sink names meters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Identity {
    /// The equipment id as the meter sends it: only for the owner's own (`live`) sinks.
    Raw,
    /// The HMAC pseudonym.
    Pseudonym,
}

/// A meter as records refer to it: its raw id and its pseudonym, computed once per meter.
/// `{:?}` shows the pseudonym only, so no log line or panic message can carry the raw id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MeterRef {
    raw: Arc<[u8]>,
    pseudonym: Pseudonym,
}

impl MeterRef {
    /// The meter `raw`, sharing the reducer's copy of the id. Public so that stores can
    /// test with records of their own; the raw id still only leaves through a policy.
    pub fn new(raw: Arc<[u8]>, key: &IdentityKey) -> MeterRef {
        let pseudonym = key.pseudonym(&raw);
        MeterRef { raw, pseudonym }
    }

    /// The equipment id as sent. Crate-private: outside, only a sink whose policy allows raw
    /// identity sees it, as a [`MeterName::Raw`](crate::MeterName::Raw).
    pub(crate) fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The raw id's shared copy, for a name on an owner's sink.
    pub(crate) fn raw_shared(&self) -> &Arc<[u8]> {
        &self.raw
    }

    /// The pseudonym.
    pub fn pseudonym(&self) -> Pseudonym {
        self.pseudonym
    }
}

impl fmt::Debug for MeterRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeterRef({})", self.pseudonym)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_meter_ref_debugs_as_its_pseudonym_only() {
        let key = IdentityKey::from_bytes([3; 32]);
        let raw: Arc<[u8]> = Arc::from(&b"4530303731303034323130393837363534"[..]);
        let meter = MeterRef::new(raw, &key);
        let shown = format!("{meter:?}");
        assert_eq!(shown, format!("MeterRef({})", meter.pseudonym()));
        assert!(!shown.contains("4530"));
    }

    #[test]
    fn pseudonyms_are_keyed_and_32_hex_digits() {
        let a = IdentityKey::from_bytes([1; 32]);
        let b = IdentityKey::from_bytes([2; 32]);
        let id = b"4530303731303034323130393837363534";
        assert_eq!(a.pseudonym(id).to_string().len(), 32);
        assert_eq!(a.pseudonym(id), a.pseudonym(id));
        assert_ne!(a.pseudonym(id), b.pseudonym(id));
        assert_eq!(format!("{a:?}"), "IdentityKey(<redacted>)");
    }

    #[test]
    fn ids_are_trimmed_and_upper_cased_and_control_bytes_refused() {
        let mut out = Vec::new();
        let normalised = normalise_equipment_id(b" 4b38a5\t", &mut out).map(<[u8]>::to_vec);
        assert_eq!(normalised.as_deref(), Some(&b"4B38A5"[..]));
        assert_eq!(normalise_equipment_id(b"4B38\x0045", &mut out), None);
        assert_eq!(normalise_equipment_id(b"4B38\x1b[2J", &mut out), None);
        assert_eq!(normalise_equipment_id(b"   ", &mut out), None);
    }

    #[test]
    fn matches_hmac_sha256_test_vector() {
        // RFC 4231 test case 2 uses a 4-byte key; here the same MAC with a 32-byte key of
        // "Jefe" padded by zeros is identical, since HMAC zero-pads short keys.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let p = IdentityKey::from_bytes(key).pseudonym(b"what do ya want for nothing?");
        assert_eq!(p.to_string(), "5bdcc146bf60754e6a042426089575c7");
    }
}
