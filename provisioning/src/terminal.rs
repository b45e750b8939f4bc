//! `provision terminal …`: the clinic's terminals as the vendor declares them.
//!
//! A terminal gets what it needs to connect, made on the vendor's laptop and handed over once:
//! - TLS: a key and a clinic CA certificate in a PKCS#12 file, its password shown once; or, with
//!   `--enroll`, a one-time token with which it enrolls itself over EST on the appliance (its key
//!   is then made on the terminal and never travels);
//! - WireGuard: a key pair, a preshared key and a tunnel address, in a `wg-quick` config and a QR
//!   code. The private key is only in those two files.
//!
//! The vendor keeps none of those secrets: the clinic's state holds certificate serials, token
//! hashes and WireGuard public keys (and preshared keys, which the appliance needs too).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use cert_tool::ca::{self, Ca};
use cert_tool::files::{self, Staged};
use cert_tool::keys::{KeyAlgorithm, Passphrase};
use cert_tool::profile::Profile;
use provisioning_shared::bundle::{Token, WireGuardPeer};
use provisioning_shared::scope::Scopes;
use provisioning_shared::wireguard::{self, PublicKey, Qr, Secret, TerminalConfig, TunnelNet};
use time::Duration;
use zeroize::Zeroizing;

use crate::clinic::{Clinic, Kind, Locked, Revoked, SERVER_NAME, TerminalRecord};
use crate::error::{Error, Result};
use crate::vendor::{Vendor, give};

/// A terminal certificate's validity unless `--days` says otherwise.
pub const DEFAULT_DAYS: u32 = 365;
/// The longest note.
pub const MAX_NOTE_CHARS: usize = 200;

/// A terminal as `terminal add` is asked for it.
#[derive(Debug)]
pub struct NewTerminal<'a> {
    pub name: &'a str,
    pub kind: Kind,
    /// A one-time EST token instead of a PKCS#12 file (tls and both only).
    pub enroll: bool,
    pub token_hours: u32,
    pub note: Option<&'a str>,
    /// Where NAME.p12, NAME.conf and NAME.png go (created, mode 0700, if missing).
    pub out: &'a Path,
    /// The certificate's validity, days.
    pub days: u32,
    /// Make a WireGuard preshared key (on unless `--no-psk`).
    pub psk: bool,
    /// What may be called from it.
    pub scopes: Scopes,
}

/// What `terminal add` made: every secret here is shown once and kept nowhere.
#[derive(Debug)]
pub struct Added {
    pub terminal: TerminalRecord,
    pub p12: Option<P12>,
    pub token: Option<Issued>,
    pub wireguard: Option<WireGuardFiles>,
}

/// A PKCS#12 file and its password (also in `NAME.p12.password` beside it, mode 0600, so that
/// it need not be shown on a screen).
#[derive(Debug)]
pub struct P12 {
    pub path: PathBuf,
    pub password_file: PathBuf,
    pub password: Zeroizing<String>,
    pub serial: String,
    pub not_after: String,
}

/// A one-time enrollment token.
#[derive(Debug)]
pub struct Issued {
    pub token: Zeroizing<String>,
    pub expires: String,
}

/// A terminal's WireGuard config and its QR code.
#[derive(Debug)]
pub struct WireGuardFiles {
    pub config: PathBuf,
    pub png: PathBuf,
    pub address: Ipv4Addr,
    /// The QR code drawn for a terminal (text with colour escapes).
    pub qr: Zeroizing<String>,
}

/// Checks a new terminal's name: a certificate name that is not the gateway's own, nor a
/// terminal's of the clinic, present or revoked.
pub fn check_name(clinic: &Clinic, name: &str) -> Result<()> {
    cert_tool::profile::check_name(name)?;
    if name == SERVER_NAME {
        return Err(Error::Invalid(format!(
            "--name {SERVER_NAME}: the name of the gateway's own certificate; choose another"
        )));
    }
    if let Some(t) = clinic.terminals.iter().find(|t| t.name == name) {
        return Err(Error::TerminalExists {
            clinic: clinic.id.clone(),
            name: name.to_owned(),
            added: t.added.clone(),
        });
    }
    if let Some(r) = clinic.revoked.iter().find(|r| r.name == name) {
        return Err(Error::TerminalRevoked {
            clinic: clinic.id.clone(),
            name: name.to_owned(),
            at: r.at.clone(),
        });
    }
    Ok(())
}

/// `terminal add`. `passphrase` unlocks the clinic CA (called for a PKCS#12 terminal only, once
/// every other refusal is behind).
///
/// Everything is checked before anything is made; the files are staged, the clinic CA records
/// the certificate, the files are renamed into place and `clinic.json` is written last.
pub fn add(
    vendor: &Vendor,
    id: &str,
    new: &NewTerminal<'_>,
    passphrase: impl FnOnce() -> Result<Option<Passphrase>>,
) -> Result<Added> {
    if let Some(note) = new.note {
        provisioning_shared::check_text("--note", note, MAX_NOTE_CHARS)?;
    }
    if new.enroll {
        if !new.kind.tls() {
            return Err(Error::Invalid(
                "--enroll makes a token for a TLS certificate: it goes with --kind tls or both".into(),
            ));
        }
        provisioning_shared::token::check_hours(new.token_hours)?;
    }
    let mut open = Locked::open(vendor, id)?;
    let clinic = &open.clinic;
    check_name(clinic, new.name)?;
    let wg = match (new.kind.wireguard(), &clinic.settings.wireguard) {
        (false, _) => None,
        (true, Some(wg)) => Some(wg.clone()),
        (true, None) => {
            return Err(Error::Invalid(format!(
                "clinic {id:?} has no WireGuard: turn it on with `kakehashi provision clinic set \
                 --clinic {id} --wg-endpoint HOST:PORT` first"
            )));
        }
    };
    let p12_path = (new.kind.tls() && !new.enroll).then(|| new.out.join(format!("{}.p12", new.name)));
    let p12_password = new.out.join(format!("{}.p12.password", new.name));
    let (conf_path, png_path) = (
        new.out.join(format!("{}.conf", new.name)),
        new.out.join(format!("{}.png", new.name)),
    );
    let outputs: Vec<&PathBuf> = p12_path
        .iter()
        .chain(p12_path.as_ref().map(|_| &p12_password))
        .chain(wg.as_ref().map(|_| [&conf_path, &png_path]).into_iter().flatten())
        .collect();
    for path in &outputs {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(Error::Invalid(format!(
                "{} exists already; not overwriting it (it may hold another terminal's key): move \
                 it away, or choose another directory with --out",
                path.display()
            )));
        }
    }

    let now = ca::now();
    let mut next = open.clinic.clone();
    let mut terminal = TerminalRecord {
        name: new.name.to_owned(),
        kind: new.kind,
        note: new.note.map(str::to_owned),
        enabled: true,
        added: ca::rfc3339(now),
        certificates: Vec::new(),
        enroll: new.enroll,
        wireguard: None,
        scopes: new.scopes,
    };
    let mut added = Added {
        terminal: terminal.clone(),
        p12: None,
        token: None,
        wireguard: None,
    };
    let mut staged = Vec::new();
    let mut signed = None;
    if !outputs.is_empty() {
        files::create_dir(new.out, 0o700)?;
    }

    if let Some(path) = &p12_path {
        let clinic_ca = Ca::open(&open.layout.ca_dir())?;
        let req = ca::Request {
            profile: Profile::Terminal,
            name: new.name.to_owned(),
            sans: Vec::new(),
            days: new.days,
            // The clinic does not know this name (checked above): a valid certificate of it in
            // the clinic CA is left from a `terminal add` that failed after signing.
            replace: true,
            key: KeyAlgorithm::EcdsaP256.name().into(),
        };
        clinic_ca.check(&req)?;
        let passphrase = passphrase()?;
        let signer = clinic_ca.unlock(give(passphrase.as_ref(), &clinic_ca.layout().key()))?;
        let key = KeyAlgorithm::EcdsaP256.generate()?;
        let pending = clinic_ca.sign(&signer, &req, &key)?;
        let root = cert_tool::decode::certificate(&cert_tool::ca::Layout::new(&vendor.root_dir()).cert())?;
        let password = provisioning_shared::password::generate()?;
        let bytes = Zeroizing::new(cert_tool::p12::build(
            &pending.der,
            &key,
            &[clinic_ca.cert_der().to_vec(), root],
            &Passphrase::new(password.to_string()),
            cert_tool::p12::Encryption::Modern,
        )?);
        staged.push(Staged::new(path, &bytes, files::SECRET)?);
        let line = Zeroizing::new(format!("{}\n", password.as_str()));
        staged.push(Staged::new(&p12_password, line.as_bytes(), files::SECRET)?);
        terminal.certificates.push(pending.entry.serial.clone());
        added.p12 = Some(P12 {
            path: path.clone(),
            password_file: p12_password.clone(),
            password,
            serial: pending.entry.serial.clone(),
            not_after: ca::rfc3339(pending.entry.not_after),
        });
        signed = Some((clinic_ca, pending));
    }

    if new.enroll {
        added.token = Some(put_token(&mut next, new.name, new.token_hours, now)?);
    }

    if let Some(wg) = &wg {
        let net: TunnelNet = wg
            .address
            .parse()
            .map_err(|e| bad_state(&open, "settings.wireguard.address", e))?;
        let gateway_key = PublicKey::from_base64(&next.wireguard_public_key)
            .map_err(|e| bad_state(&open, "wireguard_public_key", e))?;
        let address = free_address(&next, &net)?;
        let private = Secret::generate()?;
        let psk = if new.psk { Some(Secret::generate()?) } else { None };
        let text = TerminalConfig {
            private_key: &private,
            address,
            mtu: wireguard::DEFAULT_MTU,
            gateway_key,
            preshared_key: psk.as_ref(),
            endpoint: &wg.endpoint,
            gateway_address: net.address,
            persistent_keepalive: wireguard::DEFAULT_KEEPALIVE,
        }
        .text();
        let qr = Qr::new(&text)?;
        staged.push(Staged::new(&conf_path, text.as_bytes(), files::SECRET)?);
        staged.push(Staged::new(&png_path, &qr.to_png()?, files::SECRET)?);
        terminal.wireguard = Some(WireGuardPeer {
            public_key: private.public_key().to_base64(),
            preshared_key: psk.map(|k| provisioning_shared::bundle::SecretText::new(k.to_base64())),
            address,
        });
        added.wireguard = Some(WireGuardFiles {
            config: conf_path.clone(),
            png: png_path.clone(),
            address,
            qr: qr.to_terminal(),
        });
    }

    next.terminals.push(terminal.clone());
    added.terminal = terminal;
    // The clinic CA records the certificate first: if anything after fails, it knows what it
    // signed (and `terminal add` of the same name supersedes it).
    if let Some((mut clinic_ca, pending)) = signed {
        clinic_ca.commit(pending)?;
    }
    open.commit(next, staged)?;
    Ok(added)
}

fn bad_state(locked: &Locked, field: &str, detail: String) -> Error {
    Error::State {
        path: locked.layout.state(),
        detail: format!("{field}: {detail}"),
    }
}

/// The first address of the clinic's network that no terminal has.
fn free_address(clinic: &Clinic, net: &TunnelNet) -> Result<Ipv4Addr> {
    let used: std::collections::HashSet<Ipv4Addr> = clinic
        .terminals
        .iter()
        .filter_map(|t| t.wireguard.as_ref().map(|p| p.address))
        .collect();
    net.hosts()
        .find(|ip| !used.contains(ip))
        .ok_or_else(|| Error::TunnelNetworkFull {
            clinic: clinic.id.clone(),
            net: net.to_string(),
        })
}

/// Makes a token for `name`, in place of any earlier one (which stops working with the next
/// bundle, unless the terminal has enrolled with it already).
fn put_token(next: &mut Clinic, name: &str, hours: u32, now: time::OffsetDateTime) -> Result<Issued> {
    let token = provisioning_shared::token::generate()?;
    let expires = ca::rfc3339(now + Duration::hours(hours.into()));
    next.tokens.retain(|t| t.name != name);
    next.tokens.push(Token {
        name: name.to_owned(),
        sha256: hex::encode(provisioning_shared::token::hash(token.as_bytes())),
        created: ca::rfc3339(now),
        expires: expires.clone(),
    });
    Ok(Issued { token, expires })
}

/// `terminal token`: a fresh one-time token for a terminal that enrolls (`add --enroll`), when
/// the first expired or was lost before the terminal used it. A terminal that has enrolled
/// already is registered on the appliance, which ignores the new token.
pub fn new_token(vendor: &Vendor, id: &str, name: &str, hours: u32) -> Result<Issued> {
    provisioning_shared::token::check_hours(hours)?;
    let mut open = Locked::open(vendor, id)?;
    let mut next = open.clinic.clone();
    if !next.terminal(name)?.enroll {
        return Err(Error::Invalid(format!(
            "terminal {name:?} of clinic {id:?} was not added with --enroll: it has a PKCS#12 file \
             or a WireGuard config, not a token"
        )));
    }
    let issued = put_token(&mut next, name, hours, ca::now())?;
    open.commit(next, Vec::new())?;
    Ok(issued)
}

/// `terminal enable` and `terminal disable`: the appliance refuses a disabled terminal's
/// connections from the next bundle on.
pub fn set_enabled(vendor: &Vendor, id: &str, name: &str, enabled: bool) -> Result<()> {
    let mut open = Locked::open(vendor, id)?;
    let mut next = open.clinic.clone();
    let terminal = next.terminal_mut(name)?;
    if terminal.enabled == enabled {
        return Err(Error::TerminalAlready {
            clinic: id.to_owned(),
            name: name.to_owned(),
            state: if enabled { "enabled" } else { "disabled" },
        });
    }
    terminal.enabled = enabled;
    open.commit(next, Vec::new())
}

/// `terminal revoke`: its clinic CA certificates are revoked (the next bundle's CRL lists them),
/// it leaves the clinic's terminals and tokens, and its name joins `revoked`, which every later
/// bundle carries so that the appliance removes it (and revokes what its own CA gave it).
pub fn revoke(vendor: &Vendor, id: &str, name: &str, reason: cert_tool::index::Reason) -> Result<Revoked> {
    let mut open = Locked::open(vendor, id)?;
    let mut next = open.clinic.clone();
    next.terminal(name)?;
    // Every valid certificate of the name, also one a failed `terminal add` left.
    let mut clinic_ca = Ca::open(&open.layout.ca_dir())?;
    let certificates = match clinic_ca.revoke(&ca::Target::Name(name.to_owned()), reason) {
        Ok(entries) => entries.into_iter().map(|e| e.serial).collect(),
        // None valid (a WireGuard or EST terminal, or revoked before this state was written).
        Err(cert_tool::Error::UnknownName { .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let revoked = Revoked {
        name: name.to_owned(),
        at: ca::rfc3339(ca::now()),
        reason,
        certificates,
    };
    next.terminals.retain(|t| t.name != name);
    next.tokens.retain(|t| t.name != name);
    next.revoked.push(revoked.clone());
    open.commit(next, Vec::new())?;
    Ok(revoked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::Fixture;

    fn new<'a>(name: &'a str, kind: Kind, out: &'a Path) -> NewTerminal<'a> {
        NewTerminal {
            name,
            kind,
            enroll: false,
            token_hours: provisioning_shared::token::DEFAULT_HOURS,
            note: None,
            out,
            days: DEFAULT_DAYS,
            psk: true,
            scopes: Scopes::ALL,
        }
    }

    #[test]
    fn terminals_of_each_kind_and_their_refusals() {
        let f = Fixture::new();
        let out = f.tmp.path().join("out");
        let tls = add(&f.vendor, "c1", &new("pc-1", Kind::Tls, &out), || Ok(None)).unwrap();
        let p12 = tls.p12.unwrap();
        assert_eq!(p12.password.len(), 23);
        let (_, certs) = cert_tool::p12::open(
            &p12.path,
            &std::fs::read(&p12.path).unwrap(),
            &Passphrase::new(p12.password.to_string()),
        )
        .unwrap();
        assert_eq!(certs.len(), 3, "leaf, clinic CA, vendor root");

        let both = add(&f.vendor, "c1", &new("tab-1", Kind::Both, &out), || Ok(None)).unwrap();
        let wg = both.wireguard.unwrap();
        assert_eq!(wg.address, Ipv4Addr::new(10, 77, 0, 2));
        let conf = std::fs::read_to_string(&wg.config).unwrap();
        assert!(conf.contains("Endpoint = clinic.example:51820") && conf.contains("PresharedKey"));
        let enroll = NewTerminal {
            enroll: true,
            ..new("pc-2", Kind::Tls, &out)
        };
        let token = add(&f.vendor, "c1", &enroll, || Ok(None)).unwrap().token.unwrap();
        let state = f.state();
        assert!(!state.contains(token.token.as_str()), "only the hash is kept");
        assert!(state.contains(&hex::encode(provisioning_shared::token::hash(
            token.token.as_bytes()
        ))));
        // A fresh token replaces the first; a terminal without --enroll has none to replace.
        let fresh = new_token(&f.vendor, "c1", "pc-2", 48).unwrap();
        let state = f.state();
        assert!(state.contains(&hex::encode(provisioning_shared::token::hash(
            fresh.token.as_bytes()
        ))));
        assert!(!state.contains(&hex::encode(provisioning_shared::token::hash(
            token.token.as_bytes()
        ))));
        let before = f.state();
        assert!(
            new_token(&f.vendor, "c1", "pc-1", 24).is_err(),
            "a PKCS#12 terminal"
        );
        assert!(new_token(&f.vendor, "c1", "nobody", 24).is_err());
        assert!(new_token(&f.vendor, "c1", "pc-2", 721).is_err());
        assert_eq!(before, f.state());
        let second = add(&f.vendor, "c1", &new("tab-2", Kind::WireGuard, &out), || Ok(None)).unwrap();
        assert_eq!(second.wireguard.unwrap().address, Ipv4Addr::new(10, 77, 0, 3));

        // Every refusal leaves the state as it was.
        let before = f.state();
        let refused = [
            add(&f.vendor, "c1", &new("pc-1", Kind::Tls, &out), || Ok(None)).unwrap_err(),
            add(&f.vendor, "c1", &new("bad name", Kind::Tls, &out), || Ok(None)).unwrap_err(),
            add(&f.vendor, "c1", &new(SERVER_NAME, Kind::Tls, &out), || Ok(None)).unwrap_err(),
            add(
                &f.vendor,
                "c1",
                &NewTerminal {
                    enroll: true,
                    ..new("wg-x", Kind::WireGuard, &out)
                },
                || Ok(None),
            )
            .unwrap_err(),
            add(
                &f.vendor,
                "c1",
                &NewTerminal {
                    enroll: true,
                    token_hours: 721,
                    ..new("pc-x", Kind::Tls, &out)
                },
                || Ok(None),
            )
            .unwrap_err(),
            add(
                &f.vendor,
                "c1",
                &NewTerminal {
                    note: Some("two\nlines"),
                    ..new("pc-x", Kind::Tls, &out)
                },
                || Ok(None),
            )
            .unwrap_err(),
            add(&f.vendor, "nope", &new("pc-x", Kind::Tls, &out), || Ok(None)).unwrap_err(),
            add(&f.vendor, "c2", &new("wg-y", Kind::WireGuard, &out), || Ok(None)).unwrap_err(),
            set_enabled(&f.vendor, "c1", "pc-1", true).unwrap_err(),
            set_enabled(&f.vendor, "c1", "ghost", false).unwrap_err(),
            revoke(&f.vendor, "c1", "ghost", cert_tool::index::Reason::KeyCompromise).unwrap_err(),
        ];
        assert!(
            matches!(refused[0], Error::TerminalExists { .. }),
            "{}",
            refused[0]
        );
        assert!(refused[2].to_string().contains("gateway's own"), "{}", refused[2]);
        assert!(
            refused[7].to_string().contains("has no WireGuard"),
            "{}",
            refused[7]
        );
        assert!(matches!(refused[8], Error::TerminalAlready { .. }));
        assert!(matches!(refused[10], Error::UnknownTerminal { .. }));
        assert_eq!(f.state(), before);
        // A file in the way is not overwritten, and nothing is recorded.
        std::fs::write(out.join("pc-9.p12"), "mine").unwrap();
        assert!(add(&f.vendor, "c1", &new("pc-9", Kind::Tls, &out), || Ok(None)).is_err());
        assert_eq!(std::fs::read(out.join("pc-9.p12")).unwrap(), b"mine");
        assert_eq!(f.state(), before);

        set_enabled(&f.vendor, "c1", "pc-1", false).unwrap();
        let revoked = revoke(&f.vendor, "c1", "pc-1", cert_tool::index::Reason::KeyCompromise).unwrap();
        assert_eq!(revoked.certificates, [p12.serial]);
        revoke(&f.vendor, "c1", "pc-2", cert_tool::index::Reason::KeyCompromise).unwrap();
        let clinic = f.clinic();
        assert!(
            clinic
                .terminals
                .iter()
                .all(|t| t.name != "pc-1" && t.name != "pc-2")
        );
        assert!(clinic.tokens.is_empty(), "a revoked terminal's token goes too");
        let before = f.state();
        assert!(matches!(
            add(&f.vendor, "c1", &new("pc-1", Kind::Tls, &out), || Ok(None)),
            Err(Error::TerminalRevoked { .. })
        ));
        assert_eq!(f.state(), before);
    }

    #[test]
    fn a_full_network_is_refused_by_name() {
        let f = Fixture::new();
        let out = f.tmp.path().join("out");
        let change = crate::setup::SettingsArgs {
            wg_network: Some("10.9.0.1/30".parse().unwrap()),
            ..Default::default()
        };
        crate::setup::set(
            &f.vendor,
            "c1",
            &crate::setup::Change {
                name: None,
                engine_host: None,
                settings: &change,
                uplink_cert: None,
            },
            || Ok(None),
        )
        .unwrap();
        add(&f.vendor, "c1", &new("a", Kind::WireGuard, &out), || Ok(None)).unwrap();
        let before = f.state();
        let err = add(&f.vendor, "c1", &new("b", Kind::WireGuard, &out), || Ok(None)).unwrap_err();
        assert!(matches!(err, Error::TunnelNetworkFull { .. }), "{err}");
        assert_eq!(f.state(), before);
        assert!(!out.join("b.conf").exists());
    }
}
