//! The gateway's WireGuard key.
//!
//! The key types ([`Secret`], wiped from memory when dropped, and [`PublicKey`]) are
//! provisioning's, shared with the vendor's tools. The gateway's own private key is a file in the
//! data directory (mode 0600; [`crate::config::GATEWAY_KEY_FILE`] unless configured), created on
//! first need by whichever runs first, `gateway run` or `terminal add --wireguard`, so both
//! agree on it.

use std::path::Path;

use zeroize::Zeroize;

pub use provisioning_shared::wireguard::{PublicKey, Secret};

use crate::store::StoreError;

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
    fn gateway_key_is_created_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(crate::config::GATEWAY_KEY_FILE);
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
