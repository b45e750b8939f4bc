//! The api route's HTTP/1.1 server: the terminal side of every api listener.
//!
//! hyper's server keeps an 8 KiB read buffer and an 8 KiB write buffer for the whole life of a
//! connection. A clinic's terminals hold their keep-alive connections open all day, mostly idle,
//! so those buffers were most of what an idle terminal cost the gateway. This server holds a
//! buffer only while a request is on the wire: an idle connection is its TLS state and a future
//! of about 3 KiB. It is deliberately small and strict:
//! - one request at a time (pipelined requests wait in the buffer for their turn);
//! - request bodies framed by `Content-Length` or chunked, nothing else; a request with both, or
//!   with lengths that disagree, is refused (RFC 9112 §6.3: the ambiguity request smuggling lives
//!   on); small bodies are read whole before the request is served, larger ones stream;
//! - `Expect: 100-continue` answered when the body is first wanted, so a refused upload is never
//!   sent;
//! - protocol upgrades (the engine's push WebSocket) handed over with the bytes already read;
//! - HTTP/1.0 clients served one request per connection.
//!
//! Heads are parsed by httparse (hyper's own parser) without copying: header values and the
//! target share the bytes read. Requests and responses are the `http` crate's types, so the
//! stages and the uplink after this module do not know it is not hyper.

mod body;
#[cfg(any(test, feature = "fuzzing"))]
pub mod frames;
mod framing;
mod head;
mod respond;
mod upgrade;

use std::future::Future;
use std::io::Write as _;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use engine_proxy::boxed::boxed;
use engine_proxy::upstream::ProxyBody;

use crate::io::Io;
use crate::shutdown::{Stop, stopped};
use body::read_exact;
use framing::Framing;
use head::{Head, read_head};
use respond::{Answering, date_line, respond, status_line};

pub use body::{Body, BodyError};
pub use upgrade::{OnUpgrade, Upgraded};

/// A body up to this size is read whole before the request is served: no channel, no task
/// switch. Larger ones stream.
const WHOLE_BODY: u64 = 64 * 1024;
/// One TLS record's worth: the read size of a streamed body, and the size at which a response's
/// pending bytes are written.
const RECORD: usize = 16 * 1024;
/// How long a closing connection waits to send its TLS close_notify.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The limits every request on a connection is held to.
#[derive(Clone, Copy)]
pub struct Limits {
    /// Time for the next request's head to arrive, idle time included.
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
}

/// What answers the requests of a connection.
pub trait Service {
    fn call(&self, req: Request<Body>) -> impl Future<Output = Response<ProxyBody>> + Send;
    /// A request refused here, before it became one (malformed, too large, too slow): for the
    /// audit log.
    fn rejected(&self, status: StatusCode, why: &str);
}

/// Serves requests on `io` until the client closes, a request says `Connection: close`, the
/// idle time runs out, or `stopping` turns true (the request in flight is finished first).
///
/// This future is what an idle connection costs, so it holds the stream, the (empty) read
/// buffer and the wait for the next head, and nothing else: each exchange is boxed while it runs.
pub async fn serve<S: Io, V: Service>(
    mut io: S,
    service: V,
    limits: Limits,
    stopping: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::new();
    // One wait for the shutdown for the connection's life, rather than one per request: each
    // wait is a waiter in the list that every connection of every worker shares.
    let mut shutdown = stopping.clone();
    let wait = pin!(stopped(&mut shutdown));
    let mut stop = Stop::new(wait, &stopping);
    // One timer for the connection's life too. Each head moves `due` on, and the timer follows
    // only when it goes off early: arming a timer in the runtime's wheel for every request and
    // clearing it after cost more than reading the head.
    let mut due = Instant::now() + limits.header_timeout;
    let mut timer = pin!(tokio::time::sleep_until(due));
    // The shutdown came while a head was arriving: that request is finished (its answer says
    // `Connection: close`), and the wait, which has ended, is not polled again.
    let mut head_begun_at_stop = false;
    let rejection = loop {
        let between_requests = buf.is_empty() && !head_begun_at_stop;
        if !head_begun_at_stop {
            due = Instant::now() + limits.header_timeout;
        }
        let waited = {
            let mut reading = pin!(read_head(&mut io, &mut buf, limits.max_header_bytes));
            loop {
                tokio::select! {
                    biased;
                    read = &mut reading => break Waited::Read(read),
                    () = &mut stop, if between_requests => break Waited::Stopped,
                    () = &mut timer => match Instant::now() < due {
                        true => timer.as_mut().reset(due),
                        false => break Waited::Out,
                    },
                }
            }
        };
        let head = match waited {
            Waited::Read(Ok(Some(head))) => head,
            Waited::Read(Ok(None)) => return, // the client closed between requests
            Waited::Read(Err(rejection)) => break Some(rejection),
            Waited::Stopped if buf.is_empty() => break None,
            Waited::Stopped => {
                head_begun_at_stop = true;
                continue;
            }
            Waited::Out if buf.is_empty() => break None, // idle for the whole timeout
            Waited::Out => {
                let secs = limits.header_timeout.as_secs();
                break Some(Rejection::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("request head not complete within {secs} s"),
                ));
            }
        };
        let exchange = boxed(|| exchange(&mut io, &mut buf, head, &service, limits, &stopping));
        match exchange.await {
            Next::Another => {
                // Idle from here: let the buffer go unless a pipelined request is in it.
                if buf.is_empty() {
                    buf = BytesMut::new();
                }
            }
            Next::Close => break None,
            Next::Refuse(rejection) => break Some(rejection),
            Next::Upgrade(tx) => {
                let _ = tx.send(Upgraded::new(buf.freeze(), Box::new(io)));
                return;
            }
            Next::Broken => return,
        }
    };
    // Boxed: each holds the stream, which this future already does.
    match rejection {
        None => boxed(|| close(io)).await,
        Some(rejection) => boxed(|| refuse(io, &service, rejection)).await,
    }
}

/// How the wait for a request's head ended.
// Made once per request and taken apart at once: boxing the head would be an allocation each.
#[allow(clippy::large_enum_variant)]
enum Waited {
    Read(Result<Option<Head>, Rejection>),
    /// The gateway is stopping (and no request had begun, unless `buf` holds part of a head).
    Stopped,
    /// The header timeout ran out.
    Out,
}

/// What the connection does after an exchange.
enum Next {
    Another,
    Close,
    Refuse(Rejection),
    /// The response switched protocols: the connection goes to whoever asked for the upgrade.
    Upgrade(oneshot::Sender<Upgraded>),
    /// Writing failed: nobody to close politely for.
    Broken,
}

/// One request and its response.
async fn exchange<S: Io, V: Service>(
    io: &mut S,
    buf: &mut BytesMut,
    head: Head,
    service: &V,
    limits: Limits,
    stopping: &watch::Receiver<bool>,
) -> Next {
    let Head {
        request,
        framing,
        mut keep_alive,
        expect_continue,
        upgrade,
    } = head;
    let method_is_head = request.method() == Method::HEAD;
    let version = request.version();

    // The body: nothing, read whole, or streamed through a pump that runs beside the service on
    // this task.
    let mut pump = None;
    let body = match framing {
        Framing::Length(0) => Body::empty(),
        Framing::Length(n) if n <= WHOLE_BODY && !expect_continue => {
            match tokio::time::timeout(limits.header_timeout, read_exact(io, buf, n)).await {
                Ok(Ok(bytes)) => Body::full(bytes),
                Ok(Err(e)) => return Next::Refuse(Rejection::body(e)),
                Err(_) => {
                    let stalled = Rejection::new(StatusCode::REQUEST_TIMEOUT, "request body stalled".into());
                    return Next::Refuse(stalled);
                }
            }
        }
        framing => {
            let (body, p) = Body::streaming(framing, expect_continue);
            pump = Some(p);
            body
        }
    };
    let mut request = request.map(|()| body);
    let upgrade = upgrade.then(|| {
        let (tx, rx) = oneshot::channel();
        let rx = OnUpgrade(Arc::new(std::sync::Mutex::new(Some(rx))));
        request.extensions_mut().insert(rx);
        tx
    });

    let response = {
        // Boxed: the service's future is large (the stages, the failover, the uplink client),
        // and it lives only as long as the request.
        let mut call = boxed(|| service.call(request));
        match pump {
            None => call.await,
            Some(pump) => {
                let mut pumping = pin!(pump.run(io, buf, limits.header_timeout));
                let mut pumped = false;
                loop {
                    tokio::select! {
                        biased;
                        finished = &mut pumping, if !pumped => {
                            pumped = true;
                            // A body cut short leaves the connection mid-message.
                            keep_alive &= finished;
                        }
                        response = &mut call => {
                            // A body not read to its end leaves the rest of it on the wire.
                            keep_alive &= pumped;
                            break response;
                        }
                    }
                }
            }
        }
    };

    keep_alive &= !*stopping.borrow();
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let answering = Answering {
        method_is_head,
        version,
        keep_alive,
    };
    match (respond(io, response, answering).await, upgrade) {
        (Ok(_), Some(tx)) if switching => Next::Upgrade(tx),
        (Ok(true), _) => Next::Another,
        (Ok(false), _) => Next::Close,
        (Err(e), _) => {
            tracing::debug!(error = %e, "writing a response failed");
            Next::Broken
        }
    }
}

/// Sends the TLS close_notify (and the TCP FIN), briefly: a client that stopped reading does not
/// hold the connection open.
async fn close<S: Io>(mut io: S) {
    let _ = tokio::time::timeout(CLOSE_GRACE, io.shutdown()).await;
}

/// A request refused before it reached the service.
#[derive(Debug)]
struct Rejection {
    /// `None`: nothing to answer (the connection broke).
    status: Option<StatusCode>,
    why: String,
}

impl Rejection {
    fn new(status: StatusCode, why: String) -> Self {
        Rejection {
            status: Some(status),
            why,
        }
    }
    fn bad(why: impl Into<String>) -> Self {
        Rejection::new(StatusCode::BAD_REQUEST, why.into())
    }
    fn body(e: BodyError) -> Self {
        match e {
            BodyError::Io(e) => Rejection {
                status: None,
                why: format!("connection broke during the request body: {e}"),
            },
            BodyError::Closed => Rejection {
                status: None,
                why: "connection closed during the request body".into(),
            },
            BodyError::Malformed(why) => Rejection::bad(why),
        }
    }
}

/// Answers a rejection (if there is anyone to answer), audits it, closes.
async fn refuse<S: Io, V: Service>(mut io: S, service: &V, rejection: Rejection) {
    let Some(status) = rejection.status else {
        tracing::debug!(why = %rejection.why, "connection ended mid-request");
        return;
    };
    service.rejected(status, &rejection.why);
    let body = format!("Kakehashi: {}\n", rejection.why);
    let mut out = Vec::with_capacity(256 + body.len());
    status_line(&mut out, status);
    out.extend_from_slice(b"content-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\n");
    let _ = write!(out, "content-length: {}\r\n", body.len());
    date_line(&mut out);
    out.extend_from_slice(b"connection: close\r\n\r\n");
    out.extend_from_slice(body.as_bytes());
    let _ = tokio::time::timeout(CLOSE_GRACE, io.write_all(&out)).await;
    close(io).await
}

#[cfg(test)]
mod tests;
