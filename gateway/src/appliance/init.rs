//! `kakehashi gateway init --data-dir DIR`: the appliance makes its own keys.
//!
//! Every private key of the appliance is made here and stays here: the device identity (bundles
//! are encrypted to it), the clinic's issuing CA (encrypted at rest), the TLS server key, the
//! uplink key and the WireGuard key. The vendor receives `request.json` with their public parts:
//! nothing in it is secret.

use std::path::Path;

use cert_tool::files::{self, Staged};
use cert_tool::keys::{self, KeyAlgorithm, Passphrase};
use provisioning_shared::request::{self, Request};

use super::{ApplianceError, Layout};

/// The issuing CA's common name; the vendor's signature decides what it may do.
const ISSUING_CA_NAME: &str = "kakehashi-issuing-ca";

/// Initializes `dir` (created 0700 if missing) and returns the request written to
/// `request.json`. `vendor_key` pins the vendor's bundle-signing key at once: a `SHA256:…`
/// fingerprint, or a file holding one (the vendor's `vendor-key.txt`).
pub fn init(dir: &Path, name: &str, vendor_key: Option<&str>) -> Result<Request, ApplianceError> {
    let layout = Layout::new(dir);
    if layout.request().exists() {
        return Err(ApplianceError::Refused(format!(
            "{} is already initialized ({} exists); its keys are kept",
            dir.display(),
            layout.request().display()
        )));
    }
    let leftovers: Vec<_> = [
        layout.device_key(),
        layout.issuing_ca(),
        layout.server_key(),
        layout.uplink_key(),
        layout.wireguard_key(),
    ]
    .into_iter()
    .filter(|p| p.exists())
    .collect();
    if !leftovers.is_empty() {
        return Err(ApplianceError::Refused(format!(
            "{} holds keys but no request.json (an interrupted init?): {}; move them away and run \
             init again",
            dir.display(),
            leftovers
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    cert_tool::profile::check_name(name).map_err(|e| {
        ApplianceError::Refused(format!(
            "--name is the certificate name of this appliance's server and uplink requests, not \
             the clinic's name for people (the vendor gives that): {e}; e.g. --name sakura-gw"
        ))
    })?;
    let pin = vendor_key.map(read_pin).transpose()?;
    files::create_dir(dir, crate::store::DIR_MODE)?;

    let device = provisioning_shared::device::Identity::generate();
    let passphrase = provisioning_shared::password::generate()
        .map(|p| Passphrase::new(p.to_string()))
        .map_err(|e| ApplianceError::Refused(e.to_string()))?;
    let server = KeyAlgorithm::EcdsaP256.generate()?;
    let uplink = KeyAlgorithm::EcdsaP256.generate()?;
    let server_csr = cert_tool::csr::create(name, &server)?;
    let uplink_csr = cert_tool::csr::create(name, &uplink)?;
    // Staged (written and synced beside their places) before anything is renamed into place.
    let mut staged = vec![
        Staged::new(&layout.device_key(), device.to_text().as_bytes(), files::SECRET)?,
        Staged::new(
            &layout.issuing_passphrase(),
            format!("{}\n", passphrase.expose()).as_bytes(),
            files::SECRET,
        )?,
        Staged::new(
            &layout.server_key(),
            keys::seal(&server, None)?.as_bytes(),
            files::SECRET,
        )?,
        Staged::new(
            &layout.uplink_key(),
            keys::seal(&uplink, None)?.as_bytes(),
            files::SECRET,
        )?,
    ];
    if let Some(pin) = &pin {
        staged.push(Staged::new(
            &layout.vendor_pin(),
            format!("{pin}\n").as_bytes(),
            files::PUBLIC,
        )?);
    }
    for s in staged {
        s.commit()?;
    }
    let issuing_csr = cert_tool::ca::init_pending(
        &layout.issuing_ca(),
        ISSUING_CA_NAME,
        KeyAlgorithm::EcdsaP256,
        Some(&passphrase),
    )?;
    let wireguard = crate::doors::wireguard::keys::load_or_create(&layout.wireguard_key())?;
    let request = Request {
        kind: request::KIND.into(),
        format: request::FORMAT,
        created: cert_tool::ca::rfc3339(cert_tool::ca::now()),
        appliance: device.recipient(),
        issuing_ca_csr: issuing_csr,
        server_csr,
        uplink_csr,
        wireguard_public_key: wireguard.public_key().to_base64(),
        vendor_key: pin,
    };
    // Last: request.json is what makes the directory an initialized appliance.
    files::write_atomic(&layout.request(), request.to_json().as_bytes(), files::PUBLIC)?;
    super::match_owner(dir);
    Ok(request)
}

/// A vendor key fingerprint given directly (`SHA256:` and 64 hex digits) or in a file.
pub fn read_pin(given: &str) -> Result<String, ApplianceError> {
    let text = if given.starts_with("SHA256:") {
        given.to_owned()
    } else {
        std::fs::read_to_string(given).map_err(|e| {
            ApplianceError::Refused(format!(
                "--vendor-key {given}: neither a SHA256:… fingerprint nor a readable file: {e}"
            ))
        })?
    };
    match text.trim().strip_prefix("SHA256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(format!("SHA256:{}", hex.to_ascii_uppercase()))
        }
        _ => Err(ApplianceError::Refused(format!(
            "{given}: expected SHA256: and 64 hex digits (the vendor's vendor-key.txt)"
        ))),
    }
}
