//! The TLS policy of the front door (the uplink's, and the policy's provider, are
//! `engine_proxy::tls`).
//!
//! Terminals: TLS 1.3 and TLS 1.2, TLS 1.2 only with ECDHE and an AEAD (AES-GCM,
//! ChaCha20-Poly1305), the hybrid post-quantum group X25519MLKEM768 offered first, session
//! resumption, and a client certificate on every connection that must chain to the clinic CA, be
//! valid now, not be on the CRL, and name a terminal that the inventory has enabled. The last
//! check runs inside the handshake, so a refused terminal never gets an application byte through.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, ServerConfig, SignatureScheme,
};

use engine_proxy::tls::file_error;
pub use engine_proxy::tls::{TlsError, client_config, load_certs, load_key, load_roots, provider};

use crate::doors::admission::{self, Admission, Refusal};

fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|e| file_error(path, e))?;
    if !data.starts_with(b"-----") {
        return Ok(vec![CertificateRevocationListDer::from(data)]);
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if crls.is_empty() {
        return Err(file_error(path, "expected a CRL (-----BEGIN X509 CRL-----)"));
    }
    Ok(crls)
}

/// The earliest next-update time of the CRLs in `path`; `None` when a CRL has none (it never
/// goes stale) or cannot be parsed here (then [`load_crls`] and WebPKI have the last word).
///
/// A CRL past this time is still enforced (rustls' default `ExpirationPolicy::Ignore`, kept on
/// purpose): refusing every terminal because the vendor was late with a CRL is the lock-out
/// nginx, HAProxy and Pomerium users report, and admitting revoked ones would be worse. The
/// gateway raises `crl_stale` and logs a warning instead (see [`crate::doors::live::Snapshot::crl_stale`]).
pub fn crl_next_update(path: &Path) -> Option<time::OffsetDateTime> {
    load_crls(path)
        .ok()?
        .iter()
        .filter_map(|der| {
            let (_, crl) = x509_parser::parse_x509_crl(der.as_ref()).ok()?;
            crl.next_update().map(|t| t.to_datetime())
        })
        .min()
}

/// WebPKI's checks against the clinic CA and its CRL: the chain, validity and revocation.
///
/// `optional`: a client certificate need not be presented at all (the EST listener, where
/// `simpleenroll` comes without one); one that is presented must still pass. Whether it names an
/// enabled terminal is the admission rule's to say (see [`terminal_verifier`]); `simplereenroll`
/// asks it itself.
pub fn webpki(tls: &crate::config::Tls, optional: bool) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = load_roots(&tls.client_ca)?;
    let crls = match &tls.crl {
        Some(path) => load_crls(path)?,
        None => Vec::new(),
    };
    let builder = WebPkiClientVerifier::builder_with_provider(roots, provider()).with_crls(crls);
    Ok(if optional {
        builder.allow_unauthenticated().build()?
    } else {
        builder.build()?
    })
}

/// The terminal listeners' check, inside the handshake: the admission rule, so that a refused
/// terminal never gets an application byte through. Built anew on every reload from snapshots of
/// the CA, CRL and inventory.
pub fn terminal_verifier(admission: Admission) -> Arc<dyn ClientCertVerifier> {
    Arc::new(TerminalVerifier(admission))
}

/// The terminal-facing server configuration. A fresh session cache and ticket key on every
/// reload mean a session from before a revocation cannot be resumed after it.
pub fn server_config(
    tls: &crate::config::Tls,
    verifier: Arc<dyn ClientCertVerifier>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&tls.cert)?;
    let key = load_key(&tls.key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| file_error(&tls.key, format!("does not fit {}: {e}", tls.cert.display())))?;
    // A clinic has tens of terminals, not thousands; the cache is allocated whole up front.
    config.session_storage = ServerSessionMemoryCache::new(1024);
    config.ticketer = aws_lc_rs::Ticketer::new()?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The admission rule as rustls asks for it.
#[derive(Debug)]
struct TerminalVerifier(Admission);

impl ClientCertVerifier for TerminalVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.webpki().root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.0.certificate(end_entity, intermediates, now) {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            // WebPKI's own error, so that the alert the client gets says what it was.
            Err(Refusal::Certificate(e)) => Err(e),
            Err(other) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(other)),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.webpki().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.webpki().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.webpki().supported_verify_schemes()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

/// A failed handshake in words an operator reads in the audit log.
pub fn describe_failure(error: &std::io::Error) -> String {
    match error.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(tls) => admission::describe(tls),
        None if error.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the client closed the connection during the handshake".into()
        }
        None => format!("handshake failed: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Tls;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
    };
    use time::{Duration, OffsetDateTime};

    /// A CA, two terminals, and a CRL revoking the second whose next update passed a day ago.
    #[test]
    fn a_stale_crl_is_still_enforced_and_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(vec![]).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |name: &str, serial: u8| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(vec![]).unwrap();
            p.distinguished_name.push(DnType::CommonName, name);
            p.serial_number = Some(SerialNumber::from_slice(&[serial]));
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            p.signed_by(&key, &issuer).unwrap().der().clone()
        };
        let good = leaf("good", 1);
        let lost = leaf("lost", 2);
        let now = OffsetDateTime::now_utc();
        let crl = CertificateRevocationListParams {
            this_update: now - Duration::days(8),
            next_update: now - Duration::days(1),
            crl_number: SerialNumber::from_slice(&[1]),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from_slice(&[2]),
                revocation_time: now - Duration::days(8),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&issuer)
        .unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("crl.pem"), crl.pem().unwrap()).unwrap();
        let tls = Tls {
            cert: dir.join("unused.pem"),
            key: dir.join("unused.key"),
            client_ca: dir.join("ca.pem"),
            crl: Some(dir.join("crl.pem")),
        };
        let conn = crate::store::open(&dir.join("data")).unwrap();
        crate::store::inventory::add(&conn, "good", None, engine_proxy::scope::Scopes::ALL).unwrap();
        crate::store::inventory::add(&conn, "lost", None, engine_proxy::scope::Scopes::ALL).unwrap();
        let inventory = Arc::new(crate::store::inventory::Inventory::load(&conn).unwrap());
        let verifier = terminal_verifier(Admission::new(inventory, webpki(&tls, false).unwrap()));
        let at = UnixTime::now();
        verifier
            .verify_client_cert(&good, &[], at)
            .expect("a terminal not on the stale CRL is still admitted");
        let err = verifier.verify_client_cert(&lost, &[], at).unwrap_err();
        assert_eq!(admission::describe(&err), "client certificate revoked", "{err:?}");
        let next = crl_next_update(&dir.join("crl.pem")).expect("a next update");
        assert!(next < OffsetDateTime::now_utc(), "the CRL is stale");
    }
}
