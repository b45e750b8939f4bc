//! `kakehashi journal`: the operator's view of the write journal, through the real binary.
//!
//! The journals are filled by the gateway's own writer (`engine_proxy::journal::Journal`), exactly
//! as a gateway does while the cloud is down, and settled the way its replayer settles them; the
//! last scenario has a running gateway hand a retried entry to the cloud engine.

use std::path::Path;

use base64::Engine as _;
use engine_proxy::journal::{Journal, NewEntry, Settlement};
use serde_json::Value;

use crate::support::*;

pub(crate) const RECEPTION: &str = "/orca11/acceptmodv2?class=01&format=json";
pub(crate) const RECEPTION_BODY: &str =
    r#"{"acceptreq":{"Patient_ID":"2","Department_Code":"01","Physician_Code":"10001"}}"#;
const APPOINTMENT: &str = "/orca14/appointmodv2?class=01&format=json";
const REFUSED_ANSWER: &str =
    r#"{"acceptres":{"Api_Result":"10","Api_Result_Message":"該当患者は存在しません"}}"#;
/// Not UTF-8, and an escape byte that must never reach the operator's terminal.
const BINARY_BODY: &[u8] = &[0xff, 0x00, 0x1b, b'[', b'2', b'J', 0x80];
/// UTF-8, but with an escape sequence (clear the screen) that must not reach it either.
const ESCAPING_ANSWER: &[u8] = b"\x1b[2Jrefused";

pub(crate) fn write_entry(
    path: &str,
    body: &[u8],
    key: &str,
    terminal: Option<&str>,
    user: Option<&str>,
) -> NewEntry {
    NewEntry {
        terminal: terminal.map(str::to_owned),
        user: user.map(str::to_owned),
        method: "POST".into(),
        path: path.into(),
        content_type: Some("application/json".into()),
        body: body.to_vec().into(),
        idempotency_key: key.into(),
    }
}

fn refused(status: u16, api_result: Option<&str>, answer: &[u8], reason: &str) -> Option<Settlement> {
    Some(Settlement::Quarantined {
        status: Some(status),
        api_result: api_result.map(str::to_owned),
        answer: answer.to_vec().into(),
        reason: reason.into(),
    })
}

/// Appends `entries` to `DIR/journal.db` through the gateway's journal and settles each as given
/// (`None`: left pending, never tried). Returns their ids.
pub(crate) fn fill(dir: &Path, entries: Vec<(NewEntry, Option<Settlement>)>) -> Vec<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let journal = Journal::open(dir).expect("open the journal");
        let mut ids = Vec::new();
        for (entry, settlement) in entries {
            let id = journal.append(entry).await.expect("append");
            if let Some(s) = settlement {
                journal.settle(id, s).await.expect("settle");
            }
            ids.push(id);
        }
        ids
    })
}

/// A data directory whose journal holds, in order: #1 a reception the cloud refused
/// (quarantined), #2 an appointment tried once and still pending, #3 a delivered reception, #4 a
/// binary body the cloud refused with a two-line reason.
fn four_entries() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ids = fill(
        tmp.path(),
        vec![
            (
                write_entry(
                    RECEPTION,
                    RECEPTION_BODY.as_bytes(),
                    "visit-1",
                    Some("reception-1"),
                    Some("reception"),
                ),
                refused(
                    200,
                    Some("10"),
                    REFUSED_ANSWER.as_bytes(),
                    "the cloud refused it: Api_Result 10 該当患者は存在しません",
                ),
            ),
            (
                write_entry(APPOINTMENT, b"{\"appointreq\":{}}", "visit-2", None, None),
                Some(Settlement::Retry {
                    error: "the cloud answered 503 Service Unavailable".into(),
                }),
            ),
            (
                write_entry(
                    RECEPTION,
                    RECEPTION_BODY.as_bytes(),
                    "visit-3",
                    Some("reception-1"),
                    None,
                ),
                Some(Settlement::Delivered {
                    status: 200,
                    api_result: Some("00".into()),
                    answer: br#"{"acceptres":{"Api_Result":"00"}}"#.to_vec().into(),
                }),
            ),
            (
                write_entry(
                    "/api21/medicalmodv2?format=json",
                    BINARY_BODY,
                    "visit-4",
                    Some("exam-2"),
                    None,
                ),
                refused(
                    400,
                    None,
                    ESCAPING_ANSWER,
                    "the cloud refused it: 400 Bad Request: line one\nline two",
                ),
            ),
        ],
    );
    assert_eq!(ids, [1, 2, 3, 4]);
    tmp
}

fn journal(dir: &Path, args: &str) -> Run {
    sh(&format!("kakehashi journal {args} --data-dir {}", s(dir)))
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not one JSON object per line: {e}\n{text}"))
        })
        .collect()
}

/// `(id, state)` of every entry, as `list --all --json` tells them.
fn states(dir: &Path) -> Vec<(u64, String)> {
    json_lines(&journal(dir, "list --all --json").ok())
        .iter()
        .map(|o| {
            (
                o["id"].as_u64().expect("id"),
                o["state"].as_str().expect("state").to_owned(),
            )
        })
        .collect()
}

fn st(pairs: &[(u64, &str)]) -> Vec<(u64, String)> {
    pairs.iter().map(|(id, s)| (*id, (*s).to_owned())).collect()
}

/// What GNU date makes of entry `id`'s stored Unix time: the RFC 3339 UTC text expected.
fn created_by_date(dir: &Path, id: u64) -> String {
    let secs: i64 = rusqlite::Connection::open(dir.join("journal.db"))
        .and_then(|c| {
            c.query_row("SELECT created FROM entries WHERE id = ?1", [id as i64], |r| {
                r.get(0)
            })
        })
        .expect("read journal.db");
    sh(&format!("date -u -d @{secs} +%Y-%m-%dT%H:%M:%SZ"))
        .ok()
        .trim()
        .to_owned()
}

#[test]
fn list_shows_what_needs_attention_as_a_table_and_as_json_lines() {
    let tmp = four_entries();
    let dir = tmp.path();

    let text = journal(dir, "list").ok();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        4,
        "a header and one line per pending or quarantined entry, the two-line reason escaped:\n{text}"
    );
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "ID", "CREATED", "STATE", "ATTEMPTS", "TERMINAL", "USER", "METHOD", "PATH", "LAST", "ERROR"
        ],
        "{text}"
    );
    let first: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        first[..8],
        [
            "1",
            &created_by_date(dir, 1),
            "quarantined",
            "1",
            "reception-1",
            "reception",
            "POST",
            RECEPTION
        ],
        "{text}"
    );
    assert!(
        lines[1].ends_with("the cloud refused it: Api_Result 10 該当患者は存在しません"),
        "{text}"
    );
    let second: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        second[..8],
        [
            "2",
            &created_by_date(dir, 2),
            "pending",
            "1",
            "-",
            "-",
            "POST",
            APPOINTMENT
        ],
        "{text}"
    );
    assert!(
        lines[2].ends_with("the cloud answered 503 Service Unavailable"),
        "a pending entry's last failed attempt shows too:\n{text}"
    );
    assert!(
        lines[3].starts_with("4 ") && lines[3].contains(" quarantined "),
        "{text}"
    );
    assert!(
        lines[3].contains(r#""the cloud refused it: 400 Bad Request: line one\nline two""#),
        "{text}"
    );
    assert!(
        !text.contains(" delivered "),
        "delivered entries need no attention:\n{text}"
    );
    // The columns line up: every row's PATH starts where the header's does.
    let at = lines[0].find("PATH").expect("PATH");
    assert!(lines[1..].iter().all(|l| l[at..].starts_with('/')), "{text}");

    let all = journal(dir, "list --all").ok();
    assert_eq!(all.lines().count(), 5, "{all}");
    assert!(
        all.lines().nth(3).expect("entry 3").contains(" delivered "),
        "{all}"
    );
    let delivered = journal(dir, "list --state delivered").ok();
    assert_eq!(delivered.lines().count(), 2, "{delivered}");
    assert!(
        delivered.lines().nth(1).expect("entry 3").starts_with("3 "),
        "{delivered}"
    );
    let two = journal(dir, "list --state delivered --state pending").ok();
    assert_eq!(two.lines().count(), 3, "{two}");

    let objects = json_lines(&journal(dir, "list --json").ok());
    let ids: Vec<u64> = objects.iter().map(|o| o["id"].as_u64().expect("id")).collect();
    assert_eq!(ids, [1, 2, 4]);
    let o = &objects[0];
    assert_eq!(o["created"], created_by_date(dir, 1).as_str());
    assert!(
        o["changed"]
            .as_str()
            .is_some_and(|c| c >= o["created"].as_str().expect("created")),
        "{o}"
    );
    assert_eq!(o["state"], "quarantined");
    assert_eq!(o["attempts"], 1);
    assert_eq!(o["terminal"], "reception-1");
    assert_eq!(o["user"], "reception");
    assert_eq!(o["method"], "POST");
    assert_eq!(o["path"], RECEPTION);
    assert_eq!(o["content_type"], "application/json");
    assert_eq!(o["idempotency_key"], "visit-1");
    assert_eq!(o["status"], 200);
    assert_eq!(o["api_result"], "10");
    assert_eq!(
        o["last_error"],
        "the cloud refused it: Api_Result 10 該当患者は存在しません"
    );
    assert_eq!(o["body_bytes"], RECEPTION_BODY.len());
    assert!(
        o.get("body").is_none() && o.get("answer").is_none(),
        "a listing leaves bodies out: {o}"
    );
    assert_eq!(objects[1]["terminal"], Value::Null);
    assert_eq!(objects[1]["status"], Value::Null);
    assert_eq!(
        objects[2]["last_error"],
        "the cloud refused it: 400 Bad Request: line one\nline two"
    );
    assert_eq!(states(dir).len(), 4);

    assert_eq!(
        journal(dir, "list --state discarded").ok(),
        "journal: no discarded entries\n"
    );
    assert_eq!(journal(dir, "list --state discarded --json").ok(), "");
    assert_eq!(
        journal(dir, "list --all --state pending").code,
        2,
        "--all or --state, not both"
    );
    assert_eq!(journal(dir, "list --state lost").code, 2);
}

#[test]
fn show_prints_every_field_the_body_and_the_clouds_last_answer() {
    let tmp = four_entries();
    let dir = tmp.path();

    let text = journal(dir, "show 1").ok();
    for line in [
        "id                1",
        &format!("created           {}", created_by_date(dir, 1)),
        "state             quarantined",
        "attempts          1",
        "terminal          reception-1",
        "user              reception",
        "method            POST",
        &format!("path              {RECEPTION}"),
        "content type      application/json",
        "idempotency key   visit-1",
        "last error        the cloud refused it: Api_Result 10 該当患者は存在しません",
        "cloud status      200",
        "cloud Api_Result  10",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} missing from:\n{text}");
    }
    assert!(
        text.lines().any(|l| l.starts_with("changed           20")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "\nbody ({} bytes, UTF-8 text):\n{RECEPTION_BODY}\n",
            RECEPTION_BODY.len()
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "\ncloud's last answer ({} bytes, UTF-8 text):\n{REFUSED_ANSWER}\n",
            REFUSED_ANSWER.len()
        )),
        "{text}"
    );

    let never = journal(dir, "show 2").ok();
    assert!(never.contains("\ncloud's last answer: none\n"), "{never}");
    assert!(never.lines().any(|l| l == "terminal          -"), "{never}");

    let binary = journal(dir, "show 4").ok();
    let b64 = base64::engine::general_purpose::STANDARD.encode(BINARY_BODY);
    assert!(
        binary.contains(&format!("\nbody (7 bytes, base64):\n{b64}\n")),
        "{binary}"
    );
    assert!(
        binary.contains("\ncloud's last answer (11 bytes, base64):\nG1sySnJlZnVzZWQ=\n"),
        "{binary}"
    );
    assert!(
        !binary.contains('\x1b'),
        "no escape byte reaches the terminal:\n{binary}"
    );
    assert!(
        binary.contains(r#"last error        "the cloud refused it: 400 Bad Request: line one\nline two""#),
        "{binary}"
    );

    let one = json_lines(&journal(dir, "show 1 --json").ok());
    assert_eq!(one.len(), 1);
    let o = &one[0];
    assert_eq!(o["id"], 1);
    assert_eq!(o["state"], "quarantined");
    assert_eq!(o["created"], created_by_date(dir, 1).as_str());
    assert_eq!(o["body"]["encoding"], "utf-8");
    assert_eq!(o["body"]["data"], RECEPTION_BODY);
    assert_eq!(o["body"]["bytes"], RECEPTION_BODY.len());
    assert_eq!(o["answer"]["encoding"], "utf-8");
    assert_eq!(o["answer"]["data"], REFUSED_ANSWER);
    assert_eq!(
        json_lines(&journal(dir, "show 2 --json").ok())[0]["answer"],
        Value::Null
    );
    let four = &json_lines(&journal(dir, "show 4 --json").ok())[0];
    assert_eq!(four["body"]["encoding"], "base64");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(four["body"]["data"].as_str().expect("data"))
        .expect("base64");
    assert_eq!(decoded, BINARY_BODY);
    assert_eq!(four["answer"]["encoding"], "base64");
    assert_eq!(four["answer"]["data"], "G1sySnJlZnVzZWQ=");
}

#[test]
fn retry_and_discard_change_only_what_they_may_and_refuse_the_rest() {
    let tmp = four_entries();
    let dir = tmp.path();
    let start = st(&[
        (1, "quarantined"),
        (2, "pending"),
        (3, "delivered"),
        (4, "quarantined"),
    ]);
    assert_eq!(states(dir), start);

    // Refusals: exit 1, the file named, nothing changed.
    journal(dir, "retry 2").fails_with(&["journal.db: journal entry #2 is pending, not quarantined"]);
    journal(dir, "retry 3").fails_with(&["journal.db: journal entry #3 is delivered, not quarantined"]);
    journal(dir, "discard 3")
        .fails_with(&["journal.db: journal entry #3 is delivered, not quarantined or pending"]);
    for cmd in ["show 99", "retry 99", "discard 99", "show 99 --json"] {
        let run = journal(dir, cmd).fails_with(&["journal.db: no journal entry #99"]);
        assert_eq!(run.stdout, "", "{cmd}: nothing on stdout");
        assert!(run.stderr.starts_with("kakehashi: error: "), "{}", run.stderr);
    }
    assert_eq!(journal(dir, "retry notanumber").code, 2);
    assert_eq!(states(dir), start, "a refusal changes nothing");

    let out = journal(dir, "retry 1").ok();
    assert!(
        out.starts_with(&format!(
            "retried journal entry #1 (POST {RECEPTION}): pending again\n"
        )),
        "{out}"
    );
    assert!(
        out.contains("a running gateway sends it to the cloud within about a second"),
        "{out}"
    );
    journal(dir, "retry 1").fails_with(&["journal entry #1 is pending, not quarantined"]);
    assert_eq!(
        states(dir),
        st(&[
            (1, "pending"),
            (2, "pending"),
            (3, "delivered"),
            (4, "quarantined")
        ])
    );
    let one = &json_lines(&journal(dir, "show 1 --json").ok())[0];
    assert_eq!(
        one["idempotency_key"], "visit-1-retry1",
        "a retried entry gets a fresh key: the cloud refused the old one"
    );
    assert_eq!(one["attempts"], 1, "retrying is not an attempt");

    let out = journal(dir, "discard 4").ok();
    assert!(
        out.starts_with(
            "discarded journal entry #4 (POST /api21/medicalmodv2?format=json, was quarantined): it \
             will not be sent; it stays in journal.db as a record\n"
        ),
        "{out}"
    );
    assert!(!out.contains("note:"), "{out}");
    journal(dir, "discard 4").fails_with(&["journal entry #4 is discarded, not quarantined or pending"]);
    journal(dir, "retry 4").fails_with(&["journal entry #4 is discarded, not quarantined"]);

    let out = journal(dir, "discard 2").ok();
    assert!(out.contains("was pending"), "{out}");
    assert!(out.contains("note: it was pending"), "{out}");

    let out = json_lines(&journal(dir, "discard 1 --json").ok());
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0]["id"].as_u64(), out[0]["state"].as_str()),
        (Some(1), Some("discarded"))
    );

    assert_eq!(
        states(dir),
        st(&[
            (1, "discarded"),
            (2, "discarded"),
            (3, "delivered"),
            (4, "discarded")
        ]),
        "nothing is deleted"
    );
    assert_eq!(
        journal(dir, "list").ok(),
        "journal: no pending or quarantined entries\n"
    );
    assert_eq!(journal(dir, "list --json").ok(), "");
}

#[test]
fn retry_all_quarantined_puts_every_quarantined_entry_back_at_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let refusal = || refused(200, Some("10"), REFUSED_ANSWER.as_bytes(), "Api_Result 10");
    fill(
        dir,
        vec![
            (write_entry(RECEPTION, b"{}", "a", None, None), refusal()),
            (write_entry(RECEPTION, b"{}", "b", None, None), None),
            (write_entry(RECEPTION, b"{}", "c", None, None), refusal()),
            (write_entry(RECEPTION, b"{}", "d", None, None), refusal()),
        ],
    );
    assert_eq!(journal(dir, "retry").code, 2, "an id or --all-quarantined");
    assert_eq!(journal(dir, "retry 1 --all-quarantined").code, 2, "not both");

    let out = journal(dir, "retry --all-quarantined").ok();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for (line, id) in lines.iter().zip([1, 3, 4]) {
        assert_eq!(
            *line,
            format!("retried journal entry #{id} (POST {RECEPTION}): pending again")
        );
    }
    assert!(lines[3].starts_with("a running gateway sends it"), "{out}");
    assert_eq!(
        states(dir),
        st(&[(1, "pending"), (2, "pending"), (3, "pending"), (4, "pending")])
    );
    assert_eq!(
        journal(dir, "retry --all-quarantined").ok(),
        "journal: no quarantined entries; nothing changed\n",
        "nothing to do is not an error"
    );
    assert_eq!(journal(dir, "retry --all-quarantined --json").ok(), "");

    journal(dir, "discard 2").ok();
    let more = tempfile::tempdir().expect("tempdir");
    fill(
        more.path(),
        vec![
            (write_entry(RECEPTION, b"{}", "e", None, None), refusal()),
            (write_entry(RECEPTION, b"{}", "f", None, None), refusal()),
        ],
    );
    let objects = json_lines(&journal(more.path(), "retry --all-quarantined --json").ok());
    let got: Vec<(u64, &str)> = objects
        .iter()
        .map(|o| (o["id"].as_u64().expect("id"), o["state"].as_str().expect("state")))
        .collect();
    assert_eq!(got, [(1, "pending"), (2, "pending")]);
}

#[test]
fn a_missing_or_damaged_journal_is_named_and_left_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let before = snapshot(dir);
    for cmd in [
        "list",
        "list --json",
        "show 1",
        "retry 1",
        "retry --all-quarantined",
        "discard 1",
    ] {
        let run = journal(dir, cmd).fails_with(&[
            &format!("{}/journal.db: no such file", s(dir)),
            "are --config and --data-dir right?",
        ]);
        assert_eq!(run.stdout, "", "{cmd}");
    }
    assert_unchanged(&before, &snapshot(dir));

    let nowhere = dir.join("nowhere");
    journal(&nowhere, "list").fails_with(&["nowhere/journal.db: no such file"]);
    assert!(!nowhere.exists(), "the data directory is not created");

    write(
        &dir.join("journal.db"),
        b"this is not a database, it is forty bytes",
    );
    let before = snapshot(dir);
    journal(dir, "list").fails_with(&["journal.db: not a usable SQLite database"]);
    journal(dir, "retry 1").fails_with(&["journal.db: not a usable SQLite database"]);
    assert_unchanged(&before, &snapshot(dir));
}

#[test]
fn the_data_directory_comes_from_the_option_before_or_after_the_command_or_the_environment() {
    let tmp = four_entries();
    let d = s(tmp.path());
    let expected = journal(tmp.path(), "list --json").ok();
    assert_eq!(
        sh(&format!("kakehashi journal --data-dir {d} list --json")).ok(),
        expected
    );
    assert_eq!(
        kakehashi_env(&["journal", "list", "--json"], &[("KAKEHASHI_DATA_DIR", d)]).ok(),
        expected
    );
}

#[test]
fn help_lists_journal_and_its_commands() {
    let help = kakehashi(&["--help"]).ok();
    assert!(
        help.lines()
            .any(|l| l.trim_start().starts_with("journal") && l.contains("write journal")),
        "{help}"
    );
    let help = kakehashi(&["journal", "--help"]).ok();
    for cmd in ["list", "show", "retry", "discard"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(cmd)),
            "journal {cmd} missing from:\n{help}"
        );
    }
    let list = kakehashi(&["journal", "list", "--help"]).ok();
    for option in [
        "--all", "--state", "--json", "pending", "quarantined", "--data-dir",
    ] {
        assert!(list.contains(option), "{option} missing from:\n{list}");
    }
}

/// The promise `retry` prints: a running gateway, idle with nothing pending, notices an entry put
/// back in line and hands it to the cloud engine, which takes it.
#[test]
fn a_running_gateway_hands_a_retried_entry_to_the_cloud() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clinic = tmp.path().join("clinic");
    sh(&format!(
        "kakehashi demo --setup-only --dir {} {}",
        s(&clinic),
        DemoPorts::new("127.0.0.1").line()
    ))
    .ok();
    let data = clinic.join("data");
    // Refused once, say because the clinic's engine account was wrong, since put right.
    fill(
        &data,
        vec![(
            write_entry(
                RECEPTION,
                RECEPTION_BODY.as_bytes(),
                "visit-live-1",
                // The demo's terminal: replay checks it is still registered and may write.
                Some("reception-1"),
                None,
            ),
            refused(
                403,
                None,
                b"Forbidden",
                "the cloud refused it: 403 Forbidden: Forbidden",
            ),
        )],
    );
    let _engine = Server::start(&["engine-sim", "--config", s(&clinic.join("engine.toml"))]);
    let _gateway = Server::start(&["gateway", "run", "--config", s(&clinic.join("gateway.toml"))]);

    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        states(&data),
        st(&[(1, "quarantined")]),
        "a quarantined entry waits for the operator"
    );
    journal(&data, "retry 1").ok();
    let started = std::time::Instant::now();
    while states(&data) != st(&[(1, "delivered")]) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "not delivered within 10 s:\n{}",
            journal(&data, "show 1").ok()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let shown = &json_lines(&journal(&data, "show 1 --json").ok())[0];
    assert_eq!(shown["status"], 200, "{shown}");
    assert_eq!(shown["api_result"], "00", "{shown}");
    assert_eq!(shown["attempts"], 2, "{shown}");
    assert_eq!(shown["last_error"], Value::Null, "{shown}");
    let answer = shown["answer"]["data"].as_str().expect("the cloud's answer");
    assert!(answer.contains("\"Acceptance_Id\""), "{answer}");
    // The audit log tells it too (its writer commits a moment after the journal's).
    let started = std::time::Instant::now();
    loop {
        let audit = sh(&format!("kakehashi audit export --data-dir {}", s(&data))).ok();
        if audit.contains("journal entry #1 delivered to the cloud") {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "{audit}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
