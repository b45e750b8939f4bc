//! Backups: the appliance's state leaves the box encrypted and verified, and comes back on a
//! replacement (`kakehashi backup run | list | verify | restore`).
//!
//! ## An archive
//! One line, `kakehashi-backup/1 APPLIANCE CREATED` ([`archive::LINE`]), then an
//! [age](https://age-encryption.org/v1) file, encrypted to the configured recipients (the
//! clinic's, the vendor's) and to the appliance's own key, of a zstd-compressed tar:
//!
//! | path | what |
//! |---|---|
//! | `config/gateway.toml` | the configuration as it was |
//! | `files/NAME` | every file the configuration names outside the data directory |
//! | `ca/` | the EST CA (`est.ca_dir`: `ca.pem`, `ca.key` as it is kept, `index.json`, `issued/`), when outside the data directory |
//! | `data/…` | the data directory: each SQLite database copied by SQLite's online backup (a consistent snapshot while the gateway writes), every other file as it is |
//! | `manifest.json` | last: the appliance, when, the version, a SHA-256 and size per file, and the counts a restore must find |
//!
//! The line is neither secret nor trusted: it lets `backup list` name archives without opening
//! them. What counts is the manifest, under age's authentication: any change to the file fails
//! to decrypt.
//!
//! The appliance is named by its own key's recipient (`DATA_DIR/backup-self.key`, made by the
//! first backup): an archive of another appliance does not even open here. A replacement
//! restores that key with the rest, so it goes on as the same appliance, its audit chain too.
//!
//! The audit log's segments go in whole, in id order after the head file and `audit/pruned`, each
//! checked as it goes in ([`crate::audit::ChainCheck`]), except the oldest sealed ones that an
//! earlier verified archive at the target already holds: the manifest refers to those
//! ([`Referenced`]), so each sealed segment is sent once, and a restore fetches them from there.
//! A sealed segment is pruned locally only once a verified archive holds it, and the retention
//! keeps every archive that holds entries no newer archive does (the name says which:
//! `…-aFROM-LAST.backup`) and the homes the newest archives refer to, so the off-box copies
//! together always hold the whole chain and the newest archives restore.
//!
//! Left out: `cache.db` (refilled from the cloud; fewer copies of patient data), the firmware
//! slots (the replacement runs its own), and lock and WAL files (the online backup has their
//! contents). `backup.json`, this appliance's record of its backups as it was before the run,
//! goes in: a replacement is the same appliance, and goes on referring to the same homes.

pub mod archive;
mod restore;
pub(crate) mod sftp;
mod snapshot;
pub mod state;
pub mod target;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use restore::{RestoreOutcome, restore};
pub use snapshot::{RunOutcome, audit_range, list, run, try_lock, verify, verify_at_target};

use crate::store::StoreError;

/// The manifest's name inside an archive.
pub const MANIFEST: &str = "manifest.json";
/// The appliance's own age identity: it opens its archives to verify them.
pub const SELF_KEY: &str = "backup-self.key";
/// The manifest format of an archive that holds all its files (any version reads it).
pub const FORMAT: u32 = 1;
/// The manifest format of an archive that refers to audit segments in earlier archives: a
/// version that cannot fetch them says so rather than restore half a log.
pub const FORMAT_INCREMENTAL: u32 = 2;

/// What an archive holds and what a restore of it must find.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// The appliance: its own key's recipient (`age1…`).
    pub appliance: String,
    /// When the snapshot was taken, RFC 3339.
    pub created: String,
    /// The `kakehashi` version that made it.
    pub version: String,
    /// Where each file the configuration names went in the archive: (`tls.cert`,
    /// `files/server.pem`). A restore points the configuration there.
    pub paths: Vec<(String, String)>,
    pub files: Vec<FileEntry>,
    pub counts: Counts,
    /// Sealed audit segments of the snapshot that this archive does not hold, because an
    /// earlier verified archive of this appliance at the same target does (an incremental
    /// archive; a restore fetches them from there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub referenced: Vec<Referenced>,
}

/// A sealed audit segment held by another archive, its home. A sealed segment never changes,
/// so one copy at the target is enough: each is sent once, in the first archive after it was
/// sealed, and later archives name it here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Referenced {
    /// Where it goes in a restore: `data/audit/000000052113.db`.
    pub path: String,
    /// The file as its home holds it.
    pub bytes: u64,
    pub sha256: String,
    /// The home: an archive's file name at the same target.
    pub archive: String,
    /// The chain through it, as the home's verification found it: the entry before its first
    /// (id, hash hex), its last, and how many entries.
    pub start: (u64, String),
    pub last: (u64, String),
    pub entries: u64,
}

impl Referenced {
    /// The chain span it vouches for; `None` if a hash is not 32 bytes of hex (a damaged
    /// manifest or record).
    pub fn span(&self) -> Option<crate::audit::Span> {
        let point = |(id, hash): &(u64, String)| {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(hash, &mut bytes).ok()?;
            Some((*id, bytes))
        };
        Some(crate::audit::Span {
            start: point(&self.start)?,
            last: point(&self.last)?,
            entries: self.entries,
        })
    }
}

/// One file in the archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    /// Lower-case hex.
    pub sha256: String,
    pub mode: u32,
}

/// What the snapshot's databases held: a restore (and every run's verification) must find the
/// same.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    pub terminals: u64,
    pub users: u64,
    pub journal_entries: u64,
    pub journal_pending: u64,
    pub audit_entries: u64,
    /// The audit chain's last entry in the snapshot, and its hash (hex).
    pub audit_last_id: u64,
    pub audit_last_hash: String,
    /// What `kakehashi audit verify` found wrong with the snapshot's chain, if anything: a
    /// broken chain is backed up all the same (it is evidence), and must restore as broken.
    pub audit_broken: Option<String>,
    /// Entries before the snapshot's first audit entry: pruned locally after an earlier verified
    /// backup took them (left out when 0, so that archives without pruning read as before).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub audit_pruned: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Counts {
    /// Takes the audit figures from a chain check of the snapshot's segments.
    pub(crate) fn set_audit(&mut self, report: crate::audit::VerifyReport) {
        self.audit_entries = report.entries;
        self.audit_last_id = report.last_id;
        self.audit_last_hash = report.last_hash;
        self.audit_broken = report.broken.map(|b| b.what);
        self.audit_pruned = report.pruned;
    }
}

/// Why a backup, a verification or a restore did not happen; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{}: cannot {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The archive is not one, is damaged, is another appliance's, or does not match its
    /// manifest.
    #[error("{}: {why}", path.display())]
    Archive { path: PathBuf, why: String },
    #[error("{0}")]
    Refused(String),
}

impl BackupError {
    pub(crate) fn io<'p>(
        what: &'static str,
        path: &'p Path,
    ) -> impl FnOnce(std::io::Error) -> BackupError + 'p {
        move |source| BackupError::Io {
            path: path.to_owned(),
            what,
            source,
        }
    }

    pub(crate) fn archive(path: &Path, why: impl Into<String>) -> BackupError {
        BackupError::Archive {
            path: path.to_owned(),
            why: why.into(),
        }
    }
}

pub type Result<T, E = BackupError> = std::result::Result<T, E>;

/// The appliance's own identity if a backup ever made it; commands that only look do not.
pub fn existing_identity(data_dir: &Path) -> Result<Option<provisioning_shared::device::Identity>> {
    let path = data_dir.join(SELF_KEY);
    if !path.exists() {
        return Ok(None);
    }
    provisioning_shared::device::Identity::read(&path)
        .map(Some)
        .map_err(BackupError::Refused)
}

/// The appliance's own identity, made (mode 0600) the first time it is needed.
pub fn self_identity(data_dir: &Path) -> Result<provisioning_shared::device::Identity> {
    use provisioning_shared::device::Identity;
    if let Some(identity) = existing_identity(data_dir)? {
        return Ok(identity);
    }
    let path = data_dir.join(SELF_KEY);
    let identity = Identity::generate();
    cert_tool::files::create_dir(data_dir, 0o700).map_err(|e| BackupError::Refused(e.to_string()))?;
    cert_tool::files::write_atomic(&path, identity.to_text().as_bytes(), cert_tool::files::SECRET)
        .map_err(|e| BackupError::Refused(e.to_string()))?;
    Ok(identity)
}
