//! A clinic on the vendor's laptop: its directory and its state file, `clinic.json`.
//!
//! ```text
//! V/clinics/ID/clinic.json     the clinic's state (mode 0600: it holds the engine password,
//!                              staff password hashes and WireGuard preshared keys)
//! V/clinics/ID/clinic-ca/      the clinic CA (cert-tool's CA layout), signed by the vendor root
//! V/clinics/ID/issuing-ca.pem  the appliance's issuing CA certificate, signed by the vendor root
//! V/clinics/ID/server.pem      the gateway's TLS server certificate, signed by the clinic CA
//! V/clinics/ID/uplink.csr      the appliance's uplink CSR, for the cloud operator
//! V/clinics/ID/uplink.pem      the uplink certificate the cloud operator signed (`clinic set`)
//! V/clinics/ID/engine-ca.pem   the CA of the cloud engine's certificate (`--engine-ca`)
//! V/clinics/ID/request.json    the appliance's request, as received
//! V/clinics/ID/out/            terminal files: NAME.p12, NAME.conf, NAME.png (mode 0600)
//! V/clinics/ID/.lock           taken by every command that changes the clinic
//! ```
//!
//! Every change is made the same way: the clinic directory is locked, the new state is computed
//! from the old, every file it needs is staged (written and flushed beside its destination), the
//! files are renamed into place, and `clinic.json` is renamed last: it is the commit point. A
//! command that fails leaves `clinic.json` as it was, byte for byte.

use std::path::{Path, PathBuf};

use cert_tool::files::{self, DirLock, Staged};
use provisioning_shared::bundle::{Credential, Settings, StaffAccount, Token, WireGuardPeer};
use provisioning_shared::scope::Scopes;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::vendor::Vendor;

/// The `kind` of every clinic state file, so a wrong file is named as such.
pub const KIND: &str = "kakehashi-clinic";
/// The state format this build writes and reads.
pub const FORMAT: u32 = 1;
/// The common name (and index name) of the gateway's server certificate in the clinic CA. No
/// terminal may have it.
pub const SERVER_NAME: &str = "kakehashi-gateway";

/// A clinic's whole state, as `clinic.json` holds it. Certificates live in files beside it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clinic {
    pub kind: String,
    pub format: u32,
    /// The clinic ID (`--clinic`), also the directory's name.
    pub id: String,
    /// The clinic's name for people (`--name`).
    pub name: String,
    /// When `clinic add` made it, RFC 3339.
    pub created: String,
    /// The appliance: its device identity (age recipient) from the request.
    pub appliance: String,
    /// The gateway's WireGuard public key (base64) from the request.
    pub wireguard_public_key: String,
    /// The version of the last bundle built (0: none yet).
    pub bundle_version: u64,
    /// How the appliance listens, as the bundle carries it.
    pub settings: Settings,
    /// The cloud engine's base URL.
    pub engine_url: String,
    /// The clinic's engine account (`--engine-user`, `--engine-password-file`), once given.
    pub engine_credential: Option<Credential>,
    pub terminals: Vec<TerminalRecord>,
    /// One-time enrollment tokens (only their hashes).
    pub tokens: Vec<Token>,
    pub users: Vec<StaffAccount>,
    /// Terminals revoked: every later bundle carries their names.
    pub revoked: Vec<Revoked>,
}

/// What kind of terminal: how it connects to the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// TLS with a client certificate (a PKCS#12 file, or an EST enrollment with a token)
    Tls,
    /// WireGuard (a wg-quick config and a QR code)
    #[value(name = "wireguard")]
    WireGuard,
    /// Both
    Both,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tls => "tls",
            Kind::WireGuard => "wireguard",
            Kind::Both => "both",
        }
    }
    pub fn tls(self) -> bool {
        matches!(self, Kind::Tls | Kind::Both)
    }
    pub fn wireguard(self) -> bool {
        matches!(self, Kind::WireGuard | Kind::Both)
    }
}

/// The vendor's record of a terminal in `clinic.json`: how it connects, when it was added, the
/// certificates the clinic CA gave it. What the appliance gets of it is a
/// [`provisioning_shared::bundle::DeclaredTerminal`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerminalRecord {
    pub name: String,
    pub kind: Kind,
    pub note: Option<String>,
    pub enabled: bool,
    /// RFC 3339.
    pub added: String,
    /// Serials of the certificates the clinic CA issued it (a PKCS#12 file), upper-case hex.
    pub certificates: Vec<String>,
    /// Whether it enrolls itself over EST with a one-time token instead (see `tokens`).
    pub enroll: bool,
    /// Its WireGuard identity (the private key went into its config and is nowhere here).
    pub wireguard: Option<WireGuardPeer>,
    /// What it may call (every scope when the field is absent).
    #[serde(default = "Scopes::all", skip_serializing_if = "Scopes::is_all")]
    pub scopes: Scopes,
}

/// A revoked terminal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    pub name: String,
    /// RFC 3339.
    pub at: String,
    pub reason: cert_tool::index::Reason,
    /// The clinic CA certificates revoked with it (they are on the clinic CRL).
    pub certificates: Vec<String>,
}

impl Clinic {
    /// The terminal called `name`.
    pub fn terminal(&self, name: &str) -> Result<&TerminalRecord> {
        self.terminals
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| self.unknown_terminal(name))
    }

    pub fn terminal_mut(&mut self, name: &str) -> Result<&mut TerminalRecord> {
        let unknown = self.unknown_terminal(name);
        self.terminals.iter_mut().find(|t| t.name == name).ok_or(unknown)
    }

    fn unknown_terminal(&self, name: &str) -> Error {
        Error::UnknownTerminal {
            clinic: self.id.clone(),
            name: name.to_owned(),
        }
    }

    /// The user with `id`.
    pub fn user_mut(&mut self, id: &str) -> Result<&mut StaffAccount> {
        let unknown = Error::UnknownUser {
            clinic: self.id.clone(),
            id: id.to_owned(),
        };
        self.users.iter_mut().find(|u| u.id == id).ok_or(unknown)
    }

    /// The state as the file's text (wiped when dropped: it holds the clinic's secrets).
    pub fn to_json(&self) -> Result<Zeroizing<String>> {
        serde_json::to_string_pretty(self)
            .map(|t| Zeroizing::new(t + "\n"))
            .map_err(|e| Error::Invalid(format!("clinic state: {e}")))
    }

    /// Parses a state file's text; `path` names it in errors.
    pub fn parse(path: &Path, text: &[u8]) -> Result<Clinic> {
        let bad = |detail: String| Error::State {
            path: path.to_path_buf(),
            detail,
        };
        // The kind and format first, so that another file, or a newer one, is named as such
        // rather than as a list of unknown fields.
        #[derive(Deserialize)]
        struct Header {
            kind: Option<String>,
            format: Option<u64>,
        }
        let header: Header = serde_json::from_slice(text).map_err(|e| bad(e.to_string()))?;
        if header.kind.as_deref() != Some(KIND) {
            return Err(bad(format!("no \"kind\": \"{KIND}\"")));
        }
        match header.format {
            Some(f) if f == u64::from(FORMAT) => {}
            Some(f) => {
                return Err(bad(format!(
                    "format {f}; this kakehashi reads format {FORMAT} (was it written by a newer one?)"
                )));
            }
            None => return Err(bad("no \"format\"".into())),
        }
        let clinic: Clinic = serde_json::from_slice(text).map_err(|e| bad(e.to_string()))?;
        if clinic.id
            != path
                .parent()
                .and_then(Path::file_name)
                .and_then(|n| n.to_str())
                .unwrap_or("")
        {
            return Err(bad(format!(
                "it says it is clinic {:?}, but its directory is named otherwise",
                clinic.id
            )));
        }
        Ok(clinic)
    }
}

/// The paths of a clinic directory.
#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    /// The directory of clinic `id` in the vendor directory.
    pub fn of(vendor: &Vendor, id: &str) -> Layout {
        Layout {
            dir: vendor.clinics_dir().join(id),
        }
    }
    pub fn state(&self) -> PathBuf {
        self.dir.join("clinic.json")
    }
    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("clinic-ca")
    }
    pub fn ca_cert(&self) -> PathBuf {
        cert_tool::ca::Layout::new(&self.ca_dir()).cert()
    }
    pub fn issuing_ca(&self) -> PathBuf {
        self.dir.join("issuing-ca.pem")
    }
    pub fn server(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn uplink_csr(&self) -> PathBuf {
        self.dir.join("uplink.csr")
    }
    pub fn uplink(&self) -> PathBuf {
        self.dir.join("uplink.pem")
    }
    pub fn engine_ca(&self) -> PathBuf {
        self.dir.join("engine-ca.pem")
    }
    pub fn request(&self) -> PathBuf {
        self.dir.join("request.json")
    }
    /// Where terminal files go unless `--out` says otherwise.
    pub fn out(&self) -> PathBuf {
        self.dir.join("out")
    }
}

/// A clinic opened for a change: its directory locked (until dropped), its state loaded.
#[derive(Debug)]
pub struct Locked {
    pub layout: Layout,
    _lock: DirLock,
    pub clinic: Clinic,
}

impl Locked {
    /// Locks clinic `id`'s directory and reads its state.
    pub fn open(vendor: &Vendor, id: &str) -> Result<Locked> {
        let layout = layout(vendor, id)?;
        let lock = DirLock::acquire(&layout.dir)?;
        let clinic = load(&layout)?;
        Ok(Locked {
            layout,
            _lock: lock,
            clinic,
        })
    }

    /// Commits a change: `files` (already staged) are renamed into place, then `clinic` is
    /// written as the new state, atomically. On success the open clinic holds the new state.
    pub fn commit(&mut self, clinic: Clinic, files: Vec<Staged>) -> Result<()> {
        let state = Staged::new(&self.layout.state(), clinic.to_json()?.as_bytes(), files::SECRET)?;
        for f in files {
            f.commit()?;
        }
        state.commit()?;
        self.clinic = clinic;
        Ok(())
    }
}

/// The layout of clinic `id`, which must exist.
pub fn layout(vendor: &Vendor, id: &str) -> Result<Layout> {
    cert_tool::profile::check_name(id).map_err(|_| {
        Error::Invalid(format!(
            "--clinic {id:?}: not a clinic ID: use 1 to 64 letters, digits, '.', '-', '_' or '@', \
             not starting with '.'"
        ))
    })?;
    let layout = Layout::of(vendor, id);
    if !layout.state().exists() {
        return Err(Error::NoClinic {
            id: id.to_owned(),
            dir: vendor.clinics_dir(),
        });
    }
    Ok(layout)
}

/// Reads a clinic's state without locking (for listings: the file is only ever replaced whole).
pub fn load(layout: &Layout) -> Result<Clinic> {
    let path = layout.state();
    Clinic::parse(&path, &Zeroizing::new(files::read(&path)?))
}

/// Every clinic of the vendor, by ID.
pub fn all(vendor: &Vendor) -> Result<Vec<(Layout, Clinic)>> {
    let dir = vendor.clinics_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read", dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io("read", &dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // Staging directories of a `clinic add` in progress or interrupted start with '.'.
        if name.starts_with('.') || !entry.path().join("clinic.json").exists() {
            continue;
        }
        let layout = Layout { dir: entry.path() };
        let clinic = load(&layout)?;
        out.push((layout, clinic));
    }
    out.sort_by(|a, b| a.1.id.cmp(&b.1.id));
    Ok(out)
}

/// What a clinic still lacks before a bundle can be built, each with the command that adds it.
pub fn missing(layout: &Layout, clinic: &Clinic) -> Vec<String> {
    let id = &clinic.id;
    let mut out = Vec::new();
    if !layout.uplink().exists() {
        out.push(format!(
            "the uplink certificate: send {} to the cloud operator and install what they sign with \
             `kakehashi provision clinic set --clinic {id} --uplink-cert FILE`",
            layout.uplink_csr().display()
        ));
    }
    if !layout.engine_ca().exists() {
        out.push(format!(
            "the engine's CA: `kakehashi provision clinic set --clinic {id} --engine-ca FILE` (the \
             CA certificate, PEM, that the cloud engine's TLS certificate chains to)"
        ));
    }
    if clinic.engine_credential.is_none() {
        out.push(format!(
            "the engine credential: `kakehashi provision clinic set --clinic {id} --engine-user USER \
             --engine-password-file FILE` (the clinic's account at the cloud engine)"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::setup::{self, Change, NewClinic, SettingsArgs};
    use crate::tests::{Fixture, request};

    fn set(
        f: &Fixture,
        engine_host: Option<&str>,
        settings: &SettingsArgs,
        uplink: Option<&Path>,
    ) -> Result<()> {
        setup::set(
            &f.vendor,
            "c1",
            &Change {
                name: None,
                engine_host,
                settings,
                uplink_cert: uplink,
            },
            || Ok(None),
        )
        .map(drop)
    }

    #[test]
    fn a_clinic_is_made_whole_and_its_state_round_trips() {
        let f = Fixture::new();
        let layout = f.layout();
        let clinic = f.clinic();
        assert_eq!(clinic.bundle_version, 0);
        assert_eq!(clinic.engine_url, "https://orca.example.jp");
        assert_eq!(clinic.settings.listen, setup::DEFAULT_LISTEN);
        assert_eq!(
            clinic.settings.wireguard.as_ref().map(|w| w.address.as_str()),
            Some(setup::DEFAULT_WG_NETWORK)
        );
        assert!(
            load(&Layout::of(&f.vendor, "c2"))
                .unwrap()
                .settings
                .wireguard
                .is_none()
        );
        for path in [
            layout.ca_cert(),
            layout.issuing_ca(),
            layout.server(),
            layout.uplink_csr(),
            layout.request(),
        ] {
            assert!(path.exists(), "{}", path.display());
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(layout.state()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // The server certificate chains to the clinic CA and names the engine.
        let verdict =
            cert_tool::verify::verify(&layout.ca_cert(), None, &layout.server(), cert_tool::ca::now());
        assert!(
            matches!(verdict, Ok(cert_tool::verify::Verdict::Valid(_))),
            "{verdict:?}"
        );
        assert_eq!(
            Clinic::parse(&layout.state(), f.state().as_bytes()).unwrap(),
            clinic
        );
        assert_eq!(all(&f.vendor).unwrap().len(), 2);
        let missing = missing(&layout, &clinic);
        assert_eq!(missing.len(), 3, "{missing:?}");
    }

    #[test]
    fn a_damaged_or_foreign_state_file_is_named() {
        let f = Fixture::new();
        let path = f.layout().state();
        let good = f.state();
        for (text, want) in [
            (
                "not json".to_owned(),
                "clinic.json: not a valid clinic state file",
            ),
            ("{}".to_owned(), "no \"kind\""),
            (good.replace("\"format\": 1", "\"format\": 9"), "format 9"),
            (
                good.replace("\"bundle_version\"", "\"surprise\": 1, \"bundle_version\""),
                "unknown field",
            ),
            (
                good.replace("\"id\": \"c1\"", "\"id\": \"c2\""),
                "its directory is named otherwise",
            ),
        ] {
            let err = Clinic::parse(&path, text.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        std::fs::write(&path, "{}").unwrap();
        assert!(matches!(Locked::open(&f.vendor, "c1"), Err(Error::State { .. })));
        assert!(matches!(
            Locked::open(&f.vendor, "nope"),
            Err(Error::NoClinic { .. })
        ));
        assert!(matches!(Locked::open(&f.vendor, "../x"), Err(Error::Invalid(_))));
    }

    #[test]
    fn clinic_add_refuses_a_taken_id_a_taken_appliance_and_bad_input() {
        let f = Fixture::new();
        let (_, _) = request(&f.path("r3.json"));
        let add = |id: &str, request: &str, host: &str, settings: &SettingsArgs| {
            setup::add(
                &f.vendor,
                &NewClinic {
                    id,
                    name: "Another",
                    request: &f.path(request),
                    engine_host: host,
                    settings,
                },
                || Ok(None),
            )
        };
        let none = SettingsArgs::default();
        let before = crate::clinic::all(&f.vendor).unwrap();
        let root_index = std::fs::read(f.vendor.root_dir().join("index.json")).unwrap();
        assert!(matches!(
            add("c1", "r3.json", "h.example", &none),
            Err(Error::ClinicExists { .. })
        ));
        assert!(matches!(
            add("c3", "r1.json", "h.example", &none),
            Err(Error::ApplianceTaken { .. })
        ));
        assert!(matches!(
            add("c3", "nope.json", "h.example", &none),
            Err(Error::Request(_))
        ));
        assert!(add("c3", "r3.json", "not a host", &none).is_err());
        assert!(
            add(
                &"x".repeat(setup::MAX_ID_CHARS + 1),
                "r3.json",
                "h.example",
                &none
            )
            .is_err()
        );
        let wg_alone = SettingsArgs {
            wg_network: Some("10.1.0.1/24".parse().unwrap()),
            ..Default::default()
        };
        assert!(add("c3", "r3.json", "h.example", &wg_alone).is_err());
        // A CSR changed on the way: its signature no longer verifies.
        let mut damaged = provisioning_shared::request::Request::read(&f.path("r3.json")).unwrap();
        let mut der = cert_tool::decode::pem_or_der(
            Path::new("x"),
            damaged.server_csr.as_bytes(),
            "CERTIFICATE REQUEST",
        )
        .unwrap();
        let at = der.len() - 5;
        der[at] ^= 1;
        damaged.server_csr = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
        std::fs::write(f.path("r4.json"), damaged.to_json()).unwrap();
        let err = add("c3", "r4.json", "h.example", &none).unwrap_err().to_string();
        assert!(err.contains("server_csr"), "{err}");
        assert_eq!(crate::clinic::all(&f.vendor).unwrap().len(), before.len());
        assert_eq!(
            std::fs::read(f.vendor.root_dir().join("index.json")).unwrap(),
            root_index
        );
        let leftovers: Vec<_> = std::fs::read_dir(f.vendor.clinics_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != ".lock")
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
        add("c3", "r3.json", "10.0.0.5", &none).unwrap();
        assert_eq!(
            load(&Layout::of(&f.vendor, "c3")).unwrap().engine_url,
            "https://10.0.0.5"
        );
    }

    #[test]
    fn clinic_set_changes_settings_and_refuses_a_wrong_uplink() {
        let f = Fixture::new();
        let before = f.state();
        let none = SettingsArgs::default();
        let refused = [
            set(&f, None, &none, None),
            set(
                &f,
                None,
                &none,
                Some(&f.uplink_cert(cert_tool::profile::Profile::Server, "srv")),
            ),
            set(&f, None, &none, Some(&f.layout().server())),
            set(&f, Some("*.example.jp"), &none, None),
        ];
        for (r, want) in refused.iter().zip([
            "nothing to change",
            "does not allow client authentication",
            "not for the appliance's uplink key",
            "wildcard",
        ]) {
            let err = r.as_ref().unwrap_err().to_string();
            assert!(err.contains(want), "{want}: {err}");
        }
        assert_eq!(f.state(), before);
        assert!(!f.layout().uplink().exists());

        let uplink = f.uplink_cert(cert_tool::profile::Profile::Uplink, "uplink-ok");
        set(&f, None, &none, Some(&uplink)).unwrap();
        assert!(f.layout().uplink().exists());
        // A new host: a new server certificate for it, and the default URL follows.
        set(&f, Some("engine.example.jp"), &none, None).unwrap();
        let clinic = f.clinic();
        assert_eq!(clinic.engine_url, "https://engine.example.jp");
        let server = cert_tool::decode::certificate(&f.layout().server()).unwrap();
        let summary = cert_tool::inspect::cert(&f.layout().server(), &server).unwrap();
        assert_eq!(summary.subject_alt_names, ["dns:engine.example.jp"]);
        let server_entries: Vec<_> = cert_tool::ca::Ca::open(&f.layout().ca_dir())
            .unwrap()
            .index
            .entries
            .into_iter()
            .filter(|e| e.name == SERVER_NAME)
            .collect();
        assert_eq!(server_entries.len(), 2);
        assert!(server_entries[0].revoked.is_some(), "the old one is superseded");

        let out = f.path("out");
        crate::terminal::add(
            &f.vendor,
            "c1",
            &crate::terminal::NewTerminal {
                name: "wg-1",
                kind: Kind::WireGuard,
                enroll: false,
                token_hours: 24,
                note: None,
                out: &out,
                days: 365,
                psk: true,
                scopes: provisioning_shared::scope::Scopes::ALL,
            },
            || Ok(None),
        )
        .unwrap();
        let before = f.state();
        let narrow = SettingsArgs {
            wg_network: Some("10.88.0.1/24".parse().unwrap()),
            ..Default::default()
        };
        let err = set(&f, None, &narrow, None).unwrap_err().to_string();
        assert!(err.contains("wg-1") && err.contains("10.77.0.2"), "{err}");
        let c2_wg = setup::set(
            &f.vendor,
            "c2",
            &Change {
                name: None,
                engine_host: None,
                settings: &narrow,
                uplink_cert: None,
            },
            || Ok(None),
        )
        .unwrap_err()
        .to_string();
        assert!(c2_wg.contains("--wg-endpoint"), "{c2_wg}");
        assert_eq!(f.state(), before);
    }
}
