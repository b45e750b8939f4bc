//! The boot state as bootloader variables: the contract between Kakehashi and a U-Boot boot
//! script or a `grub.cfg` ([`crate::uboot`], [`crate::grub`] keep them; docs/firmware.md shows
//! the scripts).
//!
//! | variable | value | meaning |
//! |---|---|---|
//! | `kakehashi_slot` | `a` or `b` | the committed slot |
//! | `upgrade_available` | `1` or `0` | `1`: the other slot is on trial |
//! | `bootcount` | decimal | starts of the trial slot so far (`0` without a trial) |
//! | `bootlimit` | decimal | starts a trial gets before the committed slot runs again |
//! | `kakehashi_rolled_back` | text | the last trial given up, and why (absent if none) |
//!
//! `upgrade_available`, `bootcount` and `bootlimit` are the names U-Boot's own boot counting
//! uses. The trial slot is not stored: with two slots it is always the one not committed, and a
//! value that cannot be there cannot disagree with the others.

use std::borrow::Cow;

use crate::bootloader::{BootEnv, Slot};
use crate::{Error, Result};

pub const SLOT: &str = "kakehashi_slot";
pub const UPGRADE_AVAILABLE: &str = "upgrade_available";
pub const BOOTCOUNT: &str = "bootcount";
pub const BOOTLIMIT: &str = "bootlimit";
pub const ROLLED_BACK: &str = "kakehashi_rolled_back";

/// An environment's variables, as a backend keeps them: every variable it does not own stays as
/// it was, byte for byte.
pub(crate) trait Vars {
    fn get(&self, name: &str) -> Option<Cow<'_, [u8]>>;
    /// Sets `name`, or removes it with `None`.
    fn set(&mut self, name: &str, value: Option<&[u8]>);
}

/// The boot state in `vars`, or `None` if Kakehashi never wrote one there (no `kakehashi_slot`).
/// `place` names the environment in errors.
pub(crate) fn decode(vars: &dyn Vars, place: &str) -> Result<Option<BootEnv>> {
    let Some(slot) = vars.get(SLOT) else {
        return Ok(None);
    };
    let invalid = |name: &str, value: &[u8], expected: &str| Error::Env {
        place: place.to_owned(),
        why: format!(
            "{name} is {:?}: expected {expected}",
            String::from_utf8_lossy(value)
        ),
    };
    let committed = std::str::from_utf8(&slot)
        .ok()
        .and_then(Slot::from_name)
        .ok_or_else(|| invalid(SLOT, &slot, "a or b"))?;
    let trial = match vars.get(UPGRADE_AVAILABLE).as_deref() {
        None | Some(b"0") => None,
        Some(b"1") => Some(committed.other()),
        Some(other) => return Err(invalid(UPGRADE_AVAILABLE, other, "0 or 1")),
    };
    let number = |name: &str| -> Result<Option<u32>> {
        match vars.get(name) {
            None => Ok(None),
            Some(value) => std::str::from_utf8(&value)
                .ok()
                .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|t| t.parse().ok())
                .map(Some)
                .ok_or_else(|| invalid(name, &value, "a decimal number")),
        }
    };
    let bootcount = number(BOOTCOUNT)?.unwrap_or(0);
    let bootlimit = number(BOOTLIMIT)?.ok_or_else(|| Error::Env {
        place: place.to_owned(),
        why: format!("{SLOT} is set but {BOOTLIMIT} is not"),
    })?;
    Ok(Some(BootEnv {
        committed,
        trial,
        bootcount: if trial.is_some() { bootcount } else { 0 },
        bootlimit,
        rolled_back: vars
            .get(ROLLED_BACK)
            .map(|v| String::from_utf8_lossy(&v).into_owned()),
    }))
}

/// Writes `env` into `vars`, leaving every other variable alone. A trial can only be the slot
/// not committed; one naming the committed slot is no trial (as [`crate::files`] reads it).
pub(crate) fn encode(env: &BootEnv, vars: &mut dyn Vars) {
    let trial = env.trial.is_some_and(|t| t != env.committed);
    vars.set(SLOT, Some(env.committed.name().as_bytes()));
    vars.set(UPGRADE_AVAILABLE, Some(if trial { b"1" } else { b"0" }));
    let bootcount = if trial { env.bootcount } else { 0 };
    vars.set(BOOTCOUNT, Some(bootcount.to_string().as_bytes()));
    vars.set(BOOTLIMIT, Some(env.bootlimit.to_string().as_bytes()));
    // One line of plain text: a boot script prints it, and neither format needs escapes for it.
    let rolled_back = env.rolled_back.as_ref().map(|why| {
        why.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>()
    });
    vars.set(ROLLED_BACK, rolled_back.as_deref().map(str::as_bytes));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Map(Vec<(String, Vec<u8>)>);

    impl Vars for Map {
        fn get(&self, name: &str) -> Option<Cow<'_, [u8]>> {
            self.0
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| Cow::Borrowed(v.as_slice()))
        }
        fn set(&mut self, name: &str, value: Option<&[u8]>) {
            self.0.retain(|(n, _)| n != name);
            if let Some(v) = value {
                self.0.push((name.to_owned(), v.to_vec()));
            }
        }
    }

    fn env(trial: Option<Slot>, rolled_back: Option<&str>) -> BootEnv {
        BootEnv {
            committed: Slot::A,
            trial,
            bootcount: if trial.is_some() { 2 } else { 0 },
            bootlimit: 3,
            rolled_back: rolled_back.map(str::to_owned),
        }
    }

    #[test]
    fn round_trips_and_keeps_what_it_does_not_own() {
        let mut vars = Map::default();
        vars.set("bootcmd", Some(b"run kakehashi_boot"));
        assert_eq!(decode(&vars, "test").expect("decode"), None);
        for e in [
            env(None, None),
            env(Some(Slot::B), None),
            env(None, Some("slot b: failed")),
        ] {
            encode(&e, &mut vars);
            assert_eq!(decode(&vars, "test").expect("decode"), Some(e));
        }
        assert_eq!(vars.get("bootcmd").as_deref(), Some(&b"run kakehashi_boot"[..]));
        encode(&env(None, None), &mut vars);
        assert_eq!(vars.get(ROLLED_BACK), None, "removed, not left empty");
    }

    #[test]
    fn a_reason_with_line_breaks_is_kept_on_one_line() {
        let mut vars = Map::default();
        encode(&env(None, Some("a\nb\tc")), &mut vars);
        assert_eq!(vars.get(ROLLED_BACK).as_deref(), Some(&b"a b c"[..]));
    }

    #[test]
    fn bad_values_are_named() {
        for (name, value, expected) in [
            (SLOT, "c", "kakehashi_slot is \"c\": expected a or b"),
            (
                UPGRADE_AVAILABLE,
                "yes",
                "upgrade_available is \"yes\": expected 0 or 1",
            ),
            (BOOTCOUNT, "-1", "bootcount is \"-1\": expected a decimal number"),
            (
                BOOTLIMIT,
                "0x3",
                "bootlimit is \"0x3\": expected a decimal number",
            ),
        ] {
            let mut vars = Map::default();
            encode(&env(Some(Slot::B), None), &mut vars);
            vars.set(name, Some(value.as_bytes()));
            let err = decode(&vars, "ENV").expect_err(name);
            assert_eq!(err.to_string(), format!("the boot environment ENV: {expected}"));
        }
        let mut vars = Map::default();
        encode(&env(None, None), &mut vars);
        vars.set(BOOTLIMIT, None);
        assert!(
            decode(&vars, "ENV")
                .expect_err("no limit")
                .to_string()
                .contains("bootlimit is not")
        );
    }
}
