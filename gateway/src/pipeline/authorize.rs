//! Stage 4, authorize: what this terminal and this person may call.
//!
//! A call is allowed when the scopes of the terminal (the inventory's, as of the connection's
//! last check) and of the person (theirs, as of their sign-in) both hold the scope the engine API
//! rules give the call (`engine_proxy::rules`): `client`, `reference` or `write`. The rules match
//! the path, the query's `class` and, only for the calls whose function depends on it, the body's
//! `Request_Number`; only then is the body read here (bounded by `failover.max_entry_bytes`, as
//! the forward stage would bound it) and handed on whole. A call no rule names needs `write` when
//! `[authorize] unknown_calls = "write"`, and is refused to everyone by default.
//!
//! The rule that allowed the call goes on with it: the forward stage routes by that very rule, so
//! what was authorized as a read is never journaled as a write or the other way round.
//!
//! Before any of this, the path must be canonical ([`Authorize::canonical`]): no dot-segments, no
//! empty segments, nothing percent-encoded that a server behind could decode into a separator.
//! Otherwise a rule could match one path while the engine, or a front end normalizing before it,
//! executes another.

use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper::{Request, StatusCode};

use engine_proxy::boxed::boxed;
use engine_proxy::failover::{Failover, codes};
use engine_proxy::format::{self, Format};
use engine_proxy::rules::{Call, Rule};
use engine_proxy::scope::{Scope, Scopes};

use crate::auth::Person;
use crate::config::UnknownCalls;
use crate::http1;
use crate::metrics::Metrics;
use crate::pipeline::limit::too_large;
use crate::pipeline::reply::{Refused, reply};

/// The stage: the rules table (with the failover settings it lives in) and the policy for calls
/// it does not know.
pub struct Authorize {
    pub failover: Arc<Failover>,
    pub unknown_calls: UnknownCalls,
    pub metrics: Arc<Metrics>,
}

/// An allowed call, and the rule that allowed it (`None`: an unknown call, allowed by
/// `unknown_calls = "write"`).
pub struct Authorized<'r> {
    pub request: Request<http1::Body>,
    pub rule: Option<&'r Rule>,
}

impl Authorize {
    /// Refuses (400) a path a server behind the gateway could read differently from the rules:
    /// `.` or `..` segments, empty segments (`//`), a backslash, and `/`, `.`, `\` or NUL
    /// percent-encoded.
    pub fn canonical(&self, req: &Request<http1::Body>) -> Result<(), Refused> {
        let path = req.uri().path();
        let why = if path.contains('\\') {
            Some("a backslash")
        } else if path.contains("//") {
            Some("an empty segment (//)")
        } else if path.split('/').any(|s| s == "." || s == "..") {
            Some("a dot-segment (. or ..)")
        } else if encoded_separator(path) {
            Some("a percent-encoded /, ., \\ or NUL")
        } else {
            None
        };
        match why {
            None => Ok(()),
            Some(why) => {
                Metrics::inc(&self.metrics.requests_denied_noncanonical_total);
                Err(Refused::text(
                    StatusCode::BAD_REQUEST,
                    &format!("the path is not canonical: it has {why}"),
                    format!("refused: a path that is not canonical ({why})"),
                ))
            }
        }
    }

    /// Whether the call is within what `terminal` and `person` may both call.
    pub async fn check<'r>(
        &'r self,
        req: Request<http1::Body>,
        terminal: Scopes,
        person: &Person,
    ) -> Result<Authorized<'r>, Refused> {
        let rules = &self.failover.rules;
        let (req, rule) = match rules.head_rule(&Call::new(req.uri().path(), req.uri().query())) {
            Some(first) if first.request_number.is_some() => {
                // Boxed: reading a body for its number is the exception among calls.
                let (req, number) = boxed(|| self.request_number(req)).await?;
                let call = Call {
                    request_number: number.as_deref(),
                    ..Call::new(req.uri().path(), req.uri().query())
                };
                let rule = rules.classify(&call);
                (req, rule)
            }
            first => (req, first),
        };
        let needed = match (rule, self.unknown_calls) {
            (Some(rule), _) => rule.scope,
            (None, UnknownCalls::Write) => Scope::Write,
            (None, UnknownCalls::Deny) => {
                Metrics::inc(&self.metrics.requests_denied_unknown_call_total);
                return Err(self.refuse(
                    &req,
                    "the gateway's engine API rules do not know this call, so nobody may make it \
                     ([[failover.route]] lists it, [authorize] unknown_calls = \"write\" allows \
                     every unknown call to the write scope)"
                        .into(),
                    "refused: a call the engine API rules do not know".into(),
                ));
            }
        };
        if let Some(who) = lacking(needed, terminal, person.scopes) {
            Metrics::inc(self.denied_counter(needed));
            return Err(self.refuse(
                &req,
                format!("this call needs the {needed} scope, and {who}"),
                format!(
                    "refused: the call needs scope {needed}; terminal has {terminal}, person has {}",
                    person.scopes
                ),
            ));
        }
        Metrics::inc(self.allowed_counter(needed));
        Ok(Authorized { request: req, rule })
    }

    /// Reads the body (up to `failover.max_entry_bytes`) for its `Request_Number`, and puts it
    /// back whole.
    async fn request_number(
        &self,
        req: Request<http1::Body>,
    ) -> Result<(Request<http1::Body>, Option<String>), Refused> {
        let limit = self.failover.max_entry_bytes;
        let (parts, mut body) = req.into_parts();
        let mut whole = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                Refused::text(
                    StatusCode::BAD_REQUEST,
                    &format!("the request body: {e}"),
                    format!("request body: {e}"),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                if whole.len() + data.len() > limit {
                    return Err(too_large(
                        limit as u64,
                        format!(
                            "a body over failover.max_entry_bytes ({limit}) where the call depends on it"
                        ),
                    ));
                }
                whole.extend_from_slice(&data);
            }
        }
        let number = format::request_number(Format::from_query(parts.uri.query()), &whole);
        let req = Request::from_parts(parts, http1::Body::full(Bytes::from(whole)));
        Ok((req, number))
    }

    /// 403 in the engine's own shape (`Api_Result` and a message), so a client of the engine API
    /// shows the reason where it shows the engine's errors.
    fn refuse(&self, req: &Request<http1::Body>, message: String, reason: String) -> Refused {
        let format = Format::from_query(req.uri().query());
        let message = format!("Kakehashi: {message}");
        let body = format::engine_answer(format, req.uri().path(), b"", codes::OUT_OF_SCOPE, &message);
        Refused::new(reply(StatusCode::FORBIDDEN, format.content_type(), body), reason)
    }

    fn allowed_counter(&self, scope: Scope) -> &std::sync::atomic::AtomicU64 {
        match scope {
            Scope::Client => &self.metrics.requests_scope_client_total,
            Scope::Reference => &self.metrics.requests_scope_reference_total,
            Scope::Write => &self.metrics.requests_scope_write_total,
        }
    }

    fn denied_counter(&self, scope: Scope) -> &std::sync::atomic::AtomicU64 {
        match scope {
            Scope::Client => &self.metrics.requests_denied_scope_client_total,
            Scope::Reference => &self.metrics.requests_denied_scope_reference_total,
            Scope::Write => &self.metrics.requests_denied_scope_write_total,
        }
    }
}

/// The one rule of scopes, for calls, streams and journaled writes alike: `None` when terminal
/// and person both hold `needed`, else which of them lacks it, in words.
pub fn lacking(needed: Scope, terminal: Scopes, person: Scopes) -> Option<&'static str> {
    match (terminal.contains(needed), person.contains(needed)) {
        (true, true) => None,
        (false, false) => Some("neither this terminal nor this person has it"),
        (false, true) => Some("this terminal does not have it"),
        (true, false) => Some("this person does not have it"),
    }
}

/// `%2F`, `%2E`, `%5C` or `%00`, in either case.
fn encoded_separator(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_uppercase()),
                (b'2', b'F') | (b'2', b'E') | (b'5', b'C') | (b'0', b'0')
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Clinic, request, text};

    fn stage(unknown_calls: UnknownCalls) -> Authorize {
        Authorize {
            failover: Arc::new(crate::testing::failover(Vec::new())),
            unknown_calls,
            metrics: Arc::new(Metrics::default()),
        }
    }

    fn person(scopes: &str) -> Person {
        let c = Clinic::new(&[], &[]);
        Person {
            scopes: scopes.parse().unwrap(),
            ..c.people.anonymous()
        }
    }

    #[test]
    fn paths_that_are_not_canonical_are_refused_before_any_rule() {
        let a = stage(UnknownCalls::Deny);
        for path in [
            "/api01rv2/../orca11/acceptmodv2",
            "/api01rv2/%2e%2e/orca11/acceptmodv2",
            "/api01rv2/%2E./orca11/acceptmodv2",
            "/api01rv2%2forca11/acceptmodv2",
            "/api01rv2%2F..%2Forca11",
            "//orca11/acceptmodv2",
            "/api01rv2/./patientgetv2",
            "/api01rv2\\..\\orca11",
            "/api01rv2/%5c../orca11",
            "/api01rv2/patientgetv2%00",
        ] {
            let refused = a.canonical(&request("POST", path, &[], "")).unwrap_err();
            assert_eq!(refused.response.status(), StatusCode::BAD_REQUEST, "{path}");
        }
        for path in [
            "/api01rv2/patientgetv2",
            "/api/orca11/acceptmodv2",
            "/rpc/",
            "/a%20b",
        ] {
            assert!(a.canonical(&request("POST", path, &[], "")).is_ok(), "{path}");
        }
        assert_eq!(
            a.metrics
                .requests_denied_noncanonical_total
                .load(std::sync::atomic::Ordering::Relaxed),
            10
        );
    }

    #[tokio::test]
    async fn a_call_needs_its_scope_from_terminal_and_person_both() {
        let a = stage(UnknownCalls::Deny);
        let call = |method: &str, path: &str, body: &str| request(method, path, &[], body);
        let reader = person("reference");
        let all = person("all");
        let read = a
            .check(
                call("GET", "/api01rv2/patientgetv2?id=1", ""),
                Scopes::ALL,
                &reader,
            )
            .await;
        assert_eq!(read.ok().unwrap().rule.unwrap().path, "/api01rv2/*");

        let refused = a
            .check(
                call(
                    "POST",
                    "/orca11/acceptmodv2?class=01&format=json",
                    r#"{"acceptreq":{"Request_Number":"01"}}"#,
                ),
                Scopes::ALL,
                &reader,
            )
            .await
            .err()
            .unwrap();
        assert_eq!(refused.response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            refused.reason,
            "refused: the call needs scope write; terminal has client,reference,write, person has reference"
        );
        let body = text(*refused.response).await;
        assert!(
            body.contains(r#""acceptmodv2res""#) && body.contains(r#""Api_Result":"93""#),
            "{body}"
        );
        assert!(body.contains("this person does not have it"), "{body}");

        // The same call, its body asking for a read: allowed, and the body goes on whole.
        let read_body = r#"{"acceptreq":{"Request_Number":"00","Patient_ID":"1"}}"#;
        let allowed = a
            .check(
                call("POST", "/orca11/acceptmodv2?format=json", read_body),
                Scopes::ALL,
                &reader,
            )
            .await
            .ok()
            .unwrap();
        assert_eq!(allowed.rule.unwrap().request_number.as_deref(), Some("00"));
        let sent = allowed.request.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&sent[..], read_body.as_bytes());

        // In XML too.
        let xml = r#"<data><acceptreq type="record"><Request_Number type="string">00</Request_Number></acceptreq></data>"#;
        assert!(
            a.check(call("POST", "/orca11/acceptmodv2", xml), Scopes::ALL, &reader)
                .await
                .is_ok()
        );

        // The terminal's scopes bound everyone who signs in there.
        let kiosk: Scopes = "client".parse().unwrap();
        let refused = a
            .check(call("GET", "/api01rv2/patientgetv2?id=1", ""), kiosk, &all)
            .await
            .err()
            .unwrap();
        assert!(
            refused
                .reason
                .contains("needs scope reference; terminal has client")
        );
        assert!(a.check(call("POST", "/rpc/", "{}"), kiosk, &all).await.is_ok());
    }

    #[tokio::test]
    async fn unknown_calls_are_refused_unless_configured_for_write() {
        let deny = stage(UnknownCalls::Deny);
        let refused = deny
            .check(
                request("POST", "/sim/upload", &[], "x"),
                Scopes::ALL,
                &person("all"),
            )
            .await
            .err()
            .unwrap();
        assert_eq!(refused.reason, "refused: a call the engine API rules do not know");
        let write = stage(UnknownCalls::Write);
        assert!(
            write
                .check(
                    request("POST", "/sim/upload", &[], "x"),
                    Scopes::ALL,
                    &person("all")
                )
                .await
                .is_ok()
        );
        assert!(
            write
                .check(
                    request("POST", "/sim/upload", &[], "x"),
                    Scopes::ALL,
                    &person("reference")
                )
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_body_too_large_to_classify_is_refused() {
        let a = stage(UnknownCalls::Deny);
        let big = "x".repeat(a.failover.max_entry_bytes + 1);
        let refused = a
            .check(
                request("POST", "/orca11/acceptmodv2", &[], &big),
                Scopes::ALL,
                &person("all"),
            )
            .await
            .err()
            .unwrap();
        assert_eq!(refused.response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
