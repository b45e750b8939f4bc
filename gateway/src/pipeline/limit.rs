//! Stage 5, limit: what one request may make the gateway carry.
//!
//! A request whose declared length is over `limits.max_body_bytes` is refused before a byte of
//! its body is read; one without a declared length is counted as it streams and cut off at the
//! limit (the `forward` stage then tells the terminal why its call ended).

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use http_body_util::{BodyExt, Empty};
use hyper::body::Body as _;
use hyper::header;
use hyper::{Request, StatusCode};

use engine_proxy::upstream::ProxyBody;

use crate::http1;
use crate::pipeline::counted::Counted;
use crate::pipeline::reply::Refused;

/// The stage's setting.
pub struct Limit {
    pub max_body_bytes: u64,
}

/// A request within the limit, its body counted on the way.
pub struct Limited {
    pub request: Request<ProxyBody>,
    /// Body bytes received from the terminal so far; `None` for a request without a body.
    pub received: Option<Arc<AtomicU64>>,
    /// Set when the terminal's body broke (malformed chunks, a stall, a closed connection): what
    /// tells the terminal's fault from the engine's.
    pub body_failure: Option<Arc<OnceLock<String>>>,
    pub limit: u64,
}

impl Limit {
    pub fn apply(&self, req: Request<http1::Body>) -> Result<Limited, Refused> {
        let limit = self.max_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(n) = declared.filter(|n| *n > limit) {
            return Err(too_large(limit, format!("body of {n} bytes over the limit")));
        }
        let body_failure = req.body().failure();
        // Most calls (the reads) have no body: nothing to count, and the empty body is boxed
        // without an allocation (it has no size).
        if req.body().is_end_stream() {
            return Ok(Limited {
                request: req.map(|_| Empty::new().map_err(|e| match e {}).boxed()),
                received: None,
                body_failure,
                limit,
            });
        }
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let request = req.map(|b| Counted::limited(b, counter, limit).boxed());
        Ok(Limited {
            request,
            received: Some(received),
            body_failure,
            limit,
        })
    }
}

/// 413: a body the gateway will not carry, and why, for the audit log.
pub fn too_large(limit: u64, reason: String) -> Refused {
    Refused::text(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body larger than {limit} bytes"),
        reason,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::request;
    use std::sync::atomic::Ordering::Relaxed;

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_and_a_streamed_one_cut_off() {
        let limit = Limit { max_body_bytes: 8 };
        let declared = request(
            "POST",
            "/orca11/acceptmodv2",
            &[("content-length", "11")],
            "hello world",
        );
        let refused = limit.apply(declared).err().unwrap();
        assert_eq!(refused.response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(refused.reason, "body of 11 bytes over the limit");

        let within = limit
            .apply(request("POST", "/", &[("content-length", "5")], "hello"))
            .ok()
            .unwrap();
        let body = within.request.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            (&body[..], within.received.unwrap().load(Relaxed)),
            (&b"hello"[..], 5)
        );

        // No declared length (chunked): counted as it passes, and cut off past the limit.
        let streamed = limit
            .apply(request("POST", "/", &[], "hello world"))
            .ok()
            .unwrap();
        assert!(streamed.request.into_body().collect().await.is_err());
        assert_eq!(streamed.received.unwrap().load(Relaxed), 11);
    }
}
