//! The U-Boot environment backend: the boot state in the environment U-Boot reads at every
//! boot, in the format `fw_printenv` and `fw_setenv` (libubootenv) read and write.
//!
//! Where the environment is comes from `/etc/fw_env.config`, the file those tools read: one line
//! per copy, `DEVICE OFFSET SIZE [SECTOR_SIZE [SECTORS]]`, the offset a C integer (`0x…` hex,
//! `0…` octal, else decimal; negative counts back from the device's end), the size hexadecimal
//! with or without `0x`, as libubootenv reads them. Files and block devices only: an MTD
//! device must be erased before it is written and a UBI volume updated whole, which this
//! backend does not do.
//!
//! A copy is a CRC-32 (little-endian, over the rest of the copy), then, in a redundant
//! environment, one flags byte, then the variables: `name=value` strings, each ending in a NUL,
//! the last followed by a second NUL, padding to the copy's size. Of two copies whose CRCs
//! verify, the one with the higher flags value is current, 0 counting as above 255 (a counter
//! that wrapped): libubootenv's rule for files and block devices.
//!
//! **A write goes to the copy that is not current**, with the flags one above the current's,
//! and is synced; the current copy is not touched. Power loss during the write leaves the new
//! copy with a CRC that does not verify, so the old one is still read; after the sync the new
//! one is. Every variable this backend does not own is written back byte for byte, in its
//! place. **A single-copy environment is read but never written**: it is rewritten in place,
//! and power loss during that leaves no valid environment at all (U-Boot then boots its
//! built-in default, and the boot state is lost).
//!
//! Writers agree through the lock file libubootenv takes (`/var/lock/fw_printenv.lock`,
//! `flock`), so a `fw_setenv` run by hand at the same moment does not undo a write.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::bootloader::{BootEnv, Bootloader};
use crate::vars::{self, Vars};
use crate::{Error, Result};

/// Where `fw_printenv` looks for the environment's location.
pub const DEFAULT_CONFIG: &str = "/etc/fw_env.config";

/// The lock libubootenv takes around every read and write.
const LOCK: &str = "/var/lock/fw_printenv.lock";

/// Where one copy of the environment is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Area {
    pub path: PathBuf,
    /// From the start of the file or device; negative: back from its end.
    pub offset: i64,
    pub size: usize,
}

impl Area {
    fn describe(&self) -> String {
        let offset = if self.offset < 0 {
            format!("-{:#x}", self.offset.unsigned_abs())
        } else {
            format!("{:#x}", self.offset)
        };
        format!("{} at {offset} ({:#x} bytes)", self.path.display(), self.size)
    }

    fn seek(&self) -> SeekFrom {
        if self.offset < 0 {
            SeekFrom::End(self.offset)
        } else {
            SeekFrom::Start(self.offset.unsigned_abs())
        }
    }

    fn read(&self) -> Result<Vec<u8>> {
        let mut file = File::open(&self.path).map_err(Error::io("cannot open", &self.path))?;
        let mut bytes = vec![0; self.size];
        file.seek(self.seek())
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => Error::Env {
                    place: self.describe(),
                    why: "the file ends before the copy does".into(),
                },
                _ => Error::io("cannot read", &self.path)(e),
            })?;
        Ok(bytes)
    }

    /// Writes the whole copy and syncs it: once this returns, the copy survives power loss.
    fn write(&self, bytes: &[u8]) -> Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(Error::io("cannot open for writing", &self.path))?;
        file.seek(self.seek())
            .and_then(|_| file.write_all(bytes))
            .map_err(Error::io("cannot write", &self.path))?;
        file.sync_all().map_err(Error::io("cannot sync", &self.path))
    }
}

/// A U-Boot environment of one copy or two (redundant).
pub struct UBootEnv {
    areas: Vec<Area>,
    /// Names the environment in errors: the configuration it came from.
    place: String,
    lock: Option<PathBuf>,
}

impl UBootEnv {
    /// The environment `fw_env.config` at `path` describes.
    pub fn from_config(path: &Path) -> Result<UBootEnv> {
        let text = std::fs::read_to_string(path).map_err(Error::io("cannot read", path))?;
        let areas = parse_config(&text).map_err(|why| Error::Env {
            place: format!("configuration {}", path.display()),
            why,
        })?;
        UBootEnv::new(areas, &format!("in {}", path.display()))
    }

    /// The environment in `areas` (one or two, of the same size); `place` names it in errors.
    pub fn new(areas: Vec<Area>, place: &str) -> Result<UBootEnv> {
        let error = |why: String| Error::Env {
            place: place.to_owned(),
            why,
        };
        let [first, rest @ ..] = areas.as_slice() else {
            return Err(error("no copy of the environment is named".into()));
        };
        if rest.len() > 1 {
            return Err(error("more than two copies are named".into()));
        }
        let env = UBootEnv {
            place: place.to_owned(),
            lock: Some(PathBuf::from(LOCK)),
            areas: areas.clone(),
        };
        if first.size < env.header() + 2 {
            return Err(error(format!(
                "{}: too small for an environment",
                first.describe()
            )));
        }
        if let [second] = rest {
            if second.size != first.size {
                return Err(error(format!(
                    "the two copies differ in size: {} and {}",
                    first.describe(),
                    second.describe()
                )));
            }
            let overlap = second.offset.abs_diff(first.offset) < first.size as u64
                && (second.offset < 0) == (first.offset < 0);
            if second.path == first.path && overlap {
                return Err(error(format!(
                    "the two copies overlap: {} and {}",
                    first.describe(),
                    second.describe()
                )));
            }
        }
        Ok(env)
    }

    /// Two copies: writes are atomic. One: this backend only reads.
    pub fn redundant(&self) -> bool {
        self.areas.len() == 2
    }

    pub fn areas(&self) -> &[Area] {
        &self.areas
    }

    /// Bytes before the variables: the CRC, and the flags byte in a redundant environment.
    fn header(&self) -> usize {
        if self.redundant() { 5 } else { 4 }
    }

    /// Takes libubootenv's lock, if the lock file can be opened at all (it cannot where
    /// `/var/lock` is read-only or absent: then there is no other writer to agree with).
    fn lock(&self) -> Option<File> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.lock.as_ref()?)
            .ok()?;
        file.lock().ok()?;
        Some(file)
    }

    /// The current copy: its index, flags and variables.
    fn load(&self) -> Result<Current> {
        let header = self.header();
        let mut valid = Vec::with_capacity(2);
        for (index, area) in self.areas.iter().enumerate() {
            let bytes = area.read()?;
            let stored = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            if crc32fast::hash(&bytes[header..]) == stored {
                valid.push((index, if self.redundant() { bytes[4] } else { 0 }, bytes));
            }
        }
        // Of two valid copies the second wins only if it is newer: equal flags read the first,
        // as libubootenv does.
        let (index, flags, bytes) = valid
            .into_iter()
            .reduce(|first, second| if newer(second.1, first.1) { second } else { first })
            .ok_or_else(|| self.no_valid_copy())?;
        let vars = Entries::parse(&bytes[header..]).ok_or_else(|| Error::Env {
            place: self.areas[index].describe(),
            why: "its CRC verifies, but its variables do not end in two NULs".into(),
        })?;
        Ok(Current { index, flags, vars })
    }

    fn no_valid_copy(&self) -> Error {
        let copies: Vec<String> = self.areas.iter().map(Area::describe).collect();
        Error::Env {
            place: self.place.clone(),
            why: format!(
                "no copy has a valid CRC ({}): U-Boot runs on its built-in default environment. \
                 Save it once (saveenv at the U-Boot prompt), then try again",
                copies.join("; ")
            ),
        }
    }
}

/// Whether flags `a` are newer than `b`: higher, or 0 after 255 (the counter wrapped).
fn newer(a: u8, b: u8) -> bool {
    match (a, b) {
        (0, 0xff) => true,
        (0xff, 0) => false,
        _ => a > b,
    }
}

/// What `load` found.
struct Current {
    index: usize,
    flags: u8,
    vars: Entries,
}

impl Bootloader for UBootEnv {
    fn read(&self) -> Result<Option<BootEnv>> {
        let _lock = self.lock();
        let current = self.load()?;
        vars::decode(&current.vars, &self.areas[current.index].describe())
    }

    fn write(&self, env: &BootEnv) -> Result<()> {
        if !self.redundant() {
            return Err(Error::Env {
                place: self.place.clone(),
                why: "it has one copy, which cannot be rewritten so that power loss leaves a \
                      valid environment: name a second copy in fw_env.config (U-Boot's \
                      CONFIG_SYS_REDUNDAND_ENVIRONMENT)"
                    .into(),
            });
        }
        let _lock = self.lock();
        let Current {
            index,
            flags,
            mut vars,
        } = self.load()?;
        vars::encode(env, &mut vars);
        let target = &self.areas[1 - index];
        let mut bytes = vec![0; target.size];
        bytes[4] = flags.wrapping_add(1);
        vars.store(&mut bytes[5..]).map_err(|needed| Error::Env {
            place: self.place.clone(),
            why: format!(
                "full: the variables need {needed} bytes and a copy holds {}",
                target.size - 5
            ),
        })?;
        let crc = crc32fast::hash(&bytes[5..]);
        bytes[..4].copy_from_slice(&crc.to_le_bytes());
        target.write(&bytes)
    }
}

/// The variables of a copy: `name=value` strings in their order, kept whole (an entry without
/// `=` too: U-Boot ignores it, and this backend loses nothing).
struct Entries(Vec<Vec<u8>>);

impl Entries {
    /// The strings up to the empty one; `None` if the data ends first.
    fn parse(data: &[u8]) -> Option<Entries> {
        let mut entries = Vec::new();
        let mut rest = data;
        loop {
            let end = rest.iter().position(|&b| b == 0)?;
            if end == 0 {
                return Some(Entries(entries));
            }
            entries.push(rest[..end].to_vec());
            rest = &rest[end + 1..];
        }
    }

    /// Writes the strings and the final NUL into `data` (zeroed); the bytes needed if they do
    /// not fit.
    fn store(&self, data: &mut [u8]) -> Result<(), usize> {
        let needed = self.0.iter().map(|e| e.len() + 1).sum::<usize>() + 1;
        if needed > data.len() {
            return Err(needed);
        }
        let mut at = 0;
        for entry in &self.0 {
            data[at..at + entry.len()].copy_from_slice(entry);
            at += entry.len() + 1;
        }
        Ok(())
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|e| {
            e.strip_prefix(name.as_bytes())
                .is_some_and(|rest| rest.first() == Some(&b'='))
        })
    }
}

impl Vars for Entries {
    fn get(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        self.position(name)
            .map(|i| Cow::Borrowed(&self.0[i][name.len() + 1..]))
    }

    fn set(&mut self, name: &str, value: Option<&[u8]>) {
        let entry = value.map(|v| [name.as_bytes(), b"=", v].concat());
        match (self.position(name), entry) {
            (Some(i), Some(entry)) => self.0[i] = entry,
            (Some(i), None) => {
                self.0.remove(i);
            }
            (None, Some(entry)) => self.0.push(entry),
            (None, None) => {}
        }
    }
}

/// The copies `fw_env.config` names, or what is wrong with it (naming the line).
pub fn parse_config(text: &str) -> Result<Vec<Area>, String> {
    let mut areas = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |why: String| format!("line {}: {why}", number + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [device, offset, size, ..] = fields.as_slice() else {
            return Err(at(format!(
                "{line:?}: expected DEVICE OFFSET SIZE [SECTOR_SIZE [SECTORS]]"
            )));
        };
        if device.starts_with("/dev/mtd") || device.starts_with("/dev/ubi") || device.contains(':') {
            return Err(at(format!(
                "{device} is an MTD or UBI device: Kakehashi writes the environment only to \
                 files and block devices"
            )));
        }
        if !device.starts_with('/') {
            return Err(at(format!("{device}: the device must be an absolute path")));
        }
        let offset = c_integer(offset).ok_or_else(|| {
            at(format!(
                "offset {offset:?} is not a number (0x… hex, 0… octal, or decimal)"
            ))
        })?;
        let size = size
            .strip_prefix("0x")
            .or_else(|| size.strip_prefix("0X"))
            .or(Some(size))
            .and_then(|hex| usize::from_str_radix(hex, 16).ok())
            .filter(|s| *s > 0)
            .ok_or_else(|| at(format!("size {size:?} is not a positive hexadecimal number")))?;
        if areas.len() == 2 {
            return Err(at("a third copy: an environment has one or two".into()));
        }
        areas.push(Area {
            path: PathBuf::from(device),
            offset,
            size,
        });
    }
    if areas.is_empty() {
        return Err("no line names a copy of the environment (DEVICE OFFSET SIZE)".into());
    }
    Ok(areas)
}

/// An integer as C's `strtoll` with base 0 reads it, whole: `0x` hexadecimal, a leading `0`
/// octal, else decimal, with an optional sign.
fn c_integer(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (radix, digits) = if let Some(hex) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        (16, hex)
    } else if digits.len() > 1 && digits.starts_with('0') {
        (8, &digits[1..])
    } else {
        (10, digits)
    };
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return None;
    }
    let value = i64::from_str_radix(digits, radix).ok()?;
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests;
