//! The running daemon's side of the registry: new events reach the consent table within a
//! second, and the stores are purged of what an event no longer allows, at its effective
//! instant.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use p1guard_conduct::{ConsentTable, IdentityKey};
use tokio_util::sync::CancellationToken;

use super::{Event, Registry};
use crate::rights::{Subject, purge_withdrawn};
use crate::sinks::SinkConfig;

/// How often the registry is read for new events.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// A purge waits this long after the daemon saw its event, so that records reduced just
/// before are written, and purged with the rest.
const SETTLE: SignedDuration = SignedDuration::from_secs(5);

/// What the follower needs to purge.
pub struct Purging {
    /// The stores.
    pub sinks: Vec<SinkConfig>,
    /// To name meters in pseudonymous stores.
    pub key: IdentityKey,
}

/// Adds every event after `last` to `table` each second until `shutdown`, and, if `purging`
/// is given, purges the stores of what each event no longer allows once it is in force.
/// Events recorded earlier to take effect later are purged for when they come due.
pub async fn follow(
    registry: Registry,
    table: ConsentTable,
    mut last: i64,
    purging: Option<Purging>,
    shutdown: CancellationToken,
) {
    let mut due: Vec<(Timestamp, Event)> = Vec::new();
    if purging.is_some() {
        match tokio::task::block_in_place(|| registry.events_after(0)) {
            Ok(events) => due.extend(
                events
                    .into_iter()
                    .filter(|e| e.effective_from > e.recorded_at)
                    .map(|e| (e.effective_from, e)),
            ),
            Err(error) => tracing::error!("consent registry: {error:#}"),
        }
    }
    let mut failures = crate::telemetry::log_limit::LogLimit::per_minute();
    let mut tick = tokio::time::interval(POLL_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let loaded = tokio::task::block_in_place(|| -> anyhow::Result<Vec<Event>> {
            let events = if purging.is_some() {
                registry.events_after(last)?
            } else {
                Vec::new()
            };
            last = registry.load_into(&table, last)?;
            Ok(events)
        });
        let now = Timestamp::now();
        match loaded {
            Ok(events) => {
                if !events.is_empty() {
                    tracing::info!(
                        events = events.len(),
                        "consent registry: new events in force from their effective instants"
                    );
                }
                let settled = now.checked_add(SETTLE).unwrap_or(now);
                due.extend(
                    events
                        .into_iter()
                        .map(|e| (e.effective_from.max(settled), e)),
                );
            }
            Err(error) => {
                if let Some(suppressed) = failures.allow(std::time::Instant::now()) {
                    tracing::error!(suppressed, "consent registry: {error:#}");
                }
            }
        }
        let Some(purging) = &purging else { continue };
        let (ready, later): (Vec<_>, Vec<_>) = due.drain(..).partition(|(at, _)| *at <= now);
        due = later;
        for (_, event) in ready {
            let subject = Subject::new(event.meter.clone(), &purging.key);
            let purged = purge_withdrawn(
                &purging.sinks,
                &purging.key,
                &subject,
                &event.purpose,
                event.level,
                now,
            )
            .await;
            match purged {
                Ok(answers) => {
                    let erased: u64 = answers.iter().map(|a| a.purged.erased).sum();
                    if erased > 0 {
                        tracing::info!(
                            event = event.seq,
                            erased,
                            "consent registry: purged what the event no longer allows"
                        );
                    }
                }
                Err(error) => {
                    tracing::error!(
                        event = event.seq,
                        "consent registry: purging failed, retrying in a minute: {error:#}"
                    );
                    let retry = now.checked_add(SignedDuration::from_mins(1)).unwrap_or(now);
                    due.push((retry, event));
                }
            }
        }
    }
}
