//! Byte relays for what the gateway carries without understanding it: a protocol upgrade (the
//! engine's push WebSocket) and raw TCP routes. Both end when either side closes, when a reload
//! stops admitting the terminal (a revoked terminal's long-lived streams end with it), or when
//! the gateway stops: a stream has no end to wait for, and while the grace period runs nobody
//! can connect, so waiting for streams would only make every restart last that long.

use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::audit::{AuditLog, Entry};
use crate::doors::identity::Proof;
use crate::doors::live::Live;
use crate::http1;
use crate::shutdown::{Shutdown, stopped};

/// The connection a protocol upgrade continues. The relay keeps it, and with it the connection's
/// slot (`limits.max_connections`) and its count on its worker, until the relay ends.
pub trait Upgrading: Send + Sync + 'static {
    /// Whose admission every reload re-checks.
    fn proof(&self) -> &Proof;
    /// The gateway's stop, which ends the relay.
    fn stopping(&self) -> Shutdown;
}

/// Copies both ways until either side closes, a reload refuses `proof`, or the gateway stops;
/// fills in the entry's byte counts when a side closed, and its reason when the gateway ended it
/// (`what` names the stream in it).
pub async fn relay<A, B>(
    (terminal, engine): (&mut A, &mut B),
    live: &Live,
    proof: &Proof,
    mut stopping: Shutdown,
    entry: &mut Entry,
    what: &str,
) where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::select! {
        copied = tokio::io::copy_bidirectional(terminal, engine) => {
            if let Ok((up, down)) = copied {
                entry.bytes_in = up;
                entry.bytes_out = down;
            }
        }
        why = live.revoked(proof) => {
            entry.reason = format!("allowed; {what} closed by a reload: {why}").into();
        }
        () = stopped(&mut stopping) => {
            entry.reason = format!("allowed; {what} closed: the gateway is stopping").into();
        }
    }
}

/// Both sides of a `101 Switching Protocols`: relays until the end, then records the entry.
pub async fn upgraded<C: Upgrading>(
    connection: Arc<C>,
    live: Arc<Live>,
    audit: AuditLog,
    (client, mut engine): (http1::OnUpgrade, engine_proxy::client::Upgraded),
    mut entry: Entry,
    started: Instant,
) {
    match client.await {
        Ok(mut client) => {
            let (proof, stopping) = (connection.proof(), connection.stopping());
            relay(
                (&mut client, &mut engine),
                &live,
                proof,
                stopping,
                &mut entry,
                "WebSocket",
            )
            .await
        }
        Err(e) => entry.reason = format!("allowed; upgrade failed: {e}").into(),
    }
    entry.duration_ms = started.elapsed().as_millis() as u64;
    audit.record_soon(entry);
}
