//! Header field rules both HTTP/1.1 sides of the gateway share, the terminal's server and the
//! uplink's client: comma-separated token lists, `Content-Length`, and fields made from a parsed
//! head without copying it.

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Header fields allowed in one head, either way (hyper's limit too).
pub const MAX_FIELDS: usize = 100;

/// Where each field of a head parsed by httparse lies in the head's bytes. httparse borrows the
/// read buffer; the spans, on the stack, outlive that borrow, so that the head's bytes can leave
/// the buffer first and the fields then share them (no copy, and no list on the heap).
pub struct FieldSpans {
    spans: [((usize, usize), (usize, usize)); MAX_FIELDS],
    len: usize,
}

impl FieldSpans {
    /// The spans of `fields` (at most [`MAX_FIELDS`]: httparse's array), parsed out of `head`.
    pub fn new(head: &[u8], fields: &[httparse::Header<'_>]) -> FieldSpans {
        let base = head.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
        let mut spans = [((0, 0), (0, 0)); MAX_FIELDS];
        for (span, field) in spans.iter_mut().zip(fields) {
            *span = (offset(field.name.as_bytes()), offset(field.value));
        }
        FieldSpans {
            spans,
            len: fields.len().min(MAX_FIELDS),
        }
    }

    /// The fields, their values sharing `head`: the bytes [`FieldSpans::new`] was given, now
    /// frozen, or at least their first part up to the head's end. The error says which field is
    /// malformed.
    pub fn fields(&self, head: &Bytes) -> Result<HeaderMap, String> {
        let mut headers = HeaderMap::with_capacity(self.len);
        for &((at, len), (value_at, value_len)) in &self.spans[..self.len] {
            let name = &head[at..at + len];
            let name = HeaderName::from_bytes(name)
                .map_err(|_| format!("malformed header name {:?}", String::from_utf8_lossy(name)))?;
            let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len))
                .map_err(|_| format!("malformed value of header {name}"))?;
            headers.append(name, value);
        }
        Ok(headers)
    }
}

/// Whether a comma-separated field (such as `Connection`) lists `token`.
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The `Content-Length`, if any: every value (and every element of a list) must be the same
/// decimal number (RFC 9110 §8.6); anything else is refused rather than guessed at.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
    {
        let value = value.trim_ascii();
        let n = (!value.is_empty() && value.len() <= 19 && value.iter().all(u8::is_ascii_digit))
            .then(|| std::str::from_utf8(value).ok()?.parse::<u64>().ok())
            .flatten()
            .ok_or("malformed Content-Length")?;
        if length.is_some_and(|l| l != n) {
            return Err("Content-Length values that disagree");
        }
        length = Some(n);
    }
    Ok(length)
}

/// A request asking to switch protocols (the push WebSocket).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && has_token(headers, header::CONNECTION, "upgrade")
}
