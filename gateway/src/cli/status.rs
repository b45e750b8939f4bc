//! `kakehashi status`: the status page's report, asked of the running gateway on its admin
//! listener (`/status.json`), as text or as the same JSON.
//!
//! It reads only the configuration (parsed, not checked: a missing certificate is exactly what
//! someone asking for the status may be chasing) for the admin listener's address, and talks
//! plain HTTP to it on loopback. No gateway answering is an error (exit code 1) naming the
//! address, so a script can tell "down" from "emergency".

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::config::Config;
use crate::config::locate::ApplianceArgs;
use crate::status::Report;

/// How long the gateway has to answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// A report is a few kilobytes; anything much larger is not one.
const MAX_ANSWER: u64 = 4 << 20;

/// `kakehashi status [--config FILE] [--json]`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub appliance: ApplianceArgs,
    /// The report as JSON, as `/kakehashi/status.json` and the admin listener's `/status.json`
    /// give it (with the operator's sections)
    #[arg(long)]
    pub json: bool,
}

/// Why there is no report.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}: [admin] address is not set, so the gateway has no admin listener to ask")]
    NoAdmin(std::path::PathBuf),
    #[error(
        "the gateway's admin listener at {address} does not answer ({why}): is `kakehashi gateway run` running?"
    )]
    Unreachable { address: SocketAddr, why: String },
    #[error("the gateway's admin listener at {address} answered: {why}")]
    Answer { address: SocketAddr, why: String },
}

/// Runs `kakehashi status`.
pub fn run(args: StatusArgs) -> Result<ExitCode, StatusError> {
    let path = args.appliance.config_file().to_owned();
    let config = Config::parse(&path)?;
    let address = config.admin.address.ok_or(StatusError::NoAdmin(path))?;
    let body = fetch(address)?;
    let report: Report = serde_json::from_str(&body).map_err(|e| StatusError::Answer {
        address,
        why: format!("not a status report: {e}"),
    })?;
    let mut out = std::io::stdout().lock();
    let text = match args.json {
        true => format!("{}\n", report.json()),
        false => text(&report),
    };
    let _ = out.write_all(text.as_bytes());
    Ok(ExitCode::SUCCESS)
}

/// `GET /status.json` over HTTP/1.0: the body of a 200.
fn fetch(address: SocketAddr) -> Result<String, StatusError> {
    let unreachable = |e: std::io::Error| StatusError::Unreachable {
        address,
        why: e.to_string(),
    };
    let mut stream = TcpStream::connect_timeout(&address, TIMEOUT).map_err(unreachable)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(unreachable)?;
    stream
        .write_all(b"GET /status.json HTTP/1.0\r\nHost: localhost\r\nAccept: application/json\r\n\r\n")
        .map_err(unreachable)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_ANSWER)
        .read_to_end(&mut raw)
        .map_err(unreachable)?;
    let answer = String::from_utf8_lossy(&raw);
    let answer_err = |why: String| StatusError::Answer { address, why };
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| answer_err("no complete HTTP answer".into()))?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(answer_err(format!("{status}: {}", body.trim())));
    }
    Ok(body.to_owned())
}

/// The report for a person at a terminal.
fn text(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let meaning = match r.mode.as_str() {
        "emergency" => "the cloud is unreachable; the local engine answers and writes are journaled",
        "recovery" => "the cloud is back; journaled writes are being handed back",
        _ => "the cloud answers",
    };
    let _ = writeln!(s, "mode:          {} since {} ({meaning})", r.mode, r.since);
    let _ = writeln!(
        s,
        "journal:       {} pending (oldest {}), {} quarantined",
        r.journal_pending,
        r.journal_oldest.as_deref().unwrap_or("-"),
        r.journal_quarantined
    );
    let _ = writeln!(s, "last contact:  {}", r.last_contact.as_deref().unwrap_or("-"));
    let pct = |a: Option<f64>| a.map_or("-".to_owned(), |a| format!("{:.2} %", a * 100.0));
    let _ = writeln!(
        s,
        "availability:  {} (24 h), {} (7 days)",
        pct(r.availability_24h),
        pct(r.availability_7d)
    );
    if r.paths.len() > 1 {
        for p in &r.paths {
            let state = match (p.active, p.up) {
                (true, _) => "in use",
                (false, true) => "standby",
                (false, false) => "down",
            };
            let _ = writeln!(
                s,
                "path:          {} {state} since {}, last answer {}, {} up since start",
                p.name,
                p.since.as_deref().unwrap_or("start"),
                p.last_contact.as_deref().unwrap_or("-"),
                pct(Some(p.availability))
            );
        }
    }
    for o in &r.outages {
        let _ = writeln!(
            s,
            "outage:        {} to {}: {}",
            o.started,
            o.ended.as_deref().unwrap_or("now"),
            o.reason
        );
    }
    if let Some(op) = &r.operator {
        for e in &op.expiring {
            let _ = writeln!(
                s,
                "expiring:      {} {} on {} ({} days)",
                e.what, e.subject, e.not_after, e.days_left
            );
        }
        let _ = writeln!(
            s,
            "crl:           next update {}{}",
            op.crl_next_update.as_deref().unwrap_or("-"),
            if op.crl_stale { " (stale)" } else { "" }
        );
        let _ = writeln!(s, "audit log:     {}", op.audit_chain);
        let free = op.disk_free_bytes.map_or("-".to_owned(), |b| {
            format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
        });
        let _ = writeln!(s, "disk free:     {free}");
        if let Some(d) = &op.disk {
            let _ = writeln!(
                s,
                "disk budget:   {}{}",
                crate::budget::describe(d),
                d.reason
                    .as_deref()
                    .map(|r| format!(" ALERT: {r}"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(s, "version:       {}", op.version);
        let backup = match &op.backup {
            None => "none yet".to_owned(),
            Some(b) if b.last_ok => format!("ok, last good {}", b.last_good.as_deref().unwrap_or("-")),
            Some(b) => format!(
                "FAILED at {}: {} (last good {})",
                b.last_run.as_deref().unwrap_or("-"),
                b.last_error.as_deref().unwrap_or("-"),
                b.last_good.as_deref().unwrap_or("never")
            ),
        };
        let _ = writeln!(s, "backup:        {backup}");
        if let Some(fw) = &op.firmware {
            let _ = writeln!(
                s,
                "firmware:      slot {}{}{}{}",
                fw.committed,
                fw.committed_version
                    .as_deref()
                    .map(|v| format!(" ({v})"))
                    .unwrap_or_default(),
                fw.trial
                    .as_deref()
                    .map(|t| format!("; on trial: slot {t} ({}/{})", fw.bootcount, fw.bootlimit))
                    .unwrap_or_default(),
                fw.rolled_back
                    .as_deref()
                    .map(|r| format!("; rolled back: {r}"))
                    .unwrap_or_default()
            );
        }
        for t in &op.terminals {
            let state = if t.enabled { "enabled" } else { "disabled" };
            let seen = t.last_seen.as_deref().unwrap_or("-");
            let _ = writeln!(
                s,
                "terminal:      {} ({state}, {}, last seen {seen})",
                t.name, t.doors
            );
        }
        for r in &op.recent_refusals {
            let _ = writeln!(
                s,
                "refused:       {} {} {} {}: {}",
                r.time,
                r.terminal.as_deref().unwrap_or("-"),
                r.user.as_deref().unwrap_or("-"),
                r.request.as_deref().unwrap_or("-"),
                r.reason
            );
        }
    }
    s
}
