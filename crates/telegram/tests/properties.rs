//! Properties over generated input: no input makes the crate panic, how a stream is cut
//! into chunks never changes what comes out of it, reading an object by its code finds the
//! first object with that code, and a parser reads a telegram the same whatever it read
//! before.

use std::path::{Path, PathBuf};

use p1guard_telegram::json::Outcome;
use p1guard_telegram::{Error, Framer, FramerConfig, Obis, Parser, Telegram};
use proptest::prelude::*;

/// Every outcome of a stream pushed in the given chunks, as JSON lines, with every typed
/// accessor exercised on the way.
fn outcomes<'a>(config: FramerConfig, chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<String> {
    let mut framer = Framer::new(config);
    let mut parser = Parser::new();
    let mut out = Vec::new();
    let mut drain = |framer: &mut Framer, out: &mut Vec<String>| {
        while let Some(frame) = framer.next_frame() {
            let outcome = frame.and_then(|frame| parser.parse(&frame));
            if let Ok(t) = outcome {
                let _ = (
                    t.time().map(|time| time.utc()),
                    t.equipment_id(),
                    t.tariff(),
                );
                let _ = (
                    t.energy_registers().count(),
                    t.power_import_w(),
                    t.text_message_hex(),
                );
                for device in t.mbus_devices() {
                    let _ = (device.kind(), device.reading().map(|r| r.captured.utc()));
                }
            }
            out.push(serde_json::to_string(&Outcome(outcome)).expect("serialisable"));
        }
    };
    for chunk in chunks {
        framer.push(chunk);
        drain(&mut framer, &mut out);
    }
    framer.finish();
    drain(&mut framer, &mut out);
    out
}

/// Pieces that telegrams are made of, so generated input reaches deep into the grammar.
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"/ISk5\\2MT382-1000\r\n\r\n".to_vec()),
        Just(b"/".to_vec()),
        Just(b"!".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"(".to_vec()),
        Just(b")".to_vec()),
        Just(b"1-0:1.8.1".to_vec()),
        Just(b"0-1:24.2.1".to_vec()),
        Just(b"0-1:24.3.0(161107190000)(00)(60)(1)(0-1:24.2.1)(m3)\r\n".to_vec()),
        Just(b"(000101000001W)".to_vec()),
        Just(b"(632525252525S)".to_vec()),
        Just(b"(101209113020w)".to_vec()),
        Just(b"0-0:1.0.0(161107193000)".to_vec()),
        Just(b"1-3:0.2.8(50)\r\n".to_vec()),
        Just(b".255".to_vec()),
        Just(b"(-0001.5*kWh)".to_vec()),
        Just(b"*255".to_vec()),
        "[0-9A-Fa-f.:*-]{0,12}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..24),
    ]
}

fn config() -> impl Strategy<Value = FramerConfig> {
    (
        any::<bool>(),
        any::<bool>(),
        prop_oneof![Just(8 * 1024), 2usize..64],
    )
        .prop_map(|(clear_bit7, lf_to_crlf, max_frame_len)| FramerConfig {
            max_frame_len,
            clear_bit7,
            lf_to_crlf,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), config in config()) {
        outcomes(config, [&bytes[..]]);
    }

    #[test]
    fn telegram_like_input_never_panics(
        fragments in prop::collection::vec(fragment(), 0..64),
        config in config(),
    ) {
        outcomes(config, [&fragments.concat()[..]]);
    }
}

/// A code from a small set, so that telegrams repeat codes.
fn small_code() -> impl Strategy<Value = Obis> {
    (0u8..2, 0u8..3, 0u8..100, 0u8..3, 0u8..3).prop_map(|(a, b, c, d, e)| Obis::new(a, b, c, d, e))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// `Telegram::object` reads by code through an index of the first 64 objects; beyond
    /// that, and for every code whether present or not, it must agree with a walk.
    #[test]
    fn an_object_read_by_code_is_the_first_with_that_code(
        codes in prop::collection::vec(small_code(), 0..150),
        probes in prop::collection::vec(small_code(), 1..40),
    ) {
        let mut text = b"/XYZ5 generated\r\n\r\n".to_vec();
        for code in &codes {
            let Obis { a, b, c, d, e, .. } = *code;
            text.extend(format!("{a}-{b}:{c}.{d}.{e}(1.5*kW)\r\n").bytes());
        }
        text.extend(b"!\r\n");
        let mut framer = Framer::new(FramerConfig::default());
        framer.push(&text);
        framer.finish();
        let frame = framer.next_frame().expect("a frame").expect("framed");
        let mut parser = Parser::new();
        let telegram = parser.parse(&frame).expect("parsed");
        prop_assert_eq!(telegram.objects().len(), codes.len());
        for code in probes.iter().chain(&codes) {
            let walked = telegram.objects().find(|o| o.obis() == *code).map(|o| o.line());
            prop_assert_eq!(telegram.object(*code).map(|o| o.line()), walked, "{}", code);
        }
    }
}

/// A parse outcome as a reader sees it: its JSON, and the line at which [`Telegram::object`]
/// finds each object's code (through the parser's index of codes).
fn as_read(outcome: Result<Telegram<'_>, Error>) -> String {
    let found: Vec<_> = (outcome.iter())
        .flat_map(|t| {
            t.objects()
                .map(|o| t.object(o.obis()).map(|first| first.line()))
        })
        .collect();
    // Every value exactly, as the JSON's floats do not show a decimal's scale.
    let values: Vec<Vec<_>> = (outcome.iter())
        .flat_map(|t| t.objects().map(|o| o.values().collect()))
        .collect();
    let json = serde_json::to_string(&Outcome(outcome)).expect("serialisable");
    format!("{json} {found:?} {values:?}")
}

/// A line from a small set whose codes share their first bytes, differ only near or after
/// the `(`, are too long to be remembered, or are not codes at all.
fn similar_line() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(
        &[
            "1-0:1.8.1(001234.567*kWh)",
            "1-0:1.8.10(1.5*kWh)",
            "1-0:1.8.1*2(1.5*kWh)",
            "1-0:1.8.1.255(1.5*kWh)",
            "1-0:1.8.1.2(1.5*kWh)",
            "1-0:1.8.1",
            "1-0:1.8.1x(1)",
            "1-0:1.8.(1)",
            "1-0:1.8.1((ER11))",
            "0-0:96.13.0()",
            "0-0:96.13.0(",
            "0-1:24.2.1(101209110000W)(12785.123*m3)",
            "0-1:24.3.0(090212160000)(00)(60)(1)(0-1:24.2.1)(m3)",
            "(00001.001)",
            "",
            "100-200:255.255.255*255(1)",
            "0001-0:1.8.1(2)",
        ][..],
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// A parser remembers the codes of the telegram before (a meter repeats them); a
    /// long-lived parser must still read every telegram as a new parser does.
    #[test]
    fn a_parser_reads_each_telegram_as_a_new_parser_does(
        telegrams in prop::collection::vec(prop::collection::vec(similar_line(), 0..12), 1..8),
    ) {
        let mut long_lived = Parser::new();
        for lines in telegrams {
            let mut text = b"/XYZ5 similar\r\n\r\n".to_vec();
            for line in lines {
                text.extend(line.bytes().chain(*b"\r\n"));
            }
            text.extend(b"!\r\n");
            let mut framer = Framer::new(FramerConfig::default());
            framer.push(&text);
            framer.finish();
            let frame = framer.next_frame().expect("a frame").expect("framed");
            prop_assert_eq!(
                as_read(long_lived.parse(&frame)),
                as_read(Parser::new().parse(&frame)),
                "{}",
                text.escape_ascii()
            );
        }
    }
}

/// Lines in families of the same width, ending included: a value that changed (a digit of a
/// number, negative or of 18 digits, of a time, of text or of a unit, and to another shape: a
/// number damaged, a unit changed, a time that no longer fits), a code that
/// changed, an LF or a CR moved inside, a `)` moved, added or taken away, a group broken or
/// split in two, a line that became a continuation.
/// Telegrams made of one family's lines after another have the length of the telegram
/// before, the parser's shortcut (only the groups whose bytes changed are typed again),
/// without always having its lines.
const SAME_WIDTH_FAMILIES: &[&[&str]] = &[
    &[
        "1-0:1.8.1(001234.567*kWh)\r\n",
        "1-0:1.8.1(001234.568*kWh)\r\n",
        "1-0:1.8.2(001234.567*kWh)\r\n",
        "1-0:1.8.1*2(1234.567*kWh)\r\n",
        "1-0:1.8.1(0012\n4.567*kWh)\r\n",
        "1-0:1.8.1(01234.567*kWh)\n\r\n",
        "1-0:1.8.1(001234.567*kWhx\r\n",
        "1-0:1.8.1(001234.567*kWh))\n",
        "1-0:1.8.1(001234.567*kW)\r\r\n",
        "1-0:1.8.1(001234.567*kWh)\r\r",
        "(-0:1.8.1(001234.567*kWh)\r\n",
        "1-0:1.8.1(0012)(.567*kWh)\r\n",
        "1-0:1.8.1(0012)4.567*kWh)\r\n",
        "1-0:1.8.1(001234.567*kWh)(\n",
        "1-0:1.8.1(0012X4.567*kWh)\r\n",
        "1-0:1.8.1(-01234.567*kWh)\r\n",
        "1-0:1.8.1(001234.567*kWX)\r\n",
        "1-0:1.8.1(0012345678*kWh)\r\n",
        "1-0:1.8.1(0012345679*kWh)\r\n",
        "1-0:1.8.1(9012345670*kWh)\r\n",
        "1-0:1.8.1(01234.5670*kWh)\r\n",
        "1-0:1.8.1(-01294.567*kWh)\r\n",
        "1-0:1.8.1(-00000.000*kWh)\r\n",
        "1-0:1.8.1(-00000.001*kWh)\r\n",
        "1-0:1.8.1(990000.009*kWh)\r\n",
    ],
    &[
        "0-0:96.13.0()\r\n",
        "0-0:96.13.1()\r\n",
        "0-0:96.13.0)(\r\n",
        "(0-0:96.13.0)\r\n",
        "0-0:96.13.0()\n\n",
    ],
    &["\r\n", "\n\n", "()", "x\n", "\n\r", "x("],
    &[
        "0-1:24.2.1(101209110000W)(12785.123*m3)\r\n",
        "0-1:24.2.1(101209110000W)(12785.124*m3)\r\n",
        "0-1:24.2.1(101209110000W)\n12785.123*m3)\r\n",
        "0-1:24.2.1(101209110000W))12785.123*m3(\r\n",
        "0-1:24.2.1(101209110000W)(12785)123*m3)\r\n",
        "0-1:24.2.1(101209110000W)x12785.123*m3)\r\n",
        "0-1:24.2.1(101209110000W)(1278)(.123*m3)\n",
        "0-1:24.2.1(1012091100.0W)(12785.123*m3)\r\n",
        "0-1:24.2.1(101209110000X)(12785.123*m3)\r\n",
        "0-1:24.2.1(101209110059W)(12785.123*m3)\r\n",
        "0-1:24.2.1(991231235959s)(12785.123*m4)\r\n",
        "0-1:24.2.1(101209110000W)(-2785.923*m3)\r\n",
        "0-1:24.2.1(101209110000W)(12785123*m33)\r\n",
    ],
    &[
        "0-0:96.1.1(4530303034)(0002)\r\n",
        "0-0:96.1.1(4530303035)(0001)\r\n",
        "0-0:96.1.1(45303030.5)(0001)\r\n",
        "1-0:1.8.9(12345678901234567.8*kWh)\r\n",
        "1-0:1.8.9(99999999999999999.9*kWh)\r\n",
        "1-0:1.8.9(1234567890123456789*kWh)\r\n",
    ],
    &[
        "1-0:0.2.0((ER11))\r\n",
        "1-0:0.2.0((ER12))\r\n",
        "1-0:0.2.0((ER)1))\r\n",
        "1-0:0.2.0()(ER11)\r\n",
        "1-0:0.2.0((ER11)(\r\n",
        "1-0:0.2.0(ER11)()\r\n",
    ],
    &[
        "0-1:24.3.0(090212160000)(00)(60)(1)(0-1:24.2.1)(m3)\r\n",
        "0-1:24.3.0(090212160000)(00)(60)(1)(0-1:24.2.1)(m3)\r\r",
        "0-1:24.3.0(000000000000)(00)(60)(1)(0-1:24.2.1)(m3)\r\n",
        "0-1:24.3.0(090212160000)(00)(60)(2)(0-1:24.2.1)(m4)\r\n",
    ],
    &[
        "(00001.001)\r\n",
        "(00001.002)\r\n",
        "(00001.001\r\r\n",
        "0-0:1.8.1()\r\n",
        "(00001.0X1)\r\n",
    ],
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// A parser keeps the telegram before's objects for a telegram whose lines have its
    /// widths, codes and runs of groups; it must read every telegram as a new parser does.
    #[test]
    fn a_telegram_laid_out_as_the_one_before_reads_as_a_new_parser_reads_it(
        families in prop::collection::vec(0..SAME_WIDTH_FAMILIES.len(), 0..10),
        telegrams in prop::collection::vec(
            (
                prop_oneof![4 => Just(b"XYZ5"), 1 => Just(b"XYZ6")],
                prop::collection::vec(prop_oneof![4 => Just(0usize), 1 => 0usize..26], 10),
            ),
            1..8,
        ),
    ) {
        // One stream, so that each frame has its own offset, as a line error's must be.
        let mut framer = Framer::new(FramerConfig::default());
        for (header, variants) in telegrams {
            framer.push(b"/");
            framer.push(header);
            framer.push(b" same widths\r\n\r\n");
            for (family, variant) in families.iter().zip(variants) {
                let family = SAME_WIDTH_FAMILIES[*family];
                framer.push(family[variant % family.len()].as_bytes());
            }
            framer.push(b"!\r\n");
        }
        framer.finish();
        let mut long_lived = Parser::new();
        while let Some(frame) = framer.next_frame() {
            let frame = frame.expect("framed");
            prop_assert_eq!(
                as_read(long_lived.parse(&frame)),
                as_read(Parser::new().parse(&frame)),
                "{}",
                frame.bytes().escape_ascii()
            );
        }
    }
}

/// What reads the recorded telegrams of other projects (`../shared/captures`): skipped by
/// `scripts/test`, and said so, in a clone without them.
mod corpus {
    use super::*;

    fn captures_dir() -> PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/captures");
        assert!(
            dir.is_dir(),
            "the shared captures are expected at {}",
            dir.display()
        );
        dir
    }

    /// Every capture and fixture back to back: real meters, garbage, truncations, CRC errors.
    fn concatenated_stream() -> Vec<u8> {
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        let mut files: Vec<PathBuf> = [captures_dir(), golden]
            .iter()
            .flat_map(|dir| std::fs::read_dir(dir).expect("readable directory"))
            .map(|entry| entry.expect("readable entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "txt" || e == "bin"))
            .collect();
        files.sort();
        files
            .iter()
            .flat_map(|f| std::fs::read(f).expect("readable file"))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn any_chunking_yields_the_same_frames(
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..200),
            config in config(),
        ) {
            let stream = concatenated_stream();
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([stream.len()]) {
                chunks.push(&stream[from..cut]);
                from = cut;
            }
            let whole = outcomes(config, [&stream[..]]);
            prop_assert!(whole.len() > 40, "the stream holds the captures' frames");
            prop_assert_eq!(outcomes(config, chunks), whole);
        }
    }
}
