//! The route stage: the cloud engine, or the local engine in its place.
//!
//! Each call is looked up in the rules table ([`crate::rules`]) and the hybrid state
//! ([`crate::health`]) decides where it goes:
//!
//! | action | `normal` | `recovery` | `emergency` |
//! |---|---|---|---|
//! | read | cloud, answer cached; if the cloud fails mid-call, the cache | cloud, as in normal | the cache |
//! | write | cloud; if it fails mid-call, the journal | the journal (behind older entries) | the journal |
//! | refuse | cloud, streamed | cloud, streamed | refused in the engine's format |
//!
//! With an on-premises engine configured instead of the cache and journal, everything goes
//! there in `emergency`, and calls the cloud fails mid-call are retried there.
//!
//! Reads and writes are buffered (they must be answerable again or journaled; the engine's are
//! small, bounded by `max_entry_bytes`); everything else streams. A call waiting for the cloud
//! stops waiting as soon as the cloud is declared down, so a black-holed cloud costs a terminal
//! at most the detection time, not the upstream timeout. Every write sent to the cloud carries an
//! idempotency key (the terminal's, or one the gateway makes), so a write whose fate is unknown
//! can be journaled and replayed without being applied twice.
//!
//! With several paths to the cloud, "the cloud" above is the first healthy path, and a call that
//! path fails is tried on the next before any local answer: a read silent past its path's
//! deadline is sent again on the next path too (the first answer wins), a write that failed or
//! whose path went down is sent again on the next path under the same idempotency key. The local
//! engine answers only when every path has failed the call.

use std::pin::Pin;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use tokio::time::Instant;

use crate::boxed::boxed;
use crate::cache::{self, Cache};
use crate::client;
use crate::format::{self, Format};
use crate::health::{Health, Mode};
use crate::journal::{Journal, NewEntry};
use crate::rules::{Action, Rule, Rules};
use crate::upstream::{ProxyBody, Upstream, UpstreamError};

/// The header carrying a write's idempotency key, to the engine and in the journal.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The header naming the journal entry of a write accepted offline.
pub const JOURNAL_ID: &str = "x-kakehashi-journal-id";

/// `Api_Result` codes of the answers the gateway gives in the engine's place.
pub mod codes {
    /// A write stored in the journal, to be sent later: a warning on a success.
    pub const ACCEPTED_OFFLINE: &str = "W90";
    /// A read the cache cannot answer.
    pub const NOT_CACHED: &str = "90";
    /// A call that must not be made without the cloud.
    pub const REFUSED_OFFLINE: &str = "91";
    /// A write the journal could not store (disk full, failing disk).
    pub const NOT_STORED: &str = "92";
    /// A call outside the caller's scopes, or one the rules do not know (with HTTP 403).
    pub const OUT_OF_SCOPE: &str = "93";
    /// A journaled write whose terminal or person may no longer make it: quarantined at replay.
    pub const NO_LONGER_ALLOWED: &str = "94";
}

/// What the local engine shares across workers.
pub struct Failover {
    pub rules: Rules,
    pub health: Arc<Health>,
    pub local: Local,
    /// Reads and writes larger than this are refused (413): they could be neither cached nor
    /// journaled.
    pub max_entry_bytes: usize,
}

/// What stands in for the cloud.
pub enum Local {
    /// The read cache and the write journal on the appliance.
    Store {
        cache: Box<Cache>,
        journal: Arc<Journal>,
    },
    /// An on-premises engine: every call goes there while the cloud is down. Each worker makes
    /// its own client from this URL.
    Engine { url: String },
}

/// The route stage as one worker runs it: its own clients to the cloud (one per path, in the
/// order of [`Health::links`]) and the on-premises engine (a request and the connection carrying
/// it stay on the worker's thread), the failover state shared by all.
pub struct Router {
    pub paths: Vec<Upstream>,
    pub onprem: Option<Upstream>,
    pub failover: Arc<Failover>,
}

/// Who is calling, for the engine credential and the journal. Borrowed: only a journaled write
/// keeps the names.
pub struct Caller<'a> {
    pub terminal: Option<&'a str>,
    pub user: Option<&'a str>,
    /// The engine credential for this person (or the clinic).
    pub authorization: HeaderValue,
}

/// Who answered a call.
#[derive(Debug, Clone)]
pub enum Served {
    /// The cloud, over this path.
    Cloud(usize),
    /// The on-premises engine, and why the cloud did not.
    OnPrem(String),
    /// The cache, with the answer's age, and why the cloud did not.
    Cache { age: u64, why: String },
    /// The journal, with the entry's id, and why the cloud did not.
    Journaled { id: u64, why: String },
    /// The gateway, in the engine's place and format, refusing.
    Refused(String),
}

impl Served {
    /// For the audit log.
    pub fn describe(&self) -> String {
        match self {
            Served::Cloud(_) => "the cloud engine".into(),
            Served::OnPrem(why) => format!("the on-premises engine ({why})"),
            Served::Cache { age, why } => format!("the cache, an answer {age} s old ({why})"),
            Served::Journaled { id, why } => format!("the journal as entry #{id} ({why})"),
            Served::Refused(why) => format!("refused offline: {why}"),
        }
    }
}

/// An answer and who gave it.
pub struct Routed {
    pub response: Response<ProxyBody>,
    pub served: Served,
}

/// Why a call got no answer at all.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// A streamed call the cloud failed, with nothing to fall back on.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The terminal's body broke off or ran past a limit.
    #[error("the request body: {0}")]
    Body(String),
    #[error("a read or write body larger than {0} bytes cannot be cached or journaled")]
    TooLarge(usize),
}

/// A request's head, kept to send it again or journal it.
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Drop for Head {
    fn drop(&mut self) {
        crate::spare::recycle(std::mem::take(&mut self.headers));
    }
}

impl Head {
    fn path_and_query(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    fn format(&self) -> Format {
        Format::from_query(self.uri.query())
    }

    /// Sends it with `body` over `upstream`, `authorization` (the caller's engine credential)
    /// in place of the terminal's: written from this head, not from a copy, each time it is sent.
    /// The upstream timeout runs from `began`.
    async fn send(
        &self,
        upstream: &Upstream,
        body: Bytes,
        authorization: HeaderValue,
        began: Instant,
    ) -> Result<Response<client::Body>, UpstreamError> {
        upstream
            .forward_parts(
                &self.method,
                self.path_and_query(),
                &self.headers,
                authorization,
                full(body),
                began,
            )
            .await
    }
}

/// A call to the cloud under way, and its path.
type Call = Pin<Box<dyn Future<Output = (usize, Attempt)> + Send>>;

/// How a read's answer is kept in the cache: its key and lifetime.
#[derive(Clone, Copy)]
struct Keep {
    key: [u8; 32],
    ttl: std::time::Duration,
}

impl Keep {
    /// Keeps `answer` to a read of `path`.
    fn fill(&self, cache: &Cache, path: &str, answer: &Whole) {
        let Whole { parts, body, at } = answer;
        cache.fill(cache::Fill {
            at: *at,
            key: self.key,
            path,
            status: parts.status.as_u16(),
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            body,
            ttl: self.ttl,
        });
    }
}

/// The calls of one request under way. Almost every request makes one, held here without the
/// allocation of a `Vec`, which only a second path's call makes.
#[derive(Default)]
struct Calls {
    one: Option<Call>,
    more: Vec<Call>,
}

impl Calls {
    fn push(&mut self, call: Call) {
        match self.one {
            None => self.one = Some(call),
            Some(_) => self.more.push(call),
        }
    }

    fn is_empty(&self) -> bool {
        self.one.is_none()
    }
}

/// The first of several calls to end, taken out of `calls` (which must not be empty).
fn first_done(calls: &mut Calls) -> impl Future<Output = (usize, Attempt)> + '_ {
    std::future::poll_fn(move |cx| {
        if let Some(one) = &mut calls.one
            && let std::task::Poll::Ready(ended) = one.as_mut().poll(cx)
        {
            calls.one = calls.more.pop();
            return std::task::Poll::Ready(ended);
        }
        for i in 0..calls.more.len() {
            if let std::task::Poll::Ready(ended) = calls.more[i].as_mut().poll(cx) {
                drop(calls.more.swap_remove(i));
                return std::task::Poll::Ready(ended);
            }
        }
        std::task::Poll::Pending
    })
}

/// How a call to the cloud ended.
enum Attempt {
    Answered(Response<client::Body>),
    /// A whole answer, read to the end.
    Whole(Whole),
    Failed(String),
}

/// An answer read to the end, to be cached.
struct Whole {
    parts: hyper::http::response::Parts,
    body: Bytes,
    /// When its head arrived: the reading of the clock that timed the call.
    at: std::time::Instant,
}

impl Router {
    /// Routes one authorized call, by the rule that authorized it (`None`: a call the table does
    /// not know).
    pub async fn route(
        &self,
        req: Request<ProxyBody>,
        caller: &Caller<'_>,
        rule: Option<&Rule>,
    ) -> Result<Routed, RouteError> {
        let f = &self.failover;
        let action = rule.as_ref().map_or(Action::Refuse, |r| r.action);
        let mode = f.health.mode();
        if mode == Mode::Emergency
            && let Some(onprem) = &self.onprem
        {
            // Boxed here and below: the on-premises engine is the exception, and its call's
            // future would otherwise enlarge every request's.
            let resp = boxed(|| onprem.forward(req, caller.authorization.clone())).await?;
            return Ok(Routed {
                response: proxied(resp),
                served: Served::OnPrem("the cloud is down".into()),
            });
        }
        match (action, &f.local) {
            (Action::Read, Local::Store { cache, .. }) => {
                let (head, body) = self.buffer(req).await?;
                self.read(head, body, rule, caller, Some(cache), mode).await
            }
            (Action::Read, Local::Engine { .. }) => {
                let (head, body) = self.buffer(req).await?;
                self.read(head, body, rule, caller, None, mode).await
            }
            (Action::Write, Local::Store { journal, .. }) => {
                let (head, body) = self.buffer(req).await?;
                self.write(head, body, caller, journal, mode).await
            }
            (Action::Refuse, Local::Store { .. }) if mode == Mode::Emergency => {
                // Not buffered: an unknown call may be large, and only its path matters here.
                let (parts, _) = req.into_parts();
                let head = Head {
                    method: parts.method,
                    uri: parts.uri,
                    headers: parts.headers,
                };
                let why = match rule {
                    Some(_) => "this call cannot be finished by any engine but the cloud",
                    None => "the gateway does not know this call, so it does not answer it offline",
                };
                Ok(refused(&head, b"", codes::REFUSED_OFFLINE, why))
            }
            _ => self.stream(req, caller).await,
        }
    }

    /// A call that is neither cached nor journaled: straight to the cloud over the preferred
    /// path, streaming (a streamed body cannot be sent twice, so no other path is tried).
    async fn stream(&self, req: Request<ProxyBody>, caller: &Caller<'_>) -> Result<Routed, RouteError> {
        let health = &self.failover.health;
        let path = health.preferred().unwrap_or(0);
        match self.paths[path].forward(req, caller.authorization.clone()).await {
            Ok(resp) => {
                if is_unavailable(resp.status()) {
                    health.suspect(path);
                }
                Ok(Routed {
                    response: proxied(resp),
                    served: Served::Cloud(path),
                })
            }
            Err(e) => {
                health.suspect(path);
                Err(e.into())
            }
        }
    }

    async fn buffer(&self, req: Request<ProxyBody>) -> Result<(Head, Bytes), RouteError> {
        let limit = self.failover.max_entry_bytes;
        let (parts, mut body) = req.into_parts();
        let mut whole = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| RouteError::Body(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if whole.len() + data.len() > limit {
                    return Err(RouteError::TooLarge(limit));
                }
                whole.extend_from_slice(&data);
            }
        }
        let body = Bytes::from(whole);
        let head = Head {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
        };
        Ok((head, body))
    }

    /// Sends a buffered call to the cloud over `path`, giving up when that path is declared
    /// down. With `whole`, a 200 answer of known, bounded length is read to the end (to be
    /// cached). The call owns what it needs, so that a read answered otherwise meanwhile can
    /// leave it running. `sent`: the reading of the clock the call is timed from, which its
    /// deadline runs from too.
    fn attempt(
        &self,
        path: usize,
        head: &Arc<Head>,
        body: Bytes,
        caller: &Caller<'_>,
        whole: bool,
        sent: Instant,
    ) -> Call {
        let (cloud, failover) = (self.paths[path].clone(), self.failover.clone());
        let (head, authorization) = (head.clone(), caller.authorization.clone());
        boxed(|| async move {
            let limit = failover.max_entry_bytes as u64;
            let health = &failover.health;
            let call = async {
                let resp = match head.send(&cloud, body, authorization, sent).await {
                    Ok(resp) => resp,
                    Err(e) => return Attempt::Failed(e.to_string()),
                };
                if is_unavailable(resp.status()) {
                    return Attempt::Failed(format!("the cloud answered {}", resp.status()));
                }
                let at = health.answered(path, sent.into_std());
                let bounded = resp
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .is_some_and(|n| n <= limit);
                if !(whole && resp.status() == StatusCode::OK && bounded) {
                    return Attempt::Answered(resp);
                }
                let (parts, body) = resp.into_parts();
                match body.whole().await {
                    Ok(body) => Attempt::Whole(Whole { parts, body, at }),
                    Err(e) => Attempt::Failed(format!("the cloud's answer broke off: {e}")),
                }
            };
            let attempt = tokio::select! {
                a = call => a,
                () = health.path_went_down(path) => Attempt::Failed("the cloud was declared down while the call waited".into()),
            };
            if matches!(attempt, Attempt::Failed(_)) {
                health.suspect(path);
            }
            (path, attempt)
        })
    }

    /// Sends a buffered call to the cloud over the usable paths, the preferred first, and
    /// returns the first answer and its path, or every path's failure.
    ///
    /// Each path waits for the cloud only as long as the cloud usually takes over it
    /// ([`Health::call_deadline`], or the shorter [`Health::hedge_deadline`] when another path
    /// can take the read): past that a probe goes out and, for a read (`hedge`), the next path is
    /// tried beside it, the first answer winning; the next path gets the whole
    /// [`Health::ceiling`]. A write goes to the next path
    /// only once its path has failed it, under the same idempotency key. When every path is
    /// silent past its deadline, a read with a `cached` answer gets it (`Err`), while the
    /// calls go on to fill the cache and teach the deadlines. A black-holed path thus costs a
    /// terminal a fraction of a second, before any probe has confirmed it.
    async fn cloud(
        &self,
        head: &Arc<Head>,
        body: &Bytes,
        caller: &Caller<'_>,
        hedge: bool,
        mut cached: Option<(&Cache, Keep)>,
    ) -> Result<(usize, Attempt), Routed> {
        let health = &self.failover.health;
        let mut untried = health.usable().peekable();
        // Some path is up unless a prober changed its mind since the mode was read: then the
        // preferred path by order is tried all the same.
        let mut next = Some(untried.next().unwrap_or(0));
        let (mut calls, mut failures, mut newest) = (Calls::default(), Vec::new(), 0);
        // One timer, made when first armed and reset for each path tried after (not a new one
        // on the heap per read); `armed` says whether it runs. A write never arms it.
        let mut deadline = std::pin::pin!(None::<tokio::time::Sleep>);
        let mut armed = false;
        loop {
            if let Some(path) = next.take() {
                // A path tried second may have no pooled connection on this worker (a TCP and
                // TLS handshake to make first), and the cloud has just been heard on it by its
                // prober: it gets the whole ceiling before the cache answers instead.
                let first = calls.is_empty() && failures.is_empty();
                let wait = match (first, untried.peek().is_some()) {
                    (true, true) => health.hedge_deadline(path),
                    (true, false) => health.call_deadline(path),
                    (false, _) => health.ceiling(),
                };
                // One reading of the clock for the call's timing, its timeout and the deadline.
                let sent = Instant::now();
                calls.push(self.attempt(path, head, body.clone(), caller, cached.is_some(), sent));
                newest = path;
                if hedge {
                    match deadline.as_mut().as_pin_mut() {
                        Some(timer) => timer.reset(sent + wait),
                        None => deadline.set(Some(tokio::time::sleep_until(sent + wait))),
                    }
                }
                armed = hedge;
            }
            if calls.is_empty() {
                return Ok((newest, Attempt::Failed(failures.join("; "))));
            }
            let silent = async {
                match (armed, deadline.as_mut().as_pin_mut()) {
                    (true, Some(timer)) => timer.await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                (path, attempt) = first_done(&mut calls) => match attempt {
                    Attempt::Failed(why) => {
                        failures.push(format!("{}{why}", self.label(path)));
                        if path == newest {
                            next = untried.next();
                            armed = false;
                        }
                    }
                    answered => return Ok((path, answered)),
                },
                () = silent => {
                    armed = false;
                    health.suspect(newest);
                    next = untried.next();
                    if next.is_some() {
                        continue;
                    }
                    let hit = cached.as_ref().and_then(|(cache, keep)| cache.get(&keep.key));
                    let (Some(hit), Some((_, keep))) = (hit, cached.take()) else {
                        continue;
                    };
                    let (failover, path) = (self.failover.clone(), head.uri.path().to_owned());
                    tokio::spawn(async move {
                        while !calls.is_empty() {
                            if let ((_, Attempt::Whole(answer)), Local::Store { cache, .. }) =
                                (first_done(&mut calls).await, &failover.local)
                            {
                                keep.fill(cache, &path, &answer);
                                break;
                            }
                        }
                    });
                    let why = match self.paths.len() {
                        1 => format!("the cloud had not answered within {:?}", health.call_deadline(newest)),
                        n => format!("the cloud had not answered on any of {n} paths within its deadline"),
                    };
                    return Err(hit_response(hit, why));
                }
            }
        }
    }

    /// How a failure on `path` begins: nothing with one path, its name with several.
    fn label(&self, path: usize) -> String {
        match self.failover.health.links() {
            [_] => String::new(),
            links => format!("path {}: ", links[path].name),
        }
    }

    async fn read(
        &self,
        head: Head,
        body: Bytes,
        rule: Option<&Rule>,
        caller: &Caller<'_>,
        cache: Option<&Cache>,
        mode: Mode,
    ) -> Result<Routed, RouteError> {
        let key = cache::key(head.method.as_str(), head.path_and_query(), &body);
        if let (Some(cache), Mode::Emergency) = (cache, mode) {
            return Ok(from_cache(cache, &key, &head, &body, "the cloud is down".into()));
        }
        let keep = Keep {
            key,
            ttl: rule.map_or(crate::rules::DEFAULT_TTL, |r| r.ttl),
        };
        let cached = cache.map(|c| (c, keep));
        // Shared by the attempts over each path, which own what they need.
        let head = Arc::new(head);
        let (path, attempt) = match self.cloud(&head, &body, caller, true, cached).await {
            Ok(ended) => ended,
            Err(from_cache) => return Ok(from_cache),
        };
        match attempt {
            Attempt::Answered(resp) => Ok(Routed {
                response: proxied(resp),
                served: Served::Cloud(path),
            }),
            Attempt::Whole(answer) => {
                if let Some(cache) = cache {
                    keep.fill(cache, head.uri.path(), &answer);
                }
                Ok(Routed {
                    response: Response::from_parts(answer.parts, full(answer.body)),
                    served: Served::Cloud(path),
                })
            }
            Attempt::Failed(why) => match (&self.onprem, cache) {
                (Some(onprem), _) => boxed(|| self.onprem(onprem, &head, body, caller, why)).await,
                (None, Some(cache)) => {
                    let why = format!("the cloud failed: {why}");
                    Ok(from_cache(cache, &key, &head, &body, why))
                }
                (None, None) => {
                    let why = "the cloud engine cannot be reached";
                    Ok(refused(&head, &body, codes::NOT_CACHED, why))
                }
            },
        }
    }

    async fn write(
        &self,
        mut head: Head,
        body: Bytes,
        caller: &Caller<'_>,
        journal: &Journal,
        mode: Mode,
    ) -> Result<Routed, RouteError> {
        let key = match text_header(&head.headers, IDEMPOTENCY_KEY) {
            Some(k) => k,
            None => {
                let Some((k, v)) = new_key() else {
                    let why = "the gateway could not make an idempotency key for this write";
                    return Ok(refused(&head, &body, codes::NOT_STORED, why));
                };
                head.headers.insert(IDEMPOTENCY_KEY, v);
                k
            }
        };
        let head = Arc::new(head);
        let why = match mode {
            Mode::Emergency => "the cloud is down".to_owned(),
            Mode::Recovery => "earlier offline writes are still being handed back".to_owned(),
            Mode::Normal => match self.cloud(&head, &body, caller, false, None).await {
                Ok((path, Attempt::Answered(resp))) => {
                    return Ok(Routed {
                        response: proxied(resp),
                        served: Served::Cloud(path),
                    });
                }
                Ok((path, Attempt::Whole(answer))) => {
                    return Ok(Routed {
                        response: Response::from_parts(answer.parts, full(answer.body)),
                        served: Served::Cloud(path),
                    });
                }
                Ok((_, Attempt::Failed(why))) => format!("the cloud failed: {why}"),
                Err(from_cache) => return Ok(from_cache),
            },
        };
        let entry = NewEntry {
            terminal: caller.terminal.map(str::to_owned),
            user: caller.user.map(str::to_owned),
            method: head.method.to_string(),
            path: head.path_and_query().to_owned(),
            content_type: text_header(&head.headers, header::CONTENT_TYPE),
            body: body.clone(),
            idempotency_key: key,
        };
        match journal.append(entry).await {
            Ok(id) => {
                let message = if mode == Mode::Recovery {
                    format!(
                        "Accepted: the cloud engine is back and this write is queued as journal \
                         entry #{id} behind earlier offline writes; it will be sent in order shortly."
                    )
                } else {
                    format!(
                        "Accepted offline: the cloud engine cannot be reached. This write is stored \
                         on the gateway as journal entry #{id} and will be sent when the line returns."
                    )
                };
                let answer = format::engine_answer(
                    head.format(),
                    head.uri.path(),
                    &body,
                    codes::ACCEPTED_OFFLINE,
                    &message,
                );
                let mut response = engine_reply(StatusCode::OK, head.format(), answer);
                if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
                    response.headers_mut().insert(JOURNAL_ID, v);
                }
                Ok(Routed {
                    response,
                    served: Served::Journaled { id, why },
                })
            }
            Err(e) => {
                tracing::error!("journal append failed: {e}");
                let message = format!(
                    "Not accepted: the cloud engine cannot be reached and the gateway could not \
                     store this write ({e}). Nothing was saved; try again later."
                );
                let mut routed = refused(&head, &body, codes::NOT_STORED, &message);
                routed.served = Served::Refused(format!("the journal could not store the write: {e}"));
                Ok(routed)
            }
        }
    }

    async fn onprem(
        &self,
        onprem: &Upstream,
        head: &Head,
        body: Bytes,
        caller: &Caller<'_>,
        why: String,
    ) -> Result<Routed, RouteError> {
        let began = Instant::now();
        let resp = head
            .send(onprem, body, caller.authorization.clone(), began)
            .await?;
        Ok(Routed {
            response: proxied(resp),
            served: Served::OnPrem(why),
        })
    }
}

/// A read answered from the cache, or refused in the engine's format when it holds nothing.
fn from_cache(cache: &Cache, key: &[u8; 32], head: &Head, body: &[u8], why: String) -> Routed {
    match cache.get(key) {
        Some(hit) => hit_response(hit, why),
        None => {
            let message = "Not available offline: the cloud engine cannot be reached and the \
                           gateway holds no copy of this answer.";
            let mut routed = refused(head, body, codes::NOT_CACHED, message);
            routed.served = Served::Refused(format!("not in the cache ({why})"));
            routed
        }
    }
}

/// The cloud's earlier answer, with its `Age`.
fn hit_response(hit: cache::Hit, why: String) -> Routed {
    let mut response = Response::new(full(hit.body));
    *response.status_mut() = StatusCode::from_u16(hit.status).unwrap_or(StatusCode::OK);
    let h = response.headers_mut();
    if let Some(v) = hit.content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::AGE, HeaderValue::from(hit.age));
    Routed {
        response,
        served: Served::Cache { age: hit.age, why },
    }
}

/// 503 in the engine's format, with a retry hint.
fn refused(head: &Head, body: &[u8], code: &str, message: &str) -> Routed {
    let answer = format::engine_answer(head.format(), head.uri.path(), body, code, message);
    let mut response = engine_reply(StatusCode::SERVICE_UNAVAILABLE, head.format(), answer);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    Routed {
        response,
        served: Served::Refused(message.to_owned()),
    }
}

fn engine_reply(status: StatusCode, format: Format, body: Vec<u8>) -> Response<ProxyBody> {
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    r
}

/// 502, 503 and 504: the cloud (or what stands in front of it) could not take the call. A 500
/// is the engine's own answer about this call, and is passed on.
fn is_unavailable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

fn full(b: Bytes) -> ProxyBody {
    Full::new(b).map_err(|e| match e {}).boxed()
}

/// The answer with its body as the proxy passes bodies on.
fn proxied(resp: Response<client::Body>) -> Response<ProxyBody> {
    resp.map(|b| b.map_err(Into::into).boxed())
}

fn text_header(headers: &HeaderMap, name: impl header::AsHeaderName) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// A fresh idempotency key of 128 random bits, or `None` if the system cannot supply them (a
/// key of zeros would make distinct writes look like one).
fn new_key() -> Option<(String, HeaderValue)> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).ok()?;
    let mut key = String::from("kakehashi-");
    for b in bytes {
        key.push_str(&format!("{b:02x}"));
    }
    let value = HeaderValue::from_str(&key).ok()?;
    Some((key, value))
}
