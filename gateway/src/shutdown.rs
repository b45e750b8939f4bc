//! Shutdown as every long-lived task sees it. On SIGTERM the daemon turns the flag true: doors
//! stop accepting, idle keep-alive connections close, requests in flight finish; after
//! `limits.shutdown_secs` the worker runtimes are dropped with whatever is left.

/// The flag: `true` once a graceful shutdown has begun.
pub type Shutdown = tokio::sync::watch::Receiver<bool>;

/// Resolves once shutdown has begun (or the daemon's run loop is gone).
pub async fn stopped(shutdown: &mut Shutdown) {
    let _ = shutdown.wait_for(|s| *s).await;
}
