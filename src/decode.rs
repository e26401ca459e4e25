//! Bytes to telegrams, the same way for every command and source: optional DLMS decryption,
//! then framing, CRC check and parsing.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use anyhow::Context as _;
use p1guard_telegram::dlms::{CipherFramer, Decryptor, SMARTY_AUTH_KEY};
use p1guard_telegram::{Error, Frame, Framer, FramerConfig, Parser, Telegram};

/// How a source's bytes are read: line repairs and decryption. The same for the command line
/// and the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InputOptions {
    /// Insert the CR that LF-only captures have lost.
    pub lf_to_crlf: bool,
    /// Clear bit 7 of every byte (7E1 read as 8N1).
    pub clear_bit7: bool,
    /// Decryption, for meters that wrap telegrams in DLMS general-global-cipher.
    pub cipher: Option<CipherKeys>,
}

/// The keys of an encrypting meter.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CipherKeys {
    /// AES-128 key.
    pub key: [u8; 16],
    /// Authentication key mixed into the GCM tag, or `None` if the tag covers no extra data.
    pub auth_key: Option<[u8; 16]>,
}

impl CipherKeys {
    /// `key` with Smarty's public authentication key.
    pub fn smarty(key: [u8; 16]) -> CipherKeys {
        CipherKeys {
            key,
            auth_key: Some(SMARTY_AUTH_KEY),
        }
    }
}

/// Keys are secrets: never printed.
impl std::fmt::Debug for CipherKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CipherKeys([redacted])")
    }
}

/// Opens a capture file, or stdin for `-`.
pub fn open(path: &Path) -> anyhow::Result<Box<dyn Read>> {
    if path == Path::new("-") {
        return Ok(Box::new(io::stdin().lock()));
    }
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Box::new(file))
}

/// Bytes in, frames out; decrypts general-global-cipher frames first if a key is set.
pub struct Deframer {
    cipher: Option<(CipherFramer, Decryptor)>,
    plain: Vec<u8>,
    framer: Framer,
    decrypt_errors: VecDeque<Error>,
}

impl Deframer {
    /// A deframer reading the way `options` say.
    pub fn new(options: &InputOptions) -> Deframer {
        let config = FramerConfig {
            lf_to_crlf: options.lf_to_crlf,
            clear_bit7: options.clear_bit7,
            ..FramerConfig::default()
        };
        Deframer {
            cipher: options
                .cipher
                .map(|keys| (CipherFramer::new(), Decryptor::new(keys.key, keys.auth_key))),
            plain: Vec::new(),
            framer: Framer::new(config),
            decrypt_errors: VecDeque::new(),
        }
    }

    /// Bytes skipped outside any frame so far.
    pub fn discarded_bytes(&self) -> u64 {
        self.framer.discarded_bytes()
    }

    /// Appends a chunk of the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        let Some((cipher_framer, decryptor)) = &mut self.cipher else {
            self.framer.push(chunk);
            return;
        };
        cipher_framer.push(chunk);
        while let Some(next) = cipher_framer.next_frame() {
            self.plain.clear();
            let decrypted =
                next.and_then(|(frame, offset)| decryptor.decrypt(frame, offset, &mut self.plain));
            match decrypted {
                Ok(()) => self.framer.push(&self.plain),
                Err(error) => self.decrypt_errors.push_back(error),
            }
        }
    }

    /// Starts a new stream once everything of the last was taken, keeping the buffers.
    pub fn reset(&mut self) {
        if let Some((cipher_framer, _)) = &mut self.cipher {
            *cipher_framer = CipherFramer::new();
        }
        self.framer.reset();
        self.decrypt_errors.clear();
    }

    /// Marks the end of the stream: a frame cut short is reported as truncated.
    pub fn finish(&mut self) {
        self.framer.finish();
    }

    /// The next frame, or the error of one that failed to frame or decrypt; `None` when more
    /// input is needed.
    pub fn next_frame(&mut self) -> Option<Result<Frame<'_>, Error>> {
        if let Some(error) = self.decrypt_errors.pop_front() {
            return Some(Err(error));
        }
        self.framer.next_frame()
    }

    /// Reads `input` to its end as one stream, handing every frame, or the error of one that
    /// failed to frame or decrypt, to `each`. Returns the number of bytes read.
    pub fn read_to_end(
        &mut self,
        mut input: impl Read,
        mut each: impl FnMut(Result<Frame<'_>, Error>) -> io::Result<()>,
    ) -> io::Result<u64> {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut bytes_read = 0u64;
        loop {
            let n = match input.read(&mut chunk) {
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            bytes_read += n as u64;
            if n == 0 {
                self.finish();
            } else {
                self.push(&chunk[..n]);
            }
            while let Some(frame) = self.next_frame() {
                each(frame)?;
            }
            if n == 0 {
                return Ok(bytes_read);
            }
        }
    }
}

/// Bytes in, parsed telegrams out: a [`Deframer`] and a parser, for the commands that print
/// telegrams as parsed (`p1guard parse`).
pub struct Decoder {
    deframer: Deframer,
    parser: Parser,
}

impl Decoder {
    /// A decoder reading the way `options` say.
    pub fn new(options: &InputOptions) -> Decoder {
        Decoder {
            deframer: Deframer::new(options),
            parser: Parser::new(),
        }
    }

    /// Bytes skipped outside any frame so far.
    pub fn discarded_bytes(&self) -> u64 {
        self.deframer.discarded_bytes()
    }

    /// Reads `input` to its end, handing every framed telegram, or the error of a frame that
    /// failed, to `sink`. Returns the number of bytes read.
    pub fn decode(
        &mut self,
        input: impl Read,
        mut sink: impl FnMut(Result<Telegram<'_>, Error>) -> io::Result<()>,
    ) -> io::Result<u64> {
        let parser = &mut self.parser;
        self.deframer.read_to_end(input, |frame| {
            sink(frame.and_then(|frame| parser.parse(&frame)))
        })
    }
}
