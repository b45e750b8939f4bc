//! `[firmware]`: signed appliance updates (`kakehashi firmware …`, the `firmware` crate). Absent,
//! the firmware commands refuse to run.

use std::io::Read as _;
use std::path::PathBuf;

use serde::Deserialize;

use ::firmware::backend::Backend;
use ::firmware::rootfs::RootfsSlots;
use ::firmware::{Bootloader, grub, uboot};

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
    /// Which bootloader keeps the boot state (the committed slot, the trial, the boot count).
    #[serde(default)]
    pub bootloader: BootloaderKind,
    /// `bootloader = "uboot"`: the `fw_env.config` that says where the U-Boot environment's two
    /// copies are, the file `fw_printenv` reads; default `/etc/fw_env.config`.
    #[serde(default)]
    pub fw_env_config: Option<PathBuf>,
    /// `bootloader = "grub"`: the GRUB environment block; default `/boot/grub/grubenv`.
    #[serde(default)]
    pub grub_env: Option<PathBuf>,
    /// The CA certificates (PEM) an image server's certificate must chain to when
    /// `firmware install` fetches an https:// URL; default the system's
    /// (`/etc/ssl/certs/ca-certificates.crt`). The image's signature is checked either way.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// How long an image server may take to complete the TLS handshake, to answer, and to send
    /// more of the image (each wait, not the whole download).
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout_secs: u64,
    /// Where slot a's root file system goes (a partition such as `/dev/mmcblk0p2`, or a
    /// file), for images that carry one; with `rootfs_b`, or neither.
    #[serde(default)]
    pub rootfs_a: Option<PathBuf>,
    /// Where slot b's root file system goes.
    #[serde(default)]
    pub rootfs_b: Option<PathBuf>,
}

/// `firmware.bootloader`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootloaderKind {
    /// The slots directory's `current` symlink and `state.json`, for systemd.
    #[default]
    Files,
    /// The U-Boot environment (`fw_printenv` / `fw_setenv`).
    Uboot,
    /// The GRUB environment block (`grub-editenv`).
    Grub,
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

fn default_fetch_timeout() -> u64 {
    30
}

impl Firmware {
    /// The slots directory, resolved.
    pub fn slots(&self) -> PathBuf {
        self.slots_dir.clone().unwrap_or_default()
    }

    /// Where each slot's root file system goes, if this appliance has them.
    pub fn rootfs(&self) -> Option<RootfsSlots> {
        match (&self.rootfs_a, &self.rootfs_b) {
            (Some(a), Some(b)) => Some(RootfsSlots {
                a: a.clone(),
                b: b.clone(),
            }),
            _ => None,
        }
    }

    /// Where the boot state lives, the defaults filled in.
    pub fn backend(&self) -> Backend {
        match self.bootloader {
            BootloaderKind::Files => Backend::Files,
            BootloaderKind::Uboot => Backend::UBoot {
                fw_env_config: self
                    .fw_env_config
                    .clone()
                    .unwrap_or_else(|| uboot::DEFAULT_CONFIG.into()),
            },
            BootloaderKind::Grub => Backend::Grub {
                grub_env: self.grub_env.clone().unwrap_or_else(|| grub::DEFAULT_PATH.into()),
            },
        }
    }
}

/// The most a `firmware.public_key` file is read of.
const MAX_KEY_BYTES: u64 = 64 * 1024;

impl Config {
    pub(super) fn check_firmware(&self) -> Result<(), ConfigError> {
        let Some(fw) = &self.firmware else { return Ok(()) };
        if fw.board.is_empty() {
            return Err(self.invalid("firmware.board", "must not be empty"));
        }
        if !(1..=100).contains(&fw.boot_limit) {
            return Err(self.invalid("firmware.boot_limit", "from 1 to 100"));
        }
        if !(1..=3600).contains(&fw.settle_secs) {
            return Err(self.invalid("firmware.settle_secs", "from 1 to 3600 seconds"));
        }
        if !(1..=3600).contains(&fw.fetch_timeout_secs) {
            return Err(self.invalid("firmware.fetch_timeout_secs", "from 1 to 3600 seconds"));
        }
        if fw.fw_env_config.is_some() && fw.bootloader != BootloaderKind::Uboot {
            return Err(self.invalid("firmware.fw_env_config", "only with bootloader = \"uboot\""));
        }
        if fw.grub_env.is_some() && fw.bootloader != BootloaderKind::Grub {
            return Err(self.invalid("firmware.grub_env", "only with bootloader = \"grub\""));
        }
        match (&fw.rootfs_a, &fw.rootfs_b) {
            (Some(_), None) => return Err(self.invalid("firmware.rootfs_b", "missing: rootfs_a needs it")),
            (None, Some(_)) => return Err(self.invalid("firmware.rootfs_a", "missing: rootfs_b needs it")),
            (Some(a), Some(b)) if a == b => {
                return Err(self.invalid(
                    "firmware.rootfs_b",
                    "the same as rootfs_a: each slot needs its own",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// The bootloader's environment: it can be read, and the U-Boot one written atomically.
    pub(super) fn check_firmware_files(&self) -> Result<(), ConfigError> {
        let Some(fw) = &self.firmware else { return Ok(()) };
        // A public key is a few hundred bytes: more is not one (and `/dev/zero` is not read
        // for ever).
        let mut text = Vec::new();
        std::fs::File::open(&fw.public_key)
            .and_then(|f| f.take(MAX_KEY_BYTES + 1).read_to_end(&mut text))
            .map_err(|e| {
                self.invalid(
                    "firmware.public_key",
                    format!("cannot read {}: {e}", fw.public_key.display()),
                )
            })?;
        if text.len() as u64 > MAX_KEY_BYTES {
            return Err(self.invalid(
                "firmware.public_key",
                format!(
                    "{}: more than {MAX_KEY_BYTES} bytes, which no public key is",
                    fw.public_key.display()
                ),
            ));
        }
        ::firmware::key::parse_public(&text)
            .map_err(|e| self.invalid("firmware.public_key", format!("{}: {e}", fw.public_key.display())))?;
        for (key, path) in [
            ("firmware.rootfs_a", &fw.rootfs_a),
            ("firmware.rootfs_b", &fw.rootfs_b),
        ] {
            let Some(path) = path else { continue };
            use std::os::unix::fs::FileTypeExt as _;
            match std::fs::metadata(path) {
                Ok(m) if m.is_file() || m.file_type().is_block_device() => {}
                Ok(_) => {
                    return Err(self.invalid(
                        key,
                        format!("{}: neither a block device nor a file", path.display()),
                    ));
                }
                Err(e) => return Err(self.invalid(key, format!("{}: {e}", path.display()))),
            }
        }
        if let Some(ca) = &fw.ca {
            engine_proxy::tls::load_roots(ca).map_err(|e| self.invalid("firmware.ca", e.to_string()))?;
        }
        match fw.backend() {
            Backend::Files => Ok(()),
            Backend::UBoot { fw_env_config } => {
                let key = "firmware.fw_env_config";
                let env = uboot::UBootEnv::from_config(&fw_env_config)
                    .map_err(|e| self.invalid(key, e.to_string()))?;
                if !env.redundant() {
                    return Err(self.invalid(
                        key,
                        format!(
                            "{} names one copy of the U-Boot environment: Kakehashi writes only a \
                             redundant one (two copies), where power loss during a write leaves the \
                             other copy valid",
                            fw_env_config.display()
                        ),
                    ));
                }
                env.read().map_err(|e| self.invalid(key, e.to_string()))?;
                Ok(())
            }
            Backend::Grub { grub_env } => {
                grub::GrubEnv::new(&grub_env)
                    .read()
                    .map_err(|e| self.invalid("firmware.grub_env", e.to_string()))?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::{Config, MINIMAL};

    /// A key file that never ends (a device, a pipe) is refused after a bounded read, and the
    /// checks that read no file (the fuzz target's) do not open it at all.
    #[test]
    fn a_public_key_without_end_is_refused_not_read_for_ever() {
        let text = format!("{MINIMAL}[firmware]\npublic_key = \"/dev/zero\"\n");
        let config = Config::from_text(&text, Path::new("/etc/kakehashi/gateway.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(config.check_settings().is_ok());
        let err = config.check_firmware_files().unwrap_err().to_string();
        assert!(
            err.contains("firmware.public_key") && err.contains("more than 65536 bytes"),
            "{err}"
        );
    }

    /// Root file systems per slot: both or neither, and two different targets.
    #[test]
    fn rootfs_needs_both_slots_and_two_targets() {
        let check = |lines: &str| {
            let text = format!("{MINIMAL}[firmware]\npublic_key = \"firmware.pub\"\n{lines}");
            Config::from_text(&text, Path::new("/etc/kakehashi/gateway.toml"))
                .and_then(|c| c.check_settings())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(check("rootfs_a = \"/dev/sda2\"\n").contains("firmware.rootfs_b"));
        assert!(check("rootfs_b = \"/dev/sda3\"\n").contains("firmware.rootfs_a"));
        assert!(
            check("rootfs_a = \"/dev/sda2\"\nrootfs_b = \"/dev/sda2\"\n").contains("the same as rootfs_a")
        );
        assert_eq!(check("rootfs_a = \"/dev/sda2\"\nrootfs_b = \"/dev/sda3\"\n"), "");
    }
}
