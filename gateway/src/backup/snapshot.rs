//! `kakehashi backup run`: a consistent snapshot into an archive at the target, read back and
//! verified, then the target's retention.
//!
//! The archive is written under a hidden `.NAME.partial` name, flushed, renamed, and only then
//! read back from the target ([`Target`]: a directory or an SFTP server): its SHA-256 against
//! what was sent, then restored into a scratch directory (every file against the manifest, every
//! database opened, the audit chain recomputed, the counts compared, the snapshot's audit head
//! found in the live log). An archive that fails is renamed `NAME.unverified`, never counted as
//! a backup, and older good ones are kept. A run killed while writing leaves only its partial
//! file, which the next run of this appliance removes.
//!
//! Scratch space is in the data directory (`.backup-staging`, `.backup-verify`): one database
//! copy at a time while writing, the whole restored state while verifying, removed after.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::archive::{self, Extract, Hashing, Header, Sent, Writer};
use super::target::{Listed, Target, Upload};
use super::{BackupError, Counts, FORMAT, FORMAT_INCREMENTAL, Manifest, Referenced, Result, state};
use crate::audit::segment::{self, PRUNED, SEGMENTS};
use crate::audit::{AUDIT_HEAD, ChainCheck};
use crate::config::Config;
use provisioning_shared::device::Identity;

/// Files of the data directory that stay out of the archive (see [`super`]).
const LEFT_OUT: &[&str] = &[engine_proxy::cache::FILE];
/// Scratch directories inside the data directory.
pub(super) const STAGING: &str = ".backup-staging";
pub(super) const VERIFYING: &str = ".backup-verify";
/// What the archive file names look like: `kakehashi-20261204T150102.123Z-abcd1234.backup`.
pub const PREFIX: &str = "kakehashi-";
pub const SUFFIX: &str = ".backup";
/// What an archive is called while it is written: `.NAME.partial`, hidden, never an archive.
const PARTIAL: &str = ".partial";

/// What a run did.
#[derive(Debug)]
pub struct RunOutcome {
    pub archive: PathBuf,
    pub manifest: Manifest,
    pub bytes: u64,
    /// Older archives removed by the retention (`backup.keep`).
    pub removed: Vec<PathBuf>,
    /// Partial files of this appliance's runs that were killed while writing, removed.
    pub cleaned: Vec<PathBuf>,
    /// Audit segments pruned locally afterwards, now that this archive holds them.
    pub pruned: Vec<segment::Pruned>,
    pub took: Duration,
    /// Where each sealed audit segment on the appliance is held off the box now, and the homes
    /// each kept archive refers to (for `backup.json`).
    homes: Vec<Referenced>,
    refers: BTreeMap<String, Vec<String>>,
}

/// Takes a backup to the target (`[backup] dir` or `sftp`), verifies it, applies the retention
/// and records the result in `DATA_DIR/backup.json` (for the metrics and the status page),
/// success or failure.
pub fn run(config: &Config) -> Result<RunOutcome> {
    let started = Instant::now();
    let data_dir = &config.data_dir;
    let result = run_locked(config, started);
    let recorded = match &result {
        Ok(outcome) => state::record(
            data_dir,
            Ok(state::Good {
                archive: &outcome.archive,
                bytes: outcome.bytes,
                audit_last_id: outcome.manifest.counts.audit_last_id,
                homes: outcome.homes.clone(),
                refers: outcome.refers.clone(),
            }),
        ),
        Err(e) => state::record(data_dir, Err(&e.to_string())),
    };
    if let Err(e) = recorded {
        tracing::warn!("the backup's result is not recorded for the metrics: {e}");
    }
    result
}

fn run_locked(config: &Config, started: Instant) -> Result<RunOutcome> {
    let backup = config
        .backup
        .as_ref()
        .ok_or_else(|| BackupError::Refused(format!("{}: no [backup] section", config.source.display())))?;
    let data_dir = &config.data_dir;
    let _lock = lock(data_dir)?;
    let mut target = Target::open(backup)?;
    let mut recipients = config.backup_recipients()?;
    let me = super::self_identity(data_dir)?;
    recipients.push(me.0.to_public());
    let header = Header {
        appliance: me.recipient(),
        created: crate::audit::timestamp(time::OffsetDateTime::now_utc()),
    };
    let listed = target.files()?;
    let cleaned = remove_partials(&mut target, &listed, &header.appliance)?;
    // The homes of sealed segments that are still at the target: this archive refers to them.
    let prior = state::read(data_dir).unwrap_or_default();
    let homes: Vec<Referenced> = prior
        .homes
        .into_iter()
        .filter(|h| listed.iter().any(|(n, _)| *n == h.archive))
        .collect();
    let name = archive_name(&header);
    let partial = format!(".{name}{PARTIAL}");
    let partial_at = target.at(&partial);
    let written = target
        .create(&partial)
        .and_then(|out| write(config, &header, &recipients, out, &partial_at, &homes));
    let (manifest, sent, mut held) = match written {
        Ok(m) => m,
        Err(e) => {
            let _ = target.remove(&partial);
            return Err(e);
        }
    };
    let name = with_audit_range(&name, &manifest);
    let archive = target.at(&name);
    target.rename(&partial, &name)?;
    let verified = target
        .read(&name)
        .and_then(|input| verify_written(data_dir, &archive, input, &me, &manifest, &sent));
    if let Err(e) = verified {
        let aside = format!("{name}.unverified");
        let kept = match target.rename(&name, &aside) {
            Ok(()) => format!("kept aside as {}", target.at(&aside).display()),
            Err(not) => format!("left as {} ({not})", archive.display()),
        };
        return Err(BackupError::Refused(format!(
            "the archive did not verify, {kept}: {e}"
        )));
    }
    // What the next run may refer to: the segments this archive refers to, and those it holds.
    for h in &mut held {
        h.archive.clone_from(&name);
    }
    let homes: Vec<Referenced> = manifest.referenced.iter().cloned().chain(held).collect();
    let mut refers = prior.refers;
    refers.retain(|archive, _| listed.iter().any(|(n, _)| n == archive));
    let mut mine: Vec<String> = manifest.referenced.iter().map(|r| r.archive.clone()).collect();
    mine.sort();
    mine.dedup();
    refers.insert(name.clone(), mine);
    let removed = retention(&mut target, &header.appliance, backup.keep, &refers)?;
    refers.retain(|archive, _| !removed.iter().any(|r| r.ends_with(archive)));
    target.close();
    let pruned = prune(config, manifest.counts.audit_last_id);
    Ok(RunOutcome {
        archive,
        manifest,
        bytes: sent.bytes,
        removed,
        cleaned,
        pruned,
        took: started.elapsed(),
        homes,
        refers,
    })
}

/// Lets the disk budget prune what this verified archive now holds (under the backup lock, which
/// the caller holds). A failure is reported, not the run's: the archive is good.
fn prune(config: &Config, audit_last_id: u64) -> Vec<segment::Pruned> {
    let budget = crate::budget::Budget::of(config);
    let pruned = crate::audit::AuditLog::open_with(&config.data_dir, budget.segment_bytes).and_then(|log| {
        let pruned = crate::budget::enforce(config, &budget, audit_last_id, &log);
        log.close_blocking()?;
        pruned
    });
    pruned.unwrap_or_else(|e| {
        eprintln!("kakehashi: warning: the backup is good, but no audit segment was pruned: {e}");
        Vec::new()
    })
}

/// The backup lock if nobody holds it: the gateway's own pruning waits for no backup, it tries
/// again later.
pub fn try_lock(data_dir: &Path) -> Option<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(cert_tool::files::SECRET)
        .open(data_dir.join("backup.lock"))
        .ok()?;
    file.try_lock().ok()?;
    Some(file)
}

/// The archive's name with the audit entries it holds itself: `…-aFROM-LAST.backup`, entries
/// FROM+1 to LAST (FROM is the last entry pruned, or the last of the segments it refers to).
/// Not trusted (a name can be changed): the retention reads it only to keep more.
fn with_audit_range(name: &str, manifest: &Manifest) -> String {
    let stem = name.strip_suffix(SUFFIX).unwrap_or(name);
    let counts = &manifest.counts;
    let from = manifest
        .referenced
        .last()
        .map_or(counts.audit_pruned, |r| r.last.0);
    format!("{stem}-a{from}-{}{SUFFIX}", counts.audit_last_id)
}

/// The audit entries an archive's name says it holds, `(from, last)`: entries `from + 1` to
/// `last`. An archive named before names said so holds the whole chain from entry 1: `(0, 0)`.
pub fn audit_range(path: &Path) -> (u64, u64) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let parsed = name.strip_suffix(SUFFIX).and_then(|stem| {
        let (rest, last) = stem.rsplit_once('-')?;
        let (_, pruned) = rest.rsplit_once("-a")?;
        Some((pruned.parse().ok()?, last.parse().ok()?))
    });
    parsed.unwrap_or((0, 0))
}

fn archive_name(header: &Header) -> String {
    let compact: String = header
        .created
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    format!("{PREFIX}{compact}-{}{SUFFIX}", short(&header.appliance))
}

/// The start of the appliance's name, as its archives' names carry it.
fn short(appliance: &str) -> String {
    appliance.chars().skip(4).take(8).collect()
}

/// Removes what a run of this appliance killed while writing left behind (`.NAME.partial`);
/// returns what it removed. Another appliance's, on a shared target, may be a run in progress:
/// it is left alone. No run of this one is (the caller holds the backup lock).
fn remove_partials(target: &mut Target, listed: &[(String, u64)], appliance: &str) -> Result<Vec<PathBuf>> {
    let ours = format!("-{}{SUFFIX}{PARTIAL}", short(appliance));
    let mut removed = Vec::new();
    for (name, _) in listed {
        if name.starts_with(&format!(".{PREFIX}")) && name.ends_with(&ours) {
            target.remove(name)?;
            removed.push(target.at(name));
        }
    }
    Ok(removed)
}

/// Writes the archive to `out`, the new file `path` at the target, referring to the sealed
/// audit segments that `homes` hold; returns its manifest, what was sent, and the sealed
/// segments it holds itself (their home's name left empty: it is named after the manifest).
fn write(
    config: &Config,
    header: &Header,
    recipients: &[age::x25519::Recipient],
    out: Box<dyn Upload + '_>,
    path: &Path,
    homes: &[Referenced],
) -> Result<(Manifest, Sent, Vec<Referenced>)> {
    let data_dir = &config.data_dir;
    let staging = data_dir.join(STAGING);
    remove_dir(&staging)?;
    fs::create_dir(&staging).map_err(BackupError::io("create", &staging))?;
    let result = (|| {
        let mut out = Writer::create(out, path, header, recipients)?;
        out.add_file("config/gateway.toml", &config.source, 0o600)?;
        let paths = add_named_files(config, &mut out)?;
        let data = add_data_dir(config, &staging, &mut out, homes)?;
        let manifest = Manifest {
            format: if data.referenced.is_empty() {
                FORMAT
            } else {
                FORMAT_INCREMENTAL
            },
            appliance: header.appliance.clone(),
            created: header.created.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            paths,
            files: out.files().to_vec(),
            counts: data.counts,
            referenced: data.referenced,
        };
        let sent = out.finish(&manifest)?;
        Ok((manifest, sent, data.held))
    })();
    remove_dir(&staging)?;
    result
}

/// The files the configuration names, by key (`est.ca_dir` is a directory).
pub(super) fn named_files(config: &Config) -> Vec<(&'static str, PathBuf)> {
    let mut named = vec![
        ("tls.cert", config.tls.cert.clone()),
        ("tls.key", config.tls.key.clone()),
        ("tls.client_ca", config.tls.client_ca.clone()),
        ("upstream.ca", config.upstream.ca.clone()),
        ("upstream.cert", config.upstream.cert.clone()),
        ("upstream.key", config.upstream.key.clone()),
        ("upstream.password_file", config.upstream.password_file.clone()),
    ];
    let optional = [
        ("tls.crl", config.tls.crl.clone()),
        ("failover.engine_ca", config.failover.engine_ca.clone()),
        (
            "est.passphrase_file",
            config.est.as_ref().and_then(|e| e.passphrase_file.clone()),
        ),
        (
            "firmware.public_key",
            config.firmware.as_ref().map(|f| f.public_key.clone()),
        ),
        // Not firmware.rootfs_a, rootfs_b: partitions, the replacement appliance's own.
        ("firmware.ca", config.firmware.as_ref().and_then(|f| f.ca.clone())),
        (
            "wireguard.private_key",
            config.wireguard.as_ref().and_then(|w| w.private_key.clone()),
        ),
        (
            "backup.recipients_file",
            config.backup.as_ref().and_then(|b| b.recipients_file.clone()),
        ),
        (
            "backup.known_hosts",
            config.backup.as_ref().and_then(|b| b.known_hosts.clone()),
        ),
        (
            "backup.identity",
            config.backup.as_ref().and_then(|b| b.identity.clone()),
        ),
    ];
    named.extend(optional.into_iter().filter_map(|(k, p)| Some((k, p?))));
    named
}

/// Adds what the configuration names outside the data directory (`files/NAME`, the EST CA under
/// `ca/`); returns where every named path is in the archive.
fn add_named_files(config: &Config, out: &mut Writer<'_>) -> Result<Vec<(String, String)>> {
    let mut paths = Vec::new();
    let mut added: Vec<(PathBuf, String)> = Vec::new();
    for (key, path) in named_files(config) {
        if let Ok(rel) = path.strip_prefix(&config.data_dir) {
            paths.push((key.to_owned(), format!("data/{}", rel.display())));
            continue;
        }
        let name = match added.iter().find(|(p, _)| *p == path) {
            Some((_, name)) => name.clone(),
            None => {
                let base = path
                    .file_name()
                    .map_or("file".into(), |n| n.to_string_lossy().into_owned());
                let taken = |n: &str| added.iter().any(|(_, a)| a == n);
                let mut name = format!("files/{base}");
                let mut i = 2;
                while taken(&name) {
                    name = format!("files/{i}-{base}");
                    i += 1;
                }
                out.add_file(&name, &path, mode_of(&path)?)?;
                added.push((path.clone(), name.clone()));
                name
            }
        };
        paths.push((key.to_owned(), name));
    }
    if let Some(est) = &config.est {
        let dir = &est.ca_dir;
        if let Ok(rel) = dir.strip_prefix(&config.data_dir) {
            paths.push(("est.ca_dir".into(), format!("data/{}", rel.display())));
        } else {
            for file in ["ca.pem", "ca.key", "index.json"] {
                let path = dir.join(file);
                if path.exists() {
                    out.add_file(&format!("ca/{file}"), &path, mode_of(&path)?)?;
                }
            }
            let issued = dir.join("issued");
            if issued.is_dir() {
                for path in sorted_entries(&issued)? {
                    if path.is_file() {
                        let name = path
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        out.add_file(&format!("ca/issued/{name}"), &path, mode_of(&path)?)?;
                    }
                }
            }
            paths.push(("est.ca_dir".into(), "ca".into()));
        }
    }
    if let Some(dir) = config.backup.as_ref().and_then(|b| b.dir.as_ref()) {
        // Absolute: a restore leaves it where it is (see `restore`).
        let dir = std::path::absolute(dir).map_err(BackupError::io("resolve", dir))?;
        paths.push(("backup.dir".into(), dir.display().to_string()));
    }
    Ok(paths)
}

/// What [`add_data_dir`] took.
struct DataDir {
    counts: Counts,
    /// Sealed audit segments left to their homes.
    referenced: Vec<Referenced>,
    /// Sealed audit segments held in this archive.
    held: Vec<Referenced>,
}

/// Adds the data directory under `data/`: databases through SQLite's online backup into
/// `staging`, one at a time; the audit head copied before anything else, so the copy of the log
/// holds at least what the head says; the audit segments chain-checked as they go.
///
/// The oldest sealed segments that `homes` hold are referred to, not sent again, up to the
/// first that is not there (or ends after the head): from there on the archive holds every
/// segment, so the entries it holds itself run without a gap to the end.
fn add_data_dir(
    config: &Config,
    staging: &Path,
    out: &mut Writer<'_>,
    homes: &[Referenced],
) -> Result<DataDir> {
    let data_dir = &config.data_dir;
    let slots = config.firmware.as_ref().map(|f| f.slots());
    // The audit head before anything is listed: every segment holding an entry up to it exists
    // by then (a segment sealed later holds only later entries).
    let head = data_dir.join(AUDIT_HEAD);
    if head.exists() {
        fs::copy(&head, staging.join(AUDIT_HEAD)).map_err(BackupError::io("copy", &head))?;
    }
    let mut files = Vec::new();
    collect(data_dir, data_dir, slots.as_deref(), &mut files)?;
    // The audit head and the prune record first, then the segments in id order (a segment a prune
    // recorded but did not remove is left out), then the rest.
    let rel = |p: &Path| p.strip_prefix(data_dir).unwrap_or(p).to_owned();
    let segments: Vec<PathBuf> = segment::in_use(data_dir)?.iter().map(|s| rel(&s.path)).collect();
    let pruned_rel = Path::new(SEGMENTS).join(PRUNED);
    let is_audit =
        |f: &PathBuf| f.starts_with(SEGMENTS) && *f != pruned_rel || *f == Path::new(crate::audit::AUDIT_DB);
    let mut ordered: Vec<PathBuf> = [PathBuf::from(AUDIT_HEAD), pruned_rel.clone()]
        .into_iter()
        .filter(|f| files.contains(f))
        .collect();
    ordered.extend(segments.iter().filter(|f| files.contains(f)).cloned());
    ordered.extend(
        files
            .into_iter()
            .filter(|f| !is_audit(f) && *f != Path::new(AUDIT_HEAD) && *f != pruned_rel),
    );
    let head_id = segment::read_point_file(&staging.join(AUDIT_HEAD))?.map_or(0, |h| h.0);
    // Every sealed segment (all but the live one, the last) in a segments' file of its own.
    let sealed = &segments[..segments.len().saturating_sub(1)];
    let sealed = |rel: &Path| rel.starts_with(SEGMENTS) && sealed.iter().any(|s| s == rel);
    let mut referring = true;
    let mut taken = DataDir {
        counts: Counts::default(),
        referenced: Vec::new(),
        held: Vec::new(),
    };
    let mut chain: Option<ChainCheck> = None;
    for rel in ordered {
        let source = data_dir.join(&rel);
        let name = format!("data/{}", rel.display());
        let is_db = rel.extension().is_some_and(|e| e == "db");
        if rel == Path::new(AUDIT_HEAD) {
            out.add_file(&name, &staging.join(AUDIT_HEAD), 0o600)?;
        } else if rel == pruned_rel {
            let copy = staging.join(PRUNED);
            fs::copy(&source, &copy).map_err(BackupError::io("copy", &source))?;
            out.add_file(&name, &copy, 0o600)?;
        } else if let Some((home, span)) = homes
            .iter()
            .filter(|_| referring && sealed(&rel))
            .find(|h| h.path == name && h.last.0 <= head_id)
            .and_then(|h| Some((h, h.span()?)))
        {
            chain_check(&mut chain, staging)?.vouched(&span, &name);
            taken.referenced.push(home.clone());
        } else if is_db {
            let copy = staging.join(rel.file_name().unwrap_or_default());
            snapshot_db(&source, &copy)?;
            if segments.contains(&rel) {
                referring = false;
                let span = chain_check(&mut chain, staging)?.segment(&copy)?;
                out.add_file(&name, &copy, 0o600)?;
                if let (Some(span), Some(file), true) = (span, out.files().last(), sealed(&rel)) {
                    taken.held.push(Referenced {
                        path: name,
                        bytes: file.bytes,
                        sha256: file.sha256.clone(),
                        archive: String::new(),
                        start: (span.start.0, hex::encode(span.start.1)),
                        last: (span.last.0, hex::encode(span.last.1)),
                        entries: span.entries,
                    });
                }
            } else {
                count(&rel, &copy, &mut taken.counts)?;
                out.add_file(&name, &copy, 0o600)?;
            }
            fs::remove_file(&copy).map_err(BackupError::io("remove", &copy))?;
        } else {
            out.add_file(&name, &source, mode_of(&source)?)?;
        }
    }
    if let Some(chain) = chain {
        taken.counts.set_audit(chain.finish());
    }
    Ok(taken)
}

/// The snapshot's chain check, begun at its first segment from the copies of `audit/pruned` and
/// the head in `staging`.
fn chain_check<'c>(chain: &'c mut Option<ChainCheck>, staging: &Path) -> Result<&'c mut ChainCheck> {
    let check = match chain.take() {
        Some(c) => c,
        None => ChainCheck::new(
            segment::read_point_file(&staging.join(PRUNED))?,
            segment::read_point_file(&staging.join(AUDIT_HEAD))?,
        ),
    };
    Ok(chain.insert(check))
}

/// The data directory's files to back up, relative to it.
fn collect(root: &Path, dir: &Path, slots: Option<&Path>, files: &mut Vec<PathBuf>) -> Result<()> {
    for path in sorted_entries(dir)? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || Some(path.as_path()) == slots {
            continue;
        }
        // A file gone since the listing (a WAL checkpointed away) is not part of the state.
        let meta = match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            other => other.map_err(BackupError::io("read", &path))?,
        };
        if meta.is_dir() {
            collect(root, &path, slots, files)?;
        } else if meta.is_file()
            && !LEFT_OUT.contains(&name.as_str())
            && !name.ends_with(".lock")
            && !["-wal", "-shm", "-journal"].iter().any(|s| name.ends_with(s))
        {
            files.push(path.strip_prefix(root).unwrap_or(&path).to_owned());
        }
    }
    Ok(())
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = fs::read_dir(dir)
        .map_err(BackupError::io("list", dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(BackupError::io("list", dir))?;
    entries.sort();
    Ok(entries)
}

fn mode_of(path: &Path) -> Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(fs::metadata(path)
        .map_err(BackupError::io("read", path))?
        .permissions()
        .mode()
        & 0o777)
}

/// A consistent copy of a live database: SQLite's online backup in one step, under one read
/// transaction, while the gateway goes on writing (WAL).
fn snapshot_db(source: &Path, copy: &Path) -> Result<()> {
    let failed = |what: &'static str| {
        move |e: rusqlite::Error| BackupError::Refused(format!("{}: cannot {what}: {e}", source.display()))
    };
    let src = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(failed("open for the backup"))?;
    src.busy_timeout(Duration::from_secs(10))
        .map_err(failed("open for the backup"))?;
    let mut dst = Connection::open(copy)
        .map_err(|e| BackupError::Refused(format!("{}: cannot create: {e}", copy.display())))?;
    {
        use rusqlite::backup::{Backup, StepResult};
        let backup = Backup::new(&src, &mut dst).map_err(failed("copy (SQLite online backup)"))?;
        // -1: every page in one step, under one read transaction: a consistent copy.
        let mut tries = 0;
        loop {
            match backup.step(-1).map_err(failed("copy (SQLite online backup)"))? {
                StepResult::Done => break,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => {
                    return Err(BackupError::Refused(format!(
                        "{}: cannot copy (SQLite online backup): {other:?} for 10 s",
                        source.display()
                    )));
                }
            }
        }
    }
    dst.close()
        .map_err(|(_, e)| BackupError::Refused(format!("{}: cannot close: {e}", copy.display())))
}

/// Adds what the database `rel` (copied to `copy`) holds to the counts.
pub(super) fn count(rel: &Path, copy: &Path, counts: &mut Counts) -> Result<()> {
    let one = |sql: &str| -> Result<u64> {
        let conn = Connection::open_with_flags(copy, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| c.query_row(sql, [], |r| r.get::<_, i64>(0)))
            .map_err(|e| BackupError::Refused(format!("{}: cannot count ({sql}): {e}", rel.display())))?;
        Ok(conn as u64)
    };
    match rel.to_str() {
        Some(crate::store::GATEWAY_DB) => {
            counts.terminals = one("SELECT count(*) FROM terminals")?;
            counts.users = one("SELECT count(*) FROM users")?;
        }
        Some(engine_proxy::journal::FILE) => {
            counts.journal_entries = one("SELECT count(*) FROM entries")?;
            counts.journal_pending = one("SELECT count(*) FROM entries WHERE state = 'pending'")?;
        }
        _ => {}
    }
    Ok(())
}

/// Checks the archive read back from the target as a restore would: it must be what was
/// written, byte for byte (the SHA-256 of what was read against what was sent), and hold the
/// manifest that was written.
fn verify_written(
    data_dir: &Path,
    archive: &Path,
    input: Box<dyn Read + '_>,
    me: &Identity,
    written: &Manifest,
    sent: &Sent,
) -> Result<()> {
    let (manifest, read) = verify_unlocked(data_dir, archive, input, me)?;
    if read != *sent {
        return Err(BackupError::archive(
            archive,
            format!(
                "read back, it is {} bytes with SHA-256 {}, where {} bytes with SHA-256 {} were sent",
                read.bytes, read.sha256, sent.bytes, sent.sha256
            ),
        ));
    }
    if manifest != *written {
        return Err(BackupError::archive(
            archive,
            "its manifest is not the one written",
        ));
    }
    Ok(())
}

/// Opens an archive with `identity` (the appliance's own, or one of its recipients') in a scratch
/// directory and checks it as a restore would (files, databases, counts), and that its audit head
/// is in the live log (the log was not rewritten since); an incremental archive's homes beside it
/// must hold what it refers to. One at a time with `backup run`, whose scratch directory it
/// shares.
pub fn verify(data_dir: &Path, archive: &Path, identity: &Identity) -> Result<Manifest> {
    let _lock = lock(data_dir)?;
    verify_file(data_dir, archive, identity)
}

/// [`verify`] under the caller's lock.
fn verify_file(data_dir: &Path, archive: &Path, identity: &Identity) -> Result<Manifest> {
    let file = fs::File::open(archive).map_err(BackupError::io("open", archive))?;
    let (manifest, _) = verify_unlocked(data_dir, archive, Box::new(file), identity)?;
    let (mut beside, _) = Target::holding(archive, None)?;
    super::restore::homes(&mut beside, &manifest, &identity.0, None, archive)?;
    Ok(manifest)
}

/// [`verify`] for an archive at the configured target: `archive` is its name, its path or URL
/// there, or a file elsewhere; none, this appliance's newest there. Returns where it is.
pub fn verify_at_target(
    config: &Config,
    archive: Option<&Path>,
    identity: &Identity,
) -> Result<(PathBuf, Manifest)> {
    let backup = config
        .backup
        .as_ref()
        .ok_or_else(|| BackupError::Refused(format!("{}: no [backup] section", config.source.display())))?;
    let _lock = lock(&config.data_dir)?;
    // A file on this machine needs no target (the USB disk may be unplugged since).
    if let Some(given) = archive.filter(|p| p.is_file()) {
        return Ok((given.to_owned(), verify_file(&config.data_dir, given, identity)?));
    }
    let mut target = Target::open(backup)?;
    let name = match archive {
        Some(given) => target.name_of(given).ok_or_else(|| {
            BackupError::Refused(format!(
                "{}: no such file here, nor an archive's name at {}",
                given.display(),
                target.describe()
            ))
        })?,
        None => target
            .archives()?
            .into_iter()
            .filter(|a| {
                a.header
                    .as_ref()
                    .is_ok_and(|h| h.appliance == identity.recipient())
            })
            .map(|a| a.name)
            .next_back()
            .ok_or_else(|| {
                BackupError::Refused(format!("{}: no archive of this appliance", target.describe()))
            })?,
    };
    let at = target.at(&name);
    let manifest = target
        .read(&name)
        .and_then(|input| verify_unlocked(&config.data_dir, &at, input, identity))?
        .0;
    super::restore::homes(&mut target, &manifest, &identity.0, None, &at)?;
    target.close();
    Ok((at, manifest))
}

/// The archives at the configured target (oldest first) and the target's name.
pub fn list(backup: &crate::config::Backup) -> Result<(String, Vec<Listed>)> {
    let mut target = Target::open(backup)?;
    let listed = target.archives()?;
    let name = target.describe();
    target.close();
    Ok((name, listed))
}

fn lock(data_dir: &Path) -> Result<cert_tool::files::DirLock> {
    cert_tool::files::DirLock::file(&data_dir.join("backup.lock"))
        .map_err(|e| BackupError::Refused(e.to_string()))
}

/// Checks the archive `archive` read from `input`; returns its manifest and what was read (all
/// of it, to the end of the file, so that nothing after the archive's end goes unseen).
fn verify_unlocked(
    data_dir: &Path,
    archive: &Path,
    input: Box<dyn Read + '_>,
    me: &Identity,
) -> Result<(Manifest, Sent)> {
    let scratch = data_dir.join(VERIFYING);
    remove_dir(&scratch)?;
    fs::create_dir(&scratch).map_err(BackupError::io("create", &scratch))?;
    let mut input = BufReader::with_capacity(1 << 16, Hashing::new(input));
    let result = (|| {
        let (_, manifest) = archive::unpack_from(archive, &mut input, &me.0, Extract::All(&scratch))?;
        super::restore::check_state(&scratch.join("data"), &manifest, archive)?;
        let live = crate::audit::hash_of(data_dir, manifest.counts.audit_last_id)?;
        let local_pruned = match live {
            None => segment::pruned(data_dir)?.map_or(0, |p| p.0),
            Some(_) => 0,
        };
        if live.is_none() && manifest.counts.audit_last_id > 0 && manifest.counts.audit_last_id < local_pruned
        {
            return Err(BackupError::archive(
                archive,
                format!(
                    "its audit entries end at {}, before the local log begins (entries up to {} were pruned): \
                     it cannot be linked to the local log; check against a newer archive",
                    manifest.counts.audit_last_id, local_pruned
                ),
            ));
        }
        if manifest.counts.audit_last_id > 0
            && live.as_deref() != Some(manifest.counts.audit_last_hash.as_str())
        {
            return Err(BackupError::archive(
                archive,
                format!(
                    "its audit entry {} is not the live log's: the live log was rewritten since, or the archive is \
                     another appliance's",
                    manifest.counts.audit_last_id
                ),
            ));
        }
        Ok(manifest)
    })();
    remove_dir(&scratch)?;
    let manifest = result?;
    std::io::copy(&mut input, &mut std::io::sink()).map_err(BackupError::io("read", archive))?;
    let (read, _) = input.into_inner().finish();
    Ok((manifest, read))
}

/// Removes the oldest of this appliance's archives beyond `keep`, except those that hold audit
/// entries no kept newer archive holds (pruned locally since), so that the archives together
/// keep the whole chain, and the homes that the `keep` newest refer to (`refers`), so that each
/// of them restores.
fn retention(
    target: &mut Target,
    appliance: &str,
    keep: usize,
    refers: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<PathBuf>> {
    let ours: Vec<String> = target
        .archives()?
        .into_iter()
        .filter(|a| a.header.as_ref().is_ok_and(|h| h.appliance == appliance))
        .map(|a| a.name)
        .collect();
    let range = |name: &String| audit_range(Path::new(name));
    let excess = ours.len().saturating_sub(keep);
    let mut covered_from = ours[excess..].iter().map(|n| range(n).0).min().unwrap_or(0);
    let mut removed = Vec::new();
    let needed: Vec<&String> = ours[excess..]
        .iter()
        .filter_map(|n| refers.get(n))
        .flatten()
        .collect();
    for name in ours[..excess].iter().rev() {
        let (from, _) = range(name);
        if from < covered_from {
            covered_from = from;
        } else if !needed.contains(&name) {
            removed.push(name.clone());
        }
    }
    for name in &removed {
        target.remove(name)?;
    }
    if !removed.is_empty() {
        target.sync()?;
    }
    removed.reverse();
    Ok(removed.iter().map(|n| target.at(n)).collect())
}

pub(super) fn remove_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BackupError::io("remove", dir)(e)),
        _ => Ok(()),
    }
}
