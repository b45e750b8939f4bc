//! The uplink to the cloud engine: one pooled hyper client over mutual TLS.
//!
//! A request arrives here already authorized; this stage only makes it a correct proxied request
//! (RFC 9110 §7.6: hop-by-hop fields removed, `Via` added, the engine's own credential in place
//! of the terminal's) and sends it. Bodies stream through in both directions: nothing here buffers
//! a body, so a 200 MB upload costs the gateway a few socket buffers, not 200 MB.

use std::time::Duration;

use http_body_util::combinators::BoxBody;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

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

/// The cloud engine, as the proxy sees it. A clone shares the connection pool.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, ProxyBody>,
    scheme: hyper::http::uri::Scheme,
    authority: hyper::http::uri::Authority,
    /// A path prefix such as `/api` (the cloud web version's), without a trailing slash.
    prefix: String,
    timeout: Duration,
}

impl Upstream {
    /// `url` is `https://host[:port][/prefix]` (or `http://` for an on-premises engine); `tls`
    /// carries the gateway's uplink certificate.
    pub fn new(url: &str, tls: rustls::ClientConfig, timeout: Duration) -> Result<Upstream, UpstreamError> {
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
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout.min(Duration::from_secs(10))));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            // The gateway's configuration admits only https:// for the cloud; plain http is for
            // an on-premises engine on the clinic's LAN.
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            // Idle engine connections kept per worker: enough for a clinic's steady load (nginx
            // keeps 64 per worker in the benchmark); a burst beyond it does not stay resident
            // (each costs ~20 KiB of TLS state and buffers).
            .pool_max_idle_per_host(32)
            // One TLS record and one write per request head and small body (see the gateway's
            // server side for the same reason).
            .http1_writev(false)
            .build(connector);
        Ok(Upstream {
            client,
            scheme,
            authority,
            prefix,
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
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}{path}", self.prefix))
            .build()
            .map_err(|e| UpstreamError::Url(path.to_owned(), e.to_string()))?;
        *req.uri_mut() = uri;
        let upgrade = is_upgrade(req.headers());
        let headers = req.headers_mut();
        strip_hop_by_hop(headers, upgrade);
        headers.remove(header::HOST);
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

/// The whole `source()` chain of an error, which is where hyper keeps the useful part.
fn error_chain(e: &dyn std::error::Error) -> String {
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
