//! Writes that power loss cannot leave half done: write a temporary file, sync it, rename it over
//! the old one, sync the directory.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The temporary name beside `path` (hidden, so nothing takes it for the real file).
pub fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

/// Replaces `path` with `bytes` atomically, with the given mode.
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let temp = temp_name(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temp)
        .map_err(Error::io("cannot create", &temp))?;
    file.write_all(bytes).map_err(Error::io("cannot write", &temp))?;
    file.sync_all().map_err(Error::io("cannot sync", &temp))?;
    drop(file);
    std::fs::rename(&temp, path).map_err(Error::io("cannot rename into place", path))?;
    sync_parent(path)
}

/// Syncs the directory that holds `path`, so that a rename in it survives power loss.
pub fn sync_parent(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("cannot sync directory", dir))
}
