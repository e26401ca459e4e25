//! systemd's `Type=notify` protocol: READY=1 once sources and sinks are up, watchdog pings
//! while the runtime is alive, STOPPING=1 on shutdown. Without `$NOTIFY_SOCKET` (not under
//! systemd) every call does nothing.

use tokio_util::sync::CancellationToken;

/// Tells systemd the service is up and, if the unit has `WatchdogSec`, pings at half that
/// interval until `shutdown`.
pub fn ready(shutdown: &CancellationToken) {
    notify(sd_notify::NotifyState::Ready);
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval / 2);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => notify(sd_notify::NotifyState::Watchdog),
            }
        }
    });
}

/// Tells systemd the service is stopping.
pub fn stopping() {
    notify(sd_notify::NotifyState::Stopping);
}

fn notify(state: sd_notify::NotifyState<'_>) {
    if let Err(error) = sd_notify::notify(&[state]) {
        tracing::warn!("cannot notify systemd: {error}");
    }
}
