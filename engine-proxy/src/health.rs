//! Is the cloud engine answering? The hybrid state `normal → emergency → recovery → normal`.
//!
//! The state is a function of two facts: whether the cloud is up (with hysteresis) and whether
//! the journal holds writes not yet handed back. Cloud down: `emergency`. Cloud up with a backlog:
//! `recovery`. Cloud up, nothing owed: `normal`.
//!
//! The cloud may be reached over several paths (a second line, a VPN the gateway dials itself):
//! the cloud is up while any path is, and the first healthy path in the configured order carries
//! new calls. Everything below holds per path: each has its prober, its deadline and its
//! hysteresis, so a path that flaps stays out of use while the others carry the clinic, and the
//! local engine takes over only when every path is down.
//!
//! Only the prober ([`watch_path`]) decides whether a path is up: a cheap engine call,
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
//! `timeout`) takes the path down (DESIGN.md's one-second budget leaves no room for more); coming back needs `healthy_for` of unbroken
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

/// The hybrid state, as the engine names it in `X-Hybridmode` ([`crate::fields::HYBRID_MODE`]).
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
    /// The path carrying the traffic now (the first healthy one in the configured order);
    /// `None` when every path is down.
    pub path: Option<usize>,
    /// Bit `i` set: path `i` is up (a standby path going down is a change too).
    pub up: u8,
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
    /// How long a path must answer every probe before it counts as back: failing back to a path
    /// waits for this stable window.
    pub healthy_for: Duration,
}

/// The most paths a gateway may have: their states are one bit each of a word.
pub const MAX_PATHS: usize = 8;

/// The shared view of the cloud's health, over every path to it.
///
/// The cloud is up when any path is; the paths are kept in the configured order, the first
/// healthy one carries new calls. Each path has its own prober, deadline and hysteresis, so a
/// path that flaps stays out of use until it has been steady for `healthy_for`, while the others
/// carry the clinic.
pub struct Health {
    settings: Settings,
    /// The current [`Mode`], readable on the hot path without a lock.
    mode: AtomicU8,
    /// Bit `i` set: path `i` is up. Readable on the hot path without a lock.
    up: AtomicU8,
    /// Writes in the journal not yet handed back.
    backlog: AtomicU64,
    inner: Mutex<Vec<Trial>>,
    changes: watch::Sender<Change>,
    links: Vec<Link>,
    epoch: Instant,
    /// The wall clock at `epoch`, for the status page's times.
    epoch_wall: std::time::SystemTime,
    /// When the state last changed (ms since `epoch`, 0: never): the status page's "since".
    /// Written only off the request path.
    changed_at: AtomicU64,
}

/// One path to the cloud: what its traffic and its probes have seen.
pub struct Link {
    pub name: String,
    /// Asks this path's prober for a probe now.
    kick: Notify,
    /// Whether the path is up, for calls waiting on it.
    up: watch::Sender<bool>,
    /// How fast the cloud answers over this path, probes and real calls alike.
    latency: Latency,
    /// When a real call last got an answer over this path (ms since `epoch` + 1, 0: never): a
    /// probe then tells nothing new.
    answered_at: AtomicU64,
    /// When a probe was last answered, and when the path last went down or came back (ms since
    /// `epoch` + 1, 0: never).
    probe_answered_at: AtomicU64,
    changed_at: AtomicU64,
    /// Milliseconds this path has been down, up to its last change.
    down_ms: AtomicU64,
    /// Probes sent and failed, for metrics.
    pub probes_total: AtomicU64,
    pub probe_failures_total: AtomicU64,
}

/// A path's hysteresis, under the lock.
#[derive(Clone, Copy)]
struct Trial {
    up: bool,
    /// The first success of the current unbroken run of successes while the path is down.
    healthy_since: Option<Instant>,
    /// When the path last came back.
    up_since: Option<Instant>,
    /// How often in a row it failed again soon after coming back: each doubles the stable
    /// window it must show next time (route flap damping), so a lossy line that passes one
    /// window by luck does not keep dragging the traffic back and forth.
    flaps: u8,
}

/// The most a flapping path's window is doubled: 32 × `healthy_for`.
const MAX_FLAPS: u8 = 5;

impl Trial {
    /// The unbroken run of answered probes this path must show to count as back.
    fn window(&self, healthy_for: Duration) -> Duration {
        healthy_for * (1u32 << self.flaps)
    }
}

/// What the status page shows of one path.
#[derive(Debug, Clone)]
pub struct PathView {
    pub name: String,
    pub up: bool,
    /// Whether it carries the traffic now.
    pub active: bool,
    /// When it last went down or came back (`None`: never, since the gateway started).
    pub since: Option<std::time::SystemTime>,
    pub last_contact: Option<std::time::SystemTime>,
    /// The share of time it has been up since the gateway started.
    pub availability: f64,
    /// The deadline its calls get now, which follows its latency.
    pub deadline: Duration,
}

impl Health {
    /// One path per name, in order of preference. Starts optimistic: every path counts as up
    /// until its first probe says otherwise.
    pub fn new(settings: Settings, paths: Vec<String>) -> Arc<Health> {
        let paths = if paths.is_empty() {
            vec!["cloud".into()]
        } else {
            paths
        };
        let paths: Vec<String> = paths.into_iter().take(MAX_PATHS).collect();
        let links: Vec<Link> = paths
            .into_iter()
            .map(|name| Link {
                name,
                kick: Notify::new(),
                up: watch::channel(true).0,
                latency: Latency::default(),
                answered_at: AtomicU64::new(0),
                probe_answered_at: AtomicU64::new(0),
                changed_at: AtomicU64::new(0),
                down_ms: AtomicU64::new(0),
                probes_total: AtomicU64::new(0),
                probe_failures_total: AtomicU64::new(0),
            })
            .collect();
        let all = ((1u16 << links.len()) - 1) as u8;
        let first = Change {
            mode: Mode::Normal,
            cloud_up: true,
            path: Some(0),
            up: all,
            reason: "started".into(),
        };
        Arc::new(Health {
            settings,
            mode: AtomicU8::new(Mode::Normal as u8),
            up: AtomicU8::new(all),
            backlog: AtomicU64::new(0),
            inner: Mutex::new(vec![
                Trial {
                    up: true,
                    healthy_since: None,
                    up_since: None,
                    flaps: 0,
                };
                links.len()
            ]),
            changes: watch::channel(first).0,
            links,
            epoch: Instant::now(),
            epoch_wall: std::time::SystemTime::now(),
            changed_at: AtomicU64::new(0),
        })
    }

    pub fn mode(&self) -> Mode {
        Mode::from_u8(self.mode.load(Relaxed))
    }

    /// Whether any path reaches the cloud.
    pub fn cloud_up(&self) -> bool {
        self.up.load(Relaxed) != 0
    }

    /// The paths, in order of preference.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// Whether path `path` is up.
    pub fn is_up(&self, path: usize) -> bool {
        self.up.load(Relaxed) & (1 << path) != 0
    }

    /// The path new calls take: the first that is up.
    pub fn preferred(&self) -> Option<usize> {
        let up = self.up.load(Relaxed);
        (up != 0).then(|| up.trailing_zeros() as usize)
    }

    /// The paths a call may try, in order: every one that is up, the preferred first.
    pub fn usable(&self) -> impl Iterator<Item = usize> + use<> {
        let up = self.up.load(Relaxed);
        (0..MAX_PATHS).filter(move |i| up & (1 << i) != 0)
    }

    /// Every change of state, the latest first seen on subscription.
    pub fn subscribe(&self) -> watch::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Resolves when the cloud is declared down on every path: an in-flight call stops waiting
    /// for it.
    pub async fn went_down(&self) {
        let mut changes = self.subscribe();
        let _ = changes.wait_for(|c| !c.cloud_up).await;
    }

    /// Resolves when path `path` is declared down: a call waiting on it tries another.
    pub async fn path_went_down(&self, path: usize) {
        let mut up = self.links[path].up.subscribe();
        let _ = up.wait_for(|up| !up).await;
    }

    /// Resolves once the cloud is up on some path (immediately if it is).
    pub async fn until_up(&self) {
        let mut changes = self.subscribe();
        let _ = changes.wait_for(|c| c.cloud_up).await;
    }

    /// Real traffic saw path `path` fail (connect error, 5xx) or stay silent past its deadline:
    /// probe it now.
    pub fn suspect(&self, path: usize) {
        self.links[path].kick.notify_one();
    }

    /// How long a call waits for the cloud on `path` before the gateway acts on the silence:
    /// tries another path, answers a read from the cache, and asks for a probe.
    pub fn call_deadline(&self, path: usize) -> Duration {
        self.links[path].latency.deadline(&self.settings)
    }

    /// How long a read waits on `path` before it is sent on the next path too: the same
    /// estimate as [`Health::call_deadline`], with a third of its floor. A second copy of a read
    /// costs the cloud one more cheap answer; the floor of a deadline that acts on the
    /// silence (a cached answer, a probe's verdict) is there for a lost packet, which another
    /// path does not share ("The Tail at Scale"'s hedged requests).
    pub fn hedge_deadline(&self, path: usize) -> Duration {
        let s = &self.settings;
        self.links[path].latency.within(s.deadline_min / 3, s.timeout)
    }

    /// The longest any deadline gets (`timeout`).
    pub fn ceiling(&self) -> Duration {
        self.settings.timeout
    }

    /// A real call sent at `sent` was answered (not 502–504) over `path` just now, which it
    /// returns. (One reading of the clock serves for the latency, the time of the answer, and
    /// the caller's.)
    pub fn answered(&self, path: usize, sent: Instant) -> Instant {
        let link = &self.links[path];
        let now = Instant::now();
        link.latency.record(now.saturating_duration_since(sent));
        // Written only when it changes (once a millisecond at most): the workers share it.
        let millis = now.saturating_duration_since(self.epoch).as_millis() as u64 + 1;
        if link.answered_at.load(Relaxed) != millis {
            link.answered_at.store(millis, Relaxed);
        }
        now
    }

    /// Whether a real call was answered over `path` within the last `within`.
    fn answered_within(&self, path: usize, within: Duration) -> bool {
        let at = self.links[path].answered_at.load(Relaxed);
        at != 0 && self.millis() + 1 - at < within.as_millis() as u64
    }

    /// How long `path`'s prober waits before its next probe: `interval`, or, while the path is
    /// on trial (down, and the latest probes answered), a tenth of `healthy_for` (however
    /// long its window has grown), so the unbroken run it must show is watched closely enough
    /// to catch a flap.
    pub fn probe_spacing(&self, path: usize) -> Duration {
        let Settings {
            interval,
            deadline_min,
            healthy_for,
            ..
        } = self.settings;
        match self.lock()[path].healthy_since {
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

    /// The last time the cloud answered anything over any path, a probe or a real call; `None`
    /// if it never has since the gateway started.
    pub fn last_contact(&self) -> Option<std::time::SystemTime> {
        let at = self.links.iter().map(|l| self.contact(l)).max().unwrap_or(0);
        self.wall(at)
    }

    fn contact(&self, link: &Link) -> u64 {
        link.answered_at
            .load(Relaxed)
            .max(link.probe_answered_at.load(Relaxed))
    }

    /// Each path's state, for the status page.
    pub fn paths(&self) -> Vec<PathView> {
        let now = self.millis() + 1;
        let preferred = self.preferred();
        let trials = self.lock().clone();
        self.links
            .iter()
            .zip(trials)
            .enumerate()
            .map(|(i, (link, trial))| {
                let changed = link.changed_at.load(Relaxed);
                let mut down = link.down_ms.load(Relaxed);
                if !trial.up {
                    down += now - changed.max(1);
                }
                PathView {
                    name: link.name.clone(),
                    up: trial.up,
                    active: preferred == Some(i),
                    since: self.wall(changed),
                    last_contact: self.wall(self.contact(link)),
                    availability: 1.0 - down.min(now) as f64 / now.max(1) as f64,
                    deadline: self.call_deadline(i),
                }
            })
            .collect()
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
            let _inner = self.lock();
            self.publish(why);
        }
    }

    pub fn backlog(&self) -> u64 {
        self.backlog.load(Relaxed)
    }

    /// One probe's outcome on `path`.
    pub fn record(&self, path: usize, outcome: Result<(), String>) {
        let link = &self.links[path];
        link.probes_total.fetch_add(1, Relaxed);
        if outcome.is_ok() {
            link.probe_answered_at.store(self.millis() + 1, Relaxed);
        }
        let mut inner = self.lock();
        let trial = &mut inner[path];
        let reason = match outcome {
            Err(why) => {
                link.probe_failures_total.fetch_add(1, Relaxed);
                trial.healthy_since = None;
                if !trial.up {
                    return;
                }
                trial.up = false;
                let window = trial.window(self.settings.healthy_for);
                let soon = trial.up_since.is_some_and(|t| t.elapsed() < window * 4);
                trial.flaps = if soon { (trial.flaps + 1).min(MAX_FLAPS) } else { 0 };
                match trial.flaps {
                    0 => format!("{}: {why}", self.down_reason(path)),
                    n => format!(
                        "{}: {why} (down again {n} time(s) soon after coming back: it must now answer for {:?})",
                        self.down_reason(path),
                        trial.window(self.settings.healthy_for)
                    ),
                }
            }
            Ok(()) if !trial.up => {
                let since = *trial.healthy_since.get_or_insert_with(Instant::now);
                let window = trial.window(self.settings.healthy_for);
                if since.elapsed() < window {
                    return;
                }
                trial.up = true;
                trial.healthy_since = None;
                trial.up_since = Some(Instant::now());
                format!("{} back: every probe answered for {window:?}", self.subject(path))
            }
            Ok(()) => return,
        };
        let up = trial.up;
        let now = self.millis() + 1;
        let before = link.changed_at.swap(now, Relaxed);
        if up {
            link.down_ms.fetch_add(now - before.max(1), Relaxed);
        }
        let bit = 1u8 << path;
        if up {
            self.up.fetch_or(bit, Relaxed);
        } else {
            self.up.fetch_and(!bit, Relaxed);
        }
        link.up.send_replace(up);
        self.publish(reason);
    }

    /// "cloud down" with one path, "path NAME down" with several.
    fn down_reason(&self, path: usize) -> String {
        format!("{} down", self.subject(path))
    }

    fn subject(&self, path: usize) -> String {
        match self.links.len() {
            1 => "cloud".into(),
            _ => format!("path {}", self.links[path].name),
        }
    }

    /// Publishes the state the paths and the backlog make, if it changed. Called under the lock,
    /// so changes are published in order.
    fn publish(&self, mut reason: String) {
        let cloud_up = self.cloud_up();
        let path = self.preferred();
        let mode = match (cloud_up, self.backlog.load(Relaxed)) {
            (false, _) => Mode::Emergency,
            (true, 0) => Mode::Normal,
            (true, _) => Mode::Recovery,
        };
        let before = self.mode.swap(mode as u8, Relaxed);
        let up = self.up.load(Relaxed);
        let (was_up, was_path, were_up) = {
            let last = self.changes.borrow();
            (last.cloud_up, last.path, last.up)
        };
        if before == mode as u8 && was_up == cloud_up && was_path == path && were_up == up {
            return;
        }
        if self.links.len() > 1 {
            match path {
                Some(p) if was_path != path => {
                    reason.push_str(&format!("; the traffic takes path {}", self.links[p].name))
                }
                None if was_up => reason.push_str("; every path is down"),
                _ => {}
            }
        }
        self.changed_at.store(self.millis() + 1, Relaxed);
        self.changes.send_replace(Change {
            mode,
            cloud_up,
            path,
            up,
            reason,
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Trial>> {
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

/// Probes the cloud through path `path` (its own `upstream`) for as long as the gateway runs.
pub async fn watch_path(health: Arc<Health>, path: usize, upstream: Upstream, probe: Probe) {
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
        if asked || confirming || !(health.is_up(path) && health.answered_within(path, interval)) {
            let link = &health.links[path];
            let since = health.millis();
            let deadline = if std::mem::take(&mut confirming) {
                health.settings.timeout
            } else {
                health.call_deadline(path)
            };
            let outcome = probe_once(&upstream, &probe, deadline).await;
            if let Err(Unanswered::Silent(why) | Unanswered::Failed(why)) = &outcome {
                tracing::debug!(path = %link.name, "probe: {why}");
            }
            match outcome {
                Ok(()) => {
                    link.latency.record(started.elapsed());
                    health.record(path, Ok(()));
                }
                // The probe met silence, but a real call was answered meanwhile: the cloud is
                // there, the probe (or its packet) was unlucky. Wait longer next time.
                Err(Unanswered::Silent(_)) if link.answered_at.load(Relaxed) > since => {
                    link.latency.back_off();
                }
                // Silent within a deadline shorter than the ceiling: the cloud is suspect, not
                // failed (a gateway starved of CPU misses short deadlines too). One more probe at
                // once, with the whole `timeout`, decides; the reads waiting meanwhile have
                // already been answered from the cache at their own deadline.
                Err(Unanswered::Silent(_)) if deadline < health.settings.timeout => {
                    link.latency.back_off();
                    confirming = true;
                    continue;
                }
                Err(Unanswered::Silent(why)) => {
                    link.latency.back_off();
                    health.record(path, Err(why));
                }
                Err(Unanswered::Failed(why)) => health.record(path, Err(why)),
            }
        }
        asked = tokio::select! {
            _ = tokio::time::sleep_until(started + health.probe_spacing(path)) => false,
            // A burst of suspicion is one probe, and probes on demand stay apart.
            _ = health.links[path].kick.notified() => {
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
#[derive(Debug)]
pub struct Latency {
    /// The smoothed latency (high half) and its variation (low half), in microseconds, or
    /// [`UNHEARD`] before the first answer. One word, updated without a lock: every answered
    /// call on every worker records itself here, and reads it for its deadline.
    state: AtomicU64,
    /// Deadlines missed since the last answer: each doubles the next deadline (RFC 6298's
    /// back-off), so a cloud that has become slower is heard again instead of failing forever.
    missed: AtomicU8,
}

/// [`Latency`] before any answer.
const UNHEARD: u64 = u64::MAX;

impl Default for Latency {
    fn default() -> Self {
        Latency {
            state: AtomicU64::new(UNHEARD),
            missed: AtomicU8::new(0),
        }
    }
}

impl Latency {
    pub fn record(&self, took: Duration) {
        // Written only when it changes: the workers share this line.
        if self.missed.load(Relaxed) != 0 {
            self.missed.store(0, Relaxed);
        }
        // Below 71 minutes, far past any deadline; the estimate's halves then stay in 32 bits.
        let sample = took.as_micros().min(u128::from(u32::MAX - 1)) as u64;
        let _ = self.state.fetch_update(Relaxed, Relaxed, |state| {
            Some(match Latency::estimate(state) {
                None => pack(sample, sample / 2),
                Some((srtt, var)) => {
                    let var = (3 * var + srtt.abs_diff(sample)) / 4;
                    pack((7 * srtt + sample) / 8, var)
                }
            })
        });
    }

    /// (smoothed, variation) in microseconds, or `None` before the first answer.
    fn estimate(state: u64) -> Option<(u64, u64)> {
        (state != UNHEARD).then_some((state >> 32, state & u64::from(u32::MAX)))
    }

    /// A deadline passed without an answer.
    pub fn back_off(&self) {
        let _ = self
            .missed
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_add(1).min(8)));
    }

    /// Before any answer: the longest deadline, as a cloud of unknown speed deserves.
    pub fn deadline(&self, settings: &Settings) -> Duration {
        self.within(settings.deadline_min, settings.timeout)
    }

    /// The estimate between `floor` and `ceiling` (the ceiling before any answer).
    fn within(&self, floor: Duration, ceiling: Duration) -> Duration {
        let Some((srtt, var)) = Latency::estimate(self.state.load(Relaxed)) else {
            return ceiling.max(floor);
        };
        let base = srtt.saturating_add(var.saturating_mul(4));
        let backed_off = base.saturating_mul(1 << self.missed.load(Relaxed));
        Duration::from_micros(backed_off).clamp(floor, ceiling.max(floor))
    }
}

/// A smoothed latency and its variation in one word (both below 2³² µs).
fn pack(srtt: u64, var: u64) -> u64 {
    (srtt.min(u64::from(u32::MAX - 1)) << 32) | var.min(u64::from(u32::MAX))
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

    fn settings(healthy_for: Duration) -> Settings {
        Settings {
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(10),
            deadline_min: Duration::from_millis(1),
            healthy_for,
        }
    }

    fn health(healthy_for: Duration) -> Arc<Health> {
        Health::new(settings(healthy_for), vec![])
    }

    #[test]
    fn one_failure_is_emergency_and_coming_back_takes_an_unbroken_run() {
        let h = health(Duration::from_millis(30));
        h.record(0, Ok(()));
        assert_eq!(h.mode(), Mode::Normal);
        h.record(0, Err("refused".into()));
        assert_eq!(h.mode(), Mode::Emergency);
        h.record(0, Ok(()));
        std::thread::sleep(Duration::from_millis(20));
        h.record(0, Err("refused".into())); // a flap breaks the run
        h.record(0, Ok(()));
        std::thread::sleep(Duration::from_millis(20));
        h.record(0, Ok(()));
        assert_eq!(h.mode(), Mode::Emergency, "20 ms of a 30 ms run is not enough");
        std::thread::sleep(Duration::from_millis(15));
        h.record(0, Ok(()));
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
        l.record(Duration::MAX);
        assert_eq!(
            l.deadline(&settings),
            ms(500),
            "an absurd sample stays in its word"
        );
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
        let h = Health::new(
            Settings {
                interval: Duration::from_secs(1),
                timeout: Duration::from_millis(500),
                deadline_min: Duration::from_millis(150),
                healthy_for: Duration::from_secs(3),
            },
            vec![],
        );
        assert_eq!(h.probe_spacing(0), Duration::from_secs(1), "up");
        h.record(0, Err("refused".into()));
        assert_eq!(
            h.probe_spacing(0),
            Duration::from_secs(1),
            "down, nothing answers"
        );
        h.record(0, Ok(()));
        assert_eq!(
            h.probe_spacing(0),
            Duration::from_millis(300),
            "on trial: 3 s / 10"
        );
        let h = health(Duration::from_secs(1));
        h.record(0, Err("refused".into()));
        h.record(0, Ok(()));
        assert_eq!(
            h.probe_spacing(0),
            Duration::from_millis(10),
            "a short trial: no closer than deadline_min, no further than interval"
        );
    }

    #[test]
    fn an_answered_call_stands_in_for_a_probe() {
        let h = health(Duration::ZERO);
        assert!(!h.answered_within(0, Duration::from_secs(1)));
        h.answered(0, Instant::now() - Duration::from_millis(3));
        assert!(h.answered_within(0, Duration::from_secs(1)));
        std::thread::sleep(Duration::from_millis(15));
        assert!(!h.answered_within(0, Duration::from_millis(10)));
    }

    #[test]
    fn a_backlog_makes_recovery_until_it_is_empty() {
        let h = health(Duration::ZERO);
        h.record(0, Err("black hole".into()));
        h.set_backlog(3);
        assert_eq!(h.mode(), Mode::Emergency);
        h.record(0, Ok(()));
        assert_eq!(h.mode(), Mode::Recovery);
        h.set_backlog(0);
        assert_eq!(h.mode(), Mode::Normal);
        assert_eq!(h.subscribe().borrow().reason, "the journal is empty");
    }

    #[test]
    fn the_first_healthy_path_carries_the_traffic_and_failing_back_waits_for_its_window() {
        let h = Health::new(settings(Duration::from_millis(30)), vec!["a".into(), "b".into()]);
        let changes = h.subscribe();
        assert_eq!(h.preferred(), Some(0));
        h.record(0, Err("black hole".into()));
        assert_eq!(h.mode(), Mode::Normal, "b still reaches the cloud");
        assert_eq!(h.preferred(), Some(1));
        assert_eq!(h.usable().collect::<Vec<_>>(), vec![1]);
        let c = changes.borrow().clone();
        assert_eq!(c.path, Some(1));
        assert!(c.reason.contains("path a down: black hole"), "{}", c.reason);
        assert!(c.reason.contains("takes path b"), "{}", c.reason);
        h.record(0, Ok(()));
        assert_eq!(h.preferred(), Some(1), "a is on trial");
        std::thread::sleep(Duration::from_millis(35));
        h.record(0, Ok(()));
        assert_eq!(h.preferred(), Some(0), "a steady for the window: back");
        assert_eq!(h.usable().collect::<Vec<_>>(), vec![0, 1]);
        h.record(0, Err("refused".into()));
        h.record(1, Err("refused".into()));
        assert_eq!(h.mode(), Mode::Emergency, "every path down");
        assert_eq!(h.preferred(), None);
        assert!(changes.borrow().reason.contains("every path is down"));
        let paths = h.paths();
        assert_eq!(paths.len(), 2);
        assert!(!paths[0].up && !paths[1].up);
        assert!(paths[0].availability < 1.0);
    }

    #[test]
    fn a_path_that_fails_again_soon_after_coming_back_must_stay_steady_longer() {
        let h = Health::new(settings(Duration::from_millis(20)), vec!["a".into(), "b".into()]);
        let back = |h: &Health| {
            h.record(0, Ok(()));
            let began = Instant::now();
            while !h.is_up(0) {
                std::thread::sleep(Duration::from_millis(2));
                h.record(0, Ok(()));
            }
            began.elapsed()
        };
        h.record(0, Err("loss".into()));
        assert!(back(&h) < Duration::from_millis(40));
        h.record(0, Err("loss".into()));
        let second = back(&h);
        assert!(second >= Duration::from_millis(40), "doubled: {second:?}");
        h.record(0, Err("loss".into()));
        assert!(back(&h) >= Duration::from_millis(80), "doubled again");
        assert!(
            h.subscribe().borrow().reason.contains("80ms"),
            "{}",
            h.subscribe().borrow().reason
        );
        std::thread::sleep(Duration::from_millis(400));
        h.record(0, Err("loss".into()));
        assert!(
            back(&h) < Duration::from_millis(40),
            "steady long enough: forgiven"
        );
    }
}
