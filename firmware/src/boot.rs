//! At each start: which slot runs. The trial slot gets `bootlimit` starts; past them, the
//! committed slot runs again and the trial is given up. Committing makes the trial slot the
//! committed one and raises the version floor.

use crate::bootloader::{BootEnv, Bootloader, Slot};
use crate::floor::Floor;
use crate::{Error, Result, Version};

/// What to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The committed slot; `rolled_back` if a trial was just given up.
    Committed { slot: Slot, rolled_back: Option<Slot> },
    /// The trial slot, on its `attempt`-th start of `limit`.
    Trial { slot: Slot, attempt: u32, limit: u32 },
}

/// Decides which slot starts now, and records the start (the trial's boot count) first, so a
/// crash or a hang of the trial version counts even if nothing runs after it.
pub fn choose(bootloader: &dyn Bootloader) -> Result<Choice> {
    let mut env = read(bootloader)?;
    let Some(trial) = env.trial else {
        return Ok(Choice::Committed {
            slot: env.committed,
            rolled_back: None,
        });
    };
    if env.bootcount < env.bootlimit {
        env.bootcount += 1;
        bootloader.write(&env)?;
        return Ok(Choice::Trial {
            slot: trial,
            attempt: env.bootcount,
            limit: env.bootlimit,
        });
    }
    env.rolled_back = Some(format!(
        "slot {trial}: it started {} times without committing (boot limit {})",
        env.bootcount, env.bootlimit
    ));
    env.trial = None;
    env.bootcount = 0;
    bootloader.write(&env)?;
    Ok(Choice::Committed {
        slot: env.committed,
        rolled_back: Some(trial),
    })
}

/// Takes back the start [`choose`] counted for the trial in `slot`, after an orderly stop (a
/// restart or a reboot the operator asked for, the trial version shut down cleanly): a normal
/// reboot during the trial is not a failed start. A crash, a hang or a power loss keeps its
/// count. Returns whether a start was taken back (none when the trial is no longer `slot`'s).
pub fn uncount(bootloader: &dyn Bootloader, slot: Slot) -> Result<bool> {
    let mut env = read(bootloader)?;
    if env.trial != Some(slot) || env.bootcount == 0 {
        return Ok(false);
    }
    env.bootcount -= 1;
    bootloader.write(&env)?;
    Ok(true)
}

/// Commits the trial slot, then raises the floor to its `version`. Refused with no trial.
pub fn commit(bootloader: &dyn Bootloader, floor: &Floor, version: &Version) -> Result<Slot> {
    let mut env = read(bootloader)?;
    let Some(trial) = env.trial else {
        return Err(Error::Refused("no version is on trial: nothing to commit".into()));
    };
    env.committed = trial;
    env.trial = None;
    env.bootcount = 0;
    env.rolled_back = None;
    bootloader.write(&env)?;
    floor.raise(version)?;
    Ok(trial)
}

/// Gives up the trial (`why` is kept for `firmware status`); the committed slot runs at the next
/// start. Refused with no trial.
pub fn abandon(bootloader: &dyn Bootloader, why: &str) -> Result<Slot> {
    let mut env = read(bootloader)?;
    let Some(trial) = env.trial else {
        return Err(Error::Refused(
            "no version is on trial: nothing to roll back".into(),
        ));
    };
    env.trial = None;
    env.bootcount = 0;
    env.rolled_back = Some(format!("slot {trial}: {why}"));
    bootloader.write(&env)?;
    Ok(trial)
}

/// Makes the other slot the committed one again (an operator's rollback of a committed update).
/// The caller checks that the other slot holds a complete binary.
pub fn switch_back(bootloader: &dyn Bootloader, why: &str) -> Result<Slot> {
    let mut env = read(bootloader)?;
    if let Some(trial) = env.trial {
        return Err(Error::Refused(format!(
            "slot {trial} is on trial: roll the trial back first"
        )));
    }
    let from = env.committed;
    env.committed = from.other();
    env.rolled_back = Some(format!("slot {from}: {why}"));
    bootloader.write(&env)?;
    Ok(env.committed)
}

fn read(bootloader: &dyn Bootloader) -> Result<BootEnv> {
    bootloader
        .read()?
        .ok_or_else(|| Error::State("the slots were never set up (no committed slot)".into()))
}
