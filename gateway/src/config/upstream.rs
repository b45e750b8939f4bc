//! `[upstream]`: the cloud engine and the gateway's own credentials for it. The uplink is always
//! mutual TLS, which its check enforces.
//!
//! `url` is the first path to the engine. Further paths are `[[upstream.path]]` tables, tried in
//! order when the ones before them are down: a second line (`bind`, `interface`), or a WireGuard
//! tunnel the gateway initiates itself to the data centre's concentrator (`[upstream.path.wireguard]`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

use super::{Config, ConfigError, TunnelNet, split_host_port};

/// The cloud engine and the gateway's own credentials for it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `https://host[:port]` (with an optional path prefix such as `/api`).
    pub url: String,
    /// The first path's name, in logs, metrics, the audit log and the status page.
    #[serde(default = "default_name")]
    pub name: String,
    /// Where the first path connects, when not to the URL's host (see [`Path::connect`]).
    #[serde(default)]
    pub connect: Option<SocketAddr>,
    /// The first path's source address and interface (see [`Path::bind`]).
    #[serde(default)]
    pub bind: Option<IpAddr>,
    #[serde(default)]
    pub interface: Option<String>,
    /// Trust anchors for the engine's server certificate (PEM).
    pub ca: PathBuf,
    /// The gateway's uplink client certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The clinic's engine account, sent for users without one of their own.
    pub user: String,
    /// First line: the password of `user`. Mode 0600.
    pub password_file: PathBuf,
    /// Further paths to the same engine, in order of preference after `url`.
    #[serde(default, rename = "path")]
    pub paths: Vec<Path>,
}

/// One more path to the engine.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Path {
    pub name: String,
    /// The engine's URL over this path (default: `upstream.url`). Through a WireGuard path its
    /// host names the certificate the engine must present; connections go to
    /// `wireguard.engine`.
    #[serde(default)]
    pub url: Option<String>,
    /// The address connections go to, when not the URL's host: the engine's across a private
    /// interconnect. The URL's host still names the certificate the engine must present.
    #[serde(default)]
    pub connect: Option<SocketAddr>,
    /// The source address connections leave from: the second line's address.
    #[serde(default)]
    pub bind: Option<IpAddr>,
    /// The network interface connections leave through (`SO_BINDTODEVICE`; needs
    /// CAP_NET_RAW).
    #[serde(default)]
    pub interface: Option<String>,
    /// A WireGuard tunnel the gateway dials itself.
    #[serde(default)]
    pub wireguard: Option<PathWireGuard>,
}

/// A tunnel from the gateway to the data centre's VPN concentrator: boringtun as the initiator
/// and the gateway's userspace TCP/IP stack inside it, so it needs no kernel module and no
/// privileges.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathWireGuard {
    /// The gateway's private key for this tunnel (base64, mode 0600), created on first use; its
    /// public key is logged at start, for the concentrator's configuration.
    pub private_key: PathBuf,
    /// The concentrator's public key (base64).
    pub peer: String,
    /// The concentrator's `host:port`.
    pub endpoint: String,
    /// The gateway's address inside the tunnel, with its prefix (`10.99.0.2/24`).
    pub address: TunnelNet,
    /// The engine's address and port inside the tunnel (there is no resolver there).
    pub engine: std::net::SocketAddrV4,
    /// Seconds between keepalives, so that a NAT on the way keeps the tunnel open (0: none).
    #[serde(default = "default_keepalive")]
    pub keepalive_secs: u16,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

fn default_name() -> String {
    "primary".into()
}
fn default_keepalive() -> u16 {
    25
}
fn default_mtu() -> u16 {
    provisioning_shared::wireguard::DEFAULT_MTU
}

impl Upstream {
    /// What the audit log calls each path's engine, in order: its URL with one path, `path NAME
    /// URL` with several. Requests and changes of the hybrid state name it the same way.
    pub fn labels(&self) -> Vec<String> {
        if self.paths.is_empty() {
            return vec![self.url.clone()];
        }
        let url = |p: &Path| p.url.clone().unwrap_or_else(|| self.url.clone());
        std::iter::once(format!("path {} {}", self.name, self.url))
            .chain(self.paths.iter().map(|p| format!("path {} {}", p.name, url(p))))
            .collect()
    }

    /// Every path's name, the first `url`'s.
    pub fn names(&self) -> Vec<String> {
        std::iter::once(self.name.clone())
            .chain(self.paths.iter().map(|p| p.name.clone()))
            .collect()
    }

    /// The first path, as the further ones are written.
    pub fn first(&self) -> Path {
        Path {
            name: self.name.clone(),
            url: None,
            connect: self.connect,
            bind: self.bind,
            interface: self.interface.clone(),
            wireguard: None,
        }
    }
}

impl Config {
    pub(super) fn check_upstream(&self) -> Result<(), ConfigError> {
        self.check_engine_url("upstream.url", &self.upstream.url)?;
        let most = engine_proxy::health::MAX_PATHS;
        if self.upstream.paths.len() + 1 > most {
            return Err(self.invalid(
                "upstream.path",
                format!("at most {most} paths in all, upstream.url's included"),
            ));
        }
        let mut names = vec![&self.upstream.name];
        for (i, path) in self.upstream.paths.iter().enumerate() {
            let key = |k: &str| format!("upstream.path[{i}].{k}");
            let valid = !path.name.is_empty()
                && path
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid {
                return Err(self.invalid(key("name"), "expected letters, digits, '-' or '_'"));
            }
            if names.contains(&&path.name) {
                return Err(self.invalid(
                    key("name"),
                    format!(
                        "{:?} names another path too (upstream.name is {:?})",
                        path.name, self.upstream.name
                    ),
                ));
            }
            names.push(&path.name);
            if let Some(url) = &path.url {
                self.check_engine_url(&key("url"), url)?;
            }
            let Some(wg) = &path.wireguard else { continue };
            if path.bind.is_some() || path.interface.is_some() || path.connect.is_some() {
                return Err(self.invalid(
                    key("wireguard"),
                    "a WireGuard path leaves through its own tunnel to wireguard.engine: bind, interface and connect do not apply",
                ));
            }
            if let Err(e) = provisioning_shared::wireguard::PublicKey::from_base64(&wg.peer) {
                return Err(self.invalid(key("wireguard.peer"), e));
            }
            if split_host_port(&wg.endpoint).is_none() {
                return Err(self.invalid(
                    key("wireguard.endpoint"),
                    format!("expected \"host:port\", got {:?}", wg.endpoint),
                ));
            }
            if !(576..=9000).contains(&wg.mtu) {
                return Err(self.invalid(key("wireguard.mtu"), "expected 576 to 9000"));
            }
        }
        Ok(())
    }

    /// An engine URL: `https://` with a host (the uplink is always mutual TLS).
    fn check_engine_url(&self, key: &str, url: &str) -> Result<(), ConfigError> {
        match url.parse::<hyper::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => Ok(()),
            Ok(_) => Err(self.invalid(
                key,
                "expected https://host[:port][/prefix]: the uplink is always mutual TLS",
            )),
            Err(e) => Err(self.invalid(key, format!("not a URL: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, MINIMAL};

    /// The audit log names a lone engine by its URL, and each of several by its path's name and
    /// URL (a path without its own URL reaches the first one's).
    #[test]
    fn labels_name_one_engine_by_its_url_and_several_by_path() {
        let parse = |text: &str| {
            Config::from_text(text, Path::new("/etc/kakehashi/gateway.toml"))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(parse(MINIMAL).upstream.labels(), ["https://engine.test"]);
        let paths = "[[upstream.path]]\nname = \"lte\"\nbind = \"192.0.2.1\"\n\
                     [[upstream.path]]\nname = \"dc2\"\nurl = \"https://engine2.test\"\n";
        let config = parse(&format!("{MINIMAL}{paths}"));
        assert_eq!(
            config.upstream.labels(),
            [
                "path primary https://engine.test",
                "path lte https://engine.test",
                "path dc2 https://engine2.test",
            ]
        );
    }
}
