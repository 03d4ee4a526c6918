//! What the service manager is told (systemd's notify protocol, `Type=notify-reload` and
//! `Type=notify` units): ready once every listener is bound, reloading and ready again around
//! each reload, stopping at shutdown, and watchdog pings at half the interval systemd sets.
//! Without `NOTIFY_SOCKET` (not started by systemd) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Every listener accepts: start-up is over.
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// A reload begins. systemd 253+ needs the monotonic time with it, or the reload fails.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// A reload has ended; a failed one leaves the old config serving, so the daemon is ready
/// either way, and the status line says what happened.
pub fn reloaded(error: Option<&str>) {
    match error {
        None => send(&[NotifyState::Ready, NotifyState::Status("running")]),
        Some(e) => {
            let status = format!("running; last reload failed: {e}").replace('\n', " ");
            send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        }
    }
}

/// Shutdown has begun (draining).
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Pings the watchdog at half the interval `WATCHDOG_USEC` sets (for this process), until
/// `stop`. Does nothing when no watchdog is set.
pub fn spawn_watchdog(stop: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else { return };
    let every = (interval / 2).max(Duration::from_millis(1));
    tracing::info!(interval = ?interval, every = ?every, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => send(&[NotifyState::Watchdog]),
                () = stop.cancelled() => return,
            }
        }
    });
}
