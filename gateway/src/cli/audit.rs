//! `kakehashi audit …`: checking and reading the audit log.

use std::borrow::Cow;
use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::audit::{self, Record};
use crate::config::locate::ApplianceArgs;
use crate::store::{Result, StoreError};

/// `kakehashi audit [--config FILE | --data-dir DIR] COMMAND`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub appliance: ApplianceArgs,
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain; exit 0 if intact, 1 naming the first broken entry
    Verify {
        /// Also check the log against a backup's copy: the archive's last entry must be in this
        /// log with the same hash, so a log rewritten since (even by root, chain and head
        /// recomputed) is caught. ARCHIVE is a file, or a name or URL at the configured backup
        /// target (`[backup] dir` or `sftp`)
        #[arg(long, value_name = "ARCHIVE")]
        against: Option<std::path::PathBuf>,
        /// With --against: an age identity the archive was encrypted to [default: the
        /// appliance's own, DATA_DIR/backup-self.key]
        #[arg(long, value_name = "FILE", requires = "against")]
        identity: Option<std::path::PathBuf>,
    },
    /// Print the entries, oldest first: one line each, or JSON Lines with --json
    Export {
        /// Only entries at or after this time: RFC 3339 (2025-04-01T09:00:00+09:00) or a date
        /// (2025-04-01, midnight UTC)
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// One JSON object per line, every field, hashes included
        #[arg(long)]
        json: bool,
    },
}

/// `audit verify --against ARCHIVE`: the archive's chain verifies, and its last entry is in
/// the live log with the same hash; the chain makes every entry before it the same too. An
/// ARCHIVE that is no file here is looked for at the backup target, as `backup verify` does.
fn against_archive(
    appliance: &ApplianceArgs,
    dir: &std::path::Path,
    archive: &std::path::Path,
    identity: Option<&std::path::Path>,
) -> Result<ExitCode> {
    use provisioning_shared::device::Identity;
    let identity = match identity {
        Some(key) => Identity::read(key).map_err(StoreError::Invalid)?,
        None => crate::backup::existing_identity(dir)
            .map_err(|e| StoreError::Invalid(e.to_string()))?
            .ok_or_else(|| {
                StoreError::Invalid(format!(
                    "{}: no {}: this appliance never took a backup, so it has no key of its own to \
                     open ARCHIVE with; name the key the archive was encrypted to with --identity",
                    dir.display(),
                    crate::backup::SELF_KEY
                ))
            })?,
    };
    let verified = match archive.is_file() {
        true => crate::backup::verify(dir, archive, &identity),
        false => {
            let config = appliance
                .load("its [backup] section, to find an ARCHIVE that is no file here")
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
            crate::backup::verify_at_target(&config, Some(archive), &identity).map(|(_, m)| m)
        }
    };
    match verified {
        Ok(manifest) => {
            let c = &manifest.counts;
            println!(
                "matches the backup taken {}: entries {} to {} are the archive's (its head {}), and the log goes on from there",
                manifest.created,
                c.audit_pruned + 1,
                c.audit_last_id,
                c.audit_last_hash
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ crate::backup::BackupError::Archive { .. }) => {
            println!("audit log does NOT match the backup: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(StoreError::Invalid(e.to_string())),
    }
}

/// Runs one `audit` command.
pub fn run(args: AuditArgs) -> Result<ExitCode> {
    let dir = &args.appliance.data_dir()?;
    match args.command {
        AuditCommand::Verify { against, identity } => {
            let report = audit::verify(dir)?;
            let Some(broken) = report.broken else {
                println!(
                    "audit log intact: {} entries, head {} {}",
                    report.entries, report.last_id, report.last_hash
                );
                if report.pruned > 0 {
                    println!(
                        "entries 1 to {} were pruned after a verified backup took them (audit/pruned); \
                         check them with --against ARCHIVE",
                        report.pruned
                    );
                }
                if report.unattested > 0 {
                    println!(
                        "note: the last {} entries were committed after the head file was last \
                         written (a crash?); their chain is intact",
                        report.unattested
                    );
                }
                if let Some(archive) = against {
                    return against_archive(&args.appliance, dir, &archive, identity.as_deref());
                }
                return Ok(ExitCode::SUCCESS);
            };
            match broken.id {
                Some(id) => println!("audit log BROKEN at entry {id}: {}", broken.what),
                None => println!("audit log BROKEN: {}", broken.what),
            }
            println!(
                "checked {} intact entries before the break (up to entry {})",
                report.entries, report.last_id
            );
            Ok(ExitCode::FAILURE)
        }
        AuditCommand::Export { since, json } => {
            let since = since.as_deref().map(audit::parse_since).transpose()?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            audit::export(dir, since.as_deref(), |r| {
                let line = if json {
                    serde_json::to_string(r).map_err(|e| StoreError::Invalid(format!("JSON output: {e}")))?
                } else {
                    text_line(r)
                };
                writeln!(out, "{line}").map_err(StoreError::io("write", "standard output"))
            })?;
            out.flush().map_err(StoreError::io("write", "standard output"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One entry as `ID TIME DECISION key=value …`, absent fields left out, `reason` last. A value
/// that is empty or holds spaces, quotes or control characters is quoted, so that no value can
/// pose as another field or another line.
fn text_line(r: &Record) -> String {
    let mut line = format!("{} {} {}", r.id, r.time, quoted(&r.decision));
    let mut field = |key: &str, value: Option<Cow<'_, str>>| {
        if let Some(v) = value {
            line.push_str(&format!(" {key}={}", quoted(&v)));
        }
    };
    field("route", Some(Cow::Borrowed(&r.route)));
    field("source", Some(Cow::Borrowed(&r.source)));
    field("terminal", text(&r.terminal));
    field("user", text(&r.user));
    field("method", text(&r.method));
    field("path", text(&r.path));
    field("upstream", text(&r.upstream));
    field("status", r.status.map(|s| s.to_string().into()));
    field("in", Some(r.bytes_in.to_string().into()));
    field("out", Some(r.bytes_out.to_string().into()));
    field("ms", Some(r.duration_ms.to_string().into()));
    field("reason", Some(Cow::Borrowed(&r.reason)));
    line
}

fn text(value: &Option<String>) -> Option<Cow<'_, str>> {
    value.as_deref().map(Cow::Borrowed)
}

fn quoted(value: &str) -> Cow<'_, str> {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '\\');
    if plain {
        Cow::Borrowed(value)
    } else {
        Cow::Owned(format!("{value:?}"))
    }
}
