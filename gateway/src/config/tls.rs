//! `[tls]`: the gateway's own server certificate and the clinic CA it admits terminals by. Its
//! files are checked with every other file the configuration names, when it is loaded.

use std::path::PathBuf;

use serde::Deserialize;

/// The gateway's own server certificate and what it trusts for terminals.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Server certificate chain (PEM), with the engine's host name: terminals connect to the
    /// gateway as if it were the engine.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The clinic CA that issues terminal certificates.
    pub client_ca: PathBuf,
    /// The clinic CA's CRL. Optional only so that a CA that never revoked can run; the demo and
    /// provisioning always write one.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}
