//! The client's framing without the connection: where each answer in a byte stream from the
//! engine ends and what its body is, by the same head parser and body decoder a request's
//! exchange uses. For the fuzz target `h1_answer` (`gateway/src/fuzzing`) and its corpus replay;
//! nothing else calls it.

use bytes::BytesMut;
use hyper::{Method, StatusCode};

use super::body::{Framing, decode};
use super::{framing, parse_head};
use crate::chunked::Step;

/// One answer the client framed.
#[derive(Debug, Clone, PartialEq)]
pub struct Framed {
    pub status: u16,
    /// Where the answer (head and body) ends in the input.
    pub end: usize,
    pub body: Vec<u8>,
}

/// Why the client stopped reading answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// The input ended, between answers or within one (an answer framed by the engine closing
    /// ends there, and is framed).
    Incomplete,
    /// The client refused the next answer, for this reason.
    Refused(String),
    /// The last answer does not leave the connection reusable.
    Closed,
    /// The last answer switched protocols: what follows is another protocol's.
    Upgrade,
}

/// Frames the answers in `input` to requests of `method` (`upgrade`: asking to switch
/// protocols), as the client would, with the input arriving `step` bytes at a time (`0`: all at
/// once). Interim 1xx answers are framed too.
pub fn frame(input: &[u8], method: &Method, upgrade: bool, step: usize) -> (Vec<Framed>, Stop) {
    let mut pieces = Pieces::new(input, step);
    let mut buf = BytesMut::new();
    let mut framed = Vec::new();
    loop {
        let head = loop {
            match parse_head(&mut buf) {
                Ok(Some(head)) => break head,
                Ok(None) if pieces.feed(&mut buf) => {}
                Ok(None) => return (framed, Stop::Incomplete),
                Err(e) => return (framed, Stop::Refused(e.to_string())),
            }
        };
        let status = head.status();
        let mut framing = match status {
            StatusCode::SWITCHING_PROTOCOLS if upgrade => Framing::Switched,
            StatusCode::SWITCHING_PROTOCOLS => return (framed, Stop::Refused("unasked 101".into())),
            s if s.is_informational() => Framing::Length {
                remaining: 0,
                reuse: true,
            },
            _ => match framing(method, &head) {
                Ok(framing) => framing,
                Err(e) => return (framed, Stop::Refused(e.to_string())),
            },
        };
        let mut body = Vec::new();
        loop {
            match decode(&mut framing, &mut buf) {
                Ok(Step::Data(data)) => body.extend_from_slice(&data),
                Ok(Step::Done) => break,
                Ok(Step::More) if pieces.feed(&mut buf) => {}
                Ok(Step::More) if matches!(framing, Framing::Close) => break,
                Ok(Step::More) => return (framed, Stop::Incomplete),
                Err(why) => return (framed, Stop::Refused(why.into())),
            }
        }
        framed.push(Framed {
            status: status.as_u16(),
            end: pieces.fed() - buf.len(),
            body,
        });
        match framing {
            Framing::Switched => return (framed, Stop::Upgrade),
            Framing::Length { reuse: true, .. } | Framing::Chunked { reuse: true, .. } => {}
            _ => return (framed, Stop::Closed),
        }
    }
}

/// A byte string arriving in pieces: what the fuzz harnesses of both HTTP/1.1 sides feed their
/// parsers with, to check that framing does not depend on how bytes arrive.
pub struct Pieces<'a> {
    input: &'a [u8],
    step: usize,
    fed: usize,
}

impl<'a> Pieces<'a> {
    /// `input`, `step` bytes at a time (`0`: all at once).
    pub fn new(input: &'a [u8], step: usize) -> Pieces<'a> {
        let step = if step == 0 { input.len().max(1) } else { step };
        Pieces { input, step, fed: 0 }
    }

    /// Appends the next piece to `buf`; `false` once the input is all fed.
    pub fn feed(&mut self, buf: &mut BytesMut) -> bool {
        if self.fed >= self.input.len() {
            return false;
        }
        let n = self.step.min(self.input.len() - self.fed);
        buf.extend_from_slice(&self.input[self.fed..self.fed + n]);
        self.fed += n;
        true
    }

    /// How many bytes have been fed.
    pub fn fed(&self) -> usize {
        self.fed
    }
}
