//! The files + systemd backend: for an appliance on a general-purpose Linux.
//!
//! ```text
//! SLOTS/a/kakehashi    SLOTS/a/slot.json      the binary, and what it is (version, signer)
//! SLOTS/b/kakehashi    SLOTS/b/slot.json
//! SLOTS/current -> a                          the committed slot: a symlink, replaced by rename
//! SLOTS/state.json                            trial slot, bootcount, bootlimit (atomic writes)
//! ```
//! The systemd unit (`deploy/kakehashi-firmware.service`) runs `kakehashi firmware boot`, which
//! reads this state at every start ([`crate::boot`]). A slot's `kakehashi` appears only by a
//! rename of a complete, synced file, and a slot is named in `state.json` only after that, so
//! nothing half-written is ever booted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bootloader::{BootEnv, Bootloader, Slot};
use crate::{Error, Result, atomic};

/// The binary's name in a slot.
pub const BINARY: &str = "kakehashi";
const CURRENT: &str = "current";
const STATE: &str = "state.json";
const INFO: &str = "slot.json";

/// What a slot holds: written after its binary, removed before the binary is replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotInfo {
    pub version: String,
    pub size: u64,
    /// The firmware key that signed it (absent for the binary adopted at the first install).
    pub key: Option<String>,
    /// The size of the root file system written to the slot's partition with it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<u64>,
}

#[derive(Serialize, Deserialize, Default)]
struct State {
    trial: Option<Slot>,
    bootcount: u32,
    bootlimit: u32,
    rolled_back: Option<String>,
}

/// The slots directory.
pub struct Files {
    dir: PathBuf,
}

impl Files {
    pub fn new(dir: &Path) -> Files {
        Files { dir: dir.to_owned() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.dir.join(slot.name())
    }

    pub fn binary(&self, slot: Slot) -> PathBuf {
        self.slot_dir(slot).join(BINARY)
    }

    /// The slot whose directory holds this process's binary: the version that runs, which the
    /// boot state alone cannot say (a trial runs beside a committed slot; a binary started by
    /// hand runs from neither).
    pub fn running(&self) -> Option<Slot> {
        let exe = std::env::current_exe().ok()?.canonicalize().ok()?;
        [Slot::A, Slot::B]
            .into_iter()
            .find(|s| self.slot_dir(*s).canonicalize().ok().as_deref() == exe.parent())
    }

    pub fn info_path(&self, slot: Slot) -> PathBuf {
        self.slot_dir(slot).join(INFO)
    }

    /// What a slot holds, or `None` if it is empty or was being written.
    pub fn info(&self, slot: Slot) -> Result<Option<SlotInfo>> {
        let path = self.info_path(slot);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::State(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("cannot read", &path)(e)),
        }
    }

    pub fn write_info(&self, slot: Slot, info: &SlotInfo) -> Result<()> {
        let text = serde_json::to_vec_pretty(info).map_err(|e| Error::State(e.to_string()))?;
        atomic::write(&self.info_path(slot), &text, 0o644)
    }

    /// Marks a slot empty before its binary is replaced.
    /// Removes the slot's binary, if it has one. Only for a slot whose description is gone
    /// ([`Files::clear_info`], synced before): what power loss leaves, the binary or not, is an
    /// empty slot either way, so nothing is synced here.
    pub fn remove_binary(&self, slot: Slot) -> Result<()> {
        let path = self.binary(slot);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("cannot remove", &path)(e)),
        }
    }

    pub fn clear_info(&self, slot: Slot) -> Result<()> {
        let path = self.info_path(slot);
        match std::fs::remove_file(&path) {
            Ok(()) => atomic::sync_parent(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("cannot remove", &path)(e)),
        }
    }

    /// Sets up the slots on an appliance that has none: slot `a` gets a copy of `binary` (the
    /// running one) as `version`, committed in `bootloader`. Does nothing if the bootloader
    /// already names a committed slot.
    pub fn adopt(
        &self,
        bootloader: &dyn Bootloader,
        binary: &Path,
        version: &str,
        bootlimit: u32,
    ) -> Result<bool> {
        if bootloader.read()?.is_some() {
            return Ok(false);
        }
        let slot = Slot::A;
        let dir = self.slot_dir(slot);
        std::fs::create_dir_all(&dir).map_err(Error::io("cannot create", &dir))?;
        std::fs::create_dir_all(self.slot_dir(slot.other())).map_err(Error::io("cannot create", &dir))?;
        let target = self.binary(slot);
        let temp = atomic::temp_name(&target);
        std::fs::copy(binary, &temp).map_err(Error::io("cannot copy the running binary to", &temp))?;
        let size = std::fs::File::open(&temp)
            .and_then(|f| {
                f.sync_all()?;
                f.metadata()
            })
            .map_err(Error::io("cannot sync", &temp))?
            .len();
        std::fs::rename(&temp, &target).map_err(Error::io("cannot rename into place", &target))?;
        atomic::sync_parent(&target)?;
        self.write_info(
            slot,
            &SlotInfo {
                version: version.to_owned(),
                size,
                key: None,
                rootfs: None,
            },
        )?;
        bootloader.write(&BootEnv {
            committed: slot,
            trial: None,
            bootcount: 0,
            bootlimit,
            rolled_back: None,
        })?;
        Ok(true)
    }

    fn current(&self) -> Result<Option<Slot>> {
        let path = self.dir.join(CURRENT);
        match std::fs::read_link(&path) {
            Ok(target) => {
                let name = target.to_string_lossy();
                Slot::from_name(&name)
                    .map(Some)
                    .ok_or_else(|| Error::State(format!("{} points to {name:?}, not a or b", path.display())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("cannot read the symlink", &path)(e)),
        }
    }

    /// Points `current` at `slot` unless it points there: for a backend whose state lives in a
    /// bootloader's environment, `current` follows its committed slot, since the systemd unit
    /// starts `current/kakehashi` (which reads the environment and `exec`s the slot it names).
    pub fn follow(&self, slot: Slot) -> Result<()> {
        if self.current()? == Some(slot) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(Error::io("cannot create", &self.dir))?;
        self.point_current(slot)
    }

    fn point_current(&self, slot: Slot) -> Result<()> {
        let path = self.dir.join(CURRENT);
        let temp = atomic::temp_name(&path);
        match std::fs::remove_file(&temp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("cannot remove", &temp)(e)),
        }
        std::os::unix::fs::symlink(slot.name(), &temp)
            .map_err(Error::io("cannot create the symlink", &temp))?;
        std::fs::rename(&temp, &path).map_err(Error::io("cannot rename into place", &path))?;
        atomic::sync_parent(&path)
    }
}

impl Bootloader for Files {
    fn read(&self) -> Result<Option<BootEnv>> {
        let Some(committed) = self.current()? else {
            return Ok(None);
        };
        let path = self.dir.join(STATE);
        let state: State = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::State(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(Error::io("cannot read", &path)(e)),
        };
        // A commit switches `current` first, then clears the trial: power lost between the two
        // leaves a trial naming the committed slot, which is simply committed.
        let trial = state.trial.filter(|t| *t != committed);
        Ok(Some(BootEnv {
            committed,
            trial,
            bootcount: if trial.is_some() { state.bootcount } else { 0 },
            bootlimit: state.bootlimit,
            rolled_back: state.rolled_back,
        }))
    }

    fn write(&self, env: &BootEnv) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(Error::io("cannot create", &self.dir))?;
        if self.current()? != Some(env.committed) {
            self.point_current(env.committed)?;
        }
        let state = State {
            trial: env.trial,
            bootcount: env.bootcount,
            bootlimit: env.bootlimit,
            rolled_back: env.rolled_back.clone(),
        };
        let text = serde_json::to_vec_pretty(&state).map_err(|e| Error::State(e.to_string()))?;
        atomic::write(&self.dir.join(STATE), &text, 0o644)
    }
}
