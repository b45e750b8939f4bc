//! `kakehashi audit`: the hash-chained log, verified and exported by the binary, damaged with
//! SQLite as someone with file access could.
//!
//! Until the gateway runtime records decisions itself, entries are written here through the
//! gateway's own writer (`kakehashi_gateway::audit::AuditLog`), exactly as the gateway will.

use std::path::Path;

use kakehashi_gateway::audit::{AuditLog, Decision, Entry};

use crate::support::*;

/// A data directory whose log holds `n` entries, alternately allowed and denied, and a refused
/// sign-in: each committed on its own, so that each is a row (a batch) of its own, as on a quiet
/// gateway.
fn log_with(n: u64) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = AuditLog::open(tmp.path()).expect("open the log");
    for i in 1..=n {
        let decision = if i % 2 == 1 {
            Decision::Allow
        } else {
            Decision::Deny
        };
        log.record_blocking(Entry {
            terminal: Some("reception-1".into()),
            user: Some("reception".into()),
            method: Some("POST".into()),
            path: Some(format!("/api01rv2/patientgetv2?id={i}")),
            upstream: Some("cloud".into()),
            status: Some(200),
            bytes_in: 100 + i,
            bytes_out: 2000,
            duration_ms: 7,
            ..Entry::new(decision, "api", "192.0.2.10:50000", "password ok")
        });
        log.flush_blocking().expect("flush");
    }
    log.record_blocking(Entry::new(
        Decision::Deny,
        "login",
        "192.0.2.11:40000",
        "unknown user \"mallory\"\nforged line",
    ));
    log.close_blocking().expect("close");
    tmp
}

fn audit(dir: &Path, args: &str) -> Run {
    sh(&format!("kakehashi audit {args} --data-dir {}", s(dir)))
}

fn sql(dir: &Path, statement: &str) {
    rusqlite::Connection::open(audit_live(dir))
        .and_then(|c| c.execute_batch(statement))
        .expect("change audit.db");
}

#[test]
fn an_intact_log_verifies_and_exports_as_text_and_json_lines() {
    let tmp = log_with(4);
    let out = audit(tmp.path(), "verify").ok();
    assert!(out.starts_with("audit log intact: 5 entries, head 5 "), "{out}");
    let head = std::fs::read_to_string(tmp.path().join("audit.head")).expect("head");
    assert!(
        out.contains(head.split_whitespace().nth(1).expect("hash")),
        "{out}\n{head}"
    );
    assert_eq!(mode(&audit_live(tmp.path())), 0o600);
    assert_eq!(mode(&tmp.path().join("audit.head")), 0o600);

    let text = audit(tmp.path(), "export").ok();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        5,
        "one line per entry, a newline in a reason stays escaped:\n{text}"
    );
    assert!(
        lines[0].starts_with("1 20") && lines[0].contains(" allow route=api "),
        "{text}"
    );
    assert!(
        lines[0].contains("terminal=reception-1 user=reception method=POST"),
        "{text}"
    );
    assert!(
        lines[0].contains("status=200 in=101 out=2000 ms=7 reason=\"password ok\""),
        "{text}"
    );
    assert!(lines[1].contains(" deny "), "{text}");
    assert!(
        lines[4].contains("route=login") && lines[4].contains("\\nforged line"),
        "{text}"
    );
    assert!(
        !lines[4].contains("terminal="),
        "absent fields are left out: {text}"
    );

    let json = audit(tmp.path(), "export --json").ok();
    let objects: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(objects.len(), 5);
    assert_eq!(objects[0]["id"], 1);
    assert_eq!(objects[0]["decision"], "allow");
    assert_eq!(objects[0]["prev_hash"], "0".repeat(64));
    assert_eq!(objects[1]["prev_hash"], objects[0]["hash"]);
    assert_eq!(objects[4]["terminal"], serde_json::Value::Null);
    assert_eq!(objects[4]["reason"], "unknown user \"mallory\"\nforged line");

    assert_eq!(
        audit(tmp.path(), "export --since 2000-01-01")
            .ok()
            .lines()
            .count(),
        5
    );
    assert_eq!(
        audit(tmp.path(), "export --since 2999-01-01T00:00:00+09:00").ok(),
        ""
    );
    let since = objects[2]["time"].as_str().expect("time");
    let later = audit(tmp.path(), &format!("export --json --since {since}")).ok();
    assert!(later.lines().count() >= 3, "{later}");
}

#[test]
fn an_edited_entry_is_named() {
    let tmp = log_with(4);
    // Another patient, in place: the same number of bytes, so the entry still reads.
    sql(
        tmp.path(),
        "UPDATE batches SET records = CAST(replace(CAST(records AS TEXT), '?id=2', '?id=7') AS BLOB)",
    );
    audit(tmp.path(), "verify").fails_with(&[
        "audit log BROKEN at entry 2",
        "do not match its hash",
        "changed after",
    ]);
}

#[test]
fn a_deleted_entry_is_named() {
    let tmp = log_with(4);
    sql(tmp.path(), "DELETE FROM batches WHERE last = 3");
    audit(tmp.path(), "verify").fails_with(&["BROKEN at entry 3", "entry 3 is missing"]);
}

#[test]
fn a_truncated_tail_is_found_through_the_head_file() {
    let tmp = log_with(4);
    sql(tmp.path(), "DELETE FROM batches WHERE last = 5");
    audit(tmp.path(), "verify").fails_with(&[
        "audit log BROKEN",
        "the log ends at entry 4 but audit.head records entry 5",
    ]);
    std::fs::remove_file(tmp.path().join("audit.head")).expect("rm");
    audit(tmp.path(), "verify").fails_with(&["audit.head is missing"]);
}

#[test]
fn an_empty_or_missing_log_and_bad_input() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let before = snapshot(tmp.path());
    let out = audit(tmp.path(), "verify").ok();
    assert!(out.starts_with("audit log intact: 0 entries"), "{out}");
    assert_eq!(audit(tmp.path(), "export").ok(), "");
    assert_eq!(audit(tmp.path(), "export --json").ok(), "");
    assert_unchanged(&before, &snapshot(tmp.path()));

    let missing = tmp.path().join("nowhere");
    audit(&missing, "verify").fails_with(&["nowhere", "No such file"]);
    audit(tmp.path(), "export --since yesterday")
        .fails_with(&["--since \"yesterday\": expected an RFC 3339 time", "or a date"]);
    audit(tmp.path(), "export --since 2025-02-30").fails_with(&["--since \"2025-02-30\""]);

    write(&tmp.path().join("audit.db"), vec![7u8; 4096]);
    audit(tmp.path(), "verify").fails_with(&["audit.db: not an SQLite database"]);
}
