//! `p1guard erase|reapply-erasures|export|audit`: the data subject's rights over every
//! configured store.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use p1guard_conduct::{IdentityKey, Level, Quantity};
use serde_json::{Value, json};

use crate::cli::{ConfigArg, EraseArgs, ErasedTo, ExportArgs, ExportFormat};
use crate::fleet::consent::ConsentStream;
use crate::registry::{EVERY_PURPOSE, Event, EventSource, NewEvent, Registry};
use crate::rights::{self, MeterForms, Subject, add_alias};
use crate::topology::config::{self, Config};

/// What every rights command works with: the configuration, the pseudonym key and the
/// registry.
pub struct Setting {
    pub config: Config,
    pub key: IdentityKey,
    pub registry: Registry,
}

impl Setting {
    /// `None` (after saying why) when the configuration is invalid: exit status 2.
    pub fn open(path: &Path) -> anyhow::Result<Option<Setting>> {
        let config = match config::load(path) {
            Ok(config) => config,
            Err(problems) => {
                eprint!("p1guard: {}: {problems}", path.display());
                return Ok(None);
            }
        };
        let key = crate::identity_key::of(&config)?;
        let registry = Registry::open(&Registry::path(config.registry.as_ref())?)?;
        let mut setting = Setting {
            config,
            key,
            registry,
        };
        if let Some(fleet) = setting.config.fleet().cloned() {
            let caught_up = runtime()?.block_on(async {
                let stream = ConsentStream::open(&fleet).await?;
                stream.catch_up(&mut setting.registry).await
            });
            if let Err(error) = caught_up {
                eprintln!(
                    "p1guard: cannot read the fleet's consent stream ({error:#}): this registry may lack events recorded for the fleet"
                );
            }
        }
        Ok(Some(setting))
    }

    /// Records `events` at `now`: in the registry, or for a fleet in the fleet's consent
    /// stream, which this registry then takes in like every worker's. The last event's
    /// `seq` in this registry.
    pub fn record(&mut self, events: &[NewEvent], now: jiff::Timestamp) -> anyhow::Result<i64> {
        let Some(fleet) = self.config.fleet().cloned() else {
            return self.registry.append(events, now);
        };
        let registry = &mut self.registry;
        runtime()?.block_on(async {
            let stream = ConsentStream::open(&fleet).await?;
            stream.publish(events, now).await?;
            stream.catch_up(registry).await
        })?;
        registry.last_seq()
    }

    /// The registry's events for every form of `meter`, oldest first.
    pub fn history(&self, meter: &MeterForms) -> anyhow::Result<Vec<Event>> {
        let mut events = Vec::new();
        for form in meter.all() {
            events.extend(self.registry.history(form)?);
        }
        events.sort_by_key(|event| event.seq);
        Ok(events)
    }

    /// Whether a sink serves `purpose` (`*`: any).
    pub fn serves(&self, purpose: &str) -> bool {
        purpose == EVERY_PURPOSE || self.config.sinks.iter().any(|s| s.purpose == purpose)
    }
}

/// The commands' runtime: one thread, they wait on one store at a time.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

pub fn erase(args: &EraseArgs) -> anyhow::Result<ExitCode> {
    let Some(mut setting) = Setting::open(&args.meter.config.config)? else {
        return Ok(ExitCode::from(2));
    };
    let now = crate::rights::now();
    let meter = &args.meter.meter;
    let subjects = Subject::each(meter, &setting.key);
    let level = match args.to {
        ErasedTo::Billing => Level::Billing,
        ErasedTo::None => Level::None,
    };
    let known = !setting.history(meter)?.is_empty();
    // Nothing new accumulates: the level goes down for every purpose first.
    let events = meter.each_form(NewEvent {
        meter: meter.shown().to_owned(),
        level,
        purpose: EVERY_PURPOSE.to_owned(),
        effective_from: now,
        reference: args.reference.clone(),
        source: EventSource::Cli,
        erasure: true,
    });
    setting.record(&events, now)?;
    let runtime = runtime()?;
    // What each form's erasure did, for its ledger entry; the answer adds them up.
    let each: Vec<Vec<rights::StoreAnswer>> = (subjects.iter())
        .map(|subject| {
            runtime.block_on(rights::erase(
                &setting.config.sinks,
                &setting.key,
                subject,
                now,
                now,
            ))
        })
        .collect();
    let mut stores = each[0].clone();
    for also in &each[1..] {
        for (store, also) in stores.iter_mut().zip(also.iter().cloned()) {
            store.add(also);
        }
    }
    let failed = stores.iter().any(|store| store.failed.is_some());
    let held = |store: &rights::StoreAnswer| store.purged.erased + store.purged.kept > 0;
    if !known && !failed && !stores.iter().any(held) {
        eprintln!(
            "p1guard: no store held a record of this meter and the registry had no event for \
             it: recorded as asked, but check that the id is the meter's"
        );
    }
    let mut answer = json!({
        "meter": subjects[0].pseudonym,
        "requested_at": now,
        "reference": args.reference,
        "stores": stores,
        "consent": {"level": level, "purpose": EVERY_PURPOSE, "from": now},
    });
    add_alias(&mut answer, &subjects);
    // One ledger entry per form, with what was erased of it, so that `reapply-erasures`
    // erases each again.
    let mut entries = Vec::new();
    for (subject, stores) in subjects.iter().zip(&each) {
        entries.push(setting.registry.record_erasure(
            &subject.pseudonym,
            now,
            args.reference.as_deref(),
            &serde_json::to_value(stores)?,
        )?);
    }
    answer["ledger_entry"] = entries[0].into();
    if let Some(alias) = entries.get(1) {
        answer["alias_ledger_entry"] = (*alias).into();
    }
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(erased(failed))
}

/// Exit 0 when every store was erased; 1 when one failed (its answer says why, and
/// `reapply-erasures` finishes the erasure from the ledger once the store is back).
fn erased(failed: bool) -> ExitCode {
    if failed {
        eprintln!(
            "p1guard: a store could not be erased (see \"failed\"); run reapply-erasures once it is back"
        );
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

pub fn reapply(args: &ConfigArg) -> anyhow::Result<ExitCode> {
    let Some(setting) = Setting::open(&args.config)? else {
        return Ok(ExitCode::from(2));
    };
    let now = crate::rights::now();
    let runtime = runtime()?;
    let mut failed = false;
    for erasure in setting.registry.erasures(None)? {
        let subject = Subject {
            id: None,
            pseudonym: erasure.pseudonym.clone(),
        };
        let stores = runtime.block_on(rights::erase(
            &setting.config.sinks,
            &setting.key,
            &subject,
            erasure.requested_at,
            now,
        ));
        failed |= stores.iter().any(|store| store.failed.is_some());
        let line = json!({
            "ledger_entry": erasure.seq,
            "meter": erasure.pseudonym,
            "requested_at": erasure.requested_at,
            "stores": stores,
        });
        println!("{line}");
    }
    if setting.config.purge_on_withdrawal {
        let consent = setting.config.consent.clone();
        setting.registry.load_into(&consent, 0)?;
        let changes = setting.registry.consent_instants()?;
        let stores = runtime.block_on(rights::reapply_withdrawals(
            &setting.config.sinks,
            &setting.key,
            &consent,
            &changes,
            now,
        ));
        failed |= stores.iter().any(|store| store.failed.is_some());
        let line = json!({ "lowered_consent": { "meters": changes.len(), "stores": stores } });
        println!("{line}");
    }
    Ok(erased(failed))
}

pub fn export(args: &ExportArgs) -> anyhow::Result<ExitCode> {
    let Some(setting) = Setting::open(&args.meter.config.config)? else {
        return Ok(ExitCode::from(2));
    };
    let meter = &args.meter.meter;
    let subjects = Subject::each(meter, &setting.key);
    let records = runtime()?.block_on(rights::records_of(
        &setting.config.sinks,
        &setting.key,
        &subjects,
    ))?;
    let mut out: Box<dyn std::io::Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    match args.format {
        ExportFormat::Json => {
            let mut erasures = Vec::new();
            for subject in &subjects {
                erasures.extend(setting.registry.erasures(Some(&subject.pseudonym))?);
            }
            erasures.sort_by_key(|erasure| erasure.seq);
            let mut export = json!({
                "meter": subjects[0].pseudonym,
                "records": records,
                "consent": setting.history(meter)?,
                "erasures": erasures,
            });
            add_alias(&mut export, &subjects);
            serde_json::to_writer(&mut out, &export)?;
            writeln!(out)?;
        }
        ExportFormat::Csv => write_csv(&mut out, &records)?,
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// One row per record: its identity columns, then one column per value any record has, in
/// the record JSON's order.
fn write_csv(out: &mut dyn std::io::Write, records: &[Value]) -> anyhow::Result<()> {
    let mut present: Vec<&str> = Quantity::ALL
        .iter()
        .map(|q| q.name())
        .filter(|name| records.iter().any(|r| r["values"].get(name).is_some()))
        .collect();
    present.dedup(); // gas and water both read volume_m3
    let mut writer = csv::Writer::from_writer(out);
    let fixed = ["meter", "granularity", "kind", "time", "quality", "clock"];
    writer.write_record(fixed.iter().chain(&present))?;
    for record in records {
        let text = |value: &Value| match value {
            Value::String(text) => text.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        let mut row: Vec<String> = fixed[..5].iter().map(|f| text(&record[f])).collect();
        row.push(record.get("clock").map_or("meter".into(), text));
        row.extend(present.iter().map(|name| text(&record["values"][name])));
        writer.write_record(&row)?;
    }
    writer.flush()?;
    Ok(())
}

pub fn audit(args: &ConfigArg) -> anyhow::Result<ExitCode> {
    let Some(setting) = Setting::open(&args.config)? else {
        return Ok(ExitCode::from(2));
    };
    let consent = setting.config.consent.clone();
    setting.registry.load_into(&consent, 0)?;
    let mut meters = setting.registry.meters()?;
    meters.extend(setting.config.listed_meters.iter().cloned());
    let erasures = setting.registry.erasures(None)?;
    let changes = setting.registry.consent_instants()?;
    let registered = rights::Registered {
        consent: &consent,
        meters: &meters,
        erasures: &erasures,
        consent_changes: setting.config.purge_on_withdrawal.then_some(&changes),
    };
    let (violations, checked) = runtime()?.block_on(rights::audit(
        &setting.config.sinks,
        &setting.key,
        &registered,
        crate::rights::now(),
    ))?;
    let mut out = std::io::stdout().lock();
    for violation in &violations {
        writeln!(out, "{}", serde_json::to_string(violation)?)?;
    }
    let summary = json!({
        "clean": violations.is_empty(),
        "violations": violations.len(),
        "stores": checked,
    });
    writeln!(out, "{summary}")?;
    Ok(if violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
