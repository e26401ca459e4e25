//! `p1guard consent grant|withdraw|history|import`: the consent registry by hand. A grant or
//! withdrawal in force at once also erases, in the stores serving its purpose, the records
//! the new level no longer allows (`purge_on_withdrawal`); one effective later is left to the
//! running daemon, which purges at its instant.

use std::process::ExitCode;

use anyhow::Context as _;
use jiff::Timestamp;
use p1guard_conduct::Level;

use super::rights::{Setting, runtime};
use crate::cli::{ConsentCommand, GrantArgs, ImportArgs, MeterArgs, WithdrawArgs};
use crate::registry::{EventSource, NewEvent};
use crate::rights::{Subject, Withdrawal, add_alias, meter_forms, purge_withdrawn, purpose_name};

pub fn run(command: ConsentCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConsentCommand::Grant(GrantArgs {
            meter,
            level,
            purpose,
            from,
            reference,
        }) => record(&meter, level, purpose, from, reference),
        ConsentCommand::Withdraw(WithdrawArgs {
            meter,
            to,
            purpose,
            from,
            reference,
        }) => record(&meter, to, purpose, from, reference),
        ConsentCommand::History(args) => history(&args),
        ConsentCommand::Import(args) => import(&args),
    }
}

/// Records one event and purges what it no longer allows.
fn record(
    args: &MeterArgs,
    level: Level,
    purpose: String,
    from: Option<Timestamp>,
    reference: Option<String>,
) -> anyhow::Result<ExitCode> {
    let Some(mut setting) = Setting::open(&args.config.config)? else {
        return Ok(ExitCode::from(2));
    };
    let now = crate::rights::now();
    let effective_from = from.unwrap_or(now);
    let events = args.meter.each_form(NewEvent {
        meter: args.meter.shown().to_owned(),
        level,
        purpose: purpose.clone(),
        effective_from,
        reference,
        source: EventSource::Cli,
        erasure: false,
    });
    let seq = setting.record(&events, now)?;
    if !setting.serves(&purpose) {
        eprintln!(
            "p1guard: no sink serves purpose {purpose:?}: recorded, but it opens no destination"
        );
    }
    let subjects = Subject::each(&args.meter, &setting.key);
    let mut answer = serde_json::json!({
        "recorded": seq,
        "meter": subjects[0].pseudonym,
        "level": level,
        "purpose": purpose,
        "effective_from": effective_from,
    });
    add_alias(&mut answer, &subjects);
    if setting.config.purge_on_withdrawal && effective_from <= now {
        let withdrawals: Vec<Withdrawal> = (subjects.into_iter())
            .map(|subject| Withdrawal {
                subject,
                purpose: purpose.clone(),
                level,
                from: effective_from,
            })
            .collect();
        // What it purges ends where a later event allows it again: the table holds them all.
        let table = setting.config.consent.clone();
        setting.registry.load_into(&table, 0)?;
        let purged = runtime()?.block_on(purge_withdrawn(
            &setting.config.sinks,
            &setting.key,
            &table,
            &withdrawals,
            now,
        ))?;
        answer["purged"] = serde_json::to_value(purged)?;
    } else if setting.config.purge_on_withdrawal {
        answer["purge"] = "at its effective instant, by the running daemon".into();
    }
    println!("{answer}");
    Ok(ExitCode::SUCCESS)
}

fn history(args: &MeterArgs) -> anyhow::Result<ExitCode> {
    let Some(setting) = Setting::open(&args.config.config)? else {
        return Ok(ExitCode::from(2));
    };
    for event in setting.history(&args.meter)? {
        println!("{}", serde_json::to_string(&event)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// How many bad rows `consent import` lists; the rest it counts.
const BAD_ROWS_SHOWN: usize = 20;

/// The line a record of `text` is on. The csv reader dates a record from where it began
/// reading it, so a record after blank lines (a spreadsheet's export) is dated at the first
/// of them.
fn record_line(text: &[u8], position: &csv::Position) -> u64 {
    let from = usize::try_from(position.byte()).unwrap_or(usize::MAX);
    let blank = text.get(from..).unwrap_or_default();
    let blank = blank.iter().take_while(|&&b| b == b'\r' || b == b'\n');
    position.line() + blank.filter(|&&b| b == b'\n').count() as u64
}

/// Reads every row first: a file with a bad row records nothing, and says which rows are bad
/// (by line) and why.
fn import(args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let Some(mut setting) = Setting::open(&args.config.config)? else {
        return Ok(ExitCode::from(2));
    };
    let text = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_slice());
    let mut events = Vec::new();
    let mut problems = Vec::new();
    let mut bytes = csv::ByteRecord::new();
    while reader
        .read_byte_record(&mut bytes)
        .with_context(|| format!("cannot read {}", args.file.display()))?
    {
        let line = bytes.position().map_or(0, |p| record_line(&text, p));
        // A row that is not UTF-8 is a bad row like any other, not the end of the file.
        let row = match csv::StringRecord::from_byte_record(std::mem::take(&mut bytes)) {
            Ok(row) => row,
            Err(error) => {
                let field = error.utf8_error().field() + 1;
                problems.push(format!("line {line}: field {field} is not UTF-8"));
                continue;
            }
        };
        if line == 1 && row.get(0).is_some_and(|f| f.eq_ignore_ascii_case("meter")) {
            continue; // the header
        }
        match events_of(&row) {
            Ok(row_events) => events.extend(row_events),
            Err(problem) => problems.push(format!("line {line}: {problem}")),
        }
        bytes = row.into_byte_record();
    }
    if !problems.is_empty() {
        let shown = problems.len().min(BAD_ROWS_SHOWN);
        let more = match problems.len() - shown {
            0 => String::new(),
            more => format!("\n  ... and {more} more"),
        };
        eprintln!(
            "p1guard: {}: {} bad row(s), nothing recorded:\n  {}{more}",
            args.file.display(),
            problems.len(),
            problems[..shown].join("\n  ")
        );
        return Ok(ExitCode::FAILURE);
    }
    // A row the registry already holds (an import run again, a row twice in the file) is
    // not recorded again: the registry is append-only, and a copy would be noise in every
    // history for good.
    let rows = events.len();
    let mut seen = std::collections::HashSet::with_capacity(rows);
    let mut fresh: Vec<NewEvent> = Vec::with_capacity(rows);
    for event in events {
        if !seen.contains(&event) && !setting.registry.holds(&event)? {
            seen.insert(event.clone());
            fresh.push(event);
        }
    }
    let events = fresh;
    let mut unserved: Vec<&str> = events
        .iter()
        .map(|e| e.purpose.as_str())
        .filter(|p| !setting.serves(p))
        .collect();
    unserved.sort_unstable();
    unserved.dedup();
    for purpose in unserved {
        eprintln!(
            "p1guard: no sink serves purpose {purpose:?}: recorded, but it opens no destination"
        );
    }
    // Which rows lower a meter's consent is judged against the registry as it stood.
    let now = crate::rights::now();
    let table = setting.config.consent.clone();
    let purge = setting.config.purge_on_withdrawal;
    let mut loaded = 0;
    if purge {
        loaded = setting.registry.load_into(&table, 0)?;
    }
    let mut withdrawals = Vec::new();
    for event in events.iter().filter(|e| purge && e.effective_from <= now) {
        if Withdrawal::lowers(
            &table,
            &event.meter,
            &event.purpose,
            event.level,
            event.effective_from,
        ) {
            withdrawals.push(Withdrawal {
                subject: Subject::new(event.meter.clone(), &setting.key),
                purpose: event.purpose.clone(),
                level: event.level,
                from: event.effective_from,
            });
        }
    }
    setting.record(&events, now)?;
    let mut answer = serde_json::json!({ "recorded": events.len() });
    if rows > events.len() {
        answer["already_recorded"] = (rows - events.len()).into();
    }
    if !withdrawals.is_empty() {
        // What each purges ends where a later event, maybe one of this file's, allows it again.
        setting.registry.load_into(&table, loaded)?;
        let purged = runtime()?.block_on(purge_withdrawn(
            &setting.config.sinks,
            &setting.key,
            &table,
            &withdrawals,
            now,
        ))?;
        answer["withdrawals"] = withdrawals.len().into();
        answer["purged"] = serde_json::to_value(purged)?;
    }
    println!("{answer}");
    Ok(ExitCode::SUCCESS)
}

/// A row's event, for each form of its meter's id.
fn events_of(row: &csv::StringRecord) -> anyhow::Result<Vec<NewEvent>> {
    anyhow::ensure!(
        matches!(row.len(), 4 | 5),
        "expected meter,level,effective_from,reference[,purpose], got {} fields",
        row.len()
    );
    let purpose = purpose_name(row.get(4).filter(|p| !p.is_empty()).unwrap_or("default"))?;
    let reference = row.get(3).filter(|r| !r.is_empty()).map(str::to_owned);
    let forms = meter_forms(&row[0])?;
    Ok(forms.each_form(NewEvent {
        meter: forms.shown().to_owned(),
        level: row[1].parse()?,
        purpose,
        effective_from: row[2]
            .parse()
            .with_context(|| format!("effective_from {:?}: expected RFC 3339", &row[2]))?,
        reference,
        source: EventSource::Import,
        erasure: false,
    }))
}
