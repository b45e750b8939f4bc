//! What the engine answers with: the response type every handler returns, and its plain-text
//! answers (refusals, diagnostics), shared by the API server ([`crate::http`]) and the bulk
//! diagnostics ([`crate::bulk`]).

use std::convert::Infallible;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

/// A response with a body of any kind (whole or streamed) that cannot fail.
pub type Reply = Response<BoxBody<Bytes, Infallible>>;

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> BoxBody<Bytes, Infallible> {
    Full::new(bytes.into()).boxed()
}

/// A `text/plain` answer: `text` and a newline.
pub fn plain(status: StatusCode, text: &str) -> Reply {
    let mut r = Response::new(full(format!("{text}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
