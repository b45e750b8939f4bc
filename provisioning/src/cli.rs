//! `kakehashi provision …`: the vendor's workflow on the command line.
//!
//! Every command takes `--dir V` (or `KAKEHASHI_VENDOR_DIR`; default `kakehashi-vendor`) and, when
//! it signs, the vendor passphrase from `--passphrase-file FILE`, else `KAKEHASHI_CA_PASSPHRASE`,
//! else a prompt. Exit codes: 0 done; 1 refused or failed, with one line `kakehashi: error: …`
//! saying why, and nothing changed; 2 a command line that does not parse. Every listing has
//! `--json`. Secrets made here (PKCS#12 passwords, tokens, generated staff passwords) are shown
//! once, on standard output, and stored nowhere.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cert_tool::ca::{self, rfc3339};
use cert_tool::cli::PassphraseArgs;
use cert_tool::keys::Passphrase;
use clap::{Args, Subcommand};
use provisioning_shared::scope::Scopes;
use provisioning_shared::token;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::build;
use crate::clinic::{self, Clinic, Kind, Layout};
use crate::error::{Error, Result};
use crate::setup::{self, SettingsArgs};
use crate::terminal::{self, NewTerminal};
use crate::user::{self, NewPassword};
use crate::vendor::{self, Vendor};

/// `kakehashi provision [--dir V] [--passphrase-file F] COMMAND`.
#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// The vendor directory: root CA, bundle-signing key, one directory a clinic
    #[arg(long, value_name = "DIR", env = vendor::DIR_ENV, default_value = vendor::DEFAULT_DIR, global = true)]
    pub dir: PathBuf,
    /// File whose first line is the vendor passphrase (else KAKEHASHI_CA_PASSPHRASE, else asked)
    #[arg(long, value_name = "FILE", global = true)]
    pub passphrase_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ProvisionCommand,
}

#[derive(Debug, Subcommand)]
pub enum ProvisionCommand {
    /// The vendor: root CA and bundle-signing key
    #[command(subcommand)]
    Vendor(VendorCommand),
    /// Clinics, one per appliance, each made from its appliance's request
    #[command(subcommand)]
    Clinic(Box<ClinicCommand>),
    /// A clinic's terminals: PKCS#12 files, enrollment tokens, WireGuard configs
    #[command(subcommand)]
    Terminal(TerminalCommand),
    /// A clinic's staff, who sign in at the terminals
    #[command(subcommand)]
    User(UserCommand),
    /// The signed, encrypted file that carries a clinic to its appliance
    #[command(subcommand)]
    Bundle(BundleCommand),
}

#[derive(Debug, Subcommand)]
pub enum VendorCommand {
    /// Create the vendor root CA and the bundle-signing key; print the key's fingerprint
    Init {
        /// The root CA's common name
        #[arg(long, default_value = "Kakehashi Vendor Root")]
        name: String,
        /// The root CA's validity, days
        #[arg(long, default_value_t = vendor::DEFAULT_ROOT_DAYS)]
        days: u32,
        /// Store the keys unencrypted (mode 0600). Only for tests and demos
        #[arg(long)]
        no_passphrase: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClinicCommand {
    /// Make a clinic from an appliance's request: clinic CA, issuing CA, server certificate
    Add {
        /// The clinic's ID: letters, digits, '.', '-', '_', '@'; it names its directory
        #[arg(long, value_name = "ID")]
        clinic: String,
        /// The clinic's name for people
        #[arg(long)]
        name: String,
        /// The appliance's request (`kakehashi gateway init` writes it)
        #[arg(long, value_name = "FILE")]
        request: PathBuf,
        /// The cloud engine's host name: terminals connect to it, and the gateway's server
        /// certificate carries it
        #[arg(long, value_name = "HOST")]
        engine_host: String,
        #[command(flatten)]
        settings: SettingsArgs,
    },
    /// Change a clinic's settings, or install its uplink certificate
    Set {
        /// The clinic (its ID)
        #[arg(long, value_name = "ID")]
        clinic: String,
        /// The clinic's name for people
        #[arg(long)]
        name: Option<String>,
        /// A new engine host name (signs a new server certificate)
        #[arg(long, value_name = "HOST")]
        engine_host: Option<String>,
        #[command(flatten)]
        settings: SettingsArgs,
        /// The uplink certificate the cloud operator signed for the clinic's uplink.csr
        #[arg(long, value_name = "FILE")]
        uplink_cert: Option<PathBuf>,
    },
    /// List the clinics
    List {
        /// Machine-readable output: a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Show a clinic: settings, certificates, counts, and what a bundle still needs
    Show {
        /// The clinic (its ID)
        #[arg(long, value_name = "ID")]
        clinic: String,
        /// Machine-readable output: a JSON object
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TerminalCommand {
    /// Add a terminal: a PKCS#12 file (or, with --enroll, a one-time token) and/or a WireGuard
    /// config with its QR code
    Add {
        /// The clinic (its ID)
        #[arg(long, value_name = "ID")]
        clinic: String,
        /// The terminal's name (its certificate's common name)
        #[arg(long)]
        name: String,
        /// How it connects: tls, wireguard or both
        #[arg(long, value_enum)]
        kind: Kind,
        /// Instead of a PKCS#12 file, a one-time token with which the terminal enrolls over EST
        /// on the appliance (HTTP Basic NAME:TOKEN); shown once, stored only as its hash
        #[arg(long)]
        enroll: bool,
        /// With --enroll: how long the token works, hours (1 to 720)
        #[arg(long, value_name = "HOURS", default_value_t = token::DEFAULT_HOURS, requires = "enroll")]
        token_hours: u32,
        /// Free text: whose it is, where it stands (at most 200 characters)
        #[arg(long)]
        note: Option<String>,
        /// Where NAME.p12, NAME.conf and NAME.png go [default: V/clinics/ID/out]
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// The certificate's validity, days
        #[arg(long, default_value_t = terminal::DEFAULT_DAYS)]
        days: u32,
        /// No WireGuard preshared key (by default one is made: it keeps recorded traffic safe
        /// from a future quantum computer)
        #[arg(long)]
        no_psk: bool,
        /// Print what was made as JSON (with the password or token, once)
        #[arg(long)]
        json: bool,
        /// Also draw the WireGuard QR code here (it holds the terminal's private key: it would
        /// stay in the scrollback and in any captured log; by default it goes only to NAME.png)
        #[arg(long)]
        show_qr: bool,
        /// Also print the PKCS#12 file's password here (by default it goes only to
        /// NAME.p12.password, mode 0600)
        #[arg(long)]
        show_password: bool,
        /// What may be called from it, whoever signs in: client, reference, write
        /// (comma-separated; write includes reference), all or none
        #[arg(long, value_name = "LIST", default_value = "all")]
        scopes: Scopes,
    },
    /// List the terminals of a clinic, or of every clinic
    List {
        /// Only this clinic's terminals
        #[arg(long, value_name = "ID")]
        clinic: Option<String>,
        /// Machine-readable output: a JSON array
        #[arg(long)]
        json: bool,
    },
    /// Refuse a terminal's connections (from the next bundle on)
    Disable {
        /// The clinic (its ID)
        #[arg(long, value_name = "ID")]
        clinic: String,
        /// The terminal's name
        #[arg(long)]
        name: String,
    },
    /// Let a disabled terminal connect again (from the next bundle on)
    Enable {
        /// The clinic (its ID)
        #[arg(long, value_name = "ID")]
        clinic: String,
        /// The terminal's name
        #[arg(long)]
        name: String,
    },
    /// A fresh one-time token for a terminal added with --enroll (the first expired or was lost)
    Token {
        /// The clinic (its ID)
        #[arg(long, value_name = "ID")]
        clinic: String,
        /// The terminal's name
        #[arg(long)]
        name: String,
        /// How long the token works, hours (1 to 720)
        #[arg(long, value_name = "HOURS", default_value_t = token::DEFAULT_HOURS)]
        token_hours: u32,
        /// Machine-readable output (it holds the token)
        #[arg(long)]
        json: bool,
    },
    /// Revoke a terminal: its certificates go on the clinic CRL, it leaves the clinic, and every
    /// later bundle tells the appliance to remove it
    Revoke {
        /// The clinic (its ID)
        #[arg(long, value_name = "ID")]
        clinic: String,
        /// The terminal's name
        #[arg(long)]
        name: String,
        /// Why, for the CRL
        #[arg(long, value_enum, default_value = "key-compromise")]
        reason: cert_tool::index::Reason,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a person (without --password-file a random password is made and shown once)
    Add {
        /// The clinic (its ID)
        #[arg(long, value_name = "ID")]
        clinic: String,
        /// Sign-in ID: 1 to 64 of A-Z a-z 0-9 . _ @ -
        #[arg(long = "id", value_name = "USER")]
        user: String,
        /// File whose first line is the password (at least 10 characters, not the ID)
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// The person's own account at the cloud engine
        #[arg(long, value_name = "USER", requires = "upstream_password_file")]
        upstream_user: Option<String>,
        /// File whose first line is the password of --upstream-user
        #[arg(long, value_name = "FILE", requires = "upstream_user")]
        upstream_password_file: Option<PathBuf>,
        /// What this person may call, at terminals that may call it too: client, reference,
        /// write (comma-separated; write includes reference), all or none
        #[arg(long, value_name = "LIST", default_value = "all")]
        scopes: Scopes,
    },
    /// Set a new password (without --password-file a random one is made and shown once)
    Passwd {
        /// The clinic (its ID)
        #[arg(long, value_name = "ID")]
        clinic: String,
        /// The person's sign-in ID
        #[arg(long = "id", value_name = "USER")]
        user: String,
        /// File whose first line is the new password
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Refuse a person's sign-in (from the next bundle on)
    Lock {
        /// The clinic (its ID)
        #[arg(long, value_name = "ID")]
        clinic: String,
        /// The person's sign-in ID
        #[arg(long = "id", value_name = "USER")]
        user: String,
    },
    /// Let a locked person sign in again (from the next bundle on)
    Unlock {
        /// The clinic (its ID)
        #[arg(long, value_name = "ID")]
        clinic: String,
        /// The person's sign-in ID
        #[arg(long = "id", value_name = "USER")]
        user: String,
    },
    /// Remove a person (from the next bundle on)
    Remove {
        /// The clinic (its ID)
        #[arg(long, value_name = "ID")]
        clinic: String,
        /// The person's sign-in ID
        #[arg(long = "id", value_name = "USER")]
        user: String,
    },
    /// List a clinic's people (never a password or a hash)
    List {
        /// The clinic (its ID)
        #[arg(long, value_name = "ID")]
        clinic: String,
        /// Machine-readable output: a JSON array
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Build the clinic's next bundle: signed by the vendor, encrypted to its appliance
    Build {
        /// The clinic (its ID)
        #[arg(long, value_name = "ID")]
        clinic: String,
        /// Where to write it (mode 0600)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Days until the clinic CRL in it is due for renewal
        #[arg(long, value_name = "DAYS", default_value_t = build::DEFAULT_CRL_DAYS)]
        crl_days: u32,
    },
}

/// What every change ends with: how it reaches the appliance.
fn next_bundle(clinic: &str) -> String {
    format!(
        "it reaches the appliance with the next bundle: `kakehashi provision bundle build --clinic \
         {clinic} --out FILE`, then `kakehashi gateway import-bundle FILE` on the appliance"
    )
}

impl ProvisionArgs {
    fn passphrases(&self) -> PassphraseArgs {
        PassphraseArgs {
            passphrase_file: self.passphrase_file.clone(),
        }
    }

    /// The vendor passphrase (one for every key the vendor keeps), asked only if the vendor's
    /// keys are encrypted. `key` is the one this command unlocks: what a prompt or a refusal
    /// names.
    fn passphrase(&self, vendor: &Vendor, key: &Path) -> Result<Option<Passphrase>> {
        if !vendor.encrypted()? {
            return Ok(None);
        }
        Ok(Some(self.passphrases().existing(key)()?))
    }
}

/// Runs one `provision` command.
pub fn run(args: ProvisionArgs) -> Result<ExitCode> {
    match &args.command {
        ProvisionCommand::Vendor(VendorCommand::Init {
            name,
            days,
            no_passphrase,
        }) => vendor_init(&args, name, *days, *no_passphrase)?,
        ProvisionCommand::Clinic(cmd) => clinic_command(&args, cmd)?,
        ProvisionCommand::Terminal(cmd) => terminal_command(&args, cmd)?,
        ProvisionCommand::User(cmd) => user_command(&args, cmd)?,
        ProvisionCommand::Bundle(BundleCommand::Build {
            clinic,
            out,
            crl_days,
        }) => {
            let vendor = Vendor::open(&args.dir)?;
            let built = build::build(&vendor, clinic, out, *crl_days, || {
                args.passphrase(&vendor, &vendor.signing_key_path())
            })?;
            println!(
                "wrote bundle version {} of clinic {clinic} to {} ({} bytes, mode 0600)",
                built.version,
                out.display(),
                built.bytes
            );
            println!(
                "  {} terminal(s), {} token(s), {} user(s), {} revoked; clinic CRL number {}",
                built.terminals, built.tokens, built.users, built.revoked, built.crl_number
            );
            println!("  signed by {}", built.vendor_key);
            println!(
                "on the appliance: `kakehashi gateway import-bundle {}`",
                out.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn vendor_init(args: &ProvisionArgs, name: &str, days: u32, no_passphrase: bool) -> Result<()> {
    let passphrase = if no_passphrase {
        if args.passphrase_file.is_some() {
            return Err(Error::Invalid(
                "--no-passphrase and --passphrase-file: give one or the other".into(),
            ));
        }
        None
    } else {
        Some(
            args.passphrases()
                .new_for(&ca::Layout::new(&args.dir.join("root")).key())?,
        )
    };
    let made = vendor::init(&args.dir, name, days, passphrase.as_ref())?;
    let v = &made.vendor;
    println!("created the vendor in {}", args.dir.display());
    println!(
        "  root CA      {} (\"{name}\", serial {}, valid until {})",
        ca::Layout::new(&v.root_dir()).cert().display(),
        made.root_serial,
        rfc3339(made.root_not_after)
    );
    println!(
        "  signing key  {} ({}, mode 0600)",
        v.signing_key_path().display(),
        if passphrase.is_some() {
            "encrypted"
        } else {
            "NOT encrypted"
        }
    );
    println!("  fingerprint  {}", made.fingerprint);
    println!(
        "give {} to every appliance: `kakehashi gateway init --vendor-key {}` pins it",
        v.fingerprint_path().display(),
        v.fingerprint_path().display()
    );
    Ok(())
}

fn clinic_command(args: &ProvisionArgs, cmd: &ClinicCommand) -> Result<()> {
    let vendor = Vendor::open(&args.dir)?;
    match cmd {
        ClinicCommand::Add {
            clinic,
            name,
            request,
            engine_host,
            settings,
        } => {
            let added = setup::add(
                &vendor,
                &setup::NewClinic {
                    id: clinic,
                    name,
                    request,
                    engine_host,
                    settings,
                },
                || args.passphrase(&vendor, &ca::Layout::new(&vendor.root_dir()).key()),
            )?;
            let l = &added.layout;
            println!("created clinic {clinic} (\"{name}\") in {}", l.dir.display());
            for (what, path, entry) in [
                ("clinic CA", l.ca_cert(), &added.clinic_ca),
                ("issuing CA", l.issuing_ca(), &added.issuing_ca),
                ("server", l.server(), &added.server),
            ] {
                println!(
                    "  {what:<11} {} (serial {}, valid until {})",
                    path.display(),
                    entry.serial,
                    rfc3339(entry.not_after)
                );
            }
            println!(
                "  engine      {} (server certificate for {})",
                added.clinic.engine_url, added.clinic.settings.engine_host
            );
            if let Some(wg) = &added.clinic.settings.wireguard {
                println!(
                    "  WireGuard   {} on {}, network {}",
                    wg.endpoint, wg.listen, wg.address
                );
            }
            println!(
                "send {csr} to the cloud operator for the uplink certificate; they sign it with the \
                 uplink profile, e.g. `kakehashi cert sign-csr --dir OPERATOR-CA --csr {csr} \
                 --profile uplink --out {clinic}-uplink.pem` (docs/provisioning.md shows every step)",
                csr = l.uplink_csr().display()
            );
            print_missing(&clinic::missing(l, &added.clinic));
        }
        ClinicCommand::Set {
            clinic,
            name,
            engine_host,
            settings,
            uplink_cert,
        } => {
            let layout = clinic::layout(&vendor, clinic)?;
            let change = setup::Change {
                name: name.as_deref(),
                engine_host: engine_host.as_deref(),
                settings,
                uplink_cert: uplink_cert.as_deref(),
            };
            let key = ca::Layout::new(&clinic::layout(&vendor, clinic)?.ca_dir()).key();
            let changed = setup::set(&vendor, clinic, &change, || args.passphrase(&vendor, &key))?;
            println!("changed clinic {clinic}:");
            for line in &changed.lines {
                println!("  {line}");
            }
            println!("{}", next_bundle(clinic));
            print_missing(&clinic::missing(&layout, &clinic::load(&layout)?));
        }
        ClinicCommand::List { json } => {
            let rows: Vec<_> = clinic::all(&vendor)?
                .iter()
                .map(|(l, c)| ClinicRow::new(l, c))
                .collect();
            if *json {
                println!("{}", to_json(&rows)?);
            } else {
                println!(
                    "{:<24}  {:<9}  {:<5}  {:<6}  {:<8}  NAME",
                    "ID", "TERMINALS", "USERS", "BUNDLE", "READY"
                );
                for r in rows {
                    println!(
                        "{:<24}  {:<9}  {:<5}  {:<6}  {:<8}  {}",
                        r.id,
                        r.terminals,
                        r.users,
                        r.bundle_version,
                        if r.ready { "yes" } else { "missing" },
                        r.name
                    );
                }
            }
        }
        ClinicCommand::Show { clinic, json } => {
            let layout = clinic::layout(&vendor, clinic)?;
            let show = Show::new(&layout, &clinic::load(&layout)?)?;
            if *json {
                println!("{}", to_json(&show)?);
            } else {
                show.print();
            }
        }
    }
    Ok(())
}

fn print_missing(missing: &[String]) {
    if missing.is_empty() {
        println!("ready: `kakehashi provision bundle build` can build its bundle");
        return;
    }
    println!("before a bundle can be built, it needs:");
    for m in missing {
        println!("  - {m}");
    }
}

/// One clinic in `clinic list`.
#[derive(Serialize)]
struct ClinicRow {
    id: String,
    name: String,
    appliance: String,
    terminals: usize,
    tokens: usize,
    users: usize,
    revoked: usize,
    bundle_version: u64,
    ready: bool,
    missing: Vec<String>,
}

impl ClinicRow {
    fn new(layout: &Layout, c: &Clinic) -> ClinicRow {
        let missing = clinic::missing(layout, c);
        ClinicRow {
            id: c.id.clone(),
            name: c.name.clone(),
            appliance: c.appliance.clone(),
            terminals: c.terminals.len(),
            tokens: c.tokens.len(),
            users: c.users.len(),
            revoked: c.revoked.len(),
            bundle_version: c.bundle_version,
            ready: missing.is_empty(),
            missing,
        }
    }
}

/// A certificate in `clinic show`.
#[derive(Serialize)]
struct CertRow {
    file: String,
    subject: String,
    serial: String,
    not_after: String,
}

/// `clinic show`: everything but secrets.
#[derive(Serialize)]
struct Show {
    #[serde(flatten)]
    row: ClinicRow,
    dir: String,
    created: String,
    wireguard_public_key: String,
    engine_url: String,
    engine_user: Option<String>,
    settings: provisioning_shared::bundle::Settings,
    certificates: Vec<CertRow>,
}

impl Show {
    fn new(layout: &Layout, c: &Clinic) -> Result<Show> {
        let mut certificates = Vec::new();
        for path in [
            layout.ca_cert(),
            layout.issuing_ca(),
            layout.server(),
            layout.uplink(),
            layout.engine_ca(),
        ] {
            if !path.exists() {
                continue;
            }
            let der = cert_tool::decode::certificate(&path)?;
            let s = cert_tool::inspect::cert(&path, &der)?;
            certificates.push(CertRow {
                file: path.display().to_string(),
                subject: s.subject,
                serial: s.serial,
                not_after: s.not_after,
            });
        }
        Ok(Show {
            row: ClinicRow::new(layout, c),
            dir: layout.dir.display().to_string(),
            created: c.created.clone(),
            wireguard_public_key: c.wireguard_public_key.clone(),
            engine_url: c.engine_url.clone(),
            engine_user: c.engine_credential.as_ref().map(|e| e.user.clone()),
            settings: c.settings.clone(),
            certificates,
        })
    }

    fn print(&self) {
        let r = &self.row;
        let s = &self.settings;
        println!("clinic {} (\"{}\")", r.id, r.name);
        println!("  directory       {}", self.dir);
        println!("  created         {}", self.created);
        println!("  appliance       {}", r.appliance);
        println!("  engine          {} (host {})", self.engine_url, s.engine_host);
        println!("  engine user     {}", or_dash(self.engine_user.as_deref()));
        println!("  TLS listener    {}", s.listen);
        println!("  EST listener    {}", s.est_listen);
        println!("  metrics         {}", s.admin_listen);
        match &s.wireguard {
            Some(wg) => println!(
                "  WireGuard       endpoint {}, listener {}, network {}, gateway key {}",
                wg.endpoint, wg.listen, wg.address, self.wireguard_public_key
            ),
            None => println!("  WireGuard       off (turn it on with `clinic set --wg-endpoint HOST:PORT`)"),
        }
        println!(
            "  inventory       {} terminal(s), {} token(s), {} user(s), {} revoked",
            r.terminals, r.tokens, r.users, r.revoked
        );
        match r.bundle_version {
            0 => println!("  bundle          none built yet"),
            v => println!("  bundle          version {v} built last"),
        }
        for c in &self.certificates {
            println!(
                "  certificate     {} ({}, until {})",
                c.file, c.subject, c.not_after
            );
        }
        print_missing(&r.missing);
    }
}

fn terminal_command(args: &ProvisionArgs, cmd: &TerminalCommand) -> Result<()> {
    let vendor = Vendor::open(&args.dir)?;
    match cmd {
        TerminalCommand::Add {
            clinic,
            name,
            kind,
            enroll,
            token_hours,
            note,
            out,
            days,
            no_psk,
            json,
            show_qr,
            show_password,
            scopes,
        } => {
            let layout = clinic::layout(&vendor, clinic)?;
            let out = out.clone().unwrap_or_else(|| layout.out());
            let new = NewTerminal {
                name,
                kind: *kind,
                enroll: *enroll,
                token_hours: *token_hours,
                note: note.as_deref(),
                out: &out,
                days: *days,
                psk: !no_psk,
                scopes: *scopes,
            };
            let key = ca::Layout::new(&layout.ca_dir()).key();
            let added = terminal::add(&vendor, clinic, &new, || args.passphrase(&vendor, &key))?;
            if *json {
                // It holds the password or the token: wiped once printed.
                println!(
                    "{}",
                    Zeroizing::new(to_json(&AddedJson::new(clinic, &added))?).as_str()
                );
            } else {
                print_added(clinic, &added, *show_qr, *show_password);
            }
        }
        TerminalCommand::List { clinic, json } => {
            let clinics = match clinic {
                Some(id) => {
                    let layout = clinic::layout(&vendor, id)?;
                    let state = clinic::load(&layout)?;
                    vec![(layout, state)]
                }
                None => clinic::all(&vendor)?,
            };
            let rows: Vec<_> = clinics
                .iter()
                .flat_map(|(_, c)| c.terminals.iter().map(move |t| TerminalRow::new(c, t)))
                .collect();
            if *json {
                println!("{}", to_json(&rows)?);
            } else {
                println!(
                    "{:<16}  {:<24}  {:<9}  {:<8}  {:<15}  {:<11}  NOTE",
                    "CLINIC", "NAME", "KIND", "STATUS", "TUNNEL", "CREDENTIAL"
                );
                for r in rows {
                    println!(
                        "{:<16}  {:<24}  {:<9}  {:<8}  {:<15}  {:<11}  {}",
                        r.clinic,
                        r.name,
                        r.kind.name(),
                        if r.enabled { "enabled" } else { "disabled" },
                        or_dash(r.wireguard_address.map(|a| a.to_string()).as_deref()),
                        r.credential,
                        or_dash(r.note.as_deref())
                    );
                }
            }
        }
        TerminalCommand::Disable { clinic, name } => {
            terminal::set_enabled(&vendor, clinic, name, false)?;
            println!("disabled terminal {name} of clinic {clinic}");
            println!("{}", next_bundle(clinic));
        }
        TerminalCommand::Enable { clinic, name } => {
            terminal::set_enabled(&vendor, clinic, name, true)?;
            println!("enabled terminal {name} of clinic {clinic}");
            println!("{}", next_bundle(clinic));
        }
        TerminalCommand::Token {
            clinic,
            name,
            token_hours,
            json,
        } => {
            let issued = terminal::new_token(&vendor, clinic, name, *token_hours)?;
            if *json {
                let shown = TokenJson {
                    token: &issued.token,
                    expires: &issued.expires,
                };
                println!("{}", Zeroizing::new(to_json(&shown)?).as_str());
            } else {
                println!(
                    "enrollment token for terminal {name} (shown once; works once, until {}; kept only as its hash; \
                     an earlier token stops working with the next bundle):",
                    issued.expires
                );
                println!("  {}", issued.token.as_str());
                println!("{}", next_bundle(clinic));
            }
        }
        TerminalCommand::Revoke { clinic, name, reason } => {
            let revoked = terminal::revoke(&vendor, clinic, name, *reason)?;
            println!("revoked terminal {name} of clinic {clinic}");
            for serial in &revoked.certificates {
                println!("  certificate {serial}: on the clinic CRL of every bundle from now on");
            }
            println!(
                "it takes effect when the appliance imports the next bundle (`kakehashi provision \
                 bundle build --clinic {clinic} --out FILE`); for at once, on the appliance: \
                 `kakehashi terminal revoke {name}`"
            );
        }
    }
    Ok(())
}

fn print_added(clinic: &str, added: &terminal::Added, show_qr: bool, show_password: bool) {
    let t = &added.terminal;
    println!("added terminal {} ({}) to clinic {clinic}", t.name, t.kind.name());
    if let Some(p12) = &added.p12 {
        println!(
            "  certificate  serial {}, valid until {}",
            p12.serial, p12.not_after
        );
        println!("  PKCS#12      {} (mode 0600)", p12.path.display());
        if show_password {
            println!(
                "  password     {}   (also in {}; stored nowhere else: hand it over apart from the file)",
                p12.password.as_str(),
                p12.password_file.display()
            );
        } else {
            println!(
                "  password     in {} (mode 0600; --show-password prints it): hand it over apart \
                 from the file, then delete it",
                p12.password_file.display()
            );
        }
    }
    if let Some(token) = &added.token {
        println!(
            "enrollment token for terminal {} (shown once; works once, until {}; kept only as its hash):",
            t.name, token.expires
        );
        println!();
        println!("  {}", token.token.as_str());
        println!();
        println!(
            "Once the appliance has the next bundle, on the terminal (EST_URL: the appliance's EST \
             listener, /.well-known/est):\n  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
             -nodes -keyout {n}.key -subj /CN={n} -outform DER | openssl base64 > {n}.csr.b64\n  \
             curl --cacert clinic-ca.pem -u {n}:TOKEN -H 'Content-Type: application/pkcs10' \
             --data-binary @{n}.csr.b64 EST_URL/simpleenroll | openssl base64 -d | openssl pkcs7 \
             -inform DER -print_certs -out {n}.pem",
            n = t.name
        );
    }
    if let Some(wg) = &added.wireguard {
        if show_qr {
            print!("{}", wg.qr.as_str());
        }
        println!("  tunnel       {}", wg.address);
        println!(
            "  WireGuard    {} and its QR code {} (mode 0600): they hold the terminal's private key, \
             which is kept nowhere else; hand them over (`wg-quick up FILE`, or scan the code in the \
             WireGuard app), then delete them",
            wg.config.display(),
            wg.png.display()
        );
    }
    println!("{}", next_bundle(clinic));
}

/// `terminal add --json`: what was made, with the secret shown this once.
#[derive(Serialize)]
struct AddedJson<'a> {
    clinic: &'a str,
    name: &'a str,
    kind: Kind,
    enabled: bool,
    note: Option<&'a str>,
    p12: Option<P12Json<'a>>,
    token: Option<TokenJson<'a>>,
    wireguard: Option<WireGuardJson<'a>>,
}

#[derive(Serialize)]
struct P12Json<'a> {
    path: String,
    password: &'a str,
    serial: &'a str,
    not_after: &'a str,
}

#[derive(Serialize)]
struct TokenJson<'a> {
    token: &'a str,
    expires: &'a str,
}

#[derive(Serialize)]
struct WireGuardJson<'a> {
    config: String,
    png: String,
    address: std::net::Ipv4Addr,
    public_key: &'a str,
}

impl<'a> AddedJson<'a> {
    fn new(clinic: &'a str, a: &'a terminal::Added) -> AddedJson<'a> {
        let t = &a.terminal;
        AddedJson {
            clinic,
            name: &t.name,
            kind: t.kind,
            enabled: t.enabled,
            note: t.note.as_deref(),
            p12: a.p12.as_ref().map(|p| P12Json {
                path: p.path.display().to_string(),
                password: &p.password,
                serial: &p.serial,
                not_after: &p.not_after,
            }),
            token: a.token.as_ref().map(|k| TokenJson {
                token: &k.token,
                expires: &k.expires,
            }),
            wireguard: a.wireguard.as_ref().map(|w| WireGuardJson {
                config: w.config.display().to_string(),
                png: w.png.display().to_string(),
                address: w.address,
                public_key: t.wireguard.as_ref().map_or("", |p| p.public_key.as_str()),
            }),
        }
    }
}

/// One terminal in `terminal list`: never a secret (no preshared key, no token).
#[derive(Serialize)]
struct TerminalRow {
    clinic: String,
    name: String,
    kind: Kind,
    enabled: bool,
    note: Option<String>,
    added: String,
    /// `p12`, `token` (pending EST enrollment), or `-` (WireGuard only).
    credential: &'static str,
    certificates: Vec<String>,
    token_expires: Option<String>,
    wireguard_address: Option<std::net::Ipv4Addr>,
    wireguard_public_key: Option<String>,
}

impl TerminalRow {
    fn new(c: &Clinic, t: &clinic::TerminalRecord) -> TerminalRow {
        TerminalRow {
            clinic: c.id.clone(),
            name: t.name.clone(),
            kind: t.kind,
            enabled: t.enabled,
            note: t.note.clone(),
            added: t.added.clone(),
            credential: match (t.kind.tls(), t.enroll) {
                (false, _) => "-",
                (true, true) => "token",
                (true, false) => "p12",
            },
            certificates: t.certificates.clone(),
            token_expires: c
                .tokens
                .iter()
                .find(|k| k.name == t.name)
                .map(|k| k.expires.clone()),
            wireguard_address: t.wireguard.as_ref().map(|p| p.address),
            wireguard_public_key: t.wireguard.as_ref().map(|p| p.public_key.clone()),
        }
    }
}

fn user_command(args: &ProvisionArgs, cmd: &UserCommand) -> Result<()> {
    let vendor = Vendor::open(&args.dir)?;
    match cmd {
        UserCommand::Add {
            clinic,
            user,
            password_file,
            upstream_user,
            upstream_password_file,
            scopes,
        } => {
            let upstream = match (upstream_user, upstream_password_file) {
                (Some(u), Some(f)) => Some(user::upstream(u, f)?),
                _ => None,
            };
            let set = user::add(
                &vendor,
                clinic,
                user,
                new_password(password_file.as_deref())?,
                upstream,
                *scopes,
            )?;
            println!("added user {user} to clinic {clinic}");
            print_generated(user, set.generated);
            println!("{}", next_bundle(clinic));
        }
        UserCommand::Passwd {
            clinic,
            user,
            password_file,
        } => {
            let set = user::passwd(&vendor, clinic, user, new_password(password_file.as_deref())?)?;
            println!("changed the password of user {user} of clinic {clinic}");
            print_generated(user, set.generated);
            println!("{}", next_bundle(clinic));
        }
        UserCommand::Lock { clinic, user } => {
            user::set_locked(&vendor, clinic, user, true)?;
            println!("locked user {user} of clinic {clinic}");
            println!("{}", next_bundle(clinic));
        }
        UserCommand::Unlock { clinic, user } => {
            user::set_locked(&vendor, clinic, user, false)?;
            println!("unlocked user {user} of clinic {clinic}");
            println!("{}", next_bundle(clinic));
        }
        UserCommand::Remove { clinic, user } => {
            user::remove(&vendor, clinic, user)?;
            println!("removed user {user} of clinic {clinic}");
            println!("{}", next_bundle(clinic));
        }
        UserCommand::List { clinic, json } => {
            let state = clinic::load(&clinic::layout(&vendor, clinic)?)?;
            #[derive(Serialize)]
            struct Row<'a> {
                id: &'a str,
                locked: bool,
                upstream_user: Option<&'a str>,
            }
            let rows: Vec<_> = state
                .users
                .iter()
                .map(|u| Row {
                    id: &u.id,
                    locked: u.locked,
                    upstream_user: u.upstream.as_ref().map(|c| c.user.as_str()),
                })
                .collect();
            if *json {
                println!("{}", to_json(&rows)?);
            } else {
                println!("{:<24}  {:<8}  UPSTREAM", "ID", "STATUS");
                for r in rows {
                    println!(
                        "{:<24}  {:<8}  {}",
                        r.id,
                        if r.locked { "locked" } else { "active" },
                        or_dash(r.upstream_user)
                    );
                }
            }
        }
    }
    Ok(())
}

/// A password from the first line of `file`, or one to be made.
fn new_password(file: Option<&Path>) -> Result<NewPassword> {
    Ok(match file {
        Some(f) => NewPassword::Given(Zeroizing::new(Passphrase::from_file(f)?.expose().to_owned())),
        None => NewPassword::Generate,
    })
}

fn print_generated(user: &str, generated: Option<Zeroizing<String>>) {
    if let Some(p) = generated {
        println!(
            "  password  {}   (made for {user}; shown once, stored only as its argon2id hash)",
            p.as_str()
        );
    }
}

fn to_json(value: &impl Serialize) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::Invalid(format!("JSON output: {e}")))
}

fn or_dash(value: Option<&str>) -> &str {
    value.unwrap_or("-")
}
