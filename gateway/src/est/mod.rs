//! Enrollment over Secure Transport (EST, RFC 7030) on the appliance: how a terminal gets its
//! certificate in seconds, from the clinic's own CA, while the internet is down or not.
//!
//! The EST listener is its own TLS listener (the gateway's server certificate), the only place
//! where a client may connect without a certificate, and where nothing but EST exists:
//! - `GET /.well-known/est/cacerts`: the issuing CA and the other CAs terminals trust
//!   (`tls.client_ca`), PKCS#7 certs-only;
//! - `POST /.well-known/est/simpleenroll`: a PKCS#10 CSR, HTTP Basic with the terminal's name
//!   and its one-time token ([`crate::store::tokens`]); the terminal is registered, enabled, and the
//!   running gateway reloads, so it can connect at once;
//! - `POST /.well-known/est/simplereenroll`: the same, authenticated by the terminal's current
//!   certificate in the handshake (chained, not revoked, an enabled terminal); the CSR must name
//!   that terminal. The old certificate is revoked as superseded and the new CRL loaded.
//!
//! Requests are `application/pkcs10`, base64 DER; answers `application/pkcs7-mime`, base64 DER
//! (`Content-Transfer-Encoding: base64`), so curl and openssl, or any EST client, work. Every
//! decision goes to the audit log on the route `est`.

pub mod authority;
pub(crate) mod wire;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use zeroize::Zeroizing;

use crate::audit::{Decision, Entry, Text};
use crate::config::Config;
use crate::doors::identity::Proof;
use crate::doors::{Admitted, Doors, tcp, tls};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::tokens::{self, Refused};
use authority::Authority;

/// The route name of EST decisions in the audit log.
pub const ROUTE: &str = "est";
/// The path every EST operation lives under (RFC 7030 §3.2.2).
pub const PREFIX: &str = "/.well-known/est";
/// A CSR is a few hundred bytes; base64 of an RSA-4096 one stays far below this.
const MAX_BODY: usize = 64 * 1024;

/// What the EST listener uses of the gateway.
pub struct Est {
    pub doors: Doors,
    /// The clinic CA that issues; `None` answers every operation 404.
    pub authority: Option<Authority>,
    /// `tls.client_ca`: the CAs terminals trust, sent by `cacerts`.
    pub client_ca: PathBuf,
    /// Where the inventory and the enrollment tokens are.
    pub data_dir: PathBuf,
    /// `limits.header_timeout_secs` and `limits.max_header_bytes`.
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    /// Reloads the running gateway (inventory, CRL) after an enrollment, so the new terminal
    /// can connect at once.
    pub reload: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
}

/// Why the CA cannot serve the terminal listeners.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error(transparent)]
    Ca(#[from] cert_tool::Error),
    #[error(transparent)]
    Tls(#[from] crate::doors::tls::policy::TlsError),
    #[error("{}: est.ca_dir: {}/ca.pem is not among the tls.client_ca certificates ({}): the \
             terminals it enrolls would be refused; point both at the same clinic CA",
            config.display(), ca_dir.display(), client_ca.display())]
    Untrusted {
        config: PathBuf,
        ca_dir: PathBuf,
        client_ca: PathBuf,
    },
}

/// Checks at start that the CA unlocks and that the terminal listeners trust what it issues.
pub fn check_authority(config: &Config, authority: &Authority) -> Result<(), AuthorityError> {
    let ca = authority.check()?;
    let trusted = crate::doors::tls::policy::load_certs(&config.tls.client_ca)?;
    if !trusted.iter().any(|c| c.as_ref() == ca.as_slice()) {
        return Err(AuthorityError::Untrusted {
            config: config.source.clone(),
            ca_dir: authority.ca_dir.clone(),
            client_ca: config.tls.client_ca.clone(),
        });
    }
    Ok(())
}

/// Accepts EST connections until shutdown begins.
pub async fn serve(est: Est, listener: TcpListener, mut shutdown: Shutdown) {
    let est = Arc::new(est);
    while let Some((stream, source)) = tcp::accept(&listener, &mut shutdown).await {
        let Some(slot) = est.doors.slots.take() else {
            continue;
        };
        let est = est.clone();
        tokio::spawn(async move {
            if let Some(admitted) = admit(&est, stream, source, slot).await {
                connection(est, admitted).await;
            }
        });
    }
}

/// The TLS door's handshake, with a certificate optional: `simpleenroll` comes without one.
async fn admit(
    est: &Est,
    stream: TcpStream,
    source: SocketAddr,
    slot: crate::doors::slot::Slot,
) -> Option<Admitted<TlsStream<TcpStream>, Option<Proof>>> {
    let config = est.doors.live.now().est_tls.clone()?;
    match tls::handshake(stream, config, est.doors.handshake_timeout).await {
        Ok(handshake) => Some(Admitted {
            who: (!handshake.chain.is_empty()).then_some(Proof::Certificate(handshake.chain)),
            stream: handshake.stream,
            source,
            slot,
        }),
        Err(tls::Failed::Refused(why)) => {
            Metrics::inc(&est.doors.metrics.est_refusals_total);
            let entry = Entry::new(Decision::Deny, ROUTE, &source.to_string(), &why);
            est.doors.audit.record_soon(entry);
            None
        }
        // A client that never finished its handshake asked for nothing.
        Err(tls::Failed::TimedOut(_)) => None,
    }
}

/// One EST connection: HTTP/1.1 until either side closes.
async fn connection(est: Arc<Est>, admitted: Admitted<TlsStream<TcpStream>, Option<Proof>>) {
    let Admitted {
        stream,
        who,
        source,
        slot: _slot,
    } = admitted;
    let proof = Arc::new(who);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(est.header_timeout)
        .max_header_size(est.max_header_bytes);
    let service = hyper::service::service_fn(move |req| {
        let (est, proof) = (est.clone(), proof.clone());
        async move { Ok::<_, Infallible>(handle(&est, proof.as_ref().as_ref(), source, req).await) }
    });
    if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
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
    est: &Est,
    proof: Option<&Proof>,
    source: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let outcome = match (method.clone(), path.strip_prefix(PREFIX)) {
        // No certificate is issued that the audit log cannot record.
        (Method::POST, Some(_)) if est.doors.audit.is_failing() => Outcome::refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            crate::audit::FAILING.to_owned(),
        ),
        (Method::GET, Some("/cacerts")) => cacerts(est).await,
        (Method::POST, Some("/simpleenroll")) => simpleenroll(est, req).await,
        (Method::POST, Some("/simplereenroll")) => simplereenroll(est, proof, req).await,
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
        Metrics::inc(&est.doors.metrics.est_refusals_total);
        tracing::info!(%source, terminal = ?outcome.terminal, reason = %outcome.reason, "EST refused");
    }
    est.doors.audit.record_soon(Entry {
        terminal: outcome.terminal.map(Text::from),
        method: Some(method.to_string().into()),
        path: Some(path),
        status: Some(outcome.response.status().as_u16()),
        duration_ms: started.elapsed().as_millis() as u64,
        ..Entry::new(outcome.decision, ROUTE, &source.to_string(), &outcome.reason)
    });
    outcome.response
}

async fn cacerts(est: &Est) -> Outcome {
    let Some(authority) = est.authority.clone() else {
        return Outcome::refuse(StatusCode::NOT_FOUND, None, "no CA on this appliance");
    };
    let anchors = est.client_ca.clone();
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
async fn simpleenroll(est: &Est, req: Request<Incoming>) -> Outcome {
    let Some(authority) = est.authority.clone() else {
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
    let data_dir = est.data_dir.clone();
    let who = name.clone();
    let result = tokio::task::spawn_blocking(move || {
        let conn = crate::store::open(&data_dir)?;
        let issued = std::cell::RefCell::new(None::<String>);
        let redeemed = tokens::redeem(&conn, &who, token.as_bytes(), || {
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
            Metrics::inc(&est.doors.metrics.est_enrollments_total);
            issued_outcome(est, &name, issued, "terminal enrolled with its one-time token").await
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
async fn simplereenroll(est: &Est, proof: Option<&Proof>, req: Request<Incoming>) -> Outcome {
    let Some(authority) = est.authority.clone() else {
        return Outcome::refuse(StatusCode::NOT_FOUND, None, "no CA on this appliance");
    };
    let Some((proof, leaf)) = proof.and_then(|p| match p {
        Proof::Certificate(chain) => Some((p, chain.first()?)),
        Proof::WireGuard(_) => None,
    }) else {
        return Outcome::refuse(
            StatusCode::UNAUTHORIZED,
            None,
            "simplereenroll needs the terminal's current certificate in the TLS handshake",
        );
    };
    let name = match crate::doors::identity::terminal_name(leaf) {
        Ok(n) => n,
        Err(why) => return Outcome::refuse(StatusCode::FORBIDDEN, None, why),
    };
    if let Err(why) = est.doors.live.now().admission.proof(proof) {
        return Outcome::refuse(StatusCode::FORBIDDEN, Some(&name), why.to_string());
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
            Metrics::inc(&est.doors.metrics.est_renewals_total);
            issued_outcome(est, &name, issued, "terminal certificate renewed").await
        }
        Ok(Err(Refused::Request(why))) => Outcome::refuse(StatusCode::BAD_REQUEST, Some(&name), why),
        Ok(Err(other)) => Outcome::refuse(StatusCode::INTERNAL_SERVER_ERROR, Some(&name), other.to_string()),
        Err(e) => failed(e.to_string()),
    }
}

/// The certificate in PKCS#7, after the running gateway has loaded the new inventory and CRL.
async fn issued_outcome(est: &Est, name: &str, issued: authority::Issued, what: &str) -> Outcome {
    let reload = est.reload.clone();
    match tokio::task::spawn_blocking(move || reload()).await {
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
pub fn refresh_metrics(authority: Option<&Authority>, metrics: &Metrics) {
    let Some(authority) = authority else {
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
    Metrics::set(&metrics.terminal_certs_expiring_30d, soon as u64);
}
