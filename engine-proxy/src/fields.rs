//! Header field rules both HTTP/1.1 sides of the gateway share, the terminal's server and the
//! uplink's client: comma-separated token lists, `Content-Length`, and fields made from a parsed
//! head without copying it.

use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::spare;

/// The field in which the engine's answers, and the gateway's, report the hybrid state
/// (its value: [`crate::health::Mode::header`]).
pub const HYBRID_MODE: HeaderName = HeaderName::from_static("x-hybridmode");

/// Header fields allowed in one head, either way (hyper's limit too).
pub const MAX_FIELDS: usize = 100;

/// Where each field of a head parsed by httparse lies in the head's bytes. httparse borrows the
/// read buffer; the spans outlive that borrow, so that the head's bytes can leave the buffer
/// first and the fields then share them (no copy).
///
/// The first [`INLINE`] fields' spans are on the stack and the rest, in the rare head with more,
/// on the heap: spans for all [`MAX_FIELDS`] were 3.2 KB made and copied for every head, both
/// ways, which cost more than reading the head.
pub struct FieldSpans {
    inline: [Span; INLINE],
    /// `None` unless the head has more.
    more: Option<Vec<Span>>,
    len: usize,
}

/// A field's name and value, each as (offset, length) in the head.
type Span = ((usize, usize), (usize, usize));

/// Fields whose spans [`FieldSpans`] keeps on the stack: more than a browser or a terminal sends.
const INLINE: usize = 32;

/// httparse's room for a head's fields, left uninitialized: it writes what it parses
/// (`parse_*_with_uninit_headers`), rather than the caller first filling 3.2 KB with empty
/// fields for every head.
pub type Uninit<'b> = [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_FIELDS];

/// Room for [`Uninit`] fields.
pub const fn uninit<'b>() -> Uninit<'b> {
    [const { std::mem::MaybeUninit::uninit() }; MAX_FIELDS]
}

impl FieldSpans {
    /// No spans yet: made where it is kept (cleared memory, not a constant copied in, nor a
    /// constructor's result copied out), then [`FieldSpans::record`]ed into.
    #[inline(always)]
    pub fn empty() -> FieldSpans {
        FieldSpans {
            inline: [((0, 0), (0, 0)); INLINE],
            more: None,
            len: 0,
        }
    }

    /// Records the spans of `fields` (at most [`MAX_FIELDS`]: httparse's array), parsed out of
    /// `head`, in place of any before.
    pub fn record(&mut self, head: &[u8], fields: &[httparse::Header<'_>]) {
        let base = head.as_ptr() as usize;
        let offset = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
        self.len = fields.len().min(MAX_FIELDS);
        self.more = None;
        for (i, field) in fields[..self.len].iter().enumerate() {
            let span = (offset(field.name.as_bytes()), offset(field.value));
            match self.inline.get_mut(i) {
                Some(slot) => *slot = span,
                None => self.more.get_or_insert_with(Vec::new).push(span),
            }
        }
    }

    /// The fields, their values sharing `head`: the bytes [`FieldSpans::record`] was given, now
    /// frozen, or at least their first part up to the head's end. The error says which field is
    /// malformed.
    pub fn fields(&self, head: &Bytes) -> Result<HeaderMap, String> {
        let mut headers = spare::map(self.len);
        let spans = self.inline[..self.len.min(INLINE)]
            .iter()
            .chain(self.more.iter().flatten());
        for &((at, len), (value_at, value_len)) in spans {
            let name = &head[at..at + len];
            let name = match name.eq_ignore_ascii_case(HYBRID_MODE.as_str().as_bytes()) {
                // On every answer of the engine's, and unknown to `HeaderName`, which would
                // allocate a copy of its name for each.
                true => HYBRID_MODE,
                false => HeaderName::from_bytes(name)
                    .map_err(|_| format!("malformed header name {:?}", String::from_utf8_lossy(name)))?,
            };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &'static [u8]) -> HeaderMap {
        let mut fields = uninit();
        let mut request = httparse::Request::new(&mut []);
        let config = httparse::ParserConfig::default();
        let status = config.parse_request_with_uninit_headers(&mut request, head, &mut fields);
        assert!(matches!(status, Ok(httparse::Status::Complete(_))), "{status:?}");
        let mut spans = FieldSpans::empty();
        spans.record(head, request.headers);
        spans.fields(&Bytes::from_static(head)).unwrap()
    }

    /// A map given back ([`spare::recycle`]) comes out empty for the next head, which gets its own
    /// fields only.
    #[test]
    fn a_recycled_map_holds_only_the_next_heads_fields() {
        let first = parsed(b"GET / HTTP/1.1\r\nhost: a\r\nx-one: 1\r\nx-two: 2\r\nx-two: 3\r\n\r\n");
        assert_eq!(first.len(), 4);
        let room = first.capacity();
        spare::recycle(first);
        let next = parsed(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n");
        assert!(next.capacity() >= room, "the spare was taken");
        let fields: Vec<_> = next.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect();
        assert_eq!(fields, [("host", &b"b"[..])]);
    }
}
