//! Installing an image into the inactive slot.
//!
//! The order of writes, and what power loss after each leaves (the unit tests stop at every one):
//! 1. [`Step::Cleared`]: the inactive slot's `slot.json` removed (synced), then its binary: the
//!    slot is now "empty";
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
//! it boots as before; a later install starts again from step 1. The payload is streamed: a few
//! chunks in memory, the image never copied, and on disk only the partial file, in place of the
//! inactive slot's old binary.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::mpsc;

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
    // The old binary is dead without its description: it goes before a byte of the new one is
    // written, so the install needs room for the new binary and nothing more.
    files.remove_binary(slot)?;
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
///
/// SHA-256 is most of an install's CPU, so the hashing runs on its own threads, ahead of the
/// writes and beside them: one thread reads the chunks and deals them out in turn to the
/// checkers (one per core, at most [`MAX_CHECKERS`]), and this thread takes each checked chunk
/// back from the checker it went to, so the writes, and the steps `observe` sees, stay in
/// order, and a chunk reaches them only once checked. A fixed set of buffers goes round
/// (at most [`IN_FLIGHT_BYTES`], and never fewer than one per checker and one more), so a
/// slow disk holds the reading back rather than filling memory.
fn stream(
    image: &mut Opened,
    payload: &Payload,
    out: &mut File,
    path: &std::path::Path,
    observe: &mut dyn FnMut(Step) -> Result<()>,
    step: fn(usize) -> Step,
) -> Result<()> {
    let Opened {
        origin,
        payload: source,
        ..
    } = image;
    let chunk_size = payload.chunk_size as usize;
    let chunks = payload.chunks.len();
    let checkers = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_CHECKERS));
    let buffers = (IN_FLIGHT_BYTES / chunk_size).clamp(checkers + 1, 2 * checkers + 2);
    std::thread::scope(|scope| {
        let (spare, spare_rx) = mpsc::channel::<Vec<u8>>();
        for _ in 0..buffers {
            let _ = spare.send(Vec::with_capacity(chunk_size));
        }
        let (mut to_check, mut checked, mut checking) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..checkers {
            let (tx, rx) = mpsc::channel::<(usize, Vec<u8>)>();
            let (done_tx, done_rx) = mpsc::channel::<Vec<u8>>();
            checking.push(scope.spawn(move || -> Result<()> {
                for (index, buf) in rx {
                    check_chunk(payload, index, &buf)?;
                    if done_tx.send(buf).is_err() {
                        break;
                    }
                }
                Ok(())
            }));
            to_check.push(tx);
            checked.push(done_rx);
        }
        let reader = scope.spawn(move || -> Result<()> {
            let mut left = payload.size;
            for index in 0..chunks {
                // The writer gone (its error returns first) ends the reading.
                let Ok(mut buf) = spare_rx.recv() else {
                    return Ok(());
                };
                let want = usize::try_from(left.min(chunk_size as u64)).unwrap_or(chunk_size);
                buf.resize(want, 0);
                read_chunk(source, origin, payload, index, &mut buf)?;
                left -= want as u64;
                if to_check[index % checkers].send((index, buf)).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        });
        let mut written = 0u64;
        // Where the chunks stopped coming, and what this thread's own writing met.
        let (mut stopped, mut result) = (None, Ok(()));
        for index in 0..chunks {
            let Ok(buf) = checked[index % checkers].recv() else {
                stopped = Some(index % checkers);
                break;
            };
            result = out
                .write_all(&buf)
                .map_err(Error::io("cannot write", path))
                .and_then(|()| {
                    start_writeback(out, written, buf.len());
                    written += buf.len() as u64;
                    observe(step(index))
                });
            if result.is_err() {
                break;
            }
            let _ = spare.send(buf);
        }
        // Everything ends once the channels to the other threads are gone.
        drop((checked, spare));
        let join = |t: std::thread::ScopedJoinHandle<'_, Result<()>>| {
            t.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        };
        let read = join(reader);
        let mut checks: Vec<Result<()>> = checking.into_iter().map(join).collect();
        // A chunk that did not come failed its check, or the reading stopped before it.
        match stopped {
            Some(checker) => result
                .and(checks.swap_remove(checker))
                .and(read)
                .and(Err(Error::State(format!(
                    "{}: the chunks stopped coming",
                    what(payload)
                )))),
            None => result,
        }
    })
}

/// The most threads that hash chunks at once: past the disk's speed, more only take cores
/// from the gateway, which keeps running while it installs.
const MAX_CHECKERS: usize = 4;

/// The memory the chunks being read, checked and written may take together (more when the
/// signed chunk size needs it; see [`stream`]).
const IN_FLIGHT_BYTES: usize = 8 << 20;

/// Asks the kernel to start writing `len` bytes at `offset` of `out` to the disk now, while the
/// next chunks are hashed, rather than all at the final sync (`POSIX_FADV_DONTNEED` starts the
/// writeback of dirty pages, then drops the clean ones: nothing reads them again here). Only a
/// hint: the final `sync_all` is what makes the data durable, so a failure changes nothing.
fn start_writeback(out: &File, offset: u64, len: usize) {
    if let Some(len) = std::num::NonZeroU64::new(len as u64) {
        let _ = rustix::fs::fadvise(out, offset, Some(len), rustix::fs::Advice::DontNeed);
    }
}

/// What a payload is called in messages.
fn what(payload: &Payload) -> &'static str {
    if payload.name == PAYLOAD_NAME {
        "the payload"
    } else {
        "the root file system"
    }
}

/// Fills `buf` with chunk `index` of `payload` from `source`.
fn read_chunk(
    source: &mut impl Read,
    origin: &str,
    payload: &Payload,
    index: usize,
    buf: &mut [u8],
) -> Result<()> {
    let got = read_full(source, buf).map_err(|source| Error::Read {
        origin: origin.to_owned(),
        source,
    })?;
    if got < buf.len() {
        return Err(Error::Truncated(format!(
            "it ends in chunk {index} of {} of {}",
            payload.chunks.len(),
            what(payload)
        )));
    }
    Ok(())
}

/// Checks chunk `index` of `payload` against its signed hash.
fn check_chunk(payload: &Payload, index: usize, buf: &[u8]) -> Result<()> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, buf);
    if payload.chunk_hash(index).as_deref() != Some(digest.as_ref()) {
        return Err(Error::BadChunk {
            index,
            what: what(payload),
        });
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
