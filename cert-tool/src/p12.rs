//! PKCS#12 files, the form in which Windows, macOS and Java terminals import a key and certificate.

use std::path::Path;

use p12_keystore::{
    Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKey, PrivateKeyChain,
};
use x509_parser::prelude::*;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::{decode, files, keys};

/// How a PKCS#12 file is encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encryption {
    /// AES-256-CBC with PBKDF2-HMAC-SHA256 and an HMAC-SHA256 MAC: Windows 10 1709+, macOS, Java 8u301+,
    /// OpenSSL 3 without the legacy provider.
    Modern,
    /// 3DES with a SHA-1 MAC, for Windows 7/Server 2008 and old Java. Not RC2-40, which OpenSSL 3
    /// no longer opens without its legacy provider.
    Legacy,
}

/// KDF rounds, as Java's keytool uses: the password is generated, not chosen by a person.
const ROUNDS: u32 = 10_000;

/// A password for a PKCS#12 file, wiped when dropped.
pub type Password = keys::Passphrase;

/// Builds a PKCS#12 file holding the key, its certificate and the CA certificate.
///
/// Refuses a key that does not belong to the certificate and a certificate the CA did not sign:
/// a terminal would only discover either at its first failed connection.
pub fn export(
    cert_path: &Path,
    key_path: &Path,
    ca_path: &Path,
    password: &Password,
    encryption: Encryption,
) -> Result<Vec<u8>> {
    let cert_der = decode::certificate(cert_path)?;
    let ca_der = decode::certificate(ca_path)?;
    let key_text = Zeroizing::new(files::read(key_path)?);
    let key = keys::open(key_path, &key_text, || {
        Err(Error::Refused(format!(
            "{}: the key is encrypted; give export-p12 the plain key",
            key_path.display()
        )))
    })?;

    let (_, cert) =
        X509Certificate::from_der(&cert_der).map_err(|e| Error::malformed(cert_path, "certificate", e))?;
    let (_, ca) =
        X509Certificate::from_der(&ca_der).map_err(|e| Error::malformed(ca_path, "CA certificate", e))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.0.public_key_raw() {
        return Err(Error::KeyMismatch {
            key: key_path.into(),
            cert: cert_path.into(),
        });
    }
    if cert.issuer().as_raw() != ca.subject().as_raw()
        || cert.verify_signature(Some(ca.public_key())).is_err()
    {
        return Err(Error::Refused(format!(
            "{}: not issued by the CA in {}",
            cert_path.display(),
            ca_path.display()
        )));
    }

    build(&cert_der, &key, &[ca_der], password, encryption)
}

/// Builds a PKCS#12 file from a key and certificate already in memory, with the CA certificates
/// of `chain` (issuer first) after it, so a terminal imports the whole chain at once. The caller
/// vouches that the key is the certificate's (it has just made both); [`export`] checks files.
pub fn build(
    cert_der: &[u8],
    key: &keys::SecretKey,
    chain: &[Vec<u8>],
    password: &Password,
    encryption: Encryption,
) -> Result<Vec<u8>> {
    let failed = |what: &'static str| {
        move |e: String| Error::Crypto {
            what: "writing the PKCS#12 file",
            detail: format!("{what}: {e}"),
        }
    };
    let (_, cert) = X509Certificate::from_der(cert_der).map_err(|e| failed("certificate")(e.to_string()))?;
    let alias = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("key")
        .to_owned();
    let bad = |what: &'static str| move |e: p12_keystore::error::Error| failed(what)(e.to_string());
    let mut certs = vec![Certificate::from_der(cert_der).map_err(bad("certificate"))?];
    for ca in chain {
        certs.push(Certificate::from_der(ca).map_err(bad("CA certificate"))?);
    }
    // localKeyId ties the key to its certificate; OpenSSL and Windows use the certificate's SHA-1.
    let chain = PrivateKeyChain::new(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, cert_der)
            .as_ref()
            .to_vec(),
        PrivateKey::from_der(&Zeroizing::new(key.0.serialize_der())).map_err(bad("private key"))?,
        certs,
    );
    let mut store = KeyStore::new();
    store.add_entry(&alias, KeyStoreEntry::PrivateKeyChain(chain));
    let (cipher, mac) = match encryption {
        Encryption::Modern => (
            EncryptionAlgorithm::PbeWithHmacSha256AndAes256,
            MacAlgorithm::HmacSha256,
        ),
        Encryption::Legacy => (
            EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc,
            MacAlgorithm::HmacSha1,
        ),
    };
    store
        .writer(password.expose())
        .encryption_algorithm(cipher)
        .encryption_iterations(ROUNDS)
        .mac_algorithm(mac)
        .mac_iterations(ROUNDS)
        .write()
        .map_err(|e| Error::Crypto {
            what: "writing the PKCS#12 file",
            detail: e.to_string(),
        })
}

/// Opens a PKCS#12 file: the private key's algorithm (if any) and the certificates, leaf first.
pub fn open(path: &Path, der: &[u8], password: &Password) -> Result<(Option<String>, Vec<Vec<u8>>)> {
    let store = KeyStore::from_pkcs12(der, password.expose(), p12_keystore::Pkcs12ImportPolicy::Relaxed)
        .map_err(|e| match e {
            p12_keystore::error::Error::MacError(_) => Error::WrongPassphrase { path: path.into() },
            other => Error::malformed(path, "PKCS#12 file", other),
        })?;
    let mut key = None;
    let mut certs = Vec::new();
    for (_, entry) in store.entries() {
        match entry {
            KeyStoreEntry::PrivateKeyChain(chain) => {
                key = Some(describe_private(chain.key().as_der()));
                certs.extend(chain.certs().iter().map(|c| c.as_der().to_vec()));
            }
            KeyStoreEntry::Certificate(c) => certs.push(c.as_der().to_vec()),
            _ => {}
        }
    }
    Ok((key, certs))
}

fn describe_private(pkcs8_der: &[u8]) -> String {
    match rcgen::KeyPair::try_from(pkcs8_der).map(keys::SecretKey) {
        Ok(kp) => {
            let spki = rcgen::PublicKeyData::subject_public_key_info(&kp);
            match SubjectPublicKeyInfo::from_der(&spki) {
                Ok((_, spki)) => decode::describe_key(&spki),
                Err(_) => "unknown".into(),
            }
        }
        Err(_) => "unknown".into(),
    }
}
