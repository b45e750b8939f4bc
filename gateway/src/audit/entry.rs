//! An entry twice: as the gateway hands it to the log, and as the log stores it. The stored
//! form, its table and its columns are in one place, so that what is written, what is hashed and
//! what is read back cannot drift apart.

use std::sync::Arc;

/// The schema of the single `audit.db` of earlier versions (every row with its `prev_hash`):
/// read, never written; moved into `audit/` as the first sealed segment.
pub(super) const LEGACY_VERSION: i64 = 1;
/// The schema of a segment with one row per entry: what versions before [`BATCH_VERSION`]
/// wrote, still written beside them (see [`Format`](super::segment::Format)).
pub(super) const SEGMENT_VERSION: i64 = 2;
/// The schema of a segment with one row per commit (see [`batch`](super::batch)).
pub(super) const BATCH_VERSION: i64 = 3;
/// The columns every entry has, in both schemas of one row per entry (a macro, so that both are
/// one literal).
macro_rules! entry_columns {
    () => {
        "
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
    duration_ms INTEGER NOT NULL,"
    };
}
/// The legacy schema, for tests that make an old log to move.
#[cfg(test)]
pub(super) const LEGACY_SCHEMA: &str = concat!(
    "CREATE TABLE entries (",
    entry_columns!(),
    "
    prev_hash   BLOB NOT NULL,
    hash        BLOB NOT NULL
) STRICT;"
);
/// Where a segment starts: one row, the entry before its first (the start of a chain that runs
/// on from one file into the next).
macro_rules! segment_table {
    () => {
        "
CREATE TABLE segment (
    prev_id   INTEGER NOT NULL,
    prev_hash BLOB NOT NULL CHECK (length(prev_hash) = 32)
) STRICT;"
    };
}
/// A segment of one row per entry, written while a version that knows only rows may run beside
/// (see [`Format`](super::segment::Format)). An entry's `prev_hash` is not stored: it is the hash
/// of the row before (or the segment's start), and what [`verify`](super::verify) recomputes
/// anyway. `id` is the rowid: no other index.
pub(super) const SEGMENT_SCHEMA: &str = concat!(
    segment_table!(),
    "
CREATE TABLE entries (",
    entry_columns!(),
    "
    hash        BLOB NOT NULL
) STRICT;"
);
/// A segment of batches: one row per commit, by the id of its last entry (the rowid), with how
/// many entries it holds, the last one's hash (the chain's end, read without the blob) and the
/// entries themselves (see [`batch`](super::batch)).
pub(super) const BATCH_SCHEMA: &str = concat!(
    segment_table!(),
    "
CREATE TABLE batches (
    last    INTEGER PRIMARY KEY NOT NULL,
    entries INTEGER NOT NULL CHECK (entries > 0),
    hash    BLOB NOT NULL CHECK (length(hash) = 32),
    records BLOB NOT NULL
) STRICT;"
);
/// A segment's columns, in the order [`Record::from_row`] reads them.
pub(super) const COLUMNS: &str = "id, time, decision, reason, terminal, user, source, route, method, path, \
                                  upstream, status, bytes_in, bytes_out, duration_ms, hash";
/// The legacy log's columns: the same and `prev_hash` last.
pub(super) const LEGACY_COLUMNS: &str = "id, time, decision, reason, terminal, user, source, route, method, \
                                         path, upstream, status, bytes_in, bytes_out, duration_ms, hash, \
                                         prev_hash";

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

/// One access decision, as the gateway hands it to [`AuditLog::record`](super::AuditLog::record).
/// The log adds the id, the time (when `record` is called) and the hashes.
///
/// Build one with [`Entry::new`] and struct update syntax for the rest:
/// `Entry { user: Some(id.into()), ..Entry::new(Decision::Allow, "api", peer, "signed in") }`.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    pub decision: Decision,
    /// Why, in a few words: "password ok", "terminal disabled", "unknown user".
    pub reason: Text,
    /// The terminal's certificate common name (or WireGuard peer name), once known.
    pub terminal: Option<Text>,
    /// The person's ID, once known (also for a failed sign-in: the ID that was tried).
    pub user: Option<Text>,
    /// The peer address, `ip:port`.
    pub source: Text,
    /// Which route or stage: "api", "tcp:pacs", "handshake", "login".
    pub route: Text,
    pub method: Option<Text>,
    pub path: Option<String>,
    /// Which engine answered: "cloud", "local".
    pub upstream: Option<Text>,
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
            route: route.to_owned().into(),
            source: source.to_owned().into(),
            reason: reason.to_owned().into(),
            ..Entry::default()
        }
    }
}

/// A text field of an [`Entry`]. Most are the same few words on every request (the route, the
/// reason, the method, the engine) or the same for a connection's whole life (its terminal, its
/// peer address, its person): an entry shares those instead of copying them, so that the entry
/// of a request costs one allocation, its path, rather than one per field, on the worker that
/// makes it and again on the writer that frees it.
#[derive(Clone, Debug)]
pub enum Text {
    Static(&'static str),
    Shared(Arc<str>),
    Owned(String),
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Shared(s) => s,
            Text::Owned(s) => s,
        }
    }
}

/// Equal when the texts are, however each is held.
impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        **self == **other
    }
}

impl Eq for Text {}

impl Default for Text {
    fn default() -> Self {
        Text::Static("")
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Self {
        Text::Static(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text::Owned(s)
    }
}

impl From<Arc<str>> for Text {
    fn from(s: Arc<str>) -> Self {
        Text::Shared(s)
    }
}

impl From<&Arc<str>> for Text {
    fn from(s: &Arc<str>) -> Self {
        Text::Shared(s.clone())
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

/// An entry's stored fields, borrowed: what the chain hash covers and the insert binds. The
/// writer takes them from an [`Entry`] and the verifier from a [`Record`], so that the log
/// copies no text to store an entry (one is written for every request).
#[derive(Clone, Copy, Debug)]
pub struct Fields<'a> {
    pub id: u64,
    pub time: &'a str,
    pub decision: &'a str,
    pub reason: &'a str,
    pub terminal: Option<&'a str>,
    pub user: Option<&'a str>,
    pub source: &'a str,
    pub route: &'a str,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub status: Option<i64>,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub duration_ms: i64,
}

impl Entry {
    /// The entry as stored with `id` and `time` (numbers beyond SQLite's range are clamped).
    pub(super) fn fields<'a>(&'a self, id: u64, time: &'a str) -> Fields<'a> {
        let int = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        Fields {
            id,
            time,
            decision: self.decision.as_str(),
            reason: &self.reason,
            terminal: self.terminal.as_deref(),
            user: self.user.as_deref(),
            source: &self.source,
            route: &self.route,
            method: self.method.as_deref(),
            path: self.path.as_deref(),
            upstream: self.upstream.as_deref(),
            status: self.status.map(i64::from),
            bytes_in: int(self.bytes_in),
            bytes_out: int(self.bytes_out),
            duration_ms: int(self.duration_ms),
        }
    }
}

impl Fields<'_> {
    /// The entry as [`Record`], with its stored `hash` (the `prev_hash` left for the reader,
    /// who knows the entry before, to fill in).
    pub(super) fn to_record(self, hash: &[u8; 32]) -> Record {
        let own = |s: Option<&str>| s.map(str::to_owned);
        Record {
            id: self.id,
            time: self.time.to_owned(),
            decision: self.decision.to_owned(),
            reason: self.reason.to_owned(),
            terminal: own(self.terminal),
            user: own(self.user),
            source: self.source.to_owned(),
            route: self.route.to_owned(),
            method: own(self.method),
            path: own(self.path),
            upstream: own(self.upstream),
            status: self.status,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            duration_ms: self.duration_ms,
            prev_hash: String::new(),
            hash: hex::encode(hash),
        }
    }
}

impl Record {
    /// The fields the chain hash covers.
    pub(super) fn fields(&self) -> Fields<'_> {
        Fields {
            id: self.id,
            time: &self.time,
            decision: &self.decision,
            reason: &self.reason,
            terminal: self.terminal.as_deref(),
            user: self.user.as_deref(),
            source: &self.source,
            route: &self.route,
            method: self.method.as_deref(),
            path: self.path.as_deref(),
            upstream: self.upstream.as_deref(),
            status: self.status,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            duration_ms: self.duration_ms,
        }
    }

    /// A row of [`COLUMNS`], or of [`LEGACY_COLUMNS`] when `legacy`; without `legacy` the
    /// `prev_hash` is left empty for the reader, who knows the row before, to fill in.
    pub(super) fn from_row(row: &rusqlite::Row<'_>, legacy: bool) -> rusqlite::Result<Record> {
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
            hash: blob(15)?,
            prev_hash: if legacy { blob(16)? } else { String::new() },
        })
    }
}

/// An id as SQLite stores it (ids never come near `i64::MAX`).
pub(super) fn sql_int(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// A column that must hold a non-negative integer (an id).
pub(super) fn get_u64(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(i)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(i, v))
}
