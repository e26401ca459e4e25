//! Running one configuration as a fleet of workers on NATS JetStream: the server's subject
//! mapping puts each meter on a partition (`config/nats/nats-server.conf`), the workers
//! share the partitions by leases in a KV bucket ([`lease`]), so that one worker at a time
//! reduces a meter, and each partition's reducer state goes from owner to owner through a
//! snapshot in another ([`snapshot`]). Consent recorded for the fleet reaches every worker's
//! registry through a stream ([`consent`]).

pub mod consent;
pub mod lease;
pub mod snapshot;

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, kv, stream};

/// KV bucket `bucket` (for `what`), made if missing, and its stream's `max_age` (zero:
/// none). Its stream is made by hand: `create_key_value` fails against server 2.9. It keeps
/// one entry per key; the rest is what a KV bucket's stream has.
async fn open_bucket(
    jetstream: &jetstream::Context,
    bucket: &str,
    what: &str,
    max_age: Duration,
) -> anyhow::Result<(kv::Store, Duration)> {
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_age,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        storage: stream::StorageType::File,
        ..Default::default()
    };
    let stream = jetstream
        .get_or_create_stream(config)
        .await
        .with_context(|| format!("cannot open or create the {what} bucket {bucket}"))?;
    let max_age = stream.cached_info().config.max_age;
    let kv = jetstream
        .get_key_value(bucket)
        .await
        .with_context(|| format!("cannot open the {what} bucket {bucket}"))?;
    Ok((kv, max_age))
}
