//! `kakehashi engine-sim`: a reference cloud receipt engine.
//!
//! A real server, faithful to the engine's API conventions (DESIGN.md, "The cloud engine's API"),
//! for installation checks, the demo, tests and benchmarks: HTTP Basic on every call, JSON
//! (`?format=json`) and typed XML bodies, `Api_Result` codes, the optional `/api` prefix, an
//! SQLite file, idempotency keys on writes, and the push WebSocket. Optional HTTPS, and client
//! certificates required as the cloud requires them.
//!
//! Its own crate, apart from `engine-proxy`: the appliance never runs it, so the proxy carries
//! none of its WebSocket, TOML or command-line code. It shares with the proxy what must match:
//! the engine's body formats ([`engine_proxy::format`]) and the TLS provider and PEM loading
//! ([`engine_proxy::tls`]).
//!
//! Inside, a module a concern: `http` (accept, authenticate, parse, dispatch) and `reply` (what
//! it answers with), `api` (the engine's calls), `store` (its SQLite file), `push` (the push
//! WebSocket) and `bulk` (the `/sim/…` bulk-transfer diagnostics).
#![forbid(unsafe_code)]

mod api;
mod bulk;
mod http;
mod push;
mod reply;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use store::Store;

/// How to run the reference engine: options, or a TOML file with the same settings.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Read every setting from this TOML file instead (see docs/engine-sim.md, engine.toml)
    #[arg(long, conflicts_with_all = ["listen", "db", "seed", "users", "tls_cert", "tls_key", "client_ca"])]
    pub config: Option<PathBuf>,
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

/// The engine's settings, from the command line or from `engine.toml`.
///
/// ```toml
/// listen = "127.0.0.1:8000"
/// db = "engine.db"            # relative paths are relative to this file
/// seed = "demo"
/// [[users]]
/// id = "ormaster"
/// password = "ormaster"
/// [tls]                       # optional: HTTPS
/// cert = "engine.pem"
/// key = "engine.key"
/// client_ca = "cloud-ca.pem"  # optional: require client certificates
/// ```
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    pub db: PathBuf,
    #[serde(default)]
    pub seed: Option<Seed>,
    pub users: Vec<Account>,
    #[serde(default)]
    pub tls: Option<TlsFiles>,
}

/// Which fictional data to add.
#[derive(Clone, Copy, Debug, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Seed {
    Demo,
}

/// An account allowed to call the engine, with HTTP Basic (`[[users]]` in engine.toml).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub id: String,
    pub password: String,
}

/// HTTPS settings.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8000))
}

impl SimConfig {
    /// Reads `engine.toml`; an error names the file, the key and what was expected.
    pub fn load(path: &std::path::Path) -> Result<SimConfig, SimError> {
        let text = std::fs::read_to_string(path).map_err(|e| SimError::Config {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        let mut config: SimConfig = toml::from_str(&text).map_err(|e| SimError::Config {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        config.db = base.join(&config.db);
        if let Some(tls) = &mut config.tls {
            tls.cert = base.join(&tls.cert);
            tls.key = base.join(&tls.key);
            tls.client_ca = tls.client_ca.as_ref().map(|c| base.join(c));
        }
        if config.users.is_empty() {
            return Err(SimError::Config {
                path: path.display().to_string(),
                detail: "users: at least one [[users]] entry is needed".into(),
            });
        }
        Ok(config)
    }

    fn from_args(args: SimArgs) -> Result<SimConfig, SimError> {
        let users = args
            .users
            .iter()
            .map(|u| {
                u.split_once(':')
                    .map(|(id, password)| Account {
                        id: id.to_owned(),
                        password: password.to_owned(),
                    })
                    .ok_or_else(|| SimError::User(u.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tls = match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: args.client_ca,
            }),
            _ => None,
        };
        Ok(SimConfig {
            listen: args.listen,
            db: args.db,
            seed: args.seed.map(|_| Seed::Demo),
            users,
            tls,
        })
    }
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("database {0}")]
    Store(#[from] store::StoreError),
    #[error("{path}: {detail}")]
    Config { path: String, detail: String },
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
    let config = match &args.config {
        Some(path) => SimConfig::load(path)?,
        None => SimConfig::from_args(args)?,
    };
    let store = Store::open(&config.db)?;
    if config.seed.is_some() {
        store.seed_demo()?;
    }
    let tls = match &config.tls {
        Some(t) => Some(http::tls_acceptor(&t.cert, &t.key, t.client_ca.as_deref())?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| SimError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SimError::Listen {
        addr: config.listen,
        source,
    })?;
    let users = config.users.into_iter().map(|u| (u.id, u.password)).collect();
    let state = Arc::new(http::State::new(store, users));
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("READY {scheme}://{addr}");
    http::serve(listener, tls, state).await;
    Ok(())
}
