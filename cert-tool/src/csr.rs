//! Certificate signing requests from terminals and appliances that made their own keys.

use std::path::Path;

use x509_parser::prelude::*;

use crate::decode;
use crate::error::{Error, Result};
use crate::files;

/// What the CA takes from a verified CSR: the public key and the requested common name. Nothing
/// else in the request is trusted (see [`crate::profile`]).
#[derive(Debug)]
pub struct Csr {
    pub common_name: Option<String>,
    pub public_key: rcgen::SubjectPublicKeyInfo,
    /// The key's algorithm and size, as [`decode::describe_key`] names it.
    pub key: String,
}

impl Csr {
    /// Reads a PKCS#10 request (PEM or DER) and checks its self-signature.
    pub fn read(path: &Path) -> Result<Csr> {
        let der = decode::pem_or_der(path, &files::read(path)?, "CERTIFICATE REQUEST")?;
        Csr::from_der(path, &der)
    }

    /// Parses a DER request that arrived some other way (an EST `simpleenroll` body) and checks
    /// its self-signature; `path` names where it came from in every error.
    pub fn from_der(path: &Path, der: &[u8]) -> Result<Csr> {
        let (rest, csr) = X509CertificationRequest::from_der(der)
            .map_err(|e| Error::malformed(path, "certificate signing request", e))?;
        if !rest.is_empty() {
            return Err(Error::malformed(
                path,
                "certificate signing request",
                "trailing bytes after it",
            ));
        }
        csr.verify_signature()
            .map_err(|_| Error::CsrSignature { path: path.into() })?;
        let info = &csr.certification_request_info;
        let key = decode::describe_key(&info.subject_pki);
        if let Some(bits) = key.strip_prefix("rsa-").and_then(|b| b.parse::<usize>().ok())
            && bits < 2048
        {
            return Err(Error::Refused(format!(
                "{}: an RSA key of {bits} bits is too weak; 2048 bits at least",
                path.display()
            )));
        }
        let public_key = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw).map_err(|e| {
            Error::malformed(
                path,
                "certificate signing request",
                format!("unsupported key ({key}): {e}"),
            )
        })?;
        let common_name = info
            .subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        Ok(Csr {
            common_name,
            public_key,
            key,
        })
    }
}

/// Makes a PKCS#10 request (PEM) for `key`, with `name` as its common name: how an appliance asks
/// for certificates for keys that never leave it.
pub fn create(name: &str, key: &crate::keys::SecretKey) -> Result<String> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(crate::Error::crypto("making a certificate request"))
}
