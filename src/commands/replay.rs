//! `p1guard replay`: captures through the reducer, records out as JSON lines, exactly as far
//! as consent and the ceiling allow.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use jiff::Timestamp;
use p1guard_conduct::{
    Arrival, BillingCadence, Calendar, MaxGaps, Reducer, ReducerConfig, SinkPolicy, Timeline,
};

use crate::cli::ReplayArgs;
use crate::decode::{self, Decoder};
use crate::identity_key;
use crate::metrics::per_granularity;
use crate::pace::Pacer;

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
            let due = telegram.time().and_then(|t| t.utc().ok());
            if let Some(delay) = due.and_then(|at| pacer.delay(at, Instant::now())) {
                out.flush()?; // a watcher sees records as they are made
                std::thread::sleep(delay);
            }
            reducer.reduce(&telegram, Arrival::Recorded(Timestamp::now()), &mut records);
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
    let errors: Vec<String> = errors
        .iter()
        .map(|(kind, n)| format!("{kind} {n}"))
        .collect();
    eprintln!(
        "p1guard replay: {} telegrams from {} meters; records: {}; withheld by consent: {}; missing: {}; frame errors: {}; out of order: {}",
        counters.telegrams,
        reducer.meter_count(),
        per_granularity(&counters.records),
        per_granularity(&counters.withheld),
        per_granularity(&counters.missing),
        if errors.is_empty() {
            "none".into()
        } else {
            errors.join(", ")
        },
        counters.out_of_order,
    );
    Ok(ExitCode::SUCCESS)
}
