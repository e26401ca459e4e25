//! `p1guard parse` over every public capture: each reaches the outcome PROVENANCE.md implies.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

use crate::{captures_dir, p1guard};

const SMARTY_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const LUX_SPEC_KEY: &str = "0123456789abcdef0123456789abcdef";
const LUX_SPEC_AUTH_KEY: &str = "ffeeddccbbaa99887766554433221100";

/// How one frame came out: `valid` (CRC verified), `no_crc`, `crc_missing` (no CRC although
/// its version requires one), or an error kind.
fn outcomes(stdout: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(stdout).expect("UTF-8 output");
    text.lines()
        .map(|line| {
            let json: Value = serde_json::from_str(line).expect("each line is JSON");
            if let Some(kind) = json.pointer("/error/kind") {
                return kind.as_str().expect("kind is a string").to_owned();
            }
            assert!(
                json.get("errors").is_none(),
                "no line errors expected in {line}"
            );
            let flags = json.get("flags").and_then(Value::as_array);
            let crc_missing = flags.is_some_and(|f| f.iter().any(|f| f == "crc_missing"));
            match json["crc"]["valid"] {
                Value::Bool(true) => "valid".into(),
                _ if json["crc"].is_null() && crc_missing => "crc_missing".into(),
                _ if json["crc"].is_null() => "no_crc".into(),
                _ => panic!("unexpected crc field in {line}"),
            }
        })
        .collect()
}

/// `p1guard parse ARGS` with `input` on its standard input.
fn parse_stdin(args: &[&str], input: &[u8]) -> std::process::Output {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_p1guard"))
        .arg("parse")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// The value after `name` on its line of `--summary`'s output.
fn summary_field(text: &str, name: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name} in {text}"));
    line[name.len()..].trim().to_owned()
}

#[test]
fn summary_counts_telegrams_without_the_crc_their_version_requires() {
    // DSMR 5 without CRC, DSMR 2.2 without CRC (none required), DSMR 5 with its CRC.
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/telegram/tests/golden");
    let stream: Vec<u8> = ["crc_missing.txt", "dsmr22_no_crc.txt", "dsmr5_nl.txt"]
        .iter()
        .flat_map(|fixture| std::fs::read(golden.join(fixture)).unwrap())
        .collect();
    let output = parse_stdin(&["--summary"], &stream);
    let text = String::from_utf8(output.stdout).unwrap();
    let field = |name: &str| summary_field(&text, name);
    assert_eq!(field("frames"), "3");
    assert_eq!(field("valid"), "3");
    assert_eq!(field("without CRC"), "2");
    assert_eq!(field("CRC missing"), "1");
    assert_eq!(field("errors"), "0");
    assert_eq!(
        output.status.code(),
        Some(0),
        "a missing CRC is not an error"
    );
}

#[test]
fn an_unreadable_input_exits_2_with_the_reason() {
    let output = p1guard(&["parse", "/nonexistent/capture.txt"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("cannot open /nonexistent/capture.txt")
    );
}

/// `p1guard parse capture | head`: a reader that stops reading ends the command quietly, as
/// it ends any Unix tool, with nothing said on standard error.
#[test]
fn a_reader_that_stops_reading_ends_parse_quietly() {
    use std::io::{Read as _, Write as _};
    let telegram = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crates/telegram/tests/golden/dsmr5_nl.txt"),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_p1guard"))
        .arg("parse")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        // Far more output than a pipe holds; the write fails once p1guard has stopped.
        for _ in 0..20_000 {
            if stdin.write_all(&telegram).is_err() {
                break;
            }
        }
    });
    let mut first = [0u8; 100];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The reader is gone now.
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(first.starts_with(b"{\"header\""));
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
}

#[test]
fn input_without_a_single_telegram_fails_and_says_so() {
    for input in [
        &b""[..],
        &[b'A'; 100_000][..],
        b"garbage at the wrong baud rate\r\n",
    ] {
        let output = parse_stdin(&["--summary"], input);
        assert_eq!(output.status.code(), Some(1), "{}", input.len());
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(stderr.contains("no telegram found"), "{stderr}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert_eq!(summary_field(&stdout, "frames"), "0", "{stdout}");
    }
}

/// What needs the recorded telegrams of other projects (`../shared/captures`): skipped by
/// `scripts/test`, and said so, in a clone without them.
mod corpus {
    use super::*;

    /// Every capture, the flags it needs, and the outcome of each of its frames.
    const CORPUS: &[(&str, &[&str], &[&str])] = &[
        ("arduino-dsmr_minimal_parse_example.txt", &[], &["valid"]),
        ("arduino-dsmr_parse_example_kaifa40.txt", &[], &["valid"]),
        ("dsmr-parse_telegram.txt", &["--lf-to-crlf"], &["valid"]),
        ("dsmr-parse_telegram2.txt", &["--lf-to-crlf"], &["valid"]),
        ("dsmr-parse_telegram3.txt", &["--lf-to-crlf"], &["valid"]),
        // Starts mid-telegram (skipped as noise), ends with a lone header (truncated).
        (
            "dsmr-rs_input1.txt",
            &["--lf-to-crlf"],
            &["valid", "truncated"],
        ),
        ("dsmr-rs_output1.txt", &["--lf-to-crlf"], &["valid"]),
        ("dsmr5_isk.txt", &[], &["valid"]),
        ("dsmr5_kaifa.txt", &[], &["valid"]),
        ("dsmr5_mcs.txt", &[], &["valid"]),
        ("dsmr5_t211.txt", &["--lf-to-crlf"], &["valid"]),
        (
            "dsmr5_overflow.txt",
            &[],
            &[
                "truncated",
                "truncated",
                "truncated",
                "truncated",
                "truncated",
                "truncated",
                "crc_mismatch",
            ],
        ),
        ("dsmr_parser_austria_sagemcom_t210dr.txt", &[], &["valid"]),
        ("dsmr_parser_eon_hungary.txt", &[], &["valid"]),
        ("dsmr_parser_fluvius_v171.txt", &[], &["valid"]),
        ("dsmr_parser_fluvius_v171_alt.txt", &[], &["valid"]),
        ("dsmr_parser_iskra_ie.txt", &[], &["valid"]),
        ("dsmr_parser_q3d_esy5q3da1004.txt", &[], &["no_crc"]),
        ("dsmr_parser_q3d_esy5q3db1024.txt", &[], &["no_crc"]),
        ("dsmr_parser_v2_2.txt", &[], &["no_crc"]),
        ("dsmr_parser_v3.txt", &[], &["no_crc"]),
        ("dsmr_parser_v4_2_kaifa.txt", &[], &["valid"]),
        ("dsmr_parser_v5.txt", &[], &["valid"]),
        ("dsmr_parser_v5_two_mbus.txt", &[], &["valid"]),
        ("dsmr_parser_warmtelink_unpadded_crc.txt", &[], &["valid"]),
        (
            "esphome-dsmr_parser_packet_accumulator_lowercase_crc.txt",
            &[],
            &["valid"],
        ),
        (
            "esphome-dsmr_parser_packet_accumulator_stream.txt",
            &[],
            &["valid", "valid"],
        ),
        // DSMR 4.0 and 4.2 (`1-3:0.2.8(40)`, `(42)`) whose CRC the source left out.
        (
            "esphome-dsmr_parser_parser_test_all_fields.txt",
            &[],
            &["crc_missing"],
        ),
        ("gotsmart_frame_test_xmx42.txt", &[], &["crc_missing"]),
        (
            "esphome-dsmr_parser_encrypted_packet_smarty_vector.bin",
            &["--key", SMARTY_KEY],
            &["valid"],
        ),
        // The spec example's own CRC is wrong (PROVENANCE.md): decryption verifies, the CRC does not.
        (
            "node-dsmr-parser_encrypted_luxembourg_spec_with_aad.bin",
            &["--key", LUX_SPEC_KEY, "--auth-key", LUX_SPEC_AUTH_KEY],
            &["crc_mismatch"],
        ),
        (
            "node-dsmr-parser_encrypted_luxembourg_spec_without_aad.bin",
            &["--key", LUX_SPEC_KEY, "--no-auth-key"],
            &["crc_mismatch"],
        ),
    ];

    #[test]
    fn every_capture_reaches_its_documented_outcome() {
        let dir = captures_dir();
        let mut failures = Vec::new();
        for &(file, flags, expected) in CORPUS {
            let path = dir.join(file);
            let mut args = vec!["parse"];
            args.extend_from_slice(flags);
            args.push(path.to_str().expect("UTF-8 path"));
            let output = p1guard(&args);
            let got = outcomes(&output.stdout);
            let clean = expected
                .iter()
                .all(|o| ["valid", "no_crc", "crc_missing"].contains(o));
            if got != expected || output.status.code() != Some(if clean { 0 } else { 1 }) {
                failures.push(format!(
                    "{file} {flags:?}: got {got:?} exit {:?}, expected {expected:?}",
                    output.status.code()
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "captures with unexpected outcomes:\n{}",
            failures.join("\n")
        );
    }

    #[test]
    fn the_corpus_table_covers_every_capture() {
        let listed: BTreeSet<&str> = CORPUS.iter().map(|(file, _, _)| *file).collect();
        let present: BTreeSet<String> = std::fs::read_dir(captures_dir())
            .expect("readable captures")
            .map(|e| {
                e.expect("entry")
                    .file_name()
                    .into_string()
                    .expect("UTF-8 name")
            })
            .filter(|name| name.ends_with(".txt") || name.ends_with(".bin"))
            .collect();
        let unlisted: Vec<&String> = present
            .iter()
            .filter(|p| !listed.contains(p.as_str()))
            .collect();
        assert!(
            unlisted.is_empty(),
            "captures without an expected outcome: {unlisted:?}"
        );
    }

    #[test]
    fn captures_that_lost_their_cr_fail_their_crc_without_repair() {
        let path = captures_dir().join("dsmr5_t211.txt");
        let output = p1guard(&["parse", path.to_str().unwrap()]);
        assert_eq!(outcomes(&output.stdout), ["crc_mismatch"]);
        assert_eq!(output.status.code(), Some(1));
    }

    #[test]
    fn crc_mismatch_reports_both_checksums() {
        let path = captures_dir().join("dsmr5_overflow.txt");
        let output = p1guard(&["parse", path.to_str().unwrap()]);
        let last = std::str::from_utf8(&output.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_owned();
        let json: Value = serde_json::from_str(&last).unwrap();
        assert_eq!(json["error"]["expected"], "67B1");
        assert_eq!(json["error"]["computed"], "55BD");
    }

    #[test]
    fn a_wrong_key_is_a_decryption_error() {
        let path = captures_dir().join("esphome-dsmr_parser_encrypted_packet_smarty_vector.bin");
        let output = p1guard(&["parse", "--key", LUX_SPEC_KEY, path.to_str().unwrap()]);
        assert_eq!(outcomes(&output.stdout), ["decryption"]);
        assert_eq!(output.status.code(), Some(1));
    }

    #[test]
    fn summary_counts_frames_errors_and_meters() {
        let path = captures_dir().join("dsmr5_overflow.txt");
        let output = p1guard(&["parse", "--summary", path.to_str().unwrap()]);
        let text = String::from_utf8(output.stdout).unwrap();
        let field = |name: &str| summary_field(&text, name);
        assert_eq!(field("frames"), "7");
        assert_eq!(field("valid"), "0");
        assert_eq!(field("errors"), "7  (crc_mismatch 1, truncated 6)");
        assert_eq!(field("meters"), "0");
        assert_eq!(output.status.code(), Some(1));
    }

    #[test]
    fn stdin_is_read_when_no_file_is_named() {
        let capture = std::fs::read(captures_dir().join("dsmr_parser_v5.txt")).unwrap();
        let output = parse_stdin(&["--summary"], &capture);
        assert!(
            String::from_utf8(output.stdout)
                .unwrap()
                .contains("meters           1  (K8EG004046395507)")
        );
        assert_eq!(output.status.code(), Some(0));
    }
}
