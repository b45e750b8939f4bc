//! How the local engine opens its SQLite files (`journal.db`, `cache.db`).
//!
//! WAL, so the operator's CLI reads while the gateway writes; a busy timeout, so they take turns;
//! the file created with mode 0600 (a journaled write is patient data); and a damaged file
//! reported as such, naming it, instead of as an obscure SQLite code.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

/// A local database could not be opened or used; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{}: not a usable SQLite database ({detail})", path.display())]
    Damaged { path: PathBuf, detail: String },
    #[error("{}: cannot {what}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl DbError {
    pub fn sqlite<'p>(path: &'p Path, what: &'static str) -> impl FnOnce(rusqlite::Error) -> DbError + 'p {
        move |source| DbError::Sqlite {
            path: path.to_owned(),
            what,
            source,
        }
    }
}

/// How much a commit promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: a committed transaction survives power loss.
    Full,
    /// `synchronous=NORMAL`: survives a crash of the process; may lose the last commits on power
    /// loss. For what can be fetched again (the cache).
    Normal,
}

/// Opens (creating with mode 0600 if missing) and checks that the file is an SQLite database.
pub fn open(path: &Path, durability: Durability) -> Result<Connection, DbError> {
    if !path.exists() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|source| DbError::Create {
                path: path.to_owned(),
                source,
            })?;
    }
    let conn = Connection::open(path).map_err(DbError::sqlite(path, "open"))?;
    let damaged = |e: rusqlite::Error| DbError::Damaged {
        path: path.to_owned(),
        detail: e.to_string(),
    };
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(DbError::sqlite(path, "set a busy timeout"))?;
    // The first statement that reads the file: a file that is not a database fails here.
    conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
        .map_err(damaged)?;
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.execute_batch(&format!("PRAGMA synchronous={sync};"))
        .map_err(DbError::sqlite(path, "set synchronous"))?;
    Ok(conn)
}

/// Runs SQLite's own consistency check: `Ok` or the first problem it reports.
pub fn check(conn: &Connection, path: &Path) -> Result<(), DbError> {
    let verdict: String = conn
        .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
        .map_err(|e| DbError::Damaged {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if verdict == "ok" {
        Ok(())
    } else {
        Err(DbError::Damaged {
            path: path.to_owned(),
            detail: verdict,
        })
    }
}

/// Seconds since the Unix epoch, the time stamp the local engine stores.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
