//! `kakehashi firmware boot`: the supervisor that `deploy/kakehashi-firmware.service` runs.
//!
//! At every start it asks [`firmware::boot::choose`] which slot runs, which counts a trial
//! version's start before anything else happens (so a crash or a hang counts too):
//! - the committed slot: the supervisor `exec`s its binary, and is gone;
//! - the trial slot: it starts the binary as a child and runs the health checks
//!   ([`super::health`]): at once, then [`FIRST_CHECK_PAUSE`] later, the pause doubling up to a
//!   second (a gateway is usually up within a few hundred milliseconds, so the commit follows
//!   it closely, and a slow one is not checked more than once a second). All passing within `settle_secs`: it commits (the trial
//!   slot becomes `current`, the version floor rises) and then simply waits for the child. Still
//!   failing at the deadline: every failure is reported, the trial given up, the child stopped,
//!   and the committed slot's binary `exec`ed. The child exiting during the trial: the
//!   supervisor exits with failure, systemd starts it again, and the next start is counted;
//!   past `boot_limit` starts the committed slot runs again.
//!
//! The child ends with the supervisor however it ends (the parent-death signal the demo's
//! children use, [`crate::cli::demo::end_with_demo`]). An orderly stop (SIGTERM, SIGINT: a
//! `systemctl restart`, a reboot) is passed on to the child, which shuts down as a gateway does;
//! during a trial, a clean shutdown gives the start back ([`firmware::boot::uncount`]), so that
//! normal reboots do not use up the trial's boot limit. A crash, a hang, `kill -9` or a power
//! loss keep their count.
//!
//! The supervisor records its process id (`SLOTS/boot.pid`) for `firmware activate`, whose
//! SIGUSR2 it answers once a trial is over: it stops its child in order and starts again
//! ([`super::activate`]). The gateway it `exec`s answers the same signal itself.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use firmware::Slot;
use firmware::boot::{self, Choice};

use super::activate::{HANDOVER_ENV, Handover};
use super::{Appliance, FirmwareCliError, Result, health};
use crate::audit::Decision;

pub(super) fn run(appliance: &Appliance, args: Vec<String>) -> Result<ExitCode> {
    appliance.slots()?;
    // Before the process id is recorded (SIGUSR2's default action would end the process), and
    // before a start is counted: a stop from then on is answered in order.
    let mut signals = Signals::listen()?;
    super::activate::record_pid(appliance)?;
    let handover = Handover::of_this_supervisor(appliance);
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
            // A stop that came before the gateway takes over its own signals: nothing to start.
            if signals.wait(Duration::ZERO) == Some(Asked::Stop) {
                return Ok(ExitCode::SUCCESS);
            }
            Err(exec(appliance, slot, &args, handover.as_ref()))
        }
        Choice::Trial { slot, attempt, limit } => trial(
            appliance,
            slot,
            attempt,
            limit,
            &args,
            &mut signals,
            handover.as_ref(),
        ),
    }
}

/// Replaces this process with the slot's binary; returns only if that fails. The gateway gets
/// the supervisor's command line, to start it again when `firmware activate` asks.
fn exec(appliance: &Appliance, slot: Slot, args: &[String], handover: Option<&Handover>) -> FirmwareCliError {
    let binary = appliance.files.binary(slot);
    let mut command = Command::new(&binary);
    command.args(args);
    match handover {
        Some(h) => command.env(HANDOVER_ENV, h.to_env()),
        None => command.env_remove(HANDOVER_ENV),
    };
    let error = command.exec();
    FirmwareCliError::Message(format!("cannot start {}: {error}", binary.display()))
}

/// What a signal asks of a supervisor that waits for its child.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// SIGUSR2: `firmware activate`'s request.
    Activate,
    /// SIGTERM or SIGINT: stop (a `systemctl stop` or `restart`, a reboot).
    Stop,
}

/// The signals the supervisor answers, from its start: a stop is never lost between counting a
/// trial's start and the child's start. An `exec`ed gateway handles its own (`exec` resets
/// them).
struct Signals {
    runtime: tokio::runtime::Runtime,
    activate: tokio::signal::unix::Signal,
    stop: (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
}

impl Signals {
    fn listen() -> Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| FirmwareCliError::Message(format!("cannot start the signal handling: {e}")))?;
        let (activate, term, int) = runtime
            .block_on(async {
                Ok::<_, std::io::Error>((
                    signal(SignalKind::user_defined2())?,
                    signal(SignalKind::terminate())?,
                    signal(SignalKind::interrupt())?,
                ))
            })
            .map_err(|e| FirmwareCliError::Message(format!("cannot handle SIGUSR2 and SIGTERM: {e}")))?;
        Ok(Signals {
            runtime,
            activate,
            stop: (term, int),
        })
    }

    /// Waits up to `time`; what a signal asked meanwhile, if one came (a stop first).
    fn wait(&mut self, time: Duration) -> Option<Asked> {
        let Signals {
            runtime,
            activate,
            stop: (term, int),
        } = self;
        runtime.block_on(async {
            tokio::select! {
                biased;
                _ = term.recv() => Some(Asked::Stop),
                _ = int.recv() => Some(Asked::Stop),
                _ = activate.recv() => Some(Asked::Activate),
                _ = tokio::time::sleep(time) => None,
            }
        })
    }
}

fn trial(
    appliance: &Appliance,
    slot: Slot,
    attempt: u32,
    limit: u32,
    args: &[String],
    signals: &mut Signals,
    handover: Option<&Handover>,
) -> Result<ExitCode> {
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
        // The supervisor answers `activate` while it waits for this child, not the child.
        .env_remove(HANDOVER_ENV)
        .spawn()
        .map_err(|e| FirmwareCliError::Message(format!("cannot start {}: {e}", binary.display())))?;
    let settle = Duration::from_secs(appliance.firmware.settle_secs);
    let deadline = Instant::now() + settle;
    let mut pause = FIRST_CHECK_PAUSE;
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
            stop(&mut child, STOP_GRACE);
            let committed = appliance
                .bootloader
                .read()?
                .map(|e| e.committed)
                .ok_or_else(|| FirmwareCliError::Message("no committed slot".into()))?;
            let text = format!("rolled back to slot {committed}");
            eprintln!("kakehashi firmware: {text}");
            appliance.audit(Decision::Deny, &text);
            return Err(exec(appliance, committed, args, handover));
        }
        let asked = signals.wait(pause);
        pause = (pause * 2).min(Duration::from_secs(1));
        match asked {
            Some(Asked::Activate) => {
                eprintln!("kakehashi firmware: activation ignored: version {version} is on trial already");
            }
            Some(Asked::Stop) => {
                return Ok(stop_during_trial(
                    appliance, &mut child, &version, slot, attempt, limit,
                ));
            }
            None => {}
        }
    }
    // Committed: the child serves until it ends, or until `activate` asks for the next trial.
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| FirmwareCliError::Message(format!("waiting for the gateway: {e}")))?
        {
            return Ok(if status.success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        let asked = signals.wait(Duration::from_millis(500));
        if asked == Some(Asked::Stop) {
            let text = format!("stopping version {version} in slot {slot} in order (SIGTERM)");
            eprintln!("kakehashi firmware: {text}");
            stop(&mut child, appliance.shutdown + STOP_GRACE);
            return Ok(ExitCode::SUCCESS);
        }
        if asked == Some(Asked::Activate) {
            let Some(handover) = handover else {
                eprintln!(
                    "kakehashi firmware: activation ignored: this supervisor's arguments are not UTF-8, \
                     so it cannot start itself again"
                );
                continue;
            };
            let text = format!(
                "activation: stopping version {version} in slot {slot} in order, then starting the supervisor again"
            );
            eprintln!("kakehashi firmware: {text}");
            appliance.audit(Decision::Allow, &text);
            stop(&mut child, appliance.shutdown + STOP_GRACE);
            return Err(FirmwareCliError::Message(handover.exec()));
        }
    }
}

/// An orderly stop while `child` (the version in `slot`) is on trial: the child is stopped as
/// SIGTERM stops a gateway, and if it shuts down cleanly, the start is taken back
/// ([`boot::uncount`]): a restart or a reboot the operator asked for is not a failed start. A
/// child that does not stop cleanly keeps its start counted.
fn stop_during_trial(
    appliance: &Appliance,
    child: &mut Child,
    version: &str,
    slot: Slot,
    attempt: u32,
    limit: u32,
) -> ExitCode {
    let clean = stop(child, appliance.shutdown + STOP_GRACE);
    let uncounted = clean && boot::uncount(&*appliance.bootloader, slot).unwrap_or(false);
    let text = if uncounted {
        format!(
            "version {version} in slot {slot} stopped in order during its trial (SIGTERM): start {attempt} of {limit} not counted"
        )
    } else {
        format!(
            "version {version} in slot {slot} stopped during its trial (SIGTERM) without shutting down cleanly: start {attempt} of {limit} counted"
        )
    };
    eprintln!("kakehashi firmware: {text}");
    appliance.audit(Decision::Allow, &text);
    ExitCode::SUCCESS
}

/// The pause after the first health check of a trial; each later one doubles, up to a second.
const FIRST_CHECK_PAUSE: Duration = Duration::from_millis(50);

/// What a stopping gateway gets beyond its own drain time before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// SIGTERM, `grace` to shut down gracefully, then SIGKILL; whether the child shut down
/// cleanly (exit status 0 within the grace).
fn stop(child: &mut Child, grace: Duration) -> bool {
    if let Some(pid) = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}
