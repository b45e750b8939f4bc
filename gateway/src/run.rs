//! `kakehashi gateway run|check`: the daemon's life cycle.
//!
//! Start: read and check the configuration, load TLS material and the inventory, bind every
//! listener (or fail naming the address), then print `READY <URL>` and notify systemd. SIGHUP
//! reloads certificates, CRL and inventory without touching established connections; SIGTERM or
//! Ctrl-C stops accepting, lets in-flight requests finish for `limits.shutdown_secs`, and flushes
//! the audit log.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::locator::ApplianceArgs;
use crate::config::{Config, ListenerKind};
use crate::db::StoreError;
use crate::listener::{self, Route};
use crate::metrics::Metrics;
use crate::state::{Gateway, StartError};
use crate::{admin, systemd, tcp};

#[derive(Debug, clap::Subcommand)]
pub enum GatewayCommand {
    /// Run the gateway (prints READY <URL> once it listens; SIGHUP reloads, SIGTERM stops)
    Run(ApplianceArgs),
    /// Check a configuration and every file it names, without starting anything
    Check(ApplianceArgs),
    /// Make this appliance's keys (device identity, issuing CA, TLS server, uplink, WireGuard) in
    /// a data directory, and the request file for the vendor (DIR/request.json)
    Init(InitArgs),
    /// Apply a bundle from the vendor: checked (signature, this appliance, newer than the
    /// installed one), applied atomically, live in a running gateway without a restart
    ImportBundle(ImportArgs),
}

/// `gateway init`: the data directory is created (0700); before the first bundle there is no
/// configuration, so it is usually named with `--data-dir`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub appliance: ApplianceArgs,
    /// The common name of the appliance's server and uplink requests
    #[arg(long, default_value = "kakehashi-gateway")]
    pub name: String,
    /// Pin the vendor's bundle-signing key now: its SHA256:… fingerprint, or the vendor's
    /// vendor-key.txt (otherwise the first import pins it with --trust-vendor)
    #[arg(long, value_name = "FINGERPRINT|FILE")]
    pub vendor_key: Option<String>,
    /// Print the request as JSON instead of a summary
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The bundle file (from `kakehashi provision bundle build`)
    pub file: PathBuf,
    /// The appliance (made by `gateway init`); the import writes DATA_DIR/gateway.toml
    #[command(flatten)]
    pub appliance: ApplianceArgs,
    /// On the first import when no vendor key is pinned: the fingerprint the vendor gave you;
    /// the bundle must be signed by it, and it is pinned
    #[arg(long, value_name = "FINGERPRINT")]
    pub trust_vendor: Option<String>,
    /// Print what was done as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `gateway run` or `gateway check`.
pub fn run(cmd: GatewayCommand) -> Result<ExitCode, StartError> {
    match cmd {
        GatewayCommand::Check(args) => check(&args),
        GatewayCommand::Init(args) => init(&args),
        GatewayCommand::ImportBundle(args) => import_bundle(&args),
        GatewayCommand::Run(args) => {
            init_logging();
            let config = args.load("gateway run").map_err(StoreError::from)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| StartError::File {
                    path: config.source.clone(),
                    message: format!("cannot start the async runtime: {e}"),
                })?;
            runtime.block_on(serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init(args: &InitArgs) -> Result<ExitCode, StartError> {
    let data_dir = args.appliance.data_dir().map_err(StoreError::from)?;
    let request = crate::appliance::init::init(&data_dir, &args.name, args.vendor_key.as_deref())?;
    let layout = crate::appliance::Layout::new(&data_dir);
    if args.json {
        print!("{}", request.to_json());
        return Ok(ExitCode::SUCCESS);
    }
    println!("Initialized the appliance in {}.", data_dir.display());
    println!("  device identity     {}", request.appliance);
    println!("  WireGuard key       {}", request.wireguard_public_key);
    match &request.vendor_key {
        Some(pin) => println!("  vendor key pinned   {pin}"),
        None => println!("  vendor key          not pinned yet: the first import needs --trust-vendor"),
    }
    println!(
        "Give {} to your vendor (it holds no secret). Then import the bundle they send:",
        layout.request().display()
    );
    println!(
        "  kakehashi gateway import-bundle BUNDLE --data-dir {}",
        data_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn import_bundle(args: &ImportArgs) -> Result<ExitCode, StartError> {
    let data_dir = args.appliance.data_dir().map_err(StoreError::from)?;
    let report = crate::appliance::import::import(&data_dir, &args.file, args.trust_vendor.as_deref())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    let i = &report.installed;
    match report.previous_version {
        Some(v) => println!(
            "Installed clinic {} bundle version {} (was {v}).",
            i.clinic, i.version
        ),
        None => println!("Installed clinic {} bundle version {}.", i.clinic, i.version),
    }
    if report.pinned {
        println!("  pinned vendor key {}", i.vendor_key);
    }
    println!(
        "  {} terminals, {} users; {} enrollment tokens added",
        report.terminals, report.users, report.tokens_added
    );
    for (what, list) in [
        ("removed terminals", &report.removed_terminals),
        ("removed users", &report.removed_users),
        ("revoked", &report.revoked),
    ] {
        if !list.is_empty() {
            println!("  {what}: {}", list.join(", "));
        }
    }
    let config = crate::appliance::Layout::new(&data_dir).config();
    // The data directory came from another configuration file than the one the import writes:
    // that file, which a gateway may be running with, is not changed.
    if args.appliance.data_dir.is_none()
        && !crate::cli::locator::same_path(args.appliance.config_file(), &config)
    {
        println!(
            "Note: the bundle's settings are in {}; {} (which named this data directory) is not \
             changed: a gateway run with it does not see new settings",
            config.display(),
            args.appliance.config_file().display()
        );
    }
    if report.previous_version.is_none() {
        println!(
            "Start the gateway: kakehashi gateway run --config {}",
            config.display()
        );
    } else if report.restart_for.is_empty() {
        println!("A running gateway applies it within a second, without dropping connections.");
    } else {
        println!(
            "A running gateway applies certificates, CRL, terminals and people now; restart it for: {}",
            report.restart_for.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn check(args: &ApplianceArgs) -> Result<ExitCode, StartError> {
    let config = args.load("gateway check").map_err(StoreError::from)?;
    let path = &config.source;
    let inventory = if config.data_dir.join("gateway.db").exists() {
        Arc::new(crate::inventory::Inventory::load(&crate::db::open(
            &config.data_dir,
        )?)?)
    } else {
        Arc::new(crate::inventory::Inventory::default())
    };
    let enabled = inventory.enabled_count();
    let verifier = crate::tls::terminal_verifier(&config.tls, inventory)?;
    crate::tls::server_config(&config.tls, verifier, &[])?;
    crate::tls::client_config(&config.upstream.ca, &config.upstream.cert, &config.upstream.key)?;
    crate::state::read_secret(&config.upstream.password_file)?;
    println!("{}: OK", path.display());
    for l in &config.listeners {
        let what = match l.kind {
            ListenerKind::Api => format!("engine API → {}", config.upstream.url),
            ListenerKind::Tcp => format!("raw TCP → {}", l.upstream.as_deref().unwrap_or("")),
        };
        println!("  listener {} on {}: {what}", l.route(), l.address);
    }
    if let Some(wg) = &config.wireguard {
        let ports: Vec<String> = wg
            .ports
            .iter()
            .map(|p| format!("{} → {}{}", p.port, p.route, if p.tls { " (TLS)" } else { "" }))
            .collect();
        println!(
            "  WireGuard on UDP {} ({:?} mode), tunnel {}: {}",
            wg.listen,
            wg.mode,
            wg.address,
            ports.join(", ")
        );
    }
    println!(
        "  terminals enabled: {enabled}; person authentication: {}",
        if config.auth.person { "on" } else { "OFF" }
    );
    if let Some(admin) = config.admin.address {
        println!("  metrics: http://{admin}/metrics");
    }
    if let Some(est) = &config.est {
        if let Some(authority) = crate::est::authority::Authority::from_config(&config) {
            crate::est::check_authority(&config, &authority)?;
        }
        println!(
            "  EST enrollment: https://{}{} (CA {})",
            est.listen,
            crate::est::PREFIX,
            est.ca_dir.display()
        );
    }
    if let Some(t) = config.tls.crl.as_deref().and_then(crate::tls::crl_next_update)
        && t <= time::OffsetDateTime::now_utc()
    {
        println!(
            "  WARNING: the CRL's next update was {}: it is still enforced; publish a fresh one",
            cert_tool::ca::rfc3339(t)
        );
    }
    if config.tls.crl.is_none() {
        println!("  WARNING: no tls.crl: a revoked terminal certificate would be admitted");
    }
    Ok(ExitCode::SUCCESS)
}

/// How often a stale CRL is reported again while no fresh one arrives.
const STALE_CRL_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
/// How often the CRL file is looked at.
const CRL_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// The CRL's modification time and size: what tells that a new one was written.
fn file_stamp(path: Option<&std::path::Path>) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path?).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Watches the CRL file and the installed bundle's record (`DATA_DIR/bundle.json`):
/// - a new CRL (`kakehashi terminal revoke`, `cert crl`) or a newly imported bundle is loaded
///   within a second, with the inventory, as SIGHUP would: a revocation takes effect at once;
/// - while the loaded CRL is past its next update, `crl_stale` is 1 and a warning is logged at
///   once and then hourly. The CRL stays enforced all along (see [`crate::tls::crl_next_update`]).
async fn watch_crl(gateway: Arc<Gateway>) {
    let path = gateway.config.tls.crl.clone();
    let installed = gateway.config.data_dir.join(crate::appliance::INSTALLED);
    let stamps = || (file_stamp(path.as_deref()), file_stamp(Some(&installed)));
    let mut seen = stamps();
    let mut warned: Option<(u64, std::time::Instant)> = None;
    loop {
        tokio::time::sleep(CRL_POLL).await;
        let stamp = stamps();
        if stamp != seen {
            seen = stamp;
            let g = gateway.clone();
            let failed = match tokio::task::spawn_blocking(move || g.reload()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            match failed {
                None => {
                    Metrics::inc(&gateway.metrics.reloads_total);
                    tracing::info!("loaded the new CRL or bundle (certificates, inventory, people)")
                }
                Some(error) => {
                    Metrics::inc(&gateway.metrics.reload_failures_total);
                    tracing::error!(%error, "the new CRL or bundle could not be loaded; keeping the previous state")
                }
            }
        }
        let live = gateway.live();
        match live.crl_stale() {
            Some(since) => {
                Metrics::set(&gateway.metrics.crl_stale, 1);
                let due = warned.is_none_or(|(generation, at)| {
                    generation != live.generation || at.elapsed() >= STALE_CRL_WARNING_EVERY
                });
                if due {
                    tracing::warn!(
                        crl = %path.as_deref().unwrap_or(std::path::Path::new("")).display(),
                        next_update = %cert_tool::ca::rfc3339(since),
                        "the CRL is past its next update: still enforcing it (no terminal is locked \
                         out for it); publish a fresh one (`kakehashi cert crl`)"
                    );
                    warned = Some((live.generation, std::time::Instant::now()));
                }
            }
            None => {
                Metrics::set(&gateway.metrics.crl_stale, 0);
                warned = None;
            }
        }
    }
}

/// Human-readable logs on a terminal, JSON under systemd (which sets `JOURNAL_STREAM`); the
/// level from `RUST_LOG` (default `info`). Logs go to stderr: stdout carries only `READY`.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn bind(address: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Listen { address, source })
}

/// One listening socket on `address` that every worker binds (SO_REUSEPORT): the kernel spreads
/// new connections over the workers' sockets, and no connection ever changes threads.
fn shared_socket(address: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    let err = |source| StartError::Listen { address, source };
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.set_reuseport(true).map_err(err)?;
    socket.bind(address).map_err(err)?;
    // Deregistered from this runtime: each worker registers its own with its own runtime.
    socket.listen(1024).and_then(|l| l.into_std()).map_err(err)
}

/// The gateway runs on worker threads, one per core, each a single-threaded runtime with its
/// own sockets and its own connections to the engine: a request, its terminal connection and the
/// engine connection carrying it stay on one thread, as in nginx's worker model, with no
/// cross-thread wake-ups on the hot path. This thread keeps signals and the admin listener.
async fn serve(config: Config) -> Result<(), StartError> {
    let gateway = Arc::new(Gateway::start(config)?);
    crate::hybrid::start(&gateway)?;
    if gateway.config.tls.crl.is_none() {
        tracing::warn!(
            "no tls.crl: a revoked terminal certificate would be admitted; set it to the clinic CA's CRL"
        );
    }
    let workers = gateway.config.limits.workers();
    // Bind every listener once here, port 0 included, so that all workers share the address
    // actually bound and a bad address fails before anything runs.
    let mut listeners = Vec::new();
    for l in &gateway.config.listeners {
        let route = Arc::new(match l.kind {
            ListenerKind::Api => Route::Api(l.route()),
            ListenerKind::Tcp => Route::Tcp(Arc::new(tcp::Route::new(l))),
        });
        let first = shared_socket(l.address)?;
        let address = first.local_addr().map_err(|source| StartError::Listen {
            address: l.address,
            source,
        })?;
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(shared_socket(address)?);
        }
        tracing::info!(%address, route = %route.name(), workers, "listening");
        listeners.push((address, route, l.kind, sockets));
    }
    let est_listener = match &gateway.config.est {
        Some(est) => Some(bind(est.listen).await?),
        None => None,
    };
    let admin_listener = match gateway.config.admin.address {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let ready = listeners
        .iter()
        .find(|(_, _, kind, _)| *kind == ListenerKind::Api)
        .map(|(address, ..)| *address);

    let (stop, stopping) = tokio::sync::watch::channel(false);
    let (exit, exiting) = tokio::sync::watch::channel(false);
    let routes = listeners
        .iter()
        .map(|(_, route, ..)| (route.name().to_owned(), route.clone()))
        .collect();
    let wireguard = crate::wg::start(&gateway, &routes, stopping.clone(), exiting.clone())?;
    let mut threads = Vec::new();
    for w in 0..workers {
        let sockets: Vec<_> = listeners
            .iter_mut()
            .map(|(_, route, _, sockets)| (sockets.pop(), route.clone()))
            .collect();
        let engine = Arc::new(gateway.engine()?);
        let (gateway, stopping, mut exiting) = (gateway.clone(), stopping.clone(), exiting.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StartError::File {
                path: "worker runtime".into(),
                message: e.to_string(),
            })?;
        let thread = std::thread::Builder::new()
            .name(format!("worker-{w}"))
            .spawn(move || {
                runtime.block_on(async move {
                    for (socket, route) in sockets {
                        let Some(socket) = socket else { continue };
                        match TcpListener::from_std(socket) {
                            Ok(socket) => {
                                let serving = listener::serve(
                                    gateway.clone(),
                                    engine.clone(),
                                    socket,
                                    route,
                                    stopping.clone(),
                                );
                                tokio::spawn(serving);
                            }
                            Err(e) => tracing::error!(error = %e, "a worker cannot use its socket"),
                        }
                    }
                    let _ = exiting.wait_for(|e| *e).await;
                });
                // Dropping the runtime here cancels whatever outlived the grace period.
            })
            .map_err(|e| StartError::File {
                path: "worker thread".into(),
                message: e.to_string(),
            })?;
        threads.push(thread);
    }
    let admin_task = admin_listener.map(|l| {
        if let Ok(a) = l.local_addr() {
            tracing::info!(address = %a, "metrics at http://{a}/metrics");
        }
        tokio::spawn(admin::serve(gateway.clone(), l))
    });
    let est_task = est_listener.map(|l| {
        if let Ok(a) = l.local_addr() {
            tracing::info!(address = %a, "EST enrollment at https://{a}{}", crate::est::PREFIX);
        }
        tokio::spawn(crate::est::serve(gateway.clone(), l, stopping.clone()))
    });
    let crl_watch = tokio::spawn(watch_crl(gateway.clone()));
    if let Some(address) = ready {
        println!("READY https://{address}");
        let _ = std::io::stdout().flush();
    }
    systemd::notify("READY=1");

    let signals = || -> Result<_, StartError> {
        let sig = |kind| {
            signal(kind).map_err(|e| StartError::File {
                path: "signal handler".into(),
                message: e.to_string(),
            })
        };
        Ok((
            sig(SignalKind::hangup())?,
            sig(SignalKind::terminate())?,
            sig(SignalKind::interrupt())?,
        ))
    };
    let (mut hup, mut term, mut int) = signals()?;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                systemd::notify("RELOADING=1");
                match gateway.reload() {
                    Ok(()) => {
                        Metrics::inc(&gateway.metrics.reloads_total);
                        tracing::info!(terminals = gateway.live().inventory.enabled_count(), "reloaded certificates, CRL and inventory");
                    }
                    Err(e) => {
                        Metrics::inc(&gateway.metrics.reload_failures_total);
                        tracing::error!(error = %e, "reload failed; keeping the previous configuration");
                    }
                }
                systemd::notify("READY=1");
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    systemd::notify("STOPPING=1");
    tracing::info!("stopping: no new connections; finishing requests in flight");
    let _ = stop.send(true);
    if let Some(t) = admin_task {
        t.abort();
    }
    if let Some(t) = est_task {
        t.abort();
    }
    crl_watch.abort();
    let grace = std::time::Duration::from_secs(gateway.config.limits.shutdown_secs);
    // Every open connection holds a permit: all of them back means all connections are closed.
    let all = gateway.config.limits.max_connections as u32;
    if tokio::time::timeout(grace, gateway.connections.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {grace:?}; closing them");
    }
    let _ = exit.send(true);
    if let Some((_, thread)) = wireguard {
        threads.push(thread);
    }
    for thread in threads {
        let _ = thread.join();
    }
    if let Err(e) = gateway.audit.clone().close().await {
        tracing::error!(error = %e, "the audit log could not be flushed");
    }
    tracing::info!("stopped");
    Ok(())
}
