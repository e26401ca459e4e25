//! Bytes to telegrams, the same way for every command and source: optional DLMS decryption,
//! then framing, CRC check and parsing.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use anyhow::Context as _;
use p1guard_telegram::dlms::{CipherFramer, Decryptor, SMARTY_AUTH_KEY};
use p1guard_telegram::{Error, Framer, FramerConfig, Parser, Telegram};

use crate::cli::InputArgs;

/// Opens a capture file, or stdin for `-`.
pub fn open(path: &Path) -> anyhow::Result<Box<dyn Read>> {
    if path == Path::new("-") {
        return Ok(Box::new(io::stdin().lock()));
    }
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Box::new(file))
}

/// Bytes in, parsed telegrams out; decrypts general-global-cipher frames first if a key is set.
pub struct Decoder {
    cipher: Option<(CipherFramer, Decryptor)>,
    plain: Vec<u8>,
    framer: Framer,
    parser: Parser,
    decrypt_errors: Vec<Error>,
}

impl Decoder {
    /// A decoder reading the way the command line says.
    pub fn new(args: &InputArgs) -> Decoder {
        let decryptor = args.key.map(|key| {
            let auth_key = if args.no_auth_key {
                None
            } else {
                Some(args.auth_key.unwrap_or(SMARTY_AUTH_KEY))
            };
            Decryptor::new(key, auth_key)
        });
        let config = FramerConfig {
            lf_to_crlf: args.lf_to_crlf,
            clear_bit7: args.clear_bit7,
            ..FramerConfig::default()
        };
        Decoder {
            cipher: decryptor.map(|d| (CipherFramer::new(), d)),
            plain: Vec::new(),
            framer: Framer::new(config),
            parser: Parser::new(),
            decrypt_errors: Vec::new(),
        }
    }

    /// Bytes skipped outside any frame so far.
    pub fn discarded_bytes(&self) -> u64 {
        self.framer.discarded_bytes()
    }

    fn push(&mut self, chunk: &[u8]) {
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
                Err(error) => self.decrypt_errors.push(error),
            }
        }
    }

    fn drain(
        &mut self,
        sink: &mut impl FnMut(Result<Telegram<'_>, Error>) -> io::Result<()>,
    ) -> io::Result<()> {
        for error in self.decrypt_errors.drain(..) {
            sink(Err(error))?;
        }
        while let Some(frame) = self.framer.next_frame() {
            sink(frame.and_then(|frame| self.parser.parse(&frame)))?;
        }
        Ok(())
    }

    /// Reads `input` to its end, handing every framed telegram, or the error of a frame that
    /// failed, to `sink`. Returns the number of bytes read.
    pub fn decode(
        &mut self,
        mut input: impl Read,
        mut sink: impl FnMut(Result<Telegram<'_>, Error>) -> io::Result<()>,
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
                self.framer.finish();
            } else {
                self.push(&chunk[..n]);
            }
            self.drain(&mut sink)?;
            if n == 0 {
                return Ok(bytes_read);
            }
        }
    }
}
