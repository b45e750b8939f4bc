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
/// The only payload this build installs: the appliance binary.
pub const PAYLOAD_NAME: &str = "kakehashi";

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
}

/// The payload: its size and a SHA-256 per chunk.
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
        let p = &self.payload;
        if p.name != PAYLOAD_NAME {
            return bad(format!(
                "payload {:?} (this build installs {PAYLOAD_NAME:?} only)",
                p.name
            ));
        }
        if !(MIN_CHUNK..=MAX_CHUNK).contains(&p.chunk_size) {
            return bad(format!(
                "chunk size {} (from {MIN_CHUNK} to {MAX_CHUNK})",
                p.chunk_size
            ));
        }
        if p.size == 0 || p.size > MAX_PAYLOAD {
            return bad(format!("payload size {} (from 1 to {MAX_PAYLOAD})", p.size));
        }
        let expected = p.size.div_ceil(u64::from(p.chunk_size));
        if p.chunks.len() as u64 != expected {
            return bad(format!("{} chunk hashes for {expected} chunks", p.chunks.len()));
        }
        if p.chunks.iter().any(|h| h.len() != 64 || hex::decode(h).is_err()) {
            return bad("a chunk hash is not 64 hex digits".into());
        }
        Ok(())
    }

    pub fn version(&self) -> Result<Version> {
        self.version.parse()
    }

    pub fn min_from(&self) -> Result<Option<Version>> {
        self.min_from.as_deref().map(str::parse).transpose()
    }

    /// The expected SHA-256 of chunk `index`.
    pub fn chunk_hash(&self, index: usize) -> Option<Vec<u8>> {
        self.payload.chunks.get(index).and_then(|h| hex::decode(h).ok())
    }
}
