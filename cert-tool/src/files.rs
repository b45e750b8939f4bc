//! Files that are either wholly written or not at all.
//!
//! A CA directory must be exactly as it was after any failure: a full disk, a crash, `kill -9`. So
//! nothing is ever written in place. A new file is written beside its destination, flushed to disk,
//! renamed over the destination (atomic on POSIX), and the directory is flushed so the rename itself
//! survives power loss. Work that changes several files stages them all first and commits them last,
//! and a staged file that is never committed removes itself.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Mode for files holding secrets (private keys, PKCS#12, passwords).
pub const SECRET: u32 = 0o600;
/// Mode for files anyone on the machine may read (certificates, CRLs, the index).
pub const PUBLIC: u32 = 0o644;

/// Reads a whole file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(Error::io("read", path))
}

/// Writes `data` to `path` atomically with the given mode.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    Staged::new(path, data, mode)?.commit()
}

/// A file written and flushed beside its destination, waiting to be renamed into place.
///
/// Dropping it without [`Staged::commit`] deletes the temporary file, so an error anywhere in a
/// multi-file operation leaves nothing behind.
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl Staged {
    /// Writes `data` to a temporary file next to `dest` and flushes it to disk.
    pub fn new(dest: &Path, data: &[u8], mode: u32) -> Result<Staged> {
        let dir = parent(dest);
        let name = dest
            .file_name()
            .ok_or_else(|| Error::Refused(format!("{}: not a file name", dest.display())))?;
        let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), temp_nonce()));
        let staged = Staged {
            tmp,
            dest: dest.to_path_buf(),
            committed: false,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&staged.tmp)
            .map_err(Error::io("create", dest))?;
        same_owner_as_dir(&file, dir);
        file.write_all(data).map_err(Error::io("write", dest))?;
        file.sync_all().map_err(Error::io("flush", dest))?;
        Ok(staged)
    }

    /// Where the file goes when committed.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Renames the file into place and flushes the directory entry.
    pub fn commit(mut self) -> Result<()> {
        fs::rename(&self.tmp, &self.dest).map_err(Error::io("replace", &self.dest))?;
        self.committed = true;
        sync_dir(parent(&self.dest))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Gives a new file its directory's owner when they differ: root running `kakehashi` on the
/// appliance's data directory (an import, a revocation) must not leave files that the gateway,
/// running as its own user, can no longer read. Only root may do this; for anyone else the
/// attempt fails harmlessly and the file stays theirs, as it would have anyway.
/// Twelve hex digits that keep concurrent writers' temporary names apart (`create_new` refuses a
/// clash, so they need to be unlikely to repeat, not unpredictable). From std's per-process random
/// hash keys rather than aws-lc's generator: the first use of that seeds it from CPU jitter,
/// about 30 ms of CPU, which every one-shot command that writes a file would pay.
pub fn temp_nonce() -> String {
    use std::hash::{BuildHasher, RandomState};
    let bits = RandomState::new().hash_one(std::process::id());
    format!("{:012x}", bits & 0xffff_ffff_ffff)
}

fn same_owner_as_dir(file: &File, dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(dir), Ok(ours)) = (fs::metadata(dir), file.metadata())
        && (dir.uid(), dir.gid()) != (ours.uid(), ours.gid())
    {
        let _ = std::os::unix::fs::fchown(file, Some(dir.uid()), Some(dir.gid()));
    }
}

/// Flushes a directory so that entries created or renamed in it survive power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("flush directory", dir))
}

/// Creates a directory (and its parents) with the given mode if it does not exist.
pub fn create_dir(dir: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(Error::io("create directory", dir))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// An exclusive advisory lock on a directory, held until dropped.
///
/// Two processes working on the same CA directory take turns: serial numbers stay unique and the
/// index is never written by two hands at once.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Locks `dir`, waiting for another holder to finish.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        DirLock::file(&dir.join(".lock"))
    }

    /// Locks one file's updates through the lock file `path` (e.g. `crl.pem.lock`), waiting for
    /// another holder to finish.
    pub fn file(path: &Path) -> Result<DirLock> {
        let dir = parent(path);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(SECRET)
            .open(path)
            .map_err(Error::io("open lock file", path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                eprintln!("waiting for another kakehashi working in {} ...", dir.display());
                file.lock().map_err(Error::io("lock", path))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io("lock", path)(e)),
        }
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_new_file_gets_its_directorys_owner_when_root_writes_it() {
        let dir = tempfile::tempdir().unwrap();
        // Only root can hand a directory to another user; for anyone else there is nothing to test.
        if std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).is_err() {
            return;
        }
        let path = dir.path().join("upstream.password");
        write_atomic(&path, b"secret\n", SECRET).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (65534, 65534, 0o600)
        );
    }
}
