//! `[wireguard]`: the WireGuard front door, its tunnel network and the ports terminals reach
//! through it. What terminal configs are written with (endpoint, MTU, keepalive) comes from here
//! too, so the gateway and the configs it hands out agree.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::listener::Listener;
use super::{Config, ConfigError, split_host_port};

/// The WireGuard front door: one UDP socket for every terminal, and the gateway's address inside
/// the tunnel where terminals reach the same routes as over TLS.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireGuard {
    /// The UDP address terminals send to (`0.0.0.0:51820` listens on every address).
    pub listen: SocketAddr,
    /// The gateway's tunnel address and the terminals' network, e.g. `10.77.0.1/24`; terminal
    /// addresses are allocated from it.
    pub address: TunnelNet,
    /// The gateway's private key (base64, mode 0600); default `<data_dir>/wireguard.key`, created
    /// on first use.
    #[serde(default)]
    pub private_key: Option<PathBuf>,
    /// `host:port` written as `Endpoint` into terminal configs (default: `listen`, which is only
    /// right when it is a specific address).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `userspace` (default: a TCP/IP stack inside the gateway, no privileges) or `tun` (a kernel
    /// TUN device; needs CAP_NET_ADMIN).
    #[serde(default)]
    pub mode: WireGuardMode,
    /// The TUN device's name in `tun` mode.
    #[serde(default = "default_tun_name")]
    pub tun_name: String,
    /// The MTU inside the tunnel, also written into terminal configs.
    #[serde(default = "default_wg_mtu")]
    pub mtu: u16,
    /// `PersistentKeepalive` written into terminal configs, seconds (0: none), so a terminal
    /// behind NAT stays reachable.
    #[serde(default = "default_keepalive")]
    pub persistent_keepalive: u16,
    /// Ports on the tunnel address and the listener route each one serves (default: port 8000
    /// serving the first api listener's route).
    #[serde(default, rename = "port")]
    pub ports: Vec<WireGuardPort>,
}

/// How decrypted packets reach the gateway's routes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireGuardMode {
    #[default]
    Userspace,
    Tun,
}

/// One port on the tunnel address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireGuardPort {
    pub port: u16,
    /// The route name of a `[[listener]]` (`api` for the default api listener).
    pub route: String,
    /// Expect TLS inside the tunnel (with the terminal's client certificate) instead of plain
    /// HTTP or bytes; WireGuard already encrypts and identifies the terminal.
    #[serde(default)]
    pub tls: bool,
}

/// An IPv4 address with its network prefix: `10.77.0.1/24` (shared with the vendor's tools).
pub use provisioning_shared::wireguard::TunnelNet;

/// The gateway's private key inside the data directory when `wireguard.private_key` is not set.
pub const GATEWAY_KEY_FILE: &str = "wireguard.key";

fn default_tun_name() -> String {
    "kakehashi0".into()
}
fn default_wg_mtu() -> u16 {
    provisioning_shared::wireguard::DEFAULT_MTU
}
fn default_keepalive() -> u16 {
    provisioning_shared::wireguard::DEFAULT_KEEPALIVE
}

impl Config {
    pub(super) fn check_wireguard(&self) -> Result<(), ConfigError> {
        let Some(wg) = &self.wireguard else {
            return Ok(());
        };
        if let Some(e) = &wg.endpoint
            && split_host_port(e).is_none()
        {
            return Err(self.invalid("wireguard.endpoint", format!("expected \"host:port\", got {e:?}")));
        }
        if !(1280..=9000).contains(&wg.mtu) {
            return Err(self.invalid("wireguard.mtu", "expected 1280 to 9000"));
        }
        if wg.tun_name.is_empty()
            || wg.tun_name.len() > 15
            || !wg
                .tun_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(self.invalid("wireguard.tun_name", "expected 1 to 15 letters, digits, - or _"));
        }
        for (i, p) in wg.ports.iter().enumerate() {
            let key = |k: &str| format!("wireguard.port[{i}].{k}");
            if p.port == 0 {
                return Err(self.invalid(key("port"), "expected a port from 1 to 65535"));
            }
            if wg.ports[..i].iter().any(|o| o.port == p.port) {
                return Err(self.invalid(key("port"), format!("port {} is listed twice", p.port)));
            }
            if !self.listeners.iter().any(|l| l.route() == p.route) {
                let routes: Vec<_> = self.listeners.iter().map(Listener::route).collect();
                return Err(self.invalid(
                    key("route"),
                    format!(
                        "no [[listener]] has the route {:?} (routes: {})",
                        p.route,
                        routes.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The `host:port` that terminal configs name as the gateway's WireGuard endpoint.
    pub fn wireguard_endpoint(&self) -> Option<String> {
        let wg = self.wireguard.as_ref()?;
        Some(wg.endpoint.clone().unwrap_or_else(|| wg.listen.to_string()))
    }
}
