//! `gateway.toml`: the appliance's configuration.
//!
//! Parsing is strict (an unknown key is an error, not a silently ignored typo) and every error
//! names the file, the key and what was expected. Relative paths are relative to the file, so a
//! configuration directory can be moved as a whole (the demo clinic relies on this).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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
    /// Where `gateway.db` (inventory, users) and `audit.db` live.
    pub data_dir: PathBuf,
    pub tls: Tls,
    #[serde(rename = "listener")]
    pub listeners: Vec<Listener>,
    pub upstream: Upstream,
    #[serde(default)]
    pub auth: Auth,
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
    /// The file this was read from (not a TOML key).
    #[serde(skip)]
    pub source: PathBuf,
}

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

/// What a listener carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// The engine API over HTTP/1.1: person authentication, the proxy, the audit log.
    Api,
    /// Raw bytes to a fixed upstream address, for protocols the gateway does not understand.
    Tcp,
}

/// One TLS listener for terminals. There is no plaintext listener for terminal traffic.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub address: SocketAddr,
    #[serde(default = "default_kind")]
    pub kind: ListenerKind,
    /// The route's name in the audit log and metrics (default: the kind).
    #[serde(default)]
    pub name: Option<String>,
    /// `tcp` only: where the bytes go, `host:port`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// `tcp` only: speak TLS to the upstream with the uplink certificate (default true).
    #[serde(default = "yes")]
    pub upstream_tls: bool,
    /// `tcp` only: allow a connection only while a person is signed in on this terminal.
    #[serde(default = "yes")]
    pub require_login: bool,
    /// `tcp` only: where new streams go while the cloud is down (the on-premises engine's
    /// address); without it, new streams are refused while the cloud is down.
    #[serde(default)]
    pub fallback: Option<String>,
}

impl Listener {
    /// The route name used in the audit log and metrics.
    pub fn route(&self) -> String {
        match (&self.name, self.kind) {
            (Some(n), ListenerKind::Tcp) => format!("tcp:{n}"),
            (Some(n), ListenerKind::Api) => n.clone(),
            (None, ListenerKind::Tcp) => format!("tcp:{}", self.address.port()),
            (None, ListenerKind::Api) => "api".into(),
        }
    }
}

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

/// The EST listener: the one place a client may connect without a certificate, and where
/// nothing but enrollment exists. The appliance issues terminal certificates with the clinic CA
/// in `ca_dir`, and writes the CRL to `tls.crl` when it revokes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Est {
    /// `IP:PORT` of the EST listener (TLS with the gateway's server certificate).
    pub listen: SocketAddr,
    /// The clinic CA's directory (`kakehashi cert init-ca --dir`); its `ca.pem` must be one of
    /// the `tls.client_ca` certificates, so that what it issues is admitted.
    pub ca_dir: PathBuf,
    /// First line: the CA key's passphrase (mode 0600). Absent: the key must be unencrypted.
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
    /// Lifetime of an issued terminal certificate, days.
    #[serde(default = "default_est_days")]
    pub days: u32,
    /// Days until the next update of a CRL the appliance signs (after a revocation or renewal).
    #[serde(default = "default_crl_days")]
    pub crl_days: u32,
}

/// The cloud engine and the gateway's own credentials for it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `https://host[:port]` (with an optional path prefix such as `/api`).
    pub url: String,
    /// Trust anchors for the engine's server certificate (PEM).
    pub ca: PathBuf,
    /// The gateway's uplink client certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The clinic's engine account, sent for users without one of their own.
    pub user: String,
    /// First line: the password of `user`. Mode 0600.
    pub password_file: PathBuf,
}

/// What happens when the cloud engine does not answer (DESIGN.md, "Failover, precisely").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failover {
    /// The cheap engine call that tells whether the cloud answers: `"METHOD /path?query"`.
    #[serde(default = "default_probe")]
    pub probe: String,
    /// The probe's body (JSON when it starts with `{`, else XML); empty for none.
    #[serde(default = "default_probe_body")]
    pub probe_body: String,
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    /// A probe unanswered after this long counts as failed: what detects a black hole.
    #[serde(default = "default_probe_timeout_ms")]
    pub probe_timeout_ms: u64,
    /// How long every probe must succeed before the cloud counts as back.
    #[serde(default = "default_healthy_secs")]
    pub healthy_secs: u64,
    /// An on-premises engine to use instead of the cache and journal while the cloud is down:
    /// `https://host:port` or, on the clinic's LAN, `http://host:port`.
    #[serde(default)]
    pub engine: Option<String>,
    /// Trust anchors for the on-premises engine's certificate (default: upstream.ca).
    #[serde(default)]
    pub engine_ca: Option<PathBuf>,
    /// Upper bound of the read cache, bytes of answers.
    #[serde(default = "default_cache_max_bytes")]
    pub cache_max_bytes: u64,
    /// Reads and writes are buffered to be cached or journaled; a larger body is refused.
    #[serde(default = "default_max_entry_bytes")]
    pub max_entry_bytes: usize,
    /// Rules checked before the built-in table.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteRule>,
}

/// One configured row of the engine API rules table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// A path pattern without the `/api` prefix; `*` matches any run of characters.
    pub path: String,
    pub action: engine_proxy::rules::Action,
    /// `read` only: how long a cached answer may be served (default one day).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

impl Failover {
    pub fn health(&self) -> engine_proxy::health::Settings {
        engine_proxy::health::Settings {
            interval: Duration::from_millis(self.probe_interval_ms),
            timeout: Duration::from_millis(self.probe_timeout_ms),
            healthy_for: Duration::from_secs(self.healthy_secs),
        }
    }

    /// The probe's method and path.
    pub fn probe(&self) -> Option<(hyper::Method, &str)> {
        let (method, path) = self.probe.split_once(' ')?;
        let method = method.parse().ok()?;
        path.starts_with('/').then_some((method, path))
    }

    pub fn rules(&self) -> engine_proxy::rules::Rules {
        engine_proxy::rules::Rules::new(
            self.routes
                .iter()
                .map(|r| engine_proxy::rules::Rule {
                    path: r.path.clone(),
                    action: r.action,
                    ttl: r
                        .ttl_secs
                        .map_or(engine_proxy::rules::DEFAULT_TTL, Duration::from_secs),
                })
                .collect(),
        )
    }
}

impl Default for Failover {
    fn default() -> Self {
        Failover {
            probe: default_probe(),
            probe_body: default_probe_body(),
            probe_interval_ms: default_probe_interval_ms(),
            probe_timeout_ms: default_probe_timeout_ms(),
            healthy_secs: default_healthy_secs(),
            engine: None,
            engine_ca: None,
            cache_max_bytes: default_cache_max_bytes(),
            max_entry_bytes: default_max_entry_bytes(),
            routes: Vec::new(),
        }
    }
}

/// Person authentication.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Require ID and password (default). `false` trusts the terminal certificate alone and
    /// sends the clinic's credential: for benchmarks and single-user kiosks only.
    #[serde(default = "yes")]
    pub person: bool,
    /// How long a verified ID and password is remembered in memory.
    #[serde(default = "default_cache_secs")]
    pub cache_secs: u64,
    /// Failures that lock a user or a terminal out, within `lockout_window_secs`.
    #[serde(default = "default_lockout_failures")]
    pub lockout_failures: u32,
    #[serde(default = "default_lockout_window_secs")]
    pub lockout_window_secs: u64,
    /// Lifetime of a login session (browser cookie, and what raw TCP routes require).
    #[serde(default = "default_session_secs")]
    pub session_secs: u64,
}

/// Resource limits: what one terminal can make the gateway spend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(default = "default_handshake_timeout_secs")]
    pub handshake_timeout_secs: u64,
    /// Time allowed to send a request's headers; also how long an idle keep-alive connection
    /// stays open.
    #[serde(default = "default_header_timeout_secs")]
    pub header_timeout_secs: u64,
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Time for the engine to start answering a request.
    #[serde(default = "default_upstream_timeout_secs")]
    pub upstream_timeout_secs: u64,
    /// Time to finish in-flight requests after SIGTERM.
    #[serde(default = "default_shutdown_secs")]
    pub shutdown_secs: u64,
    /// Worker threads, each with its own listening sockets (SO_REUSEPORT) and engine connections
    /// (default: one per core).
    #[serde(default)]
    pub workers: Option<usize>,
}

/// The admin listener: Prometheus metrics and health, plain HTTP, loopback by default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(default = "default_admin_address")]
    pub address: Option<SocketAddr>,
}

fn yes() -> bool {
    true
}
fn default_kind() -> ListenerKind {
    ListenerKind::Api
}
fn default_cache_secs() -> u64 {
    60
}
fn default_lockout_failures() -> u32 {
    5
}
fn default_lockout_window_secs() -> u64 {
    15 * 60
}
fn default_session_secs() -> u64 {
    8 * 3600
}
fn default_max_connections() -> usize {
    4096
}
fn default_handshake_timeout_secs() -> u64 {
    10
}
fn default_header_timeout_secs() -> u64 {
    30
}
fn default_max_header_bytes() -> usize {
    16 * 1024
}
fn default_max_body_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_upstream_timeout_secs() -> u64 {
    60
}
fn default_shutdown_secs() -> u64 {
    10
}
fn default_probe() -> String {
    "POST /api01rv2/systeminfv2?format=json".into()
}
fn default_probe_body() -> String {
    "{}".into()
}
fn default_probe_interval_ms() -> u64 {
    250
}
fn default_probe_timeout_ms() -> u64 {
    500
}
fn default_healthy_secs() -> u64 {
    10
}
fn default_cache_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_max_entry_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_tun_name() -> String {
    "kakehashi0".into()
}
fn default_wg_mtu() -> u16 {
    provisioning_shared::wireguard::DEFAULT_MTU
}
fn default_keepalive() -> u16 {
    provisioning_shared::wireguard::DEFAULT_KEEPALIVE
}
fn default_est_days() -> u32 {
    365
}
fn default_crl_days() -> u32 {
    7
}
fn default_admin_address() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9090)))
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            person: true,
            cache_secs: default_cache_secs(),
            lockout_failures: default_lockout_failures(),
            lockout_window_secs: default_lockout_window_secs(),
            session_secs: default_session_secs(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: default_max_connections(),
            handshake_timeout_secs: default_handshake_timeout_secs(),
            header_timeout_secs: default_header_timeout_secs(),
            max_header_bytes: default_max_header_bytes(),
            max_body_bytes: default_max_body_bytes(),
            upstream_timeout_secs: default_upstream_timeout_secs(),
            shutdown_secs: default_shutdown_secs(),
            workers: None,
        }
    }
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            address: default_admin_address(),
        }
    }
}

impl Limits {
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs)
    }
    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream_timeout_secs)
    }
    pub fn workers(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

impl Config {
    /// Reads, parses and checks a configuration: every referenced file must be readable, so that
    /// `gateway check` catches what `gateway run` would trip over.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.source = path.to_owned();
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve(base);
        config.check()?;
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
        let first_api = self
            .listeners
            .iter()
            .find(|l| l.kind == ListenerKind::Api)
            .map(Listener::route);
        if let Some(wg) = &mut self.wireguard {
            match &mut wg.private_key {
                Some(key) => rel(key),
                None => wg.private_key = Some(data_dir.join(crate::wg::keys::GATEWAY_KEY_FILE)),
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
        if self.listeners.is_empty() {
            return Err(self.invalid("listener", "expected at least one [[listener]]"));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            let key = |k: &str| format!("listener[{i}].{k}");
            match (l.kind, &l.upstream) {
                (ListenerKind::Tcp, None) => {
                    return Err(
                        self.invalid(key("upstream"), "a tcp listener needs upstream = \"host:port\"")
                    );
                }
                (ListenerKind::Tcp, Some(u)) if split_host_port(u).is_none() => {
                    return Err(self.invalid(key("upstream"), format!("expected \"host:port\", got {u:?}")));
                }
                (ListenerKind::Api, _) if l.fallback.is_some() => {
                    return Err(self.invalid(
                        key("fallback"),
                        "an api listener falls back to failover.engine; fallback is for kind = \"tcp\"",
                    ));
                }
                (ListenerKind::Api, Some(_)) => {
                    return Err(self.invalid(
                        key("upstream"),
                        "an api listener goes to [upstream].url; upstream is for kind = \"tcp\"",
                    ));
                }
                _ => {}
            }
            if let Some(f) = &l.fallback
                && split_host_port(f).is_none()
            {
                return Err(self.invalid(key("fallback"), format!("expected \"host:port\", got {f:?}")));
            }
            if let Some(other) = self.listeners[..i].iter().position(|o| o.address == l.address) {
                return Err(self.invalid(
                    key("address"),
                    format!("{} is already used by listener[{other}]", l.address),
                ));
            }
        }
        if !self.listeners.iter().any(|l| l.kind == ListenerKind::Api) {
            return Err(self.invalid("listener", "expected at least one listener with kind = \"api\""));
        }
        match self.upstream.url.parse::<hyper::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => {}
            Ok(_) => {
                return Err(self.invalid(
                    "upstream.url",
                    "expected https://host[:port][/prefix]: the uplink is always mutual TLS",
                ));
            }
            Err(e) => return Err(self.invalid("upstream.url", format!("not a URL: {e}"))),
        }
        self.check_failover()?;
        self.check_wireguard()?;
        self.check_est()?;
        if self.auth.lockout_failures == 0 {
            return Err(self.invalid("auth.lockout_failures", "expected at least 1"));
        }
        let positive = [
            ("limits.max_connections", self.limits.max_connections as u64),
            (
                "limits.handshake_timeout_secs",
                self.limits.handshake_timeout_secs,
            ),
            ("limits.header_timeout_secs", self.limits.header_timeout_secs),
            ("limits.upstream_timeout_secs", self.limits.upstream_timeout_secs),
            ("limits.workers", self.limits.workers.unwrap_or(1) as u64),
            ("auth.session_secs", self.auth.session_secs),
            ("auth.lockout_window_secs", self.auth.lockout_window_secs),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(self.invalid(key, "expected a positive number"));
            }
        }
        if self.limits.max_header_bytes < 8192 {
            return Err(self.invalid("limits.max_header_bytes", "expected at least 8192"));
        }
        Ok(())
    }

    fn check_wireguard(&self) -> Result<(), ConfigError> {
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

    fn check_est(&self) -> Result<(), ConfigError> {
        let Some(est) = &self.est else {
            return Ok(());
        };
        let ca = est.ca_dir.join("ca.pem");
        if let Err(e) = std::fs::File::open(&ca) {
            return Err(self.invalid(
                "est.ca_dir",
                format!(
                    "expected a CA directory (kakehashi cert init-ca): cannot read {}: {e}",
                    ca.display()
                ),
            ));
        }
        if let Some(p) = &est.passphrase_file
            && let Err(e) = std::fs::File::open(p)
        {
            return Err(self.invalid("est.passphrase_file", format!("cannot read {}: {e}", p.display())));
        }
        if self.tls.crl.is_none() {
            return Err(self.invalid(
                "tls.crl",
                "[est] needs it: the appliance writes the CRL there when it revokes or renews",
            ));
        }
        if self.listeners.iter().any(|l| l.address == est.listen) {
            return Err(self.invalid(
                "est.listen",
                format!(
                    "{} is a terminal listener's address; EST needs its own",
                    est.listen
                ),
            ));
        }
        if !(1..=3650).contains(&est.days) {
            return Err(self.invalid("est.days", "expected 1 to 3650"));
        }
        if !(1..=365).contains(&est.crl_days) {
            return Err(self.invalid("est.crl_days", "expected 1 to 365"));
        }
        Ok(())
    }

    /// The `host:port` that terminal configs name as the gateway's WireGuard endpoint.
    pub fn wireguard_endpoint(&self) -> Option<String> {
        let wg = self.wireguard.as_ref()?;
        Some(wg.endpoint.clone().unwrap_or_else(|| wg.listen.to_string()))
    }

    fn check_failover(&self) -> Result<(), ConfigError> {
        let f = &self.failover;
        if f.probe().is_none() {
            return Err(self.invalid(
                "failover.probe",
                format!(
                    "expected \"METHOD /path\", e.g. \"POST /api01rv2/systeminfv2?format=json\", got {:?}",
                    f.probe
                ),
            ));
        }
        let positive = [
            ("failover.probe_interval_ms", f.probe_interval_ms),
            ("failover.probe_timeout_ms", f.probe_timeout_ms),
            ("failover.cache_max_bytes", f.cache_max_bytes),
            ("failover.max_entry_bytes", f.max_entry_bytes as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(self.invalid(key, "expected a positive number"));
            }
        }
        if let Some(url) = &f.engine {
            match url.parse::<hyper::Uri>() {
                Ok(uri) if matches!(uri.scheme_str(), Some("https" | "http")) && uri.host().is_some() => {}
                _ => {
                    return Err(self.invalid(
                        "failover.engine",
                        format!("expected https://host:port or http://host:port, got {url:?}"),
                    ));
                }
            }
        } else if self.listeners.iter().any(|l| l.fallback.is_some()) {
            return Err(self.invalid(
                "failover.engine",
                "a tcp listener has a fallback, which needs the on-premises engine set here",
            ));
        }
        for (i, r) in f.routes.iter().enumerate() {
            let key = |k: &str| format!("failover.route[{i}].{k}");
            if !(r.path.starts_with('/') || r.path.starts_with('*')) {
                return Err(self.invalid(
                    key("path"),
                    format!("expected a path such as \"/api01rv2/*\", got {:?}", r.path),
                ));
            }
            if r.ttl_secs.is_some() && r.action != engine_proxy::rules::Action::Read {
                return Err(self.invalid(key("ttl_secs"), "only a read rule has a cache lifetime"));
            }
        }
        Ok(())
    }
}

/// Splits `host:port` (with `[v6]:port`), the form of a raw TCP upstream.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port.parse().ok()?;
    (!host.is_empty()).then_some((host, port))
}
