//! Reading a request head off the connection and parsing it. An idle connection spends its life
//! here, waiting for the next head, so the read goes through a buffer on the stack and the
//! parsed head shares the bytes it was read into.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;

use bytes::BytesMut;
use hyper::header;
use hyper::{Method, Request, StatusCode, Uri, Version};
use tokio::io::ReadBuf;

use super::Rejection;
use super::framing::{Framing, framing};
use crate::io::Io;
use engine_proxy::fields::{self, FieldSpans, MAX_FIELDS, has_token};

/// The most one read of a request head takes (on the stack; the head is then copied out).
const HEAD_BUFFER: usize = 4096;

/// A parsed request head and what it says about the exchange.
pub(super) struct Head {
    pub(super) request: Request<()>,
    pub(super) framing: Framing,
    /// The client allows another request after this one.
    pub(super) keep_alive: bool,
    pub(super) expect_continue: bool,
    pub(super) upgrade: bool,
}

/// Reads until `buf` holds a whole request head, and takes it out of `buf`. `None`: the client
/// closed before sending anything.
pub(super) async fn read_head<S: Io>(
    io: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Head>, Rejection> {
    loop {
        if !buf.is_empty()
            && let Some(head) = parse(buf, max)?
        {
            return Ok(Some(head));
        }
        match read_through_stack(io, buf).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => {
                return Err(Rejection {
                    status: None,
                    why: "connection closed mid-head".into(),
                });
            }
            Ok(_) => {}
            Err(e) => {
                return Err(Rejection {
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
pub(super) fn parse(buf: &mut BytesMut, max: usize) -> Result<Option<Head>, Rejection> {
    let too_large = || {
        Rejection::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("request head larger than {max} bytes"),
        )
    };
    let mut fields = fields::uninit();
    let mut parsed = httparse::Request::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_request_with_uninit_headers(&mut parsed, buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) if len <= max => len,
        Ok(httparse::Status::Complete(_)) => return Err(too_large()),
        Ok(httparse::Status::Partial) if buf.len() > max => return Err(too_large()),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Rejection::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("more than {MAX_FIELDS} header fields"),
            ));
        }
        Err(e) => return Err(Rejection::bad(format!("malformed request head: {e}"))),
    };
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    // A complete head always has both; a missing one is refused rather than assumed.
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return Err(Rejection::bad("malformed request line"));
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| Rejection::bad(format!("malformed method {method:?}")))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // RFC 9112 §3.2: no fragment in a request target. The URI parser would drop it, and the
    // stages would see a target other than the one sent.
    if path.contains('#') {
        return Err(Rejection::bad("a fragment (#) in the request target"));
    }
    // Nor anything but visible ASCII (RFC 3986): the URI parser takes raw UTF-8, which a server
    // behind the gateway may read differently from the rules.
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Rejection::bad(
            "a request target with characters other than visible ASCII (percent-encode them)",
        ));
    }
    let target = offset(path.as_bytes());
    let mut spans = FieldSpans::empty();
    spans.record(buf, parsed.headers);
    let bytes = buf.split_to(len).freeze();
    let slice = |(at, len): (usize, usize)| bytes.slice(at..at + len);

    if method == Method::CONNECT {
        let rejection = Rejection::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not served here".into(),
        );
        return Err(rejection);
    }
    let uri = Uri::from_maybe_shared(slice(target))
        .map_err(|e| Rejection::bad(format!("malformed target: {e}")))?;
    let uri = origin_form(uri)?;
    let headers = spans.fields(&bytes).map_err(Rejection::bad)?;
    if version == Version::HTTP_11 && headers.get_all(header::HOST).iter().count() != 1 {
        return Err(Rejection::bad(
            "an HTTP/1.1 request needs exactly one Host header",
        ));
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

/// The target in origin form (`/path?query`): an absolute-form target (RFC 9112 §3.2.2) must be
/// an `http` or `https` URL without user information (RFC 9110 §4.2.4), and only its path and
/// query go on, so that no stage sees an
/// authority the client chose beside its Host header.
fn origin_form(uri: Uri) -> Result<Uri, Rejection> {
    let not_a_target = || Rejection::bad("the request target must be a path (origin form) or an http(s) URL");
    let Some(path) = uri.path_and_query().filter(|p| p.as_str().starts_with('/')) else {
        return Err(not_a_target());
    };
    match uri.scheme_str() {
        None if uri.authority().is_none() => Ok(uri),
        Some(scheme)
            if (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
                && uri.authority().is_some_and(|a| !a.as_str().contains('@')) =>
        {
            Ok(Uri::from(path.clone()))
        }
        _ => Err(not_a_target()),
    }
}
