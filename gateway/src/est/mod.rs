//! Enrollment over Secure Transport (EST, RFC 7030) on the appliance: how a terminal gets its
//! certificate in seconds, from the clinic's own CA, while the internet is down or not.
//!
//! The EST listener is its own TLS listener (the gateway's server certificate), the only place
//! where a client may connect without a certificate, and where nothing but EST exists:
//! - `GET /.well-known/est/cacerts`: the issuing CA and the other CAs terminals trust
//!   (`tls.client_ca`), PKCS#7 certs-only;
//! - `POST /.well-known/est/simpleenroll`: a PKCS#10 CSR, HTTP Basic with the terminal's name
//!   and its one-time token ([`crate::enrollment`]); the terminal is registered, enabled, and the
//!   running gateway reloads, so it can connect at once;
//! - `POST /.well-known/est/simplereenroll`: the same, authenticated by the terminal's current
//!   certificate in the handshake (chained, not revoked, an enabled terminal); the CSR must name
//!   that terminal. The old certificate is revoked as superseded and the new CRL loaded.
//!
//! Requests are `application/pkcs10`, base64 DER; answers `application/pkcs7-mime`, base64 DER
//! (`Content-Transfer-Encoding: base64`), so curl and openssl, or any EST client, work. Every
//! decision goes to the audit log on the route `est`.

pub mod authority;
mod wire;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use crate::audit::{Decision, Entry};
use crate::config::Config;
use crate::enrollment::{self, Refused};
use crate::identity::Proof;
use crate::metrics::Metrics;
use crate::state::{Gateway, StartError};
use authority::Authority;

/// The route name of EST decisions in the audit log.
pub const ROUTE: &str = "est";
/// The path every EST operation lives under (RFC 7030 §3.2.2).
pub const PREFIX: &str = "/.well-known/est";
/// A CSR is a few hundred bytes; base64 of an RSA-4096 one stays far below this.
const MAX_BODY: usize = 64 * 1024;

/// Checks at start that the CA unlocks and that the terminal listeners trust what it issues.
pub fn check_authority(config: &Config, authority: &Authority) -> Result<(), StartError> {
    let ca = authority.check()?;
    let trusted = crate::tls::load_certs(&config.tls.client_ca)?;
    if !trusted.iter().any(|c| c.as_ref() == ca.as_slice()) {
        return Err(StartError::File {
            path: config.source.clone(),
            message: format!(
                "est.ca_dir: {}/ca.pem is not among the tls.client_ca certificates ({}): the \
                 terminals it enrolls would be refused; point both at the same clinic CA",
                authority.ca_dir.display(),
                config.tls.client_ca.display()
            ),
        });
    }
    Ok(())
}

/// Accepts EST connections until `stopping` turns true.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    while let Some((stream, peer)) = crate::listener::accept(&listener, &mut stopping).await {
        let Ok(permit) = gateway.connections.clone().try_acquire_owned() else {
            Metrics::inc(&gateway.metrics.connections_refused_total);
            continue;
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            connection(gateway, stream, peer).await;
            drop(permit);
        });
    }
}

/// One EST connection: the handshake (a certificate is optional here), then HTTP/1.1.
async fn connection(gateway: Arc<Gateway>, stream: tokio::net::TcpStream, source: SocketAddr) {
    let Some(config) = gateway.live().est_tls.clone() else {
        return;
    };
    let limits = &gateway.config.limits;
    let tls = match tokio::time::timeout(
        limits.handshake_timeout(),
        TlsAcceptor::from(config).accept(stream),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            Metrics::inc(&gateway.metrics.est_refusals_total);
            gateway.audit.record_soon(Entry::new(
                Decision::Deny,
                ROUTE,
                &source.to_string(),
                &crate::tls::describe_failure(&e),
            ));
            return;
        }
        Err(_) => return,
    };
    let chain: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let chain = Arc::new(chain);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout())
        .max_header_size(limits.max_header_bytes);
    let service = hyper::service::service_fn(move |req| {
        let (gateway, chain) = (gateway.clone(), chain.clone());
        async move { Ok::<_, Infallible>(handle(&gateway, &chain, source, req).await) }
    });
    if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
        tracing::debug!(%source, error = %e, "EST connection ended with an error");
    }
}

/// An answer and what the audit log records of it.
struct Outcome {
    response: Response<Full<Bytes>>,
    decision: Decision,
    terminal: Option<String>,
    reason: String,
}

impl Outcome {
    fn refuse(status: StatusCode, terminal: Option<&str>, reason: impl Into<String>) -> Outcome {
        let reason = reason.into();
        let mut response = text(status, &format!("{reason}\n"));
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"kakehashi est\""),
            );
        }
        Outcome {
            response,
            decision: Decision::Deny,
            terminal: terminal.map(str::to_owned),
            reason,
        }
    }
}

async fn handle(
    gateway: &Arc<Gateway>,
    chain: &[CertificateDer<'static>],
    source: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let outcome = match (method.clone(), path.strip_prefix(PREFIX)) {
        // No certificate is issued that the audit log cannot record.
        (Method::POST, Some(_)) if gateway.audit.is_failing() => Outcome::refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            crate::audit::FAILING.to_owned(),
        ),
        (Method::GET, Some("/cacerts")) => cacerts(gateway).await,
        (Method::POST, Some("/simpleenroll")) => simpleenroll(gateway, req).await,
        (Method::POST, Some("/simplereenroll")) => simplereenroll(gateway, chain, req).await,
        (_, Some("/cacerts" | "/simpleenroll" | "/simplereenroll")) => Outcome::refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            None,
            format!("{method} is not allowed here: cacerts is GET, simpleenroll and simplereenroll are POST"),
        ),
        _ => Outcome::refuse(
            StatusCode::NOT_FOUND,
            None,
            format!(
                "{path}: not an EST operation here; this listener serves only {PREFIX}/cacerts, \
                 /simpleenroll and /simplereenroll"
            ),
        ),
    };
    if outcome.decision == Decision::Deny {
        Metrics::inc(&gateway.metrics.est_refusals_total);
        tracing::info!(%source, terminal = ?outcome.terminal, reason = %outcome.reason, "EST refused");
    }
    gateway.audit.record_soon(Entry {
        terminal: outcome.terminal,
        method: Some(method.to_string()),
        path: Some(path),
        status: Some(outcome.response.status().as_u16()),
        duration_ms: started.elapsed().as_millis() as u64,
        ..Entry::new(outcome.decision, ROUTE, &source.to_string(), &outcome.reason)
    });
    outcome.response
}

async fn cacerts(gateway: &Arc<Gateway>) -> Outcome {
    let Some(authority) = gateway.authority.clone() else {
        return Outcome::refuse(StatusCode::NOT_FOUND, None, "no CA on this appliance");
    };
    let anchors = gateway.config.tls.client_ca.clone();
    let answer = tokio::task::spawn_blocking(move || {
        // The issuing CA first, then the other CAs terminals trust (a clinic CA held by the
        // vendor, which signed the gateway's server certificate): what a new terminal needs.
        let mut certs = vec![authority.ca_cert()?];
        let text = cert_tool::files::read(&anchors)?;
        for block in
            pem::parse_many(&text).map_err(|e| cert_tool::Error::malformed(&anchors, "CA file", e))?
        {
            if block.tag() == "CERTIFICATE" && !certs.iter().any(|c| c.as_slice() == block.contents()) {
                certs.push(block.into_contents());
            }
        }
        let refs: Vec<&[u8]> = certs.iter().map(Vec::as_slice).collect();
        cert_tool::pkcs7::certs_only(&refs)
    })
    .await;
    match answer {
        Ok(Ok(der)) => Outcome {
            response: wire::pkcs7(&der),
            decision: Decision::Allow,
            terminal: None,
            reason: "CA certificates sent".into(),
        },
        Ok(Err(e)) => failed(e.to_string()),
        Err(e) => failed(e.to_string()),
    }
}

/// `simpleenroll`: the token names the terminal; the CSR must name the same one.
async fn simpleenroll(gateway: &Arc<Gateway>, req: Request<Incoming>) -> Outcome {
    let Some(authority) = gateway.authority.clone() else {
        return Outcome::refuse(StatusCode::NOT_FOUND, None, "no CA on this appliance");
    };
    let (name, token) = match basic(req.headers().get(AUTHORIZATION)) {
        Ok(pair) => pair,
        Err(why) => return Outcome::refuse(StatusCode::UNAUTHORIZED, None, why),
    };
    let csr = match body(req).await {
        Ok(der) => der,
        Err(o) => return o.named(&name),
    };
    let data_dir = gateway.config.data_dir.clone();
    let who = name.clone();
    let result = tokio::task::spawn_blocking(move || {
        let conn = crate::db::open(&data_dir)?;
        let issued = std::cell::RefCell::new(None::<String>);
        let redeemed = enrollment::redeem(&conn, &who, token.as_bytes(), || {
            let csr = request(&who, &csr)?;
            let done = authority.issue(&who, &csr, false).map_err(ca_refusal)?;
            *issued.borrow_mut() = Some(done.entry.serial.clone());
            Ok(done)
        });
        if redeemed.is_err()
            && let Some(serial) = issued.into_inner()
        {
            // Signed, but the terminal could not be registered: take the certificate back.
            if let Err(e) = authority.undo(&serial) {
                tracing::error!(serial, error = %e, "could not revoke an unregistered certificate");
            }
        }
        redeemed
    })
    .await;
    match result {
        Ok(Ok(issued)) => {
            Metrics::inc(&gateway.metrics.est_enrollments_total);
            issued_outcome(
                gateway,
                &name,
                issued,
                "terminal enrolled with its one-time token",
            )
            .await
        }
        Ok(Err(refused)) => {
            let status = match refused {
                Refused::Request(_) => StatusCode::BAD_REQUEST,
                Refused::Registered(_) => StatusCode::CONFLICT,
                Refused::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::UNAUTHORIZED,
            };
            Outcome::refuse(status, Some(&name), refused.to_string())
        }
        Err(e) => failed(e.to_string()),
    }
}

/// `simplereenroll`: the handshake's certificate names the terminal, which must still be
/// admitted; the CSR must name the same terminal.
async fn simplereenroll(
    gateway: &Arc<Gateway>,
    chain: &[CertificateDer<'static>],
    req: Request<Incoming>,
) -> Outcome {
    let Some(authority) = gateway.authority.clone() else {
        return Outcome::refuse(StatusCode::NOT_FOUND, None, "no CA on this appliance");
    };
    let Some(leaf) = chain.first() else {
        return Outcome::refuse(
            StatusCode::UNAUTHORIZED,
            None,
            "simplereenroll needs the terminal's current certificate in the TLS handshake",
        );
    };
    let name = match crate::identity::terminal_name(leaf) {
        Ok(n) => n,
        Err(why) => return Outcome::refuse(StatusCode::FORBIDDEN, None, why),
    };
    if let Err(why) = gateway.live().admits(&Proof::Certificate(chain.to_vec())) {
        return Outcome::refuse(StatusCode::FORBIDDEN, Some(&name), why);
    }
    let csr = match body(req).await {
        Ok(der) => der,
        Err(o) => return o.named(&name),
    };
    let who = name.clone();
    let result = tokio::task::spawn_blocking(move || {
        let csr = request(&who, &csr)?;
        authority.issue(&who, &csr, true).map_err(ca_refusal)
    })
    .await;
    match result {
        Ok(Ok(issued)) => {
            Metrics::inc(&gateway.metrics.est_renewals_total);
            issued_outcome(gateway, &name, issued, "terminal certificate renewed").await
        }
        Ok(Err(Refused::Request(why))) => Outcome::refuse(StatusCode::BAD_REQUEST, Some(&name), why),
        Ok(Err(other)) => Outcome::refuse(StatusCode::INTERNAL_SERVER_ERROR, Some(&name), other.to_string()),
        Err(e) => failed(e.to_string()),
    }
}

/// The certificate in PKCS#7, after the running gateway has loaded the new inventory and CRL.
async fn issued_outcome(
    gateway: &Arc<Gateway>,
    name: &str,
    issued: authority::Issued,
    what: &str,
) -> Outcome {
    let g = gateway.clone();
    match tokio::task::spawn_blocking(move || g.reload()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "reload after an enrollment failed; SIGHUP retries"),
        Err(e) => tracing::error!(error = %e, "reload after an enrollment failed; SIGHUP retries"),
    }
    match cert_tool::pkcs7::certs_only(&[&issued.der]) {
        Ok(der) => Outcome {
            response: wire::pkcs7(&der),
            decision: Decision::Allow,
            terminal: Some(name.to_owned()),
            reason: format!(
                "{what}: serial {}, valid until {}",
                issued.entry.serial,
                cert_tool::ca::rfc3339(issued.entry.not_after)
            ),
        },
        Err(e) => failed(e.to_string()),
    }
}

/// Parses and checks the CSR: its signature, and that its subject names `name`.
fn request(name: &str, der: &[u8]) -> Result<cert_tool::csr::Csr, Refused> {
    let csr = cert_tool::csr::Csr::from_der(std::path::Path::new("the request body"), der)
        .map_err(|e| Refused::Request(e.to_string()))?;
    match csr.common_name.as_deref() {
        Some(cn) if cn == name => Ok(csr),
        Some(cn) => Err(Refused::Request(format!(
            "the CSR's subject names {cn:?}, but it is terminal {name:?} that enrolls: a terminal \
             asks only for its own name"
        ))),
        None => Err(Refused::Request(format!(
            "the CSR has no subject CN: it must be the terminal's name, {name:?}"
        ))),
    }
}

/// A CA refusal that the request caused (a name with a valid certificate) is the client's; the
/// rest (files, passphrase) is the appliance's.
fn ca_refusal(e: cert_tool::Error) -> Refused {
    match e {
        cert_tool::Error::NameInUse { .. } | cert_tool::Error::Refused(_) => Refused::Request(e.to_string()),
        other => Refused::Failed(other.to_string()),
    }
}

impl Outcome {
    fn named(mut self, name: &str) -> Outcome {
        self.terminal = Some(name.to_owned());
        self
    }
}

fn failed(why: String) -> Outcome {
    tracing::error!(error = %why, "EST request failed");
    Outcome::refuse(
        StatusCode::INTERNAL_SERVER_ERROR,
        None,
        format!("the appliance could not do it: {why}"),
    )
}

/// HTTP Basic `NAME:TOKEN`.
fn basic(header: Option<&HeaderValue>) -> Result<(String, Zeroizing<String>), String> {
    use base64::Engine as _;
    let header = header.ok_or(
        "simpleenroll needs HTTP Basic with the terminal's name and its one-time token (curl -u NAME:TOKEN)",
    )?;
    let encoded = header
        .as_bytes()
        .strip_prefix(b"Basic ")
        .ok_or("expected HTTP Basic credentials")?;
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim_ascii())
            .map_err(|_| "the Basic credentials are not base64")?,
    );
    let text = std::str::from_utf8(&decoded).map_err(|_| "the Basic credentials are not UTF-8")?;
    let (name, token) = text
        .split_once(':')
        .ok_or("the Basic credentials have no ':' between name and token")?;
    Ok((name.to_owned(), Zeroizing::new(token.to_owned())))
}

/// The request body: `application/pkcs10`, base64 DER (at most [`MAX_BODY`] bytes).
async fn body(req: Request<Incoming>) -> Result<Vec<u8>, Outcome> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/pkcs10") {
        return Err(Outcome::refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            None,
            format!("Content-Type {content_type:?}: expected application/pkcs10 (a base64 DER CSR)"),
        ));
    }
    let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Err(Outcome::refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                format!("the request body is larger than {MAX_BODY} bytes, or was cut off"),
            ));
        }
    };
    wire::csr_body(&bytes).map_err(|why| Outcome::refuse(StatusCode::BAD_REQUEST, None, why))
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(message.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Sets `terminal_certs_expiring_30d` from the CA's index (for each /metrics scrape).
pub fn refresh_metrics(gateway: &Gateway) {
    let Some(authority) = &gateway.authority else {
        return;
    };
    let path = cert_tool::ca::Layout::new(&authority.ca_dir).index();
    let Ok(index) = cert_tool::index::Index::load(&path) else {
        return;
    };
    let now = time::OffsetDateTime::now_utc();
    let horizon = now + time::Duration::days(30);
    let soon = index
        .entries
        .iter()
        .filter(|e| e.profile == cert_tool::profile::Profile::Terminal)
        .filter(|e| e.status(now) == cert_tool::index::Status::Valid && e.not_after <= horizon)
        .count();
    Metrics::set(&gateway.metrics.terminal_certs_expiring_30d, soon as u64);
}
