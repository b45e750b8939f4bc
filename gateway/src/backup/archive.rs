//! The archive's container: the line, then age over zstd over tar ([`super`] has the layout).
//!
//! Written as a stream, file by file, with each file's SHA-256 taken as it goes in: an archive
//! never needs a second copy of the state in memory or on disk. Read back the same way, into a
//! new directory, where every entry must be a plain relative path to a regular file or a
//! directory (nothing an archive could use to write outside it), and every file must match the
//! manifest, and the manifest every file.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path};

use aws_lc_rs::digest;

use super::target::Upload;
use super::{BackupError, FileEntry, MANIFEST, Manifest, Result};

/// How an archive file begins, before the appliance and the time.
pub const LINE: &str = "kakehashi-backup/1 ";
/// The zstd level: level 3 (zstd's default) packs SQLite pages and PEM well at a small share of
/// a router's CPU.
const LEVEL: i32 = 3;
/// The header line is a recipient and a time: anything longer is not a header.
const MAX_LINE: u64 = 256;

/// The archive's first line: not secret, not trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub appliance: String,
    pub created: String,
}

/// Reads the first line of the archive `at` (a path or a URL, for messages) from `input`.
pub fn read_header_from(at: &Path, input: impl Read) -> Result<Header> {
    first_line(at, &mut BufReader::new(input))
}

/// Reads the header line from `input`, and no further.
fn first_line(at: &Path, input: &mut dyn BufRead) -> Result<Header> {
    let mut line = String::new();
    input.take(MAX_LINE).read_line(&mut line).map_err(|e| {
        BackupError::archive(
            at,
            format!("not a Kakehashi backup: its first line is not text ({e})"),
        )
    })?;
    parse_header(&line).ok_or_else(|| {
        BackupError::archive(
            at,
            format!(
                "not a Kakehashi backup: it does not begin with {:?}",
                LINE.trim_end()
            ),
        )
    })
}

fn parse_header(line: &str) -> Option<Header> {
    let rest = line.strip_suffix('\n')?.strip_prefix(LINE)?;
    let (appliance, created) = rest.split_once(' ')?;
    (appliance.starts_with("age1") && !created.is_empty() && !created.contains(' ')).then(|| Header {
        appliance: appliance.to_owned(),
        created: created.to_owned(),
    })
}

type Stream<'a> =
    zstd::stream::write::Encoder<'static, age::stream::StreamWriter<Hashing<Box<dyn Upload + 'a>>>>;

/// What was sent to the target: its size and SHA-256 (hex), to compare with what is read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    pub bytes: u64,
    pub sha256: String,
}

/// An archive being written to a file of its own at the target (new, never overwritten).
pub struct Writer<'a> {
    tar: tar::Builder<Stream<'a>>,
    files: Vec<FileEntry>,
    path: std::path::PathBuf,
}

impl<'a> Writer<'a> {
    /// Writes the header line to `out`, a new file at the target called `path` in messages.
    pub fn create(
        out: Box<dyn Upload + 'a>,
        path: &Path,
        header: &Header,
        recipients: &[age::x25519::Recipient],
    ) -> Result<Writer<'a>> {
        let mut out = Hashing::new(out);
        writeln!(out, "{LINE}{} {}", header.appliance, header.created)
            .map_err(BackupError::io("write", path))?;
        let encryptor = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| BackupError::Refused(format!("cannot encrypt to the recipients: {e}")))?;
        let age = encryptor
            .wrap_output(out)
            .map_err(BackupError::io("write", path))?;
        let zstd =
            zstd::stream::write::Encoder::new(age, LEVEL).map_err(BackupError::io("compress into", path))?;
        let mut tar = tar::Builder::new(zstd);
        tar.mode(tar::HeaderMode::Deterministic);
        Ok(Writer {
            tar,
            files: Vec::new(),
            path: path.to_owned(),
        })
    }

    /// Adds the file at `source` as `name`, streamed, its hash taken on the way.
    pub fn add_file(&mut self, name: &str, source: &Path, mode: u32) -> Result<()> {
        let file = File::open(source).map_err(BackupError::io("read", source))?;
        let bytes = file.metadata().map_err(BackupError::io("read", source))?.len();
        let mut reader = Hashing::new(file.take(bytes));
        self.append(name, bytes, mode, &mut reader)?;
        if reader.count != bytes {
            return Err(BackupError::Refused(format!(
                "{}: changed while it was read ({} bytes, then {})",
                source.display(),
                bytes,
                reader.count
            )));
        }
        self.files.push(reader.entry(name, mode));
        Ok(())
    }

    /// Adds `data` as `name`.
    pub fn add_bytes(&mut self, name: &str, data: &[u8], mode: u32) -> Result<()> {
        let mut reader = Hashing::new(data);
        self.append(name, data.len() as u64, mode, &mut reader)?;
        self.files.push(reader.entry(name, mode));
        Ok(())
    }

    fn append(&mut self, name: &str, bytes: u64, mode: u32, data: &mut impl Read) -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes);
        header.set_mode(mode);
        header.set_entry_type(tar::EntryType::Regular);
        self.tar
            .append_data(&mut header, name, data)
            .map_err(BackupError::io("write", &self.path))
    }

    /// The files added so far, for the manifest.
    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    /// Adds the manifest, ends the tar, zstd and age streams and flushes the file to the
    /// target's disk; returns what was sent.
    pub fn finish(mut self, manifest: &Manifest) -> Result<Sent> {
        let text = serde_json::to_vec_pretty(manifest).map_err(|e| BackupError::Refused(e.to_string()))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o600);
        header.set_entry_type(tar::EntryType::Regular);
        let path = self.path.clone();
        let io = || BackupError::io("write", &path);
        self.tar
            .append_data(&mut header, MANIFEST, text.as_slice())
            .map_err(io())?;
        let zstd = self.tar.into_inner().map_err(io())?;
        let age = zstd.finish().map_err(io())?;
        let out = age.finish().map_err(io())?;
        let (sent, upload) = out.finish();
        upload.finish().map_err(BackupError::io("flush", &path))?;
        Ok(sent)
    }
}

/// A reader or a writer that hashes and counts what passes through.
pub(super) struct Hashing<R> {
    inner: R,
    hash: digest::Context,
    count: u64,
}

impl<R> Hashing<R> {
    pub(super) fn new(inner: R) -> Hashing<R> {
        Hashing {
            inner,
            hash: digest::Context::new(&digest::SHA256),
            count: 0,
        }
    }

    /// What passed through, and the inner reader or writer.
    pub(super) fn finish(self) -> (Sent, R) {
        let sent = Sent {
            bytes: self.count,
            sha256: hex::encode(self.hash.finish()),
        };
        (sent, self.inner)
    }

    fn entry(self, path: &str, mode: u32) -> FileEntry {
        FileEntry {
            path: path.to_owned(),
            bytes: self.count,
            sha256: hex::encode(self.hash.finish()),
            mode,
        }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Which of an archive's files [`unpack_from`] writes, and where. Every file is checked all
/// the same.
#[derive(Clone, Copy)]
pub enum Extract<'a> {
    /// All, into this existing directory.
    All(&'a Path),
    /// Only these (the segments a later archive refers to), into this directory.
    Only(&'a Path, &'a [&'a str]),
    /// None: the archive is only checked.
    Nothing,
}

impl Extract<'_> {
    fn dest(&self, name: &str) -> Option<std::path::PathBuf> {
        match *self {
            Extract::All(dir) => Some(dir.join(name)),
            Extract::Only(dir, names) if names.contains(&name) => Some(dir.join(name)),
            _ => None,
        }
    }
}

/// Decrypts the archive read from `input` (called `path` in messages: a path or a URL) with
/// `identity`, writes its files as `extract` says, and checks every file against the manifest.
/// Returns the header and the manifest. What follows the archive's end in `input` is left
/// there.
///
/// `identity` is what opens it: the appliance's own key, or the clinic's or vendor's on a
/// replacement. An archive not encrypted to it is called that, not damaged.
pub fn unpack_from(
    path: &Path,
    input: &mut dyn BufRead,
    identity: &dyn age::Identity,
    extract: Extract<'_>,
) -> Result<(Header, Manifest)> {
    let header = first_line(path, input)?;
    let decryptor = age::Decryptor::new_buffered(input).map_err(|e| {
        BackupError::archive(
            path,
            format!("damaged: its encryption header does not parse ({e})"),
        )
    })?;
    let plain = decryptor
        .decrypt(std::iter::once(identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => BackupError::archive(
                path,
                format!(
                    "not encrypted to this key: the archive is of appliance {}; open it with the identity of \
                 one of its recipients (the clinic's or the vendor's backup key)",
                    header.appliance
                ),
            ),
            other => BackupError::archive(path, format!("damaged: {other}")),
        })?;
    let zstd = zstd::stream::read::Decoder::new(plain).map_err(BackupError::io("decompress", path))?;
    let mut tar = tar::Archive::new(zstd);
    let damaged = |e: std::io::Error| BackupError::archive(path, format!("damaged or cut short: {e}"));
    let mut found: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut manifest = None;
    for entry in tar.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        let name = entry.path().map_err(damaged)?.to_string_lossy().into_owned();
        let kind = entry.header().entry_type();
        if !kind.is_file() {
            return Err(BackupError::archive(
                path,
                format!("{name}: not a regular file ({kind:?})"),
            ));
        }
        let relative = Path::new(&name);
        if name.is_empty() || !relative.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(BackupError::archive(
                path,
                format!("{name:?}: not a plain relative path"),
            ));
        }
        if name == MANIFEST {
            let mut text = Vec::new();
            entry.read_to_end(&mut text).map_err(damaged)?;
            manifest = Some(serde_json::from_slice::<Manifest>(&text).map_err(|e| {
                BackupError::archive(path, format!("its manifest is not one this version reads: {e}"))
            })?);
            continue;
        }
        let mut reader = Hashing::new(&mut entry);
        if let Some(dest) = extract.dest(&name) {
            let mode = reader.inner.header().mode().map_err(damaged)? & 0o700;
            write_file(&mut reader, &dest, mode, damaged)?;
        } else {
            std::io::copy(&mut reader, &mut std::io::sink()).map_err(damaged)?;
        }
        let digest = hex::encode(reader.hash.finish());
        if found.insert(name.clone(), (reader.count, digest)).is_some() {
            return Err(BackupError::archive(
                path,
                format!("{name}: twice in the archive"),
            ));
        }
    }
    let manifest = manifest.ok_or_else(|| BackupError::archive(path, "cut short: it has no manifest"))?;
    if manifest.format != super::FORMAT && manifest.format != super::FORMAT_INCREMENTAL {
        return Err(BackupError::archive(
            path,
            format!(
                "format {}, this version reads {} and {}",
                manifest.format,
                super::FORMAT,
                super::FORMAT_INCREMENTAL
            ),
        ));
    }
    if manifest.appliance != header.appliance {
        return Err(BackupError::archive(
            path,
            format!(
                "its first line names appliance {}, its manifest {}: the line was changed",
                header.appliance, manifest.appliance
            ),
        ));
    }
    for f in &manifest.files {
        match found.remove(&f.path) {
            Some((bytes, sha256)) if bytes == f.bytes && sha256 == f.sha256 => {}
            Some(_) => {
                return Err(BackupError::archive(
                    path,
                    format!("{}: does not match its manifest", f.path),
                ));
            }
            None => {
                return Err(BackupError::archive(
                    path,
                    format!("{}: in the manifest, not in the archive", f.path),
                ));
            }
        }
    }
    if let Some(extra) = found.keys().next() {
        return Err(BackupError::archive(
            path,
            format!("{extra}: in the archive, not in its manifest"),
        ));
    }
    Ok((header, manifest))
}

/// Writes what `reader` gives to the new file `dest` (its directories made), synced.
fn write_file(
    reader: &mut impl Read,
    dest: &Path,
    mode: u32,
    damaged: impl Fn(std::io::Error) -> BackupError,
) -> Result<()> {
    if let Some(dir) = dest.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(BackupError::io("create directory", dir))?;
    }
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(dest)
        .map_err(BackupError::io("create", dest))?;
    let mut out = BufWriter::new(out);
    // Not io::copy: a failed read is the archive's fault, a failed write the target's
    // (a full disk), and the message must say which.
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(&damaged)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(BackupError::io("write", dest))?;
    }
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .map_err(BackupError::io("write", dest))?;
    file.sync_all().map_err(BackupError::io("flush", dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_line_is_strict() {
        let h = parse_header("kakehashi-backup/1 age1abc 2026-12-04T15:00:00Z\n").expect("a header");
        assert_eq!(h.appliance, "age1abc");
        assert_eq!(h.created, "2026-12-04T15:00:00Z");
        for bad in [
            "kakehashi-backup/1 age1abc 2026-12-04T15:00:00Z",
            "kakehashi-backup/2 age1abc 2026\n",
            "kakehashi-backup/1 abc 2026\n",
            "kakehashi-backup/1 age1abc\n",
            "kakehashi-backup/1 age1abc 2026 x\n",
        ] {
            assert_eq!(parse_header(bad), None, "{bad:?}");
        }
    }
}
