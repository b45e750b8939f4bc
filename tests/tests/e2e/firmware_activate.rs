//! `kakehashi firmware activate` and `install --activate`: the running gateway stops in order
//! and the supervisor starts the version on trial in the same process, with no systemd; both
//! ways the supervisor's process can be when asked (the gateway it `exec`ed, and the supervisor
//! waiting for a trial version it committed).

use std::path::Path;
use std::time::Duration;

use super::firmware::{Clinic, assert_audited, image_of, set_settle, status, wait_for};
use crate::support::{Server, bin, kakehashi, s};

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn firmware_activate_hands_over_to_the_supervisor_which_starts_the_trial() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Clinic {
        dir: clinic,
        config,
        ports,
    } = Clinic::new(tmp.path(), "");
    let _engine = Server::start(&["engine-sim", "--config", s(&clinic.join("engine.toml"))]);
    set_settle(&config, 20);
    let running = std::fs::read(bin()).expect("binary");
    let image = |version: &str| image_of(&clinic, version, &running);
    let firmware = |args: &[&str]| {
        let mut all = vec!["firmware"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", s(&config)]);
        kakehashi(&all)
    };
    let config_ref = config.as_path();
    // Committed, and audited: the supervisor records the commit just after making it, and the
    // test goes on to kill it.
    let committed = |slot: &'static str, version: &'static str| {
        move || {
            let st = status(config_ref);
            st["committed_slot"] == slot
                && st["floor"] == version
                && st["trial"].is_null()
                && kakehashi(&["audit", "export", "--config", s(config_ref)])
                    .ok()
                    .contains(&format!(
                        "version {version} in slot {slot} passed every health check"
                    ))
        }
    };

    // The supervisor sets up the slots and execs the committed slot's gateway.
    let mut supervisor = Server::start(&["firmware", "boot", "--config", s(&config)]);
    let pid = supervisor.pid();
    let recorded = std::fs::read_to_string(clinic.join("slots/boot.pid")).expect("boot.pid");
    assert_eq!(recorded.trim(), pid.to_string());
    firmware(&["activate"]).fails_with(&["no version is on trial"]);

    // Installed and activated in one go: the gateway (the supervisor's process, exec'ed)
    // stops in order and starts the supervisor again, which starts the trial.
    let out = firmware(&["install", s(&image("0.2.0")), "--activate"]).ok();
    assert!(
        out.contains("version 0.2.0 in slot b started on trial")
            && out.contains(&format!("process {pid} stopped in order")),
        "{out}"
    );
    wait_for(
        "the commit of 0.2.0",
        Duration::from_secs(25),
        committed("b", "0.2.0"),
    );
    assert!(alive(pid), "the supervisor's process ended");

    // Now the supervisor waits for the version it committed; activation stops that child in
    // order and starts the supervisor again.
    firmware(&["install", s(&image("0.3.0"))]).ok();
    let out = firmware(&["activate"]).ok();
    assert!(out.contains("version 0.3.0 in slot a started on trial"), "{out}");
    wait_for(
        "the commit of 0.3.0",
        Duration::from_secs(25),
        committed("a", "0.3.0"),
    );
    assert!(alive(pid), "the supervisor's process ended");
    assert_eq!(
        std::fs::read_to_string(clinic.join("slots/boot.pid"))
            .expect("boot.pid")
            .trim(),
        pid.to_string()
    );

    // Without a running supervisor there is nobody to ask: the message says what to do.
    supervisor.kill();
    wait_for("the gateway's end", Duration::from_secs(15), || {
        std::net::TcpListener::bind(&ports.listen).is_ok()
    });
    firmware(&["install", s(&image("0.4.0"))]).ok();
    firmware(&["activate"]).fails_with(&["no firmware supervisor runs this appliance", "systemctl start"]);
    assert_eq!(status(&config)["trial"]["bootcount"], 0);

    assert_audited(
        &config,
        &[
            "activation: process",
            "activation: stopping version 0.2.0 in slot b in order",
            "version 0.3.0 in slot a passed every health check",
            "activation refused: no firmware supervisor",
        ],
    );
}

#[test]
fn an_orderly_stop_during_a_trial_gives_its_start_back_and_a_kill_does_not() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Clinic {
        dir: clinic, config, ..
    } = Clinic::new(tmp.path(), "");
    // A version that never passes its health checks (it binds nothing) but shuts down cleanly
    // on SIGTERM, as a gateway does, once it says it is up (`kakehashi.ready` beside itself).
    let script = b"#!/bin/sh\ntrap 'kill $!; exit 0' TERM\nsleep 600 &\necho up > \"$0.ready\"\nwait\n";
    let ready = clinic.join("slots/b/kakehashi.ready");
    kakehashi(&[
        "firmware",
        "install",
        s(&image_of(&clinic, "0.2.0", script)),
        "--config",
        s(&config),
    ])
    .ok();
    set_settle(&config, 120);
    let bootcount = || status(&config)["trial"]["bootcount"].as_u64().expect("a trial");
    let supervise = || {
        std::process::Command::new(bin())
            .args(["firmware", "boot", "--config", s(&config)])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the supervisor")
    };
    let ended = |child: &mut std::process::Child| {
        wait_for("the supervisor's end", Duration::from_secs(20), || {
            child.try_wait().expect("wait").is_some()
        })
    };

    // Stopped in order (systemctl restart, a reboot): the start is given back, each time.
    for _ in 0..4 {
        let _ = std::fs::remove_file(&ready);
        let mut supervisor = supervise();
        wait_for("the trial's start", Duration::from_secs(10), || ready.exists());
        assert_eq!(bootcount(), 1);
        crate::support::sh(&format!("kill -TERM {}", supervisor.id())).ok();
        ended(&mut supervisor);
        assert!(supervisor.try_wait().expect("wait").is_some_and(|s| s.success()));
        assert_eq!(bootcount(), 0, "an orderly stop is not a failed start");
        assert_eq!(status(&config)["trial"]["slot"], "b");
    }

    // Killed (a crash, a power loss): the start stays counted.
    let mut supervisor = supervise();
    wait_for("the trial's start", Duration::from_secs(10), || bootcount() == 1);
    supervisor.kill().expect("kill -9");
    ended(&mut supervisor);
    let _ = crate::support::sh(&format!("pkill -f {}", s(&clinic.join("slots/b/kakehashi"))));
    assert_eq!(bootcount(), 1, "a kill is a failed start");

    assert_audited(
        &config,
        &["version 0.2.0 in slot b stopped in order during its trial (SIGTERM): start 1 of 3 not counted"],
    );
}
