//! The vendor workflow end to end, on the real binary: `gateway init` on the appliance, the
//! vendor's `provision …`, `gateway import-bundle`, then terminals we did not write (curl with the
//! issued PKCS#12, openssl + curl over EST) reach engine-sim through the gateway. Every refusal
//! of a bundle is audited and changes nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::e2e::est;
use crate::support::*;

const ENGINE_HOST: &str = "engine.clinic-one.test";

/// A cloud (engine-sim with TLS that wants client certificates, from `demo --setup-only`; the
/// demo's CA plays the cloud operator's CA), a vendor, and an initialized appliance.
struct World {
    tmp: tempfile::TempDir,
    cloud: PathBuf,
    engine_port: u16,
    vendor: PathBuf,
    appliance: PathBuf,
    passphrase: PathBuf,
    gateway_port: u16,
    est_port: u16,
    wg_port: u16,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cloud = tmp.path().join("cloud");
        let engine_port = free_port();
        tool(
            &bin_str(),
            &[
                "demo",
                "--setup-only",
                "--dir",
                s(&cloud),
                "--engine-listen",
                &format!("127.0.0.1:{engine_port}"),
                "--listen",
                &format!("127.0.0.1:{}", free_port()),
                "--admin-listen",
                &format!("127.0.0.1:{}", free_port()),
                "--est-listen",
                &format!("127.0.0.1:{}", free_port()),
                "--wg-listen",
                &format!("127.0.0.1:{}", free_udp_port()),
            ],
        )
        .ok();
        let passphrase = tmp.path().join("vendor.passphrase");
        write(&passphrase, "correct horse battery staple\n");
        let w = World {
            vendor: tmp.path().join("vendor"),
            appliance: tmp.path().join("appliance"),
            cloud,
            engine_port,
            passphrase,
            gateway_port: free_port(),
            est_port: free_port(),
            wg_port: free_udp_port(),
            tmp,
        };
        w.provision(&["vendor", "init"]).ok();
        kakehashi(&["gateway", "init", "--data-dir", s(&w.appliance)]).ok();
        w
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `kakehashi provision --dir VENDOR --passphrase-file … ARGS`.
    fn provision(&self, args: &[&str]) -> Run {
        let mut all = vec![
            "provision",
            "--dir",
            s(&self.vendor),
            "--passphrase-file",
            s(&self.passphrase),
        ];
        all.extend_from_slice(args);
        kakehashi(&all)
    }

    /// `clinic add` for `request` (an appliance's request.json), with the cloud's engine.
    fn add_clinic(&self, clinic: &str, request: &Path) {
        let password = self.path("engine.password");
        write(&password, "ormaster\n");
        self.provision(&[
            "clinic",
            "add",
            "--clinic",
            clinic,
            "--name",
            "Clinic One",
            "--request",
            s(request),
            "--engine-host",
            ENGINE_HOST,
            "--engine-url",
            &format!("https://127.0.0.1:{}", self.engine_port),
            "--engine-ca",
            s(&self.cloud.join("ca.pem")),
            "--engine-user",
            "ormaster",
            "--engine-password-file",
            s(&password),
            "--listen",
            &format!("127.0.0.1:{}", self.gateway_port),
            "--est-listen",
            &format!("127.0.0.1:{}", self.est_port),
            "--admin-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--wg-endpoint",
            &format!("127.0.0.1:{}", self.wg_port),
            "--wg-listen",
            &format!("127.0.0.1:{}", self.wg_port),
        ])
        .ok();
        // The cloud operator signs the uplink request; the vendor installs the certificate.
        let csr = self.vendor.join("clinics").join(clinic).join("uplink.csr");
        let uplink = self.path(&format!("{clinic}-uplink.pem"));
        kakehashi(&[
            "cert",
            "sign-csr",
            "--dir",
            s(&self.cloud),
            "--csr",
            s(&csr),
            "--profile",
            "uplink",
            "--name",
            &format!("{clinic}-uplink"),
            "--out",
            s(&uplink),
            "--replace",
        ])
        .ok();
        self.provision(&["clinic", "set", "--clinic", clinic, "--uplink-cert", s(&uplink)])
            .ok();
    }

    fn build(&self, clinic: &str, name: &str) -> PathBuf {
        let out = self.path(name);
        self.provision(&["bundle", "build", "--clinic", clinic, "--out", s(&out)])
            .ok();
        out
    }

    fn import(&self, bundle: &Path, extra: &[&str]) -> Run {
        let mut args = vec![
            "gateway",
            "import-bundle",
            s(bundle),
            "--data-dir",
            s(&self.appliance),
        ];
        args.extend_from_slice(extra);
        kakehashi(&args)
    }

    fn pin(&self) -> String {
        std::fs::read_to_string(self.vendor.join("vendor-key.txt"))
            .expect("vendor-key.txt")
            .trim()
            .to_owned()
    }

    fn clinic_ca(&self, clinic: &str) -> PathBuf {
        self.vendor
            .join("clinics")
            .join(clinic)
            .join("clinic-ca")
            .join("ca.pem")
    }

    /// curl to the gateway as the engine's host name; the status (0 when TLS refused) and body.
    fn curl(&self, clinic: &str, options: &str, path: &str) -> (u16, String) {
        let out = sh(&format!(
            "curl -sS -m 10 -w ~STATUS~%{{http_code}} --resolve {ENGINE_HOST}:{port}:127.0.0.1 --cacert {ca} \
             {options} https://{ENGINE_HOST}:{port}{path}",
            port = self.gateway_port,
            ca = s(&self.clinic_ca(clinic)),
        ));
        let (body, code) = out.stdout.rsplit_once("~STATUS~").expect("status");
        (
            code.trim().parse().expect("status"),
            format!("{body}{}", out.stderr),
        )
    }

    /// What the appliance holds, minus the audit log (which records every refusal) and SQLite's
    /// transient files: equal before and after a refused import.
    fn state(&self) -> std::collections::BTreeMap<PathBuf, (Vec<u8>, u32)> {
        let mut all = snapshot(&self.appliance);
        all.retain(|p, _| {
            let name = p.to_string_lossy();
            // The audit log records the refusals: `audit.head`, `audit.lock` and its segments.
            !name.starts_with("audit.")
                && !name.starts_with("audit/")
                && !name.ends_with("-wal")
                && !name.ends_with("-shm")
        });
        all
    }

    fn audit(&self) -> String {
        kakehashi(&["audit", "export", "--data-dir", s(&self.appliance)]).ok()
    }
}

fn bin_str() -> String {
    bin().to_str().expect("utf-8").to_owned()
}

/// A string in `--json` output, by its path of keys.
fn field(json: &str, path: &[&str]) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    path.iter()
        .try_fold(&v, |v, key| v.get(key))
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("no {path:?} in {json}"))
        .to_owned()
}

#[test]
fn the_whole_vendor_workflow_reaches_the_engine_and_refuses_every_bad_bundle() {
    let w = World::new();
    w.add_clinic("c1", &w.appliance.join("request.json"));
    let tls = w
        .provision(&[
            "terminal", "add", "--clinic", "c1", "--name", "reception-1", "--kind", "tls", "--json",
        ])
        .ok();
    let p12 = field(&tls, &["p12", "path"]);
    let p12_password = field(&tls, &["p12", "password"]);
    let enroll = w
        .provision(&[
            "terminal", "add", "--clinic", "c1", "--name", "laptop-1", "--kind", "tls", "--enroll", "--json",
        ])
        .ok();
    let first_token = field(&enroll, &["token", "token"]);
    // The first token was lost: a fresh one replaces it.
    let fresh = w
        .provision(&[
            "terminal", "token", "--clinic", "c1", "--name", "laptop-1", "--json",
        ])
        .ok();
    let token = field(&fresh, &["token"]);
    let wg = w
        .provision(&[
            "terminal", "add", "--clinic", "c1", "--name", "tablet-1", "--kind", "wireguard", "--json",
            "--scopes", "reference",
        ])
        .ok();
    let wg_config = field(&wg, &["wireguard", "config"]);
    let staff = w.path("staff.password");
    write(&staff, "a-long-staff-password\n");
    w.provision(&[
        "user",
        "add",
        "--clinic",
        "c1",
        "--id",
        "reception",
        "--password-file",
        s(&staff),
    ])
    .ok();
    w.provision(&[
        "user",
        "add",
        "--clinic",
        "c1",
        "--id",
        "display",
        "--password-file",
        s(&staff),
        "--scopes",
        "reference",
    ])
    .ok();
    let b1 = w.build("c1", "b1.bundle");

    // The first import needs the vendor's fingerprint confirmed; nothing changes until then.
    let before = w.state();
    w.import(&b1, &[])
        .fails_with(&["no vendor key is pinned", &w.pin()]);
    let mistyped = format!("SHA256:{}", "AB".repeat(32));
    w.import(&b1, &["--trust-vendor", &mistyped])
        .fails_with(&[&format!(
            "the bundle is signed by key {}, not by the key given with --trust-vendor ({mistyped}): \
         check the fingerprint with your vendor",
            w.pin()
        )]);
    assert_unchanged(&before, &w.state());
    let out = w.import(&b1, &["--trust-vendor", &w.pin()]).ok();
    assert!(out.contains("Installed clinic c1 bundle version 1"), "{out}");
    assert_eq!(
        std::fs::read_to_string(w.appliance.join("vendor.pin"))
            .unwrap()
            .trim(),
        w.pin()
    );
    for secret in [
        "upstream.password", "device.key", "issuing-ca.passphrase", "server.key", "uplink.key",
    ] {
        assert_eq!(mode(&w.appliance.join(secret)), 0o600, "{secret}");
    }
    kakehashi(&[
        "gateway",
        "check",
        "--config",
        s(&w.appliance.join("gateway.toml")),
    ])
    .ok();
    // The WireGuard terminal is in the appliance's inventory with the key of the config the
    // vendor handed out, whose peer is this appliance's WireGuard key.
    let config = std::fs::read_to_string(&wg_config).unwrap();
    let public = sh_stdin("wg pubkey", &field_in(&config, "PrivateKey = "));
    let listed = kakehashi(&["terminal", "list", "--json", "--data-dir", s(&w.appliance)]).ok();
    assert!(
        listed.contains(public.trim()) && listed.contains("tablet-1"),
        "{listed}"
    );
    // The scopes the vendor declared arrived with the bundle.
    let terminals: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let scopes_of = |list: &serde_json::Value, key: &str, name: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|t| t[key] == name)
            .map(|t| t["scopes"].clone())
            .unwrap()
    };
    assert_eq!(
        scopes_of(&terminals, "name", "tablet-1"),
        serde_json::json!(["reference"])
    );
    assert_eq!(
        scopes_of(&terminals, "name", "reception-1"),
        serde_json::json!(["client", "reference", "write"])
    );
    let people: serde_json::Value =
        serde_json::from_str(&kakehashi(&["user", "list", "--json", "--data-dir", s(&w.appliance)]).ok())
            .unwrap();
    assert_eq!(
        scopes_of(&people, "id", "display"),
        serde_json::json!(["reference"])
    );
    let request = std::fs::read_to_string(w.appliance.join("request.json")).unwrap();
    assert!(request.contains(&field_in(&config, "PublicKey = ")), "{config}");

    let _engine = Server::start(&["engine-sim", "--config", s(&w.cloud.join("engine.toml"))]);
    let gateway = Server::start(&["gateway", "run", "--config", s(&w.appliance.join("gateway.toml"))]);
    assert!(
        gateway.url.contains(&w.gateway_port.to_string()),
        "{}",
        gateway.url
    );

    // The vendor's PKCS#12 and the staff password reach the cloud engine.
    let p12_auth = format!("--cert-type P12 --cert {p12}:{p12_password} -u reception:a-long-staff-password");
    let (status, body) = w.curl("c1", &p12_auth, "/api01rv2/patientgetv2?id=1&format=json");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Api_Result"), "{body}");
    // The person the vendor gave only `reference` reads, and cannot write.
    let display = format!("--cert-type P12 --cert {p12}:{p12_password} -u display:a-long-staff-password");
    assert_eq!(
        w.curl("c1", &display, "/api01rv2/patientgetv2?id=1&format=json")
            .0,
        200
    );
    let (status, body) = w.curl(
        "c1",
        &format!(
            "{display} -X POST -H Content-Type:application/json -d {{\"acceptreq\":{{\"Patient_ID\":\"1\"}}}}"
        ),
        "/orca11/acceptmodv2?class=01&format=json",
    );
    assert_eq!(status, 403, "{body}");
    let (status, _) = w.curl(
        "c1",
        &format!("--cert-type P12 --cert {p12}:{p12_password} -u reception:wrong-password-1"),
        "/api01rv2/patientgetv2?id=1",
    );
    assert_eq!(status, 401);

    // The vendor's enrollment token works over EST with openssl and curl, once.
    let body = est::csr(w.tmp.path(), "laptop-1", "laptop-1");
    let enroll_with = |token: &str| {
        let out = sh(&format!(
            "curl -sS -w ~STATUS~%{{http_code}} --cacert {ca} -u laptop-1:{token} -H Content-Type:application/pkcs10 \
             --data-binary @{body} --resolve {ENGINE_HOST}:{port}:127.0.0.1 \
             https://{ENGINE_HOST}:{port}/.well-known/est/simpleenroll",
            ca = s(&w.clinic_ca("c1")),
            port = w.est_port,
        ));
        let (text, code) = out.stdout.rsplit_once("~STATUS~").expect("status");
        (
            code.trim().parse::<u16>().expect("status"),
            format!("{text}{}", out.stderr),
        )
    };
    let enroll = || enroll_with(&token);
    let (code, why) = enroll_with(&first_token);
    assert_eq!(code, 401, "the replaced token: {why}");
    let (code, answer) = enroll();
    assert_eq!(code, 200, "{answer}");
    let cert = est::print_certs(w.tmp.path(), &answer, "laptop-1");
    let laptop = format!(
        "--cert {cert} --key {} -u reception:a-long-staff-password",
        s(&w.tmp.path().join("laptop-1.key"))
    );
    let (status, body) = w.curl("c1", &laptop, "/api01rv2/patientgetv2?id=1");
    assert_eq!(status, 200, "{body}");
    assert_eq!(enroll().0, 401, "a token works once");

    // The vendor's PKCS#12 terminal renews on the appliance, over EST simplereenroll with its
    // current certificate: the new one comes from the issuing CA and works at once.
    let pem = w.path("reception-1.pem");
    tool(
        "openssl",
        &[
            "pkcs12",
            "-in",
            &p12,
            "-passin",
            &format!("pass:{p12_password}"),
            "-nodes",
            "-out",
            s(&pem),
        ],
    )
    .ok();
    let renewal = est::csr(w.tmp.path(), "reception-1-new", "reception-1");
    let out = sh(&format!(
        "curl -sS -f --cacert {ca} --cert {cert} -H Content-Type:application/pkcs10 --data-binary @{renewal} \
         --resolve {ENGINE_HOST}:{port}:127.0.0.1 https://{ENGINE_HOST}:{port}/.well-known/est/simplereenroll",
        ca = s(&w.clinic_ca("c1")),
        cert = s(&pem),
        port = w.est_port,
    ))
    .ok();
    let renewed = est::print_certs(w.tmp.path(), &out, "reception-1-renewed");
    let issuer = tool("openssl", &["x509", "-in", &renewed, "-noout", "-issuer"]).ok();
    assert!(issuer.contains("issuing-ca"), "{issuer}");
    let with_renewed = format!(
        "--cert {renewed} --key {} -u reception:a-long-staff-password",
        s(&w.tmp.path().join("reception-1-new.key"))
    );
    let (status, body) = w.curl("c1", &with_renewed, "/api01rv2/patientgetv2?id=1");
    assert_eq!(status, 200, "{body}");

    // Refusals: each audited, each leaving the appliance as it was.
    let b2 = w.build("c1", "b2.bundle");
    let mut tampered = std::fs::read(&b2).unwrap();
    let i = tampered.len() - 40;
    tampered[i] ^= 0x01;
    write(&w.path("tampered.bundle"), &tampered);
    // Another appliance's bundle (the same vendor, another clinic).
    let other = w.path("other-appliance");
    kakehashi(&["gateway", "init", "--data-dir", s(&other)]).ok();
    w.add_clinic("c2", &other.join("request.json"));
    let foreign = w.build("c2", "other-appliance.bundle");
    // Another vendor, for this very appliance's request.
    let rogue = World {
        vendor: w.path("rogue-vendor"),
        ..World::shallow(&w)
    };
    rogue.provision(&["vendor", "init"]).ok();
    rogue.add_clinic("c1", &w.appliance.join("request.json"));
    let rogue_bundle = rogue.build("c1", "rogue.bundle");

    // One byte of the encryption header changed: damage, not "another appliance".
    let mut header = std::fs::read(&b2).unwrap();
    let start = header.iter().position(|&b| b == b'\n').unwrap() + 1;
    // Another base64 letter inside the recipient's key share: a share that still parses, for
    // another key (a character that is not base64 would make it a damaged header instead).
    header[start + 40] = if header[start + 40] == b'A' { b'B' } else { b'A' };
    write(&w.path("header.bundle"), &header);
    write(&w.path("empty.bundle"), "");
    write(&w.path("text.bundle"), "hello\n");

    let before = w.state();
    w.import(&w.path("tampered.bundle"), &[])
        .fails_with(&["damaged or was changed"]);
    w.import(&w.path("header.bundle"), &[]).fails_with(&[
        "the bundle is damaged or was changed after it was made (its encryption header does not \
         open with this appliance's key)",
    ]);
    w.import(&w.path("empty.bundle"), &[])
        .fails_with(&["not a Kakehashi bundle: the file is empty"]);
    w.import(&w.path("text.bundle"), &[]).fails_with(&[
        "not a Kakehashi bundle: it does not begin with the line \"kakehashi-bundle/1 …\" that every \
         bundle begins with (another file, or not the whole of a bundle)",
    ]);
    w.import(&foreign, &[])
        .fails_with(&["encrypted for another appliance"]);
    w.import(&rogue_bundle, &[])
        .fails_with(&["not by the pinned vendor key"]);
    w.import(&rogue_bundle, &["--trust-vendor", &rogue.pin()])
        .fails_with(&["is not the vendor key this appliance has pinned"]);
    w.import(&b1, &[])
        .fails_with(&["bundle version 1 is not newer than the installed version 1"]);
    assert_unchanged(&before, &w.state());
    let audit = w.audit();
    assert_eq!(audit.matches("bundle refused").count(), 10, "{audit}");
    assert!(audit.contains("bundle installed: clinic c1 version 1"), "{audit}");
    kakehashi(&["audit", "verify", "--data-dir", s(&w.appliance)]).ok();

    // Live: the vendor revokes the PKCS#12 terminal and locks nobody out but it; the running
    // gateway applies bundle 3 without a restart.
    // Nothing but the version changed in the settings: no restart is asked for.
    let out = w.import(&b2, &[]).ok();
    assert!(
        out.contains("A running gateway applies it within a second, without dropping connections.")
            && !out.contains("restart"),
        "{out}"
    );
    w.provision(&["terminal", "revoke", "--clinic", "c1", "--name", "reception-1"])
        .ok();
    let b3 = w.build("c1", "b3.bundle");
    // Found by its configuration this time, as the systemd unit's KAKEHASHI_CONFIG names it.
    let config = w.appliance.join("gateway.toml");
    let out = kakehashi_env(
        &["gateway", "import-bundle", s(&b3)],
        &[("KAKEHASHI_CONFIG", s(&config))],
    )
    .ok();
    assert!(out.contains("version 3 (was 2)"), "{out}");
    assert!(
        !out.contains("Note:"),
        "the configuration is the one the import writes: {out}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _) = w.curl("c1", &p12_auth, "/api01rv2/patientgetv2?id=1");
        if status != 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the revoked terminal still gets in"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, body) = w.curl("c1", &laptop, "/api01rv2/patientgetv2?id=1");
    assert_eq!(status, 200, "the enrolled terminal carries on: {body}");
    // Its renewed certificate from the appliance's issuing CA is revoked there too.
    assert_ne!(w.curl("c1", &with_renewed, "/api01rv2/patientgetv2?id=1").0, 200);
    let listed = kakehashi(&["terminal", "list", "--json", "--data-dir", s(&w.appliance)]).ok();
    assert!(!listed.contains("reception-1"), "{listed}");
    let crl = tool(
        "openssl",
        &["crl", "-in", s(&w.appliance.join("crl.pem")), "-noout", "-text"],
    )
    .ok();
    assert!(crl.contains("Revoked Certificates"), "{crl}");
}

impl World {
    /// The same cloud and appliance, for a second vendor.
    fn shallow(w: &World) -> World {
        World {
            tmp: tempfile::tempdir().expect("tempdir"),
            cloud: w.cloud.clone(),
            engine_port: w.engine_port,
            vendor: w.vendor.clone(),
            appliance: w.appliance.clone(),
            passphrase: w.passphrase.clone(),
            gateway_port: w.gateway_port,
            est_port: w.est_port,
            wg_port: w.wg_port,
        }
    }
}

/// The rest of the first line of `text` that starts with `prefix`.
fn field_in(text: &str, prefix: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {text}"))
        .to_owned()
}

/// Runs a command with `input` on its standard input; its standard output.
fn sh_stdin(line: &str, input: &str) -> String {
    use std::io::Write as _;
    let mut words = line.split_whitespace();
    let mut child = std::process::Command::new(words.next().expect("a program"))
        .args(words)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{line} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
