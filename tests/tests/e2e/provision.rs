//! `kakehashi provision`: the vendor's side of a clinic, from vendor init to bundles, checked with
//! openssl, wg-quick, sha256sum and the bundle format's own reader; every refusal changing
//! nothing.
//!
//! The appliance's request is made here as `gateway init` makes it: three CSRs from keys that
//! stay here (openssl), a WireGuard public key, and an age recipient whose identity then opens
//! the bundles.

use std::path::{Path, PathBuf};

use crate::support::*;

const PASS: &str = "vendor passphrase 1";
/// RFC 7748's test key pair (Alice), as `wg genkey` and `wg pubkey` write them.
const GATEWAY_WG_PUBLIC: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

/// A vendor directory with an encrypted vendor, in a temporary directory.
struct Vendor {
    tmp: tempfile::TempDir,
    dir: String,
    pass: String,
}

impl Vendor {
    fn new() -> Vendor {
        let tmp = tempfile::tempdir().expect("tempdir");
        let v = Vendor {
            dir: s(&tmp.path().join("V")).to_owned(),
            pass: s(&tmp.path().join("pass")).to_owned(),
            tmp,
        };
        write(Path::new(&v.pass), format!("{PASS}\n"));
        v
    }

    fn path(&self, name: &str) -> String {
        s(&self.tmp.path().join(name)).to_owned()
    }

    /// `kakehashi provision --dir V --passphrase-file PASS ARGS`.
    fn run(&self, args: &[impl AsRef<str>]) -> Run {
        let mut all = vec!["provision", "--dir", &self.dir, "--passphrase-file", &self.pass];
        all.extend(args.iter().map(AsRef::as_ref));
        kakehashi(&all)
    }

    fn clinic_dir(&self, id: &str) -> PathBuf {
        Path::new(&self.dir).join("clinics").join(id)
    }

    fn state(&self, id: &str) -> Vec<u8> {
        std::fs::read(self.clinic_dir(id).join("clinic.json")).expect("clinic.json")
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(args).ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }

    /// Runs a command that must be refused with all of `needles`, and checks that clinic `id`'s
    /// state did not change by one byte.
    #[track_caller]
    fn refused(&self, id: &str, args: &[impl AsRef<str> + std::fmt::Debug], needles: &[&str]) {
        let before = self.state(id);
        self.run(args).fails_with(needles);
        assert!(self.state(id) == before, "{args:?} changed clinic.json");
    }
}

/// An appliance's request in `dir/request.json`, made with openssl; returns its path and the
/// appliance's age identity (which opens its bundles).
fn request(dir: &Path) -> (String, age::x25519::Identity) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let csr = |name: &str| {
        let key = s(&dir.join(format!("{name}.key"))).to_owned();
        let csr = s(&dir.join(format!("{name}.csr"))).to_owned();
        sh(&format!(
            "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {key}"
        ))
        .ok();
        sh(&format!(
            "openssl req -new -key {key} -subj /CN={name} -out {csr}"
        ))
        .ok();
        std::fs::read_to_string(&csr).expect("csr")
    };
    let identity = age::x25519::Identity::generate();
    let request = serde_json::json!({
        "kind": "kakehashi-appliance-request",
        "format": 1,
        "created": "2026-11-22T00:00:00Z",
        "appliance": identity.to_public().to_string(),
        "issuing_ca_csr": csr("issuing"),
        "server_csr": csr("server"),
        "uplink_csr": csr("uplink"),
        "wireguard_public_key": GATEWAY_WG_PUBLIC,
    });
    let path = dir.join("request.json");
    write(&path, serde_json::to_string_pretty(&request).expect("json"));
    (s(&path).to_owned(), identity)
}

/// Opens a bundle as the appliance does.
fn open_bundle(
    path: &str,
    identity: &age::x25519::Identity,
    vendor_key: &str,
) -> provisioning_shared::bundle::Payload {
    let bytes = std::fs::read(path).expect("bundle");
    provisioning_shared::bundle::open(&bytes, identity, Some(vendor_key))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .payload
}

/// The SHA-256 of a file's bytes, as sha256sum prints it.
fn sha256sum(path: &str) -> String {
    let out = sh(&format!("sha256sum {path}")).ok();
    out.split_whitespace().next().expect("digest").to_owned()
}

#[test]
fn a_clinic_from_request_to_bundles_checked_by_openssl() {
    let v = Vendor::new();
    let (req, appliance) = request(&v.tmp.path().join("appliance"));
    let engine_pass = v.path("engine-pass");
    write(Path::new(&engine_pass), "engine secret\n");

    // 1. The vendor: root CA and signing key, the fingerprint printed and written.
    let init = v.run(&["vendor", "init", "--name", "Test Vendor Root"]).ok();
    let pin = std::fs::read_to_string(format!("{}/vendor-key.txt", v.dir)).expect("vendor-key.txt");
    let fingerprint = pin.trim().to_owned();
    assert!(
        fingerprint.starts_with("SHA256:") && init.contains(&fingerprint),
        "{init}"
    );
    assert_eq!(mode(Path::new(&format!("{}/signing.key", v.dir))), 0o600);
    let signing = std::fs::read_to_string(format!("{}/signing.key", v.dir)).expect("key");
    assert!(signing.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    let before = snapshot(Path::new(&v.dir));
    v.run(&["vendor", "init"])
        .fails_with(&["a vendor exists here already"]);
    assert_unchanged(&before, &snapshot(Path::new(&v.dir)));

    // 2. The clinic, from the appliance's request.
    let added = v
        .run(&[
            "clinic",
            "add",
            "--clinic",
            "sakura",
            "--name",
            "Sakura Clinic",
            "--request",
            &req,
            "--engine-host",
            "orca.example.jp",
            "--wg-endpoint",
            "clinic.example.jp:51820",
        ])
        .ok();
    assert!(added.contains("uplink.csr"), "{added}");
    let c = v.clinic_dir("sakura");
    let at = |name: &str| s(&c.join(name)).to_owned();
    let root = format!("{}/root/ca.pem", v.dir);
    let clinic_ca = at("clinic-ca/ca.pem");
    assert_eq!(mode(&c.join("clinic.json")), 0o600);
    for name in ["issuing-ca.pem", "server.pem", "uplink.csr", "request.json"] {
        assert!(c.join(name).exists(), "{name}");
    }
    sh(&format!("openssl verify -CAfile {root} {clinic_ca}")).ok();
    sh(&format!("openssl verify -CAfile {root} {}", at("issuing-ca.pem"))).ok();
    sh(&format!(
        "openssl verify -CAfile {root} -untrusted {clinic_ca} {}",
        at("server.pem")
    ))
    .ok();
    let server = sh(&format!("openssl x509 -in {} -noout -text", at("server.pem"))).ok();
    assert!(server.contains("DNS:orca.example.jp") && server.contains("TLS Web Server Authentication"));
    let issuing = sh(&format!("openssl x509 -in {} -noout -text", at("issuing-ca.pem"))).ok();
    assert!(issuing.contains("CA:TRUE, pathlen:0"), "{issuing}");
    sh(&format!("openssl req -in {} -noout -verify", at("uplink.csr"))).ok();

    // The same appliance for another clinic, the same ID again: refused, nothing changes.
    let before = snapshot(Path::new(&v.dir));
    let add = |id: &str, request: &str| {
        v.run(&[
            "clinic", "add", "--clinic", id, "--name", "X", "--request", request, "--engine-host",
            "orca.example.jp",
        ])
    };
    add("sakura", &req).fails_with(&["clinic \"sakura\" exists already"]);
    add("momiji", &req).fails_with(&["is already the appliance of clinic \"sakura\""]);
    add("momiji", &v.path("nope.json")).fails_with(&["nope.json", "cannot read"]);
    write(Path::new(&v.path("bad.json")), "{\"kind\": \"something else\"}");
    add("momiji", &v.path("bad.json")).fails_with(&["bad.json", "not an appliance request"]);
    assert_unchanged(&before, &snapshot(Path::new(&v.dir)));

    // 3. No bundle before the uplink certificate, the engine CA and the credential.
    let bundle = |n: u32| v.path(&format!("bundle-{n}.age"));
    v.refused(
        "sakura",
        &["bundle", "build", "--clinic", "sakura", "--out", &bundle(0)],
        &[
            "cannot build a bundle yet",
            "uplink.csr",
            "--uplink-cert",
            "--engine-ca",
            "--engine-user",
        ],
    );
    assert!(!Path::new(&bundle(0)).exists());

    // 4. The cloud operator signs the uplink CSR; only that certificate is accepted.
    let op = v.path("operator");
    sh(&format!(
        "kakehashi cert init-ca --dir {op} --name Operator --no-passphrase"
    ))
    .ok();
    let csr = at("uplink.csr");
    let signed = |profile: &str, name: &str| {
        let out = v.path(&format!("{name}.pem"));
        sh(&format!(
            "kakehashi cert sign-csr --dir {op} --csr {csr} --profile {profile} --name {name} --san dns:gw.example --out {out}"
        ))
        .ok();
        out
    };
    let set_uplink =
        |cert: &str| ["clinic", "set", "--clinic", "sakura", "--uplink-cert", cert].map(str::to_owned);
    let server_profile = signed("server", "wrong-usage");
    v.refused(
        "sakura",
        &set_uplink(&server_profile),
        &["does not allow client authentication"],
    );
    sh(&format!(
        "kakehashi cert issue --dir {op} --profile uplink --name other-key --out {}",
        v.path("other")
    ))
    .ok();
    let other = v.path("other/other-key.pem");
    v.refused(
        "sakura",
        &set_uplink(&other),
        &["not for the appliance's uplink key"],
    );
    v.refused(
        "sakura",
        &set_uplink(&v.path("operator/ca.pem")),
        &["it is a CA certificate"],
    );
    assert!(!c.join("uplink.pem").exists());
    let uplink = signed("uplink", "gateway-uplink");
    let op_ca = format!("{op}/ca.pem");
    let set = v
        .run(&[
            "clinic", "set", "--clinic", "sakura", "--uplink-cert", &uplink, "--engine-ca", &op_ca,
            "--engine-user", "ormaster", "--engine-password-file", &engine_pass,
        ])
        .ok();
    assert!(
        set.contains("uplink certificate") && set.contains("ready"),
        "{set}"
    );
    v.refused(
        "sakura",
        &["clinic", "set", "--clinic", "sakura"],
        &["nothing to change"],
    );

    // 5. A TLS terminal: a PKCS#12 file whose password is printed once and stored nowhere.
    let pc1 = v.json(&[
        "terminal", "add", "--clinic", "sakura", "--name", "reception-1", "--kind", "tls", "--json",
    ]);
    let p12 = pc1["p12"]["path"].as_str().expect("p12 path").to_owned();
    let password = pc1["p12"]["password"].as_str().expect("password").to_owned();
    let pc1_serial = pc1["p12"]["serial"].as_str().expect("serial").to_owned();
    assert_eq!(p12, at("out/reception-1.p12"));
    assert_eq!(mode(Path::new(&p12)), 0o600);
    let info = tool(
        "openssl",
        &[
            "pkcs12",
            "-info",
            "-nokeys",
            "-in",
            &p12,
            "-passin",
            &format!("pass:{password}"),
        ],
    );
    assert!(
        info.stderr.contains("PBES2") && info.stderr.contains("AES-256-CBC"),
        "{}",
        info.stderr
    );
    let info = info.ok();
    assert!(info.contains("subject=CN = reception-1"), "{info}");
    let leaf = v.path("reception-1.pem");
    tool(
        "openssl",
        &[
            "pkcs12",
            "-in",
            &p12,
            "-passin",
            &format!("pass:{password}"),
            "-nokeys",
            "-clcerts",
            "-out",
            &leaf,
        ],
    )
    .ok();
    sh(&format!(
        "openssl verify -CAfile {root} -untrusted {clinic_ca} {leaf}"
    ))
    .ok();
    assert!(
        tool(
            "openssl",
            &[
                "pkcs12", "-nokeys", "-in", &p12, "-passin", "pass:wrong", "-out", "/dev/null"
            ]
        )
        .code
            != 0
    );
    let state = String::from_utf8(v.state("sakura")).expect("utf-8");
    assert!(!state.contains(&password));

    // 6. A WireGuard terminal: a wg-quick config that wg-quick accepts, its QR code as a PNG, and
    //    on the screen only when asked for (it holds the terminal's private key).
    let wg = v
        .run(&[
            "terminal", "add", "--clinic", "sakura", "--name", "tablet-1", "--kind", "wireguard",
        ])
        .ok();
    assert!(!wg.contains('█') && wg.contains("10.77.0.2"), "{wg}");
    assert!(wg.contains("out/tablet-1.png (mode 0600)"), "{wg}");
    let conf = at("out/tablet-1.conf");
    assert_eq!(mode(Path::new(&conf)), 0o600);
    assert_eq!(mode(&c.join("out/tablet-1.png")), 0o600);
    let stripped = sh(&format!("wg-quick strip {conf}")).ok();
    for want in [
        &format!("PublicKey = {GATEWAY_WG_PUBLIC}"),
        "Endpoint = clinic.example.jp:51820",
        "PresharedKey = ",
        "AllowedIPs = 10.77.0.1/32",
    ] {
        assert!(stripped.contains(want), "{want}: {stripped}");
    }
    let terminal_public = tool(
        "sh",
        &["-c", &format!("sed -n 's/^PrivateKey = //p' {conf} | wg pubkey")],
    )
    .ok()
    .trim()
    .to_owned();
    let png = std::fs::read(c.join("out/tablet-1.png")).expect("png");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // 7. An enrollment token: printed once, kept only as SHA-256 of its text.
    let enroll = v.json(&[
        "terminal", "add", "--clinic", "sakura", "--name", "laptop-1", "--kind", "tls", "--enroll",
        "--token-hours", "48", "--json",
    ]);
    let token = enroll["token"]["token"].as_str().expect("token").to_owned();
    assert!(
        token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{token}"
    );
    assert!(enroll["p12"].is_null());
    assert!(!c.join("out/laptop-1.p12").exists());
    let token_file = v.path("token.txt");
    write(Path::new(&token_file), &token);
    let token_hash = sha256sum(&token_file);
    let state = String::from_utf8(v.state("sakura")).expect("utf-8");
    assert!(!state.contains(&token), "the token itself is stored");
    assert!(state.contains(&token_hash), "the token's hash is not stored");

    // 8. People: a weak password refused; a generated one printed once.
    let weak = v.path("weak");
    write(Path::new(&weak), "short\n");
    let user_add = |id: &str, file: &str| {
        [
            "user", "add", "--clinic", "sakura", "--id", id, "--password-file", file,
        ]
        .map(str::to_owned)
    };
    v.refused(
        "sakura",
        &user_add("alice", &weak),
        &["password refused: it must have at least 10 characters"],
    );
    let same = v.path("same");
    write(Path::new(&same), "Reception01\n");
    v.refused(
        "sakura",
        &user_add("reception01", &same),
        &["password refused: it must not be the user ID"],
    );
    let made = v
        .run(&["user", "add", "--clinic", "sakura", "--id", "alice"])
        .ok();
    let generated = made
        .split_whitespace()
        .skip_while(|w| *w != "password")
        .nth(1)
        .expect("a generated password")
        .to_owned();
    let good = v.path("good");
    write(Path::new(&good), "a long password\n");
    v.run(&[
        "user",
        "add",
        "--clinic",
        "sakura",
        "--id",
        "bob",
        "--password-file",
        &good,
        "--upstream-user",
        "bob-at-orca",
        "--upstream-password-file",
        &engine_pass,
    ])
    .ok();
    let users = v.json(&["user", "list", "--clinic", "sakura", "--json"]);
    assert_eq!(users.as_array().map(Vec::len), Some(2));
    assert_eq!(users[1]["upstream_user"], "bob-at-orca");
    assert!(!users.to_string().contains("argon2"), "{users}");

    // 9. The bundle: opens for the appliance, signed by the vendor, version 1, then 2.
    let built = v
        .run(&["bundle", "build", "--clinic", "sakura", "--out", &bundle(1)])
        .ok();
    assert!(
        built.contains("version 1") && built.contains(&fingerprint),
        "{built}"
    );
    assert_eq!(mode(Path::new(&bundle(1))), 0o600);
    let b1 = open_bundle(&bundle(1), &appliance, &fingerprint);
    assert_eq!(
        (b1.version, b1.clinic.as_str(), b1.clinic_name.as_str()),
        (1, "sakura", "Sakura Clinic")
    );
    assert_eq!(b1.appliance, appliance.to_public().to_string());
    assert_eq!(b1.vendor_key, fingerprint);
    let names: Vec<&str> = b1.terminals.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["reception-1", "tablet-1", "laptop-1"]);
    let peer = b1.terminals[1]
        .wireguard
        .as_ref()
        .expect("tablet-1 has WireGuard");
    assert_eq!(peer.public_key, terminal_public);
    assert_eq!(peer.address.to_string(), "10.77.0.2");
    assert!(peer.preshared_key.is_some());
    assert_eq!(b1.tokens.len(), 1);
    assert_eq!(
        (b1.tokens[0].name.as_str(), b1.tokens[0].sha256.as_str()),
        ("laptop-1", token_hash.as_str())
    );
    assert_eq!(b1.users.len(), 2);
    assert!(provisioning_shared::password::verify_password(
        &b1.users[0].hash,
        generated.as_bytes()
    ));
    assert_eq!(
        b1.users[1].upstream.as_ref().map(|u| u.user.as_str()),
        Some("bob-at-orca")
    );
    assert_eq!(
        (b1.engine.url.as_str(), b1.engine.user.as_str()),
        ("https://orca.example.jp", "ormaster")
    );
    assert_eq!(b1.engine.password.expose(), "engine secret");
    assert_eq!(b1.settings.engine_host, "orca.example.jp");
    assert_eq!(
        b1.settings.wireguard.as_ref().map(|w| w.address.as_str()),
        Some("10.77.0.1/24")
    );
    let pem_of = |path: &str| std::fs::read_to_string(path).expect("pem");
    assert_eq!(b1.certificates.vendor_root, pem_of(&root));
    assert_eq!(b1.certificates.clinic_ca, pem_of(&clinic_ca));
    assert_eq!(b1.certificates.server, pem_of(&at("server.pem")));
    assert_eq!(b1.certificates.issuing_ca, pem_of(&at("issuing-ca.pem")));
    assert_eq!(b1.certificates.uplink.as_deref(), Some(pem_of(&uplink).as_str()));
    assert!(b1.revoked.is_empty());
    let other_appliance = age::x25519::Identity::generate();
    let bytes = std::fs::read(bundle(1)).expect("bundle");
    assert!(provisioning_shared::bundle::open(&bytes, &other_appliance, None).is_err());
    v.run(&["bundle", "build", "--clinic", "sakura", "--out", &bundle(2)])
        .ok();
    assert_eq!(open_bundle(&bundle(2), &appliance, &fingerprint).version, 2);

    // 10. Revocation: the next bundle's CRL lists the certificate, and names the terminal.
    let revoked = v
        .run(&[
            "terminal", "revoke", "--clinic", "sakura", "--name", "reception-1",
        ])
        .ok();
    assert!(
        revoked.contains("next bundle") && revoked.contains(&pc1_serial),
        "{revoked}"
    );
    v.run(&["bundle", "build", "--clinic", "sakura", "--out", &bundle(3)])
        .ok();
    let b3 = open_bundle(&bundle(3), &appliance, &fingerprint);
    assert_eq!(b3.version, 3);
    assert_eq!(b3.revoked, ["reception-1"]);
    assert!(b3.terminals.iter().all(|t| t.name != "reception-1"));
    let crl = v.path("clinic.crl");
    write(Path::new(&crl), &b3.certificates.clinic_crl);
    let text = sh(&format!("openssl crl -in {crl} -noout -text")).ok();
    assert!(
        text.contains(&format!("Serial Number: {pc1_serial}")),
        "{pc1_serial}: {text}"
    );
    assert!(text.contains("Key Compromise"), "{text}");
    sh(&format!("openssl crl -in {crl} -noout -CAfile {clinic_ca}")).ok();
    let checked = sh(&format!(
        "openssl verify -crl_check -CRLfile {crl} -CAfile {root} -untrusted {clinic_ca} {leaf}"
    ));
    assert_ne!(checked.code, 0, "a revoked certificate still verifies");
    assert!(format!("{}{}", checked.stdout, checked.stderr).contains("revoked"));

    // 11. Listings, all with --json, none with a secret.
    let terminals = v.json(&["terminal", "list", "--json"]);
    let listed = terminals.to_string();
    assert_eq!(terminals.as_array().map(Vec::len), Some(2), "{listed}");
    assert!(
        !listed.contains(&token) && !listed.contains("preshared"),
        "{listed}"
    );
    let clinics = v.json(&["clinic", "list", "--json"]);
    assert_eq!(clinics[0]["id"], "sakura");
    assert_eq!(clinics[0]["bundle_version"], 3);
    assert_eq!(clinics[0]["ready"], true);
    let show = v.json(&["clinic", "show", "--clinic", "sakura", "--json"]);
    assert_eq!(show["engine_user"], "ormaster");
    assert!(!show.to_string().contains("engine secret"));
}

#[test]
fn every_refusal_leaves_clinic_json_as_it_was() {
    let v = Vendor::new();
    v.run(&["vendor", "init"]).ok();
    let (req, _) = request(&v.tmp.path().join("a1"));
    v.run(&[
        "clinic", "add", "--clinic", "c1", "--name", "Clinic One", "--request", &req, "--engine-host",
        "orca.example.jp",
    ])
    .ok();
    let out = v.path("out");
    v.run(&[
        "terminal", "add", "--clinic", "c1", "--name", "pc-1", "--kind", "tls", "--out", &out,
    ])
    .ok();
    let weak = v.path("weak");
    write(Path::new(&weak), "123456789\n");
    let wrong = v.path("wrong");
    write(Path::new(&wrong), "not the passphrase\n");
    let refusals: &[(&[&str], &[&str])] = &[
        (
            &[
                "terminal", "add", "--clinic", "c1", "--name", "pc-1", "--kind", "tls", "--out", &out,
            ],
            &["has a terminal \"pc-1\" already"],
        ),
        (
            &[
                "terminal", "add", "--clinic", "c1", "--name", "tab", "--kind", "wireguard",
            ],
            &["has no WireGuard", "--wg-endpoint"],
        ),
        (
            &[
                "terminal", "add", "--clinic", "c1", "--name", "tab", "--kind", "wireguard", "--enroll",
            ],
            &["--enroll", "--kind tls or both"],
        ),
        (
            &[
                "terminal", "add", "--clinic", "c1", "--name", "pc-2", "--kind", "tls", "--enroll",
                "--token-hours", "721",
            ],
            &["--token-hours 721: expected 1 to 720"],
        ),
        (
            &[
                "terminal", "add", "--clinic", "c1", "--name", "../x", "--kind", "tls",
            ],
            &["not a usable name"],
        ),
        (
            &[
                "terminal", "add", "--clinic", "c1", "--name", "kakehashi-gateway", "--kind", "tls",
            ],
            &["gateway's own certificate"],
        ),
        (
            &["terminal", "disable", "--clinic", "c1", "--name", "ghost"],
            &["has no terminal \"ghost\""],
        ),
        (
            &["terminal", "enable", "--clinic", "c1", "--name", "pc-1"],
            &["already enabled"],
        ),
        (
            &["terminal", "revoke", "--clinic", "c1", "--name", "ghost"],
            &["has no terminal \"ghost\""],
        ),
        (
            &[
                "user", "add", "--clinic", "c1", "--id", "carol", "--password-file", &weak,
            ],
            &["at least 10 characters"],
        ),
        (
            &["user", "add", "--clinic", "c1", "--id", "bad id"],
            &["user ID \"bad id\""],
        ),
        (
            &["user", "lock", "--clinic", "c1", "--id", "ghost"],
            &["has no user \"ghost\""],
        ),
        (
            &["clinic", "set", "--clinic", "c1", "--wg-network", "10.1.0.1/24"],
            &["has no WireGuard"],
        ),
        (
            &["clinic", "set", "--clinic", "c1", "--engine-host", "*.example.jp"],
            &["wildcard"],
        ),
        (
            &["clinic", "set", "--clinic", "c1", "--engine-ca", &weak],
            &["weak", "not a valid"],
        ),
        (
            &["bundle", "build", "--clinic", "c1", "--out", &v.path("b.age")],
            &["cannot build a bundle yet"],
        ),
        (&["clinic", "show", "--clinic", "nope"], &["no clinic \"nope\""]),
    ];
    let before = snapshot(&v.clinic_dir("c1"));
    for (args, needles) in refusals {
        v.refused("c1", args, needles);
    }
    // A wrong passphrase, from a file or from the environment, signs nothing.
    let pc2 = [
        "terminal", "add", "--clinic", "c1", "--name", "pc-2", "--kind", "tls", "--out", &out,
    ];
    let mut with_wrong = vec!["provision", "--dir", &v.dir, "--passphrase-file", &wrong];
    with_wrong.extend_from_slice(&pc2);
    kakehashi(&with_wrong).fails_with(&["wrong passphrase"]);
    let mut from_env = vec!["provision", "--dir", &v.dir];
    from_env.extend_from_slice(&pc2);
    kakehashi_env(&from_env, &[("KAKEHASHI_CA_PASSPHRASE", "not it either")])
        .fails_with(&["wrong passphrase"]);
    kakehashi(&from_env).fails_with(&["no passphrase was given", "--passphrase-file"]);
    // A refusal that needs no key comes before the passphrase is asked for.
    let pc1 = [
        "provision", "--dir", &v.dir, "terminal", "add", "--clinic", "c1", "--name", "pc-1", "--kind", "tls",
    ];
    kakehashi(&pc1).fails_with(&["has a terminal \"pc-1\" already"]);
    assert_unchanged(&before, &snapshot(&v.clinic_dir("c1")));
    assert!(!Path::new(&out).join("pc-2.p12").exists());
    kakehashi_env(&from_env, &[("KAKEHASHI_CA_PASSPHRASE", PASS)]).ok();
    kakehashi(&["provision", "--dir", &v.path("elsewhere"), "clinic", "list"])
        .fails_with(&["no vendor here", "vendor init"]);
}

#[test]
fn a_passphrase_others_can_read_is_refused_and_a_missing_one_names_the_key_it_unlocks() {
    let v = Vendor::new();
    let (req, _) = request(&v.tmp.path().join("appliance"));
    v.run(&["vendor", "init", "--name", "Test Vendor Root"]).ok();
    v.run(&[
        "clinic",
        "add",
        "--clinic",
        "sakura",
        "--name",
        "Sakura",
        "--request",
        &req,
        "--engine-host",
        "orca.example.jp",
        "--wg-endpoint",
        "clinic.example.jp:51820",
    ])
    .ok();
    // Readable by others: refused, with what to do.
    let open = v.path("open.pass");
    write(Path::new(&open), format!("{PASS}\n"));
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let before = v.state("sakura");
    kakehashi(&[
        "provision", "--dir", &v.dir, "--passphrase-file", &open, "terminal", "add", "--clinic", "sakura",
        "--name", "pc-1", "--kind", "tls",
    ])
    .fails_with(&[&format!(
        "{open}: not a valid passphrase file: others may read it (mode 644): `chmod 600 {open}`"
    )]);
    // No passphrase at all: the key named is the clinic CA's, which this command unlocks.
    kakehashi(&[
        "provision", "--dir", &v.dir, "terminal", "add", "--clinic", "sakura", "--name", "pc-1", "--kind",
        "tls",
    ])
    .fails_with(&[&format!(
        "{}/clinics/sakura/clinic-ca/ca.key: the key is encrypted and no passphrase was given",
        v.dir
    )]);
    assert!(v.state("sakura") == before, "nothing changed");
    // The QR code (it holds the terminal's keys) is drawn only when asked for.
    let shown = v
        .run(&[
            "terminal", "add", "--clinic", "sakura", "--name", "tablet-2", "--kind", "wireguard", "--show-qr",
        ])
        .ok();
    assert!(shown.contains('█'), "{shown}");
}
