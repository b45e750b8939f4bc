//! Is the cloud engine answering? The hybrid state `normal → emergency → recovery → normal`.
//!
//! The state is a function of two facts: whether the cloud is up (with hysteresis) and whether
//! the journal holds writes not yet handed back. Cloud down: `emergency`. Cloud up with a backlog:
//! `recovery`. Cloud up, nothing owed: `normal`.
//!
//! Only the prober ([`watch_cloud`]) decides whether the cloud is up: a cheap engine call,
//! failed when it gets no answer within its deadline or a 5xx. The speed comes from the traffic,
//! not from probing often (thousands of clinics probing ten times a second would load the data
//! centre): a probe goes out about once a `interval`, and not at all while real calls are being
//! answered; a call that fails, or that the cloud leaves unanswered past its deadline
//! ([`Health::suspect`]), asks for a probe at once. Deadlines follow the cloud's own observed
//! latency ([`Latency`], TCP's retransmission-timeout estimator), between `deadline_min` and
//! `timeout`: a cloud that answers in 20 ms is suspect after 150 ms of silence, not after the
//! half second a slow line would need. A probe silent past such a short deadline is confirmed at
//! once by one more with the whole `timeout`: a gateway starved of CPU (two hundred terminals
//! signing in at once) misses short deadlines by itself, and the reads waiting meanwhile have
//! already been answered from the cache. One failed probe (refused, 5xx, or silent for the whole
//! `timeout`) takes the cloud down (DESIGN.md's one-second budget leaves no room for more); coming back needs `healthy_for` of unbroken
//! successful probes, so a cloud that flaps stays down instead of dragging the clinic back and
//! forth. That trial is the one time probes come closer together (about ten over `healthy_for`,
//! [`Health::probe_spacing`]): a probe a second would miss a cloud that drops out for a third of
//! a second every second, and ten probes once per outage cost the data centre nothing. A merely
//! slow cloud does not flap the state: a late answer is not a failure, and it
//! teaches the deadline.

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
    /// About how often the prober asks when no real call has been answered meanwhile.
    pub interval: Duration,
    /// The longest any deadline gets: a probe unanswered this long has failed, however slow the
    /// cloud has been.
    pub timeout: Duration,
    /// The shortest deadline, however fast the cloud has been: a cloud answering in 2 ms is not
    /// suspect after 10 ms, when a packet lost once costs 200 ms.
    pub deadline_min: Duration,
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
    /// How fast the cloud answers, probes and real calls alike.
    latency: Latency,
    /// When a real call last got an answer (ms since `epoch`): a probe then tells nothing new.
    answered_at: AtomicU64,
    epoch: Instant,
    /// The wall clock at `epoch`, for the status page's times.
    epoch_wall: std::time::SystemTime,
    /// When the state last changed, and when a probe was last answered (ms since `epoch`, 0:
    /// never): the status page's "since" and "last contact". Written only off the request path.
    changed_at: AtomicU64,
    probe_answered_at: AtomicU64,
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
            latency: Latency::default(),
            answered_at: AtomicU64::new(0),
            epoch: Instant::now(),
            epoch_wall: std::time::SystemTime::now(),
            changed_at: AtomicU64::new(0),
            probe_answered_at: AtomicU64::new(0),
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

    /// Real traffic saw the cloud fail (connect error, 5xx) or stay silent past its deadline:
    /// probe now.
    pub fn suspect(&self) {
        self.kick.notify_one();
    }

    /// How long a call waits for the cloud before the gateway acts on the silence: answers a
    /// read from the cache and asks for a probe.
    pub fn call_deadline(&self) -> Duration {
        self.latency.deadline(&self.settings)
    }

    /// A real call was answered (not 502–504) after `took`.
    pub fn answered(&self, took: Duration) {
        self.latency.record(took);
        self.answered_at.store(self.millis() + 1, Relaxed);
    }

    /// Whether a real call was answered within the last `within`.
    fn answered_within(&self, within: Duration) -> bool {
        let at = self.answered_at.load(Relaxed);
        at != 0 && self.millis() + 1 - at < within.as_millis() as u64
    }

    /// How long the prober waits before its next probe: `interval`, or, while the cloud is on
    /// trial (down, and the latest probes answered), a tenth of `healthy_for`, so the unbroken
    /// run it must show is watched closely enough to catch a flap.
    pub fn probe_spacing(&self) -> Duration {
        let Settings {
            interval,
            deadline_min,
            healthy_for,
            ..
        } = self.settings;
        match self.lock().healthy_since {
            Some(_) => (healthy_for / 10).clamp(deadline_min, interval.max(deadline_min)),
            None => interval,
        }
    }

    fn millis(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// When the current state began (the gateway's start, if it never changed).
    pub fn since(&self) -> std::time::SystemTime {
        self.wall(self.changed_at.load(Relaxed))
            .unwrap_or(self.epoch_wall)
    }

    /// The last time the cloud answered anything, a probe or a real call; `None` if it never has
    /// since the gateway started.
    pub fn last_contact(&self) -> Option<std::time::SystemTime> {
        let at = self
            .answered_at
            .load(Relaxed)
            .max(self.probe_answered_at.load(Relaxed));
        self.wall(at)
    }

    fn wall(&self, millis_plus_one: u64) -> Option<std::time::SystemTime> {
        (millis_plus_one != 0).then(|| self.epoch_wall + Duration::from_millis(millis_plus_one - 1))
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
        if outcome.is_ok() {
            self.probe_answered_at.store(self.millis() + 1, Relaxed);
        }
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
            self.changed_at.store(self.millis() + 1, Relaxed);
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
    let Settings {
        interval,
        deadline_min,
        ..
    } = health.settings;
    let mut asked = false;
    // Whether this probe confirms an earlier one's silence: it gets the whole `timeout`.
    let mut confirming = false;
    loop {
        let started = tokio::time::Instant::now();
        // A real call answered since the last tick says what a probe would, for free; a call
        // that asked for this probe says otherwise.
        if asked || confirming || !(health.cloud_up() && health.answered_within(interval)) {
            let since = health.millis();
            let deadline = if std::mem::take(&mut confirming) {
                health.settings.timeout
            } else {
                health.call_deadline()
            };
            match probe_once(&upstream, &probe, deadline).await {
                Ok(()) => {
                    health.latency.record(started.elapsed());
                    health.record(Ok(()));
                }
                // The probe met silence, but a real call was answered meanwhile: the cloud is
                // there, the probe (or its packet) was unlucky. Wait longer next time.
                Err(Unanswered::Silent(_)) if health.answered_at.load(Relaxed) > since => {
                    health.latency.back_off();
                }
                // Silent within a deadline shorter than the ceiling: the cloud is suspect, not
                // failed (a gateway starved of CPU misses short deadlines too). One more probe at
                // once, with the whole `timeout`, decides; the reads waiting meanwhile have
                // already been answered from the cache at their own deadline.
                Err(Unanswered::Silent(_)) if deadline < health.settings.timeout => {
                    health.latency.back_off();
                    confirming = true;
                    continue;
                }
                Err(Unanswered::Silent(why)) => {
                    health.latency.back_off();
                    health.record(Err(why));
                }
                Err(Unanswered::Failed(why)) => health.record(Err(why)),
            }
        }
        asked = tokio::select! {
            _ = tokio::time::sleep_until(started + health.probe_spacing()) => false,
            // A burst of suspicion is one probe, and probes on demand stay apart.
            _ = health.kick.notified() => {
                tokio::time::sleep_until(started + deadline_min).await;
                true
            }
        };
    }
}

/// Why a probe failed.
enum Unanswered {
    /// Nothing came back within the deadline: the cloud may be a black hole, or just slow.
    Silent(String),
    /// The cloud refused, broke off or answered 5xx.
    Failed(String),
}

/// How fast the cloud answers, as TCP estimates a round trip (RFC 6298): a smoothed latency and
/// its variation, the deadline their sum with four variations, within the configured bounds.
/// Only answers are samples; a call that gets none teaches nothing (Karn's rule).
#[derive(Debug, Default)]
pub struct Latency {
    /// (smoothed, variation) in microseconds; `None` before the first answer.
    state: Mutex<Option<(u64, u64)>>,
    /// Deadlines missed since the last answer: each doubles the next deadline (RFC 6298's
    /// back-off), so a cloud that has become slower is heard again instead of failing forever.
    missed: AtomicU8,
}

impl Latency {
    pub fn record(&self, took: Duration) {
        self.missed.store(0, Relaxed);
        let sample = took.as_micros().min(u64::MAX as u128) as u64;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *state = Some(match *state {
            None => (sample, sample / 2),
            Some((srtt, var)) => {
                let var = (3 * var + srtt.abs_diff(sample)) / 4;
                ((7 * srtt + sample) / 8, var)
            }
        });
    }

    /// A deadline passed without an answer.
    pub fn back_off(&self) {
        let _ = self
            .missed
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_add(1).min(8)));
    }

    /// Before any answer: the longest deadline, as a cloud of unknown speed deserves.
    pub fn deadline(&self, settings: &Settings) -> Duration {
        let state = *self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some((srtt, var)) = state else {
            return settings.timeout;
        };
        let base = srtt.saturating_add(var.saturating_mul(4));
        let backed_off = base.saturating_mul(1 << self.missed.load(Relaxed));
        Duration::from_micros(backed_off)
            .clamp(settings.deadline_min, settings.timeout.max(settings.deadline_min))
    }
}

async fn probe_once(upstream: &Upstream, probe: &Probe, timeout: Duration) -> Result<(), Unanswered> {
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
        .map_err(|e| Unanswered::Failed(format!("probe path {:?}: {e}", probe.path)))?;
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
        Ok(outcome) => outcome.map_err(Unanswered::Failed),
        Err(_) => Err(Unanswered::Silent(format!(
            "no answer to the probe within {timeout:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(healthy_for: Duration) -> Arc<Health> {
        Health::new(Settings {
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(10),
            deadline_min: Duration::from_millis(1),
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
    fn deadlines_follow_the_cloud_within_their_bounds() {
        let settings = Settings {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            deadline_min: Duration::from_millis(150),
            healthy_for: Duration::ZERO,
        };
        let ms = Duration::from_millis;
        let l = Latency::default();
        assert_eq!(l.deadline(&settings), ms(500), "unknown speed: the longest");
        for _ in 0..20 {
            l.record(ms(5));
        }
        assert_eq!(l.deadline(&settings), ms(150), "a fast cloud: the floor");
        // A line that slows to 120 ms pushes the deadline up with it, and past its samples.
        for _ in 0..20 {
            l.record(ms(120));
        }
        let d = l.deadline(&settings);
        assert!(d > ms(150) && d <= ms(500), "{d:?}");
        for _ in 0..3 {
            l.record(ms(5_000));
        }
        assert_eq!(l.deadline(&settings), ms(500), "never past the ceiling");
        let l = Latency::default();
        l.record(ms(20));
        assert_eq!(l.deadline(&settings), ms(150));
        l.back_off();
        l.back_off();
        l.back_off();
        assert_eq!(
            l.deadline(&settings),
            ms(480),
            "each miss doubles 60 ms of deadline"
        );
        l.record(ms(20));
        assert!(l.deadline(&settings) < ms(480), "an answer ends the back-off");
    }

    #[test]
    fn a_cloud_on_trial_is_probed_closely_and_otherwise_about_once_an_interval() {
        let h = Health::new(Settings {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            deadline_min: Duration::from_millis(150),
            healthy_for: Duration::from_secs(3),
        });
        assert_eq!(h.probe_spacing(), Duration::from_secs(1), "up");
        h.record(Err("refused".into()));
        assert_eq!(h.probe_spacing(), Duration::from_secs(1), "down, nothing answers");
        h.record(Ok(()));
        assert_eq!(
            h.probe_spacing(),
            Duration::from_millis(300),
            "on trial: 3 s / 10"
        );
        let h = health(Duration::from_secs(1));
        h.record(Err("refused".into()));
        h.record(Ok(()));
        assert_eq!(
            h.probe_spacing(),
            Duration::from_millis(10),
            "a short trial: no closer than deadline_min, no further than interval"
        );
    }

    #[test]
    fn an_answered_call_stands_in_for_a_probe() {
        let h = health(Duration::ZERO);
        assert!(!h.answered_within(Duration::from_secs(1)));
        h.answered(Duration::from_millis(3));
        assert!(h.answered_within(Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(15));
        assert!(!h.answered_within(Duration::from_millis(10)));
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
