//! InfluxDB: records as line protocol, each granularity into its own bucket (v2 API) or
//! retention policy (v1 API), so that the store's retention follows the code of conduct.
//! InfluxDB drops records only with whole shard groups, so on 1.x the sink also deletes what
//! is past its retention, at start and hourly, as the SQLite store does.
//! Failed requests are sorted the way Telegraf sorts them: 413 splits the body in halves,
//! 429 and 503 are retried (after the server's `Retry-After` where it can be read), any
//! other 4xx is refused for good, and everything else is retried. One exception: a 404 (the
//! database or bucket missing, as on a server restored or started empty) is retried after
//! the retention setup runs again, which on InfluxDB 1.x creates them: records wait for the
//! store rather than being dropped. Writing a series and timestamp again overwrites it, so a
//! retried write that was partly stored is harmless.

mod config;
mod line_protocol;
mod rights;
mod v1;
mod v2;

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use flate2::Compression;
use flate2::write::GzEncoder;
use p1guard_conduct::{Granularity, SinkRecord};
use reqwest::header::{CONTENT_ENCODING, HeaderMap, HeaderValue};

pub use self::config::{InfluxApi, InfluxConfig, InfluxSettings};
use self::v1::V1;
use self::v2::V2;
use super::{Refused, Sink, WriteError};

/// How long one request may take before it counts as failed (and is retried).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest server message kept for a log line.
const MESSAGE_LIMIT: usize = 300;

/// An InfluxDB server, through its v1 or v2 write API.
pub struct InfluxSink {
    api: Api,
    /// Bucket (v2) or retention policy (v1) of each granularity, indexed like
    /// [`Granularity::ALL`].
    targets: [String; 4],
    gzip: bool,
    lines: String,
    /// The server as the retention setup and the rights commands reach it.
    /// (Boxed: the rights commands hold a sink beside smaller stores.)
    remote: Box<rights::Remote>,
    /// Whether the retention setup ran (before the first write).
    prepared: bool,
}

enum Api {
    V1(V1),
    V2(V2),
}

/// Why a request failed, before Telegraf's rules sort it.
#[derive(Debug)]
enum SendError {
    /// The server answered with an error status.
    Status {
        status: u16,
        retry_after: Option<String>,
        message: String,
    },
    /// No answer (connection refused, timeout, TLS), or no body to send.
    Other(anyhow::Error),
}

/// What to do about an error status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The body was too large: write each half.
    Split,
    /// Retrying cannot help: drop the records.
    Refuse,
    /// Retry, waiting at least this long.
    RetryAfter(Duration),
    /// Retry with the usual backoff.
    Retry,
    /// The database, bucket or retention policy is missing: run the retention setup again,
    /// then retry with the usual backoff.
    SetUpAgain,
}

/// Telegraf's rules for a failed write's `status` and `Retry-After` header (its seconds
/// form; an HTTP date is not honoured and the backoff applies).
fn verdict(status: u16, retry_after: Option<&str>) -> Verdict {
    match status {
        413 => Verdict::Split,
        429 | 503 => match retry_after.and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(seconds) => Verdict::RetryAfter(Duration::from_secs(seconds)),
            None => Verdict::Retry,
        },
        404 => Verdict::SetUpAgain,
        400..=499 => Verdict::Refuse,
        _ => Verdict::Retry,
    }
}

/// A server message without what it echoes of the request: servers quote a rejected line
/// (`unable to parse '<line>'`), and logs must carry neither readings nor meter names. Every
/// single-quoted span goes, and so does every whole word of the message that is a word of
/// `sent` holding a digit (pseudonyms, values, timestamps); field names (`volume_m3`) and the
/// server's own words (`dropped=20`) stay.
fn redact(message: &str, sent: &str) -> String {
    let mut unquoted = String::with_capacity(message.len());
    let mut quoted = message.split('\'');
    unquoted.push_str(quoted.next().unwrap_or_default());
    while let (Some(_echo), rest) = (quoted.next(), quoted.next()) {
        unquoted.push_str("'<redacted>'");
        unquoted.push_str(rest.unwrap_or_default());
    }
    let data = |w: &&str| w.contains(|c: char| c.is_ascii_digit()) && !w.contains('_');
    let sent: std::collections::HashSet<&str> =
        sent.split([' ', ',', '=', '\n']).filter(data).collect();
    let in_word = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    let mut kept = String::with_capacity(unquoted.len());
    let mut rest = unquoted.as_str();
    while !rest.is_empty() {
        let word_end = rest.find(|c: char| !in_word(c)).unwrap_or(rest.len());
        let (word, after) = rest.split_at(word_end);
        kept.push_str(if sent.contains(word) {
            "<redacted>"
        } else {
            word
        });
        let gap_end = after.find(in_word).unwrap_or(after.len());
        kept.push_str(&after[..gap_end]);
        rest = &after[gap_end..];
    }
    kept
}

/// A server message, trimmed and cut to [`MESSAGE_LIMIT`] characters.
fn short(message: &str) -> String {
    let message = message.trim();
    match message.char_indices().nth(MESSAGE_LIMIT) {
        Some((end, _)) => format!("{}...", &message[..end]),
        None => message.to_owned(),
    }
}

impl InfluxSink {
    /// A sink for the server `settings` describe. Nothing is sent until the first write, and
    /// nothing but the retention setup before it.
    pub fn new(settings: InfluxSettings) -> anyhow::Result<InfluxSink> {
        let remote = Box::new(rights::Remote::new(&settings)?);
        let mut headers = HeaderMap::new();
        if settings.gzip {
            headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(REQUEST_TIMEOUT);
        let (api, targets) = match settings.api {
            InfluxApi::V1 {
                database,
                retention_policies,
                credentials,
            } => {
                let client = builder.build().context("building the HTTP client")?;
                let v1 = V1::new(client, &settings.url, database, credentials);
                (Api::V1(v1), retention_policies)
            }
            InfluxApi::V2 {
                org,
                token,
                buckets,
            } => {
                // The client sends no Authorization header for an empty token.
                let token = token.as_ref().map_or("", |t| t.expose());
                let v2 = V2::new(builder, &settings.url, org, token)?;
                (Api::V2(v2), buckets)
            }
        };
        Ok(InfluxSink {
            api,
            targets,
            gzip: settings.gzip,
            lines: String::new(),
            remote,
            prepared: false,
        })
    }

    /// Writes records of one granularity, halving on 413 down to single records.
    async fn write_group(&mut self, target: usize, records: &[&SinkRecord]) -> Result<(), Failed> {
        let mut parts = vec![records];
        while let Some(part) = parts.pop() {
            let (status, retry_after, message, dropped) = match self.send(target, part).await {
                Ok(()) => continue,
                Err(SendError::Other(error)) => return Err(Failed::Retry(error, None)),
                Err(SendError::Status {
                    status,
                    retry_after,
                    message,
                }) => {
                    let dropped = partly_dropped(&message);
                    let message = short(&redact(&message, &self.lines));
                    (status, retry_after, message, dropped)
                }
            };
            match verdict(status, retry_after.as_deref()) {
                Verdict::Split if part.len() > 1 => {
                    let (first, second) = part.split_at(part.len() / 2);
                    parts.extend([second, first]);
                }
                Verdict::Split | Verdict::Refuse => {
                    // This part's records the store dropped, and the parts not yet sent.
                    let dropped = dropped.unwrap_or(part.len()).min(part.len());
                    let not_written = dropped + parts.iter().map(|p| p.len()).sum::<usize>();
                    return Err(Failed::Refused {
                        status,
                        message,
                        not_written,
                    });
                }
                Verdict::RetryAfter(delay) => {
                    let error =
                        anyhow::anyhow!("status {status}, retry after {delay:?}: {message}");
                    return Err(Failed::Retry(error, Some(delay)));
                }
                Verdict::Retry if !message.contains("retention policy not found") => {
                    let error = anyhow::anyhow!("status {status}: {message}");
                    return Err(Failed::Retry(error, None));
                }
                // InfluxDB 1.x answers a missing retention policy with a 500.
                Verdict::Retry | Verdict::SetUpAgain => {
                    self.prepared = false;
                    let error = anyhow::anyhow!(
                        "status {status}: {message}; the store is set up again (InfluxDB 1.x: \
                         its database and retention policies), and the records wait for it"
                    );
                    return Err(Failed::Retry(error, None));
                }
            }
        }
        Ok(())
    }

    /// One request with `records` into the bucket or retention policy `targets[target]`.
    async fn send(&mut self, target: usize, records: &[&SinkRecord]) -> Result<(), SendError> {
        self.lines.clear();
        for record in records {
            line_protocol::encode(&mut self.lines, record);
        }
        let body = if self.gzip {
            let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
            encoder
                .write_all(self.lines.as_bytes())
                .and_then(|()| encoder.finish())
                .context("compressing")
                .map_err(SendError::Other)?
        } else {
            self.lines.as_bytes().to_vec()
        };
        let target = &self.targets[target];
        match &self.api {
            Api::V1(v1) => v1.send(target, body).await,
            Api::V2(v2) => v2.send(target, body).await,
        }
    }
}

/// How many points of a write InfluxDB 1.x dropped while storing the rest: its partial
/// write ends `dropped=N` (`partial write: points beyond retention policy dropped=374`).
fn partly_dropped(message: &str) -> Option<usize> {
    if !message.contains("partial write") {
        return None;
    }
    let (_, after) = message.rsplit_once("dropped=")?;
    let digits = after.bytes().take_while(u8::is_ascii_digit).count();
    after[..digits].parse().ok()
}

/// How writing one granularity's records failed.
#[derive(Debug)]
enum Failed {
    /// Refused for good: `not_written` of the records were not stored.
    Refused {
        status: u16,
        message: String,
        not_written: usize,
    },
    /// For [`super::drive`] to retry, not before the server's hint if it gave one.
    Retry(anyhow::Error, Option<Duration>),
}

impl Sink for InfluxSink {
    /// Sets up retention, then proves the credentials with an empty write into the billing
    /// target (v1, and VictoriaMetrics on either API: both answer 204) or by looking the
    /// billing bucket up (InfluxDB 2, which VictoriaMetrics does not serve).
    async fn check(&mut self) -> anyhow::Result<String> {
        self.prepared = self.prepare().await;
        let url = self.remote.url.clone();
        let billing = &self.targets[Granularity::Billing as usize];
        let server = self.remote.server().await.ok();
        let response = match &self.remote.access {
            rights::Access::V2 { org, .. } if server == Some(rights::Server::VictoriaMetrics) => {
                let query = [
                    ("org", org.as_str()),
                    ("bucket", billing),
                    ("precision", "s"),
                ];
                self.remote
                    .request(reqwest::Method::POST, "/api/v2/write")
                    .query(&query)
            }
            rights::Access::V1 { database, .. } => {
                let query = [
                    ("db", database.as_str()),
                    ("rp", billing),
                    ("precision", "s"),
                ];
                self.remote
                    .request(reqwest::Method::POST, "/write")
                    .query(&query)
            }
            rights::Access::V2 { org, .. } => {
                let query = [("org", org.as_str()), ("name", billing)];
                self.remote
                    .request(reqwest::Method::GET, "/api/v2/buckets")
                    .query(&query)
            }
        };
        let response = response
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .with_context(|| format!("{url}: no answer"))?;
        let status = response.status();
        match status.as_u16() {
            200..=299 => Ok(format!("{url} answers and accepts p1guard's credentials")),
            401 | 403 => anyhow::bail!("{url} refuses p1guard's credentials ({status})"),
            _ => {
                let text = response.text().await.unwrap_or_default();
                anyhow::bail!("{url}: {status}: {}", short(&text))
            }
        }
    }

    /// One request per granularity present (more if the server wants smaller bodies). A
    /// granularity the server refuses does not keep the others from being written.
    async fn write(&mut self, records: &[SinkRecord]) -> Result<(), WriteError> {
        if !self.prepared {
            self.prepared = self.prepare().await;
        }
        let mut refused: Option<Refused> = None;
        let mut group = Vec::with_capacity(records.len());
        for (target, granularity) in Granularity::ALL.into_iter().enumerate() {
            group.clear();
            group.extend(records.iter().filter(|r| r.granularity == granularity));
            if group.is_empty() {
                continue;
            }
            match self.write_group(target, &group).await {
                Ok(()) => {}
                Err(Failed::Refused {
                    status,
                    message,
                    not_written,
                }) => {
                    let first = refused.get_or_insert(Refused {
                        status,
                        message,
                        not_written: [0; 4],
                    });
                    first.not_written[granularity as usize] = not_written;
                }
                Err(Failed::Retry(error, after)) => {
                    let error = error.context(format!("writing {granularity} records"));
                    return Err(WriteError::Retry { error, after });
                }
            }
        }
        refused.map_or(Ok(()), |refused| Err(WriteError::Refused(refused)))
    }

    /// Deletes what is past its retention (InfluxDB 1.x), on the SQLite store's schedule.
    async fn maintain(&mut self) -> anyhow::Result<()> {
        self.expire().await
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        Ok(()) // every write is a completed request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_sorted_as_telegraf_sorts_them() {
        let seconds = |s| Verdict::RetryAfter(Duration::from_secs(s));
        let cases = [
            (413, None, Verdict::Split),
            (429, Some("7"), seconds(7)),
            (503, Some(" 120 "), seconds(120)),
            (429, None, Verdict::Retry),
            // The date form is not read: the backoff applies.
            (503, Some("Wed, 21 Oct 2026 07:28:00 GMT"), Verdict::Retry),
            (400, None, Verdict::Refuse),
            (401, Some("5"), Verdict::Refuse),
            (404, None, Verdict::SetUpAgain),
            (500, None, Verdict::Retry),
            (502, Some("5"), Verdict::Retry),
        ];
        for (status, retry_after, expected) in cases {
            assert_eq!(
                verdict(status, retry_after),
                expected,
                "{status} {retry_after:?}"
            );
        }
    }

    #[test]
    fn a_rejected_line_echoed_by_the_server_is_not_logged() {
        let sent = "gas,meter=7b9f8070bf736ca7b646f4397d41ce85,granularity=live volume_m3=1234.567 1780308000\n";
        let influx = r#"{"error":"unable to parse 'gas,meter=7b9f8070bf736ca7b646f4397d41ce85,granularity=live volume_m3=1234.567 1780308000': bad timestamp"}"#;
        assert_eq!(
            redact(influx, sent),
            r#"{"error":"unable to parse '<redacted>': bad timestamp"}"#
        );
        let unquoted = "cannot parse field value for \"volume_m3\": 1234.567 of meter 7b9f8070bf736ca7b646f4397d41ce85";
        assert_eq!(
            redact(unquoted, sent),
            "cannot parse field value for \"volume_m3\": <redacted> of meter <redacted>"
        );
        let harmless = r#"{"error":"database not found: \"missing\""}"#;
        assert_eq!(redact(harmless, sent), harmless);
        // Whole words only: a value of the request inside a word of the server's own is no
        // echo (substring replacement once mangled this to `dropped=2<redacted>`).
        let sent =
            "electricity,meter=7b9f,granularity=live tariff=2i,energy_export_t1_kwh=0 1780308000\n";
        let partial = r#"{"error":"partial write: points beyond retention policy dropped=20"}"#;
        assert_eq!(partly_dropped(partial), Some(20));
        assert_eq!(
            partly_dropped(r#"{"error":"unable to parse 'x dropped=3'"}"#),
            None
        );
        assert_eq!(redact(partial, sent), partial);
    }

    #[test]
    fn a_long_server_message_is_cut() {
        assert_eq!(short("  not found\n"), "not found");
        let long = "x".repeat(MESSAGE_LIMIT + 1);
        assert_eq!(short(&long), format!("{}...", &long[..MESSAGE_LIMIT]));
    }
}
