//! The manifest: what an image holds and for whom, under the vendor's signature.

use serde::{Deserialize, Serialize};

use crate::{Error, Result, Version};

/// The manifest format this build writes and reads.
pub const FORMAT: u32 = 1;
/// Prefixed to the manifest text before signing, so a firmware signature can never be taken for
/// (or made from) a signature over anything else.
pub const CONTEXT: &[u8] = b"kakehashi-firmware/1\0";
/// The default chunk: 1 MiB, a SHA-256 each (64 of them for a 64 MiB payload).
pub const DEFAULT_CHUNK: u32 = 1 << 20;
/// Chunk sizes accepted: 4 KiB to 16 MiB (the most the installer holds in memory at once).
pub const MIN_CHUNK: u32 = 4 << 10;
pub const MAX_CHUNK: u32 = 16 << 20;
/// The largest payload accepted: far above a `kakehashi` binary, far below the flash.
pub const MAX_PAYLOAD: u64 = 1 << 30;
/// The first payload: the appliance binary.
pub const PAYLOAD_NAME: &str = "kakehashi";
/// The optional second payload: a root file system image for the slot's partition.
pub const ROOTFS_NAME: &str = "rootfs";
/// The largest root file system accepted.
pub const MAX_ROOTFS: u64 = 64 << 30;

/// The signed description of an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// The version the payload is.
    pub version: String,
    /// The board (hardware) it is for; the appliance's `[firmware] board` must match it.
    pub board: String,
    /// The lowest version it may update from, if any.
    pub min_from: Option<String>,
    /// When it was built, seconds since the Unix epoch.
    pub created: u64,
    /// From when the image is refused, seconds since the Unix epoch: bounds how long after
    /// its release an old (but validly signed) image can still be pressed on an appliance
    /// whose version floor is below it. Absent: it never expires (and the field is not
    /// written, so manifests without it read as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    pub payload: Payload,
    /// A root file system image, after the binary in the image, for appliances whose slots
    /// are partitions (`firmware.rootfs_a`, `rootfs_b`). Absent: the image updates the binary
    /// only (and the field is not written, so manifests without it read as before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<Payload>,
}

/// A payload: its size and a SHA-256 per chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payload {
    pub name: String,
    pub size: u64,
    pub chunk_size: u32,
    /// Hex SHA-256 of each chunk, in order; the last chunk may be short.
    pub chunks: Vec<String>,
}

impl Manifest {
    /// Checks what the signature cannot: the format, the version's syntax, sizes that agree.
    pub fn check(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Malformed(m));
        if self.format != FORMAT {
            return bad(format!(
                "manifest format {} (this build reads {FORMAT})",
                self.format
            ));
        }
        self.version()?;
        self.min_from()?;
        self.payload.check(PAYLOAD_NAME, MAX_PAYLOAD)?;
        if let Some(rootfs) = &self.rootfs {
            rootfs.check(ROOTFS_NAME, MAX_ROOTFS)?;
        }
        Ok(())
    }

    /// The payloads in the order the image holds them: the binary, then the root file system.
    pub fn payloads(&self) -> impl Iterator<Item = &Payload> {
        std::iter::once(&self.payload).chain(self.rootfs.as_ref())
    }

    pub fn version(&self) -> Result<Version> {
        self.version.parse()
    }

    pub fn min_from(&self) -> Result<Option<Version>> {
        self.min_from.as_deref().map(str::parse).transpose()
    }
}

impl Payload {
    /// The name this place in the image must carry, sizes that agree, hashes that are hashes.
    fn check(&self, name: &str, max: u64) -> Result<()> {
        let bad = |m: String| Err(Error::Malformed(m));
        if self.name != name {
            return bad(format!("payload {:?} where {name:?} belongs", self.name));
        }
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&self.chunk_size) {
            return bad(format!(
                "{name}: chunk size {} (from {MIN_CHUNK} to {MAX_CHUNK})",
                self.chunk_size
            ));
        }
        if self.size == 0 || self.size > max {
            return bad(format!("{name}: size {} (from 1 to {max})", self.size));
        }
        let expected = self.size.div_ceil(u64::from(self.chunk_size));
        if self.chunks.len() as u64 != expected {
            return bad(format!(
                "{name}: {} chunk hashes for {expected} chunks",
                self.chunks.len()
            ));
        }
        if self
            .chunks
            .iter()
            .any(|h| h.len() != 64 || hex::decode(h).is_err())
        {
            return bad(format!("{name}: a chunk hash is not 64 hex digits"));
        }
        Ok(())
    }

    /// The expected SHA-256 of chunk `index`.
    pub fn chunk_hash(&self, index: usize) -> Option<Vec<u8>> {
        self.chunks.get(index).and_then(|h| hex::decode(h).ok())
    }
}
