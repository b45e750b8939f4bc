//! `kakehashi journal …`: the writes the gateway accepted while the cloud was down.
//!
//! The gateway keeps such a write in `journal.db` (see `engine_proxy::journal`) and hands it back
//! when the cloud returns; one the cloud refuses is quarantined, never dropped. This is the
//! operator's side of that promise: see what waits or was refused, put a refused entry back in
//! line once its cause is fixed, or give it up. Nothing is deleted: a discarded entry stays in the
//! file, marked so, as the record of what happened.
//!
//! A running gateway notices an entry put back in line within about a second (its replayer
//! counts the file again while idle): there is nothing to reload.

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};
use engine_proxy::journal::{self, Entry, State, operator};
use rusqlite::{Connection, TransactionBehavior};
use serde::Serialize;

use crate::config::locate::ApplianceArgs;
use crate::store::{Result, StoreError};

/// What a running gateway does with an entry put back in line.
const RETRY_HINT: &str = "a running gateway sends it to the cloud within about a second once the cloud is up; \
     nothing to reload";

/// How much of a last error a listing shows; `journal show` has all of it.
const ERROR_WIDTH: usize = 100;

/// `kakehashi journal [--config FILE | --data-dir DIR] COMMAND`.
#[derive(Debug, Args)]
pub struct JournalArgs {
    #[command(flatten)]
    pub appliance: ApplianceArgs,
    #[command(subcommand)]
    pub command: JournalCommand,
}

/// The `journal` commands: two that look, two that change one entry's state (and never delete).
#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// List entries, oldest first; by default those needing attention (pending, quarantined)
    List {
        /// Every entry, delivered and discarded ones too
        #[arg(long, conflicts_with = "state")]
        all: bool,
        /// Only entries in this state (repeat the option for several)
        #[arg(long, value_enum, value_name = "STATE")]
        state: Vec<StateArg>,
        /// One JSON object per line (JSON Lines): every field but the bodies
        #[arg(long)]
        json: bool,
    },
    /// One entry: every field, the body it holds and the cloud's last answer
    Show {
        /// The entry's id (`kakehashi journal list`)
        id: u64,
        /// One JSON object, bodies included (UTF-8 text or base64)
        #[arg(long)]
        json: bool,
    },
    /// Put a quarantined entry back in line: the gateway sends it again once the cloud is up
    Retry {
        /// The entry's id (`kakehashi journal list`)
        #[arg(required_unless_present = "all_quarantined")]
        id: Option<u64>,
        /// Every quarantined entry, all in one transaction
        #[arg(long, conflicts_with = "id")]
        all_quarantined: bool,
        /// Print each entry as it now stands, one JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Give up on a quarantined or pending entry: it is never sent, and stays in the file marked
    /// discarded
    Discard {
        /// The entry's id (`kakehashi journal list`)
        id: u64,
        /// Print the entry as it now stands, as one JSON object
        #[arg(long)]
        json: bool,
    },
}

/// An entry's state as `--state` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    /// Waiting to be handed to the cloud
    Pending,
    /// Taken by the cloud
    Delivered,
    /// Refused by the cloud; waits for `retry` or `discard`
    Quarantined,
    /// Given up by an operator
    Discarded,
}

impl From<StateArg> for State {
    fn from(s: StateArg) -> State {
        match s {
            StateArg::Pending => State::Pending,
            StateArg::Delivered => State::Delivered,
            StateArg::Quarantined => State::Quarantined,
            StateArg::Discarded => State::Discarded,
        }
    }
}

/// Runs one `journal` command.
pub fn run(args: JournalArgs) -> Result<ExitCode> {
    let (mut conn, path) = open(&args.appliance.data_dir()?)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match args.command {
        JournalCommand::List { all, state, json } => {
            let states: Vec<State> = match (all, state.is_empty()) {
                (true, _) => Vec::new(),
                (false, true) => vec![State::Pending, State::Quarantined],
                (false, false) => state.into_iter().map(State::from).collect(),
            };
            let entries = operator::list(&conn, &path, &states).map_err(StoreError::journal(&path))?;
            list(&mut out, &entries, &states, json)?;
        }
        JournalCommand::Show { id, json } => {
            let entry = operator::show(&conn, &path, id).map_err(StoreError::journal(&path))?;
            if json {
                let shown = Shown {
                    fields: Fields::of(&entry),
                    body: Payload::of(&entry.body),
                    answer: entry.answer.as_deref().map(Payload::of),
                };
                writeln!(out, "{}", to_json_line(&shown)?).map_err(stdout_error)?;
            } else {
                show(&mut out, &entry)?;
            }
        }
        JournalCommand::Retry {
            id,
            all_quarantined,
            json,
        } => {
            let retried = match id {
                Some(id) => {
                    operator::retry(&conn, &path, id).map_err(StoreError::journal(&path))?;
                    vec![operator::show(&conn, &path, id).map_err(StoreError::journal(&path))?]
                }
                None if all_quarantined => retry_all_quarantined(&mut conn, &path)?,
                None => {
                    return Err(StoreError::Invalid(
                        "retry: give an entry's id or --all-quarantined".into(),
                    ));
                }
            };
            if json {
                for entry in &retried {
                    writeln!(out, "{}", to_json_line(&Fields::of(entry))?).map_err(stdout_error)?;
                }
            } else if retried.is_empty() {
                writeln!(out, "journal: no quarantined entries; nothing changed").map_err(stdout_error)?;
            } else {
                for entry in &retried {
                    writeln!(
                        out,
                        "retried journal entry #{} ({} {}): pending again",
                        entry.id,
                        one_line(&entry.method),
                        one_line(&entry.path)
                    )
                    .map_err(stdout_error)?;
                }
                writeln!(out, "{RETRY_HINT}").map_err(stdout_error)?;
            }
        }
        JournalCommand::Discard { id, json } => {
            let before = operator::show(&conn, &path, id).map_err(StoreError::journal(&path))?;
            operator::discard(&conn, &path, id).map_err(StoreError::journal(&path))?;
            if json {
                let after = operator::show(&conn, &path, id).map_err(StoreError::journal(&path))?;
                writeln!(out, "{}", to_json_line(&Fields::of(&after))?).map_err(stdout_error)?;
            } else {
                writeln!(
                    out,
                    "discarded journal entry #{id} ({} {}, was {}): it will not be sent; it stays in {} \
                     as a record",
                    one_line(&before.method),
                    one_line(&before.path),
                    before.state.as_str(),
                    journal::FILE
                )
                .map_err(stdout_error)?;
                if before.state == State::Pending {
                    writeln!(
                        out,
                        "note: it was pending: if the cloud is up, a running gateway may have been sending \
                         it at this moment; `kakehashi audit export` shows whether it was delivered"
                    )
                    .map_err(stdout_error)?;
                }
            }
        }
    }
    out.flush().map_err(stdout_error)?;
    Ok(ExitCode::SUCCESS)
}

/// Opens `DATA_DIR/journal.db`; a missing file is reported as missing, not as a damaged one.
fn open(data_dir: &Path) -> Result<(Connection, PathBuf)> {
    let path = data_dir.join(journal::FILE);
    match std::fs::metadata(&path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NoJournal { path }),
        Err(e) => return Err(StoreError::io("read", path)(e)),
    }
    operator::open(data_dir).map_err(StoreError::journal(&path))
}

/// Puts every quarantined entry back in line in one transaction: all of them, or (on an error)
/// none. Returns them as they now stand, oldest first.
fn retry_all_quarantined(conn: &mut Connection, path: &Path) -> Result<Vec<Entry>> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(StoreError::sqlite(path, "begin a transaction"))?;
    let quarantined = operator::list(&tx, path, &[State::Quarantined]).map_err(StoreError::journal(path))?;
    let mut retried = Vec::with_capacity(quarantined.len());
    for entry in quarantined {
        operator::retry(&tx, path, entry.id).map_err(StoreError::journal(path))?;
        retried.push(operator::show(&tx, path, entry.id).map_err(StoreError::journal(path))?);
    }
    tx.commit()
        .map_err(StoreError::sqlite(path, "commit the retries"))?;
    Ok(retried)
}

/// `journal list`: a table with a header (text) or JSON Lines; nothing at all for an empty JSON
/// listing, a one-line note for an empty text one.
fn list(out: &mut impl Write, entries: &[Entry], states: &[State], json: bool) -> Result<()> {
    if json {
        for entry in entries {
            writeln!(out, "{}", to_json_line(&Fields::of(entry))?).map_err(stdout_error)?;
        }
        return Ok(());
    }
    if entries.is_empty() {
        let which = if states.is_empty() {
            String::new()
        } else {
            states.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" or ") + " "
        };
        writeln!(out, "journal: no {which}entries").map_err(stdout_error)?;
        return Ok(());
    }
    let header = [
        "ID", "CREATED", "STATE", "ATTEMPTS", "TERMINAL", "USER", "METHOD", "PATH", "LAST ERROR",
    ];
    let rows: Vec<[Cow<'_, str>; 9]> = entries
        .iter()
        .map(|e| {
            [
                e.id.to_string().into(),
                rfc3339(e.created).into(),
                e.state.as_str().into(),
                e.attempts.to_string().into(),
                or_dash(e.terminal.as_deref()),
                or_dash(e.user.as_deref()),
                one_line(&e.method),
                one_line(&e.path),
                e.last_error
                    .as_deref()
                    .map_or(Cow::Borrowed(""), |err| shortened(one_line(err), ERROR_WIDTH)),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut print = |cells: &[&str]| -> Result<()> {
        let mut line = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                line.push_str(cell);
            } else {
                let pad = w.saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        writeln!(out, "{}", line.trim_end()).map_err(stdout_error)
    };
    print(&header)?;
    for row in &rows {
        print(&row.each_ref().map(|c| c.as_ref()))?;
    }
    Ok(())
}

/// `journal show`: one field per line, then the body and the cloud's last answer.
fn show(out: &mut impl Write, e: &Entry) -> Result<()> {
    let fields: [(&str, Cow<'_, str>); 14] = [
        ("id", e.id.to_string().into()),
        ("created", rfc3339(e.created).into()),
        ("changed", rfc3339(e.changed).into()),
        ("state", e.state.as_str().into()),
        ("attempts", e.attempts.to_string().into()),
        ("terminal", or_dash(e.terminal.as_deref())),
        ("user", or_dash(e.user.as_deref())),
        ("method", one_line(&e.method)),
        ("path", one_line(&e.path)),
        ("content type", or_dash(e.content_type.as_deref())),
        ("idempotency key", one_line(&e.idempotency_key)),
        ("last error", or_dash(e.last_error.as_deref())),
        (
            "cloud status",
            e.status.map_or("-".into(), |s| s.to_string().into()),
        ),
        ("cloud Api_Result", or_dash(e.api_result.as_deref())),
    ];
    for (name, value) in fields {
        writeln!(out, "{name:<17} {value}").map_err(stdout_error)?;
    }
    payload(out, "body", Some(&e.body))?;
    payload(out, "cloud's last answer", e.answer.as_deref())
}

/// A body in `journal show`'s text: a heading saying its size and encoding, then the text itself,
/// or its base64 on one line.
fn payload(out: &mut impl Write, what: &str, bytes: Option<&[u8]>) -> Result<()> {
    let Some(bytes) = bytes else {
        return writeln!(out, "\n{what}: none").map_err(stdout_error);
    };
    if bytes.is_empty() {
        return writeln!(out, "\n{what}: empty").map_err(stdout_error);
    }
    let p = Payload::of(bytes);
    let encoding = if p.encoding == "utf-8" {
        "UTF-8 text"
    } else {
        "base64"
    };
    writeln!(out, "\n{what} ({} bytes, {encoding}):", p.bytes).map_err(stdout_error)?;
    writeln!(out, "{}", p.data.strip_suffix('\n').unwrap_or(&p.data)).map_err(stdout_error)
}

/// An entry as `--json` prints it: every field of [`Entry`] but the bodies, the times in RFC 3339
/// (as `audit export --json` writes them), and the body's size.
#[derive(Debug, Serialize)]
struct Fields<'a> {
    id: u64,
    created: String,
    changed: String,
    state: State,
    attempts: u64,
    terminal: Option<&'a str>,
    user: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    content_type: Option<&'a str>,
    idempotency_key: &'a str,
    last_error: Option<&'a str>,
    status: Option<u16>,
    api_result: Option<&'a str>,
    body_bytes: usize,
}

impl<'a> Fields<'a> {
    fn of(e: &'a Entry) -> Fields<'a> {
        Fields {
            id: e.id,
            created: rfc3339(e.created),
            changed: rfc3339(e.changed),
            state: e.state,
            attempts: e.attempts,
            terminal: e.terminal.as_deref(),
            user: e.user.as_deref(),
            method: &e.method,
            path: &e.path,
            content_type: e.content_type.as_deref(),
            idempotency_key: &e.idempotency_key,
            last_error: e.last_error.as_deref(),
            status: e.status,
            api_result: e.api_result.as_deref(),
            body_bytes: e.body.len(),
        }
    }
}

/// `journal show --json`: the fields, the body and the cloud's last answer (`null` if none).
#[derive(Debug, Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    fields: Fields<'a>,
    body: Payload,
    answer: Option<Payload>,
}

/// Bytes as text when they are UTF-8 without control characters other than tab and line breaks
/// (so printing them cannot drive the operator's terminal), else as base64.
#[derive(Debug, Serialize)]
struct Payload {
    /// `utf-8` or `base64`.
    encoding: &'static str,
    /// The length of the bytes themselves.
    bytes: usize,
    data: String,
}

impl Payload {
    fn of(bytes: &[u8]) -> Payload {
        match std::str::from_utf8(bytes) {
            Ok(text)
                if text
                    .chars()
                    .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t')) =>
            {
                Payload {
                    encoding: "utf-8",
                    bytes: bytes.len(),
                    data: text.to_owned(),
                }
            }
            _ => Payload {
                encoding: "base64",
                bytes: bytes.len(),
                data: base64::engine::general_purpose::STANDARD.encode(bytes),
            },
        }
    }
}

/// Unix seconds as RFC 3339 UTC; a time out of range (a damaged row) as `@SECONDS`.
fn rfc3339(secs: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(t) => cert_tool::ca::rfc3339(t),
        Err(_) => format!("@{secs}"),
    }
}

/// Text for one cell or line: as it is, or Rust-escaped and quoted if it holds control
/// characters, so that an error quoting the cloud's answer cannot break a listing into lines.
fn one_line(text: &str) -> Cow<'_, str> {
    if text.chars().any(char::is_control) {
        Cow::Owned(format!("{text:?}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// [`one_line`], with `-` for an absent value.
fn or_dash(value: Option<&str>) -> Cow<'_, str> {
    value.map_or(Cow::Borrowed("-"), one_line)
}

/// At most `max` characters, the last one `…` when cut.
fn shortened(text: Cow<'_, str>, max: usize) -> Cow<'_, str> {
    if text.chars().count() <= max {
        return text;
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    Cow::Owned(cut)
}

/// One compact JSON value, for JSON Lines.
fn to_json_line(value: &impl Serialize) -> Result<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Invalid(format!("JSON output: {e}")))
}

fn stdout_error(e: std::io::Error) -> StoreError {
    StoreError::io("write", "standard output")(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Bytes;

    fn entry() -> Entry {
        Entry {
            id: 7,
            created: 1_743_465_600,
            terminal: Some("reception-1".into()),
            user: None,
            method: "POST".into(),
            path: "/orca11/acceptmodv2?class=01".into(),
            content_type: Some("application/json".into()),
            body: Bytes::from_static(b"{\"a\":1}"),
            idempotency_key: "k-1".into(),
            state: State::Quarantined,
            attempts: 2,
            last_error: Some("the cloud refused it: 400 Bad Request: line one\nline two".into()),
            status: Some(400),
            api_result: None,
            answer: Some(Bytes::from_static(b"\x1b[2J")),
            changed: 1_743_465_660,
        }
    }

    /// `--json` is written field by field: it must not fall behind [`Entry`] when Entry grows.
    #[test]
    fn json_fields_cover_every_field_of_entry() {
        let e = entry();
        let ours = serde_json::to_value(Fields::of(&e)).unwrap();
        let theirs = serde_json::to_value(&e).unwrap();
        for key in theirs.as_object().unwrap().keys() {
            assert!(ours.get(key).is_some(), "--json lacks Entry's field {key:?}");
        }
        assert_eq!(ours["created"], "2025-04-01T00:00:00Z");
        assert_eq!(ours["changed"], "2025-04-01T00:01:00Z");
        assert_eq!(ours["state"], "quarantined");
    }

    #[test]
    fn a_listing_stays_one_line_per_entry_and_control_bytes_are_not_printed() {
        let e = entry();
        let mut out = Vec::new();
        list(&mut out, std::slice::from_ref(&e), &[], false).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("\\nline two"), "{text}");

        let mut out = Vec::new();
        show(&mut out, &e).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains('\x1b'), "{text}");
        assert!(
            text.contains("cloud's last answer (4 bytes, base64):\nG1sySg=="),
            "{text}"
        );
        assert!(text.contains("body (7 bytes, UTF-8 text):\n{\"a\":1}"), "{text}");
    }

    #[test]
    fn long_errors_are_shortened_by_characters() {
        let long = "あ".repeat(150);
        let s = shortened(Cow::Borrowed(&long), ERROR_WIDTH);
        assert_eq!(s.chars().count(), ERROR_WIDTH);
        assert!(s.ends_with('…'));
    }
}
