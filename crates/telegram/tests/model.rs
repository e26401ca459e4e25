//! The typed model, specified on the project's own fixtures: what a reducer or a Home
//! Assistant bridge reads from a telegram.

use std::path::Path;

use p1guard_telegram::{
    Direction, Dst, EnergyRegister, ErrorKind, Framer, FramerConfig, MbusKind, Parser, Phase,
    Telegram, TimeFlag,
};

/// Parses the single telegram of a fixture and hands it to `check`.
fn with_fixture(name: &str, check: impl FnOnce(Telegram<'_>)) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let bytes = std::fs::read(&path).expect("fixture exists");
    let mut framer = Framer::new(FramerConfig::default());
    framer.push(&bytes);
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
        let reading = gas[0].reading.expect("gas reading");
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
        let reading = gas.reading.expect("24.3.0 reading");
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
        let gas = t.mbus_devices().next().unwrap().reading.unwrap();
        assert_eq!(gas.value.in_unit("m3"), Some(1534.219)); // from 0-1:24.2.3
    });
}

#[test]
fn heat_meter_in_gigajoules() {
    with_fixture("three_digit_crc.txt", |t| {
        assert_eq!(t.crc(), Some(0x0632));
        let heat = t.mbus_devices().next().unwrap();
        assert_eq!(heat.kind(), Some(MbusKind::Heat));
        assert_eq!(heat.reading.unwrap().value.in_unit("GJ"), Some(123.458));
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
