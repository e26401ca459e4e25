//! The InfluxDB 1.x write API, `POST /write?db=&rp=&precision=s`, which InfluxDB 1.x (Home
//! Assistant's add-on among them) and 3.x serve. Spoken with reqwest directly: the same
//! HTTP stack the v2 client uses, and unlike that client it shows `Retry-After`.

use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};

use super::SendError;
use crate::config::Secret;

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
