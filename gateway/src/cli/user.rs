//! `kakehashi user …`: the people who sign in at the terminals.
//!
//! Changes take effect at the next sign-in: the gateway reads a person when they sign in, so no
//! reload is needed. A reload (SIGHUP) makes them count at once: remembered credentials are
//! forgotten, and login sessions take the person's scopes as they are now (a person locked or
//! removed is signed out). Passwords and upstream secrets are read from a file's first line, the
//! environment or a prompt, never from the command line (where `ps` would show them).

use std::path::PathBuf;
use std::process::ExitCode;

use cert_tool::keys::Passphrase;
use clap::{Args, Subcommand};
use engine_proxy::scope::Scopes;
use zeroize::Zeroizing;

use super::{or_dash, to_json};
use crate::config::locate::ApplianceArgs;
use crate::store::users::{self, Credential};
use crate::store::{self, Result, StoreError};

/// The environment variable that may hold a new password (for scripts; a file is safer).
pub const PASSWORD_ENV: &str = "KAKEHASHI_USER_PASSWORD";

/// `kakehashi user [--config FILE | --data-dir DIR] COMMAND`.
#[derive(Debug, Args)]
pub struct UserArgs {
    #[command(flatten)]
    pub appliance: ApplianceArgs,
    #[command(subcommand)]
    pub command: UserCommand,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a person who may sign in (password: at least 10 characters, not the ID)
    Add {
        /// Sign-in ID: 1 to 64 of A-Z a-z 0-9 . _ @ -
        id: String,
        #[command(flatten)]
        password: PasswordArgs,
        #[command(flatten)]
        upstream: UpstreamArgs,
        /// What this person may call, at terminals that may call it too: client, reference,
        /// write (comma-separated; write includes reference), all or none
        #[arg(long, value_name = "LIST", default_value = "all")]
        scopes: Scopes,
    },
    /// Change what a person may call (from their next sign-in; SIGHUP for one already signed in)
    Set {
        id: String,
        /// client, reference, write (comma-separated; write includes reference), all or none
        #[arg(long, value_name = "LIST")]
        scopes: Scopes,
    },
    /// Set a new password
    Passwd {
        id: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Refuse a person's sign-in until unlocked
    Lock { id: String },
    /// Let a locked person sign in again
    Unlock { id: String },
    /// Set or clear the account the gateway uses at the cloud engine for this person
    SetUpstream {
        id: String,
        #[command(flatten)]
        upstream: UpstreamArgs,
        /// Remove the upstream account
        #[arg(long, conflicts_with_all = ["upstream_id", "upstream_password_file"], required_unless_present = "upstream_id")]
        clear: bool,
    },
    /// List the people (never a password or an upstream secret)
    List {
        /// Machine-readable output: a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Remove a person
    Remove { id: String },
}

/// Where a new password comes from: this file, else `KAKEHASHI_USER_PASSWORD`, else a prompt.
#[derive(Debug, Args)]
pub struct PasswordArgs {
    /// File whose first line is the new password (else KAKEHASHI_USER_PASSWORD, else asked twice)
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

impl PasswordArgs {
    /// The new password for `id`, checked against the policy.
    fn new_password(&self, id: &str) -> Result<Passphrase> {
        let password = match &self.password_file {
            Some(file) => Passphrase::from_file(file)?,
            None => match std::env::var(PASSWORD_ENV).ok().filter(|v| !v.is_empty()) {
                Some(v) => Passphrase::new(v),
                None => cert_tool::cli::ask(&format!("New password for {id}: "), true)?
                    .ok_or(StoreError::PasswordUnavailable)?,
            },
        };
        users::check_new_password(id, password.expose())?;
        Ok(password)
    }
}

/// The upstream engine account for a person.
#[derive(Debug, Args)]
pub struct UpstreamArgs {
    /// The person's user ID at the cloud engine
    #[arg(long, value_name = "UID", requires = "upstream_password_file")]
    pub upstream_id: Option<String>,
    /// File whose first line is the engine password for --upstream-id
    #[arg(long, value_name = "FILE", requires = "upstream_id")]
    pub upstream_password_file: Option<PathBuf>,
}

impl UpstreamArgs {
    fn credential(&self) -> Result<Option<Credential>> {
        let (Some(id), Some(file)) = (&self.upstream_id, &self.upstream_password_file) else {
            return Ok(None);
        };
        users::check_upstream_id(id)?;
        let password = Passphrase::from_file(file)?;
        Ok(Some(Credential {
            id: id.clone(),
            password: Zeroizing::new(password.expose().to_owned()),
        }))
    }
}

/// Runs one `user` command.
pub fn run(args: UserArgs) -> Result<ExitCode> {
    let conn = store::open(&args.appliance.data_dir()?)?;
    let changed = match args.command {
        UserCommand::Add {
            id,
            password,
            upstream,
            scopes,
        } => {
            users::check_id(&id)?;
            // Refuse before asking for a password that would be thrown away.
            if users::exists(&conn, &id)? {
                return Err(StoreError::UserExists { id });
            }
            let credential = upstream.credential()?;
            let hash = users::hash_password(password.new_password(&id)?.expose().as_bytes())?;
            users::add(&conn, &id, &hash, credential.as_ref(), scopes)?;
            match credential {
                Some(c) => format!("added user {id} (scopes {scopes}, upstream account {})", c.id),
                None => format!("added user {id} (scopes {scopes})"),
            }
        }
        UserCommand::Set { id, scopes } => {
            users::set_scopes(&conn, &id, scopes)?;
            format!("user {id} may now call: {scopes} (from their next sign-in)")
        }
        UserCommand::Passwd { id, password } => {
            if !users::exists(&conn, &id)? {
                return Err(StoreError::UnknownUser { id });
            }
            let hash = users::hash_password(password.new_password(&id)?.expose().as_bytes())?;
            users::set_hash(&conn, &id, &hash)?;
            format!("changed the password of user {id}")
        }
        UserCommand::Lock { id } => {
            users::set_locked(&conn, &id, true)?;
            format!("locked user {id}: sign-in is refused until `kakehashi user unlock {id}`")
        }
        UserCommand::Unlock { id } => {
            users::set_locked(&conn, &id, false)?;
            format!("unlocked user {id}")
        }
        UserCommand::SetUpstream { id, upstream, .. } => {
            let credential = upstream.credential()?;
            users::set_upstream(&conn, &id, credential.as_ref())?;
            match credential {
                Some(c) => format!("set the upstream account of user {id} to {}", c.id),
                None => format!("cleared the upstream account of user {id}"),
            }
        }
        UserCommand::Remove { id } => {
            users::remove(&conn, &id)?;
            format!("removed user {id}")
        }
        UserCommand::List { json } => {
            let all = users::list(&conn)?;
            if json {
                println!("{}", to_json(&all)?);
            } else {
                println!(
                    "{:<24}  {:<8}  {:<23}  {:<24}  {:<20}  CHANGED",
                    "ID", "STATUS", "SCOPES", "UPSTREAM", "CREATED"
                );
                for u in all {
                    println!(
                        "{:<24}  {:<8}  {:<23}  {:<24}  {:<20}  {}",
                        u.id,
                        if u.locked { "locked" } else { "active" },
                        u.scopes.to_string(),
                        or_dash(u.upstream_id.as_deref()),
                        u.created,
                        u.changed
                    );
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    println!("{changed}");
    Ok(ExitCode::SUCCESS)
}
