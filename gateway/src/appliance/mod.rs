//! The appliance's side of the vendor workflow: `gateway init` and `gateway import-bundle`.
//!
//! One data directory holds everything (DESIGN.md, "State on the appliance"). `init` fills it
//! with keys made here and a request for the vendor; `import-bundle` adds what the vendor sends
//! back and writes `gateway.toml`, so that `gateway run --config DIR/gateway.toml` serves the
//! clinic. [`Layout`] names every file; docs/provisioning.md's table says the same.

pub mod import;
pub mod init;

use std::path::{Path, PathBuf};

/// The paths of an appliance's data directory.
#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        Layout { dir: dir.to_owned() }
    }
    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
    /// The device identity (age X25519), 0600: bundles are encrypted to it.
    pub fn device_key(&self) -> PathBuf {
        self.file("device.key")
    }
    /// The request for the vendor (public); its presence marks an initialized appliance.
    pub fn request(&self) -> PathBuf {
        self.file("request.json")
    }
    /// The pinned vendor signing key's fingerprint.
    pub fn vendor_pin(&self) -> PathBuf {
        self.file("vendor.pin")
    }
    /// The clinic's issuing CA (key encrypted at rest; certificate from the first bundle).
    pub fn issuing_ca(&self) -> PathBuf {
        self.file("issuing-ca")
    }
    /// The issuing CA key's passphrase, 0600.
    pub fn issuing_passphrase(&self) -> PathBuf {
        self.file("issuing-ca.passphrase")
    }
    pub fn server_key(&self) -> PathBuf {
        self.file("server.key")
    }
    pub fn uplink_key(&self) -> PathBuf {
        self.file("uplink.key")
    }
    pub fn wireguard_key(&self) -> PathBuf {
        self.file(crate::config::GATEWAY_KEY_FILE)
    }
    pub fn config(&self) -> PathBuf {
        self.file("gateway.toml")
    }
    /// The server certificate and the clinic CA after it.
    pub fn server_cert(&self) -> PathBuf {
        self.file("server.pem")
    }
    /// The terminals' trust anchors: the clinic CA and the issuing CA.
    pub fn client_ca(&self) -> PathBuf {
        self.file("client-ca.pem")
    }
    /// Both issuers' CRLs (see [`cert_tool::ca::publish_crl`]).
    pub fn crl(&self) -> PathBuf {
        self.file("crl.pem")
    }
    pub fn uplink_cert(&self) -> PathBuf {
        self.file("uplink.pem")
    }
    pub fn engine_ca(&self) -> PathBuf {
        self.file("engine-ca.pem")
    }
    pub fn upstream_password(&self) -> PathBuf {
        self.file("upstream.password")
    }
    pub fn vendor_root(&self) -> PathBuf {
        self.file("vendor-root.pem")
    }
    /// The installed bundle's clinic, version and vendor key: written last by an import, and
    /// watched by a running gateway, which reloads when it changes.
    pub fn installed(&self) -> PathBuf {
        self.file(INSTALLED)
    }
}

/// The file name of [`Layout::installed`], which the running gateway watches.
pub const INSTALLED: &str = "bundle.json";

/// Why `gateway init` or `gateway import-bundle` refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Bundle(#[from] provisioning_shared::bundle::BundleError),
    #[error(transparent)]
    Ca(#[from] cert_tool::Error),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Gives everything in the data directory the directory's owner. `gateway init` and
/// `import-bundle` run as root on the appliance, while the gateway runs as its own user
/// (`kakehashi`, which systemd's `StateDirectory=` makes the owner of `/var/lib/kakehashi`):
/// without this, the databases, lock files and CA files root created would lock the gateway out
/// of its own state. Only root can change owners; for anyone else there is nothing to do.
pub fn match_owner(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(owner) = std::fs::metadata(dir) else { return };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path.clone());
            }
            if (meta.uid(), meta.gid()) != (owner.uid(), owner.gid()) {
                let _ = std::os::unix::fs::lchown(&path, Some(owner.uid()), Some(owner.gid()));
            }
        }
    }
}
