//! `kakehashi cert …`: the PKI on the command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use time::{Duration, OffsetDateTime};

use crate::ca::{self, Ca, Request, Target, rfc3339};
use crate::error::{Error, Result};
use crate::files::{self, Staged};
use crate::index::{Reason, Status};
use crate::keys::{KeyAlgorithm, Passphrase};
use crate::profile::{Profile, San};
use crate::{csr, inspect, p12, verify};

/// The environment variable that may hold the CA passphrase.
pub const PASSPHRASE_ENV: &str = "KAKEHASHI_CA_PASSPHRASE";

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create a clinic CA: certificate, encrypted key and an empty index
    InitCa {
        /// Directory for the CA (created if missing; must not hold a CA already)
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name, e.g. "Sakura Clinic CA"
        #[arg(long)]
        name: String,
        /// Validity in days
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Key algorithm
        #[arg(long, value_enum, default_value = "ecdsa-p256")]
        key: KeyAlgorithm,
        #[command(flatten)]
        passphrase: PassphraseArgs,
        /// Store the CA key unencrypted (mode 0600). Only for test and demo CAs
        #[arg(long, conflicts_with = "passphrase_file")]
        no_passphrase: bool,
    },
    /// Issue a key and certificate under a profile
    Issue {
        /// The CA directory (made by `cert init-ca`)
        #[arg(long)]
        dir: PathBuf,
        /// terminal and uplink: clientAuth only; server: serverAuth, needs a --san
        #[arg(long, value_enum)]
        profile: Profile,
        /// Common name; also names the output files NAME.pem and NAME.key
        #[arg(long)]
        name: String,
        /// Subject alternative name, dns:NAME or ip:ADDR (repeatable)
        #[arg(long = "san", value_name = "dns:NAME|ip:ADDR")]
        sans: Vec<San>,
        /// Validity in days
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Key algorithm of the new key
        #[arg(long, value_enum, default_value = "ecdsa-p256")]
        key: KeyAlgorithm,
        /// Directory for NAME.pem and NAME.key (key mode 0600)
        #[arg(long)]
        out: PathBuf,
        /// Revoke the name's current certificate (reason superseded) instead of refusing
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Sign a PKCS#10 request; extensions come from the profile, never from the request
    SignCsr {
        /// The CA directory (made by `cert init-ca`)
        #[arg(long)]
        dir: PathBuf,
        /// The request, PEM or DER
        #[arg(long)]
        csr: PathBuf,
        #[arg(long, value_enum)]
        profile: Profile,
        /// Common name, if not the one in the request
        #[arg(long)]
        name: Option<String>,
        /// Subject alternative name, dns:NAME or ip:ADDR (repeatable)
        #[arg(long = "san", value_name = "dns:NAME|ip:ADDR")]
        sans: Vec<San>,
        /// Validity in days
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Where to write the certificate (PEM)
        #[arg(long)]
        out: PathBuf,
        /// Revoke the name's current certificate (reason superseded) instead of refusing
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Revoke a certificate by serial, or every valid certificate of a name
    Revoke {
        /// The CA directory (made by `cert init-ca`)
        #[arg(long)]
        dir: PathBuf,
        /// Serial in hex (colons and case do not matter)
        #[arg(long, required_unless_present = "name", conflicts_with = "name")]
        serial: Option<String>,
        /// Revoke every valid certificate of this common name
        #[arg(long)]
        name: Option<String>,
        /// Why, for the CRL
        #[arg(long, value_enum, default_value = "unspecified")]
        reason: Reason,
    },
    /// Publish a CRL (v2, with CRL number and authority key identifier)
    Crl {
        /// The CA directory (made by `cert init-ca`)
        #[arg(long)]
        dir: PathBuf,
        /// Where to write the CRL (PEM)
        #[arg(long)]
        out: PathBuf,
        /// Days until the CRL's next update; after that verifiers treat it as stale
        #[arg(long, default_value_t = 7)]
        next_update_days: u32,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Bundle key, certificate and CA into a PKCS#12 file for Windows, macOS and Java terminals
    ExportP12 {
        /// The certificate, PEM or DER
        #[arg(long)]
        cert: PathBuf,
        /// Its private key, PEM (PKCS#8, SEC1 or PKCS#1), unencrypted
        #[arg(long)]
        key: PathBuf,
        /// The CA certificate that issued it
        #[arg(long)]
        ca: PathBuf,
        /// Where to write the PKCS#12 file (mode 0600)
        #[arg(long)]
        out: PathBuf,
        /// File whose first line is the PKCS#12 password
        #[arg(long)]
        password_file: PathBuf,
        /// 3DES and SHA-1 MAC for old Windows and Java clients, instead of AES-256 and SHA-256
        #[arg(long)]
        legacy: bool,
    },
    /// Show a certificate, CSR, CRL, PKCS#12 file or key, PEM or DER
    Inspect {
        /// The file to show
        file: PathBuf,
        /// The password of a PKCS#12 file
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Check a certificate against a CA and CRL; exit 0 if valid, 1 if not
    Verify {
        /// The CA certificate that issued it
        #[arg(long)]
        ca: PathBuf,
        /// The CA's CRL; without it revocation is not checked
        #[arg(long)]
        crl: Option<PathBuf>,
        /// The certificate, PEM or DER
        cert: PathBuf,
    },
    /// List the certificates a CA has issued
    List {
        /// The CA directory (made by `cert init-ca`)
        #[arg(long)]
        dir: PathBuf,
        /// Only valid certificates that expire within this many days
        #[arg(long, value_name = "DAYS")]
        expiring_within: Option<u32>,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
}

/// Where the CA passphrase comes from: this file, else `KAKEHASHI_CA_PASSPHRASE`, else a prompt.
#[derive(Debug, Args)]
pub struct PassphraseArgs {
    /// File whose first line is the CA key's passphrase
    #[arg(long)]
    pub passphrase_file: Option<PathBuf>,
}

impl PassphraseArgs {
    /// The passphrase of an existing key; called only if the key turns out to be encrypted.
    pub fn existing<'a>(&'a self, key: &'a Path) -> impl FnOnce() -> Result<Passphrase> + 'a {
        move || match self.source() {
            Some(p) => p,
            None => prompt(key, &format!("Passphrase for {}: ", key.display()), false),
        }
    }

    /// A new passphrase, asked twice at a prompt.
    pub fn new_for(&self, key: &Path) -> Result<Passphrase> {
        match self.source() {
            Some(p) => p,
            None => prompt(key, &format!("New passphrase for {}: ", key.display()), true),
        }
    }

    fn source(&self) -> Option<Result<Passphrase>> {
        if let Some(file) = &self.passphrase_file {
            return Some(Passphrase::from_private_file(file));
        }
        std::env::var(PASSPHRASE_ENV)
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| Ok(Passphrase::new(v)))
    }
}

fn prompt(key: &Path, question: &str, confirm: bool) -> Result<Passphrase> {
    ask(question, confirm)?.ok_or_else(|| Error::PassphraseUnavailable { path: key.into() })
}

/// Asks for a secret at the terminal without echoing it, twice if `confirm` (a new secret, where
/// a typo would lock its owner out). `None` when standard input is not a terminal, so that the
/// caller can name the other ways to give it (a file, an environment variable).
pub fn ask(question: &str, confirm: bool) -> Result<Option<Passphrase>> {
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    let read = |q: &str| {
        rpassword::prompt_password(q)
            .map(Passphrase::new)
            .map_err(Error::io("read the secret from", "/dev/tty"))
    };
    let first = read(question)?;
    if confirm {
        let again = read("Repeat it: ")?;
        if first.expose() != again.expose() {
            return Err(Error::Refused(
                "the two entries differ; nothing was changed".into(),
            ));
        }
    }
    Ok(Some(first))
}

/// Runs one `cert` command. Exit 0 on success; 1 for an invalid certificate in `verify`.
pub fn run(cmd: CertCommand) -> Result<ExitCode> {
    match cmd {
        CertCommand::InitCa {
            dir,
            name,
            days,
            key,
            passphrase,
            no_passphrase,
        } => {
            let secret = if no_passphrase {
                None
            } else {
                Some(passphrase.new_for(&ca::Layout::new(&dir).key())?)
            };
            let made = ca::init(&dir, &name, days, key, secret.as_ref())?;
            println!("created CA \"{name}\" in {}", dir.display());
            println!("  certificate  {}", dir.join("ca.pem").display());
            println!(
                "  key          {} ({}, mode 0600)",
                dir.join("ca.key").display(),
                if made.encrypted {
                    "encrypted"
                } else {
                    "NOT encrypted"
                }
            );
            println!("  serial       {}", made.serial);
            println!("  valid until  {}", rfc3339(made.not_after));
        }
        CertCommand::Issue {
            dir,
            profile,
            name,
            sans,
            days,
            key,
            out,
            replace,
            passphrase,
        } => {
            let req = Request {
                profile,
                name,
                sans,
                days,
                replace,
                key: key.name().into(),
            };
            let mut ca = Ca::open(&dir)?;
            ca.check(&req)?;
            let signer = ca.unlock(passphrase.existing(&ca.layout().key()))?;
            files::create_dir(&out, 0o755)?;
            let cert_path = out.join(format!("{}.pem", req.name));
            let key_path = out.join(format!("{}.key", req.name));
            let entry = ca.issue_to_files(&signer, &req, key, &cert_path, &key_path)?;
            println!("issued {} certificate for {}", profile.name(), entry.name);
            println!("  serial       {}", entry.serial);
            println!("  valid until  {}", rfc3339(entry.not_after));
            println!("  certificate  {}", cert_path.display());
            println!("  key          {} (mode 0600)", key_path.display());
        }
        CertCommand::SignCsr {
            dir,
            csr,
            profile,
            name,
            sans,
            days,
            out,
            replace,
            passphrase,
        } => {
            let request = csr::Csr::read(&csr)?;
            let name = name.or(request.common_name.clone()).ok_or_else(|| {
                Error::Refused(format!(
                    "{}: the request has no common name: give --name",
                    csr.display()
                ))
            })?;
            let req = Request {
                profile,
                name,
                sans,
                days,
                replace,
                key: request.key.clone(),
            };
            let mut ca = Ca::open(&dir)?;
            ca.check(&req)?;
            let signer = ca.unlock(passphrase.existing(&ca.layout().key()))?;
            let pending = ca.sign(&signer, &req, &request.public_key)?;
            let output = Staged::new(&out, pending.pem().as_bytes(), files::PUBLIC)?;
            let entry = ca.commit(pending)?;
            output.commit()?;
            println!("signed {} certificate for {}", profile.name(), entry.name);
            println!("  serial       {}", entry.serial);
            println!("  valid until  {}", rfc3339(entry.not_after));
            println!("  certificate  {}", out.display());
        }
        CertCommand::Revoke {
            dir,
            serial,
            name,
            reason,
        } => {
            let target = match (serial, name) {
                (Some(s), _) => Target::Serial(s),
                (None, Some(n)) => Target::Name(n),
                (None, None) => return Err(Error::Refused("give --serial or --name".into())),
            };
            let mut ca = Ca::open(&dir)?;
            for e in ca.revoke(&target, reason)? {
                println!("revoked {} (serial {})", e.name, e.serial);
            }
            println!(
                "publish a new CRL with `kakehashi cert crl --dir {} --out FILE`",
                dir.display()
            );
        }
        CertCommand::Crl {
            dir,
            out,
            next_update_days,
            passphrase,
        } => {
            let mut ca = Ca::open(&dir)?;
            let signer = ca.unlock(passphrase.existing(&ca.layout().key()))?;
            let crl = ca.crl(&signer, next_update_days)?;
            files::write_atomic(&out, crl.pem().as_bytes(), files::PUBLIC)?;
            println!(
                "CRL number {} with {} revoked certificate(s) written to {}",
                crl.number,
                crl.revoked,
                out.display()
            );
        }
        CertCommand::ExportP12 {
            cert,
            key,
            ca,
            out,
            password_file,
            legacy,
        } => {
            let password = Passphrase::from_file(&password_file)?;
            let encryption = if legacy {
                p12::Encryption::Legacy
            } else {
                p12::Encryption::Modern
            };
            let bytes = p12::export(&cert, &key, &ca, &password, encryption)?;
            files::write_atomic(&out, &bytes, files::SECRET)?;
            println!(
                "wrote {} ({}, mode 0600)",
                out.display(),
                if legacy {
                    "legacy 3DES/SHA-1"
                } else {
                    "AES-256-CBC, PBKDF2-SHA256"
                }
            );
        }
        CertCommand::Inspect {
            file,
            password_file,
            json,
        } => {
            let password = password_file.as_deref().map(Passphrase::from_file).transpose()?;
            let summaries = inspect::inspect(&file, password.as_ref())?;
            if json {
                println!("{}", to_json(&summaries)?);
            } else {
                print!("{}", inspect::render(&summaries));
            }
        }
        CertCommand::Verify { ca, crl, cert } => {
            return Ok(
                match verify::verify(&ca, crl.as_deref(), &cert, OffsetDateTime::now_utc())? {
                    verify::Verdict::Valid(what) => {
                        println!("{}: valid: {what}", cert.display());
                        ExitCode::SUCCESS
                    }
                    verify::Verdict::Invalid(why) => {
                        println!("{}: invalid: {why}", cert.display());
                        ExitCode::from(1)
                    }
                },
            );
        }
        CertCommand::List {
            dir,
            expiring_within,
            json,
        } => {
            let ca = Ca::open(&dir)?;
            let horizon = expiring_within.map(|d| OffsetDateTime::now_utc() + Duration::days(d.into()));
            let rows: Vec<_> = ca
                .entries()
                .filter(|(e, status)| horizon.is_none_or(|h| *status == Status::Valid && e.not_after <= h))
                .collect();
            if json {
                let items: Vec<_> = rows
                    .iter()
                    .map(|(e, status)| {
                        let mut v = serde_json::to_value(e).unwrap_or_default();
                        v["status"] = serde_json::to_value(status).unwrap_or_default();
                        v
                    })
                    .collect();
                println!("{}", to_json(&items)?);
            } else {
                println!(
                    "{:<32}  {:<8}  {:<8}  {:<20}  NAME",
                    "SERIAL", "PROFILE", "STATUS", "NOT AFTER"
                );
                for (e, status) in rows {
                    println!(
                        "{:<32}  {:<8}  {:<8}  {:<20}  {}",
                        e.serial,
                        e.profile.name(),
                        status.name(),
                        rfc3339(e.not_after),
                        e.name
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn to_json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::Crypto {
        what: "JSON output",
        detail: e.to_string(),
    })
}
