//! The request body as the service sees it. A small body is read whole before the service is
//! called; a larger one streams: a pump beside the service moves it off the connection only as
//! fast as the service reads it, and sends `100 Continue` only once the body is wanted.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use hyper::body::{Body as HttpBody, Bytes, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};

use engine_proxy::upstream::BoxError;

use super::RECORD;
use super::framing::Framing;
use crate::io::Io;
use engine_proxy::chunked::{Chunk, Step, decode_chunked};

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the request body: {0}")]
    Io(io::Error),
    #[error("the connection closed during the request body")]
    Closed,
    #[error("{0}")]
    Malformed(&'static str),
}

/// Exactly `n` bytes of body, from `buf` and then `io`.
pub(super) async fn read_exact<S: Io>(io: &mut S, buf: &mut BytesMut, n: u64) -> Result<Bytes, BodyError> {
    let n = n as usize; // at most WHOLE_BODY
    if buf.len() < n {
        buf.reserve(n - buf.len());
    }
    while buf.len() < n {
        match io.read_buf(buf).await {
            Ok(0) => return Err(BodyError::Closed),
            Ok(_) => {}
            Err(e) => return Err(BodyError::Io(e)),
        }
    }
    Ok(buf.split_to(n).freeze())
}

/// A request body: empty, whole, or streamed from the connection as the service reads it.
pub struct Body {
    kind: Kind,
    /// Set when the terminal's body turned out malformed or cut short: the service tells that
    /// apart from the engine failing.
    failure: Option<Arc<OnceLock<String>>>,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Streaming {
        frames: mpsc::Receiver<Result<Bytes, BodyError>>,
        /// Told on the first read: the pump sends `100 Continue` then.
        wanted: Option<Arc<Notify>>,
        /// Bytes still to come, when the length was declared.
        remaining: Option<u64>,
    },
}

impl Body {
    pub(crate) fn empty() -> Self {
        Body {
            kind: Kind::Empty,
            failure: None,
        }
    }

    pub(crate) fn full(bytes: Bytes) -> Self {
        Body {
            kind: Kind::Full(Some(bytes)),
            failure: None,
        }
    }

    pub(super) fn streaming(framing: Framing, expect_continue: bool) -> (Self, Pump) {
        let (tx, frames) = mpsc::channel(1);
        let wanted = expect_continue.then(|| Arc::new(Notify::new()));
        let failure = Arc::new(OnceLock::new());
        let remaining = match framing {
            Framing::Length(n) => Some(n),
            Framing::Chunked => None,
        };
        let body = Body {
            kind: Kind::Streaming {
                frames,
                wanted: wanted.clone(),
                remaining,
            },
            failure: Some(failure.clone()),
        };
        let pump = Pump {
            decoder: match framing {
                Framing::Length(n) => Decoder::Length(n),
                Framing::Chunked => Decoder::Chunked(Chunk::Size),
            },
            tx,
            wanted,
            failure,
        };
        (body, pump)
    }

    /// Why the terminal's body failed, if it did.
    pub fn failure(&self) -> Option<Arc<OnceLock<String>>> {
        self.failure.clone()
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Streaming {
                frames,
                wanted,
                remaining,
            } => {
                if let Some(wanted) = wanted.take() {
                    wanted.notify_one();
                }
                match frames.poll_recv(cx) {
                    Poll::Ready(Some(Ok(data))) => {
                        if let Some(r) = remaining {
                            *r -= data.len() as u64;
                        }
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Streaming { remaining, .. } => *remaining == Some(0),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Streaming {
                remaining: Some(n), ..
            } => SizeHint::with_exact(*n),
            Kind::Streaming { .. } => SizeHint::default(),
        }
    }
}

/// Moves a streamed body from the connection into its `Body`, as fast as the service reads it.
pub(super) struct Pump {
    decoder: Decoder,
    tx: mpsc::Sender<Result<Bytes, BodyError>>,
    wanted: Option<Arc<Notify>>,
    failure: Arc<OnceLock<String>>,
}

impl Pump {
    /// True once the whole body has been read off the connection; false if it failed or the
    /// service stopped reading it.
    pub(super) async fn run<S: Io>(mut self, io: &mut S, buf: &mut BytesMut, stall: Duration) -> bool {
        if let Some(wanted) = self.wanted.take() {
            wanted.notified().await;
            if io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() || io.flush().await.is_err() {
                return false;
            }
        }
        loop {
            match self.decoder.decode(buf) {
                Ok(Step::Data(data)) => {
                    if self.tx.send(Ok(data)).await.is_err() {
                        return false; // the service stopped reading
                    }
                }
                Ok(Step::Done) => return true,
                Ok(Step::More) => {
                    buf.reserve(RECORD);
                    let e = match tokio::time::timeout(stall, io.read_buf(buf)).await {
                        Ok(Ok(0)) => BodyError::Closed,
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => BodyError::Io(e),
                        Err(_) => BodyError::Malformed("request body stalled"),
                    };
                    return self.fail(e).await;
                }
                Err(why) => return self.fail(BodyError::Malformed(why)).await,
            }
        }
    }

    async fn fail(self, e: BodyError) -> bool {
        let _ = self.failure.set(e.to_string());
        let _ = self.tx.send(Err(e)).await;
        false
    }
}

#[derive(Debug)]
pub(super) enum Decoder {
    Length(u64),
    Chunked(Chunk),
}

impl Decoder {
    pub(super) fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
        match self {
            Decoder::Length(0) => Ok(Step::Done),
            Decoder::Length(remaining) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = (*remaining).min(buf.len() as u64) as usize;
                *remaining -= n as u64;
                Ok(Step::Data(buf.split_to(n).freeze()))
            }
            Decoder::Chunked(state) => decode_chunked(state, buf),
        }
    }
}
