//! The read cache: what the cloud answered to reads, to answer them again while it cannot.
//!
//! `cache.db` in the data directory (SQLite, WAL). Entries are keyed by the call (method, path,
//! query, body), carry the time the cloud gave them and a lifetime from the rule table, and are
//! bounded in total size: the oldest go first. Storing is off the request path (a writer thread
//! takes a channel); looking up happens only when the cloud cannot answer.
//!
//! The cache is a copy of what the cloud holds, so it is allowed to be lost: a damaged file at
//! start is moved aside and the cache starts empty, and commits do not wait for power-loss
//! durability.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, mpsc};
use std::time::Duration;

use hyper::body::Bytes;
use rusqlite::{Connection, OptionalExtension, params};

use crate::sqlite::{self, DbError, Durability};

/// The cache's file name in the data directory.
pub const FILE: &str = "cache.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    key          BLOB PRIMARY KEY NOT NULL,
    path         TEXT NOT NULL,
    status       INTEGER NOT NULL,
    content_type TEXT,
    body         BLOB NOT NULL,
    stored       INTEGER NOT NULL,
    expires      INTEGER NOT NULL
) STRICT;
";

/// The most the cache's WAL keeps after a checkpoint.
const WAL_LIMIT: i64 = 512 * 1024;

/// A cached answer.
#[derive(Debug, Clone)]
pub struct Hit {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
    /// Seconds since the cloud gave this answer.
    pub age: u64,
}

/// An answer to keep, borrowed: most are the same answer again and copied nowhere.
#[derive(Clone, Copy)]
pub struct Fill<'a> {
    /// When the answer came: the caller has read the clock for it already.
    pub at: std::time::Instant,
    pub key: [u8; 32],
    pub path: &'a str,
    pub status: u16,
    pub content_type: Option<&'a str>,
    pub body: &'a Bytes,
    pub ttl: Duration,
}

/// An answer on its way to the writer thread.
struct Kept {
    key: [u8; 32],
    path: String,
    status: u16,
    content_type: Option<String>,
    body: Bytes,
    ttl: Duration,
}

/// A fill of the same answer within this time is skipped: under load a hot read would otherwise
/// rewrite the same row hundreds of times a second. The cost is an `Age` up to this much older.
const REFILL_AFTER: Duration = Duration::from_secs(1);
/// Answers remembered for that check; the memory is dropped whole when it grows past this.
const RECENT_MAX: usize = 4096;

/// The read cache.
pub struct Cache {
    path: PathBuf,
    fills: mpsc::Sender<Kept>,
    /// Recently filled keys, with when and a hash of the answer.
    recent: Mutex<std::collections::HashMap<[u8; 32], (std::time::Instant, u64)>>,
    reader: Mutex<Connection>,
    /// Bytes of bodies stored, kept under the configured bound.
    pub bytes: std::sync::Arc<AtomicU64>,
}

impl Cache {
    /// Opens `cache.db`, or starts it afresh with a warning (the returned note) when the file
    /// is damaged.
    pub fn open(data_dir: &Path, max_bytes: u64) -> Result<(Cache, Option<String>), DbError> {
        let path = data_dir.join(FILE);
        let (writer, note) = match open_schema(&path) {
            Ok(conn) => (conn, None),
            Err(DbError::Damaged { detail, .. }) => {
                let aside = path.with_extension("db.damaged");
                let _ = std::fs::remove_file(path.with_extension("db-wal"));
                let _ = std::fs::remove_file(path.with_extension("db-shm"));
                std::fs::rename(&path, &aside).map_err(|source| DbError::Create {
                    path: aside.clone(),
                    source,
                })?;
                let note = format!(
                    "{}: damaged ({detail}); moved aside to {} and started an empty cache",
                    path.display(),
                    aside.display()
                );
                (open_schema(&path)?, Some(note))
            }
            Err(e) => return Err(e),
        };
        let stored: i64 = writer
            .query_row("SELECT coalesce(sum(length(body)), 0) FROM entries", [], |r| {
                r.get(0)
            })
            .map_err(DbError::sqlite(&path, "measure the cache"))?;
        let bytes = std::sync::Arc::new(AtomicU64::new(stored as u64));
        let reader = sqlite::open(&path, Durability::Normal)?;
        let (tx, rx) = mpsc::channel();
        let counter = bytes.clone();
        let thread_path = path.clone();
        std::thread::Builder::new()
            .name("cache".into())
            .spawn(move || fill_loop(writer, &thread_path, rx, &counter, max_bytes))
            .map_err(|source| DbError::Create {
                path: path.clone(),
                source,
            })?;
        let cache = Cache {
            path,
            fills: tx,
            recent: Mutex::new(std::collections::HashMap::new()),
            reader: Mutex::new(reader),
            bytes,
        };
        Ok((cache, note))
    }

    /// Keeps an answer, in the background, unless the same answer was kept a moment ago.
    pub fn fill(&self, fill: Fill<'_>) {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let digest = BuildHasherDefault::<DefaultHasher>::default().hash_one((fill.status, &fill.body[..]));
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            let now = fill.at;
            if let Some((at, seen)) = recent.get(&fill.key)
                && *seen == digest
                && now.saturating_duration_since(*at) < REFILL_AFTER
            {
                return;
            }
            if recent.len() >= RECENT_MAX {
                recent.clear();
            }
            recent.insert(fill.key, (now, digest));
        }
        let _ = self.fills.send(Kept {
            key: fill.key,
            path: fill.path.to_owned(),
            status: fill.status,
            content_type: fill.content_type.map(str::to_owned),
            body: fill.body.clone(),
            ttl: fill.ttl,
        });
    }

    /// The answer for `key` if it is still within its lifetime. A failing lookup is a miss: the
    /// cache never turns an answer into an error. So is a row whose store time cannot be (the
    /// file changed under the gateway): its age would be nonsense.
    pub fn get(&self, key: &[u8; 32]) -> Option<Hit> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let now = sqlite::now();
        let found = conn
            .prepare_cached(
                "SELECT status, content_type, body, stored FROM entries WHERE key = ?1 AND expires > ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![&key[..], now], |r| {
                    let Some(age) = now.checked_sub(r.get::<_, i64>(3)?) else {
                        return Ok(None);
                    };
                    Ok(Some(Hit {
                        status: r.get::<_, i64>(0)? as u16,
                        content_type: r.get(1)?,
                        body: Bytes::from(r.get::<_, Vec<u8>>(2)?),
                        age: age.max(0) as u64,
                    }))
                })
                .optional()
            });
        match found {
            Ok(hit) => hit.flatten(),
            Err(e) => {
                tracing::warn!("{}: cache lookup failed: {e}", self.path.display());
                None
            }
        }
    }
}

/// The key of a call: method, path and query, body.
pub fn key(method: &str, path_and_query: &str, body: &[u8]) -> [u8; 32] {
    let mut h = crate::digest::Sha256::default();
    for part in [method.as_bytes(), path_and_query.as_bytes(), body] {
        h.update_framed(part);
    }
    h.finish()
}

fn open_schema(path: &Path) -> Result<Connection, DbError> {
    let conn = sqlite::open(path, Durability::Normal)?;
    // The WAL checkpointed often and cut back: on a small disk budget it is not free (by
    // default it grows to 4 MiB and stays there).
    conn.execute_batch(&format!(
        "PRAGMA wal_autocheckpoint = 128; PRAGMA journal_size_limit = {WAL_LIMIT};"
    ))
    .map_err(DbError::sqlite(path, "set the WAL limits"))?;
    conn.execute_batch(SCHEMA).map_err(|e| DbError::Damaged {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    Ok(conn)
}

/// The writer thread: stores what arrives, several per transaction, and evicts the oldest
/// entries past `max_bytes`.
fn fill_loop(
    mut conn: Connection,
    path: &Path,
    fills: mpsc::Receiver<Kept>,
    bytes: &AtomicU64,
    max_bytes: u64,
) {
    while let Ok(first) = fills.recv() {
        let mut group = vec![first];
        while group.len() < 256 {
            match fills.try_recv() {
                Ok(f) => group.push(f),
                Err(_) => break,
            }
        }
        if let Err(e) = store(&mut conn, &group, bytes, max_bytes) {
            tracing::warn!("{}: cannot store cached answers: {e}", path.display());
            if let Ok(total) = conn.query_row("SELECT coalesce(sum(length(body)), 0) FROM entries", [], |r| {
                r.get::<_, i64>(0)
            }) {
                bytes.store(total as u64, Relaxed);
            }
        }
    }
}

fn store(conn: &mut Connection, group: &[Kept], bytes: &AtomicU64, max_bytes: u64) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    let now = sqlite::now();
    let mut total = bytes.load(Relaxed);
    for f in group {
        let old: Option<i64> = tx
            .prepare_cached("SELECT length(body) FROM entries WHERE key = ?1")?
            .query_row([&f.key[..]], |r| r.get(0))
            .optional()?;
        tx.prepare_cached(
            "INSERT OR REPLACE INTO entries (key, path, status, content_type, body, stored, expires) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            &f.key[..],
            f.path,
            f.status,
            f.content_type,
            &f.body[..],
            now,
            now.saturating_add(f.ttl.as_secs() as i64)
        ])?;
        total = total.saturating_sub(old.unwrap_or(0) as u64) + f.body.len() as u64;
    }
    while total > max_bytes {
        // The oldest first (a replaced entry gets a new rowid), a batch at a time.
        let freed: i64 = tx.query_row(
            "SELECT coalesce(sum(length(body)), 0) FROM (SELECT body FROM entries ORDER BY rowid LIMIT 64)",
            [],
            |r| r.get(0),
        )?;
        if freed == 0 {
            break;
        }
        tx.execute(
            "DELETE FROM entries WHERE key IN (SELECT key FROM entries ORDER BY rowid LIMIT 64)",
            [],
        )?;
        total = total.saturating_sub(freed as u64);
    }
    tx.commit()?;
    bytes.store(total, Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(n: u8) -> [u8; 32] {
        key("POST", &format!("/api01rv2/patientgetv2?id={n}"), b"")
    }

    fn fill(cache: &Cache, n: u8, len: usize) {
        cache.fill(Fill {
            at: std::time::Instant::now(),
            key: key_of(n),
            path: "/api01rv2/patientgetv2",
            status: 200,
            content_type: Some("application/json"),
            body: &Bytes::from(vec![n; len]),
            ttl: Duration::from_secs(60),
        });
    }

    fn settle() {
        std::thread::sleep(Duration::from_millis(200));
    }

    #[test]
    fn answers_are_kept_and_the_oldest_go_past_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, note) = Cache::open(dir.path(), 64 * 1024).unwrap();
        assert!(note.is_none());
        for n in 0..200u8 {
            fill(&cache, n, 1024);
        }
        settle();
        assert!(cache.bytes.load(Relaxed) <= 64 * 1024);
        assert!(cache.get(&key_of(0)).is_none(), "the oldest went first");
        let hit = cache.get(&key_of(199)).expect("the newest stays");
        assert_eq!((hit.status, hit.body.len()), (200, 1024));
    }

    /// Found by the `records` fuzz target: a stored time near `i64::MIN` overflowed the age
    /// (a panic with overflow checks, a wrapped age without).
    #[test]
    fn a_row_stored_at_an_impossible_time_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, _) = Cache::open(dir.path(), 1 << 20).unwrap();
        fill(&cache, 1, 10);
        settle();
        let conn = rusqlite::Connection::open(dir.path().join(FILE)).unwrap();
        conn.execute("UPDATE entries SET stored = ?1", [i64::MIN])
            .unwrap();
        assert!(cache.get(&key_of(1)).is_none());
        conn.execute("UPDATE entries SET stored = 0", []).unwrap();
        assert!(
            cache.get(&key_of(1)).is_some_and(|h| h.age > 0),
            "an old one is old"
        );
    }

    #[test]
    fn a_damaged_cache_is_moved_aside_and_started_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE),
            b"definitely not an SQLite database file!!!",
        )
        .unwrap();
        let (cache, note) = Cache::open(dir.path(), 1 << 20).unwrap();
        let note = note.expect("a warning");
        assert!(note.contains("cache.db") && note.contains("damaged"), "{note}");
        assert!(dir.path().join("cache.db.damaged").exists());
        fill(&cache, 1, 10);
        settle();
        assert!(cache.get(&key_of(1)).is_some());
    }
}
