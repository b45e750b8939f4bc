//! The audit log: every access decision the gateway makes, in a hash chain that shows tampering.
//!
//! The log is `DATA_DIR/audit.db` (SQLite, WAL, mode 0600), one row per decision. Each row carries
//! the hash of the row before it (`prev_hash`; 32 zero bytes for the first) and its own `hash`,
//! SHA-256 over `prev_hash` and every field (see [`chain_hash`] for the exact encoding). Editing a
//! row breaks its hash; deleting one leaves a gap in the ids and breaks the next row's
//! `prev_hash`. Deleting rows at the end leaves a valid chain, so after every commit the writer
//! also records the last id and hash in `DATA_DIR/audit.head` (written atomically), and
//! [`verify`] compares the two.
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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::store::{self, Result, StoreError};

/// The audit database inside the data directory.
pub const AUDIT_DB: &str = "audit.db";
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
const QUEUE: usize = 16_384;
/// The most entries committed in one transaction.
const BATCH_MAX: usize = 8_192;
/// Group commit: at most one commit per window. Each commit costs three fsyncs (the WAL, the head
/// file, its directory); under load, committing as fast as entries arrive spent a third of the
/// gateway's CPU in the kernel's fsync paths. An entry waits at most this long for the disk.
const GROUP_WINDOW: std::time::Duration = std::time::Duration::from_millis(20);
/// The longest pause between two attempts at a failing write.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Domain separation for the chain hash, and its version.
const HASH_DOMAIN: &[u8] = b"kakehashi-audit-v1\0";
const SCHEMA_VERSION: i64 = 1;
const SCHEMA_V1: &str = "
CREATE TABLE entries (
    id          INTEGER PRIMARY KEY NOT NULL,
    time        TEXT NOT NULL,
    decision    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    terminal    TEXT,
    user        TEXT,
    source      TEXT NOT NULL,
    route       TEXT NOT NULL,
    method      TEXT,
    path        TEXT,
    upstream    TEXT,
    status      INTEGER,
    bytes_in    INTEGER NOT NULL,
    bytes_out   INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    prev_hash   BLOB NOT NULL,
    hash        BLOB NOT NULL
) STRICT;
";
const COLUMNS: &str = "id, time, decision, reason, terminal, user, source, route, method, path, upstream, \
                       status, bytes_in, bytes_out, duration_ms, prev_hash, hash";

/// What the gateway decided. The default is `Deny`, so an entry whose decision was forgotten
/// records a refusal rather than an access that did not happen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Decision {
    Allow,
    #[default]
    Deny,
}

impl Decision {
    /// `allow` or `deny`, as stored and exported.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// One access decision, as the gateway hands it to [`AuditLog::record`]. The log adds the id,
/// the time (when `record` is called) and the hashes.
///
/// Build one with [`Entry::new`] and struct update syntax for the rest:
/// `Entry { user: Some(id), ..Entry::new(Decision::Allow, "api", peer, "signed in") }`.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    pub decision: Decision,
    /// Why, in a few words: "password ok", "terminal disabled", "unknown user".
    pub reason: String,
    /// The terminal's certificate common name (or WireGuard peer name), once known.
    pub terminal: Option<String>,
    /// The person's ID, once known (also for a failed sign-in: the ID that was tried).
    pub user: Option<String>,
    /// The peer address, `ip:port`.
    pub source: String,
    /// Which route or stage: "api", "tcp:pacs", "handshake", "login".
    pub route: String,
    pub method: Option<String>,
    pub path: Option<String>,
    /// Which engine answered: "cloud", "local".
    pub upstream: Option<String>,
    /// The HTTP status sent to the terminal.
    pub status: Option<u16>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_ms: u64,
}

impl Entry {
    /// An entry with the fields every decision has; the rest default to absent or zero.
    pub fn new(decision: Decision, route: &str, source: &str, reason: &str) -> Entry {
        Entry {
            decision,
            route: route.to_owned(),
            source: source.to_owned(),
            reason: reason.to_owned(),
            ..Entry::default()
        }
    }
}

/// One entry as stored: what `export` prints and `verify` checks. Hashes are lower-case hex.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Record {
    pub id: u64,
    /// RFC 3339, UTC, milliseconds: `2025-04-01T00:12:34.567Z`.
    pub time: String,
    pub decision: String,
    pub reason: String,
    pub terminal: Option<String>,
    pub user: Option<String>,
    pub source: String,
    pub route: String,
    pub method: Option<String>,
    pub path: Option<String>,
    pub upstream: Option<String>,
    pub status: Option<i64>,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub duration_ms: i64,
    pub prev_hash: String,
    pub hash: String,
}

impl Record {
    /// The stored form of an entry (numbers beyond SQLite's range are clamped), without its hash.
    fn from_entry(id: u64, time: &str, e: &Entry, prev: &[u8; 32]) -> Record {
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        Record {
            id,
            time: time.to_owned(),
            decision: e.decision.as_str().to_owned(),
            reason: e.reason.clone(),
            terminal: e.terminal.clone(),
            user: e.user.clone(),
            source: e.source.clone(),
            route: e.route.clone(),
            method: e.method.clone(),
            path: e.path.clone(),
            upstream: e.upstream.clone(),
            status: e.status.map(i64::from),
            bytes_in: int(e.bytes_in),
            bytes_out: int(e.bytes_out),
            duration_ms: int(e.duration_ms),
            prev_hash: hex::encode(prev),
            hash: String::new(),
        }
    }

    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Record> {
        let blob = |i: usize| row.get::<_, Vec<u8>>(i).map(hex::encode);
        Ok(Record {
            id: get_u64(row, 0)?,
            time: row.get(1)?,
            decision: row.get(2)?,
            reason: row.get(3)?,
            terminal: row.get(4)?,
            user: row.get(5)?,
            source: row.get(6)?,
            route: row.get(7)?,
            method: row.get(8)?,
            path: row.get(9)?,
            upstream: row.get(10)?,
            status: row.get(11)?,
            bytes_in: row.get(12)?,
            bytes_out: row.get(13)?,
            duration_ms: row.get(14)?,
            prev_hash: blob(15)?,
            hash: blob(16)?,
        })
    }
}

/// The chain hash of an entry: SHA-256 over a length-prefixed encoding that no two different
/// entries share:
///
/// ```text
/// "kakehashi-audit-v1" 0x00 || prev_hash (32 bytes) || id (u64 BE)
/// || time || decision || reason || terminal || user || source || route || method || path
/// || upstream || status || bytes_in || bytes_out || duration_ms
/// ```
///
/// A text is `u32 BE byte length || UTF-8 bytes`; a number is `i64 BE`; an optional field is
/// `0x00` when absent and `0x01 ||` its encoding when present. `prev_hash` is not in `record`
/// but the argument, so that [`verify`] checks the link and the contents separately.
pub fn chain_hash(prev: &[u8; 32], record: &Record) -> [u8; 32] {
    use aws_lc_rs::digest::{Context, SHA256};
    let mut h = Context::new(&SHA256);
    let text = |h: &mut Context, s: &str| {
        h.update(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
        h.update(s.as_bytes());
    };
    let opt_text = |h: &mut Context, s: &Option<String>| match s {
        None => h.update(&[0]),
        Some(s) => {
            h.update(&[1]);
            text(h, s);
        }
    };
    h.update(HASH_DOMAIN);
    h.update(prev);
    h.update(&record.id.to_be_bytes());
    text(&mut h, &record.time);
    text(&mut h, &record.decision);
    text(&mut h, &record.reason);
    opt_text(&mut h, &record.terminal);
    opt_text(&mut h, &record.user);
    text(&mut h, &record.source);
    text(&mut h, &record.route);
    opt_text(&mut h, &record.method);
    opt_text(&mut h, &record.path);
    opt_text(&mut h, &record.upstream);
    match record.status {
        None => h.update(&[0]),
        Some(s) => {
            h.update(&[1]);
            h.update(&s.to_be_bytes());
        }
    }
    for n in [record.bytes_in, record.bytes_out, record.duration_ms] {
        h.update(&n.to_be_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finish().as_ref());
    out
}

/// The current time as the log records it: RFC 3339, UTC, milliseconds. The fixed width makes
/// text order time order, which `export --since` relies on.
fn timestamp(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&format).unwrap_or_else(|_| t.to_string())
}

// Entries are the traffic and flushes are rare: boxing every entry would cost an allocation per
// request to save queue space.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Entry(String, Entry),
    Flush(oneshot::Sender<()>),
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
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("failing", &self.is_failing())
            .finish()
    }
}

impl AuditLog {
    /// Opens (creating if needed) `DATA_DIR/audit.db`, checks it against `audit.head`, and starts
    /// the writer thread.
    ///
    /// Refuses a log whose end does not match the head file (entries removed from the end, or
    /// the head file deleted): recording on would hide that. `kakehashi audit verify` shows the
    /// damage; moving `audit.db` and `audit.head` aside (keep them) starts a new chain.
    pub fn open(data_dir: &Path) -> Result<AuditLog> {
        let mut writer = Writer::open(data_dir)?;
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let failing = Arc::new(AtomicBool::new(false));
        writer.failing = failing.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(&mut rx))
            .map_err(StoreError::io(
                "start the audit writer thread for",
                data_dir.join(AUDIT_DB),
            ))?;
        Ok(AuditLog { tx, failing })
    }

    /// Records an entry, waiting while the queue is full (never dropping it). The time is taken
    /// now.
    pub async fn record(&self, entry: Entry) {
        let stamped = Msg::Entry(timestamp(OffsetDateTime::now_utc()), entry);
        if self.tx.send(stamped).await.is_err() {
            self.writer_gone();
        }
    }

    /// Records without waiting, for code that cannot await (a response body's `Drop`): straight
    /// into the queue when it has room, the common case, with no task spawned; otherwise on a
    /// task that waits for room. Never drops the entry.
    pub fn record_soon(&self, entry: Entry) {
        let stamped = Msg::Entry(timestamp(OffsetDateTime::now_utc()), entry);
        match self.tx.try_send(stamped) {
            Ok(()) => {}
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
        let stamped = Msg::Entry(timestamp(OffsetDateTime::now_utc()), entry);
        if self.tx.blocking_send(stamped).is_err() {
            self.writer_gone();
        }
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
        let (done, wait) = oneshot::channel();
        self.tx
            .send(request(done))
            .await
            .map_err(|_| StoreError::AuditStopped)?;
        wait.await.map_err(|_| StoreError::AuditStopped)
    }

    fn ask_blocking(&self, request: fn(oneshot::Sender<()>) -> Msg) -> Result<()> {
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

    fn writer_gone(&self) {
        if !self.failing.swap(true, Ordering::Relaxed) {
            eprintln!("kakehashi: error: {}", StoreError::AuditStopped);
        }
    }
}

/// The writer thread's state: the connection and the lock file (see [`AUDIT_LOCK`]).
struct Writer {
    lock: std::fs::File,
    conn: Connection,
    db: PathBuf,
    head_file: PathBuf,
    failing: Arc<AtomicBool>,
}

impl Writer {
    fn open(data_dir: &Path) -> Result<Writer> {
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

    fn run(mut self, rx: &mut mpsc::Receiver<Msg>) {
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

/// An id as SQLite stores it (ids never come near `i64::MAX`).
fn sql_int(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// A column that must hold a non-negative integer (an id).
fn get_u64(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(i)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(i, v))
}

/// The last committed entry's id and hash.
fn last_entry(conn: &Connection, db: &Path) -> Result<Option<(u64, [u8; 32])>> {
    conn.query_row("SELECT id, hash FROM entries ORDER BY id DESC LIMIT 1", [], |r| {
        Ok((get_u64(r, 0)?, r.get::<_, Vec<u8>>(1)?))
    })
    .optional()
    .map_err(StoreError::sqlite(db, "read the last entry"))?
    .map(|(id, hash)| {
        <[u8; 32]>::try_from(hash.as_slice())
            .map(|h| (id, h))
            .map_err(|_| StoreError::Corrupt {
                path: db.into(),
                what: format!("entry {id}: its hash is not 32 bytes"),
            })
    })
    .transpose()
}

/// The head file's id and hash; `None` if there is no head file. A malformed one is an error.
fn read_head(path: &Path) -> Result<Option<(u64, [u8; 32])>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("read", path)(e)),
    };
    let parsed = text.trim_end().split_once(' ').and_then(|(id, hash)| {
        let id = id.parse::<u64>().ok()?;
        let hash = <[u8; 32]>::try_from(hex::decode(hash).ok()?.as_slice()).ok()?;
        Some((id, hash))
    });
    parsed.map(Some).ok_or_else(|| StoreError::Corrupt {
        path: path.into(),
        what: "not a chain head (expected \"ID HASH\", the hash as 64 hex digits)".into(),
    })
}

/// What is wrong between the head file and a log that ends at `last_id`, if anything.
fn head_problem(
    conn: &Connection,
    db: &Path,
    head: Option<&(u64, [u8; 32])>,
    last_id: u64,
) -> Result<Option<String>> {
    let Some(&(head_id, head_hash)) = head else {
        return Ok((last_id > 0).then(|| {
            format!("{AUDIT_HEAD} is missing but the log has {last_id} entries: its end cannot be checked")
        }));
    };
    if head_id > last_id {
        return Ok(Some(format!(
            "the log ends at entry {last_id} but {AUDIT_HEAD} records entry {head_id}: \
             the last {} entries were removed",
            head_id - last_id
        )));
    }
    if head_id == 0 {
        return Ok(None);
    }
    let stored: Option<Vec<u8>> = conn
        .query_row(
            "SELECT hash FROM entries WHERE id = ?1",
            params![sql_int(head_id)],
            |r| r.get(0),
        )
        .optional()
        .map_err(StoreError::sqlite(db, "read an entry"))?;
    Ok(match stored {
        None => Some(format!(
            "entry {head_id}, recorded in {AUDIT_HEAD}, is missing from the log"
        )),
        Some(h) if h != head_hash => Some(format!(
            "entry {head_id}: its hash differs from the one recorded in {AUDIT_HEAD}: \
             the end of the log was replaced"
        )),
        Some(_) => None,
    })
}

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

#[cfg(test)]
mod tests;
