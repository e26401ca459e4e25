//! The configuration document: a TOML file plus `P1GUARD_SECTION__KEY` environment
//! overrides, secrets read from files or the environment, and the [`Checker`] that collects
//! every problem, so a broken file is reported whole, not one error per attempt. What the
//! document means is not known here: the daemon's sections are read in
//! [`crate::topology::config`], each source and sink kind reads its own settings.

mod env;
mod secret;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use toml::{Table, Value};

pub use self::secret::{Secret, SecretRef};

/// The longest problem line, in characters.
pub const PROBLEM_LIMIT: usize = 400;

/// Every problem found in a configuration, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<String>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        writeln!(
            f,
            "{count} problem{} in the configuration:",
            if count == 1 { "" } else { "s" }
        )?;
        self.0.iter().try_for_each(|p| writeln!(f, "  - {p}"))
    }
}

impl std::error::Error for Problems {}

/// Reads the document at `path` with the process's `P1GUARD_*` overrides, and has `build`
/// check it.
pub fn load<T>(
    path: &Path,
    build: impl FnOnce(&mut Checker<'_>, Table) -> T,
) -> Result<T, Problems> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Problems(vec![format!("cannot read {}: {e}", path.display())]))?;
    parse(&text, std::env::vars(), build)
}

/// Reads a document's text with the environment `vars` (TOML, then the overrides) and has
/// `build` check it: what it builds is returned only if no problem was noted.
pub fn parse<T>(
    text: &str,
    vars: impl IntoIterator<Item = (String, String)>,
    build: impl FnOnce(&mut Checker<'_>, Table) -> T,
) -> Result<T, Problems> {
    let document: Table = text
        .parse()
        .map_err(|e: toml::de::Error| Problems(vec![syntax_error(text, &e)]))?;
    let mut document = document;
    let (mut problems, overrides) = env::apply(&mut document, vars);
    let built = build(
        &mut Checker {
            problems: &mut problems,
        },
        document,
    );
    for applied in &overrides {
        applied.point_out(&mut problems);
    }
    if !problems.is_empty() {
        place(text, &mut problems);
    }
    if problems.is_empty() {
        Ok(built)
    } else {
        Err(Problems(problems))
    }
}

/// Says on which line of `text` each problem's section or entry starts: `sinks[1] (line 14):
/// ...`. Problems are found in the document as read, which keeps no lines; the text is read
/// again for them only when there are problems to place.
fn place(text: &str, problems: &mut [String]) {
    let Ok(document) = toml::de::DeTable::parse(text) else {
        return;
    };
    let mut starts = Vec::new();
    for (key, value) in document.get_ref() {
        let section: &str = key.get_ref();
        match value.get_ref() {
            toml::de::DeValue::Array(entries) => {
                for (i, entry) in entries.iter().enumerate() {
                    starts.push((format!("{section}[{i}]"), line_of(text, entry.span().start)));
                }
            }
            _ => starts.push((section.to_owned(), line_of(text, value.span().start))),
        }
    }
    for problem in problems.iter_mut() {
        let placed = (starts.iter())
            .find_map(|(at, line)| Some(format!("{at} (line {line}){}", about(problem, at)?)));
        if let Some(placed) = placed {
            *problem = placed;
        }
    }
}

/// A TOML syntax error by line and column only: the error's own text quotes the line, which
/// may hold a secret written where it does not belong.
fn syntax_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    let Some(span) = error.span() else {
        return format!("TOML syntax: {message}");
    };
    let before = &text.as_bytes()[..span.start.min(text.len())];
    let line = line_of(text, span.start);
    let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    format!("line {line}, column {column}: TOML syntax: {message}")
}

/// The 1-based line of `text` that byte `offset` is on.
fn line_of(text: &str, offset: usize) -> usize {
    let before = &text.as_bytes()[..offset.min(text.len())];
    before.iter().filter(|&&b| b == b'\n').count() + 1
}

/// What `problem` says of `at` (a section, `sinks[2]`, or a key under them), if it is about
/// it: problems begin with where they are, then `:`, `.` or `[`.
fn about<'p>(problem: &'p str, at: &str) -> Option<&'p str> {
    let rest = problem.strip_prefix(at)?;
    rest.starts_with([':', '.', '[']).then_some(rest)
}

/// Collects problems while something is built from the document; what is built alongside
/// problems is discarded. Each section, source and sink kind checks its settings with it.
pub struct Checker<'p> {
    problems: &'p mut Vec<String>,
}

impl Checker<'_> {
    /// Whether a problem was noted under `section` (or its entries).
    pub fn has_problem_in(&self, section: &str) -> bool {
        self.problems.iter().any(|p| p.starts_with(section))
    }

    /// How many problems are noted so far.
    pub fn count(&self) -> usize {
        self.problems.len()
    }

    /// Notes a problem with the setting at `at`, cut to [`PROBLEM_LIMIT`] characters: a
    /// message may quote what was written, and a 50 MB value must not reach the terminal.
    pub fn problem(&mut self, at: &str, message: impl fmt::Display) {
        let mut problem = format!("{at}: {message}");
        if let Some((cut, _)) = problem.char_indices().nth(PROBLEM_LIMIT) {
            let left = problem.len() - cut;
            problem.truncate(cut);
            problem.push_str(&format!("... ({left} more bytes)"));
        }
        self.problems.push(problem);
    }

    /// Serde's reading of one section, or `None` with the problem noted.
    pub fn read<T: DeserializeOwned>(&mut self, at: &str, value: Value) -> Option<T> {
        match value.try_into() {
            Ok(read) => Some(read),
            Err(error) => {
                let error: toml::de::Error = error;
                self.problem(at, error.message().trim_end());
                None
            }
        }
    }

    /// Each entry of an array of tables, read as the settings all entries share (`C`, whose
    /// keys are `common`) and those of its type (`K`, tagged by `type`), with its name. Names
    /// are checked here, on every entry as written, so that two entries named alike are said
    /// at once, even when one of them has other problems.
    pub fn entries<C: DeserializeOwned, K: DeserializeOwned>(
        &mut self,
        section: &str,
        common: &[&str],
        value: Option<Value>,
    ) -> Vec<Entry<C, K>> {
        let entries = match value {
            None => Vec::new(),
            Some(Value::Array(entries)) => entries,
            Some(_) => {
                self.problem(section, format!("expected [[{section}]] tables"));
                Vec::new()
            }
        };
        let mut read = Vec::new();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (i, entry) in entries.into_iter().enumerate() {
            let at = format!("{section}[{i}]");
            let Value::Table(mut own) = entry else {
                self.problem(&at, "expected a table");
                continue;
            };
            let name = match own.remove("name") {
                Some(Value::String(name)) => Some(name),
                Some(_) => {
                    self.problem(&at, "name: expected a string");
                    None
                }
                // Unnamed, an entry is called by its type.
                None => own.get("type").and_then(Value::as_str).map(str::to_owned),
            };
            if let Some(name) = &name {
                *names.entry(name.clone()).or_insert(0) += 1;
            }
            let shared: Table = common
                .iter()
                .filter_map(|key| own.remove_entry(*key))
                .collect();
            let shared = self.read(&at, Value::Table(shared));
            let own = self.read(&at, Value::Table(own));
            if let (Some(name), Some(common), Some(settings)) = (name, shared, own) {
                read.push(Entry {
                    at,
                    name,
                    common,
                    settings,
                });
            }
        }
        for (name, uses) in names.into_iter().filter(|(_, uses)| *uses > 1) {
            let times = if uses == 2 {
                "twice".into()
            } else {
                format!("{uses} times")
            };
            self.problem(section, format!("the name {name:?} is used {times}"));
        }
        read
    }
}

/// One entry of an array of tables, read by [`Checker::entries`].
pub struct Entry<C, K> {
    /// Where it is in the file (`sinks[2]`).
    pub at: String,
    /// Its `name`, or its `type` when it has none: unique in its section.
    pub name: String,
    /// The settings all entries share.
    pub common: C,
    /// Its type's own settings.
    pub settings: K,
}
