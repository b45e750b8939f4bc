//! `kakehashi terminal …`: the inventory of terminals that may connect.
//!
//! `terminal add NAME --wireguard` and `terminal wireguard NAME` also make the terminal's
//! WireGuard config: a fresh key pair whose private half goes only into the config file and the
//! QR code, never into the gateway's state.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use cert_tool::files::{self, Staged};
use clap::{Args, Subcommand};
use engine_proxy::scope::Scopes;
use rusqlite::Connection;
use zeroize::Zeroizing;

use super::{or_dash, to_json};
use crate::config::locate::ApplianceArgs;
use crate::config::{Config, WireGuard};
use crate::doors::wireguard::keys::{self, Secret};
use crate::store::inventory::{self, Enroll, Inventory, Registration, WireGuardPeer};
use crate::store::{self, Result, StoreError};
use provisioning_shared::wireguard::{Qr, TerminalConfig};

/// What a running gateway needs to see a change to the inventory.
const RELOAD_HINT: &str =
    "a running gateway picks this up on SIGHUP: `systemctl reload kakehashi` or `kill -HUP <pid>`";

/// `kakehashi terminal [--config FILE | --data-dir DIR] COMMAND`.
///
/// `revoke`, `add --wireguard` and `wireguard` also use the configuration's `[est]` CA,
/// `tls.crl` or `[wireguard]` section: the same `--config`, loaded whole.
#[derive(Debug, Args)]
pub struct TerminalArgs {
    #[command(flatten)]
    pub appliance: ApplianceArgs,
    #[command(subcommand)]
    pub command: TerminalCommand,
}

#[derive(Debug, Subcommand)]
pub enum TerminalCommand {
    /// Register a terminal by its certificate's common name; it may connect at once (after SIGHUP).
    /// With --enroll: make a one-time EST token instead; the terminal registers itself with it
    Add {
        /// The name on its certificate (`kakehashi cert issue --name`)
        #[arg(required_unless_present = "name_option", conflicts_with = "name_option")]
        name: Option<String>,
        /// The same as the positional NAME
        #[arg(long = "name", value_name = "NAME", id = "name_option")]
        name_option: Option<String>,
        /// Make a one-time enrollment token (EST simpleenroll, HTTP Basic NAME:TOKEN), shown once
        /// and stored only as a hash; 5 wrong tries lock it. The terminal is registered when it
        /// enrolls
        #[arg(long, conflicts_with_all = ["wireguard", "note"])]
        enroll: bool,
        /// With --enroll: how long the token works, hours (1 to 720)
        #[arg(long, value_name = "HOURS", default_value_t = crate::store::tokens::DEFAULT_HOURS, requires = "enroll")]
        token_hours: u32,
        /// With --enroll: print the token as JSON (name, token, expires)
        #[arg(long, requires = "enroll")]
        json: bool,
        /// Free text: whose it is, where it stands (at most 200 characters)
        #[arg(long)]
        note: Option<String>,
        /// Also give it a WireGuard identity and write its config (see `terminal wireguard`)
        #[arg(long)]
        wireguard: bool,
        /// What may be called from it, whoever signs in: client, reference, write
        /// (comma-separated; write includes reference), all or none
        #[arg(long, value_name = "LIST", default_value = "all", conflicts_with = "enroll")]
        scopes: Scopes,
        #[command(flatten)]
        wg: WireGuardArgs,
    },
    /// Give a registered terminal a WireGuard identity: a new key pair, a preshared key and the
    /// next free tunnel address; writes its wg-quick config and prints it as a QR code
    #[command(name = "wireguard")]
    WireGuard {
        name: String,
        #[command(flatten)]
        wg: WireGuardArgs,
    },
    /// List the terminals
    List {
        /// Machine-readable output: a JSON array
        #[arg(long)]
        json: bool,
    },
    /// List the enrollment tokens: pending, used, locked (too many wrong tries) or expired
    Tokens {
        /// Machine-readable output: a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Change what may be called from a terminal (applied to its open connections at the next
    /// SIGHUP)
    Set {
        name: String,
        /// client, reference, write (comma-separated; write includes reference), all or none
        #[arg(long, value_name = "LIST")]
        scopes: Scopes,
    },
    /// Refuse a terminal's connections even with a valid certificate (a lost laptop)
    Disable { name: String },
    /// Let a disabled terminal connect again
    Enable { name: String },
    /// Remove a terminal from the inventory (revoke its certificate too)
    Remove { name: String },
    /// Revoke a terminal at once: its certificates in the clinic CA ([est] ca_dir of --config),
    /// a new CRL written to tls.crl, and the terminal disabled in the inventory
    Revoke {
        name: String,
        /// Why, for the CRL
        #[arg(long, value_enum, default_value = "key-compromise")]
        reason: cert_tool::index::Reason,
    },
}

/// Where a WireGuard terminal's config goes. Its settings (network, endpoint, MTU, keepalive,
/// the gateway's key) come from the `[wireguard]` section of `--config`.
#[derive(Debug, Args)]
pub struct WireGuardArgs {
    /// Where to write the terminal's wg-quick config (mode 0600; never overwritten) [default:
    /// NAME-wg.conf]
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Also write the QR code as a PNG image (mode 0600: it holds the terminal's private key)
    #[arg(long, value_name = "FILE")]
    pub qr_png: Option<PathBuf>,
    /// No preshared key (by default one is made: it keeps recorded traffic safe from a future
    /// quantum computer)
    #[arg(long)]
    pub no_psk: bool,
    /// Also draw the QR code on this terminal (it holds the terminal's private key: it would
    /// stay in the scrollback and in any captured log; by default it goes only to --qr-png)
    #[arg(long)]
    pub show_qr: bool,
}

/// The files a WireGuard enrollment writes.
#[derive(Debug)]
pub struct Outputs {
    /// The wg-quick config.
    pub config: PathBuf,
    /// The QR code as PNG, if wanted.
    pub qr_png: Option<PathBuf>,
    /// Whether to make a preshared key.
    pub psk: bool,
}

/// A terminal that got its WireGuard identity, and its config as a QR code for the terminal.
#[derive(Debug)]
pub struct Enrolled {
    pub terminal: Registration,
    pub qr: Zeroizing<String>,
}

/// Runs one `terminal` command.
pub fn run(args: TerminalArgs) -> Result<ExitCode> {
    let changed = match args.command {
        TerminalCommand::Add {
            name,
            name_option,
            enroll: true,
            token_hours,
            json,
            wg,
            ..
        } => {
            if wg.out.is_some() || wg.qr_png.is_some() || wg.no_psk || wg.show_qr {
                return Err(StoreError::Invalid(
                    "--out, --qr-png, --show-qr and --no-psk go with --wireguard, not --enroll".into(),
                ));
            }
            let name = name.or(name_option).unwrap_or_default();
            return enroll(&args.appliance, &name, token_hours, json);
        }
        TerminalCommand::Revoke { name, reason } => revoke(&args.appliance, &name, reason)?,
        TerminalCommand::Add {
            name,
            name_option,
            note,
            wireguard: true,
            wg,
            scopes,
            ..
        } => wireguard(
            &args.appliance,
            &name.or(name_option).unwrap_or_default(),
            Enroll::New {
                note: note.as_deref(),
                scopes,
            },
            &wg,
        )?,
        TerminalCommand::WireGuard { name, wg } => wireguard(&args.appliance, &name, Enroll::Existing, &wg)?,
        TerminalCommand::Add {
            name,
            name_option,
            note,
            wireguard: false,
            wg,
            scopes,
            ..
        } => {
            let name = name.or(name_option).unwrap_or_default();
            if wg.out.is_some() || wg.qr_png.is_some() || wg.no_psk || wg.show_qr {
                return Err(StoreError::Invalid(
                    "--out, --qr-png, --show-qr and --no-psk go with --wireguard".into(),
                ));
            }
            inventory::add(&open(&args.appliance)?, &name, note.as_deref(), scopes)?;
            format!("registered terminal {name} (enabled, scopes {scopes})")
        }
        TerminalCommand::Set { name, scopes } => {
            inventory::set_scopes(&open(&args.appliance)?, &name, scopes)?;
            format!("terminal {name} may now call: {scopes}")
        }
        TerminalCommand::Disable { name } => {
            inventory::set_enabled(&open(&args.appliance)?, &name, false)?;
            format!("disabled terminal {name}: its connections are refused")
        }
        TerminalCommand::Enable { name } => {
            inventory::set_enabled(&open(&args.appliance)?, &name, true)?;
            format!("enabled terminal {name}")
        }
        TerminalCommand::Remove { name } => {
            inventory::remove(&open(&args.appliance)?, &name)?;
            format!(
                "removed terminal {name}; revoke its certificate too: \
                 `kakehashi cert revoke --dir CA --name {name}`"
            )
        }
        TerminalCommand::List { json } => {
            list(&Inventory::load(&open(&args.appliance)?)?, json)?;
            return Ok(ExitCode::SUCCESS);
        }
        TerminalCommand::Tokens { json } => {
            tokens(&crate::store::tokens::list(&open(&args.appliance)?)?, json)?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    println!("{changed}");
    println!("{RELOAD_HINT}");
    Ok(ExitCode::SUCCESS)
}

/// `terminal add NAME --enroll`: a one-time token, printed once.
fn enroll(appliance: &ApplianceArgs, name: &str, hours: u32, json: bool) -> Result<ExitCode> {
    let issued = crate::store::tokens::create(&open(appliance)?, name, hours)?;
    let expires = cert_tool::ca::rfc3339(issued.expires);
    if json {
        let value = serde_json::json!({
            "name": issued.name,
            "token": issued.token.as_str(),
            "expires": expires,
            "replaced": issued.replaced,
        });
        println!("{}", to_json(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    if issued.replaced {
        println!("replaced the earlier enrollment token of {name}: it no longer works");
    }
    println!("enrollment token for terminal {name} (shown once; works once, until {expires}):");
    println!();
    println!("  {}", issued.token.as_str());
    println!();
    println!(
        "On the terminal, with the EST URL of the gateway (est.url in the demo directory):\n  \
         openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}.key \
         -subj /CN={name} -outform DER | openssl base64 > {name}.csr.b64\n  \
         curl --cacert ca.pem -u {name}:TOKEN -H 'Content-Type: application/pkcs10' \
         --data-binary @{name}.csr.b64 EST_URL/simpleenroll | openssl base64 -d | \
         openssl pkcs7 -inform DER -print_certs -out {name}.pem\n\
         {} wrong tries lock the token; the terminal is registered (enabled) when it enrolls.",
        crate::store::tokens::MAX_FAILURES
    );
    Ok(ExitCode::SUCCESS)
}

/// `terminal revoke NAME`: the CA first (the CRL is what the listeners enforce), then the
/// inventory, so a failure half-way leaves the terminal refused rather than admitted.
fn revoke(appliance: &ApplianceArgs, name: &str, reason: cert_tool::index::Reason) -> Result<String> {
    let config = appliance.load("its [est] section, the CA, and tls.crl")?;
    let path = &config.source;
    let authority = crate::est::authority::Authority::from_config(&config).ok_or_else(|| {
        StoreError::Invalid(format!(
            "{}: no [est] section, so this appliance has no CA to revoke with: revoke with \
             `kakehashi cert revoke --dir CA --name {name}` and publish the CRL, or use \
             `kakehashi terminal disable {name}`",
            path.display()
        ))
    })?;
    let conn = store::open(&config.data_dir)?;
    let registered = Inventory::load(&conn)?.get(name).cloned();
    let revoked = match authority.revoke(name, reason) {
        Ok(list) => list,
        // No valid certificate (never enrolled, or revoked already): still disable the terminal.
        Err(cert_tool::Error::UnknownName { .. }) if registered.is_some() => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let mut done = Vec::new();
    for e in &revoked {
        done.push(format!("revoked certificate {} of {name}", e.serial));
    }
    if !revoked.is_empty() {
        done.push(format!("wrote the new CRL to {}", authority.crl.display()));
    }
    match registered {
        Some(t) if t.enabled => {
            inventory::set_enabled(&conn, name, false)?;
            done.push(format!("disabled terminal {name}"));
        }
        Some(_) => done.push(format!("terminal {name} was already disabled")),
        None => done.push(format!("terminal {name} is not in the inventory")),
    }
    Ok(done.join("\n"))
}

/// `gateway.db` in the appliance's data directory (see [`crate::config::locate`]).
fn open(appliance: &ApplianceArgs) -> Result<Connection> {
    store::open(&appliance.data_dir()?)
}

/// `terminal add --wireguard` and `terminal wireguard`: everything is checked before anything is
/// written (the configuration, the data directory, the output files), then [`enroll_wireguard`]
/// does the work; prints the QR code and returns what changed.
fn wireguard(appliance: &ApplianceArgs, name: &str, how: Enroll<'_>, args: &WireGuardArgs) -> Result<String> {
    let config = appliance.load("its [wireguard] section")?;
    let wg = config.wireguard.as_ref().ok_or_else(|| {
        StoreError::Invalid(format!(
            "{}: no [wireguard] section: add one (see the README, gateway.toml) to give terminals \
             WireGuard configs",
            config.source.display()
        ))
    })?;
    let endpoint = endpoint(&config, wg)?;
    let outputs = Outputs {
        config: args
            .out
            .clone()
            .unwrap_or_else(|| format!("{name}-wg.conf").into()),
        qr_png: args.qr_png.clone(),
        psk: !args.no_psk,
    };
    // The name is checked before the default file name built from it is used.
    if matches!(how, Enroll::New { .. }) {
        inventory::check_name(name)?;
    }
    refuse_existing(&outputs)?;
    let conn = store::open(&config.data_dir)?;
    let enrolled = enroll_wireguard(&conn, wg, &endpoint, name, how, &outputs)?;
    if args.show_qr {
        print!("{}", enrolled.qr.as_str());
    }
    let address = enrolled
        .terminal
        .wireguard
        .as_ref()
        .map_or(Ipv4Addr::UNSPECIFIED, |p| p.address);
    let mut done = match how {
        Enroll::New { .. } => format!("registered terminal {name} (enabled), WireGuard address {address}"),
        Enroll::Existing => format!("gave terminal {name} a WireGuard identity, address {address}"),
    };
    done.push_str(&format!(
        "\nwrote its WireGuard config to {} (mode 0600){}: it holds the terminal's private key, \
         which the gateway does not keep; hand it over (`wg-quick up FILE`, or scan its QR code in \
         the WireGuard app: --qr-png FILE writes it, --show-qr draws it here), then delete it",
        outputs.config.display(),
        outputs
            .qr_png
            .as_ref()
            .map_or(String::new(), |p| format!(" and its QR code to {}", p.display()))
    ));
    Ok(done)
}

/// The endpoint terminals are given, refusing a listen address that no terminal can reach.
fn endpoint(config: &Config, wg: &WireGuard) -> Result<String> {
    if wg.endpoint.is_none() && wg.listen.ip().is_unspecified() {
        return Err(StoreError::Invalid(format!(
            "{}: wireguard.endpoint is not set and wireguard.listen is {}, which a terminal cannot \
             send to: set endpoint = \"HOST:{}\" (the address terminals reach the gateway at)",
            config.source.display(),
            wg.listen,
            wg.listen.port()
        )));
    }
    Ok(config.wireguard_endpoint().unwrap_or_default())
}

/// Refuses to overwrite a file: a config in place may be the only copy of another terminal's key.
fn refuse_existing(outputs: &Outputs) -> Result<()> {
    let files = std::iter::once(&outputs.config).chain(&outputs.qr_png);
    for path in files {
        if std::fs::symlink_metadata(path).is_ok() {
            return Err(StoreError::Invalid(format!(
                "{} exists already; not overwriting it (it may hold another terminal's key): \
                 move it away or choose another file with --out / --qr-png",
                path.display()
            )));
        }
    }
    if outputs.qr_png.as_ref() == Some(&outputs.config) {
        return Err(StoreError::Invalid(
            "--out and --qr-png name the same file".into(),
        ));
    }
    Ok(())
}

/// Gives `name` (new, or registered: `how`) a WireGuard identity and writes its config.
///
/// The order makes the two stores agree whatever fails:
/// 1. one database transaction holding the write lock allocates the address and records the
///    identity, uncommitted;
/// 2. inside it, the config (and PNG) are staged: written and flushed beside their destination
///    under a temporary name. If that fails, the transaction rolls back: nothing registered;
/// 3. the transaction commits. If that fails, the staged files delete themselves: no config;
/// 4. the staged files are renamed into place (the rename cannot run short of space: the data
///    is already on disk). If even that fails, step 1 is undone in a new transaction and the
///    files already renamed are removed, so no terminal is left whose key nobody holds.
///
/// The gateway's own key is created first if missing, so that it exists before the gateway
/// starts and the config names it; that is the gateway's identity, not the terminal's.
pub fn enroll_wireguard(
    conn: &Connection,
    wg: &WireGuard,
    endpoint: &str,
    name: &str,
    how: Enroll<'_>,
    outputs: &Outputs,
) -> Result<Enrolled> {
    let key_path = wg
        .private_key
        .clone()
        .ok_or_else(|| StoreError::Invalid("wireguard.private_key: not resolved".into()))?;
    let gateway_key = keys::load_or_create(&key_path)?.public_key();
    let (terminal, (staged, qr)) = inventory::enroll_wireguard(conn, name, how, &wg.address, |address| {
        let private = Secret::generate()?;
        let psk = if outputs.psk {
            Some(Secret::generate()?)
        } else {
            None
        };
        let text = TerminalConfig {
            private_key: &private,
            address,
            mtu: wg.mtu,
            gateway_key,
            preshared_key: psk.as_ref(),
            endpoint,
            gateway_address: wg.address.address,
            persistent_keepalive: wg.persistent_keepalive,
        }
        .text();
        let qr = Qr::new(&text)?;
        let mut staged = vec![Staged::new(&outputs.config, text.as_bytes(), files::SECRET)?];
        if let Some(png) = &outputs.qr_png {
            staged.push(Staged::new(png, &qr.to_png()?, files::SECRET)?);
        }
        let peer = WireGuardPeer {
            public_key: private.public_key(),
            preshared_key: psk,
            address,
        };
        Ok((peer, (staged, qr.to_terminal())))
    })?;
    let mut placed: Vec<PathBuf> = Vec::new();
    for file in staged {
        let dest = file.dest().to_owned();
        // Checked again: a file may have appeared since `refuse_existing`.
        let result = if std::fs::symlink_metadata(&dest).is_ok() {
            Err(StoreError::Invalid(format!(
                "{} appeared meanwhile; not overwriting it",
                dest.display()
            )))
        } else {
            file.commit().map_err(StoreError::from)
        };
        if let Err(e) = result {
            for path in &placed {
                let _ = std::fs::remove_file(path);
            }
            let undone = match how {
                Enroll::New { .. } => inventory::remove(conn, name).map(drop),
                Enroll::Existing => inventory::clear_wireguard(conn, name).map(drop),
            };
            return Err(match undone {
                Ok(()) => e,
                Err(undo) => StoreError::Invalid(format!(
                    "{e}; and undoing the registration failed too ({undo}): run `kakehashi terminal \
                     remove {name}`"
                )),
            });
        }
        placed.push(dest);
    }
    Ok(Enrolled { terminal, qr })
}

/// The token table: never a token itself (only its hash is stored), only what it can still do.
fn tokens(all: &[crate::store::tokens::Pending], json: bool) -> Result<()> {
    let now = time::OffsetDateTime::now_utc();
    if json {
        #[derive(serde::Serialize)]
        struct Row<'a> {
            #[serde(flatten)]
            token: &'a crate::store::tokens::Pending,
            state: &'static str,
        }
        let rows: Vec<_> = all
            .iter()
            .map(|t| Row {
                token: t,
                state: t.state(now),
            })
            .collect();
        println!("{}", to_json(&rows)?);
        return Ok(());
    }
    println!(
        "{:<32}  {:<8}  {:<20}  {:<8}  USED",
        "NAME", "STATE", "EXPIRES", "FAILURES"
    );
    for t in all {
        println!(
            "{:<32}  {:<8}  {:<20}  {:<8}  {}",
            t.name,
            t.state(now),
            t.expires,
            t.failures,
            or_dash(t.used.as_deref())
        );
    }
    Ok(())
}

fn list(inventory: &Inventory, json: bool) -> Result<()> {
    if json {
        let all: Vec<_> = inventory.iter().collect();
        println!("{}", to_json(&all)?);
        return Ok(());
    }
    println!(
        "{:<32}  {:<8}  {:<23}  {:<15}  {:<20}  NOTE",
        "NAME", "STATUS", "SCOPES", "TUNNEL", "ADDED"
    );
    for t in inventory.iter() {
        let tunnel = t.wireguard.as_ref().map(|p| p.address.to_string());
        println!(
            "{:<32}  {:<8}  {:<23}  {:<15}  {:<20}  {}",
            t.name,
            if t.enabled { "enabled" } else { "disabled" },
            t.scopes.to_string(),
            or_dash(tunnel.as_deref()),
            t.added,
            or_dash(t.note.as_deref())
        );
    }
    Ok(())
}
