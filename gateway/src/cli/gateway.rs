//! `kakehashi gateway …`: run the daemon, check a configuration, and the appliance's side of the
//! vendor workflow (`init`, `import-bundle`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::config::ListenerKind;
use crate::config::locate::ApplianceArgs;
use crate::daemon::gateway::{StartError, read_secret};
use crate::doors::live::Snapshot;
use crate::doors::tls::policy;
use crate::store::StoreError;
use crate::store::inventory::Inventory;

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
    /// The certificate name of the appliance's server and uplink requests: 1 to 64 letters,
    /// digits, '.', '-', '_' or '@', no spaces (the clinic's name for people is the vendor's
    /// `provision clinic add --name`)
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
            let config = args.load("gateway run").map_err(StoreError::from)?;
            let source = config.source.clone();
            // Started by the firmware supervisor: `firmware activate` (SIGUSR2) hands over to it.
            let handover = crate::cli::firmware::activate::Handover::from_env();
            let stopped = crate::daemon::run(config, handover.is_some())?;
            if let (crate::daemon::Stopped::Activate, Some(handover)) = (stopped, handover) {
                return Err(StartError::File {
                    path: source,
                    message: handover.exec(),
                });
            }
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
        && !crate::config::locate::same_path(args.appliance.config_file(), &config)
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
    let inventory = if config.data_dir.join(crate::store::GATEWAY_DB).exists() {
        Arc::new(Inventory::load(&crate::store::open(&config.data_dir)?)?)
    } else {
        Arc::new(Inventory::default())
    };
    let enabled = inventory.enabled_count();
    Snapshot::with_inventory(&config.tls, config.est.is_some(), inventory, 0)?;
    policy::client_config(&config.upstream.ca, &config.upstream.cert, &config.upstream.key)?;
    read_secret(&config.upstream.password_file)?;
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
    if let Some(b) = &config.backup {
        // Checked, not tried: `backup run` connects (a vendor's server may be down for a while).
        match (&b.dir, b.sftp_url(), &b.known_hosts) {
            (Some(dir), _, _) => println!("  backup: to {}, keep {}", dir.display(), b.keep),
            (None, Some(Ok(url)), Some(known)) => println!(
                "  backup: to {url}, keep {}, its host key pinned in {}",
                b.keep,
                known.display()
            ),
            _ => {}
        }
    }
    if let Some(t) = config.tls.crl.as_deref().and_then(policy::crl_next_update)
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
