//! The reducer on the days that break naive implementations: DST changes, gaps across
//! midnight, consent changing mid-day, a meter's first telegram, hourly versus five-minute
//! gas, a meter without consent, clocks that jump and ids sent carelessly. Telegrams are
//! written here, by hand, with correct CRCs.

use jiff::Timestamp;
use jiff::tz::TimeZone;
use p1guard_conduct::{
    Arrival, BillingCadence, Calendar, Consent, Granularity, IdentityKey, Kind, Level, Levels,
    MaxGaps, Quality, Record, Reducer, ReducerConfig, Timeline, Values,
};
use p1guard_telegram::{Framer, FramerConfig, Parser, crc16};

const METER_ID: &str = "4530303731303034323130393837363534";

fn at(utc: &str) -> Timestamp {
    utc.parse().expect("RFC 3339")
}

/// `YYMMDDhhmmss` plus S or W, as a Dutch meter shows `utc`.
fn meter_time(utc: Timestamp) -> String {
    let local = utc.to_zoned_datetime(TimeZone::get("Europe/Amsterdam").unwrap());
    let flag = if local.offset().seconds() == 7200 {
        'S'
    } else {
        'W'
    };
    format!("{}{flag}", local.strftime("%y%m%d%H%M%S"))
}

fn kwh(wh: i64) -> String {
    format!("{:06}.{:03}", wh / 1000, wh % 1000)
}

/// A DSMR 5 telegram at `utc` with import tariff 1 at `wh`, and gas (capture time, litres).
fn telegram(utc: Timestamp, wh: i64, gas: Option<(Timestamp, i64)>) -> Vec<u8> {
    telegram_of(METER_ID, utc, wh, gas)
}

/// [`telegram`] of the meter whose equipment id is sent as `id`.
fn telegram_of(id: &str, utc: Timestamp, wh: i64, gas: Option<(Timestamp, i64)>) -> Vec<u8> {
    let mut text = format!(
        "/ISk5\\2MT382-1000\r\n\r\n1-3:0.2.8(50)\r\n0-0:1.0.0({})\r\n0-0:96.1.1({id})\r\n\
         1-0:1.8.1({}*kWh)\r\n1-0:1.8.2(000100.000*kWh)\r\n1-0:1.7.0(00.500*kW)\r\n\
         1-0:32.7.0(230.1*V)\r\n",
        meter_time(utc),
        kwh(wh)
    );
    if let Some((captured, litres)) = gas {
        text += &format!(
            "0-1:24.1.0(003)\r\n0-1:96.1.0(4730303339303031393336393930363139)\r\n\
             0-1:24.2.1({})({:05}.{:03}*m3)\r\n",
            meter_time(captured),
            litres / 1000,
            litres % 1000
        );
    }
    sealed(&(text + "!"))
}

/// `text`, a telegram up to its `!`, with its CRC and line end.
fn sealed(text: &str) -> Vec<u8> {
    let crc = crc16(text.as_bytes());
    format!("{text}{crc:04X}\r\n").into_bytes()
}

/// Telegrams every `step` seconds over `[from, to)`, import growing 1 Wh per second.
fn stream(from: &str, to: &str, step: i64) -> Vec<(Timestamp, i64)> {
    let (from, to) = (at(from).as_second(), at(to).as_second());
    (from..to)
        .step_by(step as usize)
        .map(|t| (Timestamp::from_second(t).unwrap(), t - from))
        .collect()
}

fn reduce_with<C: Consent>(
    config: ReducerConfig,
    consent: C,
    telegrams: &[Vec<u8>],
) -> (Vec<Record>, Reducer<C>) {
    let mut reducer = Reducer::new(config, consent, IdentityKey::from_bytes([7; 32]));
    let mut parser = Parser::new();
    let mut records = Vec::new();
    for bytes in telegrams {
        let mut framer = Framer::new(FramerConfig::default());
        framer.push(bytes);
        let frame = framer.next_frame().expect("a frame").expect("framed");
        let telegram = parser.parse(&frame).expect("valid telegram");
        reducer.reduce(&telegram, Arrival::Recorded(Timestamp::MAX), &mut records);
    }
    (records, reducer)
}

fn config(finest: Granularity) -> ReducerConfig {
    ReducerConfig {
        calendar: Calendar::netherlands(BillingCadence::BiMonthly),
        finest,
        max_gaps: MaxGaps::default(),
    }
}

fn reduce(level: Level, telegrams: &[Vec<u8>]) -> Vec<Record> {
    reduce_with(
        config(Granularity::Live),
        Timeline::constant(level),
        telegrams,
    )
    .0
}

fn electricity(stream: &[(Timestamp, i64)]) -> Vec<Vec<u8>> {
    stream
        .iter()
        .map(|&(t, wh)| telegram(t, wh, None))
        .collect()
}

fn times(records: &[Record], granularity: Granularity) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.granularity == granularity)
        .map(|r| r.time.to_string())
        .collect()
}

fn import_t1(record: &Record) -> i64 {
    match &record.values {
        Values::Electricity { registers, .. } => registers.import[1].expect("tariff 1"),
        Values::Mbus(_) => panic!("not electricity"),
    }
}

#[test]
fn spring_forward_day_has_23_hours_of_quarter_hours() {
    let records = reduce(
        Level::QuarterHour,
        &electricity(&stream("2026-03-28T22:50:00Z", "2026-03-29T22:10:00Z", 60)),
    );
    assert_eq!(
        times(&records, Granularity::Daily),
        ["2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z"]
    );
    let quarter_hours = times(&records, Granularity::QuarterHour);
    let day: Vec<_> = quarter_hours
        .iter()
        .filter(|t| t.as_str() >= "2026-03-28T23:00:00Z" && t.as_str() < "2026-03-29T22:00:00Z")
        .collect();
    assert_eq!(day.len(), 23 * 4);
    assert!(
        records.iter().all(|r| r.quality == Quality::Measured),
        "telegrams fall on the boundaries"
    );
}

#[test]
fn fall_back_day_has_25_hours_of_quarter_hours() {
    let records = reduce(
        Level::QuarterHour,
        &electricity(&stream("2026-10-24T21:50:00Z", "2026-10-25T23:10:00Z", 60)),
    );
    assert_eq!(
        times(&records, Granularity::Daily),
        ["2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z"]
    );
    let day = times(&records, Granularity::QuarterHour)
        .into_iter()
        .filter(|t| t.as_str() >= "2026-10-24T22:00:00Z" && t.as_str() < "2026-10-25T23:00:00Z")
        .count();
    assert_eq!(day, 25 * 4);
}

#[test]
fn a_three_hour_gap_across_midnight_interpolates_the_day_but_not_the_quarter_hours() {
    // Local midnight 2026-06-10 is 22:00Z. Silent from 21:00:10Z to 00:00:10Z.
    let mut s = stream("2026-06-09T20:00:10Z", "2026-06-09T21:00:20Z", 10);
    s.extend(
        stream("2026-06-10T00:00:10Z", "2026-06-10T01:00:00Z", 10)
            .into_iter()
            .map(|(t, wh)| (t, wh + 20_000)),
    );
    let (records, reducer) = reduce_with(
        config(Granularity::QuarterHour),
        Timeline::constant(Level::QuarterHour),
        &electricity(&s),
    );
    let daily: Vec<_> = records
        .iter()
        .filter(|r| r.granularity == Granularity::Daily)
        .collect();
    assert_eq!(daily.len(), 1);
    assert_eq!(
        (daily[0].time.to_string(), daily[0].quality),
        ("2026-06-09T22:00:00Z".into(), Quality::Interpolated)
    );
    let (before, after) = (s[360].1, s[361].1); // the observations either side of the gap
    assert!((before..=after).contains(&import_t1(daily[0])));
    let in_gap = times(&records, Granularity::QuarterHour)
        .into_iter()
        .filter(|t| t.as_str() > "2026-06-09T21:00:20Z" && t.as_str() < "2026-06-10T00:00:10Z")
        .count();
    assert_eq!(
        in_gap, 0,
        "quarter hours are never bridged over more than 15 minutes"
    );
    assert_eq!(
        reducer.counters().missing[Granularity::QuarterHour as usize],
        12
    );
}

#[test]
fn consent_raised_and_withdrawn_mid_day_applies_at_each_records_instant() {
    let consent = Timeline::new(
        Level::Daily,
        vec![
            (at("2026-05-12T08:00:00Z"), Level::Live),
            (at("2026-05-12T12:00:00Z"), Level::Billing),
        ],
    );
    let s = stream("2026-05-11T21:30:00Z", "2026-05-12T22:30:00Z", 30);
    let (records, reducer) = reduce_with(config(Granularity::Live), consent, &electricity(&s));
    let live = times(&records, Granularity::Live);
    assert_eq!(
        live.first().map(String::as_str),
        Some("2026-05-12T08:00:00Z")
    );
    assert_eq!(
        live.last().map(String::as_str),
        Some("2026-05-12T11:59:30Z")
    );
    let quarter_hours = times(&records, Granularity::QuarterHour);
    assert_eq!(quarter_hours.len(), 16);
    assert!(
        quarter_hours
            .iter()
            .all(|t| t.as_str() >= "2026-05-12T08:00:00Z" && t.as_str() < "2026-05-12T12:00:00Z")
    );
    // Midnight 2026-05-12 (22:00Z the day before) was under daily consent; the next one is not.
    assert_eq!(
        times(&records, Granularity::Daily),
        ["2026-05-11T22:00:00Z"]
    );
    assert_eq!(reducer.counters().withheld[Granularity::Daily as usize], 1);
}

#[test]
fn a_meters_first_telegram_yields_a_boundary_only_if_it_lies_on_one() {
    let on = reduce(
        Level::QuarterHour,
        &electricity(&stream("2026-02-01T10:15:00Z", "2026-02-01T10:15:01Z", 1)),
    );
    assert_eq!(
        times(&on, Granularity::QuarterHour),
        ["2026-02-01T10:15:00Z"]
    );
    assert_eq!(on[0].quality, Quality::Measured);
    let off = reduce(
        Level::QuarterHour,
        &electricity(&stream("2026-02-01T10:15:01Z", "2026-02-01T10:15:02Z", 1)),
    );
    assert!(off.is_empty());
}

#[test]
fn hourly_gas_of_dsmr4_and_five_minute_gas_of_dsmr5_give_the_same_hourly_readings() {
    let with_gas = |capture_every: i64| -> Vec<Vec<u8>> {
        stream("2026-01-20T10:00:00Z", "2026-01-20T13:00:10Z", 10)
            .into_iter()
            .map(|(t, wh)| {
                let s = t.as_second();
                let captured = s - s.rem_euclid(capture_every);
                let litres = (captured - at("2026-01-20T10:00:00Z").as_second()) / 3; // 1.2 m3/h
                telegram(
                    t,
                    wh,
                    Some((
                        Timestamp::from_second(captured).unwrap(),
                        5_000_000 + litres,
                    )),
                )
            })
            .collect()
    };
    let gas = |records: Vec<Record>| -> Vec<(String, Values)> {
        records
            .into_iter()
            .filter(|r| r.kind == Kind::Gas && r.granularity == Granularity::QuarterHour)
            .map(|r| (r.time.to_string(), r.values))
            .collect()
    };
    let dsmr4 = gas(reduce(Level::QuarterHour, &with_gas(3600)));
    let dsmr5 = gas(reduce(Level::QuarterHour, &with_gas(300)));
    assert_eq!(dsmr4.len(), 4, "10:00, 11:00, 12:00, 13:00");
    assert_eq!(dsmr4, dsmr5);
    assert_eq!(
        dsmr4[1],
        ("2026-01-20T11:00:00Z".into(), Values::Mbus(5_001_200))
    );
}

#[test]
fn a_meter_at_level_none_yields_nothing() {
    let s = stream("2026-08-31T21:00:00Z", "2026-08-31T23:00:00Z", 10);
    let (records, reducer) = reduce_with(
        config(Granularity::Live),
        Timeline::constant(Level::None),
        &electricity(&s),
    );
    assert!(records.is_empty());
    let withheld = reducer.counters().withheld;
    assert!(
        withheld[Granularity::Billing as usize] == 1
            && withheld[Granularity::Live as usize] == s.len() as u64
    );
}

#[test]
fn billing_boundaries_fall_on_the_first_of_odd_months() {
    let s = stream("2026-08-31T21:50:00Z", "2026-08-31T22:10:00Z", 60);
    let records = reduce(Level::Billing, &electricity(&s));
    assert_eq!(
        times(&records, Granularity::Billing),
        ["2026-08-31T22:00:00Z"]
    ); // 1 September, local midnight
    assert!(times(&records, Granularity::Daily).is_empty());
}

#[test]
fn live_records_carry_instantaneous_values_and_boundary_records_do_not() {
    let records = reduce(
        Level::Live,
        &electricity(&stream("2026-02-01T10:14:50Z", "2026-02-01T10:15:10Z", 10)),
    );
    for record in &records {
        let Values::Electricity { live, .. } = &record.values else {
            panic!("electricity")
        };
        assert_eq!(live.is_some(), record.granularity == Granularity::Live);
    }
    let Values::Electricity {
        live: Some(live), ..
    } = &records.last().unwrap().values
    else {
        panic!("live")
    };
    assert_eq!(live.power_import_w, Some(500.0));
    assert_eq!(live.phases[0].voltage_v, Some(230.1));
}

fn live_times(records: &[Record], kind: Kind) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.granularity == Granularity::Live && r.kind == kind)
        .map(|r| r.time.to_string())
        .collect()
}

#[test]
fn a_gas_capture_first_sent_after_a_withdrawal_is_judged_at_its_telegrams_time() {
    // Live consent is withdrawn at 10:00:30. The meter captured gas at 10:00:00 but sends that
    // capture first at 10:00:40, after the withdrawal: it must not leave as live.
    let withdrawal = at("2026-06-01T10:00:30Z");
    let consent = Timeline::new(Level::Live, vec![(withdrawal, Level::Billing)]);
    let telegrams = [
        telegram(
            at("2026-06-01T10:00:20Z"),
            0,
            Some((at("2026-06-01T09:55:00Z"), 1_000)),
        ),
        telegram(
            at("2026-06-01T10:00:40Z"),
            20,
            Some((at("2026-06-01T10:00:00Z"), 1_010)),
        ),
    ];
    let (records, reducer) = reduce_with(config(Granularity::Live), consent, &telegrams);
    assert_eq!(live_times(&records, Kind::Gas), ["2026-06-01T09:55:00Z"]);
    assert_eq!(
        live_times(&records, Kind::Electricity),
        ["2026-06-01T10:00:20Z"]
    );
    assert_eq!(reducer.counters().withheld[Granularity::Live as usize], 2);
}

#[test]
fn a_gas_capture_more_than_an_hour_old_at_its_telegram_is_no_live_reading() {
    // A device that missed its captures: its 08:30:01 capture is first sent at 09:30:02.
    let telegrams = [
        telegram(
            at("2026-06-01T08:00:00Z"),
            0,
            Some((at("2026-06-01T08:00:00Z"), 1_000)),
        ),
        telegram(
            at("2026-06-01T09:30:00Z"),
            10,
            Some((at("2026-06-01T08:30:00Z"), 1_050)),
        ),
        telegram(
            at("2026-06-01T09:30:02Z"),
            20,
            Some((at("2026-06-01T08:30:01Z"), 1_051)),
        ),
    ];
    let (records, _) = reduce_with(
        config(Granularity::Live),
        Timeline::constant(Level::Live),
        &telegrams,
    );
    // An hour old is still live; older is not.
    assert_eq!(
        live_times(&records, Kind::Gas),
        ["2026-06-01T08:00:00Z", "2026-06-01T08:30:00Z"]
    );
}

#[test]
fn a_gas_capture_dated_after_its_telegram_is_not_trusted() {
    let telegrams = [
        telegram(
            at("2026-06-01T09:00:00Z"),
            0,
            Some((at("2026-06-01T09:00:00Z"), 1_000)),
        ),
        // A telegram at 10:00 carrying a capture "from" 12:00.
        telegram(
            at("2026-06-01T10:00:00Z"),
            3_600,
            Some((at("2026-06-01T12:00:00Z"), 1_500)),
        ),
        telegram(
            at("2026-06-01T11:00:00Z"),
            7_200,
            Some((at("2026-06-01T11:00:00Z"), 1_100)),
        ),
    ];
    let (records, reducer) = reduce_with(
        config(Granularity::Live),
        Timeline::constant(Level::Live),
        &telegrams,
    );
    let gas: Vec<_> = records
        .iter()
        .filter(|r| r.kind == Kind::Gas)
        .map(|r| (r.granularity, r.time.to_string(), r.values.clone()))
        .collect();
    assert_eq!(
        gas,
        [
            (
                Granularity::QuarterHour,
                "2026-06-01T09:00:00Z".into(),
                Values::Mbus(1_000)
            ),
            (
                Granularity::Live,
                "2026-06-01T09:00:00Z".into(),
                Values::Mbus(1_000)
            ),
            (
                Granularity::QuarterHour,
                "2026-06-01T11:00:00Z".into(),
                Values::Mbus(1_100)
            ),
            (
                Granularity::Live,
                "2026-06-01T11:00:00Z".into(),
                Values::Mbus(1_100)
            ),
        ],
        "no 12:00 reading, and 10:00 is missing rather than interpolated from it"
    );
    assert_eq!(reducer.counters().bad_time, 1);
}

#[test]
fn a_clock_that_jumps_to_2068_once_is_ignored_and_the_meters_timeline_goes_on() {
    let mut telegrams = electricity(&stream("2026-06-01T09:50:00Z", "2026-06-01T10:20:00Z", 10));
    telegrams.insert(60, telegram(at("2068-06-01T10:00:00Z"), 999_999, None));
    let (records, reducer) = reduce_with(
        config(Granularity::Live),
        Timeline::constant(Level::Live),
        &telegrams,
    );
    assert!(records.iter().all(|r| r.time < at("2026-06-02T00:00:00Z")));
    assert_eq!(
        times(&records, Granularity::QuarterHour),
        ["2026-06-01T10:00:00Z", "2026-06-01T10:15:00Z"]
    );
    assert_eq!(live_times(&records, Kind::Electricity).len(), 180);
    assert_eq!(reducer.counters().bad_time, 1);
    assert_eq!(reducer.counters().out_of_order, 0);
}

#[test]
fn a_meter_back_from_a_long_outage_is_believed_once_its_next_telegram_confirms_the_time() {
    let before = stream("2026-06-01T09:00:00Z", "2026-06-01T09:01:00Z", 10);
    let after = stream("2026-06-01T13:00:00Z", "2026-06-01T13:01:00Z", 10);
    let telegrams = electricity(&[before, after].concat());
    let (records, reducer) = reduce_with(
        config(Granularity::Live),
        Timeline::constant(Level::Live),
        &telegrams,
    );
    assert_eq!(
        times(&records, Granularity::QuarterHour),
        ["2026-06-01T09:00:00Z", "2026-06-01T13:00:00Z"]
    );
    let live = live_times(&records, Kind::Electricity);
    assert_eq!(live.len(), 12, "the held telegram came out: {live:?}");
    assert!(live.is_sorted());
    assert_eq!(reducer.counters().bad_time, 0);
    assert_eq!(
        reducer.counters().missing[Granularity::QuarterHour as usize],
        15
    );
}

/// `none` for one meter (by its normalised id), `live` for every other.
struct NoneFor(&'static [u8]);

impl Consent for NoneFor {
    fn levels(&self, meter: &[u8], _at: Timestamp) -> Levels {
        if meter == self.0 {
            Levels::uniform(Level::None)
        } else {
            Levels::uniform(Level::Live)
        }
    }
}

#[test]
fn an_id_sent_in_lower_case_or_with_spaces_is_the_same_meter_and_keeps_its_consent() {
    const ID: &str = "4B384547303034303436333935353037";
    let sent = [ID.to_owned(), ID.to_lowercase(), format!(" {ID}  ")];
    let stream = stream("2026-06-01T09:59:00Z", "2026-06-01T10:00:30Z", 10);
    let telegrams: Vec<_> = stream
        .iter()
        .zip(sent.iter().cycle())
        .map(|(&(t, wh), id)| telegram_of(id, t, wh, None))
        .collect();

    let (records, reducer) = reduce_with(
        config(Granularity::Live),
        Timeline::constant(Level::Live),
        &telegrams,
    );
    assert_eq!(reducer.meter_count(), 1);
    assert!(records.iter().all(|r| r.meter == records[0].meter));
    assert_eq!(
        records.len(),
        9 + 1,
        "nine live records and the 10:00 quarter hour"
    );

    let (records, _) = reduce_with(
        config(Granularity::Live),
        NoneFor(ID.as_bytes()),
        &telegrams,
    );
    assert!(records.is_empty(), "{records:?}");
}

#[test]
fn an_id_with_control_bytes_names_no_meter() {
    let telegrams = [telegram_of(
        "4B38\u{1b}[2J4547",
        at("2026-06-01T10:00:00Z"),
        0,
        None,
    )];
    let (records, reducer) = reduce_with(
        config(Granularity::Live),
        Timeline::constant(Level::Live),
        &telegrams,
    );
    assert!(records.is_empty());
    assert_eq!(reducer.counters().without_meter_id, 1);
}

#[test]
fn a_meter_clock_without_a_flag_is_local_time() {
    // DSMR 2.2/3-like meters that send a clock without S/W: 12:00 in June is 10:00 UTC.
    let text = format!(
        "/XMX5XMXABCE000046099\r\n\r\n0-0:1.0.0(260601120000)\r\n0-0:96.1.1({METER_ID})\r\n\
         1-0:1.8.1(000001.000*kWh)\r\n!"
    );
    let telegrams = [sealed(&text)];
    let (records, reducer) = reduce_with(
        config(Granularity::Live),
        Timeline::constant(Level::Live),
        &telegrams,
    );
    assert_eq!(reducer.counters().bad_time, 0);
    assert_eq!(
        live_times(&records, Kind::Electricity),
        ["2026-06-01T10:00:00Z"]
    );
    assert_eq!(
        times(&records, Granularity::QuarterHour),
        ["2026-06-01T10:00:00Z"]
    );
}

#[test]
fn a_reducer_restored_from_its_checkpoint_continues_every_series_as_if_it_never_stopped() {
    // Two meters a minute apart over a day with gas captured hourly, one of them jumping an
    // hour and a half ahead (held until its next telegram confirms it): stopped and restored
    // after every telegram, or after every seventh, the records are those of one run.
    let mut telegrams = Vec::new();
    for (n, (t, wh)) in stream("2026-03-28T22:00:00Z", "2026-03-29T22:00:00Z", 60)
        .into_iter()
        .enumerate()
    {
        let t = if n >= 700 {
            t + jiff::SignedDuration::from_mins(90)
        } else {
            t
        };
        let captured = Timestamp::from_second(t.as_second() / 3600 * 3600).unwrap();
        telegrams.push(telegram(t, wh, Some((captured, wh / 7))));
        telegrams.push(telegram_of("E0042", t, 2 * wh, None));
    }
    let consent = || Timeline::constant(Level::Live);
    let (uninterrupted, _) = reduce_with(config(Granularity::Live), consent(), &telegrams);
    assert!(uninterrupted.iter().any(|r| r.kind == Kind::Gas));

    for every in [1, 7] {
        let mut saved = std::collections::BTreeMap::<Vec<u8>, Vec<u8>>::new();
        let mut records = Vec::new();
        for chunk in telegrams.chunks(every) {
            let key = IdentityKey::from_bytes([7; 32]);
            let mut reducer = Reducer::new(config(Granularity::Live), consent(), key);
            for (id, state) in &saved {
                reducer
                    .restore(id, state)
                    .expect("a state this reducer saved");
            }
            let mut parser = Parser::new();
            for bytes in chunk {
                let mut framer = Framer::new(FramerConfig::default());
                framer.push(bytes);
                let frame = framer.next_frame().expect("a frame").expect("framed");
                let telegram = parser.parse(&frame).expect("valid telegram");
                reducer.reduce(&telegram, Arrival::Recorded(Timestamp::MAX), &mut records);
            }
            reducer.save_changed(|id, state| {
                saved.insert(id.to_vec(), state.to_vec());
            });
        }
        assert_eq!(
            records, uninterrupted,
            "restored after every {every} telegrams"
        );
    }
}

#[test]
fn of_two_gas_meters_on_one_meter_only_the_lower_channel_is_read() {
    // Channel 1 counts 1 m3 an hour, channel 2 (another gas meter) 100 m3 an hour: read
    // both, one gas series would jump between them at every capture. Captures fall on the
    // hour, so each is an hourly boundary too.
    let with_two = |utc: Timestamp, litres: i64| {
        let text = String::from_utf8(telegram(utc, 0, Some((utc, litres)))).unwrap();
        let body = text.split('!').next().unwrap();
        let text = format!(
            "{body}0-2:24.1.0(003)\r\n0-2:96.1.0(4730303339303031393336393930363230)\r\n\
             0-2:24.2.1({})({:05}.{:03}*m3)\r\n!",
            meter_time(utc),
            litres * 100 / 1000,
            litres * 100 % 1000
        );
        sealed(&text)
    };
    let telegrams: Vec<Vec<u8>> = (0..3)
        .map(|hour| {
            with_two(
                at("2026-06-01T08:00:00Z") + jiff::SignedDuration::from_hours(hour),
                1_000 + hour * 1_000,
            )
        })
        .collect();
    let (records, reducer) = reduce_with(
        config(Granularity::Live),
        Timeline::constant(Level::Live),
        &telegrams,
    );
    let gas: Vec<(Granularity, Values)> = records
        .iter()
        .filter(|r| r.kind == Kind::Gas)
        .map(|r| (r.granularity, r.values.clone()))
        .collect();
    let m3 = |litres| Values::Mbus(litres);
    assert_eq!(
        gas,
        [
            (Granularity::QuarterHour, m3(1_000)),
            (Granularity::Live, m3(1_000)),
            (Granularity::QuarterHour, m3(2_000)),
            (Granularity::Live, m3(2_000)),
            (Granularity::QuarterHour, m3(3_000)),
            (Granularity::Live, m3(3_000)),
        ]
    );
    assert_eq!(reducer.counters().another_of_its_kind, 3);
}

/// An Iskra AM550 (dsmr_parser's `TELEGRAM_V5_TWO_MBUS`) announces a gas meter on channel 1
/// with no id and no reading, `(700101010000W)(00000000)`, and has its gas meter on channel 2:
/// the empty slot is no second gas meter, and channel 2 is read.
#[test]
fn an_empty_mbus_slot_is_no_second_device_of_its_kind() {
    let with_empty_slot = |utc: Timestamp, litres: i64| {
        let text = String::from_utf8(telegram(utc, 0, None)).unwrap();
        let body = text.split('!').next().unwrap();
        let text = format!(
            "{body}0-1:24.1.0(003)\r\n0-1:96.1.0()\r\n0-1:24.2.1(700101010000W)(00000000)\r\n\
             0-2:24.1.0(003)\r\n0-2:96.1.0(4730303339303031393336393930363139)\r\n\
             0-2:24.2.1({})({:05}.{:03}*m3)\r\n!",
            meter_time(utc),
            litres / 1000,
            litres % 1000
        );
        sealed(&text)
    };
    let telegrams: Vec<Vec<u8>> = (0..2)
        .map(|hour| {
            with_empty_slot(
                at("2026-06-01T08:00:00Z") + jiff::SignedDuration::from_hours(hour),
                246_138 + hour * 1_000,
            )
        })
        .collect();
    let (records, reducer) = reduce_with(
        config(Granularity::Live),
        Timeline::constant(Level::Live),
        &telegrams,
    );
    let gas: Vec<Values> = (records.iter())
        .filter(|r| r.kind == Kind::Gas && r.granularity == Granularity::Live)
        .map(|r| r.values.clone())
        .collect();
    assert_eq!(gas, [Values::Mbus(246_138), Values::Mbus(247_138)]);
    assert_eq!(reducer.counters().another_of_its_kind, 0);
}

/// A heat meter's P1 port (a Warmtelink) sends no electricity at all, only its M-Bus heat
/// reading: it has no live electricity reading, not one with no values.
#[test]
fn a_meter_that_reports_no_electricity_has_no_live_electricity_record() {
    let heat_only = |utc: Timestamp, wh: i64| {
        let text = format!(
            "/WTL5\\2WARMTELINK\r\n\r\n1-3:0.2.8(50)\r\n0-0:1.0.0({time})\r\n\
             0-0:96.1.1({METER_ID})\r\n0-1:24.1.0(004)\r\n\
             0-1:96.1.0(4730303339303031393336393930363139)\r\n\
             0-1:24.2.1({time})({gj:03}.{mgj:03}*GJ)\r\n!",
            time = meter_time(utc),
            gj = wh / 1000,
            mgj = wh % 1000,
        );
        sealed(&text)
    };
    let telegrams: Vec<Vec<u8>> = (0..3)
        .map(|hour| {
            heat_only(
                at("2026-06-01T08:00:00Z") + jiff::SignedDuration::from_hours(hour),
                12_000 + hour * 10,
            )
        })
        .collect();
    let (records, _) = reduce_with(
        config(Granularity::Live),
        Timeline::constant(Level::Live),
        &telegrams,
    );
    let live: Vec<Kind> = (records.iter())
        .filter(|r| r.granularity == Granularity::Live)
        .map(|r| r.kind)
        .collect();
    assert_eq!(live, [Kind::Heat, Kind::Heat, Kind::Heat], "{records:#?}");
}
