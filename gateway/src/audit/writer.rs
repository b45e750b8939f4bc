//! The one thread that writes the log. It owns the connection, commits whatever is queued in one
//! transaction (group commit), keeps and retries a batch the disk refused, and takes the lock
//! file for each commit so that several processes extend one chain.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::{Connection, params};
use tokio::sync::mpsc;

use super::chain::{chain_hash, head_problem, last_entry, read_head};
use super::entry::{COLUMNS, Entry, Record, SCHEMA_V1, SCHEMA_VERSION, sql_int};
use super::{AUDIT_DB, AUDIT_HEAD, AUDIT_LOCK, Msg};
use crate::store::{self, Result, StoreError};

/// The most entries committed in one transaction.
const BATCH_MAX: usize = 8_192;
/// Group commit: at most one commit per window. Each commit costs three fsyncs (the WAL, the head
/// file, its directory); under load, committing as fast as entries arrive spent a third of the
/// gateway's CPU in the kernel's fsync paths. An entry waits at most this long for the disk.
const GROUP_WINDOW: std::time::Duration = std::time::Duration::from_millis(20);
/// The longest pause between two attempts at a failing write.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The writer thread's state: the connection and the lock file (see [`AUDIT_LOCK`]).
pub(super) struct Writer {
    lock: std::fs::File,
    conn: Connection,
    db: PathBuf,
    head_file: PathBuf,
    pub(super) failing: Arc<AtomicBool>,
}

impl Writer {
    pub(super) fn open(data_dir: &Path) -> Result<Writer> {
        let db = data_dir.join(AUDIT_DB);
        let head_file = data_dir.join(AUDIT_HEAD);
        let conn = store::open_file(data_dir, &db)?;
        let writer = Writer {
            lock: open_lock(data_dir)?,
            conn,
            db,
            head_file,
            failing: Arc::default(),
        };
        let _held = writer.hold()?;
        store::migrate(&writer.conn, &writer.db, SCHEMA_VERSION, &[SCHEMA_V1])?;
        let last = last_entry(&writer.conn, &writer.db)?;
        let head = read_head(&writer.head_file)?;
        if let Some(what) = head_problem(
            &writer.conn,
            &writer.db,
            head.as_ref(),
            last.as_ref().map_or(0, |l| l.0),
        )? {
            return Err(StoreError::AuditTampered {
                path: writer.db.clone(),
                what,
            });
        }
        let last = last.unwrap_or((0, [0; 32]));
        if head != Some(last) {
            writer.write_head(last)?;
        }
        drop(_held);
        Ok(writer)
    }

    /// Takes the lock for one commit; it is released when the guard drops.
    fn hold(&self) -> Result<Held<'_>> {
        self.lock
            .lock()
            .map_err(StoreError::io("lock", self.db.with_file_name(AUDIT_LOCK)))?;
        Ok(Held(&self.lock))
    }

    pub(super) fn run(mut self, rx: &mut mpsc::Receiver<Msg>) {
        let mut batch = Vec::new();
        let mut waiters = Vec::new();
        let mut closers = Vec::new();
        let mut last_commit = std::time::Instant::now() - GROUP_WINDOW;
        // After a close, `rx.close()` refuses new messages and this loop still drains the queue.
        while let Some(first) = rx.blocking_recv() {
            if matches!(first, Msg::Entry(..)) {
                // Let the window fill: entries that arrive meanwhile share this commit.
                std::thread::sleep(GROUP_WINDOW.saturating_sub(last_commit.elapsed()));
            }
            let mut next = Some(first);
            while let Some(msg) = next {
                match msg {
                    Msg::Entry(time, entry) => batch.push((time, entry)),
                    Msg::Flush(done) => waiters.push(done),
                    Msg::Close(done) => {
                        rx.close();
                        closers.push(done);
                    }
                }
                next = if batch.len() < BATCH_MAX {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            if !batch.is_empty() {
                last_commit = std::time::Instant::now();
                self.retry(|w| w.commit(&batch));
                self.failing.store(false, Ordering::Relaxed);
                batch.clear();
            }
            for done in waiters.drain(..) {
                let _ = done.send(());
            }
        }
        // The connection and the lock go before the closers hear that all is done, so that a new
        // writer may start at once.
        drop(self);
        for done in closers {
            let _ = done.send(());
        }
    }

    /// Runs `step` until it succeeds (see [`retry`]).
    fn retry(&mut self, mut step: impl FnMut(&mut Writer) -> Result<()>) {
        let failing = self.failing.clone();
        retry(&failing, || step(self));
    }

    /// Appends a batch in one transaction after the chain's end as it is on disk now (another
    /// process may have appended since), then moves the head file, all under the lock.
    fn commit(&mut self, batch: &[(String, Entry)]) -> Result<()> {
        let _held = self.hold()?;
        let fail = |what| StoreError::sqlite(&self.db, what);
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(fail("begin a transaction"))?;
        let (mut id, mut prev) = last_entry(&tx, &self.db)?.unwrap_or((0, [0; 32]));
        {
            let mut insert = tx
                .prepare_cached(&format!(
                    "INSERT INTO entries ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
                     ?12, ?13, ?14, ?15, ?16, ?17)"
                ))
                .map_err(fail("prepare the insert"))?;
            for (time, entry) in batch {
                id += 1;
                let r = Record::from_entry(id, time, entry, &prev);
                let hash = chain_hash(&prev, &r);
                insert
                    .execute(params![
                        sql_int(r.id),
                        r.time,
                        r.decision,
                        r.reason,
                        r.terminal,
                        r.user,
                        r.source,
                        r.route,
                        r.method,
                        r.path,
                        r.upstream,
                        r.status,
                        r.bytes_in,
                        r.bytes_out,
                        r.duration_ms,
                        &prev[..],
                        &hash[..],
                    ])
                    .map_err(fail("append an entry"))?;
                prev = hash;
            }
        }
        tx.commit().map_err(fail("commit"))?;
        // Committed: from here only the head file is retried (the batch must not be appended
        // twice), still under the lock so that no other writer's head is overtaken by ours.
        retry(&self.failing, || self.write_head((id, prev)));
        Ok(())
    }

    fn write_head(&self, (id, hash): (u64, [u8; 32])) -> Result<()> {
        let text = format!("{id} {}\n", hex::encode(hash));
        cert_tool::files::write_atomic(&self.head_file, text.as_bytes(), cert_tool::files::SECRET)?;
        Ok(())
    }
}

/// Runs `step` until it succeeds, marking the log failing and backing off in between.
fn retry(failing: &AtomicBool, mut step: impl FnMut() -> Result<()>) {
    let mut delay = Duration::from_millis(50);
    while let Err(e) = step() {
        failing.store(true, Ordering::Relaxed);
        eprintln!(
            "kakehashi: error: audit log: {e}; entries are kept and retried in {} ms",
            delay.as_millis()
        );
        std::thread::sleep(delay);
        delay = (delay * 2).min(MAX_BACKOFF);
    }
}

/// The lock held for one commit.
struct Held<'a>(&'a std::fs::File);

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Opens (creating) the lock file every writer takes for each commit.
fn open_lock(data_dir: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join(AUDIT_LOCK);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(cert_tool::files::SECRET)
        .open(&path)
        .map_err(StoreError::io("open", &path))
}
