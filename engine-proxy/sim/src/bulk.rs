//! `/sim/…`: engine-sim's own diagnostics for bulk transfer, not part of the engine API.
//!
//! The engine's calls carry small bodies, but a proxy must stream large ones without holding
//! them (print data, images). `POST /sim/upload` reads any amount and answers its length and
//! SHA-256; `GET /sim/download?bytes=N` sends N bytes of a fixed pattern (byte i is i mod 251).
//! Neither buffers, so the engine's memory does not grow with the size either.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::reply::{Reply, plain};

const CHUNK: usize = 64 * 1024;

pub async fn handle(what: &str, req: Request<Incoming>) -> Reply {
    match (req.method(), what) {
        (&Method::POST, "upload") => upload(req.into_body()).await,
        (&Method::GET, "download") => {
            let bytes = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("bytes=")))
                .and_then(|n| n.parse::<u64>().ok());
            match bytes {
                Some(n) => Response::new(Pattern { sent: 0, total: n }.boxed()),
                None => plain(StatusCode::BAD_REQUEST, "expected ?bytes=N"),
            }
        }
        (_, "upload" | "download") => plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => plain(
            StatusCode::NOT_FOUND,
            "no such diagnostic: /sim/upload or /sim/download",
        ),
    }
}

async fn upload(mut body: Incoming) -> Reply {
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    total += data.len() as u64;
                    digest.update(data);
                }
            }
            Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("broken request body: {e}")),
        }
    }
    let sha256: String = digest
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut r = Response::new(
        http_body_util::Full::new(Bytes::from(format!(
            "{{\"bytes\":{total},\"sha256\":\"{sha256}\"}}\n"
        )))
        .boxed(),
    );
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// N bytes of the pattern, produced chunk by chunk as the client reads.
struct Pattern {
    sent: u64,
    total: u64,
}

impl Body for Pattern {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let n = (self.total - self.sent).min(CHUNK as u64) as usize;
        if n == 0 {
            return Poll::Ready(None);
        }
        let start = self.sent;
        let chunk: Vec<u8> = (0..n as u64).map(|i| ((start + i) % 251) as u8).collect();
        self.sent += n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.total
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.total - self.sent)
    }
}
