//! Record → verify → tamper: every kind of damage is found and named.

use super::*;

use std::time::Duration;

use rusqlite::Connection;

use super::chain::chain_hash;
use super::entry;

fn entry(n: u64) -> Entry {
    Entry {
        terminal: Some("reception-1".into()),
        user: Some(format!("user{n}").into()),
        method: Some("POST".into()),
        path: Some("/api01rv2/patientgetv2?id=1".into()),
        upstream: Some("cloud".into()),
        status: Some(200),
        bytes_in: n,
        bytes_out: 2 * n,
        duration_ms: 3,
        ..Entry::new(Decision::Allow, "api", "192.0.2.10:50000", "password ok")
    }
}

/// A data directory with `n` entries recorded through the real writer.
fn log_with(n: u64) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::open(tmp.path()).unwrap();
    for i in 1..=n {
        log.record_blocking(entry(i));
    }
    log.close_blocking().unwrap();
    tmp
}

/// The live (newest) segment of the log in `dir`.
fn live(dir: &Path) -> std::path::PathBuf {
    segment::list(dir).unwrap().pop().expect("a segment").path
}

fn sql(dir: &Path, statement: &str) {
    let conn = Connection::open(live(dir)).unwrap();
    conn.execute_batch(statement).unwrap();
}

/// Rewrites the live segment's entries as `edit` leaves them, as someone with the file could
/// without recomputing the chain: every entry keeps the hash it was stored with, each run of consecutive ids becomes one batch (a removed entry leaves a gap
/// in the ids, as a deleted row did), and each batch's row is made to agree with its entries.
fn rewrite(dir: &Path, edit: impl FnOnce(&mut Vec<Record>)) {
    let path = live(dir);
    let conn = Connection::open(&path).unwrap();
    let mut records = Vec::new();
    read::each_record(&conn, &path, segment::Layout::Batches, |r| {
        records.push(r.clone());
        None::<()>
    })
    .unwrap();
    edit(&mut records);
    let tx = conn.unchecked_transaction().unwrap();
    tx.execute("DELETE FROM batches", []).unwrap();
    for run in records.chunk_by(|a, b| b.id == a.id + 1) {
        let mut blob = Vec::new();
        for r in run {
            batch::encode(&r.fields(), &hex_hash(&r.hash), &mut blob);
        }
        let last = run.last().unwrap();
        tx.execute(
            "INSERT INTO batches (last, entries, hash, records) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![last.id as i64, run.len() as i64, &hex_hash(&last.hash)[..], blob],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

fn broken(dir: &Path) -> Broken {
    let report = verify(dir).unwrap();
    report
        .broken
        .clone()
        .unwrap_or_else(|| panic!("expected a break: {report:?}"))
}

/// An entry's text is its characters, whichever way it is held: the hash and the columns see
/// only those.
#[test]
fn a_text_is_equal_however_it_is_held() {
    let shared: std::sync::Arc<str> = "api".into();
    let forms = [
        Text::from("api"),
        Text::from(String::from("api")),
        Text::from(shared),
    ];
    for a in &forms {
        for b in &forms {
            assert_eq!(a, b);
        }
        assert_eq!(&**a, "api");
        assert_ne!(a, &Text::from("tcp:pacs"));
    }
}

#[test]
fn records_verify_and_reopen_continues_the_chain() {
    let tmp = log_with(5);
    let report = verify(tmp.path()).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!((report.entries, report.last_id, report.unattested), (5, 5, 0));
    let head = std::fs::read_to_string(tmp.path().join(AUDIT_HEAD)).unwrap();
    assert_eq!(head, format!("5 {}\n", report.last_hash));

    let report = refuse_one(tmp.path(), DEFAULT_SEGMENT_BYTES);
    assert_eq!(report.entries, 6);

    let mut all = Vec::new();
    export(tmp.path(), None, |r| {
        all.push(r.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(all[0].prev_hash, hex::encode([0u8; 32]));
    assert_eq!(all[5].decision, "deny");
    assert_eq!(all[5].terminal, None);
    assert_eq!(all[1].prev_hash, all[0].hash);
    assert!(
        all[0].time.ends_with('Z') && all[0].time.len() == 24,
        "{}",
        all[0].time
    );
}

#[test]
fn an_edited_field_is_named_by_id() {
    let tmp = log_with(5);
    rewrite(tmp.path(), |all| {
        all[2].decision = "allow".into();
        all[2].user = Some("mallory".into());
    });
    let b = broken(tmp.path());
    assert_eq!(b.id, Some(3));
    assert!(b.what.contains("do not match its hash"), "{}", b.what);

    let tmp = log_with(3);
    rewrite(tmp.path(), |all| all[1].bytes_out += 1);
    assert_eq!(broken(tmp.path()).id, Some(2));
}

#[test]
fn a_deleted_middle_entry_is_a_gap() {
    let tmp = log_with(5);
    rewrite(tmp.path(), |all| {
        all.remove(2);
    });
    let b = broken(tmp.path());
    assert_eq!(b.id, Some(3));
    assert!(b.what.contains("entry 3 is missing"), "{}", b.what);
}

#[test]
fn a_deleted_and_renumbered_entry_breaks_the_link() {
    let tmp = log_with(5);
    rewrite(tmp.path(), |all| {
        all.remove(2);
        all[2..].iter_mut().for_each(|r| r.id -= 1);
    });
    let b = broken(tmp.path());
    assert_eq!(b.id, Some(3));
    assert!(
        b.what.contains("entry 3: its contents do not match its hash"),
        "{}",
        b.what
    );
}

#[test]
fn a_truncated_tail_is_found_through_the_head_file_and_refused_at_open() {
    let tmp = log_with(5);
    rewrite(tmp.path(), |all| all.truncate(3));
    let b = broken(tmp.path());
    assert_eq!(b.id, None);
    assert!(
        b.what.contains("ends at entry 3 but audit.head records entry 5"),
        "{}",
        b.what
    );
    let err = AuditLog::open(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("the last 2 entries were removed"), "{err}");
}

/// A batch's row and its blob must agree (its count, its last hash), and the blob must decode:
/// anything else is a break that names the batch and what is wrong, never a panic.
#[test]
fn a_batch_that_does_not_decode_or_match_its_row_is_a_break() {
    for (statement, says) in [
        (
            "UPDATE batches SET entries = entries + 1",
            "holds 3 entries, but its row says 4",
        ),
        (
            "UPDATE batches SET hash = zeroblob(32)",
            "its row's hash is not its last entry's",
        ),
        (
            "UPDATE batches SET records = substr(records, 1, length(records) - 1)",
            "entry 3: its hash at byte",
        ),
        (
            "UPDATE batches SET records = x'ff'",
            "entry 1: its time at byte 1 runs past the batch's end",
        ),
        ("UPDATE batches SET entries = 9", "says it holds 9 entries"),
    ] {
        let tmp = log_with(3);
        rewrite(tmp.path(), |_| ()); // one batch, whatever the writer made
        sql(tmp.path(), statement);
        let b = broken(tmp.path());
        assert_eq!(b.id, Some(1), "{statement}");
        assert!(
            b.what.contains("the batch ending at entry 3") && b.what.contains(says),
            "{statement}: {}",
            b.what
        );
    }
}

#[test]
fn a_missing_head_file_is_a_break_for_a_non_empty_log() {
    let tmp = log_with(2);
    std::fs::remove_file(tmp.path().join(AUDIT_HEAD)).unwrap();
    assert!(broken(tmp.path()).what.contains("audit.head is missing"));
    assert!(AuditLog::open(tmp.path()).is_err());
}

#[test]
fn a_missing_log_is_empty_and_intact_and_verify_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let report = verify(tmp.path()).unwrap();
    assert!(report.is_intact() && report.entries == 0);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    assert!(verify(&tmp.path().join("nope")).is_err());
}

#[test]
fn files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = log_with(1);
    for f in [live(tmp.path()), tmp.path().join(AUDIT_HEAD)] {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
}

fn wait_until_failing(log: &AuditLog) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !log.is_failing() {
        assert!(std::time::Instant::now() < deadline, "never reported failing");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_writers_extend_one_chain() {
    // The gateway and a command beside it (`gateway import-bundle`) both record; each commit
    // continues from the chain's end on disk, so the chain stays one.
    let tmp = log_with(1);
    let gateway = AuditLog::open(tmp.path()).unwrap();
    let command = AuditLog::open(tmp.path()).unwrap();
    for i in 0..20 {
        let log = if i % 2 == 0 { &gateway } else { &command };
        log.record_blocking(entry(i + 2));
        log.flush_blocking().unwrap();
    }
    let threads: Vec<_> = [gateway.clone(), command.clone()]
        .into_iter()
        .map(|log| {
            std::thread::spawn(move || {
                for i in 0..50 {
                    log.record_blocking(entry(i));
                }
                log.flush_blocking().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    command.close_blocking().unwrap();
    gateway.close_blocking().unwrap();
    let report = verify(tmp.path()).unwrap();
    assert_eq!(report.entries, 121);
    assert!(report.is_intact(), "{report:?}");
}

#[test]
fn a_failing_write_is_retried_reported_and_nothing_is_lost() {
    let tmp = log_with(1);
    // Writes fail while this trigger exists, as they would on a full disk.
    sql(
        tmp.path(),
        "CREATE TRIGGER full BEFORE INSERT ON batches BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    );
    let log = AuditLog::open(tmp.path()).unwrap();
    assert!(!log.is_failing());
    for i in 2..=4 {
        log.record_blocking(entry(i));
    }
    wait_until_failing(&log);
    sql(tmp.path(), "DROP TRIGGER full");
    log.flush_blocking().unwrap();
    assert!(!log.is_failing());
    let report = verify(tmp.path()).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.entries, 4);
}

#[test]
fn a_failing_head_write_is_retried_too() {
    let tmp = log_with(1);
    let log = AuditLog::open(tmp.path()).unwrap();
    let head = tmp.path().join(AUDIT_HEAD);
    std::fs::remove_file(&head).unwrap();
    std::fs::create_dir(&head).unwrap(); // a rename onto a directory fails
    log.record_blocking(entry(2));
    wait_until_failing(&log);
    std::fs::remove_dir(&head).unwrap();
    log.flush_blocking().unwrap();
    let report = verify(tmp.path()).unwrap();
    assert!(report.is_intact() && report.entries == 2, "{report:?}");
}

#[test]
fn since_accepts_rfc3339_and_dates_and_filters() {
    assert_eq!(parse_since("2025-04-01").unwrap(), "2025-04-01T00:00:00.000Z");
    assert_eq!(
        parse_since("2025-04-01T09:00:00+09:00").unwrap(),
        "2025-04-01T00:00:00.000Z"
    );
    assert!(parse_since("yesterday").is_err());
    assert!(parse_since("2025-13-01").is_err());

    let tmp = log_with(3);
    let count = |since: &str| export(tmp.path(), Some(&parse_since(since).unwrap()), |_| Ok(())).unwrap();
    assert_eq!(count("2000-01-01"), 3);
    assert_eq!(count("2999-01-01"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_record_and_close_and_throughput() {
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::open(tmp.path()).unwrap();
    let n: u64 = 50_000;
    let start = std::time::Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in 0..n / 4 {
                    log.record(entry(t * n + i)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    log.close().await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "audit throughput: {n} entries in {secs:.2} s = {:.0} entries/s",
        n as f64 / secs
    );
    let report = verify(tmp.path()).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.entries, n);
}

#[tokio::test]
async fn a_release_after_a_burst_loses_nothing_and_the_log_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::open(tmp.path()).unwrap();
    for i in 1..=10_000 {
        log.record(entry(i)).await;
    }
    log.release().await.unwrap();
    log.record(entry(10_001)).await;
    log.close().await.unwrap();
    let report = verify(tmp.path()).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.entries, 10_001);
}

/// A log of `n` entries in segments sealed at `seal_at` bytes.
fn segmented(n: u64, seal_at: u64) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::open_with(tmp.path(), seal_at).unwrap();
    for i in 1..=n {
        log.record_blocking(entry(i));
        if i % 97 == 0 {
            log.flush_blocking().unwrap();
        }
    }
    log.close_blocking().unwrap();
    tmp
}

fn all(dir: &Path) -> Vec<Record> {
    let mut out = Vec::new();
    export(dir, None, |r| {
        out.push(r.clone());
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn segments_roll_over_and_the_chain_runs_on_across_them() {
    let tmp = segmented(3000, 64 * 1024);
    let segments = segment::list(tmp.path()).unwrap();
    assert!(segments.len() >= 3, "{segments:?}");
    assert_eq!(segments[0].first, 1);
    let report = verify(tmp.path()).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!((report.entries, report.last_id, report.pruned), (3000, 3000, 0));

    // Every entry once, in order, each linked to the one before, across the files.
    let records = all(tmp.path());
    assert_eq!(records.len(), 3000);
    assert_eq!(records[0].prev_hash, hex::encode([0u8; 32]));
    for pair in records.windows(2) {
        assert_eq!(pair[1].id, pair[0].id + 1);
        assert_eq!(pair[1].prev_hash, pair[0].hash, "entry {}", pair[1].id);
    }
    // A segment's first entry chains from the one before's last, and `hash_of` finds both.
    for seg in &segments[1..] {
        let i = (seg.first - 1) as usize;
        assert_eq!(records[i].prev_hash, records[i - 1].hash);
        assert_eq!(
            hash_of(tmp.path(), seg.first).unwrap().as_deref(),
            Some(records[i].hash.as_str())
        );
        assert_eq!(
            hash_of(tmp.path(), seg.first - 1).unwrap().as_deref(),
            Some(records[i - 1].hash.as_str())
        );
    }
    assert_eq!(hash_of(tmp.path(), 3001).unwrap(), None);

    // The newest entries reach back over a segment boundary.
    let window = 3000 - segments.last().unwrap().first + 10;
    let recent = recent(tmp.path(), window, 5).unwrap();
    assert_eq!(recent.last_seen.len(), 1);
    assert!(recent.refusals.is_empty());

    // Reopened, the writer continues the chain in the live segment.
    let report = refuse_one(tmp.path(), 64 * 1024);
    assert_eq!(report.last_id, 3001);
    assert_eq!(recent_refusals(tmp.path()), 1);
}

/// Reopens the log, records one refusal, closes it; the log verifies intact after.
fn refuse_one(dir: &Path, seal_at: u64) -> VerifyReport {
    let log = AuditLog::open_with(dir, seal_at).unwrap();
    log.record_blocking(Entry::new(
        Decision::Deny,
        "login",
        "192.0.2.11:1",
        "unknown user",
    ));
    log.close_blocking().unwrap();
    let report = verify(dir).unwrap();
    assert!(report.is_intact(), "{report:?}");
    report
}

fn recent_refusals(dir: &Path) -> usize {
    recent(dir, 100, 10).unwrap().refusals.len()
}

#[test]
fn a_removed_or_replaced_segment_is_a_break() {
    let tmp = segmented(2000, 64 * 1024);
    let segments = segment::list(tmp.path()).unwrap();
    assert!(segments.len() >= 3, "{segments:?}");

    // The first one gone, no prune recorded.
    let first = tmp.path().join("first.db");
    std::fs::rename(&segments[0].path, &first).unwrap();
    let b = broken(tmp.path());
    assert!(b.what.contains("records no prune"), "{}", b.what);
    std::fs::rename(&first, &segments[0].path).unwrap();
    assert!(verify(tmp.path()).unwrap().is_intact());

    // One in the middle gone.
    std::fs::rename(&segments[1].path, &first).unwrap();
    let b = broken(tmp.path());
    assert_eq!(b.id, Some(segments[2].first));
    assert!(b.what.contains("a segment was removed or replaced"), "{}", b.what);
    std::fs::rename(&first, &segments[1].path).unwrap();

    // A segment's start rewritten.
    tamper(
        &segments[1].path,
        &["UPDATE segment SET prev_hash = zeroblob(32)"],
        "a segment was removed or replaced",
    );
}

/// Runs `statements` on the segment at `path`; the log must then break, saying `says`.
fn tamper(path: &Path, statements: &[&str], says: &str) {
    let conn = Connection::open(path).unwrap();
    for statement in statements {
        conn.execute(statement, []).unwrap();
    }
    drop(conn);
    let dir = path.parent().and_then(Path::parent).unwrap();
    let what = broken(dir).what;
    assert!(what.contains(says), "{what}");
}

#[test]
fn pruning_removes_only_sealed_segments_a_verified_copy_holds() {
    let tmp = segmented(2000, 64 * 1024);
    let segments = segment::list(tmp.path()).unwrap();
    let second_last = segments[2].first - 1;

    // Nothing off the box: nothing goes, however much room is wanted.
    assert!(segment::prune(tmp.path(), 0, |_| false).unwrap().is_empty());
    // Off the box up to the middle of the second segment: only the first goes.
    let pruned = segment::prune(tmp.path(), second_last - 1, |_| false).unwrap();
    assert_eq!(pruned.len(), 1, "{pruned:?}");
    assert_eq!((pruned[0].first, pruned[0].last), (1, segments[1].first - 1));
    assert!(pruned[0].bytes > 0);
    assert!(!segments[0].path.exists());
    let report = verify(tmp.path()).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.pruned, segments[1].first - 1);
    assert_eq!(report.entries, 2000 - report.pruned);
    // The last pruned entry's hash is still known (the next segment starts from it).
    assert!(hash_of(tmp.path(), report.pruned).unwrap().is_some());
    assert_eq!(hash_of(tmp.path(), 1).unwrap(), None);

    // Everything off the box, but the live segment stays, and `enough` stops early.
    let pruned = segment::prune(tmp.path(), u64::MAX, |freed| freed > 0).unwrap();
    assert_eq!(pruned.len(), 1);
    let pruned = segment::prune(tmp.path(), u64::MAX, |_| false).unwrap();
    let left = segment::list(tmp.path()).unwrap();
    assert_eq!(left.len(), 1, "only the live segment: {left:?} after {pruned:?}");
    assert!(verify(tmp.path()).unwrap().is_intact());

    // The writer goes on from there.
    let log = AuditLog::open_with(tmp.path(), 64 * 1024).unwrap();
    log.record_blocking(entry(1));
    log.close_blocking().unwrap();
    let report = verify(tmp.path()).unwrap();
    assert!(report.is_intact() && report.last_id == 2001, "{report:?}");

    // A forged prune record (more pruned than the segments say) is a break.
    let floor = tmp.path().join(segment::SEGMENTS).join(segment::PRUNED);
    std::fs::write(
        &floor,
        format!("{} {}\n", report.pruned - 5, hex::encode([1u8; 32])),
    )
    .unwrap();
    assert!(broken(tmp.path()).what.contains("pruned"));
}

#[test]
fn a_prune_cut_short_leaves_a_segment_that_is_ignored_then_removed() {
    let tmp = segmented(1500, 64 * 1024);
    let segments = segment::list(tmp.path()).unwrap();
    // Recorded as pruned, not yet removed: what a crash between the two leaves.
    let records = all(tmp.path());
    let last = segments[1].first - 1;
    let floor = tmp.path().join(segment::SEGMENTS).join(segment::PRUNED);
    std::fs::write(&floor, format!("{last} {}\n", records[(last - 1) as usize].hash)).unwrap();
    let report = verify(tmp.path()).unwrap();
    assert!(report.is_intact() && report.pruned == last, "{report:?}");
    assert_eq!(all(tmp.path()).len() as u64, 1500 - last);
    assert_eq!(segment::prune(tmp.path(), 0, |_| false).unwrap(), vec![]);
    assert!(!segments[0].path.exists(), "the leftover is removed");
}

/// The first segment of a log in `dir` as versions before batches wrote it: schema 2, entries
/// 1 to 10 (the head file attesting them), and the connection that wrote them, its WAL not yet
/// folded in while it is open.
fn rows_segment(dir: &Path) -> (std::path::PathBuf, Connection) {
    let rows = dir.join(segment::SEGMENTS).join(segment::file_name(1));
    std::fs::create_dir(rows.parent().unwrap()).unwrap();
    let conn = Connection::open(&rows).unwrap();
    conn.execute_batch(entry::SEGMENT_SCHEMA).unwrap();
    conn.execute("INSERT INTO segment VALUES (0, zeroblob(32))", [])
        .unwrap();
    conn.pragma_update(None, "user_version", 2).unwrap();
    let _: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    write_rows(&conn, false, dir);
    (rows, conn)
}

/// Writes entries 1 to 10 as rows, as the versions before batches did (each with its
/// `prev_hash` in the `legacy` layout), and the head file in `dir` that attests them.
fn write_rows(conn: &Connection, legacy: bool, dir: &Path) {
    let (columns, n) = match legacy {
        true => (entry::LEGACY_COLUMNS, 17),
        false => (entry::COLUMNS, 16),
    };
    let marks: Vec<String> = (1..=n).map(|i| format!("?{i}")).collect();
    let insert = format!("INSERT INTO entries ({columns}) VALUES ({})", marks.join(","));
    let mut prev = [0u8; 32];
    for id in 1..=10 {
        let e = entry(id);
        let r = e.fields(id, "2025-04-01T00:00:00.000Z");
        let hash = chain_hash(&prev, &r);
        let values = rusqlite::params![
            id as i64,
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
            &hash[..],
            &prev[..]
        ];
        conn.execute(&insert, &values[..n]).unwrap();
        prev = hash;
    }
    std::fs::write(dir.join(AUDIT_HEAD), format!("10 {}\n", hex::encode(prev))).unwrap();
}

#[test]
fn a_legacy_audit_db_is_read_in_place_and_moved_into_segments_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join(AUDIT_DB);
    {
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch(entry::LEGACY_SCHEMA).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        write_rows(&conn, true, tmp.path());
    }
    let before = all(tmp.path());
    assert_eq!(before.len(), 10);
    let report = verify(tmp.path()).unwrap();
    assert!(report.is_intact() && report.last_id == 10, "{report:?}");

    let log = AuditLog::open(tmp.path()).unwrap();
    log.record_blocking(entry(11));
    log.close_blocking().unwrap();
    assert!(!db.exists(), "moved");
    let segments = segment::list(tmp.path()).unwrap();
    assert_eq!(segments.iter().map(|s| s.first).collect::<Vec<_>>(), vec![1, 11]);
    let report = verify(tmp.path()).unwrap();
    assert!(report.is_intact() && report.last_id == 11, "{report:?}");
    let after = all(tmp.path());
    assert_eq!(&after[..10], &before[..], "nothing lost or changed");
    assert_eq!(after[10].prev_hash, before[9].hash);

    // Tampering with the moved legacy rows is still caught by their prev_hash.
    tamper(
        &segments[0].path,
        &[
            "DELETE FROM entries WHERE id = 3",
            "UPDATE entries SET id = id - 1 WHERE id > 3",
        ],
        "prev_hash is not the hash of entry 2",
    );
}

/// A segment of one row per entry, as versions before batches wrote it, is read where it is and
/// extended in rows by every writer that an older version may run beside; the gateway that no
/// older version runs beside seals it (its WAL folded in), and the chain goes on in batches.
#[test]
fn a_segment_of_rows_goes_on_in_rows_until_the_log_may_move_to_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let (rows, conn) = rows_segment(tmp.path());
    drop(conn);
    let before = all(tmp.path());
    assert_eq!(before.len(), 10);
    assert_eq!(recent(tmp.path(), 4, 10).unwrap().last_seen.len(), 1);

    let firsts = || -> Vec<u64> {
        segment::list(tmp.path())
            .unwrap()
            .iter()
            .map(|s| s.first)
            .collect()
    };
    let log = AuditLog::open(tmp.path()).unwrap();
    log.record_blocking(entry(11));
    log.close_blocking().unwrap();
    assert_eq!(firsts(), vec![1], "still rows");
    let report = verify(tmp.path()).unwrap();
    assert!(report.is_intact() && report.last_id == 11, "{report:?}");

    // Full, it is followed by another of rows.
    let log = AuditLog::open_with(tmp.path(), 1).unwrap();
    log.record_blocking(entry(12));
    log.close_blocking().unwrap();
    assert_eq!(firsts(), vec![1, 13]);
    let next = segment::list(tmp.path()).unwrap().pop().unwrap();
    assert_eq!(
        segment::open(&next.path).unwrap().unwrap().1,
        segment::Layout::Rows
    );

    // The gateway: the empty segment of rows gives way to one of batches.
    let log = AuditLog::open_as(tmp.path(), DEFAULT_SEGMENT_BYTES, Format::Batches).unwrap();
    log.record_blocking(entry(13));
    log.close_blocking().unwrap();
    assert_eq!(firsts(), vec![1, 13]);
    let batches = segment::list(tmp.path()).unwrap().pop().unwrap();
    assert_eq!(
        segment::open(&batches.path).unwrap().unwrap().1,
        segment::Layout::Batches
    );
    let report = verify(tmp.path()).unwrap();
    assert!(report.is_intact() && report.last_id == 13, "{report:?}");
    let after = all(tmp.path());
    assert_eq!(&after[..10], &before[..], "nothing lost or changed");
    assert_eq!(after[10].prev_hash, before[9].hash);
    assert_eq!(after[12].prev_hash, after[11].hash);
    for id in [10, 12, 13] {
        let hash = read::hash_of(tmp.path(), id).unwrap();
        assert_eq!(hash.as_ref(), Some(&after[id as usize - 1].hash), "entry {id}");
    }
    assert_eq!(recent(tmp.path(), 5, 10).unwrap().last_seen.len(), 1);

    // A writer that keeps the layout goes on in batches now.
    let log = AuditLog::open(tmp.path()).unwrap();
    log.record_blocking(entry(14));
    log.close_blocking().unwrap();
    assert_eq!(firsts(), vec![1, 13]);
    assert_eq!(verify(tmp.path()).unwrap().last_id, 14);

    // Its rows are still held to their hashes.
    tamper(
        &rows,
        &["UPDATE entries SET user = 'mallory' WHERE id = 4"],
        "entry 4: its contents do not match its hash",
    );
}

/// A segment of rows that holds entries is sealed where it is when the log moves to batches,
/// its WAL folded in.
#[test]
fn a_segment_of_rows_with_entries_is_sealed_when_the_log_moves() {
    let tmp = tempfile::tempdir().unwrap();
    let (rows, conn) = rows_segment(tmp.path());
    let wal = std::path::PathBuf::from(format!("{}-wal", rows.display()));
    assert!(std::fs::metadata(&wal).unwrap().len() > 0);

    let log = AuditLog::open_as(tmp.path(), DEFAULT_SEGMENT_BYTES, Format::Batches).unwrap();
    log.record_blocking(entry(11));
    log.close_blocking().unwrap();
    let firsts: Vec<u64> = segment::list(tmp.path())
        .unwrap()
        .iter()
        .map(|s| s.first)
        .collect();
    assert_eq!(firsts, vec![1, 11]);
    assert_eq!(std::fs::metadata(&wal).map_or(0, |m| m.len()), 0, "checkpointed");
    drop(conn);
    let report = verify(tmp.path()).unwrap();
    assert!(report.is_intact() && report.last_id == 11, "{report:?}");
}

#[test]
#[ignore = "a measurement: cargo test --release -p kakehashi-gateway bytes_per_entry -- --ignored --nocapture"]
fn bytes_per_entry() {
    let n = 100_000;
    let tmp = segmented(n, 1 << 40);
    let bytes: u64 = segment::list(tmp.path())
        .unwrap()
        .iter()
        .map(|s| segment::allocated(&s.path))
        .sum();
    eprintln!(
        "audit: {n} entries, {bytes} bytes on disk, {:.1} bytes an entry",
        bytes as f64 / n as f64
    );
}

#[test]
fn a_vouched_segment_stands_in_for_its_file_and_a_false_span_is_a_break() {
    let tmp = segmented(2000, 64 * 1024);
    let segments = segment::list(tmp.path()).unwrap();
    assert!(segments.len() >= 3, "{segments:?}");
    let whole = verify(tmp.path()).unwrap();
    let head = chain::read_point(&tmp.path().join(AUDIT_HEAD)).unwrap();
    let mut check = ChainCheck::new(None, head);
    let spans: Vec<Span> = segments
        .iter()
        .map(|s| check.segment(&s.path).unwrap().expect("intact"))
        .collect();
    assert_eq!(check.finish(), whole);

    // The second segment away, vouched for by its span: the same report.
    let name = |i: usize| {
        segments[i]
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let away = tmp.path().join("away.db");
    std::fs::rename(&segments[1].path, &away).unwrap();
    assert!(!verify(tmp.path()).unwrap().is_intact(), "a gap without the span");
    assert_eq!(verify_vouched(tmp.path(), &[(name(1), spans[1])]).unwrap(), whole);

    // A span that ends elsewhere than the next segment starts, or starts elsewhere than the one
    // before ends: a break at the link.
    let mut ends_wrong = spans[1];
    ends_wrong.last.1[0] ^= 1;
    let report = verify_vouched(tmp.path(), &[(name(1), ends_wrong)]).unwrap();
    assert_eq!(report.broken.map(|b| b.id), Some(Some(segments[2].first)));
    let mut starts_wrong = spans[1];
    starts_wrong.start.0 += 1;
    let report = verify_vouched(tmp.path(), &[(name(1), starts_wrong)]).unwrap();
    assert!(report.broken.is_some(), "{report:?}");
    // A span whose count disagrees with its ends, either way: a break at its first entry, not
    // entries counted that no one checked.
    for entries in [spans[1].entries + 1, spans[1].entries - 1] {
        let counted_wrong = Span { entries, ..spans[1] };
        let report = verify_vouched(tmp.path(), &[(name(1), counted_wrong)]).unwrap();
        let broken = report.broken.expect("a break");
        assert_eq!(broken.id, Some(spans[1].start.0 + 1));
        assert!(
            broken.what.contains("the count and the ends disagree"),
            "{}",
            broken.what
        );
    }

    // The file back: it is read, and a span for it is not needed.
    std::fs::rename(&away, &segments[1].path).unwrap();
    assert_eq!(
        verify_vouched(tmp.path(), &[(name(1), ends_wrong)]).unwrap(),
        whole
    );
}

/// The head file may lag a stream of commits, but never a flush, and never the log at rest.
#[test]
fn the_head_file_follows_every_flush_and_every_quiet_moment() {
    let tmp = tempfile::tempdir().unwrap();
    let head = || chain::read_point(&tmp.path().join(AUDIT_HEAD)).unwrap().unwrap();
    let log = AuditLog::open(tmp.path()).unwrap();
    let mut recorded = 0;
    for round in 0..3 {
        // A burst that spans several commits, then a flush.
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(120) {
            log.record_blocking(entry(recorded));
            recorded += 1;
        }
        log.flush_blocking().unwrap();
        let report = verify(tmp.path()).unwrap();
        assert_eq!(report.entries, recorded, "round {round}");
        assert_eq!(
            head(),
            (recorded, hex_hash(&report.last_hash)),
            "round {round}: after a flush"
        );
        // One entry and no flush: the queue is empty after its commit, so the head follows.
        log.record_blocking(entry(recorded));
        recorded += 1;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while head().0 != recorded {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: the head stayed at {:?}",
                head().0
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    log.close_blocking().unwrap();
    let report = verify(tmp.path()).unwrap();
    assert!(report.is_intact(), "{report:?}");
}

/// Under a steady stream the head file moves about every `HEAD_EVERY`, not after each 20 ms
/// commit: the queue is never empty once a commit is done, so no commit counts as quiet.
#[test]
fn the_head_file_moves_seldom_under_a_steady_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let head_file = tmp.path().join(AUDIT_HEAD);
    let log = AuditLog::open(tmp.path()).unwrap();
    let stream = std::time::Duration::from_millis(800);
    let stop = std::sync::atomic::AtomicBool::new(false);
    // Each move writes a new end into the head: count the ends it has held.
    let moves = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let mut seen = std::collections::HashSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(Some(point)) = chain::read_point(&head_file) {
                    seen.insert(point);
                }
                std::thread::sleep(std::time::Duration::from_micros(500));
            }
            seen.len()
        });
        let started = std::time::Instant::now();
        let mut recorded = 0;
        while started.elapsed() < stream {
            // Several thousand a second, evenly: a busy gateway, and no segment fills.
            log.record_blocking(entry(recorded));
            recorded += 1;
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        watcher.join().unwrap()
    });
    // 800 ms is 40 commit windows; the head may move at the start, every 250 ms and at the end.
    assert!(moves <= 8, "the head file moved {moves} times in {stream:?}");
    log.close_blocking().unwrap();
    assert!(verify(tmp.path()).unwrap().is_intact());
}

fn hex_hash(text: &str) -> [u8; 32] {
    hex::decode(text).unwrap().try_into().unwrap()
}

/// A writer that falls behind leaves the idle scheduling class once [`BEHIND`] entries wait, and
/// goes back once it has caught up ([`pace`]).
#[test]
fn a_writer_that_falls_behind_is_called_back_from_the_idle_class() {
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::open(tmp.path()).unwrap();
    let idle_within = |want: bool| {
        (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            log.pace.idle() == want
        })
    };
    if !idle_within(true) {
        // Not allowed back from the idle class here (neither CAP_SYS_NICE nor RLIMIT_NICE 20):
        // the writer stays in the normal class, which the other tests cover.
        return;
    }
    // Another process holds the lock: the writer takes the first entry off the queue, cannot
    // commit it, and the queue fills behind it.
    let lock = std::fs::File::open(tmp.path().join(AUDIT_LOCK)).unwrap();
    lock.lock().unwrap();
    log.record_blocking(entry(1));
    assert!((0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        log.tx.capacity() == QUEUE
    }));
    // Its window (20 ms) over, it waits for the lock.
    std::thread::sleep(Duration::from_millis(200));
    for i in 2..=BEHIND as u64 {
        log.record_blocking(entry(i));
    }
    assert!(log.pace.idle(), "called back before it was behind");
    log.record_blocking(entry(BEHIND as u64 + 1));
    assert!(!log.pace.idle(), "still idle with {BEHIND} entries waiting");
    lock.unlock().unwrap();
    assert!(idle_within(true), "not idle again once caught up");
    log.close_blocking().unwrap();
    let verified = super::verify(tmp.path()).unwrap();
    assert_eq!(verified.entries, BEHIND as u64 + 1);
}
