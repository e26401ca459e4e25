//! Environment overrides: `P1GUARD_SECTION__KEY=value` sets `key` in `[section]` (a name
//! without `__` is not an override, so `P1GUARD_`-named secrets stay secrets); a number
//! picks an array entry (`P1GUARD_SINKS__0__MAX_GRANULARITY=daily`). A value is read as TOML
//! if it parses as one (`42`, `true`, `["a", "b"]`), else as a string.

use toml::{Table, Value};

/// The prefix of override variables.
pub const PREFIX: &str = "P1GUARD_";

/// Applies every override in `vars` to `document`; returns a problem per override that does
/// not fit the document's shape, and the overrides that were applied.
pub fn apply(
    document: &mut Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> (Vec<String>, Vec<Override>) {
    let mut problems = Vec::new();
    let mut applied = Vec::new();
    for (name, raw) in vars {
        let Some(path) = name.strip_prefix(PREFIX).filter(|p| p.contains("__")) else {
            continue;
        };
        let keys: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        match set(document, &keys, parse_value(&raw)) {
            Ok(()) => applied.push(Override { name, keys }),
            Err(problem) => problems.push(format!("environment {name}: {problem}")),
        }
    }
    (problems, applied)
}

/// An override that was applied: the variable's name and the keys it set.
pub struct Override {
    name: String,
    keys: Vec<String>,
}

impl Override {
    /// Says, after each of `problems` about the section or entry the override set a key of,
    /// that the key came from the environment: the file may not say what was read. (The
    /// variable's name only: its value may be a secret.)
    pub fn point_out(&self, problems: &mut [String]) {
        let section = match self.keys.as_slice() {
            [section, index, _, ..] if index.parse::<usize>().is_ok() => {
                format!("{section}[{index}]")
            }
            [section, ..] => section.clone(),
            [] => return,
        };
        let key = self.keys.join(".");
        for problem in problems.iter_mut() {
            if super::about(problem, &section).is_some() {
                problem.push_str(&format!(" ({} sets {key})", self.name));
            }
        }
    }
}

fn parse_value(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

fn set(table: &mut Table, keys: &[String], value: Value) -> Result<(), String> {
    let (first, rest) = keys.split_first().ok_or("empty name")?;
    if first.is_empty() {
        return Err("empty key".into());
    }
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return Ok(());
    }
    let entry = table
        .entry(first.clone())
        .or_insert_with(|| Value::Table(Table::new()));
    set_in(entry, rest, value)
}

fn set_in(node: &mut Value, keys: &[String], value: Value) -> Result<(), String> {
    match node {
        Value::Table(table) => set(table, keys, value),
        Value::Array(array) => {
            let (index, rest) = keys.split_first().ok_or("empty name")?;
            let len = array.len();
            let slot = index
                .parse::<usize>()
                .ok()
                .and_then(|i| array.get_mut(i))
                .ok_or_else(|| format!("no entry {index} (there are {len})"))?;
            if rest.is_empty() {
                *slot = value;
                Ok(())
            } else {
                set_in(slot, rest, value)
            }
        }
        _ => Err(format!("{} is not a table", keys[0])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(document: &str, vars: &[(&str, &str)]) -> (Table, Vec<String>) {
        let mut table: Table = document.parse().unwrap();
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let (problems, _) = apply(&mut table, vars);
        (table, problems)
    }

    #[test]
    fn sets_keys_in_sections_and_array_entries() {
        let (table, problems) = applied(
            "[consent]\ndefault = 'billing'\n[[sinks]]\ntype = 'stdout'\n",
            &[
                ("P1GUARD_CONSENT__DEFAULT", "daily"),
                ("P1GUARD_SINKS__0__MAX_GRANULARITY", "live"),
                (
                    "P1GUARD_IDENTITY__KEY_FILE",
                    "/var/lib/p1guard/identity.key",
                ),
                ("HOME", "/root"),
                ("P1GUARD_MQTT_PASSWORD", "not a setting"),
            ],
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(table["consent"]["default"].as_str(), Some("daily"));
        assert_eq!(table["sinks"][0]["max_granularity"].as_str(), Some("live"));
        assert_eq!(
            table["identity"]["key_file"].as_str(),
            Some("/var/lib/p1guard/identity.key")
        );
    }

    #[test]
    fn values_are_toml_where_they_parse_as_toml() {
        let (table, _) = applied(
            "[[sources]]\ntype = 'tcp'\n",
            &[
                ("P1GUARD_SOURCES__0__READ_TIMEOUT_SECS", "30"),
                ("P1GUARD_SOURCES__0__LF_TO_CRLF", "true"),
            ],
        );
        assert_eq!(
            table["sources"][0]["read_timeout_secs"].as_integer(),
            Some(30)
        );
        assert_eq!(table["sources"][0]["lf_to_crlf"].as_bool(), Some(true));
    }

    #[test]
    fn an_override_that_does_not_fit_is_a_problem() {
        let (_, problems) = applied(
            "[[sinks]]\ntype = 'stdout'\n",
            &[("P1GUARD_SINKS__3__TYPE", "sqlite")],
        );
        assert_eq!(
            problems,
            ["environment P1GUARD_SINKS__3__TYPE: no entry 3 (there are 1)"]
        );
    }

    #[test]
    fn a_problem_where_an_override_set_a_key_names_the_variable() {
        let mut table: Table = "[consent]\n[[sinks]]\ntype = 'stdout'\n".parse().unwrap();
        let vars = [
            ("P1GUARD_CONSENT__DEFAULT", "hourly"),
            ("P1GUARD_SINKS__0__MAX_GRANULARITY", "weekly"),
        ];
        let vars = vars.map(|(k, v)| (k.to_owned(), v.to_owned()));
        let (problems, applied) = apply(&mut table, vars);
        assert!(problems.is_empty(), "{problems:?}");
        let mut problems = vec![
            "consent: unknown variant `hourly`".to_owned(),
            "consent.meters: \"\": a meter id is the equipment id as sent".to_owned(),
            "sinks[0]: unknown variant `weekly`".to_owned(),
            "sinks[1]: identity \"x\": expected pseudonym or raw".to_owned(),
            "consents: unknown section".to_owned(),
        ];
        for applied in &applied {
            applied.point_out(&mut problems);
        }
        assert_eq!(
            problems,
            [
                "consent: unknown variant `hourly` (P1GUARD_CONSENT__DEFAULT sets consent.default)",
                "consent.meters: \"\": a meter id is the equipment id as sent (P1GUARD_CONSENT__DEFAULT sets consent.default)",
                "sinks[0]: unknown variant `weekly` (P1GUARD_SINKS__0__MAX_GRANULARITY sets sinks.0.max_granularity)",
                "sinks[1]: identity \"x\": expected pseudonym or raw",
                "consents: unknown section",
            ]
        );
    }
}
