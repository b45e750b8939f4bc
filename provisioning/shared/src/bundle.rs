//! The bundle: everything an appliance needs for its clinic, in one file from the vendor.
//!
//! ## Format
//! One line, `kakehashi-bundle/1 RECIPIENT` ([`LINE`]), naming the appliance it is for; then an
//! [age](https://age-encryption.org/v1) file encrypted to that appliance's device identity (an
//! X25519 recipient from its [`crate::request::Request`]). Inside, one JSON object
//! ([`Signed`]): the payload as JSON text and the vendor's ECDSA P-256 signature over
//! [`CONTEXT`] followed by that text.
//!
//! The line is not secret and not trusted: it lets a bundle for another appliance be called
//! that, and a bundle whose encryption header was damaged be called damaged (age alone cannot tell
//! the two apart: a damaged recipient stanza simply does not open). The payload's own `appliance`,
//! under the signature, is what is enforced.
//!
//! Sign, then encrypt: the signature proves who made the payload, the encryption keeps the
//! payload (staff password hashes, the engine credential, WireGuard preshared keys) from anyone
//! but the appliance. The payload names the appliance it was made for, under the signature, so a
//! vendor-signed payload re-encrypted to another appliance is refused too; and it carries a
//! version that only grows, so an old bundle cannot be replayed to undo a revocation.
//!
//! Any change to the file fails age's authentication (or, inside, the signature), so "tampered"
//! needs no check of its own.

use std::io::{Read, Write};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::scope::Scopes;

/// How a bundle file begins, before the appliance's recipient.
pub const LINE: &str = "kakehashi-bundle/1 ";

/// The payload format this build writes and reads.
pub const FORMAT: u32 = 1;
/// Prefixed to the payload before signing, so a bundle signature can never be mistaken for (or
/// made from) a signature over anything else the vendor key signs.
pub const CONTEXT: &[u8] = b"kakehashi-bundle/1\0";
/// The largest bundle accepted: far beyond a clinic of thousands of terminals, far below what
/// would trouble the appliance's memory.
pub const MAX_BYTES: u64 = 64 << 20;

/// What the vendor ships: configuration, certificates, CRL, inventory, people and credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub format: u32,
    /// The clinic ID (the vendor's name for it: `--clinic`).
    pub clinic: String,
    pub clinic_name: String,
    /// Grows with every bundle of this clinic; an appliance refuses one not above its installed one.
    pub version: u64,
    /// When it was built, RFC 3339.
    pub created: String,
    /// The appliance it was made for: its device identity (age recipient, `age1…`).
    pub appliance: String,
    /// The vendor's signing key, as [`fingerprint`] names it (it must also verify the signature).
    pub vendor_key: String,
    pub certificates: Certificates,
    pub settings: Settings,
    pub engine: Engine,
    pub terminals: Vec<DeclaredTerminal>,
    /// One-time enrollment tokens the vendor made (`provision terminal add --enroll`).
    pub tokens: Vec<Token>,
    pub users: Vec<StaffAccount>,
    /// Terminals the vendor revoked (`provision terminal revoke`): the appliance removes them
    /// from its inventory and revokes what its own issuing CA gave them (an EST enrollment);
    /// what the clinic CA gave them is on `certificates.clinic_crl`.
    pub revoked: Vec<String>,
}

/// Certificates and the CRL, all PEM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificates {
    /// The vendor root CA: the issuer of the issuing CA and of the clinic CA.
    pub vendor_root: String,
    /// The clinic CA (held by the vendor): terminals trust it for the gateway's server
    /// certificate, and it issues the terminal certificates the vendor makes (PKCS#12).
    pub clinic_ca: String,
    /// The clinic CA's CRL: the terminals the vendor revoked.
    pub clinic_crl: String,
    /// The appliance's issuing CA certificate (its key never left the appliance), signed by the
    /// vendor root: EST enrollments and `terminal add` on the appliance.
    pub issuing_ca: String,
    /// The gateway's TLS server certificate (the engine's host name), signed by the clinic CA.
    pub server: String,
    /// The gateway's uplink certificate from the cloud operator's CA, once the vendor has it.
    pub uplink: Option<String>,
}

/// How the appliance listens (the clinic's network, which the vendor knows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The engine's host name, on the server certificate; terminals connect to it.
    pub engine_host: String,
    /// Where terminals connect over TLS (`host:port`).
    pub listen: String,
    /// The EST enrollment listener.
    pub est_listen: String,
    /// The metrics listener.
    pub admin_listen: String,
    /// WireGuard, when the clinic has WireGuard terminals.
    pub wireguard: Option<WireGuard>,
}

/// The clinic's WireGuard network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireGuard {
    /// The UDP address the gateway listens on.
    pub listen: String,
    /// The gateway's tunnel address and prefix, e.g. `10.77.0.1/24`.
    pub address: String,
    /// `host:port` terminals send to (written into their configs).
    pub endpoint: String,
}

/// The cloud engine and the clinic's account there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Engine {
    /// The engine's base URL (`https://…`).
    pub url: String,
    /// The CA (PEM) the engine's certificate chains to.
    pub ca: String,
    /// The clinic's engine account, sent upstream for people without one of their own.
    pub user: String,
    pub password: SecretText,
}

/// A terminal the vendor declares for the appliance's inventory: what the appliance needs to
/// admit it (the vendor's own record of it, with its kind and certificates, stays in clinic.json).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredTerminal {
    pub name: String,
    pub note: Option<String>,
    pub enabled: bool,
    pub wireguard: Option<WireGuardPeer>,
    /// What it may call (every scope when the field is absent).
    #[serde(default = "Scopes::all", skip_serializing_if = "Scopes::is_all")]
    pub scopes: Scopes,
}

/// A terminal's WireGuard identity (its private key went to the terminal and is nowhere here).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireGuardPeer {
    /// base64, 32 bytes.
    pub public_key: String,
    /// base64, 32 bytes.
    pub preshared_key: Option<SecretText>,
    pub address: std::net::Ipv4Addr,
}

/// A one-time enrollment token, as its hash: the token itself was shown to the vendor once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    /// The terminal it enrolls.
    pub name: String,
    /// SHA-256 of the token text, hex.
    pub sha256: String,
    /// RFC 3339.
    pub created: String,
    pub expires: String,
}

/// A staff account for the appliance: a person who signs in at the terminals, as the appliance
/// verifies them (the hash, never the password).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaffAccount {
    pub id: String,
    /// argon2id, PHC string.
    pub hash: String,
    pub locked: bool,
    /// The person's own engine account, if the engine knows them by name.
    pub upstream: Option<Credential>,
    /// What it may call (every scope when the field is absent).
    #[serde(default = "Scopes::all", skip_serializing_if = "Scopes::is_all")]
    pub scopes: Scopes,
}

/// An engine account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub user: String,
    pub password: SecretText,
}

/// A secret string in the payload (a password, a preshared key in base64): wiped from memory when
/// dropped, never shown by `Debug`. Text, unlike the 32-byte keys of [`crate::wireguard::Secret`].
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(pub Zeroizing<String>);

impl Serialize for SecretText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SecretText, D::Error> {
        String::deserialize(d).map(SecretText::new)
    }
}

impl SecretText {
    pub fn new(text: impl Into<String>) -> SecretText {
        SecretText(Zeroizing::new(text.into()))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretText(…)")
    }
}

/// The signed payload: what the age file holds.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// The payload's JSON text, exactly as signed.
    pub payload: String,
    /// The signer's public key: an uncompressed P-256 point, base64.
    pub key: String,
    /// ECDSA P-256 SHA-256 (ASN.1 DER) over [`CONTEXT`] + `payload`, base64.
    pub signature: String,
}

/// Why a bundle was refused. Each says what was wrong; none applies anything.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read the bundle: {0}")]
    Read(std::io::Error),
    #[error("the bundle is larger than {MAX_BYTES} bytes")]
    TooLarge,
    #[error("not a Kakehashi bundle: {0}")]
    NotBundle(String),
    #[error(
        "the bundle is encrypted for another appliance ({named}; this one is {appliance}): \
         build it with this appliance's request"
    )]
    OtherAppliance { appliance: String, named: String },
    #[error("the bundle is damaged or was changed after it was made ({0})")]
    Damaged(String),
    #[error("the bundle's contents are malformed: {0}")]
    Malformed(String),
    #[error("the bundle's signature does not verify: it was changed after signing")]
    BadSignature,
    #[error("the bundle is signed by key {found}, not by the pinned vendor key {pinned}")]
    OtherVendor { found: String, pinned: String },
    #[error("the bundle is payload format {0}; this kakehashi reads format {FORMAT}")]
    Format(u32),
    #[error("the bundle was made for appliance {found}, not for this one ({ours}), and re-encrypted")]
    WrongAppliance { found: String, ours: String },
    #[error("cannot build the bundle: {0}")]
    Build(String),
}

/// The fingerprint that names a vendor signing key everywhere (pins, bundles, messages):
/// `SHA256:` and the hex SHA-256 of its uncompressed public point.
pub fn fingerprint(public_key: &[u8]) -> String {
    format!("SHA256:{}", cert_tool::ca::sha256_hex(public_key))
}

/// Signs `payload` with the vendor's key and encrypts it to the appliance: the bundle's bytes.
pub fn seal(payload: &Payload, key: &cert_tool::keys::SecretKey) -> Result<Vec<u8>, BundleError> {
    seal_to(payload, key, &payload.appliance)
}

fn seal_to(
    payload: &Payload,
    key: &cert_tool::keys::SecretKey,
    appliance: &str,
) -> Result<Vec<u8>, BundleError> {
    use rcgen::SigningKey as _;
    if key.0.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(BundleError::Build(
            "the vendor signing key must be ECDSA P-256".into(),
        ));
    }
    let recipient: age::x25519::Recipient = appliance
        .parse()
        .map_err(|e| BundleError::Build(format!("appliance {appliance:?}: {e}")))?;
    let text = Zeroizing::new(serde_json::to_string(payload).map_err(|e| BundleError::Build(e.to_string()))?);
    let mut message = Zeroizing::new(Vec::with_capacity(CONTEXT.len() + text.len()));
    message.extend_from_slice(CONTEXT);
    message.extend_from_slice(text.as_bytes());
    let signature = key
        .sign(&message)
        .map_err(|e| BundleError::Build(format!("signing: {e}")))?;
    let signed = Signed {
        payload: text.to_string(),
        key: STANDARD.encode(key.0.public_key_raw()),
        signature: STANDARD.encode(signature),
    };
    let inner = Zeroizing::new(serde_json::to_vec(&signed).map_err(|e| BundleError::Build(e.to_string()))?);
    drop(Zeroizing::new(signed.payload));
    let encryptor = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
        .map_err(|e| BundleError::Build(format!("encrypting: {e}")))?;
    let mut out = Vec::with_capacity(inner.len() + 512);
    out.extend_from_slice(format!("{LINE}{appliance}\n").as_bytes());
    let mut writer = encryptor
        .wrap_output(&mut out)
        .map_err(|e| BundleError::Build(format!("encrypting: {e}")))?;
    writer
        .write_all(&inner)
        .and_then(|()| writer.finish().map(|_| ()))
        .map_err(|e| BundleError::Build(format!("encrypting: {e}")))?;
    Ok(out)
}

/// A bundle decrypted and its signature verified; the caller checks the signer against its pin
/// and the version against what is installed.
#[derive(Debug)]
pub struct Opened {
    pub payload: Payload,
    /// The signer's [`fingerprint`].
    pub vendor_key: String,
}

/// Decrypts `bytes` with the appliance's identity, verifies the signature and the payload's
/// format and appliance. `pinned` is the vendor key fingerprint the appliance trusts, if it has
/// one yet.
pub fn open(
    bytes: &[u8],
    identity: &age::x25519::Identity,
    pinned: Option<&str>,
) -> Result<Opened, BundleError> {
    if bytes.len() as u64 > MAX_BYTES {
        return Err(BundleError::TooLarge);
    }
    let ours = identity.to_public().to_string();
    let (named, encrypted) = envelope(bytes)?;
    let inner = match decrypt(encrypted, identity) {
        Ok(inner) => inner,
        Err(_) if named != ours => {
            return Err(BundleError::OtherAppliance {
                appliance: ours,
                named: named.to_owned(),
            });
        }
        Err(why) => return Err(BundleError::Damaged(why)),
    };
    if named != ours {
        return Err(BundleError::Damaged(format!(
            "its first line names appliance {named}, but it opens with this appliance's key: \
             the line was changed"
        )));
    }
    let signed: Signed = serde_json::from_slice(&inner).map_err(|e| BundleError::Malformed(e.to_string()))?;
    let signed_payload = Zeroizing::new(signed.payload);
    let key = STANDARD
        .decode(&signed.key)
        .map_err(|e| BundleError::Malformed(format!("key: {e}")))?;
    let signature = STANDARD
        .decode(&signed.signature)
        .map_err(|e| BundleError::Malformed(format!("signature: {e}")))?;
    let mut message = Zeroizing::new(Vec::with_capacity(CONTEXT.len() + signed_payload.len()));
    message.extend_from_slice(CONTEXT);
    message.extend_from_slice(signed_payload.as_bytes());
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &key)
        .verify(&message, &signature)
        .map_err(|_| BundleError::BadSignature)?;
    let found = fingerprint(&key);
    if let Some(pinned) = pinned
        && pinned != found
    {
        return Err(BundleError::OtherVendor {
            found,
            pinned: pinned.to_owned(),
        });
    }
    payload(&signed_payload, &ours, found)
}

/// The checks after the signature: the payload `text` that the vendor key with fingerprint
/// `found` signed, for the appliance whose recipient is `ours`. Apart from [`open`] so that a
/// fuzz target reaches them without sealing and signing every input.
pub fn payload(text: &str, ours: &str, found: String) -> Result<Opened, BundleError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| BundleError::Malformed(e.to_string()))?;
    match value.get("format").and_then(|f| f.as_u64()) {
        Some(f) if f == u64::from(FORMAT) => {}
        Some(f) => return Err(BundleError::Format(u32::try_from(f).unwrap_or(u32::MAX))),
        None => return Err(BundleError::Malformed("no \"format\"".into())),
    }
    let payload: Payload =
        serde_json::from_value(value).map_err(|e| BundleError::Malformed(e.to_string()))?;
    if payload.appliance != ours {
        return Err(BundleError::WrongAppliance {
            found: payload.appliance,
            ours: ours.to_owned(),
        });
    }
    if payload.vendor_key != found {
        return Err(BundleError::Malformed(format!(
            "vendor_key {} is not the key that signed it ({found})",
            payload.vendor_key
        )));
    }
    Ok(Opened {
        payload,
        vendor_key: found,
    })
}

/// The recipient a bundle's first line names, and the age file after it.
fn envelope(bytes: &[u8]) -> Result<(&str, &[u8]), BundleError> {
    if bytes.is_empty() {
        return Err(BundleError::NotBundle("the file is empty".into()));
    }
    let not_bundle = || {
        BundleError::NotBundle(format!(
            "it does not begin with the line \"{LINE}…\" that every bundle begins with \
             (another file, or not the whole of a bundle)"
        ))
    };
    let rest = bytes.strip_prefix(LINE.as_bytes()).ok_or_else(not_bundle)?;
    let end = rest
        .iter()
        .take(256)
        .position(|&b| b == b'\n')
        .ok_or_else(not_bundle)?;
    let named = std::str::from_utf8(&rest[..end]).map_err(|_| not_bundle())?;
    Ok((named, &rest[end + 1..]))
}

/// The age file's plaintext, or why it does not open: a header that does not parse or does not
/// open with `identity`, or a body that fails authentication.
fn decrypt(encrypted: &[u8], identity: &age::x25519::Identity) -> Result<Zeroizing<Vec<u8>>, String> {
    let decryptor = age::Decryptor::new(encrypted).map_err(|e| format!("its encryption header: {e}"))?;
    let mut reader = decryptor
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => {
                "its encryption header does not open with this appliance's key".to_owned()
            }
            age::DecryptError::InvalidHeader => "its encryption header is damaged".to_owned(),
            other => format!("authentication failed: {other}"),
        })?;
    let mut inner = Zeroizing::new(Vec::new());
    reader
        .by_ref()
        .take(MAX_BYTES)
        .read_to_end(&mut inner)
        .map_err(|e| format!("authentication failed: {e}"))?;
    Ok(inner)
}

/// Decodes a base64 32-byte key (WireGuard's encoding), saying what is wrong with it.
pub fn decode_key32(text: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| "not base64".to_owned())?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{} bytes, expected 32", b.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cert_tool::keys::KeyAlgorithm;

    fn payload(appliance: &str, vendor_key: &str) -> Payload {
        Payload {
            format: FORMAT,
            clinic: "c1".into(),
            clinic_name: "Clinic".into(),
            version: 1,
            created: "2026-11-22T00:00:00Z".into(),
            appliance: appliance.into(),
            vendor_key: vendor_key.into(),
            certificates: Certificates {
                vendor_root: "R".into(),
                clinic_ca: "C".into(),
                clinic_crl: "L".into(),
                issuing_ca: "I".into(),
                server: "S".into(),
                uplink: None,
            },
            settings: Settings {
                engine_host: "engine.test".into(),
                listen: "0.0.0.0:443".into(),
                est_listen: "0.0.0.0:8444".into(),
                admin_listen: "127.0.0.1:9090".into(),
                wireguard: None,
            },
            engine: Engine {
                url: "https://engine.test".into(),
                ca: "E".into(),
                user: "ormaster".into(),
                password: SecretText::new("pw"),
            },
            terminals: vec![],
            tokens: vec![],
            users: vec![],
            revoked: vec![],
        }
    }

    #[test]
    fn a_bundle_opens_only_for_its_appliance_and_signer() {
        let appliance = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let vendor = KeyAlgorithm::EcdsaP256.generate().unwrap();
        let vendor_fp = fingerprint(vendor.0.public_key_raw());
        let p = payload(&appliance.to_public().to_string(), &vendor_fp);
        let sealed = seal(&p, &vendor).unwrap();

        let opened = open(&sealed, &appliance, Some(&vendor_fp)).unwrap();
        assert_eq!(opened.payload, p);
        assert!(matches!(
            open(&sealed, &other, None),
            Err(BundleError::OtherAppliance { .. })
        ));
        assert!(matches!(
            open(&sealed, &appliance, Some("SHA256:00")),
            Err(BundleError::OtherVendor { .. })
        ));
        for (bytes, message) in [
            (&b""[..], "not a Kakehashi bundle: the file is empty"),
            (
                b"plain text\n",
                "not a Kakehashi bundle: it does not begin with the line \"kakehashi-bundle/1 …\"",
            ),
        ] {
            let e = open(bytes, &appliance, None).unwrap_err().to_string();
            assert!(e.starts_with(message), "{e}");
        }
        // Any byte changed, anywhere after the first line, is damage, never "another appliance".
        let start = sealed.iter().position(|&b| b == b'\n').unwrap() + 1;
        for i in [start + 30, start + 60, start + 100, sealed.len() - 10] {
            let mut tampered = sealed.clone();
            tampered[i] ^= 1;
            let e = open(&tampered, &appliance, None).unwrap_err();
            assert!(matches!(e, BundleError::Damaged(_)), "byte {i}: {e}");
        }
        // The first line changed to another appliance: still opens here, so it is damage.
        let relabelled = [
            format!("{LINE}{}\n", other.to_public()).as_bytes(),
            &sealed[start..],
        ]
        .concat();
        assert!(matches!(
            open(&relabelled, &appliance, None),
            Err(BundleError::Damaged(_))
        ));

        // A payload made for another appliance but encrypted to this one: refused by name.
        let elsewhere = payload(&other.to_public().to_string(), &vendor_fp);
        let sealed = seal_to(&elsewhere, &vendor, &appliance.to_public().to_string()).unwrap();
        assert!(matches!(
            open(&sealed, &appliance, None),
            Err(BundleError::WrongAppliance { .. })
        ));
    }
}
