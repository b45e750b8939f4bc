//! The disk budget's task: every few seconds, let go what the budget allows (sealed audit
//! segments a verified backup holds, see [`crate::budget`]) and warn once when an alert is
//! raised. A backup prunes right after it verifies its archive too; this task covers a budget
//! that needs room later (a journal growing during an outage).

use std::sync::Arc;
use std::time::Duration;

use crate::daemon::gateway::Gateway;

/// How often the budget is checked.
const EVERY: Duration = Duration::from_secs(5);

/// Runs until the task is dropped.
pub async fn keep_within_budget(gateway: Arc<Gateway>) {
    let mut alerted = false;
    loop {
        tokio::time::sleep(EVERY).await;
        let g = gateway.clone();
        let Ok(report) = tokio::task::spawn_blocking(move || once(&g)).await else {
            continue;
        };
        if report.alert || report.journal_alert {
            if !alerted {
                tracing::warn!(
                    reason = report.reason.as_deref().unwrap_or(""),
                    "disk budget alert"
                );
            }
            alerted = true;
        } else {
            alerted = false;
        }
    }
}

/// One check: prune if room is needed and no backup is running (it would archive half a prune;
/// it prunes itself when it is done), then measure.
fn once(gateway: &Gateway) -> crate::budget::Report {
    let data_dir = &gateway.config.data_dir;
    if let Some(_backup) = crate::backup::try_lock(data_dir) {
        let offbox = crate::backup::state::read(data_dir)
            .and_then(|s| s.audit_offbox_id)
            .unwrap_or(0);
        match crate::budget::enforce(&gateway.config, &gateway.budget, offbox, &gateway.audit) {
            Ok(pruned) if !pruned.is_empty() => {
                let bytes: u64 = pruned.iter().map(|p| p.bytes).sum();
                tracing::info!(
                    segments = pruned.len(),
                    bytes,
                    "pruned audit segments a verified backup holds"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "the disk budget could not prune"),
        }
    }
    let disk = gateway.status.disk();
    crate::budget::refresh_metrics(&disk, &gateway.metrics);
    disk
}
