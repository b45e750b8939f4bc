//! The report's data, gathered on request from what the gateway already keeps.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine_proxy::health::Health;
use engine_proxy::history::History;
use engine_proxy::journal::Journal;

use crate::audit::AuditLog;
use crate::doors::live::Live;
use crate::status::{Expiring, Operator, Outage, Report, TerminalState};

/// How far ahead an expiring certificate is shown.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86400);
/// How many outages the page lists.
const OUTAGES_SHOWN: usize = 5;
/// How many of the audit log's newest entries the operator's sections read (refusals, when each
/// terminal was last seen): a bounded cost on every refresh, whatever the log's size.
pub const AUDIT_WINDOW: u64 = 20_000;
/// How many refusals the page lists.
const REFUSALS_SHOWN: usize = 10;

/// Where the report comes from: shared parts of the running gateway, read only.
pub struct Sources {
    pub health: Arc<Health>,
    /// The journal, when the local engine is the appliance's own.
    pub journal: Option<Arc<Journal>>,
    pub history: Option<Arc<History>>,
    pub live: Arc<Live>,
    pub audit: AuditLog,
    /// Who sees the operator's sections once signed in (`[status] operators`).
    pub operators: Vec<String>,
    pub data_dir: PathBuf,
    /// The certificates the gateway uses, by role: checked for their expiry.
    pub certificates: Vec<(&'static str, PathBuf)>,
    /// `[firmware]`'s slots directory and where its boot state lives, when updates are
    /// configured.
    pub firmware_slots: Option<(PathBuf, firmware::backend::Backend)>,
    /// The data directory's disk budget.
    pub budget: crate::budget::Budget,
}

impl Sources {
    /// Whether this person (a signed-in ID) sees the operator's sections.
    pub fn is_operator(&self, user: Option<&str>) -> bool {
        user.is_some_and(|u| self.operators.iter().any(|o| o == u))
    }

    /// The report now; with the operator's sections when `operator`. Reads SQLite and files:
    /// call it off the async threads (`spawn_blocking`).
    pub fn collect(&self, operator: bool) -> Report {
        let now = unix(SystemTime::now());
        let health = &self.health;
        let (pending, oldest, quarantined) = match &self.journal {
            Some(journal) => (
                journal.pending(),
                journal
                    .oldest_pending()
                    .ok()
                    .flatten()
                    .map(|e| rfc3339(e.created)),
                journal.quarantined().unwrap_or(0),
            ),
            None => (health.backlog(), None, 0),
        };
        let (day, week, outages) = match &self.history {
            Some(h) => (
                h.availability(Duration::from_secs(86400), now).ok().flatten(),
                h.availability(Duration::from_secs(7 * 86400), now).ok().flatten(),
                h.recent(OUTAGES_SHOWN).unwrap_or_default(),
            ),
            None => (None, None, Vec::new()),
        };
        Report {
            mode: health.mode().as_str().to_owned(),
            since: rfc3339(unix(health.since())),
            journal_pending: pending,
            journal_oldest: oldest,
            journal_quarantined: quarantined,
            last_contact: health.last_contact().map(|t| rfc3339(unix(t))),
            availability_24h: day,
            availability_7d: week,
            outages: outages
                .into_iter()
                .map(|o| Outage {
                    started: rfc3339(o.started),
                    ended: o.ended.map(rfc3339),
                    reason: o.reason,
                })
                .collect(),
            paths: health
                .paths()
                .into_iter()
                .map(|p| super::PathState {
                    name: p.name,
                    up: p.up,
                    active: p.active,
                    since: p.since.map(|t| rfc3339(unix(t))),
                    last_contact: p.last_contact.map(|t| rfc3339(unix(t))),
                    availability: p.availability,
                })
                .collect(),
            generated: rfc3339(now),
            operator: operator.then(|| self.operator(now)),
        }
    }

    /// The data directory against its budget (a walk of a few dozen files).
    pub fn disk(&self) -> crate::budget::Report {
        let offbox = crate::backup::state::read(&self.data_dir)
            .and_then(|s| s.audit_offbox_id)
            .unwrap_or(0);
        crate::budget::report(
            &self.data_dir,
            self.firmware_slots.as_ref().map(|(dir, _)| dir.as_path()),
            &self.budget,
            offbox,
        )
    }

    fn operator(&self, now: i64) -> Operator {
        let snapshot = self.live.now();
        let recent = crate::audit::recent(&self.data_dir, AUDIT_WINDOW, REFUSALS_SHOWN).unwrap_or_else(|e| {
            tracing::warn!("the status page shows no recent refusals: {e}");
            Default::default()
        });
        let terminals = snapshot
            .inventory()
            .iter()
            .map(|r| TerminalState {
                last_seen: recent
                    .last_seen
                    .iter()
                    .find(|(name, _)| *name == r.name)
                    .map(|(_, time)| time.clone()),
                name: r.name.clone(),
                enabled: r.enabled,
                doors: if r.wireguard.is_some() {
                    "tls+wireguard"
                } else {
                    "tls"
                }
                .to_owned(),
            })
            .collect();
        let mut expiring: Vec<Expiring> = self
            .certificates
            .iter()
            .filter_map(|(what, path)| expiring(what, path, now))
            .collect();
        expiring.extend(self.pending_tokens(now));
        Operator {
            terminals,
            expiring,
            crl_next_update: snapshot.crl_next_update.map(|t| rfc3339(t.unix_timestamp())),
            crl_stale: snapshot.crl_stale().is_some(),
            audit_chain: if self.audit.is_failing() { "failing" } else { "ok" }.to_owned(),
            disk_free_bytes: rustix::fs::statvfs(&self.data_dir)
                .ok()
                .map(|s| s.f_bavail.saturating_mul(s.f_frsize)),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            recent_refusals: recent.refusals,
            backup: crate::backup::state::read(&self.data_dir),
            disk: Some(self.disk()),
            firmware: self.firmware(),
        }
    }

    /// The firmware slots' state, on an appliance that takes signed updates and has set its
    /// slots up (the first `firmware install`); read from the boot state at each call.
    pub fn firmware(&self) -> Option<crate::status::FirmwareSlots> {
        self.firmware_slots
            .as_ref()
            .and_then(|(dir, backend)| firmware_slots(dir, backend))
    }

    /// Enrollment tokens not yet used that still work: every one ends within 30 days (720 hours
    /// at most), and a terminal whose token lapses unused cannot enroll.
    fn pending_tokens(&self, now: i64) -> Vec<Expiring> {
        let tokens = crate::store::open(&self.data_dir).and_then(|conn| crate::store::tokens::list(&conn));
        let tokens = tokens.unwrap_or_else(|e| {
            tracing::warn!("the status page shows no enrollment tokens: {e}");
            Vec::new()
        });
        let now_t =
            time::OffsetDateTime::from_unix_timestamp(now).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        tokens
            .into_iter()
            .filter(|t| t.state(now_t) == "pending")
            .filter_map(|t| {
                let ends =
                    time::OffsetDateTime::parse(&t.expires, &time::format_description::well_known::Rfc3339)
                        .ok()?;
                let left = ends.unix_timestamp() - now;
                (left <= EXPIRY_WARNING.as_secs() as i64).then(|| Expiring {
                    what: "enrollment token".to_owned(),
                    subject: t.name,
                    not_after: rfc3339(ends.unix_timestamp()),
                    days_left: left.div_euclid(86400),
                })
            })
            .collect()
    }
}

/// The slots' state, when they were set up (by the first `firmware install`).
fn firmware_slots(
    dir: &std::path::Path,
    backend: &firmware::backend::Backend,
) -> Option<crate::status::FirmwareSlots> {
    let files = firmware::files::Files::new(dir);
    let env = backend.open(&files).ok()?.read().ok().flatten()?;
    let booted = files.running();
    Some(crate::status::FirmwareSlots {
        version: booted
            .and_then(|s| files.info(s).ok().flatten())
            .map_or_else(|| env!("CARGO_PKG_VERSION").to_owned(), |i| i.version),
        booted: booted.map(|s| s.name().to_owned()),
        committed: env.committed.name().to_owned(),
        committed_version: files.info(env.committed).ok().flatten().map(|i| i.version),
        trial: env.trial.map(|s| s.name().to_owned()),
        bootcount: env.bootcount,
        bootlimit: env.bootlimit,
        rolled_back: env.rolled_back,
    })
}

/// The certificate at `path` (its first, in a chain), if it ends within [`EXPIRY_WARNING`].
fn expiring(what: &str, path: &std::path::Path, now: i64) -> Option<Expiring> {
    let pem = std::fs::read(path).ok()?;
    let block = x509_parser::pem::Pem::iter_from_buffer(&pem).next()?.ok()?;
    let cert = block.parse_x509().ok()?;
    let not_after = cert.validity().not_after.timestamp();
    let left = not_after - now;
    (left <= EXPIRY_WARNING.as_secs() as i64).then(|| Expiring {
        what: what.to_owned(),
        subject: cert.subject().to_string(),
        not_after: rfc3339(not_after),
        days_left: left.div_euclid(86400),
    })
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Unix seconds as RFC 3339 (UTC).
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}
