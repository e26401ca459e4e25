//! `p1guard replay`: captures through the reducer, records out as JSON lines, exactly as far
//! as consent and the ceiling allow.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use jiff::Timestamp;
use p1guard_conduct::{
    BillingCadence, Calendar, Granularity, MaxGaps, Reducer, ReducerConfig, SinkPolicy, Timeline,
};
use p1guard_telegram::Telegram;

use crate::cli::{ReplayArgs, Speed};
use crate::decode::{self, Decoder};
use crate::identity_key;

pub fn run(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let policy = SinkPolicy::new(args.max_granularity, args.identity.into())?;
    let key_path = match &args.identity_key {
        Some(path) => path.clone(),
        None => identity_key::default_path()?,
    };
    let key = identity_key::load_or_create(&key_path)?;
    let consent = Timeline::new(args.consent, args.consent_changes.clone());
    let config = ReducerConfig {
        calendar: Calendar::netherlands(BillingCadence::BiMonthly),
        finest: args.max_granularity,
        max_gaps: MaxGaps::default(),
    };
    let mut reducer = Reducer::new(config, consent, key);
    let mut out = BufWriter::new(io::stdout().lock());
    let mut records = Vec::new();
    let mut pacer = Pacer::new(args.speed);
    let mut errors: BTreeMap<&'static str, u64> = BTreeMap::new();

    for file in &args.files {
        let input = decode::open(file)?;
        let mut decoder = Decoder::new(&(&args.input_args).into());
        let result = decoder.decode(input, |outcome| {
            let telegram = match outcome {
                Ok(telegram) => telegram,
                Err(error) => {
                    *errors.entry(error.kind.name()).or_default() += 1;
                    return Ok(());
                }
            };
            pacer.wait(&telegram, &mut out)?;
            reducer.reduce(&telegram, Timestamp::now(), &mut records);
            for record in records.drain(..) {
                if let Some(admitted) = policy.admit(&record) {
                    serde_json::to_writer(&mut out, &admitted)?;
                    out.write_all(b"\n")?;
                }
            }
            Ok(())
        });
        match result {
            Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {
                return Ok(ExitCode::SUCCESS);
            }
            result => result.with_context(|| format!("reading {}", file.display()))?,
        };
    }
    out.flush()?;

    let counters = reducer.counters();
    let by_granularity = |counts: &[u64; 4]| -> String {
        let named = Granularity::ALL.iter().zip(counts).filter(|(_, n)| **n > 0);
        let listed: Vec<String> = named.map(|(g, n)| format!("{g} {n}")).collect();
        if listed.is_empty() {
            "none".into()
        } else {
            listed.join(", ")
        }
    };
    let errors: Vec<String> = errors
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    eprintln!(
        "p1guard replay: {} telegrams from {} meters; records: {}; withheld by consent: {}; missing: {}; frame errors: {}; out of order: {}",
        counters.telegrams,
        reducer.meter_count(),
        by_granularity(&counters.records),
        by_granularity(&counters.withheld),
        by_granularity(&counters.missing),
        if errors.is_empty() {
            "none".into()
        } else {
            errors.join(", ")
        },
        counters.out_of_order,
    );
    Ok(ExitCode::SUCCESS)
}

/// Spaces telegrams out by their meter times, scaled by the replay speed.
struct Pacer {
    speed: Speed,
    origin: Option<(Timestamp, Instant)>,
}

impl Pacer {
    fn new(speed: Speed) -> Pacer {
        Pacer {
            speed,
            origin: None,
        }
    }

    /// Sleeps until `telegram`'s meter time is due, flushing `out` first so that a watcher
    /// sees records as they are made.
    fn wait(&mut self, telegram: &Telegram<'_>, out: &mut impl Write) -> io::Result<()> {
        let Speed::Factor(factor) = self.speed else {
            return Ok(());
        };
        let Some(at) = telegram.time().and_then(|t| t.utc().ok()) else {
            return Ok(());
        };
        let (start, started) = *self.origin.get_or_insert((at, Instant::now()));
        let meter_seconds = (at.as_second() - start.as_second()).max(0) as f64;
        let due = started + Duration::from_secs_f64(meter_seconds / factor);
        if let Some(delay) = due.checked_duration_since(Instant::now()) {
            out.flush()?;
            std::thread::sleep(delay);
        }
        Ok(())
    }
}
