//! The audit log: every access decision the gateway makes, in a hash chain that shows tampering.
//!
//! The log is a series of segments, `DATA_DIR/audit/NNNNNNNNNNNN.db` (SQLite, WAL, mode 0600, see
//! [`segment`]), one row per commit holding that commit's entries (see [`batch`]). Each entry's
//! hash is SHA-256 over the hash of the entry before it (32 zero bytes for the first entry ever)
//! and every field (see [`chain_hash`] for the exact encoding); the chain runs on across
//! segments, ids too. Editing an entry breaks its hash; deleting one leaves a gap in the ids or
//! breaks the next entry's link. Deleting entries at the end leaves a valid chain, so the writer also records the last id and hash in `DATA_DIR/audit.head`
//! (written atomically; after a commit during which nothing more was queued, and at least every
//! 250 ms under load), and [`verify`] compares the two.
//!
//! A segment is sealed when it reaches its size ([`AuditLog::open_with`]); sealed segments are
//! what a bounded disk lets go, oldest first, once a verified backup holds them
//! ([`segment::prune`], `crate::budget`).
//!
//! The chain shows changes made by someone who cannot also recompute every later hash and
//! rewrite the head file; it is tamper-evidence for the clinic's records, not a signature.
//!
//! Writing: [`AuditLog`] is a cheap handle to one writer thread that owns the connection. Callers
//! send entries over a bounded channel (backpressure: when the disk is slower than the traffic,
//! callers wait; an entry is never dropped). The writer commits whatever is queued in one
//! transaction, so a busy gateway pays one fsync per batch, not per request. When a write fails
//! (a full disk), the writer keeps the batch, reports the error on stderr, retries with backoff,
//! and [`AuditLog::is_failing`] tells the gateway to refuse new access until the log is writable
//! (api requests get `503`, raw TCP streams are closed, EST issues nothing, `/health` is `503`).
mod batch;
mod chain;
mod entry;
mod pace;
mod read;
pub mod segment;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::store::{Result, StoreError};
use pace::Pace;
use writer::Writer;

pub use segment::Format;

pub use chain::{chain_hash, timestamp};
pub use entry::{Decision, Entry, Fields, Record, Text};
pub use read::{
    Broken, ChainCheck, Recent, Refusal, Span, VerifyReport, export, hash_of, parse_since, recent, verify,
    verify_vouched,
};

/// The single audit database of earlier versions inside the data directory: moved into
/// [`segment::SEGMENTS`] as the first sealed segment when a writer first opens the log.
pub const AUDIT_DB: &str = "audit.db";
/// A segment's size when nobody says otherwise (commands that record a few entries beside the
/// gateway; the gateway uses `[storage]`'s).
pub const DEFAULT_SEGMENT_BYTES: u64 = 4 << 20;
/// The chain head file inside the data directory: `ID HASH-HEX`, the last entry committed.
pub const AUDIT_HEAD: &str = "audit.head";
/// The lock file a writer holds while it appends: every commit takes it, reads the chain's end
/// from the database, appends and moves the head file, so that several processes (the gateway,
/// and a command such as `gateway import-bundle` beside it) extend one chain and never fork it.
pub const AUDIT_LOCK: &str = "audit.lock";

/// The reason given for access refused while [`AuditLog::is_failing`]: the gateway grants no
/// access it cannot record.
pub const FAILING: &str = "the audit log cannot be written";

/// How many entries may wait for the writer before `record` waits in turn.
pub(super) const QUEUE: usize = 16_384;
/// Entries waiting past which a writer in the idle class is called back to the normal one
/// ([`pace`]): about 40 ms of the gateway's peak. Half the queue let a writer that fell behind
/// hold 8,000 entries and batches as large, 4 MiB more at the peak of `bench/memory.sh`.
pub(super) const BEHIND: usize = QUEUE / 8;
/// Entries waiting below which a writer that was called back returns to the idle class.
pub(super) const CAUGHT_UP: usize = QUEUE / 32;

// Entries are the traffic and flushes are rare: boxing every entry would cost an allocation per
// request to save queue space.
#[allow(clippy::large_enum_variant)]
enum Msg {
    /// The entry and when it was recorded (the writer makes the time's text).
    Entry(OffsetDateTime, Entry),
    Flush(oneshot::Sender<()>),
    /// Give back what a burst grew (the batch's capacity, SQLite's page cache); then answer.
    Release(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

/// A handle to the audit log's writer; clone it freely (every clone feeds the same writer).
///
/// The writer thread ends when the last handle is dropped, after writing what was queued; call
/// [`AuditLog::flush`] (or [`AuditLog::close`]) at shutdown to know that everything is on disk.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
    failing: Arc<AtomicBool>,
    pace: Arc<Pace>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("failing", &self.is_failing())
            .finish()
    }
}

impl AuditLog {
    /// [`AuditLog::open_with`] segments of [`DEFAULT_SEGMENT_BYTES`].
    pub fn open(data_dir: &Path) -> Result<AuditLog> {
        AuditLog::open_with(data_dir, DEFAULT_SEGMENT_BYTES)
    }

    /// [`AuditLog::open_as`], going on in the live segment's layout ([`Format::Keep`]): what
    /// every writer but the gateway itself does.
    pub fn open_with(data_dir: &Path, segment_bytes: u64) -> Result<AuditLog> {
        AuditLog::open_as(data_dir, segment_bytes, Format::Keep)
    }

    /// Opens (creating if needed) the log in `DATA_DIR/audit/` (moving a legacy `audit.db` there
    /// first), checks it against `audit.head`, and starts the writer thread, which seals the live
    /// segment once it holds `segment_bytes`.
    ///
    /// Refuses a log whose end does not match the head file (entries removed from the end, or
    /// the head file deleted): recording on would hide that. `kakehashi audit verify` shows the
    /// damage; moving `audit/` and `audit.head` aside (keep them) starts a new chain.
    ///
    /// `format` says whether a log that versions before batches wrote in rows moves to batches
    /// now ([`Format`]).
    pub fn open_as(data_dir: &Path, segment_bytes: u64, format: Format) -> Result<AuditLog> {
        let mut writer = Writer::open(data_dir, segment_bytes, format)?;
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let failing = Arc::new(AtomicBool::new(false));
        writer.failing = failing.clone();
        let pace = Arc::new(Pace::default());
        writer.pace = pace.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(&mut rx))
            .map_err(StoreError::io(
                "start the audit writer thread for",
                data_dir.join(segment::SEGMENTS),
            ))?;
        Ok(AuditLog { tx, failing, pace })
    }

    /// Records an entry, waiting while the queue is full (never dropping it). The time is taken
    /// now.
    pub async fn record(&self, entry: Entry) {
        let stamped = Msg::Entry(OffsetDateTime::now_utc(), entry);
        if self.tx.send(stamped).await.is_err() {
            self.writer_gone();
        }
        self.keep_up();
    }

    /// Records without waiting, for code that cannot await (a response body's `Drop`): straight
    /// into the queue when it has room, the common case, with no task spawned; otherwise on a
    /// task that waits for room. Never drops the entry.
    pub fn record_soon(&self, entry: Entry) {
        let stamped = Msg::Entry(OffsetDateTime::now_utc(), entry);
        match self.tx.try_send(stamped) {
            Ok(()) => self.keep_up(),
            Err(mpsc::error::TrySendError::Full(msg)) => match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let log = self.clone();
                    runtime.spawn(async move {
                        if log.tx.send(msg).await.is_err() {
                            log.writer_gone();
                        }
                    });
                }
                Err(_) => {
                    if self.tx.blocking_send(msg).is_err() {
                        self.writer_gone();
                    }
                }
            },
            Err(mpsc::error::TrySendError::Closed(_)) => self.writer_gone(),
        }
    }

    /// [`AuditLog::record`] for threads outside the async runtime (it panics inside one, as
    /// tokio's `blocking_send` does).
    pub fn record_blocking(&self, entry: Entry) {
        let stamped = Msg::Entry(OffsetDateTime::now_utc(), entry);
        if self.tx.blocking_send(stamped).is_err() {
            self.writer_gone();
        }
        self.keep_up();
    }

    /// Returns once every entry recorded before the call is committed to disk (and the head file
    /// written). While the disk is failing this waits until the writer gets through.
    pub async fn flush(&self) -> Result<()> {
        self.ask(Msg::Flush).await
    }

    /// [`AuditLog::flush`] for threads outside the async runtime.
    pub fn flush_blocking(&self) -> Result<()> {
        self.ask_blocking(Msg::Flush)
    }

    /// Has the writer give back the memory a burst grew (its batch, SQLite's page cache), as it
    /// does by itself after a light batch; for a burst's end with no entry after it
    /// ([`crate::daemon::trim`]). Returns once it has.
    pub async fn release(&self) -> Result<()> {
        self.ask(Msg::Release).await
    }

    /// Writes everything queued, stops the writer and releases the log (its connection and lock)
    /// for the next writer: the gateway's last word at graceful shutdown. Other handles' later
    /// `record`s are refused (they report the writer stopped and [`AuditLog::is_failing`]).
    pub async fn close(self) -> Result<()> {
        self.ask(Msg::Close).await
    }

    /// [`AuditLog::close`] for threads outside the async runtime.
    pub fn close_blocking(self) -> Result<()> {
        self.ask_blocking(Msg::Close)
    }

    /// Sends the writer a request and waits for its answer.
    async fn ask(&self, request: fn(oneshot::Sender<()>) -> Msg) -> Result<()> {
        self.pace.wanted();
        let (done, wait) = oneshot::channel();
        self.tx
            .send(request(done))
            .await
            .map_err(|_| StoreError::AuditStopped)?;
        wait.await.map_err(|_| StoreError::AuditStopped)
    }

    fn ask_blocking(&self, request: fn(oneshot::Sender<()>) -> Msg) -> Result<()> {
        self.pace.wanted();
        let (done, wait) = oneshot::channel();
        self.tx
            .blocking_send(request(done))
            .map_err(|_| StoreError::AuditStopped)?;
        wait.blocking_recv().map_err(|_| StoreError::AuditStopped)
    }

    /// Whether the log cannot be written right now (a full disk, a stopped writer). The gateway
    /// should refuse new access while this is true: what is not audited must not happen.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// A writer in the idle class with [`BEHIND`] entries waiting returns to the normal class
    /// ([`pace`]): under a load that keeps every core busy, the idle class would not keep up.
    fn keep_up(&self) {
        if self.pace.idle() && self.tx.capacity() <= QUEUE - BEHIND {
            self.pace.wanted();
        }
    }

    fn writer_gone(&self) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            eprintln!("kakehashi: error: {}", StoreError::AuditStopped);
        }
    }
}

#[cfg(test)]
mod tests;
