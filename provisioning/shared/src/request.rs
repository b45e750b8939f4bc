//! The appliance's request: what `kakehashi gateway init` hands the vendor.
//!
//! The appliance makes every private key of its own (device identity, issuing CA, TLS server,
//! uplink, WireGuard) and never lets one out. The request carries only their public parts: the
//! device identity's age recipient (bundles are encrypted to it), three CSRs (the vendor signs the
//! issuing CA and the server certificate; the uplink CSR goes on to the cloud operator) and the
//! WireGuard public key (written into terminals' configs). It is public: it may travel by mail.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The `kind` every request file carries, so a wrong file is named as such.
pub const KIND: &str = "kakehashi-appliance-request";
/// The request format this build writes and reads.
pub const FORMAT: u32 = 1;

/// An appliance's request, as written to (and read from) one JSON file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub kind: String,
    pub format: u32,
    /// When `gateway init` made it, RFC 3339.
    pub created: String,
    /// The device identity: the age X25519 recipient (`age1…`) bundles are encrypted to. It also
    /// names the appliance in every bundle, which is how a bundle for another appliance is told.
    pub appliance: String,
    /// PKCS#10 (PEM) for the clinic's issuing CA that lives on the appliance.
    pub issuing_ca_csr: String,
    /// PKCS#10 (PEM) for the gateway's TLS server certificate.
    pub server_csr: String,
    /// PKCS#10 (PEM) for the gateway's client certificate towards the cloud engine, for the cloud
    /// operator's CA.
    pub uplink_csr: String,
    /// The gateway's WireGuard public key, base64.
    pub wireguard_public_key: String,
    /// The fingerprint of the vendor signing key pinned at init (`--vendor-key`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_key: Option<String>,
}

/// Why a request file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: not an appliance request (from `kakehashi gateway init`): {detail}")]
    Malformed { path: String, detail: String },
    #[error("{path}: request format {found}; this kakehashi reads format {FORMAT}")]
    Format { path: String, found: u32 },
    #[error("{path}: {field}: {detail}")]
    Field {
        path: String,
        field: &'static str,
        detail: String,
    },
}

impl Request {
    /// Reads and checks a request file: its kind, format and that every part is present and well
    /// formed (the CSRs' signatures are checked when they are signed).
    pub fn read(path: &Path) -> Result<Request, RequestError> {
        let shown = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| RequestError::Read {
            path: shown.clone(),
            source,
        })?;
        Request::parse(&shown, &text)
    }

    /// Parses request JSON that came from `origin` (a path, for messages).
    pub fn parse(origin: &str, text: &[u8]) -> Result<Request, RequestError> {
        let malformed = |detail: String| RequestError::Malformed {
            path: origin.to_owned(),
            detail,
        };
        let value: serde_json::Value = serde_json::from_slice(text).map_err(|e| malformed(e.to_string()))?;
        if value.get("kind").and_then(|k| k.as_str()) != Some(KIND) {
            return Err(malformed(format!("no \"kind\": \"{KIND}\"")));
        }
        match value.get("format").and_then(|f| f.as_u64()) {
            Some(f) if f == u64::from(FORMAT) => {}
            Some(f) => {
                return Err(RequestError::Format {
                    path: origin.to_owned(),
                    found: u32::try_from(f).unwrap_or(u32::MAX),
                });
            }
            None => return Err(malformed("no \"format\"".into())),
        }
        let request: Request = serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
        let field = |field: &'static str, detail: String| RequestError::Field {
            path: origin.to_owned(),
            field,
            detail,
        };
        request
            .appliance
            .parse::<age::x25519::Recipient>()
            .map_err(|e| field("appliance", format!("not an age X25519 recipient (age1…): {e}")))?;
        for (name, pem_text) in [
            ("issuing_ca_csr", &request.issuing_ca_csr),
            ("server_csr", &request.server_csr),
            ("uplink_csr", &request.uplink_csr),
        ] {
            if !pem_text.contains("-----BEGIN CERTIFICATE REQUEST-----") {
                return Err(field(name, "expected a PEM CERTIFICATE REQUEST".into()));
            }
        }
        crate::bundle::decode_key32(&request.wireguard_public_key)
            .map_err(|e| field("wireguard_public_key", e))?;
        Ok(request)
    }

    /// The JSON text of the file.
    pub fn to_json(&self) -> String {
        // A struct of strings always serializes.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}
