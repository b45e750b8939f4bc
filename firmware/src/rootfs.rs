//! Root file systems per slot: `[firmware] rootfs_a` and `rootfs_b` name where each slot's
//! root file system image goes, a partition (`/dev/mmcblk0p2`) or a file.
//!
//! An image that carries a root file system has it after the binary; the installer streams it
//! into the inactive slot's target, each chunk checked against its signed hash before it is
//! written, and syncs it before the slot is described and put on trial ([`crate::install`]).
//! The bootloader then boots that slot's partition by the same variables as ever (the trial
//! slot while `upgrade_available` is `1` and `bootcount` is below `bootlimit`). A target is
//! written in place: there is nowhere to write it beside, which is exactly why the slot is
//! cleared first and named as on trial only once the whole image is on it and synced.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::bootloader::Slot;
use crate::{Error, Result};

/// Where each slot's root file system goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootfsSlots {
    pub a: PathBuf,
    pub b: PathBuf,
}

impl RootfsSlots {
    pub fn of(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }

    /// Opens `slot`'s target for writing an image of `size` bytes, checking first that it
    /// exists (a block device, or a file), is not mounted, and can hold it. Nothing is written.
    pub fn open(&self, slot: Slot, size: u64) -> Result<File> {
        let path = self.of(slot);
        let refuse = |why: String| {
            Err(Error::Refused(format!(
                "root file system of slot {slot}, {}: {why}",
                path.display()
            )))
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return refuse("it does not exist (a partition, or a file made beforehand)".into());
            }
            Err(e) => return Err(Error::io("cannot examine", path)(e)),
        };
        let device = meta.file_type().is_block_device();
        if !device && !meta.is_file() {
            return refuse("neither a block device nor a file".into());
        }
        if let Some(mount) = mounted_at(path) {
            return refuse(format!("it is mounted at {mount}: it may be the running system"));
        }
        // A file is replaced whole; a partition keeps its size (and O_TRUNC would not apply).
        let mut file = OpenOptions::new()
            .write(true)
            .truncate(!device)
            .open(path)
            .map_err(Error::io("cannot open for writing", path))?;
        if device {
            let capacity = file
                .seek(SeekFrom::End(0))
                .map_err(Error::io("cannot find the size of", path))?;
            if capacity < size {
                return refuse(format!(
                    "it holds {capacity} bytes, and the image's root file system is {size}"
                ));
            }
            file.seek(SeekFrom::Start(0))
                .map_err(Error::io("cannot seek in", path))?;
        }
        Ok(file)
    }
}

/// Where `path` is mounted, if it is a mount's source (as `/proc/self/mounts` names it).
fn mounted_at(path: &Path) -> Option<String> {
    let target = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let source = fields.next()?;
        let point = fields.next()?;
        (Path::new(source).canonicalize().ok()? == target).then(|| point.replace("\\040", " "))
    })
}
