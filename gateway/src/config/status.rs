//! `[status]`: the status page (`/kakehashi/status`). Every admitted terminal sees the clinic's
//! state; the people named here, once signed in on the gateway's login page, see the operator's
//! sections too (terminals, certificates, CRL, audit chain, disk, version).

use serde::Deserialize;

/// The status page's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// The IDs (`kakehashi user`) that see the operator's sections.
    #[serde(default)]
    pub operators: Vec<String>,
}
