//! `gateway.toml`: the appliance's configuration.
//!
//! Parsing is strict (an unknown key is an error, not a silently ignored typo) and every error
//! names the file, the key and what was expected. Relative paths are relative to the file, so a
//! configuration directory can be moved as a whole (the demo clinic relies on this).

mod admin;
mod auth;
mod authorize;
mod backup;
mod est;
mod failover;
mod firmware;
mod limits;
mod listener;
pub mod locate;
mod status;
mod storage;
mod tls;
mod upstream;
mod wireguard;

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use admin::Admin;
pub use auth::Auth;
pub use authorize::{Authorize, UnknownCalls};
pub use backup::{Backup, SftpUrl};
pub use est::Est;
pub use failover::{Failover, RouteRule};
pub use firmware::{BootloaderKind, Firmware};
pub use limits::Limits;
pub use listener::{Listener, ListenerKind};
pub use status::Status;
pub use storage::{MIN_SEGMENT, Size, Storage};
pub use tls::Tls;
pub use upstream::{Path as UpstreamPath, PathWireGuard, Upstream};
pub use wireguard::{GATEWAY_KEY_FILE, TunnelNet, WireGuard, WireGuardMode, WireGuardPort};

/// What is wrong with a configuration, precisely enough to fix it without reading the source.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The whole configuration, as read from `gateway.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where `gateway.db` (inventory, users), the audit log (`audit/`) and the local engine live.
    pub data_dir: PathBuf,
    pub tls: Tls,
    #[serde(rename = "listener")]
    pub listeners: Vec<Listener>,
    pub upstream: Upstream,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub authorize: Authorize,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub failover: Failover,
    /// The WireGuard front door; absent, the gateway speaks TLS only.
    #[serde(default)]
    pub wireguard: Option<WireGuard>,
    /// The EST enrollment listener (RFC 7030); absent, terminals get certificates only from
    /// the vendor.
    #[serde(default)]
    pub est: Option<Est>,
    /// The status page: who sees the operator's sections.
    #[serde(default)]
    pub status: Status,
    /// Signed appliance updates; absent, `kakehashi firmware` refuses to run.
    #[serde(default)]
    pub firmware: Option<Firmware>,
    /// Encrypted, verified backups to a directory or an SFTP server; absent, `kakehashi backup` refuses to run.
    #[serde(default)]
    pub backup: Option<Backup>,
    /// The data directory's disk budget; absent, half of its file system.
    #[serde(default)]
    pub storage: Storage,
    /// The file this was read from (not a TOML key).
    #[serde(skip)]
    pub source: PathBuf,
}

/// The default of the settings that are on unless turned off.
fn yes() -> bool {
    true
}

impl Config {
    /// Reads, parses and checks a configuration: every referenced file must be readable, so that
    /// `gateway check` catches what `gateway run` would trip over.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::parse(path)?;
        config.check()?;
        Ok(config)
    }

    /// Reads and parses a configuration, as strictly as [`Config::load`] (an unknown key or a
    /// wrong type is an error naming it), with its paths resolved, but without opening the files
    /// it names: for a command that needs only where the appliance is
    /// ([`locate::ApplianceArgs::data_dir`]).
    pub fn parse(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_text(&text, path)
    }

    /// Parses the text of the configuration file at `path` (which only resolves its paths).
    pub fn from_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.source = path.to_owned();
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve(base);
        Ok(config)
    }

    fn resolve(&mut self, base: &Path) {
        let rel = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        rel(&mut self.data_dir);
        rel(&mut self.tls.cert);
        rel(&mut self.tls.key);
        rel(&mut self.tls.client_ca);
        if let Some(crl) = &mut self.tls.crl {
            rel(crl);
        }
        rel(&mut self.upstream.ca);
        rel(&mut self.upstream.cert);
        rel(&mut self.upstream.key);
        rel(&mut self.upstream.password_file);
        for path in &mut self.upstream.paths {
            if let Some(wg) = &mut path.wireguard {
                rel(&mut wg.private_key);
            }
        }
        if let Some(ca) = &mut self.failover.engine_ca {
            rel(ca);
        }
        if let Some(est) = &mut self.est {
            rel(&mut est.ca_dir);
            if let Some(p) = &mut est.passphrase_file {
                rel(p);
            }
        }
        let data_dir = self.data_dir.clone();
        if let Some(fw) = &mut self.firmware {
            rel(&mut fw.public_key);
            match &mut fw.slots_dir {
                Some(dir) => rel(dir),
                None => fw.slots_dir = Some(data_dir.join("slots")),
            }
            for path in [
                &mut fw.fw_env_config, &mut fw.grub_env, &mut fw.ca, &mut fw.rootfs_a, &mut fw.rootfs_b,
            ]
            .into_iter()
            .flatten()
            {
                rel(path);
            }
        }
        if let Some(b) = &mut self.backup {
            for p in [
                &mut b.dir, &mut b.recipients_file, &mut b.known_hosts, &mut b.identity,
            ]
            .into_iter()
            .flatten()
            {
                rel(p);
            }
        }
        let first_api = self
            .listeners
            .iter()
            .find(|l| l.kind == ListenerKind::Api)
            .map(Listener::route);
        if let Some(wg) = &mut self.wireguard {
            match &mut wg.private_key {
                Some(key) => rel(key),
                None => wg.private_key = Some(data_dir.join(GATEWAY_KEY_FILE)),
            }
            if wg.ports.is_empty()
                && let Some(route) = first_api
            {
                wg.ports.push(WireGuardPort {
                    port: 8000,
                    route,
                    tls: false,
                });
            }
        }
    }

    fn invalid(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.source.clone(),
            key: key.into(),
            message: message.into(),
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        let files = [
            ("tls.cert", Some(&self.tls.cert)),
            ("tls.key", Some(&self.tls.key)),
            ("tls.client_ca", Some(&self.tls.client_ca)),
            ("tls.crl", self.tls.crl.as_ref()),
            ("upstream.ca", Some(&self.upstream.ca)),
            ("upstream.cert", Some(&self.upstream.cert)),
            ("upstream.key", Some(&self.upstream.key)),
            ("upstream.password_file", Some(&self.upstream.password_file)),
            ("failover.engine_ca", self.failover.engine_ca.as_ref()),
        ];
        for (key, path) in files {
            if let Some(path) = path
                && let Err(e) = std::fs::File::open(path)
            {
                return Err(self.invalid(key, format!("cannot read {}: {e}", path.display())));
            }
        }
        self.check_backup_files()?;
        self.check_settings()?;
        self.check_firmware_files()
    }

    /// Every check of [`Config::load`] but whether the files it names can be read.
    pub(crate) fn check_settings(&self) -> Result<(), ConfigError> {
        self.check_listeners()?;
        self.check_upstream()?;
        self.check_failover()?;
        self.check_wireguard()?;
        self.check_est()?;
        self.check_auth()?;
        self.check_limits()?;
        self.check_firmware()?;
        self.check_backup()?;
        self.check_storage()?;
        Ok(())
    }
}

/// Splits `host:port`, the form of a raw TCP upstream (the router's own rule, so that what the
/// configuration accepts is what the route can connect to).
pub use engine_proxy::stream::split_host_port;

/// The smallest `gateway.toml` that parses, its files relative and absent: for tests that add
/// the section they are about.
#[cfg(test)]
pub(crate) const MINIMAL: &str = r#"
data_dir = "state"
[tls]
cert = "server.pem"
key = "server.key"
client_ca = "ca.pem"
[[listener]]
address = "127.0.0.1:0"
kind = "api"
[upstream]
url = "https://engine.test"
ca = "ca.pem"
cert = "uplink.pem"
key = "uplink.key"
user = "ormaster"
password_file = "upstream.password"
"#;
