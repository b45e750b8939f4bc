//! A terminal listener: accept, limit, handshake, identify, then hand the stream to its route.
//!
//! The costly part of a bad connection is bounded at every step: a connection over
//! `limits.max_connections` is closed at once; a handshake has `limits.handshake_timeout_secs`;
//! a request's headers have `limits.header_timeout_secs` and `limits.max_header_bytes`. Every
//! refusal is audited with its reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use engine_proxy::failover::Engine;

use crate::audit::{Decision, Entry};
use crate::config::ListenerKind;
use crate::identity::{Proof, Terminal};
use crate::metrics::Metrics;
use crate::state::Gateway;
use crate::{http, tcp, tls};

/// What one listener does with an admitted connection.
pub enum Route {
    Api(String),
    Tcp(Arc<tcp::Route>),
}

impl Route {
    pub fn name(&self) -> &str {
        match self {
            Route::Api(name) => name,
            Route::Tcp(route) => &route.name,
        }
    }
    fn kind(&self) -> ListenerKind {
        match self {
            Route::Api(_) => ListenerKind::Api,
            Route::Tcp(_) => ListenerKind::Tcp,
        }
    }
}

/// Accepts until `stopping` turns true.
pub async fn serve(
    gateway: Arc<Gateway>,
    engine: Arc<Engine>,
    listener: TcpListener,
    route: Arc<Route>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    while let Some((stream, peer)) = accept(&listener, &mut stopping).await {
        Metrics::inc(&gateway.metrics.connections_accepted_total);
        let Ok(permit) = gateway.connections.clone().try_acquire_owned() else {
            Metrics::inc(&gateway.metrics.connections_refused_total);
            tracing::warn!(%peer, "connection limit reached; closing a new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (gateway, engine, route, stopping) =
            (gateway.clone(), engine.clone(), route.clone(), stopping.clone());
        tokio::spawn(async move {
            Metrics::inc(&gateway.metrics.connections_open);
            connection(&gateway, engine, stream, peer, &route, stopping).await;
            Metrics::dec(&gateway.metrics.connections_open);
            drop(permit);
        });
    }
}

/// What the handshake phase hands to the route: the stream and who is on it.
pub(crate) struct Admitted<S> {
    stream: S,
    terminal: Terminal,
    proof: Proof,
    generation: u64,
}

/// A byte stream a route can serve: TCP, TLS over TCP, or a stream out of the WireGuard tunnel.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// One connection, in two phases, each its own allocation: the handshake's state (the TLS
/// accept, its timeout) is freed before the connection settles into its long idle life, so an
/// idle terminal costs its route's state and nothing more.
async fn connection(
    gateway: &Arc<Gateway>,
    engine: Arc<Engine>,
    stream: TcpStream,
    source: SocketAddr,
    route: &Route,
    stopping: tokio::sync::watch::Receiver<bool>,
) {
    let Some(admitted) = Box::pin(handshake(gateway, stream, source, route)).await else {
        return;
    };
    serve_route(gateway, engine, admitted, source, route, stopping).await
}

/// A connection that came through a WireGuard peer's tunnel, whose peer is the terminal. On a
/// `tls` port the terminal also presents its certificate inside the tunnel, and the certificate
/// must name the same terminal: one device, not a key borrowed from another.
#[allow(clippy::too_many_arguments)]
pub async fn tunnel<S: Io>(
    gateway: &Arc<Gateway>,
    engine: Arc<Engine>,
    stream: S,
    source: SocketAddr,
    route: &Route,
    terminal: Terminal,
    key: crate::wg::keys::PublicKey,
    tls: bool,
    stopping: tokio::sync::watch::Receiver<bool>,
) {
    let Ok(permit) = gateway.connections.clone().try_acquire_owned() else {
        Metrics::inc(&gateway.metrics.connections_refused_total);
        tracing::warn!(%source, "connection limit reached; closing a new tunnel connection");
        return;
    };
    Metrics::inc(&gateway.metrics.connections_open);
    let started = Instant::now();
    let entry = Entry {
        terminal: Some(terminal.name.clone()),
        source: source.to_string(),
        route: route.name().to_owned(),
        ..Entry::default()
    };
    if tls {
        match Box::pin(handshake(gateway, stream, source, route)).await {
            Some(a) if a.terminal.name == terminal.name => {
                serve_route(gateway, engine, a, source, route, stopping).await
            }
            Some(a) => {
                gateway.audit.record_soon(Entry {
                    decision: Decision::Deny,
                    reason: format!(
                        "the certificate of terminal {:?} inside the WireGuard tunnel of {:?}",
                        a.terminal.name, terminal.name
                    ),
                    duration_ms: started.elapsed().as_millis() as u64,
                    ..entry
                });
            }
            None => {}
        }
    } else {
        let live = gateway.live();
        let proof = Proof::WireGuard(key);
        match live.admits(&proof) {
            Ok(()) => {
                gateway.audit.record_soon(Entry {
                    decision: Decision::Allow,
                    reason: "terminal admitted (WireGuard)".into(),
                    ..entry
                });
                let admitted = Admitted {
                    stream,
                    terminal,
                    proof,
                    generation: live.generation,
                };
                serve_route(gateway, engine, admitted, source, route, stopping).await
            }
            Err(why) => gateway.audit.record_soon(Entry {
                decision: Decision::Deny,
                reason: why,
                ..entry
            }),
        }
    }
    Metrics::dec(&gateway.metrics.connections_open);
    drop(permit);
}

/// The route phase, the same for every front door: a connection's future for its whole life,
/// boxed at its own size (an api connection's is not sized for the tcp route's, or the other
/// way round), since it is most of what an idle terminal costs.
fn serve_route<'a, S: Io>(
    gateway: &'a Arc<Gateway>,
    engine: Arc<Engine>,
    admitted: Admitted<S>,
    source: SocketAddr,
    route: &'a Route,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
    match route {
        Route::Api(name) => Box::pin(serve_api(gateway, engine, admitted, source, name, stopping)),
        Route::Tcp(route) => {
            let Admitted {
                stream,
                terminal,
                proof,
                ..
            } = admitted;
            Box::pin(tcp::serve(
                gateway.clone(),
                route.clone(),
                stream,
                terminal,
                proof,
                source,
            ))
        }
    }
}

/// The TLS handshake (the terminal check runs inside it) and the audit entry either way.
async fn handshake<S: Io>(
    gateway: &Arc<Gateway>,
    stream: S,
    source: SocketAddr,
    route: &Route,
) -> Option<Admitted<tokio_rustls::server::TlsStream<S>>> {
    let started = Instant::now();
    let live = gateway.live();
    let config = match route.kind() {
        ListenerKind::Api => live.api_tls.clone(),
        ListenerKind::Tcp => live.tcp_tls.clone(),
    };
    let deny = |reason: String| Entry {
        decision: Decision::Deny,
        reason,
        source: source.to_string(),
        route: route.name().to_owned(),
        duration_ms: started.elapsed().as_millis() as u64,
        ..Entry::default()
    };
    let accepted = tokio::time::timeout(
        gateway.config.limits.handshake_timeout(),
        TlsAcceptor::from(config).accept(stream),
    )
    .await;
    let tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            Metrics::inc(&gateway.metrics.handshake_failures_total);
            gateway.audit.record_soon(deny(tls::describe_failure(&e)));
            return None;
        }
        Err(_) => {
            Metrics::inc(&gateway.metrics.handshake_timeouts_total);
            let secs = gateway.config.limits.handshake_timeout_secs;
            gateway
                .audit
                .record_soon(deny(format!("no TLS handshake within {secs} s")));
            return None;
        }
    };
    let session = tls.get_ref().1;
    let chain: Vec<_> = session
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    // A full handshake ran the verifier just now, with this snapshot. A resumed one did not:
    // its certificate was checked when the session began (in this snapshot: a reload starts new
    // sessions), so check validity and the rest again now.
    let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let proof = Proof::Certificate(chain);
    let admitted = if resumed { live.admits(&proof) } else { Ok(()) };
    let terminal = match admitted.and_then(|()| {
        let Proof::Certificate(chain) = &proof else {
            return Err("no client certificate".into());
        };
        let leaf = chain.first().ok_or("no client certificate")?;
        Terminal::from_certificate(leaf)
    }) {
        Ok(t) => t,
        Err(why) => {
            Metrics::inc(&gateway.metrics.handshake_failures_total);
            gateway.audit.record_soon(deny(why));
            return None;
        }
    };
    Metrics::inc(&gateway.metrics.handshakes_total);
    let reason = format!(
        "terminal admitted ({}, {})",
        session
            .protocol_version()
            .map_or("?".into(), |v| format!("{v:?}")),
        session
            .negotiated_cipher_suite()
            .map_or("?".into(), |s| format!("{:?}", s.suite())),
    );
    gateway.audit.record_soon(Entry {
        decision: Decision::Allow,
        terminal: Some(terminal.name.clone()),
        reason,
        ..deny(String::new())
    });
    Some(Admitted {
        stream: tls,
        terminal,
        proof,
        generation: live.generation,
    })
}

/// The api route: HTTP/1.1 on the admitted stream until either side closes or shutdown.
/// (A plain function returning the server's future, not an `async fn` around it: that would
/// keep a second copy of the stream in its own state.)
fn serve_api<S: Io>(
    gateway: &Arc<Gateway>,
    engine: Arc<Engine>,
    admitted: Admitted<S>,
    source: SocketAddr,
    name: &str,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let Admitted {
        stream,
        terminal,
        proof,
        generation,
    } = admitted;
    let conn = Arc::new(http::Connection {
        gateway: gateway.clone(),
        engine,
        terminal,
        proof,
        source,
        route: name.to_owned(),
        checked: AtomicU64::new(generation),
        memo: Default::default(),
    });
    let limits = crate::h1::Limits {
        header_timeout: gateway.config.limits.header_timeout(),
        max_header_bytes: gateway.config.limits.max_header_bytes,
    };
    crate::h1::serve(stream, conn, limits, stopping)
}

/// The next connection, or `None` once shutdown has begun. A failed accept (out of file
/// descriptors or memory) backs off rather than spins.
pub(crate) async fn accept(
    listener: &TcpListener,
    stopping: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => return Some(pair),
                Err(e) => {
                    tracing::warn!(error = %e, address = ?listener.local_addr().ok(), "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            () = stopped(stopping) => return None,
        }
    }
}

/// Resolves once shutdown has begun (or the run loop is gone).
pub(crate) async fn stopped(stopping: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopping.wait_for(|s| *s).await;
}
