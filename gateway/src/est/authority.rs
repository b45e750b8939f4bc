//! The clinic CA as the appliance uses it: issuing terminal certificates from CSRs, revoking,
//! and writing the CRL the terminal listeners enforce.
//!
//! The CA directory is opened (and locked) for each operation, never held: `kakehashi cert` on
//! the same directory keeps working while the gateway runs, and the two take turns.

use std::path::PathBuf;

use cert_tool::ca::{Ca, Request, Target};
use cert_tool::csr::Csr;
use cert_tool::index::{Entry, Reason};
use cert_tool::keys::Passphrase;
use cert_tool::profile::Profile;
use cert_tool::{Error, Result, files};

use crate::config::Config;

/// Where the CA is, how to unlock it, and what it writes.
#[derive(Clone, Debug)]
pub struct Authority {
    pub ca_dir: PathBuf,
    passphrase_file: Option<PathBuf>,
    days: u32,
    crl_days: u32,
    /// `tls.crl`: the CRL the terminal listeners load.
    pub crl: PathBuf,
}

/// A certificate just issued.
#[derive(Debug)]
pub struct Issued {
    pub der: Vec<u8>,
    pub entry: Entry,
    /// Certificates of the same name revoked as superseded (a renewal).
    pub superseded: usize,
}

impl Authority {
    /// The authority of a configuration with an `[est]` section (and so a `tls.crl`).
    pub fn from_config(config: &Config) -> Option<Authority> {
        let est = config.est.as_ref()?;
        Some(Authority {
            ca_dir: est.ca_dir.clone(),
            passphrase_file: est.passphrase_file.clone(),
            days: est.days,
            crl_days: est.crl_days,
            crl: config.tls.crl.clone()?,
        })
    }

    /// Opens the CA and decrypts its key: run at start, so a wrong passphrase stops the gateway
    /// there and then rather than at the first enrollment.
    pub fn check(&self) -> Result<Vec<u8>> {
        let ca = Ca::open(&self.ca_dir)?;
        ca.unlock(|| self.passphrase())?;
        Ok(ca.cert_der().to_vec())
    }

    /// The CA certificate, DER (for `cacerts`).
    pub fn ca_cert(&self) -> Result<Vec<u8>> {
        let path = self.ca_dir.join("ca.pem");
        cert_tool::decode::pem_or_der(&path, &files::read(&path)?, "CERTIFICATE")
    }

    fn passphrase(&self) -> Result<Passphrase> {
        match &self.passphrase_file {
            Some(p) => Passphrase::from_file(p),
            None => Err(Error::PassphraseUnavailable {
                path: self.ca_dir.join("ca.key"),
            }),
        }
    }

    /// Issues a terminal certificate for `name` with the CSR's key. `renew`: the name's current
    /// certificates are revoked as superseded, and a new CRL is written so that the listeners and
    /// the CA agree; otherwise a name with a valid certificate is refused.
    pub fn issue(&self, name: &str, csr: &Csr, renew: bool) -> Result<Issued> {
        let mut ca = Ca::open(&self.ca_dir)?;
        let req = Request {
            profile: Profile::Terminal,
            name: name.to_owned(),
            sans: Vec::new(),
            days: self.days,
            replace: renew,
            key: csr.key.clone(),
        };
        ca.check(&req)?;
        let signer = ca.unlock(|| self.passphrase())?;
        let pending = ca.sign(&signer, &req, &csr.public_key)?;
        let der = pending.der.clone();
        let before = revoked_count(&ca);
        let entry = ca.commit(pending)?;
        let superseded = revoked_count(&ca) - before;
        if superseded > 0 {
            self.publish(&mut ca, &signer)?;
        }
        Ok(Issued {
            der,
            entry,
            superseded,
        })
    }

    /// Revokes every valid certificate of `name` and writes the new CRL.
    pub fn revoke(&self, name: &str, reason: Reason) -> Result<Vec<Entry>> {
        let mut ca = Ca::open(&self.ca_dir)?;
        let signer = ca.unlock(|| self.passphrase())?;
        let revoked = ca.revoke(&Target::Name(name.to_owned()), reason)?;
        self.publish(&mut ca, &signer)?;
        Ok(revoked)
    }

    /// Revokes one serial (an enrollment whose registration failed afterwards) and writes the CRL.
    pub fn undo(&self, serial: &str) -> Result<()> {
        let mut ca = Ca::open(&self.ca_dir)?;
        let signer = ca.unlock(|| self.passphrase())?;
        ca.revoke(&Target::Serial(serial.to_owned()), Reason::CessationOfOperation)?;
        self.publish(&mut ca, &signer)
    }

    fn publish(&self, ca: &mut Ca, signer: &cert_tool::ca::Signer) -> Result<()> {
        let crl = ca.crl(signer, self.crl_days)?;
        cert_tool::ca::publish_crl(&self.crl, &crl.pem())
    }
}

fn revoked_count(ca: &Ca) -> usize {
    ca.index.entries.iter().filter(|e| e.revoked.is_some()).count()
}
