//! The InfluxDB 1.x write API, `POST /write?db=&rp=&precision=s`, which InfluxDB 1.x (Home
//! Assistant's add-on among them) and 3.x serve. Spoken with reqwest directly: the same
//! HTTP stack the v2 client uses, and unlike that client it shows `Retry-After`. Below it,
//! InfluxQL for the retention policies and the rights commands.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use jiff::Timestamp;
use p1guard_conduct::{Granularity, Kind};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use serde::Deserialize;
use serde_json::Value;

use super::rights::{Access, Gathered, Ranges, Remote, refused};
use super::{REQUEST_TIMEOUT, SendError, redact, short};
use crate::config::Secret;
use crate::held::{Held, Purge, Purged};

/// Writes to one database, a retention policy per request.
pub struct V1 {
    client: reqwest::Client,
    /// `{url}/write`.
    endpoint: String,
    database: String,
    credentials: Option<(String, Secret)>,
}

impl V1 {
    /// A writer for `database` on the server at `url`. `client` sends its default headers
    /// (`Content-Encoding` when bodies are compressed) with every request.
    pub fn new(
        client: reqwest::Client,
        url: &str,
        database: String,
        credentials: Option<(String, Secret)>,
    ) -> V1 {
        V1 {
            client,
            endpoint: format!("{}/write", url.trim_end_matches('/')),
            database,
            credentials,
        }
    }

    /// Sends a body of lines into `retention_policy`.
    pub async fn send(&self, retention_policy: &str, body: Vec<u8>) -> Result<(), SendError> {
        let mut request = self
            .client
            .post(&self.endpoint)
            .query(&[
                ("db", self.database.as_str()),
                ("rp", retention_policy),
                ("precision", "s"),
            ])
            .header(CONTENT_TYPE, "text/plain; charset=utf-8");
        if let Some((username, password)) = &self.credentials {
            request = request.basic_auth(username, Some(password.expose()));
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Other(e.into()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let message = response.text().await.unwrap_or_default();
        Err(SendError::Status {
            status: status.as_u16(),
            retry_after,
            message,
        })
    }
}

// InfluxQL over `/query`: the retention setup before the first write, and the rights
// commands' reading back and erasing.

/// Every measurement p1guard writes (the record kinds), as an InfluxQL regex.
const MEASUREMENTS: &str = "/^(electricity|gas|water|heat)$/";

/// Rows per chunk of an answer: chunked answers are not cut by the server's row limit.
const CHUNK_ROWS: &str = "10000";

/// One series of a statement's result.
#[derive(Debug, Default, Deserialize)]
struct Series {
    name: Option<String>,
    #[serde(default)]
    columns: Vec<String>,
    #[serde(default)]
    values: Vec<Vec<Value>>,
}

impl Series {
    /// The position of `column`.
    fn column(&self, column: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == column)
    }

    /// The kind a series of p1guard's measurements holds. VictoriaMetrics fakes answers to
    /// InfluxQL (a `databases` series, or one without a name): taking them for an empty
    /// store would erase nothing and export nothing without a word.
    fn kind(&self) -> anyhow::Result<Kind> {
        let name = self.name.as_deref().unwrap_or_default();
        super::rights::kind(name).with_context(|| {
            format!(
                "InfluxQL answered with a series {name:?} that was not asked for: is this \
                 VictoriaMetrics, which only pretends to answer InfluxQL?"
            )
        })
    }
}

/// One line of a (chunked) `/query` answer.
#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    results: Vec<StatementResult>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct StatementResult {
    statement_id: Option<usize>,
    #[serde(default)]
    series: Vec<Series>,
    error: Option<String>,
}

/// An InfluxQL identifier, double-quoted.
fn identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

/// An InfluxQL string literal, single-quoted.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Runs `statements` on the sink's database; each statement's series. A statement's error
/// fails the whole (statements run in order: those before it took effect).
async fn influxql(
    remote: &Remote,
    statements: &[String],
    timeout: Option<Duration>,
) -> anyhow::Result<Vec<Vec<Series>>> {
    let Access::V1 { database, .. } = &remote.access else {
        anyhow::bail!("InfluxQL needs the v1 API's database");
    };
    let text = statements.join(";\n");
    let form = [
        ("db", database.as_str()),
        ("q", &text),
        ("epoch", "s"),
        ("chunked", "true"),
        ("chunk_size", CHUNK_ROWS),
    ];
    let mut request = remote.request(reqwest::Method::POST, "/query").form(&form);
    if let Some(timeout) = timeout {
        request = request.timeout(timeout);
    }
    let response = request.send().await.context("InfluxQL")?;
    let status = response.status();
    let body = response.text().await.context("InfluxQL")?;
    if !status.is_success() {
        return Err(refused("InfluxQL", status, &body, &text));
    }
    let mut results: Vec<Vec<Series>> = statements.iter().map(|_| Vec::new()).collect();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let answer: Answer = serde_json::from_str(line).context("InfluxQL: an answer")?;
        if let Some(error) = answer.error {
            anyhow::bail!("InfluxQL: {}", short(&redact(&error, &text)));
        }
        for result in answer.results {
            if let Some(error) = result.error {
                anyhow::bail!("InfluxQL: {}", short(&redact(&error, &text)));
            }
            let Some(statement) = result.statement_id.and_then(|id| results.get_mut(id)) else {
                anyhow::bail!(
                    "InfluxQL: an answer without its statement: is this VictoriaMetrics, \
                     which only pretends to answer InfluxQL?"
                );
            };
            statement.extend(result.series);
        }
    }
    Ok(results)
}

/// A retention policy's durations as InfluxDB writes them (`168h0m0s`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Policy {
    duration: String,
    shard_group: String,
}

/// The database's retention policies.
async fn retention_policies(
    remote: &Remote,
    database: &str,
    timeout: Option<Duration>,
) -> anyhow::Result<BTreeMap<String, Policy>> {
    let show = format!("SHOW RETENTION POLICIES ON {}", identifier(database));
    let mut policies = BTreeMap::new();
    for series in influxql(remote, &[show], timeout)
        .await?
        .into_iter()
        .flatten()
    {
        let columns = ["name", "duration", "shardGroupDuration"].map(|c| series.column(c));
        let [Some(name), Some(duration), Some(shard_group)] = columns else {
            continue;
        };
        for row in &series.values {
            let text = |i: usize| row.get(i).and_then(Value::as_str).map(str::to_owned);
            if let (Some(name), Some(duration), Some(shard_group)) =
                (text(name), text(duration), text(shard_group))
            {
                policies.insert(
                    name,
                    Policy {
                        duration,
                        shard_group,
                    },
                );
            }
        }
    }
    Ok(policies)
}

/// The shard group duration, in hours, of a policy keeping records `days`. InfluxDB drops
/// records only with their whole shard group, once its end is past the retention (checked
/// every 30 minutes): with its default of a day for a week's policy, live records stayed
/// eight days. An hour keeps live records within the audit's two hours of slack even while
/// p1guard is not running, in 168 groups. Longer policies keep InfluxDB's defaults (a day up
/// to six months, a week beyond): hourly groups would be 2,160 for 90 days of quarter hours,
/// and the sink's hourly `DELETE` ([`expire`]) ends their records on time.
fn shard_group_hours(days: u64) -> u64 {
    match days {
        0..=7 => 1,
        8..=180 => 24,
        _ => 7 * 24,
    }
}

/// A duration as InfluxDB writes it (`61368h0m0s`) in seconds; `0s` is for ever (`None`).
fn seconds(duration: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut number = 0u64;
    for c in duration.chars() {
        match c {
            '0'..='9' => number = number * 10 + u64::from(c as u8 - b'0'),
            'h' => (total, number) = (total + number * 3600, 0),
            'm' => (total, number) = (total + number * 60, 0),
            's' => (total, number) = (total + number, 0),
            _ => return None,
        }
    }
    (total > 0).then_some(total)
}

/// Creates the database if it is missing (as Telegraf does) and each granularity's retention
/// policy that is missing, with privacy.md's retention (policies shared by granularities get
/// the longest) in shard groups of [`shard_group_hours`]; shortens the shard groups of
/// existing policies of that retention (as an earlier p1guard created them, in InfluxDB's
/// default groups), and warns about existing ones that keep records longer. Creating and
/// altering need an admin; a user without the rights gets a warning, and records go on
/// being written where the database and policies exist.
pub(super) async fn ensure_retention_policies(remote: &Remote, targets: &[String; 4]) {
    let Access::V1 { database, .. } = &remote.access else {
        return;
    };
    let url = remote.url.as_str();
    // Idempotent: an existing database is left as it is.
    let create = format!("CREATE DATABASE {}", identifier(database));
    if let Err(error) = influxql(remote, &[create], Some(REQUEST_TIMEOUT)).await {
        tracing::warn!(
            url = %url,
            database = %database,
            "cannot create the database if it is missing ({error:#}); create it, or make \
             p1guard's user an admin"
        );
    }
    let mut wanted: BTreeMap<&str, u64> = BTreeMap::new();
    for (granularity, policy) in Granularity::ALL.into_iter().zip(targets) {
        let days = crate::sinks::default_retention(granularity).as_secs() / 86_400;
        let longest = wanted.entry(policy).or_default();
        *longest = (*longest).max(days);
    }
    let existing = match retention_policies(remote, database, Some(REQUEST_TIMEOUT)).await {
        Ok(existing) => existing,
        Err(error) => {
            tracing::warn!(
                url = %url,
                database = %database,
                "cannot check the retention policies ({error:#}): records are kept as long \
                 as the existing ones say, and a missing one refuses them"
            );
            return;
        }
    };
    for (policy, days) in wanted {
        let hours = shard_group_hours(days);
        let names = format!("{} ON {}", identifier(policy), identifier(database));
        let (statement, what) = match existing.get(policy) {
            None => (
                format!(
                    "CREATE RETENTION POLICY {names} DURATION {days}d REPLICATION 1 \
                     SHARD DURATION {hours}h"
                ),
                ["create", "created"].map(|verb| {
                    format!("{verb} retention policy {policy}: {days} days, in shard groups of {hours} h")
                }),
            ),
            Some(Policy { duration, .. }) if seconds(duration).is_none_or(|s| s > days * 86_400) => {
                tracing::warn!(
                    url = %url,
                    database = %database,
                    "retention policy {policy} keeps records for {}, longer than the \
                     code of conduct's {days} days",
                    if duration == "0s" { "ever" } else { duration }
                );
                continue;
            }
            Some(Policy {
                duration,
                shard_group,
            }) if seconds(duration) == Some(days * 86_400)
                && seconds(shard_group).is_none_or(|s| s > hours * 3600) =>
            {
                (
                    format!("ALTER RETENTION POLICY {names} SHARD DURATION {hours}h"),
                    ["shorten", "shortened"].map(|verb| {
                        format!(
                            "{verb} the shard groups of retention policy {policy} from \
                             {shard_group} to {hours} h"
                        )
                    }),
                )
            }
            Some(_) => continue,
        };
        match influxql(remote, &[statement], Some(REQUEST_TIMEOUT)).await {
            Ok(_) => tracing::info!(url = %url, database = %database, "{}", what[1]),
            Err(error) => tracing::warn!(
                url = %url,
                database = %database,
                "cannot {} ({error:#}); do it yourself, or make p1guard's user an admin",
                what[0]
            ),
        }
    }
}

/// Deletes every record older than its granularity's retention, as the SQLite store's
/// housekeeping does: InfluxDB drops records only with whole shard groups, up to a group
/// late. `DELETE` spans every retention policy of the database (records an earlier
/// configuration put elsewhere go too) and needs only the right to write.
pub(super) async fn expire(
    remote: &Remote,
    now: Timestamp,
    timeout: Option<Duration>,
) -> anyhow::Result<()> {
    let deletes: Vec<String> = Granularity::ALL
        .into_iter()
        .map(|granularity| {
            let kept = crate::sinks::default_retention(granularity).as_secs() as i64;
            let cutoff = (now.as_second() - kept) * 1_000_000_000;
            format!(
                "DELETE FROM {MEASUREMENTS} WHERE \"granularity\" = {} AND time < {cutoff}",
                literal(granularity.name())
            )
        })
        .collect();
    influxql(remote, &deletes, timeout).await?;
    Ok(())
}

/// Every `meter` tag value of p1guard's measurements.
pub(super) async fn meters(remote: &Remote) -> anyhow::Result<Vec<String>> {
    let show = format!("SHOW TAG VALUES FROM {MEASUREMENTS} WITH KEY = \"meter\"");
    let mut meters = BTreeSet::new();
    for series in influxql(remote, &[show], None).await?.into_iter().flatten() {
        series.kind()?;
        let Some(value) = series.column("value") else {
            continue;
        };
        meters.extend(
            series
                .values
                .iter()
                .filter_map(|row| row.get(value)?.as_str().map(str::to_owned)),
        );
    }
    Ok(meters.into_iter().collect())
}

/// p1guard's measurements in every retention policy of the database, for a `FROM`: records
/// of a granularity are found (and erased: `DELETE` spans the database) wherever an earlier
/// configuration put them.
async fn sources(remote: &Remote) -> anyhow::Result<String> {
    let Access::V1 { database, .. } = &remote.access else {
        anyhow::bail!("InfluxQL needs the v1 API's database");
    };
    let policies = retention_policies(remote, database, None).await?;
    let sources: Vec<String> = policies
        .keys()
        .map(|policy| format!("{}.{MEASUREMENTS}", identifier(policy)))
        .collect();
    anyhow::ensure!(
        !sources.is_empty(),
        "database {database} has no retention policy"
    );
    Ok(sources.join(", "))
}

/// The records of `meters` (every record if `None`).
pub(super) async fn read(remote: &Remote, meters: Option<&[String]>) -> anyhow::Result<Vec<Held>> {
    let mut select = format!("SELECT * FROM {}", sources(remote).await?);
    if let Some(meters) = meters {
        let names: Vec<String> = meters
            .iter()
            .map(|m| format!("\"meter\" = {}", literal(m)))
            .collect();
        select.push_str(&format!(" WHERE ({})", names.join(" OR ")));
    }
    let mut held = Vec::new();
    for series in influxql(remote, &[select], None)
        .await?
        .into_iter()
        .flatten()
    {
        let kind = series.kind()?;
        let columns = (series.column("time"), series.column("meter"));
        let (Some(time), Some(meter), Some(granularity)) =
            (columns.0, columns.1, series.column("granularity"))
        else {
            continue;
        };
        for row in &series.values {
            let text = |i: usize| row.get(i).and_then(Value::as_str);
            let (Some(seconds), Some(name), Some(granularity)) = (
                row.get(time).and_then(Value::as_i64),
                text(meter),
                text(granularity).and_then(|g| g.parse::<Granularity>().ok()),
            ) else {
                continue;
            };
            let mut record = Gathered::default();
            for (column, value) in series.columns.iter().zip(row) {
                if !matches!(column.as_str(), "time" | "meter" | "granularity") {
                    record.field(kind, column, value);
                }
            }
            let time = Timestamp::from_second(seconds).context("InfluxQL: a time")?;
            held.push(record.held(name.to_owned(), granularity, kind, time));
        }
    }
    Ok(held)
}

/// ` AND time >= from AND time <= to`, in nanoseconds, for the bounds there are.
fn during((from, to): (Option<i64>, Option<i64>)) -> String {
    let from = from
        .map(|f| format!(" AND time >= {f}"))
        .unwrap_or_default();
    let to = to.map(|t| format!(" AND time <= {t}")).unwrap_or_default();
    format!("{from}{to}")
}

/// Records matching each condition, counted by their `quality` field, which every record
/// has.
async fn count(remote: &Remote, sources: &str, conditions: &[String]) -> anyhow::Result<Vec<u64>> {
    if conditions.is_empty() {
        return Ok(Vec::new());
    }
    let statements: Vec<String> = conditions
        .iter()
        .map(|c| format!("SELECT count(\"quality\") FROM {sources} WHERE {c}"))
        .collect();
    let mut counts = Vec::new();
    for series in influxql(remote, &statements, None).await? {
        let mut total = 0;
        for one in series {
            one.kind()?;
            let Some(column) = one.column("count") else {
                continue;
            };
            total += one
                .values
                .iter()
                .filter_map(|row| row.get(column)?.as_u64())
                .sum::<u64>();
        }
        counts.push(total);
    }
    Ok(counts)
}

/// Erases what `purge` covers with `DELETE`, which takes tags and a time range (1.6 and
/// later) but spans every retention policy of the database: the `granularity` tag keeps it
/// to a granularity. Counted before, and counted again after to make sure.
pub(super) async fn purge(remote: &Remote, purge: &Purge) -> anyhow::Result<Purged> {
    let sources = sources(remote).await?;
    let mut erase = Vec::new();
    let mut keep = Vec::new();
    for meter in &purge.meters {
        for &granularity in &purge.granularities {
            let ranges = Ranges::of(purge, granularity);
            let tags = format!(
                "\"meter\" = {} AND \"granularity\" = {}",
                literal(meter),
                literal(granularity.name())
            );
            erase.extend(ranges.erase.map(|range| format!("{tags}{}", during(range))));
            keep.extend(ranges.keep.map(|range| format!("{tags}{}", during(range))));
        }
    }
    let kept = count(remote, &sources, &keep).await?.into_iter().sum();
    let counts = count(remote, &sources, &erase).await?;
    let erase: Vec<String> = erase
        .into_iter()
        .zip(&counts)
        .filter(|(_, n)| **n > 0)
        .map(|(condition, _)| condition)
        .collect();
    if !erase.is_empty() {
        let deletes: Vec<String> = erase
            .iter()
            .map(|c| format!("DELETE FROM {MEASUREMENTS} WHERE {c}"))
            .collect();
        influxql(remote, &deletes, None).await?;
        let left: u64 = count(remote, &sources, &erase).await?.into_iter().sum();
        anyhow::ensure!(
            left == 0,
            "InfluxDB still holds {left} records after DELETE"
        );
    }
    Ok(Purged {
        erased: counts.into_iter().sum(),
        kept,
        note: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_durations_are_read_as_influxdb_writes_them() {
        assert_eq!(seconds("61368h0m0s"), Some(2557 * 86_400));
        assert_eq!(seconds("1h30m5s"), Some(5405));
        assert_eq!(seconds("0s"), None, "for ever");
        assert_eq!(seconds("7d"), None, "not InfluxDB's way of saying it");
    }

    #[test]
    fn live_policies_are_cut_in_groups_an_hour_long() {
        // An hour's group and InfluxDB's half-hourly check: within the audit's two hours.
        assert_eq!(shard_group_hours(7), 1);
        // InfluxDB's defaults beyond: a day up to six months, a week after.
        assert_eq!(shard_group_hours(90), 24);
        assert_eq!(shard_group_hours(730), 168);
        assert_eq!(shard_group_hours(2557), 168);
    }

    #[test]
    fn names_and_strings_are_quoted_for_influxql() {
        assert_eq!(identifier(r#"a"b"#), r#""a\"b""#);
        assert_eq!(literal(r"it's\"), r"'it\'s\\'");
    }
}
