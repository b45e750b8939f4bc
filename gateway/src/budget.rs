//! The data directory's disk budget (`[storage] budget`): what each kind of state may take, what
//! is let go when room is needed, and the alert long before the disk is full.
//!
//! | share | what | when over |
//! |---|---|---|
//! | a tenth | the read cache (`cache.db`: answers the cloud can give again; the answers a twentieth, the rest keys and WAL) | the cache evicts its oldest answers |
//! | a quarter | the local audit log (`audit/`) | sealed segments already in a verified backup are pruned, oldest first |
//! | the rest | the journal, the inventory, keys, a backup's scratch copy | never pruned: the journal is writes not yet handed back |
//!
//! The audit log's quarter is kept small because a backup briefly holds a second copy of what it
//! archives (`.backup-staging`, `.backup-verify` in the data directory). Pruning also begins
//! when everything together passes [`PRUNE_AT`], so that a growing journal gets the audit log's
//! room. A sealed segment is never pruned before a backup that holds it was verified
//! (`backup.json`'s `audit_offbox_id`): without backups the audit log is not bounded, and the
//! alert says so. The only way to fill the budget with backups running is a journal that cannot
//! be handed back, and that has an alert of its own at [`JOURNAL_ALERT`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::audit::{AuditLog, Decision, Entry, segment};
use crate::config::Config;
use crate::metrics::Metrics;

/// Percent of the budget at which the disk alert is raised.
pub const ALERT_PERCENT: u64 = 80;
/// Percent of the budget above which pruning makes room whatever the audit log's share.
pub const PRUNE_AT: u64 = 60;
/// Percent of the budget the journal alone may take before its own alert.
pub const JOURNAL_ALERT: u64 = 25;

/// The budget in force: configured, or half of the file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub bytes: u64,
    /// Whether `[storage] budget` set it (otherwise half of the file system's size).
    pub configured: bool,
    /// The audit log's segment size.
    pub segment_bytes: u64,
}

impl Budget {
    /// The budget of a checked configuration. The default measures the data directory's file
    /// system (or its nearest existing parent); if even that fails, 1 GiB.
    pub fn of(config: &Config) -> Budget {
        let configured = config.storage.budget.as_ref().and_then(|b| b.bytes().ok());
        let bytes = configured.unwrap_or_else(|| half_of_file_system(&config.data_dir));
        let segment_bytes = config
            .storage
            .audit_segment
            .as_ref()
            .and_then(|s| s.bytes().ok())
            .unwrap_or_else(|| (bytes / 32).clamp(crate::config::MIN_SEGMENT, 64 << 20));
        Budget {
            bytes,
            configured: configured.is_some(),
            segment_bytes,
        }
    }

    /// What the read cache may hold (answers' bytes): a twentieth of the budget, or less if
    /// `failover.cache_max_bytes` says less, so that the file with its keys, paths and WAL
    /// stays within a tenth.
    pub fn cache_bytes(&self, configured: u64) -> u64 {
        configured.min(self.bytes / 20).max(1)
    }

    /// What the local audit log may take before sealed segments that are off the box go.
    pub fn audit_share(&self) -> u64 {
        self.bytes / 4
    }

    fn percent(&self, p: u64) -> u64 {
        self.bytes / 100 * p
    }
}

fn half_of_file_system(dir: &Path) -> u64 {
    let mut at = Some(dir);
    while let Some(d) = at {
        if let Ok(s) = rustix::fs::statvfs(d) {
            return s.f_blocks.saturating_mul(s.f_frsize) / 2;
        }
        at = d.parent();
    }
    1 << 30
}

/// What the data directory holds, by kind, in allocated bytes (as `du` counts them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub total: u64,
    /// `audit/` (every segment) and a legacy `audit.db`.
    pub audit: u64,
    pub journal: u64,
    pub cache: u64,
    /// A backup's scratch copies, while one runs.
    pub scratch: u64,
}

/// Measures the data directory, leaving out the firmware slots (`slots`, when they are inside
/// it: two images, bounded by themselves).
pub fn usage(data_dir: &Path, slots: Option<&Path>) -> Usage {
    let mut usage = Usage::default();
    walk(data_dir, data_dir, slots, &mut usage);
    usage
}

fn walk(root: &Path, dir: &Path, slots: Option<&Path>, usage: &mut Usage) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if Some(path.as_path()) == slots {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            walk(root, &path, slots, usage);
            continue;
        }
        let bytes = segment::allocated(&path);
        usage.total += bytes;
        let rel = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        if rel.starts_with(segment::SEGMENTS) || rel.starts_with(crate::audit::AUDIT_DB) {
            usage.audit += bytes;
        } else if rel.starts_with(engine_proxy::journal::FILE) {
            usage.journal += bytes;
        } else if rel.starts_with(engine_proxy::cache::FILE) {
            usage.cache += bytes;
        } else if rel.starts_with(".backup-") {
            usage.scratch += bytes;
        }
    }
}

/// The budget, what is used, and what needs attention: for the metrics and the status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub budget: u64,
    pub used: Usage,
    /// The highest audit id a verified backup holds (0: none).
    pub audit_offbox_id: u64,
    /// Used is at [`ALERT_PERCENT`] of the budget or more.
    pub alert: bool,
    /// The journal alone takes [`JOURNAL_ALERT`] percent or more: it is never pruned.
    pub journal_alert: bool,
    /// Why, in words, when either alert is raised.
    pub reason: Option<String>,
}

/// Measures and judges the data directory against the budget.
pub fn report(data_dir: &Path, slots: Option<&Path>, budget: &Budget, audit_offbox_id: u64) -> Report {
    let used = usage(data_dir, slots);
    let alert = used.total >= budget.percent(ALERT_PERCENT);
    let journal_alert = used.journal >= budget.percent(JOURNAL_ALERT);
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64);
    let reason = (alert || journal_alert).then(|| {
        let mut why = format!(
            "{} of the {} budget used (audit log {}, journal {}, cache {}, backup scratch {})",
            mib(used.total),
            mib(budget.bytes),
            mib(used.audit),
            mib(used.journal),
            mib(used.cache),
            mib(used.scratch)
        );
        if journal_alert {
            why.push_str(
                "; the journal holds writes the cloud has not taken back and is never pruned: bring the \
                 cloud back or resolve the quarantine (kakehashi journal), and take a backup",
            );
        }
        if used.audit > budget.audit_share() {
            why.push_str(
                "; audit segments wait for a verified backup before they can be pruned: run `kakehashi backup run` \
                 and check its target",
            );
        }
        why
    });
    Report {
        budget: budget.bytes,
        used,
        audit_offbox_id,
        alert,
        journal_alert,
        reason,
    }
}

/// `12.3 MiB of 64.0 MiB (19 %)`: the report in a few words, for the page and `kakehashi status`.
pub fn describe(r: &Report) -> String {
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    format!(
        "{:.1} MiB of {:.1} MiB ({} %)",
        mib(r.used.total),
        mib(r.budget),
        r.used.total.saturating_mul(100) / r.budget.max(1)
    )
}

/// Sets the disk gauges (a directory walk at each scrape: a few dozen files).
pub fn refresh_metrics(report: &Report, metrics: &Metrics) {
    Metrics::set(&metrics.disk_budget_bytes, report.budget);
    Metrics::set(&metrics.disk_used_bytes, report.used.total);
    Metrics::set(&metrics.disk_audit_bytes, report.used.audit);
    Metrics::set(&metrics.disk_journal_bytes, report.used.journal);
    Metrics::set(&metrics.disk_cache_bytes, report.used.cache);
    Metrics::set(&metrics.disk_budget_alert, u64::from(report.alert));
    Metrics::set(&metrics.disk_journal_alert, u64::from(report.journal_alert));
    Metrics::set(&metrics.audit_offbox_id, report.audit_offbox_id);
}

/// Makes room when the budget needs it: sealed audit segments whose every entry is at or before
/// `audit_offbox_id` (in a verified backup) go, oldest first, until the audit log is within its
/// share and everything together under [`PRUNE_AT`] percent. Each removal is recorded in the
/// audit log itself (`log`). Returns the segments removed.
///
/// The caller holds the backup lock: a backup never archives half a prune.
pub fn enforce(
    config: &Config,
    budget: &Budget,
    audit_offbox_id: u64,
    log: &AuditLog,
) -> crate::store::Result<Vec<segment::Pruned>> {
    let data_dir = &config.data_dir;
    let slots = config.firmware.as_ref().map(|f| f.slots());
    let used = usage(data_dir, slots.as_deref());
    let share = budget.audit_share();
    let room_at = budget.percent(PRUNE_AT);
    let settled = |freed: u64| {
        used.audit.saturating_sub(freed) <= share
            && (used.total - used.scratch).saturating_sub(freed) <= room_at
    };
    if settled(0) {
        return Ok(Vec::new());
    }
    let pruned = segment::prune(data_dir, audit_offbox_id, settled)?;
    for p in &pruned {
        log.record_blocking(Entry {
            bytes_out: p.bytes,
            ..Entry::new(
                Decision::Allow,
                "storage",
                "local",
                &format!(
                    "pruned audit segment {}: entries {} to {} ({} bytes); a verified backup holds entries up to {}",
                    p.path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
                    p.first,
                    p.last,
                    p.bytes,
                    audit_offbox_id
                ),
            )
        });
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, budget: &str) -> Config {
        let text = format!(
            "data_dir = \"{}\"\n[tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\n[[listener]]\naddress = \"127.0.0.1:1\"\n\
             [upstream]\nurl = \"https://e\"\nca = \"ca\"\ncert = \"c\"\nkey = \"k\"\nuser = \"u\"\npassword_file = \"p\"\n\
             [storage]\nbudget = \"{budget}\"\naudit_segment = \"64KiB\"\n",
            dir.display()
        );
        Config::from_text(&text, &dir.join("gateway.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn fill(dir: &Path, n: u64) {
        let log = AuditLog::open_with(dir, 64 << 10).unwrap();
        for i in 0..n {
            log.record_blocking(Entry {
                path: Some("/api01rv2/patientgetv2?id=1".into()),
                bytes_in: i,
                ..Entry::new(Decision::Allow, "api", "192.0.2.1:1", "password ok")
            });
            if i % 500 == 0 {
                log.flush_blocking().unwrap();
            }
        }
        log.close_blocking().unwrap();
    }

    #[test]
    fn pruning_is_refused_without_a_verified_backup_and_stops_within_the_share() {
        let tmp = tempfile::tempdir().unwrap();
        let config = config(tmp.path(), "4MiB");
        let budget = Budget::of(&config);
        assert_eq!((budget.bytes, budget.segment_bytes), (4 << 20, 64 << 10));
        fill(tmp.path(), 20_000);
        let before = usage(tmp.path(), None);
        assert!(before.audit > budget.audit_share(), "{before:?}");
        let log = AuditLog::open_with(tmp.path(), budget.segment_bytes).unwrap();

        // No backup: nothing goes, and the report says why.
        assert!(enforce(&config, &budget, 0, &log).unwrap().is_empty());
        log.flush_blocking().unwrap();
        let r = report(tmp.path(), None, &budget, 0);
        assert!(
            r.reason
                .as_deref()
                .unwrap_or("")
                .contains("wait for a verified backup")
                || !r.alert,
            "{r:?}"
        );

        // A backup holds everything up to entry 20,000: the oldest go until the share is kept.
        let pruned = enforce(&config, &budget, 20_000, &log).unwrap();
        assert!(!pruned.is_empty());
        assert_eq!(pruned[0].first, 1);
        log.flush_blocking().unwrap();
        let after = usage(tmp.path(), None);
        // Within the share, but for what was recorded since (the prunes themselves).
        assert!(
            after.audit <= budget.audit_share() + budget.segment_bytes,
            "{after:?}"
        );
        let report = crate::audit::verify(tmp.path()).unwrap();
        assert!(report.is_intact(), "{report:?}");
        assert_eq!(report.pruned, pruned.last().unwrap().last);
        // Every prune is in the log.
        let mut recorded = 0;
        crate::audit::export(tmp.path(), None, |r| {
            recorded += usize::from(r.route == "storage" && r.reason.starts_with("pruned audit segment"));
            Ok(())
        })
        .unwrap();
        assert_eq!(recorded, pruned.len());
        log.close_blocking().unwrap();
    }

    #[test]
    fn the_default_budget_is_half_the_file_system() {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = config(tmp.path(), "4MiB");
        config.storage = Default::default();
        let budget = Budget::of(&config);
        assert!(!budget.configured);
        let fs = rustix::fs::statvfs(tmp.path()).unwrap();
        assert_eq!(budget.bytes, fs.f_blocks * fs.f_frsize / 2);
        assert!(budget.segment_bytes <= 64 << 20);
    }
}
