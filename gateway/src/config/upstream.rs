//! `[upstream]`: the cloud engine and the gateway's own credentials for it. The uplink is always
//! mutual TLS, which its check enforces.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Config, ConfigError};

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

impl Config {
    pub(super) fn check_upstream(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }
}
