//! `[limits]`: what one terminal can make the gateway spend, in connections, time and bytes.
//! Every setting has a default, so the section may be left out.

use std::time::Duration;

use serde::Deserialize;

use super::{Config, ConfigError};

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
    pub(super) fn check_limits(&self) -> Result<(), ConfigError> {
        let positive = [
            ("limits.max_connections", self.limits.max_connections as u64),
            (
                "limits.handshake_timeout_secs",
                self.limits.handshake_timeout_secs,
            ),
            ("limits.header_timeout_secs", self.limits.header_timeout_secs),
            ("limits.upstream_timeout_secs", self.limits.upstream_timeout_secs),
            ("limits.workers", self.limits.workers.unwrap_or(1) as u64),
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
}
