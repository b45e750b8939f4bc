//! `kakehashi gateway import-bundle FILE`: apply what the vendor sent, or refuse all of it.
//!
//! A bundle is refused (and nothing on the appliance changes) when it is not for this appliance,
//! not signed by the pinned vendor key, changed on the way, not newer than the installed one (no
//! rollback: an old bundle would undo a revocation), for another clinic, or inconsistent with the
//! keys this appliance holds. Every refusal and every import goes to the audit log.
//!
//! Applying, in this order: every check first; then every file staged (written and synced
//! beside its place); the database changes in one transaction; the files renamed into place; the
//! CRLs published; `bundle.json` last. Only `bundle.json` says a version is installed, so an
//! import interrupted by a power cut is finished by running the same import again. A running
//! gateway watches `bundle.json` and reloads certificates, CRL, inventory, people and the
//! engine password when it changes, without dropping connections; a change to `gateway.toml`
//! itself (listeners, the engine's URL) or to the uplink certificate takes a restart, and the
//! import says so.

use std::collections::BTreeSet;
use std::path::Path;

use cert_tool::files::{self, Staged};
use provisioning_shared::bundle::{self, Payload};
use rusqlite::{Connection, TransactionBehavior, params};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{ApplianceError, Layout};
use crate::audit::{AuditLog, Decision, Entry};

/// What `bundle.json` records about the installed bundle.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Installed {
    pub clinic: String,
    pub clinic_name: String,
    pub version: u64,
    pub vendor_key: String,
    /// When the bundle was built, and when it was installed (RFC 3339).
    pub created: String,
    pub installed: String,
    /// SHA-256 of the bundle file, hex.
    pub sha256: String,
}

/// What an import did, for the command's output.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub installed: Installed,
    pub previous_version: Option<u64>,
    pub terminals: usize,
    pub users: usize,
    pub tokens_added: usize,
    pub removed_terminals: Vec<String>,
    pub removed_users: Vec<String>,
    pub revoked: Vec<String>,
    /// Files whose change takes a restart of a running gateway.
    pub restart_for: Vec<String>,
    /// Whether this import pinned the vendor key (the first one with `--trust-vendor`).
    pub pinned: bool,
}

/// Imports `file` into the appliance at `dir`, auditing the decision either way.
pub fn import(dir: &Path, file: &Path, trust_vendor: Option<&str>) -> Result<Report, ApplianceError> {
    let layout = Layout::new(dir);
    if !layout.request().exists() {
        return Err(ApplianceError::Refused(format!(
            "{} is not an initialized appliance (no request.json): run `kakehashi gateway init \
             --data-dir {}` first",
            dir.display(),
            dir.display()
        )));
    }
    let source = format!("import-bundle {}", file.display());
    let result = apply(&layout, file, trust_vendor);
    let entry = match &result {
        Ok(r) => Entry::new(
            Decision::Allow,
            "bundle",
            &source,
            &format!(
                "bundle installed: clinic {} version {} ({} terminals, {} users, {} revoked)",
                r.installed.clinic,
                r.installed.version,
                r.terminals,
                r.users,
                r.revoked.len()
            ),
        ),
        Err(e) => Entry::new(Decision::Deny, "bundle", &source, &format!("bundle refused: {e}")),
    };
    let audit = AuditLog::open(dir)?;
    audit.record_blocking(entry);
    let closed = audit.close_blocking();
    super::match_owner(dir);
    closed?;
    result
}

fn apply(layout: &Layout, file: &Path, trust_vendor: Option<&str>) -> Result<Report, ApplianceError> {
    let refused = |m: String| ApplianceError::Refused(m);
    let bytes = read_limited(file)?;
    let identity = provisioning_shared::device::Identity::read(&layout.device_key()).map_err(refused)?;
    let pinned = match std::fs::read_to_string(layout.vendor_pin()) {
        Ok(text) => Some(text.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(refused(format!("{}: {e}", layout.vendor_pin().display()))),
    };
    let trust = trust_vendor.map(super::init::read_pin).transpose()?;
    if let (Some(pinned), Some(trust)) = (&pinned, &trust)
        && pinned != trust
    {
        return Err(refused(format!(
            "--trust-vendor {trust} is not the vendor key this appliance has pinned ({pinned}); \
             a pinned key is not replaced by an import"
        )));
    }
    let opened =
        bundle::open(&bytes, &identity.0, pinned.as_deref().or(trust.as_deref())).map_err(|e| match e {
            // Nothing pinned yet: the key it was checked against is the one the operator typed.
            bundle::BundleError::OtherVendor { found, pinned: given } if pinned.is_none() => {
                refused(format!(
                    "the bundle is signed by key {found}, not by the key given with --trust-vendor \
             ({given}): check the fingerprint with your vendor"
                ))
            }
            e => e.into(),
        })?;
    if pinned.is_none() && trust.is_none() {
        return Err(refused(format!(
            "no vendor key is pinned on this appliance yet; the bundle is signed by {}: if your \
             vendor confirms that fingerprint, run the import again with --trust-vendor {}",
            opened.vendor_key, opened.vendor_key
        )));
    }
    let payload = opened.payload;
    let previous = read_installed(layout)?;
    if let Some(prev) = &previous {
        if prev.clinic != payload.clinic {
            return Err(refused(format!(
                "the bundle is for clinic {:?}, but this appliance serves clinic {:?}",
                payload.clinic, prev.clinic
            )));
        }
        if payload.version <= prev.version {
            return Err(refused(format!(
                "bundle version {} is not newer than the installed version {} (built {}): an older \
                 bundle would undo later changes, such as revocations",
                payload.version, prev.version, prev.created
            )));
        }
    }
    let checked = check(layout, &payload)?;
    // The configuration the settings make must be one the gateway takes (its keys, addresses,
    // the tunnel network, the engine URL), or nothing is applied.
    let config_text = render_config(&payload);
    toml::from_str::<crate::config::Config>(&config_text)
        .map_err(|e| refused(format!("the bundle's settings make an invalid gateway.toml: {e}")))?;

    // Files: staged first, renamed into place after the database commits.
    let certs = &payload.certificates;
    let uplink = certs.uplink.as_deref().unwrap_or_default();
    let outputs = [
        (layout.config(), config_text.as_bytes(), files::PUBLIC),
        (
            layout.server_cert(),
            checked.server_chain.as_bytes(),
            files::PUBLIC,
        ),
        (layout.client_ca(), checked.anchors.as_bytes(), files::PUBLIC),
        (layout.uplink_cert(), uplink.as_bytes(), files::PUBLIC),
        (layout.engine_ca(), payload.engine.ca.as_bytes(), files::PUBLIC),
        (layout.vendor_root(), certs.vendor_root.as_bytes(), files::PUBLIC),
    ];
    let restart_for = match previous {
        Some(_) => needs_restart(layout, &config_text, uplink, &payload.engine.ca),
        None => Vec::new(),
    };
    let mut staged = Vec::new();
    for (path, data, mode) in &outputs {
        staged.push(Staged::new(path, data, *mode)?);
    }
    let password = zeroize::Zeroizing::new(format!("{}\n", payload.engine.password.expose()));
    staged.push(Staged::new(
        &layout.upstream_password(),
        password.as_bytes(),
        files::SECRET,
    )?);

    let conn = crate::store::open(&layout.dir)?;
    let changes = store::apply(&conn, &payload)?;
    for s in staged {
        s.commit()?;
    }
    cert_tool::ca::install(&layout.issuing_ca(), &certs.issuing_ca)?;
    cert_tool::ca::publish_crl(&layout.crl(), &certs.clinic_crl)?;
    publish_issuing_crl(layout, &payload.revoked)?;

    let installed = Installed {
        clinic: payload.clinic.clone(),
        clinic_name: payload.clinic_name.clone(),
        version: payload.version,
        vendor_key: payload.vendor_key.clone(),
        created: payload.created.clone(),
        installed: cert_tool::ca::rfc3339(cert_tool::ca::now()),
        sha256: cert_tool::ca::sha256_hex(&bytes),
    };
    let pinned_now = pinned.is_none();
    if pinned_now {
        files::write_atomic(
            &layout.vendor_pin(),
            format!("{}\n", payload.vendor_key).as_bytes(),
            files::PUBLIC,
        )?;
    }
    let json = serde_json::to_string_pretty(&installed).unwrap_or_default() + "\n";
    files::write_atomic(&layout.installed(), json.as_bytes(), files::PUBLIC)?;
    Ok(Report {
        previous_version: previous.map(|p| p.version),
        terminals: payload.terminals.len(),
        users: payload.users.len(),
        tokens_added: changes.tokens_added,
        removed_terminals: changes.removed_terminals,
        removed_users: changes.removed_users,
        revoked: payload.revoked.clone(),
        restart_for,
        pinned: pinned_now,
        installed,
    })
}

/// The installed bundle's record, if any.
pub fn read_installed(layout: &Layout) -> Result<Option<Installed>, ApplianceError> {
    match std::fs::read(layout.installed()) {
        Ok(text) => serde_json::from_slice(&text).map(Some).map_err(|e| {
            ApplianceError::Refused(format!("{}: unreadable ({e})", layout.installed().display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ApplianceError::Refused(format!(
            "{}: {e}",
            layout.installed().display()
        ))),
    }
}

fn read_limited(file: &Path) -> Result<Vec<u8>, ApplianceError> {
    use std::io::Read as _;
    let f = std::fs::File::open(file)
        .map_err(|e| ApplianceError::Refused(format!("{}: cannot read: {e}", file.display())))?;
    let mut bytes = Vec::new();
    f.take(bundle::MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ApplianceError::Refused(format!("{}: cannot read: {e}", file.display())))?;
    if bytes.len() as u64 > bundle::MAX_BYTES {
        return Err(bundle::BundleError::TooLarge.into());
    }
    Ok(bytes)
}

/// What the checks produced for the files.
struct Checked {
    /// The server certificate, then the clinic CA.
    server_chain: String,
    /// The clinic CA and the issuing CA: the terminals' trust anchors.
    anchors: String,
}

/// Everything in the payload that can be checked before anything is written: the certificates
/// chain as they must and carry this appliance's keys; the settings parse; names, keys and
/// hashes are well formed.
fn check(layout: &Layout, p: &Payload) -> Result<Checked, ApplianceError> {
    let bad = |what: &str, why: String| ApplianceError::Refused(format!("the bundle's {what}: {why}"));
    let c = &p.certificates;
    let root = one_cert("vendor_root", &c.vendor_root)?;
    let clinic_ca = one_cert("clinic_ca", &c.clinic_ca)?;
    let issuing = one_cert("issuing_ca", &c.issuing_ca)?;
    let server = one_cert("server", &c.server)?;
    let uplink = one_cert(
        "uplink",
        c.uplink.as_deref().ok_or_else(|| {
            bad(
                "uplink certificate",
                "missing: the vendor installs it (`provision clinic set --uplink-cert`) before building"
                    .into(),
            )
        })?,
    )?;
    let engine_ca = pem::parse_many(&p.engine.ca).map_err(|e| bad("engine CA", e.to_string()))?;
    if engine_ca.is_empty() {
        return Err(bad("engine CA", "no certificate".into()));
    }
    with_cert(&root, "vendor_root", |root| {
        let signed_by_root = |der: &[u8], what: &str| {
            with_cert(der, what, |cert| {
                if !cert.is_ca() {
                    return Err(bad(what, "not a CA certificate".into()));
                }
                cert.verify_signature(Some(root.public_key()))
                    .map_err(|_| bad(what, "not signed by the bundle's vendor root".into()))
            })
        };
        signed_by_root(&clinic_ca, "clinic_ca")?;
        signed_by_root(&issuing, "issuing_ca")
    })?;
    // The issuing CA's key never left this appliance: its certificate must be for that key.
    cert_tool::ca::check_install(&layout.issuing_ca(), &c.issuing_ca).map_err(|e| {
        bad(
            "issuing_ca",
            format!("{e} (a bundle built from another appliance's request?)"),
        )
    })?;
    with_cert(&clinic_ca, "clinic_ca", |ca| {
        with_cert(&server, "server certificate", |cert| {
            cert.verify_signature(Some(ca.public_key()))
                .map_err(|_| bad("server certificate", "not signed by the clinic CA".into()))?;
            same_key(cert, &layout.server_key(), "server certificate")
        })?;
        let crl_der = pem::parse(&c.clinic_crl).map_err(|e| bad("clinic CRL", e.to_string()))?;
        let (_, crl) =
            x509_parser::parse_x509_crl(crl_der.contents()).map_err(|e| bad("clinic CRL", e.to_string()))?;
        crl.verify_signature(ca.public_key())
            .map_err(|_| bad("clinic CRL", "not signed by the clinic CA".into()))
    })?;
    with_cert(&uplink, "uplink certificate", |cert| {
        same_key(cert, &layout.uplink_key(), "uplink certificate")
    })?;

    let s = &p.settings;
    for (what, addr) in [
        ("settings.listen", &s.listen),
        ("settings.est_listen", &s.est_listen),
        ("settings.admin_listen", &s.admin_listen),
    ] {
        addr.parse::<std::net::SocketAddr>()
            .map_err(|_| bad(what, format!("{addr:?} is not an address:port")))?;
    }
    let net = match &s.wireguard {
        Some(wg) => {
            wg.listen.parse::<std::net::SocketAddr>().map_err(|_| {
                bad(
                    "settings.wireguard.listen",
                    format!("{:?} is not an address:port", wg.listen),
                )
            })?;
            Some(
                wg.address
                    .parse::<crate::config::TunnelNet>()
                    .map_err(|e| bad("settings.wireguard.address", e.to_string()))?,
            )
        }
        None => None,
    };
    if !p.engine.url.starts_with("https://") {
        return Err(bad(
            "engine.url",
            format!("{:?} is not an https:// URL", p.engine.url),
        ));
    }
    crate::store::users::check_upstream_id(&p.engine.user).map_err(|e| bad("engine.user", e.to_string()))?;
    let mut names = BTreeSet::new();
    for t in &p.terminals {
        crate::store::inventory::check_name(&t.name).map_err(|e| bad("terminal", e.to_string()))?;
        if !names.insert(&t.name) {
            return Err(bad("terminals", format!("{:?} is listed twice", t.name)));
        }
        if let Some(peer) = &t.wireguard {
            let net = net.as_ref().ok_or_else(|| {
                bad(
                    &format!("terminal {:?}", t.name),
                    "a WireGuard peer, but no settings.wireguard".into(),
                )
            })?;
            bundle::decode_key32(&peer.public_key)
                .map_err(|e| bad(&format!("terminal {:?} public key", t.name), e))?;
            if let Some(psk) = &peer.preshared_key {
                bundle::decode_key32(psk.expose())
                    .map_err(|e| bad(&format!("terminal {:?} preshared key", t.name), e))?;
            }
            if !net.contains(peer.address) || peer.address == net.address {
                return Err(bad(
                    &format!("terminal {:?}", t.name),
                    format!(
                        "tunnel address {} is not a terminal address in {net}",
                        peer.address
                    ),
                ));
            }
        }
    }
    for u in &p.users {
        crate::store::users::check_id(&u.id).map_err(|e| bad("user", e.to_string()))?;
        provisioning_shared::password::check_hash(&u.hash)
            .map_err(|e| bad(&format!("user {:?}", u.id), format!("password hash: {e}")))?;
        if let Some(up) = &u.upstream {
            crate::store::users::check_upstream_id(&up.user)
                .map_err(|e| bad(&format!("user {:?} upstream", u.id), e.to_string()))?;
        }
    }
    for t in &p.tokens {
        crate::store::inventory::check_name(&t.name).map_err(|e| bad("token", e.to_string()))?;
        let hash = hex::decode(&t.sha256).ok().filter(|h| h.len() == 32);
        if hash.is_none() {
            return Err(bad(
                &format!("token for {:?}", t.name),
                "sha256 is not 64 hex digits".into(),
            ));
        }
        for (what, at) in [("created", &t.created), ("expires", &t.expires)] {
            time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                .map_err(|e| bad(&format!("token for {:?} {what}", t.name), e.to_string()))?;
        }
    }
    Ok(Checked {
        server_chain: format!("{}{}", ensure_newline(&c.server), c.clinic_ca),
        anchors: format!("{}{}", ensure_newline(&c.clinic_ca), c.issuing_ca),
    })
}

/// What this import changes that a running gateway reads only at start: the settings of
/// `gateway.toml` by key (its comments, which name the bundle version, change every time and do
/// not count), the uplink certificate, the engine's CA.
fn needs_restart(layout: &Layout, config: &str, uplink: &str, engine_ca: &str) -> Vec<String> {
    let table = |text: &str| text.parse::<toml::Table>().ok();
    let installed = std::fs::read_to_string(layout.config()).ok();
    let mut changed = match (installed.as_deref().and_then(table), table(config)) {
        (Some(old), Some(new)) => {
            let mut keys = Vec::new();
            changed_keys("", &toml::Value::Table(old), &toml::Value::Table(new), &mut keys);
            keys.into_iter()
                .map(|k| format!("{} ({k})", layout.config().display()))
                .collect()
        }
        _ => vec![layout.config().display().to_string()],
    };
    for (path, data, what) in [
        (layout.uplink_cert(), uplink, "the uplink certificate"),
        (layout.engine_ca(), engine_ca, "the engine's CA"),
    ] {
        if std::fs::read(&path).ok().as_deref() != Some(data.as_bytes()) {
            changed.push(format!("{} ({what})", path.display()));
        }
    }
    changed
}

/// The dotted keys (`upstream.url`, `listener[0].address`) whose values differ between `old` and
/// `new`, or that only one has.
fn changed_keys(at: &str, old: &toml::Value, new: &toml::Value, out: &mut Vec<String>) {
    use toml::Value::{Array, Table};
    match (old, new) {
        (Table(a), Table(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let here = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => changed_keys(&here, x, y, out),
                    _ => out.push(here),
                }
            }
        }
        (Array(a), Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                changed_keys(&format!("{at}[{i}]"), x, y, out);
            }
        }
        (a, b) if a != b => out.push(at.to_owned()),
        _ => {}
    }
}

fn ensure_newline(text: &str) -> String {
    if text.ends_with('\n') {
        text.to_owned()
    } else {
        format!("{text}\n")
    }
}

/// The DER of the one certificate a PEM field holds.
fn one_cert(what: &str, text: &str) -> Result<Vec<u8>, ApplianceError> {
    let block = pem::parse(text)
        .map_err(|e| ApplianceError::Refused(format!("the bundle's {what}: not a PEM certificate: {e}")))?;
    if block.tag() != "CERTIFICATE" {
        return Err(ApplianceError::Refused(format!(
            "the bundle's {what}: a PEM {}, expected CERTIFICATE",
            block.tag()
        )));
    }
    Ok(block.into_contents())
}

fn with_cert<T>(
    der: &[u8],
    what: &str,
    f: impl FnOnce(&X509Certificate<'_>) -> Result<T, ApplianceError>,
) -> Result<T, ApplianceError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| ApplianceError::Refused(format!("the bundle's {what}: {e}")))?;
    f(&cert)
}

/// Refuses a certificate that is not for the key at `key_path` (made by `gateway init`).
fn same_key(cert: &X509Certificate<'_>, key_path: &Path, what: &str) -> Result<(), ApplianceError> {
    let text = zeroize::Zeroizing::new(files::read(key_path)?);
    let key = cert_tool::keys::open(key_path, &text, || {
        Err(cert_tool::Error::Refused(format!(
            "{} is encrypted",
            key_path.display()
        )))
    })?;
    if cert.public_key().subject_public_key.data.as_ref() != key.0.public_key_raw() {
        return Err(ApplianceError::Refused(format!(
            "the bundle's {what} is not for this appliance's key {} (a bundle built from another \
             appliance's request?)",
            key_path.display()
        )));
    }
    Ok(())
}

/// Revokes on the issuing CA what the vendor revoked (an EST enrollment), and publishes its CRL
/// into `crl.pem` beside the clinic CA's.
fn publish_issuing_crl(layout: &Layout, revoked: &[String]) -> Result<(), ApplianceError> {
    let mut ca = cert_tool::ca::Ca::open(&layout.issuing_ca())?;
    let signer = ca.unlock(|| cert_tool::keys::Passphrase::from_file(&layout.issuing_passphrase()))?;
    let now = cert_tool::ca::now();
    for name in revoked {
        if !ca.index.valid_named(name, now).is_empty() {
            ca.revoke(
                &cert_tool::ca::Target::Name(name.clone()),
                cert_tool::index::Reason::CessationOfOperation,
            )?;
        }
    }
    let crl = ca.crl(&signer, ISSUING_CRL_DAYS)?;
    cert_tool::ca::publish_crl(&layout.crl(), &crl.pem())?;
    Ok(())
}

/// The issuing CA's CRL lifetime when an import publishes it (the `[est] crl_days` default).
const ISSUING_CRL_DAYS: u32 = 30;

/// `gateway.toml` for the bundle's settings; every path is relative to the data directory. Every
/// value from the bundle is written as a TOML string (quoted and escaped), and comments name
/// only the version, so no setting can add a line of its own.
pub(crate) fn render_config(p: &Payload) -> String {
    let q = |v: &str| toml::Value::String(v.to_owned()).to_string();
    let s = &p.settings;
    let wireguard = match &s.wireguard {
        Some(wg) => format!(
            "\n[wireguard]\nlisten = {}\naddress = {}\nendpoint = {}\n",
            q(&wg.listen),
            q(&wg.address),
            q(&wg.endpoint)
        ),
        None => String::new(),
    };
    format!(
        r#"# Written by `kakehashi gateway import-bundle` from bundle version {version} (bundle.json
# says which clinic). The next import rewrites this file: change settings through the vendor.
# Every key is explained in docs/configuration.md.
data_dir = "."

[tls]
cert = "server.pem"           # the gateway's server certificate, then the clinic CA
key = "server.key"
client_ca = "client-ca.pem"   # the clinic CA and the appliance's issuing CA
crl = "crl.pem"               # both CAs' CRLs

[[listener]]
address = {listen}
kind = "api"

[upstream]
url = {url}
ca = "engine-ca.pem"
cert = "uplink.pem"
key = "uplink.key"
user = {user}
password_file = "upstream.password"
{wireguard}
[est]
listen = {est}
ca_dir = "issuing-ca"
passphrase_file = "issuing-ca.passphrase"

[admin]
address = {admin}
"#,
        version = p.version,
        listen = q(&s.listen),
        url = q(&p.engine.url),
        user = q(&p.engine.user),
        est = q(&s.est_listen),
        admin = q(&s.admin_listen),
    )
}

/// What a bundle changes in `gateway.db`, in one transaction.
mod store {
    use super::*;

    #[derive(Debug, Default)]
    pub struct Changes {
        pub removed_terminals: Vec<String>,
        pub removed_users: Vec<String>,
        pub tokens_added: usize,
    }

    /// The vendor's declaration wins for what it declares (`origin = 'bundle'`), except that a
    /// terminal disabled on the appliance (`terminal disable|revoke`) stays disabled; what the
    /// bundle no longer declares but an earlier one did is removed; what was made on the
    /// appliance is left alone, except a terminal the vendor revoked.
    pub fn apply(conn: &Connection, p: &Payload) -> Result<Changes, ApplianceError> {
        let path = crate::store::db_path(conn);
        let sql = |what: &'static str| crate::store::StoreError::sqlite(&path, what);
        let tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
            .map_err(sql("begin a transaction"))?;
        let now = crate::store::now_text();
        let mut changes = Changes::default();

        let declared: BTreeSet<&str> = p.terminals.iter().map(|t| t.name.as_str()).collect();
        let revoked: BTreeSet<&str> = p.revoked.iter().map(String::as_str).collect();
        let existing: Vec<(String, String)> = {
            let mut q = tx
                .prepare("SELECT name, origin FROM terminals")
                .map_err(sql("read the terminals"))?;
            q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect())
                .map_err(sql("read the terminals"))?
        };
        for (name, origin) in &existing {
            let gone =
                (origin == "bundle" && !declared.contains(name.as_str())) || revoked.contains(name.as_str());
            if gone {
                tx.execute("DELETE FROM terminals WHERE name = ?1", params![name])
                    .map_err(sql("remove a terminal"))?;
                changes.removed_terminals.push(name.clone());
            }
        }
        for name in &revoked {
            tx.execute("DELETE FROM enrollment_tokens WHERE name = ?1", params![name])
                .map_err(sql("remove an enrollment token"))?;
        }
        // Clear the WireGuard identities first, so that keys and addresses may move between
        // terminals in one bundle without tripping the unique indexes half way.
        // A terminal with a token from the vendor that has not enrolled yet is registered by
        // its enrollment (EST), not by the bundle: until then its token waits for it.
        let mut pending = BTreeSet::new();
        for t in &p.tokens {
            let registered: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM terminals WHERE name = ?1)",
                    params![t.name],
                    |r| r.get(0),
                )
                .map_err(sql("read the terminals"))?;
            if !registered && !revoked.contains(t.name.as_str()) {
                pending.insert(t.name.as_str());
            }
        }
        let terminals: Vec<_> = p
            .terminals
            .iter()
            .filter(|t| !pending.contains(t.name.as_str()))
            .collect();
        for t in &terminals {
            tx.execute(
                "UPDATE terminals SET wg_public_key = NULL, wg_preshared_key = NULL, wg_address = NULL \
                 WHERE name = ?1",
                params![t.name],
            )
            .map_err(sql("update a terminal"))?;
        }
        for t in &terminals {
            let wg = t.wireguard.as_ref();
            tx.execute(
                "INSERT INTO terminals (name, enabled, added, note, wg_public_key, wg_preshared_key, wg_address, origin, scopes) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'bundle', ?8) \
                 ON CONFLICT (name) DO UPDATE SET \
                 enabled = excluded.enabled AND NOT (terminals.origin = 'local' AND NOT terminals.enabled), \
                 origin = CASE WHEN terminals.origin = 'local' AND NOT terminals.enabled THEN 'local' ELSE 'bundle' END, \
                 note = excluded.note, wg_public_key = excluded.wg_public_key, \
                 wg_preshared_key = excluded.wg_preshared_key, wg_address = excluded.wg_address, \
                 scopes = excluded.scopes",
                params![
                    t.name,
                    t.enabled,
                    now,
                    t.note,
                    wg.map(|w| w.public_key.as_str()),
                    wg.and_then(|w| w.preshared_key.as_ref()).map(|k| k.expose()),
                    wg.map(|w| w.address.to_string()),
                    crate::store::scopes_text(t.scopes),
                ],
            )
            .map_err(|e| {
                ApplianceError::Refused(format!(
                    "terminal {:?} cannot be registered ({e}): its WireGuard key or tunnel address \
                     belongs to another terminal on this appliance",
                    t.name
                ))
            })?;
        }

        let declared_users: BTreeSet<&str> = p.users.iter().map(|u| u.id.as_str()).collect();
        let bundle_users: Vec<String> = {
            let mut q = tx
                .prepare("SELECT id FROM users WHERE origin = 'bundle'")
                .map_err(sql("read the users"))?;
            q.query_map([], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(sql("read the users"))?
        };
        for id in bundle_users {
            if !declared_users.contains(id.as_str()) {
                tx.execute("DELETE FROM users WHERE id = ?1", params![id])
                    .map_err(sql("remove a user"))?;
                changes.removed_users.push(id);
            }
        }
        for u in &p.users {
            let up = u.upstream.as_ref();
            tx.execute(
                "INSERT INTO users (id, hash, locked, upstream_id, upstream_password, created, changed, origin, scopes) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, 'bundle', ?7) \
                 ON CONFLICT (id) DO UPDATE SET hash = excluded.hash, locked = excluded.locked, \
                 upstream_id = excluded.upstream_id, upstream_password = excluded.upstream_password, \
                 changed = CASE WHEN users.hash = excluded.hash AND users.locked = excluded.locked \
                     AND users.upstream_id IS excluded.upstream_id \
                     AND users.upstream_password IS excluded.upstream_password \
                     AND users.scopes IS excluded.scopes \
                     THEN users.changed ELSE excluded.changed END, \
                 origin = 'bundle', scopes = excluded.scopes",
                params![
                    u.id,
                    u.hash,
                    u.locked,
                    up.map(|c| c.user.as_str()),
                    up.map(|c| c.password.expose()),
                    now,
                    crate::store::scopes_text(u.scopes),
                ],
            )
            .map_err(sql("store a user"))?;
        }

        for t in p.tokens.iter().filter(|t| pending.contains(t.name.as_str())) {
            let hash = hex::decode(&t.sha256).unwrap_or_default();
            // A token already here with the same hash keeps its state (used, wrong tries); a new
            // token from the vendor replaces an unused one.
            let added = tx
                .execute(
                    "INSERT INTO enrollment_tokens (name, hash, created, expires) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (name) DO UPDATE SET hash = excluded.hash, created = excluded.created, \
                     expires = excluded.expires, failures = 0 \
                     WHERE enrollment_tokens.hash != excluded.hash AND enrollment_tokens.used IS NULL",
                    params![t.name, hash, t.created, t.expires],
                )
                .map_err(sql("store an enrollment token"))?;
            changes.tokens_added += added;
        }
        tx.commit().map_err(sql("commit the bundle"))?;
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_is_asked_for_by_the_settings_that_changed_not_by_comments() {
        let old = "# bundle version 1\n[[listener]]\naddress = \"0.0.0.0:443\"\n[upstream]\nurl = \"https://a\"\nuser = \"u\"\n";
        let same = "# bundle version 2\n[[listener]]\naddress = \"0.0.0.0:443\"\n[upstream]\nurl = \"https://a\"\nuser = \"u\"\n";
        let moved = "[[listener]]\naddress = \"0.0.0.0:8443\"\n[upstream]\nurl = \"https://b\"\n[est]\nlisten = \"x\"\n";
        let keys = |a: &str, b: &str| {
            let mut out = Vec::new();
            changed_keys(
                "",
                &toml::Value::Table(a.parse().unwrap()),
                &toml::Value::Table(b.parse().unwrap()),
                &mut out,
            );
            out
        };
        assert!(keys(old, same).is_empty());
        assert_eq!(
            keys(old, moved),
            ["est", "listener[0].address", "upstream.url", "upstream.user"]
        );
    }

    /// A value with quotes, a newline or a `[table]` stays one TOML string.
    #[test]
    fn settings_cannot_add_lines_to_gateway_toml() {
        let payload: Payload = serde_json::from_value(serde_json::json!({
            "format": 1, "clinic": "c1\n[admin]", "clinic_name": "C", "version": 7,
            "created": "2026-11-22T00:00:00Z\nlisten = \"0.0.0.0:1\"", "appliance": "age1x",
            "vendor_key": "SHA256:00",
            "certificates": {"vendor_root": "", "clinic_ca": "", "clinic_crl": "", "issuing_ca": "",
                             "server": "", "uplink": null},
            "settings": {"engine_host": "e\n[x]", "listen": "127.0.0.1:8443",
                         "est_listen": "127.0.0.1:8444", "admin_listen": "127.0.0.1:9090",
                         "wireguard": null},
            "engine": {"url": "https://e.test", "ca": "", "user": "or\"master\n[admin]",
                       "password": "pw"},
            "terminals": [], "tokens": [], "users": [], "revoked": []
        }))
        .unwrap();
        let text = render_config(&payload);
        let config: crate::config::Config = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(config.upstream.user, "or\"master\n[admin]");
        assert_eq!(config.admin.address, Some("127.0.0.1:9090".parse().unwrap()));
    }
}
