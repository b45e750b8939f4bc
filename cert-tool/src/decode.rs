//! Reading PKI objects from files, PEM or DER, and telling them apart.

use std::path::Path;

use x509_parser::prelude::*;

use crate::error::{Error, Result};

/// What a file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Certificate,
    Csr,
    Crl,
    Pkcs12,
    PrivateKey,
    EncryptedPrivateKey,
}

impl Kind {
    fn from_pem_label(label: &str) -> Option<Kind> {
        Some(match label {
            "CERTIFICATE" | "TRUSTED CERTIFICATE" => Kind::Certificate,
            "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => Kind::Csr,
            "X509 CRL" => Kind::Crl,
            "PKCS12" => Kind::Pkcs12,
            "PRIVATE KEY" | "EC PRIVATE KEY" | "RSA PRIVATE KEY" => Kind::PrivateKey,
            "ENCRYPTED PRIVATE KEY" => Kind::EncryptedPrivateKey,
            _ => return None,
        })
    }
}

/// One object found in a file.
pub struct Object {
    pub kind: Kind,
    pub der: zeroize::Zeroizing<Vec<u8>>,
}

/// Everything in a file: every PEM block, or the one DER object.
pub fn objects(path: &Path, bytes: &[u8]) -> Result<Vec<Object>> {
    if looks_like_pem(bytes) {
        let blocks = ::pem::parse_many(bytes).map_err(|e| Error::malformed(path, "PEM file", e))?;
        if blocks.is_empty() {
            return Err(Error::malformed(path, "PEM file", "no complete PEM block in it"));
        }
        return blocks
            .into_iter()
            .map(|b| {
                let kind = Kind::from_pem_label(b.tag()).ok_or_else(|| {
                    Error::malformed(path, "PKI file", format!("unknown PEM block \"{}\"", b.tag()))
                })?;
                Ok(Object {
                    kind,
                    der: zeroize::Zeroizing::new(b.into_contents()),
                })
            })
            .collect();
    }
    let kind = if X509Certificate::from_der(bytes).is_ok_and(|(rest, _)| rest.is_empty()) {
        Kind::Certificate
    } else if X509CertificationRequest::from_der(bytes).is_ok_and(|(rest, _)| rest.is_empty()) {
        Kind::Csr
    } else if CertificateRevocationList::from_der(bytes).is_ok_and(|(rest, _)| rest.is_empty()) {
        Kind::Crl
    } else if bytes.starts_with(&[0x30]) && is_pfx(bytes) {
        Kind::Pkcs12
    } else if pkcs8::PrivateKeyInfoRef::try_from(bytes).is_ok() {
        Kind::PrivateKey
    } else {
        return Err(Error::malformed(
            path,
            "certificate, CSR, CRL, PKCS#12 or key (PEM or DER)",
            "it is none of these, or it is truncated",
        ));
    };
    Ok(vec![Object {
        kind,
        der: zeroize::Zeroizing::new(bytes.to_vec()),
    }])
}

/// The DER of the one object of kind `label` in a PEM or DER file.
pub fn pem_or_der(path: &Path, bytes: &[u8], label: &'static str) -> Result<Vec<u8>> {
    let want = Kind::from_pem_label(label).unwrap_or(Kind::Certificate);
    let found = objects(path, bytes)?;
    found
        .into_iter()
        .find(|o| o.kind == want)
        .map(|o| o.der.to_vec())
        .ok_or_else(|| Error::malformed(path, label_name(want), "the file holds no such object"))
}

/// Reads one certificate, checking it parses completely.
pub fn certificate(path: &Path) -> Result<Vec<u8>> {
    let der = pem_or_der(path, &crate::files::read(path)?, "CERTIFICATE")?;
    match X509Certificate::from_der(&der) {
        Ok(([], _)) => Ok(der),
        Ok(_) => Err(Error::malformed(path, "certificate", "trailing bytes after it")),
        Err(e) => Err(Error::malformed(path, "certificate", e)),
    }
}

fn label_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Certificate => "certificate",
        Kind::Csr => "certificate signing request",
        Kind::Crl => "CRL",
        Kind::Pkcs12 => "PKCS#12 file",
        Kind::PrivateKey | Kind::EncryptedPrivateKey => "private key",
    }
}

fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).take(4096).any(|w| w == b"-----BEGIN ")
}

/// PFX ::= SEQUENCE { version INTEGER (3), authSafe ContentInfo, ... }
fn is_pfx(bytes: &[u8]) -> bool {
    let header = match bytes.get(1) {
        Some(&l) if l < 0x80 => 2,
        Some(&l) if (0x81..=0x84).contains(&l) => 2 + usize::from(l - 0x80),
        _ => return false,
    };
    bytes.get(header..header + 3) == Some(&[0x02, 0x01, 0x03])
}

/// A one-line description of a public key: `ecdsa-p256`, `rsa-3072`, `ed25519`.
pub fn describe_key(spki: &SubjectPublicKeyInfo) -> String {
    match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| match oid.to_id_string().as_str() {
                    "1.2.840.10045.3.1.7" => "p256".to_string(),
                    "1.3.132.0.34" => "p384".to_string(),
                    "1.3.132.0.35" => "p521".to_string(),
                    other => other.to_string(),
                })
                .unwrap_or_else(|| format!("{}-bit", point.key_size()));
            format!("ecdsa-{curve}")
        }
        Ok(x509_parser::public_key::PublicKey::RSA(rsa)) => format!("rsa-{}", rsa.key_size()),
        _ => match spki.algorithm.algorithm.to_id_string().as_str() {
            "1.3.101.112" => "ed25519".into(),
            "1.3.101.113" => "ed448".into(),
            other => format!("unknown ({other})"),
        },
    }
}
