//! The log's files: segments in `DATA_DIR/audit/`, each an SQLite file named for its first id
//! (`000000000001.db`, `000000052113.db`, …), so that a bounded disk can let the oldest go once
//! they are safely off the box.
//!
//! The newest segment is the live one, the only one written; every other is sealed and never
//! changes again. A segment records where it starts (the id and hash of the entry before its
//! first, in its one-row `segment` table), so the chain runs on from one file into the next, and
//! the first segment left after a prune still says what it follows. `audit/pruned` (`ID HASH`,
//! written atomically before a segment is removed) records the last entry pruned: [`verify`]
//! (super::verify) requires the first local segment to start exactly there, so a removed
//! beginning that no prune recorded is a break.
//!
//! A file is never renamed while it is in use: sealing creates the next file (under a hidden
//! name, set up, synced, then renamed into place) and leaves the old one where it is, so no
//! reader ever pairs one file with another's WAL. The single `audit.db` of earlier versions
//! (schema 1, a `prev_hash` column) is moved into `audit/` as the first sealed segment the first
//! time a writer opens the log, under the lock, after a checkpoint; readers accept it in either
//! place.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::AUDIT_DB;
use super::batch::Decoder;
use super::chain::{last_entry, read_point, write_point};
use super::entry::{
    BATCH_SCHEMA, BATCH_VERSION, LEGACY_VERSION, SEGMENT_SCHEMA, SEGMENT_VERSION, get_u64, sql_int,
};
use crate::store::{self, Result, StoreError};

/// The directory of segments inside the data directory.
pub const SEGMENTS: &str = "audit";
/// The file in [`SEGMENTS`] that records the last entry pruned: `ID HASH-HEX`.
pub const PRUNED: &str = "pruned";
/// The page size of a new segment. Larger pages hold more rows per page header and cell
/// directory: 182.0 bytes an entry at 8 KiB against 185.5 at 4 KiB, and no better above.
const PAGE_SIZE: u32 = 8192;
/// How far the writer's WAL may grow before it is cut back after a checkpoint: on a small disk
/// budget the WAL is not free.
pub(super) const WAL_LIMIT: i64 = 1 << 20;
/// The writer's page cache, in KiB (`tune`).
const CACHE_KIB: u32 = 512;

/// A point in the chain: an entry's id and hash. `(0, zeros)` is the chain's origin.
pub type Point = (u64, [u8; 32]);
/// Where the first entry of a log chains from.
pub const ORIGIN: Point = (0, [0; 32]);

/// One segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Its first entry's id (by its name; 1 for the legacy `audit.db`).
    pub first: u64,
    pub path: PathBuf,
}

/// How a segment stores its entries. A new log is written in [`Layout::Batches`]; a log of
/// [`Layout::Rows`] stays in rows until a writer may move it ([`Format`]); the legacy file is
/// only read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    /// The single `audit.db` of earlier versions: every row has its `prev_hash`.
    Legacy,
    /// A segment of one row per entry: the start in `segment`, no `prev_hash` column (it is the
    /// row before's hash).
    Rows,
    /// A segment of one row per commit (see [`batch`](super::batch)).
    Batches,
}

/// The segment's file name for a first id.
pub fn file_name(first: u64) -> String {
    format!("{first:012}.db")
}

/// The segments of the data directory's log, oldest first: a legacy `audit.db` not yet moved,
/// then `audit/*.db` by first id. Files that are not segments (the pruned record, WAL files,
/// a half-made segment's hidden name) are left alone.
pub fn list(data_dir: &Path) -> Result<Vec<Segment>> {
    let mut out = Vec::new();
    let legacy = data_dir.join(AUDIT_DB);
    if legacy.exists() {
        out.push(Segment {
            first: 1,
            path: legacy.clone(),
        });
    }
    let dir = data_dir.join(SEGMENTS);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StoreError::io("list", &dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(StoreError::io("list", &dir))?;
        let name = entry.file_name();
        let Some(first) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".db"))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push(Segment {
            first,
            path: entry.path(),
        });
    }
    // The legacy file first among equals. (The writer lists before every commit: the key
    // must not allocate, as a path joined per comparison did.)
    out.sort_unstable_by_key(|s| (s.first, s.path != legacy));
    Ok(out)
}

/// The segments still in use: without those wholly at or before the recorded prune (left by a
/// prune interrupted between recording and removing; the next prune removes them).
pub(super) fn live_list(data_dir: &Path, pruned: Option<Point>) -> Result<Vec<Segment>> {
    let mut all = list(data_dir)?;
    if let Some((floor, _)) = pruned {
        while all.len() > 1 && all[1].first <= floor + 1 {
            all.remove(0);
        }
    }
    Ok(all)
}

/// The segments in use, oldest first: [`list`] without those a prune recorded but did not get
/// to remove.
pub fn in_use(data_dir: &Path) -> Result<Vec<Segment>> {
    live_list(data_dir, pruned(data_dir)?)
}

/// A point file (`audit.head`, `audit/pruned`), read: `None` if there is none.
pub fn read_point_file(path: &Path) -> Result<Option<Point>> {
    read_point(path)
}

/// The last entry pruned, from `audit/pruned`; `None` when nothing was.
pub fn pruned(data_dir: &Path) -> Result<Option<Point>> {
    read_point(&data_dir.join(SEGMENTS).join(PRUNED))
}

/// Opens an existing segment to read; `None` if it has no schema yet (an empty legacy file).
pub(super) fn open(path: &Path) -> Result<Option<(Connection, Layout)>> {
    let Some(conn) = store::open_existing(path)? else {
        return Ok(None);
    };
    let layout = layout(&conn, path)?;
    Ok(layout.map(|l| (conn, l)))
}

/// The layout a file's schema version says; `None` for a file without a schema.
pub(super) fn layout(conn: &Connection, path: &Path) -> Result<Option<Layout>> {
    match store::user_version(conn, path)? {
        0 => Ok(None),
        LEGACY_VERSION => Ok(Some(Layout::Legacy)),
        SEGMENT_VERSION => Ok(Some(Layout::Rows)),
        BATCH_VERSION => Ok(Some(Layout::Batches)),
        found => Err(StoreError::NewerSchema {
            path: path.into(),
            found,
            known: BATCH_VERSION,
        }),
    }
}

/// Where a segment starts: the entry its first entry chains from.
pub(super) fn start(conn: &Connection, layout: Layout, path: &Path) -> Result<Point> {
    let row: Option<(u64, Vec<u8>)> = match layout {
        Layout::Rows | Layout::Batches => conn
            .query_row("SELECT prev_id, prev_hash FROM segment", [], |r| {
                Ok((get_u64(r, 0)?, r.get(1)?))
            })
            .optional(),
        Layout::Legacy => conn
            .query_row("SELECT id, prev_hash FROM entries ORDER BY id LIMIT 1", [], |r| {
                Ok((get_u64(r, 0)?.saturating_sub(1), r.get(1)?))
            })
            .optional(),
    }
    .map_err(StoreError::sqlite(path, "read where the segment starts"))?;
    let Some((id, hash)) = row else {
        return match layout {
            Layout::Legacy => Ok(ORIGIN),
            Layout::Rows | Layout::Batches => Err(StoreError::Corrupt {
                path: path.into(),
                what: "the segment does not record where it starts (its segment table is empty)".into(),
            }),
        };
    };
    let hash = <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| StoreError::Corrupt {
        path: path.into(),
        what: "the hash the segment starts from is not 32 bytes".into(),
    })?;
    Ok((id, hash))
}

/// Where a segment ends: its last entry, or its start when it has none.
pub(super) fn end(conn: &Connection, layout: Layout, path: &Path) -> Result<Point> {
    match last_entry(conn, layout, path)? {
        Some(point) => Ok(point),
        None => start(conn, layout, path),
    }
}

/// The hash of entry `id` (hex) if the local log has it: in a segment, or as the point the first
/// local segment starts from (the last entry pruned). `None` for an id beyond the end or before
/// the recorded start.
pub(super) fn hash_at(data_dir: &Path, id: u64) -> Result<Option<[u8; 32]>> {
    let segments = live_list(data_dir, pruned(data_dir)?)?;
    // The segment whose first entry is the one after `id` holds its hash as its start; the one
    // before it holds the row.
    let Some(at) = segments.iter().rposition(|s| s.first <= id.saturating_add(1)) else {
        return Ok(None);
    };
    for seg in &segments[at.saturating_sub(1)..=at] {
        let Some((conn, layout)) = open(&seg.path)? else {
            continue;
        };
        let (start_id, start_hash) = start(&conn, layout, &seg.path)?;
        if start_id == id && id > 0 {
            return Ok(Some(start_hash));
        }
        let fail = StoreError::sqlite(&seg.path, "read an audit entry");
        if layout == Layout::Batches {
            let row: Option<(u64, u64, Vec<u8>)> = conn
                .query_row(
                    "SELECT last, entries, records FROM batches WHERE last >= ?1 ORDER BY last LIMIT 1",
                    params![sql_int(id)],
                    |r| Ok((get_u64(r, 0)?, get_u64(r, 1)?, r.get(2)?)),
                )
                .optional()
                .map_err(fail)?;
            let Some((last, count, records)) = row else {
                continue;
            };
            let first = (last + 1).saturating_sub(count);
            if id < first {
                continue;
            }
            let entry = Decoder::new(&records, first).nth((id - first) as usize);
            return Ok(entry.and_then(|e| e.ok()).map(|(_, hash)| hash));
        }
        let row: Option<Vec<u8>> = conn
            .query_row(
                "SELECT hash FROM entries WHERE id = ?1",
                params![sql_int(id)],
                |r| r.get(0),
            )
            .optional()
            .map_err(fail)?;
        if let Some(hash) = row {
            return Ok(<[u8; 32]>::try_from(hash.as_slice()).ok());
        }
    }
    Ok(None)
}

/// What a writer may do with a log that versions before batches wrote in rows.
///
/// Firmware updates run the new version on trial beside the old one (the old supervisor records
/// the trial's events in the same log), and roll back to the old one if the trial fails: the old
/// version must still read and extend the log (docs/firmware.md, "State across a rollback"),
/// and it knows only rows. So only a gateway that no older version can run beside moves the
/// log to batches; every other writer goes on in the live segment's layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Go on in the live segment's layout (a new log starts in batches).
    Keep,
    /// Seal a live segment of rows and go on in batches.
    Batches,
}

/// Creates the segment of `layout` (rows or batches) that starts after `start` (a hidden file
/// set up and synced, then renamed into place) and returns it. Called under the writer's lock.
pub(super) fn create(data_dir: &Path, start: Point, layout: Layout) -> Result<Segment> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = data_dir.join(SEGMENTS);
    cert_tool::files::create_dir(&dir, store::DIR_MODE)?;
    let first = start.0 + 1;
    let path = dir.join(file_name(first));
    let hidden = dir.join(format!(".{}.new", file_name(first)));
    for stale in [&hidden, &hidden.with_extension("new-journal")] {
        match std::fs::remove_file(stale) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::io("remove", stale)(e));
            }
            _ => {}
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(cert_tool::files::SECRET)
        .open(&hidden)
        .map_err(StoreError::io("create", &hidden))?;
    {
        let fail = |what| StoreError::sqlite(&hidden, what);
        let conn = Connection::open(&hidden).map_err(fail("create"))?;
        conn.execute_batch(&format!("PRAGMA page_size = {PAGE_SIZE};"))
            .map_err(fail("set the page size"))?;
        let tx = conn.unchecked_transaction().map_err(fail("begin"))?;
        let (schema, version) = match layout {
            Layout::Rows => (SEGMENT_SCHEMA, SEGMENT_VERSION),
            // (The legacy file is never made.)
            Layout::Batches | Layout::Legacy => (BATCH_SCHEMA, BATCH_VERSION),
        };
        tx.execute_batch(schema).map_err(fail("create the schema"))?;
        tx.execute(
            "INSERT INTO segment (prev_id, prev_hash) VALUES (?1, ?2)",
            params![sql_int(start.0), &start.1[..]],
        )
        .map_err(fail("record where the segment starts"))?;
        tx.pragma_update(None, "user_version", version)
            .map_err(fail("record the schema version"))?;
        tx.commit().map_err(fail("commit"))?;
        let _: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(fail("switch to WAL"))?;
        conn.close().map_err(|(_, e)| fail("close")(e))?;
    }
    std::fs::File::open(&hidden)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::io("flush", &hidden))?;
    std::fs::rename(&hidden, &path).map_err(StoreError::io("rename into place", &path))?;
    cert_tool::files::sync_dir(&dir)?;
    Ok(Segment { first, path })
}

/// Moves the single `audit.db` of earlier versions into `audit/` as the first sealed segment:
/// checkpointed, closed, renamed (with any WAL left by another connection). An empty one is
/// removed instead. Called under the writer's lock, before the writer opens its segment.
pub(super) fn migrate_legacy(data_dir: &Path) -> Result<()> {
    let legacy = data_dir.join(AUDIT_DB);
    if !legacy.exists() {
        return Ok(());
    }
    let dir = data_dir.join(SEGMENTS);
    cert_tool::files::create_dir(&dir, store::DIR_MODE)?;
    let first = {
        let conn = store::open_file(data_dir, &legacy)?;
        let first: Option<i64> = match layout(&conn, &legacy)? {
            None => None,
            Some(Layout::Legacy) => conn
                .query_row("SELECT MIN(id) FROM entries", [], |r| r.get(0))
                .map_err(StoreError::sqlite(&legacy, "read the first entry"))?,
            Some(Layout::Rows | Layout::Batches) => {
                return Err(StoreError::Corrupt {
                    path: legacy,
                    what: "a segment where the legacy audit log was expected".into(),
                });
            }
        };
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(StoreError::sqlite(&legacy, "checkpoint"))?;
        conn.close()
            .map_err(|(_, e)| StoreError::sqlite(&legacy, "close")(e))?;
        first
    };
    let side = |from: &Path, suffix: &str| PathBuf::from(format!("{}{suffix}", from.display()));
    let Some(first) = first else {
        for suffix in ["-wal", "-shm", ""] {
            let path = side(&legacy, suffix);
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StoreError::io("remove", &path)(e));
                }
                _ => {}
            }
        }
        return Ok(());
    };
    let to = dir.join(file_name(u64::try_from(first).unwrap_or(1)));
    if to.exists() {
        return Err(StoreError::Corrupt {
            path: legacy,
            what: format!(
                "it cannot be moved to {}: that segment exists already (move one of them aside)",
                to.display()
            ),
        });
    }
    // The WAL first: a reader that opens the new name finds the file with its WAL or without.
    for suffix in ["-wal", "-shm"] {
        let from = side(&legacy, suffix);
        if from.exists() {
            std::fs::rename(&from, side(&to, suffix)).map_err(StoreError::io("move", &from))?;
        }
    }
    std::fs::rename(&legacy, &to).map_err(StoreError::io("move", &legacy))?;
    cert_tool::files::sync_dir(&dir)?;
    cert_tool::files::sync_dir(data_dir)?;
    Ok(())
}

/// A segment removed by [`prune`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pruned {
    /// Its first and last entry.
    pub first: u64,
    pub last: u64,
    /// Disk space it took (allocated blocks).
    pub bytes: u64,
    pub path: PathBuf,
}

/// Removes sealed segments, oldest first, whose every entry is at or before `through` (the
/// highest id known to be in a verified off-box copy), until `enough(bytes freed so far)` says
/// so. The live segment is never removed. Each removal is recorded in `audit/pruned` before the
/// file goes, under the writer's lock (`audit.lock`). Returns what was removed, for the caller
/// to record in the log itself.
pub fn prune(data_dir: &Path, through: u64, mut enough: impl FnMut(u64) -> bool) -> Result<Vec<Pruned>> {
    use std::os::unix::fs::OpenOptionsExt;
    let lock_path = data_dir.join(super::AUDIT_LOCK);
    // Created if missing: a restored data directory has segments but no lock file until a
    // writer opens the log.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(cert_tool::files::SECRET)
        .open(&lock_path)
        .map_err(StoreError::io("open", &lock_path))?;
    lock.lock().map_err(StoreError::io("lock", &lock_path))?;
    let floor = pruned(data_dir)?;
    let segments = list(data_dir)?;
    let mut out = Vec::new();
    let mut freed = 0;
    let dir = data_dir.join(SEGMENTS);
    for pair in segments.windows(2) {
        let (seg, next) = (&pair[0], &pair[1]);
        let last = next.first.saturating_sub(1);
        let leftover = floor.is_some_and(|(f, _)| last <= f);
        if !leftover && (last > through || enough(freed)) {
            break;
        }
        if !leftover {
            let Some((conn, layout)) = open(&next.path)? else {
                break;
            };
            let (start_id, start_hash) = start(&conn, layout, &next.path)?;
            drop(conn);
            if start_id != last {
                return Err(StoreError::Corrupt {
                    path: next.path.clone(),
                    what: format!(
                        "it starts after entry {start_id}, but its name says after entry {last}: not pruning"
                    ),
                });
            }
            write_point(&dir.join(PRUNED), (last, start_hash))?;
        }
        let bytes = [
            seg.path.clone(),
            wal_of(&seg.path, "-wal"),
            wal_of(&seg.path, "-shm"),
        ]
        .iter()
        .map(|p| allocated(p))
        .sum::<u64>();
        remove(&seg.path)?;
        cert_tool::files::sync_dir(seg.path.parent().unwrap_or(&dir))?;
        freed += bytes;
        if !leftover {
            out.push(Pruned {
                first: seg.first,
                last,
                bytes,
                path: seg.path.clone(),
            });
        }
    }
    let _ = lock.unlock();
    Ok(out)
}

/// Removes a segment's file, its WAL and its shared-memory index (those first, so that no
/// reader pairs a WAL with another file).
fn remove(path: &Path) -> Result<()> {
    for path in [wal_of(path, "-wal"), wal_of(path, "-shm"), path.to_owned()] {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::io("remove", &path)(e));
            }
            _ => {}
        }
    }
    Ok(())
}

fn wal_of(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}{suffix}", path.display()))
}

/// The disk space a file takes (its allocated blocks, as `du` counts); 0 if it is gone.
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// Opens the live segment for writing, and says its layout: the newest, or a new one when there
/// is none, when the newest is the legacy log (sealed by its move), or when it is of rows and
/// `format` moves the log to batches.
pub(super) fn open_live(data_dir: &Path, format: Format) -> Result<(Segment, Connection, Point, Layout)> {
    let floor = pruned(data_dir)?;
    let segments = live_list(data_dir, floor)?;
    let (segment, layout) = match segments.last() {
        None => (
            create(data_dir, floor.unwrap_or(ORIGIN), Layout::Batches)?,
            Layout::Batches,
        ),
        Some(newest) => {
            let conn = store::open_existing(&newest.path)?.ok_or_else(|| StoreError::Corrupt {
                path: newest.path.clone(),
                what: "the segment disappeared".into(),
            })?;
            match layout(&conn, &newest.path)? {
                Some(Layout::Batches) => (newest.clone(), Layout::Batches),
                Some(Layout::Rows) if format == Format::Keep => (newest.clone(), Layout::Rows),
                Some(Layout::Rows) => {
                    // Sealed like a full one: its WAL folded in, and the next segment starts at
                    // its end. One without entries (made when the one before was sealed) gives
                    // way instead to the segment of batches that starts where it does.
                    let end = end(&conn, Layout::Rows, &newest.path)?;
                    let empty = end == start(&conn, Layout::Rows, &newest.path)?;
                    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                        .map_err(StoreError::sqlite(&newest.path, "checkpoint the sealed segment"))?;
                    drop(conn);
                    if empty {
                        remove(&newest.path)?;
                    }
                    (create(data_dir, end, Layout::Batches)?, Layout::Batches)
                }
                Some(Layout::Legacy) => {
                    // What an older version would make after it, unless the log may move.
                    let next = match format {
                        Format::Keep => Layout::Rows,
                        Format::Batches => Layout::Batches,
                    };
                    let end = end(&conn, Layout::Legacy, &newest.path)?;
                    drop(conn);
                    (create(data_dir, end, next)?, next)
                }
                None => {
                    return Err(StoreError::Corrupt {
                        path: newest.path.clone(),
                        what: "a segment without a schema".into(),
                    });
                }
            }
        }
    };
    let conn = store::open_file(data_dir, &segment.path)?;
    tune(&conn, &segment.path)?;
    let start = start(&conn, layout, &segment.path)?;
    Ok((segment, conn, start, layout))
}

/// The writer's settings: a WAL checkpointed often and cut back, so that it stays small; and a
/// page cache of at most [`CACHE_KIB`]. The writer only appends: it needs the right-most pages of
/// one B-tree and a commit's new ones (a 20 ms batch under full load is about 20 pages), and
/// SQLite's default of 2 MiB was filled by a few thousand entries and held until the writer next
/// went idle.
fn tune(conn: &Connection, path: &Path) -> Result<()> {
    conn.execute_batch(&format!(
        "PRAGMA wal_autocheckpoint = 256; PRAGMA journal_size_limit = {WAL_LIMIT}; \
         PRAGMA cache_size = -{CACHE_KIB};"
    ))
    .map_err(StoreError::sqlite(path, "set the WAL limits"))
}
