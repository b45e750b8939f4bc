//! Record → verify → tamper: every kind of damage is found and named.

use super::*;

use std::time::Duration;

use rusqlite::Connection;

fn entry(n: u64) -> Entry {
    Entry {
        terminal: Some("reception-1".into()),
        user: Some(format!("user{n}")),
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

fn sql(dir: &Path, statement: &str) {
    let conn = Connection::open(dir.join(AUDIT_DB)).unwrap();
    conn.execute_batch(statement).unwrap();
}

fn broken(dir: &Path) -> Broken {
    let report = verify(dir).unwrap();
    report
        .broken
        .clone()
        .unwrap_or_else(|| panic!("expected a break: {report:?}"))
}

#[test]
fn records_verify_and_reopen_continues_the_chain() {
    let tmp = log_with(5);
    let report = verify(tmp.path()).unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!((report.entries, report.last_id, report.unattested), (5, 5, 0));
    let head = std::fs::read_to_string(tmp.path().join(AUDIT_HEAD)).unwrap();
    assert_eq!(head, format!("5 {}\n", report.last_hash));

    let log = AuditLog::open(tmp.path()).unwrap();
    log.record_blocking(Entry::new(
        Decision::Deny,
        "login",
        "192.0.2.11:1",
        "unknown user",
    ));
    log.close_blocking().unwrap();
    let report = verify(tmp.path()).unwrap();
    assert!(report.is_intact(), "{report:?}");
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
    sql(
        tmp.path(),
        "UPDATE entries SET decision = 'allow', user = 'mallory' WHERE id = 3",
    );
    let b = broken(tmp.path());
    assert_eq!(b.id, Some(3));
    assert!(b.what.contains("do not match its hash"), "{}", b.what);

    let tmp = log_with(3);
    sql(
        tmp.path(),
        "UPDATE entries SET bytes_out = bytes_out + 1 WHERE id = 2",
    );
    assert_eq!(broken(tmp.path()).id, Some(2));
}

#[test]
fn a_deleted_middle_entry_is_a_gap() {
    let tmp = log_with(5);
    sql(tmp.path(), "DELETE FROM entries WHERE id = 3");
    let b = broken(tmp.path());
    assert_eq!(b.id, Some(3));
    assert!(b.what.contains("entry 3 is missing"), "{}", b.what);
}

#[test]
fn a_deleted_and_renumbered_entry_breaks_the_link() {
    let tmp = log_with(5);
    sql(
        tmp.path(),
        "DELETE FROM entries WHERE id = 3; UPDATE entries SET id = id - 1 WHERE id > 3",
    );
    let b = broken(tmp.path());
    assert_eq!(b.id, Some(3));
    assert!(
        b.what.contains("prev_hash is not the hash of entry 2"),
        "{}",
        b.what
    );
}

#[test]
fn a_truncated_tail_is_found_through_the_head_file_and_refused_at_open() {
    let tmp = log_with(5);
    sql(tmp.path(), "DELETE FROM entries WHERE id >= 4");
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
    for f in [AUDIT_DB, AUDIT_HEAD] {
        let mode = std::fs::metadata(tmp.path().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
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
        "CREATE TRIGGER full BEFORE INSERT ON entries BEGIN SELECT RAISE(ABORT, 'disk full'); END",
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
