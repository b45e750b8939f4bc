//! TLS material and policy shared by everything that speaks TLS: the one crypto provider with
//! the suites and groups the security model allows, PEM files read into rustls types with
//! errors that name the file, and the uplink's client configuration (the gateway's own
//! certificate towards the engine).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{CipherSuite, ClientConfig, RootCertStore};

/// A file that could not be turned into TLS material, and why.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

pub fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// The one crypto provider: aws-lc-rs, limited to the suites and groups the security model
/// allows. rustls implements no CBC, RC4 or static-RSA suites at all; the filter states the
/// policy rather than trusting a default to keep matching it.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::kx_group;
    let base = aws_lc_rs::default_provider();
    let allowed = |s: CipherSuite| {
        use CipherSuite::*;
        matches!(
            s,
            TLS13_AES_128_GCM_SHA256
                | TLS13_AES_256_GCM_SHA384
                | TLS13_CHACHA20_POLY1305_SHA256
                | TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                | TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
                | TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        )
    };
    Arc::new(CryptoProvider {
        cipher_suites: base
            .cipher_suites
            .into_iter()
            .filter(|s| allowed(s.suite()))
            .collect(),
        kx_groups: vec![
            kx_group::X25519MLKEM768,
            kx_group::X25519,
            kx_group::SECP256R1,
            kx_group::SECP384R1,
        ],
        ..base
    })
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(
            path,
            "expected a PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

/// Reads a private key (PKCS#8, SEC1 or PKCS#1 PEM). Encrypted keys are refused here: a daemon
/// has nobody to ask for a passphrase, so its keys are protected by mode 0600 instead.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        file_error(
            path,
            format!("expected an unencrypted PEM private key (PKCS#8, SEC1 or PKCS#1): {e}"),
        )
    })
}

pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| file_error(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// The uplink's client configuration: the gateway's own certificate, and only the given CA
/// trusted for the engine.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<ClientConfig, TlsError> {
    let roots = load_roots(ca)?;
    let certs = load_certs(cert)?;
    let key_der = load_key(key)?;
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key_der)
        .map_err(|e| file_error(key, format!("does not fit {}: {e}", cert.display())))
}
