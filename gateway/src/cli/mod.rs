//! The command lines of the appliance: `kakehashi gateway`, `terminal`, `user`, `audit`,
//! `journal`, `status` and `demo`, a file each.
//!
//! Every appliance command finds the appliance the same way ([`crate::config::locate`]): `--config FILE` (or
//! `KAKEHASHI_CONFIG`; default `/etc/kakehashi/gateway.toml`) and its `data_dir`, or
//! `--data-dir DIR` (or `KAKEHASHI_DATA_DIR`) instead, before or after the subcommand. Exit
//! codes: 0 done; 1 refused or failed, with one line `kakehashi: error: …` on stderr saying why,
//! and nothing changed. Asking for a state that
//! already holds (disable a disabled terminal, lock a locked user) is refused the same way, so
//! that a script learns its picture of the appliance was wrong.

pub mod audit;
pub mod backup;
pub mod demo;
pub mod firmware;
pub mod gateway;
pub mod journal;
pub mod status;
pub mod terminal;
pub mod user;

use crate::store::{Result, StoreError};

/// Pretty JSON for `--json` listings.
pub(crate) fn to_json(value: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| StoreError::Invalid(format!("JSON output: {e}")))
}

/// `-` for an absent value in a table.
fn or_dash(value: Option<&str>) -> &str {
    value.unwrap_or("-")
}
