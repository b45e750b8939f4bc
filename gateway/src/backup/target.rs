//! Where archives go: a directory (`backup.dir`: a USB disk, a NAS mount) or an SFTP server
//! (`backup.sftp`: the vendor's). A run does the same at either: write `.NAME.partial`, flush it
//! to the target's disk, rename it to `NAME`, read it back.
//!
//! The SFTP target runs the system's OpenSSH client, as restic and borg do, and speaks the file
//! protocol over its standard input and output ([`super::sftp`]): host key checking against the
//! pinned `known_hosts`, the appliance's key, ciphers and their updates stay with OpenSSH, and
//! nothing of SSH is reimplemented here. `ssh` reads no configuration file (`-F /dev/null`) and
//! no agent, asks nothing (`BatchMode`), refuses any host key but the pinned one, and gives up
//! on a server that stops answering (`ConnectTimeout`, `ServerAliveInterval`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::archive::{self, Header};
use super::sftp::{self, Session};
use super::{BackupError, Result};
use crate::config::{Backup, SftpUrl};

/// Seconds `ssh` waits for the server to answer a connection, and between keep-alives (three
/// unanswered, and the run fails): a server gone mid-upload is a failed run within a minute.
const CONNECT_SECS: u32 = 15;
const ALIVE_SECS: u32 = 15;

/// An open target.
pub enum Target {
    Dir(PathBuf),
    Sftp { session: Box<Session>, url: SftpUrl },
}

/// An archive being written at the target.
pub trait Upload: Write {
    /// Flushes what was written to the target's disk and closes it.
    fn finish(self: Box<Self>) -> io::Result<()>;
}

/// One archive at the target, as `backup list` shows it.
pub struct Listed {
    pub name: String,
    /// Its path, or its URL.
    pub at: PathBuf,
    pub bytes: u64,
    pub header: Result<Header>,
}

impl Target {
    /// Opens the configured target: a directory that must exist (a missing one is an unmounted
    /// disk, not a directory to make on the appliance's flash), or an SFTP session whose
    /// directory must exist.
    pub fn open(backup: &Backup) -> Result<Target> {
        if let Some(dir) = &backup.dir {
            if !dir.is_dir() {
                return Err(BackupError::Refused(format!(
                    "backup.dir {} is not a directory: is the USB disk or the NAS mounted?",
                    dir.display()
                )));
            }
            return Ok(Target::Dir(dir.clone()));
        }
        let refused = |why: &str| BackupError::Refused(format!("[backup]: {why}"));
        let url = backup
            .sftp_url()
            .ok_or_else(|| refused("neither dir nor sftp"))?
            .map_err(|e| refused(&format!("backup.sftp: {e}")))?;
        let known_hosts = backup
            .known_hosts
            .as_deref()
            .ok_or_else(|| refused("backup.known_hosts missing"))?;
        let identity = backup
            .identity
            .as_deref()
            .ok_or_else(|| refused("backup.identity missing"))?;
        Target::sftp(url, known_hosts, identity)
    }

    /// The place that holds `archive`, a file or an `sftp://USER@HOST[:PORT]/PATH/NAME` URL
    /// (which needs `ssh`: the server's pinned key, `known_hosts`, and the SSH key to log in
    /// with), and the archive's name there. A restore reads the archive, and the earlier
    /// archives it refers to, from there.
    pub fn holding(archive: &Path, ssh: Option<(&Path, &Path)>) -> Result<(Target, String)> {
        let text = archive.to_string_lossy();
        let Some(rest) = text.strip_prefix("sftp://") else {
            let name = archive
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| BackupError::Refused(format!("{}: not a file name", archive.display())))?;
            let dir = archive.parent().unwrap_or(Path::new("")).to_owned();
            return Ok((Target::Dir(dir), name));
        };
        let (dir, name) = rest
            .rsplit_once('/')
            .filter(|(_, name)| !name.is_empty())
            .ok_or_else(|| {
                BackupError::Refused(format!("{text}: names no archive (sftp://USER@HOST/PATH/NAME)"))
            })?;
        let url = SftpUrl::parse(&format!("sftp://{dir}"))
            .map_err(|e| BackupError::Refused(format!("{text}: {e}")))?;
        let (known_hosts, identity) = ssh.ok_or_else(|| {
            BackupError::Refused(format!(
                "{text}: an SFTP archive needs --known-hosts (the server's pinned host key) and --ssh-key (the key to log in with)"
            ))
        })?;
        Ok((Target::sftp(url, known_hosts, identity)?, name.to_owned()))
    }

    /// An SFTP session at `url`, whose directory must exist.
    fn sftp(url: SftpUrl, known_hosts: &Path, identity: &Path) -> Result<Target> {
        let mut session = Session::start(ssh(&url, known_hosts, identity)).map_err(|e| {
            BackupError::Refused(format!("{url}: {}", hint(&e.to_string(), known_hosts, identity)))
        })?;
        let dir = session.stat(&url.path).map_err(|e| {
            BackupError::Refused(format!("{url}: {}", hint(&e.to_string(), known_hosts, identity)))
        })?;
        if !dir.is_dir() {
            return Err(BackupError::Refused(format!(
                "{url}: not a directory at the server"
            )));
        }
        Ok(Target::Sftp {
            session: Box::new(session),
            url,
        })
    }

    /// What the archive `name` is called in messages and in `backup.json`: its path, or its URL.
    pub fn at(&self, name: &str) -> PathBuf {
        match self {
            Target::Dir(dir) => dir.join(name),
            Target::Sftp { url, .. } => PathBuf::from(format!("{url}/{name}")),
        }
    }

    /// The target itself, for messages.
    pub fn describe(&self) -> String {
        match self {
            Target::Dir(dir) => dir.display().to_string(),
            Target::Sftp { url, .. } => url.to_string(),
        }
    }

    /// Creates `name` (it must not exist), mode 0600.
    pub fn create(&mut self, name: &str) -> Result<Box<dyn Upload + '_>> {
        let at = self.at(name);
        match self {
            Target::Dir(dir) => {
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(dir.join(name))
                    .map_err(BackupError::io("create", &at))?;
                Ok(Box::new(BufWriter::with_capacity(1 << 16, file)))
            }
            Target::Sftp { session, url } => {
                let upload = sftp::Upload::create(session, &remote(url, name))
                    .map_err(BackupError::io("create", &at))?;
                Ok(Box::new(upload))
            }
        }
    }

    /// Renames the written `from` to `to`, and makes the rename durable where it can.
    pub fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let at = self.at(to);
        match self {
            Target::Dir(dir) => {
                fs::rename(dir.join(from), dir.join(to))
                    .map_err(BackupError::io("rename into place", &at))?;
                cert_tool::files::sync_dir(dir).map_err(|e| BackupError::Refused(e.to_string()))
            }
            Target::Sftp { session, url } => session
                .rename(&remote(url, from), &remote(url, to))
                .map_err(BackupError::io("rename into place", &at)),
        }
    }

    /// Reads `name` from the start.
    pub fn read(&mut self, name: &str) -> Result<Box<dyn Read + '_>> {
        let at = self.at(name);
        match self {
            Target::Dir(dir) => Ok(Box::new(
                File::open(dir.join(name)).map_err(BackupError::io("open", &at))?,
            )),
            Target::Sftp { session, url } => Ok(Box::new(
                sftp::Download::open(session, &remote(url, name)).map_err(BackupError::io("open", &at))?,
            )),
        }
    }

    pub fn remove(&mut self, name: &str) -> Result<()> {
        let at = self.at(name);
        match self {
            Target::Dir(dir) => fs::remove_file(dir.join(name)).map_err(BackupError::io("remove", &at)),
            Target::Sftp { session, url } => session
                .remove(&remote(url, name))
                .map_err(BackupError::io("remove", &at)),
        }
    }

    /// Makes removals durable (a directory's entries flushed); the SFTP protocol has no such
    /// request, the server's file system orders them.
    pub fn sync(&mut self) -> Result<()> {
        match self {
            Target::Dir(dir) => {
                cert_tool::files::sync_dir(dir).map_err(|e| BackupError::Refused(e.to_string()))
            }
            Target::Sftp { .. } => Ok(()),
        }
    }

    /// The names of the regular files at the target, sorted, with their sizes.
    pub fn files(&mut self) -> Result<Vec<(String, u64)>> {
        let at = PathBuf::from(self.describe());
        let mut out = match self {
            Target::Dir(dir) => {
                let mut out = Vec::new();
                for entry in fs::read_dir(&*dir).map_err(BackupError::io("list", dir))? {
                    let entry = entry.map_err(BackupError::io("list", dir))?;
                    // A file gone since the listing (a removal by another appliance) is skipped.
                    let Ok(meta) = entry.metadata() else { continue };
                    if meta.is_file() {
                        out.push((entry.file_name().to_string_lossy().into_owned(), meta.len()));
                    }
                }
                out
            }
            Target::Sftp { session, url } => session
                .list(&url.path)
                .map_err(BackupError::io("list", &at))?
                .into_iter()
                .filter(|(_, a)| a.permissions.is_none_or(|p| p & 0o170_000 == 0o100_000))
                .map(|(name, a)| (name, a.size.unwrap_or(0)))
                .collect(),
        };
        out.sort();
        Ok(out)
    }

    /// The archives at the target (`kakehashi-….backup`, by name: oldest first), with their
    /// header lines.
    pub fn archives(&mut self) -> Result<Vec<Listed>> {
        let mut out = Vec::new();
        for (name, bytes) in self.files()? {
            if name.starts_with(super::snapshot::PREFIX) && name.ends_with(super::snapshot::SUFFIX) {
                let at = self.at(&name);
                let header = self.read(&name).and_then(|r| archive::read_header_from(&at, r));
                out.push(Listed {
                    name,
                    at,
                    bytes,
                    header,
                });
            }
        }
        Ok(out)
    }

    /// The name of an archive at this target given as its bare name, or as the URL `run` and
    /// `list` print for it at an SFTP target.
    pub fn name_of(&self, given: &Path) -> Option<String> {
        let text = given.to_str()?;
        let name = match self {
            Target::Sftp { url, .. } => text.strip_prefix(&format!("{url}/")).unwrap_or(text),
            Target::Dir(_) => text,
        };
        (!name.is_empty() && !name.contains('/')).then(|| name.to_owned())
    }

    /// Ends an SFTP session (a directory has nothing to end).
    pub fn close(self) {
        if let Target::Sftp { session, .. } = self {
            session.end();
        }
    }
}

impl Upload for BufWriter<File> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        let file = self.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    }
}

impl Upload for sftp::Upload<'_> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        sftp::Upload::finish(*self)
    }
}

fn remote(url: &SftpUrl, name: &str) -> String {
    format!("{}/{name}", url.path)
}

/// The `ssh` command for the SFTP subsystem at `url`.
fn ssh(url: &SftpUrl, known_hosts: &Path, identity: &Path) -> Command {
    let mut ssh = Command::new("ssh");
    ssh.args(["-F", "/dev/null", "-e", "none", "-x", "-a", "-T"]);
    for option in [
        "BatchMode=yes".to_owned(),
        "StrictHostKeyChecking=yes".to_owned(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "GlobalKnownHostsFile=/dev/null".to_owned(),
        "IdentitiesOnly=yes".to_owned(),
        "IdentityAgent=none".to_owned(),
        "PasswordAuthentication=no".to_owned(),
        "KbdInteractiveAuthentication=no".to_owned(),
        "ControlMaster=no".to_owned(),
        "ControlPath=none".to_owned(),
        "ClearAllForwardings=yes".to_owned(),
        format!("ConnectTimeout={CONNECT_SECS}"),
        format!("ServerAliveInterval={ALIVE_SECS}"),
        "ServerAliveCountMax=3".to_owned(),
        "LogLevel=ERROR".to_owned(),
    ] {
        ssh.arg("-o").arg(option);
    }
    ssh.arg("-i").arg(identity).args([
        "-p",
        &url.port.to_string(),
        "-l",
        &url.user,
        "-s",
        "--",
        &url.host,
        "sftp",
    ]);
    ssh
}

/// Adds which configured file to look at to what `ssh` said.
fn hint(said: &str, known_hosts: &Path, identity: &Path) -> String {
    if said.contains("Host key verification failed") {
        format!(
            "{said} (the server's host key is not the one pinned in backup.known_hosts {}: \
             someone else may be answering; check the key with the vendor before changing it)",
            known_hosts.display()
        )
    } else if said.contains("Permission denied") {
        format!(
            "{said} (the server does not take backup.identity {}: give the vendor its public key)",
            identity.display()
        )
    } else {
        said.to_owned()
    }
}
