//! `DATA_DIR/backup.json`: what the last backup run did, for the metrics and the status page.
//!
//! `kakehashi backup run` (by hand or from its timer) is a process of its own; the gateway reads
//! this file when asked, so a failing backup is an alert on the page and in Prometheus, not a
//! line in a log nobody reads.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{BackupError, Result};

/// The file's name in the data directory.
pub const FILE: &str = "backup.json";

/// The last run and the last good one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// When the last run ended (RFC 3339) and whether it succeeded.
    pub last_run: Option<String>,
    pub last_ok: bool,
    /// Why the last run failed.
    pub last_error: Option<String>,
    /// When the last verified archive was written, its path and size.
    pub last_good: Option<String>,
    pub last_good_archive: Option<String>,
    pub last_good_bytes: Option<u64>,
    /// The highest audit entry in a verified archive: sealed segments up to it may be pruned
    /// locally (the retention keeps the archives that hold them).
    #[serde(default)]
    pub audit_offbox_id: Option<u64>,
    /// Where each sealed audit segment still on the appliance is held off the box: the next run
    /// refers to it instead of sending it again, while its home is listed at the target. Lost or
    /// stale, the next run sends the segment again: this record saves work, it vouches for nothing
    /// a restore trusts (a restore checks the home's copy against the archive's manifest).
    #[serde(default)]
    pub homes: Vec<super::Referenced>,
    /// The homes each of this appliance's archives refers to, by archive name: the retention
    /// keeps them while it keeps the archive.
    #[serde(default)]
    pub refers: std::collections::BTreeMap<String, Vec<String>>,
}

/// The recorded state; none when no backup ever ran (or the file cannot be read: the metrics
/// then say "no good backup", which is the safe reading).
pub fn read(data_dir: &Path) -> Option<State> {
    let text = std::fs::read(data_dir.join(FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// What a verified run leaves for the next: the archive (its path or URL, its size), the last
/// audit entry it holds, the sealed segments' homes and which archives refer to which.
pub struct Good<'a> {
    pub archive: &'a Path,
    pub bytes: u64,
    pub audit_last_id: u64,
    pub homes: Vec<super::Referenced>,
    pub refers: std::collections::BTreeMap<String, Vec<String>>,
}

/// Records a run's result, good or `Err(why)`.
pub fn record(data_dir: &Path, result: std::result::Result<Good<'_>, &str>) -> Result<()> {
    let now = crate::audit::timestamp(time::OffsetDateTime::now_utc());
    let mut state = read(data_dir).unwrap_or_default();
    state.last_run = Some(now.clone());
    match result {
        Ok(good) => {
            state.audit_offbox_id = Some(good.audit_last_id.max(state.audit_offbox_id.unwrap_or(0)));
            state.last_ok = true;
            state.last_error = None;
            state.last_good = Some(now);
            state.last_good_archive = Some(good.archive.display().to_string());
            state.last_good_bytes = Some(good.bytes);
            state.homes = good.homes;
            state.refers = good.refers;
        }
        Err(why) => {
            state.last_ok = false;
            state.last_error = Some(why.to_owned());
        }
    }
    write(data_dir, &state)
}

fn write(data_dir: &Path, state: &State) -> Result<()> {
    let text = serde_json::to_vec_pretty(state).map_err(|e| BackupError::Refused(e.to_string()))?;
    cert_tool::files::write_atomic(&data_dir.join(FILE), &text, cert_tool::files::SECRET)
        .map_err(|e| BackupError::Refused(e.to_string()))
}

impl State {
    /// When the last verified archive was written, Unix seconds.
    pub fn last_good_unix(&self) -> Option<i64> {
        let text = self.last_good.as_deref()?;
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| t.unix_timestamp())
    }
}

/// Sets the backup gauges from the recorded state (a small file read at each scrape).
pub fn refresh_metrics(data_dir: &Path, metrics: &crate::metrics::Metrics) {
    use crate::metrics::Metrics;
    let state = read(data_dir).unwrap_or_default();
    Metrics::set(&metrics.backup_last_ok, u64::from(state.last_ok));
    let last = state.last_good_unix().unwrap_or(0).max(0) as u64;
    Metrics::set(&metrics.backup_last_success_timestamp_seconds, last);
}
