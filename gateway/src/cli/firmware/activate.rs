//! `kakehashi firmware activate` (and `install --activate`): the running gateway makes way for
//! the version just installed, in order, without systemd's help.
//!
//! The process the systemd unit starts is the supervisor, `firmware boot`, and it stays the
//! same process throughout: it `exec`s the committed slot's gateway, or it waits for a trial
//! version (committed or not) that it started as its child. It records its process id in
//! `SLOTS/boot.pid`. `activate` sends that process SIGUSR2:
//! - a gateway the supervisor `exec`ed stops as on SIGTERM (no new connections, requests in
//!   flight finished within `limits.shutdown_secs`, the audit log flushed), then `exec`s the
//!   supervisor again ([`Handover`], which the supervisor put in its environment);
//! - a supervisor waiting for its child sends the child SIGTERM, waits for it to stop the same
//!   way, then `exec`s itself again.
//!
//! Either way the supervisor starts afresh in the same process, finds the trial, counts its
//! start and starts it: the health checks, the commit and the rollback are those of any start.
//! The process id that systemd watches does not change, so systemd sees no stop and no restart,
//! and the same works with no systemd at all. `activate` waits until the supervisor has counted
//! the trial's start.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use firmware::atomic;

use super::{Appliance, FirmwareCliError, Result};
use crate::audit::Decision;

/// The supervisor's command line, in the environment of the gateway it `exec`s: a JSON array,
/// the program first.
pub const HANDOVER_ENV: &str = "KAKEHASHI_FIRMWARE_BOOT";
/// The supervisor's process id, in the slots directory.
const PID_FILE: &str = "boot.pid";
/// How long `activate` waits beyond the gateway's own drain time for the trial to start.
const START_MARGIN: Duration = Duration::from_secs(30);

/// How to start the supervisor again in this process.
pub struct Handover {
    program: PathBuf,
    args: Vec<OsString>,
}

impl Handover {
    /// The supervisor of `appliance` as it runs now: `SLOTS/current/kakehashi` (what the
    /// systemd unit starts: the committed slot's binary) with this process's arguments.
    /// `None` if an argument is not UTF-8 (the environment carries it as JSON).
    pub(super) fn of_this_supervisor(appliance: &Appliance) -> Option<Handover> {
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        args.iter().all(|a| a.to_str().is_some()).then(|| Handover {
            program: appliance
                .files
                .dir()
                .join("current")
                .join(firmware::files::BINARY),
            args,
        })
    }

    /// The handover the supervisor left in this process's environment, if it started it.
    pub fn from_env() -> Option<Handover> {
        let text = std::env::var(HANDOVER_ENV).ok()?;
        let mut words: Vec<String> = serde_json::from_str(&text).ok()?;
        if words.is_empty() {
            return None;
        }
        let program = PathBuf::from(words.remove(0));
        Some(Handover {
            program,
            args: words.into_iter().map(OsString::from).collect(),
        })
    }

    /// The environment variable's value.
    pub(super) fn to_env(&self) -> String {
        let words: Vec<&str> = std::iter::once(self.program.to_str().unwrap_or_default())
            .chain(self.args.iter().filter_map(|a| a.to_str()))
            .collect();
        serde_json::to_string(&words).unwrap_or_default()
    }

    /// Replaces this process with the supervisor; returns only if that fails.
    pub fn exec(&self) -> String {
        let error = Command::new(&self.program).args(&self.args).exec();
        format!(
            "cannot start the firmware supervisor {}: {error}",
            self.program.display()
        )
    }
}

/// Records the supervisor's process id for `activate` (the process keeps it across `exec`).
pub(super) fn record_pid(appliance: &Appliance) -> Result<()> {
    let path = appliance.files.dir().join(PID_FILE);
    atomic::write(&path, format!("{}\n", std::process::id()).as_bytes(), 0o644)?;
    Ok(())
}

/// The process `SLOTS/boot.pid` names, if it still runs a binary from one of the slots (so a
/// stale file whose id was reused by another program is not signalled).
fn supervisor(appliance: &Appliance) -> Result<rustix::process::Pid> {
    let path = appliance.files.dir().join(PID_FILE);
    let none = |why: String| {
        FirmwareCliError::Message(format!(
            "no firmware supervisor runs this appliance ({why}): start it (`systemctl start \
             kakehashi-firmware`), and the trial runs at its start"
        ))
    };
    let text = std::fs::read_to_string(&path).map_err(|e| none(format!("{}: {e}", path.display())))?;
    let pid = text
        .trim()
        .parse::<i32>()
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| {
            none(format!(
                "{} holds {:?}, not a process id",
                path.display(),
                text.trim()
            ))
        })?;
    let exe = std::fs::read_link(format!("/proc/{}/exe", pid.as_raw_nonzero())).map_err(|e| {
        none(format!(
            "process {} from {}: {e}",
            pid.as_raw_nonzero(),
            path.display()
        ))
    })?;
    let exe = PathBuf::from(exe.to_string_lossy().trim_end_matches(" (deleted)"));
    let in_a_slot = [firmware::Slot::A, firmware::Slot::B].into_iter().any(|s| {
        let dir = appliance.files.slot_dir(s);
        exe.parent() == Some(dir.canonicalize().unwrap_or(dir).as_path())
    });
    if !in_a_slot {
        return Err(none(format!(
            "process {} runs {}, not a slot's binary",
            pid.as_raw_nonzero(),
            exe.display()
        )));
    }
    Ok(pid)
}

/// Asks the running supervisor (or the gateway it became) to start the version on trial, and
/// waits until it has: the trial's start counted. `shutdown` is the gateway's drain time.
pub(super) fn activate(appliance: &Appliance, shutdown: Duration) -> Result<String> {
    let env = appliance.slots()?;
    let Some(trial) = env.trial else {
        return Err(FirmwareCliError::Message(
            "no version is on trial: install one first (`kakehashi firmware install IMAGE|URL`)".into(),
        ));
    };
    let version = appliance
        .files
        .info(trial)?
        .map(|i| i.version)
        .unwrap_or_else(|| "?".into());
    if env.bootcount > 0 {
        return Err(FirmwareCliError::Message(format!(
            "version {version} in slot {trial} has started already (start {} of {}): the supervisor runs it",
            env.bootcount, env.bootlimit
        )));
    }
    let pid = supervisor(appliance)?;
    rustix::process::kill_process(pid, rustix::process::Signal::USR2).map_err(|e| {
        FirmwareCliError::Message(format!(
            "cannot signal the firmware supervisor (process {}): {e}",
            pid.as_raw_nonzero()
        ))
    })?;
    appliance.audit(
        Decision::Allow,
        &format!(
            "activation: process {} asked to stop in order and start version {version} in slot {trial} on trial",
            pid.as_raw_nonzero()
        ),
    );
    let limit = shutdown + START_MARGIN;
    let until = Instant::now() + limit;
    loop {
        let now = appliance.bootloader.read()?;
        match now {
            Some(e) if e.trial == Some(trial) && e.bootcount > 0 => break,
            Some(e) if e.trial.is_none() => break,
            _ => {}
        }
        if Instant::now() >= until {
            return Err(FirmwareCliError::Message(format!(
                "the supervisor (process {}) did not start version {version} within {} s: see its log \
                 (journalctl -u kakehashi-firmware)",
                pid.as_raw_nonzero(),
                limit.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(format!(
        "version {version} in slot {trial} started on trial (process {} stopped in order and handed \
         over); it commits itself once its health checks pass: `kakehashi firmware status`",
        pid.as_raw_nonzero()
    ))
}
