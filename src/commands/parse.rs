//! `p1guard parse`: frames, checks and parses a capture, printing the JSON contract of
//! architecture.md, or only totals with `--summary`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use p1guard_telegram::json::Outcome;
use p1guard_telegram::{Error, Telegram};

use crate::cli::ParseArgs;
use crate::decode::{self, Decoder};

pub fn run(args: &ParseArgs) -> anyhow::Result<ExitCode> {
    let input = decode::open(&args.input)?;
    let mut decoder = Decoder::new(&(&args.input_args).into());
    let mut report = Report::new(BufWriter::new(io::stdout().lock()), args.summary);
    let started = Instant::now();
    let result = decoder
        .decode(input, |outcome| report.record(outcome))
        .and_then(|bytes| {
            report.finish(
                bytes,
                decoder.discarded_bytes(),
                started.elapsed().as_secs_f64(),
            )
        });
    result.with_context(|| format!("reading {}", args.input.display()))?;
    // A cable at the wrong speed gives only noise: no telegram at all is a failure too.
    if report.frames == 0 {
        eprintln!("p1guard: no telegram found in {}", args.input.display());
    }
    Ok(if report.errors.is_empty() && report.frames > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints each outcome (unless only a summary is wanted) and keeps the totals.
struct Report<W: Write> {
    out: W,
    summary_only: bool,
    frames: u64,
    valid: u64,
    without_crc: u64,
    crc_missing: u64,
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
            crc_missing: 0,
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
                self.crc_missing += u64::from(telegram.crc_missing());
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
            writeln!(out, "CRC missing      {}", self.crc_missing)?;
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
    crate::hex::printable(id).unwrap_or_else(|| id.iter().map(|&b| char::from(b)).collect())
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
