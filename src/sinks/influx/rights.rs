//! The code of conduct's side of InfluxDB: each granularity's retention, set up before the
//! first write, and for the rights commands what the server holds of a meter, read back and
//! erased.
//!
//! Three servers answer the same write APIs and differ in everything else, so the server is
//! asked what it is before the first use ([`Remote::server`]):
//! - InfluxDB 1.x: InfluxQL over `/query` (v1.rs).
//! - InfluxDB 2.x: `/api/v2/delete` (v2.rs); it is read back only with Flux, which p1guard
//!   does not speak, so it cannot be read back, listed or counted.
//! - VictoriaMetrics: a series per kind and value (`electricity_energy_import_kwh`), labelled
//!   `granularity`, `meter` and, through the v1 API, `db`; string fields are kept as 0, so a
//!   record's quality is lost and a receiver clock shows only as a `<kind>_clock` series. Its
//!   own API reads back (`/api/v1/export`) and erases, but only whole series.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context as _;
use jiff::Timestamp;
use p1guard_conduct::{Granularity, Kind, Quantity};
use serde_json::{Map, Value};

use super::{InfluxApi, InfluxSettings, InfluxSink, REQUEST_TIMEOUT, redact, short};
use crate::config::Secret;
use crate::held::{Columns, Held, Purge, Purged};

/// The measurements (record kinds) p1guard writes.
pub(super) const KINDS: [Kind; 4] = [Kind::Electricity, Kind::Gas, Kind::Water, Kind::Heat];

/// Erasing, exporting and auditing read everything: longer than a write may take (the
/// retention setup before the first write takes the write's [`REQUEST_TIMEOUT`]).
const RIGHTS_TIMEOUT: Duration = Duration::from_secs(300);

/// The server behind a sink's URL, as the rights commands and the retention setup reach it:
/// a client of its own, without the write path's gzip header.
pub(super) struct Remote {
    client: reqwest::Client,
    /// The URL as configured, without a trailing slash.
    pub(super) url: String,
    pub(super) access: Access,
    /// What the server is, once asked.
    server: Option<Server>,
}

/// Where the sink writes, and as whom.
pub(super) enum Access {
    V1 {
        database: String,
        credentials: Option<(String, Secret)>,
    },
    V2 {
        org: String,
        token: Option<Secret>,
    },
}

/// What answers at the sink's URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Server {
    /// InfluxDB itself (or another server with its query APIs).
    InfluxDb,
    /// VictoriaMetrics, which takes line protocol but has its own query and delete APIs.
    VictoriaMetrics,
}

impl Remote {
    pub(super) fn new(settings: &InfluxSettings) -> anyhow::Result<Remote> {
        let client = reqwest::Client::builder()
            .timeout(RIGHTS_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        let access = match &settings.api {
            InfluxApi::V1 {
                database,
                credentials,
                ..
            } => Access::V1 {
                database: database.clone(),
                credentials: credentials.clone(),
            },
            InfluxApi::V2 { org, token, .. } => Access::V2 {
                org: org.clone(),
                token: token.clone(),
            },
        };
        Ok(Remote {
            client,
            url: settings.url.trim_end_matches('/').to_owned(),
            access,
            server: None,
        })
    }

    /// A request to `path` on the server, authenticated as the sink writes.
    pub(super) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.url));
        match &self.access {
            Access::V1 {
                credentials: Some((username, password)),
                ..
            } => request.basic_auth(username, Some(password.expose())),
            Access::V2 {
                token: Some(token), ..
            } => request.header(
                reqwest::header::AUTHORIZATION,
                format!("Token {}", token.expose()),
            ),
            _ => request,
        }
    }

    /// What the server is: VictoriaMetrics answers `GET /-/healthy` with its name (every
    /// VictoriaMetrics component does, for Prometheus' sake); InfluxDB 1.x and 3.x answer 404
    /// and 2.x its UI. Not its `/ping`, where newer VictoriaMetrics may claim an InfluxDB
    /// version, as it already does on `/write` and `/query`. Asked once; an unreachable
    /// server is asked again next time.
    pub(super) async fn server(&mut self) -> anyhow::Result<Server> {
        if let Some(server) = self.server {
            return Ok(server);
        }
        let response = self
            .request(reqwest::Method::GET, "/-/healthy")
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.url))?;
        let success = response.status().is_success();
        let body = response.text().await.unwrap_or_default();
        let server = if success && body.trim_start().starts_with("VictoriaMetrics") {
            Server::VictoriaMetrics
        } else {
            Server::InfluxDb
        };
        self.server = Some(server);
        Ok(server)
    }

    /// The VictoriaMetrics selector of this sink's series, with `labels` besides. Through the
    /// v1 API VictoriaMetrics labels series with the database (`db`); through the v2 API it
    /// drops the bucket, so the sink's series are those without `db`.
    fn selector(&self, name: &str, labels: &[(&str, &str)]) -> String {
        let db = match &self.access {
            Access::V1 { database, .. } => database.as_str(),
            Access::V2 { .. } => "",
        };
        let mut selector = format!("{{__name__=~{},db={}", quoted(name), quoted(db));
        for (label, value) in labels {
            selector.push_str(&format!(",{label}={}", quoted(value)));
        }
        selector.push('}');
        selector
    }
}

/// A MetricsQL string literal.
fn quoted(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                quoted.push('\\');
                quoted.push(c);
            }
            '\n' => quoted.push_str("\\n"),
            _ => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// A failed request as an error, without what the server echoed of `sent` (meter names).
pub(super) fn refused(
    what: &str,
    status: reqwest::StatusCode,
    body: &str,
    sent: &str,
) -> anyhow::Error {
    anyhow::anyhow!(
        "{what}: status {}: {}",
        status.as_u16(),
        short(&redact(body, sent))
    )
}

impl InfluxSink {
    /// Before the first write: InfluxDB 1.x gets each granularity's retention policy it
    /// lacks, with privacy.md's retention (when p1guard's user may create them; if not, a
    /// warning says so), and loses what expired while p1guard was not running. `false` if
    /// the server could not be reached: tried again next time.
    pub(super) async fn prepare(&mut self) -> bool {
        let server = match self.remote.server().await {
            Ok(server) => server,
            Err(error) => {
                tracing::debug!("retention check postponed: {error:#}");
                return false;
            }
        };
        let url = self.remote.url.as_str();
        match (server, &self.remote.access) {
            (Server::VictoriaMetrics, _) => tracing::info!(
                url = %url,
                "VictoriaMetrics keeps every series for its one -retentionPeriod, and up to \
                 about a month past it: p1guard can set no retention per granularity there, \
                 nor delete by time"
            ),
            (Server::InfluxDb, Access::V1 { .. }) => {
                super::v1::ensure_retention_policies(&self.remote, &self.targets).await;
                let now = Timestamp::now();
                let expired = super::v1::expire(&self.remote, now, Some(REQUEST_TIMEOUT)).await;
                if let Err(error) = expired {
                    tracing::warn!(
                        url = %url,
                        "cannot delete records past their retention ({error:#}): tried \
                         again within the hour"
                    );
                }
            }
            (Server::InfluxDb, Access::V2 { .. }) => {
                let days = Granularity::ALL.map(|g| {
                    let days = crate::sinks::default_retention(g).as_secs() / 86_400;
                    format!("{g} {days}")
                });
                tracing::info!(
                    url = %url,
                    "p1guard does not create InfluxDB 2 buckets: each granularity's bucket \
                     should keep records for its retention in days ({})",
                    days.join(", ")
                );
            }
        }
        true
    }

    /// Deletes the records past their retention on InfluxDB 1.x; elsewhere the store's own
    /// retention is all there is (see the README).
    pub(super) async fn expire(&mut self) -> anyhow::Result<()> {
        if matches!(self.remote.access, Access::V2 { .. }) {
            return Ok(());
        }
        match self.remote.server().await? {
            Server::InfluxDb => super::v1::expire(&self.remote, Timestamp::now(), None).await,
            Server::VictoriaMetrics => Ok(()),
        }
    }

    /// Every meter name with records.
    pub async fn stored_meters(&mut self) -> anyhow::Result<Vec<String>> {
        let meters = match (self.remote.server().await?, &self.remote.access) {
            (Server::VictoriaMetrics, _) => vm_meters(&self.remote).await?,
            (Server::InfluxDb, Access::V1 { .. }) => super::v1::meters(&self.remote).await?,
            (Server::InfluxDb, Access::V2 { .. }) => anyhow::bail!(
                "InfluxDB 2 lists tag values only through Flux, which p1guard does not speak: \
                 name the meter by its id"
            ),
        };
        Ok(meters)
    }

    /// Erases what `purge` covers.
    pub async fn purge(&mut self, purge: &Purge) -> anyhow::Result<Purged> {
        match (self.remote.server().await?, &self.remote.access) {
            (Server::VictoriaMetrics, _) => vm_purge(&self.remote, purge).await,
            (Server::InfluxDb, Access::V1 { .. }) => super::v1::purge(&self.remote, purge).await,
            (Server::InfluxDb, Access::V2 { .. }) => {
                super::v2::purge(&self.remote, &self.targets, purge).await
            }
        }
    }

    /// The records of `meters` (every record if `None`), or `None` where the server cannot
    /// be read back (InfluxDB 2, only through Flux).
    pub async fn read(&mut self, meters: Option<&[String]>) -> anyhow::Result<Option<Vec<Held>>> {
        if meters.is_some_and(<[String]>::is_empty) {
            return Ok(Some(Vec::new()));
        }
        match (self.remote.server().await?, &self.remote.access) {
            (Server::VictoriaMetrics, _) => vm_read(&self.remote, meters).await.map(Some),
            (Server::InfluxDb, Access::V1 { .. }) => {
                super::v1::read(&self.remote, meters).await.map(Some)
            }
            (Server::InfluxDb, Access::V2 { .. }) => Ok(None),
        }
    }
}

/// The kind a measurement (or metric name prefix) names.
pub(super) fn kind(name: &str) -> Option<Kind> {
    KINDS.into_iter().find(|k| k.name() == name)
}

/// One record as read back, gathered field by field.
#[derive(Debug, Default)]
pub(super) struct Gathered {
    pub quality: Option<String>,
    pub receiver_clock: bool,
    pub values: Map<String, Value>,
}

impl Gathered {
    /// Adds field `name` of a `kind` record: its quality, clock or a value, the value typed
    /// as the record JSON types it (counts as integers, readings as floats). Fields that are
    /// none of p1guard's are left out.
    pub(super) fn field(&mut self, kind: Kind, name: &str, value: &Value) {
        match (name, value) {
            ("quality", Value::String(quality)) => self.quality = Some(quality.clone()),
            ("clock", Value::String(clock)) => self.receiver_clock = clock == "receiver",
            _ => {
                let quantity = Quantity::ALL
                    .into_iter()
                    .find(|q| q.kind() == kind && q.name() == name);
                if let (Some(quantity), Some(number)) = (quantity, value.as_f64()) {
                    let typed = if quantity.unit().is_none() {
                        Value::from(number.round() as i64)
                    } else {
                        Value::from(number)
                    };
                    self.values.insert(name.to_owned(), typed);
                }
            }
        }
    }

    /// The record JSON (architecture.md) of the record gathered, as far as the server kept
    /// it: without `quality` where it was not kept.
    pub(super) fn held(
        self,
        meter: String,
        granularity: Granularity,
        kind: Kind,
        time: Timestamp,
    ) -> Held {
        Columns {
            meter,
            granularity,
            kind: kind.name(),
            time,
            quality: self.quality.as_deref(),
            receiver_clock: self.receiver_clock,
            values: self.values,
        }
        .held()
    }
}

/// What a purge erases of one granularity, as an inclusive range of nanoseconds (`None`: no
/// bound on that side), and what the fiscal exception keeps. Records are dated to the second
/// and InfluxDB's times are nanoseconds: the bounds are exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ranges {
    pub erase: Option<(Option<i64>, Option<i64>)>,
    pub keep: Option<(Option<i64>, Option<i64>)>,
}

/// InfluxDB's earliest and latest times (nanoseconds since the epoch), as 1.x and 2.x keep
/// them.
pub(super) const MIN_TIME: i64 = i64::MIN + 2;
pub(super) const MAX_TIME: i64 = i64::MAX - 1;

impl Ranges {
    pub(super) fn of(purge: &Purge, granularity: Granularity) -> Ranges {
        let ns = |t: Timestamp| t.as_nanosecond();
        let until = purge.dated_until.map(ns);
        let keep_from = match granularity {
            Granularity::Billing => purge.keep_billing_from.map(ns),
            _ => None,
        };
        let erase_to = match (until, keep_from) {
            (Some(until), Some(from)) => Some(until.min(from - 1)),
            (until, from) => until.or(from.map(|f| f - 1)),
        };
        let keep = keep_from.map(|from| (from, until));
        Ranges {
            erase: range(None, erase_to),
            keep: keep.and_then(|(from, until)| range(Some(from), until)),
        }
    }
}

/// `[from, to]` in InfluxDB's time range, open where a bound lies beyond it; `None` if empty.
fn range(from: Option<i128>, to: Option<i128>) -> Option<(Option<i64>, Option<i64>)> {
    let from = from.filter(|&f| f > i128::from(MIN_TIME));
    let to = to.filter(|&t| t < i128::from(MAX_TIME));
    if from.is_some_and(|f| f > i128::from(MAX_TIME))
        || to.is_some_and(|t| t < i128::from(MIN_TIME))
        || from.zip(to).is_some_and(|(f, t)| f > t)
    {
        return None;
    }
    // Inside InfluxDB's range now, so the conversions cannot fail.
    let narrow = |n: i128| i64::try_from(n).unwrap_or_default();
    Some((from.map(narrow), to.map(narrow)))
}

// VictoriaMetrics.

/// Every metric name of p1guard's records.
const VM_NAMES: &str = "(electricity|gas|water|heat)_.+";

/// Export and series requests cover every record, also those dated (a little) ahead: the
/// default end is now.
fn vm_time_range() -> [(&'static str, String); 2] {
    let end = Timestamp::now().as_second() + 10 * 365 * 86_400;
    [("start", "1".to_owned()), ("end", end.to_string())]
}

/// Makes what was written a moment ago searchable, as a test would: best effort, the
/// endpoint may be closed with `-forceFlushAuthKey`.
async fn vm_flush(remote: &Remote) {
    let flushed = remote
        .request(reqwest::Method::GET, "/internal/force_flush")
        .send()
        .await;
    if let Err(error) = flushed {
        tracing::debug!("VictoriaMetrics force_flush: {error}");
    }
}

/// A POST of `form` to `path`; the body of the answer.
async fn vm_post(remote: &Remote, path: &str, form: &[(&str, String)]) -> anyhow::Result<String> {
    let sent: String = form.iter().map(|(_, v)| format!("{v}\n")).collect();
    let response = remote
        .request(reqwest::Method::POST, path)
        .form(form)
        .send()
        .await
        .with_context(|| format!("VictoriaMetrics {path}"))?;
    let status = response.status();
    let body = response
        .text()
        .await
        .with_context(|| format!("VictoriaMetrics {path}"))?;
    if !status.is_success() {
        return Err(refused(
            &format!("VictoriaMetrics {path}"),
            status,
            &body,
            &sent,
        ));
    }
    Ok(body)
}

/// Every `meter` label of the sink's series. From the series API, not the label values API,
/// which still lists the values of deleted series.
async fn vm_meters(remote: &Remote) -> anyhow::Result<Vec<String>> {
    vm_flush(remote).await;
    let mut form = vec![("match[]", remote.selector(VM_NAMES, &[]))];
    form.extend(vm_time_range());
    let body = vm_post(remote, "/api/v1/series", &form).await?;
    let answer: Value = serde_json::from_str(&body).context("VictoriaMetrics series")?;
    let series = answer["data"]
        .as_array()
        .context("VictoriaMetrics series: no data")?;
    let meters: BTreeSet<&str> = series.iter().filter_map(|s| s["meter"].as_str()).collect();
    Ok(meters.into_iter().map(str::to_owned).collect())
}

/// One series group: a kind's series of one meter and granularity (the kind by name).
type Group = (&'static str, Granularity, String);

/// The records of a VictoriaMetrics export, gathered by group and time (milliseconds).
type Exported = BTreeMap<Group, (Kind, BTreeMap<i64, Gathered>)>;

/// The sink's series of `meters` (every meter if `None`), as records.
async fn vm_export(remote: &Remote, meters: Option<&[String]>) -> anyhow::Result<Exported> {
    vm_flush(remote).await;
    let mut form: Vec<(&str, String)> = match meters {
        None => vec![("match[]", remote.selector(VM_NAMES, &[]))],
        Some(meters) => meters
            .iter()
            .map(|m| ("match[]", remote.selector(VM_NAMES, &[("meter", m)])))
            .collect(),
    };
    form.extend(vm_time_range());
    let body = vm_post(remote, "/api/v1/export", &form).await?;
    let mut exported = Exported::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        let series: Value = serde_json::from_str(line).context("VictoriaMetrics export")?;
        let label = |key: &str| series["metric"][key].as_str();
        let (Some(name), Some(granularity), Some(meter)) =
            (label("__name__"), label("granularity"), label("meter"))
        else {
            continue;
        };
        let Some((kind, field)) = name
            .split_once('_')
            .and_then(|(k, field)| Some((kind(k)?, field)))
        else {
            continue;
        };
        let Ok(granularity) = granularity.parse::<Granularity>() else {
            continue;
        };
        let (_, records) = exported
            .entry((kind.name(), granularity, meter.to_owned()))
            .or_insert_with(|| (kind, BTreeMap::new()));
        let times = series["timestamps"].as_array().map(Vec::as_slice);
        let values = series["values"].as_array().map(Vec::as_slice);
        for (time, value) in times
            .unwrap_or_default()
            .iter()
            .zip(values.unwrap_or_default())
        {
            let Some(time) = time.as_i64() else { continue };
            let record = records.entry(time).or_default();
            match field {
                // String fields are kept as 0: only their presence says anything.
                "quality" => {}
                "clock" => record.receiver_clock = true,
                _ => record.field(kind, field, value),
            }
        }
    }
    Ok(exported)
}

async fn vm_read(remote: &Remote, meters: Option<&[String]>) -> anyhow::Result<Vec<Held>> {
    let mut held = Vec::new();
    for ((_, granularity, meter), (kind, records)) in vm_export(remote, meters).await? {
        for (millis, record) in records {
            let time = Timestamp::from_millisecond(millis).context("VictoriaMetrics: a time")?;
            held.push(record.held(meter.clone(), granularity, kind, time));
        }
    }
    Ok(held)
}

/// VictoriaMetrics deletes whole series, never a time range: a group of series (a kind's
/// values of one meter and granularity) is deleted only if the purge covers every record in
/// it; a group holding any record to keep (billing inside the fiscal retention, or dated
/// after the erasure request) is kept whole, and the note says what stayed with it.
async fn vm_purge(remote: &Remote, purge: &Purge) -> anyhow::Result<Purged> {
    let exported = vm_export(remote, Some(&purge.meters)).await?;
    let mut purged = Purged::default();
    // Records that should have gone but stay with a group that is kept.
    let mut stuck = 0u64;
    let mut doomed = Vec::new();
    for ((kind, granularity, meter), (_, records)) in &exported {
        if !purge.granularities.contains(granularity) {
            continue;
        }
        let (mut covered, mut kept, mut other) = (0u64, 0u64, 0u64);
        for &millis in records.keys() {
            let time = Timestamp::from_millisecond(millis).context("VictoriaMetrics: a time")?;
            if purge.covers(*granularity, time) {
                covered += 1;
            } else if purge.keeps(*granularity, time) {
                kept += 1;
            } else {
                other += 1;
            }
        }
        purged.kept += kept;
        if kept == 0 && other == 0 {
            purged.erased += covered;
            let name = format!("{kind}_.+");
            let labels = [
                ("granularity", granularity.name()),
                ("meter", meter.as_str()),
            ];
            doomed.push(("match[]", remote.selector(&name, &labels)));
        } else {
            stuck += covered;
        }
    }
    if !doomed.is_empty() {
        vm_post(remote, "/api/v1/admin/tsdb/delete_series", &doomed).await?;
        let mut check = doomed.clone();
        check.extend(vm_time_range());
        let left = vm_post(remote, "/api/v1/export", &check).await?;
        if left.lines().any(|l| !l.trim().is_empty()) {
            anyhow::bail!("VictoriaMetrics still holds series it was asked to delete");
        }
    }
    if purged.kept > 0 || stuck > 0 {
        let mut note = "VictoriaMetrics erases whole series, not time ranges: a meter's series \
                        of a granularity holding any record to keep is kept whole"
            .to_owned();
        if stuck > 0 {
            note.push_str(&format!(
                "; {stuck} record(s) that should have been erased stay with them"
            ));
        }
        purged.note = Some(note);
    }
    Ok(purged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn ns(text: &str) -> Option<i64> {
        Some(at(text).as_nanosecond() as i64)
    }

    #[test]
    fn billing_inside_the_fiscal_retention_is_outside_the_erased_range() {
        let purge = Purge {
            meters: vec!["m".into()],
            granularities: Granularity::ALL.to_vec(),
            dated_until: Some(at("2026-06-01T00:00:00Z")),
            keep_billing_from: Some(at("2019-06-01T00:00:00Z")),
        };
        let billing = Ranges::of(&purge, Granularity::Billing);
        let kept_from = ns("2019-06-01T00:00:00Z").unwrap();
        assert_eq!(billing.erase, Some((None, Some(kept_from - 1))));
        assert_eq!(
            billing.keep,
            Some((Some(kept_from), ns("2026-06-01T00:00:00Z")))
        );
        let daily = Ranges::of(&purge, Granularity::Daily);
        assert_eq!(daily.erase, Some((None, ns("2026-06-01T00:00:00Z"))));
        assert_eq!(daily.keep, None);
    }

    #[test]
    fn a_purge_of_everything_has_no_bounds_and_an_empty_range_none() {
        let mut purge = Purge {
            meters: vec!["m".into()],
            granularities: vec![Granularity::Live],
            dated_until: None,
            keep_billing_from: None,
        };
        let everything = Ranges {
            erase: Some((None, None)),
            keep: None,
        };
        assert_eq!(Ranges::of(&purge, Granularity::Live), everything);
        // The fiscal retention starts after the erasure: billing records are all kept.
        purge.dated_until = Some(at("2026-01-01T00:00:00Z"));
        purge.keep_billing_from = Some(Timestamp::MIN);
        let billing = Ranges::of(&purge, Granularity::Billing);
        assert_eq!(billing.erase, None);
        assert_eq!(billing.keep, Some((None, ns("2026-01-01T00:00:00Z"))));
    }

    #[test]
    fn values_are_typed_as_the_record_json_types_them() {
        let mut record = Gathered::default();
        record.field(Kind::Electricity, "energy_import_kwh", &Value::from(12));
        record.field(Kind::Electricity, "tariff", &Value::from(2.0));
        record.field(Kind::Electricity, "quality", &Value::from("measured"));
        record.field(Kind::Electricity, "clock", &Value::from("receiver"));
        record.field(Kind::Electricity, "volume_m3", &Value::from(1.5));
        let held = record.held(
            "m".into(),
            Granularity::Live,
            Kind::Electricity,
            at("2026-03-29T01:00:00Z"),
        );
        assert_eq!(
            held.record.to_string(),
            r#"{"clock":"receiver","granularity":"live","kind":"electricity","meter":"m","quality":"measured","time":"2026-03-29T01:00:00Z","values":{"energy_import_kwh":12.0,"tariff":2}}"#
        );
    }

    #[test]
    fn selector_strings_are_escaped() {
        assert_eq!(quoted(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
