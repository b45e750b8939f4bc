//! Reading the log back without writing anything: `kakehashi audit verify` recomputes the chain,
//! `kakehashi audit export` prints it, the status page reads the newest entries. All open the
//! existing segments only and read them in id order, one file after the other.

use std::path::Path;

use rusqlite::{Connection, params};
use time::OffsetDateTime;

use super::AUDIT_HEAD;
use super::batch::Decoder;
use super::chain::{chain_hash, head_problem, read_point, timestamp};
use super::entry::{COLUMNS, Fields, LEGACY_COLUMNS, Record, get_u64, sql_int};
use super::segment::{self, Layout, ORIGIN, PRUNED, Point, SEGMENTS};
use crate::store::{Result, StoreError};

/// The outcome of [`verify`]: how much was checked and the first break, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries in the local segments.
    pub entries: u64,
    /// The last entry's id (0 for an empty log) and hash (hex; zeros for an empty log).
    pub last_id: u64,
    pub last_hash: String,
    /// Entries after the one the head file records: committed just before a crash, before the
    /// head file caught up. Their chain is checked; only their removal could go unnoticed.
    pub unattested: u64,
    /// Entries before the first local one: pruned after a verified backup took them
    /// (`audit/pruned` records the last), 0 when nothing was.
    pub pruned: u64,
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

/// Recomputes the chain of every local segment, the links between them, its start against
/// `audit/pruned` and its end against `audit.head`.
///
/// A missing log (no segments, no `audit.head`) is an intact empty one; a missing data directory
/// is an error. Nothing is written.
pub fn verify(data_dir: &Path) -> Result<VerifyReport> {
    verify_vouched(data_dir, &[])
}

/// [`verify`] of a data directory some of whose segments are not there but vouched for, each
/// by its name and [`Span`]: a restored incremental backup, checked without fetching the
/// segments that earlier archives hold. A vouched segment that is there is read instead.
pub fn verify_vouched(data_dir: &Path, vouched: &[(String, Span)]) -> Result<VerifyReport> {
    std::fs::metadata(data_dir).map_err(StoreError::io("read the data directory", data_dir))?;
    let head = read_point(&data_dir.join(AUDIT_HEAD))?;
    let pruned = segment::pruned(data_dir)?;
    let mut check = ChainCheck::new(pruned, head);
    let here = segment::live_list(data_dir, pruned)?;
    let is_here = |name: &str| here.iter().any(|s| s.path.file_name().is_some_and(|n| n == name));
    /// A segment to check: a file here, or a vouched one.
    enum Next<'a> {
        Here(&'a Path),
        Vouched(&'a str, &'a Span),
    }
    // Every segment by the entry it starts after: a file's from its name, a vouched one's span.
    let mut order: Vec<(u64, Next<'_>)> = here
        .iter()
        .map(|s| (s.first.saturating_sub(1), Next::Here(&s.path)))
        .collect();
    order.extend(
        vouched
            .iter()
            .filter(|(n, _)| !is_here(n))
            .map(|(n, span)| (span.start.0, Next::Vouched(n, span))),
    );
    order.sort_by_key(|(start, _)| *start);
    for (_, next) in order {
        match next {
            Next::Here(path) => {
                check.segment(path)?;
            }
            Next::Vouched(name, span) => check.vouched(span, name),
        }
    }
    Ok(check.finish())
}

/// What one segment holds, as a chain check found it: the entry before its first, its last
/// entry, and how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: Point,
    pub last: Point,
    pub entries: u64,
}

/// The chain check, one segment at a time, in order: [`verify`] feeds it the data directory's
/// segments; a backup feeds it each segment's snapshot as it goes into the archive, so that the
/// counts it records were checked without keeping every copy at once.
#[derive(Debug)]
pub struct ChainCheck {
    report: VerifyReport,
    prev: [u8; 32],
    pruned: Option<Point>,
    head: Option<Point>,
    /// The hash of the entry the head file names, once passed.
    head_seen: Option<[u8; 32]>,
    started: bool,
}

impl ChainCheck {
    /// A check of a log whose last pruned entry is `pruned` and whose head file says `head`.
    pub fn new(pruned: Option<Point>, head: Option<Point>) -> ChainCheck {
        ChainCheck {
            report: VerifyReport {
                entries: 0,
                last_id: 0,
                last_hash: hex::encode([0u8; 32]),
                unattested: 0,
                pruned: 0,
                broken: None,
            },
            prev: [0; 32],
            pruned,
            head,
            head_seen: None,
            started: false,
        }
    }

    /// Checks the next segment (a file; only read). After a break, nothing more is checked.
    /// Returns what the segment holds when it checked out: a backup records it, so that a later
    /// archive can refer to the segment instead of holding it again.
    pub fn segment(&mut self, path: &Path) -> Result<Option<Span>> {
        if self.report.broken.is_some() {
            return Ok(None);
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some((conn, layout)) = segment::open(path)? else {
            if name != super::AUDIT_DB {
                self.report.broken = Some(Broken {
                    id: Some(self.report.last_id + 1),
                    what: format!("{}: a segment without a schema", path.display()),
                });
            }
            return Ok(None);
        };
        let start = segment::start(&conn, layout, path)?;
        if !self.begin(start, &name) {
            return Ok(None);
        }
        let before = self.report.entries;
        let legacy = layout == Layout::Legacy;
        // A batch that is not one, or does not match its row, is a break like any change.
        self.report.broken = match each_record(&conn, path, layout, |r| self.entry(r, legacy)) {
            Ok(broken) => broken,
            Err(StoreError::Corrupt { path, what }) => Some(Broken {
                id: Some(self.report.last_id + 1),
                what: format!("{}: {what}", path.display()),
            }),
            Err(e) => return Err(e),
        };
        Ok(self.report.broken.is_none().then(|| Span {
            start,
            last: (self.report.last_id, self.prev),
            entries: self.report.entries - before,
        }))
    }

    /// Takes a segment that is not here as `span` says it was when it was checked: an archive
    /// that refers to a segment an earlier archive holds (and verified) checks the links to it
    /// and on from its end, not its entries again.
    pub fn vouched(&mut self, span: &Span, name: &str) {
        if self.report.broken.is_some() || !self.begin(span.start, name) {
            return;
        }
        // Ids run on without a gap (a segment read here is held to that), so a segment's count
        // is its ends' difference: a span that says otherwise would add entries no one checked.
        if span.last.0.checked_sub(span.start.0) != Some(span.entries) {
            self.report.broken = Some(Broken {
                id: Some(span.start.0 + 1),
                what: format!(
                    "segment {name}, as an earlier archive records it, holds {} entries after entry {} \
                     and ends at entry {}: the count and the ends disagree",
                    span.entries, span.start.0, span.last.0
                ),
            });
            return;
        }
        if self.head.is_some_and(|h| h.0 > span.start.0 && h.0 < span.last.0) {
            self.report.broken = Some(Broken {
                id: self.head.map(|h| h.0),
                what: format!(
                    "{AUDIT_HEAD} names an entry inside segment {name}, which this archive does not hold"
                ),
            });
            return;
        }
        self.report.last_id = span.last.0;
        self.prev = span.last.1;
        self.report.last_hash = hex::encode(span.last.1);
        self.report.entries += span.entries;
        if self.head.is_some_and(|h| h.0 == span.last.0) {
            self.head_seen = Some(span.last.1);
        }
    }

    /// Links a segment that starts at `start`; false (the break recorded) if it does not link.
    fn begin(&mut self, start: Point, name: &str) -> bool {
        if let Some(what) = self.link(start, name) {
            self.report.broken = Some(Broken {
                id: Some(start.0 + 1),
                what,
            });
            return false;
        }
        self.report.last_id = start.0;
        self.prev = start.1;
        true
    }

    /// What is wrong with a segment that starts at `start`, given what came before.
    fn link(&mut self, start: Point, name: &str) -> Option<String> {
        if self.started {
            return (start != (self.report.last_id, self.prev)).then(|| {
                format!(
                    "segment {name} starts after entry {} with another hash than the segment before it ends                      with (entry {}): a segment was removed or replaced",
                    start.0, self.report.last_id
                )
            });
        }
        self.started = true;
        self.report.pruned = start.0;
        if self.head.is_some_and(|h| h.0 == start.0) {
            self.head_seen = Some(start.1);
        }
        let expected = self.pruned.unwrap_or(ORIGIN);
        if start == expected {
            return None;
        }
        Some(match self.pruned {
            None if start.0 == 0 => {
                "entry 1: its prev_hash is not zero: the log's beginning was removed or replaced".into()
            }
            None => format!(
                "entries 1 to {} are missing and {SEGMENTS}/{PRUNED} records no prune: the log's beginning was removed",
                start.0
            ),
            Some((id, _)) if id != start.0 => format!(
                "the first segment starts after entry {} but {SEGMENTS}/{PRUNED} records entries up to {id} as \
                 pruned: entries were removed",
                start.0
            ),
            Some(_) => format!(
                "the first segment starts from another entry {} than the one {SEGMENTS}/{PRUNED} records: the \
                 log's beginning was replaced",
                start.0
            ),
        })
    }

    /// Checks one entry; the break, if it is one.
    fn entry(&mut self, r: &mut Record, legacy: bool) -> Option<Broken> {
        let id = self.report.last_id + 1;
        let prev = hex::encode(self.prev);
        let fault = if r.id != id {
            Some(format!(
                "entry {id} is missing: the log goes from entry {} to entry {} (entries were deleted)",
                self.report.last_id, r.id
            ))
        } else if legacy && r.prev_hash != prev {
            Some(if id == 1 {
                "entry 1: its prev_hash is not zero: the log's beginning was removed or replaced".into()
            } else {
                format!(
                    "entry {id}: its prev_hash is not the hash of entry {}: the entry before it was \
                     removed or replaced",
                    self.report.last_id
                )
            })
        } else if hex::encode(chain_hash(&self.prev, &r.fields())) != r.hash {
            Some(format!(
                "entry {id}: its contents do not match its hash: it was changed after it was written"
            ))
        } else {
            None
        };
        if let Some(what) = fault {
            return Some(Broken { id: Some(id), what });
        }
        r.prev_hash = prev;
        // The stored hash equals the recomputed one, so it is 64 valid hex digits.
        if hex::decode_to_slice(&r.hash, &mut self.prev).is_err() {
            return Some(Broken {
                id: Some(id),
                what: "its hash is not 32 bytes".into(),
            });
        }
        if self.head.is_some_and(|h| h.0 == id) {
            self.head_seen = Some(self.prev);
        }
        self.report.entries += 1;
        self.report.last_id = r.id;
        self.report.last_hash.clone_from(&r.hash);
        None
    }

    /// The report, with the end checked against the head file.
    pub fn finish(mut self) -> VerifyReport {
        if self.report.broken.is_none() {
            let seen = self.head_seen;
            if !self.started && self.head.is_some_and(|(id, _)| id > 0) {
                self.report.broken = Some(Broken {
                    id: None,
                    what: format!(
                        "the log has no segment but {AUDIT_HEAD} records {} entries",
                        self.head.map_or(0, |h| h.0)
                    ),
                });
            } else if let Ok(Some(what)) = head_problem(self.head.as_ref(), self.report.last_id, |_| Ok(seen))
            {
                self.report.broken = Some(Broken { id: None, what });
            }
        }
        self.report.unattested = self.report.last_id - self.head.map_or(0, |h| h.0.min(self.report.last_id));
        self.report
    }
}

/// Calls `each` for every entry at or after `since` (a time as [`parse_since`] returns it), in
/// id order across the segments; returns how many there were. A missing log has none.
pub fn export(
    data_dir: &Path,
    since: Option<&str>,
    mut each: impl FnMut(&Record) -> Result<()>,
) -> Result<u64> {
    std::fs::metadata(data_dir).map_err(StoreError::io("read the data directory", data_dir))?;
    let mut count = 0;
    for seg in segment::live_list(data_dir, segment::pruned(data_dir)?)? {
        let Some((conn, layout)) = segment::open(&seg.path)? else {
            continue;
        };
        let mut prev = hex::encode(segment::start(&conn, layout, &seg.path)?.1);
        let mut failed = None;
        each_record(&conn, &seg.path, layout, |r| {
            if layout != Layout::Legacy {
                r.prev_hash = std::mem::replace(&mut prev, r.hash.clone());
            }
            if since.is_some_and(|s| r.time.as_str() < s) {
                return None;
            }
            match each(r) {
                Ok(()) => {
                    count += 1;
                    None
                }
                Err(e) => {
                    failed = Some(e);
                    Some(())
                }
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
    }
    Ok(count)
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

/// The last `window` entries' [`Recent`], with at most `refusals` refusals, read from the
/// newest segment back as far as the window reaches. A missing log has nothing recent.
pub fn recent(data_dir: &Path, window: u64, refusals: usize) -> Result<Recent> {
    let segments = segment::list(data_dir)?;
    let mut out = Recent::default();
    let mut bound: Option<u64> = None;
    for seg in segments.iter().rev() {
        let Some((conn, layout)) = segment::open(&seg.path)? else {
            continue;
        };
        let db = &seg.path;
        let bound = match bound {
            Some(b) => b,
            None => *bound.insert(segment::end(&conn, layout, db)?.0.saturating_sub(window)),
        };
        newest_first(&conn, db, layout, bound, |f| {
            if f.decision == "deny" && out.refusals.len() < refusals {
                out.refusals.push(Refusal {
                    time: f.time.to_owned(),
                    terminal: f.terminal.map(str::to_owned),
                    user: f.user.map(str::to_owned),
                    request: f.method.map(|m| format!("{m} {}", f.path.unwrap_or_default())),
                    reason: f.reason.to_owned(),
                });
            }
            if let Some(terminal) = f.terminal {
                match out.last_seen.iter_mut().find(|(t, _)| t == terminal) {
                    Some((_, at)) if at.as_str() < f.time => f.time.clone_into(at),
                    Some(_) => {}
                    None => out.last_seen.push((terminal.to_owned(), f.time.to_owned())),
                }
            }
        })?;
        if seg.first <= bound.saturating_add(1) {
            break;
        }
    }
    Ok(out)
}

/// The hash (hex) of entry `id` in the local log, if it has it (the last pruned entry's too):
/// a backup's audit head checked against the live chain.
pub fn hash_of(data_dir: &Path, id: u64) -> Result<Option<String>> {
    Ok(segment::hash_at(data_dir, id)?.map(hex::encode))
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

/// Streams a segment's entries in id order to `each` until it returns `Some` (a stop with a
/// value). A batch that does not decode, or does not match its row, is [`StoreError::Corrupt`].
pub(super) fn each_record<T>(
    conn: &Connection,
    db: &Path,
    layout: Layout,
    mut each: impl FnMut(&mut Record) -> Option<T>,
) -> Result<Option<T>> {
    match layout {
        Layout::Batches => each_batch(conn, db, 0, false, |entries| {
            entries.iter().find_map(|(f, hash)| each(&mut f.to_record(hash)))
        }),
        Layout::Rows | Layout::Legacy => each_row(conn, db, layout, 0, false, each),
    }
}

/// Calls `each` with every entry after id `after`, newest first, borrowed: the status page reads
/// thousands on every refresh and keeps a few.
fn newest_first(
    conn: &Connection,
    db: &Path,
    layout: Layout,
    after: u64,
    mut each: impl FnMut(&Fields<'_>),
) -> Result<()> {
    match layout {
        Layout::Batches => each_batch(conn, db, after, true, |entries| {
            entries
                .iter()
                .rev()
                .filter(|(f, _)| f.id > after)
                .for_each(|(f, _)| each(f));
            None::<()>
        }),
        Layout::Rows | Layout::Legacy => each_row(conn, db, layout, after, true, |r| {
            each(&r.fields());
            None::<()>
        }),
    }?;
    Ok(())
}

/// Calls `each` with every row after id `after` of a segment of one row per entry (oldest first,
/// or newest first). Stops at the first `Some`.
fn each_row<T>(
    conn: &Connection,
    db: &Path,
    layout: Layout,
    after: u64,
    newest_first: bool,
    mut each: impl FnMut(&mut Record) -> Option<T>,
) -> Result<Option<T>> {
    let fail = |e| StoreError::sqlite(db, "read the entries")(e);
    let legacy = layout == Layout::Legacy;
    let columns = if legacy { LEGACY_COLUMNS } else { COLUMNS };
    let order = if newest_first { "DESC" } else { "ASC" };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {columns} FROM entries WHERE id > ?1 ORDER BY id {order}"
        ))
        .map_err(fail)?;
    let mut rows = stmt.query(params![sql_int(after)]).map_err(fail)?;
    while let Some(row) = rows.next().map_err(fail)? {
        let mut record = Record::from_row(row, legacy).map_err(|e| StoreError::Corrupt {
            path: db.into(),
            what: format!("an entry does not have the expected columns: {e}"),
        })?;
        if let Some(stop) = each(&mut record) {
            return Ok(Some(stop));
        }
    }
    Ok(None)
}

/// One decoded batch: each entry's fields and stored hash.
type Batch<'a> = Vec<(Fields<'a>, [u8; 32])>;

/// Calls `each` with every batch whose last entry is after id `after` (oldest first, or newest
/// first), decoded and checked against its row: as many entries as it says, ending in the hash
/// it records. Stops at the first `Some`.
fn each_batch<T>(
    conn: &Connection,
    db: &Path,
    after: u64,
    newest_first: bool,
    mut each: impl FnMut(&Batch<'_>) -> Option<T>,
) -> Result<Option<T>> {
    let fail = |e| StoreError::sqlite(db, "read the entries")(e);
    let order = if newest_first { "DESC" } else { "ASC" };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT last, entries, hash, records FROM batches WHERE last > ?1 ORDER BY last {order}"
        ))
        .map_err(fail)?;
    let mut rows = stmt.query(params![sql_int(after)]).map_err(fail)?;
    while let Some(row) = rows.next().map_err(fail)? {
        let corrupt = |what: String| StoreError::Corrupt {
            path: db.into(),
            what,
        };
        let bad_row =
            |e: rusqlite::Error| corrupt(format!("a batch does not have the expected columns: {e}"));
        let last = get_u64(row, 0).map_err(bad_row)?;
        let count = get_u64(row, 1).map_err(bad_row)?;
        let hash: Vec<u8> = row.get(2).map_err(bad_row)?;
        let blob = row.get_ref(3).and_then(|v| Ok(v.as_blob()?)).map_err(bad_row)?;
        let first = (last + 1)
            .checked_sub(count)
            .filter(|_| count > 0)
            .ok_or_else(|| {
                corrupt(format!(
                    "the batch ending at entry {last} says it holds {count} entries"
                ))
            })?;
        // At most what one commit holds, whatever the row says.
        let mut entries = Vec::with_capacity(count.min(4096) as usize);
        for entry in Decoder::new(blob, first) {
            entries.push(entry.map_err(|e| corrupt(format!("the batch ending at entry {last}: {e}")))?);
        }
        if entries.len() as u64 != count {
            return Err(corrupt(format!(
                "the batch ending at entry {last} holds {} entries, but its row says {count}",
                entries.len()
            )));
        }
        if entries.last().map(|e| &e.1[..]) != Some(&hash[..]) {
            return Err(corrupt(format!(
                "the batch ending at entry {last}: its row's hash is not its last entry's"
            )));
        }
        if let Some(stop) = each(&entries) {
            return Ok(Some(stop));
        }
    }
    Ok(None)
}
