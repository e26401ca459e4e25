//! `[[sinks]]` `type = "influxdb"`: its settings as written, their checks, and what
//! `check-config` says of them.

use std::collections::BTreeMap;
use std::time::Duration;

use p1guard_conduct::Granularity;
use serde::Deserialize;

use crate::config::{Checker, Secret, SecretRef};
use crate::sinks::Batching;

/// The settings as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
    /// `v2` (`/api/v2/write`, buckets) or `v1` (`/write`, database and retention
    /// policies).
    pub api: String,
    /// `http://host:port` or `https://...`.
    pub url: String,
    /// v2: the organisation.
    pub org: Option<String>,
    /// v2: the API token; none for a server without authentication.
    pub token: Option<SecretRef>,
    /// v2: granularity -> bucket; `p1guard_<granularity>` where absent.
    #[serde(default)]
    pub buckets: BTreeMap<Granularity, String>,
    /// v1: the database; `p1guard` if absent.
    pub database: Option<String>,
    /// v1: granularity -> retention policy; the granularity's name where absent.
    #[serde(default)]
    pub retention_policies: BTreeMap<Granularity, String>,
    /// v1: basic authentication, with `password`.
    pub username: Option<String>,
    /// v1: the password of `username`.
    pub password: Option<SecretRef>,
    /// Records per request; 5000 if absent.
    pub batch_records: Option<usize>,
    /// How long a record may wait for others to fill a request; 1000 ms if absent.
    pub flush_interval_ms: Option<u64>,
    /// Compress request bodies; on if absent.
    pub gzip: Option<bool>,
}

/// Where and how an InfluxDB sink writes.
#[derive(Debug, Clone)]
pub struct InfluxSettings {
    /// The server, `http(s)://host:port`.
    pub url: String,
    /// Which write API, and where each granularity goes.
    pub api: InfluxApi,
    /// How records are gathered into requests.
    pub batching: Batching,
    /// Whether request bodies are gzipped.
    pub gzip: bool,
}

/// An InfluxDB write API with its settings. Each granularity has its own bucket or
/// retention policy (indexed like [`Granularity::ALL`]), so that the store's retention
/// follows the code of conduct.
#[derive(Debug, Clone)]
pub enum InfluxApi {
    /// `/api/v2/write`.
    V2 {
        /// The organisation.
        org: String,
        /// The API token, if the server wants one.
        token: Option<Secret>,
        /// Bucket per granularity.
        buckets: [String; 4],
    },
    /// `/write`, InfluxDB 1.x's API.
    V1 {
        /// The database.
        database: String,
        /// Retention policy per granularity.
        retention_policies: [String; 4],
        /// Username and password for basic authentication.
        credentials: Option<(String, Secret)>,
    },
}

impl InfluxConfig {
    /// The settings of the sink at `at`, every problem noted.
    pub fn check(self, checker: &mut Checker<'_>, at: &str) -> Option<InfluxSettings> {
        let InfluxConfig {
            api,
            url,
            org,
            token,
            buckets,
            database,
            retention_policies,
            username,
            password,
            batch_records,
            flush_interval_ms,
            gzip,
        } = self;
        let problems_before = checker.count();
        match reqwest::Url::parse(&url) {
            Ok(parsed)
                if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {}
            _ => checker.problem(at, format!("url {url:?}: expected http(s)://host:port")),
        }
        let mut secret = |what: &str, secret: Option<SecretRef>| {
            let resolved = secret?.resolve();
            resolved
                .map_err(|e| checker.problem(at, format!("{what}: {e}")))
                .ok()
        };
        let token = secret("token", token);
        let password = secret("password", password);
        let api = match api.as_str() {
            "v2" => {
                let v1_only = [
                    ("database", database.is_some()),
                    ("retention_policies", !retention_policies.is_empty()),
                    ("username", username.is_some()),
                    ("password", password.is_some()),
                ];
                only_with(checker, at, "v1", v1_only);
                if org.as_deref().is_none_or(str::is_empty) {
                    checker.problem(at, "api v2 needs an org");
                }
                let buckets = names(checker, at, "buckets", buckets, |g| format!("p1guard_{g}"));
                let org = org.unwrap_or_default();
                Some(InfluxApi::V2 {
                    org,
                    token,
                    buckets,
                })
            }
            "v1" => {
                let v2_only = [
                    ("org", org.is_some()),
                    ("token", token.is_some()),
                    ("buckets", !buckets.is_empty()),
                ];
                only_with(checker, at, "v2", v2_only);
                let database = database.unwrap_or_else(|| "p1guard".into());
                if database.is_empty() {
                    checker.problem(at, "database is empty");
                }
                let retention_policies = names(
                    checker,
                    at,
                    "retention_policies",
                    retention_policies,
                    str::to_owned,
                );
                let credentials = match (username, password) {
                    (Some(username), Some(password)) => Some((username, password)),
                    (None, None) => None,
                    _ => {
                        checker.problem(at, "username and password go together");
                        None
                    }
                };
                Some(InfluxApi::V1 {
                    database,
                    retention_policies,
                    credentials,
                })
            }
            other => {
                checker.problem(at, format!("api {other:?}: expected v2 or v1"));
                None
            }
        };
        if batch_records == Some(0) {
            checker.problem(at, "batch_records must be positive");
        }
        let batching = Batching {
            max_records: batch_records.unwrap_or(5000),
            max_wait: Duration::from_millis(flush_interval_ms.unwrap_or(1000)),
        };
        let api = api.filter(|_| checker.count() == problems_before)?;
        Some(InfluxSettings {
            url,
            api,
            batching,
            gzip: gzip.unwrap_or(true),
        })
    }
}

impl InfluxSettings {
    /// Where records go, for `check-config`.
    pub fn describe(&self) -> String {
        match &self.api {
            InfluxApi::V2 { org, .. } => format!(" at {} (v2 API, org {org})", self.url),
            InfluxApi::V1 { database, .. } => {
                format!(" at {} (v1 API, database {database})", self.url)
            }
        }
    }
}

/// Notes each present setting of `settings` as belonging to the other `api`.
fn only_with<const N: usize>(
    checker: &mut Checker<'_>,
    at: &str,
    api: &str,
    settings: [(&str, bool); N],
) {
    for (key, present) in settings {
        if present {
            checker.problem(at, format!("{key} is a setting of api {api}"));
        }
    }
}

/// A name per granularity (indexed like [`Granularity::ALL`]): `named`'s, else `default`'s.
fn names(
    checker: &mut Checker<'_>,
    at: &str,
    key: &str,
    mut named: BTreeMap<Granularity, String>,
    default: impl Fn(&str) -> String,
) -> [String; 4] {
    Granularity::ALL.map(|granularity| {
        let name = named
            .remove(&granularity)
            .unwrap_or_else(|| default(granularity.name()));
        if name.is_empty() {
            checker.problem(at, format!("{key}.{granularity}: empty"));
        }
        name
    })
}
