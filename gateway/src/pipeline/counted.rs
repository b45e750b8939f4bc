//! A body that counts what passes through it, so the audit log can say how many bytes each
//! request moved without the proxy ever holding a body in memory (the `limit` stage caps a
//! request body with it; the `respond` stage learns from it when an answer has been sent).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, SizeHint};

use engine_proxy::upstream::BoxError;

/// A request body larger than `limits.max_body_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub struct TooLarge(pub u64);

/// Counts the bytes of a body as they pass: for a request, into a counter the handler reads
/// later and against the size limit; for a response, into `done(bytes)`, called exactly once when
/// the body ends or is dropped (the client went away): the moment a request's audit entry is
/// complete. `done` is held as it is, not boxed: the boxed body holds it in the same allocation.
pub struct Counted<B, F: FnOnce(u64) = fn(u64)> {
    inner: B,
    bytes: u64,
    limit: u64,
    shared: Option<Arc<AtomicU64>>,
    done: Option<F>,
}

impl<B> Counted<B> {
    /// A request body: counted into `count`, failing once more than `limit` bytes have passed.
    pub fn limited(inner: B, count: Arc<AtomicU64>, limit: u64) -> Self {
        Counted {
            inner,
            bytes: 0,
            limit,
            shared: Some(count),
            done: None,
        }
    }
}

impl<B, F: FnOnce(u64)> Counted<B, F> {
    /// A response body: `done(bytes)` when it is over.
    pub fn finished(inner: B, done: F) -> Self {
        Counted {
            inner,
            bytes: 0,
            limit: u64::MAX,
            shared: None,
            done: Some(done),
        }
    }
}

impl<B, F> Body for Counted<B, F>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    F: FnOnce(u64) + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            self.bytes += data.len() as u64;
            if let Some(shared) = &self.shared {
                shared.store(self.bytes, Relaxed);
            }
            if self.bytes > self.limit {
                return Poll::Ready(Some(Err(Box::new(TooLarge(self.limit)))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B, F: FnOnce(u64)> Drop for Counted<B, F> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.bytes);
        }
    }
}
