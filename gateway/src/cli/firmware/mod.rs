//! `kakehashi firmware …`: signed appliance updates (the `firmware` crate does the work).
//!
//! On the vendor's laptop (feature `vendor`): `keygen` makes the firmware signing key, `build`
//! an image. On the appliance: `status`, `install IMAGE`, `commit`, `rollback`, and `boot`, the
//! supervisor the systemd unit runs (see [`supervise`]). Every change is recorded in the audit
//! log (route `firmware`).

pub mod activate;
mod fetch;
mod health;
mod supervise;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use firmware::files::{Files, SlotInfo};
use firmware::floor::Floor;
use firmware::{Bootloader, Slot, Version, boot, image};
use serde::Serialize;

use crate::audit::{AuditLog, Decision, Entry};
use crate::config::Firmware;
use crate::config::locate::{ApplianceArgs, LocateError};

/// What went wrong, as one line.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareCliError {
    #[error(transparent)]
    Firmware(#[from] firmware::Error),
    #[error(transparent)]
    Locate(#[from] LocateError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Message(String),
}

type Result<T, E = FirmwareCliError> = std::result::Result<T, E>;

/// `kakehashi firmware [--config FILE] COMMAND`.
#[derive(Debug, Args)]
pub struct FirmwareArgs {
    #[command(flatten)]
    pub appliance: ApplianceArgs,
    #[command(subcommand)]
    pub command: FirmwareCommand,
}

#[derive(Debug, Subcommand)]
pub enum FirmwareCommand {
    /// Make a firmware signing key (vendor): KEY (0600, sealed with a passphrase unless
    /// --no-passphrase) and KEY's public key beside it as `.pub`, which appliances pin
    #[cfg(feature = "vendor")]
    Keygen {
        #[arg(long, value_name = "KEY")]
        out: PathBuf,
        /// Leave the key unencrypted (tests and demos only)
        #[arg(long)]
        no_passphrase: bool,
        #[command(flatten)]
        passphrase: cert_tool::cli::PassphraseArgs,
    },
    /// Build a signed update image from a `kakehashi` binary (vendor)
    #[cfg(feature = "vendor")]
    Build {
        /// The version the binary is (dotted numbers: 1.4.2)
        #[arg(long)]
        version: String,
        #[arg(long, value_name = "FILE")]
        binary: PathBuf,
        /// A root file system image to carry after the binary, for appliances whose slots are
        /// partitions (firmware.rootfs_a, rootfs_b)
        #[arg(long, value_name = "FILE")]
        rootfs: Option<PathBuf>,
        /// The firmware signing key (`firmware keygen`)
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        #[arg(long, value_name = "IMAGE")]
        out: PathBuf,
        /// The board the image is for
        #[arg(long, default_value = "generic")]
        board: String,
        /// The lowest version the image may update from
        #[arg(long, value_name = "VERSION")]
        min_from: Option<String>,
        /// Bytes per hashed chunk
        #[arg(long, default_value_t = firmware::manifest::DEFAULT_CHUNK)]
        chunk_size: u32,
        /// Refuse the image from this date or time on (YYYY-MM-DD, 00:00 UTC, or RFC 3339),
        /// signed in its manifest
        #[arg(long, value_name = "DATE")]
        expires: Option<String>,
        #[command(flatten)]
        passphrase: cert_tool::cli::PassphraseArgs,
    },
    /// The slots, the running and committed versions, the trial if any, the version floor
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Verify an image (a file, or an https:// or http:// URL, streamed into the slot) and
    /// install it into the inactive slot, on trial: it runs at the next start
    Install {
        #[arg(value_name = "IMAGE|URL")]
        image: String,
        /// Then start it now: as `firmware activate`
        #[arg(long)]
        activate: bool,
    },
    /// Start the version on trial now: the running gateway stops in order (connections
    /// drained, audit log flushed) and the supervisor starts the trial in the same process
    Activate,
    /// Commit the version on trial now (the supervisor does this itself once the health checks pass)
    Commit,
    /// Give up the version on trial; with none, make the other slot's version the committed one
    Rollback,
    /// The supervisor the systemd unit runs: choose the slot, start it, commit a trial version
    /// that passes every health check within settle_secs, fall back past the boot limit
    Boot {
        /// The command line for the slot's binary [default: gateway run --config FILE]
        #[arg(last = true)]
        args: Vec<String>,
    },
}

pub fn run(args: FirmwareArgs) -> Result<ExitCode> {
    match args.command {
        #[cfg(feature = "vendor")]
        FirmwareCommand::Keygen {
            out,
            no_passphrase,
            passphrase,
        } => keygen(&out, no_passphrase, &passphrase),
        #[cfg(feature = "vendor")]
        FirmwareCommand::Build {
            version,
            binary,
            rootfs,
            key,
            out,
            board,
            min_from,
            chunk_size,
            expires,
            passphrase,
        } => build(
            &version,
            &binary,
            rootfs.as_deref(),
            &key,
            &out,
            board,
            min_from.as_deref(),
            chunk_size,
            expires.as_deref(),
            &passphrase,
        ),
        FirmwareCommand::Status { json } => status(&Appliance::locate(&args.appliance)?, json),
        FirmwareCommand::Install { image, activate } => {
            let appliance = Appliance::locate(&args.appliance)?;
            install(&appliance, &image)?;
            if activate {
                self::activated(&appliance)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        FirmwareCommand::Activate => activated(&Appliance::locate(&args.appliance)?),
        FirmwareCommand::Commit => commit(&Appliance::locate(&args.appliance)?),
        FirmwareCommand::Rollback => rollback(&Appliance::locate(&args.appliance)?),
        FirmwareCommand::Boot { args: child } => supervise::run(&Appliance::locate(&args.appliance)?, child),
    }
}

#[cfg(feature = "vendor")]
fn keygen(out: &Path, no_passphrase: bool, passphrase: &cert_tool::cli::PassphraseArgs) -> Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let public_path = out.with_extension("pub");
    for path in [out, public_path.as_path()] {
        if path.exists() {
            return Err(FirmwareCliError::Message(format!(
                "{} exists: not overwritten",
                path.display()
            )));
        }
    }
    let msg = |e: cert_tool::error::Error| FirmwareCliError::Message(e.to_string());
    let key = cert_tool::keys::KeyAlgorithm::EcdsaP256.generate().map_err(msg)?;
    let pass = if no_passphrase {
        None
    } else {
        Some(passphrase.new_for(out).map_err(msg)?)
    };
    let sealed = cert_tool::keys::seal(&key, pass.as_ref()).map_err(msg)?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .and_then(|mut f| f.write_all(sealed.as_bytes()).and_then(|()| f.sync_all()))
        .map_err(|e| FirmwareCliError::Message(format!("cannot write {}: {e}", out.display())))?;
    let public = firmware::key::public_pem(key.0.public_key_raw());
    std::fs::write(&public_path, &public)
        .map_err(|e| FirmwareCliError::Message(format!("cannot write {}: {e}", public_path.display())))?;
    println!(
        "firmware key {} ({}); public key {}",
        out.display(),
        firmware::key::fingerprint(key.0.public_key_raw()),
        public_path.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "vendor")]
#[allow(clippy::too_many_arguments)]
fn build(
    version: &str,
    binary: &Path,
    rootfs: Option<&Path>,
    key_path: &Path,
    out: &Path,
    board: String,
    min_from: Option<&str>,
    chunk_size: u32,
    expires: Option<&str>,
    passphrase: &cert_tool::cli::PassphraseArgs,
) -> Result<ExitCode> {
    let version: Version = version.parse()?;
    let min_from: Option<Version> = min_from.map(str::parse).transpose()?;
    let expires = expires.map(parse_date).transpose()?;
    let text = zeroize::Zeroizing::new(
        std::fs::read(key_path)
            .map_err(|e| FirmwareCliError::Message(format!("cannot read {}: {e}", key_path.display())))?,
    );
    let key = cert_tool::keys::open(key_path, &text, passphrase.existing(key_path))
        .map_err(|e| FirmwareCliError::Message(e.to_string()))?;
    let der = zeroize::Zeroizing::new(key.0.serialize_der());
    let signer = firmware::key::signing_key(&der)?;
    let created = now();
    if let Some(at) = expires
        && at <= created
    {
        return Err(FirmwareCliError::Message(format!(
            "--expires {}: that is not in the future",
            image::rfc3339(at)
        )));
    }
    let manifest = image::build(
        &image::BuildRequest {
            binary,
            rootfs,
            out,
            version,
            board,
            min_from,
            chunk_size,
            created,
            expires,
        },
        &signer,
    )?;
    let rootfs = manifest
        .rootfs
        .as_ref()
        .map(|r| format!(", a root file system of {} bytes", r.size))
        .unwrap_or_default();
    println!(
        "{}: version {} for board {}, {} bytes in {} chunks{rootfs}, signed by {}",
        out.display(),
        manifest.version,
        manifest.board,
        manifest.payload.size,
        manifest.payload.chunks.len(),
        firmware::key::fingerprint(
            firmware::key::parse_public(firmware::key::public_pem(key.0.public_key_raw()).as_bytes())?
                .as_slice()
        )
    );
    Ok(ExitCode::SUCCESS)
}

/// `--expires`: a date (`2027-06-30`, from 00:00 UTC) or an RFC 3339 time, as seconds since
/// the Unix epoch.
#[cfg(feature = "vendor")]
fn parse_date(text: &str) -> Result<u64> {
    use time::format_description::well_known::Rfc3339;
    let at = time::OffsetDateTime::parse(text, &Rfc3339).or_else(|_| {
        time::Date::parse(text, time::macros::format_description!("[year]-[month]-[day]"))
            .map(|d| d.midnight().assume_utc())
    });
    at.ok()
        .and_then(|t| u64::try_from(t.unix_timestamp()).ok())
        .ok_or_else(|| {
            FirmwareCliError::Message(format!(
                "--expires {text:?}: expected a date (2027-06-30) or an RFC 3339 time (2027-06-30T12:00:00Z)"
            ))
        })
}

/// The clock, seconds since the Unix epoch (0 if it reads before it).
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The appliance as the firmware commands see it.
pub(crate) struct Appliance {
    pub config_file: PathBuf,
    pub data_dir: PathBuf,
    pub firmware: Firmware,
    /// The slots' binaries and what they hold.
    pub files: Files,
    /// Where the boot state lives (`firmware.bootloader`).
    pub bootloader: Box<dyn Bootloader>,
    /// How long the gateway takes to stop in order (`limits.shutdown_secs`).
    pub shutdown: std::time::Duration,
}

impl Appliance {
    fn locate(args: &ApplianceArgs) -> Result<Appliance> {
        let config_file = args.config_file().to_owned();
        let (config, data_dir) = args.parse("its [firmware] section")?;
        let Some(firmware) = config.firmware else {
            return Err(FirmwareCliError::Message(format!(
                "{} has no [firmware] section: the firmware commands need its public_key (and board)",
                config_file.display()
            )));
        };
        let files = Files::new(&firmware.slots());
        let bootloader = firmware.backend().open(&files)?;
        Ok(Appliance {
            config_file,
            data_dir,
            firmware,
            files,
            bootloader,
            shutdown: std::time::Duration::from_secs(config.limits.shutdown_secs),
        })
    }

    fn floor(&self) -> Floor {
        Floor::new(&self.data_dir)
    }

    /// The slots, set up with the running binary in slot `a` if this appliance has none yet,
    /// and `current` pointing at the committed slot (after power loss inside a write of a
    /// bootloader's environment, it may point at the slot committed before).
    fn slots(&self) -> Result<firmware::BootEnv> {
        if self.bootloader.read()?.is_none() {
            let exe = std::env::current_exe()
                .map_err(|e| FirmwareCliError::Message(format!("cannot find the running binary: {e}")))?;
            self.files.adopt(
                &*self.bootloader,
                &exe,
                env!("CARGO_PKG_VERSION"),
                self.firmware.boot_limit,
            )?;
            self.audit(
                Decision::Allow,
                &format!(
                    "slots set up: slot a holds the running binary, version {}",
                    env!("CARGO_PKG_VERSION")
                ),
            );
        }
        let env = self
            .bootloader
            .read()?
            .ok_or_else(|| FirmwareCliError::Message("the slots could not be set up".into()))?;
        self.files.follow(env.committed)?;
        Ok(env)
    }

    fn version_of(&self, slot: Slot) -> Result<Option<Version>> {
        Ok(match self.files.info(slot)? {
            Some(info) => Some(info.version.parse()?),
            None => None,
        })
    }

    /// What a command did, printed and audited; or why `what` was refused, audited.
    fn report(&self, result: Result<String>, what: &str) -> Result<ExitCode> {
        match result {
            Ok(text) => {
                self.audit(Decision::Allow, &text);
                println!("{text}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                self.audit(Decision::Deny, &format!("{what} refused: {e}"));
                Err(e)
            }
        }
    }

    /// Records a firmware event in the audit log; a log that cannot be written is reported on
    /// stderr, not fatal (the change itself is already on disk).
    pub(crate) fn audit(&self, decision: Decision, reason: &str) {
        let record = || -> crate::store::Result<()> {
            let audit = AuditLog::open(&self.data_dir)?;
            audit.record_blocking(Entry::new(decision, "firmware", "firmware", reason));
            audit.close_blocking()
        };
        if let Err(e) = record() {
            eprintln!("kakehashi: warning: cannot record in the audit log: {e} (event: {reason})");
        }
    }
}

/// `firmware activate`, reported and audited as the other commands.
fn activated(appliance: &Appliance) -> Result<ExitCode> {
    appliance.report(activate::activate(appliance, appliance.shutdown), "activation")
}

fn install(appliance: &Appliance, source: &str) -> Result<ExitCode> {
    let result = install_inner(appliance, source);
    appliance.report(result, &format!("image {source}")).map_err(|e| {
        // Every refusal names the image (a file, or the URL), if its reason does not yet.
        let text = e.to_string();
        if text.contains(source) {
            e
        } else {
            FirmwareCliError::Message(format!("{source}: {text}"))
        }
    })
}

/// Opens the image (a file, or a download started) and checks its signature; nothing of the
/// payload is read yet.
fn open_image(appliance: &Appliance, source: &str, pinned: &[u8]) -> Result<image::Opened> {
    if !fetch::is_url(source) {
        return Ok(image::open(Path::new(source), pinned)?);
    }
    let ca = appliance
        .firmware
        .ca
        .clone()
        .unwrap_or_else(|| fetch::SYSTEM_ROOTS.into());
    let timeout = std::time::Duration::from_secs(appliance.firmware.fetch_timeout_secs);
    let download = fetch::get(source, &ca, timeout)?;
    let announced = download.length();
    let url = download.url().to_owned();
    let opened = image::read_signed(url.clone(), Box::new(download), pinned)?;
    if let Some(announced) = announced
        && announced != opened.length
    {
        return Err(FirmwareCliError::Message(format!(
            "{url}: the server announces {announced} bytes, but the signed manifest makes the image \
             {} bytes: refused before a byte of the payload was written",
            opened.length
        )));
    }
    Ok(opened)
}

fn install_inner(appliance: &Appliance, source: &str) -> Result<String> {
    let key_path = &appliance.firmware.public_key;
    let pinned_text = std::fs::read(key_path)
        .map_err(|e| FirmwareCliError::Message(format!("cannot read {}: {e}", key_path.display())))?;
    let pinned = firmware::key::parse_public(&pinned_text)?;
    // Signature, key, board and versions before anything is written (even the slots' set-up).
    let opened = open_image(appliance, source, &pinned)?;
    let running = match appliance.bootloader.read()? {
        Some(env) => appliance
            .version_of(env.committed)?
            .ok_or_else(|| FirmwareCliError::Message(format!("slot {} has no slot.json", env.committed)))?,
        None => env!("CARGO_PKG_VERSION").parse()?,
    };
    let floor = appliance.floor().read()?;
    let checks = image::Appliance {
        board: &appliance.firmware.board,
        floor: floor.as_ref(),
        running: &running,
        now: now(),
    };
    image::check(&opened.manifest, &checks)?;
    appliance.slots()?;
    let origin = opened.origin.clone();
    let installed = firmware::install::install(
        opened,
        &checks,
        &appliance.files,
        appliance.firmware.rootfs().as_ref(),
        &*appliance.bootloader,
        appliance.firmware.boot_limit,
        &mut |_| Ok(()),
    )?;
    let rootfs = appliance
        .firmware
        .rootfs()
        .map(|r| format!(", its root file system in {}", r.of(installed.slot).display()))
        .unwrap_or_default();
    Ok(format!(
        "version {} from {origin} installed in slot {} ({} bytes{rootfs}), on trial: it runs at \
         the next start and commits itself once its health checks pass",
        installed.version, installed.slot, installed.size
    ))
}

fn commit(appliance: &Appliance) -> Result<ExitCode> {
    let env = appliance.slots()?;
    let Some(trial) = env.trial else {
        return Err(FirmwareCliError::Message(
            "no version is on trial: nothing to commit".into(),
        ));
    };
    let version = appliance
        .version_of(trial)?
        .ok_or_else(|| FirmwareCliError::Message(format!("slot {trial} has no slot.json")))?;
    boot::commit(&*appliance.bootloader, &appliance.floor(), &version)?;
    let text =
        format!("version {version} in slot {trial} committed by the operator; version floor {version}");
    appliance.audit(Decision::Allow, &text);
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn rollback(appliance: &Appliance) -> Result<ExitCode> {
    let env = appliance.slots()?;
    let text = match env.trial {
        Some(trial) => {
            boot::abandon(&*appliance.bootloader, "rolled back by the operator")?;
            format!(
                "the trial of slot {trial} given up; slot {} runs at the next start",
                env.committed
            )
        }
        None => {
            let other = env.committed.other();
            let complete = appliance.files.info(other)?.is_some() && appliance.files.binary(other).is_file();
            if !complete {
                return Err(FirmwareCliError::Message(format!(
                    "no version is on trial, and slot {other} holds no complete version to go back to"
                )));
            }
            boot::switch_back(&*appliance.bootloader, "rolled back by the operator")?;
            format!("slot {other} is the committed slot again; it runs at the next start")
        }
    };
    appliance.audit(Decision::Allow, &text);
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct Status {
    /// The version running now: the booted slot's, else the committed slot's.
    version: Option<String>,
    booted_slot: Option<Slot>,
    committed_slot: Option<Slot>,
    trial: Option<Trial>,
    floor: Option<String>,
    board: String,
    slots: Slots,
    rolled_back: Option<String>,
}

#[derive(Serialize)]
struct Trial {
    version: Option<String>,
    slot: Slot,
    bootcount: u32,
    bootlimit: u32,
}

#[derive(Serialize)]
struct Slots {
    a: Option<SlotInfo>,
    b: Option<SlotInfo>,
}

fn status(appliance: &Appliance, json: bool) -> Result<ExitCode> {
    let files = &appliance.files;
    let env = appliance.bootloader.read()?;
    let a = files.info(Slot::A)?;
    let b = files.info(Slot::B)?;
    let info = |slot: Slot| if slot == Slot::A { a.clone() } else { b.clone() };
    let booted = files.running();
    let status = Status {
        version: booted
            .or(env.as_ref().map(|e| e.committed))
            .and_then(|s| info(s).map(|i| i.version))
            .or_else(|| env.is_none().then(|| env!("CARGO_PKG_VERSION").to_owned())),
        booted_slot: booted,
        committed_slot: env.as_ref().map(|e| e.committed),
        trial: env.as_ref().and_then(|e| {
            e.trial.map(|slot| Trial {
                version: info(slot).map(|i| i.version),
                slot,
                bootcount: e.bootcount,
                bootlimit: e.bootlimit,
            })
        }),
        floor: appliance.floor().read()?.map(|v| v.to_string()),
        board: appliance.firmware.board.clone(),
        slots: Slots {
            a: a.clone(),
            b: b.clone(),
        },
        rolled_back: env.as_ref().and_then(|e| e.rolled_back.clone()),
    };
    if json {
        println!(
            "{}",
            super::to_json(&status).map_err(|e| FirmwareCliError::Message(e.to_string()))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    println!("version         {}", dash(status.version.clone()));
    println!("board           {}", status.board);
    println!(
        "booted slot     {}",
        dash(status.booted_slot.map(|s| s.to_string()))
    );
    println!(
        "committed slot  {}",
        dash(status.committed_slot.map(|s| s.to_string()))
    );
    match &status.trial {
        Some(t) => println!(
            "trial           version {} in slot {} (start {} of {})",
            dash(t.version.clone()),
            t.slot,
            t.bootcount,
            t.bootlimit
        ),
        None => println!("trial           -"),
    }
    println!("version floor   {}", dash(status.floor.clone()));
    for (name, slot) in [("slot a", &status.slots.a), ("slot b", &status.slots.b)] {
        println!(
            "{name}          {}",
            slot.as_ref()
                .map(|i| match i.rootfs {
                    Some(r) => format!(
                        "version {} ({} bytes; root file system {r} bytes)",
                        i.version, i.size
                    ),
                    None => format!("version {} ({} bytes)", i.version, i.size),
                })
                .unwrap_or_else(|| "empty".into())
        );
    }
    if let Some(r) = &status.rolled_back {
        println!("last rollback   {r}");
    }
    if env.is_none() {
        println!("(the slots are set up at the first install: slot a takes the running binary)");
    }
    Ok(ExitCode::SUCCESS)
}
