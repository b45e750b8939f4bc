//! Is the cloud engine answering? The hybrid state `normal → emergency → recovery → normal`.
//!
//! The state is a function of two facts: whether the cloud is up (with hysteresis) and whether
//! the journal holds writes not yet handed back. Cloud down: `emergency`. Cloud up with a backlog:
//! `recovery`. Cloud up, nothing owed: `normal`.
//!
//! Only the prober ([`watch_cloud`]) decides whether the cloud is up: a cheap engine call every
//! `interval`, failed when it gets no answer within `timeout` or a 5xx. Real traffic that fails
//! ([`Health::suspect`]) asks for a probe at once instead of waiting for the next tick, so a
//! refused connection is noticed in milliseconds and a black hole within `interval + timeout`.
//! One failed probe takes the cloud down (DESIGN.md's one-second budget leaves no room for
//! more); coming back needs `healthy_for` of unbroken successful probes, so a cloud that flaps
//! stays down instead of dragging the clinic back and forth.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;
use tokio::sync::{Notify, watch};

use crate::upstream::Upstream;

/// The hybrid state, as the engine names it in `X-Hybridmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal = 0,
    Emergency = 1,
    Recovery = 2,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "normal",
            Mode::Emergency => "emergency",
            Mode::Recovery => "recovery",
        }
    }

    /// The `X-Hybridmode` value.
    pub fn header(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }

    fn from_u8(n: u8) -> Mode {
        match n {
            1 => Mode::Emergency,
            2 => Mode::Recovery,
            _ => Mode::Normal,
        }
    }
}

/// A change of state and why it happened, for logs, metrics and the audit log.
#[derive(Debug, Clone)]
pub struct Change {
    pub mode: Mode,
    pub cloud_up: bool,
    pub reason: String,
}

/// Probe timing.
#[derive(Debug, Clone)]
pub struct Settings {
    pub interval: Duration,
    pub timeout: Duration,
    /// How long the cloud must answer every probe before it counts as back.
    pub healthy_for: Duration,
}

/// The shared view of the cloud's health.
pub struct Health {
    settings: Settings,
    /// The current [`Mode`], readable on the hot path without a lock.
    mode: AtomicU8,
    /// Writes in the journal not yet handed back.
    backlog: AtomicU64,
    inner: Mutex<Inner>,
    changes: watch::Sender<Change>,
    kick: Notify,
    /// Probes sent and failed, for metrics.
    pub probes_total: AtomicU64,
    pub probe_failures_total: AtomicU64,
}

struct Inner {
    cloud_up: bool,
    /// The first success of the current unbroken run of successes while the cloud is down.
    healthy_since: Option<Instant>,
}

impl Health {
    /// Starts optimistic: the cloud counts as up until the first probe says otherwise.
    pub fn new(settings: Settings) -> Arc<Health> {
        let first = Change {
            mode: Mode::Normal,
            cloud_up: true,
            reason: "started".into(),
        };
        Arc::new(Health {
            settings,
            mode: AtomicU8::new(Mode::Normal as u8),
            backlog: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                cloud_up: true,
                healthy_since: None,
            }),
            changes: watch::channel(first).0,
            kick: Notify::new(),
            probes_total: AtomicU64::new(0),
            probe_failures_total: AtomicU64::new(0),
        })
    }

    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Relaxed))
    }

    pub fn cloud_up(&self) -> bool {
        self.lock().cloud_up
    }

    /// Every change of state, the latest first seen on subscription.
    pub fn subscribe(&self) -> watch::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Resolves when the cloud is declared down: an in-flight call stops waiting for it.
    pub async fn went_down(&self) {
        let mut changes = self.subscribe();
        let _ = changes.wait_for(|c| !c.cloud_up).await;
    }

    /// Resolves once the cloud is up (immediately if it is).
    pub async fn until_up(&self) {
        let mut changes = self.subscribe();
        let _ = changes.wait_for(|c| c.cloud_up).await;
    }

    /// Real traffic saw the cloud fail (connect error, timeout, 5xx): probe now.
    pub fn suspect(&self) {
        self.kick.notify_one();
    }

    /// The number of journaled writes still owed to the cloud.
    pub fn set_backlog(&self, pending: u64) {
        let before = self.backlog.swap(pending, Relaxed);
        if (before == 0) != (pending == 0) {
            let why = if pending == 0 {
                "the journal is empty".to_owned()
            } else {
                format!("{pending} journaled write(s) to hand back")
            };
            let inner = self.lock();
            self.publish(&inner, why);
        }
    }

    pub fn backlog(&self) -> u64 {
        self.backlog.load(Relaxed)
    }

    /// One probe's outcome.
    pub fn record(&self, outcome: Result<(), String>) {
        self.probes_total.fetch_add(1, Relaxed);
        let mut inner = self.lock();
        match outcome {
            Err(why) => {
                self.probe_failures_total.fetch_add(1, Relaxed);
                inner.healthy_since = None;
                if inner.cloud_up {
                    inner.cloud_up = false;
                    self.publish(&inner, format!("cloud down: {why}"));
                }
            }
            Ok(()) if !inner.cloud_up => {
                let since = *inner.healthy_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= self.settings.healthy_for {
                    inner.cloud_up = true;
                    inner.healthy_since = None;
                    let reason = format!(
                        "cloud back: every probe answered for {:?}",
                        self.settings.healthy_for
                    );
                    self.publish(&inner, reason);
                }
            }
            Ok(()) => {}
        }
    }

    fn publish(&self, inner: &Inner, reason: String) {
        let mode = match (inner.cloud_up, self.backlog.load(Relaxed)) {
            (false, _) => Mode::Emergency,
            (true, 0) => Mode::Normal,
            (true, _) => Mode::Recovery,
        };
        let before = self.mode.swap(mode as u8, Relaxed);
        let cloud_changed = self.changes.borrow().cloud_up != inner.cloud_up;
        if before != mode as u8 || cloud_changed {
            self.changes.send_replace(Change {
                mode,
                cloud_up: inner.cloud_up,
                reason,
            });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The engine call the prober makes.
#[derive(Debug, Clone)]
pub struct Probe {
    pub method: hyper::Method,
    /// Path and query, e.g. `/api01rv2/systeminfv2?format=json`.
    pub path: String,
    pub body: String,
    pub authorization: HeaderValue,
}

/// Probes the cloud for as long as the gateway runs.
pub async fn watch_cloud(health: Arc<Health>, upstream: Upstream, probe: Probe) {
    let interval = health.settings.interval;
    loop {
        let started = tokio::time::Instant::now();
        let outcome = probe_once(&upstream, &probe, health.settings.timeout).await;
        health.record(outcome);
        tokio::select! {
            _ = tokio::time::sleep_until(started + interval) => {}
            _ = health.kick.notified() => {}
        }
    }
}

async fn probe_once(upstream: &Upstream, probe: &Probe, timeout: Duration) -> Result<(), String> {
    use http_body_util::BodyExt;
    let mut req = hyper::Request::new(
        http_body_util::Full::new(hyper::body::Bytes::from(probe.body.clone()))
            .map_err(|e| match e {})
            .boxed(),
    );
    *req.method_mut() = probe.method.clone();
    *req.uri_mut() = probe
        .path
        .parse()
        .map_err(|e| format!("probe path {:?}: {e}", probe.path))?;
    if !probe.body.is_empty() {
        let kind = if probe.body.trim_start().starts_with('<') {
            "application/xml"
        } else {
            "application/json"
        };
        req.headers_mut()
            .insert(hyper::header::CONTENT_TYPE, HeaderValue::from_static(kind));
    }
    let call = async {
        let resp = upstream
            .forward(req, probe.authorization.clone())
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        // Read the answer to the end so the connection goes back to the pool.
        resp.into_body()
            .collect()
            .await
            .map_err(|e| format!("the probe's answer broke off: {e}"))?;
        if status.is_server_error() {
            return Err(format!("the probe was answered {status}"));
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("no answer to the probe within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(healthy_for: Duration) -> Arc<Health> {
        Health::new(Settings {
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(10),
            healthy_for,
        })
    }

    #[test]
    fn one_failure_is_emergency_and_coming_back_takes_an_unbroken_run() {
        let h = health(Duration::from_millis(30));
        h.record(Ok(()));
        assert_eq!(h.mode(), Mode::Normal);
        h.record(Err("refused".into()));
        assert_eq!(h.mode(), Mode::Emergency);
        h.record(Ok(()));
        std::thread::sleep(Duration::from_millis(20));
        h.record(Err("refused".into())); // a flap breaks the run
        h.record(Ok(()));
        std::thread::sleep(Duration::from_millis(20));
        h.record(Ok(()));
        assert_eq!(h.mode(), Mode::Emergency, "20 ms of a 30 ms run is not enough");
        std::thread::sleep(Duration::from_millis(15));
        h.record(Ok(()));
        assert_eq!(h.mode(), Mode::Normal);
    }

    #[test]
    fn a_backlog_makes_recovery_until_it_is_empty() {
        let h = health(Duration::ZERO);
        h.record(Err("black hole".into()));
        h.set_backlog(3);
        assert_eq!(h.mode(), Mode::Emergency);
        h.record(Ok(()));
        assert_eq!(h.mode(), Mode::Recovery);
        h.set_backlog(0);
        assert_eq!(h.mode(), Mode::Normal);
        assert_eq!(h.subscribe().borrow().reason, "the journal is empty");
    }
}
