//! Installing an image into the inactive slot.
//!
//! The order of writes, and what power loss after each leaves (the unit tests stop at every one):
//! 1. [`Step::Cleared`]: the inactive slot's `slot.json` removed: the slot is now "empty";
//! 2. [`Step::Chunk`]: each chunk checked against its signed hash, then appended to
//!    `.kakehashi.partial` (a chunk that does not match is never written);
//! 3. [`Step::Synced`]: the partial file complete and synced;
//! 4. [`Step::Renamed`]: renamed to `kakehashi` (the directory synced);
//! 5. [`Step::Described`]: `slot.json` written: the slot holds this version;
//! 6. [`Step::Trial`]: the boot state names the slot as on trial: the install is done.
//!
//! Before step 6 the boot state still names only the committed slot, which no step touches, so
//! it boots as before; a later install starts again from step 1. The payload is streamed: one
//! chunk in memory, the image never copied, at most the partial file on disk beside the old
//! binary of the inactive slot.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use crate::bootloader::{Bootloader, Slot};
use crate::files::{Files, SlotInfo};
use crate::image::{self, Appliance, Opened, read_full};
use crate::{Error, Result, atomic};

/// The points between writes, reported to the caller (audit, progress) as they pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Cleared,
    /// Chunk `n` (from 0) checked and written.
    Chunk(usize),
    Synced,
    Renamed,
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

/// Installs a verified image into the inactive slot of `files` and puts it on trial in
/// `bootloader` with `bootlimit` starts. `observe` sees every step as it completes; an error
/// from it stops the install there (the tests' power loss).
pub fn install(
    mut image: Opened,
    appliance: &Appliance<'_>,
    files: &Files,
    bootloader: &dyn Bootloader,
    bootlimit: u32,
    observe: &mut dyn FnMut(Step) -> Result<()>,
) -> Result<Installed> {
    image::check(&image.manifest, appliance)?;
    let mut env = bootloader
        .read()?
        .ok_or_else(|| Error::State("the slots were never set up (no committed slot)".into()))?;
    if let Some(slot) = env.trial {
        let version = files.info(slot)?.map(|i| i.version).unwrap_or_else(|| "?".into());
        return Err(Error::TrialPending { version, slot });
    }
    let slot = env.committed.other();
    let dir = files.slot_dir(slot);
    std::fs::create_dir_all(&dir).map_err(Error::io("cannot create", &dir))?;
    files.clear_info(slot)?;
    observe(Step::Cleared)?;

    let target = files.binary(slot);
    let partial = atomic::temp_name(&target);
    let result = write_payload(&mut image, &partial, observe);
    if let Err(e) = result {
        // Not for a simulated power loss: then the partial file stays, as it would.
        if !matches!(e, Error::Stopped(_)) {
            let _ = std::fs::remove_file(&partial);
        }
        return Err(e);
    }
    std::fs::rename(&partial, &target).map_err(Error::io("cannot rename into place", &target))?;
    atomic::sync_parent(&target)?;
    observe(Step::Renamed)?;

    let manifest = &image.manifest;
    files.write_info(
        slot,
        &SlotInfo {
            version: manifest.version.clone(),
            size: manifest.payload.size,
            key: Some(image.key.clone()),
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

fn write_payload(
    image: &mut Opened,
    partial: &std::path::Path,
    observe: &mut dyn FnMut(Step) -> Result<()>,
) -> Result<()> {
    let manifest = &image.manifest;
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o755)
        .open(partial)
        .map_err(Error::io("cannot create", partial))?;
    let chunk_size = manifest.payload.chunk_size as usize;
    let mut buf = vec![0u8; chunk_size];
    let mut left = manifest.payload.size;
    for index in 0..manifest.payload.chunks.len() {
        let want = usize::try_from(left.min(chunk_size as u64)).unwrap_or(chunk_size);
        let got = read_full(&mut image.payload, &mut buf[..want]).map_err(|source| Error::Read {
            origin: image.origin.clone(),
            source,
        })?;
        if got < want {
            return Err(Error::Truncated(format!(
                "it ends in chunk {index} of {} of the payload",
                manifest.payload.chunks.len()
            )));
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &buf[..want]);
        if manifest.chunk_hash(index).as_deref() != Some(digest.as_ref()) {
            return Err(Error::BadChunk { index });
        }
        out.write_all(&buf[..want])
            .map_err(Error::io("cannot write", partial))?;
        left -= want as u64;
        observe(Step::Chunk(index))?;
    }
    // Anything after the payload: at most one probe is read, so a source that never ends (a
    // server streaming for ever) is refused after the size the signed manifest gives.
    let mut probe = [0u8; 4096];
    let trailing = read_full(&mut image.payload, &mut probe).map_err(|source| Error::Read {
        origin: image.origin.clone(),
        source,
    })?;
    if trailing > 0 {
        return Err(Error::TrailingBytes(trailing as u64));
    }
    out.sync_all().map_err(Error::io("cannot sync", partial))?;
    observe(Step::Synced)
}

#[cfg(test)]
mod tests;
