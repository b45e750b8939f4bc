//! Stage 7, respond and audit: the answer goes out saying the hybrid state, and every decision
//! becomes one audit entry, written when the answer's body has been sent so that it carries the
//! status, the bytes and the duration.
//!
//! `X-Hybridmode` is set here and only here: the engine's own value on a cloud answer passes
//! through; an answer from the local engine says `emergency` (or `recovery`) even before the
//! prober has confirmed it; the gateway's own answers say the current state.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use http_body_util::{BodyExt, Empty};
use hyper::Response;

use engine_proxy::fields::HYBRID_MODE;
use engine_proxy::health::Health;
use engine_proxy::upstream::ProxyBody;

use crate::audit::{AuditLog, Decision, Entry, Text};
use crate::doors::live::Live;
use crate::metrics::Metrics;
use crate::pipeline::counted::Counted;
use crate::pipeline::forward::Forwarded;
use crate::pipeline::pages::Page;
use crate::pipeline::relay::{self, Upgrading};
use crate::pipeline::reply::Refused;

/// What the stages made of a request.
pub enum Outcome {
    /// A stage refused it.
    Refused(Refused),
    /// The gateway's own page answered it.
    Page(Page),
    /// It went to the engine (or the local engine in its place).
    Forwarded(Forwarded),
}

/// What the stage uses: the audit log and counters, the hybrid state, and the snapshot that a
/// relayed stream is checked against on every reload.
pub struct Respond {
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub live: Arc<Live>,
}

impl Respond {
    /// The response for `outcome`, with `entry` recorded now or when the body has gone out.
    /// `received` counts the request body's bytes, when one was read. An upgrade's relay keeps
    /// `connection`, which lives on in it.
    pub fn finish<C: Upgrading>(
        &self,
        outcome: Outcome,
        mut entry: Entry,
        started: Instant,
        received: Option<Arc<AtomicU64>>,
        connection: &Arc<C>,
    ) -> Response<ProxyBody> {
        let bytes_in = |received: &Option<Arc<AtomicU64>>| received.as_ref().map_or(0, |r| r.load(Relaxed));
        let (mut response, local) = match outcome {
            Outcome::Refused(refused) => {
                entry.user = refused.user.map(Text::from).or(entry.user);
                entry.bytes_in = bytes_in(&received);
                self.record(entry, started, Decision::Deny, refused.reason, &refused.response);
                (*refused.response, None)
            }
            Outcome::Page(page) => {
                if let Some(recorded) = page.recorded {
                    entry.user = recorded.user.map(Text::from);
                    self.record(entry, started, recorded.decision, recorded.reason, &page.response);
                }
                (page.response, None)
            }
            Outcome::Forwarded(Forwarded::Failed { response, reason }) => {
                entry.bytes_in = bytes_in(&received);
                self.record(entry, started, Decision::Allow, reason, &response);
                (response, None)
            }
            Outcome::Forwarded(Forwarded::Upgraded {
                response,
                client,
                engine,
            }) => {
                entry.decision = Decision::Allow;
                entry.status = Some(response.status().as_u16());
                entry.reason = "allowed; protocol upgrade (WebSocket) to the engine".into();
                tokio::spawn(relay::upgraded(
                    connection.clone(),
                    self.live.clone(),
                    self.audit.clone(),
                    (client, engine),
                    entry,
                    started,
                ));
                (
                    response.map(|_| Empty::new().map_err(|e| match e {}).boxed()),
                    None,
                )
            }
            Outcome::Forwarded(Forwarded::Answer {
                response,
                decision,
                reason,
                local,
                upstream,
            }) => {
                entry.decision = decision;
                entry.reason = reason;
                entry.status = Some(response.status().as_u16());
                if upstream.is_some() {
                    entry.upstream = upstream;
                }
                let (audit, metrics) = (self.audit.clone(), self.metrics.clone());
                let response = response.map(move |body| {
                    Counted::finished(body, move |sent| {
                        entry.bytes_in = bytes_in(&received);
                        entry.bytes_out = sent;
                        Metrics::add(&metrics.bytes_from_terminals_total, entry.bytes_in);
                        Metrics::add(&metrics.bytes_to_terminals_total, sent);
                        entry.duration_ms = started.elapsed().as_millis() as u64;
                        audit.record_soon(entry);
                    })
                    .boxed()
                });
                (response, local)
            }
        };
        match local {
            Some(mode) => {
                response.headers_mut().insert(HYBRID_MODE, mode.header());
            }
            None if !response.headers().contains_key(HYBRID_MODE) => {
                response
                    .headers_mut()
                    .insert(HYBRID_MODE, self.health.mode().header());
            }
            None => {}
        }
        response
    }

    /// Records a decision made before any body went out; a refusal is counted too.
    fn record(
        &self,
        mut entry: Entry,
        started: Instant,
        decision: Decision,
        reason: impl Into<Text>,
        response: &Response<ProxyBody>,
    ) {
        if decision == Decision::Deny {
            Metrics::inc(&self.metrics.requests_denied_total);
        }
        entry.decision = decision;
        entry.reason = reason.into();
        entry.status = Some(response.status().as_u16());
        entry.duration_ms = started.elapsed().as_millis() as u64;
        self.audit.record_soon(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doors::identity::Proof;
    use crate::pipeline::reply::{self, Refused};
    use crate::testing::Clinic;
    use hyper::StatusCode;
    use hyper::header::HeaderValue;

    fn respond(c: &Clinic) -> Respond {
        Respond {
            audit: c.audit.clone(),
            metrics: Arc::new(Metrics::default()),
            health: crate::testing::health(),
            live: c.live.clone(),
        }
    }

    /// The connection of an answer that is no upgrade.
    struct On(Proof, crate::shutdown::Shutdown);

    impl Upgrading for On {
        fn proof(&self) -> &Proof {
            &self.0
        }
        fn stopping(&self) -> crate::shutdown::Shutdown {
            self.1.clone()
        }
    }

    fn on(c: &Clinic) -> Arc<On> {
        let proof = c.admitted("reception-1").proof;
        Arc::new(On(proof, tokio::sync::watch::channel(false).1))
    }

    fn entry() -> Entry {
        Entry {
            terminal: Some("reception-1".into()),
            source: "192.0.2.7:50000".into(),
            route: "api".into(),
            ..Entry::default()
        }
    }

    #[tokio::test]
    async fn a_refusal_is_recorded_counted_and_says_the_hybrid_state() {
        let c = Clinic::new(&[("reception-1", true)], &[]);
        let r = respond(&c);
        let on = on(&c);
        let refused = Refused::text(StatusCode::FORBIDDEN, "no", "because");
        let resp = r.finish(Outcome::Refused(refused), entry(), Instant::now(), None, &on);
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert_eq!(resp.headers().get(HYBRID_MODE).unwrap(), "normal");
        assert_eq!(r.metrics.requests_denied_total.load(Relaxed), 1);
        let audited = c.audited().await;
        let last = audited.last().unwrap();
        assert_eq!(
            (last.decision.as_str(), last.reason.as_str(), last.status),
            ("deny", "because", Some(403))
        );
    }

    #[tokio::test]
    async fn an_answer_is_recorded_once_its_body_has_gone_out() {
        let c = Clinic::new(&[("reception-1", true)], &[]);
        let r = respond(&c);
        let on = on(&c);
        let mut engine = reply::text(StatusCode::OK, "patient 1");
        engine
            .headers_mut()
            .insert(HYBRID_MODE, HeaderValue::from_static("recovery"));
        let answer = Forwarded::Answer {
            response: engine,
            decision: Decision::Allow,
            reason: "allowed".into(),
            local: None,
            upstream: None,
        };
        let received = Some(Arc::new(AtomicU64::new(42)));
        let resp = r.finish(Outcome::Forwarded(answer), entry(), Instant::now(), received, &on);
        assert_eq!(
            resp.headers().get(HYBRID_MODE).unwrap(),
            "recovery",
            "the engine's own state"
        );
        assert!(
            c.audited().await.is_empty(),
            "nothing recorded before the body went out"
        );
        let body = crate::testing::text(resp).await;
        let audited = c.audited().await;
        let last = audited.last().expect("recorded when the body ended");
        assert_eq!((last.bytes_in, last.bytes_out), (42, body.len() as i64));
        assert_eq!(
            r.metrics.bytes_to_terminals_total.load(Relaxed),
            body.len() as u64
        );

        let local = Forwarded::Answer {
            response: reply::text(StatusCode::OK, "cached"),
            decision: Decision::Allow,
            reason: "allowed; answered by the cache".into(),
            local: Some(engine_proxy::health::Mode::Emergency),
            upstream: Some("local:cache".into()),
        };
        let resp = r.finish(Outcome::Forwarded(local), entry(), Instant::now(), None, &on);
        assert_eq!(resp.headers().get(HYBRID_MODE).unwrap(), "emergency");
    }
}
