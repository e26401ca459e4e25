//! The InfluxDB 2 write API, `POST /api/v2/write?org=&bucket=&precision=s`, through the
//! `influxdb2` client; and its delete API for the rights commands.

use anyhow::Context as _;
use influxdb2::RequestError;
use influxdb2::api::write::TimestampPrecision;
use jiff::Timestamp;

use super::SendError;
use super::rights::{Access, Ranges, Remote, refused};
use crate::held::{Purge, Purged};

/// Writes to one organisation, a bucket per request.
pub struct V2 {
    client: influxdb2::Client,
    org: String,
}

impl V2 {
    /// A writer for `org` on the server at `url`. The client sends `builder`'s default
    /// headers (`Content-Encoding` when bodies are compressed) with every request.
    pub fn new(
        builder: reqwest::ClientBuilder,
        url: &str,
        org: String,
        token: &str,
    ) -> anyhow::Result<V2> {
        let client = influxdb2::ClientBuilder::with_builder(builder, url, &org, token).build()?;
        Ok(V2 { client, org })
    }

    /// Sends a body of lines into `bucket`.
    ///
    /// The client keeps the status and text of a failed request but drops its headers, so
    /// a `Retry-After` cannot be read here: a 429 or 503 is retried with the exponential
    /// backoff (capped at 30 s) instead.
    pub async fn send(&self, bucket: &str, body: Vec<u8>) -> Result<(), SendError> {
        let written = self
            .client
            .write_line_protocol_with_precision(
                &self.org,
                bucket,
                body,
                TimestampPrecision::Seconds,
            )
            .await;
        match written {
            Ok(()) => Ok(()),
            Err(RequestError::Http { status, text }) => Err(SendError::Status {
                status: status.as_u16(),
                retry_after: None,
                message: text,
            }),
            Err(other) => Err(SendError::Other(other.into())),
        }
    }
}

/// The earliest and latest times InfluxDB keeps: a delete's open bounds. (`start` and `stop`
/// are taken as inclusive, as the storage engine's range deletes are.)
const EARLIEST: &str = "1677-09-21T00:12:43.145224194Z";
const LATEST: &str = "2262-04-11T23:47:16.854775806Z";

/// A time for `/api/v2/delete` (RFC 3339, nanoseconds where there are any).
fn rfc3339(nanoseconds: Option<i64>, open: &'static str) -> anyhow::Result<String> {
    match nanoseconds {
        Some(ns) => Ok(Timestamp::from_nanosecond(i128::from(ns))?.to_string()),
        None => Ok(open.to_owned()),
    }
}

/// A string in a delete predicate.
fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Erases what `purge` covers: one `POST /api/v2/delete` per meter and granularity, in the
/// granularity's bucket (the predicate takes no `OR`), up to just before the fiscal
/// retention for billing. InfluxDB 2 says nothing of what a delete erased, and counting
/// needs Flux: the counts stay 0 and the note says so. Not tried against a server here.
pub(super) async fn purge(
    remote: &Remote,
    buckets: &[String; 4],
    purge: &Purge,
) -> anyhow::Result<Purged> {
    let Access::V2 { org, .. } = &remote.access else {
        anyhow::bail!("the v2 delete API needs the org");
    };
    for meter in &purge.meters {
        for &granularity in &purge.granularities {
            let Some((from, to)) = Ranges::of(purge, granularity).erase else {
                continue;
            };
            let bucket = &buckets[granularity as usize];
            let predicate = format!(
                "meter={} AND granularity={}",
                quoted(meter),
                quoted(granularity.name())
            );
            let body = serde_json::json!({
                "start": rfc3339(from, EARLIEST)?,
                "stop": rfc3339(to, LATEST)?,
                "predicate": predicate,
            });
            let response = remote
                .request(reqwest::Method::POST, "/api/v2/delete")
                .query(&[("org", org.as_str()), ("bucket", bucket.as_str())])
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string())
                .send()
                .await
                .context("InfluxDB /api/v2/delete")?;
            let status = response.status();
            if !status.is_success() {
                let text = response.text().await.unwrap_or_default();
                return Err(refused(
                    "InfluxDB /api/v2/delete",
                    status,
                    &text,
                    &predicate,
                ));
            }
        }
    }
    let mut note = "InfluxDB 2 does not say how many records a delete erased".to_owned();
    let billing = purge
        .granularities
        .contains(&p1guard_conduct::Granularity::Billing);
    if let Some(from) = purge.keep_billing_from.filter(|_| billing) {
        note.push_str(&format!("; billing records dated from {from} are kept"));
    }
    Ok(Purged {
        erased: 0,
        kept: 0,
        note: Some(note),
    })
}
