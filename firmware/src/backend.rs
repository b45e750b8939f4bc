//! Which bootloader keeps the boot state (`[firmware] bootloader` in `gateway.toml`).
//!
//! The slots stay directories of [`Files`] with every backend: what moves is the boot state.
//! With U-Boot or GRUB, the environment is the truth and the slots directory's `current`
//! symlink follows its committed slot, written after it: the systemd unit starts
//! `current/kakehashi firmware boot`, which reads the environment and runs the slot it names.
//! Power loss between the two leaves `current` at the slot committed before, whose binary is
//! whole (an install only ever writes the slot not committed, and the environment is read
//! first); the next `firmware` command points it right again ([`Files::follow`]).

use std::path::PathBuf;

use crate::Result;
use crate::bootloader::{BootEnv, Bootloader};
use crate::files::Files;
use crate::grub::GrubEnv;
use crate::uboot::UBootEnv;

/// Where the boot state lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `SLOTS/current` and `SLOTS/state.json` ([`crate::files`]).
    Files,
    /// The U-Boot environment described by this `fw_env.config` ([`crate::uboot`]).
    UBoot { fw_env_config: PathBuf },
    /// This GRUB environment block ([`crate::grub`]).
    Grub { grub_env: PathBuf },
}

impl Backend {
    /// The bootloader for the slots in `files`.
    pub fn open(&self, files: &Files) -> Result<Box<dyn Bootloader>> {
        let slots = Files::new(files.dir());
        Ok(match self {
            Backend::Files => Box::new(slots),
            Backend::UBoot { fw_env_config } => Box::new(Followed {
                env: UBootEnv::from_config(fw_env_config)?,
                slots,
            }),
            Backend::Grub { grub_env } => Box::new(Followed {
                env: GrubEnv::new(grub_env),
                slots,
            }),
        })
    }
}

/// A bootloader environment, with the slots' `current` symlink following its committed slot.
struct Followed<B> {
    env: B,
    slots: Files,
}

impl<B: Bootloader> Bootloader for Followed<B> {
    fn read(&self) -> Result<Option<BootEnv>> {
        self.env.read()
    }

    fn write(&self, env: &BootEnv) -> Result<()> {
        self.env.write(env)?;
        self.slots.follow(env.committed)
    }
}
