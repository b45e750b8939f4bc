//! `[auth]`: how the person at the terminal is authenticated, and how repeated failures lock
//! them out. Every setting has a default, so the section may be left out.

use serde::Deserialize;

use super::{Config, ConfigError, yes};

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

impl Config {
    pub(super) fn check_auth(&self) -> Result<(), ConfigError> {
        if self.auth.lockout_failures == 0 {
            return Err(self.invalid("auth.lockout_failures", "expected at least 1"));
        }
        let positive = [
            ("auth.session_secs", self.auth.session_secs),
            ("auth.lockout_window_secs", self.auth.lockout_window_secs),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(self.invalid(key, "expected a positive number"));
            }
        }
        Ok(())
    }
}
