//! Byte relays for what the gateway carries without understanding it: a protocol upgrade (the
//! engine's push WebSocket) and raw TCP routes. Both end when either side closes, when a reload
//! stops admitting the terminal (a revoked terminal's long-lived streams end with it), or when
//! the gateway stops: a stream has no end to wait for, and while the grace period runs nobody
//! can connect, so waiting for streams would only make every restart last that long.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

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
/// fills in the entry's byte counts, and its reason when the gateway ended it (`what` names the
/// stream in it).
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
    // Counted as they are read, not taken from the copy's result: a stream that breaks, or that
    // the gateway ends, has its counts too.
    let (mut terminal, mut engine) = (Counting::new(terminal), Counting::new(engine));
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut terminal, &mut engine) => {}
        why = live.revoked(proof) => {
            entry.reason = format!("allowed; {what} closed by a reload: {why}").into();
        }
        () = stopped(&mut stopping) => {
            entry.reason = format!("allowed; {what} closed: the gateway is stopping").into();
        }
    }
    entry.bytes_in = terminal.read;
    entry.bytes_out = engine.read;
}

/// One side of a relay, counting the bytes read from it.
struct Counting<'a, T: ?Sized> {
    io: &'a mut T,
    read: u64,
}

impl<'a, T: ?Sized> Counting<'a, T> {
    fn new(io: &'a mut T) -> Self {
        Counting { io, read: 0 }
    }
}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Counting<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.io).poll_read(cx, buf);
        self.read += buf.filled().len().saturating_sub(before) as u64;
        polled
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Counting<'_, T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
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
