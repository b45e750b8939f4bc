//! `kakehashi`: one binary for the appliance and the vendor's laptop.
//!
//! Each subcommand belongs to the crate that owns its work; this file only parses the command
//! line, dispatches, and turns errors into a message and an exit code scripts can rely on:
//! 0 success, 1 failure (or "invalid" from `cert verify`), 2 a command line clap rejected.
// Deny, not forbid: the one exception is naming `pow` below for the linker.
#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kakehashi_gateway::cli;

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
    /// Run the reference cloud engine (for installation checks, the demo, tests and benchmarks)
    #[cfg(feature = "demo")]
    EngineSim(engine_sim::SimArgs),
    /// The appliance: run the gateway, or check its configuration
    #[command(subcommand)]
    Gateway(cli::gateway::GatewayCommand),
    /// The vendor's workflow: vendor root, clinics from appliance requests, terminals, staff, bundles
    #[cfg(feature = "vendor")]
    Provision(provisioning::cli::ProvisionArgs),
    /// The terminal inventory: which terminals may connect (by certificate name), enable, disable
    Terminal(cli::terminal::TerminalArgs),
    /// The people who sign in at the terminals: passwords, locks, upstream engine accounts
    User(cli::user::UserArgs),
    /// The hash-chained audit log of every access decision: verify it, export it
    Audit(cli::audit::AuditArgs),
    /// Encrypted, verified backups off the box, and a replacement appliance restored from one
    Backup(cli::backup::BackupArgs),
    /// The write journal of cloud outages: list, show, retry or discard what waits or was refused
    Journal(cli::journal::JournalArgs),
    /// The clinic's state at a glance, from the running gateway: cloud, journal, outages,
    /// certificates (the status page's report)
    Status(cli::status::StatusArgs),
    /// Signed appliance updates: A/B slots, install, health-checked commit, rollback
    Firmware(cli::firmware::FirmwareArgs),
    /// Set up a demo clinic in a directory and show what to try with it
    #[cfg(feature = "demo")]
    Demo(cli::demo::DemoArgs),
}

#[cfg(feature = "demo")]
/// Runs a server to completion on a multi-threaded runtime; its error becomes exit code 1.
fn run_async<E: std::fmt::Display>(server: impl std::future::Future<Output = Result<(), E>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kakehashi: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    exit(runtime.block_on(server).map(|()| ExitCode::SUCCESS))
}

/// C's `pow`, defined in the binary. It is the one function of the C math library the binary
/// calls (tokio's multi-threaded scheduler, for its statistics of task poll times), so with it here
/// the linker leaves libm.so out (`--as-needed`) and the loader does not map it at every start:
/// 0.3 MiB of RSS on the router (docs/development.md, "Code laid out for the router"). The libm
/// crate is Rust's port of musl's, accurate to within an ulp.
#[allow(unsafe_code)]
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The two servers the demo starts end when the demo does.
    if demo_server(&cli.command)
        && let Err(e) = cli::demo::end_with_demo()
    {
        eprintln!("kakehashi: error: {e}");
        return ExitCode::FAILURE;
    }
    match cli.command {
        Command::Cert(cmd) => exit(cert_tool::cli::run(cmd)),
        #[cfg(feature = "demo")]
        Command::Demo(args) => exit(cli::demo::run(&args)),
        Command::Gateway(cmd) => exit(cli::gateway::run(cmd)),
        #[cfg(feature = "vendor")]
        Command::Provision(args) => exit(provisioning::cli::run(args)),
        Command::Terminal(args) => exit(cli::terminal::run(args)),
        Command::User(args) => exit(cli::user::run(args)),
        Command::Audit(args) => exit(cli::audit::run(args)),
        Command::Backup(args) => exit(cli::backup::run(args)),
        Command::Journal(args) => exit(cli::journal::run(args)),
        Command::Status(args) => exit(cli::status::run(args)),
        Command::Firmware(args) => exit(cli::firmware::run(args)),
        #[cfg(feature = "demo")]
        Command::EngineSim(args) => run_async(engine_sim::run(args)),
    }
}

/// Whether the command is one of the two servers a demo starts.
fn demo_server(command: &Command) -> bool {
    #[cfg(feature = "demo")]
    if let Command::EngineSim(_) = command {
        return true;
    }
    matches!(command, Command::Gateway(cli::gateway::GatewayCommand::Run(_)))
}

/// A command's exit code, or its error as one line on stderr and exit code 1.
fn exit<E: std::fmt::Display>(result: Result<ExitCode, E>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kakehashi: error: {e}");
            ExitCode::FAILURE
        }
    }
}
