//! Raw TCP routes: bytes from an admitted terminal to a fixed upstream, for protocols the gateway
//! does not understand. The terminal is identified by its certificate as on every listener; the
//! person by a live login session on that terminal (when the route requires one).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::audit::{Decision, Entry};
use crate::config::{Listener, split_host_port};
use crate::identity::{Proof, Terminal};
use crate::metrics::Metrics;
use crate::state::Gateway;

/// One raw TCP route's settings, fixed at start.
pub struct Route {
    pub name: String,
    pub upstream: String,
    pub upstream_tls: bool,
    pub require_login: bool,
    /// Where new streams go while the cloud is down.
    pub fallback: Option<String>,
}

impl Route {
    pub fn new(listener: &Listener) -> Route {
        Route {
            name: listener.route(),
            upstream: listener.upstream.clone().unwrap_or_default(),
            upstream_tls: listener.upstream_tls,
            require_login: listener.require_login,
            fallback: listener.fallback.clone(),
        }
    }
}

/// Carries one terminal's stream to the route's upstream, and audits it.
pub async fn serve<S>(
    gateway: Arc<Gateway>,
    route: Arc<Route>,
    mut stream: S,
    terminal: Terminal,
    proof: Proof,
    source: SocketAddr,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut entry = Entry {
        terminal: Some(terminal.name.clone()),
        source: source.to_string(),
        route: route.name.clone(),
        upstream: Some(route.upstream.clone()),
        ..Entry::default()
    };
    let refused = if gateway.audit.is_failing() {
        Some(crate::audit::FAILING)
    } else if route.require_login && !gateway.people.signed_in(&terminal) {
        Some("no person signed in on this terminal")
    } else {
        None
    };
    if let Some(why) = refused {
        entry.decision = Decision::Deny;
        entry.reason = why.into();
        gateway.audit.record_soon(entry);
        return;
    }
    // New streams follow the hybrid state; streams in flight stay where they are.
    let emergency = gateway.failover.health.mode() == engine_proxy::health::Mode::Emergency;
    let target = match (&route.fallback, emergency) {
        (_, false) => Target {
            address: &route.upstream,
            tls: route.upstream_tls.then(|| gateway.uplink.clone()),
        },
        (Some(fallback), true) => Target {
            address: fallback,
            // The on-premises engine's scheme says whether it speaks TLS.
            tls: gateway.onprem_tls.clone().filter(|_| {
                gateway
                    .config
                    .failover
                    .engine
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https:"))
            }),
        },
        (None, true) => {
            entry.decision = Decision::Deny;
            entry.reason = "the cloud is down and this route has no fallback".into();
            gateway.audit.record_soon(entry);
            return;
        }
    };
    entry.upstream = Some(target.address.to_owned());
    let mut upstream = match connect(&gateway, &target).await {
        Ok(s) => s,
        Err(e) => {
            Metrics::inc(&gateway.metrics.upstream_errors_total);
            entry.decision = Decision::Allow;
            entry.reason = format!("allowed; upstream unreachable: {e}");
            gateway.audit.record_soon(entry);
            return;
        }
    };
    Metrics::inc(&gateway.metrics.tcp_streams_total);
    entry.decision = Decision::Allow;
    entry.reason = "allowed".into();
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut stream, &mut upstream) => {
            if let Ok((up, down)) = copied {
                entry.bytes_in = up;
                entry.bytes_out = down;
            }
        }
        why = gateway.revoked(&proof) => {
            entry.reason = format!("allowed; stream closed by a reload: {why}");
        }
    }
    Metrics::add(&gateway.metrics.bytes_from_terminals_total, entry.bytes_in);
    Metrics::add(&gateway.metrics.bytes_to_terminals_total, entry.bytes_out);
    entry.duration_ms = started.elapsed().as_millis() as u64;
    gateway.audit.record_soon(entry);
}

/// Where a stream goes, and with which TLS client configuration if any.
struct Target<'a> {
    address: &'a str,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// The upstream side: TCP, then TLS with the uplink certificate unless the target is plain.
async fn connect(gateway: &Gateway, target: &Target<'_>) -> Result<Box<dyn Stream>, String> {
    let (host, port) = split_host_port(target.address).ok_or("bad upstream address")?;
    let timeout = gateway.config.limits.upstream_timeout();
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| format!("no connection within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &target.tls else {
        return Ok(Box::new(tcp));
    };
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let tls = tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| format!("no TLS handshake within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    Ok(Box::new(tls))
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
