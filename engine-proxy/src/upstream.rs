//! The uplink to the cloud engine: one pooled hyper client over mutual TLS.
//!
//! A request arrives here already authorized; this stage only makes it a correct proxied request
//! (RFC 9110 §7.6: hop-by-hop fields removed, `Via` added, the engine's own credential in place
//! of the terminal's) and sends it. Bodies stream through in both directions: nothing here buffers
//! a body, so a 200 MB upload costs the gateway a few socket buffers, not 200 MB.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::DuplexStream;

/// The body type the proxy forwards: any stream of bytes, errors boxed.
pub type ProxyBody = BoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request did not reach the engine or the engine did not answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream URL {0:?}: {1}")]
    Url(String, String),
    #[error("the engine did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the engine: {0}")]
    Connect(String),
}

/// How a path reaches the engine.
#[derive(Clone)]
pub enum Route {
    /// A TCP connection from this host. Optionally to a fixed address (the engine's across a
    /// private interconnect: the URL's host still names the certificate it must present), from a
    /// given source address or through a given interface (a second line).
    Line {
        connect: Option<SocketAddr>,
        bind: Option<IpAddr>,
        interface: Option<String>,
    },
    /// A byte stream the gateway opens itself: its own WireGuard tunnel to the data centre.
    Dial(Arc<dyn Dial>),
}

/// Opens byte streams to the engine over something other than the host's TCP: the gateway's
/// WireGuard uplink implements it with its userspace TCP/IP stack, so the tunnel needs neither a
/// kernel module nor privileges.
/// The URL's host still names the certificate the engine must present; where the stream goes is
/// the dialer's (the engine's address inside the tunnel).
pub trait Dial: Send + Sync + 'static {
    fn dial(&self) -> Pin<Box<dyn Future<Output = io::Result<DuplexStream>> + Send>>;
}

/// The cloud engine over one path, as the proxy sees it. A clone shares the connection pool.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<Connector>, ProxyBody>,
    scheme: hyper::http::uri::Scheme,
    authority: hyper::http::uri::Authority,
    /// A path prefix such as `/api` (the cloud web version's), without a trailing slash.
    prefix: String,
    /// The `Host` every request carries, made once (hyper's client would make it per request).
    host: HeaderValue,
    timeout: Duration,
}

impl Route {
    /// A TCP connection to the URL's host, as the routing table sends it.
    pub const DIRECT: Route = Route::Line {
        connect: None,
        bind: None,
        interface: None,
    };
}

impl Upstream {
    /// `url` is `https://host[:port][/prefix]` (or `http://` for an on-premises engine); `tls`
    /// carries the gateway's uplink certificate.
    pub fn new(url: &str, tls: rustls::ClientConfig, timeout: Duration) -> Result<Upstream, UpstreamError> {
        Upstream::over(url, tls, timeout, Route::DIRECT)
    }

    /// As [`Upstream::new`], over a given route.
    pub fn over(
        url: &str,
        tls: rustls::ClientConfig,
        timeout: Duration,
        route: Route,
    ) -> Result<Upstream, UpstreamError> {
        let bad = |why: &str| UpstreamError::Url(url.to_owned(), why.to_owned());
        let uri: Uri = url
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| bad(&e.to_string()))?;
        let parts = uri.into_parts();
        let scheme = parts.scheme.ok_or_else(|| bad("no scheme"))?;
        let authority = parts.authority.ok_or_else(|| bad("no host"))?;
        let prefix = parts
            .path_and_query
            .map(|p| p.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        // The host, and the port unless it is the scheme's own (RFC 9110 §7.2).
        let host = match authority.port_u16() {
            Some(port) if !matches!((scheme.as_str(), port), ("https", 443) | ("http", 80)) => {
                format!("{}:{port}", authority.host())
            }
            _ => authority.host().to_owned(),
        };
        let host = HeaderValue::from_str(&host).map_err(|_| bad("the host is not a valid Host field"))?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout.min(Duration::from_secs(10))));
        let connector = match route {
            Route::Line {
                connect,
                bind,
                interface,
            } => {
                http.set_local_address(bind);
                if let Some(interface) = interface {
                    http.set_interface(interface);
                }
                Connector::Tcp(http, connect)
            }
            Route::Dial(dial) => Connector::Dial(dial),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            // The gateway's configuration admits only https:// for the cloud; plain http is for
            // an on-premises engine on the clinic's LAN.
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let client = Client::builder(TokioExecutor::new())
            // Below the 60 s after which cloud load balancers commonly close an idle
            // connection (one closed under a request costs a retry), and short enough that a
            // burst's connections are gone a minute after it.
            .pool_idle_timeout(Duration::from_secs(30))
            // Without a timer the pool drops an idle connection only when a request looks at it.
            .pool_timer(hyper_util::rt::TokioTimer::new())
            // Idle engine connections kept per worker: enough for a clinic's steady load (nginx
            // keeps 64 per worker in the benchmark); a burst beyond it does not stay resident
            // (each costs ~20 KiB of TLS state and buffers).
            .pool_max_idle_per_host(32)
            // One TLS record and one write per request head and small body (see the gateway's
            // server side for the same reason).
            .http1_writev(false)
            // Each request carries `host` instead.
            .set_host(false)
            .build(connector);
        Ok(Upstream {
            client,
            scheme,
            authority,
            prefix,
            host,
            timeout,
        })
    }

    /// The engine's address, for the audit log.
    pub fn authority(&self) -> &str {
        self.authority.as_str()
    }

    /// Sends a request the gateway has authorized, with `authorization` (the engine credential
    /// for this person or clinic) replacing whatever the terminal sent.
    pub async fn forward(
        &self,
        mut req: Request<ProxyBody>,
        authorization: HeaderValue,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *req.uri_mut() = self.uri(path)?;
        let upgrade = is_upgrade(req.headers());
        let headers = req.headers_mut();
        strip_hop_by_hop(headers, upgrade);
        headers.insert(header::HOST, self.host.clone());
        headers.remove(header::PROXY_AUTHORIZATION);
        let mut authorization = authorization;
        authorization.set_sensitive(true);
        headers.insert(header::AUTHORIZATION, authorization);
        headers.append(header::VIA, HeaderValue::from_static("1.1 kakehashi"));
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(UpstreamError::Connect(error_chain(&e))),
            Ok(Ok(mut resp)) => {
                let upgraded = resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS;
                strip_hop_by_hop(resp.headers_mut(), upgraded);
                resp.headers_mut()
                    .append(header::VIA, HeaderValue::from_static("1.1 kakehashi"));
                Ok(resp)
            }
        }
    }
}

impl Upstream {
    /// The upstream's URL for `path` (with its query): its scheme, host and prefix. Without a
    /// prefix the request's own path is reused, not copied and parsed again.
    fn uri(&self, path: PathAndQuery) -> Result<Uri, UpstreamError> {
        let bad = |e: &dyn std::fmt::Display| UpstreamError::Url(path.as_str().to_owned(), e.to_string());
        let path_and_query = match self.prefix.as_str() {
            "" => path.clone(),
            prefix => PathAndQuery::try_from(format!("{prefix}{}", path.as_str())).map_err(|e| bad(&e))?,
        };
        let mut parts = hyper::http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).map_err(|e| bad(&e))
    }

    /// A plain GET of `path_and_query` (after the prefix), carrying nothing of a terminal's:
    /// the firmware download's, on the same HTTP client as the proxy's (one copy of hyper's
    /// client code in the router's binary). `timeout` bounds the answer's head; the body is
    /// the caller's to bound.
    pub async fn get(
        &self,
        path_and_query: &str,
        user_agent: &'static str,
    ) -> Result<Response<Incoming>, UpstreamError> {
        use http_body_util::BodyExt;
        let path = PathAndQuery::try_from(path_and_query)
            .map_err(|e| UpstreamError::Url(path_and_query.to_owned(), e.to_string()))?;
        let uri = self.uri(path)?;
        let empty: ProxyBody = http_body_util::Empty::new().map_err(|e| match e {}).boxed();
        let req = Request::get(uri)
            .header(header::HOST, self.host.clone())
            .header(header::USER_AGENT, HeaderValue::from_static(user_agent))
            .body(empty)
            .map_err(|e| UpstreamError::Url(path_and_query.to_owned(), e.to_string()))?;
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(self.timeout)),
            Ok(Err(e)) => Err(UpstreamError::Connect(error_chain(&e))),
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

/// The connector under the TLS layer: the host's TCP, or a path's own dialer.
#[derive(Clone)]
enum Connector {
    /// The host's TCP, to the URL's host or to a fixed address.
    Tcp(HttpConnector, Option<SocketAddr>),
    Dial(Arc<dyn Dial>),
}

type Connecting = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

impl tower_service::Service<Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Connector::Tcp(http, _) => http.poll_ready(cx).map_err(Into::into),
            Connector::Dial(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        match self {
            Connector::Tcp(http, connect) => {
                let uri = match connect {
                    // The TLS layer above names the server from the original URL.
                    Some(addr) => match Uri::builder()
                        .scheme("http")
                        .authority(addr.to_string())
                        .path_and_query("/")
                        .build()
                    {
                        Ok(uri) => uri,
                        Err(e) => return Box::pin(async move { Err(e.into()) }),
                    },
                    None => uri,
                };
                let connecting = http.call(uri);
                Box::pin(async move { Ok(Stream::Tcp(connecting.await?)) })
            }
            Connector::Dial(dial) => {
                let dialing = dial.dial();
                Box::pin(async move { Ok(Stream::Pipe(TokioIo::new(dialing.await?))) })
            }
        }
    }
}

/// A connection to the engine, whichever way it was opened.
enum Stream {
    Tcp(TokioIo<tokio::net::TcpStream>),
    Pipe(TokioIo<DuplexStream>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Tcp(s) => s.connected(),
            Stream::Pipe(_) => Connected::new(),
        }
    }
}

impl hyper::rt::Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Pipe(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Pipe(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Pipe(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Pipe(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The whole `source()` chain of an error, which is where hyper keeps the useful part (and
/// tokio-rustls rustls' reason for a failed handshake).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// A request asking to switch protocols (the push WebSocket).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes the fields that describe one hop, not the message (RFC 9110 §7.6.1): `Connection`
/// and every field it names, and the fixed list. For a protocol upgrade, `Connection: upgrade`
/// and `Upgrade` are the message, and are kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && n == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn the_host_field_names_the_port_only_when_it_is_not_the_schemes() {
        let tls =
            rustls::ClientConfig::builder_with_provider(rustls::crypto::aws_lc_rs::default_provider().into())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
        let host = |url: &str| {
            let up = Upstream::new(url, tls.clone(), Duration::from_secs(1)).unwrap();
            (
                up.host.to_str().unwrap().to_owned(),
                up.uri(PathAndQuery::from_static("/a?b=1")).unwrap().to_string(),
            )
        };
        assert_eq!(
            host("https://engine.example:443/api/"),
            (
                "engine.example".into(),
                "https://engine.example:443/api/a?b=1".into()
            )
        );
        assert_eq!(host("https://127.0.0.1:8443").0, "127.0.0.1:8443");
        assert_eq!(host("http://[::1]:80").0, "[::1]");
        assert_eq!(host("http://onprem.lan:8000").0, "onprem.lan:8000");
    }

    #[test]
    fn an_upgrade_keeps_its_upgrade_fields() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(
            h.get(header::UPGRADE).map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(
            h.get(header::CONNECTION).map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
    }
}
