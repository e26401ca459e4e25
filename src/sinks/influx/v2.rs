//! The InfluxDB 2 write API, `POST /api/v2/write?org=&bucket=&precision=s`, through the
//! `influxdb2` client.

use influxdb2::RequestError;
use influxdb2::api::write::TimestampPrecision;

use super::SendError;

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
