//! Raw TCP routes: bytes from an admitted terminal to a fixed upstream, for protocols the gateway
//! does not understand. The terminal is identified by its certificate as on every listener; the
//! person by a live login session on that terminal (when the route requires one).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::audit::{Decision, Entry};
use crate::config::{Listener, split_host_port};
use crate::identity::Terminal;
use crate::metrics::Metrics;
use crate::state::Gateway;

/// One raw TCP route's settings, fixed at start.
pub struct Route {
    pub name: String,
    pub upstream: String,
    pub upstream_tls: bool,
    pub require_login: bool,
}

impl Route {
    pub fn new(listener: &Listener) -> Route {
        Route {
            name: listener.route(),
            upstream: listener.upstream.clone().unwrap_or_default(),
            upstream_tls: listener.upstream_tls,
            require_login: listener.require_login,
        }
    }
}

/// Carries one terminal's stream to the route's upstream, and audits it.
pub async fn serve<S>(
    gateway: Arc<Gateway>,
    route: Arc<Route>,
    mut stream: S,
    terminal: Terminal,
    chain: Vec<CertificateDer<'static>>,
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
    if route.require_login && !gateway.people.signed_in(&terminal) {
        entry.decision = Decision::Deny;
        entry.reason = "no person signed in on this terminal".into();
        gateway.audit.record_soon(entry);
        return;
    }
    let mut upstream = match connect(&gateway, &route).await {
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
        why = gateway.revoked(&chain) => {
            entry.reason = format!("allowed; stream closed by a reload: {why}");
        }
    }
    Metrics::add(&gateway.metrics.bytes_from_terminals_total, entry.bytes_in);
    Metrics::add(&gateway.metrics.bytes_to_terminals_total, entry.bytes_out);
    entry.duration_ms = started.elapsed().as_millis() as u64;
    gateway.audit.record_soon(entry);
}

/// The upstream side: TCP, then TLS with the uplink certificate unless the route says not to.
async fn connect(gateway: &Gateway, route: &Route) -> Result<Box<dyn Stream>, String> {
    let (host, port) = split_host_port(&route.upstream).ok_or("bad upstream address")?;
    let timeout = gateway.config.limits.upstream_timeout();
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| format!("no connection within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    if !route.upstream_tls {
        return Ok(Box::new(tcp));
    }
    let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(gateway.uplink.clone());
    let tls = tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| format!("no TLS handshake within {timeout:?}"))?
        .map_err(|e| e.to_string())?;
    Ok(Box::new(tls))
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}
