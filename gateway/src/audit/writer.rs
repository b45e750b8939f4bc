//! The one thread that writes the log. It owns the connection, commits whatever is queued in one
//! transaction (group commit), keeps and retries a batch the disk refused, and takes the lock
//! file for each commit so that several processes extend one chain.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::{Connection, params};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::batch;
use super::chain::{chain_hash, head_problem, last_entry, read_point, stamp, write_point};
use super::entry::{COLUMNS, Entry, Fields, sql_int};
use super::pace::Pace;
use super::segment::{self, Format, Layout, Point, Segment};
use super::{AUDIT_HEAD, AUDIT_LOCK, Msg};
use crate::store::{self, Result, StoreError};

/// The most entries committed in one transaction.
const BATCH_MAX: usize = 8_192;
/// Group commit: at most one commit per window. Each commit costs three fsyncs (the WAL, the head
/// file, its directory); under load, committing as fast as entries arrive spent a third of the
/// gateway's CPU in the kernel's fsync paths. An entry waits at most this long for the disk.
const GROUP_WINDOW: std::time::Duration = std::time::Duration::from_millis(20);
/// A batch this small means the load is light: what a burst grew (the batch's capacity, SQLite's
/// page cache, a few megabytes after a busy minute) goes back to the allocator then, rather than
/// staying resident until the next burst.
const LIGHT: usize = 64;
/// The longest pause between two attempts at a failing write.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// While entries keep coming, the head file moves at most this often: each move is a file
/// written and two fsyncs, and moving it after every commit cost more than a percent of the
/// gateway's CPU under load (and wears a router's flash). It moves after a commit during which
/// nothing more was queued, before a flush or a close is answered, and when a segment is sealed. A
/// crash can leave it this far behind the log's end, which the head allows: it attests that the
/// log held at least that much.
const HEAD_EVERY: Duration = Duration::from_millis(250);

/// The writer thread's state: the live segment's connection and the lock file (see
/// [`AUDIT_LOCK`]).
pub(super) struct Writer {
    lock: std::fs::File,
    conn: Connection,
    /// The live segment, where it starts, and its layout.
    live: Segment,
    start: Point,
    layout: Layout,
    format: Format,
    data_dir: PathBuf,
    head_file: PathBuf,
    /// A live segment this large (bytes) is sealed after the commit that reached it.
    seal_at: u64,
    /// When the head file last moved, and the end committed since that it does not record.
    head_moved: std::time::Instant,
    behind: Option<Point>,
    /// A batch's entries encoded for its row, kept from one commit to the next as the batch is:
    /// a fresh buffer of 100 KB or more, each commit under load, was the kernel's to map and
    /// fault in every time.
    records: Vec<u8>,
    pub(super) failing: Arc<AtomicBool>,
    /// Its scheduling class ([`super::pace`]).
    pub(super) pace: Arc<Pace>,
}

/// Stops the writer's [`Pace`] when dropped.
struct StopPace(Arc<Pace>);

impl Drop for StopPace {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl Writer {
    pub(super) fn open(data_dir: &Path, seal_at: u64, format: Format) -> Result<Writer> {
        cert_tool::files::create_dir(data_dir, store::DIR_MODE)?;
        let lock = open_lock(data_dir)?;
        lock.lock()
            .map_err(StoreError::io("lock", data_dir.join(AUDIT_LOCK)))?;
        let held = Held(&lock);
        segment::migrate_legacy(data_dir)?;
        let (live, conn, start, layout) = segment::open_live(data_dir, format)?;
        let last = segment::end(&conn, layout, &live.path)?;
        let head_file = data_dir.join(AUDIT_HEAD);
        let head = read_point(&head_file)?;
        if let Some(what) = head_problem(head.as_ref(), last.0, |id| segment::hash_at(data_dir, id))? {
            return Err(StoreError::AuditTampered {
                path: live.path.clone(),
                what,
            });
        }
        if head != Some(last) {
            write_point(&head_file, last)?;
        }
        drop(held);
        Ok(Writer {
            lock,
            conn,
            live,
            start,
            layout,
            format,
            data_dir: data_dir.to_owned(),
            head_file,
            seal_at: seal_at.max(1),
            head_moved: std::time::Instant::now(),
            behind: None,
            records: Vec::new(),
            failing: Arc::default(),
            pace: Arc::default(),
        })
    }

    pub(super) fn run(mut self, rx: &mut mpsc::Receiver<Msg>) {
        self.pace.start();
        // Stopped on the way out, a panic's too: its thread ID must not outlive the thread.
        let _stop = StopPace(self.pace.clone());
        let mut batch = Vec::new();
        let mut waiters = Vec::new();
        let mut closers = Vec::new();
        let mut last_commit = std::time::Instant::now() - GROUP_WINDOW;
        // After a close, `rx.close()` refuses new messages and this loop still drains the queue.
        while let Some(first) = rx.blocking_recv() {
            let mut release = false;
            if matches!(first, Msg::Entry(..)) {
                // Let the window fill: entries that arrive meanwhile share this commit.
                std::thread::sleep(GROUP_WINDOW.saturating_sub(last_commit.elapsed()));
            }
            let mut next = Some(first);
            while let Some(msg) = next {
                match msg {
                    Msg::Entry(time, entry) => batch.push((time, entry)),
                    Msg::Flush(done) => waiters.push(done),
                    Msg::Release(done) => {
                        release = true;
                        waiters.push(done);
                    }
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
            // As far behind as a worker calls it back for, counting what it has taken off the
            // queue: in the idle class the commit ahead could wait for every core to go quiet.
            if batch.len() >= super::BEHIND {
                self.pace.wanted();
            }
            // Someone waits for the disk, or nothing was queued while this batch was committed:
            // the head follows the commit. (Whether the queue is empty is asked after the commit:
            // right after draining it, it always is.)
            let settle = !waiters.is_empty() || !closers.is_empty();
            if !batch.is_empty() {
                last_commit = std::time::Instant::now();
                let rx = &*rx;
                self.retry(|w| w.commit(&batch, || settle || rx.is_empty()));
                self.failing.store(false, Ordering::Relaxed);
                release |= batch.len() <= LIGHT && batch.capacity() > LIGHT;
                batch.clear();
            }
            // A commit leaves the head behind only while more is queued, which the next turn
            // commits; a turn with only a flush or a close brings it up to date here.
            if settle && self.behind.is_some() {
                self.retry(Writer::catch_up);
            }
            if release {
                batch.shrink_to(LIGHT);
                self.records = Vec::new();
                // The page cache: SQLite keeps every page it read or wrote until the
                // connection closes; a failure here only leaves them.
                let _ = self.conn.execute_batch("PRAGMA shrink_memory");
            }
            for done in waiters.drain(..) {
                let _ = done.send(());
            }
            if rx.len() < super::CAUGHT_UP {
                self.pace.relax();
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

    /// Takes the lock file for one commit.
    fn lock(&self) -> Result<std::fs::File> {
        let lock = self
            .lock
            .try_clone()
            .map_err(StoreError::io("lock", self.data_dir.join(AUDIT_LOCK)))?;
        lock.lock()
            .map_err(StoreError::io("lock", self.data_dir.join(AUDIT_LOCK)))?;
        Ok(lock)
    }

    /// Appends a batch in one transaction after the chain's end as it is on disk now (another
    /// process may have appended, or sealed the segment, since), then moves the head file (when
    /// `settle` says so once committed, or [`HEAD_EVERY`] has passed) and seals the segment if it
    /// is full, all under the lock.
    fn commit(&mut self, batch: &[(OffsetDateTime, Entry)], settle: impl Fn() -> bool) -> Result<()> {
        let lock = self.lock()?;
        let _held = Held(&lock);
        self.follow()?;
        let db = self.live.path.clone();
        let fail = |what| StoreError::sqlite(&db, what);
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(fail("begin a transaction"))?;
        let end = last_entry(&tx, self.layout, &db)?.unwrap_or(self.start);
        let (id, prev) = match self.layout {
            Layout::Rows | Layout::Legacy => append_rows(&tx, batch, end),
            Layout::Batches => append_batch(&tx, batch, end, &mut self.records),
        }
        .map_err(fail("append the entries"))?;
        tx.commit().map_err(fail("commit"))?;
        // Committed: from here only the head file is retried (the batch must not be appended
        // twice), still under the lock so that no other writer's head is overtaken by ours.
        let full = self.size() >= self.seal_at;
        self.behind = Some((id, prev));
        if full || settle() || self.head_moved.elapsed() >= HEAD_EVERY {
            self.move_head();
        }
        if full && let Err(e) = self.seal((id, prev)) {
            // Not fatal: the entries are committed; the next commit tries again.
            eprintln!(
                "kakehashi: warning: audit log: cannot seal {}: {e}",
                self.live.path.display()
            );
        }
        Ok(())
    }

    /// Writes the end committed last into the head file, retrying until it is written. Only
    /// under the lock, right after the commit or after checking that the end is still ours.
    fn move_head(&mut self) {
        if let Some(end) = self.behind.take() {
            retry(&self.failing, || write_point(&self.head_file, end));
            self.head_moved = std::time::Instant::now();
        }
    }

    /// Moves the head file to our last commit, which it does not record yet, unless another
    /// process has appended since (it moved the head past ours itself).
    fn catch_up(&mut self) -> Result<()> {
        let lock = self.lock()?;
        let _held = Held(&lock);
        self.follow()?;
        let end = last_entry(&self.conn, self.layout, &self.live.path)?.unwrap_or(self.start);
        match self.behind == Some(end) {
            true => self.move_head(),
            false => self.behind = None,
        }
        Ok(())
    }

    /// Switches to the newest segment if another process sealed ours.
    fn follow(&mut self) -> Result<()> {
        let newest = segment::list(&self.data_dir)?.pop();
        if newest.as_ref().is_some_and(|n| n.first != self.live.first) {
            let (live, conn, start, layout) = segment::open_live(&self.data_dir, self.format)?;
            (self.live, self.conn, self.start, self.layout) = (live, conn, start, layout);
        }
        Ok(())
    }

    /// The live segment's size: its pages, those still in the WAL included.
    fn size(&self) -> u64 {
        self.conn
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_or(0, |n| n.max(0) as u64)
    }

    /// Seals the live segment, which ends at `end`: the next segment starts from it, and the old
    /// one is checkpointed and closed (its WAL folded in and removed).
    fn seal(&mut self, end: Point) -> Result<()> {
        let next = segment::create(&self.data_dir, end, self.layout)?;
        let (live, conn, start, layout) = segment::open_live(&self.data_dir, self.format)?;
        if live.first != next.first {
            return Err(StoreError::Corrupt {
                path: next.path,
                what: format!("a newer segment {} appeared", live.path.display()),
            });
        }
        let old = std::mem::replace(&mut self.conn, conn);
        let old_path = std::mem::replace(&mut self.live, live).path;
        (self.start, self.layout) = (start, layout);
        old.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(StoreError::sqlite(&old_path, "checkpoint the sealed segment"))?;
        old.close()
            .map_err(|(_, e)| StoreError::sqlite(&old_path, "close the sealed segment")(e))
    }
}

/// Appends `batch` after `end` as one row (see [`batch`]); returns the new end.
fn append_batch(
    tx: &rusqlite::Transaction<'_>,
    batch: &[(OffsetDateTime, Entry)],
    end: Point,
    records: &mut Vec<u8>,
) -> rusqlite::Result<Point> {
    records.clear();
    // About 160 bytes an entry.
    records.reserve(batch.len() * 192);
    let (last, hash) = chain(batch, end, |f, hash| {
        batch::encode(f, hash, records);
        Ok(())
    })?;
    tx.prepare_cached("INSERT INTO batches (last, entries, hash, records) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![
            sql_int(last),
            batch.len() as i64,
            &hash[..],
            &records[..]
        ])?;
    Ok((last, hash))
}

/// Appends `batch` after `end` as a row per entry, as versions before batches did; returns the
/// new end.
fn append_rows(
    tx: &rusqlite::Transaction<'_>,
    batch: &[(OffsetDateTime, Entry)],
    end: Point,
) -> rusqlite::Result<Point> {
    let mut insert = tx.prepare_cached(&format!(
        "INSERT INTO entries ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, \
         ?14, ?15, ?16)"
    ))?;
    chain(batch, end, |f, hash| {
        insert.execute(params![
            sql_int(f.id),
            f.time,
            f.decision,
            f.reason,
            f.terminal,
            f.user,
            f.source,
            f.route,
            f.method,
            f.path,
            f.upstream,
            f.status,
            f.bytes_in,
            f.bytes_out,
            f.duration_ms,
            &hash[..],
        ])?;
        Ok(())
    })
}

/// Chains `batch` on from `end`: each entry gets the next id, its time stamped, and its hash;
/// `store` gets its fields and hash. Returns the new end.
fn chain(
    batch: &[(OffsetDateTime, Entry)],
    (mut id, mut prev): Point,
    mut store: impl FnMut(&Fields<'_>, &[u8; 32]) -> rusqlite::Result<()>,
) -> rusqlite::Result<Point> {
    let mut time = String::with_capacity(24);
    for (at, entry) in batch {
        id += 1;
        stamp(*at, &mut time);
        let f = entry.fields(id, &time);
        let hash = chain_hash(&prev, &f);
        store(&f, &hash)?;
        prev = hash;
    }
    Ok((id, prev))
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
