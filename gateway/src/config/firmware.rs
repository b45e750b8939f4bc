//! `[firmware]`: signed appliance updates (`kakehashi firmware …`, the `firmware` crate). Absent,
//! the firmware commands refuse to run.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Config, ConfigError};

/// Where the slots are, which images this appliance takes, and how a trial version commits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firmware {
    /// The slots directory (`a/`, `b/`, `current`, `state.json`); default `DATA_DIR/slots`.
    #[serde(default)]
    pub slots_dir: Option<PathBuf>,
    /// This appliance's board: an image for another board is refused.
    #[serde(default = "default_board")]
    pub board: String,
    /// The vendor's firmware public key (PEM `PUBLIC KEY`, ECDSA P-256): the only key whose
    /// images install.
    pub public_key: PathBuf,
    /// How many starts a trial version gets before the committed one runs again.
    #[serde(default = "default_boot_limit")]
    pub boot_limit: u32,
    /// How long a trial version has, from its start, to pass every health check and commit.
    #[serde(default = "default_settle")]
    pub settle_secs: u64,
}

fn default_board() -> String {
    "generic".into()
}

fn default_boot_limit() -> u32 {
    3
}

fn default_settle() -> u64 {
    60
}

impl Firmware {
    /// The slots directory, resolved.
    pub fn slots(&self) -> PathBuf {
        self.slots_dir.clone().unwrap_or_default()
    }
}

impl Config {
    pub(super) fn check_firmware(&self) -> Result<(), ConfigError> {
        let Some(fw) = &self.firmware else { return Ok(()) };
        let text = std::fs::read(&fw.public_key).map_err(|e| {
            self.invalid(
                "firmware.public_key",
                format!("cannot read {}: {e}", fw.public_key.display()),
            )
        })?;
        ::firmware::key::parse_public(&text)
            .map_err(|e| self.invalid("firmware.public_key", format!("{}: {e}", fw.public_key.display())))?;
        if fw.board.is_empty() {
            return Err(self.invalid("firmware.board", "must not be empty"));
        }
        if !(1..=100).contains(&fw.boot_limit) {
            return Err(self.invalid("firmware.boot_limit", "from 1 to 100"));
        }
        if !(1..=3600).contains(&fw.settle_secs) {
            return Err(self.invalid("firmware.settle_secs", "from 1 to 3600 seconds"));
        }
        Ok(())
    }
}
