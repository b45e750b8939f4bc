//! The chunked transfer coding (RFC 9112 §7.1), decoded as a state machine over whatever the
//! read buffer holds: a chunk may arrive in any number of reads, and a malformed or oversized
//! line is refused rather than waited for. One decoder for both directions: the gateway's
//! server reads terminals' request bodies with it, the uplink's [`client`](crate::client) the
//! engine's answers.

use bytes::{Bytes, BytesMut};

/// One step of decoding a body out of the read buffer.
#[derive(Debug, PartialEq)]
pub enum Step {
    Data(Bytes),
    /// The buffer ends mid-body: read more.
    More,
    Done,
}

/// Where a chunked body is (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy)]
pub enum Chunk {
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
pub const MAX_CHUNK_LINE: usize = 4096;
/// Trailer fields are read and dropped, up to this many bytes.
const MAX_TRAILERS: usize = 16 * 1024;

pub fn decode_chunked(state: &mut Chunk, buf: &mut BytesMut) -> Result<Step, &'static str> {
    loop {
        match *state {
            Chunk::Size => {
                let Some(end) = line_end(buf, MAX_CHUNK_LINE, "chunk size line too long")? else {
                    return Ok(Step::More);
                };
                let line = &buf[..end];
                let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
                let rest = &line[digits..];
                if digits == 0 || digits > 15 {
                    return Err("malformed chunk size");
                }
                if !extensions(rest) {
                    return Err("malformed chunk extension");
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
                if end > 0 && !field_line(&buf[..end]) {
                    return Err("malformed trailer field");
                }
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

/// RFC 9110 §5.6.2: a token's characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9110 §5.5: a field value's characters (VCHAR, obs-text, SP, HTAB).
fn is_field_char(b: u8) -> bool {
    b == b'\t' || b == b' ' || b.is_ascii_graphic() || b >= 0x80
}

/// The length of the token at the front of `s`.
fn token(s: &[u8]) -> usize {
    s.iter().take_while(|&&b| is_tchar(b)).count()
}

/// RFC 9112 §7.1.1: `*( ";" chunk-ext-name [ "=" chunk-ext-val ] )`, a name a token and a value
/// a token or a quoted string. The optional white space the grammar allows around `;` and `=`
/// (for old senders) is refused: a line the gateway and a server behind it could read
/// differently is not guessed at.
fn extensions(mut s: &[u8]) -> bool {
    while let Some(rest) = s.strip_prefix(b";") {
        let name = token(rest);
        if name == 0 {
            return false;
        }
        s = &rest[name..];
        let Some(value) = s.strip_prefix(b"=") else {
            continue;
        };
        let n = match value.strip_prefix(b"\"") {
            Some(quoted) => match quoted_len(quoted) {
                Some(n) => n + 1,
                None => return false,
            },
            None => token(value),
        };
        if n == 0 {
            return false;
        }
        s = &value[n..];
    }
    s.is_empty()
}

/// RFC 9110 §5.6.4: how long a quoted string is after its opening quote, the closing quote
/// included; `None` if it does not close or holds a character it may not.
fn quoted_len(s: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        match *s.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' if s.get(i + 1).is_some_and(|&b| is_field_char(b)) => i += 2,
            b'\\' => return None,
            b if is_field_char(b) => i += 1,
            _ => return None,
        }
    }
}

/// RFC 9112 §7.1.2, RFC 9110 §5: a trailer field line, `field-name ":" field-value`.
fn field_line(line: &[u8]) -> bool {
    let name = token(line);
    name > 0
        && line[name..]
            .split_first()
            .is_some_and(|(&colon, value)| colon == b':' && value.iter().all(|&b| is_field_char(b)))
}
