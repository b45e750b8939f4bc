//! The bootloader interface: which slot is committed, which is on trial, and how often the trial
//! slot has started. Backends keep this where their bootloader reads it ([`crate::files`]: a
//! `current` symlink and a state file for systemd).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Result;

/// One of the two slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn from_name(name: &str) -> Option<Slot> {
        match name {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the bootloader keeps, in the words U-Boot uses: a slot selector, `upgrade_available`
/// (a trial slot), `bootcount` and `bootlimit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootEnv {
    /// The slot that boots when no trial is pending or the trial failed.
    pub committed: Slot,
    /// The slot on trial, if any (`upgrade_available`).
    pub trial: Option<Slot>,
    /// How many times the trial slot has started.
    pub bootcount: u32,
    /// How many starts the trial slot gets before the committed slot runs again.
    pub bootlimit: u32,
    /// The last trial given up, and why, for `firmware status`.
    pub rolled_back: Option<String>,
}

/// A place the boot state lives. `write` must be atomic: after power loss, `read` returns the
/// old state or the new one, never a mixture that boots neither.
pub trait Bootloader {
    /// The state, or `None` on an appliance whose slots were never set up.
    fn read(&self) -> Result<Option<BootEnv>>;
    fn write(&self, env: &BootEnv) -> Result<()>;
}
