//! What the unit tests of several modules share: a vendor with two clinics made the way
//! `kakehashi provision clinic add` makes them.

use std::path::{Path, PathBuf};

use cert_tool::keys::KeyAlgorithm;

use crate::clinic::{Clinic, Layout, load};
use crate::setup::{self, Change, NewClinic, SettingsArgs};
use crate::vendor::Vendor;

/// A vendor without a passphrase and two clinics: `c1` (WireGuard on, endpoint
/// clinic.example:51820) and `c2` (no WireGuard), each from a request of a fresh appliance.
pub(crate) struct Fixture {
    pub tmp: tempfile::TempDir,
    pub vendor: Vendor,
    /// `c1`'s appliance identity: opens `c1`'s bundles.
    pub appliance: age::x25519::Identity,
    /// `c1`'s uplink key, to sign certificates for it.
    pub uplink_key: cert_tool::keys::SecretKey,
}

/// An appliance's request, as `gateway init` would write it, in `path`.
pub(crate) fn request(path: &Path) -> (age::x25519::Identity, cert_tool::keys::SecretKey) {
    let identity = age::x25519::Identity::generate();
    let csr = |name: &str| {
        let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
        (cert_tool::csr::create(name, &key).unwrap(), key)
    };
    let (uplink_csr, uplink_key) = csr("uplink");
    let request = provisioning_shared::request::Request {
        kind: provisioning_shared::request::KIND.into(),
        format: provisioning_shared::request::FORMAT,
        created: "2026-11-22T00:00:00Z".into(),
        appliance: identity.to_public().to_string(),
        issuing_ca_csr: csr("issuing").0,
        server_csr: csr("server").0,
        uplink_csr,
        wireguard_public_key: provisioning_shared::wireguard::Secret::generate()
            .unwrap()
            .public_key()
            .to_base64(),
        vendor_key: None,
    };
    std::fs::write(path, request.to_json()).unwrap();
    (identity, uplink_key)
}

impl Fixture {
    pub fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let made = crate::vendor::init(&tmp.path().join("v"), "Test Root", 3650, None).unwrap();
        let (appliance, uplink_key) = request(&tmp.path().join("r1.json"));
        request(&tmp.path().join("r2.json"));
        let f = Fixture {
            vendor: made.vendor,
            appliance,
            uplink_key,
            tmp,
        };
        let wg = SettingsArgs {
            wg_endpoint: Some("clinic.example:51820".into()),
            ..Default::default()
        };
        for (id, settings) in [("c1", &wg), ("c2", &SettingsArgs::default())] {
            setup::add(
                &f.vendor,
                &NewClinic {
                    id,
                    name: "Sakura Clinic",
                    request: &f.path(&format!("r{}.json", &id[1..])),
                    engine_host: "orca.example.jp",
                    settings,
                },
                || Ok(None),
            )
            .unwrap();
        }
        f
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn layout(&self) -> Layout {
        Layout::of(&self.vendor, "c1")
    }

    /// `c1`'s clinic.json, as text.
    pub fn state(&self) -> String {
        std::fs::read_to_string(self.layout().state()).unwrap()
    }

    pub fn clinic(&self) -> Clinic {
        load(&self.layout()).unwrap()
    }

    /// A certificate for `c1`'s uplink key from a "cloud operator" CA, with `profile`.
    pub fn uplink_cert(&self, profile: cert_tool::profile::Profile, name: &str) -> PathBuf {
        let dir = self.path("operator");
        if !dir.join("ca.pem").exists() {
            cert_tool::ca::init(&dir, "Cloud Operator CA", 3650, KeyAlgorithm::EcdsaP256, None).unwrap();
        }
        let mut ca = cert_tool::ca::Ca::open(&dir).unwrap();
        let signer = ca.unlock(|| unreachable!()).unwrap();
        let req = cert_tool::ca::Request {
            profile,
            name: name.into(),
            sans: vec!["dns:gw.example".parse().unwrap()],
            days: 365,
            replace: true,
            key: "ecdsa-p256".into(),
        };
        let pending = ca.sign(&signer, &req, &self.uplink_key).unwrap();
        let path = self.path(&format!("{name}.pem"));
        std::fs::write(&path, pending.pem()).unwrap();
        ca.commit(pending).unwrap();
        path
    }

    /// Gives `c1` what a bundle needs: the uplink certificate, the engine CA, the credential.
    pub fn complete(&self) {
        let uplink = self.uplink_cert(cert_tool::profile::Profile::Uplink, "uplink-ok");
        let pass = self.path("engine-pass");
        std::fs::write(&pass, "engine secret\n").unwrap();
        let settings = SettingsArgs {
            engine_ca: Some(self.path("operator/ca.pem")),
            engine_user: Some("ormaster".into()),
            engine_password_file: Some(pass),
            ..Default::default()
        };
        setup::set(
            &self.vendor,
            "c1",
            &Change {
                name: None,
                engine_host: None,
                settings: &settings,
                uplink_cert: Some(&uplink),
            },
            || Ok(None),
        )
        .unwrap();
    }
}
