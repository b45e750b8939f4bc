//! `kakehashi`: one binary for the appliance and the vendor's laptop.
//!
//! Each subcommand belongs to the crate that owns its work; this file only parses the command
//! line, dispatches, and turns errors into a message and an exit code scripts can rely on:
//! 0 success, 1 failure (or "invalid" from `cert verify`), 2 a command line clap rejected.
#![forbid(unsafe_code)]

mod demo;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Kakehashi: the secure edge gateway for medical clinics.
///
/// Terminals reach the cloud receipt engine through the clinic's router over WireGuard or TLS with
/// a per-terminal certificate, the person signs in with ID and password, and the clinic keeps
/// working when the line is down.
#[derive(Debug, Parser)]
#[command(name = "kakehashi", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The clinic PKI: CA, terminal/server/uplink certificates, CSRs, revocation, CRLs, PKCS#12
    #[command(subcommand)]
    Cert(cert_tool::cli::CertCommand),
    /// Set up a demo clinic in a directory and show what to try with it
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Cert(cmd) => cert_tool::cli::run(cmd),
        Command::Demo(args) => demo::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kakehashi: error: {e}");
            ExitCode::FAILURE
        }
    }
}
