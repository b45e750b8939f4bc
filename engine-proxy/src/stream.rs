//! Raw TCP routes: where a stream the gateway does not understand goes, and the connection there.
//!
//! A new stream follows the hybrid state: to the route's upstream while the cloud is up, to the
//! on-premises fallback while it is down (streams in flight stay where they are: DESIGN.md,
//! "Failover, precisely"). The upstream side is TCP, with TLS (the gateway's uplink certificate,
//! or the on-premises engine's trust) where the target speaks it.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::health::Mode;

/// One `host:port` and how to speak to it.
#[derive(Clone)]
pub struct Target {
    pub address: String,
    /// TLS with this client configuration; plain TCP when `None`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A raw TCP route's upstreams, fixed at start.
pub struct Targets {
    /// While the cloud is up.
    pub cloud: Target,
    /// While the cloud is down; without one, new streams are refused then.
    pub fallback: Option<Target>,
    /// For the TCP connection and, separately, the TLS handshake.
    pub timeout: Duration,
}

/// Why no stream was opened.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the cloud is down and this route has no fallback")]
    NoFallback,
    #[error("{0}")]
    Connect(String),
}

/// A byte stream to an upstream: TCP, or TLS over it.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl Targets {
    /// Where a new stream goes in the hybrid state `mode`.
    pub fn choose(&self, mode: Mode) -> Result<&Target, StreamError> {
        match (mode, &self.fallback) {
            (Mode::Emergency, Some(fallback)) => Ok(fallback),
            (Mode::Emergency, None) => Err(StreamError::NoFallback),
            _ => Ok(&self.cloud),
        }
    }

    /// Connects to `target`: TCP, then TLS unless the target is plain.
    pub async fn connect(&self, target: &Target) -> Result<Box<dyn Stream>, StreamError> {
        let fail = StreamError::Connect;
        let timeout = self.timeout;
        let (host, port) =
            split_host_port(&target.address).ok_or_else(|| fail("bad upstream address".into()))?;
        let tcp = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| fail(format!("no connection within {timeout:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &target.tls else {
            return Ok(Box::new(tcp));
        };
        let name = ServerName::try_from(host.to_owned()).map_err(|e| fail(e.to_string()))?;
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let tls = tokio::time::timeout(timeout, connector.connect(name, tcp))
            .await
            .map_err(|_| fail(format!("no TLS handshake within {timeout:?}")))?
            .map_err(|e| fail(e.to_string()))?;
        Ok(Box::new(tls))
    }
}

/// Splits `host:port` (with `[v6]:port`), the form of a raw TCP upstream.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(fallback: bool) -> Targets {
        let at = |a: &str| Target {
            address: a.into(),
            tls: None,
        };
        Targets {
            cloud: at("cloud.example:5432"),
            fallback: fallback.then(|| at("10.0.0.5:5432")),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn new_streams_follow_the_hybrid_state() {
        let with = targets(true);
        assert_eq!(with.choose(Mode::Normal).unwrap().address, "cloud.example:5432");
        assert_eq!(with.choose(Mode::Recovery).unwrap().address, "cloud.example:5432");
        assert_eq!(with.choose(Mode::Emergency).unwrap().address, "10.0.0.5:5432");
        assert!(matches!(
            targets(false).choose(Mode::Emergency),
            Err(StreamError::NoFallback)
        ));
    }

    #[test]
    fn host_and_port() {
        assert_eq!(split_host_port("pacs.local:104"), Some(("pacs.local", 104)));
        assert_eq!(split_host_port("[::1]:8000"), Some(("::1", 8000)));
        assert_eq!(split_host_port(":80"), None);
        assert_eq!(split_host_port("host"), None);
        assert_eq!(split_host_port("host:port"), None);
    }
}
