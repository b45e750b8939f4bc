//! The uplink to the cloud engine: one pooled HTTP/1.1 client ([`client`]) over mutual TLS.
//!
//! A request arrives here already authorized; this stage only makes it a correct proxied request
//! (RFC 9110 §7.6: hop-by-hop fields removed, `Via` added, the engine's own credential in place
//! of the terminal's) and sends it. Bodies stream through in both directions: nothing here buffers
//! a body, so a 200 MB upload costs the gateway a few socket buffers, not 200 MB.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, Uri};

use crate::client::{self, Client, Route};
use crate::fields::is_upgrade;

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

/// The cloud engine over one path, as the proxy sees it. A clone shares the connection pool.
#[derive(Clone)]
pub struct Upstream {
    client: Client,
    /// `host[:port]` as the URL has it, for the audit log.
    authority: Arc<str>,
    /// A path prefix such as `/api` (the cloud web version's), without a trailing slash.
    prefix: String,
    /// The `Host` every request carries, made once.
    host: HeaderValue,
    timeout: Duration,
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
        // The gateway's configuration admits only https:// for the cloud; plain http is for an
        // on-premises engine on the clinic's LAN.
        let (tls, default_port) = match scheme.as_str() {
            "https" => (Some(Arc::new(tls)), 443),
            "http" => (None, 80),
            _ => return Err(bad("the scheme must be https or http")),
        };
        let port = authority.port_u16().unwrap_or(default_port);
        // The host, and the port unless it is the scheme's own (RFC 9110 §7.2).
        let host = match port == default_port {
            true => authority.host().to_owned(),
            false => format!("{}:{port}", authority.host()),
        };
        let host = HeaderValue::from_str(&host).map_err(|_| bad("the host is not a valid Host field"))?;
        let client = Client::new(authority.host(), port, tls, route, timeout).map_err(|why| bad(&why))?;
        Ok(Upstream {
            client,
            authority: authority.as_str().into(),
            prefix,
            host,
            timeout,
        })
    }

    /// The engine's address, for the audit log.
    pub fn authority(&self) -> &Arc<str> {
        &self.authority
    }

    /// Sends a request the gateway has authorized, with `authorization` (the engine credential
    /// for this person or clinic) replacing whatever the terminal sent.
    pub async fn forward(
        &self,
        req: Request<ProxyBody>,
        authorization: HeaderValue,
    ) -> Result<Response<client::Body>, UpstreamError> {
        let (head, body) = req.into_parts();
        let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
        let began = tokio::time::Instant::now();
        self.forward_parts(&head.method, path, &head.headers, authorization, body, began)
            .await
    }

    /// As [`Upstream::forward`], from a head the caller keeps: a failover attempt's, which may
    /// be sent again over another path. The proxied head is written from `fields` as they are,
    /// less `Host`, `Authorization` and the hop-by-hop fields, with `Host`, the engine's
    /// `Authorization` and `Via` added; only a message that carries hop-by-hop fields is copied
    /// to strip them. The upstream timeout runs from `began`, the moment the caller timed the
    /// call from.
    pub async fn forward_parts(
        &self,
        method: &Method,
        path_and_query: &str,
        fields: &HeaderMap,
        authorization: HeaderValue,
        body: ProxyBody,
        began: tokio::time::Instant,
    ) -> Result<Response<client::Body>, UpstreamError> {
        let target = self.target(path_and_query);
        let upgrade = is_upgrade(fields);
        let stripped;
        let fields = match upgrade || fields.keys().any(is_hop_by_hop) {
            false => fields,
            true => {
                let mut copy = fields.clone();
                strip_hop_by_hop(&mut copy, upgrade);
                stripped = copy;
                &stripped
            }
        };
        let mut authorization = authorization;
        authorization.set_sensitive(true);
        let sent = fields
            .iter()
            .filter(|(name, _)| *name != header::HOST && *name != header::AUTHORIZATION);
        let names = [header::HOST, header::AUTHORIZATION, header::VIA];
        let fields = std::iter::once((&names[0], &self.host))
            .chain(sent)
            .chain([(&names[1], &authorization), (&names[2], &VIA)]);
        let head = client::Head {
            method,
            target: &target,
            fields,
            upgrade,
        };
        let mut resp = self.send(head, body, began + self.timeout).await?;
        let upgraded = resp.status() == hyper::StatusCode::SWITCHING_PROTOCOLS;
        strip_hop_by_hop(resp.headers_mut(), upgraded);
        resp.headers_mut().append(header::VIA, VIA.clone());
        Ok(resp)
    }

    /// Sends a request and waits for the answer's head until `due` (the upstream timeout after
    /// the call began: the caller's reading of the clock, which it has made anyway).
    async fn send<'a, F>(
        &self,
        head: client::Head<'a, F>,
        body: ProxyBody,
        due: tokio::time::Instant,
    ) -> Result<Response<client::Body>, UpstreamError>
    where
        F: IntoIterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    {
        // Raced with a timer rather than wrapped in `tokio::time::timeout`: the wrapper took the
        // client's future and was itself moved, each twice, 2.3 KB copied per request.
        tokio::select! {
            biased;
            sent = self.client.send(head, body) => sent.map_err(|e| UpstreamError::Connect(e.to_string())),
            () = tokio::time::sleep_until(due) => Err(UpstreamError::Timeout(self.timeout)),
        }
    }

    /// The request target on the engine for `path` (with its query): the prefix, then the path.
    fn target<'a>(&self, path: &'a str) -> Cow<'a, str> {
        match self.prefix.as_str() {
            "" => Cow::Borrowed(path),
            prefix => Cow::Owned(format!("{prefix}{path}")),
        }
    }

    /// A plain GET of `path_and_query` (after the prefix), carrying nothing of a terminal's:
    /// the firmware download's, on the same HTTP client as the proxy's. `timeout` bounds the
    /// answer's head; the body is the caller's to bound.
    pub async fn get(
        &self,
        path_and_query: &str,
        user_agent: &'static str,
    ) -> Result<Response<client::Body>, UpstreamError> {
        use http_body_util::BodyExt;
        let path = hyper::http::uri::PathAndQuery::try_from(path_and_query)
            .map_err(|e| UpstreamError::Url(path_and_query.to_owned(), e.to_string()))?;
        let empty: ProxyBody = http_body_util::Empty::new().map_err(|e| match e {}).boxed();
        let user_agent = HeaderValue::from_static(user_agent);
        let (get, names) = (Method::GET, [header::HOST, header::USER_AGENT]);
        let target = self.target(path.as_str());
        let head = client::Head {
            method: &get,
            target: &target,
            fields: [(&names[0], &self.host), (&names[1], &user_agent)],
            upgrade: false,
        };
        self.send(head, empty, tokio::time::Instant::now() + self.timeout)
            .await
    }
}

/// What the gateway adds to every message it passes on, both ways (RFC 9110 §7.6.3).
static VIA: HeaderValue = HeaderValue::from_static("1.1 kakehashi");

/// Removes the fields that describe one hop, not the message (RFC 9110 §7.6.1): `Connection`
/// and every field it names, and the fixed list. For a protocol upgrade, `Connection: upgrade`
/// and `Upgrade` are the message, and are kept.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none of them: one pass over the names, not a removal per name.
    if !upgrade && !headers.keys().any(is_hop_by_hop) {
        return;
    }
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
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    for name in UNOFFICIAL {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// The fields that describe one hop whether `Connection` names them or not (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 5] = [
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];
/// Hop-by-hop fields of HTTP/1.0 practice, outside the standard's registry.
const UNOFFICIAL: [&str; 2] = ["keep-alive", "proxy-connection"];

/// A field [`strip_hop_by_hop`] may remove: `Connection` (without which no other field is named
/// hop-by-hop), `Upgrade`, or one of the fixed lists.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::UPGRADE
        || HOP_BY_HOP.contains(name)
        || UNOFFICIAL.contains(&name.as_str())
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
    fn a_message_without_hop_by_hop_fields_is_left_alone_and_one_with_only_unofficial_ones_is_not() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(header::VIA, HeaderValue::from_static("1.1 lb"));
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    /// A TLS configuration for upstreams the tests reach over plain HTTP, or not at all.
    fn unused_tls() -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(rustls::crypto::aws_lc_rs::default_provider().into())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    }

    /// The head the engine receives for a request with `fields`, forwarded with the engine
    /// credential `Basic ZW5naW5l`, one field per line.
    async fn proxied(fields: &[(&'static str, &'static str)]) -> Vec<String> {
        let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let (port, mut seen) = crate::client::tests::engine(vec![vec![ok]]).await;
        let up = Upstream::new(
            &format!("http://127.0.0.1:{port}/api"),
            unused_tls(),
            Duration::from_secs(5),
        )
        .unwrap();
        let mut req = Request::get("/patients?id=1")
            .body(crate::client::tests::full(""))
            .unwrap();
        for (name, value) in fields {
            req.headers_mut().append(*name, HeaderValue::from_static(value));
        }
        let resp = up
            .forward(req, HeaderValue::from_static("Basic ZW5naW5l"))
            .await
            .unwrap();
        assert_eq!(resp.headers().get(header::VIA).unwrap(), "1.1 kakehashi");
        let head = seen.recv().await.unwrap();
        head.trim_end().lines().map(str::to_owned).collect()
    }

    #[tokio::test]
    async fn the_proxied_head_is_the_terminals_with_host_and_credential_replaced_and_via_added() {
        let head = proxied(&[
            ("host", "gateway.clinic"),
            ("authorization", "Basic dGVybWluYWw="),
            ("accept", "application/json"),
            ("x-request", "1"),
            ("x-request", "2"),
        ])
        .await;
        let port = head[1].trim_start_matches("host: 127.0.0.1:").to_owned();
        assert!(port.parse::<u16>().is_ok(), "Host comes first: {head:?}");
        assert_eq!(
            head,
            [
                "GET /api/patients?id=1 HTTP/1.1".to_owned(),
                format!("host: 127.0.0.1:{port}"),
                "accept: application/json".into(),
                "x-request: 1".into(),
                "x-request: 2".into(),
                "authorization: Basic ZW5naW5l".into(),
                "via: 1.1 kakehashi".into(),
            ]
        );
    }

    #[tokio::test]
    async fn a_terminals_hop_by_hop_fields_do_not_reach_the_engine() {
        let head = proxied(&[
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic cHJveHk="),
            ("keep-alive", "timeout=5"),
            ("accept", "application/json"),
        ])
        .await;
        assert_eq!(
            head[2..],
            [
                "accept: application/json",
                "authorization: Basic ZW5naW5l",
                "via: 1.1 kakehashi"
            ]
        );
    }

    #[test]
    fn the_host_field_names_the_port_only_when_it_is_not_the_schemes() {
        let tls = unused_tls();
        let host = |url: &str| {
            let up = Upstream::new(url, tls.clone(), Duration::from_secs(1)).unwrap();
            (
                up.host.to_str().unwrap().to_owned(),
                up.target("/a?b=1").into_owned(),
            )
        };
        assert_eq!(
            host("https://engine.example:443/api/"),
            ("engine.example".into(), "/api/a?b=1".into())
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
