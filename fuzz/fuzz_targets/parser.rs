//! Parser, typed accessors, JSON output and DLMS decryption: no panic on any input, JSON that
//! parses back, accessors consistent with each other, a long-lived parser reading as a new one.
//!
//! Input: the last byte (XOR LF) chooses the framer's byte repairs and whether to run the
//! encryption round trip; the rest is the stream.

#![no_main]

use aes_gcm::aead::AeadInPlace;
use aes_gcm::aead::consts::U12;
use aes_gcm::aes::Aes128;
use aes_gcm::{AesGcm, KeyInit, Nonce};
use libfuzzer_sys::fuzz_target;
use p1guard_telegram::dlms::{CipherFramer, Decryptor, SMARTY_AUTH_KEY};
use p1guard_telegram::{
    Direction, EnergyRegister, ErrorKind, Frame, Framer, FramerConfig, MeterTime, Obis, Parser,
    Phase, Telegram, Value, codes, crc16,
};

/// The key of the Smarty test vector in /work/shared/captures, so that seed decrypts.
const KEY: [u8; 16] = [0xAA; 16];

fuzz_target!(|data: &[u8]| {
    // The control byte is the last one, XOR LF, so that a capture ending in LF is a seed that
    // runs with the defaults and keeps its leading '/'.
    let Some((&last, input)) = data.split_last() else {
        return;
    };
    let control = last ^ b'\n';
    let config = FramerConfig {
        clear_bit7: control & 1 != 0,
        lf_to_crlf: control & 2 != 0,
        ..FramerConfig::default()
    };
    parse_stream(config, input);

    let decryptors = [
        Decryptor::new(KEY, Some(SMARTY_AUTH_KEY)),
        Decryptor::new(KEY, None),
    ];
    let mut framer = CipherFramer::new();
    framer.push(input);
    while let Some(item) = framer.next_frame() {
        let Ok((frame, offset)) = item else { continue };
        for decryptor in &decryptors {
            let mut out = b"kept".to_vec();
            match decryptor.decrypt(frame, offset, &mut out) {
                Ok(()) => parse_stream(config, &out[4..]),
                Err(error) => {
                    assert!(matches!(
                        error.kind,
                        ErrorKind::BadCipherFrame | ErrorKind::Decryption
                    ));
                    assert_eq!(error.offset, offset);
                    assert_eq!(out, b"kept", "a failed decryption left bytes behind");
                }
            }
        }
    }

    if control & 0x80 != 0 {
        round_trip(input, &decryptors);
    }
});

/// Encrypts `plain` as a Smarty meter would, then frames, decrypts and parses it.
fn round_trip(plain: &[u8], decryptors: &[Decryptor; 2]) {
    if plain.len() > 8 * 1024 + 64 - 13 - 17 {
        return;
    }
    let title = *b"FUZZMETR";
    let (security_control, counter) = (0x30u8, [0, 0, 0, 42]);
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&title);
    nonce[8..].copy_from_slice(&counter);
    let mut aad = vec![security_control];
    aad.extend_from_slice(&SMARTY_AUTH_KEY);
    let mut body = plain.to_vec();
    let tag = AesGcm::<Aes128, U12, U12>::new(&KEY.into())
        .encrypt_in_place_detached(Nonce::<U12>::from_slice(&nonce), &aad, &mut body)
        .unwrap();
    let body_len = u16::try_from(5 + body.len() + 12).unwrap();
    let mut envelope = vec![0xDB, 0x08];
    envelope.extend_from_slice(&title);
    envelope.push(0x82);
    envelope.extend_from_slice(&body_len.to_be_bytes());
    envelope.push(security_control);
    envelope.extend_from_slice(&counter);
    envelope.extend_from_slice(&body);
    envelope.extend_from_slice(&tag);

    let mut framer = CipherFramer::new();
    framer.push(&envelope);
    let (frame, offset) = framer
        .next_frame()
        .expect("a whole frame")
        .expect("well formed");
    assert_eq!((frame, offset), (&envelope[..], 0));
    let mut out = Vec::new();
    decryptors[0]
        .decrypt(frame, offset, &mut out)
        .expect("round trip decrypts");
    assert_eq!(out, plain);
    let mut wrong = Vec::new();
    assert_eq!(
        decryptors[1]
            .decrypt(frame, offset, &mut wrong)
            .map_err(|e| e.kind),
        Err(ErrorKind::Decryption),
        "the tag ignored the authentication key"
    );
    parse_stream(FramerConfig::default(), &out);
}

/// Frames `stream` and parses every frame; a frame whose CRC fails is parsed again with the
/// right CRC, so that the grammar sees mutated telegrams and not only CRC errors.
fn parse_stream(config: FramerConfig, stream: &[u8]) {
    let mut framer = Framer::new(config);
    framer.push(stream);
    framer.finish();
    let mut parser = Parser::new();
    let mut fixed = Vec::new();
    while let Some(item) = framer.next_frame() {
        let Ok(frame) = item else { continue };
        let error = match parser.parse(&frame) {
            Ok(telegram) => {
                exercise(&telegram, &frame);
                read_as_by_a_new_parser(&telegram, &frame);
                continue;
            }
            Err(error) => error,
        };
        match error.kind {
            ErrorKind::CrcMismatch { expected, computed } => {
                assert_eq!(Some(expected), frame.crc());
                assert_eq!(computed, crc16(frame.bytes()));
                assert_ne!(expected, computed);
                fixed.clear();
                fixed.extend_from_slice(frame.bytes());
                fixed.extend_from_slice(format!("{computed:04X}\r\n").as_bytes());
            }
            ErrorKind::BadHeader => {
                assert_eq!(error.offset, frame.offset());
                continue;
            }
            other => panic!("parse failed with {other:?}"),
        }
        let mut refixed = Framer::new(FramerConfig::default());
        refixed.push(&fixed);
        refixed.finish();
        let frame = refixed.next_frame().unwrap().unwrap();
        let mut parser = Parser::new();
        match parser.parse(&frame) {
            Ok(telegram) => exercise(&telegram, &frame),
            Err(error) => assert_eq!(error.kind, ErrorKind::BadHeader),
        }
    }
}

/// A parser remembers the codes and the frame before it, keeps the groups typed from that
/// frame where only values changed, and keeps its index of codes; a new parser must read the
/// same values exactly, and find each code at the same line.
fn read_as_by_a_new_parser(telegram: &Telegram<'_>, frame: &Frame<'_>) {
    let mut new = Parser::new();
    let again = new.parse(frame).expect("parsed once, it parses again");
    fn objects<'t>(t: &Telegram<'t>) -> Vec<(Obis, u32, Vec<Value<'t>>, Option<u32>)> {
        t.objects()
            .map(|o| {
                let found = t.object(o.obis()).map(|first| first.line());
                (o.obis(), o.line(), o.values().collect(), found)
            })
            .collect()
    }
    assert_eq!(objects(telegram), objects(&again));
    assert_eq!(telegram.line_errors(), again.line_errors());
}

/// Calls every accessor and checks what can be checked.
fn exercise(telegram: &Telegram<'_>, frame: &Frame<'_>) {
    assert_eq!(telegram.bytes(), frame.bytes());
    assert_eq!(telegram.offset(), frame.offset());
    assert_eq!(telegram.crc(), frame.crc());
    let header = telegram.header();
    assert!(header.len() >= 3 && header[..3].iter().all(u8::is_ascii_alphabetic));
    let lines = telegram.bytes().iter().filter(|&&b| b == b'\n').count() as u32 + 1;

    let mut last_line = 1;
    for object in telegram.objects() {
        let _ = object.obis().to_string();
        assert!(
            object.line() > last_line && object.line() <= lines,
            "object lines out of order"
        );
        last_line = object.line();
        let first = telegram
            .object(object.obis())
            .expect("an object is found by its code");
        assert!(first.line() <= object.line());
        let count = object.values().len();
        for (i, value) in object.values().enumerate() {
            assert_eq!(object.value(i), Some(value));
            if let Value::Time(time) = value
                && time.dst().is_none()
            {
                let code = object.obis();
                let mbus = [
                    codes::MBUS_READING,
                    codes::MBUS_READING_EMUCS,
                    codes::MBUS_READING_DSMR3,
                ];
                let time_code =
                    code == codes::TIME || mbus.iter().any(|c| c.on_channel(code.b) == code);
                assert!(
                    i == 0 && time_code,
                    "an unflagged time only where a time is expected"
                );
            }
            touch_value(value);
        }
        assert_eq!(object.value(count), None);
    }
    for error in telegram.line_errors() {
        assert!(error.line >= 2 && error.line <= lines);
        assert!(matches!(
            error.kind,
            ErrorKind::BadObis | ErrorKind::BadValue
        ));
        let _ = error.to_string();
    }

    let _ = telegram.version();
    if let Some(time) = telegram.time() {
        touch_time(time);
    }
    let _ = telegram.equipment_id();
    for (register, kwh) in telegram.energy_registers() {
        assert!(kwh.is_finite());
        // energy_kwh reads the first object with the code, energy_registers every object:
        // they agree when the code occurs once.
        let c = match register.direction {
            Direction::Import => 1,
            Direction::Export => 2,
        };
        let code = Obis::new(1, 0, c, 8, register.tariff);
        if telegram.objects().filter(|o| o.obis() == code).count() == 1 {
            assert_eq!(telegram.energy_kwh(register), Some(kwh));
            assert_exact_thousandths(telegram.energy_wh(register), kwh);
        }
    }
    for register in [0, 1, 2, 3] {
        let _ = telegram.energy_kwh(EnergyRegister {
            direction: Direction::Export,
            tariff: register,
        });
    }
    let _ = (telegram.power_import_w(), telegram.power_export_w());
    for phase in Phase::ALL {
        let _ = (
            telegram.phase_power_import_w(phase),
            telegram.phase_power_export_w(phase),
            telegram.voltage_v(phase),
            telegram.current_a(phase),
        );
    }
    let _ = (
        telegram.tariff(),
        telegram.power_failures(),
        telegram.long_power_failures(),
        telegram.text_message_hex(),
    );
    let mut channel = 0;
    for device in telegram.mbus_devices() {
        assert!(device.channel > channel && device.channel <= 4);
        channel = device.channel;
        let _ = device.kind();
        assert!(device.id().is_none_or(|id| !id.is_empty()));
        if let Some(reading) = device.reading() {
            touch_time(reading.captured);
            let _ = reading.value.kwh();
            if let Some(m3) = reading.value.in_unit("m3") {
                assert_exact_thousandths(reading.value.thousandths_in("m3"), m3);
            }
        }
    }

    let json = serde_json::to_string(telegram).expect("a telegram serialises");
    let parsed: serde_json::Value = serde_json::from_str(&json).expect("the JSON parses back");
    let object = parsed.as_object().expect("a JSON object");
    assert!(object["header"].is_string());
    assert!(object["objects"].is_object());
    assert_eq!(
        object.contains_key("errors"),
        !telegram.line_errors().is_empty()
    );
    assert!(!telegram.crc_missing() || telegram.crc().is_none());
    assert_eq!(object.contains_key("flags"), telegram.crc_missing());
}

/// An exact reading in thousandths (Wh of kWh, litres of m3) is the floating-point reading
/// times 1000, rounded: within half a unit, give or take the float's own error, and missing
/// only where it would not fit an `i64`.
fn assert_exact_thousandths(exact: Option<i64>, units: f64) {
    let thousandths = units * 1000.0;
    match exact {
        Some(exact) => assert!(
            (exact as f64 - thousandths).abs() <= 0.5 + thousandths.abs() * 1e-12,
            "{exact} thousandths for {units}"
        ),
        None => assert!(thousandths.abs() >= 9.0e18, "no thousandths for {units}"),
    }
}

fn touch_value(value: Value<'_>) {
    match value {
        Value::Empty => {}
        Value::Number(number) => {
            assert!(number.value.to_f64().is_finite());
            let _ = (number.kwh(), number.watts(), number.in_unit("V"));
            if let Some(unit) = number.unit {
                assert!(!unit.is_empty() && unit.bytes().all(|b| b.is_ascii_alphanumeric()));
            }
        }
        Value::Time(time) => touch_time(time),
        Value::Text(_) => {
            let _ = value.count();
        }
    }
    let _ = (value.number(), value.time(), value.text());
}

fn touch_time(time: MeterTime) {
    let shown = time.to_string();
    assert_eq!(
        MeterTime::from_digits(shown.as_bytes()),
        Some(time),
        "{shown} reads back"
    );
    let _ = time.civil();
    match time.utc() {
        Ok(instant) => {
            let _ = instant.to_string();
        }
        Err(flag) => {
            let _ = flag.name();
            assert!(!time.flag_contradicts_date(), "only an instant contradicts");
        }
    }
}
