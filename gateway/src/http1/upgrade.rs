//! Handing a connection over after `101 Switching Protocols` (the engine's push WebSocket). The
//! bytes the server already read past the head belong to the new protocol, so they go along.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use crate::io::Io;

/// In a request's extensions when it asks to switch protocols: resolves to the connection once
/// the response `101 Switching Protocols` has been written. (Clone, as extensions must be; the
/// first clone to be awaited gets the connection.)
#[derive(Clone)]
pub struct OnUpgrade(pub(super) Arc<std::sync::Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl Future for OnUpgrade {
    type Output = Result<Upgraded, &'static str>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(rx) = slot.as_mut() else {
            return Poll::Ready(Err("the connection was already taken"));
        };
        let done = Pin::new(rx)
            .poll(cx)
            .map_err(|_| "the connection was not upgraded");
        if done.is_ready() {
            *slot = None;
        }
        done
    }
}

/// A connection after `101 Switching Protocols`: the bytes already read, then the stream.
pub struct Upgraded {
    pub(super) read: Bytes,
    pub(super) io: Box<dyn Io>,
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(out.remaining());
            out.put_slice(&self.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut *self.io).poll_read(cx, out)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}
