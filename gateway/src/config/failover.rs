//! `[failover]`: how the gateway tells that the cloud engine is down and what answers while it
//! is. The probe, the health timings and the rules table become `engine_proxy`'s own settings
//! here, so that the proxy never reads the configuration file's shape.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Config, ConfigError};

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
    /// About one probe per interval, none while real calls are being answered: the speed comes
    /// from the traffic, not from loading the data centre with probes.
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    /// The longest a probe (or a cached read) waits for the cloud, however slow it has been.
    #[serde(default = "default_probe_timeout_ms")]
    pub probe_timeout_ms: u64,
    /// The shortest, however fast it has been: between the two, deadlines follow the cloud's
    /// observed latency.
    #[serde(default = "default_deadline_min_ms")]
    pub deadline_min_ms: u64,
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
    /// Only calls with this `class` in the query.
    #[serde(default)]
    pub class: Option<String>,
    /// Only calls whose body's first record has this `Request_Number`.
    #[serde(default)]
    pub request_number: Option<String>,
    pub action: engine_proxy::rules::Action,
    /// What a caller must hold (default: `reference` for a read, `write` otherwise).
    #[serde(default)]
    pub scope: Option<engine_proxy::scope::Scope>,
    /// `read` only: how long a cached answer may be served (default one day).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

impl Failover {
    pub fn health(&self) -> engine_proxy::health::Settings {
        engine_proxy::health::Settings {
            interval: Duration::from_millis(self.probe_interval_ms),
            timeout: Duration::from_millis(self.probe_timeout_ms),
            deadline_min: Duration::from_millis(self.deadline_min_ms),
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
                    class: r.class.clone(),
                    request_number: r.request_number.clone(),
                    action: r.action,
                    scope: r
                        .scope
                        .unwrap_or_else(|| engine_proxy::rules::Rule::default_scope(r.action)),
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
            deadline_min_ms: default_deadline_min_ms(),
            healthy_secs: default_healthy_secs(),
            engine: None,
            engine_ca: None,
            cache_max_bytes: default_cache_max_bytes(),
            max_entry_bytes: default_max_entry_bytes(),
            routes: Vec::new(),
        }
    }
}

fn default_probe() -> String {
    "POST /api01rv2/systeminfv2?format=json".into()
}
fn default_probe_body() -> String {
    "{}".into()
}
fn default_probe_interval_ms() -> u64 {
    1000
}
fn default_probe_timeout_ms() -> u64 {
    500
}
fn default_deadline_min_ms() -> u64 {
    150
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

impl Config {
    pub(super) fn check_failover(&self) -> Result<(), ConfigError> {
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
            ("failover.deadline_min_ms", f.deadline_min_ms),
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
            for (k, value) in [("class", &r.class), ("request_number", &r.request_number)] {
                if let Some(v) = value
                    && (v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric()))
                {
                    return Err(self.invalid(
                        key(k),
                        format!("expected letters and digits such as \"01\", got {v:?}"),
                    ));
                }
            }
            if r.ttl_secs.is_some() && r.action != engine_proxy::rules::Action::Read {
                return Err(self.invalid(key("ttl_secs"), "only a read rule has a cache lifetime"));
            }
        }
        Ok(())
    }
}
