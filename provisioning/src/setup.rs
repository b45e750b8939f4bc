//! `provision clinic add` and `clinic set`: a clinic's certificates and settings.
//!
//! `clinic add` turns an appliance's request into a clinic: the vendor root signs the clinic CA
//! (made here, held by the vendor) and the appliance's issuing CA (its key stays on the
//! appliance); the clinic CA signs the gateway's server certificate for the engine's host name.
//! The whole clinic directory is built in a staging directory and renamed into place, so a
//! clinic exists whole or not at all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cert_tool::ca::{self, Ca, Pending};
use cert_tool::files::{self, DirLock, Staged};
use cert_tool::keys::{KeyAlgorithm, Passphrase};
use cert_tool::profile::{Profile, San};
use provisioning_shared::bundle::{Credential, SecretText, Settings, WireGuard};
use provisioning_shared::request::Request;
use provisioning_shared::wireguard::TunnelNet;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::clinic::{self, Clinic, Layout, Locked, SERVER_NAME};
use crate::error::{Error, Result};
use crate::vendor::{TempDir, Vendor, give};

/// Validity of the clinic CA, the issuing CA and the server certificate unless `--days` says.
pub const DEFAULT_DAYS: u32 = 1825;
/// Defaults of `clinic add`.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:443";
pub const DEFAULT_EST_LISTEN: &str = "0.0.0.0:8444";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_WG_LISTEN: &str = "0.0.0.0:51820";
pub const DEFAULT_WG_NETWORK: &str = "10.77.0.1/24";
/// The longest clinic ID: its CAs are named `ID-issuing-ca` and `ID-clinic-ca`, and a name has
/// at most 64 characters.
pub const MAX_ID_CHARS: usize = 64 - "-issuing-ca".len();

/// The settings `clinic add` and `clinic set` take (every one optional in `set`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct SettingsArgs {
    /// The cloud engine's base URL, https:// [clinic add default: https://ENGINE-HOST]
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    pub engine_url: Option<String>,
    /// The CA certificate(s), PEM, that the cloud engine's TLS certificate chains to
    #[arg(long, value_name = "FILE")]
    pub engine_ca: Option<PathBuf>,
    /// The clinic's account at the cloud engine (HTTP Basic), used for people without their own
    #[arg(long, value_name = "USER", requires = "engine_password_file")]
    pub engine_user: Option<String>,
    /// File whose first line is the password of --engine-user
    #[arg(long, value_name = "FILE", requires = "engine_user")]
    pub engine_password_file: Option<PathBuf>,
    /// Where the gateway listens for TLS terminals [clinic add default: 0.0.0.0:443]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Where the gateway listens for EST enrollment [clinic add default: 0.0.0.0:8444]
    #[arg(long, value_name = "ADDR")]
    pub est_listen: Option<SocketAddr>,
    /// Where the gateway serves its metrics [clinic add default: 127.0.0.1:9090]
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// HOST:PORT at which terminals reach the gateway's WireGuard socket; turns WireGuard on
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_endpoint)]
    pub wg_endpoint: Option<String>,
    /// The gateway's WireGuard UDP address [default with --wg-endpoint: 0.0.0.0:51820]
    #[arg(long, value_name = "ADDR")]
    pub wg_listen: Option<SocketAddr>,
    /// The gateway's tunnel address and the terminals' network [default with --wg-endpoint:
    /// 10.77.0.1/24]
    #[arg(long, value_name = "CIDR")]
    pub wg_network: Option<TunnelNet>,
    /// Validity of the certificates signed for the clinic, days (clinic add: the clinic CA, the
    /// issuing CA and the server certificate; clinic set: a new server certificate)
    /// [clinic add default: 1825]
    #[arg(long, value_name = "DAYS")]
    pub days: Option<u32>,
}

/// `--engine-url`: an https URL with a host.
pub fn parse_url(text: &str) -> std::result::Result<String, String> {
    let rest = text
        .strip_prefix("https://")
        .ok_or_else(|| format!("{text:?}: expected https://HOST[:PORT][/PATH] (the uplink is TLS)"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{text:?}: expected https://HOST[:PORT][/PATH]"));
    }
    Ok(text.to_owned())
}

/// `--wg-endpoint`: `HOST:PORT` (a name, an IPv4 address, or `[IPv6]`), port 1 to 65535.
pub fn parse_endpoint(text: &str) -> std::result::Result<String, String> {
    let expected = || format!("{text:?}: expected HOST:PORT, e.g. clinic.example.jp:51820");
    let (host, port) = text.rsplit_once(':').ok_or_else(expected)?;
    let port: u16 = port.parse().map_err(|_| expected())?;
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        host.parse::<std::net::Ipv4Addr>().is_ok() || format!("dns:{host}").parse::<San>().is_ok()
    };
    if port == 0 || !host_ok {
        return Err(expected());
    }
    Ok(text.to_owned())
}

/// The server certificate's name for the engine host: a DNS name, or an IP address.
fn engine_san(host: &str) -> Result<San> {
    let san = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => San::Ip(ip),
        Err(_) => format!("dns:{host}")
            .parse::<San>()
            .map_err(|e| Error::Invalid(format!("--engine-host: {e}")))?,
    };
    if matches!(&san, San::Dns(name) if name.starts_with("*.")) {
        return Err(Error::Invalid(format!(
            "--engine-host {host:?}: expected the engine's own host name, not a wildcard"
        )));
    }
    Ok(san)
}

/// A new clinic, as `clinic add` is asked for it.
#[derive(Debug)]
pub struct NewClinic<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub request: &'a Path,
    pub engine_host: &'a str,
    pub settings: &'a SettingsArgs,
}

/// What `clinic add` made.
#[derive(Debug)]
pub struct Added {
    pub layout: Layout,
    pub clinic: Clinic,
    pub clinic_ca: cert_tool::index::Entry,
    pub issuing_ca: cert_tool::index::Entry,
    pub server: cert_tool::index::Entry,
}

/// Checks a clinic ID: a cert-tool name short enough to name the clinic's CAs.
pub fn check_id(id: &str) -> Result<()> {
    let ok = cert_tool::profile::check_name(id).is_ok() && id.chars().count() <= MAX_ID_CHARS;
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "--clinic {id:?}: not a usable clinic ID: use 1 to {MAX_ID_CHARS} letters, digits, '.', \
             '-', '_' or '@', not starting with '.'"
        )))
    }
}

fn check_clinic_name(name: &str) -> Result<()> {
    provisioning_shared::check_text("--name", name, 200)?;
    if name.trim().is_empty() {
        return Err(Error::Invalid(
            "--name: the clinic's name must not be empty".into(),
        ));
    }
    Ok(())
}

/// `clinic add`: see the module documentation. `passphrase` (called once every refusal that
/// needs no key is behind) unlocks the vendor root and encrypts the new clinic CA key (`None` for
/// a vendor without one).
pub fn add(
    vendor: &Vendor,
    new: &NewClinic<'_>,
    passphrase: impl FnOnce() -> Result<Option<Passphrase>>,
) -> Result<Added> {
    check_id(new.id)?;
    check_clinic_name(new.name)?;
    let request = Request::read(new.request)?;
    let csr = |field: &str, pem_text: &str| {
        let origin = PathBuf::from(format!("{} ({field})", new.request.display()));
        let der = cert_tool::decode::pem_or_der(&origin, pem_text.as_bytes(), "CERTIFICATE REQUEST")?;
        cert_tool::csr::Csr::from_der(&origin, &der)
    };
    let issuing_csr = csr("issuing_ca_csr", &request.issuing_ca_csr)?;
    let server_csr = csr("server_csr", &request.server_csr)?;
    csr("uplink_csr", &request.uplink_csr)?;

    let s = new.settings;
    let days = s.days.unwrap_or(DEFAULT_DAYS);
    let san = engine_san(new.engine_host)?;
    let defaulted =
        |given: Option<SocketAddr>, default: &str| given.map_or(default.to_owned(), |a| a.to_string());
    let wireguard = match &s.wg_endpoint {
        Some(endpoint) => Some(WireGuard {
            listen: defaulted(s.wg_listen, DEFAULT_WG_LISTEN),
            address: s
                .wg_network
                .map_or(DEFAULT_WG_NETWORK.to_owned(), |n| n.to_string()),
            endpoint: endpoint.clone(),
        }),
        None if s.wg_listen.is_some() || s.wg_network.is_some() => {
            return Err(Error::Invalid(
                "--wg-listen and --wg-network go with --wg-endpoint HOST:PORT (which turns WireGuard on)"
                    .into(),
            ));
        }
        None => None,
    };
    let engine_ca = s.engine_ca.as_deref().map(read_engine_ca).transpose()?;
    let mut clinic = Clinic {
        kind: clinic::KIND.into(),
        format: clinic::FORMAT,
        id: new.id.to_owned(),
        name: new.name.to_owned(),
        created: ca::rfc3339(ca::now()),
        appliance: request.appliance.clone(),
        wireguard_public_key: request.wireguard_public_key.clone(),
        bundle_version: 0,
        settings: Settings {
            engine_host: san.to_string().split_once(':').map_or("", |(_, h)| h).to_owned(),
            listen: defaulted(s.listen, DEFAULT_LISTEN),
            est_listen: defaulted(s.est_listen, DEFAULT_EST_LISTEN),
            admin_listen: defaulted(s.admin_listen, DEFAULT_ADMIN_LISTEN),
            wireguard,
        },
        engine_url: String::new(),
        engine_credential: engine_credential(s)?,
        terminals: Vec::new(),
        tokens: Vec::new(),
        users: Vec::new(),
        revoked: Vec::new(),
    };
    clinic.engine_url = s
        .engine_url
        .clone()
        .unwrap_or_else(|| format!("https://{}", host_for_url(&clinic.settings.engine_host)));

    // One `clinic add` at a time: the ID and the appliance are checked against every clinic.
    let clinics = vendor.clinics_dir();
    files::create_dir(&clinics, 0o700)?;
    let _lock = DirLock::acquire(&clinics)?;
    let layout = Layout::of(vendor, new.id);
    if std::fs::symlink_metadata(&layout.dir).is_ok() {
        return Err(Error::ClinicExists {
            id: new.id.to_owned(),
            dir: layout.dir,
        });
    }
    if let Some((_, other)) = clinic::all(vendor)?
        .into_iter()
        .find(|(_, c)| c.appliance == request.appliance)
    {
        return Err(Error::ApplianceTaken {
            request: new.request.to_path_buf(),
            appliance: request.appliance,
            clinic: other.id,
        });
    }

    let mut root = Ca::open(&vendor.root_dir())?;
    let ca_request = |profile: Profile, name: String, sans: Vec<San>, key: &str| ca::Request {
        profile,
        name,
        sans,
        days,
        // A name the root (or clinic CA) knows but no clinic has is left from a `clinic add`
        // that failed after signing: its certificate is superseded, not an obstacle.
        replace: true,
        key: key.to_owned(),
    };
    let clinic_ca_req = ca_request(
        Profile::ClinicCa,
        format!("{}-clinic-ca", new.id),
        vec![],
        "ecdsa-p256",
    );
    let issuing_req = ca_request(
        Profile::IssuingCa,
        format!("{}-issuing-ca", new.id),
        vec![],
        &issuing_csr.key,
    );
    // A day less than its CA, so that it never outlives it by the seconds between the two.
    let server_req = ca::Request {
        days: days.saturating_sub(1).max(1),
        ..ca_request(Profile::Server, SERVER_NAME.into(), vec![san], &server_csr.key)
    };
    root.check(&clinic_ca_req)?;
    root.check(&issuing_req)?;
    let passphrase = passphrase()?;
    let passphrase = passphrase.as_ref();
    let root_signer = root.unlock(give(passphrase, &ca::Layout::new(&vendor.root_dir()).key()))?;

    let staging = TempDir::new(&clinics, new.id)?;
    let staged = Layout {
        dir: staging.path.clone(),
    };
    let ca_key_passphrase = if vendor.encrypted()? { passphrase } else { None };
    ca::init_pending(
        &staged.ca_dir(),
        &clinic_ca_req.name,
        KeyAlgorithm::EcdsaP256,
        ca_key_passphrase,
    )?;
    let clinic_ca_csr = cert_tool::csr::Csr::read(&ca::Layout::new(&staged.ca_dir()).csr())?;
    let clinic_ca_cert = root.sign(&root_signer, &clinic_ca_req, &clinic_ca_csr.public_key)?;
    let issuing_cert = root.sign(&root_signer, &issuing_req, &issuing_csr.public_key)?;
    let clinic_ca_pem = clinic_ca_cert.pem();
    let issuing_pem = issuing_cert.pem();
    // The root records what it signed before anything else is placed: a certificate the root
    // has no record of would be worse than a record of one that was never used.
    let clinic_ca_entry = root.commit(clinic_ca_cert)?;
    let issuing_entry = root.commit(issuing_cert)?;
    drop(root);
    ca::install(&staged.ca_dir(), &clinic_ca_pem)?;
    let mut clinic_ca = Ca::open(&staged.ca_dir())?;
    let signer = clinic_ca.unlock(give(passphrase, &ca::Layout::new(&staged.ca_dir()).key()))?;
    let server = clinic_ca.sign(&signer, &server_req, &server_csr.public_key)?;
    let server_pem = server.pem();
    let server_entry = clinic_ca.commit(server)?;
    drop(clinic_ca);

    let mut outputs = vec![
        (staged.issuing_ca(), issuing_pem, files::PUBLIC),
        (staged.server(), server_pem, files::PUBLIC),
        (staged.uplink_csr(), request.uplink_csr.clone(), files::PUBLIC),
        (staged.request(), request.to_json(), files::PUBLIC),
    ];
    if let Some(pem) = engine_ca {
        outputs.push((staged.engine_ca(), pem, files::PUBLIC));
    }
    for (path, text, mode) in outputs {
        files::write_atomic(&path, text.as_bytes(), mode)?;
    }
    files::write_atomic(&staged.state(), clinic.to_json()?.as_bytes(), files::SECRET)?;
    // The commit point: the whole directory appears at once.
    std::fs::rename(&staging.path, &layout.dir).map_err(Error::io("move into place", &layout.dir))?;
    files::sync_dir(&clinics)?;
    Ok(Added {
        layout,
        clinic,
        clinic_ca: clinic_ca_entry,
        issuing_ca: issuing_entry,
        server: server_entry,
    })
}

/// `[v6]` for an IPv6 engine host in a URL; names and IPv4 as they are.
fn host_for_url(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The engine credential from `--engine-user` and `--engine-password-file`, if given.
fn engine_credential(s: &SettingsArgs) -> Result<Option<Credential>> {
    let (Some(user), Some(file)) = (&s.engine_user, &s.engine_password_file) else {
        return Ok(None);
    };
    provisioning_shared::password::check_upstream_id("--engine-user", user)?;
    let password = Passphrase::from_file(file)?;
    Ok(Some(Credential {
        user: user.clone(),
        password: SecretText::new(password.expose()),
    }))
}

/// `--engine-ca FILE`: one or more certificates, PEM or DER; returned as PEM.
fn read_engine_ca(path: &Path) -> Result<String> {
    let bytes = files::read(path)?;
    let objects = cert_tool::decode::objects(path, &bytes)?;
    let mut pem_text = String::new();
    for o in &objects {
        let parsed = match o.kind {
            cert_tool::decode::Kind::Certificate => X509Certificate::from_der(&o.der).map(|_| ()).ok(),
            _ => None,
        };
        if parsed.is_none() {
            return Err(cert_tool::Error::malformed(
                path,
                "CA certificate file (--engine-ca)",
                "expected only certificates (PEM or DER)",
            )
            .into());
        }
        pem_text.push_str(&pem::encode(&pem::Pem::new("CERTIFICATE", o.der.to_vec())));
    }
    Ok(pem_text)
}

/// What `clinic set` changed, one line each.
#[derive(Debug, Default)]
pub struct Changed {
    pub lines: Vec<String>,
}

/// The changes `clinic set` is asked for.
#[derive(Debug)]
pub struct Change<'a> {
    pub name: Option<&'a str>,
    pub engine_host: Option<&'a str>,
    pub settings: &'a SettingsArgs,
    pub uplink_cert: Option<&'a Path>,
}

impl Change<'_> {
    /// Whether the change signs a new server certificate (and so needs the passphrase).
    pub fn signs(&self) -> bool {
        self.engine_host.is_some() || self.settings.days.is_some()
    }
}

/// `clinic set`: changes settings, installs the uplink certificate, and signs a new server
/// certificate when the engine host or `--days` is given. `passphrase` unlocks the clinic CA
/// (called only then, once the change is otherwise checked).
pub fn set(
    vendor: &Vendor,
    id: &str,
    change: &Change<'_>,
    passphrase: impl FnOnce() -> Result<Option<Passphrase>>,
) -> Result<Changed> {
    let s = change.settings;
    let mut open = Locked::open(vendor, id)?;
    let mut next = open.clinic.clone();
    let mut changed = Changed::default();
    let mut staged = Vec::new();
    let layout = open.layout.clone();

    if let Some(name) = change.name {
        check_clinic_name(name)?;
        next.name = name.to_owned();
        changed.lines.push(format!("name: {name}"));
    }
    let old_host = next.settings.engine_host.clone();
    if let Some(host) = change.engine_host {
        let san = engine_san(host)?;
        next.settings.engine_host = san.to_string().split_once(':').map_or("", |(_, h)| h).to_owned();
        changed.lines.push(format!(
            "engine host: {} (was {old_host})",
            next.settings.engine_host
        ));
        if s.engine_url.is_none() && next.engine_url == format!("https://{}", host_for_url(&old_host)) {
            next.engine_url = format!("https://{}", host_for_url(&next.settings.engine_host));
            changed
                .lines
                .push(format!("engine URL: {} (follows the host)", next.engine_url));
        }
    }
    if let Some(url) = &s.engine_url {
        next.engine_url = url.clone();
        changed.lines.push(format!("engine URL: {url}"));
    }
    if let Some(path) = &s.engine_ca {
        let pem_text = read_engine_ca(path)?;
        staged.push(Staged::new(
            &layout.engine_ca(),
            pem_text.as_bytes(),
            files::PUBLIC,
        )?);
        changed.lines.push(format!(
            "engine CA: from {} (in {})",
            path.display(),
            layout.engine_ca().display()
        ));
    }
    if let Some(credential) = engine_credential(s)? {
        changed
            .lines
            .push(format!("engine credential: user {}", credential.user));
        next.engine_credential = Some(credential);
    }
    for (given, field, what) in [
        (s.listen, &mut next.settings.listen, "TLS listener"),
        (s.est_listen, &mut next.settings.est_listen, "EST listener"),
        (
            s.admin_listen,
            &mut next.settings.admin_listen,
            "metrics listener",
        ),
    ] {
        if let Some(addr) = given {
            *field = addr.to_string();
            changed.lines.push(format!("{what}: {addr}"));
        }
    }
    set_wireguard(&mut next, s, &mut changed)?;
    if let Some(path) = change.uplink_cert {
        let pem_text = check_uplink(&layout, path)?;
        staged.push(Staged::new(&layout.uplink(), pem_text.as_bytes(), files::PUBLIC)?);
        changed.lines.push(format!(
            "uplink certificate: installed in {}",
            layout.uplink().display()
        ));
    }

    let mut server: Option<(Ca, Pending)> = None;
    if change.signs() {
        let request = Request::read(&layout.request())?;
        let origin = PathBuf::from(format!("{} (server_csr)", layout.request().display()));
        let der =
            cert_tool::decode::pem_or_der(&origin, request.server_csr.as_bytes(), "CERTIFICATE REQUEST")?;
        let csr = cert_tool::csr::Csr::from_der(&origin, &der)?;
        let clinic_ca = Ca::open(&layout.ca_dir())?;
        // Without --days, a day less than the clinic CA has left, as at `clinic add`: the
        // default must never be a certificate the CA refuses to sign.
        let left = (clinic_ca.not_after() - ca::now()).whole_days() - 1;
        let days = s
            .days
            .unwrap_or_else(|| u32::try_from(left).unwrap_or(1).clamp(1, DEFAULT_DAYS));
        let req = ca::Request {
            profile: Profile::Server,
            name: SERVER_NAME.into(),
            sans: vec![engine_san(&next.settings.engine_host)?],
            days,
            replace: true,
            key: csr.key.clone(),
        };
        clinic_ca.check(&req)?;
        let passphrase = passphrase()?;
        let signer = clinic_ca.unlock(give(passphrase.as_ref(), &clinic_ca.layout().key()))?;
        let pending = clinic_ca.sign(&signer, &req, &csr.public_key)?;
        staged.push(Staged::new(
            &layout.server(),
            pending.pem().as_bytes(),
            files::PUBLIC,
        )?);
        changed.lines.push(format!(
            "server certificate: signed anew for {} until {} (the appliance gets it with the next bundle)",
            req.sans[0],
            ca::rfc3339(pending.entry.not_after)
        ));
        server = Some((clinic_ca, pending));
    }
    if changed.lines.is_empty() {
        return Err(Error::Invalid(
            "nothing to change: give at least one option (see `kakehashi provision clinic set --help`)"
                .into(),
        ));
    }
    if let Some((mut clinic_ca, pending)) = server {
        clinic_ca.commit(pending)?;
    }
    open.commit(next, staged)?;
    Ok(changed)
}

/// `--wg-endpoint`, `--wg-listen`, `--wg-network` on `clinic set`.
fn set_wireguard(next: &mut Clinic, s: &SettingsArgs, changed: &mut Changed) -> Result<()> {
    if s.wg_endpoint.is_none() && s.wg_listen.is_none() && s.wg_network.is_none() {
        return Ok(());
    }
    let was_on = next.settings.wireguard.is_some();
    let wg = match (&mut next.settings.wireguard, &s.wg_endpoint) {
        (Some(wg), _) => wg,
        (None, Some(endpoint)) => {
            changed.lines.push("WireGuard: on".into());
            next.settings.wireguard.insert(WireGuard {
                listen: DEFAULT_WG_LISTEN.into(),
                address: DEFAULT_WG_NETWORK.into(),
                endpoint: endpoint.clone(),
            })
        }
        (None, None) => {
            return Err(Error::Invalid(format!(
                "clinic {:?} has no WireGuard: turn it on with --wg-endpoint HOST:PORT",
                next.id
            )));
        }
    };
    if let Some(endpoint) = &s.wg_endpoint
        && was_on
    {
        wg.endpoint = endpoint.clone();
        changed.lines.push(format!(
            "WireGuard endpoint: {endpoint} (configs made before name the old one: make them anew)"
        ));
    }
    if let Some(listen) = s.wg_listen {
        wg.listen = listen.to_string();
        changed.lines.push(format!("WireGuard listener: {listen}"));
    }
    if let Some(net) = s.wg_network {
        for t in &next.terminals {
            if let Some(peer) = &t.wireguard
                && (!net.contains(peer.address) || peer.address == net.address)
            {
                return Err(Error::Invalid(format!(
                    "--wg-network {net}: terminal {:?} has tunnel address {}, which the new network \
                     does not leave it; revoke it first, or choose a network that holds it",
                    t.name, peer.address
                )));
            }
        }
        wg.address = net.to_string();
        changed.lines.push(format!("WireGuard network: {net}"));
    }
    Ok(())
}

/// `--uplink-cert FILE`: the cloud operator's certificate for the appliance's uplink CSR. It must
/// be for the CSR's key, a leaf (not a CA) that allows clientAuth, and not expired. Returns PEM.
fn check_uplink(layout: &Layout, path: &Path) -> Result<String> {
    let der = cert_tool::decode::certificate(path)?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| cert_tool::Error::malformed(path, "certificate", e))?;
    let csr = cert_tool::csr::Csr::read(&layout.uplink_csr())?;
    let refuse = |why: String| Error::Invalid(format!("--uplink-cert {}: {why}", path.display()));
    let summary = cert_tool::inspect::cert(path, &der)?;
    if summary.ca {
        return Err(refuse(
            "it is a CA certificate; expected the gateway's client certificate (a leaf)".into(),
        ));
    }
    if cert.public_key().subject_public_key.data.as_ref() != rcgen::PublicKeyData::der_bytes(&csr.public_key)
    {
        return Err(refuse(format!(
            "it is not for the appliance's uplink key (the key of {}): was the right CSR signed?",
            layout.uplink_csr().display()
        )));
    }
    if !summary.extended_key_usage.iter().any(|u| u == "clientAuth") {
        return Err(refuse(format!(
            "it does not allow client authentication (extended key usage: {}); the cloud engine \
             would refuse the gateway: ask for a clientAuth certificate",
            if summary.extended_key_usage.is_empty() {
                "none".to_owned()
            } else {
                summary.extended_key_usage.join(", ")
            }
        )));
    }
    if cert.validity().not_after.to_datetime() <= ca::now() {
        return Err(refuse(format!("it expired on {}", summary.not_after)));
    }
    Ok(pem::encode(&pem::Pem::new("CERTIFICATE", der)))
}
