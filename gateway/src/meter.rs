//! Bodies that count what passes through them, so the audit log can say how many bytes each
//! request moved without the proxy ever holding a body in memory.

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

/// Counts into a shared counter, and fails once more than `limit` bytes have passed.
pub struct Counted<B> {
    inner: B,
    count: Arc<AtomicU64>,
    limit: u64,
}

impl<B> Counted<B> {
    pub fn new(inner: B, count: Arc<AtomicU64>, limit: u64) -> Self {
        Counted { inner, count, limit }
    }
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
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
            let total = self.count.fetch_add(data.len() as u64, Relaxed) + data.len() as u64;
            if total > self.limit {
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

/// Counts, and calls `done(bytes)` exactly once when the body ends or is dropped (the client
/// went away): the moment a request's audit entry is complete.
pub struct Finished<B> {
    inner: B,
    bytes: u64,
    done: Option<Box<dyn FnOnce(u64) + Send + Sync>>,
}

impl<B> Finished<B> {
    pub fn new(inner: B, done: impl FnOnce(u64) + Send + Sync + 'static) -> Self {
        Finished {
            inner,
            bytes: 0,
            done: Some(Box::new(done)),
        }
    }
}

impl<B> Body for Finished<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Finished<B> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.bytes);
        }
    }
}
