//! `kakehashi cert`: every certificate checked by OpenSSL, every bad input refused cleanly.

use std::path::{Path, PathBuf};

use crate::support::*;

const PASS: &str = "correct horse battery staple";

/// A fresh CA with an encrypted key, in a temporary directory.
struct Clinic {
    tmp: tempfile::TempDir,
}

impl Clinic {
    fn new() -> Clinic {
        Clinic::with_key("ecdsa-p256")
    }

    fn with_key(key: &str) -> Clinic {
        let tmp = tempfile::tempdir().expect("tempdir");
        write(&tmp.path().join("pass"), format!("{PASS}\n"));
        let c = Clinic { tmp };
        kakehashi(&[
            "cert",
            "init-ca",
            "--dir",
            s(&c.ca()),
            "--name",
            "Sakura Clinic CA",
            "--key",
            key,
            "--passphrase-file",
            s(&c.pass()),
        ])
        .ok();
        c
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
    fn ca(&self) -> PathBuf {
        self.path("ca")
    }
    fn ca_pem(&self) -> PathBuf {
        self.ca().join("ca.pem")
    }
    fn pass(&self) -> PathBuf {
        self.path("pass")
    }
    fn out(&self) -> PathBuf {
        self.path("out")
    }

    /// `cert issue` with the passphrase file; extra args appended.
    fn issue(&self, profile: &str, name: &str, extra: &[&str]) -> Run {
        let (ca, out, pass) = (self.ca(), self.out(), self.pass());
        let mut args = vec![
            "cert",
            "issue",
            "--dir",
            s(&ca),
            "--profile",
            profile,
            "--name",
            name,
            "--out",
            s(&out),
            "--passphrase-file",
            s(&pass),
        ];
        args.extend_from_slice(extra);
        kakehashi(&args)
    }

    fn crl(&self) -> PathBuf {
        let crl = self.path("crl.pem");
        kakehashi(&[
            "cert",
            "crl",
            "--dir",
            s(&self.ca()),
            "--out",
            s(&crl),
            "--passphrase-file",
            s(&self.pass()),
        ])
        .ok();
        crl
    }

    fn openssl_verify(&self, cert: &Path, crl: &Path) -> Run {
        tool(
            "openssl",
            &[
                "verify",
                "-CAfile",
                s(&self.ca_pem()),
                "-crl_check",
                "-CRLfile",
                s(crl),
                s(cert),
            ],
        )
    }

    fn serial_of(&self, name: &str) -> String {
        let listing = kakehashi(&["cert", "list", "--dir", s(&self.ca()), "--json"]).ok();
        let v: serde_json::Value = serde_json::from_str(&listing).expect("list --json is JSON");
        v.as_array()
            .expect("array")
            .iter()
            .rev()
            .find(|e| e["name"] == name)
            .and_then(|e| e["serial"].as_str())
            .expect("serial")
            .to_string()
    }
}

fn x509_text(cert: &Path) -> String {
    tool("openssl", &["x509", "-in", s(cert), "-noout", "-text"]).ok()
}

#[test]
fn init_ca_writes_an_encrypted_key_that_openssl_opens() {
    let c = Clinic::new();
    let key = c.ca().join("ca.key");
    assert_eq!(mode(&key), 0o600);
    let pem = std::fs::read_to_string(&key).unwrap();
    assert!(
        pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        "{pem}"
    );
    let info = tool("openssl", &["asn1parse", "-in", s(&key)]).ok();
    assert!(
        info.contains("PBES2") && info.contains("PBKDF2") && info.contains("aes-256-cbc"),
        "{info}"
    );
    assert!(info.contains("hmacWithSHA256"), "{info}");
    tool(
        "openssl",
        &[
            "pkey",
            "-in",
            s(&key),
            "-passin",
            &format!("file:{}", s(&c.pass())),
            "-noout",
        ],
    )
    .ok();
    assert_ne!(
        tool(
            "openssl",
            &["pkey", "-in", s(&key), "-passin", "pass:wrong", "-noout"]
        )
        .code,
        0
    );

    let text = x509_text(&c.ca_pem());
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    assert!(text.contains("Subject: CN = Sakura Clinic CA"), "{text}");
    assert!(text.contains("X509v3 Subject Key Identifier"), "{text}");
    assert!(text.contains("prime256v1"), "{text}");
}

#[test]
fn init_ca_refuses_an_existing_ca_and_a_missing_passphrase() {
    let c = Clinic::new();
    let before = snapshot(&c.ca());
    kakehashi(&[
        "cert",
        "init-ca",
        "--dir",
        s(&c.ca()),
        "--name",
        "Other",
        "--passphrase-file",
        s(&c.pass()),
    ])
    .fails_with(&["a CA already exists here", s(&c.ca())]);
    assert_unchanged(&before, &snapshot(&c.ca()));

    let fresh = c.path("fresh");
    kakehashi(&["cert", "init-ca", "--dir", s(&fresh), "--name", "X"]).fails_with(&[
        "no passphrase was given",
        "--passphrase-file",
        "KAKEHASHI_CA_PASSPHRASE",
    ]);
    assert!(!fresh.join("ca.pem").exists());
    write(&c.path("short"), "short\n");
    kakehashi(&[
        "cert",
        "init-ca",
        "--dir",
        s(&fresh),
        "--name",
        "X",
        "--passphrase-file",
        s(&c.path("short")),
    ])
    .fails_with(&["at least 8 characters"]);
    assert!(!fresh.join("ca.pem").exists());
}

#[test]
fn rsa_3072_ca_and_rsa_terminals() {
    let c = Clinic::with_key("rsa-3072");
    assert!(x509_text(&c.ca_pem()).contains("Public-Key: (3072 bit)"));
    c.issue("terminal", "old-windows", &["--key", "rsa-2048"])
        .ok();
    let text = x509_text(&c.out().join("old-windows.pem"));
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    assert!(text.contains("sha256WithRSAEncryption"), "{text}");
    let crl = c.crl();
    assert!(
        c.openssl_verify(&c.out().join("old-windows.pem"), &crl)
            .ok()
            .contains("OK")
    );
}

#[test]
fn each_profile_has_the_extensions_it_promises() {
    let c = Clinic::new();
    c.issue("terminal", "reception-1", &[]).ok();
    c.issue("uplink", "gateway-uplink", &[]).ok();
    c.issue(
        "server",
        "gateway",
        &["--san", "dns:orca.example.jp", "--san", "ip:192.168.10.1"],
    )
    .ok();

    for (name, eku) in [
        ("reception-1", "TLS Web Client Authentication"),
        ("gateway-uplink", "TLS Web Client Authentication"),
        ("gateway", "TLS Web Server Authentication"),
    ] {
        let cert = c.out().join(format!("{name}.pem"));
        let text = x509_text(&cert);
        assert!(text.contains("CA:FALSE"), "{name}: {text}");
        assert!(
            text.contains("X509v3 Key Usage: critical\n                Digital Signature\n"),
            "{name}: {text}"
        );
        assert!(
            text.contains(&format!(
                "X509v3 Extended Key Usage: \n                {eku}\n"
            )),
            "{name}: {text}"
        );
        assert!(
            text.contains("X509v3 Subject Key Identifier"),
            "{name}: {text}"
        );
        assert!(
            text.contains("X509v3 Authority Key Identifier"),
            "{name}: {text}"
        );
        assert!(
            !text.contains("Server Authentication") || eku.contains("Server"),
            "{name}: {text}"
        );
        assert_eq!(mode(&c.out().join(format!("{name}.key"))), 0o600);

        // Serial: positive, random, at least 64 bits.
        let serial = tool("openssl", &["x509", "-in", s(&cert), "-noout", "-serial"]).ok();
        let hex = serial.trim().trim_start_matches("serial=");
        assert!(hex.len() >= 16, "serial {hex} is shorter than 64 bits");
        assert!(
            u8::from_str_radix(&hex[..2], 16).unwrap() < 0x80,
            "serial {hex} is negative"
        );

        // Validity: one year by default.
        let end = tool(
            "openssl",
            &[
                "x509",
                "-in",
                s(&cert),
                "-noout",
                "-checkend",
                &(364 * 86400).to_string(),
            ],
        );
        assert_eq!(end.code, 0, "{name} expires within 364 days");
        let end = tool(
            "openssl",
            &[
                "x509",
                "-in",
                s(&cert),
                "-noout",
                "-checkend",
                &(366 * 86400).to_string(),
            ],
        );
        assert_eq!(end.code, 1, "{name} is valid for more than 366 days");
    }
    let server = x509_text(&c.out().join("gateway.pem"));
    assert!(
        server.contains("DNS:orca.example.jp, IP Address:192.168.10.1"),
        "{server}"
    );

    // The CA never keeps a key it issued.
    let snap = snapshot(&c.ca());
    assert!(
        snap.keys()
            .all(|p| !p.to_string_lossy().ends_with(".key") || p.ends_with("ca.key")),
        "{snap:?}"
    );
}

#[test]
fn server_profile_needs_a_san_and_bad_input_changes_nothing() {
    let c = Clinic::new();
    let before = snapshot(&c.ca());
    c.issue("server", "gateway", &[])
        .fails_with(&["at least one --san"]);
    c.issue("terminal", "../evil", &[])
        .fails_with(&["not a usable name"]);
    let bad_san = c.issue("server", "gateway", &["--san", "dns:bad_host!"]);
    assert_eq!(bad_san.code, 2, "clap rejects a malformed --san");
    assert!(
        bad_san.stderr.contains("is not a DNS host name"),
        "{}",
        bad_san.stderr
    );
    c.issue("terminal", "t", &["--days", "5000"])
        .fails_with(&["would outlive the CA"]);
    assert_unchanged(&before, &snapshot(&c.ca()));
    assert!(!c.out().join("gateway.pem").exists());
}

#[test]
fn openssl_accepts_a_fresh_terminal_and_rejects_it_after_revocation() {
    let c = Clinic::new();
    c.issue("terminal", "reception-1", &[]).ok();
    let cert = c.out().join("reception-1.pem");
    let crl = c.crl();
    assert!(c.openssl_verify(&cert, &crl).ok().contains("OK"));
    kakehashi(&[
        "cert",
        "verify",
        "--ca",
        s(&c.ca_pem()),
        "--crl",
        s(&crl),
        s(&cert),
    ])
    .ok();

    let out = kakehashi(&[
        "cert",
        "revoke",
        "--dir",
        s(&c.ca()),
        "--name",
        "reception-1",
        "--reason",
        "key-compromise",
    ])
    .ok();
    assert!(out.contains("revoked reception-1"), "{out}");
    let crl = c.crl();
    let refused = c.openssl_verify(&cert, &crl);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stdout.contains("certificate revoked")
            || refused.stderr.contains("certificate revoked")
    );
    let text = tool("openssl", &["crl", "-in", s(&crl), "-noout", "-text"]).ok();
    assert!(text.contains("Version 2"), "{text}");
    assert!(
        text.contains("X509v3 CRL Number: \n                2"),
        "{text}"
    );
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
    assert!(text.contains("Key Compromise"), "{text}");
    let serial = c.serial_of("reception-1");
    assert!(text.contains(&format!("Serial Number: {serial}")), "{text}");

    kakehashi(&[
        "cert",
        "verify",
        "--ca",
        s(&c.ca_pem()),
        "--crl",
        s(&crl),
        s(&cert),
    ])
    .fails_with(&["invalid: revoked on", "(key-compromise)"]);
}

#[test]
fn issuing_a_name_twice_is_refused_unless_replaced() {
    let c = Clinic::new();
    c.issue("terminal", "reception-1", &[]).ok();
    let first = c.serial_of("reception-1");
    let before = snapshot(&c.ca());
    let out_before = snapshot(&c.out());
    c.issue("terminal", "reception-1", &[]).fails_with(&[
        "reception-1: already has a valid certificate",
        &first,
        "--replace",
    ]);
    assert_unchanged(&before, &snapshot(&c.ca()));
    assert_unchanged(&out_before, &snapshot(&c.out()));

    c.issue("terminal", "reception-1", &["--replace"]).ok();
    let second = c.serial_of("reception-1");
    assert_ne!(first, second);
    let list: serde_json::Value =
        serde_json::from_str(&kakehashi(&["cert", "list", "--dir", s(&c.ca()), "--json"]).ok())
            .unwrap();
    let old = list
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["serial"] == first.as_str())
        .unwrap();
    assert_eq!(old["status"], "revoked");
    assert_eq!(old["revoked"]["reason"], "superseded");
    let crl = c.crl();
    let text = tool("openssl", &["crl", "-in", s(&crl), "-noout", "-text"]).ok();
    assert!(
        text.contains(&first) && text.contains("Superseded"),
        "{text}"
    );
    assert!(
        c.openssl_verify(&c.out().join("reception-1.pem"), &crl)
            .ok()
            .contains("OK")
    );
}

#[test]
fn revoking_unknown_serials_and_names_is_refused() {
    let c = Clinic::new();
    c.issue("terminal", "t1", &[]).ok();
    let before = snapshot(&c.ca());
    kakehashi(&[
        "cert",
        "revoke",
        "--dir",
        s(&c.ca()),
        "--serial",
        "DEADBEEF",
    ])
    .fails_with(&["no certificate with serial DEADBEEF", "index.json"]);
    kakehashi(&["cert", "revoke", "--dir", s(&c.ca()), "--name", "nobody"])
        .fails_with(&["no valid certificate named nobody", "index.json"]);
    assert_unchanged(&before, &snapshot(&c.ca()));

    // Serial in any case, with colons, as openssl prints it.
    let serial = c.serial_of("t1").to_lowercase();
    let colons: Vec<String> = serial
        .as_bytes()
        .chunks(2)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    kakehashi(&[
        "cert",
        "revoke",
        "--dir",
        s(&c.ca()),
        "--serial",
        &colons.join(":"),
    ])
    .ok();
    let before = snapshot(&c.ca());
    kakehashi(&["cert", "revoke", "--dir", s(&c.ca()), "--serial", &serial])
        .fails_with(&["already revoked"]);
    assert_unchanged(&before, &snapshot(&c.ca()));
}

#[test]
fn wrong_passphrase_changes_nothing() {
    let c = Clinic::new();
    c.issue("terminal", "t1", &[]).ok();
    let before = snapshot(&c.ca());
    let out_before = snapshot(&c.out());
    write(&c.path("wrong"), "not the passphrase\n");
    kakehashi(&[
        "cert",
        "issue",
        "--dir",
        s(&c.ca()),
        "--profile",
        "terminal",
        "--name",
        "t2",
        "--out",
        s(&c.out()),
        "--passphrase-file",
        s(&c.path("wrong")),
    ])
    .fails_with(&["ca.key: wrong passphrase"]);
    kakehashi(&[
        "cert",
        "crl",
        "--dir",
        s(&c.ca()),
        "--out",
        s(&c.path("crl.pem")),
        "--passphrase-file",
        s(&c.path("wrong")),
    ])
    .fails_with(&["ca.key: wrong passphrase"]);
    kakehashi(&[
        "cert",
        "issue",
        "--dir",
        s(&c.ca()),
        "--profile",
        "terminal",
        "--name",
        "t2",
        "--out",
        s(&c.out()),
    ])
    .fails_with(&["ca.key: the key is encrypted and no passphrase was given"]);
    assert_unchanged(&before, &snapshot(&c.ca()));
    assert_unchanged(&out_before, &snapshot(&c.out()));
    assert!(!c.path("crl.pem").exists());

    // The environment variable is the second source.
    let ok = kakehashi_env(
        &[
            "cert",
            "issue",
            "--dir",
            s(&c.ca()),
            "--profile",
            "terminal",
            "--name",
            "t2",
            "--out",
            s(&c.out()),
        ],
        &[("KAKEHASHI_CA_PASSPHRASE", PASS)],
    );
    ok.ok();
}

#[test]
fn corrupt_and_truncated_files_are_named_and_change_nothing() {
    let c = Clinic::new();
    c.issue("terminal", "t1", &[]).ok();

    // A damaged index: every command that reads it names it, and nothing is written.
    let index = c.ca().join("index.json");
    let good = std::fs::read(&index).unwrap();
    write(&index, &good[..good.len() / 2]);
    let before = snapshot(&c.ca());
    c.issue("terminal", "t2", &[])
        .fails_with(&["index.json: not a valid certificate index"]);
    kakehashi(&["cert", "revoke", "--dir", s(&c.ca()), "--name", "t1"])
        .fails_with(&["index.json: not a valid certificate index"]);
    kakehashi(&["cert", "list", "--dir", s(&c.ca())])
        .fails_with(&["index.json: not a valid certificate index"]);
    assert_unchanged(&before, &snapshot(&c.ca()));
    write(&index, &good);

    // A truncated CA key.
    let key = c.ca().join("ca.key");
    let good_key = std::fs::read(&key).unwrap();
    write(&key, &good_key[..good_key.len() - 40]);
    let before = snapshot(&c.ca());
    c.issue("terminal", "t2", &[])
        .fails_with(&["ca.key: not a valid PEM private key"]);
    assert_unchanged(&before, &snapshot(&c.ca()));
    write(&key, &good_key);

    // A truncated CA certificate.
    let cert = c.ca_pem();
    let good_cert = std::fs::read(&cert).unwrap();
    write(&cert, &good_cert[..200]);
    let before = snapshot(&c.ca());
    c.issue("terminal", "t2", &[])
        .fails_with(&["ca.pem: not a valid PEM file"]);
    assert_unchanged(&before, &snapshot(&c.ca()));
    write(&cert, &good_cert);

    // Truncated inputs to the read-only commands.
    let leaf = std::fs::read(c.out().join("t1.pem")).unwrap();
    let der = c.path("t1.der");
    tool(
        "openssl",
        &[
            "x509",
            "-in",
            s(&c.out().join("t1.pem")),
            "-outform",
            "DER",
            "-out",
            s(&der),
        ],
    )
    .ok();
    let der_bytes = std::fs::read(&der).unwrap();
    write(&c.path("cut.der"), &der_bytes[..der_bytes.len() - 10]);
    kakehashi(&["cert", "inspect", s(&c.path("cut.der"))])
        .fails_with(&["cut.der: not a valid", "truncated"]);
    write(&c.path("cut.pem"), &leaf[..leaf.len() / 2]);
    kakehashi(&["cert", "inspect", s(&c.path("cut.pem"))])
        .fails_with(&["cut.pem: not a valid PEM file"]);
    kakehashi(&[
        "cert",
        "verify",
        "--ca",
        s(&c.ca_pem()),
        s(&c.path("cut.pem")),
    ])
    .fails_with(&["cut.pem"]);
    kakehashi(&["cert", "inspect", s(&c.path("missing.pem"))]).fails_with(&[
        "cannot read",
        "missing.pem",
        "No such file",
    ]);

    // And the CA works again once repaired.
    c.issue("terminal", "t2", &[]).ok();
}

#[test]
fn sign_csr_takes_the_key_and_name_but_never_the_extensions() {
    let c = Clinic::new();
    let key = c.path("csr.key");
    let csr = c.path("req.csr");
    tool(
        "openssl",
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            s(&key),
            "-out",
            s(&csr),
            "-subj",
            "/CN=tablet-7/O=Evil Corp",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-addext",
            "extendedKeyUsage=serverAuth,codeSigning",
        ],
    )
    .ok();
    let cert = c.path("tablet-7.pem");
    kakehashi(&[
        "cert",
        "sign-csr",
        "--dir",
        s(&c.ca()),
        "--csr",
        s(&csr),
        "--profile",
        "terminal",
        "--out",
        s(&cert),
        "--passphrase-file",
        s(&c.pass()),
    ])
    .ok();
    let text = x509_text(&cert);
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(
        !text.contains("CA:TRUE")
            && !text.contains("Certificate Sign")
            && !text.contains("Code Signing"),
        "{text}"
    );
    assert!(
        text.contains("TLS Web Client Authentication") && !text.contains("Server Authentication"),
        "{text}"
    );
    assert!(
        text.contains("Subject: CN = tablet-7\n"),
        "the subject is the CN alone: {text}"
    );
    // The certificate carries the requester's key.
    let cert_key = tool("openssl", &["x509", "-in", s(&cert), "-noout", "-pubkey"]).ok();
    let req_key = tool("openssl", &["pkey", "-in", s(&key), "-pubout"]).ok();
    assert_eq!(cert_key, req_key);
    assert!(c.openssl_verify(&cert, &c.crl()).ok().contains("OK"));
    // DER requests work too.
    let der = c.path("req.der");
    tool(
        "openssl",
        &["req", "-in", s(&csr), "-outform", "DER", "-out", s(&der)],
    )
    .ok();
    kakehashi(&[
        "cert",
        "sign-csr",
        "--dir",
        s(&c.ca()),
        "--csr",
        s(&der),
        "--profile",
        "terminal",
        "--name",
        "tablet-8",
        "--out",
        s(&c.path("t8.pem")),
        "--passphrase-file",
        s(&c.pass()),
    ])
    .ok();
}

#[test]
fn a_tampered_csr_is_refused_and_changes_nothing() {
    let c = Clinic::new();
    let csr = c.path("req.csr");
    tool(
        "openssl",
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            s(&c.path("k")),
            "-out",
            s(&csr),
            "-outform",
            "DER",
            "-subj",
            "/CN=tablet-1",
        ],
    )
    .ok();
    // Change the subject's name in place: same length, still parses, signature no longer matches.
    let mut der = std::fs::read(&csr).unwrap();
    let at = der
        .windows(8)
        .position(|w| w == b"tablet-1")
        .expect("CN in the DER");
    der[at + 7] = b'9';
    let tampered = c.path("tampered.csr");
    write(&tampered, &der);
    let before = snapshot(&c.ca());
    kakehashi(&[
        "cert",
        "sign-csr",
        "--dir",
        s(&c.ca()),
        "--csr",
        s(&tampered),
        "--profile",
        "terminal",
        "--out",
        s(&c.path("x.pem")),
        "--passphrase-file",
        s(&c.pass()),
    ])
    .fails_with(&["tampered.csr: the CSR's signature does not verify"]);
    assert_unchanged(&before, &snapshot(&c.ca()));
    assert!(!c.path("x.pem").exists());

    // Truncated: named, refused.
    write(&c.path("cut.csr"), &der[..der.len() - 20]);
    kakehashi(&[
        "cert",
        "sign-csr",
        "--dir",
        s(&c.ca()),
        "--csr",
        s(&c.path("cut.csr")),
        "--profile",
        "terminal",
        "--out",
        s(&c.path("x.pem")),
        "--passphrase-file",
        s(&c.pass()),
    ])
    .fails_with(&["cut.csr: not a valid"]);
    assert_unchanged(&before, &snapshot(&c.ca()));
}

#[test]
fn pkcs12_modern_and_legacy_open_in_openssl() {
    let c = Clinic::new();
    c.issue("terminal", "reception-1", &[]).ok();
    write(&c.path("p12pass"), "Terminal-Pass-1\n");
    for (file, legacy, expect) in [
        ("modern.p12", false, "AES-256-CBC"),
        ("legacy.p12", true, "pbeWithSHA1And3-KeyTripleDES-CBC"),
    ] {
        let out = c.path(file);
        let (cert, key, ca, pw) = (
            c.out().join("reception-1.pem"),
            c.out().join("reception-1.key"),
            c.ca_pem(),
            c.path("p12pass"),
        );
        let mut args = vec![
            "cert",
            "export-p12",
            "--cert",
            s(&cert),
            "--key",
            s(&key),
            "--ca",
            s(&ca),
            "--out",
            s(&out),
            "--password-file",
            s(&pw),
        ];
        if legacy {
            args.push("--legacy");
        }
        kakehashi(&args).ok();
        assert_eq!(mode(&out), 0o600);
        let info = tool(
            "openssl",
            &[
                "pkcs12",
                "-info",
                "-in",
                s(&out),
                "-passin",
                &format!("file:{}", s(&c.path("p12pass"))),
                "-nodes",
            ],
        );
        let all = format!("{}{}", info.stdout, info.stderr);
        assert_eq!(info.code, 0, "{all}");
        assert!(all.contains(expect), "{file}: {all}");
        assert!(
            all.contains("BEGIN PRIVATE KEY") && all.matches("BEGIN CERTIFICATE").count() == 2,
            "{file}: {all}"
        );
        let wrong = tool(
            "openssl",
            &[
                "pkcs12",
                "-info",
                "-in",
                s(&out),
                "-passin",
                "pass:nope",
                "-noout",
            ],
        );
        assert_ne!(wrong.code, 0);

        let shown = kakehashi(&[
            "cert",
            "inspect",
            s(&out),
            "--password-file",
            s(&c.path("p12pass")),
        ])
        .ok();
        assert!(
            shown.contains("PKCS#12")
                && shown.contains("CN=reception-1")
                && shown.contains("ecdsa-p256"),
            "{shown}"
        );
        write(&c.path("badpass"), "nope\n");
        kakehashi(&[
            "cert",
            "inspect",
            s(&out),
            "--password-file",
            s(&c.path("badpass")),
        ])
        .fails_with(&[file, "wrong passphrase"]);
        kakehashi(&["cert", "inspect", s(&out)]).fails_with(&["PKCS#12", "--password-file"]);
    }
}

#[test]
fn export_p12_refuses_a_key_that_is_not_the_certificates() {
    let c = Clinic::new();
    c.issue("terminal", "a", &[]).ok();
    c.issue("terminal", "b", &[]).ok();
    write(&c.path("p12pass"), "Terminal-Pass-1\n");
    let out = c.path("x.p12");
    kakehashi(&[
        "cert",
        "export-p12",
        "--cert",
        s(&c.out().join("a.pem")),
        "--key",
        s(&c.out().join("b.key")),
        "--ca",
        s(&c.ca_pem()),
        "--out",
        s(&out),
        "--password-file",
        s(&c.path("p12pass")),
    ])
    .fails_with(&[
        "b.key: this key does not belong to the certificate",
        "a.pem",
    ]);
    assert!(!out.exists());
}

#[test]
fn inspect_reads_every_kind_in_pem_and_der_with_json() {
    let c = Clinic::new();
    c.issue("server", "gw", &["--san", "dns:orca.example.jp"])
        .ok();
    let crl = c.crl();
    let cert = c.out().join("gw.pem");
    let shown = kakehashi(&["cert", "inspect", s(&cert)]).ok();
    for want in [
        "certificate",
        "CN=gw",
        "CN=Sakura Clinic CA",
        "serverAuth",
        "dns:orca.example.jp",
        "CA:FALSE",
        "ecdsa-with-SHA256",
    ] {
        assert!(shown.contains(want), "{want}: {shown}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&kakehashi(&["cert", "inspect", s(&cert), "--json"]).ok()).unwrap();
    assert_eq!(json[0]["type"], "certificate");
    assert_eq!(json[0]["extended_key_usage"][0], "serverAuth");
    let fp = tool(
        "openssl",
        &["x509", "-in", s(&cert), "-noout", "-fingerprint", "-sha256"],
    )
    .ok();
    assert_eq!(
        fp.trim().rsplit('=').next().unwrap().replace(':', ""),
        json[0]["sha256"].as_str().unwrap()
    );

    let crl_der = c.path("crl.der");
    tool(
        "openssl",
        &[
            "crl",
            "-in",
            s(&crl),
            "-outform",
            "DER",
            "-out",
            s(&crl_der),
        ],
    )
    .ok();
    let json: serde_json::Value =
        serde_json::from_str(&kakehashi(&["cert", "inspect", s(&crl_der), "--json"]).ok()).unwrap();
    assert_eq!(json[0]["type"], "crl");
    assert_eq!(json[0]["crl_number"], "1");

    let csr = c.path("r.csr");
    tool(
        "openssl",
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            s(&c.path("r.key")),
            "-out",
            s(&csr),
            "-subj",
            "/CN=r",
        ],
    )
    .ok();
    let shown = kakehashi(&["cert", "inspect", s(&csr)]).ok();
    assert!(
        shown.contains("certificate signing request")
            && shown.contains("rsa-2048")
            && shown.contains("valid"),
        "{shown}"
    );
    let shown = kakehashi(&["cert", "inspect", s(&c.ca().join("ca.key"))]).ok();
    assert!(
        shown.contains("private key") && shown.contains("encrypted:") && shown.contains("yes"),
        "{shown}"
    );
    write(&c.path("junk"), b"\x30\x03\x02\x01\x07");
    kakehashi(&["cert", "inspect", s(&c.path("junk"))])
        .fails_with(&["junk: not a valid certificate, CSR, CRL, PKCS#12 or key"]);
}

#[test]
fn verify_names_the_reason() {
    let c = Clinic::new();
    let other = Clinic::new();
    c.issue("terminal", "t1", &[]).ok();
    other.issue("terminal", "t1", &[]).ok();
    let cert = c.out().join("t1.pem");
    let out = kakehashi(&["cert", "verify", "--ca", s(&c.ca_pem()), s(&cert)]).ok();
    assert!(
        out.contains("valid: CN=t1") && out.contains("clientAuth"),
        "{out}"
    );
    kakehashi(&["cert", "verify", "--ca", s(&other.ca_pem()), s(&cert)])
        .fails_with(&["invalid", "signature does not verify"]);
    kakehashi(&[
        "cert",
        "verify",
        "--ca",
        s(&c.ca_pem()),
        "--crl",
        s(&other.crl()),
        s(&cert),
    ])
    .fails_with(&["invalid", "was not signed by this CA"]);
}

#[test]
fn list_shows_status_and_expiring_certificates() {
    let c = Clinic::new();
    c.issue("terminal", "soon", &["--days", "10"]).ok();
    c.issue("terminal", "later", &[]).ok();
    c.issue("terminal", "gone", &[]).ok();
    kakehashi(&["cert", "revoke", "--dir", s(&c.ca()), "--name", "gone"]).ok();
    let table = kakehashi(&["cert", "list", "--dir", s(&c.ca())]).ok();
    assert!(table.starts_with("SERIAL"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("revoked") && l.ends_with("gone")),
        "{table}"
    );
    let soon = kakehashi(&[
        "cert",
        "list",
        "--dir",
        s(&c.ca()),
        "--expiring-within",
        "30",
        "--json",
    ])
    .ok();
    let v: serde_json::Value = serde_json::from_str(&soon).unwrap();
    let names: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["soon"]);
}

#[test]
fn concurrent_issues_never_share_a_serial_or_damage_the_index() {
    let c = Clinic::new();
    let children: Vec<_> = (0..12)
        .map(|i| {
            // Two processes race for each of names 0..6: exactly one of each pair may win.
            let name = format!("t{}", i % 6);
            std::process::Command::new(bin())
                .args([
                    "cert",
                    "issue",
                    "--dir",
                    s(&c.ca()),
                    "--profile",
                    "terminal",
                    "--name",
                    &name,
                    "--out",
                    s(&c.path(&format!("out{i}"))),
                    "--passphrase-file",
                    s(&c.pass()),
                ])
                .stdin(std::process::Stdio::null())
                .output()
                .expect("spawn")
        })
        .collect();
    let wins = children.iter().filter(|o| o.status.success()).count();
    assert_eq!(wins, 6, "exactly one issue per name succeeds");
    for o in children.iter().filter(|o| !o.status.success()) {
        assert!(String::from_utf8_lossy(&o.stderr).contains("already has a valid certificate"));
    }
    let list: serde_json::Value =
        serde_json::from_str(&kakehashi(&["cert", "list", "--dir", s(&c.ca()), "--json"]).ok())
            .expect("index intact");
    let mut serials: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["serial"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(serials.len(), 6);
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 6, "serials are unique");
    let issued = std::fs::read_dir(c.ca().join("issued")).unwrap().count();
    assert_eq!(issued, 6, "one copy per recorded certificate, no orphans");
}

/// A full disk, for real: a 1 MiB tmpfs filled to the last block.
struct FullDisk {
    mount: tempfile::TempDir,
}

impl FullDisk {
    fn new() -> FullDisk {
        let mount = tempfile::tempdir().expect("tempdir");
        tool(
            "mount",
            &["-t", "tmpfs", "-o", "size=1m", "tmpfs", s(mount.path())],
        )
        .ok_or_explain("mounting a tmpfs needs root (CI runs as root)");
        FullDisk { mount }
    }
    fn path(&self) -> &Path {
        self.mount.path()
    }
    fn fill(&self) {
        let filler = self.path().join("filler");
        let _ = tool(
            "dd",
            &["if=/dev/zero", &format!("of={}", s(&filler)), "bs=4k"],
        );
        let probe = std::fs::write(self.path().join("probe"), vec![0u8; 8192]);
        assert!(probe.is_err(), "the tmpfs should be full");
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        let _ = tool("umount", &[s(self.mount.path())]);
    }
}

trait OkOrExplain {
    fn ok_or_explain(self, why: &str);
}

impl OkOrExplain for Run {
    #[track_caller]
    fn ok_or_explain(self, why: &str) {
        assert_eq!(self.code, 0, "{why}: {}{}", self.stdout, self.stderr);
    }
}

#[test]
fn a_full_disk_refuses_cleanly_and_changes_nothing() {
    let disk = FullDisk::new();
    let ca = disk.path().join("ca");
    let pass = disk.path().join("pass");
    write(&pass, format!("{PASS}\n"));
    kakehashi(&[
        "cert",
        "init-ca",
        "--dir",
        s(&ca),
        "--name",
        "Full Clinic CA",
        "--passphrase-file",
        s(&pass),
    ])
    .ok();
    let issue = |name: &str, out: &Path| {
        kakehashi(&[
            "cert",
            "issue",
            "--dir",
            s(&ca),
            "--profile",
            "terminal",
            "--name",
            name,
            "--out",
            s(out),
            "--passphrase-file",
            s(&pass),
        ])
    };
    let outside = tempfile::tempdir().unwrap();
    issue("t1", outside.path()).ok();
    disk.fill();
    let before = snapshot(&ca);

    // The index cannot be written: the CA is untouched and no key or certificate comes out.
    let out = tempfile::tempdir().unwrap();
    issue("t2", out.path()).fails_with(&["No space left on device"]);
    assert_unchanged(&before, &snapshot(&ca));
    assert!(snapshot(out.path()).is_empty(), "no partial output");
    kakehashi(&["cert", "revoke", "--dir", s(&ca), "--name", "t1"])
        .fails_with(&["index.json", "No space left on device"]);
    kakehashi(&[
        "cert",
        "crl",
        "--dir",
        s(&ca),
        "--out",
        s(&outside.path().join("crl.pem")),
        "--passphrase-file",
        s(&pass),
    ])
    .fails_with(&["No space left on device"]);
    assert_unchanged(&before, &snapshot(&ca));
    // Nothing staged is left behind, and the CA still works once space returns.
    std::fs::remove_file(disk.path().join("filler")).unwrap();
    issue("t2", out.path()).ok();
}
