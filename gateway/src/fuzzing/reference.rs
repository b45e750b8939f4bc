//! The reference the `h1_differential` target holds the gateway's HTTP/1.1 framing to: httparse
//! for the head (hyper's parser), and RFC 9112's framing rules written out plainly and
//! separately from `gateway/src/http1`: the request target (§3.2), the message body length
//! (§6.3) and the chunked coding with its extensions and trailer section (§7.1).
//!
//! It is lenient where the RFC is (a Transfer-Encoding beside a Content-Length, whitespace
//! around chunk extensions, HTTP/1.0 keep-alive) and strict where the RFC is: the gateway may
//! refuse more, never accept what this refuses or frame it differently.

/// One request the reference framed.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub method: String,
    /// The target's path and query (an absolute-form target's authority dropped, §3.2.2).
    pub target: String,
    pub end: usize,
    pub body: Vec<u8>,
    pub keep_alive: bool,
    pub upgrade: bool,
}

/// Frames the requests in `input` until the input ends, a request is malformed, or the
/// connection closes or is upgraded.
pub fn frame(input: &[u8]) -> Vec<Request> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let Some(request) = one(&input[at..]) else {
            break;
        };
        let done = !request.keep_alive || request.upgrade;
        at += request.end;
        out.push(Request { end: at, ..request });
        if done {
            break;
        }
    }
    out
}

/// The request at the front of `input`, if it is complete and well framed.
fn one(input: &[u8]) -> Option<Request> {
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Request::new(&mut fields);
    let head_len = match parsed.parse(input).ok()? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    let method = parsed.method?.to_owned();
    let version = parsed.version?;
    let target = target(parsed.path?)?;
    let headers: &[httparse::Header<'_>] = parsed.headers;
    let values = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let list = |name: &'static str| {
        values(name)
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .map(<[u8]>::to_ascii_lowercase)
            .collect::<Vec<_>>()
    };
    // §3.2: an HTTP/1.1 request has exactly one Host.
    if version == 1 && values("host").count() != 1 {
        return None;
    }
    // Field values: no control characters but HTAB (§5.5).
    if headers
        .iter()
        .any(|h| h.value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f))
    {
        return None;
    }
    let connection = list("connection");
    let keep_alive = match version {
        1 => !connection.iter().any(|t| t == b"close"),
        _ => connection.iter().any(|t| t == b"keep-alive"),
    };
    let upgrade = connection.iter().any(|t| t == b"upgrade") && values("upgrade").next().is_some();
    let rest = &input[head_len..];
    // §6.3.
    let codings = list("transfer-encoding");
    let (body, body_len) = if values("transfer-encoding").next().is_some() {
        if version == 0 || codings.last().map(Vec::as_slice) != Some(b"chunked") {
            return None;
        }
        chunked(rest)?
    } else {
        let mut length = None;
        for value in values("content-length").flat_map(|v| v.split(|&b| b == b',')) {
            let value = value.trim_ascii();
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let n: u64 = std::str::from_utf8(value).ok()?.parse().ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        }
        let n = usize::try_from(length.unwrap_or(0)).ok()?;
        if rest.len() < n {
            return None;
        }
        (rest[..n].to_vec(), n)
    };
    Some(Request {
        method,
        target,
        end: head_len + body_len,
        body,
        keep_alive,
        upgrade,
    })
}

/// §3.2: origin form (`/path?query`), or absolute form with an `http` or `https` URI, whose
/// path and query it becomes. No fragment: `#` is not in the request-target grammar.
fn target(raw: &str) -> Option<String> {
    // Visible ASCII but `#`: RFC 3986 allows fewer, but those others are the engine's to refuse
    // and change no framing; a fragment changes the target the stages see.
    if !raw.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
        return None;
    }
    if raw.starts_with('/') {
        return Some(raw.to_owned());
    }
    let (scheme, rest) = raw.split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return None;
    }
    let path_at = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(path_at);
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    match path {
        "" => Some("/".to_owned()),
        p if p.starts_with('?') => Some(format!("/{p}")),
        p => Some(p.to_owned()),
    }
}

/// §7.1: a chunked body and how many bytes it took, trailers included.
fn chunked(input: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line = line(&input[at..])?;
        at += line.len() + 2;
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || !extensions(&line[digits..]) {
            return None;
        }
        let size = u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()?;
        if size == 0 {
            break;
        }
        let size = usize::try_from(size).ok()?;
        let data = input.get(at..at.checked_add(size)?)?;
        body.extend_from_slice(data);
        at += size;
        if input.get(at..at + 2)? != b"\r\n" {
            return None;
        }
        at += 2;
    }
    // The trailer section: field lines until an empty line.
    loop {
        let line = line(&input[at..])?;
        at += line.len() + 2;
        if line.is_empty() {
            return Some((body, at));
        }
        if !field_line(line) {
            return None;
        }
    }
}

/// The line before the first CRLF; `None` if there is none or a bare CR or LF comes first.
fn line(input: &[u8]) -> Option<&[u8]> {
    let end = input.iter().position(|&b| b == b'\r' || b == b'\n')?;
    (input.get(end..end + 2)? == b"\r\n").then(|| &input[..end])
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn token(s: &[u8]) -> usize {
    s.iter().take_while(|&&b| is_tchar(b)).count()
}

fn bws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &s[n..]
}

/// `*( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )`.
fn extensions(mut s: &[u8]) -> bool {
    loop {
        s = bws(s);
        if s.is_empty() {
            return true;
        }
        let Some(rest) = s.strip_prefix(b";") else {
            return false;
        };
        s = bws(rest);
        let name = token(s);
        if name == 0 {
            return false;
        }
        s = &s[name..];
        let after = bws(s);
        if let Some(rest) = after.strip_prefix(b"=") {
            s = bws(rest);
            if let Some(rest) = s.strip_prefix(b"\"") {
                let Some(n) = quoted(rest) else {
                    return false;
                };
                s = &rest[n..];
            } else {
                let value = token(s);
                if value == 0 {
                    return false;
                }
                s = &s[value..];
            }
        }
    }
}

/// The length of a quoted string's rest after its opening quote, closing quote included.
fn quoted(s: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'"' => return Some(i + 1),
            b'\\' => {
                let next = *s.get(i + 1)?;
                if !(next == b'\t' || next == b' ' || (0x21..=0x7e).contains(&next) || next >= 0x80) {
                    return None;
                }
                i += 2;
            }
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => i += 1,
            _ => return None,
        }
    }
    None
}

/// `field-name ":" OWS field-value OWS` (§5).
fn field_line(line: &[u8]) -> bool {
    let name = token(line);
    name > 0
        && line[name..].first() == Some(&b':')
        && line[name + 1..]
            .iter()
            .all(|&b| b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80)
}
