//! `kakehashi terminal …`: the inventory of terminals that may connect.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{or_dash, to_json};
use crate::db::{self, DataDirArgs, Result};
use crate::inventory::{self, Inventory};

/// What a running gateway needs to see a change to the inventory.
const RELOAD_HINT: &str =
    "a running gateway picks this up on SIGHUP: `systemctl reload kakehashi` or `kill -HUP <pid>`";

/// `kakehashi terminal [--data-dir DIR] COMMAND`.
#[derive(Debug, Args)]
pub struct TerminalArgs {
    #[command(flatten)]
    pub data: DataDirArgs,
    #[command(subcommand)]
    pub command: TerminalCommand,
}

#[derive(Debug, Subcommand)]
pub enum TerminalCommand {
    /// Register a terminal by its certificate's common name; it may connect at once (after SIGHUP)
    Add {
        /// The name on its certificate (`kakehashi cert issue --name`)
        name: String,
        /// Free text: whose it is, where it stands (at most 200 characters)
        #[arg(long)]
        note: Option<String>,
    },
    /// List the terminals
    List {
        /// Machine-readable output: a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Refuse a terminal's connections even with a valid certificate (a lost laptop)
    Disable { name: String },
    /// Let a disabled terminal connect again
    Enable { name: String },
    /// Remove a terminal from the inventory (revoke its certificate too)
    Remove { name: String },
}

/// Runs one `terminal` command.
pub fn run(args: TerminalArgs) -> Result<ExitCode> {
    let conn = db::open(&args.data.data_dir)?;
    let changed = match args.command {
        TerminalCommand::Add { name, note } => {
            inventory::add(&conn, &name, note.as_deref())?;
            format!("registered terminal {name} (enabled)")
        }
        TerminalCommand::Disable { name } => {
            inventory::set_enabled(&conn, &name, false)?;
            format!("disabled terminal {name}: its connections are refused")
        }
        TerminalCommand::Enable { name } => {
            inventory::set_enabled(&conn, &name, true)?;
            format!("enabled terminal {name}")
        }
        TerminalCommand::Remove { name } => {
            inventory::remove(&conn, &name)?;
            format!(
                "removed terminal {name}; revoke its certificate too: \
                 `kakehashi cert revoke --dir CA --name {name}`"
            )
        }
        TerminalCommand::List { json } => {
            list(&Inventory::load(&conn)?, json)?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    println!("{changed}");
    println!("{RELOAD_HINT}");
    Ok(ExitCode::SUCCESS)
}

fn list(inventory: &Inventory, json: bool) -> Result<()> {
    if json {
        let all: Vec<_> = inventory.iter().collect();
        println!("{}", to_json(&all)?);
        return Ok(());
    }
    println!("{:<32}  {:<8}  {:<20}  NOTE", "NAME", "STATUS", "ADDED");
    for t in inventory.iter() {
        println!(
            "{:<32}  {:<8}  {:<20}  {}",
            t.name,
            if t.enabled { "enabled" } else { "disabled" },
            t.added,
            or_dash(t.note.as_deref())
        );
    }
    Ok(())
}
