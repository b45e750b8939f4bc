//! How a request's body is delimited (RFC 9112 §6). Request smuggling lives in the ambiguities
//! between `Content-Length` and `Transfer-Encoding`, so the rules that refuse every one of them
//! stand apart, where they can be read and tested whole.

use hyper::StatusCode;
use hyper::Version;
use hyper::header::{self, HeaderMap};

use super::Rejection;
use engine_proxy::fields::content_length;

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Framing {
    Length(u64),
    Chunked,
}

/// RFC 9112 §6: how the body is delimited, refusing every ambiguity rather than guessing.
pub(super) fn framing(headers: &HeaderMap, version: Version) -> Result<Framing, Rejection> {
    let coded = headers.contains_key(header::TRANSFER_ENCODING);
    let lengths = headers.get_all(header::CONTENT_LENGTH);
    if coded {
        if version == Version::HTTP_10 {
            return Err(Rejection::bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if lengths.iter().next().is_some() {
            return Err(Rejection::bad("both Transfer-Encoding and Content-Length"));
        }
        let mut codings = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii);
        return match (codings.next(), codings.next()) {
            (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            _ => Err(Rejection::new(
                StatusCode::NOT_IMPLEMENTED,
                "a transfer coding other than chunked".into(),
            )),
        };
    }
    let length = content_length(headers).map_err(Rejection::bad)?;
    Ok(Framing::Length(length.unwrap_or(0)))
}
