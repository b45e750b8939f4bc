//! The image file: a magic line, the signed manifest, then the payload.
//!
//! ```text
//! KAKEHASHI-FIRMWARE/1\n
//! u32 big-endian length, then that many bytes of JSON: {"manifest": TEXT, "key": B64, "signature": B64}
//! the payload, exactly manifest.payload.size bytes
//! the root file system, exactly manifest.rootfs.size bytes, if the manifest has `rootfs`
//! ```
//! `key` is the signer's uncompressed P-256 point and `signature` its ECDSA (ASN.1 DER) signature
//! over [`CONTEXT`] and the manifest text. The manifest is read, and the signature, key, board
//! and versions checked, before the installer reads a byte of the payload.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::key::fingerprint;
use crate::manifest::{CONTEXT, FORMAT, Manifest, PAYLOAD_NAME, Payload, ROOTFS_NAME};
use crate::{Error, Result, Version, atomic};

/// How an image begins.
pub const MAGIC: &str = "KAKEHASHI-FIRMWARE/1\n";
/// The largest signed header accepted (a 1 GiB payload in 4 KiB chunks needs about 17 MiB).
const MAX_HEADER: u32 = 32 << 20;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    manifest: String,
    key: String,
    signature: String,
}

/// What `firmware build` is asked for.
pub struct BuildRequest<'a> {
    pub binary: &'a Path,
    /// A root file system image to carry after the binary, for slots that are partitions.
    pub rootfs: Option<&'a Path>,
    pub out: &'a Path,
    pub version: Version,
    pub board: String,
    pub min_from: Option<Version>,
    pub chunk_size: u32,
    pub created: u64,
    /// See [`Manifest::expires`].
    pub expires: Option<u64>,
}

/// Hashes `path` chunk by chunk: the manifest's description of a payload named `name`.
fn describe(path: &Path, name: &str, chunk_size: u32) -> Result<Payload> {
    let chunk = chunk_size as usize;
    let mut source = File::open(path).map_err(Error::io("cannot open", path))?;
    let mut chunks = Vec::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; chunk];
    loop {
        let n = read_full(&mut source, &mut buf).map_err(Error::io("cannot read", path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        chunks.push(hex::encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            &buf[..n],
        )));
        if n < chunk {
            break;
        }
    }
    Ok(Payload {
        name: name.into(),
        size,
        chunk_size,
        chunks,
    })
}

/// Builds an image from `binary` (and `rootfs`), signed with `key`: reads each payload twice
/// (hashes, then copy), writes `out` under a temporary name and renames it into place.
pub fn build(request: &BuildRequest<'_>, key: &EcdsaKeyPair) -> Result<Manifest> {
    let payload = describe(request.binary, PAYLOAD_NAME, request.chunk_size)?;
    let rootfs = request
        .rootfs
        .map(|path| describe(path, ROOTFS_NAME, request.chunk_size))
        .transpose()?;
    let manifest = Manifest {
        format: FORMAT,
        version: request.version.to_string(),
        board: request.board.clone(),
        min_from: request.min_from.as_ref().map(Version::to_string),
        created: request.created,
        expires: request.expires,
        payload,
        rootfs,
    };
    manifest.check()?;
    let text = serde_json::to_string(&manifest).map_err(|e| Error::Malformed(e.to_string()))?;
    let mut message = CONTEXT.to_vec();
    message.extend_from_slice(text.as_bytes());
    let signature = key
        .sign(&aws_lc_rs::rand::SystemRandom::new(), &message)
        .map_err(|_| Error::Key("signing failed".into()))?;
    let envelope = Envelope {
        manifest: text,
        key: STANDARD.encode(key.public_key().as_ref()),
        signature: STANDARD.encode(signature.as_ref()),
    };
    let header = serde_json::to_vec(&envelope).map_err(|e| Error::Malformed(e.to_string()))?;
    let header_len = u32::try_from(header.len()).map_err(|_| Error::Malformed("header too large".into()))?;

    let temp = atomic::temp_name(request.out);
    let mut out = std::io::BufWriter::new(File::create(&temp).map_err(Error::io("cannot create", &temp))?);
    let write = |out: &mut std::io::BufWriter<File>, bytes: &[u8]| {
        out.write_all(bytes).map_err(Error::io("cannot write", &temp))
    };
    write(&mut out, MAGIC.as_bytes())?;
    write(&mut out, &header_len.to_be_bytes())?;
    write(&mut out, &header)?;
    let sources = std::iter::once(request.binary).chain(request.rootfs);
    for (path, payload) in sources.zip(manifest.payloads()) {
        let mut source = File::open(path).map_err(Error::io("cannot open", path))?;
        let copied = std::io::copy(&mut (&mut source).take(payload.size), &mut out)
            .map_err(Error::io("cannot copy", path))?;
        if copied != payload.size {
            return Err(Error::Refused(format!(
                "{} changed while the image was being built",
                path.display()
            )));
        }
    }
    let file = out.into_inner().map_err(|e| Error::Io {
        what: "cannot write",
        path: temp.clone(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(Error::io("cannot sync", &temp))?;
    std::fs::rename(&temp, request.out).map_err(Error::io("cannot rename into place", request.out))?;
    atomic::sync_parent(request.out)?;
    Ok(manifest)
}

/// An image whose signature verified against the pinned key; the payload not read yet.
pub struct Opened {
    pub manifest: Manifest,
    /// The signer's [`fingerprint`].
    pub key: String,
    /// Where the image comes from (its path or URL), for messages.
    pub origin: String,
    /// The image's whole length as the manifest says it: what comes before the payload, then
    /// the payload. A download whose announced length differs is refused before a payload
    /// byte is written.
    pub length: u64,
    /// Positioned at the payload's first byte.
    pub payload: Box<dyn Read + Send>,
}

/// Opens an image file and verifies its manifest's signature against `pinned` (an uncompressed
/// P-256 point); reads nothing of the payload.
pub fn open(path: &Path, pinned: &[u8]) -> Result<Opened> {
    let file = File::open(path).map_err(Error::io("cannot open image", path))?;
    read_signed(path.display().to_string(), Box::new(BufReader::new(file)), pinned)
}

/// Reads an image's magic line and signed manifest from `reader` (a file, a download) and
/// verifies the signature against `pinned`; stops at the payload's first byte. Reads at most
/// the magic line, four bytes and [`MAX_HEADER`] bytes, whatever the source sends.
pub fn read_signed(origin: String, mut reader: Box<dyn Read + Send>, pinned: &[u8]) -> Result<Opened> {
    let failed = |source| Error::Read {
        origin: origin.clone(),
        source,
    };
    let mut magic = [0u8; MAGIC.len()];
    let n = read_full(&mut reader, &mut magic).map_err(failed)?;
    if n < MAGIC.len() || magic != MAGIC.as_bytes() {
        return Err(Error::NotAnImage {
            expected: MAGIC.trim_end(),
        });
    }
    let mut len = [0u8; 4];
    if read_full(&mut reader, &mut len).map_err(failed)? < 4 {
        return Err(Error::Truncated("it ends before the manifest".into()));
    }
    let len = u32::from_be_bytes(len);
    if len > MAX_HEADER {
        return Err(Error::Malformed(format!(
            "a signed manifest of {len} bytes (at most {MAX_HEADER})"
        )));
    }
    let mut header = vec![0u8; len as usize];
    if read_full(&mut reader, &mut header).map_err(failed)? < header.len() {
        return Err(Error::Truncated("it ends inside the manifest".into()));
    }
    let envelope: Envelope =
        serde_json::from_slice(&header).map_err(|e| Error::Malformed(format!("the signed manifest: {e}")))?;
    let key = STANDARD
        .decode(&envelope.key)
        .map_err(|e| Error::Malformed(format!("the signer's key: {e}")))?;
    let signature = STANDARD
        .decode(&envelope.signature)
        .map_err(|e| Error::Malformed(format!("the signature: {e}")))?;
    let mut message = CONTEXT.to_vec();
    message.extend_from_slice(envelope.manifest.as_bytes());
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &key)
        .verify(&message, &signature)
        .map_err(|_| Error::BadSignature)?;
    if key != pinned {
        return Err(Error::OtherKey {
            found: fingerprint(&key),
            pinned: fingerprint(pinned),
        });
    }
    let manifest: Manifest = serde_json::from_str(&envelope.manifest)
        .map_err(|e| Error::Malformed(format!("the manifest: {e}")))?;
    manifest.check()?;
    let length = manifest
        .payloads()
        .fold(MAGIC.len() as u64 + 4 + u64::from(len), |n, p| {
            n.saturating_add(p.size)
        });
    Ok(Opened {
        manifest,
        key: fingerprint(&key),
        origin,
        length,
        payload: reader,
    })
}

/// What the appliance is, for [`check`].
pub struct Appliance<'a> {
    pub board: &'a str,
    /// The version floor, if one was ever set.
    pub floor: Option<&'a Version>,
    /// The version the appliance runs now (its committed slot).
    pub running: &'a Version,
    /// The appliance's clock, seconds since the Unix epoch, for [`Manifest::expires`].
    pub now: u64,
}

/// The checks after the signature: the board, the version floor, the version it updates from,
/// the expiry.
pub fn check(manifest: &Manifest, appliance: &Appliance<'_>) -> Result<()> {
    if manifest.board != appliance.board {
        return Err(Error::OtherBoard {
            image: manifest.board.clone(),
            ours: appliance.board.to_owned(),
        });
    }
    let version = manifest.version()?;
    let floor = appliance
        .floor
        .unwrap_or(appliance.running)
        .max(appliance.running);
    if version <= *floor {
        return Err(Error::BelowFloor {
            image: version,
            floor: floor.clone(),
        });
    }
    if let Some(min_from) = manifest.min_from()?
        && *appliance.running < min_from
    {
        return Err(Error::TooOld {
            min_from,
            running: appliance.running.clone(),
        });
    }
    if let Some(expires) = manifest.expires
        && appliance.now >= expires
    {
        return Err(Error::Expired {
            expires: rfc3339(expires),
            now: rfc3339(appliance.now),
        });
    }
    Ok(())
}

/// Seconds since the Unix epoch as RFC 3339 text (UTC).
pub fn rfc3339(seconds: u64) -> String {
    i64::try_from(seconds)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{seconds} s after 1970"))
}

/// Reads until `buf` is full or the input ends; the number of bytes read.
pub fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
