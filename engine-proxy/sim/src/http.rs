//! The reference engine's HTTP side: accept, authenticate, parse, dispatch, answer.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use engine_proxy::format::{self as body, Format};
use http_body_util::{BodyExt, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::SimError;
use crate::api::{self, Call, Outcome};
use crate::reply::{Reply, full, plain};
use crate::store::Store;

/// Largest request body the engine reads.
const MAX_BODY: usize = 4 << 20;

/// What every connection shares.
pub struct State {
    store: Store,
    /// `ID:PASSWORD` of every account, as HTTP Basic carries it, built once at start-up.
    credentials: Vec<Vec<u8>>,
    /// Events for push subscribers (receptions registered, …), as JSON text.
    pub events: tokio::sync::broadcast::Sender<String>,
}

impl State {
    pub fn new(store: Store, users: Vec<(String, String)>) -> State {
        State {
            store,
            credentials: users
                .into_iter()
                .map(|(id, password)| format!("{id}:{password}").into_bytes())
                .collect(),
            events: tokio::sync::broadcast::channel(256).0,
        }
    }
}

/// Builds the TLS acceptor; with `client_ca`, a client certificate from that CA is required.
pub fn tls_acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor, SimError> {
    use engine_proxy::tls::{self, TlsError};
    let tls_err = |e: TlsError| match e {
        TlsError::File { path, message } => SimError::Tls {
            path: path.display().to_string(),
            detail: message,
        },
        other => SimError::Tls {
            path: cert.display().to_string(),
            detail: other.to_string(),
        },
    };
    let chain = tls::load_certs(cert).map_err(tls_err)?;
    let key_der = tls::load_key(key).map_err(tls_err)?;
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        Some(ca) => {
            let roots = tls::load_roots(ca).map_err(tls_err)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder(roots)
                .build()
                .map_err(|e| tls_err(TlsError::from(e)))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key_der)
        .map_err(|e| SimError::Tls {
            path: cert.display().to_string(),
            detail: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections until SIGINT or SIGTERM.
pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, state: Arc<State>) {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(_) => {
                    // Out of file descriptors or memory: back off rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let _ = stream.set_nodelay(true);
        let local = stream
            .local_addr()
            .ok()
            .and_then(|a| HeaderValue::from_str(&a.to_string()).ok());
        let (tls, state) = (tls.clone(), state.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(state.clone(), local.clone(), req));
            let builder = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream))
                            .await
                    {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    }
                }
                None => {
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                }
            }
        });
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `local`: the address the connection came in on, answered as `X-Engine-Address`, so a test
/// or benchmark that reaches the engine over several paths sees which one a call took.
async fn handle(
    state: Arc<State>,
    local: Option<HeaderValue>,
    req: Request<Incoming>,
) -> Result<Reply, Infallible> {
    let mut reply = respond(&state, req).await;
    let headers = reply.headers_mut();
    headers.insert("x-hybridmode", HeaderValue::from_static("normal"));
    if let Some(local) = local {
        headers.insert("x-engine-address", local);
    }
    Ok(reply)
}

async fn respond(state: &State, req: Request<Incoming>) -> Reply {
    if !authorized(state, &req) {
        let mut r = plain(StatusCode::UNAUTHORIZED, "authentication required");
        r.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"engine-sim\""),
        );
        return r;
    }
    if req.uri().path() == "/ws" {
        return upgrade(state, req);
    }
    if let Some(diagnostic) = req.uri().path().strip_prefix("/sim/").map(str::to_owned) {
        return crate::bulk::handle(&diagnostic, req).await;
    }
    let full_path = req.uri().path().to_owned();
    let path = full_path
        .strip_prefix("/api")
        .filter(|p| p.starts_with('/'))
        .unwrap_or(&full_path);
    let path = path.trim_start_matches('/').trim_end_matches('/').to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().clone();
    let get_allowed = path == "api01rv2/patientgetv2";
    if method != Method::POST && !(method == Method::GET && get_allowed) {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    if method == Method::POST && !req.headers().contains_key(CONTENT_TYPE) {
        return plain(StatusCode::BAD_REQUEST, "a POST needs a Content-Type");
    }
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let format = Format::from_query(Some(&query));
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large or broken"),
    };
    let request = match body::parse(format, &bytes) {
        Ok(r) => r,
        Err(why) => return plain(StatusCode::BAD_REQUEST, &why),
    };
    let call = Call {
        path: &path,
        query: &query,
        format,
        request,
        idempotency_key: key.as_deref(),
    };
    match api::handle(&state.store, &call) {
        Ok(Outcome::Answer(a)) => answer(a),
        Ok(Outcome::AnswerAndEvent(a, event)) => {
            let _ = state.events.send(event.to_string());
            answer(a)
        }
        Ok(Outcome::KeyReused { first_path }) => plain(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("this Idempotency-Key was already used for /{first_path}"),
        ),
        Ok(Outcome::NotFound) => plain(StatusCode::NOT_FOUND, "no such API"),
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// Switches `/ws` to the WebSocket push API (RFC 6455 handshake on hyper's upgrade).
fn upgrade(state: &State, req: Request<Incoming>) -> Reply {
    use hyper::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
    let wants_ws = req.method() == Method::GET
        && req
            .headers()
            .get(UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY).filter(|_| wants_ws) else {
        return plain(
            StatusCode::BAD_REQUEST,
            "/ws is a WebSocket: send Upgrade: websocket",
        );
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let events = state.events.subscribe();
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            crate::push::session(TokioIo::new(upgraded), events).await;
        }
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

fn answer(a: crate::store::Answer) -> Reply {
    let mut r = Response::new(full(a.body));
    if let Ok(v) = HeaderValue::from_str(&a.content_type) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

/// HTTP Basic against the configured accounts, compared in constant time.
fn authorized(state: &State, req: &Request<Incoming>) -> bool {
    use base64::Engine;
    let Some(encoded) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let mut ok = false;
    for expected in &state.credentials {
        ok |= aws_lc_rs::constant_time::verify_slices_are_equal(expected, &decoded).is_ok();
    }
    ok
}
