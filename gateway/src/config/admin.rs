//! `[admin]`: the listener for Prometheus metrics and health, apart from terminal traffic. It
//! listens on loopback unless told otherwise.

use std::net::SocketAddr;

use serde::Deserialize;

/// The admin listener: Prometheus metrics and health, plain HTTP, loopback by default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(default = "default_admin_address")]
    pub address: Option<SocketAddr>,
}

fn default_admin_address() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9090)))
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            address: default_admin_address(),
        }
    }
}
