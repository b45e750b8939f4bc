//! WireGuard keys: Curve25519 key pairs and preshared keys, in WireGuard's base64 text form.
//!
//! A private or preshared key lives in a [`Secret`], which is wiped from memory when dropped. The
//! gateway's own private key is a file in the data directory (mode 0600), created on first need by
//! whichever runs first, `gateway run` or `terminal add --wireguard`, so both agree on it.

use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::db::StoreError;

/// The gateway's private key inside the data directory when `wireguard.private_key` is not set.
pub const GATEWAY_KEY_FILE: &str = "wireguard.key";

/// A 32-byte secret: a private key or a preshared key. Never printed by `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret([u8; 32]);

impl PartialEq for Secret {
    /// In constant time, as every comparison of secrets here.
    fn eq(&self, other: &Secret) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, &other.0).is_ok()
    }
}

impl Eq for Secret {}

/// A public key: what the inventory stores to recognise a terminal.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl Secret {
    /// 32 bytes from the operating system's generator (aws-lc-rs, as every other key here).
    pub fn generate() -> Result<Secret, StoreError> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes)
            .map_err(|_| StoreError::Invalid("the random number generator failed".into()))?;
        Ok(Secret(bytes))
    }

    pub fn from_base64(text: &str) -> Result<Secret, String> {
        decode32(text).map(Secret)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The public key of this private key (Curve25519, clamped as X25519 requires).
    pub fn public_key(&self) -> PublicKey {
        let secret = boringtun::x25519::StaticSecret::from(self.0);
        PublicKey(boringtun::x25519::PublicKey::from(&secret).to_bytes())
    }

    /// The key for boringtun.
    pub fn static_secret(&self) -> boringtun::x25519::StaticSecret {
        boringtun::x25519::StaticSecret::from(self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl PublicKey {
    pub fn from_base64(text: &str) -> Result<PublicKey, String> {
        decode32(text).map(PublicKey)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

fn decode32(text: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|e| format!("expected a WireGuard key (44 characters of base64): {e}"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("expected a 32-byte WireGuard key, got {} bytes", bytes.len()))
}

/// Reads the gateway's private key, or creates it (0600, atomically) if the file does not exist.
pub fn load_or_create(path: &Path) -> Result<Secret, StoreError> {
    match std::fs::read_to_string(path) {
        Ok(mut text) => {
            let key = Secret::from_base64(&text).map_err(|what| StoreError::Corrupt {
                path: path.to_owned(),
                what,
            });
            text.zeroize();
            key
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Secret::generate()?;
            let mut text = format!("{}\n", key.to_base64());
            let written = cert_tool::files::write_atomic(path, text.as_bytes(), cert_tool::files::SECRET);
            text.zeroize();
            written?;
            Ok(key)
        }
        Err(source) => Err(StoreError::Io {
            op: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_public_key_matches_wg() {
        // The RFC 7748 test vector (Alice), as `wg pubkey` computes it.
        let private = Secret::from_base64("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=").unwrap();
        assert_eq!(
            private.public_key().to_base64(),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
        assert!(PublicKey::from_base64("short").is_err());
        assert!(PublicKey::from_base64(&STANDARD.encode([0u8; 31])).is_err());
        assert_eq!(format!("{private:?}"), "Secret(…)");
    }

    #[test]
    fn gateway_key_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(GATEWAY_KEY_FILE);
        let first = load_or_create(&path).unwrap();
        let again = load_or_create(&path).unwrap();
        assert!(first == again);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(&path, "not a key").unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("wireguard.key"), "{err}");
    }
}
