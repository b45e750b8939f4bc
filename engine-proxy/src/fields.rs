//! Header field rules both HTTP/1.1 sides of the gateway share, the terminal's server and the
//! uplink's client: comma-separated token lists and `Content-Length`.

use hyper::header::{self, HeaderMap, HeaderName};

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
