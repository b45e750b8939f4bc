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

use std::future::{Future, poll_fn};
use std::io::{self, Write as _};
use std::pin::{Pin, pin};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use hyper::body::{Body as HttpBody, Bytes, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use engine_proxy::upstream::{BoxError, ProxyBody};

use crate::io::Io;
use crate::shutdown::stopped;

/// Header fields allowed in one request head (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// The most one read of a request head takes (on the stack; the head is then copied out).
const HEAD_BUFFER: usize = 4096;
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
    mut stopping: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::new();
    let refusal = loop {
        let between_requests = buf.is_empty();
        let read = tokio::select! {
            read = tokio::time::timeout(
                limits.header_timeout,
                read_head(&mut io, &mut buf, limits.max_header_bytes),
            ) => read,
            () = stopped(&mut stopping), if between_requests => break None,
        };
        let head = match read {
            Ok(Ok(Some(head))) => head,
            Ok(Ok(None)) => return, // the client closed between requests
            Ok(Err(refusal)) => break Some(refusal),
            Err(_) if buf.is_empty() => break None, // idle for the whole timeout
            Err(_) => {
                let secs = limits.header_timeout.as_secs();
                break Some(Refusal::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("request head not complete within {secs} s"),
                ));
            }
        };
        let exchange = exchange(&mut io, &mut buf, head, &service, limits, &stopping);
        match Box::pin(exchange).await {
            Next::Another => {
                // Idle from here: let the buffer go unless a pipelined request is in it.
                if buf.is_empty() {
                    buf = BytesMut::new();
                }
            }
            Next::Close => break None,
            Next::Refuse(refusal) => break Some(refusal),
            Next::Upgrade(tx) => {
                let _ = tx.send(Upgraded {
                    read: buf.freeze(),
                    io: Box::new(io),
                });
                return;
            }
            Next::Broken => return,
        }
    };
    // Boxed: each holds the stream, which this future already does.
    match refusal {
        None => Box::pin(close(io)).await,
        Some(refusal) => Box::pin(refuse(io, &service, refusal)).await,
    }
}

/// What the connection does after an exchange.
enum Next {
    Another,
    Close,
    Refuse(Refusal),
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
                Ok(Err(e)) => return Next::Refuse(Refusal::body(e)),
                Err(_) => {
                    let stalled = Refusal::new(StatusCode::REQUEST_TIMEOUT, "request body stalled".into());
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
        let mut call = Box::pin(service.call(request));
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
struct Refusal {
    /// `None`: nothing to answer (the connection broke).
    status: Option<StatusCode>,
    why: String,
}

impl Refusal {
    fn new(status: StatusCode, why: String) -> Self {
        Refusal {
            status: Some(status),
            why,
        }
    }
    fn bad(why: impl Into<String>) -> Self {
        Refusal::new(StatusCode::BAD_REQUEST, why.into())
    }
    fn body(e: BodyError) -> Self {
        match e {
            BodyError::Io(e) => Refusal {
                status: None,
                why: format!("connection broke during the request body: {e}"),
            },
            BodyError::Closed => Refusal {
                status: None,
                why: "connection closed during the request body".into(),
            },
            BodyError::Malformed(why) => Refusal::bad(why),
        }
    }
}

/// Answers a refusal (if there is anyone to answer), audits it, closes.
async fn refuse<S: Io, V: Service>(mut io: S, service: &V, refusal: Refusal) {
    let Some(status) = refusal.status else {
        tracing::debug!(why = %refusal.why, "connection ended mid-request");
        return;
    };
    service.rejected(status, &refusal.why);
    let body = format!("Kakehashi: {}\n", refusal.why);
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

/// A parsed request head and what it says about the exchange.
struct Head {
    request: Request<()>,
    framing: Framing,
    /// The client allows another request after this one.
    keep_alive: bool,
    expect_continue: bool,
    upgrade: bool,
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Length(u64),
    Chunked,
}

/// Reads until `buf` holds a whole request head, and takes it out of `buf`. `None`: the client
/// closed before sending anything.
async fn read_head<S: Io>(io: &mut S, buf: &mut BytesMut, max: usize) -> Result<Option<Head>, Refusal> {
    loop {
        if !buf.is_empty()
            && let Some(head) = parse(buf, max)?
        {
            return Ok(Some(head));
        }
        match read_through_stack(io, buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => {
                return Err(Refusal {
                    status: None,
                    why: "connection closed mid-head".into(),
                });
            }
            Ok(_) => {}
            Err(e) => {
                return Err(Refusal {
                    status: None,
                    why: format!("reading a request head: {e}"),
                });
            }
        }
    }
}

/// Reads what has arrived and appends it to `buf`, through a buffer on the stack: a connection
/// waiting for its next request holds no buffer of its own, only its TLS state (rustls keeps
/// 4 KiB of its own for records).
async fn read_through_stack<S: Io>(io: &mut S, buf: &mut BytesMut) -> io::Result<usize> {
    poll_fn(|cx| {
        let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); HEAD_BUFFER];
        let mut read = ReadBuf::uninit(&mut stack);
        match Pin::new(&mut *io).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                buf.extend_from_slice(read.filled());
                Poll::Ready(Ok(read.filled().len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// The head at the front of `buf`, if it is all there; the head's bytes leave `buf` and are
/// shared by the header values and the target.
fn parse(buf: &mut BytesMut, max: usize) -> Result<Option<Head>, Refusal> {
    let too_large = || {
        Refusal::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("request head larger than {max} bytes"),
        )
    };
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut fields);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len <= max => len,
        Ok(httparse::Status::Complete(_)) => return Err(too_large()),
        Ok(httparse::Status::Partial) if buf.len() > max => return Err(too_large()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("more than {MAX_HEADERS} header fields"),
            ));
        }
        Err(e) => return Err(Refusal::bad(format!("malformed request head: {e}"))),
    };
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    // A complete head always has both; a missing one is refused rather than assumed.
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return Err(Refusal::bad("malformed request line"));
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| Refusal::bad(format!("malformed method {method:?}")))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let target = offset(path.as_bytes());
    let mut named = Vec::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Refusal::bad(format!("malformed header name {:?}", field.name)))?;
        named.push((name, offset(field.value)));
    }
    let bytes = buf.split_to(len).freeze();
    let slice = |(at, len): (usize, usize)| bytes.slice(at..at + len);

    if method == Method::CONNECT {
        let refusal = Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not served here".into(),
        );
        return Err(refusal);
    }
    let uri =
        Uri::from_maybe_shared(slice(target)).map_err(|e| Refusal::bad(format!("malformed target: {e}")))?;
    if uri.path_and_query().is_none_or(|p| !p.as_str().starts_with('/')) {
        return Err(Refusal::bad(
            "the request target must be a path (origin form) or a URL",
        ));
    }
    let mut headers = HeaderMap::with_capacity(named.len());
    for (name, value) in named {
        let value = HeaderValue::from_maybe_shared(slice(value))
            .map_err(|_| Refusal::bad(format!("malformed value of header {name}")))?;
        headers.append(name, value);
    }
    if version == Version::HTTP_11 && headers.get_all(header::HOST).iter().count() != 1 {
        return Err(Refusal::bad("an HTTP/1.1 request needs exactly one Host header"));
    }
    let framing = framing(&headers, version)?;
    let keep_alive = version == Version::HTTP_11 && !has_token(&headers, header::CONNECTION, "close");
    let expect_continue = version == Version::HTTP_11
        && framing != Framing::Length(0)
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let upgrade = has_token(&headers, header::CONNECTION, "upgrade") && headers.contains_key(header::UPGRADE);

    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(Head {
        request,
        framing,
        keep_alive,
        expect_continue,
        upgrade,
    }))
}

/// Whether a comma-separated header (such as `Connection`) lists `token`.
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// RFC 9112 §6: how the body is delimited, refusing every ambiguity rather than guessing.
fn framing(headers: &HeaderMap, version: Version) -> Result<Framing, Refusal> {
    let coded = headers.contains_key(header::TRANSFER_ENCODING);
    let lengths = headers.get_all(header::CONTENT_LENGTH);
    if coded {
        if version == Version::HTTP_10 {
            return Err(Refusal::bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if lengths.iter().next().is_some() {
            return Err(Refusal::bad("both Transfer-Encoding and Content-Length"));
        }
        let mut codings = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii);
        return match (codings.next(), codings.next()) {
            (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            _ => Err(Refusal::new(
                StatusCode::NOT_IMPLEMENTED,
                "a transfer coding other than chunked".into(),
            )),
        };
    }
    let mut length = None;
    for value in lengths.iter().flat_map(|v| v.as_bytes().split(|&b| b == b',')) {
        let value = value.trim_ascii();
        let n = (!value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit))
            .then(|| std::str::from_utf8(value).ok()?.parse::<u64>().ok())
            .flatten()
            .ok_or_else(|| Refusal::bad("malformed Content-Length"))?;
        if length.is_some_and(|l| l != n) {
            return Err(Refusal::bad("Content-Length values that disagree"));
        }
        length = Some(n);
    }
    Ok(Framing::Length(length.unwrap_or(0)))
}

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
async fn read_exact<S: Io>(io: &mut S, buf: &mut BytesMut, n: u64) -> Result<Bytes, BodyError> {
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

    fn streaming(framing: Framing, expect_continue: bool) -> (Self, Pump) {
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
struct Pump {
    decoder: Decoder,
    tx: mpsc::Sender<Result<Bytes, BodyError>>,
    wanted: Option<Arc<Notify>>,
    failure: Arc<OnceLock<String>>,
}

impl Pump {
    /// True once the whole body has been read off the connection; false if it failed or the
    /// service stopped reading it.
    async fn run<S: Io>(mut self, io: &mut S, buf: &mut BytesMut, stall: Duration) -> bool {
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

/// One step of decoding a body out of the read buffer.
#[derive(Debug, PartialEq)]
enum Step {
    Data(Bytes),
    /// The buffer ends mid-body: read more.
    More,
    Done,
}

#[derive(Debug)]
enum Decoder {
    Length(u64),
    Chunked(Chunk),
}

/// Where a chunked body is (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// Expecting `hex-size [; extensions] CRLF`.
    Size,
    /// In a chunk's data, this many bytes to go.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields until an empty line; `seen` bytes of them so far.
    Trailers {
        seen: usize,
    },
    Done,
}

/// A chunk-size line, extensions included, longer than this is not a client being reasonable.
const MAX_CHUNK_LINE: usize = 4096;
/// Trailer fields are read and dropped, up to this many bytes.
const MAX_TRAILERS: usize = 16 * 1024;

impl Decoder {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, &'static str> {
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

fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Step, &'static str> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(end) = line_end(buf, MAX_CHUNK_LINE, "chunk size line too long")? else {
                    return Ok(Step::More);
                };
                let line = &buf[..end];
                let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                let rest = &line[digits..];
                if digits == 0 || digits > 15 || !(rest.is_empty() || rest.starts_with(b";")) {
                    return Err("malformed chunk size");
                }
                let size = std::str::from_utf8(&line[..digits])
                    .ok()
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                    .ok_or("malformed chunk size")?;
                let _ = buf.split_to(end + 2);
                *state = if size == 0 {
                    Chunk::Trailers { seen: 0 }
                } else {
                    Chunk::Data(size)
                };
            }
            Chunk::Data(remaining) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = remaining.min(buf.len() as u64) as usize;
                *state = if n as u64 == remaining {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(remaining - n as u64)
                };
                return Ok(Step::Data(buf.split_to(n).freeze()));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Step::More);
                }
                if &buf[..2] != b"\r\n" {
                    return Err("chunk data not followed by CRLF");
                }
                let _ = buf.split_to(2);
                *state = Chunk::Size;
            }
            Chunk::Trailers { seen } => {
                let Some(end) = line_end(buf, MAX_TRAILERS - seen, "trailer fields too large")? else {
                    return Ok(Step::More);
                };
                let _ = buf.split_to(end + 2);
                *state = if end == 0 {
                    Chunk::Done
                } else {
                    Chunk::Trailers { seen: seen + end + 2 }
                };
            }
            Chunk::Done => return Ok(Step::Done),
        }
    }
}

/// Where the CRLF-terminated line at the front of `buf` ends (the index of its CR), if it is all
/// there; a bare LF, or no end within `max` bytes, is an error.
fn line_end(buf: &[u8], max: usize, too_long: &'static str) -> Result<Option<usize>, &'static str> {
    match buf.iter().take(max).position(|&b| b == b'\n') {
        Some(0) => Err("bare LF in a chunked body"),
        Some(lf) if buf[lf - 1] == b'\r' => Ok(Some(lf - 1)),
        Some(_) => Err("bare LF in a chunked body"),
        None if buf.len() >= max => Err(too_long),
        None => Ok(None),
    }
}

/// What the response must honour of its request.
struct Answering {
    method_is_head: bool,
    version: Version,
    keep_alive: bool,
}

/// Writes a response: its head and whatever of its body is ready in one write, then the rest as
/// it comes. Returns whether the connection can carry another request.
async fn respond<S: Io>(io: &mut S, response: Response<ProxyBody>, to: Answering) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let mut keep_alive = to.keep_alive && !has_token(&parts.headers, header::CONNECTION, "close");
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let bodiless = to.method_is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let length = body.size_hint().exact();

    let mut out = Vec::with_capacity(512);
    status_line(&mut out, status);
    let mut dated = false;
    for (name, value) in &parts.headers {
        let keep = match *name {
            // The upgrade's own Connection and Upgrade pass; otherwise this module frames the
            // message and says whether the connection stays.
            header::CONNECTION | header::UPGRADE => switching,
            header::TRANSFER_ENCODING => false,
            // A HEAD or 304 answer describes the body it does not carry.
            header::CONTENT_LENGTH => bodiless && status != StatusCode::NO_CONTENT,
            header::DATE => {
                dated = true;
                true
            }
            _ => name.as_str() != "keep-alive",
        };
        if keep {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    if !dated {
        date_line(&mut out);
    }
    let chunked = !bodiless && length.is_none() && to.version == Version::HTTP_11;
    if !bodiless {
        match length {
            Some(n) => {
                let _ = write!(out, "content-length: {n}\r\n");
            }
            None if chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            // An HTTP/1.0 client: the body ends when the connection does.
            None => keep_alive = false,
        }
    }
    if !keep_alive && !switching {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");

    if bodiless {
        drop(body);
        io.write_all(&out).await?;
        io.flush().await?;
        return Ok(keep_alive);
    }

    let mut sent = 0u64;
    loop {
        // Take what the body has ready without waiting; write once it has nothing more ready.
        let next = poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        let frame = match next {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    io.write_all(&out).await?;
                    io.flush().await?;
                    out.clear();
                }
                poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        match frame {
            None => break,
            Some(Err(e)) => {
                // Too late for a status: cut the response short so the client sees it broke.
                tracing::debug!(error = %e, "response body failed mid-way");
                io.write_all(&out).await?;
                io.flush().await?;
                return Ok(false);
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue };
                if data.is_empty() {
                    continue;
                }
                sent += data.len() as u64;
                if chunked {
                    let _ = write!(out, "{:x}\r\n", data.len());
                }
                if data.len() >= RECORD {
                    io.write_all(&out).await?;
                    out.clear();
                    io.write_all(&data).await?;
                } else {
                    out.extend_from_slice(&data);
                }
                if chunked {
                    out.extend_from_slice(b"\r\n");
                }
                if out.len() >= RECORD {
                    io.write_all(&out).await?;
                    out.clear();
                }
            }
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    drop(body);
    io.write_all(&out).await?;
    io.flush().await?;
    // A body that disagreed with its own length has left the framing broken.
    Ok(keep_alive && length.is_none_or(|n| n == sent))
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `date: …` (RFC 9110 §6.6.1: an origin's answers carry one; the gateway's own do too),
/// formatted once a second per worker thread.
fn date_line(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    let now = time::OffsetDateTime::now_utc();
    DATE.with_borrow_mut(|(second, line)| {
        if *second != now.unix_timestamp() {
            *second = now.unix_timestamp();
            let weekday = now.weekday().to_string();
            let month = now.month().to_string();
            *line = format!(
                "date: {}, {:02} {} {} {:02}:{:02}:{:02} GMT\r\n",
                &weekday[..3],
                now.day(),
                &month[..3],
                now.year(),
                now.hour(),
                now.minute(),
                now.second()
            );
        }
        out.extend_from_slice(line.as_bytes());
    });
}

/// In a request's extensions when it asks to switch protocols: resolves to the connection once
/// the response `101 Switching Protocols` has been written. (Clone, as extensions must be; the
/// first clone to be awaited gets the connection.)
#[derive(Clone)]
pub struct OnUpgrade(Arc<std::sync::Mutex<Option<oneshot::Receiver<Upgraded>>>>);

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
    read: Bytes,
    io: Box<dyn Io>,
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

#[cfg(test)]
mod tests;
