//! Writing a response back to the terminal. This module, not the service, frames the message
//! (length, chunked, or until close) and decides whether the connection carries another request,
//! so that nothing the engine sends can desynchronise the terminal's connection.

use std::future::poll_fn;
use std::io::{self, Write as _};
use std::pin::Pin;
use std::task::Poll;

use hyper::body::Body as HttpBody;
use hyper::header;
use hyper::{Response, StatusCode, Version};
use tokio::io::AsyncWriteExt;

use engine_proxy::upstream::ProxyBody;

use super::RECORD;
use crate::io::Io;
use engine_proxy::fields::has_token;

/// What the response must honour of its request.
pub(super) struct Answering {
    pub(super) method_is_head: bool,
    pub(super) version: Version,
    pub(super) keep_alive: bool,
}

/// Writes a response: its head and whatever of its body is ready in one write, then the rest as
/// it comes. Returns whether the connection can carry another request.
pub(super) async fn respond<S: Io>(
    io: &mut S,
    response: Response<ProxyBody>,
    to: Answering,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let mut keep_alive = to.keep_alive && !has_token(&parts.headers, header::CONNECTION, "close");
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let bodiless = to.method_is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let length = body.size_hint().exact();

    let mut out = engine_proxy::spare::Buffer::new();
    status_line(&mut out, status);
    let mut dated = false;
    for (name, value) in &parts.headers {
        let keep = match *name {
            // The upgrade's own Connection and Upgrade pass; otherwise this module frames the
            // message and says whether the connection stays.
            header::CONNECTION | header::UPGRADE => switching,
            header::TRANSFER_ENCODING => false,
            // A HEAD or 304 answer describes the body it does not carry.
            header::CONTENT_LENGTH => bodiless && status != StatusCode::NO_CONTENT,
            header::DATE => {
                dated = true;
                true
            }
            _ => name.as_str() != "keep-alive",
        };
        if keep {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    engine_proxy::spare::recycle(parts.headers);
    if !dated {
        date_line(&mut out);
    }
    let chunked = !bodiless && length.is_none() && to.version == Version::HTTP_11;
    if !bodiless {
        match length {
            Some(n) => {
                let _ = write!(out, "content-length: {n}\r\n");
            }
            None if chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            // An HTTP/1.0 client: the body ends when the connection does.
            None => keep_alive = false,
        }
    }
    if !keep_alive && !switching {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");

    if bodiless {
        drop(body);
        io.write_all(&out).await?;
        io.flush().await?;
        return Ok(keep_alive);
    }

    let mut sent = 0u64;
    loop {
        // Take what the body has ready without waiting; write once it has nothing more ready.
        let next = poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        let frame = match next {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !out.is_empty() {
                    io.write_all(&out).await?;
                    io.flush().await?;
                    out.clear();
                }
                poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        match frame {
            None => break,
            Some(Err(e)) => {
                // Too late for a status: cut the response short so the client sees it broke.
                tracing::debug!(error = %e, "response body failed mid-way");
                io.write_all(&out).await?;
                io.flush().await?;
                return Ok(false);
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else { continue };
                if data.is_empty() {
                    continue;
                }
                sent += data.len() as u64;
                if chunked {
                    let _ = write!(out, "{:x}\r\n", data.len());
                }
                if data.len() >= RECORD {
                    io.write_all(&out).await?;
                    out.clear();
                    io.write_all(&data).await?;
                } else {
                    out.extend_from_slice(&data);
                }
                if chunked {
                    out.extend_from_slice(b"\r\n");
                }
                if out.len() >= RECORD {
                    io.write_all(&out).await?;
                    out.clear();
                }
            }
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    drop(body);
    io.write_all(&out).await?;
    io.flush().await?;
    // A body that disagreed with its own length has left the framing broken.
    Ok(keep_alive && length.is_none_or(|n| n == sent))
}

pub(super) fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `date: …` (RFC 9110 §6.6.1: an origin's answers carry one; the gateway's own do too),
/// formatted once a second per worker thread.
pub(super) fn date_line(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    let now = time::OffsetDateTime::now_utc();
    DATE.with_borrow_mut(|(second, line)| {
        if *second != now.unix_timestamp() {
            *second = now.unix_timestamp();
            let weekday = now.weekday().to_string();
            let month = now.month().to_string();
            *line = format!(
                "date: {}, {:02} {} {} {:02}:{:02}:{:02} GMT\r\n",
                &weekday[..3],
                now.day(),
                &month[..3],
                now.year(),
                now.hour(),
                now.minute(),
                now.second()
            );
        }
        out.extend_from_slice(line.as_bytes());
    });
}
