//! `provision bundle build`: a clinic's state, certificates and a fresh CRL as one bundle, signed
//! by the vendor and encrypted to the clinic's appliance ([`provisioning_shared::bundle`]).

use std::path::Path;

use cert_tool::ca::{self, Ca};
use cert_tool::files;
use cert_tool::keys::Passphrase;
use provisioning_shared::bundle::{self, Certificates, Engine, Payload};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::clinic::{self, Locked};
use crate::error::{Error, Result};
use crate::vendor::{Vendor, give};

/// Days until the clinic CRL in a bundle is due for renewal: the appliance warns (and keeps
/// enforcing it) after that, so a clinic should get a bundle at least this often.
pub const DEFAULT_CRL_DAYS: u32 = 30;

/// What `bundle build` made.
#[derive(Debug)]
pub struct Built {
    pub version: u64,
    pub bytes: usize,
    pub terminals: usize,
    pub users: usize,
    pub tokens: usize,
    pub revoked: usize,
    pub crl_number: u64,
    pub vendor_key: String,
}

/// Builds clinic `id`'s next bundle and writes it to `out` (mode 0600, atomically). The version
/// counter in `clinic.json` moves on only once the file is written. `passphrase` unlocks the
/// clinic CA (for the CRL) and the signing key.
pub fn build(
    vendor: &Vendor,
    id: &str,
    out: &Path,
    crl_days: u32,
    passphrase: impl FnOnce() -> Result<Option<Passphrase>>,
) -> Result<Built> {
    let mut open = Locked::open(vendor, id)?;
    let layout = open.layout.clone();
    let missing = clinic::missing(&layout, &open.clinic);
    if !missing.is_empty() {
        return Err(Error::NotReady {
            clinic: id.to_owned(),
            missing: missing.join("; and "),
        });
    }
    let state = &open.clinic;
    let credential = state.engine_credential.clone().ok_or_else(|| Error::NotReady {
        clinic: id.to_owned(),
        missing: "the engine credential".into(),
    })?;
    let read = |path: &Path| -> Result<String> {
        String::from_utf8(files::read(path)?)
            .map_err(|_| cert_tool::Error::malformed(path, "PEM file", "it is not UTF-8 text").into())
    };
    check_server(&layout.server(), &state.settings.engine_host)?;
    let vendor_key = vendor.fingerprint()?;
    let passphrase = passphrase()?;
    let passphrase = passphrase.as_ref();
    let signing_key = vendor.signing_key(passphrase)?;
    if bundle::fingerprint(signing_key.0.public_key_raw()) != vendor_key {
        return Err(Error::State {
            path: vendor.fingerprint_path(),
            detail: format!(
                "it names {vendor_key}, but {} is another key: appliances pin the one in vendor-key.txt",
                vendor.signing_key_path().display()
            ),
        });
    }
    let mut clinic_ca = Ca::open(&layout.ca_dir())?;
    let signer = clinic_ca.unlock(give(passphrase, &clinic_ca.layout().key()))?;
    let crl = clinic_ca.crl(&signer, crl_days)?;
    drop(clinic_ca);

    let now = ca::now();
    let version = state.bundle_version + 1;
    let payload = Payload {
        format: bundle::FORMAT,
        clinic: state.id.clone(),
        clinic_name: state.name.clone(),
        version,
        created: ca::rfc3339(now),
        appliance: state.appliance.clone(),
        vendor_key: vendor_key.clone(),
        certificates: Certificates {
            vendor_root: read(&ca::Layout::new(&vendor.root_dir()).cert())?,
            clinic_ca: read(&layout.ca_cert())?,
            clinic_crl: crl.pem(),
            issuing_ca: read(&layout.issuing_ca())?,
            server: read(&layout.server())?,
            uplink: Some(read(&layout.uplink())?),
        },
        settings: state.settings.clone(),
        engine: Engine {
            url: state.engine_url.clone(),
            ca: read(&layout.engine_ca())?,
            user: credential.user,
            password: credential.password,
        },
        terminals: state
            .terminals
            .iter()
            .map(|t| bundle::DeclaredTerminal {
                name: t.name.clone(),
                note: t.note.clone(),
                enabled: t.enabled,
                wireguard: t.wireguard.clone(),
                scopes: t.scopes,
            })
            .collect(),
        // A token past its expiry enrolls nobody: it is left out.
        tokens: state
            .tokens
            .iter()
            .filter(|t| {
                time::OffsetDateTime::parse(&t.expires, &time::format_description::well_known::Rfc3339)
                    .is_ok_and(|e| e > now)
            })
            .cloned()
            .collect(),
        users: state.users.clone(),
        revoked: state.revoked.iter().map(|r| r.name.clone()).collect(),
    };
    let sealed = bundle::seal(&payload, &signing_key)?;
    files::write_atomic(out, &sealed, files::SECRET)?;
    let mut next = state.clone();
    next.bundle_version = version;
    open.commit(next, Vec::new())?;
    Ok(Built {
        version,
        bytes: sealed.len(),
        terminals: payload.terminals.len(),
        users: payload.users.len(),
        tokens: payload.tokens.len(),
        revoked: payload.revoked.len(),
        crl_number: crl.number,
        vendor_key,
    })
}

/// Refuses a server certificate that does not name the engine host (a `clinic set
/// --engine-host` interrupted between its files), or that has expired.
fn check_server(path: &Path, engine_host: &str) -> Result<()> {
    let der = cert_tool::decode::certificate(path)?;
    let summary = cert_tool::inspect::cert(path, &der)?;
    let names_host = summary
        .subject_alt_names
        .iter()
        .any(|n| n.split_once(':').is_some_and(|(_, h)| h == engine_host));
    if !names_host {
        return Err(Error::State {
            path: path.to_path_buf(),
            detail: format!(
                "the server certificate names {} but the engine host is {engine_host}: sign it anew \
                 with `kakehashi provision clinic set --clinic ID --engine-host {engine_host}`",
                summary.subject_alt_names.join(", ")
            ),
        });
    }
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| cert_tool::Error::malformed(path, "certificate", e))?;
    if cert.validity().not_after.to_datetime() <= ca::now() {
        return Err(Error::State {
            path: path.to_path_buf(),
            detail: format!(
                "the server certificate expired on {}: sign it anew with `kakehashi provision clinic \
                 set --clinic ID --days N`",
                summary.not_after
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::Fixture;

    #[test]
    fn a_bundle_needs_the_uplink_the_engine_ca_and_the_credential() {
        let f = Fixture::new();
        let out = f.tmp.path().join("b.age");
        let before = f.state();
        let err = build(&f.vendor, "c1", &out, DEFAULT_CRL_DAYS, || Ok(None))
            .unwrap_err()
            .to_string();
        for want in [
            "uplink certificate", "--uplink-cert", "engine's CA", "--engine-ca", "--engine-user",
        ] {
            assert!(err.contains(want), "{want}: {err}");
        }
        assert!(!out.exists());
        assert_eq!(f.state(), before);

        f.complete();
        let built = build(&f.vendor, "c1", &out, DEFAULT_CRL_DAYS, || Ok(None)).unwrap();
        assert_eq!(built.version, 1);
        let opened = bundle::open(
            &std::fs::read(&out).unwrap(),
            &f.appliance,
            Some(&built.vendor_key),
        )
        .unwrap();
        assert_eq!(opened.payload.version, 1);
        assert_eq!(opened.payload.clinic, "c1");
        assert_eq!(opened.payload.engine.user, "ormaster");
        assert!(opened.payload.certificates.uplink.is_some());
        assert_eq!(f.clinic().bundle_version, 1);
        let again = build(&f.vendor, "c1", &out, DEFAULT_CRL_DAYS, || Ok(None)).unwrap();
        assert_eq!(again.version, 2);
        assert!(again.crl_number > built.crl_number);

        // A file that cannot be written leaves the version where it was.
        let before = f.state();
        assert!(
            build(
                &f.vendor,
                "c1",
                &f.tmp.path().join("no/such/dir/b.age"),
                30,
                || Ok(None)
            )
            .is_err()
        );
        assert_eq!(f.state(), before);
    }
}
