//! `journal-rate`: durable journal appends per second with nothing in front of the journal: no
//! TLS, no HTTP, no person, no audit. `--writers` tasks call
//! `engine_proxy::journal::Journal::append` back to back for `--duration` seconds, each with the
//! entry the gateway journals for `POST /orca11/acceptmodv2?class=01&format=json` and a fresh
//! idempotency key. `bench/failover.sh` runs it next to the same figure through the gateway, on
//! the same file system as the gateway's data directory, to show what the HTTP path costs.
//!
//! Prints one line for people and one `RESULT key=value …` line for scripts.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use engine_proxy::journal::{Journal, NewEntry};
use hyper::body::Bytes;
use tokio::task::JoinSet;

/// Durable journal appends per second from concurrent writers, without the gateway around them.
#[derive(Debug, Parser)]
#[command(name = "journal-rate")]
struct Cli {
    /// The directory for journal.db (created if missing; an existing journal is appended to)
    #[arg(long)]
    dir: PathBuf,
    /// Concurrent writers
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Seconds to measure
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
}

const BODY: &[u8] = br#"{"acceptreq":{"Patient_ID":"1"}}"#;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("journal-rate: error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<(), String> {
    if !(cli.duration.is_finite() && cli.duration > 0.0) || cli.writers == 0 {
        return Err("--duration and --writers must be positive".into());
    }
    std::fs::create_dir_all(&cli.dir).map_err(|e| format!("{}: {e}", cli.dir.display()))?;
    let journal = Journal::open(&cli.dir).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(cli.duration);
    let mut writers = JoinSet::new();
    for w in 0..cli.writers {
        let journal = Arc::clone(&journal);
        writers.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let entry = NewEntry {
                    terminal: Some("reception-1".into()),
                    user: Some("reception".into()),
                    method: "POST".into(),
                    path: "/orca11/acceptmodv2?class=01&format=json".into(),
                    content_type: Some("application/json".into()),
                    body: Bytes::from_static(BODY),
                    idempotency_key: format!("journal-rate-{}-{w}-{n}", std::process::id()),
                };
                journal.append(entry).await?;
                n += 1;
            }
            Ok::<u64, String>(n)
        });
    }
    let mut appends = 0;
    for done in writers.join_all().await {
        appends += done?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rate = appends as f64 / elapsed;
    println!(
        "journal-rate: {rate:.0} durable appends/s from {} writers in {elapsed:.1} s ({appends} appends)",
        cli.writers
    );
    println!(
        "RESULT mode=journal writers={} appends={appends} rate={rate:.1} errors=0",
        cli.writers
    );
    Ok(())
}
