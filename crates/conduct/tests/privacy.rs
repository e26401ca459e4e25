//! The privacy invariants, as properties over generated multi-day telegram streams with
//! random gaps, random consent registries (events per purpose, and for every purpose) and
//! two sinks serving different purposes under random policies:
//! - no record finer than the consent in force at its instant for the sink's purpose, or than
//!   the sink's ceiling;
//! - and every electricity record they and the observations allow does come out, at exactly
//!   the boundaries an independent reading of privacy.md's rules finds;
//! - no raw meter id (and no M-Bus id) on a pseudonymous sink;
//! - interpolated readings lie between the observations either side;
//! - any chunking of the input, and any second run, yields byte-identical output.

use std::collections::BTreeSet;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};
use p1guard_conduct::{
    Arrival, BillingCadence, CLOCK_JUMP_SECONDS, Calendar, Change, ConsentTable, Granularity,
    Identity, IdentityKey, Level, MaxGaps, Reducer, ReducerConfig, Scope, SinkPolicy, Values,
};
use p1guard_simulator::{Gap, MeterSpec, Simulator, Style};
use p1guard_telegram::{Framer, FramerConfig, Parser};
use proptest::prelude::*;
use serde_json::Value;

const EQUIPMENT_ID: &str = "E0071004210987654";
const GAS_ID: &str = "G0039001936990619";

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02X}")).collect()
}

/// The purposes the two sinks serve.
const PURPOSES: [&str; 2] = ["default", "insight"];

/// A generated scenario: one meter over some days, silent in some gaps, under a consent
/// history, printed to two sinks, one per purpose.
#[derive(Debug, Clone)]
struct Scenario {
    style: Style,
    seed: u64,
    start: Timestamp,
    hours: i64,
    gaps: Vec<Gap>,
    consent: History,
    policies: [SinkPolicy; 2],
}

/// A registry's events for the meter, in the order recorded: (effective instant, level, the
/// purpose's index in [`PURPOSES`] or `None` for every purpose), over a configured default.
#[derive(Debug, Clone)]
struct History {
    default: Level,
    events: Vec<Event>,
}

/// (effective instant, level, purpose index or `None` for every purpose).
type Event = (Timestamp, Level, Option<usize>);

impl History {
    /// privacy.md's rule, read independently of the table: the latest event in force for the
    /// purpose (or for every purpose), of two at one instant the one recorded last.
    fn at(&self, purpose: usize, at: Timestamp) -> Level {
        let mut in_force: Vec<(usize, &Event)> = self
            .events
            .iter()
            .enumerate()
            .filter(|(_, (from, _, p))| *from <= at && p.is_none_or(|p| p == purpose))
            .collect();
        in_force.sort_by_key(|(recorded, (from, _, _))| (*from, *recorded));
        in_force
            .last()
            .map_or(self.default, |(_, (_, level, _))| *level)
    }

    /// The consent table the daemon would build: the default, then each event as recorded.
    fn table(&self) -> ConsentTable {
        let table = ConsentTable::new(self.default, PURPOSES);
        for &(from, level, purpose) in &self.events {
            let scope = match purpose {
                None => Scope::Every,
                Some(p) => Scope::Purpose(table.purpose(PURPOSES[p]).unwrap()),
            };
            let change = Change { from, level, scope };
            table.add(hex(EQUIPMENT_ID).as_bytes(), change).unwrap();
        }
        table
    }
}

/// Instants in 2026 near the days that matter: DST changes, billing boundaries, plain days.
fn start() -> impl Strategy<Value = Timestamp> {
    const ANCHORS: [&str; 4] = [
        "2026-03-28T20:00:00Z",
        "2026-10-24T20:00:00Z",
        "2026-04-30T18:00:00Z",
        "2026-06-15T00:00:00Z",
    ];
    (prop::sample::select(&ANCHORS[..]), 0i64..6 * 3600).prop_map(|(anchor, offset)| {
        anchor.parse::<Timestamp>().unwrap() + SignedDuration::from_secs(offset)
    })
}

fn level() -> impl Strategy<Value = Level> {
    prop::sample::select(&Level::ALL[..])
}

fn policies() -> impl Strategy<Value = [SinkPolicy; 2]> {
    (policy(), policy()).prop_map(|(default, insight)| {
        let insight_purpose = ConsentTable::new(Level::None, PURPOSES)
            .purpose(PURPOSES[1])
            .unwrap();
        [default, insight.serving(insight_purpose)]
    })
}

fn policy() -> impl Strategy<Value = SinkPolicy> {
    (prop::sample::select(&Granularity::ALL[..]), any::<bool>()).prop_map(|(ceiling, raw)| {
        let identity = if raw && ceiling == Granularity::Live {
            Identity::Raw
        } else {
            Identity::Pseudonym
        };
        SinkPolicy::new(ceiling, identity).expect("raw only with live")
    })
}

fn scenario(max_hours: i64) -> impl Strategy<Value = Scenario> {
    (
        prop_oneof![Just(Style::Dsmr4), Just(Style::Dsmr5)],
        any::<u64>(),
        start(),
        6..=max_hours,
        prop::collection::vec((0.0..1.0f64, 1i64..4 * 3600), 0..4),
        level(),
        prop::collection::vec((-0.2..1.0f64, level(), prop::option::of(0..2usize)), 0..6),
        policies(),
    )
        .prop_map(
            |(style, seed, start, hours, gaps, initial, changes, policies)| {
                // DSMR 5 sends ten times the telegrams: keep its runs shorter, and its gaps
                // and consent changes within them.
                let hours = if style == Style::Dsmr5 {
                    hours.min(8)
                } else {
                    hours
                };
                let span = hours * 3600;
                let at = |fraction: f64| {
                    start + SignedDuration::from_secs((fraction * span as f64) as i64)
                };
                let gaps = gaps
                    .into_iter()
                    .map(|(from, length)| Gap {
                        from: at(from),
                        to: at(from) + SignedDuration::from_secs(length),
                    })
                    .collect();
                let events = changes
                    .into_iter()
                    .map(|(when, level, purpose)| (at(when), level, purpose))
                    .collect();
                Scenario {
                    style,
                    seed,
                    start,
                    hours,
                    gaps,
                    consent: History {
                        default: initial,
                        events,
                    },
                    policies,
                }
            },
        )
}

/// The scenario's telegrams back to back, and each observation of import tariff 1 (Wh).
fn telegrams(s: &Scenario) -> (Vec<u8>, Vec<(i64, i64)>) {
    let spec = MeterSpec {
        style: s.style,
        equipment_id: EQUIPMENT_ID.into(),
        gas_id: Some(GAS_ID.into()),
        seed: s.seed,
    };
    let end = s.start + SignedDuration::from_hours(s.hours);
    let mut simulator = Simulator::new(spec, s.start, end, s.gaps.clone());
    let mut stream = Vec::new();
    let mut observations = Vec::new();
    let mut parser = Parser::new();
    while let Some(at) = simulator.next_into(&mut stream) {
        let last = stream
            .iter()
            .rposition(|&b| b == b'/')
            .expect("a telegram starts with /");
        let mut framer = Framer::new(FramerConfig::default());
        framer.push(&stream[last..]);
        let frame = framer.next_frame().expect("a frame").expect("framed");
        let telegram = parser
            .parse(&frame)
            .expect("the simulator writes valid telegrams");
        let register = telegram
            .energy_registers()
            .find(|(r, _)| r.tariff == 1 && r.direction == p1guard_telegram::Direction::Import);
        observations.push((
            at.as_second(),
            (register.expect("import t1").1 * 1000.0).round() as i64,
        ));
    }
    (stream, observations)
}

/// The stream through framer, parser, reducer and the sinks' policies, pushed in `chunks`:
/// each sink's lines.
fn replay(s: &Scenario, stream: &[u8], chunk_sizes: &[usize]) -> [Vec<(Value, String)>; 2] {
    let config = ReducerConfig {
        calendar: Calendar::netherlands(BillingCadence::BiMonthly),
        finest: s.policies.iter().map(|p| p.ceiling()).max().unwrap(),
        max_gaps: MaxGaps::default(),
    };
    let mut reducer = Reducer::new(config, s.consent.table(), IdentityKey::from_bytes([42; 32]));
    let mut framer = Framer::new(FramerConfig::default());
    let mut parser = Parser::new();
    let mut records = Vec::new();
    let mut lines = [Vec::new(), Vec::new()];
    let mut rest = stream;
    for &size in chunk_sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, after) = rest.split_at(size.clamp(1, rest.len()));
        rest = after;
        framer.push(chunk);
        while let Some(frame) = framer.next_frame() {
            let telegram = parser.parse(&frame.expect("framed")).expect("valid");
            reducer.reduce(&telegram, Arrival::Recorded(Timestamp::MAX), &mut records);
            for record in records.drain(..) {
                if record.granularity != Granularity::Live
                    && let Values::Electricity { live, .. } = &record.values
                {
                    assert!(live.is_none(), "boundary records carry registers only");
                }
                for (policy, lines) in s.policies.iter().zip(&mut lines) {
                    let Some(admitted) = policy.admit(&record) else {
                        continue;
                    };
                    let mut line = Vec::new();
                    admitted.write_json(&mut line).expect("JSON in memory");
                    let line = String::from_utf8(line).expect("UTF-8");
                    lines.push((serde_json::from_str(&line).expect("valid JSON"), line));
                }
            }
        }
    }
    lines
}

/// The observations the reducer believes: a telegram after a jump of more than
/// [`CLOCK_JUMP_SECONDS`] counts only if the next one confirms it (the last one cannot).
fn confirmed(observations: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut believed: Vec<(i64, i64)> = Vec::new();
    for (i, &(t, v)) in observations.iter().enumerate() {
        let jumped = believed
            .last()
            .is_some_and(|&(last, _)| t - last > CLOCK_JUMP_SECONDS);
        let next = observations.get(i + 1).map(|o| o.0);
        if !jumped || next.is_some_and(|n| n > t && n - t <= CLOCK_JUMP_SECONDS) {
            believed.push((t, v));
        }
    }
    believed
}

/// Every electricity record (granularity, instant) privacy.md allows for the scenario, found
/// from the rules themselves: boundaries every 15 minutes and at local midnights (billing on
/// the first of odd months), each filled by an observation on it or by two observations
/// around it no farther apart than the granularity's gap, each kept only where the consent
/// at the boundary for the sink's purpose and its ceiling allow it; live records at every
/// telegram.
fn allowed_electricity(
    s: &Scenario,
    sink: usize,
    observations: &[(i64, i64)],
) -> BTreeSet<(Granularity, i64)> {
    let times: Vec<i64> = confirmed(observations).iter().map(|o| o.0).collect();
    let (Some(&first), Some(&last)) = (times.first(), times.last()) else {
        return BTreeSet::new();
    };
    let filled = |boundary: i64, max_gap: i64| {
        let after = times.partition_point(|&t| t < boundary);
        times.get(after) == Some(&boundary)
            || (after > 0 && after < times.len() && times[after] - times[after - 1] <= max_gap)
    };
    let mut candidates = Vec::new();
    let mut quarter = first.div_euclid(900) * 900;
    while quarter <= last {
        candidates.push((Granularity::QuarterHour, quarter, 900));
        quarter += 900;
    }
    let amsterdam = TimeZone::get("Europe/Amsterdam").unwrap();
    let mut day = amsterdam
        .to_datetime(Timestamp::from_second(first).unwrap())
        .date();
    loop {
        let midnight = amsterdam
            .to_ambiguous_timestamp(day.to_datetime(jiff::civil::Time::midnight()))
            .unambiguous()
            .unwrap()
            .as_second();
        if midnight > last {
            break;
        }
        candidates.push((Granularity::Daily, midnight, 86_400));
        if day.day() == 1 && day.month() % 2 == 1 {
            candidates.push((Granularity::Billing, midnight, 86_400));
        }
        day = day.checked_add(1.day()).unwrap();
    }
    let allowed = |granularity: Granularity, at: i64| {
        granularity <= s.policies[sink].ceiling()
            && s.consent
                .at(sink, Timestamp::from_second(at).unwrap())
                .allows(granularity)
    };
    let boundaries = candidates
        .into_iter()
        .filter(|&(g, b, gap)| b >= first && filled(b, gap) && allowed(g, b))
        .map(|(g, b, _)| (g, b));
    let live = times
        .iter()
        .filter(|&&t| allowed(Granularity::Live, t))
        .map(|&t| (Granularity::Live, t));
    boundaries.chain(live).collect()
}

fn granularity_of(record: &Value) -> Granularity {
    record["granularity"]
        .as_str()
        .expect("granularity")
        .parse()
        .expect("known granularity")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn nothing_leaves_finer_than_consent_and_ceiling_allow(s in scenario(60)) {
        let (stream, observations) = telegrams(&s);
        let sinks = replay(&s, &stream, &[64 * 1024]);
        for (sink, (policy, lines)) in s.policies.iter().zip(&sinks).enumerate() {
        for (record, line) in lines {
            let granularity = granularity_of(record);
            let at: Timestamp = record["time"].as_str().unwrap().parse().unwrap();
            prop_assert!(granularity <= policy.ceiling(), "above the ceiling: {line}");
            // A live M-Bus record is dated by its capture and judged at the first telegram
            // that carried it (privacy.md, "Trusting time").
            let judged = if granularity == Granularity::Live && record["kind"] != "electricity" {
                let carried = observations.partition_point(|(t, _)| *t < at.as_second());
                observations.get(carried).map_or(at, |(t, _)| Timestamp::from_second(*t).unwrap())
            } else {
                at
            };
            let level = s.consent.at(sink, judged);
            prop_assert!(level.allows(granularity), "consent for {} at {judged} is {level}: {line}", PURPOSES[sink]);
            let meter = record["meter"].as_str().unwrap();
            match policy.identity() {
                Identity::Raw => prop_assert_eq!(meter, hex(EQUIPMENT_ID)),
                Identity::Pseudonym => {
                    prop_assert!(meter.len() == 32 && meter.bytes().all(|b| b.is_ascii_hexdigit()));
                    prop_assert!(!line.contains(&hex(EQUIPMENT_ID)) && !line.contains(EQUIPMENT_ID));
                }
            }
            prop_assert!(!line.contains(&hex(GAS_ID)) && !line.contains(GAS_ID), "M-Bus id leaked: {line}");
            if record["quality"] == "interpolated" && record["kind"] == "electricity" {
                let value = (record["values"]["energy_import_t1_kwh"].as_f64().unwrap() * 1000.0).round() as i64;
                let after = observations.partition_point(|(t, _)| *t < at.as_second());
                prop_assert!(after > 0 && after < observations.len(), "interpolated without neighbours: {line}");
                let (before, next) = (observations[after - 1].1, observations[after].1);
                prop_assert!(before <= value && value <= next, "{value} not within [{before}, {next}]: {line}");
            }
        }
        }
    }

    #[test]
    fn everything_consent_ceiling_and_observations_allow_comes_out(s in scenario(60)) {
        let (stream, observations) = telegrams(&s);
        let sinks = replay(&s, &stream, &[64 * 1024]);
        for (sink, lines) in sinks.iter().enumerate() {
            let mut out = BTreeSet::new();
            for (record, line) in lines.iter().filter(|(r, _)| r["kind"] == "electricity") {
                let at: Timestamp = record["time"].as_str().unwrap().parse().unwrap();
                prop_assert!(out.insert((granularity_of(record), at.as_second())), "twice: {line}");
            }
            let allowed = allowed_electricity(&s, sink, &observations);
            let missing: Vec<_> = allowed.difference(&out).take(5).collect();
            let extra: Vec<_> = out.difference(&allowed).take(5).collect();
            prop_assert!(missing.is_empty() && extra.is_empty(), "sink {sink}: missing {missing:?}, not allowed {extra:?}");
        }
    }

    #[test]
    fn chunking_and_repetition_change_nothing(
        s in scenario(12),
        chunks in prop::collection::vec(1usize..5000, 1..16),
    ) {
        let (stream, _) = telegrams(&s);
        let lines = |sinks: [Vec<(Value, String)>; 2]| -> Vec<String> {
            sinks.into_iter().flatten().map(|(_, l)| l).collect()
        };
        let whole = lines(replay(&s, &stream, &[stream.len()]));
        let chunked = lines(replay(&s, &stream, &chunks));
        let again = lines(replay(&s, &stream, &[stream.len()]));
        prop_assert_eq!(&chunked, &whole);
        prop_assert_eq!(&again, &whole);
    }
}
