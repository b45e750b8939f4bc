//! A clinic CA: its directory, and the operations that change it.
//!
//! ```text
//! DIR/ca.pem              the CA certificate (public)
//! DIR/ca.key              its private key, encrypted PKCS#8, mode 0600
//! DIR/index.json          every certificate issued, and the last CRL number
//! DIR/issued/SERIAL.pem   a copy of each issued certificate
//! DIR/.lock               taken by every command that changes the directory
//! ```
//!
//! Every change is staged beside its destination and committed with `index.json` as the commit
//! point, under the directory lock. The private keys of issued certificates are never stored here.

use std::path::{Path, PathBuf};

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, PublicKeyData, RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};

use crate::error::{Error, Result};
use crate::files::{self, DirLock, Staged};
use crate::index::{Entry, Index, Reason, Revocation, Status, normalize_serial};
use crate::keys::{self, KeyAlgorithm, Passphrase, SecretKey};
use crate::profile::{self, Profile, San};

/// How far back a new certificate's validity starts, so that a terminal whose clock runs a little
/// behind the vendor's laptop still accepts it.
const BACKDATE: Duration = Duration::minutes(5);

/// The paths of a CA directory.
#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        Layout {
            dir: dir.to_path_buf(),
        }
    }
    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// The CA's own CSR, for a CA that another CA signs ([`init_pending`]).
    pub fn csr(&self) -> PathBuf {
        self.dir.join("ca.csr")
    }
    pub fn index(&self) -> PathBuf {
        self.dir.join("index.json")
    }
    /// A copy of every issued certificate, named by serial, as OpenSSL's `newcerts`.
    pub fn issued(&self, serial: &str) -> PathBuf {
        self.dir.join("issued").join(format!("{serial}.pem"))
    }
}

/// What `init` made.
#[derive(Debug)]
pub struct Created {
    pub serial: String,
    pub not_after: OffsetDateTime,
    pub encrypted: bool,
}

/// Creates a CA in `dir`: key, self-signed certificate and an empty index.
///
/// `passphrase: None` leaves the key unencrypted; the command line only allows that when asked
/// for explicitly.
pub fn init(
    dir: &Path,
    name: &str,
    days: u32,
    algorithm: KeyAlgorithm,
    passphrase: Option<&Passphrase>,
) -> Result<Created> {
    create(dir, name, days, algorithm, passphrase, 0)
}

/// Creates a vendor root in `dir`: as [`init`], but with path length 1, so that it signs clinic
/// and issuing CAs ([`Profile::ClinicCa`], [`Profile::IssuingCa`]) and they sign leaves only.
pub fn init_vendor_root(
    dir: &Path,
    name: &str,
    days: u32,
    algorithm: KeyAlgorithm,
    passphrase: Option<&Passphrase>,
) -> Result<Created> {
    create(dir, name, days, algorithm, passphrase, 1)
}

fn create(
    dir: &Path,
    name: &str,
    days: u32,
    algorithm: KeyAlgorithm,
    passphrase: Option<&Passphrase>,
    path_len: u8,
) -> Result<Created> {
    if name.trim().is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(Error::Refused(format!(
            "{name:?}: a CA name must have 1 to 64 printable characters"
        )));
    }
    let (layout, _lock) = new_dir(dir, passphrase)?;
    let now = now();
    let not_after = now + Duration::days(days_checked(days)?.into());
    let key = algorithm.generate()?;
    let serial = random_serial()?;
    let serial_hex = hex::encode_upper(serial.to_bytes());
    let params = profile::ca_params(name, serial, now - BACKDATE, not_after, path_len);
    let cert = params
        .self_signed(&key)
        .map_err(Error::crypto("signing the CA certificate"))?;

    // ca.pem last: its presence is what makes the directory a CA.
    let staged = [
        Staged::new(
            &layout.key(),
            keys::seal(&key, passphrase)?.as_bytes(),
            files::SECRET,
        )?,
        Index::new().stage(&layout.index())?,
        Staged::new(&layout.cert(), cert.pem().as_bytes(), files::PUBLIC)?,
    ];
    let mut committed = Vec::new();
    for s in staged {
        let dest = s.dest().to_path_buf();
        if let Err(e) = s.commit() {
            // Half a CA is worse than none: take back what was already renamed into place.
            for path in committed {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
        committed.push(dest);
    }
    Ok(Created {
        serial: serial_hex,
        not_after,
        encrypted: passphrase.is_some(),
    })
}

/// Checks a new CA's passphrase, then creates and locks its directory, refusing one that holds a
/// CA (or part of one) already.
fn new_dir(dir: &Path, passphrase: Option<&Passphrase>) -> Result<(Layout, DirLock)> {
    if let Some(p) = passphrase {
        p.check_new()?;
    }
    let layout = Layout::new(dir);
    files::create_dir(dir, 0o700)?;
    let lock = DirLock::acquire(dir)?;
    if layout.cert().exists() || layout.key().exists() || layout.index().exists() {
        return Err(Error::CaExists { dir: dir.into() });
    }
    Ok((layout, lock))
}

/// Starts a CA whose certificate another CA signs (an appliance's issuing CA, signed by the
/// vendor root): writes its key and an empty index, and returns a CSR (PEM) for its certificate,
/// also kept as `ca.csr`. The directory is no CA until [`install`] puts the certificate in place.
pub fn init_pending(
    dir: &Path,
    name: &str,
    algorithm: KeyAlgorithm,
    passphrase: Option<&Passphrase>,
) -> Result<String> {
    profile::check_name(name)?;
    let (layout, _lock) = new_dir(dir, passphrase)?;
    let key = algorithm.generate()?;
    let csr = crate::csr::create(name, &key)?;
    // The key last: it is what makes the directory a pending CA.
    let staged = [
        Index::new().stage(&layout.index())?,
        Staged::new(&layout.csr(), csr.as_bytes(), files::PUBLIC)?,
        Staged::new(
            &layout.key(),
            keys::seal(&key, passphrase)?.as_bytes(),
            files::SECRET,
        )?,
    ];
    for s in staged {
        s.commit()?;
    }
    Ok(csr)
}

/// Puts the signed certificate of a CA started with [`init_pending`] in place, after checking
/// that it is a CA certificate for that CA's key (its public key is the CSR's). A certificate
/// already there is replaced only by one for the same key (a renewal).
pub fn install(dir: &Path, cert_pem: &str) -> Result<()> {
    let _lock = DirLock::acquire(dir)?;
    check_install(dir, cert_pem)?;
    files::write_atomic(&Layout::new(dir).cert(), cert_pem.as_bytes(), files::PUBLIC)
}

/// What [`install`] checks, without writing: that `cert_pem` is a CA certificate for the key of
/// the CA started in `dir` (its public key is `ca.csr`'s). For checking a whole bundle before
/// any of it is applied.
pub fn check_install(dir: &Path, cert_pem: &str) -> Result<()> {
    let layout = Layout::new(dir);
    let origin = layout.cert();
    let der = crate::decode::pem_or_der(&origin, cert_pem.as_bytes(), "CERTIFICATE")?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| Error::malformed(&origin, "CA certificate", e))?;
    if !cert.is_ca() {
        return Err(Error::malformed(
            &origin,
            "CA certificate",
            "it is not a CA (no CA:TRUE)",
        ));
    }
    let csr = crate::csr::Csr::read(&layout.csr())?;
    if cert.public_key().subject_public_key.data.as_ref() != rcgen::PublicKeyData::der_bytes(&csr.public_key)
    {
        return Err(Error::KeyMismatch {
            key: layout.key(),
            cert: origin,
        });
    }
    Ok(())
}

/// Writes `crl` (PEM) into the CRL file at `path` in place of any CRL of the same issuer, keeping
/// the other issuers' CRLs there: one file serves a listener that trusts several CAs (a clinic's
/// CA held by its vendor and the issuing CA on its appliance), and each publisher updates only
/// its own part. Updates take turns through `PATH.lock`; the file is replaced atomically.
pub fn publish_crl(path: &Path, crl: &str) -> Result<()> {
    let issuer_of = |origin: &Path, der: &[u8]| -> Result<Vec<u8>> {
        let (_, parsed) = x509_parser::parse_x509_crl(der).map_err(|e| Error::malformed(origin, "CRL", e))?;
        Ok(parsed.issuer().as_raw().to_vec())
    };
    let new: Vec<pem::Pem> = pem::parse_many(crl).map_err(|e| Error::malformed(path, "new CRL", e))?;
    let [new] = new.as_slice() else {
        return Err(Error::malformed(path, "new CRL", "expected exactly one CRL"));
    };
    let issuer = issuer_of(path, new.contents())?;
    let lock = path.with_file_name(format!(
        "{}.lock",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
    ));
    let _lock = DirLock::file(&lock)?;
    let mut out = String::new();
    if path.exists() {
        let text = files::read(path)?;
        for old in pem::parse_many(&text).map_err(|e| Error::malformed(path, "CRL file", e))? {
            if old.tag() == "X509 CRL" && issuer_of(path, old.contents())? != issuer {
                out.push_str(&pem::encode(&old));
            }
        }
    }
    out.push_str(&pem::encode(new));
    files::write_atomic(path, out.as_bytes(), files::PUBLIC)
}

/// A CA directory opened for work: locked, its certificate and index loaded.
#[derive(Debug)]
pub struct Ca {
    layout: Layout,
    _lock: DirLock,
    cert_der: Vec<u8>,
    not_after: OffsetDateTime,
    /// The CA certificate's subject key identifier, repeated as the AKI of every CRL.
    key_id: KeyIdMethod,
    pub index: Index,
}

/// The CA's private key, ready to sign. Only commands that sign ask for the passphrase.
pub struct Signer {
    issuer: Issuer<'static, SecretKey>,
}

/// A certificate request, however its public key arrived (generated here or from a CSR).
#[derive(Clone, Debug)]
pub struct Request {
    pub profile: Profile,
    pub name: String,
    pub sans: Vec<San>,
    pub days: u32,
    /// Revoke the name's current certificate (reason `superseded`) instead of refusing.
    pub replace: bool,
    /// The subject key's algorithm, for the index (see [`crate::decode::describe_key`]).
    pub key: String,
}

/// A signed certificate that the CA has not recorded yet. [`Ca::commit`] records it.
#[derive(Debug)]
pub struct Pending {
    pub der: Vec<u8>,
    pub entry: Entry,
    supersedes: Vec<usize>,
}

impl Pending {
    /// The certificate in PEM.
    pub fn pem(&self) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE", self.der.clone()))
    }
}

/// Which certificates `revoke` means.
#[derive(Clone, Debug)]
pub enum Target {
    Serial(String),
    Name(String),
}

impl Ca {
    /// Locks `dir` and loads the CA certificate and the index.
    pub fn open(dir: &Path) -> Result<Ca> {
        let layout = Layout::new(dir);
        if !layout.cert().exists() {
            return Err(Error::NoCa { dir: dir.into() });
        }
        let lock = DirLock::acquire(dir)?;
        let cert_path = layout.cert();
        let cert_der = crate::decode::pem_or_der(&cert_path, &files::read(&cert_path)?, "CERTIFICATE")?;
        let (_, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|e| Error::malformed(&cert_path, "CA certificate", e))?;
        if !cert.is_ca() {
            return Err(Error::malformed(
                &cert_path,
                "CA certificate",
                "it is not a CA (no CA:TRUE)",
            ));
        }
        let not_after = cert.validity().not_after.to_datetime();
        let key_id = cert
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(KeyIdMethod::PreSpecified(id.0.to_vec())),
                _ => None,
            })
            .unwrap_or(KeyIdMethod::Sha256);
        let index = Index::load(&layout.index())?;
        Ok(Ca {
            layout,
            _lock: lock,
            cert_der,
            not_after,
            key_id,
            index,
        })
    }

    /// The directory's paths.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// When the CA's own certificate expires: nothing it signs may outlive it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Decrypts the CA key; `passphrase` is asked only if the key is encrypted.
    pub fn unlock(&self, passphrase: impl FnOnce() -> Result<Passphrase>) -> Result<Signer> {
        let key_path = self.layout.key();
        let text = zeroize::Zeroizing::new(files::read(&key_path)?);
        let key = keys::open(&key_path, &text, passphrase)?;
        let (_, cert) = X509Certificate::from_der(&self.cert_der)
            .map_err(|e| Error::malformed(self.layout.cert(), "CA certificate", e))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.0.public_key_raw() {
            return Err(Error::KeyMismatch {
                key: key_path,
                cert: self.layout.cert(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&self.cert_der.as_slice().into(), key)
            .map_err(Error::crypto("reading the CA certificate"))?;
        Ok(Signer { issuer })
    }

    /// Refuses a request that cannot be issued, before any key is generated or passphrase asked.
    pub fn check(&self, req: &Request) -> Result<()> {
        profile::check_name(&req.name)?;
        let now = now();
        if !req.replace
            && let Some(&i) = self.index.valid_named(&req.name, now).first()
        {
            let e = &self.index.entries[i];
            return Err(Error::NameInUse {
                name: e.name.clone(),
                serial: e.serial.clone(),
                not_after: rfc3339(e.not_after),
            });
        }
        let not_after = now + Duration::days(days_checked(req.days)?.into());
        if not_after > self.not_after {
            return Err(Error::Refused(format!(
                "--days {} would outlive the CA, which expires {}",
                req.days,
                rfc3339(self.not_after)
            )));
        }
        Ok(())
    }

    /// Signs a certificate for `subject_key` under the request's profile, without recording it.
    pub fn sign(&self, signer: &Signer, req: &Request, subject_key: &impl PublicKeyData) -> Result<Pending> {
        self.check(req)?;
        let now = now();
        let not_after = now + Duration::days(req.days.into());
        let serial = loop {
            let s = random_serial()?;
            if self.index.by_serial(&hex::encode_upper(s.to_bytes())).is_none() {
                break s;
            }
        };
        let serial_hex = hex::encode_upper(serial.to_bytes());
        let params = profile::issued_params(
            req.profile,
            &req.name,
            &req.sans,
            serial,
            now - BACKDATE,
            not_after,
        )?;
        let cert = params
            .signed_by(subject_key, &signer.issuer)
            .map_err(Error::crypto("signing the certificate"))?;
        let der = cert.der().to_vec();
        let supersedes = if req.replace {
            self.index.valid_named(&req.name, now)
        } else {
            Vec::new()
        };
        Ok(Pending {
            entry: Entry {
                serial: serial_hex,
                name: req.name.clone(),
                profile: req.profile,
                key: req.key.clone(),
                not_before: now - BACKDATE,
                not_after,
                sha256: sha256_hex(&der),
                revoked: None,
            },
            der,
            supersedes,
        })
    }

    /// Records a signed certificate: its copy under `issued/`, then the index (the commit point).
    pub fn commit(&mut self, pending: Pending) -> Result<Entry> {
        let now = now();
        for &i in &pending.supersedes {
            self.index.entries[i].revoked = Some(Revocation {
                at: now,
                reason: Reason::Superseded,
            });
        }
        self.index.entries.push(pending.entry.clone());
        let copy = self.layout.issued(&pending.entry.serial);
        let result = (|| {
            files::create_dir(&self.layout.dir.join("issued"), 0o755)?;
            let copy = Staged::new(&copy, pending.pem().as_bytes(), files::PUBLIC)?;
            let index = self.index.stage(&self.layout.index())?;
            copy.commit()?;
            index.commit()
        })();
        if let Err(e) = result {
            // The index on disk is unchanged; leave no orphan copy and reload what is true.
            let _ = std::fs::remove_file(&copy);
            self.index = Index::load(&self.layout.index())?;
            return Err(e);
        }
        Ok(pending.entry)
    }

    /// Generates a key, signs its certificate and writes both: the certificate to `cert_path`, the
    /// key (plain PKCS#8, mode 0600) to `key_path`.
    ///
    /// The index commits first: if anything fails later the CA still knows the certificate and
    /// can revoke it, which is safer than a valid certificate the CA has no record of.
    pub fn issue_to_files(
        &mut self,
        signer: &Signer,
        req: &Request,
        algorithm: KeyAlgorithm,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Entry> {
        self.check(req)?;
        let subject_key = algorithm.generate()?;
        let pending = self.sign(signer, req, &subject_key)?;
        let outputs = [
            Staged::new(
                key_path,
                keys::seal(&subject_key, None)?.as_bytes(),
                files::SECRET,
            )?,
            Staged::new(cert_path, pending.pem().as_bytes(), files::PUBLIC)?,
        ];
        let entry = self.commit(pending)?;
        for o in outputs {
            o.commit()?;
        }
        Ok(entry)
    }

    /// Revokes the certificate with a serial, or every valid certificate of a name.
    pub fn revoke(&mut self, target: &Target, reason: Reason) -> Result<Vec<Entry>> {
        let now = now();
        let chosen = match target {
            Target::Serial(serial) => {
                let i = self.index.by_serial(serial).ok_or_else(|| Error::UnknownSerial {
                    serial: normalize_serial(serial),
                    index: self.layout.index(),
                })?;
                if let Some(r) = &self.index.entries[i].revoked {
                    return Err(Error::AlreadyRevoked {
                        serial: self.index.entries[i].serial.clone(),
                        at: rfc3339(r.at),
                    });
                }
                vec![i]
            }
            Target::Name(name) => {
                let found = self.index.valid_named(name, now);
                if found.is_empty() {
                    return Err(Error::UnknownName {
                        name: name.clone(),
                        index: self.layout.index(),
                    });
                }
                found
            }
        };
        for &i in &chosen {
            self.index.entries[i].revoked = Some(Revocation { at: now, reason });
        }
        if let Err(e) = self.index.save(&self.layout.index()) {
            self.index = Index::load(&self.layout.index())?;
            return Err(e);
        }
        Ok(chosen.iter().map(|&i| self.index.entries[i].clone()).collect())
    }

    /// Signs a CRL of every revoked certificate not yet expired, with the next CRL number.
    ///
    /// The new number is recorded before the CRL is returned, so that no two different CRLs ever
    /// share a number (a skipped number is harmless; a reused one is not).
    pub fn crl(&mut self, signer: &Signer, next_update_days: u32) -> Result<Crl> {
        let now = now();
        let number = self.index.crl_number + 1;
        let revoked_certs = self
            .index
            .entries
            .iter()
            .filter(|e| e.not_after > now)
            .filter_map(|e| {
                let r = e.revoked.as_ref()?;
                Some(hex::decode(&e.serial).map(|bytes| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: r.at,
                    reason_code: Some(r.reason.to_rcgen()),
                    invalidity_date: None,
                }))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::malformed(self.layout.index(), "certificate index", e))?;
        let count = revoked_certs.len();
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::days(days_checked(next_update_days)?.into()),
            crl_number: SerialNumber::from_slice(&minimal_be(number)),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: self.key_id.clone(),
        };
        let crl = params
            .signed_by(&signer.issuer)
            .map_err(Error::crypto("signing the CRL"))?;
        self.index.crl_number = number;
        if let Err(e) = self.index.save(&self.layout.index()) {
            self.index = Index::load(&self.layout.index())?;
            return Err(e);
        }
        Ok(Crl {
            der: crl.der().to_vec(),
            number,
            revoked: count,
        })
    }

    /// Entries and their status now, for listing.
    pub fn entries(&self) -> impl Iterator<Item = (&Entry, Status)> {
        let now = now();
        self.index.entries.iter().map(move |e| (e, e.status(now)))
    }
}

/// A signed CRL.
#[derive(Debug)]
pub struct Crl {
    pub der: Vec<u8>,
    pub number: u64,
    pub revoked: usize,
}

impl Crl {
    /// The CRL in PEM, as `openssl crl` and `-CRLfile` read it.
    pub fn pem(&self) -> String {
        pem::encode(&pem::Pem::new("X509 CRL", self.der.clone()))
    }
}

/// A random positive serial of 126 bits (RFC 5280 allows 20 octets; CAB forum asks for 64 random
/// bits). The top byte is 0x40..=0x7F, so the DER encoding is always 16 bytes, never negative.
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Error::Crypto {
        what: "random number generator",
        detail: "failed".into(),
    })?;
    bytes[0] = (bytes[0] & 0x3f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// `n` as big-endian bytes without leading zeros (at least one byte).
fn minimal_be(n: u64) -> Vec<u8> {
    let bytes = n.to_be_bytes();
    let skip = bytes.iter().take(7).take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

fn days_checked(days: u32) -> Result<u32> {
    if (1..=36_500).contains(&days) {
        Ok(days)
    } else {
        Err(Error::Refused(format!("{days} days: expected 1 to 36500")))
    }
}

/// SHA-256 of `data` in upper-case hex, as `openssl x509 -fingerprint -sha256` prints it.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode_upper(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data))
}

/// A time as RFC 3339, the form used in every message and listing.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// The current time in whole seconds, the resolution of certificates and CRLs, so that what the
/// index records is exactly what the certificate says.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc().truncate_to_second()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crl_numbers_are_minimal_big_endian() {
        assert_eq!(minimal_be(0), [0]);
        assert_eq!(minimal_be(1), [1]);
        assert_eq!(minimal_be(256), [1, 0]);
    }

    /// Vendor root → issuing CA made on the appliance (key never leaves) → terminal, and the
    /// install refuses a certificate for another key.
    #[test]
    fn a_pending_ca_is_signed_elsewhere_and_then_issues() {
        let tmp = tempfile::tempdir().unwrap();
        let (root_dir, issuing_dir) = (tmp.path().join("root"), tmp.path().join("issuing"));
        init_vendor_root(&root_dir, "Vendor Root", 3650, KeyAlgorithm::EcdsaP256, None).unwrap();
        let csr_pem = init_pending(&issuing_dir, "issuing-c1", KeyAlgorithm::EcdsaP256, None).unwrap();
        assert!(
            Ca::open(&issuing_dir).is_err(),
            "no CA before its certificate is installed"
        );

        let root = Ca::open(&root_dir).unwrap();
        let signer = root.unlock(|| unreachable!()).unwrap();
        let csr = crate::csr::Csr::read(&issuing_dir.join("ca.csr")).unwrap();
        let req = Request {
            profile: Profile::IssuingCa,
            name: "issuing-c1".into(),
            sans: vec![],
            days: 365,
            replace: false,
            key: csr.key.clone(),
        };
        let signed = root.sign(&signer, &req, &csr.public_key).unwrap();
        let other = init_pending(&tmp.path().join("other"), "x", KeyAlgorithm::EcdsaP256, None).unwrap();
        assert_ne!(other, csr_pem);
        assert!(matches!(
            install(&tmp.path().join("other"), &signed.pem()),
            Err(Error::KeyMismatch { .. })
        ));
        install(&issuing_dir, &signed.pem()).unwrap();

        let mut issuing = Ca::open(&issuing_dir).unwrap();
        let signer = issuing.unlock(|| unreachable!()).unwrap();
        let leaf = Request {
            profile: Profile::Terminal,
            name: "t1".into(),
            ..req
        };
        let (cert, key) = (tmp.path().join("t1.pem"), tmp.path().join("t1.key"));
        issuing
            .issue_to_files(&signer, &leaf, KeyAlgorithm::EcdsaP256, &cert, &key)
            .unwrap();
        let verdict = crate::verify::verify(&issuing_dir.join("ca.pem"), None, &cert, now()).unwrap();
        assert!(matches!(verdict, crate::verify::Verdict::Valid(_)), "{verdict:?}");
    }

    #[test]
    fn serials_are_positive_16_bytes() {
        for _ in 0..100 {
            let s = random_serial().unwrap().to_bytes();
            assert_eq!(s.len(), 16);
            assert!((0x40..0x80).contains(&s[0]));
        }
    }
}
