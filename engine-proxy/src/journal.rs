//! The durable write journal: writes accepted while the cloud could not take them.
//!
//! `journal.db` in the data directory (SQLite, WAL, `synchronous=FULL`). [`Journal::append`]
//! returns only once the entry's transaction is committed and on disk; a write is acknowledged to
//! the terminal after that and never before, so an acknowledged write survives `kill -9` and power
//! loss, and a failed commit (full disk, failing fsync) is a refused write, not a lost one.
//!
//! One writer thread owns the connection and commits in groups: it takes every append queued
//! while the previous commit was syncing and commits them together, one fsync for the lot. No
//! timer: a lone write is committed at once, and concurrent writers share the sync.
//!
//! Entries are `pending` until the replayer ([`crate::replay`]) hands them to the cloud, then
//! `delivered`. One the cloud rejects is `quarantined` until an operator retries or discards it
//! (`kakehashi journal`). Rows are never deleted: the journal is also the record of what happened.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, mpsc};

use hyper::body::Bytes;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{Notify, oneshot};

use crate::sqlite::{self, DbError, Durability};

/// The journal's file name in the data directory.
pub const FILE: &str = "journal.db";

/// How many appends one commit takes at most.
const MAX_GROUP: usize = 512;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS entries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    created         INTEGER NOT NULL,
    terminal        TEXT,
    user            TEXT,
    method          TEXT NOT NULL,
    path            TEXT NOT NULL,
    content_type    TEXT,
    body            BLOB NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'quarantined', 'discarded')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    status          INTEGER,
    api_result      TEXT,
    answer          BLOB,
    changed         INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS entries_by_state ON entries (state, id);
";

/// A write to keep until the cloud takes it.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub terminal: Option<String>,
    pub user: Option<String>,
    pub method: String,
    /// Path and query as the terminal sent them.
    pub path: String,
    pub content_type: Option<String>,
    pub body: Bytes,
    /// Sent with every attempt, so the cloud applies the write once however often it is sent.
    pub idempotency_key: String,
}

/// Where an entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Delivered,
    Quarantined,
    Discarded,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Delivered => "delivered",
            State::Quarantined => "quarantined",
            State::Discarded => "discarded",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "delivered" => State::Delivered,
            "quarantined" => State::Quarantined,
            "discarded" => State::Discarded,
            _ => State::Pending,
        }
    }
}

/// One stored entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    pub id: u64,
    /// Unix seconds.
    pub created: i64,
    pub terminal: Option<String>,
    pub user: Option<String>,
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    #[serde(skip)]
    pub body: Bytes,
    pub idempotency_key: String,
    pub state: State,
    pub attempts: u64,
    pub last_error: Option<String>,
    /// The cloud's HTTP status and `Api_Result` for the last answer it gave.
    pub status: Option<u16>,
    pub api_result: Option<String>,
    #[serde(skip)]
    pub answer: Option<Bytes>,
    /// Unix seconds of the last change.
    pub changed: i64,
}

/// What became of one attempt to hand an entry back.
#[derive(Debug, Clone)]
pub enum Settlement {
    /// The cloud took it.
    Delivered {
        status: u16,
        api_result: Option<String>,
        answer: Bytes,
    },
    /// The cloud refused it for good (4xx, or a non-zero `Api_Result`).
    Quarantined {
        status: Option<u16>,
        api_result: Option<String>,
        answer: Bytes,
        reason: String,
    },
    /// It did not get through; it stays pending and is tried again.
    Retry { error: String },
}

/// Why a journal operation failed.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{}: the journal writer has stopped", .0.display())]
    Stopped(PathBuf),
    #[error("no journal entry #{0}")]
    NoEntry(u64),
    #[error("journal entry #{id} is {state}, not {expected}")]
    WrongState {
        id: u64,
        state: &'static str,
        expected: &'static str,
    },
}

type Reply = oneshot::Sender<Result<Done, String>>;

/// A finished job: the entry's id, and whether an append stored a new entry (`false`: the key
/// was journaled before, and this is that entry).
struct Done {
    id: u64,
    new: bool,
}

enum Job {
    Append(NewEntry, Reply),
    Settle(u64, Settlement, Reply),
}

/// The gateway's handle on the journal: appends and settlements go to the writer thread, reads
/// use their own connection.
pub struct Journal {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
    reader: Mutex<Connection>,
    pending: AtomicU64,
    /// Woken by every append: the replayer has work.
    pub appended: Notify,
}

impl Journal {
    /// Opens `journal.db` in `data_dir`, checks it, and starts the writer thread. A damaged file
    /// is an error naming it: the journal holds acknowledged writes and is never discarded or
    /// rebuilt behind the operator's back.
    pub fn open(data_dir: &Path) -> Result<Arc<Journal>, JournalError> {
        let path = data_dir.join(FILE);
        let writer = open_checked(&path)?;
        let reader = sqlite::open(&path, Durability::Full)?;
        let (tx, rx) = mpsc::channel();
        let journal = Arc::new(Journal {
            pending: AtomicU64::new(count_pending(&reader, &path)?),
            path: path.clone(),
            jobs: tx,
            reader: Mutex::new(reader),
            appended: Notify::new(),
        });
        std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || write_loop(writer, &path, rx))
            .map_err(|e| DbError::Create {
                path: journal.path.clone(),
                source: e,
            })?;
        Ok(journal)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores a write durably; its id once it is on disk. A key journaled before (a terminal
    /// retrying a write it got no answer to) is not stored twice: the first entry's id comes back.
    pub async fn append(&self, entry: NewEntry) -> Result<u64, String> {
        let done = self.send(|reply| Job::Append(entry, reply)).await?;
        if done.new {
            self.pending.fetch_add(1, Relaxed);
            self.appended.notify_one();
        }
        Ok(done.id)
    }

    /// Records the outcome of handing entry `id` back.
    pub async fn settle(&self, id: u64, settlement: Settlement) -> Result<(), String> {
        let leaves = !matches!(settlement, Settlement::Retry { .. });
        self.send(|reply| Job::Settle(id, settlement, reply)).await?;
        if leaves {
            let _ = self
                .pending
                .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
        }
        Ok(())
    }

    async fn send(&self, job: impl FnOnce(Reply) -> Job) -> Result<Done, String> {
        let (reply, answer) = oneshot::channel();
        let stopped = || format!("{}: the journal writer has stopped", self.path.display());
        self.jobs.send(job(reply)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Entries not yet handed back, as last counted.
    pub fn pending(&self) -> u64 {
        self.pending.load(Relaxed)
    }

    /// Counts again from the file: an operator's `journal retry` adds pending entries from
    /// another process.
    pub fn recount(&self) -> Result<u64, JournalError> {
        let n = count_pending(&self.reader(), &self.path)?;
        self.pending.store(n, Relaxed);
        Ok(n)
    }

    /// Entries the cloud refused, waiting for an operator (`kakehashi journal`), counted now.
    pub fn quarantined(&self) -> Result<u64, JournalError> {
        self.reader()
            .query_row(
                "SELECT count(*) FROM entries WHERE state = 'quarantined'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| DbError::sqlite(&self.path, "count quarantined entries")(e).into())
    }

    /// The oldest pending entry: the next to hand back.
    pub fn oldest_pending(&self) -> Result<Option<Entry>, JournalError> {
        let conn = self.reader();
        let mut stmt = conn
            .prepare_cached(&format!("{SELECT} WHERE state = 'pending' ORDER BY id LIMIT 1"))
            .map_err(DbError::sqlite(&self.path, "read the journal"))?;
        Ok(stmt
            .query_row([], entry_from_row)
            .optional()
            .map_err(DbError::sqlite(&self.path, "read the journal"))?)
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Opens the journal and creates its table, refusing a damaged file.
fn open_checked(path: &Path) -> Result<Connection, DbError> {
    let conn = sqlite::open(path, Durability::Full)?;
    sqlite::check(&conn, path)?;
    conn.execute_batch(SCHEMA)
        .map_err(DbError::sqlite(path, "create the journal's table"))?;
    Ok(conn)
}

fn count_pending(conn: &Connection, path: &Path) -> Result<u64, DbError> {
    conn.query_row("SELECT count(*) FROM entries WHERE state = 'pending'", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n as u64)
    .map_err(DbError::sqlite(path, "count pending entries"))
}

const SELECT: &str = "SELECT id, created, terminal, user, method, path, content_type, body, \
    idempotency_key, state, attempts, last_error, status, api_result, answer, changed FROM entries";

fn entry_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        id: r.get::<_, i64>(0)? as u64,
        created: r.get(1)?,
        terminal: r.get(2)?,
        user: r.get(3)?,
        method: r.get(4)?,
        path: r.get(5)?,
        content_type: r.get(6)?,
        body: Bytes::from(r.get::<_, Vec<u8>>(7)?),
        idempotency_key: r.get(8)?,
        state: State::parse(&r.get::<_, String>(9)?),
        attempts: r.get::<_, i64>(10)? as u64,
        last_error: r.get(11)?,
        status: r.get::<_, Option<i64>>(12)?.map(|s| s as u16),
        api_result: r.get(13)?,
        answer: r.get::<_, Option<Vec<u8>>>(14)?.map(Bytes::from),
        changed: r.get(15)?,
    })
}

/// The writer thread: group commits until every handle is gone.
fn write_loop(mut conn: Connection, path: &Path, jobs: mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        match commit(&mut conn, &group) {
            Ok(done) => {
                for (job, done) in group.into_iter().zip(done) {
                    let (Job::Append(_, reply) | Job::Settle(_, _, reply)) = job;
                    let _ = reply.send(Ok(done));
                }
            }
            Err(e) => {
                let why = format!("{}: cannot store: {e}", path.display());
                for job in group {
                    let (Job::Append(_, reply) | Job::Settle(_, _, reply)) = job;
                    let _ = reply.send(Err(why.clone()));
                }
            }
        }
    }
}

/// One transaction for the whole group: all of it is on disk, or none of it. Any failure fails
/// the group (after a full disk SQLite may have rolled the transaction back already, so nothing
/// after the failure could be trusted to be part of it).
///
/// Only appends wait for the disk. A group of settlements alone is committed without its own
/// sync (`synchronous=NORMAL`; the next append's sync carries it to disk): a settlement lost to
/// power loss leaves the entry pending, and sending it again is harmless, because its idempotency
/// key makes the cloud answer it as the first time. That halves the syncs of a replay.
fn commit(conn: &mut Connection, group: &[Job]) -> rusqlite::Result<Vec<Done>> {
    let appends = group.iter().any(|job| matches!(job, Job::Append(..)));
    conn.pragma_update(None, "synchronous", if appends { "FULL" } else { "NORMAL" })?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let now = sqlite::now();
    let mut out = Vec::with_capacity(group.len());
    for job in group {
        out.push(match job {
            Job::Append(e, _) => append(&tx, e, now)?,
            Job::Settle(id, s, _) => {
                settle(&tx, *id, s, now)?;
                Done { id: *id, new: false }
            }
        });
    }
    tx.commit()?;
    Ok(out)
}

fn append(tx: &rusqlite::Transaction<'_>, e: &NewEntry, now: i64) -> rusqlite::Result<Done> {
    let known: Option<i64> = tx
        .prepare_cached("SELECT id FROM entries WHERE idempotency_key = ?1")?
        .query_row([&e.idempotency_key], |r| r.get(0))
        .optional()?;
    if let Some(id) = known {
        return Ok(Done {
            id: id as u64,
            new: false,
        });
    }
    tx.prepare_cached(
        "INSERT INTO entries (created, terminal, user, method, path, content_type, body, \
         idempotency_key, state, changed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?1)",
    )?
    .execute(params![
        now,
        e.terminal,
        e.user,
        e.method,
        e.path,
        e.content_type,
        &e.body[..],
        e.idempotency_key
    ])?;
    Ok(Done {
        id: tx.last_insert_rowid() as u64,
        new: true,
    })
}

fn settle(tx: &rusqlite::Transaction<'_>, id: u64, s: &Settlement, now: i64) -> rusqlite::Result<()> {
    let id = id as i64;
    match s {
        Settlement::Delivered {
            status,
            api_result,
            answer,
        } => tx.execute(
            "UPDATE entries SET state = 'delivered', attempts = attempts + 1, last_error = NULL, \
             status = ?2, api_result = ?3, answer = ?4, changed = ?5 \
             WHERE id = ?1 AND state = 'pending'",
            params![id, status, api_result, &answer[..], now],
        )?,
        Settlement::Quarantined {
            status,
            api_result,
            answer,
            reason,
        } => tx.execute(
            "UPDATE entries SET state = 'quarantined', attempts = attempts + 1, last_error = ?2, \
             status = ?3, api_result = ?4, answer = ?5, changed = ?6 \
             WHERE id = ?1 AND state = 'pending'",
            params![id, reason, status, api_result, &answer[..], now],
        )?,
        Settlement::Retry { error } => tx.execute(
            "UPDATE entries SET attempts = attempts + 1, last_error = ?2, changed = ?3 \
             WHERE id = ?1 AND state = 'pending'",
            params![id, error, now],
        )?,
    };
    Ok(())
}

/// The operator's view (`kakehashi journal`), from its own process.
pub mod operator {
    use super::*;

    /// Opens the journal of a data directory for reading and for operator changes.
    pub fn open(data_dir: &Path) -> Result<(Connection, PathBuf), JournalError> {
        let path = data_dir.join(FILE);
        if !path.exists() {
            return Err(DbError::Damaged {
                path,
                detail: "no such file: the gateway has not journaled anything here".into(),
            }
            .into());
        }
        let conn = open_checked(&path)?;
        Ok((conn, path))
    }

    /// Entries in `states` (all when empty), oldest first.
    pub fn list(conn: &Connection, path: &Path, states: &[State]) -> Result<Vec<Entry>, JournalError> {
        let mut stmt = conn
            .prepare(&format!("{SELECT} ORDER BY id"))
            .map_err(DbError::sqlite(path, "read the journal"))?;
        let rows = stmt
            .query_map([], entry_from_row)
            .map_err(DbError::sqlite(path, "read the journal"))?;
        let mut out = Vec::new();
        for row in rows {
            let e = row.map_err(DbError::sqlite(path, "read the journal"))?;
            if states.is_empty() || states.contains(&e.state) {
                out.push(e);
            }
        }
        Ok(out)
    }

    pub fn show(conn: &Connection, path: &Path, id: u64) -> Result<Entry, JournalError> {
        conn.query_row(&format!("{SELECT} WHERE id = ?1"), [id as i64], entry_from_row)
            .optional()
            .map_err(DbError::sqlite(path, "read the journal"))?
            .ok_or(JournalError::NoEntry(id))
    }

    /// Puts a quarantined entry back in line. It keeps its id, so it is still handed back in its
    /// original order relative to later pending entries, but gets a new idempotency key: the
    /// cloud refused it (so did not apply it), and an engine that remembers answers per key
    /// would otherwise give the same refusal again however the cause was put right.
    pub fn retry(conn: &Connection, path: &Path, id: u64) -> Result<(), JournalError> {
        let new_key = ", idempotency_key = idempotency_key || '-retry' || attempts";
        transition(conn, path, id, State::Quarantined, State::Pending, new_key)
    }

    /// Gives up on a quarantined or pending entry; it stays in the file, marked discarded.
    pub fn discard(conn: &Connection, path: &Path, id: u64) -> Result<(), JournalError> {
        let entry = show(conn, path, id)?;
        if !matches!(entry.state, State::Quarantined | State::Pending) {
            return Err(JournalError::WrongState {
                id,
                state: entry.state.as_str(),
                expected: "quarantined or pending",
            });
        }
        transition(conn, path, id, entry.state, State::Discarded, "")
    }

    fn transition(
        conn: &Connection,
        path: &Path,
        id: u64,
        from: State,
        to: State,
        also: &str,
    ) -> Result<(), JournalError> {
        let n = conn
            .execute(
                &format!("UPDATE entries SET state = ?3, changed = ?4{also} WHERE id = ?1 AND state = ?2"),
                params![id as i64, from.as_str(), to.as_str(), sqlite::now()],
            )
            .map_err(DbError::sqlite(path, "change the journal"))?;
        if n == 1 {
            return Ok(());
        }
        let entry = show(conn, path, id)?;
        Err(JournalError::WrongState {
            id,
            state: entry.state.as_str(),
            expected: from.as_str(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> NewEntry {
        NewEntry {
            terminal: Some("reception-1".into()),
            user: Some("reception".into()),
            method: "POST".into(),
            path: "/orca11/acceptmodv2?class=01&format=json".into(),
            content_type: Some("application/json".into()),
            body: Bytes::from_static(b"{\"acceptreq\":{\"Patient_ID\":\"1\"}}"),
            idempotency_key: key.into(),
        }
    }

    #[tokio::test]
    async fn appends_survive_reopening_and_settle_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        let a = j.append(entry("a")).await.unwrap();
        let b = j.append(entry("b")).await.unwrap();
        assert!(b > a);
        assert_eq!(j.append(entry("a")).await.unwrap(), a, "a key is journaled once");
        drop(j);
        let j = Journal::open(dir.path()).unwrap();
        assert_eq!(j.pending(), 2);
        let first = j.oldest_pending().unwrap().unwrap();
        assert_eq!((first.id, first.idempotency_key.as_str()), (a, "a"));
        let answer = Bytes::from_static(b"{}");
        let reason = "Api_Result 10".to_owned();
        j.settle(
            a,
            Settlement::Quarantined {
                status: Some(200),
                api_result: Some("10".into()),
                answer,
                reason,
            },
        )
        .await
        .unwrap();
        assert_eq!(j.oldest_pending().unwrap().unwrap().id, b);
        assert_eq!(j.pending(), 1);

        let (conn, path) = operator::open(dir.path()).unwrap();
        operator::retry(&conn, &path, a).unwrap();
        assert!(
            operator::retry(&conn, &path, a).is_err(),
            "only a quarantined entry is retried"
        );
        assert_eq!(j.recount().unwrap(), 2);
        assert_eq!(
            j.oldest_pending().unwrap().unwrap().id,
            a,
            "a retried entry keeps its place"
        );
    }

    #[test]
    fn a_damaged_journal_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(FILE),
            b"this is not a database, it is forty bytes",
        )
        .unwrap();
        let err = Journal::open(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("journal.db") && err.contains("not a usable SQLite database"),
            "{err}"
        );
        assert_eq!(
            std::fs::read(dir.path().join(FILE)).unwrap().len(),
            41,
            "the damaged file is left as it was"
        );
    }
}
