//! Reading the log back without writing anything: `kakehashi audit verify` recomputes the chain,
//! `kakehashi audit export` prints it. Both open an existing log only and stream its entries in
//! id order.

use std::path::Path;

use rusqlite::{Connection, params};
use time::OffsetDateTime;

use super::chain::{chain_hash, head_problem, read_head, timestamp};
use super::entry::{COLUMNS, Record, SCHEMA_VERSION};
use super::{AUDIT_DB, AUDIT_HEAD};
use crate::store::{self, Result, StoreError};

/// The outcome of [`verify`]: how much was checked and the first break, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries in the log.
    pub entries: u64,
    /// The last entry's id (0 for an empty log) and hash (hex; zeros for an empty log).
    pub last_id: u64,
    pub last_hash: String,
    /// Entries after the one the head file records: committed just before a crash, before the
    /// head file caught up. Their chain is checked; only their removal could go unnoticed.
    pub unattested: u64,
    /// The first thing found wrong; `None` if the log is intact.
    pub broken: Option<Broken>,
}

/// Where the chain breaks and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    /// The entry concerned, when one is (a missing head file concerns none).
    pub id: Option<u64>,
    /// What is wrong, in words.
    pub what: String,
}

impl VerifyReport {
    /// Whether the whole chain and its head check out.
    pub fn is_intact(&self) -> bool {
        self.broken.is_none()
    }
}

/// Recomputes the whole chain of `DATA_DIR/audit.db` and compares its end with `audit.head`.
///
/// A missing log (no `audit.db`, no `audit.head`) is an intact empty one; a missing data
/// directory is an error. Nothing is written.
pub fn verify(data_dir: &Path) -> Result<VerifyReport> {
    std::fs::metadata(data_dir).map_err(StoreError::io("read the data directory", data_dir))?;
    let db = data_dir.join(AUDIT_DB);
    let head = read_head(&data_dir.join(AUDIT_HEAD))?;
    let mut report = VerifyReport {
        entries: 0,
        last_id: 0,
        last_hash: hex::encode([0u8; 32]),
        unattested: 0,
        broken: None,
    };
    let Some(conn) = open_log(&db)? else {
        if let Some((id, _)) = head.filter(|(id, _)| *id > 0) {
            report.broken = Some(Broken {
                id: None,
                what: format!("{AUDIT_DB} is missing but {AUDIT_HEAD} records {id} entries"),
            });
        }
        return Ok(report);
    };
    let mut prev = [0u8; 32];
    let broken = each_record(&conn, &db, None, |r| {
        let id = report.last_id + 1;
        let fault = if r.id != id {
            Some(format!(
                "entry {id} is missing: the log goes from entry {} to entry {} (entries were deleted)",
                report.last_id, r.id
            ))
        } else if r.prev_hash != hex::encode(prev) {
            Some(if id == 1 {
                "entry 1: its prev_hash is not zero: the log's beginning was removed or replaced".into()
            } else {
                format!(
                    "entry {id}: its prev_hash is not the hash of entry {}: the entry before it was \
                     removed or replaced",
                    report.last_id
                )
            })
        } else if hex::encode(chain_hash(&prev, r)) != r.hash {
            Some(format!(
                "entry {id}: its contents do not match its hash: it was changed after it was written"
            ))
        } else {
            None
        };
        if let Some(what) = fault {
            return Some(Broken { id: Some(id), what });
        }
        // The stored hash equals the recomputed one, so it is 64 valid hex digits.
        if hex::decode_to_slice(&r.hash, &mut prev).is_err() {
            return Some(Broken {
                id: Some(id),
                what: "its hash is not 32 bytes".into(),
            });
        }
        report.entries += 1;
        report.last_id = r.id;
        report.last_hash.clone_from(&r.hash);
        None
    })?;
    report.broken = match broken {
        Some(b) => Some(b),
        None => {
            head_problem(&conn, &db, head.as_ref(), report.last_id)?.map(|what| Broken { id: None, what })
        }
    };
    report.unattested = report.last_id - head.map_or(0, |h| h.0.min(report.last_id));
    Ok(report)
}

/// Calls `each` for every entry at or after `since` (a time as [`parse_since`] returns it), in
/// id order; returns how many there were. A missing log has none.
pub fn export(
    data_dir: &Path,
    since: Option<&str>,
    mut each: impl FnMut(&Record) -> Result<()>,
) -> Result<u64> {
    std::fs::metadata(data_dir).map_err(StoreError::io("read the data directory", data_dir))?;
    let db = data_dir.join(AUDIT_DB);
    let Some(conn) = open_log(&db)? else {
        return Ok(0);
    };
    let mut count = 0;
    let mut failed = None;
    each_record(&conn, &db, since, |r| match each(r) {
        Ok(()) => {
            count += 1;
            None
        }
        Err(e) => {
            failed = Some(e);
            Some(())
        }
    })?;
    failed.map_or(Ok(count), Err)
}

/// What the newest entries of the log say about terminals: the latest refusals, and when each
/// terminal was last seen. Only the last `window` entries are read, so the answer costs the same
/// on a log of a hundred entries and of a million (the status page asks on every refresh).
#[derive(Debug, Default)]
pub struct Recent {
    /// The latest refusals, newest first: (time, terminal, user, request, reason).
    pub refusals: Vec<Refusal>,
    /// Each terminal's latest entry in the window: (terminal, time).
    pub last_seen: Vec<(String, String)>,
}

/// One refusal, as the status page lists it (and its JSON carries it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refusal {
    pub time: String,
    pub terminal: Option<String>,
    pub user: Option<String>,
    /// `METHOD path`, when the refusal was of a request.
    pub request: Option<String>,
    pub reason: String,
}

/// The last `window` entries' [`Recent`], with at most `refusals` refusals. A missing log has
/// nothing recent.
pub fn recent(data_dir: &Path, window: u64, refusals: usize) -> Result<Recent> {
    let db = data_dir.join(AUDIT_DB);
    let Some(conn) = open_log(&db)? else {
        return Ok(Recent::default());
    };
    let failed = || StoreError::sqlite(&db, "read the newest audit entries");
    let first: i64 = conn
        .query_row("SELECT IFNULL(MAX(id), 0) FROM entries", [], |r| r.get(0))
        .map_err(failed())?;
    let first = first.saturating_sub(window.min(i64::MAX as u64) as i64);
    let refused = conn
        .prepare(
            "SELECT time, terminal, user, method, path, reason FROM entries \
             WHERE id > ?1 AND decision = 'deny' ORDER BY id DESC LIMIT ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![first, refusals as i64], |r| {
                let method: Option<String> = r.get(3)?;
                let path: Option<String> = r.get(4)?;
                Ok(Refusal {
                    time: r.get(0)?,
                    terminal: r.get(1)?,
                    user: r.get(2)?,
                    request: method.map(|m| format!("{m} {}", path.unwrap_or_default())),
                    reason: r.get(5)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(failed())?;
    let last_seen = conn
        .prepare(
            "SELECT terminal, MAX(time) FROM entries WHERE id > ?1 AND terminal IS NOT NULL \
             GROUP BY terminal",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![first], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(failed())?;
    Ok(Recent {
        refusals: refused,
        last_seen,
    })
}

/// The hash (hex) of entry `id` in `DATA_DIR/audit.db`, if the log has it: a backup's audit
/// head checked against the live chain.
pub fn hash_of(data_dir: &Path, id: u64) -> Result<Option<String>> {
    let db = data_dir.join(AUDIT_DB);
    let Some(conn) = open_log(&db)? else {
        return Ok(None);
    };
    conn.query_row(
        "SELECT hash FROM entries WHERE id = ?1",
        params![id as i64],
        |r| r.get::<_, Vec<u8>>(0).map(hex::encode),
    )
    .map(Some)
    .or_else(|e| match e {
        rusqlite::Error::QueryReturnedNoRows => Ok(None),
        e => Err(e),
    })
    .map_err(StoreError::sqlite(&db, "read an audit entry"))
}

/// Reads a `--since` value: an RFC 3339 time (any offset) or a date `YYYY-MM-DD` (midnight UTC),
/// as the log's own time text, which compares in time order.
pub fn parse_since(text: &str) -> Result<String> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(timestamp(t));
    }
    let date = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &date)
        .map(|d| timestamp(d.midnight().assume_utc()))
        .map_err(|_| {
            StoreError::Invalid(format!(
                "--since {text:?}: expected an RFC 3339 time such as 2025-04-01T09:00:00+09:00, or a \
                 date such as 2025-04-01 (midnight UTC)"
            ))
        })
}

/// Opens an existing log without creating anything; `None` if there is none or it has no schema.
fn open_log(db: &Path) -> Result<Option<Connection>> {
    let Some(conn) = store::open_existing(db)? else {
        return Ok(None);
    };
    match store::user_version(&conn, db)? {
        0 => Ok(None),
        SCHEMA_VERSION => Ok(Some(conn)),
        found => Err(StoreError::NewerSchema {
            path: db.into(),
            found,
            known: SCHEMA_VERSION,
        }),
    }
}

/// Streams entries in id order to `each` until it returns `Some` (a stop with a value).
fn each_record<T>(
    conn: &Connection,
    db: &Path,
    since: Option<&str>,
    mut each: impl FnMut(&Record) -> Option<T>,
) -> Result<Option<T>> {
    let fail = StoreError::sqlite;
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {COLUMNS} FROM entries WHERE ?1 IS NULL OR time >= ?1 ORDER BY id"
        ))
        .map_err(fail(db, "read the entries"))?;
    let mut rows = stmt.query(params![since]).map_err(fail(db, "read the entries"))?;
    while let Some(row) = rows.next().map_err(fail(db, "read the entries"))? {
        let record = Record::from_row(row).map_err(|e| StoreError::Corrupt {
            path: db.into(),
            what: format!("an entry does not have the expected columns: {e}"),
        })?;
        if let Some(stop) = each(&record) {
            return Ok(Some(stop));
        }
    }
    Ok(None)
}
