//! Raw TCP routes: where a stream the gateway does not understand goes, and the connection there.
//!
//! A new stream follows the hybrid state: to the route's upstream while the cloud is up, to the
//! on-premises fallback while it is down (streams in flight stay where they are: DESIGN.md,
//! "Failover, precisely"). The upstream side is TCP, with TLS (the gateway's uplink certificate,
//! or the on-premises engine's trust) where the target speaks it.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::client::{Connector, Route};
use crate::health::Mode;

/// One `host:port` and how to speak to it, made once at start: the uplink client's connector.
pub struct Target {
    pub address: String,
    connector: Connector,
}

/// A raw TCP route's upstreams, fixed at start.
pub struct Targets {
    /// While the cloud is up.
    pub cloud: Target,
    /// While the cloud is down; without one, new streams are refused then.
    pub fallback: Option<Target>,
}

/// Why no stream was opened, or a target cannot be one.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("the cloud is down and this route has no fallback")]
    NoFallback,
    #[error("{0}")]
    Connect(String),
    #[error("raw TCP upstream {0:?}: {1}")]
    Target(String, String),
}

impl Target {
    /// `address` is `host:port` (`[v6]:port`); TLS with `tls` (which also names the certificate
    /// the target must present by its host), plain TCP when `None`. `timeout` bounds the TCP
    /// connection and the TLS handshake together.
    pub fn new(
        address: String,
        tls: Option<Arc<rustls::ClientConfig>>,
        timeout: Duration,
    ) -> Result<Target, StreamError> {
        let bad = |why: String| StreamError::Target(address.clone(), why);
        let (host, port) = split_host_port(&address).ok_or_else(|| bad("not host:port".into()))?;
        let connector = Connector::new(host, port, tls, Route::DIRECT, timeout).map_err(bad)?;
        Ok(Target { address, connector })
    }
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
        let conn = target
            .connector
            .connect()
            .await
            .map_err(|e| StreamError::Connect(e.to_string()))?;
        Ok(Box::new(conn.io))
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
        let at = |a: &str| Target::new(a.into(), None, Duration::from_secs(1)).unwrap();
        Targets {
            cloud: at("cloud.example:5432"),
            fallback: fallback.then(|| at("10.0.0.5:5432")),
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
