//! Golden files: every fixture in `tests/golden/` (`*.txt`, `*.bin`) parses to exactly the JSON
//! lines of the `.jsonl` file beside it, which is the `p1guard parse` contract.
//!
//! After a deliberate change of output, `UPDATE_GOLDEN=1 cargo test --test golden` rewrites
//! the `.jsonl` files; review their diff like code.

use std::fs;
use std::path::{Path, PathBuf};

use p1guard_telegram::json::Outcome;
use p1guard_telegram::{Framer, FramerConfig, Parser};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn json_lines(stream: &[u8]) -> String {
    let mut framer = Framer::new(FramerConfig::default());
    let mut parser = Parser::new();
    framer.push(stream);
    framer.finish();
    let mut out = String::new();
    while let Some(frame) = framer.next_frame() {
        let outcome = frame.and_then(|frame| parser.parse(&frame));
        out += &serde_json::to_string(&Outcome(outcome)).expect("JSON of a telegram");
        out.push('\n');
    }
    out
}

#[test]
fn every_fixture_parses_to_its_golden_json() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut fixtures: Vec<PathBuf> = fs::read_dir(golden_dir())
        .expect("tests/golden exists")
        .map(|entry| entry.expect("readable directory").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt" || e == "bin"))
        .collect();
    fixtures.sort();
    assert!(
        fixtures.len() >= 12,
        "fixtures missing from {}",
        golden_dir().display()
    );

    let mut mismatches = Vec::new();
    for fixture in &fixtures {
        let actual = json_lines(&fs::read(fixture).expect("readable fixture"));
        let golden = fixture.with_extension("jsonl");
        if update {
            fs::write(&golden, &actual).expect("writable golden file");
            continue;
        }
        let expected = fs::read_to_string(&golden).unwrap_or_else(|_| {
            panic!(
                "{} has no golden file; run with UPDATE_GOLDEN=1",
                fixture.display()
            )
        });
        if actual != expected {
            mismatches.push(format!(
                "{}:\n  expected {expected}\n  actual   {actual}",
                fixture.display()
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "output differs from golden files:\n{}",
        mismatches.join("\n")
    );
}
