//! How the appliance opens every SQLite file it keeps: the local engine's (`journal.db`,
//! `cache.db`) and the gateway's (`gateway.db`, `audit.db`), one way for all.
//!
//! WAL, so the operator's CLI reads while the gateway writes; a busy timeout, so they take turns;
//! foreign keys enforced; the file created with mode 0600 (a journaled write is patient data, the
//! inventory holds upstream passwords), and a copy with looser permissions (a restored backup, a
//! loose umask) tightened once it proved to be a database; and a damaged file reported as such,
//! naming it, instead of as an obscure SQLite code.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// The mode of every database file: only the appliance's user may read it.
const MODE: u32 = 0o600;

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
    #[error("cannot restrict the permissions of {}: {source}", path.display())]
    Restrict {
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
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(MODE)
        .open(path)
        .map_err(|source| DbError::Create {
            path: path.to_owned(),
            source,
        })?;
    let conn = connect(path, durability)?;
    // Only once the file proved to be ours: a foreign file keeps its permissions.
    let restrict = |source| DbError::Restrict {
        path: path.to_owned(),
        source,
    };
    let mode = file.metadata().map_err(restrict)?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(MODE))
            .map_err(restrict)?;
    }
    Ok(conn)
}

/// Opens an existing database without creating anything: `None` when there is no file. For
/// commands that inspect (verify, export) and must not leave traces.
pub fn open_existing(path: &Path, durability: Durability) -> Result<Option<Connection>, DbError> {
    match std::fs::metadata(path) {
        Ok(_) => connect(path, durability).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DbError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Opens a file that exists and sets it up; the first statement that reads it tells a damaged
/// or foreign file.
fn connect(path: &Path, durability: Durability) -> Result<Connection, DbError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(DbError::sqlite(path, "open"))?;
    let damaged = |detail: String| DbError::Damaged {
        path: path.to_owned(),
        detail,
    };
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(DbError::sqlite(path, "set a busy timeout"))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
                damaged(e.to_string())
            }
            _ => DbError::Sqlite {
                path: path.to_owned(),
                what: "switch to WAL mode",
                source: e,
            },
        })?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(damaged(format!("journal mode is {mode:?}, expected \"wal\"")));
    }
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.execute_batch(&format!("PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON;"))
        .map_err(DbError::sqlite(path, "configure"))?;
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
