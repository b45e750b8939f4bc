//! Images from a URL: `kakehashi firmware install https://…/kakehashi-1.4.0.img`.
//!
//! A [`Download`] is a [`Read`] that the installer consumes exactly as it consumes an image
//! file: [`firmware::image::read_signed`] reads the magic line and the signed manifest and
//! checks the signature before a byte of the payload is asked for, then the installer pulls
//! the payload one chunk at a time, checks each chunk against its signed hash and writes it to
//! the inactive slot. The payload is never stored anywhere else: no temporary copy of the
//! image, on flash or in memory (a few chunks at a time, and what one TCP read brings).
//!
//! The integrity comes from the signature, not from the transport: an image that was changed
//! on the way is refused at the manifest or at the first chunk that differs, whether it came
//! over HTTPS, plain HTTP or a USB stick. HTTPS adds that nobody on the path can see what is
//! installed or choose what is served (docs/firmware.md, "Images from a URL").
//!
//! The uplink's own HTTP client ([`engine_proxy::upstream::Upstream::get`], over
//! rustls, one copy of its code in the router's binary), with the image server's roots and no
//! client certificate, on a runtime of one thread that runs only while the installer waits for
//! bytes. Every wait is bounded: connecting (at most 10 s), the TLS handshake and the response's
//! head together, and each read of the body (a server that stops sending is an error after
//! `firmware.fetch_timeout_secs`, however long the whole download takes).

use std::io::{self, Read};
use std::path::Path;
use std::time::Duration;

use bytes::{Buf, Bytes};
use engine_proxy::client;
use http_body_util::BodyExt;
use hyper::{StatusCode, Uri};
use tokio::runtime::Runtime;

use engine_proxy::upstream::UpstreamError;

use super::{FirmwareCliError, Result};

/// The system's CA certificates on Debian (package `ca-certificates`): the roots an image
/// server is checked against unless `firmware.ca` names others.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Redirects followed (a release server commonly sends one to its CDN).
const MAX_REDIRECTS: usize = 5;

/// Whether `source` (the argument of `firmware install`) is a URL rather than a file.
pub fn is_url(source: &str) -> bool {
    source.starts_with("https://") || source.starts_with("http://")
}

/// An image being downloaded: the response body, read as it arrives.
pub struct Download {
    runtime: Runtime,
    body: client::Body,
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
                        format!("the download was cut short {}: {}", self.so_far(), e),
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
    let mut tls: Option<rustls::ClientConfig> = None;
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
        let config = match (&tls, https) {
            (Some(config), _) => config.clone(),
            // Plain http needs no roots; the client wants a TLS configuration all the same.
            (None, false) => client_config_with(rustls::RootCertStore::empty()).map_err(fail)?,
            (None, true) => {
                let config = client_config(ca).map_err(fail)?;
                tls = Some(config.clone());
                config
            }
        };
        let origin = format!(
            "{}://{}",
            if https { "https" } else { "http" },
            uri.authority().map_or(host.as_str(), |a| a.as_str())
        );
        let upstream = engine_proxy::upstream::Upstream::new(&origin, config, timeout)
            .map_err(|e| fail(e.to_string()))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let user_agent = concat!("kakehashi/", env!("CARGO_PKG_VERSION"));
        let response = runtime.block_on(upstream.get(path, user_agent)).map_err(|e| {
            fail(match e {
                UpstreamError::Timeout(t) => format!("no answer from {host}:{port} within {} s", t.as_secs()),
                UpstreamError::Connect(why) => {
                    format!("cannot connect to {host}:{port} (TCP, then the TLS handshake): {why}")
                }
                other => other.to_string(),
            })
        })?;
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

/// The TLS client for image servers: the workspace's one provider and protocol versions, the
/// roots in `ca`, no client certificate.
fn client_config(ca: &Path) -> std::result::Result<rustls::ClientConfig, String> {
    let roots = engine_proxy::tls::load_roots(ca).map_err(|e| {
        format!("the CA certificates to check the server against: {e} (set firmware.ca to a PEM file)")
    })?;
    client_config_with(roots)
}

fn client_config_with(
    roots: impl Into<std::sync::Arc<rustls::RootCertStore>>,
) -> std::result::Result<rustls::ClientConfig, String> {
    Ok(
        rustls::ClientConfig::builder_with_provider(engine_proxy::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
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
