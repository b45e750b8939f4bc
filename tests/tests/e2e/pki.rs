//! `kakehashi cert`: every certificate checked by OpenSSL, every bad input refused cleanly.

use std::path::{Path, PathBuf};

use crate::support::*;

const PASS: &str = "correct horse battery staple";

/// A fresh CA with an encrypted key, in a temporary directory.
struct Clinic {
    tmp: tempfile::TempDir,
    /// The CA directory, its certificate, the passphrase file and the output directory, as text.
    ca: String,
    ca_pem: String,
    pass: String,
    out: String,
}

impl Clinic {
    fn new() -> Clinic {
        Clinic::with_key("ecdsa-p256")
    }

    fn with_key(key: &str) -> Clinic {
        let tmp = tempfile::tempdir().expect("tempdir");
        let text = |name: &str| s(&tmp.path().join(name)).to_owned();
        let c = Clinic {
            ca: text("ca"),
            ca_pem: text("ca/ca.pem"),
            pass: text("pass"),
            out: text("out"),
            tmp,
        };
        write(Path::new(&c.pass), format!("{PASS}\n"));
        kakehashi(&[
            "cert", "init-ca", "--dir", &c.ca, "--name", "Sakura Clinic CA", "--key", key,
            "--passphrase-file", &c.pass,
        ])
        .ok();
        c
    }

    /// A path in the test's directory, as text.
    fn path(&self, name: &str) -> String {
        s(&self.tmp.path().join(name)).to_owned()
    }

    /// A path in the output directory of `issue`.
    fn out(&self, name: &str) -> String {
        format!("{}/{name}", self.out)
    }

    /// `cert issue` with the passphrase file; `extra` appended.
    fn issue(&self, profile: &str, name: &str, extra: &str) -> Run {
        sh(&format!(
            "kakehashi cert issue --dir {} --profile {profile} --name {name} --out {} --passphrase-file {} {extra}",
            self.ca, self.out, self.pass
        ))
    }

    /// A fresh CRL.
    fn crl(&self) -> String {
        let crl = self.path("crl.pem");
        sh(&format!(
            "kakehashi cert crl --dir {} --out {crl} --passphrase-file {}",
            self.ca, self.pass
        ))
        .ok();
        crl
    }

    fn openssl_verify(&self, cert: &str, crl: &str) -> Run {
        sh(&format!(
            "openssl verify -CAfile {} -crl_check -CRLfile {crl} {cert}",
            self.ca_pem
        ))
    }

    fn list(&self) -> Vec<serde_json::Value> {
        let listing = sh(&format!("kakehashi cert list --dir {} --json", self.ca)).ok();
        serde_json::from_str(&listing).expect("list --json is a JSON array")
    }

    fn serial_of(&self, name: &str) -> String {
        let list = self.list();
        let entry = list.iter().rev().find(|e| e["name"] == name).expect("listed");
        entry["serial"].as_str().expect("serial").to_owned()
    }

    fn snapshot(&self) -> Snapshot {
        snapshot(Path::new(&self.ca))
    }
}

type Snapshot = std::collections::BTreeMap<PathBuf, (Vec<u8>, u32)>;

fn x509_text(cert: &str) -> String {
    sh(&format!("openssl x509 -in {cert} -noout -text")).ok()
}

#[test]
fn init_ca_writes_an_encrypted_key_that_openssl_opens() {
    let c = Clinic::new();
    let key = format!("{}/ca.key", c.ca);
    assert_eq!(mode(Path::new(&key)), 0o600);
    let pem = std::fs::read_to_string(&key).unwrap();
    assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"), "{pem}");
    let info = sh(&format!("openssl asn1parse -in {key}")).ok();
    for want in ["PBES2", "PBKDF2", "hmacWithSHA256", "aes-256-cbc"] {
        assert!(info.contains(want), "{want}: {info}");
    }
    sh(&format!("openssl pkey -in {key} -passin file:{} -noout", c.pass)).ok();
    assert_ne!(
        sh(&format!("openssl pkey -in {key} -passin pass:wrong -noout")).code,
        0
    );

    let text = x509_text(&c.ca_pem);
    for want in [
        "CA:TRUE, pathlen:0",
        "Certificate Sign, CRL Sign",
        "Subject: CN = Sakura Clinic CA",
        "X509v3 Subject Key Identifier",
        "prime256v1",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
}

#[test]
fn init_ca_refuses_an_existing_ca_and_a_missing_passphrase() {
    let c = Clinic::new();
    let before = c.snapshot();
    sh(&format!(
        "kakehashi cert init-ca --dir {} --name Other --passphrase-file {}",
        c.ca, c.pass
    ))
    .fails_with(&["a CA already exists here", &c.ca]);
    assert_unchanged(&before, &c.snapshot());

    let fresh = c.path("fresh");
    sh(&format!("kakehashi cert init-ca --dir {fresh} --name X")).fails_with(&[
        "no passphrase was given",
        "--passphrase-file",
        "KAKEHASHI_CA_PASSPHRASE",
    ]);
    write(Path::new(&c.path("short")), "short\n");
    sh(&format!(
        "kakehashi cert init-ca --dir {fresh} --name X --passphrase-file {}",
        c.path("short")
    ))
    .fails_with(&["at least 8 characters"]);
    assert!(!Path::new(&fresh).join("ca.pem").exists());
}

#[test]
fn rsa_3072_ca_and_rsa_terminals() {
    let c = Clinic::with_key("rsa-3072");
    assert!(x509_text(&c.ca_pem).contains("Public-Key: (3072 bit)"));
    c.issue("terminal", "old-windows", "--key rsa-2048").ok();
    let text = x509_text(&c.out("old-windows.pem"));
    assert!(text.contains("Public-Key: (2048 bit)"), "{text}");
    assert!(text.contains("sha256WithRSAEncryption"), "{text}");
    assert!(
        c.openssl_verify(&c.out("old-windows.pem"), &c.crl())
            .ok()
            .contains("OK")
    );
}

#[test]
fn each_profile_has_the_extensions_it_promises() {
    let c = Clinic::new();
    c.issue("terminal", "reception-1", "").ok();
    c.issue("uplink", "gateway-uplink", "").ok();
    c.issue(
        "server",
        "gateway",
        "--san dns:orca.example.jp --san ip:192.168.10.1",
    )
    .ok();

    let client = "TLS Web Client Authentication";
    let server = "TLS Web Server Authentication";
    for (name, eku, not) in [
        ("reception-1", client, server),
        ("gateway-uplink", client, server),
        ("gateway", server, client),
    ] {
        let cert = c.out(&format!("{name}.pem"));
        let text = x509_text(&cert);
        for want in [
            "CA:FALSE",
            "X509v3 Key Usage: critical\n                Digital Signature\n",
            &format!("X509v3 Extended Key Usage: \n                {eku}\n"),
            "X509v3 Subject Key Identifier",
            "X509v3 Authority Key Identifier",
        ] {
            assert!(text.contains(want), "{name}: {want}: {text}");
        }
        assert!(!text.contains(not), "{name}: {text}");
        assert_eq!(mode(Path::new(&c.out(&format!("{name}.key")))), 0o600);

        // Serial: positive, random, at least 64 bits.
        let serial = sh(&format!("openssl x509 -in {cert} -noout -serial")).ok();
        let hex = serial.trim().trim_start_matches("serial=");
        assert!(hex.len() >= 16, "serial {hex} is shorter than 64 bits");
        assert!(
            u8::from_str_radix(&hex[..2], 16).unwrap() < 0x80,
            "serial {hex} is negative"
        );

        // Validity: one year by default.
        let checkend = |days: u32| {
            sh(&format!(
                "openssl x509 -in {cert} -noout -checkend {}",
                days * 86400
            ))
            .code
        };
        assert_eq!(checkend(364), 0, "{name} expires within 364 days");
        assert_eq!(checkend(366), 1, "{name} is valid for more than 366 days");
    }
    let text = x509_text(&c.out("gateway.pem"));
    assert!(
        text.contains("DNS:orca.example.jp, IP Address:192.168.10.1"),
        "{text}"
    );

    // The CA never keeps a key it issued.
    let kept = c.snapshot();
    assert!(
        kept.keys()
            .all(|p| p.extension().is_none_or(|e| e != "key") || p.ends_with("ca.key")),
        "{kept:?}"
    );
}

#[test]
fn server_profile_needs_a_san_and_bad_input_changes_nothing() {
    let c = Clinic::new();
    let before = c.snapshot();
    c.issue("server", "gateway", "")
        .fails_with(&["at least one --san"]);
    c.issue("terminal", "../evil", "")
        .fails_with(&["not a usable name"]);
    c.issue("terminal", "t", "--days 5000")
        .fails_with(&["would outlive the CA"]);
    let bad_san = c.issue("server", "gateway", "--san dns:bad_host!");
    assert_eq!(bad_san.code, 2, "clap rejects a malformed --san");
    assert!(
        bad_san.stderr.contains("is not a DNS host name"),
        "{}",
        bad_san.stderr
    );
    assert_unchanged(&before, &c.snapshot());
    assert!(!Path::new(&c.out("gateway.pem")).exists());
}

#[test]
fn openssl_accepts_a_fresh_terminal_and_rejects_it_after_revocation() {
    let c = Clinic::new();
    c.issue("terminal", "reception-1", "").ok();
    let cert = c.out("reception-1.pem");
    let crl = c.crl();
    assert!(c.openssl_verify(&cert, &crl).ok().contains("OK"));
    sh(&format!(
        "kakehashi cert verify --ca {} --crl {crl} {cert}",
        c.ca_pem
    ))
    .ok();

    let out = sh(&format!(
        "kakehashi cert revoke --dir {} --name reception-1 --reason key-compromise",
        c.ca
    ))
    .ok();
    assert!(out.contains("revoked reception-1"), "{out}");
    let crl = c.crl();
    let refused = c.openssl_verify(&cert, &crl);
    assert_ne!(refused.code, 0);
    assert!(format!("{}{}", refused.stdout, refused.stderr).contains("certificate revoked"));
    let text = sh(&format!("openssl crl -in {crl} -noout -text")).ok();
    let serial = c.serial_of("reception-1");
    for want in [
        "Version 2",
        "X509v3 CRL Number: \n                2",
        "X509v3 Authority Key Identifier",
        "Key Compromise",
        &format!("Serial Number: {serial}"),
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    sh(&format!(
        "kakehashi cert verify --ca {} --crl {crl} {cert}",
        c.ca_pem
    ))
    .fails_with(&["invalid: revoked on", "(key-compromise)"]);
}

#[test]
fn issuing_a_name_twice_is_refused_unless_replaced() {
    let c = Clinic::new();
    c.issue("terminal", "reception-1", "").ok();
    let first = c.serial_of("reception-1");
    let (before, out_before) = (c.snapshot(), snapshot(Path::new(&c.out)));
    c.issue("terminal", "reception-1", "").fails_with(&[
        "reception-1: already has a valid certificate",
        &first,
        "--replace",
    ]);
    assert_unchanged(&before, &c.snapshot());
    assert_unchanged(&out_before, &snapshot(Path::new(&c.out)));

    c.issue("terminal", "reception-1", "--replace").ok();
    assert_ne!(first, c.serial_of("reception-1"));
    let list = c.list();
    let old = list.iter().find(|e| e["serial"] == first.as_str()).unwrap();
    assert_eq!(old["status"], "revoked");
    assert_eq!(old["revoked"]["reason"], "superseded");
    let crl = c.crl();
    let text = sh(&format!("openssl crl -in {crl} -noout -text")).ok();
    assert!(text.contains(&first) && text.contains("Superseded"), "{text}");
    assert!(
        c.openssl_verify(&c.out("reception-1.pem"), &crl)
            .ok()
            .contains("OK")
    );
}

#[test]
fn revoking_unknown_serials_and_names_is_refused() {
    let c = Clinic::new();
    c.issue("terminal", "t1", "").ok();
    let before = c.snapshot();
    sh(&format!("kakehashi cert revoke --dir {} --serial DEADBEEF", c.ca))
        .fails_with(&["no certificate with serial DEADBEEF", "index.json"]);
    sh(&format!("kakehashi cert revoke --dir {} --name nobody", c.ca))
        .fails_with(&["no valid certificate named nobody", "index.json"]);
    assert_unchanged(&before, &c.snapshot());

    // A serial in any case, with colons, as openssl prints it.
    let serial = c.serial_of("t1").to_lowercase();
    let colons: Vec<&str> = (0..serial.len()).step_by(2).map(|i| &serial[i..i + 2]).collect();
    sh(&format!(
        "kakehashi cert revoke --dir {} --serial {}",
        c.ca,
        colons.join(":")
    ))
    .ok();
    let before = c.snapshot();
    sh(&format!("kakehashi cert revoke --dir {} --serial {serial}", c.ca)).fails_with(&["already revoked"]);
    assert_unchanged(&before, &c.snapshot());
}

#[test]
fn wrong_passphrase_changes_nothing() {
    let c = Clinic::new();
    c.issue("terminal", "t1", "").ok();
    let (before, out_before) = (c.snapshot(), snapshot(Path::new(&c.out)));
    let wrong = c.path("wrong");
    write(Path::new(&wrong), "not the passphrase\n");
    let issue_t2 = format!(
        "kakehashi cert issue --dir {} --profile terminal --name t2 --out {}",
        c.ca, c.out
    );
    sh(&format!("{issue_t2} --passphrase-file {wrong}")).fails_with(&["ca.key: wrong passphrase"]);
    sh(&format!(
        "kakehashi cert crl --dir {} --out {} --passphrase-file {wrong}",
        c.ca,
        c.path("crl.pem")
    ))
    .fails_with(&["ca.key: wrong passphrase"]);
    sh(&issue_t2).fails_with(&["ca.key: the key is encrypted and no passphrase was given"]);
    assert_unchanged(&before, &c.snapshot());
    assert_unchanged(&out_before, &snapshot(Path::new(&c.out)));
    assert!(!Path::new(&c.path("crl.pem")).exists());

    // The environment variable is the second source.
    let args: Vec<&str> = issue_t2.split_whitespace().skip(1).collect();
    kakehashi_env(&args, &[("KAKEHASHI_CA_PASSPHRASE", PASS)]).ok();
}

#[test]
fn corrupt_and_truncated_files_are_named_and_change_nothing() {
    let c = Clinic::new();
    c.issue("terminal", "t1", "").ok();
    let damage = |file: &str, keep: fn(usize) -> usize, needle: &str, commands: &[String]| {
        let path = PathBuf::from(&c.ca).join(file);
        let good = std::fs::read(&path).unwrap();
        write(&path, &good[..keep(good.len())]);
        let before = c.snapshot();
        for cmd in commands {
            sh(cmd).fails_with(&[needle]);
        }
        assert_unchanged(&before, &c.snapshot());
        write(&path, &good);
    };
    let issue = format!(
        "kakehashi cert issue --dir {} --profile terminal --name t2 --out {} --passphrase-file {}",
        c.ca, c.out, c.pass
    );
    let revoke = format!("kakehashi cert revoke --dir {} --name t1", c.ca);
    let list = format!("kakehashi cert list --dir {}", c.ca);
    damage(
        "index.json",
        |n| n / 2,
        "index.json: not a valid certificate index",
        &[issue.clone(), revoke, list],
    );
    damage(
        "ca.key",
        |n| n - 40,
        "ca.key: not a valid PEM private key",
        std::slice::from_ref(&issue),
    );
    damage(
        "ca.pem",
        |_| 200,
        "ca.pem: not a valid PEM file",
        std::slice::from_ref(&issue),
    );

    // Truncated inputs to the read-only commands.
    let der = c.path("t1.der");
    sh(&format!(
        "openssl x509 -in {} -outform DER -out {der}",
        c.out("t1.pem")
    ))
    .ok();
    let der_bytes = std::fs::read(&der).unwrap();
    write(Path::new(&c.path("cut.der")), &der_bytes[..der_bytes.len() - 10]);
    sh(&format!("kakehashi cert inspect {}", c.path("cut.der")))
        .fails_with(&["cut.der: not a valid", "truncated"]);
    let pem = std::fs::read(c.out("t1.pem")).unwrap();
    write(Path::new(&c.path("cut.pem")), &pem[..pem.len() / 2]);
    sh(&format!("kakehashi cert inspect {}", c.path("cut.pem")))
        .fails_with(&["cut.pem: not a valid PEM file"]);
    sh(&format!(
        "kakehashi cert verify --ca {} {}",
        c.ca_pem,
        c.path("cut.pem")
    ))
    .fails_with(&["cut.pem"]);
    sh(&format!("kakehashi cert inspect {}", c.path("missing.pem")))
        .fails_with(&["cannot read", "missing.pem", "No such file"]);

    // And the CA works again once repaired.
    sh(&issue).ok();
}

#[test]
fn sign_csr_takes_the_key_and_name_but_never_the_extensions() {
    let c = Clinic::new();
    let (key, csr, cert) = (c.path("csr.key"), c.path("req.csr"), c.path("tablet-7.pem"));
    sh(&format!(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {key} -out {csr} \
         -subj /CN=tablet-7/O=EvilCorp -addext basicConstraints=critical,CA:TRUE \
         -addext keyUsage=critical,keyCertSign,cRLSign -addext extendedKeyUsage=serverAuth,codeSigning"
    ))
    .ok();
    let sign = |csr: &str, extra: &str, out: &str| {
        sh(&format!(
            "kakehashi cert sign-csr --dir {} --csr {csr} --profile terminal --out {out} --passphrase-file {} {extra}",
            c.ca, c.pass
        ))
    };
    sign(&csr, "", &cert).ok();
    let text = x509_text(&cert);
    assert!(
        text.contains("CA:FALSE") && text.contains("TLS Web Client Authentication"),
        "{text}"
    );
    for never in [
        "CA:TRUE", "Certificate Sign", "Code Signing", "Server Authentication", "Evil Corp",
    ] {
        assert!(!text.contains(never), "{never}: {text}");
    }
    assert!(
        text.contains("Subject: CN = tablet-7\n"),
        "the subject is the CN alone: {text}"
    );
    // The certificate carries the requester's key.
    let cert_key = sh(&format!("openssl x509 -in {cert} -noout -pubkey")).ok();
    assert_eq!(cert_key, sh(&format!("openssl pkey -in {key} -pubout")).ok());
    assert!(c.openssl_verify(&cert, &c.crl()).ok().contains("OK"));

    // DER requests, and --name over the request's name.
    let der = c.path("req.der");
    sh(&format!("openssl req -in {csr} -outform DER -out {der}")).ok();
    sign(&der, "--name tablet-8", &c.path("t8.pem")).ok();
    assert!(x509_text(&c.path("t8.pem")).contains("Subject: CN = tablet-8\n"));
}

#[test]
fn a_tampered_csr_is_refused_and_changes_nothing() {
    let c = Clinic::new();
    let csr = c.path("req.csr");
    let key = c.path("k");
    sh(&format!("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {key} -out {csr} -outform DER -subj /CN=tablet-1")).ok();
    // Change the name in place: same length, still parses, the signature no longer matches.
    let mut der = std::fs::read(&csr).unwrap();
    let at = der
        .windows(8)
        .position(|w| w == b"tablet-1")
        .expect("CN in the DER");
    der[at + 7] = b'9';
    let (tampered, cut, out) = (c.path("tampered.csr"), c.path("cut.csr"), c.path("x.pem"));
    write(Path::new(&tampered), &der);
    write(Path::new(&cut), &der[..der.len() - 20]);
    let sign = |csr: &str| {
        sh(&format!(
            "kakehashi cert sign-csr --dir {} --csr {csr} --profile terminal --out {out} --passphrase-file {}",
            c.ca, c.pass
        ))
    };
    let before = c.snapshot();
    sign(&tampered).fails_with(&["tampered.csr: the CSR's signature does not verify"]);
    sign(&cut).fails_with(&["cut.csr: not a valid"]);
    assert_unchanged(&before, &c.snapshot());
    assert!(!Path::new(&out).exists());
}

#[test]
fn pkcs12_modern_and_legacy_open_in_openssl() {
    let c = Clinic::new();
    c.issue("terminal", "reception-1", "").ok();
    let (pw, bad) = (c.path("p12pass"), c.path("badpass"));
    write(Path::new(&pw), "Terminal-Pass-1\n");
    write(Path::new(&bad), "nope\n");
    for (file, flag, expect) in [
        ("modern.p12", "", "AES-256-CBC"),
        ("legacy.p12", "--legacy", "pbeWithSHA1And3-KeyTripleDES-CBC"),
    ] {
        let p12 = c.path(file);
        sh(&format!(
            "kakehashi cert export-p12 --cert {} --key {} --ca {} --out {p12} --password-file {pw} {flag}",
            c.out("reception-1.pem"),
            c.out("reception-1.key"),
            c.ca_pem
        ))
        .ok();
        assert_eq!(mode(Path::new(&p12)), 0o600);
        let info = sh(&format!(
            "openssl pkcs12 -info -in {p12} -passin file:{pw} -nodes"
        ));
        let all = format!("{}{}", info.stdout, info.stderr);
        assert_eq!(info.code, 0, "{all}");
        assert!(all.contains(expect), "{file}: {all}");
        assert!(
            all.contains("BEGIN PRIVATE KEY") && all.matches("BEGIN CERTIFICATE").count() == 2,
            "{file}: {all}"
        );
        assert_ne!(
            sh(&format!(
                "openssl pkcs12 -info -in {p12} -passin pass:nope -noout"
            ))
            .code,
            0
        );

        let shown = sh(&format!("kakehashi cert inspect {p12} --password-file {pw}")).ok();
        assert!(
            shown.contains("PKCS#12") && shown.contains("CN=reception-1") && shown.contains("ecdsa-p256"),
            "{shown}"
        );
        sh(&format!("kakehashi cert inspect {p12} --password-file {bad}"))
            .fails_with(&[file, "wrong passphrase"]);
        sh(&format!("kakehashi cert inspect {p12}")).fails_with(&["PKCS#12", "--password-file"]);
    }
}

#[test]
fn export_p12_refuses_a_key_that_is_not_the_certificates() {
    let c = Clinic::new();
    c.issue("terminal", "a", "").ok();
    c.issue("terminal", "b", "").ok();
    let (pw, p12) = (c.path("p12pass"), c.path("x.p12"));
    write(Path::new(&pw), "Terminal-Pass-1\n");
    sh(&format!(
        "kakehashi cert export-p12 --cert {} --key {} --ca {} --out {p12} --password-file {pw}",
        c.out("a.pem"),
        c.out("b.key"),
        c.ca_pem
    ))
    .fails_with(&["b.key: this key does not belong to the certificate", "a.pem"]);
    assert!(!Path::new(&p12).exists());
}

#[test]
fn inspect_reads_every_kind_in_pem_and_der_with_json() {
    let c = Clinic::new();
    c.issue("server", "gw", "--san dns:orca.example.jp").ok();
    let cert = c.out("gw.pem");
    let shown = sh(&format!("kakehashi cert inspect {cert}")).ok();
    for want in [
        "certificate", "CN=gw", "CN=Sakura Clinic CA", "serverAuth", "dns:orca.example.jp", "CA:FALSE",
        "ecdsa-with-SHA256",
    ] {
        assert!(shown.contains(want), "{want}: {shown}");
    }
    let json = |file: &str| -> serde_json::Value {
        serde_json::from_str(&sh(&format!("kakehashi cert inspect {file} --json")).ok()).expect("JSON")
    };
    let v = json(&cert);
    assert_eq!(v[0]["type"], "certificate");
    assert_eq!(v[0]["extended_key_usage"][0], "serverAuth");
    let fp = sh(&format!("openssl x509 -in {cert} -noout -fingerprint -sha256")).ok();
    assert_eq!(
        fp.trim().rsplit('=').next().unwrap().replace(':', ""),
        v[0]["sha256"].as_str().unwrap()
    );

    let crl_der = c.path("crl.der");
    sh(&format!(
        "openssl crl -in {} -outform DER -out {crl_der}",
        c.crl()
    ))
    .ok();
    let v = json(&crl_der);
    assert_eq!(v[0]["type"], "crl");
    assert_eq!(v[0]["crl_number"], "1");

    let csr = c.path("r.csr");
    sh(&format!(
        "openssl req -new -newkey rsa:2048 -nodes -keyout {} -out {csr} -subj /CN=r",
        c.path("r.key")
    ))
    .ok();
    let shown = sh(&format!("kakehashi cert inspect {csr}")).ok();
    assert!(
        shown.contains("certificate signing request")
            && shown.contains("rsa-2048")
            && shown.contains("valid"),
        "{shown}"
    );
    let shown = sh(&format!("kakehashi cert inspect {}/ca.key", c.ca)).ok();
    assert!(shown.contains("private key") && shown.contains("yes"), "{shown}");
    write(Path::new(&c.path("junk")), b"\x30\x03\x02\x01\x07");
    sh(&format!("kakehashi cert inspect {}", c.path("junk")))
        .fails_with(&["junk: not a valid certificate, CSR, CRL, PKCS#12 or key"]);
}

#[test]
fn verify_names_the_reason() {
    let (c, other) = (Clinic::new(), Clinic::new());
    c.issue("terminal", "t1", "").ok();
    let cert = c.out("t1.pem");
    let out = sh(&format!("kakehashi cert verify --ca {} {cert}", c.ca_pem)).ok();
    assert!(
        out.contains("valid: CN=t1") && out.contains("clientAuth"),
        "{out}"
    );
    sh(&format!("kakehashi cert verify --ca {} {cert}", other.ca_pem))
        .fails_with(&["invalid", "signature does not verify with the CA's key"]);
    sh(&format!(
        "kakehashi cert verify --ca {} --crl {} {cert}",
        c.ca_pem,
        other.crl()
    ))
    .fails_with(&["invalid", "was not signed by this CA"]);
    sh(&format!("kakehashi cert verify --ca {} {}", c.ca_pem, c.ca_pem)).ok();

    // Expired: openssl signs one with our CA key that ends the second it begins.
    let (csr, old, ext) = (c.path("old.csr"), c.path("old.pem"), c.path("ext"));
    write(
        Path::new(&ext),
        "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n",
    );
    sh(&format!(
        "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {} -out {csr} -subj /CN=old",
        c.path("old.key")
    ))
    .ok();
    sh(&format!(
        "openssl x509 -req -in {csr} -CA {} -CAkey {}/ca.key -passin file:{} -days 0 -extfile {ext} -out {old}",
        c.ca_pem, c.ca, c.pass
    ))
    .ok();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    sh(&format!("kakehashi cert verify --ca {} {old}", c.ca_pem)).fails_with(&["invalid: expired on"]);
}

#[test]
fn list_shows_status_and_expiring_certificates() {
    let c = Clinic::new();
    c.issue("terminal", "soon", "--days 10").ok();
    c.issue("terminal", "later", "").ok();
    c.issue("terminal", "gone", "").ok();
    sh(&format!("kakehashi cert revoke --dir {} --name gone", c.ca)).ok();
    let table = sh(&format!("kakehashi cert list --dir {}", c.ca)).ok();
    assert!(table.starts_with("SERIAL"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("revoked") && l.ends_with("gone")),
        "{table}"
    );
    let soon = sh(&format!(
        "kakehashi cert list --dir {} --expiring-within 30 --json",
        c.ca
    ))
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
    // Twelve processes at once; two race for each of six names, and exactly one of each pair wins.
    let children: Vec<_> = (0..12)
        .map(|i| {
            let line = format!(
                "cert issue --dir {} --profile terminal --name t{} --out {} --passphrase-file {}",
                c.ca,
                i % 6,
                c.path(&format!("out{i}")),
                c.pass
            );
            std::process::Command::new(bin())
                .args(line.split_whitespace())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let outputs: Vec<_> = children
        .into_iter()
        .map(|ch| ch.wait_with_output().expect("wait"))
        .collect();
    assert_eq!(
        outputs.iter().filter(|o| o.status.success()).count(),
        6,
        "exactly one issue per name succeeds"
    );
    for o in outputs.iter().filter(|o| !o.status.success()) {
        assert!(String::from_utf8_lossy(&o.stderr).contains("already has a valid certificate"));
    }
    let mut serials: Vec<_> = c
        .list()
        .iter()
        .map(|e| e["serial"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(serials.len(), 6);
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 6, "serials are unique");
    let issued = std::fs::read_dir(format!("{}/issued", c.ca)).unwrap().count();
    assert_eq!(issued, 6, "one copy per recorded certificate, no orphans");
}

/// A full disk, for real: a 1 MiB tmpfs, filled to the last block on demand.
struct FullDisk {
    mount: tempfile::TempDir,
}

impl FullDisk {
    fn new() -> FullDisk {
        let mount = tempfile::tempdir().expect("tempdir");
        let mounted = sh(&format!("mount -t tmpfs -o size=1m tmpfs {}", s(mount.path())));
        assert_eq!(
            mounted.code, 0,
            "mounting a tmpfs needs root (CI runs as root): {}",
            mounted.stderr
        );
        FullDisk { mount }
    }
    fn path(&self, name: &str) -> String {
        s(&self.mount.path().join(name)).to_owned()
    }
    fn fill(&self) {
        let _ = sh(&format!("dd if=/dev/zero of={} bs=4k", self.path("filler")));
        assert!(
            std::fs::write(self.path("probe"), vec![0u8; 8192]).is_err(),
            "the tmpfs should be full"
        );
    }
    fn free(&self) {
        std::fs::remove_file(self.path("filler")).expect("remove filler");
    }
}

impl Drop for FullDisk {
    fn drop(&mut self) {
        let _ = tool("umount", &[s(self.mount.path())]);
    }
}

#[test]
fn a_full_disk_refuses_cleanly_and_changes_nothing() {
    let disk = FullDisk::new();
    let (ca, pass) = (disk.path("ca"), disk.path("pass"));
    write(Path::new(&pass), format!("{PASS}\n"));
    kakehashi(&[
        "cert", "init-ca", "--dir", &ca, "--name", "Full Clinic CA", "--passphrase-file", &pass,
    ])
    .ok();
    let (out1, out2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let issue = |name: &str, out: &Path| {
        sh(&format!(
            "kakehashi cert issue --dir {ca} --profile terminal --name {name} --out {} --passphrase-file {pass}",
            s(out)
        ))
    };
    issue("t1", out1.path()).ok();
    disk.fill();
    let before = snapshot(Path::new(&ca));

    // The index cannot be written: the CA is untouched and no key or certificate comes out.
    issue("t2", out2.path()).fails_with(&["No space left on device"]);
    assert!(snapshot(out2.path()).is_empty(), "no partial output");
    sh(&format!("kakehashi cert revoke --dir {ca} --name t1"))
        .fails_with(&["index.json", "No space left on device"]);
    let crl = s(&out1.path().join("crl.pem")).to_owned();
    sh(&format!(
        "kakehashi cert crl --dir {ca} --out {crl} --passphrase-file {pass}"
    ))
    .fails_with(&["No space left on device"]);
    assert_unchanged(&before, &snapshot(Path::new(&ca)));
    assert!(!Path::new(&crl).exists());

    // Nothing staged was left behind, and the CA works again once there is room.
    disk.free();
    issue("t2", out2.path()).ok();
}

#[test]
fn keys_openssl_made_in_its_traditional_formats_export_to_pkcs12() {
    let c = Clinic::new();
    let pw = c.path("pw");
    write(Path::new(&pw), "Terminal-Pass-1\n");
    let sec1 = format!(
        "openssl ecparam -name prime256v1 -genkey -noout -out {}",
        c.path("ec.key")
    );
    let pkcs1 = format!("openssl genrsa -traditional -out {} 2048", c.path("rsa.key"));
    for (name, make, header) in [("ec", sec1, "EC PRIVATE KEY"), ("rsa", pkcs1, "RSA PRIVATE KEY")] {
        let (key, csr, cert, p12) = (
            c.path(&format!("{name}.key")),
            c.path("r.csr"),
            c.path("c.pem"),
            c.path("x.p12"),
        );
        sh(&make).ok();
        assert!(std::fs::read_to_string(&key).unwrap().contains(header));
        sh(&format!(
            "openssl req -new -key {key} -out {csr} -subj /CN={name}"
        ))
        .ok();
        sh(&format!(
            "kakehashi cert sign-csr --dir {} --csr {csr} --profile terminal --out {cert} --passphrase-file {}",
            c.ca, c.pass
        ))
        .ok();
        sh(&format!(
            "kakehashi cert export-p12 --cert {cert} --key {key} --ca {} --out {p12} --password-file {pw}",
            c.ca_pem
        ))
        .ok();
        let keys = sh(&format!(
            "openssl pkcs12 -in {p12} -passin file:{pw} -nocerts -nodes"
        ))
        .ok();
        let theirs = sh(&format!("openssl pkey -in {key} -pubout")).ok();
        write(Path::new(&c.path("from-p12.key")), keys);
        assert_eq!(
            sh(&format!("openssl pkey -in {} -pubout", c.path("from-p12.key"))).ok(),
            theirs,
            "{name}"
        );
    }
}
