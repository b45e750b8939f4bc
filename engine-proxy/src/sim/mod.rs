//! `kakehashi engine-sim`: a reference cloud receipt engine.
//!
//! A real server, faithful to the engine's API conventions (DESIGN.md, "The cloud engine's API"),
//! for installation checks, the demo, tests and benchmarks: HTTP Basic on every call, JSON
//! (`?format=json`) and typed XML bodies, `Api_Result` codes, the optional `/api` prefix, an
//! SQLite file, idempotency keys on writes, and the push WebSocket. Optional HTTPS, and client
//! certificates required as the cloud requires them.

mod api;
mod body;
mod http;
mod push;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use store::Store;

/// How to run the reference engine.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// The SQLite database file (created if missing)
    #[arg(long, default_value = "engine-sim.db")]
    pub db: PathBuf,
    /// Fill the database with a few fictional patients (`demo`)
    #[arg(long, value_name = "SET", value_parser = ["demo"])]
    pub seed: Option<String>,
    /// An account allowed to call the engine, ID:PASSWORD (repeatable)
    #[arg(
        long = "user",
        value_name = "ID:PASSWORD",
        default_value = "ormaster:ormaster"
    )]
    pub users: Vec<String>,
    /// Serve HTTPS with this certificate (PEM, chain first)
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates issued by this CA (PEM), as the cloud engine does
    #[arg(long, requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("database {0}")]
    Store(#[from] store::StoreError),
    #[error("--user {0:?}: expected ID:PASSWORD")]
    User(String),
    #[error("{path}: {detail}")]
    Tls { path: String, detail: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs the engine until SIGINT or SIGTERM.
pub async fn run(args: SimArgs) -> Result<(), SimError> {
    let store = Store::open(&args.db)?;
    if args.seed.is_some() {
        store.seed_demo()?;
    }
    let users = args
        .users
        .iter()
        .map(|u| {
            u.split_once(':')
                .map(|(i, p)| (i.to_owned(), p.to_owned()))
                .ok_or_else(|| SimError::User(u.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(http::tls_acceptor(cert, key, args.client_ca.as_deref())?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| SimError::Listen {
            addr: args.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SimError::Listen {
        addr: args.listen,
        source,
    })?;
    let state = Arc::new(http::State::new(store, users));
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("READY {scheme}://{addr}");
    http::serve(listener, tls, state).await;
    Ok(())
}
