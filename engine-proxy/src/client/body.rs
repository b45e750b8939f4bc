//! An answer's body as it comes off the engine connection, and the connection handed over by a
//! `101 Switching Protocols`.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::AsyncReadExt;

use super::connect::Conn;
use super::{ClientError, Pool, RECORD};
use crate::chunked::{Chunk, Step, decode_chunked};
use crate::rewind::Rewind;
use crate::stream::Stream;

/// How an answer's body is delimited (RFC 9112 §6.3), and whether the connection can carry
/// another request once it has been read.
#[derive(Debug)]
pub(crate) enum Framing {
    Length {
        remaining: u64,
        reuse: bool,
    },
    Chunked {
        state: Chunk,
        reuse: bool,
    },
    /// Everything until the engine closes.
    Close,
    /// No body: the connection is the upgraded protocol's.
    Switched,
}

impl Framing {
    /// The same, on a connection that must not carry another request.
    pub(crate) fn last(self) -> Framing {
        match self {
            Framing::Length { remaining, .. } => Framing::Length {
                remaining,
                reuse: false,
            },
            Framing::Chunked { state, .. } => Framing::Chunked { state, reuse: false },
            other => other,
        }
    }
}

/// An answer's body. Dropped before its end, it closes the connection; read to its end on a
/// connection that may carry another request, it puts the connection back in the pool.
pub struct Body {
    kind: Kind,
}

enum Kind {
    Done,
    /// The whole body, read with the head; the connection is already back in the pool.
    Whole(Bytes),
    Reading {
        conn: Conn,
        framing: Framing,
        pool: Weak<Pool>,
    },
}

impl Body {
    pub(crate) fn empty() -> Body {
        Body { kind: Kind::Done }
    }

    /// The body of an answer on `conn`. When all of it has already arrived, the connection goes
    /// back to `pool` at once.
    pub(crate) fn reading(mut conn: Conn, framing: Framing, pool: Weak<Pool>) -> Body {
        let kind = match framing {
            Framing::Length { remaining, reuse } if conn.buf.len() as u64 >= remaining => {
                let whole = conn.buf.split_to(remaining as usize).freeze();
                finish(conn, reuse, &pool);
                match whole.is_empty() {
                    true => Kind::Done,
                    false => Kind::Whole(whole),
                }
            }
            framing => Kind::Reading { conn, framing, pool },
        };
        Body { kind }
    }

    /// The body read to its end. The engine's usual answer arrives with its head as one piece,
    /// which is returned as it is: `collect` would first put it in a list of frames.
    pub async fn whole(mut self) -> Result<Bytes, ClientError> {
        use http_body_util::BodyExt;
        let mut first = Bytes::new();
        let mut joined = BytesMut::new();
        while let Some(frame) = self.frame().await {
            let Ok(data) = frame?.into_data() else { continue };
            if first.is_empty() {
                first = data;
            } else {
                if joined.is_empty() {
                    joined.extend_from_slice(&first);
                }
                joined.extend_from_slice(&data);
            }
        }
        Ok(if joined.is_empty() { first } else { joined.freeze() })
    }
}

/// The end of an answer: the connection back to the pool if it can carry another request and
/// nothing follows the answer (the client never pipelines, so anything there is an error).
fn finish(conn: Conn, reuse: bool, pool: &Weak<Pool>) {
    if reuse
        && conn.buf.is_empty()
        && let Some(pool) = pool.upgrade()
    {
        pool.checkin(conn.idle());
    }
}

impl HttpBody for Body {
    type Data = Bytes;
    type Error = ClientError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientError>>> {
        let this = &mut self.kind;
        loop {
            let (conn, framing) = match this {
                Kind::Done => return Poll::Ready(None),
                Kind::Whole(bytes) => {
                    let bytes = std::mem::take(bytes);
                    *this = Kind::Done;
                    return Poll::Ready(Some(Ok(Frame::data(bytes))));
                }
                Kind::Reading { conn, framing, .. } => (conn, framing),
            };
            let step = match decode(framing, &mut conn.buf) {
                Ok(step) => step,
                Err(why) => return fail(this, ClientError::Malformed(why.into())),
            };
            match step {
                Step::Data(data) => {
                    // The last bytes of a known length: the connection goes back now, not when
                    // (or if) the reader asks once more.
                    if matches!(framing, Framing::Length { remaining: 0, .. }) {
                        end(this);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::Done => {
                    end(this);
                    return Poll::Ready(None);
                }
                Step::More => {}
            }
            conn.buf.reserve(RECORD);
            match ready!(pin!(conn.io.read_buf(&mut conn.buf)).poll(cx)) {
                Ok(0) if matches!(framing, Framing::Close) => {
                    *this = Kind::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => return fail(this, ClientError::Closed("in the middle of an answer")),
                Ok(_) => {}
                Err(e) => return fail(this, ClientError::Io("reading the answer", e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Done => true,
            Kind::Reading {
                framing: Framing::Length { remaining, .. },
                ..
            } => *remaining == 0,
            _ => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Done => SizeHint::with_exact(0),
            Kind::Whole(bytes) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Reading {
                framing: Framing::Length { remaining, .. },
                ..
            } => SizeHint::with_exact(*remaining),
            Kind::Reading { .. } => SizeHint::default(),
        }
    }
}

/// The next piece of a body out of `buf`: data, the end, or `More` (read first).
pub(crate) fn decode(framing: &mut Framing, buf: &mut BytesMut) -> Result<Step, &'static str> {
    Ok(match framing {
        Framing::Length { remaining: 0, .. } => Step::Done,
        Framing::Length { remaining, .. } if !buf.is_empty() => {
            let n = (*remaining).min(buf.len() as u64);
            *remaining -= n;
            Step::Data(buf.split_to(n as usize).freeze())
        }
        Framing::Chunked { state, .. } => decode_chunked(state, buf)?,
        Framing::Close if !buf.is_empty() => Step::Data(buf.split().freeze()),
        Framing::Length { .. } | Framing::Close => Step::More,
        Framing::Switched => Step::Done,
    })
}

/// The body read to its end: the connection to the pool, if it may carry another request.
fn end(kind: &mut Kind) {
    if let Kind::Reading { conn, framing, pool } = std::mem::replace(kind, Kind::Done) {
        let reuse = match framing {
            Framing::Length { reuse, .. } | Framing::Chunked { reuse, .. } => reuse,
            Framing::Close | Framing::Switched => false,
        };
        finish(conn, reuse, &pool);
    }
}

fn fail(kind: &mut Kind, e: ClientError) -> Poll<Option<Result<Frame<Bytes>, ClientError>>> {
    *kind = Kind::Done;
    Poll::Ready(Some(Err(e)))
}

/// The engine connection after `101 Switching Protocols`: what the engine sent after the
/// answer's head first, then the connection itself.
pub type Upgraded = Rewind<Box<dyn Stream>>;

/// Where a `101` answer carries its [`Upgraded`] connection (a response extension, which must be
/// `Clone`): taken once, by whoever relays the new protocol.
#[derive(Clone)]
pub struct Switched(Arc<Mutex<Option<Upgraded>>>);

impl Switched {
    pub(crate) fn new(upgraded: Upgraded) -> Switched {
        Switched(Arc::new(Mutex::new(Some(upgraded))))
    }

    /// The connection, the first time.
    pub fn take(&self) -> Option<Upgraded> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}
