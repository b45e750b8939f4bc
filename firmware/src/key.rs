//! The vendor's firmware key: ECDSA P-256. The vendor signs with the private key (PKCS#8); the
//! appliance pins the public key (a PEM `PUBLIC KEY`, SubjectPublicKeyInfo) and checks every
//! image's signature against it.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use zeroize::Zeroizing;

use crate::{Error, Result};

/// The DER before the 65-byte uncompressed point in every P-256 SubjectPublicKeyInfo.
const SPKI_P256_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
    0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// An uncompressed P-256 point: `04`, X, Y.
const POINT_LEN: usize = 65;

/// A new firmware signing key: its PKCS#8 PEM (secret: write it 0600) and its public key PEM.
pub fn generate() -> Result<(Zeroizing<String>, String)> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| Error::Key("cannot generate a P-256 key".into()))?;
    let der = Zeroizing::new(pkcs8.as_ref().to_vec());
    let pair = signing_key(&der)?;
    let private = Zeroizing::new(pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec())));
    Ok((private, public_pem(pair.public_key().as_ref())))
}

/// The signing key from its PKCS#8 DER; anything but ECDSA P-256 is refused.
pub fn signing_key(pkcs8_der: &[u8]) -> Result<EcdsaKeyPair> {
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8_der)
        .map_err(|_| Error::Key("the firmware key must be an ECDSA P-256 private key (PKCS#8)".into()))
}

/// The PEM `PUBLIC KEY` of an uncompressed P-256 point.
pub fn public_pem(point: &[u8]) -> String {
    let mut der = SPKI_P256_PREFIX.to_vec();
    der.extend_from_slice(point);
    pem::encode(&pem::Pem::new("PUBLIC KEY", der))
}

/// The uncompressed point of a pinned public key file's text (PEM `PUBLIC KEY`, P-256).
pub fn parse_public(text: &[u8]) -> Result<Vec<u8>> {
    let block = pem::parse(text).map_err(|e| Error::Key(format!("not a PEM public key: {e}")))?;
    if block.tag() != "PUBLIC KEY" {
        return Err(Error::Key(format!(
            "expected a PEM \"PUBLIC KEY\" block, found \"{}\"",
            block.tag()
        )));
    }
    let der = block.contents();
    match der.strip_prefix(&SPKI_P256_PREFIX[..]) {
        Some(point) if point.len() == POINT_LEN && point[0] == 4 => Ok(point.to_vec()),
        _ => Err(Error::Key("the public key is not an ECDSA P-256 key".into())),
    }
}

/// How a firmware key is named in images, messages and `firmware status`: `SHA256:` and the hex
/// SHA-256 of its uncompressed point (as vendor bundle keys are named).
pub fn fingerprint(point: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, point);
    format!("SHA256:{}", hex::encode(digest.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_round_trips() {
        let (private, public) = generate().expect("key");
        let block = pem::parse(private.as_bytes()).expect("pem");
        let pair = signing_key(block.contents()).expect("signing key");
        assert_eq!(
            parse_public(public.as_bytes()).expect("public"),
            pair.public_key().as_ref()
        );
    }

    #[test]
    fn other_keys_are_refused() {
        assert!(parse_public(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
        assert!(signing_key(b"not a key").is_err());
    }
}
