//! `p1guard replay`: captures through the reducer, records out as JSON lines, exactly as far
//! as consent and the ceiling allow.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use jiff::Timestamp;
use p1guard_conduct::{
    Arrival, BillingCadence, Calendar, MaxGaps, Reducer, ReducerConfig, SinkPolicy, Timeline,
};

use crate::cli::ReplayArgs;
use crate::decode::{self, Deframer};
use crate::identity_key;
use crate::pace::Pacer;
use crate::sources::SourceId;
use crate::telemetry::metrics::{Metrics, per_granularity};
use crate::topology::reduce::FrameReducer;

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
    let reducer = Reducer::new(config, consent, key);
    // One source, as the daemon's reduce task sees a replay source.
    let metrics = Arc::new(Metrics::new(["replay"], []));
    let mut reducer = FrameReducer::new(reducer, metrics, vec![Arrival::Recorded]);
    let options = (&args.input_args).into();
    let mut out = BufWriter::new(io::stdout().lock());
    let mut records = Vec::new();
    let mut pacer = Pacer::new(args.speed);
    let mut errors: BTreeMap<&'static str, u64> = BTreeMap::new();

    for file in &args.files {
        let input = decode::open(file)?;
        let result = Deframer::new(&options).read_to_end(input, |next| {
            let reduced = match next {
                Ok(frame) => {
                    if let Some(delay) = pacer.frame_delay(&frame, Instant::now()) {
                        out.flush()?; // a watcher sees records as they are made
                        std::thread::sleep(delay);
                    }
                    reducer.reduce(SourceId(0), &frame, Timestamp::now(), None, &mut records)
                }
                Err(error) => Err(error),
            };
            if let Err(error) = reduced {
                *errors.entry(error.kind.name()).or_default() += 1;
            }
            for record in records.drain(..) {
                if let Some(admitted) = policy.admit(&record) {
                    admitted.write_json(&mut out)?;
                    out.write_all(b"\n")?;
                }
            }
            Ok(())
        });
        result.with_context(|| format!("reading {}", file.display()))?;
    }
    out.flush()?;

    let reducer = reducer.reducer();
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
