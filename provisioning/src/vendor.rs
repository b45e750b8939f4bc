//! The vendor directory: the vendor root CA, the bundle-signing key, and one directory a clinic.
//!
//! ```text
//! V/                       mode 0700
//! V/root/                  the vendor root CA (cert-tool's CA layout; path length 1)
//! V/signing.key            the bundle-signing key, ECDSA P-256, encrypted PKCS#8, mode 0600
//! V/vendor-key.txt         its fingerprint, `SHA256:…` (public: appliances pin it)
//! V/clinics/ID/            one clinic (see [`crate::clinic`])
//! V/.lock                  taken by `vendor init` and `clinic add`
//! ```
//!
//! One passphrase protects the root key, the signing key and every clinic CA key: a vendor
//! laptop has one secret to keep, and `--no-passphrase` (tests, demos) leaves all of them plain.

use std::path::{Path, PathBuf};

use cert_tool::files::{self, DirLock, Staged};
use cert_tool::keys::{self, KeyAlgorithm, Passphrase, SecretKey};

use crate::error::{Error, Result};

/// The vendor directory when neither `--dir` nor `KAKEHASHI_VENDOR_DIR` says otherwise.
pub const DEFAULT_DIR: &str = "kakehashi-vendor";
/// The environment variable naming the vendor directory.
pub const DIR_ENV: &str = "KAKEHASHI_VENDOR_DIR";
/// The vendor root's validity when `vendor init --days` is not given: twenty years, so that it
/// outlives every clinic CA it signs.
pub const DEFAULT_ROOT_DAYS: u32 = 7300;

/// The paths of a vendor directory.
#[derive(Clone, Debug)]
pub struct Vendor {
    pub dir: PathBuf,
}

impl Vendor {
    /// A vendor directory that exists: its root CA, signing key and fingerprint are all there.
    pub fn open(dir: &Path) -> Result<Vendor> {
        let vendor = Vendor {
            dir: dir.to_path_buf(),
        };
        for (path, missing) in [
            (vendor.signing_key_path(), "signing.key"),
            (vendor.fingerprint_path(), "vendor-key.txt"),
            (
                cert_tool::ca::Layout::new(&vendor.root_dir()).cert(),
                "root/ca.pem",
            ),
        ] {
            if !path.exists() {
                return Err(Error::NoVendor {
                    dir: dir.to_path_buf(),
                    missing,
                });
            }
        }
        Ok(vendor)
    }

    /// The vendor root CA directory.
    pub fn root_dir(&self) -> PathBuf {
        self.dir.join("root")
    }
    pub fn signing_key_path(&self) -> PathBuf {
        self.dir.join("signing.key")
    }
    pub fn fingerprint_path(&self) -> PathBuf {
        self.dir.join("vendor-key.txt")
    }
    /// The directory that holds one directory a clinic.
    pub fn clinics_dir(&self) -> PathBuf {
        self.dir.join("clinics")
    }

    /// Whether the vendor's keys are encrypted (`vendor init` without `--no-passphrase`): the
    /// root key says for all of them.
    pub fn encrypted(&self) -> Result<bool> {
        let key = cert_tool::ca::Layout::new(&self.root_dir()).key();
        Ok(keys::is_encrypted(&key, &files::read(&key)?)?)
    }

    /// The bundle-signing key, decrypted.
    pub fn signing_key(&self, passphrase: Option<&Passphrase>) -> Result<SecretKey> {
        let path = self.signing_key_path();
        let text = zeroize::Zeroizing::new(files::read(&path)?);
        let key = keys::open(&path, &text, give(passphrase, &path))?;
        if rcgen::PublicKeyData::algorithm(&key) != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(Error::Invalid(format!(
                "{}: the bundle-signing key must be ECDSA P-256",
                path.display()
            )));
        }
        Ok(key)
    }

    /// The signing key's fingerprint, as `vendor-key.txt` holds it.
    pub fn fingerprint(&self) -> Result<String> {
        let path = self.fingerprint_path();
        let text = String::from_utf8(files::read(&path)?).map_err(|_| Error::State {
            path: path.clone(),
            detail: "not UTF-8 text".into(),
        })?;
        let line = text.lines().next().unwrap_or("").trim();
        if !line.starts_with("SHA256:") {
            return Err(Error::State {
                path,
                detail: "expected one line SHA256:… (the signing key's fingerprint)".into(),
            });
        }
        Ok(line.to_owned())
    }
}

/// The passphrase, if any, for a function that asks for one only when a key is encrypted.
pub fn give<'a>(
    passphrase: Option<&'a Passphrase>,
    key: &'a Path,
) -> impl FnOnce() -> cert_tool::Result<Passphrase> + 'a {
    move || {
        passphrase
            .map(|p| Passphrase::new(p.expose().to_owned()))
            .ok_or_else(|| cert_tool::Error::PassphraseUnavailable { path: key.into() })
    }
}

/// What `vendor init` made.
#[derive(Debug)]
pub struct Initialized {
    pub vendor: Vendor,
    /// The signing key's fingerprint (also in `vendor-key.txt`).
    pub fingerprint: String,
    pub root_serial: String,
    pub root_not_after: time::OffsetDateTime,
}

/// Creates a vendor in `dir`: the root CA (named `name`, valid `days`), the bundle-signing key
/// and its fingerprint, all encrypted with `passphrase` (plain with `None`).
///
/// Everything is made in a temporary directory beside the destination and moved into place at
/// the end, so a failure leaves no half vendor: either `vendor init` can run again, or the vendor
/// is whole.
pub fn init(dir: &Path, name: &str, days: u32, passphrase: Option<&Passphrase>) -> Result<Initialized> {
    if let Some(p) = passphrase {
        p.check_new()?;
    }
    files::create_dir(dir, 0o700)?;
    let _lock = DirLock::acquire(dir)?;
    let vendor = Vendor {
        dir: dir.to_path_buf(),
    };
    for path in [
        vendor.root_dir(),
        vendor.signing_key_path(),
        vendor.fingerprint_path(),
        vendor.clinics_dir(),
    ] {
        if std::fs::symlink_metadata(&path).is_ok() {
            return Err(Error::VendorExists {
                dir: dir.to_path_buf(),
                found: path.display().to_string(),
            });
        }
    }
    let staging = TempDir::new(dir, "vendor-init")?;
    let root = staging.path.join("root");
    let made = cert_tool::ca::init_vendor_root(&root, name, days, KeyAlgorithm::EcdsaP256, passphrase)?;
    let key = KeyAlgorithm::EcdsaP256.generate()?;
    let fingerprint = provisioning_shared::bundle::fingerprint(key.0.public_key_raw());
    let signing = Staged::new(
        &vendor.signing_key_path(),
        keys::seal(&key, passphrase)?.as_bytes(),
        files::SECRET,
    )?;
    let pin = Staged::new(
        &vendor.fingerprint_path(),
        format!("{fingerprint}\n").as_bytes(),
        files::PUBLIC,
    )?;
    // The root first, the fingerprint last: `Vendor::open` wants all three.
    std::fs::rename(&root, vendor.root_dir()).map_err(Error::io("move into place", vendor.root_dir()))?;
    let rest = signing.commit().and_then(|()| pin.commit());
    if let Err(e) = rest {
        let _ = std::fs::remove_file(vendor.signing_key_path());
        let _ = std::fs::rename(vendor.root_dir(), &root);
        return Err(e.into());
    }
    files::sync_dir(dir)?;
    Ok(Initialized {
        vendor,
        fingerprint,
        root_serial: made.serial,
        root_not_after: made.not_after,
    })
}

/// A directory beside its destination for work that is moved into place whole; removed with
/// whatever is left in it when dropped.
#[derive(Debug)]
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    /// `PARENT/.WHAT.RANDOM.tmp`, mode 0700.
    pub fn new(parent: &Path, what: &str) -> Result<TempDir> {
        let path = parent.join(format!(".{what}.{}.tmp", files::temp_nonce()));
        files::create_dir(&path, 0o700)?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vendor_is_made_once_and_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("v");
        let made = init(&dir, "Test Vendor Root", 3650, None).unwrap();
        let vendor = Vendor::open(&dir).unwrap();
        assert_eq!(vendor.fingerprint().unwrap(), made.fingerprint);
        let key = vendor.signing_key(None).unwrap();
        assert_eq!(
            provisioning_shared::bundle::fingerprint(key.0.public_key_raw()),
            made.fingerprint
        );
        assert!(!vendor.encrypted().unwrap());
        let entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != ".lock")
            .collect();
        assert_eq!(entries.len(), 3, "no staging left behind: {entries:?}");

        let before = std::fs::read(vendor.signing_key_path()).unwrap();
        assert!(matches!(
            init(&dir, "Again", 3650, None),
            Err(Error::VendorExists { .. })
        ));
        assert_eq!(std::fs::read(vendor.signing_key_path()).unwrap(), before);
        assert!(matches!(Vendor::open(tmp.path()), Err(Error::NoVendor { .. })));
    }

    #[test]
    fn an_encrypted_vendor_needs_its_passphrase() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("v");
        assert!(init(&dir, "Root", 3650, Some(&Passphrase::new("short".into()))).is_err());
        let pass = Passphrase::new("a good passphrase".into());
        init(&dir, "Root", 3650, Some(&pass)).unwrap();
        let vendor = Vendor::open(&dir).unwrap();
        assert!(vendor.encrypted().unwrap());
        assert!(matches!(
            vendor.signing_key(None),
            Err(Error::Pki(cert_tool::Error::PassphraseUnavailable { .. }))
        ));
        assert!(matches!(
            vendor.signing_key(Some(&Passphrase::new("wrong passphrase".into()))),
            Err(Error::Pki(cert_tool::Error::WrongPassphrase { .. }))
        ));
        vendor.signing_key(Some(&pass)).unwrap();
    }
}
