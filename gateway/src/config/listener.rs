//! `[[listener]]`: where terminals connect over TLS and what each address carries. The route
//! name given here is how the audit log, the metrics and `[[wireguard.port]]` refer to it.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{Config, ConfigError, split_host_port, yes};

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
    /// `tcp` only: what terminal and signed-in person must both hold to open a stream (default
    /// `write`: the gateway cannot see what the bytes do).
    #[serde(default)]
    pub scope: Option<engine_proxy::scope::Scope>,
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

fn default_kind() -> ListenerKind {
    ListenerKind::Api
}

impl Config {
    pub(super) fn check_listeners(&self) -> Result<(), ConfigError> {
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
                (ListenerKind::Api, _) if l.scope.is_some() => {
                    return Err(self.invalid(
                        key("scope"),
                        "an api listener's calls take their scopes from the engine API rules \
                         ([[failover.route]]); scope is for kind = \"tcp\"",
                    ));
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
        Ok(())
    }
}
