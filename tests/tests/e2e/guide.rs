//! The vendor's guide runs: the commands of `docs/provisioning.md`'s walk-through, extracted from
//! the document itself and run as one shell script, on loopback with ports chosen here. A step
//! that no longer works fails this test, so the guide cannot go stale.

use std::path::Path;

use crate::support::*;

/// The walk-through's shell blocks, in order.
fn walk_through() -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/provisioning.md"))
        .expect("docs/provisioning.md");
    let section = doc
        .split("<!-- walk-through: begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- walk-through: end -->").next())
        .expect("the walk-through markers");
    let mut script = String::new();
    for block in section.split("```sh\n").skip(1) {
        script.push_str(block.split("```").next().expect("a closed block"));
    }
    script
}

#[test]
fn the_vendors_walk_through_runs_as_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut script = walk_through();
    assert!(script.contains("kakehashi gateway import-bundle"), "{script}");
    // The document's ports, replaced by free ones (the suite runs tests side by side).
    for (port, free) in [
        ("18000", free_port()),
        ("18443", free_port()),
        ("18444", free_port()),
        ("19090", free_port()),
        ("18820", free_udp_port()),
    ] {
        assert!(script.contains(port), "port {port} is no longer in the guide");
        script = script.replace(port, &free.to_string());
    }
    let bin_dir = bin().parent().expect("the binary's directory").to_owned();
    let full = format!(
        "set -euo pipefail\nexport PATH={}:$PATH\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\ncd {}\n{script}",
        s(&bin_dir),
        s(tmp.path())
    );
    let run = tool("timeout", &["180", "bash", "-c", &full]);
    let walk = tmp.path().join("walk");
    let log = |name: &str| std::fs::read_to_string(walk.join(name)).unwrap_or_default();
    assert_eq!(
        run.code,
        0,
        "the walk-through failed\nstdout:\n{}\nstderr:\n{}\ngateway.log:\n{}",
        run.stdout,
        run.stderr,
        log("gateway.log")
    );
    let out = &run.stdout;
    assert_eq!(
        out.matches(r#""Api_Result":"00""#).count(),
        2,
        "two terminals read a patient: {out}"
    );
    assert!(
        out.contains("reception-1 is refused") && !out.contains("still admitted"),
        "{out}"
    );
    // No secret on the screen unasked: not the PKCS#12 password, not a QR code.
    let password = log("vendor/clinics/sakura/out/reception-1.p12.password");
    assert!(!password.trim().is_empty());
    assert!(
        !out.contains(password.trim()) && !run.stderr.contains(password.trim()),
        "{out}"
    );
    assert!(!out.contains('█'), "{out}");
    assert!(
        out.contains(
            "vendor/clinics/sakura/out/reception-1.p12.password (mode 0600; --show-password prints it)"
        ),
        "{out}"
    );
    // An import after the first asks for no restart when no setting changed.
    assert!(
        out.contains("without dropping connections") && !out.contains("restart it for"),
        "{out}"
    );
}

#[test]
fn gateway_init_says_what_its_name_is_for() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("appliance");
    kakehashi(&[
        "gateway",
        "init",
        "--data-dir",
        s(&dir),
        "--name",
        "Sakura Clinic",
    ])
    .fails_with(&[
        "--name is the certificate name of this appliance's server and uplink requests, not the \
         clinic's name for people (the vendor gives that): ",
        "e.g. --name sakura-gw",
    ]);
    assert!(!dir.join("request.json").exists(), "nothing was made");
}
