//! The gateway's own answers (not the engine's), and what a stage hands back when it refuses a
//! request: the answer together with the reason the audit log records.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use engine_proxy::upstream::ProxyBody;

/// A finished answer from the gateway itself, never cached by the client.
pub fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(Full::new(body.into()).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A one-line plain-text answer.
pub fn text(status: StatusCode, message: &str) -> Response<ProxyBody> {
    reply(status, "text/plain; charset=utf-8", format!("{message}\n"))
}

/// A request a stage refused: what the terminal is told, and why, for the audit log. (The answer
/// is boxed: refusals are rare, and every stage's `Result` stays small on the common path.)
pub struct Refused {
    pub response: Box<Response<ProxyBody>>,
    /// The audit log's reason.
    pub reason: String,
    /// The person the request named, when a refusal knows it (a wrong password names its ID).
    pub user: Option<String>,
}

impl std::fmt::Debug for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refused")
            .field("status", &self.response.status())
            .field("reason", &self.reason)
            .field("user", &self.user)
            .finish()
    }
}

impl Refused {
    pub fn new(response: Response<ProxyBody>, reason: impl Into<String>) -> Refused {
        Refused {
            response: Box::new(response),
            reason: reason.into(),
            user: None,
        }
    }

    /// A plain-text refusal: `Kakehashi: {message}` to the terminal, `reason` to the log.
    pub fn text(status: StatusCode, message: &str, reason: impl Into<String>) -> Refused {
        Refused::new(text(status, &format!("Kakehashi: {message}")), reason)
    }
}

/// 429 with the retry time, in the header and in words: an ID or terminal locked out after
/// repeated failures.
pub fn locked_out(secs: u64) -> Response<ProxyBody> {
    let until = time::OffsetDateTime::now_utc() + time::Duration::seconds(secs as i64);
    let until = until
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut r = text(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("Kakehashi: too many failed sign-ins; try again after {until} (in {secs} s)"),
    );
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}
