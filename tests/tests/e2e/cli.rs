//! The front door: `kakehashi --help` and `kakehashi demo`.

use crate::support::*;

#[test]
fn help_lists_every_command_with_its_purpose() {
    let help = kakehashi(&["--help"]).ok();
    assert!(help.contains("cert") && help.contains("The clinic PKI"), "{help}");
    assert!(help.contains("demo") && help.contains("demo clinic"), "{help}");
    for (cmd, purpose) in [
        ("terminal", "The terminal inventory"),
        ("user", "The people who sign in"),
        ("audit", "hash-chained audit log"),
    ] {
        assert!(
            help.contains(cmd) && help.contains(purpose),
            "{cmd} missing from:\n{help}"
        );
    }
    for (group, cmds) in [
        ("terminal", &["add", "list", "disable", "enable", "remove"][..]),
        (
            "user",
            &[
                "add", "passwd", "lock", "unlock", "set-upstream", "list", "remove",
            ][..],
        ),
        ("audit", &["verify", "export"][..]),
    ] {
        let help = kakehashi(&[group, "--help"]).ok();
        for cmd in cmds {
            assert!(
                help.lines().any(|l| l.trim_start().starts_with(cmd)),
                "{group} {cmd} missing from:\n{help}"
            );
        }
    }
    let cert = kakehashi(&["cert", "--help"]).ok();
    for cmd in [
        "init-ca", "issue", "sign-csr", "revoke", "crl", "export-p12", "inspect", "verify", "list",
    ] {
        assert!(
            cert.lines().any(|l| l.trim_start().starts_with(cmd)),
            "{cmd} missing from:\n{cert}"
        );
    }
    let bad = kakehashi(&["cert", "issue", "--profile", "admin"]);
    assert_eq!(bad.code, 2, "a command line clap rejects exits 2");
}

#[test]
fn demo_leaves_a_working_clinic_and_can_run_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = kakehashi(&["demo", "--dir", s(&dir)]).ok();
    assert!(out.contains("terminal.pem is valid"), "{out}");
    for f in [
        "ca.pem", "terminal.pem", "terminal.key", "terminal.p12", "terminal.p12.password", "server.pem",
        "server.key", "crl.pem",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    for f in [
        "terminal.key", "terminal.p12", "terminal.p12.password", "server.key", "ca.key",
    ] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    let d = s(&dir);
    let ok = sh(&format!(
        "openssl verify -CAfile {d}/ca.pem -crl_check -CRLfile {d}/crl.pem {d}/terminal.pem"
    ))
    .ok();
    assert!(ok.contains("OK"));
    sh(&format!(
        "openssl pkcs12 -in {d}/terminal.p12 -passin file:{d}/terminal.p12.password -noout"
    ))
    .ok();
    let server = sh(&format!(
        "openssl x509 -in {d}/server.pem -noout -ext subjectAltName"
    ))
    .ok();
    assert!(
        server.contains("DNS:localhost") && server.contains("IP Address:127.0.0.1"),
        "{server}"
    );

    let before = snapshot(&dir);
    let again = kakehashi(&["demo", "--dir", s(&dir)]).ok();
    assert!(again.contains("Reusing the demo clinic"), "{again}");
    assert_unchanged(&before, &snapshot(&dir));
}
