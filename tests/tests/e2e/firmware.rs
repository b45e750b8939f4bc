//! `kakehashi firmware`: images built with the real binary, refused when tampered, older, for
//! another board or signed by another key (nothing written); installed, started on trial by the
//! supervisor, committed by its health checks; a trial version that fails them rolled back by
//! itself, the committed slot serving again.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{DemoPorts, Server, bin, kakehashi, s, sh};

pub(super) fn status(config: &Path) -> serde_json::Value {
    let out = kakehashi(&["firmware", "status", "--json", "--config", s(config)]).ok();
    serde_json::from_str(&out).expect("status JSON")
}

pub(super) fn set_settle(config: &Path, secs: u64) {
    let text = std::fs::read_to_string(config).expect("gateway.toml");
    let at = text
        .find("settle_secs = ")
        .expect("settle_secs in the demo's gateway.toml")
        + "settle_secs = ".len();
    let digits = text[at..]
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len() - at);
    let changed = format!("{}{secs}{}", &text[..at], &text[at + digits..]);
    std::fs::write(config, changed).expect("write gateway.toml");
}

pub(super) fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < until, "{what} did not happen within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn firmware_update_commits_after_health_checks_and_a_failing_trial_rolls_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Clinic {
        dir: clinic,
        config,
        ports,
    } = Clinic::new(tmp.path(), "");
    let key = clinic.join("firmware.key");
    assert_eq!(crate::support::mode(&key) & 0o777, 0o600);
    let _engine = Server::start(&["engine-sim", "--config", s(&clinic.join("engine.toml"))]);
    let binary = bin();
    let image = |version: &str, payload: &Path, extra: &[&str]| {
        let out = tmp.path().join(format!("{version}{}.img", extra.join("")));
        let mut args = vec![
            "firmware",
            "build",
            "--version",
            version,
            "--binary",
            s(payload),
            "--key",
            s(&key),
            "--out",
            s(&out),
        ];
        args.extend_from_slice(extra);
        kakehashi(&args).ok();
        out
    };

    let before = status(&config);
    assert_eq!(before["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        before["trial"].is_null() && before["committed_slot"].is_null(),
        "{before}"
    );

    // Refused, each with its reason, before anything is written.
    let good = image("0.2.0", &binary, &[]);
    let tampered = tmp.path().join("tampered.img");
    let mut bytes = std::fs::read(&good).expect("image");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&tampered, bytes).expect("write");
    let older = image("0.0.9", &binary, &[]);
    let foreign = image("0.2.0", &binary, &["--board", "other-board"]);
    let other_key = tmp.path().join("other.key");
    kakehashi(&["firmware", "keygen", "--no-passphrase", "--out", s(&other_key)]).ok();
    let unsigned_out = tmp.path().join("other-key.img");
    kakehashi(&[
        "firmware",
        "build",
        "--version",
        "0.2.0",
        "--binary",
        s(&binary),
        "--key",
        s(&other_key),
        "--out",
        s(&unsigned_out),
    ])
    .ok();
    let install = |img: &Path| kakehashi(&["firmware", "install", s(img), "--config", s(&config)]);
    install(&older).fails_with(&["0.0.9 is not above", "downgrades and replays"]);
    install(&foreign).fails_with(&["for board \"other-board\", but this appliance is \"generic\""]);
    install(&unsigned_out).fails_with(&["signed by firmware key SHA256:", "pins"]);
    assert!(!clinic.join("slots").exists(), "a refused image wrote nothing");
    // A damaged chunk is found while streaming: the slots are set up (slot a takes the running
    // binary), but nothing of the image is kept or marked bootable.
    // (The last byte is in the payload's last 1 MiB chunk, counted from 0.)
    let last_chunk = (std::fs::metadata(&binary).expect("binary").len() - 1) >> 20;
    install(&tampered).fails_with(&[&format!(
        "chunk {last_chunk} of the payload does not match its SHA-256"
    )]);
    let st = status(&config);
    assert!(st["trial"].is_null() && st["slots"]["b"].is_null(), "{st}");
    assert!(
        !clinic.join("slots/b/kakehashi").exists() && !clinic.join("slots/b/.kakehashi.partial").exists()
    );

    // Installed: on trial, the running binary adopted as the committed slot a.
    install(&good).ok();
    let st = status(&config);
    assert_eq!(st["committed_slot"], "a");
    assert_eq!(st["trial"]["version"], "0.2.0");
    assert_eq!(st["trial"]["slot"], "b");
    // Another install while one is on trial is refused.
    install(&image("0.2.1", &binary, &[])).fails_with(&["0.2.0 is on trial in slot b"]);
    assert_eq!(
        std::fs::read(clinic.join("slots/b/kakehashi")).expect("slot b"),
        std::fs::read(&binary).expect("binary")
    );

    // A gateway started by hand (outside the slots) shows the trial waiting in /health and the
    // metrics.
    let admin = |path: &str| sh(&format!("curl -s http://{}{path}", ports.admin)).ok();
    {
        let _by_hand = Server::start(&["gateway", "run", "--config", s(&config)]);
        let health = admin("/health");
        assert!(
            health.starts_with("ok\n")
                && health.contains(&format!(
                    "firmware: {} from outside the slots; committed slot a ({}); slot b on trial, start 0 of 3",
                    env!("CARGO_PKG_VERSION"),
                    env!("CARGO_PKG_VERSION")
                )),
            "{health}"
        );
        let metrics = admin("/metrics");
        assert!(
            metrics.contains("kakehashi_firmware_trial 1\n")
                && metrics.contains("kakehashi_firmware_bootcount 0\n"),
            "{metrics}"
        );
    }
    wait_for("the gateway's end", Duration::from_secs(15), || {
        std::net::TcpListener::bind(&ports.listen).is_ok()
    });

    // The supervisor starts slot b on trial; its health checks pass and it commits itself.
    set_settle(&config, 20);
    let mut supervisor = Server::start(&["firmware", "boot", "--config", s(&config)]);
    wait_for("the commit", Duration::from_secs(25), || {
        // The slot switches first, the floor rises just after, the audit entry follows (and
        // the supervisor is killed below).
        let st = status(&config);
        st["committed_slot"] == "b"
            && st["floor"] == "0.2.0"
            && kakehashi(&["audit", "export", "--config", s(&config)])
                .ok()
                .contains("version 0.2.0 in slot b passed every health check")
    });
    let st = status(&config);
    assert!(st["trial"].is_null(), "{st}");
    assert_eq!(st["version"], "0.2.0");
    assert_eq!(st["floor"], "0.2.0");
    // The gateway that answers says which version, from which slot, and that it is committed.
    let health = admin("/health");
    assert!(
        health.contains("firmware: 0.2.0 from slot b; committed slot b (0.2.0)\n"),
        "{health}"
    );
    let metrics = admin("/metrics");
    assert!(
        metrics
            .contains("kakehashi_firmware_info{version=\"0.2.0\",booted_slot=\"b\",committed_slot=\"b\"} 1")
            && metrics.contains("kakehashi_firmware_trial 0\n")
            && metrics.contains("kakehashi_firmware_rolled_back 0\n"),
        "{metrics}"
    );
    supervisor.kill();
    // The gateway it started ends with it (SIGTERM): wait for the port to be free.
    wait_for("the gateway's end", Duration::from_secs(15), || {
        std::net::TcpListener::bind(&ports.listen).is_ok()
    });

    // Replays of the committed image are refused.
    install(&good).fails_with(&["0.2.0 is not above"]);

    // A version whose health checks fail (it never binds a listener) rolls back by itself.
    let broken = tmp.path().join("broken.sh");
    std::fs::write(&broken, "#!/bin/sh\nexec sleep 600\n").expect("write");
    install(&image("0.3.0", &broken, &[])).ok();
    set_settle(&config, 4);
    let _supervisor = Server::start(&["firmware", "boot", "--config", s(&config)]);
    let st = status(&config);
    assert!(st["trial"].is_null(), "{st}");
    assert_eq!(st["committed_slot"], "b");
    assert_eq!(st["version"], "0.2.0");
    assert_eq!(st["floor"], "0.2.0");
    let why = st["rolled_back"].as_str().expect("rolled_back");
    assert!(
        why.contains("failed its health checks") && why.contains("is not bound"),
        "{why}"
    );
    // The running gateway's status report (the status page's operator section) says the same.
    let text = kakehashi(&["status", "--config", s(&config)]).ok();
    assert!(
        text.contains("firmware:      slot b (0.2.0); rolled back:"),
        "{text}"
    );
    // And the audit log has every step, its chain intact.
    assert_audited(
        &config,
        &[
            "installed in slot b",
            "starts on trial",
            "is committed",
            "failed its health checks",
            "rolled back to slot b",
            "refused",
        ],
    );
}

/// The appliance's audit log has each of `steps`, and its chain verifies.
pub(super) fn assert_audited(config: &Path, steps: &[&str]) {
    let audit = kakehashi(&["audit", "export", "--config", s(config)]).ok();
    for step in steps {
        assert!(audit.contains(step), "no {step:?} in the audit log:\n{audit}");
    }
    kakehashi(&["audit", "verify", "--config", s(config)]).ok();
}

/// A clinic made by the demo.
pub(super) struct Clinic {
    pub(super) dir: std::path::PathBuf,
    pub(super) config: std::path::PathBuf,
    pub(super) ports: DemoPorts,
}

impl Clinic {
    /// The demo's clinic in `tmp/clinic`, its `[firmware]` section given `extra` lines.
    pub(super) fn new(tmp: &Path, extra: &str) -> Clinic {
        let dir = tmp.join("clinic");
        let ports = DemoPorts::new("127.0.0.1");
        sh(&format!(
            "kakehashi demo --setup-only --dir {} {}",
            s(&dir),
            ports.line()
        ))
        .ok();
        let config = dir.join("gateway.toml");
        let text = std::fs::read_to_string(&config).expect("gateway.toml");
        let at = text.find("settle_secs = ").expect("settle_secs in [firmware]");
        let line_end = at + text[at..].find('\n').expect("line end");
        let changed = format!("{}{extra}{}", &text[..line_end + 1], &text[line_end + 1..]);
        std::fs::write(&config, changed).expect("write gateway.toml");
        Clinic { dir, config, ports }
    }
}

/// An image of `version` whose payload is `payload`, signed by the demo vendor's key.
pub(super) fn image_of(clinic: &Path, version: &str, payload: &[u8]) -> std::path::PathBuf {
    image_with(clinic, version, payload, &[])
}

/// [`image_of`], with `extra` arguments for `firmware build`.
pub(super) fn image_with(clinic: &Path, version: &str, payload: &[u8], extra: &[&str]) -> std::path::PathBuf {
    let binary = clinic.join(format!("payload-{version}"));
    std::fs::write(&binary, payload).expect("write payload");
    let out = clinic.join(format!("{version}.img"));
    let key = clinic.join("firmware.key");
    let mut args = vec![
        "firmware",
        "build",
        "--version",
        version,
        "--binary",
        s(&binary),
        "--key",
        s(&key),
        "--out",
        s(&out),
        "--chunk-size",
        "65536",
    ];
    args.extend_from_slice(extra);
    kakehashi(&args).ok();
    out
}

/// A bootloader environment as its own tools read and write it.
enum Tools {
    /// libubootenv's `fw_printenv` / `fw_setenv` with this `fw_env.config`.
    UBoot(std::path::PathBuf),
    /// `grub-editenv` on this block.
    Grub(std::path::PathBuf),
}

impl Tools {
    fn list(&self) -> std::collections::BTreeMap<String, String> {
        let out = match self {
            Tools::UBoot(config) => crate::support::tool("fw_printenv", &["-c", s(config)]),
            Tools::Grub(file) => crate::support::tool("grub-editenv", &[s(file), "list"]),
        };
        assert_eq!(
            out.code, 0,
            "the environment reads invalid: {}{}",
            out.stdout, out.stderr
        );
        assert!(!out.stderr.contains("Cannot read environment"), "{}", out.stderr);
        out.stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn set(&self, name: &str, value: &str) {
        match self {
            Tools::UBoot(config) => crate::support::tool("fw_setenv", &["-c", s(config), name, value]),
            Tools::Grub(file) => {
                crate::support::tool("grub-editenv", &[s(file), "set", &format!("{name}={value}")])
            }
        }
        .ok();
    }

    /// The variables Kakehashi owns, as `name=value` text, with one foreign variable.
    fn ours(&self, foreign: &str) -> String {
        let vars = self.list();
        [
            "kakehashi_slot", "upgrade_available", "bootcount", "bootlimit", foreign,
        ]
        .iter()
        .map(|k| format!("{k}={}", vars.get(*k).map(String::as_str).unwrap_or("-")))
        .collect::<Vec<_>>()
        .join(" ")
    }
}

/// A redundant U-Boot environment in a file, saved once by `fw_setenv` from a default
/// environment (as U-Boot's `saveenv` would), with `fw_env.config` naming its copies.
fn uboot_env(dir: &Path) -> Tools {
    let file = dir.join("uboot.env");
    std::fs::write(&file, vec![0u8; 0x4000]).expect("env file");
    let config = dir.join("fw_env.config");
    std::fs::write(
        &config,
        format!(
            "# two copies in one file\n{0} 0x0 0x2000\n{0} 0x2000 0x2000\n",
            s(&file)
        ),
    )
    .expect("fw_env.config");
    let default = dir.join("default.env");
    std::fs::write(
        &default,
        "bootcmd=run kakehashi_pick boot_${kslot}\nbootdelay=2\n",
    )
    .expect("default");
    crate::support::tool(
        "fw_setenv",
        &["-c", s(&config), "-f", s(&default), "serial#", "KH-0042"],
    )
    .ok();
    Tools::UBoot(config)
}

/// The boot state through both sides: written by `kakehashi firmware`, read by the
/// bootloader's own tool; changed by that tool, read by `kakehashi firmware status`. Every
/// variable Kakehashi does not own survives.
fn bootloader_round_trip(tmp: &Path, tools: &Tools, extra: &str, foreign: &str) {
    let Clinic {
        dir: clinic, config, ..
    } = Clinic::new(tmp, extra);
    kakehashi(&["gateway", "check", "--config", s(&config)]).ok();
    let running = std::fs::read(bin()).expect("binary");
    let install = |img: &Path| kakehashi(&["firmware", "install", s(img), "--config", s(&config)]).ok();
    let firmware = |cmd: &str| kakehashi(&["firmware", cmd, "--config", s(&config)]).ok();
    let before = tools.list()[foreign].clone();

    install(&image_of(&clinic, "0.2.0", b"version 0.2.0"));
    assert_eq!(
        tools.ours(foreign),
        format!("kakehashi_slot=a upgrade_available=1 bootcount=0 bootlimit=3 {foreign}={before}")
    );
    assert_eq!(
        std::fs::read(clinic.join("slots/a/kakehashi")).expect("a"),
        running
    );
    // The tool changes the environment; Kakehashi reads what it wrote, and keeps it.
    tools.set("bootcount", "2");
    tools.set("clinic_note", "set by hand");
    let st = status(&config);
    assert_eq!(
        (st["trial"]["slot"].as_str(), st["trial"]["bootcount"].as_u64()),
        (Some("b"), Some(2))
    );
    firmware("commit");
    assert_eq!(
        tools.ours(foreign),
        format!("kakehashi_slot=b upgrade_available=0 bootcount=0 bootlimit=3 {foreign}={before}")
    );
    assert_eq!(tools.list()["clinic_note"], "set by hand");
    // `current` follows the environment: the systemd unit starts the committed slot.
    assert_eq!(
        std::fs::read_link(clinic.join("slots/current")).expect("current"),
        Path::new("b")
    );

    firmware("rollback");
    let vars = tools.list();
    assert_eq!(vars["kakehashi_slot"], "a");
    assert_eq!(
        vars["kakehashi_rolled_back"],
        "slot b: rolled back by the operator"
    );
    assert_eq!(
        std::fs::read_link(clinic.join("slots/current")).expect("current"),
        Path::new("a")
    );

    // A trial the bootloader's tool gives up (as a boot script would): Kakehashi sees none.
    install(&image_of(&clinic, "0.3.0", b"version 0.3.0"));
    assert_eq!(tools.list()["upgrade_available"], "1");
    tools.set("upgrade_available", "0");
    let st = status(&config);
    assert!(st["trial"].is_null() && st["committed_slot"] == "a", "{st}");
    assert_eq!(tools.list()[foreign], before);
}

#[test]
fn firmware_state_in_a_uboot_environment_reads_and_writes_with_fw_printenv_and_fw_setenv() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tools = uboot_env(tmp.path());
    let Tools::UBoot(fw_env) = &tools else {
        unreachable!()
    };
    let extra = format!("bootloader = \"uboot\"\nfw_env_config = \"{}\"\n", s(fw_env));
    bootloader_round_trip(tmp.path(), &tools, &extra, "bootcmd");
    assert_eq!(tools.list()["serial#"], "KH-0042");

    // `gateway check` names what it cannot use: one copy, or none valid.
    let config = tmp.path().join("clinic/gateway.toml");
    let single = tmp.path().join("single.config");
    std::fs::write(
        &single,
        format!("{} 0x0 0x2000\n", s(&tmp.path().join("uboot.env"))),
    )
    .expect("write");
    let text = std::fs::read_to_string(&config).expect("read");
    std::fs::write(&config, text.replace(s(fw_env), s(&single))).expect("write");
    kakehashi(&["gateway", "check", "--config", s(&config)]).fails_with(&[
        "firmware.fw_env_config",
        "names one copy of the U-Boot environment",
    ]);
}

#[test]
fn firmware_state_in_a_grub_environment_block_reads_and_writes_with_grub_editenv() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let grubenv = tmp.path().join("grubenv");
    crate::support::tool("grub-editenv", &[s(&grubenv), "create"]).ok();
    let tools = Tools::Grub(grubenv.clone());
    tools.set("saved_entry", "Debian GNU/Linux");
    let extra = format!("bootloader = \"grub\"\ngrub_env = \"{}\"\n", s(&grubenv));
    bootloader_round_trip(tmp.path(), &tools, &extra, "saved_entry");
    assert_eq!(std::fs::metadata(&grubenv).expect("grubenv").len(), 1024);
}

/// `kill -9` of the installer at random points: after each, the environment reads valid with
/// `fw_printenv`, the committed slot's binary is byte for byte the one adopted, a trial (if
/// the kill came after the last write) is the whole new payload, and the next install succeeds.
#[test]
fn firmware_install_killed_at_random_points_leaves_the_committed_slot_whole() {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for (backend, points) in [("uboot", 35), ("files", 15)] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let tools = uboot_env(tmp.path());
        let extra = match &tools {
            Tools::UBoot(c) if backend == "uboot" => {
                format!("bootloader = \"uboot\"\nfw_env_config = \"{}\"\n", s(c))
            }
            _ => String::new(),
        };
        let Clinic {
            dir: clinic, config, ..
        } = Clinic::new(tmp.path(), &extra);
        let running = std::fs::read(bin()).expect("binary");
        let mut payload = running.clone();
        payload.extend_from_slice(b"the next version");
        let image = image_of(&clinic, "0.2.0", &payload);
        let install = || {
            std::process::Command::new(bin())
                .args(["firmware", "install", s(&image), "--config", s(&config)])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn install")
        };
        let rollback = || kakehashi(&["firmware", "rollback", "--config", s(&config)]).ok();
        // The first install sets up the slots (a copy of the running binary in slot a); the
        // second is timed, whole: the kills fall anywhere within one like it.
        assert!(install().wait().expect("wait").success());
        rollback();
        let started = Instant::now();
        assert!(install().wait().expect("wait").success());
        let whole = started.elapsed();
        rollback();
        let mut trials = 0;
        for point in 0..points {
            let delay = Duration::from_micros(next() % (whole.as_micros() as u64 + 1));
            let mut child = install();
            std::thread::sleep(delay);
            let finished = child.try_wait().expect("try_wait");
            let _ = child.kill();
            let exit = child.wait().expect("wait");
            let at = format!("{backend}, kill {point} after {delay:?} of {whole:?} (seed {seed})");
            if let Some(done) = finished {
                assert!(done.success(), "the install failed by itself: {at}");
            }
            if backend == "uboot" {
                assert_eq!(tools.list()["kakehashi_slot"], "a", "{at}");
            }
            assert!(
                std::fs::read(clinic.join("slots/a/kakehashi")).expect("slot a") == running,
                "the committed slot changed: {at}"
            );
            let st = status(&config);
            assert_eq!(st["committed_slot"], "a", "{at}: {st}");
            if !st["trial"].is_null() {
                assert!(
                    std::fs::read(clinic.join("slots/b/kakehashi")).expect("slot b") == payload,
                    "a trial of a partial payload: {at} ({exit})"
                );
                trials += 1;
                rollback();
            }
        }
        eprintln!(
            "{backend}: {points} kills within {whole:?} (seed {seed}): {trials} after the install's last write"
        );
        assert!(
            install().wait().expect("wait").success(),
            "{backend}: the install after the kills"
        );
        assert_eq!(status(&config)["trial"]["slot"], "b");
    }
}
