//! The api route: one HTTP/1.1 connection from an admitted terminal, request by request.
//!
//! Each request passes the same named stages: **admit** (is the terminal's certificate still
//! admitted by the current snapshot?), **gateway pages** (`/kakehashi/…`: the login page),
//! **authenticate** (the person: session cookie or HTTP Basic), **limit** (declared body size),
//! **forward** (the uplink). Every decision, allow or deny, becomes one audit entry, written when
//! the response body has been sent so that it carries the status, the bytes and the duration.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use engine_proxy::failover::{Caller, Engine, RouteError, Served};
use engine_proxy::health::Mode;
use engine_proxy::upstream::ProxyBody;

use crate::audit::{Decision, Entry};
use crate::h1;
use crate::identity::{Proof, Terminal};
use crate::login;
use crate::meter::Metered;
use crate::metrics::Metrics;
use crate::person::{Denied, Person};
use crate::state::Gateway;

/// One terminal connection on an api listener.
pub struct Connection {
    pub gateway: Arc<Gateway>,
    /// This worker's route stage: the cloud engine, or the local one.
    pub engine: Arc<Engine>,
    pub terminal: Terminal,
    pub proof: Proof,
    pub source: SocketAddr,
    pub route: String,
    /// The snapshot generation this connection was last checked against.
    pub checked: AtomicU64,
    /// The person last verified on this connection.
    pub memo: crate::person::Memo,
}

/// A finished answer from the gateway itself (not the engine).
pub fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(Full::new(body.into()).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn text(status: StatusCode, message: &str) -> Response<ProxyBody> {
    reply(status, "text/plain; charset=utf-8", format!("{message}\n"))
}

impl Connection {
    fn entry(&self, req: &Request<h1::Body>) -> Entry {
        Entry {
            terminal: Some(self.terminal.name.clone()),
            source: self.source.to_string(),
            route: self.route.clone(),
            method: Some(req.method().to_string()),
            path: Some(req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned()),
            ..Entry::default()
        }
    }

    /// Writes an entry once the response is complete; `entry` is filled in by then.
    pub(crate) fn record(&self, mut entry: Entry, started: Instant) {
        entry.duration_ms = started.elapsed().as_millis() as u64;
        self.gateway.audit.record_soon(entry);
    }

    /// A refusal by the gateway: audited, counted, answered.
    pub(crate) fn deny(
        &self,
        mut entry: Entry,
        started: Instant,
        reason: String,
        resp: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        Metrics::inc(&self.gateway.metrics.requests_denied_total);
        entry.decision = Decision::Deny;
        entry.reason = reason;
        entry.status = Some(resp.status().as_u16());
        self.record(entry, started);
        resp
    }

    /// Stage 1: the certificate is re-checked when the snapshot changed since the last request.
    fn admitted(&self) -> Result<(), String> {
        // The common case, nothing reloaded since the last request, reads the reload counter
        // only: no snapshot is taken.
        if self.checked.load(Relaxed) == *self.gateway.reloaded.borrow() {
            return Ok(());
        }
        let live = self.gateway.live();
        live.admits(&self.proof)?;
        self.checked.store(live.generation, Relaxed);
        Ok(())
    }
}

/// The hybrid state a response reports in `X-Hybridmode`, as the engine's own responses do.
pub const HYBRID_MODE: &str = "x-hybridmode";

/// Serves one request through the stages. Every response says the hybrid state; an answer from
/// the local engine says `emergency` (or `recovery`) even before the prober has confirmed it.
pub async fn handle(conn: Arc<Connection>, req: Request<h1::Body>) -> Response<ProxyBody> {
    let mut resp = stages(&conn, req).await;
    if !resp.headers().contains_key(HYBRID_MODE) {
        let mode = conn.engine.failover.health.mode();
        resp.headers_mut().insert(HYBRID_MODE, mode.header());
    }
    resp
}

impl h1::Service for Arc<Connection> {
    fn call(&self, req: Request<h1::Body>) -> impl Future<Output = Response<ProxyBody>> + Send {
        handle(self.clone(), req)
    }

    fn rejected(&self, status: StatusCode, why: &str) {
        Metrics::inc(&self.gateway.metrics.requests_denied_total);
        self.gateway.audit.record_soon(Entry {
            decision: Decision::Deny,
            reason: format!("request refused: {why}"),
            terminal: Some(self.terminal.name.clone()),
            source: self.source.to_string(),
            route: self.route.clone(),
            status: Some(status.as_u16()),
            ..Entry::default()
        });
    }
}

async fn stages(conn: &Arc<Connection>, req: Request<h1::Body>) -> Response<ProxyBody> {
    let conn = conn.clone();
    let started = Instant::now();
    let metrics = &conn.gateway.metrics;
    Metrics::inc(&metrics.requests_total);
    let entry = conn.entry(&req);

    if let Err(why) = conn.admitted() {
        let reason = format!("terminal no longer admitted: {why}");
        let mut resp = text(
            StatusCode::FORBIDDEN,
            &format!("Kakehashi: this terminal is no longer admitted ({why})"),
        );
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return conn.deny(entry, started, reason, resp);
    }

    if conn.gateway.audit.is_failing() {
        // Deny by default: no access that cannot be recorded. The refusal itself waits in
        // memory and is written once the log is writable again.
        let resp = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "Kakehashi: the audit log cannot be written, so access is refused until it can; \
             ask the clinic's administrator",
        );
        return conn.deny(entry, started, crate::audit::FAILING.into(), resp);
    }

    if req.uri().path().starts_with(login::PREFIX) {
        return login::handle(&conn, req, entry, started).await;
    }

    let person = match authenticate(&conn, &req).await {
        Ok(p) => p,
        Err(denied) => {
            let mut entry = entry;
            entry.user = denied.user().map(str::to_owned);
            let resp = refusal(&req, &denied);
            count_denial(&conn.gateway.metrics, &denied);
            return conn.deny(entry, started, denied.reason(), resp);
        }
    };
    forward(conn, req, entry, person, started).await
}

/// Stage 3: the person, by session cookie (browsers) or HTTP Basic (API clients).
async fn authenticate(conn: &Arc<Connection>, req: &Request<h1::Body>) -> Result<Person, Denied> {
    let people = &conn.gateway.people;
    if !people.required() {
        return Ok(people.anonymous());
    }
    if let Some(token) = login::session_cookie(req.headers())
        && let Some(person) = people.session(token, &conn.terminal)
    {
        return Ok(person);
    }
    people
        .basic(
            req.headers().get(header::AUTHORIZATION),
            &conn.terminal,
            &conn.memo,
        )
        .await
}

fn count_denial(metrics: &Metrics, denied: &Denied) {
    match denied {
        Denied::WrongPassword { .. } => Metrics::inc(&metrics.auth_failures_total),
        Denied::LockedOut { .. } => Metrics::inc(&metrics.lockouts_total),
        _ => {}
    }
}

/// The answer to a refused person: a Basic challenge for API clients, the login page for a
/// browser that asked for a page, a retry time when locked out.
pub fn refusal(req: &Request<h1::Body>, denied: &Denied) -> Response<ProxyBody> {
    match denied {
        Denied::NoCredentials if login::wants_page(req) => login::redirect_to_login(req.uri()),
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

/// 429 with the retry time, in the header and in words.
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

/// Stages 4 and 5: the declared size, then the route (the cloud, or the local engine in its
/// place), streaming both ways where the route does not need the whole body.
async fn forward(
    conn: Arc<Connection>,
    mut req: Request<h1::Body>,
    mut entry: Entry,
    person: Person,
    started: Instant,
) -> Response<ProxyBody> {
    let gateway = conn.gateway.clone();
    let limit = gateway.config.limits.max_body_bytes;
    entry.user = person.user.clone();
    entry.upstream = Some(conn.engine.cloud.authority().to_owned());
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return too_large(
            &conn,
            entry,
            started,
            limit,
            format!("body of {} bytes over the limit", declared.unwrap_or(0)),
        );
    }
    login::strip_session_cookie(req.headers_mut());
    let upgrade = req.extensions_mut().remove::<h1::OnUpgrade>();
    let body_failure = req.body().failure();
    let received = Arc::new(AtomicU64::new(0));
    let req = req.map(|b| Metered::limited(b, received.clone(), limit).boxed());
    let caller = Caller {
        terminal: Some(conn.terminal.name.clone()),
        user: person.user.clone(),
        authorization: person.upstream.clone(),
    };

    let routed = match conn.engine.route(req, &caller).await {
        Ok(routed) => routed,
        Err(RouteError::Body(_) | RouteError::Upstream(_)) if received.load(Relaxed) > limit => {
            // A body without a declared length ran past the limit: the meter cut it off, which
            // ended the call. That is the terminal's doing, not the engine's.
            entry.bytes_in = received.load(Relaxed);
            return too_large(
                &conn,
                entry,
                started,
                limit,
                format!("streamed body over the limit of {limit} bytes"),
            );
        }
        Err(RouteError::TooLarge(n)) => {
            entry.bytes_in = received.load(Relaxed);
            return too_large(
                &conn,
                entry,
                started,
                n as u64,
                format!("a read or write body over failover.max_entry_bytes ({n})"),
            );
        }
        Err(RouteError::Body(_) | RouteError::Upstream(_))
            if let Some(why) = body_failure.as_ref().and_then(|f| f.get()) =>
        {
            // The terminal's body broke (malformed chunks, a stall, a closed connection): the
            // terminal's doing, not the engine's.
            entry.bytes_in = received.load(Relaxed);
            let resp = text(StatusCode::BAD_REQUEST, &format!("Kakehashi: {why}"));
            return conn.deny(entry, started, format!("request body: {why}"), resp);
        }
        Err(RouteError::Body(why)) => {
            entry.bytes_in = received.load(Relaxed);
            let resp = text(StatusCode::BAD_REQUEST, &format!("Kakehashi: {why}"));
            return conn.deny(entry, started, why, resp);
        }
        Err(RouteError::Upstream(e)) => {
            Metrics::inc(&gateway.metrics.upstream_errors_total);
            entry.decision = Decision::Allow;
            entry.reason = format!("allowed; engine unreachable: {e}");
            entry.status = Some(502);
            entry.bytes_in = received.load(Relaxed);
            conn.record(entry, started);
            return text(
                StatusCode::BAD_GATEWAY,
                &format!("Kakehashi: the engine did not answer: {e}"),
            );
        }
    };
    let mut resp = routed.response;
    entry.decision = Decision::Allow;
    entry.status = Some(resp.status().as_u16());
    let local = !matches!(routed.served, Served::Cloud);
    count_route(&gateway.metrics, &routed.served);
    if local {
        let mode = match gateway.failover.health.mode() {
            Mode::Normal => Mode::Emergency,
            other => other,
        };
        resp.headers_mut().insert(HYBRID_MODE, mode.header());
        entry.upstream = Some(match &routed.served {
            Served::OnPrem(_) => gateway.config.failover.engine.clone().unwrap_or_default(),
            Served::Cache { .. } => "local:cache".into(),
            Served::Journaled { .. } => "local:journal".into(),
            _ => "local".into(),
        });
    }
    if matches!(routed.served, Served::Cloud) && resp.status().is_server_error() {
        Metrics::inc(&gateway.metrics.upstream_responses_5xx_total);
    }
    if matches!(routed.served, Served::Cloud | Served::OnPrem(_)) && resp.status() == StatusCode::UNAUTHORIZED
    {
        // The person was verified here; the engine refusing the gateway's own credential is a
        // configuration fault, not the terminal's. Passing the 401 on would make the terminal
        // ask its user for a password that cannot help.
        let whose = match &person.user {
            Some(user) => {
                format!("for user {user:?} (kakehashi user set-upstream) or the clinic (upstream.user)")
            }
            None => "of the clinic (upstream.user, upstream.password_file)".into(),
        };
        entry.reason = format!("allowed; the engine refused the upstream credential {whose}");
        entry.status = Some(502);
        conn.record(entry, started);
        return text(
            StatusCode::BAD_GATEWAY,
            "Kakehashi: the engine refused the gateway's credential; ask the clinic's administrator",
        );
    }

    if let (Some(client), StatusCode::SWITCHING_PROTOCOLS) = (upgrade, resp.status()) {
        entry.reason = "allowed; protocol upgrade (WebSocket) to the engine".into();
        let engine = hyper::upgrade::on(&mut resp);
        tokio::spawn(tunnel(conn, client, engine, entry, started));
        return resp.map(|_| Empty::new().map_err(|e| match e {}).boxed());
    }

    entry.reason = match &routed.served {
        Served::Cloud => "allowed".into(),
        Served::Refused(why) => {
            // The person and terminal were allowed; the call was not, for want of the cloud.
            entry.decision = Decision::Deny;
            format!("refused offline: {why}")
        }
        served => format!("allowed; answered by {}", served.describe()),
    };
    let metrics_conn = conn.clone();
    resp.map(move |body| {
        Metered::finished(body, move |sent| {
            let m = &metrics_conn.gateway.metrics;
            entry.bytes_in = received.load(Relaxed);
            entry.bytes_out = sent;
            Metrics::add(&m.bytes_from_terminals_total, entry.bytes_in);
            Metrics::add(&m.bytes_to_terminals_total, sent);
            metrics_conn.record(entry, started);
        })
        .boxed()
    })
}

fn too_large(
    conn: &Connection,
    entry: Entry,
    started: Instant,
    limit: u64,
    reason: String,
) -> Response<ProxyBody> {
    let resp = text(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("Kakehashi: request body larger than {limit} bytes"),
    );
    conn.deny(entry, started, reason, resp)
}

fn count_route(metrics: &Metrics, served: &Served) {
    match served {
        Served::Cloud => {}
        Served::OnPrem(_) => Metrics::inc(&metrics.onprem_answers_total),
        Served::Cache { .. } => Metrics::inc(&metrics.cache_answers_total),
        Served::Journaled { .. } => Metrics::inc(&metrics.journal_appends_total),
        Served::Refused(_) => Metrics::inc(&metrics.refused_offline_total),
    }
}

/// Both sides switched protocols: copy bytes until either closes, then audit the totals.
async fn tunnel(
    conn: Arc<Connection>,
    client: h1::OnUpgrade,
    engine: hyper::upgrade::OnUpgrade,
    mut entry: Entry,
    started: Instant,
) {
    let (mut client, engine) = match tokio::join!(client, engine) {
        (Ok(client), Ok(engine)) => (client, engine),
        (Err(e), _) => return upgrade_failed(&conn, entry, started, e),
        (_, Err(e)) => return upgrade_failed(&conn, entry, started, &e.to_string()),
    };
    let mut engine = hyper_util::rt::TokioIo::new(engine);
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut engine) => {
            if let Ok((up, down)) = copied {
                entry.bytes_in = up;
                entry.bytes_out = down;
            }
        }
        why = conn.gateway.revoked(&conn.proof) => {
            entry.reason = format!("allowed; WebSocket closed by a reload: {why}");
        }
    }
    conn.record(entry, started);
}

fn upgrade_failed(conn: &Connection, mut entry: Entry, started: Instant, why: &str) {
    entry.reason = format!("allowed; upgrade failed: {why}");
    conn.record(entry, started);
}
