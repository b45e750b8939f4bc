//! Handing the memory a burst freed back to the system once the burst is over.
//!
//! glibc returns freed memory to the system only from the top of each heap; what a burst of
//! requests freed between allocations that live on (the caches, the connections' state) stays
//! resident for good. `malloc_trim` walks every arena and gives their free pages back. It locks
//! each arena while it does, so it runs only once the gateway is quiet, after [`IDLE`] without
//! a connection, a request or a byte from a terminal, never on the request path; and again at
//! each [`IDLE`] while the quiet lasts, up to [`SETTLE`], because what a burst leaves ends over
//! the next minute (the uplink's idle connections close after 30 s, on a 30 s timer).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::workers::Workers;
use crate::audit::AuditLog;
use crate::metrics::Metrics;

/// How long the gateway must have answered nothing before it trims.
const IDLE: Duration = Duration::from_secs(10);
/// How long after a burst the trim is repeated.
const SETTLE: Duration = Duration::from_secs(120);

/// Trims after each burst of work, for the gateway's life: at the first quiet [`IDLE`] the audit
/// writer gives back what the burst grew (its thread keeps it otherwise until the next light
/// batch) and the workers free their spare header maps and buffers, and at that one and every
/// later quiet [`IDLE`] up to [`SETTLE`] the allocator gives its free pages to the system.
pub async fn after_bursts(metrics: Arc<Metrics>, audit: AuditLog, workers: Arc<Workers>) {
    // Connections (handshakes included), HTTP requests, and the bytes of raw streams and tunnels.
    let work = || {
        [
            &metrics.connections_accepted_total,
            &metrics.requests_total,
            &metrics.bytes_from_terminals_total,
        ]
        .iter()
        .map(|counter| counter.load(Relaxed))
        .fold(0u64, u64::wrapping_add)
    };
    let mut seen = work();
    // Quiet periods of IDLE since the last work; none to trim after at start.
    let mut quiet = u32::MAX;
    let settle = SETTLE.as_secs() / IDLE.as_secs();
    loop {
        tokio::time::sleep(IDLE).await;
        let now = work();
        if now != seen {
            (seen, quiet) = (now, 0);
            continue;
        }
        quiet = quiet.saturating_add(1);
        if quiet == 1 {
            // Bounded: a writer retrying a failing disk answers only once it gets through.
            let _ = tokio::time::timeout(IDLE, audit.release()).await;
            let _ = tokio::time::timeout(IDLE, workers.release_spares()).await;
        }
        if u64::from(quiet) <= settle {
            release();
        }
    }
}

/// Gives the allocator's free pages back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release() {
    // SAFETY: malloc_trim takes no pointer and has no precondition: glibc takes each arena's
    // lock while it walks it, so it may run beside allocations on any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Elsewhere (musl) the allocator gives large blocks back by itself, and has no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release() {}
