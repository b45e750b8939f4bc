//! Stage 6, forward: the call goes to the cloud engine, or to the local engine in its place
//! (`engine_proxy::failover`), streaming both ways where the route does not need the whole body.
//!
//! The gateway's own session cookie never reaches the engine, and the engine gets the engine
//! credential of the person (or the clinic), never what the terminal sent. What comes back is
//! told apart here: the terminal's body breaking is the terminal's fault (400), a body past the
//! limit too (413); the engine not answering, or refusing the gateway's own credential, is the
//! gateway's to answer for (502), and is recorded as an allowed access that failed.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use hyper::{Response, StatusCode};

use engine_proxy::failover::{Caller, RouteError, Routed, Router, Served};
use engine_proxy::health::Mode;
use engine_proxy::rules::Rule;
use engine_proxy::upstream::ProxyBody;

use crate::audit::{Decision, Text};
use crate::auth::Person;
use crate::doors::identity::Terminal;
use crate::http1;
use crate::metrics::Metrics;
use crate::pipeline::limit::{Limited, too_large};
use crate::pipeline::pages;
use crate::pipeline::reply::{Refused, text};

/// What the stage uses: this worker's router, the counters, and what the audit log calls the
/// engines.
pub struct Forward {
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    /// Each cloud path's engine as the audit log names it ([`crate::config::Upstream::labels`]),
    /// made once.
    paths: Vec<Arc<str>>,
    /// The on-premises engine's URL.
    onprem: Option<Arc<str>>,
}

/// What came of a call that was allowed.
pub enum Forwarded {
    /// An answer whose body goes to the terminal; its audit entry is complete when it ends.
    Answer {
        response: Response<ProxyBody>,
        decision: Decision,
        reason: Text,
        /// The hybrid state to report when the local engine answered (`emergency` even before
        /// the prober has confirmed it).
        local: Option<Mode>,
        /// Who answered, for the audit log, when not the cloud.
        upstream: Option<Text>,
    },
    /// The engine side failed, and the gateway answers for it: recorded at once.
    Failed {
        response: Response<ProxyBody>,
        reason: Text,
    },
    /// Both sides switched protocols (the push WebSocket): bytes are relayed until either closes.
    Upgraded {
        response: Response<ProxyBody>,
        client: http1::OnUpgrade,
        engine: engine_proxy::client::Upgraded,
    },
}

impl Forward {
    /// `labels`: each cloud path's engine as the audit log names it, in the router's order (at
    /// least one).
    pub fn new(
        router: Arc<Router>,
        metrics: Arc<Metrics>,
        mut labels: Vec<Arc<str>>,
        onprem: Option<&str>,
    ) -> Forward {
        if labels.is_empty() {
            labels.push(router.paths[0].authority().clone());
        }
        Forward {
            router,
            metrics,
            paths: labels,
            onprem: onprem.map(Arc::from),
        }
    }

    /// The engine a call is headed for, for the audit log (the first path's).
    pub fn upstream(&self) -> &Arc<str> {
        &self.paths[0]
    }

    /// The path that answered, for the audit log when there are several (with one, the entry
    /// keeps [`Forward::upstream`]).
    fn path(&self, path: usize) -> Option<Text> {
        match self.paths.len() {
            0 | 1 => None,
            _ => self.paths.get(path).map(Text::from),
        }
    }

    /// `rule`: the engine API rule the authorize stage allowed the call by.
    pub async fn call(
        &self,
        limited: Limited,
        person: &Person,
        terminal: &Terminal,
        rule: Option<&Rule>,
    ) -> Result<Forwarded, Refused> {
        let Limited {
            mut request,
            received,
            body_failure,
            limit,
        } = limited;
        pages::strip_session_cookie(request.headers_mut());
        let upgrade = request.extensions_mut().remove::<http1::OnUpgrade>();
        let caller = Caller {
            terminal: Some(&terminal.name),
            user: person.user.as_deref(),
            authorization: person.upstream.clone(),
        };
        match self.router.route(request, &caller, rule).await {
            Ok(routed) => Ok(self.answered(routed, person, upgrade)),
            Err(e) => self.failed(
                e,
                received.map_or(0, |r| r.load(Relaxed)),
                limit,
                body_failure.as_ref().and_then(|f| f.get()),
            ),
        }
    }

    /// What a call the router could not answer becomes: the terminal's fault (its body), or the
    /// engine's, which the gateway answers for. `received`: the body bytes read before it ended.
    fn failed(
        &self,
        e: RouteError,
        received: u64,
        limit: u64,
        body_failure: Option<&String>,
    ) -> Result<Forwarded, Refused> {
        match e {
            RouteError::Body(_) | RouteError::Upstream(_) if received > limit => {
                // A body without a declared length ran past the limit: the counter cut it off,
                // which ended the call. That is the terminal's doing, not the engine's.
                Err(too_large(
                    limit,
                    format!("streamed body over the limit of {limit} bytes"),
                ))
            }
            RouteError::TooLarge(n) => Err(too_large(
                n as u64,
                format!("a read or write body over failover.max_entry_bytes ({n})"),
            )),
            RouteError::Body(_) | RouteError::Upstream(_) if let Some(why) = body_failure => {
                // The terminal's body broke (malformed chunks, a stall, a closed connection).
                Err(Refused::text(
                    StatusCode::BAD_REQUEST,
                    why,
                    format!("request body: {why}"),
                ))
            }
            RouteError::Body(why) => Err(Refused::text(StatusCode::BAD_REQUEST, &why, why.clone())),
            RouteError::Upstream(e) => {
                Metrics::inc(&self.metrics.upstream_errors_total);
                Ok(Forwarded::Failed {
                    response: text(
                        StatusCode::BAD_GATEWAY,
                        &format!("Kakehashi: the engine did not answer: {e}"),
                    ),
                    reason: format!("allowed; engine unreachable: {e}").into(),
                })
            }
        }
    }

    /// What an answer becomes, by who gave it.
    fn answered(&self, routed: Routed, person: &Person, upgrade: Option<http1::OnUpgrade>) -> Forwarded {
        let mut response = routed.response;
        self.count(&routed.served);
        if matches!(routed.served, Served::Cloud(_)) && response.status().is_server_error() {
            Metrics::inc(&self.metrics.upstream_responses_5xx_total);
        }
        if matches!(routed.served, Served::Cloud(_) | Served::OnPrem(_))
            && response.status() == StatusCode::UNAUTHORIZED
        {
            // The person was verified here; the engine refusing the gateway's own credential is
            // a configuration fault, not the terminal's. Passing the 401 on would make the
            // terminal ask its user for a password that cannot help.
            let whose = match &person.user {
                Some(user) => {
                    format!("for user {user:?} (kakehashi user set-upstream) or the clinic (upstream.user)")
                }
                None => "of the clinic (upstream.user, upstream.password_file)".into(),
            };
            return Forwarded::Failed {
                response: text(
                    StatusCode::BAD_GATEWAY,
                    "Kakehashi: the engine refused the gateway's credential; ask the clinic's administrator",
                ),
                reason: format!("allowed; the engine refused the upstream credential {whose}").into(),
            };
        }
        if let (Some(client), StatusCode::SWITCHING_PROTOCOLS) = (upgrade, response.status()) {
            let switched = response
                .extensions_mut()
                .remove::<engine_proxy::client::Switched>();
            return match switched.and_then(|s| s.take()) {
                Some(engine) => Forwarded::Upgraded {
                    response,
                    client,
                    engine,
                },
                None => Forwarded::Failed {
                    response: text(
                        StatusCode::BAD_GATEWAY,
                        "Kakehashi: the engine switched protocols without a connection",
                    ),
                    reason: "allowed; a 101 answer without the engine's connection".into(),
                },
            };
        }
        let local = match &routed.served {
            Served::Cloud(_) => None,
            _ => Some(match self.router.failover.health.mode() {
                Mode::Normal => Mode::Emergency,
                other => other,
            }),
        };
        let upstream = match &routed.served {
            Served::Cloud(path) => self.path(*path),
            Served::OnPrem(_) => Some(self.onprem.as_ref().map_or(Text::Static(""), Text::from)),
            Served::Cache { .. } => Some("local:cache".into()),
            Served::Journaled { .. } => Some("local:journal".into()),
            Served::Refused(_) => Some("local".into()),
        };
        let (decision, reason) = match &routed.served {
            Served::Cloud(_) => (Decision::Allow, "allowed".into()),
            // The person and terminal were allowed; the call was not, for want of the cloud.
            Served::Refused(why) => (Decision::Deny, format!("refused offline: {why}").into()),
            served => (
                Decision::Allow,
                format!("allowed; answered by {}", served.describe()).into(),
            ),
        };
        Forwarded::Answer {
            response,
            decision,
            reason,
            local,
            upstream,
        }
    }

    fn count(&self, served: &Served) {
        let m = &self.metrics;
        match served {
            Served::Cloud(_) => {}
            Served::OnPrem(_) => Metrics::inc(&m.onprem_answers_total),
            Served::Cache { .. } => Metrics::inc(&m.cache_answers_total),
            Served::Journaled { .. } => Metrics::inc(&m.journal_appends_total),
            Served::Refused(_) => Metrics::inc(&m.refused_offline_total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::reply;
    use engine_proxy::upstream::{Upstream, UpstreamError};
    use std::time::Duration;

    fn forward() -> Forward {
        let tls = rustls::ClientConfig::builder_with_provider(engine_proxy::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let failover = crate::testing::failover(Vec::new());
        let router = Router {
            paths: vec![Upstream::new("https://engine.test", tls, Duration::from_secs(1)).unwrap()],
            onprem: None,
            failover: Arc::new(failover),
        };
        Forward::new(
            Arc::new(router),
            Arc::new(Metrics::default()),
            vec!["https://engine.test".into()],
            Some("http://onprem.test:8000"),
        )
    }

    fn nurse() -> Person {
        Person {
            user: Some("nurse".into()),
            upstream: hyper::header::HeaderValue::from_static("Basic eA=="),
            scopes: engine_proxy::scope::Scopes::ALL,
        }
    }

    #[test]
    fn the_terminal_is_blamed_for_its_body_and_the_gateway_answers_for_the_engine() {
        let f = forward();
        let status = |r: Result<Forwarded, Refused>| match r {
            Ok(Forwarded::Failed { response, reason }) => (response.status(), reason.to_string()),
            Ok(_) => panic!("expected the gateway's own answer"),
            Err(refused) => (refused.response.status(), refused.reason),
        };
        let unreachable = || RouteError::Upstream(UpstreamError::Connect("connection refused".into()));
        assert_eq!(
            status(f.failed(unreachable(), 9, 8, None)),
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                "streamed body over the limit of 8 bytes".into()
            )
        );
        assert_eq!(
            status(f.failed(RouteError::TooLarge(4), 0, 8, None)),
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                "a read or write body over failover.max_entry_bytes (4)".into()
            )
        );
        let broke = "malformed chunk size".to_owned();
        assert_eq!(
            status(f.failed(unreachable(), 3, 8, Some(&broke))),
            (
                StatusCode::BAD_REQUEST,
                "request body: malformed chunk size".into()
            )
        );
        assert_eq!(
            status(f.failed(unreachable(), 3, 8, None)),
            (
                StatusCode::BAD_GATEWAY,
                "allowed; engine unreachable: cannot reach the engine: connection refused".into()
            )
        );
        assert_eq!(f.metrics.upstream_errors_total.load(Relaxed), 1);
    }

    #[test]
    fn answers_say_who_gave_them() {
        let f = forward();
        let routed = |status, served| Routed {
            response: reply::text(status, "x"),
            served,
        };
        let cached = Served::Cache {
            age: 5,
            why: "the cloud is down".into(),
        };
        match f.answered(routed(StatusCode::OK, cached), &nurse(), None) {
            Forwarded::Answer {
                decision,
                reason,
                local,
                upstream,
                ..
            } => {
                assert_eq!(decision, Decision::Allow);
                assert_eq!(
                    &*reason,
                    "allowed; answered by the cache, an answer 5 s old (the cloud is down)"
                );
                assert_eq!(local, Some(Mode::Emergency), "even before the prober says so");
                assert_eq!(upstream.as_deref(), Some("local:cache"));
            }
            _ => panic!("an answer"),
        }
        match f.answered(
            routed(StatusCode::OK, Served::Refused("not cached".into())),
            &nurse(),
            None,
        ) {
            Forwarded::Answer { decision, reason, .. } => {
                assert_eq!(
                    (decision, &*reason),
                    (Decision::Deny, "refused offline: not cached")
                )
            }
            _ => panic!("an answer"),
        }
        match f.answered(routed(StatusCode::UNAUTHORIZED, Served::Cloud(0)), &nurse(), None) {
            Forwarded::Failed { response, reason } => {
                assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
                assert!(reason.contains("for user \"nurse\""), "{reason}");
            }
            _ => panic!("the engine refusing the gateway's credential is the gateway's to answer"),
        }
        assert_eq!(f.metrics.cache_answers_total.load(Relaxed), 1);
        assert_eq!(f.metrics.refused_offline_total.load(Relaxed), 1);
    }
}
