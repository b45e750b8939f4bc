//! One terminal connection on an api listener, and one request's way through the stages.
//!
//! The order is the design's (DESIGN.md, "The data path"): admit → gateway pages → authenticate
//! → authorize → limit → forward → respond and audit. Each stage is a type of its own with only
//! the inputs it needs ([`Pipeline`]); this file only strings them together and keeps what one
//! connection remembers between requests.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use hyper::{Method, Request, Response, StatusCode};

use engine_proxy::boxed::boxed;
use engine_proxy::upstream::ProxyBody;

use crate::audit::{Decision, Entry, Text};
use crate::auth::Memo;
use crate::doors::identity::{Identified, Proof};
use crate::doors::slot::Slot;
use crate::http1;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::pipeline::admit::Standing;
use crate::pipeline::pages::Pages;
use crate::pipeline::relay::Upgrading;
use crate::pipeline::respond::Outcome;
use crate::shutdown::Shutdown;

/// One terminal connection on an api listener.
pub struct Connection {
    pub(crate) pipeline: Arc<Pipeline>,
    pub(crate) who: Identified,
    /// The terminal's name and the peer's address as the audit log writes them, made once:
    /// every request's entry shares them.
    pub(crate) terminal: Arc<str>,
    pub(crate) source: Arc<str>,
    pub(crate) route: Arc<str>,
    /// Where its terminal stands since the last check.
    pub(crate) standing: Standing,
    /// The person last verified on this connection.
    pub(crate) memo: Memo,
    /// The gateway's stop, for a relay this connection may turn into.
    pub(crate) stopping: Shutdown,
    /// Held as long as the connection, or the relay it turned into, is open.
    pub(crate) _slot: Slot,
}

impl Upgrading for Connection {
    fn proof(&self) -> &Proof {
        &self.who.proof
    }
    fn stopping(&self) -> Shutdown {
        self.stopping.clone()
    }
}

impl Connection {
    /// The audit entry every request starts with.
    fn entry(&self, req: &Request<http1::Body>) -> Entry {
        Entry {
            terminal: Some((&self.terminal).into()),
            source: (&self.source).into(),
            route: (&self.route).into(),
            method: Some(method(req.method())),
            path: Some(req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned()),
            ..Entry::default()
        }
    }

    /// One request through every stage.
    async fn exchange(self: Arc<Self>, req: Request<http1::Body>) -> Response<ProxyBody> {
        let started = Instant::now();
        let p = &self.pipeline;
        Metrics::inc(&p.metrics.requests_total);
        let mut entry = self.entry(&req);
        let mut received = None;
        let outcome = self.stages(req, &mut entry, &mut received).await;
        p.respond.finish(outcome, entry, started, received, &self)
    }

    /// The stages up to the answer; `entry` learns the person and the engine on the way.
    async fn stages(
        &self,
        req: Request<http1::Body>,
        entry: &mut Entry,
        received: &mut Option<Arc<AtomicU64>>,
    ) -> Outcome {
        let p = &self.pipeline;
        let terminal = &self.who.terminal;
        if let Err(refused) = p.admit.check(&self.who.proof, &self.standing) {
            return Outcome::Refused(refused);
        }
        // Before any page or rule looks at the path.
        if let Err(refused) = p.authorize.canonical(&req) {
            return Outcome::Refused(refused);
        }
        if Pages::serves(&req) {
            // Boxed: a page is rare beside API calls, and its future large.
            return Outcome::Page(boxed(|| p.pages.serve(req, terminal)).await);
        }
        let person = match p.authenticate.person(&req, terminal, &self.memo).await {
            Ok(person) => person,
            Err(refused) => return Outcome::Refused(refused),
        };
        entry.user = person.user.as_ref().map(Text::from);
        let scopes = self.standing.scopes();
        let (req, rule) = match p.authorize.check(req, scopes, &person).await {
            Ok(authorized) => (authorized.request, authorized.rule),
            Err(refused) => return Outcome::Refused(refused),
        };
        entry.upstream = Some(p.forward.upstream().into());
        let limited = match p.limit.apply(req) {
            Ok(limited) => limited,
            Err(refused) => return Outcome::Refused(refused),
        };
        received.clone_from(&limited.received);
        match p.forward.call(limited, &person, terminal, rule).await {
            Ok(forwarded) => Outcome::Forwarded(forwarded),
            Err(refused) => Outcome::Refused(refused),
        }
    }
}

impl http1::Service for Arc<Connection> {
    fn call(&self, req: Request<http1::Body>) -> impl Future<Output = Response<ProxyBody>> + Send {
        self.clone().exchange(req)
    }

    fn rejected(&self, status: StatusCode, why: &str) {
        let p = &self.pipeline;
        Metrics::inc(&p.metrics.requests_denied_total);
        p.respond.audit.record_soon(Entry {
            decision: Decision::Deny,
            reason: format!("request refused: {why}").into(),
            terminal: Some((&self.terminal).into()),
            source: (&self.source).into(),
            route: (&self.route).into(),
            status: Some(status.as_u16()),
            ..Entry::default()
        });
    }
}

/// A request's method for its entry: the standard ones without an allocation.
fn method(m: &Method) -> Text {
    const STANDARD: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT",
    ];
    match STANDARD.iter().find(|s| **s == m.as_str()) {
        Some(s) => Text::Static(s),
        None => Text::Owned(m.as_str().to_owned()),
    }
}
