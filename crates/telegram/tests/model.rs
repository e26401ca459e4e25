//! The typed model, specified on the project's own fixtures: what a reducer or a Home
//! Assistant bridge reads from a telegram.

use std::path::Path;

use p1guard_telegram::{
    Direction, Dst, EnergyRegister, ErrorKind, Framer, FramerConfig, MbusKind, Parser, Phase,
    Telegram, TimeFlag, Value, codes,
};

/// Parses the single telegram of a fixture and hands it to `check`.
fn with_fixture(name: &str, check: impl FnOnce(Telegram<'_>)) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    with_bytes(&std::fs::read(&path).expect("fixture exists"), check);
}

/// Parses the single telegram in `bytes` and hands it to `check`.
fn with_bytes(bytes: &[u8], check: impl FnOnce(Telegram<'_>)) {
    let mut framer = Framer::new(FramerConfig::default());
    framer.push(bytes);
    framer.finish();
    let frame = framer.next_frame().expect("one frame").expect("framed");
    let mut parser = Parser::new();
    check(parser.parse(&frame).expect("parses"));
}

const IMPORT_T1: EnergyRegister = EnergyRegister {
    direction: Direction::Import,
    tariff: 1,
};
const EXPORT_T2: EnergyRegister = EnergyRegister {
    direction: Direction::Export,
    tariff: 2,
};

#[test]
fn dsmr5_registers_instantaneous_values_and_gas() {
    with_fixture("dsmr5_nl.txt", |t| {
        assert_eq!(t.version(), Some(&b"50"[..]));
        assert_eq!(t.time().unwrap().dst(), Some(Dst::Summer));
        assert_eq!(
            t.time().unwrap().utc().unwrap().to_string(),
            "2024-07-13T12:15:30Z"
        );
        assert_eq!(
            t.equipment_id(),
            Some(&b"4530303731303034323130393837363534"[..])
        );
        assert_eq!(t.energy_kwh(IMPORT_T1), Some(4312.087));
        assert_eq!(t.energy_kwh(EXPORT_T2), Some(2871.905));
        assert_eq!(t.energy_registers().count(), 4);
        assert_eq!(t.power_import_w(), Some(0.0));
        assert_eq!(t.power_export_w(), Some(2418.0));
        assert!(t.voltage_v(Phase::L3).is_some());
        assert!(t.current_a(Phase::L1).is_some());
        assert!(t.phase_power_export_w(Phase::L2).is_some());
        assert_eq!(t.tariff(), Some(2));
        assert_eq!(t.power_failures(), Some(11));
        assert!(t.text_message_hex().is_some());
        let gas: Vec<_> = t.mbus_devices().collect();
        assert_eq!(gas.len(), 1);
        assert_eq!((gas[0].channel, gas[0].kind()), (1, Some(MbusKind::Gas)));
        let reading = gas[0].reading().expect("gas reading");
        assert_eq!(reading.value.unit, Some("m3"));
        assert!(reading.captured.utc().is_ok());
        assert!(t.line_errors().is_empty());
    });
}

#[test]
fn dsmr22_gas_value_on_the_next_line_with_an_unflagged_capture_time() {
    with_fixture("dsmr22_no_crc.txt", |t| {
        assert_eq!(t.crc(), None);
        assert_eq!(t.time(), None);
        let gas = t.mbus_devices().next().expect("gas on channel 1");
        assert_eq!(gas.kind(), Some(MbusKind::Gas));
        let reading = gas.reading().expect("24.3.0 reading");
        assert_eq!(reading.value.kwh(), None);
        assert_eq!(reading.value.in_unit("m3"), Some(12.345));
        assert_eq!(reading.captured.utc(), Err(TimeFlag::Unflagged));
        assert_eq!(
            reading.captured.civil().unwrap().to_string(),
            "2016-11-07T19:00:00"
        );
    });
}

#[test]
fn belgian_gas_and_water_channels() {
    with_fixture("fluvius_emucs.txt", |t| {
        assert_eq!(t.version(), Some(&b"50217"[..]));
        let devices: Vec<_> = t.mbus_devices().map(|d| (d.channel, d.kind())).collect();
        assert_eq!(
            devices,
            [(1, Some(MbusKind::Gas)), (2, Some(MbusKind::Water))]
        );
        let gas = t.mbus_devices().next().unwrap().reading().unwrap();
        assert_eq!(gas.value.in_unit("m3"), Some(1534.219)); // from 0-1:24.2.3
    });
}

#[test]
fn heat_meter_in_gigajoules() {
    with_fixture("three_digit_crc.txt", |t| {
        assert_eq!(t.crc(), Some(0x0632));
        let heat = t.mbus_devices().next().unwrap();
        assert_eq!(heat.kind(), Some(MbusKind::Heat));
        assert_eq!(heat.reading().unwrap().value.in_unit("GJ"), Some(123.458));
    });
}

#[test]
fn german_meter_with_star_255_codes_and_watts() {
    with_fixture("q3d_star255.txt", |t| {
        assert_eq!(t.equipment_id(), Some(&b"0273011047219"[..]));
        let total = EnergyRegister {
            direction: Direction::Import,
            tariff: 0,
        };
        assert_eq!(t.energy_kwh(total), Some(31472.6048113));
        assert_eq!(t.power_import_w(), Some(906.03));
    });
}

#[test]
fn impossible_dates_are_flagged_values() {
    with_fixture("impossible_dates.txt", |t| {
        let flags: Vec<_> = t
            .objects()
            .flat_map(|o| o.values().collect::<Vec<_>>())
            .filter_map(|v| v.time()?.utc().err())
            .collect();
        assert_eq!(
            flags,
            [
                TimeFlag::Impossible,
                TimeFlag::Placeholder,
                TimeFlag::Impossible
            ]
        );
        assert!(t.line_errors().is_empty());
    });
}

#[test]
fn a_bad_line_is_reported_and_the_rest_is_kept() {
    with_fixture("bad_line.txt", |t| {
        let errors: Vec<_> = t.line_errors().iter().map(|e| (e.kind, e.line)).collect();
        assert_eq!(errors, [(ErrorKind::BadObis, 7)]);
        assert!(t.objects().count() >= 9);
        assert!(
            t.voltage_v(Phase::L1).is_some(),
            "lines after the bad one are read"
        );
    });
}

#[test]
fn lower_case_time_flags_read_like_upper_case_ones() {
    with_fixture("lowercase_flags.txt", |t| {
        let time = t.time().expect("0-0:1.0.0 is a time");
        assert_eq!(time.dst(), Some(Dst::Winter));
        assert_eq!(time.utc().unwrap().to_string(), "2010-12-09T10:30:20Z");
        let gas = t
            .mbus_devices()
            .next()
            .unwrap()
            .reading()
            .expect("gas reading");
        assert_eq!(
            gas.captured.utc().unwrap().to_string(),
            "2010-12-09T10:00:00Z"
        );
        let log = t.objects().find(|o| o.obis().c == 99).unwrap();
        let dst: Vec<_> = log.values().filter_map(|v| v.time()?.dst()).collect();
        assert_eq!(dst, [Dst::Summer, Dst::Winter]);
        assert!(t.line_errors().is_empty());
    });
}

#[test]
fn dotted_obis_codes_read_like_star_codes() {
    with_fixture("dotted_obis.txt", |t| {
        assert!(t.line_errors().is_empty(), "{:?}", t.line_errors());
        assert_eq!(t.current_a(Phase::L1), Some(1.0)); // 1-0:31.7.0.255
        assert_eq!(t.phase_power_import_w(Phase::L1), Some(231.0)); // 1-0:21.7.0.255
        // `.1` is F = 1, as `*1` would be: not the register 1-0:1.8.0.
        let f1 = t.objects().find(|o| o.obis().f == 1).expect("1-0:1.8.0.1");
        assert_eq!(f1.obis().to_string(), "1-0:1.8.0*1");
        assert_eq!(t.energy_registers().count(), 4);
    });
}

#[test]
fn twelve_digit_times_are_unflagged_times_only_where_a_time_is_expected() {
    with_fixture("unflagged_times.txt", |t| {
        assert!(t.line_errors().is_empty());
        let time = t.time().expect("0-0:1.0.0 is a time");
        assert_eq!(time.utc(), Err(TimeFlag::Unflagged));
        assert_eq!(time.civil().unwrap().to_string(), "2016-11-07T19:30:00");
        // Date-shaped ids stay text.
        let id = t.object(codes::EQUIPMENT_ID).unwrap().value(0);
        assert_eq!(id, Some(Value::Text(b"101209113020")));
        let mut devices = t.mbus_devices();
        let gas = devices.next().unwrap();
        assert_eq!(gas.id(), Some(&b"161107190000"[..]));
        let first = t.object(codes::MBUS_READING_DSMR3.on_channel(1)).unwrap();
        assert!(matches!(first.value(0), Some(Value::Time(_))));
        let reading = gas.reading().expect("24.3.0 reading");
        assert_eq!(reading.captured.utc(), Err(TimeFlag::Unflagged));
        assert_eq!(reading.value.in_unit("m3"), Some(12.345));
        // A capture time whose fields do not fit stays text, and is still read as an
        // impossible time by the M-Bus reading, as before.
        let empty = devices.next().unwrap();
        let second = t.object(codes::MBUS_READING_DSMR3.on_channel(2)).unwrap();
        assert_eq!(second.value(0), Some(Value::Text(b"000000000000")));
        let reading = empty.reading().expect("24.3.0 reading on channel 2");
        assert_eq!(reading.captured.utc(), Err(TimeFlag::Impossible));
    });
}

#[test]
fn a_flag_that_contradicts_its_date_is_used_and_reported() {
    with_fixture("flag_contradicts_date.txt", |t| {
        let time = t.time().unwrap();
        assert!(time.flag_contradicts_date(), "W in July");
        assert_eq!(time.utc().unwrap().to_string(), "2024-07-13T13:15:30Z");
        let gas = t.mbus_devices().next().unwrap().reading().unwrap();
        assert!(gas.captured.flag_contradicts_date());
        let log = t.objects().find(|o| o.obis().c == 99).unwrap();
        let contradicts: Vec<_> = log
            .values()
            .filter_map(|v| Some(v.time()?.flag_contradicts_date()))
            .collect();
        assert_eq!(
            contradicts,
            [true, false, false],
            "S in January; the repeated hour"
        );
    });
    with_fixture("dsmr5_nl.txt", |t| {
        assert!(!t.time().unwrap().flag_contradicts_date());
    });
}

#[test]
fn a_telegram_without_the_crc_its_version_requires_is_flagged() {
    with_fixture("crc_missing.txt", |t| {
        assert_eq!(t.crc(), None);
        assert!(t.crc_missing());
        assert_eq!(t.energy_kwh(IMPORT_T1), Some(4312.087), "and read as usual");
    });
    for fixture in ["dsmr22_no_crc.txt", "q3d_star255.txt", "dsmr5_nl.txt"] {
        with_fixture(fixture, |t| assert!(!t.crc_missing(), "{fixture}"));
    }
    let crc_less = |version_line: &str| {
        let text = format!(
            "/XMX5LGBBFG1012345678\r\n\r\n{version_line}\r\n1-0:1.8.1(000001.000*kWh)\r\n!\r\n"
        );
        let mut missing = None;
        with_bytes(text.as_bytes(), |t| missing = Some(t.crc_missing()));
        missing.unwrap()
    };
    assert!(crc_less("1-3:0.2.8(40)"));
    assert!(crc_less("1-3:0.2.8(42)"));
    assert!(crc_less("1-3:0.2.8(50)"));
    assert!(crc_less("0-0:96.1.4(50217)"), "e-MUCS builds on DSMR 5.0.2");
    assert!(!crc_less("1-3:0.2.8(30)"));
    assert!(!crc_less("1-3:0.2.8()"));
    assert!(!crc_less("1-3:0.2.8(ER42)"));
    assert!(!crc_less("0-0:96.1.1(42)"));
}
