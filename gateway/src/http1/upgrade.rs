//! Handing a connection over after `101 Switching Protocols` (the engine's push WebSocket). The
//! bytes the server already read past the head belong to the new protocol, so they go along.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

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
pub type Upgraded = engine_proxy::rewind::Rewind<Box<dyn Io>>;
