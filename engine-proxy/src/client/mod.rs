//! The uplink's HTTP/1.1 client: one request at a time per connection, connections kept in a
//! pool per path and worker.
//!
//! hyper's pooled client runs each connection as a task of its own and hands every request and
//! answer across channels to it; under load that machinery (the task, its channels and wake-ups,
//! its buffers) was a quarter of the gateway's user-space CPU per request. Here the request's
//! own task writes the request and reads the answer on a connection it takes from the pool, and
//! an answer that arrived whole with its head (the engine's usual one) puts the connection back
//! before the caller sees it. An idle connection is its TLS state and a small buffer; the pool
//! drops the ones idle past [`IDLE`].
//!
//! Deliberately small and strict, like the gateway's server:
//! - request bodies up to [`WHOLE`] with a known length are sent with their head in one write,
//!   and sent again on a new connection if a pooled one turns out closed before any answer (the
//!   engine closing an idle connection just as it is reused); larger or unknown-length ones
//!   stream, framed by `Content-Length` or chunked, and are never sent twice. While one streams,
//!   the client listens: an answer that comes before the body's end (a refusal, typically) stops
//!   the sending and is the answer, on a connection that is then closed (RFC 9112 §9.5);
//! - answers framed by RFC 9112 §6.3: no body for `HEAD`, 1xx, 204 and 304; chunked; a length;
//!   or everything until the engine closes. Interim 1xx answers are skipped, except `101`;
//! - a `101 Switching Protocols` to an upgrade request hands the connection over as
//!   [`Upgraded`] (the engine's push WebSocket).

mod body;
mod connect;
pub mod frames;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body as HttpBody;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Response, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::boxed::boxed;
use crate::chunked::Chunk;
use crate::fields::{self, FieldSpans, has_token};
use body::Framing;
pub use body::{Body, Switched, Upgraded};
use connect::Conn;
pub(crate) use connect::Connector;
pub use connect::{Dial, Route};

/// A connection idle this long is closed: below the 60 s after which cloud load balancers
/// commonly close one (a connection closed under a request costs a retry), and short enough
/// that a burst's connections are gone a minute after it.
pub const IDLE: Duration = Duration::from_secs(30);
/// Idle connections kept per pool: enough for a clinic's steady load (nginx keeps 64 per worker
/// in the benchmark); a burst beyond it does not stay resident (each costs ~20 KiB of TLS state).
const MAX_IDLE: usize = 32;
/// A pooled connection idle at least this long is checked for a close from the engine before it
/// is used; one used more recently is trusted (the check costs a system call per request).
const CHECK_AFTER: Duration = Duration::from_secs(1);
/// A request body of known length up to this size is sent with its head, and again if needed.
const WHOLE: u64 = 64 * 1024;
/// The most an answer's head may take.
const MAX_HEAD: usize = 64 * 1024;
/// One TLS record's worth: the write size of a streamed request body, and the read size of an
/// answer's body.
const RECORD: usize = 16 * 1024;

/// Why an exchange with the engine failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Connect(String),
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("the engine closed the connection {0}")]
    Closed(&'static str),
    #[error("the engine's answer: {0}")]
    Malformed(String),
    #[error("the request body: {0}")]
    Body(String),
}

/// The engine over one path: how to connect, and the idle connections. A clone shares the pool.
#[derive(Clone)]
pub struct Client {
    connector: Arc<Connector>,
    pool: Arc<Pool>,
}

/// Idle connections, the most recently used last (taken first: the fewest stay warm).
pub(crate) struct Pool {
    state: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    conns: Vec<(Conn, Instant)>,
    /// A task is closing connections as they pass [`IDLE`].
    reaping: bool,
}

/// A request's head as the client writes it. The fields go in the order given but for the
/// framing ones (`Content-Length`, `Transfer-Encoding`): the client writes those for the body.
/// Borrowed, so that a proxied request is written straight from the terminal's fields, with
/// what the proxy leaves out skipped and what it adds chained on, instead of from a copy.
pub struct Head<'a, F> {
    pub method: &'a Method,
    /// In origin form: the path and the query.
    pub target: &'a str,
    pub fields: F,
    /// The fields ask for a protocol upgrade: a `101` answer hands the connection over.
    pub upgrade: bool,
}

impl Client {
    /// A client for `host`:`port` (the URL's; `host` also names the certificate the engine must
    /// present) over `route`, with TLS unless `tls` is `None` (an on-premises engine over plain
    /// HTTP). `timeout` bounds connecting (at most 10 s).
    pub fn new(
        host: &str,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
        route: Route,
        timeout: Duration,
    ) -> Result<Client, String> {
        let connector = Connector::new(host, port, tls, route, timeout.min(Duration::from_secs(10)))?;
        Ok(Client {
            connector: Arc::new(connector),
            pool: Arc::new(Pool {
                state: Mutex::new(Idle::default()),
            }),
        })
    }

    /// Sends `head` and `body`, and reads the answer's head.
    pub async fn send<'a, F, B>(&self, head: Head<'a, F>, mut body: B) -> Result<Response<Body>, ClientError>
    where
        F: IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
        B: HttpBody<Data = Bytes> + Unpin,
        B::Error: std::fmt::Display,
    {
        let Head {
            method,
            target,
            fields,
            upgrade,
        } = head;
        let length = body.size_hint().exact();
        let mut out = crate::spare::Buffer::new();
        let framing = match length {
            Some(0) if !matches!(*method, Method::POST | Method::PUT | Method::PATCH) => None,
            Some(n) => Some(Some(n)),
            None => Some(None),
        };
        encode_head(&mut out, method, target, fields, framing);
        let head_end = out.len() as u64;
        // A small body of known length goes with the head, and can be sent again.
        let whole = length.is_some_and(|n| n <= WHOLE);
        if whole {
            let n = length.unwrap_or(0);
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ClientError::Body(e.to_string()))?;
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            if out.len() as u64 - head_end != n {
                return Err(ClientError::Body(
                    "its length differs from the one declared".into(),
                ));
            }
        }
        let mut retried = false;
        loop {
            let (mut conn, reused) = self.checkout().await?;
            let sent = match whole {
                true => write_whole(&mut conn, &out).await.map(|()| Sent::Whole),
                // Boxed, as connecting: a streamed body is the exception.
                false => boxed(|| write_streamed(&mut conn, &out, &mut body, framing.flatten())).await,
            };
            let answer =
                match sent {
                    Ok(sent) => read_answer(conn, method, upgrade)
                        .await
                        .map(|(head, framing, conn)| match sent {
                            Sent::Whole => (head, framing, conn),
                            // What is left of the body would be read as the next request.
                            Sent::Cut => (head, framing.last(), conn),
                        }),
                    Err(e) => Err(Exchange::BeforeAnswer(e)),
                };
            match answer {
                Ok((head, framing, conn)) => return Ok(self.answer(head, framing, conn)),
                // The engine closed a pooled connection as it was reused: once more, on a new
                // one, when the request can be sent again.
                Err(Exchange::BeforeAnswer(_)) if reused && whole && !retried => retried = true,
                Err(Exchange::BeforeAnswer(e) | Exchange::Failed(e)) => return Err(e),
            }
        }
    }

    /// The response for a parsed head: its body, or the upgraded connection.
    fn answer(&self, head: Response<()>, framing: Framing, conn: Conn) -> Response<Body> {
        let (mut parts, ()) = head.into_parts();
        let body = match framing {
            Framing::Switched => {
                parts
                    .extensions
                    .insert(Switched::new(Upgraded::new(conn.buf.freeze(), Box::new(conn.io))));
                Body::empty()
            }
            framing => Body::reading(conn, framing, Arc::downgrade(&self.pool)),
        };
        Response::from_parts(parts, body)
    }

    /// An idle connection that is still open, or a new one; and whether it was pooled.
    async fn checkout(&self) -> Result<(Conn, bool), ClientError> {
        loop {
            let idle = {
                let mut state = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
                state.conns.pop()
            };
            match idle {
                Some((conn, since)) if since.elapsed() >= IDLE => drop(conn),
                Some((mut conn, since)) if since.elapsed() >= CHECK_AFTER => {
                    if conn.is_open() {
                        return Ok((conn, true));
                    }
                }
                Some((conn, _)) => return Ok((conn, true)),
                // Boxed: connecting (DNS, TCP, the TLS handshake) is a large future, and rare;
                // inline, every request's future would carry its space.
                None => return Ok((boxed(|| self.connector.connect()).await?, false)),
            }
        }
    }
}

impl Pool {
    /// Keeps `conn` for the next request, and makes sure a reaper will close it once idle.
    /// Outside a runtime (nothing could reap it) the connection is closed instead.
    pub(crate) fn checkin(self: Arc<Self>, conn: Conn) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let start_reaper = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.conns.len() >= MAX_IDLE {
                return;
            }
            state.conns.push((conn, Instant::now()));
            !std::mem::replace(&mut state.reaping, true)
        };
        if start_reaper {
            runtime.spawn(reap(Arc::downgrade(&self)));
        }
    }
}

/// Closes a pool's connections as they pass [`IDLE`], until it holds none (or is gone).
async fn reap(pool: Weak<Pool>) {
    loop {
        let wait = {
            let Some(pool) = pool.upgrade() else { return };
            let mut state = pool.state.lock().unwrap_or_else(|p| p.into_inner());
            state.conns.retain(|(_, since)| since.elapsed() < IDLE);
            match state.conns.first() {
                Some((_, oldest)) => IDLE.saturating_sub(oldest.elapsed()),
                None => {
                    state.reaping = false;
                    return;
                }
            }
        };
        tokio::time::sleep(wait + Duration::from_millis(100)).await;
    }
}

/// How an exchange failed: before any byte of an answer (the request may be sent again), or
/// after.
enum Exchange {
    BeforeAnswer(ClientError),
    Failed(ClientError),
}

/// `METHOD target HTTP/1.1`, the fields but the framing ones, and the framing for the body:
/// `None` none, `Some(Some(n))` a length, `Some(None)` chunked.
fn encode_head<'a>(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    fields: impl IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    framing: Option<Option<u64>>,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in fields {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        None => {}
        Some(Some(n)) => {
            let mut line = String::with_capacity(32);
            let _ = write!(line, "content-length: {n}\r\n");
            out.extend_from_slice(line.as_bytes());
        }
        Some(None) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

async fn write_whole(conn: &mut Conn, out: &[u8]) -> Result<(), ClientError> {
    let writing = async {
        conn.io.write_all(out).await?;
        conn.io.flush().await
    };
    writing
        .await
        .map_err(|e| ClientError::Io("sending the request", e))
}

/// How much of a request went out before its answer.
enum Sent {
    Whole,
    /// The engine answered before the body's end, and the rest was not sent.
    Cut,
}

/// Sends the head in `out`, then the body as it arrives, framed by `length` or chunked, while
/// listening for an answer: the engine may refuse a request before its body's end and stop
/// reading it, and a client that only wrote would wait on a full window until the timeout. An
/// answer's head complete before the body's end stops the sending ([`Sent::Cut`]); interim `1xx`
/// answers do not. What was read stays in `conn.buf` for [`read_answer`].
async fn write_streamed<B>(
    conn: &mut Conn,
    out: &[u8],
    body: &mut B,
    length: Option<u64>,
) -> Result<Sent, ClientError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let (mut reader, mut writer) = tokio::io::split(&mut conn.io);
    let buf = &mut conn.buf;
    let sending = std::pin::pin!(send_body(&mut writer, out, body, length));
    let listening = std::pin::pin!(async {
        loop {
            match final_head_in(buf) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                // Malformed: [`read_answer`] says how.
                Err(()) => return Ok(()),
            }
            buf.reserve(4096);
            match reader.read_buf(buf).await {
                // Closed: [`read_answer`] says when.
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(ClientError::Io("reading the answer", e)),
            }
        }
    });
    tokio::select! {
        biased;
        sent = sending => sent.map(|()| Sent::Whole),
        heard = listening => heard.map(|()| Sent::Cut),
    }
}

/// Whether `buf` begins with a complete final answer head (`Err` if it begins with something
/// else than an answer's head); interim `1xx` heads before it are taken off.
fn final_head_in(buf: &mut BytesMut) -> Result<bool, ()> {
    loop {
        let mut fields = fields::uninit();
        let mut parsed = httparse::Response::new(&mut []);
        let config = httparse::ParserConfig::default();
        let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut fields) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(false),
            Err(_) => return Err(()),
        };
        match parsed.code {
            Some(code) if (100..200).contains(&code) && code != 101 => {
                let _ = buf.split_to(len);
            }
            _ => return Ok(true),
        }
    }
}

/// [`write_streamed`]'s sending half.
async fn send_body<B, W>(
    writer: &mut W,
    out: &[u8],
    body: &mut B,
    length: Option<u64>,
) -> Result<(), ClientError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
    W: tokio::io::AsyncWrite + Unpin,
{
    let io_error = |e| ClientError::Io("sending the request", e);
    writer.write_all(out).await.map_err(io_error)?;
    writer.flush().await.map_err(io_error)?;
    let mut sent = 0u64;
    let mut chunk = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ClientError::Body(e.to_string()))?;
        let Ok(data) = frame.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        match length {
            Some(n) if sent > n => return Err(ClientError::Body("longer than its Content-Length".into())),
            Some(_) => writer.write_all(&data).await.map_err(io_error)?,
            None => {
                chunk.clear();
                let mut line = String::with_capacity(20);
                let _ = write!(line, "{:x}\r\n", data.len());
                chunk.extend_from_slice(line.as_bytes());
                chunk.extend_from_slice(&data);
                chunk.extend_from_slice(b"\r\n");
                writer.write_all(&chunk).await.map_err(io_error)?;
            }
        }
        if data.len() < RECORD {
            writer.flush().await.map_err(io_error)?;
        }
    }
    match length {
        Some(n) if sent != n => return Err(ClientError::Body("shorter than its Content-Length".into())),
        Some(_) => {}
        None => writer.write_all(b"0\r\n\r\n").await.map_err(io_error)?,
    }
    writer.flush().await.map_err(io_error)
}

/// Reads the answer's head (skipping interim 1xx ones) and decides how its body is framed.
async fn read_answer(
    mut conn: Conn,
    method: &Method,
    upgrade: bool,
) -> Result<(Response<()>, Framing, Conn), Exchange> {
    let mut heard = false;
    loop {
        if let Some(head) = parse_head(&mut conn.buf).map_err(Exchange::Failed)? {
            let status = head.status();
            if status == StatusCode::SWITCHING_PROTOCOLS {
                if !upgrade {
                    let why = "101 Switching Protocols to a request that asked for no upgrade";
                    return Err(Exchange::Failed(ClientError::Malformed(why.into())));
                }
                return Ok((head, Framing::Switched, conn));
            }
            if status.is_informational() {
                heard = true;
                continue;
            }
            let framing = framing(method, &head).map_err(Exchange::Failed)?;
            return Ok((head, framing, conn));
        }
        conn.buf.reserve(4096);
        match conn.io.read_buf(&mut conn.buf).await {
            Ok(0) if conn.buf.is_empty() && !heard => {
                return Err(Exchange::BeforeAnswer(ClientError::Closed("before answering")));
            }
            Ok(0) => {
                return Err(Exchange::Failed(ClientError::Closed(
                    "in the middle of an answer's head",
                )));
            }
            Ok(_) => heard = true,
            Err(e) if !heard => return Err(Exchange::BeforeAnswer(ClientError::Io("reading the answer", e))),
            Err(e) => return Err(Exchange::Failed(ClientError::Io("reading the answer", e))),
        }
    }
}

/// The answer head at the front of `buf`, if it is all there; its bytes leave `buf` and are
/// shared by the header values.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Response<()>>, ClientError> {
    let malformed = |why: String| ClientError::Malformed(why);
    if buf.is_empty() {
        return Ok(None);
    }
    let mut fields = fields::uninit();
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
        Ok(_) => return Err(malformed(format!("a head larger than {MAX_HEAD} bytes"))),
        Err(e) => return Err(malformed(format!("malformed head: {e}"))),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| malformed("malformed status code".into()))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let mut spans = FieldSpans::empty();
    spans.record(buf, parsed.headers);
    let bytes: Bytes = buf.split_to(len).freeze();
    let headers = spans.fields(&bytes).map_err(malformed)?;
    let mut head = Response::new(());
    *head.status_mut() = status;
    *head.version_mut() = version;
    *head.headers_mut() = headers;
    Ok(Some(head))
}

/// RFC 9112 §6.3: how the answer's body is delimited, and whether the connection can carry
/// another request after it.
fn framing(method: &Method, head: &Response<()>) -> Result<Framing, ClientError> {
    let headers = head.headers();
    let status = head.status();
    let reuse = head.version() == Version::HTTP_11 && !has_token(headers, header::CONNECTION, "close");
    if method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Length { remaining: 0, reuse });
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .next_back();
        return Ok(match last {
            // With a Content-Length beside it, chunked wins and the connection is not trusted
            // with another request (RFC 9112 §6.3, rule 3).
            Some(c) if c.eq_ignore_ascii_case(b"chunked") => Framing::Chunked {
                state: Chunk::Size,
                reuse: reuse && !headers.contains_key(header::CONTENT_LENGTH),
            },
            _ => Framing::Close,
        });
    }
    let length = crate::fields::content_length(headers).map_err(|why| ClientError::Malformed(why.into()))?;
    Ok(match length {
        Some(remaining) => Framing::Length { remaining, reuse },
        None => Framing::Close,
    })
}

#[cfg(test)]
pub(crate) mod tests;
