//! Stage 3, authenticate: the person at the terminal, by the login page's session cookie
//! (browsers) or HTTP Basic (API clients), verified on the gateway itself (`crate::auth`).
//!
//! A refused person gets what their client can act on: a Basic challenge for an API client, the
//! login page for a browser that asked for a page, the retry time when locked out.

use std::sync::Arc;

use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use engine_proxy::upstream::ProxyBody;

use crate::auth::{Denied, Memo, People, Person};
use crate::doors::identity::Terminal;
use crate::http1;
use crate::metrics::Metrics;
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
        req: &Request<http1::Body>,
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
fn refusal(req: &Request<http1::Body>, denied: &Denied) -> Response<ProxyBody> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Clinic, PASSWORD, basic, request};
    use std::sync::atomic::Ordering::Relaxed;

    fn stage(c: &Clinic) -> Authenticate {
        Authenticate {
            people: c.people.clone(),
            metrics: Arc::new(Metrics::default()),
        }
    }

    #[tokio::test]
    async fn an_api_client_is_challenged_and_a_browser_sent_to_the_login_page() {
        let c = Clinic::new(&[("reception-1", true)], &["nurse"]);
        let (stage, terminal) = (stage(&c), c.admitted("reception-1").terminal);
        let memo = Memo::default();
        let api = request("POST", "/api01rv2/patientlst2v2?class=01", &[], "");
        let refused = stage.person(&api, &terminal, &memo).await.unwrap_err();
        assert_eq!(refused.response.status(), StatusCode::UNAUTHORIZED);
        assert!(refused.response.headers().contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(refused.reason, "no ID and password");
        let page = request(
            "GET",
            "/api01rv2/patientgetv2?id=1",
            &[("accept", "text/html")],
            "",
        );
        let refused = stage.person(&page, &terminal, &memo).await.unwrap_err();
        assert_eq!(refused.response.status(), StatusCode::SEE_OTHER);
        let location = refused.response.headers().get(header::LOCATION).unwrap();
        assert_eq!(
            location,
            "/kakehashi/login?next=%2Fapi01rv2%2Fpatientgetv2%3Fid%3D1"
        );
    }

    #[tokio::test]
    async fn a_wrong_password_names_the_user_and_counts_and_the_right_one_passes() {
        let c = Clinic::new(&[("reception-1", true)], &["nurse"]);
        let (stage, terminal) = (stage(&c), c.admitted("reception-1").terminal);
        let memo = Memo::default();
        let wrong = basic("nurse", "not the password");
        let refused = stage
            .person(
                &request("GET", "/", &[("authorization", &wrong)], ""),
                &terminal,
                &memo,
            )
            .await
            .unwrap_err();
        assert_eq!(refused.response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            (refused.reason.as_str(), refused.user.as_deref()),
            ("wrong password", Some("nurse"))
        );
        assert_eq!(stage.metrics.auth_failures_total.load(Relaxed), 1);
        let malformed = stage
            .person(
                &request("GET", "/", &[("authorization", "Bearer x")], ""),
                &terminal,
                &memo,
            )
            .await
            .unwrap_err();
        assert_eq!(malformed.response.status(), StatusCode::BAD_REQUEST);
        let right = basic("nurse", PASSWORD);
        let person = stage
            .person(
                &request("GET", "/", &[("authorization", &right)], ""),
                &terminal,
                &memo,
            )
            .await
            .unwrap();
        assert_eq!(person.user.as_deref(), Some("nurse"));
    }

    #[tokio::test]
    async fn a_session_cookie_is_good_only_on_the_terminal_that_signed_in() {
        let c = Clinic::new(&[("reception-1", true), ("reception-2", true)], &["nurse"]);
        let stage = stage(&c);
        let (one, two) = (
            c.admitted("reception-1").terminal,
            c.admitted("reception-2").terminal,
        );
        let person = c.people.verify("nurse", PASSWORD.as_bytes(), &one).await.unwrap();
        let token = c.people.open_session(&person, &one);
        let cookie = format!("theme=dark; kakehashi_session={token}");
        let req = request("GET", "/", &[("cookie", &cookie)], "");
        let signed_in = stage.person(&req, &one, &Memo::default()).await.unwrap();
        assert_eq!(signed_in.user.as_deref(), Some("nurse"));
        assert!(
            stage.person(&req, &two, &Memo::default()).await.is_err(),
            "a copied cookie"
        );
    }
}
