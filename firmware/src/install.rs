//! Installing an image into the inactive slot.
//!
//! The order of writes, and what power loss after each leaves (the unit tests stop at every one):
//! 1. [`Step::Cleared`]: the inactive slot's `slot.json` removed: the slot is now "empty";
//! 2. [`Step::Chunk`]: each chunk checked against its signed hash, then appended to
//!    `.kakehashi.partial` (a chunk that does not match is never written);
//! 3. [`Step::Synced`]: the partial file complete and synced;
//! 4. [`Step::Renamed`]: renamed to `kakehashi` (the directory synced);
//! 5. with a root file system in the image: [`Step::RootfsChunk`], each chunk checked, then
//!    written in place to the slot's partition or file ([`crate::rootfs`]); [`Step::RootfsSynced`]:
//!    all of it written and synced;
//! 6. [`Step::Described`]: `slot.json` written: the slot holds this version;
//! 7. [`Step::Trial`]: the boot state names the slot as on trial: the install is done.
//!
//! Before step 7 the boot state still names only the committed slot, which no step touches, so
//! it boots as before; a later install starts again from step 1. The payload is streamed: one
//! chunk in memory, the image never copied, at most the partial file on disk beside the old
//! binary of the inactive slot.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use crate::bootloader::{Bootloader, Slot};
use crate::files::{Files, SlotInfo};
use crate::image::{self, Appliance, Opened, read_full};
use crate::manifest::{PAYLOAD_NAME, Payload};
use crate::rootfs::RootfsSlots;
use crate::{Error, Result, atomic};

/// The points between writes, reported to the caller (audit, progress) as they pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Cleared,
    /// Chunk `n` (from 0) checked and written.
    Chunk(usize),
    Synced,
    Renamed,
    /// Chunk `n` of the root file system checked and written.
    RootfsChunk(usize),
    RootfsSynced,
    Described,
    Trial,
}

/// What was installed.
#[derive(Debug)]
pub struct Installed {
    pub slot: Slot,
    pub version: String,
    pub size: u64,
}

/// Installs a verified image into the inactive slot of `files` (and its root file system into
/// the slot's target in `rootfs`) and puts it on trial in `bootloader` with `bootlimit` starts.
/// `observe` sees every step as it completes; an error from it stops the install there (the
/// tests' power loss).
pub fn install(
    mut image: Opened,
    appliance: &Appliance<'_>,
    files: &Files,
    rootfs: Option<&RootfsSlots>,
    bootloader: &dyn Bootloader,
    bootlimit: u32,
    observe: &mut dyn FnMut(Step) -> Result<()>,
) -> Result<Installed> {
    image::check(&image.manifest, appliance)?;
    match (&image.manifest.rootfs, rootfs) {
        (Some(_), None) => {
            return Err(Error::Refused(
                "the image carries a root file system, and this appliance names no partitions for \
                 one (firmware.rootfs_a, rootfs_b)"
                    .into(),
            ));
        }
        (None, Some(_)) => {
            return Err(Error::Refused(
                "this appliance has a root file system per slot (firmware.rootfs_a, rootfs_b), and \
                 the image carries none: the slot would boot another version's"
                    .into(),
            ));
        }
        _ => {}
    }
    let mut env = bootloader
        .read()?
        .ok_or_else(|| Error::State("the slots were never set up (no committed slot)".into()))?;
    if let Some(slot) = env.trial {
        let version = files.info(slot)?.map(|i| i.version).unwrap_or_else(|| "?".into());
        return Err(Error::TrialPending { version, slot });
    }
    let slot = env.committed.other();
    // Opened (and checked: there, not mounted, large enough) before anything is written.
    let mut target = match (&image.manifest.rootfs, rootfs) {
        (Some(payload), Some(slots)) => Some((slots.open(slot, payload.size)?, slots.of(slot))),
        _ => None,
    };
    let dir = files.slot_dir(slot);
    std::fs::create_dir_all(&dir).map_err(Error::io("cannot create", &dir))?;
    files.clear_info(slot)?;
    observe(Step::Cleared)?;

    let binary = files.binary(slot);
    let partial = atomic::temp_name(&binary);
    let result = write_binary(&mut image, &partial, observe);
    if let Err(e) = result {
        // Not for a simulated power loss: then the partial file stays, as it would.
        if !matches!(e, Error::Stopped(_)) {
            let _ = std::fs::remove_file(&partial);
        }
        return Err(e);
    }
    std::fs::rename(&partial, &binary).map_err(Error::io("cannot rename into place", &binary))?;
    atomic::sync_parent(&binary)?;
    observe(Step::Renamed)?;

    if let (Some((out, path)), Some(payload)) = (&mut target, image.manifest.rootfs.clone()) {
        stream(&mut image, &payload, out, path, observe, Step::RootfsChunk)?;
        no_trailing_bytes(&mut image)?;
        out.sync_all().map_err(Error::io("cannot sync", path))?;
        observe(Step::RootfsSynced)?;
    }

    let manifest = &image.manifest;
    files.write_info(
        slot,
        &SlotInfo {
            version: manifest.version.clone(),
            size: manifest.payload.size,
            key: Some(image.key.clone()),
            rootfs: manifest.rootfs.as_ref().map(|r| r.size),
        },
    )?;
    observe(Step::Described)?;

    env.trial = Some(slot);
    env.bootcount = 0;
    env.bootlimit = bootlimit;
    env.rolled_back = None;
    bootloader.write(&env)?;
    observe(Step::Trial)?;
    Ok(Installed {
        slot,
        version: manifest.version.clone(),
        size: manifest.payload.size,
    })
}

/// The binary into `partial`, synced (and nothing after it, if it is the image's last payload).
fn write_binary(
    image: &mut Opened,
    partial: &std::path::Path,
    observe: &mut dyn FnMut(Step) -> Result<()>,
) -> Result<()> {
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o755)
        .open(partial)
        .map_err(Error::io("cannot create", partial))?;
    let payload = image.manifest.payload.clone();
    stream(image, &payload, &mut out, partial, observe, Step::Chunk)?;
    if image.manifest.rootfs.is_none() {
        no_trailing_bytes(image)?;
    }
    out.sync_all().map_err(Error::io("cannot sync", partial))?;
    observe(Step::Synced)
}

/// Copies `payload` from the image to `out` (at `path`), one chunk at a time, each checked
/// against its signed hash before it is written; `step` names each chunk for `observe`.
fn stream(
    image: &mut Opened,
    payload: &Payload,
    out: &mut File,
    path: &std::path::Path,
    observe: &mut dyn FnMut(Step) -> Result<()>,
    step: fn(usize) -> Step,
) -> Result<()> {
    let chunk_size = payload.chunk_size as usize;
    let mut buf = vec![0u8; chunk_size];
    let mut left = payload.size;
    let what = if payload.name == PAYLOAD_NAME {
        "the payload"
    } else {
        "the root file system"
    };
    for index in 0..payload.chunks.len() {
        let want = usize::try_from(left.min(chunk_size as u64)).unwrap_or(chunk_size);
        let got = read_full(&mut image.payload, &mut buf[..want]).map_err(|source| Error::Read {
            origin: image.origin.clone(),
            source,
        })?;
        if got < want {
            return Err(Error::Truncated(format!(
                "it ends in chunk {index} of {} of {what}",
                payload.chunks.len()
            )));
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &buf[..want]);
        if payload.chunk_hash(index).as_deref() != Some(digest.as_ref()) {
            return Err(Error::BadChunk { index, what });
        }
        out.write_all(&buf[..want])
            .map_err(Error::io("cannot write", path))?;
        left -= want as u64;
        observe(step(index))?;
    }
    Ok(())
}

/// Anything after the last payload is refused. At most one probe is read, so a source that
/// never ends (a server streaming for ever) is refused after the sizes the manifest signs.
fn no_trailing_bytes(image: &mut Opened) -> Result<()> {
    let mut probe = [0u8; 4096];
    let trailing = read_full(&mut image.payload, &mut probe).map_err(|source| Error::Read {
        origin: image.origin.clone(),
        source,
    })?;
    if trailing > 0 {
        return Err(Error::TrailingBytes(trailing as u64));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
