//! The health checks a trial version must pass to commit itself. Every check runs, and every
//! failure is reported (not only the first): the configuration loads; every listener accepts a
//! connection; the TLS front door completes a handshake presenting the configured certificate;
//! the WireGuard port is bound (if configured); the audit chain verifies; the journal opens; the
//! admin listener's `/health` answers 200 (the cloud or the local engine serves).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::{Config, ListenerKind};

const TIMEOUT: Duration = Duration::from_secs(2);

/// Every failure, in words; empty when all pass.
pub(super) fn check(config_file: &Path) -> Vec<String> {
    let config = match Config::load(config_file) {
        Ok(c) => c,
        Err(e) => return vec![format!("the configuration does not load: {e}")],
    };
    let mut failures = Vec::new();
    for listener in &config.listeners {
        let address = reachable(listener.address);
        if let Err(e) = TcpStream::connect_timeout(&address, TIMEOUT) {
            failures.push(format!(
                "listener {} ({}) is not bound: {e}",
                listener.route(),
                listener.address
            ));
        }
    }
    if let Some(api) = config.listeners.iter().find(|l| l.kind == ListenerKind::Api)
        && let Err(e) = tls_handshake(&config, reachable(api.address))
    {
        failures.push(format!("the TLS front door {}: {e}", api.address));
    }
    if let Some(wg) = &config.wireguard {
        // Bound by the gateway, the port cannot be bound again.
        if UdpSocket::bind(wg.listen).is_ok() {
            failures.push(format!(
                "the WireGuard door {} is not up (its UDP port is free)",
                wg.listen
            ));
        }
    }
    match crate::audit::verify(&config.data_dir) {
        Ok(report) if report.is_intact() => {}
        Ok(report) => failures.push(format!(
            "the audit chain does not verify: {}",
            report.broken.map(|b| b.what).unwrap_or_default()
        )),
        Err(e) => failures.push(format!("the audit chain cannot be read: {e}")),
    }
    if let Err(e) = engine_proxy::journal::operator::open(&config.data_dir) {
        failures.push(format!("the journal does not open: {e}"));
    }
    match config.admin.address {
        Some(admin) => {
            if let Err(e) = admin_health(reachable(admin)) {
                failures.push(format!("/health on {admin}: {e}"));
            }
        }
        None => failures.push("no [admin] address: /health (the engine answering) cannot be checked".into()),
    }
    failures
}

/// A wildcard listen address, as a client reaches it.
fn reachable(address: SocketAddr) -> SocketAddr {
    match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), address.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), address.port())
        }
        _ => address,
    }
}

fn admin_health(address: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&address, TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = stream.take(4096).read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(format!("answered {status:?}"))
    }
}

/// Completes a TLS handshake (without a client certificate: the server's certificate is all it
/// checks) and compares the certificate presented with `tls.cert`.
fn tls_handshake(config: &Config, address: SocketAddr) -> Result<(), String> {
    let pem_text = std::fs::read(&config.tls.cert).map_err(|e| format!("cannot read tls.cert: {e}"))?;
    let expected = pem::parse_many(&pem_text)
        .ok()
        .and_then(|blocks| blocks.into_iter().find(|b| b.tag() == "CERTIFICATE"))
        .map(|b| b.into_contents())
        .ok_or("tls.cert holds no certificate")?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(Pinned {
        expected,
        provider: provider.clone(),
    });
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let name = ServerName::IpAddress(address.ip().into());
    let mut conn = rustls::ClientConnection::new(Arc::new(client), name).map_err(|e| e.to_string())?;
    let mut sock = TcpStream::connect_timeout(&address, TIMEOUT).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .map_err(|e| format!("no handshake: {e}"))?;
    }
    Ok(())
}

/// Accepts exactly the configured certificate, with a valid handshake signature.
#[derive(Debug)]
struct Pinned {
    expected: Vec<u8>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.expected.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "it presented another certificate than tls.cert".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
