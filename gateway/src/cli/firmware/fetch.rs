//! Images from a URL: `kakehashi firmware install https://…/kakehashi-1.4.0.img`.
//!
//! A [`Download`] is a [`Read`] that the installer consumes exactly as it consumes an image
//! file: [`firmware::image::read_signed`] reads the magic line and the signed manifest and
//! checks the signature before a byte of the payload is asked for, then the installer pulls
//! the payload one chunk at a time, checks each chunk against its signed hash and writes it to
//! the inactive slot. The payload is never stored anywhere else: no temporary copy of the
//! image, on flash or in memory (a chunk at a time, and what one TCP read brings).
//!
//! The integrity comes from the signature, not from the transport: an image that was changed
//! on the way is refused at the manifest or at the first chunk that differs, whether it came
//! over HTTPS, plain HTTP or a USB stick. HTTPS adds that nobody on the path can see what is
//! installed or choose what is served (docs/firmware.md, "Images from a URL").
//!
//! hyper's HTTP/1.1 client over tokio-rustls, the stack the uplink already uses, on a runtime
//! of one thread that runs only while the installer waits for bytes. Every wait is bounded:
//! connecting, the TLS handshake, the response's head, and each read of the body (a server that
//! stops sending is an error after `firmware.fetch_timeout_secs`, however long the whole
//! download takes).

use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Runtime;

use engine_proxy::upstream::error_chain;

use super::{FirmwareCliError, Result};

/// The system's CA certificates on Debian (package `ca-certificates`): the roots an image
/// server is checked against unless `firmware.ca` names others.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// How long connecting to the server may take at most (less if the timeout is shorter).
const CONNECT: Duration = Duration::from_secs(10);
/// Redirects followed (a release server commonly sends one to its CDN).
const MAX_REDIRECTS: usize = 5;

/// Whether `source` (the argument of `firmware install`) is a URL rather than a file.
pub fn is_url(source: &str) -> bool {
    source.starts_with("https://") || source.starts_with("http://")
}

/// An image being downloaded: the response body, read as it arrives.
pub struct Download {
    runtime: Runtime,
    body: Incoming,
    /// What the last frame brought and [`Read::read`] has not handed on yet.
    pending: Bytes,
    /// The URL the body comes from (the last one, after redirects), for messages.
    url: String,
    received: u64,
    /// The `Content-Length` the server announced, if any.
    length: Option<u64>,
    /// How long the server may send nothing.
    idle: Duration,
}

impl Download {
    /// The length the server announced (`Content-Length`), if it did.
    pub fn length(&self) -> Option<u64> {
        self.length
    }

    /// The URL the image came from, after redirects.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn so_far(&self) -> String {
        match self.length {
            Some(length) => format!("after {} of {length} bytes", self.received),
            None => format!("after {} bytes", self.received),
        }
    }
}

impl Read for Download {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pending.is_empty() {
            let (body, idle) = (&mut self.body, self.idle);
            // The timer is made inside the runtime, which it needs.
            let frame = self
                .runtime
                .block_on(async { tokio::time::timeout(idle, body.frame()).await });
            let frame = match frame {
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the server sent nothing for {} s {}",
                            self.idle.as_secs(),
                            self.so_far()
                        ),
                    ));
                }
                Ok(None) => return Ok(0),
                Ok(Some(Err(e))) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "the download was cut short {}: {}",
                            self.so_far(),
                            error_chain(&e)
                        ),
                    ));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                self.pending = data;
            }
        }
        let n = out.len().min(self.pending.len());
        out[..n].copy_from_slice(&self.pending[..n]);
        self.pending.advance(n);
        self.received += n as u64;
        Ok(n)
    }
}

/// Starts downloading `url`: connects, checks the server's certificate against the roots in
/// `ca` (HTTPS), sends the request and follows redirects until a `200 OK` whose body is ready to
/// be read. `timeout` bounds the TLS handshake, the wait for the response's head, and each
/// wait for more of the body. Every error names the URL and what failed: the connection, the
/// TLS handshake (an unknown issuer, a name that does not match), the HTTP status.
pub fn get(url: &str, ca: &Path, timeout: Duration) -> Result<Download> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FirmwareCliError::Message(format!("cannot start the downloader: {e}")))?;
    let mut current = url.to_owned();
    let mut tls: Option<Arc<rustls::ClientConfig>> = None;
    for _ in 0..=MAX_REDIRECTS {
        let fail = |why: String| FirmwareCliError::Message(format!("{current}: {why}"));
        let uri: Uri = current.parse().map_err(|e| fail(format!("not a URL: {e}")))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(fail("only https:// and http:// URLs are fetched".into())),
        };
        let host = uri
            .host()
            .ok_or_else(|| fail("the URL names no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let config = if https {
            match &tls {
                Some(config) => Some(config.clone()),
                None => {
                    let config = client_config(ca).map_err(|e| fail(e.to_string()))?;
                    tls = Some(config.clone());
                    Some(config)
                }
            }
        } else {
            None
        };
        let response = runtime
            .block_on(request(&uri, &host, port, config, timeout))
            .map_err(fail)?;
        let status = response.status();
        if status == StatusCode::OK {
            let length = response
                .headers()
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            return Ok(Download {
                runtime,
                body: response.into_body(),
                pending: Bytes::new(),
                url: current,
                received: 0,
                length,
                idle: timeout,
            });
        }
        if status.is_redirection()
            && let Some(location) = response
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|v| v.to_str().ok())
        {
            let next = resolve(&uri, location);
            if https && !next.starts_with("https://") {
                return Err(fail(format!(
                    "redirected to {next}: a download that began over HTTPS stays on HTTPS"
                )));
            }
            current = next;
            continue;
        }
        return Err(fail(format!("the server answered {status}")));
    }
    Err(FirmwareCliError::Message(format!(
        "{url}: more than {MAX_REDIRECTS} redirects (the last to {current})"
    )))
}

/// The byte stream under HTTP: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// One GET over a new connection; the response with its body not read yet.
async fn request(
    uri: &Uri,
    host: &str,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    answer: Duration,
) -> std::result::Result<hyper::Response<Incoming>, String> {
    let connecting = CONNECT.min(answer);
    let tcp = tokio::time::timeout(connecting, connect(host, port))
        .await
        .map_err(|_| {
            format!(
                "cannot connect to {host}:{port} within {} s",
                connecting.as_secs()
            )
        })?
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = match tls {
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| format!("{host:?} is not a name a certificate can carry: {e}"))?;
            let stream = tokio::time::timeout(
                answer,
                tokio_rustls::TlsConnector::from(config).connect(name, tcp),
            )
            .await
            .map_err(|_| {
                format!(
                    "the TLS handshake with {host}:{port} took more than {} s",
                    answer.as_secs()
                )
            })?
            .map_err(|e| format!("the TLS handshake with {host}:{port} failed: {}", error_chain(&e)))?;
            Box::new(stream)
        }
        None => Box::new(tcp),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP: {}", error_chain(&e)))?;
    // Runs whenever the installer waits for bytes (the runtime has one thread, driven by
    // `block_on`), and ends with the response body.
    tokio::spawn(connection);
    let authority = match uri.port_u16() {
        Some(p) => format!("{}:{p}", uri.host().unwrap_or(host)),
        None => uri.host().unwrap_or(host).to_owned(),
    };
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request = Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::USER_AGENT,
            concat!("kakehashi/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("the request: {e}"))?;
    tokio::time::timeout(answer, sender.send_request(request))
        .await
        .map_err(|_| format!("no answer within {} s", answer.as_secs()))?
        .map_err(|e| format!("HTTP: {}", error_chain(&e)))
}

async fn connect(host: &str, port: u16) -> io::Result<tokio::net::TcpStream> {
    let mut last = None;
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    for address in addresses {
        match tokio::net::TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the name has no address")))
}

/// The TLS client for image servers: the workspace's one provider and protocol versions, the
/// roots in `ca`, no client certificate.
fn client_config(ca: &Path) -> std::result::Result<Arc<rustls::ClientConfig>, String> {
    let roots = engine_proxy::tls::load_roots(ca).map_err(|e| {
        format!("the CA certificates to check the server against: {e} (set firmware.ca to a PEM file)")
    })?;
    let config = rustls::ClientConfig::builder_with_provider(engine_proxy::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A redirect's `Location`, made absolute against the URL that sent it.
fn resolve(base: &Uri, location: &str) -> String {
    if location.contains("://") {
        return location.to_owned();
    }
    let scheme = base.scheme_str().unwrap_or("https");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or("");
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}");
    }
    let dir = base.path().rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    format!("{scheme}://{authority}{dir}/{location}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_against_the_url_that_sent_them() {
        let base: Uri = "https://updates.example:8443/v1/kakehashi-1.4.0.img"
            .parse()
            .expect("uri");
        assert_eq!(
            resolve(&base, "https://cdn.example/x.img"),
            "https://cdn.example/x.img"
        );
        assert_eq!(resolve(&base, "//cdn.example/x.img"), "https://cdn.example/x.img");
        assert_eq!(
            resolve(&base, "/v2/x.img"),
            "https://updates.example:8443/v2/x.img"
        );
        assert_eq!(resolve(&base, "x.img"), "https://updates.example:8443/v1/x.img");
    }
}
