//! The running daemon's side of the registry: new events reach the consent table within a
//! second, and the stores are purged of what an event that lowers consent no longer allows,
//! at its effective instant.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use p1guard_conduct::{ConsentTable, IdentityKey};
use tokio_util::sync::CancellationToken;

use super::{Event, Registry};
use crate::rights::{Subject, Withdrawal, purge_withdrawn};
use crate::sinks::{NoLongerLive, SinkConfig};

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
    /// The running sinks, told which meters they may no longer show live.
    pub no_longer_live: NoLongerLive,
}

/// Adds every event after `last` to `table` each second until `shutdown`, and, if `purging`
/// is given, purges the stores of what each event that lowers consent no longer allows, once
/// it is in force. Lowering events recorded earlier to take effect later are purged when they
/// come due.
pub async fn follow(
    registry: Registry,
    table: ConsentTable,
    mut last: i64,
    purging: Option<Purging>,
    shutdown: CancellationToken,
) {
    let mut due: Vec<(Timestamp, Withdrawal)> = Vec::new();
    if let Some(purging) = &purging {
        match tokio::task::block_in_place(|| registry.scheduled_events()) {
            Ok(scheduled) => {
                for event in scheduled {
                    let before = event.effective_from - SignedDuration::from_secs(1);
                    if lowers(&table, &event, before) {
                        due.push((event.effective_from, withdrawal(&event, purging)));
                    }
                }
            }
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
        let now = Timestamp::now();
        if purging.is_some() {
            // Withdrawals in force now reach back to records arriving late (see run).
            table.reach_back_through(now);
        }
        let settled = now.checked_add(SETTLE).unwrap_or(now);
        let events = tokio::task::block_in_place(|| registry.events_after(last));
        match events {
            Ok(events) => {
                if !events.is_empty() {
                    tracing::info!(
                        events = events.len(),
                        "consent registry: new events in force from their effective instants"
                    );
                }
                for event in events {
                    // Whether it lowers is judged against the table before the event.
                    if let Some(purging) = &purging
                        && lowers(&table, &event, event.effective_from)
                    {
                        let at = event.effective_from.max(settled);
                        due.push((at, withdrawal(&event, purging)));
                    }
                    if let Err(error) = event.apply(&table) {
                        tracing::error!("consent registry: {error:#}");
                    }
                    last = event.seq;
                }
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
        if ready.is_empty() {
            continue;
        }
        let withdrawals: Vec<Withdrawal> = ready.into_iter().map(|(_, w)| w).collect();
        for sink in &purging.sinks {
            let meters = withdrawals.iter().filter_map(|w| w.ends_live_on(sink));
            purging.no_longer_live.tell(&sink.name, meters.collect());
        }
        match purge_withdrawn(&purging.sinks, &purging.key, &table, &withdrawals, now).await {
            Ok(answers) => {
                let erased: u64 = answers.iter().map(|a| a.purged.erased).sum();
                tracing::info!(
                    withdrawals = withdrawals.len(),
                    erased,
                    "consent registry: purged what lowered consent no longer allows"
                );
            }
            Err(error) => {
                tracing::error!(
                    "consent registry: purging failed, retrying in a minute: {error:#}"
                );
                let retry = now.checked_add(SignedDuration::from_mins(1)).unwrap_or(now);
                due.extend(withdrawals.into_iter().map(|w| (retry, w)));
            }
        }
    }
}

fn lowers(table: &ConsentTable, event: &Event, at: Timestamp) -> bool {
    Withdrawal::lowers(table, &event.meter, &event.purpose, event.level, at)
}

fn withdrawal(event: &Event, purging: &Purging) -> Withdrawal {
    Withdrawal {
        subject: Subject::new(event.meter.clone(), &purging.key),
        purpose: event.purpose.clone(),
        level: event.level,
        from: event.effective_from,
    }
}
