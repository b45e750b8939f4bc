//! `kakehashi firmware boot`: the supervisor that `deploy/kakehashi-firmware.service` runs.
//!
//! At every start it asks [`firmware::boot::choose`] which slot runs, which counts a trial
//! version's start before anything else happens (so a crash or a hang counts too):
//! - the committed slot: the supervisor `exec`s its binary, and is gone;
//! - the trial slot: it starts the binary as a child and runs the health checks
//!   ([`super::health`]) every second. All passing within `settle_secs`: it commits (the trial
//!   slot becomes `current`, the version floor rises) and then simply waits for the child. Still
//!   failing at the deadline: every failure is reported, the trial given up, the child stopped,
//!   and the committed slot's binary `exec`ed. The child exiting during the trial: the
//!   supervisor exits with failure, systemd starts it again, and the next start is counted;
//!   past `boot_limit` starts the committed slot runs again.
//!
//! The child ends with the supervisor however it ends (the parent-death signal the demo's
//! children use, [`crate::cli::demo::end_with_demo`]).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use firmware::Slot;
use firmware::boot::{self, Choice};

use super::{Appliance, FirmwareCliError, Result, health};
use crate::audit::Decision;

pub(super) fn run(appliance: &Appliance, args: Vec<String>) -> Result<ExitCode> {
    appliance.slots()?;
    let args = if args.is_empty() {
        vec![
            "gateway".to_owned(),
            "run".to_owned(),
            "--config".to_owned(),
            appliance.config_file.to_string_lossy().into_owned(),
        ]
    } else {
        args
    };
    match boot::choose(&*appliance.bootloader)? {
        Choice::Committed { slot, rolled_back } => {
            if let Some(trial) = rolled_back {
                let why = appliance
                    .bootloader
                    .read()?
                    .and_then(|e| e.rolled_back)
                    .unwrap_or_else(|| format!("slot {trial}"));
                let text = format!("rolled back to slot {slot}: the trial of {why}");
                eprintln!("kakehashi firmware: {text}");
                appliance.audit(Decision::Deny, &text);
            }
            Err(exec(appliance, slot, &args))
        }
        Choice::Trial { slot, attempt, limit } => trial(appliance, slot, attempt, limit, &args),
    }
}

/// Replaces this process with the slot's binary; returns only if that fails.
fn exec(appliance: &Appliance, slot: Slot, args: &[String]) -> FirmwareCliError {
    let binary = appliance.files.binary(slot);
    let error = Command::new(&binary).args(args).exec();
    FirmwareCliError::Message(format!("cannot start {}: {error}", binary.display()))
}

fn trial(appliance: &Appliance, slot: Slot, attempt: u32, limit: u32, args: &[String]) -> Result<ExitCode> {
    let version = appliance
        .files
        .info(slot)?
        .map(|i| i.version)
        .unwrap_or_else(|| "?".into());
    let text = format!("version {version} in slot {slot} starts on trial (start {attempt} of {limit})");
    eprintln!("kakehashi firmware: {text}");
    appliance.audit(Decision::Allow, &text);
    let binary = appliance.files.binary(slot);
    let mut child = Command::new(&binary)
        .args(args)
        .env(crate::cli::demo::DEMO_PID_ENV, std::process::id().to_string())
        .spawn()
        .map_err(|e| FirmwareCliError::Message(format!("cannot start {}: {e}", binary.display())))?;
    let settle = Duration::from_secs(appliance.firmware.settle_secs);
    let deadline = Instant::now() + settle;
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| FirmwareCliError::Message(format!("waiting for the trial version: {e}")))?
        {
            let text = format!(
                "version {version} in slot {slot} exited during its trial ({status}), start {attempt} of {limit}"
            );
            eprintln!("kakehashi firmware: {text}");
            appliance.audit(Decision::Deny, &text);
            return Ok(ExitCode::FAILURE);
        }
        let failures = health::check(&appliance.config_file);
        if failures.is_empty() {
            let parsed = version.parse()?;
            boot::commit(&*appliance.bootloader, &appliance.floor(), &parsed)?;
            let text = format!(
                "version {version} in slot {slot} passed every health check and is committed; version floor {version}"
            );
            eprintln!("kakehashi firmware: {text}");
            appliance.audit(Decision::Allow, &text);
            break;
        }
        if Instant::now() >= deadline {
            let text = format!(
                "version {version} in slot {slot} failed its health checks within {} s: {}",
                settle.as_secs(),
                failures.join("; ")
            );
            eprintln!("kakehashi firmware: {text}");
            appliance.audit(Decision::Deny, &text);
            boot::abandon(
                &*appliance.bootloader,
                &format!("failed its health checks: {}", failures.join("; ")),
            )?;
            stop(&mut child);
            let committed = appliance
                .bootloader
                .read()?
                .map(|e| e.committed)
                .ok_or_else(|| FirmwareCliError::Message("no committed slot".into()))?;
            let text = format!("rolled back to slot {committed}");
            eprintln!("kakehashi firmware: {text}");
            appliance.audit(Decision::Deny, &text);
            return Err(exec(appliance, committed, args));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let status = child
        .wait()
        .map_err(|e| FirmwareCliError::Message(format!("waiting for the gateway: {e}")))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// SIGTERM, ten seconds to shut down gracefully, then SIGKILL.
fn stop(child: &mut Child) {
    if let Some(pid) = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}
