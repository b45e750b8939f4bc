//! What the daemon watches on disk: the CRL file and the installed bundle's record.
//!
//! `kakehashi terminal revoke`, `kakehashi cert crl` and `gateway import-bundle` change files
//! while the gateway runs; within a second it reloads as SIGHUP would, so a revocation takes
//! effect at once without anyone sending a signal.

use std::sync::Arc;

use crate::daemon::gateway::Gateway;
use crate::metrics::Metrics;

/// How often a stale CRL is reported again while no fresh one arrives.
const STALE_CRL_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
/// How often the CRL file is looked at.
const CRL_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// The CRL's modification time and size: what tells that a new one was written.
fn file_stamp(path: Option<&std::path::Path>) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path?).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Watches the CRL file and the installed bundle's record (`DATA_DIR/bundle.json`):
/// - a new CRL (`kakehashi terminal revoke`, `cert crl`) or a newly imported bundle is loaded
///   within a second, with the inventory, as SIGHUP would: a revocation takes effect at once;
/// - while the loaded CRL is past its next update, `crl_stale` is 1 and a warning is logged at
///   once and then hourly. The CRL stays enforced all along (see [`crate::doors::tls::policy::crl_next_update`]).
pub async fn crl_and_bundle(gateway: Arc<Gateway>) {
    let path = gateway.config.tls.crl.clone();
    let installed = gateway.config.data_dir.join(crate::appliance::INSTALLED);
    let stamps = || (file_stamp(path.as_deref()), file_stamp(Some(&installed)));
    let mut seen = stamps();
    let mut warned: Option<(u64, std::time::Instant)> = None;
    loop {
        tokio::time::sleep(CRL_POLL).await;
        let stamp = stamps();
        if stamp != seen {
            seen = stamp;
            let g = gateway.clone();
            let failed = match tokio::task::spawn_blocking(move || g.reload()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            match failed {
                None => {
                    Metrics::inc(&gateway.metrics.reloads_total);
                    tracing::info!("loaded the new CRL or bundle (certificates, inventory, people)")
                }
                Some(error) => {
                    Metrics::inc(&gateway.metrics.reload_failures_total);
                    tracing::error!(%error, "the new CRL or bundle could not be loaded; keeping the previous state")
                }
            }
        }
        let live = gateway.live.now();
        match live.crl_stale() {
            Some(since) => {
                Metrics::set(&gateway.metrics.crl_stale, 1);
                let due = warned.is_none_or(|(generation, at)| {
                    generation != live.generation || at.elapsed() >= STALE_CRL_WARNING_EVERY
                });
                if due {
                    tracing::warn!(
                        crl = %path.as_deref().unwrap_or(std::path::Path::new("")).display(),
                        next_update = %cert_tool::ca::rfc3339(since),
                        "the CRL is past its next update: still enforcing it (no terminal is locked \
                         out for it); publish a fresh one (`kakehashi cert crl`)"
                    );
                    warned = Some((live.generation, std::time::Instant::now()));
                }
            }
            None => {
                Metrics::set(&gateway.metrics.crl_stale, 0);
                warned = None;
            }
        }
    }
}
