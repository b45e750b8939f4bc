//! `kakehashi firmware`: images built with the real binary, refused when tampered, older, for
//! another board or signed by another key (nothing written); installed, started on trial by the
//! supervisor, committed by its health checks; a trial version that fails them rolled back by
//! itself, the committed slot serving again.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{DemoPorts, Server, bin, kakehashi, s, sh};

fn status(config: &Path) -> serde_json::Value {
    let out = kakehashi(&["firmware", "status", "--json", "--config", s(config)]).ok();
    serde_json::from_str(&out).expect("status JSON")
}

fn set_settle(config: &Path, secs: u64) {
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

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < until, "{what} did not happen within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn firmware_update_commits_after_health_checks_and_a_failing_trial_rolls_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let clinic = tmp.path().join("clinic");
    let ports = DemoPorts::new("127.0.0.1");
    sh(&format!(
        "kakehashi demo --setup-only --dir {} {}",
        s(&clinic),
        ports.line()
    ))
    .ok();
    let config = clinic.join("gateway.toml");
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

    // The supervisor starts slot b on trial; its health checks pass and it commits itself.
    set_settle(&config, 20);
    let mut supervisor = Server::start(&["firmware", "boot", "--config", s(&config)]);
    wait_for("the commit", Duration::from_secs(25), || {
        // The slot switches first, the floor rises just after.
        let st = status(&config);
        st["committed_slot"] == "b" && st["floor"] == "0.2.0"
    });
    let st = status(&config);
    assert!(st["trial"].is_null(), "{st}");
    assert_eq!(st["version"], "0.2.0");
    assert_eq!(st["floor"], "0.2.0");
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
    let audit = kakehashi(&["audit", "export", "--config", s(&config)]).ok();
    for step in [
        "installed in slot b",
        "starts on trial",
        "is committed",
        "failed its health checks",
        "rolled back to slot b",
        "refused",
    ] {
        assert!(audit.contains(step), "no {step:?} in the audit log:\n{audit}");
    }
    kakehashi(&["audit", "verify", "--config", s(&config)]).ok();
}
