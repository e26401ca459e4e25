//! `p1guard parse`: frames, checks and parses a capture, printing the JSON contract of
//! architecture.md, or only totals with `--summary`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use p1guard_telegram::dlms::{CipherFramer, Decryptor, SMARTY_AUTH_KEY};
use p1guard_telegram::json::Outcome;
use p1guard_telegram::{Error, Framer, FramerConfig, Parser, Telegram};

use crate::cli::ParseArgs;

pub fn run(args: &ParseArgs) -> anyhow::Result<ExitCode> {
    let input = open(&args.input)?;
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
    let mut report = Report::new(BufWriter::new(io::stdout().lock()), args.summary);
    match parse_stream(input, Decoder::new(config, decryptor), &mut report) {
        Err(error) if error.kind() == io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        result => result.with_context(|| format!("reading {}", args.input.display()))?,
    }
    Ok(if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn open(path: &Path) -> anyhow::Result<Box<dyn Read>> {
    if path == Path::new("-") {
        return Ok(Box::new(io::stdin().lock()));
    }
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(Box::new(file))
}

fn parse_stream(
    mut input: impl Read,
    mut decoder: Decoder,
    report: &mut Report<impl Write>,
) -> io::Result<()> {
    let started = Instant::now();
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
            decoder.finish();
        } else {
            decoder.push(&chunk[..n]);
        }
        decoder.drain(|outcome| report.record(outcome))?;
        if n == 0 {
            break;
        }
    }
    report.finish(
        bytes_read,
        decoder.framer.discarded_bytes(),
        started.elapsed().as_secs_f64(),
    )
}

/// Bytes in, parsed telegrams out; decrypts general-global-cipher frames first if a key is set.
struct Decoder {
    cipher: Option<(CipherFramer, Decryptor)>,
    plain: Vec<u8>,
    framer: Framer,
    parser: Parser,
    decrypt_errors: Vec<Error>,
}

impl Decoder {
    fn new(config: FramerConfig, decryptor: Option<Decryptor>) -> Decoder {
        Decoder {
            cipher: decryptor.map(|d| (CipherFramer::new(), d)),
            plain: Vec::new(),
            framer: Framer::new(config),
            parser: Parser::new(),
            decrypt_errors: Vec::new(),
        }
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

    fn finish(&mut self) {
        self.framer.finish();
    }

    fn drain(
        &mut self,
        mut sink: impl FnMut(Result<Telegram<'_>, Error>) -> io::Result<()>,
    ) -> io::Result<()> {
        for error in self.decrypt_errors.drain(..) {
            sink(Err(error))?;
        }
        while let Some(frame) = self.framer.next_frame() {
            sink(frame.and_then(|frame| self.parser.parse(&frame)))?;
        }
        Ok(())
    }
}

/// Prints each outcome (unless only a summary is wanted) and keeps the totals.
struct Report<W: Write> {
    out: W,
    summary_only: bool,
    frames: u64,
    valid: u64,
    without_crc: u64,
    errors: BTreeMap<&'static str, u64>,
    meters: BTreeSet<Vec<u8>>,
}

impl<W: Write> Report<W> {
    fn new(out: W, summary_only: bool) -> Self {
        Report {
            out,
            summary_only,
            frames: 0,
            valid: 0,
            without_crc: 0,
            errors: BTreeMap::new(),
            meters: BTreeSet::new(),
        }
    }

    fn record(&mut self, outcome: Result<Telegram<'_>, Error>) -> io::Result<()> {
        self.frames += 1;
        if !self.summary_only {
            serde_json::to_writer(&mut self.out, &Outcome(outcome))?;
            self.out.write_all(b"\n")?;
        }
        match outcome {
            Ok(telegram) => {
                for error in telegram.line_errors() {
                    *self.errors.entry(error.kind.name()).or_default() += 1;
                }
                self.valid += u64::from(telegram.line_errors().is_empty());
                self.without_crc += u64::from(telegram.crc().is_none());
                if let Some(id) = telegram.equipment_id()
                    && !self.meters.contains(id)
                {
                    self.meters.insert(id.to_vec());
                }
            }
            Err(error) => {
                *self.errors.entry(error.kind.name()).or_default() += 1;
            }
        }
        Ok(())
    }

    fn finish(&mut self, bytes: u64, discarded: u64, seconds: f64) -> io::Result<()> {
        if self.summary_only {
            let out = &mut self.out;
            let errors: u64 = self.errors.values().sum();
            let by_kind: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let meters: Vec<String> = self.meters.iter().map(|id| readable_id(id)).collect();
            writeln!(out, "frames           {}", self.frames)?;
            writeln!(out, "valid            {}", self.valid)?;
            writeln!(out, "without CRC      {}", self.without_crc)?;
            writeln!(out, "errors           {errors}{}", detail(&by_kind))?;
            writeln!(out, "discarded bytes  {discarded}")?;
            writeln!(out, "meters           {}{}", meters.len(), detail(&meters))?;
            let rate = |n: u64| n as f64 / seconds.max(1e-9);
            writeln!(
                out,
                "elapsed          {seconds:.3} s  ({:.0} frames/s, {:.1} MB/s)",
                rate(self.frames),
                rate(bytes) / 1e6
            )?;
        }
        self.out.flush()
    }
}

/// `  (a, b)` after a total, or nothing when there is nothing to list.
fn detail(items: &[String]) -> String {
    if items.is_empty() {
        String::new()
    } else {
        format!("  ({})", items.join(", "))
    }
}

/// A meter id for people: Dutch and Belgian meters send ASCII hex-encoded, so decode it when
/// it decodes to printable ASCII, else show it as sent.
fn readable_id(id: &[u8]) -> String {
    let decoded: Option<String> = id
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok().filter(|t| t.len() == 2)?;
            let byte = u8::from_str_radix(text, 16).ok()?;
            (byte.is_ascii_graphic()).then_some(char::from(byte))
        })
        .collect();
    decoded.unwrap_or_else(|| id.iter().map(|&b| char::from(b)).collect())
}

#[cfg(test)]
mod tests {
    use super::readable_id;

    #[test]
    fn ids_are_decoded_when_they_are_hex_ascii() {
        assert_eq!(
            readable_id(b"4B384547303034303436333935353037"),
            "K8EG004046395507"
        );
        assert_eq!(readable_id(b"0272031312565"), "0272031312565");
    }
}
