//! `[backup]`: where `kakehashi backup run` writes its archives and who can open them. Absent,
//! the backup commands refuse to run.

use std::path::PathBuf;

use serde::Deserialize;

use super::{Config, ConfigError};

/// A backup target and the archive's recipients.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// The directory archives go to: a USB disk or a NAS mount. Outside the data directory, or
    /// the backups would fill the disk they protect and die with it.
    pub dir: PathBuf,
    /// Who can restore: age recipients (`age1…`), the clinic's and the vendor's. The appliance
    /// adds its own (`DATA_DIR/backup-self.key`), to verify each archive after writing it.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// More recipients, one per line (`#` comments), as `age -R` reads them.
    #[serde(default)]
    pub recipients_file: Option<PathBuf>,
    /// How many of this appliance's archives the directory keeps; older ones are removed once
    /// a new one is verified.
    #[serde(default = "default_keep")]
    pub keep: usize,
}

fn default_keep() -> usize {
    14
}

impl Config {
    pub(super) fn check_backup(&self) -> Result<(), ConfigError> {
        let Some(b) = &self.backup else { return Ok(()) };
        if b.dir.starts_with(&self.data_dir) {
            return Err(self.invalid(
                "backup.dir",
                format!(
                    "{} is inside data_dir {}: backups must leave the disk they protect (a USB disk, a NAS mount)",
                    b.dir.display(),
                    self.data_dir.display()
                ),
            ));
        }
        if !(1..=1000).contains(&b.keep) {
            return Err(self.invalid("backup.keep", "from 1 to 1000 archives"));
        }
        let listed = self.backup_recipients()?;
        if listed.is_empty() {
            return Err(self.invalid(
                "backup.recipients",
                "no recipient: name the clinic's and the vendor's age recipients (age1…), or a recipients_file; \
                 without one nobody but this appliance could restore",
            ));
        }
        Ok(())
    }

    /// The configured recipients (not the appliance's own), each checked.
    pub fn backup_recipients(&self) -> Result<Vec<age::x25519::Recipient>, ConfigError> {
        let Some(b) = &self.backup else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (i, text) in b.recipients.iter().enumerate() {
            let r = text.trim().parse().map_err(|e| {
                self.invalid(
                    format!("backup.recipients[{i}]"),
                    format!("{text:?} is not an age X25519 recipient (age1…): {e}"),
                )
            })?;
            out.push(r);
        }
        if let Some(path) = &b.recipients_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                self.invalid(
                    "backup.recipients_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let r = line.parse().map_err(|e| {
                    self.invalid(
                        "backup.recipients_file",
                        format!(
                            "{} line {}: not an age X25519 recipient (age1…): {e}",
                            path.display(),
                            n + 1
                        ),
                    )
                })?;
                out.push(r);
            }
        }
        Ok(out)
    }
}
