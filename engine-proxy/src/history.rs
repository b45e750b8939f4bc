//! The cloud's outages, remembered: what the status page's availability over 24 hours and 7 days
//! and its list of the last outages are made of.
//!
//! `history.db` in the data directory holds one row per outage (when the cloud was declared down,
//! when back, and why) and when the record began. It is fed from the health's change channel
//! ([`keep`]), off the request path: a request never touches it. An outage still open when the
//! gateway stopped is closed at the next start with that start's time, since nobody watched in
//! between: the history claims no availability it did not see.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::health::Health;
use crate::sqlite::{self, DbError, Durability};

/// The file in the data directory.
pub const FILE: &str = "history.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outages (
    id      INTEGER PRIMARY KEY,
    started INTEGER NOT NULL,
    ended   INTEGER,
    reason  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS began (at INTEGER NOT NULL);
";

/// One outage: unix seconds; `ended` is `None` while it lasts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outage {
    pub started: i64,
    pub ended: Option<i64>,
    pub reason: String,
}

/// The outage record.
pub struct History {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// When the record began (unix seconds): availability is measured from then at most.
    began: i64,
}

impl History {
    /// Opens (or creates) `history.db` in `data_dir`, closing an outage left open by a stop.
    pub fn open(data_dir: &Path) -> Result<Arc<History>, DbError> {
        let path = data_dir.join(FILE);
        let conn = sqlite::open(&path, Durability::Normal)?;
        sqlite::check(&conn, &path)?;
        let err = |what| DbError::sqlite(&path, what);
        conn.execute_batch(SCHEMA)
            .map_err(err("create the history's tables"))?;
        let now = sqlite::now();
        let began: Option<i64> = conn
            .query_row("SELECT min(at) FROM began", [], |r| r.get(0))
            .optional()
            .map_err(err("read the history"))?
            .flatten();
        let began = match began {
            Some(at) => at,
            None => {
                conn.execute("INSERT INTO began (at) VALUES (?1)", [now])
                    .map_err(err("start the history"))?;
                now
            }
        };
        conn.execute("UPDATE outages SET ended = ?1 WHERE ended IS NULL", [now])
            .map_err(err("close an outage left open"))?;
        Ok(Arc::new(History {
            path: path.clone(),
            conn: Mutex::new(conn),
            began,
        }))
    }

    /// The cloud was declared down (`up == false`) or back, at `at` (unix seconds).
    pub fn record(&self, up: bool, at: i64, reason: &str) -> Result<(), DbError> {
        let conn = self.lock();
        let open: Option<i64> = conn
            .query_row("SELECT id FROM outages WHERE ended IS NULL", [], |r| r.get(0))
            .optional()
            .map_err(DbError::sqlite(&self.path, "read the history"))?;
        match (up, open) {
            (false, None) => conn.execute(
                "INSERT INTO outages (started, reason) VALUES (?1, ?2)",
                params![at, reason],
            ),
            (true, Some(id)) => conn.execute("UPDATE outages SET ended = ?1 WHERE id = ?2", params![at, id]),
            _ => Ok(0),
        }
        .map_err(DbError::sqlite(&self.path, "record an outage"))?;
        Ok(())
    }

    /// The share of `window` before `now` that the cloud was up, between 0 and 1, counted from
    /// when the record began at the earliest; `None` if it began less than a minute ago.
    pub fn availability(&self, window: Duration, now: i64) -> Result<Option<f64>, DbError> {
        let from = (now - window.as_secs() as i64).max(self.began);
        if now - from < 60 {
            return Ok(None);
        }
        let down: i64 = self
            .lock()
            .query_row(
                "SELECT coalesce(sum(min(coalesce(ended, ?2), ?2) - max(started, ?1)), 0) \
                 FROM outages WHERE coalesce(ended, ?2) > ?1 AND started < ?2",
                params![from, now],
                |r| r.get(0),
            )
            .map_err(DbError::sqlite(&self.path, "read the history"))?;
        let span = (now - from) as f64;
        Ok(Some((1.0 - down.max(0) as f64 / span).clamp(0.0, 1.0)))
    }

    /// The last `n` outages, the latest first.
    pub fn recent(&self, n: usize) -> Result<Vec<Outage>, DbError> {
        let conn = self.lock();
        let err = || DbError::sqlite(&self.path, "read the history");
        let mut stmt = conn
            .prepare_cached("SELECT started, ended, reason FROM outages ORDER BY id DESC LIMIT ?1")
            .map_err(err())?;
        let rows = stmt
            .query_map([n as i64], |r| {
                Ok(Outage {
                    started: r.get(0)?,
                    ended: r.get(1)?,
                    reason: r.get(2)?,
                })
            })
            .map_err(err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Records every time the cloud goes down or comes back, until the health is dropped.
pub async fn keep(history: Arc<History>, health: Arc<Health>) {
    let mut changes = health.subscribe();
    changes.mark_unchanged();
    let mut up = true;
    while changes.changed().await.is_ok() {
        let change = changes.borrow_and_update().clone();
        if change.cloud_up == up {
            continue;
        }
        up = change.cloud_up;
        let history = history.clone();
        let at = sqlite::now();
        let written = tokio::task::spawn_blocking(move || history.record(up, at, &change.reason)).await;
        if let Ok(Err(e)) = written {
            tracing::warn!("the outage history: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_make_the_availability_and_an_open_one_is_closed_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::open(dir.path()).unwrap();
        let began = history.began;
        history.record(false, began + 100, "cloud down: timeout").unwrap();
        history.record(false, began + 150, "again").unwrap();
        history.record(true, began + 200, "back").unwrap();
        let a = history
            .availability(Duration::from_secs(86400), began + 1000)
            .unwrap()
            .unwrap();
        assert!((a - 0.9).abs() < 1e-9, "{a}");
        assert_eq!(
            history
                .availability(Duration::from_secs(86400), began + 10)
                .unwrap(),
            None
        );
        history
            .record(false, began + 1000, "cloud down: refused")
            .unwrap();
        let recent = history.recent(5).unwrap();
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].ended, None);
        assert_eq!(recent[1].reason, "cloud down: timeout");
        drop(history);
        let again = History::open(dir.path()).unwrap();
        assert_eq!(again.began, began);
        assert!(again.recent(1).unwrap()[0].ended.is_some(), "closed at the start");
    }
}
