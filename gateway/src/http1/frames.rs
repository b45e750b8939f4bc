//! The server's framing without the connection: where each request in a byte stream ends and
//! what its body is, by the same head parser and body decoders [`super::serve`] uses. For the
//! fuzz targets (`gateway/src/fuzzing`) and their corpus replay; nothing else calls it.

use bytes::BytesMut;

use super::body::Decoder;
use super::framing::Framing;
use super::head::parse;
use engine_proxy::chunked::{Chunk, Step};
use engine_proxy::client::frames::Pieces;

/// One request the server framed.
#[derive(Debug, Clone, PartialEq)]
pub struct Framed {
    pub method: String,
    /// The target as the stages see it: path and query.
    pub target: String,
    /// Where the request (head and body) ends in the input.
    pub end: usize,
    pub body: Vec<u8>,
}

/// Why the server stopped reading requests.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// The input ended, between requests or within one.
    Incomplete,
    /// The server refused the next request (with this status, if it answered at all).
    Refused(Option<u16>),
    /// The last request closes the connection (HTTP/1.0 or `Connection: close`).
    Closed,
    /// The last request asked for an upgrade: what follows is another protocol's.
    Upgrade,
}

/// Frames the requests in `input` as the server would, with the input arriving `step` bytes at
/// a time (`0`: all at once).
pub fn frame(input: &[u8], max_header_bytes: usize, step: usize) -> (Vec<Framed>, Stop) {
    let mut pieces = Pieces::new(input, step);
    let mut buf = BytesMut::new();
    let mut framed = Vec::new();
    loop {
        let head = loop {
            if !buf.is_empty() {
                match parse(&mut buf, max_header_bytes) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {}
                    Err(r) => return (framed, Stop::Refused(r.status.map(|s| s.as_u16()))),
                }
            }
            if !pieces.feed(&mut buf) {
                return (framed, Stop::Incomplete);
            }
        };
        let mut decoder = match head.framing {
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(Chunk::Size),
        };
        let mut body = Vec::new();
        loop {
            match decoder.decode(&mut buf) {
                Ok(Step::Data(data)) => body.extend_from_slice(&data),
                Ok(Step::Done) => break,
                Ok(Step::More) => {
                    if !pieces.feed(&mut buf) {
                        return (framed, Stop::Incomplete);
                    }
                }
                Err(_) => return (framed, Stop::Refused(Some(400))),
            }
        }
        let target = head
            .request
            .uri()
            .path_and_query()
            .map_or_else(String::new, |p| p.as_str().to_owned());
        framed.push(Framed {
            method: head.request.method().as_str().to_owned(),
            target,
            end: pieces.fed() - buf.len(),
            body,
        });
        if head.upgrade {
            return (framed, Stop::Upgrade);
        }
        if !head.keep_alive {
            return (framed, Stop::Closed);
        }
    }
}
