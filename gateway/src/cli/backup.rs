//! `kakehashi backup run | list | verify | restore`: the appliance's state off the box, and back
//! on a replacement ([`crate::backup`] has the archive and what is in it).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;

use crate::backup::{self, BackupError};
use crate::config::locate::ApplianceArgs;

/// `kakehashi backup [--config FILE] COMMAND`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub appliance: ApplianceArgs,
    #[command(subcommand)]
    pub command: BackupCommand,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Take a backup to `[backup] dir` or `sftp` now, read it back and verify it; prints the
    /// archive's path (or URL) on its last line
    Run {
        /// What was done as one JSON object
        #[arg(long)]
        json: bool,
    },
    /// The archives at the target (`[backup] dir` or `sftp`), oldest first: this appliance's and
    /// others'
    List {
        #[arg(long)]
        json: bool,
    },
    /// Open an archive of this appliance with its own key and check it as a restore would: a file,
    /// or a name or URL at the SFTP target (default: the newest at the target)
    Verify { archive: Option<PathBuf> },
    /// Make a replacement appliance's directory from an archive: DIR/gateway.toml runs it.
    /// ARCHIVE is a file or sftp://USER@HOST[:PORT]/PATH/NAME; an incremental archive's earlier
    /// archives are read from the same place
    Restore {
        archive: PathBuf,
        /// An age identity the archive was encrypted to (the clinic's or the vendor's backup key)
        #[arg(long, value_name = "FILE")]
        identity: PathBuf,
        /// A new (or empty) directory
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// For an sftp:// ARCHIVE: the server's host key, pinned (an OpenSSH known_hosts file)
        #[arg(long, value_name = "FILE", requires = "ssh_key")]
        known_hosts: Option<PathBuf>,
        /// For an sftp:// ARCHIVE: the SSH private key to log in with
        #[arg(long, value_name = "FILE", requires = "known_hosts")]
        ssh_key: Option<PathBuf>,
    },
}

/// Why a backup command failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupCliError {
    #[error(transparent)]
    Locate(#[from] crate::config::locate::LocateError),
    #[error(transparent)]
    Backup(#[from] BackupError),
}

#[derive(Serialize)]
struct Listed {
    archive: String,
    appliance: Option<String>,
    created: Option<String>,
    this_appliance: bool,
    bytes: u64,
    error: Option<String>,
}

/// Runs `kakehashi backup …`.
pub fn run(args: BackupArgs) -> Result<ExitCode, BackupCliError> {
    match args.command {
        BackupCommand::Restore {
            archive,
            identity,
            to,
            known_hosts,
            ssh_key,
        } => {
            let ssh = known_hosts.as_deref().zip(ssh_key.as_deref());
            let done = backup::restore(&archive, ssh, &identity, &to)?;
            let c = &done.manifest.counts;
            println!(
                "restored the backup of {} taken {} (kakehashi {}): {} terminals, {} people, {} journal entries waiting, {} audit entries",
                done.manifest.appliance,
                done.manifest.created,
                done.manifest.version,
                c.terminals,
                c.users,
                c.journal_pending,
                c.audit_entries
            );
            println!(
                "start it with: kakehashi gateway run --config {}",
                done.config.display()
            );
            println!("{}", done.dir.display());
            return Ok(ExitCode::SUCCESS);
        }
        BackupCommand::Run { json } => {
            let config = args.appliance.load("its [backup] section")?;
            let done = backup::run(&config)?;
            if json {
                let v = serde_json::json!({
                    "archive": done.archive, "bytes": done.bytes, "seconds": done.took.as_secs_f64(),
                    "removed": done.removed, "cleaned": done.cleaned, "manifest": done.manifest,
                    "pruned": done.pruned.iter().map(|p| serde_json::json!({
                        "segment": p.path, "first": p.first, "last": p.last, "bytes": p.bytes,
                    })).collect::<Vec<_>>(),
                });
                println!("{v}");
            } else {
                let c = &done.manifest.counts;
                println!(
                    "backed up and verified in {:.1} s: {} bytes; {} terminals, {} people, {} journal entries ({} waiting), {} audit entries",
                    done.took.as_secs_f64(),
                    done.bytes,
                    c.terminals,
                    c.users,
                    c.journal_entries,
                    c.journal_pending,
                    c.audit_entries
                );
                let referenced = &done.manifest.referenced;
                if !referenced.is_empty() {
                    let mut homes: Vec<&str> = referenced.iter().map(|r| r.archive.as_str()).collect();
                    homes.sort_unstable();
                    homes.dedup();
                    println!(
                        "incremental: {} sealed audit segments are in earlier archives, not sent again: {}",
                        referenced.len(),
                        homes.join(", ")
                    );
                }
                for partial in &done.cleaned {
                    println!("removed {}: left by a run that did not finish", partial.display());
                }
                for old in &done.removed {
                    println!("removed (backup.keep): {}", old.display());
                }
                for p in &done.pruned {
                    println!(
                        "pruned audit segment (in this verified backup): entries {} to {}, {} bytes",
                        p.first, p.last, p.bytes
                    );
                }
                println!("{}", done.archive.display());
            }
        }
        BackupCommand::List { json } => {
            let config = args.appliance.load("its [backup] section")?;
            let target = config.backup.as_ref().ok_or_else(|| no_section(&config))?;
            let me = backup::existing_identity(&config.data_dir)?.map(|i| i.recipient());
            let (_, archives) = backup::list(target)?;
            let listed: Vec<Listed> = archives
                .into_iter()
                .map(|a| {
                    let (appliance, created, error) = match a.header {
                        Ok(h) => (Some(h.appliance), Some(h.created), None),
                        Err(e) => (None, None, Some(e.to_string())),
                    };
                    Listed {
                        archive: a.at.display().to_string(),
                        this_appliance: appliance.is_some() && appliance == me,
                        appliance,
                        created,
                        bytes: a.bytes,
                        error,
                    }
                })
                .collect();
            for l in &listed {
                if json {
                    println!("{}", serde_json::to_string(l).unwrap_or_default());
                } else {
                    let whose = if l.this_appliance {
                        "this appliance"
                    } else {
                        "another appliance"
                    };
                    match &l.error {
                        Some(e) => println!("{}  unreadable: {e}", l.archive),
                        None => println!(
                            "{}  {}  {} bytes  {whose}",
                            l.archive,
                            l.created.as_deref().unwrap_or("-"),
                            l.bytes
                        ),
                    }
                }
            }
            if let Some(state) = backup::state::read(&config.data_dir)
                && !json
            {
                match (&state.last_ok, &state.last_error) {
                    (false, Some(e)) => println!(
                        "last run {}: FAILED: {e}",
                        state.last_run.as_deref().unwrap_or("-")
                    ),
                    _ => println!("last run {}: ok", state.last_run.as_deref().unwrap_or("-")),
                }
            }
        }
        BackupCommand::Verify { archive } => {
            let config = args.appliance.load("its [backup] section")?;
            let me = backup::existing_identity(&config.data_dir)?.ok_or_else(|| {
                BackupError::Refused(format!(
                    "{}: no {}: this appliance never took a backup, so none is its own (restore \
                     another's with `backup restore --identity`)",
                    config.data_dir.display(),
                    backup::SELF_KEY
                ))
            })?;
            if config.backup.is_none() {
                return Err(no_section(&config).into());
            }
            let (path, manifest) = backup::verify_at_target(&config, archive.as_deref(), &me)?;
            let c = &manifest.counts;
            println!(
                "{}: verified: taken {}, {} files, {} terminals, {} people, {} journal entries ({} waiting), {} audit entries, its audit head in the live log",
                path.display(),
                manifest.created,
                manifest.files.len(),
                c.terminals,
                c.users,
                c.journal_entries,
                c.journal_pending,
                c.audit_entries
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn no_section(config: &crate::config::Config) -> BackupError {
    BackupError::Refused(format!("{}: no [backup] section", config.source.display()))
}
