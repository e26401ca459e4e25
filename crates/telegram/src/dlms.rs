//! DLMS general-global-cipher frames (Luxembourg Smarty, Austrian meters): AES-128-GCM around
//! a plain telegram.
//!
//! Layout: `DB 08 <system title: 8> 82 <length: 2> <security control: 1> <invocation counter:
//! 4> <ciphertext> <tag: 12>`. The nonce is system title ‖ invocation counter; the associated
//! data is security control ‖ authentication key.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::aead::consts::U12;
use aes_gcm::aes::Aes128;
use aes_gcm::{AesGcm, KeyInit, Nonce, Tag};
use memchr::memchr;

use crate::error::{Error, ErrorKind};

/// The authentication key every Smarty meter uses; it is fixed and public.
pub const SMARTY_AUTH_KEY: [u8; 16] = [
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF,
];

const TAG: u8 = 0xDB;
const TITLE_LEN: usize = 8;
const TAG_LEN: usize = 12;
/// Security control and invocation counter, before the ciphertext.
const SC_IC_LEN: usize = 5;
/// Largest encrypted frame accepted: an 8 KiB telegram and its envelope.
const MAX_FRAME_LEN: usize = 8 * 1024 + 64;

type Aes128Gcm12 = AesGcm<Aes128, U12, U12>;

/// Decrypts general-global-cipher frames with one meter's keys.
#[derive(Clone)]
pub struct Decryptor {
    cipher: Aes128Gcm12,
    auth_key: Option<[u8; 16]>,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decryptor { .. }") // never print keys
    }
}

impl Decryptor {
    /// A decryptor with the meter's encryption key and authentication key (`None` for meters
    /// whose tag covers no associated data).
    pub fn new(key: [u8; 16], auth_key: Option<[u8; 16]>) -> Decryptor {
        Decryptor {
            cipher: Aes128Gcm12::new(&key.into()),
            auth_key,
        }
    }

    /// Checks and decrypts one whole `frame` (as [`CipherFramer`] yields it), appending the
    /// plain telegram to `out`. `offset` is the frame's stream offset, for errors.
    pub fn decrypt(&self, frame: &[u8], offset: u64, out: &mut Vec<u8>) -> Result<(), Error> {
        let bad = |kind| Error::new(kind, offset, 0);
        let (header_len, body_len) = envelope(frame).ok_or(bad(ErrorKind::BadCipherFrame))?;
        let body = frame
            .get(header_len..header_len + body_len)
            .filter(|b| b.len() >= SC_IC_LEN + TAG_LEN)
            .ok_or(bad(ErrorKind::BadCipherFrame))?;
        let security_control = body[0];
        let mut nonce = [0u8; 12];
        nonce[..TITLE_LEN].copy_from_slice(&frame[2..2 + TITLE_LEN]);
        nonce[TITLE_LEN..].copy_from_slice(&body[1..SC_IC_LEN]);
        let (ciphertext, tag) = body[SC_IC_LEN..].split_at(body.len() - SC_IC_LEN - TAG_LEN);
        let mut aad = [0u8; 17];
        let aad: &[u8] = match self.auth_key {
            Some(key) => {
                aad[0] = security_control;
                aad[1..].copy_from_slice(&key);
                &aad
            }
            None => &[],
        };
        let start = out.len();
        out.extend_from_slice(ciphertext);
        let result = self.cipher.decrypt_in_place_detached(
            Nonce::<U12>::from_slice(&nonce),
            aad,
            &mut out[start..],
            Tag::<U12>::from_slice(tag),
        );
        if result.is_err() {
            out.truncate(start);
            return Err(bad(ErrorKind::Decryption));
        }
        Ok(())
    }
}

/// Reads the envelope's header: `(header length, length of what follows)`, or `None` if the
/// bytes do not start like a general-global-cipher frame.
fn envelope(frame: &[u8]) -> Option<(usize, usize)> {
    let [TAG, 8, rest @ ..] = frame else {
        return None;
    };
    let length_field = rest.get(TITLE_LEN..)?;
    match *length_field {
        [len @ 0..=0x7F, ..] => Some((2 + TITLE_LEN + 1, usize::from(len))),
        [0x81, len, ..] => Some((2 + TITLE_LEN + 2, usize::from(len))),
        [0x82, hi, lo, ..] => Some((2 + TITLE_LEN + 3, usize::from(u16::from_be_bytes([hi, lo])))),
        _ => None,
    }
}

/// Splits a byte stream into general-global-cipher frames by their length field, resyncing
/// on the next `DB 08` after anything that does not fit.
#[derive(Debug, Default)]
pub struct CipherFramer {
    buf: Vec<u8>,
    pos: usize,
    base: u64,
}

impl CipherFramer {
    /// An empty framer.
    pub fn new() -> CipherFramer {
        CipherFramer::default()
    }

    /// Appends a chunk of the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.drain(..self.pos);
        self.base += self.pos as u64;
        self.pos = 0;
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole frame with its stream offset, a framing error, or `None` when more input
    /// is needed.
    pub fn next_frame(&mut self) -> Option<Result<(&[u8], u64), Error>> {
        loop {
            let Some(skip) = memchr(TAG, &self.buf[self.pos..]) else {
                self.pos = self.buf.len();
                return None;
            };
            let start = self.pos + skip;
            self.pos = start;
            let candidate = &self.buf[start..];
            if candidate.len() < 2 + TITLE_LEN + 3 {
                return None;
            }
            let offset = self.base + start as u64;
            let Some((header_len, body_len)) = envelope(candidate) else {
                self.pos += 1;
                continue;
            };
            let len = header_len + body_len;
            if len > MAX_FRAME_LEN || body_len < SC_IC_LEN + TAG_LEN {
                self.pos += 1;
                return Some(Err(Error::new(ErrorKind::BadCipherFrame, offset, 0)));
            }
            if candidate.len() < len {
                return None;
            }
            self.pos += len;
            return Some(Ok((&self.buf[start..start + len], offset)));
        }
    }
}
