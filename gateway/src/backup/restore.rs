//! `kakehashi backup restore ARCHIVE --identity KEY --to DIR`: a replacement appliance from an
//! archive, all or nothing.
//!
//! The archive is unpacked beside `DIR` under a hidden name, checked as every run checks its own
//! archive (files against the manifest, databases opened, the audit chain recomputed, the counts
//! compared), given a configuration whose paths point inside it, and only then renamed to `DIR`.
//! A wrong key, a damaged, cut or foreign archive: an error, and `DIR` is not touched.
//!
//! `DIR/gateway.toml` is the old configuration with its paths moved: the data directory to
//! `DIR/data`, named files to `DIR/files`, the EST CA to `DIR/ca`; the backup target stays where
//! it was, so the replacement goes on backing up beside its predecessor's archives. Listeners,
//! the upstream and every other setting are unchanged: terminals reach the replacement as they
//! reached the old one (same server certificate, same WireGuard key). The original is kept as
//! `DIR/gateway.toml.orig`.

use std::fs;
use std::io::BufReader;
use std::path::{Component, Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::archive::{self, Extract};
use super::snapshot::{PREFIX, SUFFIX, count, remove_dir};
use super::target::Target;
use super::{BackupError, Counts, Manifest, Referenced, Result};

/// What a restore made.
#[derive(Debug)]
pub struct RestoreOutcome {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub manifest: Manifest,
}

/// Restores `archive` (a file, or an `sftp://` URL reached with `ssh`: the pinned host keys and
/// the SSH key), opened with the age identity in `identity`, into the new directory `to` (absent,
/// or empty). An incremental archive's earlier segments come from their homes beside it.
pub fn restore(
    archive: &Path,
    ssh: Option<(&Path, &Path)>,
    identity: &Path,
    to: &Path,
) -> Result<RestoreOutcome> {
    let identity = provisioning_shared::device::Identity::read(identity).map_err(BackupError::Refused)?;
    let empty = match fs::read_dir(to) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::Refused(format!(
                    "{} is not empty: restore into a new directory",
                    to.display()
                )));
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(BackupError::io("read", to)(e)),
    };
    let name = to
        .file_name()
        .ok_or_else(|| BackupError::Refused(format!("{}: not a directory name", to.display())))?;
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let staging = parent.join(format!(".{}.restoring", name.to_string_lossy()));
    remove_dir(&staging)?;
    {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(BackupError::io("create", &staging))?;
    }
    let result = (|| {
        let (mut target, name) = Target::holding(archive, ssh)?;
        let archive = &target.at(&name);
        let (_, manifest) = {
            let mut input = BufReader::with_capacity(1 << 16, target.read(&name)?);
            archive::unpack_from(archive, &mut input, &identity.0, Extract::All(&staging))?
        };
        homes(&mut target, &manifest, &identity.0, Some(&staging), archive)?;
        target.close();
        check_state(&staging.join("data"), &manifest, archive)?;
        let original = staging.join("config/gateway.toml");
        let text = fs::read_to_string(&original).map_err(BackupError::io("read", &original))?;
        let config = rewrite_config(&text, &manifest).map_err(|why| BackupError::archive(archive, why))?;
        cert_tool::files::write_atomic(&staging.join("gateway.toml"), config.as_bytes(), 0o600)
            .map_err(|e| BackupError::Refused(e.to_string()))?;
        fs::rename(&original, staging.join("gateway.toml.orig"))
            .map_err(BackupError::io("move", &original))?;
        let config_dir = staging.join("config");
        fs::remove_dir(&config_dir).map_err(BackupError::io("remove", &config_dir))?;
        Ok(manifest)
    })();
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = remove_dir(&staging);
            return Err(e);
        }
    };
    if empty {
        fs::remove_dir(to).map_err(BackupError::io("replace", to))?;
    }
    fs::rename(&staging, to).map_err(BackupError::io("rename into place", to))?;
    cert_tool::files::sync_dir(parent).map_err(|e| BackupError::Refused(e.to_string()))?;
    Ok(RestoreOutcome {
        dir: to.to_owned(),
        config: to.join("gateway.toml"),
        manifest,
    })
}

/// Reads the archives at `target` that hold the sealed segments `manifest` (of `archive`)
/// refers to: each must be of the same appliance, verify against its own manifest, and hold
/// each segment exactly as referred to. With `into`, the segments are written there (a
/// restore); without, only checked (`backup verify`).
pub(super) fn homes(
    target: &mut Target,
    manifest: &Manifest,
    identity: &dyn age::Identity,
    into: Option<&Path>,
    archive: &Path,
) -> Result<()> {
    let mut names: Vec<&str> = manifest.referenced.iter().map(|r| r.archive.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for home in names {
        let refs: Vec<&Referenced> = manifest.referenced.iter().filter(|r| r.archive == home).collect();
        let plain = |p: &str| {
            Path::new(p)
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
        };
        if !home.starts_with(PREFIX) || !home.ends_with(SUFFIX) || home.contains('/') {
            return Err(BackupError::archive(
                archive,
                format!("refers to {home:?}, which is not an archive's name"),
            ));
        }
        if let Some(bad) = refs
            .iter()
            .find(|r| !r.path.starts_with("data/audit/") || !plain(&r.path))
        {
            return Err(BackupError::archive(
                archive,
                format!("refers to {:?}, which is not an audit segment", bad.path),
            ));
        }
        let at = target.at(home);
        let wanted: Vec<&str> = refs.iter().map(|r| r.path.as_str()).collect();
        let extract = into.map_or(Extract::Nothing, |dir| Extract::Only(dir, &wanted));
        let (header, held) = {
            let input = target.read(home).map_err(|e| {
                BackupError::archive(
                    archive,
                    format!(
                        "refers to audit segments in {}, which cannot be read: {e}",
                        at.display()
                    ),
                )
            })?;
            archive::unpack_from(
                &at,
                &mut BufReader::with_capacity(1 << 16, input),
                identity,
                extract,
            )?
        };
        if header.appliance != manifest.appliance {
            return Err(BackupError::archive(
                &at,
                format!(
                    "is appliance {}'s, not {}'s",
                    header.appliance, manifest.appliance
                ),
            ));
        }
        for r in refs {
            if !held
                .files
                .iter()
                .any(|f| f.path == r.path && f.bytes == r.bytes && f.sha256 == r.sha256)
            {
                return Err(BackupError::archive(
                    archive,
                    format!(
                        "refers to {} in {}, which does not hold that copy of it",
                        r.path,
                        at.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Checks a restored data directory: every database passes SQLite's `quick_check`, and the
/// inventory, the journal and the audit chain hold what the manifest says the snapshot held.
pub(super) fn check_state(data: &Path, manifest: &Manifest, archive: &Path) -> Result<()> {
    for file in &manifest.files {
        let Some(rel) = file.path.strip_prefix("data/") else {
            continue;
        };
        if !rel.ends_with(".db") {
            continue;
        }
        let path = data.join(rel);
        let verdict: String = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| c.query_row("PRAGMA quick_check", [], |r| r.get(0)))
            .map_err(|e| {
                BackupError::archive(archive, format!("{}: not a usable database: {e}", file.path))
            })?;
        if verdict != "ok" {
            return Err(BackupError::archive(
                archive,
                format!("{}: damaged: {verdict}", file.path),
            ));
        }
    }
    let mut found = Counts::default();
    for name in [crate::store::GATEWAY_DB, engine_proxy::journal::FILE] {
        let path = data.join(name);
        if path.exists() {
            count(Path::new(name), &path, &mut found)?;
        }
    }
    if !crate::audit::segment::list(data)?.is_empty() || !manifest.referenced.is_empty() {
        let mut vouched = Vec::new();
        for r in &manifest.referenced {
            let span = r.span().ok_or_else(|| {
                BackupError::archive(archive, format!("{}: its reference has no valid hashes", r.path))
            })?;
            let name = Path::new(&r.path).file_name().unwrap_or_default();
            vouched.push((name.to_string_lossy().into_owned(), span));
        }
        found.set_audit(crate::audit::verify_vouched(data, &vouched)?);
    }
    if found != manifest.counts {
        return Err(BackupError::archive(
            archive,
            format!(
                "restored, it holds {} where its manifest says {}",
                describe(&found),
                describe(&manifest.counts)
            ),
        ));
    }
    Ok(())
}

fn describe(c: &Counts) -> String {
    format!(
        "{} terminals, {} people, {} journal entries ({} pending), {} audit entries (last {} {}{})",
        c.terminals,
        c.users,
        c.journal_entries,
        c.journal_pending,
        c.audit_entries,
        c.audit_last_id,
        c.audit_last_hash.get(..12).unwrap_or(&c.audit_last_hash),
        c.audit_broken
            .as_deref()
            .map(|b| format!(", broken: {b}"))
            .unwrap_or_default()
    )
}

/// The old configuration with its paths pointing into the restored directory: `data_dir` to
/// `data`, each named file to where the manifest put it (relative to the new `gateway.toml`);
/// an absolute path in the manifest (the backup target) stays as it was.
fn rewrite_config(text: &str, manifest: &Manifest) -> Result<String, String> {
    let mut table: toml::Table = text
        .parse()
        .map_err(|e| format!("its configuration does not parse: {e}"))?;
    let mut moves: Vec<(&str, &str)> = vec![("data_dir", "data")];
    moves.extend(manifest.paths.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if table.get("firmware").and_then(|f| f.get("slots_dir")).is_some() {
        moves.push(("firmware.slots_dir", "slots"));
    }
    for (key, value) in moves {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().unwrap_or(key);
        let mut at = &mut table;
        for part in parts {
            at = at
                .get_mut(part)
                .and_then(toml::Value::as_table_mut)
                .ok_or_else(|| format!("its configuration has no [{part}] for {key}"))?;
        }
        at.insert(last.to_owned(), toml::Value::String(value.to_owned()));
    }
    let body = toml::to_string(&table).map_err(|e| format!("cannot write its configuration: {e}"))?;
    Ok(format!(
        "# Restored by `kakehashi backup restore` from the backup of {} taken {}.\n\
         # The paths point into this directory; the rest is as it was (gateway.toml.orig, with its\n\
         # comments). Every key is explained in docs/configuration.md.\n\n{body}",
        manifest.appliance, manifest.created
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_points_into_the_restored_directory() {
        let manifest = Manifest {
            format: 1,
            appliance: "age1test".into(),
            created: "2026-12-04T15:00:00.000Z".into(),
            version: "0.1.0".into(),
            paths: vec![
                ("tls.cert".into(), "files/server.pem".into()),
                ("wireguard.private_key".into(), "data/wireguard.key".into()),
                ("backup.dir".into(), "/mnt/usb/backups".into()),
            ],
            files: vec![],
            counts: Counts::default(),
            referenced: vec![],
        };
        let text = "data_dir = \"/var/lib/kakehashi\" # where\n[tls]\ncert = \"/etc/k/server.pem\"\nkey = \"k\"\n\
                    [wireguard]\nlisten = \"0.0.0.0:51820\"\n[backup]\ndir = \"backups\"\n[firmware]\nslots_dir = \"/x\"\n";
        let out = rewrite_config(text, &manifest).expect("rewritten");
        let t: toml::Table = out.parse().expect("TOML");
        assert_eq!(t["data_dir"].as_str(), Some("data"));
        assert_eq!(t["tls"]["cert"].as_str(), Some("files/server.pem"));
        assert_eq!(
            t["tls"]["key"].as_str(),
            Some("k"),
            "what the manifest does not name stays"
        );
        assert_eq!(t["wireguard"]["private_key"].as_str(), Some("data/wireguard.key"));
        assert_eq!(t["backup"]["dir"].as_str(), Some("/mnt/usb/backups"));
        assert_eq!(t["firmware"]["slots_dir"].as_str(), Some("slots"));
        let missing = Manifest {
            paths: vec![("est.ca_dir".into(), "ca".into())],
            ..manifest
        };
        let err = rewrite_config(text, &missing).expect_err("no [est]");
        assert!(err.contains("no [est] for est.ca_dir"), "{err}");
    }
}
