//! Private keys: which algorithms, how they are made, and how they rest on disk.
//!
//! A CA key at rest is PKCS#8 encrypted with PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC), the format
//! OpenSSL writes with `openssl pkcs8 -topk8 -v2 aes-256-cbc`, so a vendor can always get their key
//! out with a tool we did not write. Every buffer that held key material is zeroized when dropped.

use std::path::Path;

use rcgen::KeyPair;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::files;

/// PBKDF2 rounds for a CA key. OWASP's figure for PBKDF2-HMAC-SHA256 (2023): a guess at a stolen
/// key file costs an attacker this many HMACs, and a vendor a fraction of a second per command.
pub const PBKDF2_ROUNDS: u32 = 600_000;

/// The key algorithms a vendor may choose.
///
/// ECDSA P-256 is the default everywhere: small, fast, and accepted by every TLS stack a clinic
/// terminal runs. RSA is there for terminal software that knows nothing else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    #[value(name = "rsa-2048")]
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[value(name = "rsa-3072")]
    #[serde(rename = "rsa-3072")]
    Rsa3072,
}

impl KeyAlgorithm {
    /// Generates a fresh key pair from the operating system's random source.
    pub fn generate(self) -> Result<SecretKey> {
        use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256, RsaKeySize};
        let key = match self {
            KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256),
            KeyAlgorithm::EcdsaP384 => KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384),
            KeyAlgorithm::Rsa2048 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048),
            KeyAlgorithm::Rsa3072 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_3072),
        };
        key.map(SecretKey).map_err(Error::crypto("key generation"))
    }

    /// The name used on the command line and in the index.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
        }
    }
}

/// A passphrase, wiped from memory when dropped.
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a passphrase obtained elsewhere (environment, prompt).
    pub fn new(text: String) -> Passphrase {
        Passphrase(Zeroizing::new(text))
    }

    /// Reads a passphrase from the first line of a file, as `openssl -passin file:` does.
    /// From a file that only its owner may read (what `--passphrase-file` names): a passphrase
    /// others can read protects nothing, so such a file is refused, as the gateway refuses a
    /// readable `upstream.password`.
    pub fn from_private_file(path: &Path) -> Result<Passphrase> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(Error::io("read", path))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(Error::malformed(
                path,
                "passphrase file",
                format!(
                    "others may read it (mode {:o}): `chmod 600 {}`, or give the passphrase \
                     another way",
                    mode & 0o777,
                    path.display()
                ),
            ));
        }
        Passphrase::from_file(path)
    }

    pub fn from_file(path: &Path) -> Result<Passphrase> {
        let bytes = Zeroizing::new(files::read(path)?);
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| Error::malformed(path, "passphrase file", "it is not UTF-8 text"))?;
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            return Err(Error::malformed(
                path,
                "passphrase file",
                "its first line is empty",
            ));
        }
        Ok(Passphrase::new(line.to_owned()))
    }

    /// Refuses a new passphrase too short to protect a CA key.
    pub fn check_new(&self) -> Result<()> {
        if self.0.chars().count() < 8 {
            return Err(Error::WeakPassphrase("it must have at least 8 characters"));
        }
        Ok(())
    }

    /// The passphrase's text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Serializes a private key as PEM: encrypted PKCS#8 with a passphrase, plain PKCS#8 without.
pub fn seal(key: &SecretKey, passphrase: Option<&Passphrase>) -> Result<Zeroizing<String>> {
    let der = Zeroizing::new(key.0.serialize_der());
    let Some(passphrase) = passphrase else {
        return Ok(Zeroizing::new(pem::encode(&pem::Pem::new(
            "PRIVATE KEY",
            der.to_vec(),
        ))));
    };
    let mut salt = [0u8; 16];
    let mut iv = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt)
        .and_then(|()| aws_lc_rs::rand::fill(&mut iv))
        .map_err(|_| Error::Crypto {
            what: "random number generator",
            detail: "failed".into(),
        })?;
    let params = pkcs5::pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(PBKDF2_ROUNDS, &salt, iv)
        .map_err(|e| Error::Crypto {
            what: "key encryption",
            detail: e.to_string(),
        })?;
    let info = pkcs8::PrivateKeyInfoRef::try_from(der.as_slice()).map_err(|e| Error::Crypto {
        what: "key encryption",
        detail: e.to_string(),
    })?;
    let sealed = info
        .encrypt_with_params(params, passphrase.expose())
        .map_err(|e| Error::Crypto {
            what: "key encryption",
            detail: e.to_string(),
        })?;
    let pem = sealed
        .to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF)
        .map_err(|e| Error::Crypto {
            what: "key encryption",
            detail: e.to_string(),
        })?;
    Ok(pem)
}

/// Whether a PEM private key file needs a passphrase.
pub fn is_encrypted(path: &Path, pem_text: &[u8]) -> Result<bool> {
    let block = parse_pem(path, pem_text)?;
    Ok(block.tag() == "ENCRYPTED PRIVATE KEY")
}

/// Reads a PEM private key file: PKCS#8, plain or encrypted, or the SEC1 and PKCS#1 forms that
/// `openssl ecparam -genkey` and `openssl genrsa -traditional` write.
///
/// `passphrase` is only called when the key is encrypted, so a prompt appears only when needed.
pub fn open(
    path: &Path,
    pem_text: &[u8],
    passphrase: impl FnOnce() -> Result<Passphrase>,
) -> Result<SecretKey> {
    let block = parse_pem(path, pem_text)?;
    let der = match block.tag() {
        "ENCRYPTED PRIVATE KEY" => {
            let passphrase = passphrase()?;
            let info = pkcs8::EncryptedPrivateKeyInfoRef::try_from(block.contents())
                .map_err(|e| Error::malformed(path, "encrypted PKCS#8 private key", e))?;
            let doc = info
                .decrypt(passphrase.expose())
                .map_err(|_| Error::WrongPassphrase { path: path.into() })?;
            Zeroizing::new(doc.as_bytes().to_vec())
        }
        "PRIVATE KEY" => Zeroizing::new(block.contents().to_vec()),
        "EC PRIVATE KEY" => sec1_to_pkcs8(block.contents())
            .ok_or_else(|| Error::malformed(path, "EC private key (SEC1)", "not a P-256 or P-384 key"))?,
        "RSA PRIVATE KEY" => rsa_to_pkcs8(block.contents())
            .ok_or_else(|| Error::malformed(path, "RSA private key (PKCS#1)", "it does not parse"))?,
        other => {
            return Err(Error::malformed(
                path,
                "private key",
                format!("it holds a PEM \"{other}\" block"),
            ));
        }
    };
    KeyPair::try_from(der.as_slice())
        .map(SecretKey)
        .map_err(|e| Error::malformed(path, "private key", e))
}

/// A private key, wiped from memory when dropped (rcgen implements `Zeroize` but not on drop).
///
/// Every key this crate generates or reads is one of these; a bare `KeyPair` never outlives a call.
pub struct SecretKey(pub KeyPair);

impl Drop for SecretKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl rcgen::PublicKeyData for SecretKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        rcgen::PublicKeyData::algorithm(&self.0)
    }
}

impl rcgen::SigningKey for SecretKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.sign(msg)
    }
}

/// OpenSSL's traditional EC key format, rewritten as PKCS#8 so every key takes one path.
fn sec1_to_pkcs8(der: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair,
    };
    [&ECDSA_P256_SHA256_ASN1_SIGNING, &ECDSA_P384_SHA384_ASN1_SIGNING]
        .into_iter()
        .find_map(|alg| {
            let key = EcdsaKeyPair::from_private_key_der(alg, der).ok()?;
            Some(Zeroizing::new(key.to_pkcs8v1().ok()?.as_ref().to_vec()))
        })
}

/// OpenSSL's traditional RSA key format, rewritten as PKCS#8.
fn rsa_to_pkcs8(der: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    let key = aws_lc_rs::rsa::KeyPair::from_der(der).ok()?;
    let pkcs8: Pkcs8V1Der<'static> = key.as_der().ok()?;
    Some(Zeroizing::new(pkcs8.as_ref().to_vec()))
}

fn parse_pem(path: &Path, text: &[u8]) -> Result<pem::Pem> {
    pem::parse(text).map_err(|e| Error::malformed(path, "PEM private key", e))
}
