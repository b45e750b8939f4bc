//! Stage 3, authenticate: the person at the terminal, by the login page's session cookie
//! (browsers) or HTTP Basic (API clients), verified on the gateway itself (`crate::person`).
//!
//! A refused person gets what their client can act on: a Basic challenge for an API client, the
//! login page for a browser that asked for a page, the retry time when locked out.

use std::sync::Arc;

use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use engine_proxy::upstream::ProxyBody;

use crate::doors::identity::Terminal;
use crate::h1;
use crate::metrics::Metrics;
use crate::person::{Denied, Memo, People, Person};
use crate::pipeline::pages;
use crate::pipeline::reply::{Refused, locked_out, text};

/// What the stage consults: the people, and the counters of failed sign-ins.
pub struct Authenticate {
    pub people: Arc<People>,
    pub metrics: Arc<Metrics>,
}

impl Authenticate {
    /// The person of this request; `memo` remembers the last one verified on this connection.
    pub async fn person(
        &self,
        req: &Request<h1::Body>,
        terminal: &Terminal,
        memo: &Memo,
    ) -> Result<Person, Refused> {
        let people = &self.people;
        if !people.required() {
            return Ok(people.anonymous());
        }
        if let Some(token) = pages::session_cookie(req.headers())
            && let Some(person) = people.session(token, terminal)
        {
            return Ok(person);
        }
        let verdict = people
            .basic(req.headers().get(header::AUTHORIZATION), terminal, memo)
            .await;
        verdict.map_err(|denied| {
            match denied {
                Denied::WrongPassword { .. } => Metrics::inc(&self.metrics.auth_failures_total),
                Denied::LockedOut { .. } => Metrics::inc(&self.metrics.lockouts_total),
                _ => {}
            }
            Refused {
                user: denied.user().map(str::to_owned),
                ..Refused::new(refusal(req, &denied), denied.reason())
            }
        })
    }
}

/// The answer to a refused person.
fn refusal(req: &Request<h1::Body>, denied: &Denied) -> Response<ProxyBody> {
    match denied {
        Denied::NoCredentials if pages::wants_page(req) => pages::redirect_to_login(req.uri()),
        Denied::NoCredentials | Denied::WrongPassword { .. } => {
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "Kakehashi: ID and password required, or wrong",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Kakehashi\", charset=\"UTF-8\""),
            );
            r
        }
        Denied::Malformed(why) => text(StatusCode::BAD_REQUEST, &format!("Kakehashi: {why}")),
        Denied::AccountLocked { .. } => text(
            StatusCode::FORBIDDEN,
            "Kakehashi: this account is locked; ask the clinic's administrator to unlock it",
        ),
        Denied::LockedOut { retry_after, .. } => locked_out(retry_after.as_secs()),
        Denied::Unavailable(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "Kakehashi: sign-in is unavailable right now",
        ),
    }
}
