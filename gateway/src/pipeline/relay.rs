//! Byte relays for what the gateway carries without understanding it: a protocol upgrade (the
//! engine's push WebSocket) and raw TCP routes. Both end when either side closes, or when a
//! reload stops admitting the terminal: a revoked terminal's long-lived streams end with it.

use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::audit::{AuditLog, Entry};
use crate::doors::identity::Proof;
use crate::doors::live::Live;
use crate::http1;

/// Copies both ways until either side closes or a reload refuses `proof`; fills in the entry's
/// byte counts, and its reason when a reload ended it (`what` names the stream in it).
pub async fn relay<A, B>(
    terminal: &mut A,
    engine: &mut B,
    live: &Live,
    proof: &Proof,
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
    }
}

/// Both sides of a `101 Switching Protocols`: relays until the end, then records the entry.
/// `_connection` holds the connection's slot (`limits.max_connections`) and its count on its
/// worker until the relay ends, as the HTTP exchange held them before.
pub async fn upgraded(
    _connection: std::sync::Arc<dyn Send + Sync>,
    live: std::sync::Arc<Live>,
    audit: AuditLog,
    proof: Proof,
    (client, mut engine): (http1::OnUpgrade, engine_proxy::client::Upgraded),
    mut entry: Entry,
    started: Instant,
) {
    match client.await {
        Ok(mut client) => relay(&mut client, &mut engine, &live, &proof, &mut entry, "WebSocket").await,
        Err(e) => entry.reason = format!("allowed; upgrade failed: {e}").into(),
    }
    entry.duration_ms = started.elapsed().as_millis() as u64;
    audit.record_soon(entry);
}
