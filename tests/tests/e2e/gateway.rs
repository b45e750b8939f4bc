//! `kakehashi gateway`: the TLS front door, judged by curl and openssl as terminals, with
//! engine-sim as the cloud, both started from a demo clinic written by `demo --setup-only`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::*;

type Tls = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// A demo clinic with its cloud engine and gateway running.
pub(crate) struct Clinic {
    pub(crate) dir: tempfile::TempDir,
    /// The cloud engine, kept running for the clinic's lifetime.
    pub(crate) engine: Server,
    pub(crate) gateway: Server,
    /// `ID:password` from user.txt.
    pub(crate) user: String,
    pub(crate) admin: String,
}

impl Clinic {
    /// `demo --setup-only`, `extra` appended to gateway.toml (with `ENGINE_PORT` replaced by the
    /// cloud engine's port), then both processes.
    pub(crate) fn start(extra: &str) -> Clinic {
        Clinic::start_with(extra, "", &[])
    }

    /// [`Clinic::start`], with `engine_extra` appended to engine.toml and `env` for the gateway.
    pub(crate) fn start_with(extra: &str, engine_extra: &str, env: &[(&str, &str)]) -> Clinic {
        Clinic::adopt_with(Clinic::setup("127.0.0.1"), extra, engine_extra, env)
    }

    /// `demo --setup-only` into `dir/clinic`, WireGuard listening on `wg_host` (`0.0.0.0` for
    /// terminals in other network namespaces).
    pub(crate) fn setup(wg_host: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        sh(&format!(
            "kakehashi demo --setup-only --dir {} {}",
            s(&dir.path().join("clinic")),
            DemoPorts::new(wg_host).line()
        ))
        .ok();
        dir
    }

    /// Runs the clinic that `demo --setup-only` wrote into `dir/clinic`, `extra` appended to its
    /// gateway.toml.
    pub(crate) fn adopt(dir: tempfile::TempDir, extra: &str) -> Clinic {
        Clinic::adopt_with(dir, extra, "", &[])
    }

    fn adopt_with(dir: tempfile::TempDir, extra: &str, engine_extra: &str, env: &[(&str, &str)]) -> Clinic {
        Clinic::adopt_in(dir, extra, engine_extra, env, None)
    }

    /// [`Clinic::adopt`] with the cloud engine in network namespace `cloud` (its engine.toml
    /// made to listen there on every address, same port).
    pub(crate) fn adopt_with_cloud_in(dir: tempfile::TempDir, extra: &str, cloud: &str) -> Clinic {
        let toml = dir.path().join("clinic/engine.toml");
        let text = std::fs::read_to_string(&toml)
            .unwrap()
            .replace("127.0.0.1:", "0.0.0.0:");
        write(&toml, text);
        Clinic::adopt_in(dir, extra, "", &[], Some(cloud))
    }

    fn adopt_in(
        dir: tempfile::TempDir,
        extra: &str,
        engine_extra: &str,
        env: &[(&str, &str)],
        cloud: Option<&str>,
    ) -> Clinic {
        let d = dir.path().join("clinic");
        let setting = |file: &str, key: &str| {
            let text = std::fs::read_to_string(d.join(file)).unwrap();
            text.lines()
                .find_map(|l| l.trim().strip_prefix(key)?.trim_start().strip_prefix('='))
                .and_then(|v| v.split('"').nth(1))
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("no {key} in {file}"))
        };
        let engine_port = setting("engine.toml", "listen")
            .rsplit(':')
            .next()
            .unwrap()
            .to_owned();
        let admin = {
            let toml = std::fs::read_to_string(d.join("gateway.toml")).unwrap();
            let admin = toml.split("[admin]").nth(1).expect("an [admin] table").to_owned();
            admin
                .lines()
                .find_map(|l| {
                    l.trim()
                        .strip_prefix("address")?
                        .split('"')
                        .nth(1)
                        .map(str::to_owned)
                })
                .expect("admin address")
        };
        if !extra.is_empty() {
            let mut toml = std::fs::read_to_string(d.join("gateway.toml")).unwrap();
            toml.push_str(&extra.replace("ENGINE_PORT", &engine_port));
            write(&d.join("gateway.toml"), toml);
        }
        let mut engine_toml = std::fs::read_to_string(d.join("engine.toml")).unwrap();
        engine_toml.push_str(engine_extra);
        write(&d.join("engine.toml"), engine_toml);
        let engine_toml = d.join("engine.toml");
        let engine_args = ["engine-sim", "--config", s(&engine_toml)];
        let engine = match cloud {
            Some(ns) => Server::start_in(ns, &engine_args),
            None => Server::start(&engine_args),
        };
        let gateway = Server::start_env(&["gateway", "run", "--config", s(&d.join("gateway.toml"))], env);
        let user = std::fs::read_to_string(d.join("user.txt"))
            .unwrap()
            .trim()
            .to_owned();
        Clinic {
            dir,
            engine,
            gateway,
            user,
            admin,
        }
    }

    pub(crate) fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join("clinic").join(file)
    }

    pub(crate) fn addr(&self) -> &str {
        self.gateway.url.trim_start_matches("https://")
    }

    pub(crate) fn data(&self) -> String {
        s(&self.path("data")).to_owned()
    }

    /// The terminal's TLS options for curl.
    pub(crate) fn tls(&self) -> String {
        format!(
            "--cacert {} --cert {} --key {}",
            s(&self.path("ca.pem")),
            s(&self.path("terminal.pem")),
            s(&self.path("terminal.key"))
        )
    }

    /// `curl -s OPTIONS GATEWAY/PATH`: the status (0 when the TLS layer refused) and the body.
    pub(crate) fn curl(&self, options: &str, path: &str) -> (u16, String) {
        let out = sh(&format!(
            "curl -s -w ~STATUS~%{{http_code}} {options} {}{path}",
            self.gateway.url
        ));
        let (body, code) = out.stdout.rsplit_once("~STATUS~").expect("status");
        (code.trim().parse().expect("status"), body.to_owned())
    }

    /// A TLS connection to the gateway as a terminal (rustls as the client library).
    pub(crate) fn connect(&self, cert: &str, key: &str) -> Tls {
        self.open(&self.client(cert, key))
    }

    /// A connection with a client configuration, which remembers sessions for resumption.
    pub(crate) fn open(&self, config: &std::sync::Arc<rustls::ClientConfig>) -> Tls {
        self.open_at(config, self.addr())
    }

    /// The same to another of the gateway's listeners, at `addr`.
    pub(crate) fn open_at(&self, config: &std::sync::Arc<rustls::ClientConfig>, addr: &str) -> Tls {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        rustls::StreamOwned::new(conn, tcp)
    }

    /// A terminal's TLS client configuration (rustls defaults: X25519MLKEM768 offered first).
    pub(crate) fn client(&self, cert: &str, key: &str) -> std::sync::Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = |f: &str| {
            CertificateDer::pem_file_iter(self.path(f))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs("ca.pem") {
            roots.add(cert).unwrap();
        }
        let key = PrivateKeyDer::from_pem_file(self.path(key)).unwrap();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(certs(cert), key)
            .unwrap();
        std::sync::Arc::new(config)
    }

    pub(crate) fn hup(&self) {
        sh(&format!("kill -HUP {}", self.gateway.pid())).ok();
        // The reload is quick; give it a moment to swap the snapshot.
        std::thread::sleep(Duration::from_millis(500));
    }

    /// The audit log as JSON objects (SIGTERM first would flush; entries are written within ms).
    pub(crate) fn audit(&self) -> Vec<serde_json::Value> {
        std::thread::sleep(Duration::from_millis(300));
        sh(&format!(
            "kakehashi audit export --json --data-dir {}",
            self.data()
        ))
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
    }

    /// A metric's value from the admin listener.
    pub(crate) fn metric(&self, name: &str) -> u64 {
        let text = sh(&format!("curl -s http://{}/metrics", self.admin)).ok();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("kakehashi_{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    pub(crate) fn audit_has(&self, decision: &str, reason: &str) -> bool {
        self.audit()
            .iter()
            .any(|e| e["decision"] == decision && e["reason"].as_str().is_some_and(|r| r.contains(reason)))
    }
}

pub(crate) const PATIENT: &str = "/api01rv2/patientgetv2?id=1&format=json";

/// engine-sim's own diagnostics (`/sim/upload`, `/sim/download`) are no engine API call, so the
/// gateway's rules refuse them until a row names them: cloud only, for the write scope.
const SIM_DIAGNOSTICS: &str = "\n[[failover.route]]\npath = \"/sim/*\"\naction = \"refuse\"\n";

#[test]
fn curl_with_a_certificate_and_a_password_gets_a_patient_from_the_cloud() {
    let c = Clinic::start("");
    let (code, body) = c.curl(&format!("{} -u {}", c.tls(), c.user), PATIENT);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        v["patientinfores"]["Patient_Information"]["WholeName"],
        "日医 太郎"
    );

    // The PKCS#12 file works the same (curl reads it with --cert-type P12).
    let p12_password = std::fs::read_to_string(c.path("terminal.p12.password")).unwrap();
    let (code, _) = c.curl(
        &format!(
            "--cacert {} --cert-type P12 --cert {}:{} -u {}",
            s(&c.path("ca.pem")),
            s(&c.path("terminal.p12")),
            p12_password.trim(),
            c.user
        ),
        PATIENT,
    );
    assert_eq!(code, 200);

    // No password: 401 with a Basic challenge; the engine's own account does not work here.
    let out = sh(&format!("curl -s -i {} {}{PATIENT}", c.tls(), c.gateway.url)).ok();
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert!(
        out.to_lowercase()
            .contains("www-authenticate: basic realm=\"kakehashi\""),
        "{out}"
    );
    let (code, _) = c.curl(&format!("{} -u ormaster:ormaster", c.tls()), PATIENT);
    assert_eq!(code, 401);

    let audit = c.audit();
    let allowed = audit
        .iter()
        .find(|e| e["decision"] == "allow" && e["status"] == 200)
        .expect("an allowed request in the audit log");
    assert_eq!(allowed["terminal"], "reception-1");
    assert_eq!(allowed["user"], c.user.split(':').next().unwrap());
    assert_eq!(allowed["path"], PATIENT);
    assert!(allowed["bytes_out"].as_u64().unwrap() > 100, "{allowed}");
    assert!(c.audit_has("deny", "unknown user"));
    sh(&format!("kakehashi audit verify --data-dir {}", c.data())).ok();
}

/// `openssl s_client` with TLS 1.2, where the server judges the client certificate before the
/// handshake completes: a refusal is an alert during the handshake, deterministic to observe.
fn s_client(c: &Clinic, options: &str) -> Run {
    sh(&format!(
        "openssl s_client -connect {} -CAfile {} {options}",
        c.addr(),
        s(&c.path("ca.pem"))
    ))
}

fn refused(run: &Run) -> bool {
    let all = format!("{}{}", run.stdout, run.stderr);
    run.code != 0 || all.contains("alert") || all.contains("Cipher is (NONE)")
}

#[test]
fn openssl_refusals_old_protocols_weak_suites_missing_foreign_revoked_and_disabled_certificates() {
    let c = Clinic::start("");
    let cert = format!(
        "-cert {} -key {}",
        s(&c.path("terminal.pem")),
        s(&c.path("terminal.key"))
    );

    // The control: the same command with a good certificate completes the handshake.
    let ok = s_client(&c, &format!("-tls1_2 {cert}"));
    assert!(!refused(&ok), "{}{}", ok.stdout, ok.stderr);

    assert!(refused(&s_client(&c, &format!("-tls1_1 {cert}"))), "TLS 1.1");
    assert!(
        refused(&s_client(&c, &format!("-tls1_2 -cipher AES128-SHA256 {cert}"))),
        "CBC suite"
    );
    assert!(
        refused(&s_client(
            &c,
            &format!("-tls1_2 -cipher ECDHE-RSA-AES128-SHA {cert}")
        )),
        "CBC suite"
    );
    assert!(refused(&s_client(&c, "-tls1_2")), "no certificate");
    assert!(c.audit_has("deny", "no client certificate"));

    // A certificate from another CA, for the same terminal name.
    let other = c.dir.path().join("other-ca");
    sh(&format!(
        "kakehashi cert init-ca --dir {} --name Other --no-passphrase",
        s(&other)
    ))
    .ok();
    sh(&format!(
        "kakehashi cert issue --dir {0} --profile terminal --name reception-1 --out {0}",
        s(&other)
    ))
    .ok();
    let foreign = format!(
        "-cert {} -key {}",
        s(&other.join("reception-1.pem")),
        s(&other.join("reception-1.key"))
    );
    assert!(
        refused(&s_client(&c, &format!("-tls1_2 {foreign}"))),
        "foreign CA"
    );
    assert!(c.audit_has("deny", "not issued by the clinic CA"));

    // A terminal registered nowhere.
    let clinic_ca = c.path("");
    sh(&format!(
        "kakehashi cert issue --dir {0} --profile terminal --name stranger --out {1}",
        s(&clinic_ca),
        s(c.dir.path())
    ))
    .ok();
    let stranger = format!(
        "-cert {} -key {}",
        s(&c.dir.path().join("stranger.pem")),
        s(&c.dir.path().join("stranger.key"))
    );
    assert!(refused(&s_client(&c, &format!("-tls1_2 {stranger}"))));
    assert!(c.audit_has("deny", "not registered"));

    // Disabled, then enabled again: SIGHUP picks up both.
    sh(&format!(
        "kakehashi terminal disable reception-1 --data-dir {}",
        c.data()
    ))
    .ok();
    c.hup();
    assert!(refused(&s_client(&c, &format!("-tls1_2 {cert}"))), "disabled");
    assert!(c.audit_has("deny", "is disabled"));
    sh(&format!(
        "kakehashi terminal enable reception-1 --data-dir {}",
        c.data()
    ))
    .ok();
    c.hup();
    assert!(
        !refused(&s_client(&c, &format!("-tls1_2 {cert}"))),
        "enabled again"
    );

    // Revoked: a new CRL and SIGHUP. TLS 1.3 (curl) is refused too.
    sh(&format!(
        "kakehashi cert revoke --dir {0} --name reception-1 --reason key-compromise",
        s(&clinic_ca)
    ))
    .ok();
    sh(&format!(
        "kakehashi cert crl --dir {0} --out {0}/crl.pem",
        s(&clinic_ca)
    ))
    .ok();
    c.hup();
    assert!(refused(&s_client(&c, &format!("-tls1_2 {cert}"))), "revoked");
    let (code, _) = c.curl(&format!("{} -u {}", c.tls(), c.user), PATIENT);
    assert_eq!(code, 0, "no HTTP answer at all for a revoked terminal");
    assert!(c.audit_has("deny", "revoked"));
}

#[test]
fn an_established_connection_of_a_revoked_terminal_is_cut_at_the_reload() {
    let c = Clinic::start("");
    let mut conn = c.connect("terminal.pem", "terminal.key");
    let basic = base64(&c.user);
    let request = format!("GET {PATIENT} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {basic}\r\n\r\n");
    assert_eq!(exchange(&mut conn, &request).0, 200);
    // The same connection is reused while nothing changes, across a reload too.
    c.hup();
    assert_eq!(exchange(&mut conn, &request).0, 200);
    let ca = c.path("");
    sh(&format!(
        "kakehashi cert revoke --dir {0} --name reception-1",
        s(&ca)
    ))
    .ok();
    sh(&format!("kakehashi cert crl --dir {0} --out {0}/crl.pem", s(&ca))).ok();
    c.hup();
    let (status, body) = exchange(&mut conn, &request);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no longer admitted"), "{body}");
    assert!(c.audit_has("deny", "terminal no longer admitted: client certificate revoked"));
}

/// One HTTP/1.1 request on an open connection: the status and the body (by Content-Length).
pub(crate) fn exchange(conn: &mut (impl std::io::Read + std::io::Write), request: &str) -> (u16, String) {
    use std::io::{BufRead, BufReader, Read};
    conn.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut length = 0;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        if h.trim().is_empty() {
            break;
        }
        if let Some(v) = h.to_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn wrong_passwords_lock_the_user_out_with_a_retry_time() {
    let c = Clinic::start("\n[limits]\nheader_timeout_secs = 5\n");
    let id = c.user.split(':').next().unwrap().to_owned();
    for _ in 0..5 {
        let (code, _) = c.curl(&format!("{} -u {id}:wrong-password", c.tls()), PATIENT);
        assert_eq!(code, 401);
    }
    let out = sh(&format!(
        "curl -s -i {} -u {} {}{PATIENT}",
        c.tls(),
        c.user,
        c.gateway.url
    ))
    .ok();
    assert!(
        out.starts_with("HTTP/1.1 429"),
        "even the right password waits: {out}"
    );
    assert!(out.to_lowercase().contains("retry-after: 9"), "{out}");
    assert!(out.contains("try again after"), "{out}");
    assert!(c.audit_has("deny", "locked out"));
    let metrics = sh(&format!("curl -s http://{}/metrics", c.admin)).ok();
    assert!(metrics.contains("kakehashi_auth_failures_total 5"), "{metrics}");
}

#[test]
fn the_login_page_gives_a_cookie_bound_to_the_terminal_certificate() {
    let c = Clinic::start("");
    // A browser without credentials is sent to the login page.
    let out = sh(&format!(
        "curl -s -i -H Accept:text/html {} {}/",
        c.tls(),
        c.gateway.url
    ))
    .ok();
    assert!(out.starts_with("HTTP/1.1 303"), "{out}");
    assert!(out.contains("location: /kakehashi/login?next=%2F"), "{out}");
    let page = sh(&format!("curl -s {} {}/kakehashi/login", c.tls(), c.gateway.url)).ok();
    assert!(
        page.contains("<form method=\"post\" action=\"/kakehashi/login\">"),
        "{page}"
    );

    let (id, password) = c.user.split_once(':').unwrap();
    let jar = c.dir.path().join("jar");
    let out = sh(&format!(
        "curl -s -i {} -c {} --data-urlencode id={id} --data-urlencode password={password} --data-urlencode next=/api01rv2/patientgetv2 {}/kakehashi/login",
        c.tls(),
        s(&jar),
        c.gateway.url
    ))
    .ok();
    assert!(out.starts_with("HTTP/1.1 303"), "{out}");
    let cookie = out
        .lines()
        .find(|l| l.to_lowercase().starts_with("set-cookie:"))
        .expect("a cookie");
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    let (code, _) = c.curl(&format!("{} -b {}", c.tls(), s(&jar)), PATIENT);
    assert_eq!(code, 200, "the cookie signs in");

    // The same cookie from another terminal's certificate is worth nothing.
    let ca = c.path("");
    sh(&format!(
        "kakehashi cert issue --dir {} --profile terminal --name reception-2 --out {}",
        s(&ca),
        s(c.dir.path())
    ))
    .ok();
    sh(&format!(
        "kakehashi terminal add reception-2 --data-dir {}",
        c.data()
    ))
    .ok();
    c.hup();
    let other = format!(
        "--cacert {} --cert {} --key {}",
        s(&c.path("ca.pem")),
        s(&c.dir.path().join("reception-2.pem")),
        s(&c.dir.path().join("reception-2.key"))
    );
    let (code, _) = c.curl(&format!("{other} -b {}", s(&jar)), PATIENT);
    assert_eq!(code, 401);
    // A wrong password on the form: the form again, with 401.
    let (code, body) = c.curl(
        &format!("{} --data id={id}&password=nope", c.tls()),
        "/kakehashi/login",
    );
    assert_eq!(code, 401);
    assert!(body.contains("Wrong ID or password"), "{body}");
}

#[test]
fn two_hundred_terminals_at_once() {
    let c = Clinic::start("");
    let ca = c.path("");
    let certs = c.dir.path().join("terminals");
    std::fs::create_dir(&certs).unwrap();
    const N: usize = 200;
    for i in 0..N {
        sh(&format!(
            "kakehashi cert issue --dir {} --profile terminal --name t{i} --out {}",
            s(&ca),
            s(&certs)
        ))
        .ok();
        sh(&format!("kakehashi terminal add t{i} --data-dir {}", c.data())).ok();
    }
    c.hup();
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let options = format!(
                "--cacert {} --cert {} --key {} -u {}",
                s(&c.path("ca.pem")),
                s(&certs.join(format!("t{i}.pem"))),
                s(&certs.join(format!("t{i}.key"))),
                c.user
            );
            let url = format!("{}{PATIENT}", c.gateway.url);
            std::thread::spawn(move || {
                sh(&format!(
                    "curl -s -o /dev/null -w %{{http_code}} --max-time 60 {options} {url}"
                ))
                .stdout
            })
        })
        .collect();
    let codes: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok = codes.iter().filter(|c| *c == "200").count();
    assert_eq!(ok, N, "{codes:?}");
}

/// The gateway process's peak resident memory (VmHWM), in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[test]
fn a_200_mb_body_streams_through_both_ways_without_the_gateway_growing() {
    let c = Clinic::start(SIM_DIAGNOSTICS);
    // Warm up (pools, TLS sessions), then measure the peak around the transfers.
    c.curl(&format!("{} -u {}", c.tls(), c.user), PATIENT);
    let before = peak_kib(c.gateway.pid());
    let big = c.dir.path().join("big.bin");
    let size: u64 = 200 * 1000 * 1000;
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(size).unwrap(); // 200 MB of zeros, written sparse and instantly
    let (code, body) = c.curl(
        &format!(
            "{} -u {} -H Content-Type:application/octet-stream --data-binary @{}",
            c.tls(),
            c.user,
            s(&big)
        ),
        "/sim/upload",
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["bytes"], size, "every byte reached the engine");
    let out = sh(&format!(
        "curl -s -o /dev/null -w %{{size_download}} {} -u {} {}/sim/download?bytes={size}",
        c.tls(),
        c.user,
        c.gateway.url
    ))
    .ok();
    assert_eq!(out.trim(), size.to_string());
    let growth = peak_kib(c.gateway.pid()).saturating_sub(before);
    assert!(
        growth < 32 * 1024,
        "the gateway's peak memory grew by {growth} KiB for 2 × 200 MB"
    );
    assert!(
        c.audit().iter().any(|e| e["bytes_in"] == size),
        "the audit log counts the bytes"
    );
}

#[test]
fn a_push_websocket_through_the_gateway_receives_another_terminals_reception() {
    use tungstenite::Message;
    use tungstenite::client::IntoClientRequest;
    let c = Clinic::start("");

    let tls = c.connect("terminal.pem", "terminal.key");

    let mut request = format!("wss://{}/ws", c.addr()).into_client_request().unwrap();
    let basic = base64(&c.user);
    request
        .headers_mut()
        .insert("Authorization", format!("Basic {basic}").parse().unwrap());
    let (mut ws, resp) = tungstenite::client(request, tls).expect("WebSocket through the gateway");
    assert_eq!(resp.status(), 101);
    ws.send(Message::text(
        r#"{"command":"subscribe","req.id":"r1","event":"*"}"#,
    ))
    .unwrap();
    let reply: serde_json::Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(reply["command"], "subscribed", "{reply}");
    // The upgraded connection still holds its slot: the limit and the gauge see it.
    assert_eq!(
        c.metric("connections_open"),
        1,
        "the WebSocket is an open connection"
    );

    // Another terminal registers a reception through the gateway.
    let body = c.dir.path().join("accept.json");
    write(&body, r#"{"acceptreq":{"Patient_ID":"3"}}"#);
    let (code, answer) = c.curl(
        &format!(
            "{} -u {} -H Content-Type:application/json --data-binary @{}",
            c.tls(),
            c.user,
            s(&body)
        ),
        "/orca11/acceptmodv2?class=01&format=json",
    );
    assert_eq!(code, 200, "{answer}");
    let event: serde_json::Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(event["command"], "event", "{event}");
    assert_eq!(
        event["data"]["body"]["Patient_Information"]["Patient_ID"], "3",
        "{event}"
    );
    // Closed, the WebSocket gives its slot back.
    ws.close(None).unwrap();
    while ws.read().is_ok() {}
    drop(ws);
    let closed = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        c.metric("connections_open") == 0
    });
    assert!(
        closed,
        "open after the WebSocket closed: {}",
        c.metric("connections_open")
    );
}

/// An open WebSocket and an open raw TCP stream end as soon as the gateway stops, with an audit
/// entry that says so: they have no end to wait for, and while the grace period for requests
/// runs no terminal can connect. Each still holds its connection's slot meanwhile.
#[test]
fn streams_end_at_once_when_the_gateway_stops() {
    use tungstenite::client::IntoClientRequest;
    let port = free_port();
    let mut c = Clinic::start(&format!(
        "\n[limits]\nshutdown_secs = 10\n\n[[listener]]\naddress = \"127.0.0.1:{port}\"\nkind = \"tcp\"\n\
         upstream = \"localhost:ENGINE_PORT\"\nrequire_login = false\n"
    ));
    let mut request = format!("wss://{}/ws", c.addr()).into_client_request().unwrap();
    let basic = base64(&c.user);
    request
        .headers_mut()
        .insert("Authorization", format!("Basic {basic}").parse().unwrap());
    let (mut ws, _) =
        tungstenite::client(request, c.connect("terminal.pem", "terminal.key")).expect("a WebSocket");
    // The raw route's upstream is the engine itself: HTTP inside, which the gateway does not read.
    let config = c.client("terminal.pem", "terminal.key");
    let mut raw = c.open_at(&config, &format!("127.0.0.1:{port}"));
    let engine = format!(
        "GET {PATIENT} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\n\r\n",
        base64("ormaster:ormaster")
    );
    assert_eq!(exchange(&mut raw, &engine).0, 200, "the stream is open");
    assert_eq!(c.metric("connections_open"), 2, "each holds a slot");

    let took = stop(&mut c, Duration::from_secs(8));
    assert!(took < Duration::from_secs(5), "stopped in {took:?}");
    assert!(ws.read().is_err(), "the WebSocket is closed");
    let audit = c.audit();
    for what in ["WebSocket", "stream"] {
        let reason = format!("allowed; {what} closed: the gateway is stopping");
        let entry = audit.iter().find(|e| e["reason"] == reason.as_str());
        let entry = entry.unwrap_or_else(|| panic!("{reason:?} in {audit:#?}"));
        if what == "stream" {
            // What passed before the stop is counted: the request in, the answer out.
            let bytes = |key: &str| entry[key].as_u64().unwrap_or(0);
            assert!(bytes("bytes_in") >= engine.len() as u64, "{entry}");
            assert!(bytes("bytes_out") > 200, "{entry}");
        }
    }
}

fn base64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Raw bytes on a TCP connection that has completed no TLS handshake, or sends them slowly.
#[test]
fn garbage_slow_headers_bad_chunking_and_huge_headers_are_cut_off_and_nothing_else_slows() {
    use std::io::{Read, Write};
    let c = Clinic::start(&format!(
        "\n[limits]\nheader_timeout_secs = 2\nhandshake_timeout_secs = 2\nmax_body_bytes = 1048576\n{SIM_DIAGNOSTICS}"
    ));
    // Garbage instead of a ClientHello: closed, audited.
    let mut tcp = std::net::TcpStream::connect(c.addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = tcp.read(&mut buf).unwrap_or(0);
    assert!(
        n == 0 || buf[0] == 0x15,
        "closed, or a TLS alert: {:?}",
        &buf[..n]
    );

    // Silence after connecting: closed after the handshake timeout.
    let mut idle = std::net::TcpStream::connect(c.addr()).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let started = std::time::Instant::now();
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(c.audit_has("deny", "no TLS handshake within 2 s"));

    // Headers one byte at a time, through openssl as the TLS layer: closed at the header
    // timeout while a normal request on another connection is answered at once.
    let slow = format!(
        "(printf 'G'; sleep 1; printf 'E'; sleep 1; printf 'T'; sleep 1; printf ' /'; sleep 3) | \
         openssl s_client -quiet -connect {} -CAfile {} -cert {} -key {} 2>&1",
        c.addr(),
        s(&c.path("ca.pem")),
        s(&c.path("terminal.pem")),
        s(&c.path("terminal.key"))
    );
    let slow = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let out = tool("sh", &["-c", &slow]);
        (started.elapsed(), out.stdout)
    });
    std::thread::sleep(Duration::from_millis(500));
    let t = std::time::Instant::now();
    let (code, _) = c.curl(&format!("{} -u {}", c.tls(), c.user), PATIENT);
    assert_eq!(code, 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the slow client slows nobody"
    );
    let (elapsed, out) = slow.join().unwrap();
    assert!(out.contains("408") || !out.contains("HTTP/1.1 200"), "{out}");
    assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");

    // Invalid chunked encoding: a 400 (hyper) and the request never reaches the engine.
    let bad_chunk = format!(
        "printf 'POST /sim/upload HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Basic {}\\r\\nContent-Type: a/b\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\nzz\\r\\n' | \
         openssl s_client -quiet -connect {} -CAfile {} -cert {} -key {} 2>/dev/null",
        base64(&c.user),
        c.addr(),
        s(&c.path("ca.pem")),
        s(&c.path("terminal.pem")),
        s(&c.path("terminal.key"))
    );
    let out = tool("sh", &["-c", &bad_chunk]).stdout;
    assert!(!out.contains("\"bytes\""), "{out}");

    // A chunked body (no declared length) over limits.max_body_bytes: cut off at the limit and
    // answered 413, not blamed on the engine. (Without `Expect: 100-continue`, so that curl's last
    // status is the 413, or nothing when the reset overtakes it.)
    let big = c.dir.path().join("big.bin");
    std::fs::File::create(&big).unwrap().set_len(3 << 20).unwrap();
    let (code, body) = c.curl(
        &format!(
            "{} -u {} -H Content-Type:a/b -H Transfer-Encoding:chunked -H Expect: --data-binary @{}",
            c.tls(),
            c.user,
            s(&big)
        ),
        "/sim/upload",
    );
    assert!(code == 413 || code == 0, "{code} {body}");
    assert!(c.audit_has("deny", "streamed body over the limit"));

    // Headers over the limit: 431, or the connection closed while curl was still sending them
    // (hyper answers and closes at the limit; a reset can overtake the answer). Never served.
    let huge = "x".repeat(20 * 1024);
    let (code, _) = c.curl(&format!("{} -u {} -H X-Big:{huge}", c.tls(), c.user), PATIENT);
    assert!(code == 431 || code == 0, "{code}");
    let (code, _) = c.curl(&format!("{} -u {}", c.tls(), c.user), PATIENT);
    assert_eq!(code, 200, "and the gateway carries on");
}

#[test]
fn gateway_check_names_the_bad_key_and_the_missing_file() {
    let c = Clinic::start("");
    let config = c.path("gateway.toml");
    sh(&format!("kakehashi gateway check --config {}", s(&config))).ok();
    let original = std::fs::read_to_string(&config).unwrap();

    write(
        &config,
        original.replace("[auth]\n", "[auth]\nlockout_tries = 3\n"),
    );
    let out = sh(&format!("kakehashi gateway check --config {}", s(&config))).fails_with(&["lockout_tries"]);
    assert!(out.stderr.contains("gateway.toml"), "{}", out.stderr);

    write(
        &config,
        original.replace("crl = \"crl.pem\"", "crl = \"missing.pem\""),
    );
    sh(&format!("kakehashi gateway check --config {}", s(&config))).fails_with(&["tls.crl", "missing.pem"]);
    sh(&format!("kakehashi gateway run --config {}", s(&config))).fails_with(&["tls.crl", "missing.pem"]);

    write(&config, original.replace("url = \"https://", "url = \"http://"));
    sh(&format!("kakehashi gateway check --config {}", s(&config))).fails_with(&["upstream.url", "https"]);
}

#[test]
fn raw_tcp_route_needs_a_signed_in_person_and_carries_bytes_to_its_upstream() {
    let port = free_port();
    // The route's upstream is the cloud engine itself (TLS with the uplink certificate): the
    // bytes inside are HTTP, which the gateway does not read.
    let c = Clinic::start(&format!(
        "\n[[listener]]\naddress = \"127.0.0.1:{port}\"\nkind = \"tcp\"\nname = \"engine-raw\"\nupstream = \"localhost:ENGINE_PORT\"\n"
    ));

    let raw = format!("https://127.0.0.1:{port}{PATIENT}");
    let through = || {
        sh(&format!(
            "curl -s -o /dev/null -w %{{http_code}} {} -u ormaster:ormaster {raw}",
            c.tls()
        ))
        .stdout
    };
    assert_eq!(through(), "000", "nobody signed in yet: the stream is closed");
    assert!(c.audit_has("deny", "no person signed in"));
    let (code, _) = c.curl(&format!("{} -u {}", c.tls(), c.user), PATIENT);
    assert_eq!(code, 200);
    assert_eq!(
        through(),
        "200",
        "signed in: the bytes reach the engine (its own auth inside)"
    );
}

/// Sends the gateway SIGTERM and waits until it has exited, at most `within`; how long it took.
fn stop(c: &mut Clinic, within: Duration) -> Duration {
    sh(&format!("kill -TERM {}", c.gateway.pid())).ok();
    let started = std::time::Instant::now();
    while Path::new(&format!("/proc/{}", c.gateway.pid())).exists()
        && std::fs::read_to_string(format!("/proc/{}/stat", c.gateway.pid()))
            .is_ok_and(|s| !s.contains(") Z "))
    {
        assert!(
            started.elapsed() < within,
            "still running {within:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    c.gateway.kill();
    started.elapsed()
}

#[test]
fn sigterm_stops_gracefully_and_the_audit_log_is_complete_and_verifiable() {
    let mut c = Clinic::start("");
    for _ in 0..3 {
        c.curl(&format!("{} -u {}", c.tls(), c.user), PATIENT);
    }
    // Caught up, the audit writer waits in the idle scheduling class (the tests run as root,
    // which may bring it back: docs/operations.md, "Its share of the processor").
    let writer = thread_named(c.gateway.pid(), "audit-writer");
    let idle = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        policy(c.gateway.pid(), writer) == SCHED_IDLE
    });
    assert!(idle, "policy {}", policy(c.gateway.pid(), writer));
    stop(&mut c, Duration::from_secs(10));
    let verify = sh(&format!("kakehashi audit verify --data-dir {}", c.data())).ok();
    assert!(verify.contains("intact"), "{verify}");
    let allowed = c
        .audit()
        .iter()
        .filter(|e| e["decision"] == "allow" && e["status"] == 200)
        .count();
    assert_eq!(allowed, 3);
    // Editing an entry in the SQLite file breaks the chain, and verify says where: the person's
    // ID replaced by another as long, in place, in every entry that names it.
    let db = audit_live(&c.path("data"));
    let conn = rusqlite::Connection::open(&db).unwrap();
    let id = c.user.split(':').next().unwrap();
    let other = "m".repeat(id.len());
    conn.execute(
        "UPDATE batches SET records = CAST(replace(CAST(records AS TEXT), ?1, ?2) AS BLOB)",
        [id, &other],
    )
    .unwrap();
    drop(conn);
    let first = c
        .audit()
        .iter()
        .position(|e| e.to_string().contains(&other))
        .expect("an entry now names the other person")
        + 1;
    sh(&format!("kakehashi audit verify --data-dir {}", c.data()))
        .fails_with(&[&format!("BROKEN at entry {first}"), "do not match its hash"]);
}

/// `SCHED_IDLE` in `sched(7)`.
const SCHED_IDLE: u32 = 5;

/// The ID of `pid`'s thread called `name`.
fn thread_named(pid: u32, name: &str) -> u32 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| t.ok()?.file_name().to_str()?.parse().ok())
        .find(|tid: &u32| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .unwrap_or_else(|| panic!("no thread {name} in {pid}"))
}

/// A thread's scheduling policy (field 41 of its `stat`; the command name before it may hold
/// spaces).
fn policy(pid: u32, tid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    after.split(' ').nth(41 - 3).unwrap().parse().unwrap()
}

#[test]
fn tls13_offers_hybrid_post_quantum_key_exchange_and_resumes_sessions() {
    let c = Clinic::start("");
    let config = c.client("terminal.pem", "terminal.key");
    let request = format!(
        "GET {PATIENT} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\n\r\n",
        base64(&c.user)
    );
    let mut first = c.open(&config);
    assert_eq!(exchange(&mut first, &request).0, 200);
    assert_eq!(
        first.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        first.conn.negotiated_key_exchange_group().map(|g| g.name()),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );
    assert_eq!(first.conn.handshake_kind(), Some(rustls::HandshakeKind::Full));
    let mut second = c.open(&config);
    assert_eq!(exchange(&mut second, &request).0, 200);
    assert_eq!(second.conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    // TLS 1.2 resumes too (session IDs), as openssl shows.
    let sess = c.dir.path().join("sess.pem");
    let cert = format!(
        "-cert {} -key {}",
        s(&c.path("terminal.pem")),
        s(&c.path("terminal.key"))
    );
    s_client(&c, &format!("-tls1_2 {cert} -sess_out {}", s(&sess)));
    let again = s_client(&c, &format!("-tls1_2 {cert} -sess_in {}", s(&sess)));
    assert!(again.stdout.contains("Reused, TLSv1.2"), "{}", again.stdout);
}

#[test]
fn the_connection_limit_closes_new_connections_and_counts_them() {
    use std::io::Read;
    let c = Clinic::start("\n[limits]\nmax_connections = 2\n");
    let request = format!(
        "GET {PATIENT} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\n\r\n",
        base64(&c.user)
    );
    let mut held: Vec<Tls> = (0..2)
        .map(|_| c.connect("terminal.pem", "terminal.key"))
        .collect();
    for conn in &mut held {
        assert_eq!(exchange(conn, &request).0, 200);
    }
    let mut third = std::net::TcpStream::connect(c.addr()).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(third.read(&mut buf).unwrap_or(0), 0, "closed at once");
    let metrics = sh(&format!("curl -s http://{}/metrics", c.admin)).ok();
    assert!(
        metrics.contains("kakehashi_connections_refused_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("kakehashi_connections_open 2"), "{metrics}");
    // One closes; a new one is welcome again.
    held.pop();
    std::thread::sleep(Duration::from_millis(300));
    let mut fourth = c.connect("terminal.pem", "terminal.key");
    assert_eq!(exchange(&mut fourth, &request).0, 200);
}

/// The sockets (`socket:[INODE]`) of the established TCP connections whose local port is `port`.
fn connections_on(port: u16) -> std::collections::BTreeSet<String> {
    let tables = ["/proc/net/tcp", "/proc/net/tcp6"].map(|t| std::fs::read_to_string(t).unwrap_or_default());
    let mut found = std::collections::BTreeSet::new();
    for fields in tables
        .iter()
        .flat_map(|t| t.lines())
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
    {
        let local = fields.get(1).and_then(|a| a.rsplit(':').next());
        let local = local.and_then(|p| u16::from_str_radix(p, 16).ok());
        if let (Some(local), Some(&"01"), Some(inode)) = (local, fields.get(3), fields.get(9))
            && local == port
        {
            found.insert(format!("socket:[{inode}]"));
        }
    }
    found
}

/// How many of `sockets` each epoll instance of process `pid` watches, the instances that watch
/// any, fewest first. An instance open twice (a runtime's registry keeps a duplicate) counts once.
fn watched_by_each_epoll(pid: u32, sockets: &std::collections::BTreeSet<String>) -> Vec<usize> {
    let link = |fd: &str| {
        std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).map(|t| t.to_string_lossy().into_owned())
    };
    let mut instances = std::collections::BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let fd = fd.file_name().to_string_lossy().into_owned();
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"));
        if let (Ok("anon_inode:[eventpoll]"), Ok(info)) = (link(&fd).as_deref(), info) {
            let watched: std::collections::BTreeSet<String> = info
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("tfd:")?
                        .split_whitespace()
                        .next()
                        .map(str::to_owned)
                })
                .collect();
            let ours = watched
                .iter()
                .filter(|tfd| link(tfd).is_ok_and(|s| sockets.contains(&s)))
                .count();
            instances.insert((watched, ours));
        }
    }
    let mut counts: Vec<usize> = instances.into_iter().map(|(_, n)| n).filter(|&n| n > 0).collect();
    counts.sort_unstable();
    counts
}

#[test]
fn terminal_connections_are_spread_evenly_over_the_workers() {
    // The kernel picks a worker's socket by a hash of the connection's addresses: 8 connections
    // land 4/4 only about a quarter of the time. A worker serving more than another hands a new
    // connection to the least busy. Each worker's connections are registered with its own
    // runtime's epoll instance.
    let c = Clinic::start("\n[limits]\nworkers = 2\n");
    let port: u16 = c
        .addr()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the api port");
    let held: Vec<Tls> = (0..8)
        .map(|_| c.connect("terminal.pem", "terminal.key"))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let terminals = connections_on(port);
    assert_eq!(terminals.len(), 8, "{terminals:?}");
    assert_eq!(
        watched_by_each_epoll(c.gateway.pid(), &terminals),
        [4, 4],
        "terminal connections per worker"
    );
    drop(held);
}

#[test]
fn a_users_own_engine_account_is_sent_upstream_and_never_the_terminals_authorization() {
    let c = Clinic::start_with(
        "",
        "\n[[users]]\nid = \"doctor\"\npassword = \"doctor-engine-pw\"\n",
        &[],
    );
    let id = c.user.split(':').next().unwrap().to_owned();
    let secret = c.dir.path().join("engine-pw");
    // Sets this user's engine account, reloads, and fetches a patient: the status.
    let fetch_as = |engine_password: &str| {
        write(&secret, format!("{engine_password}\n"));
        sh(&format!(
            "kakehashi user set-upstream {id} --upstream-id doctor --upstream-password-file {} --data-dir {}",
            s(&secret),
            c.data()
        ))
        .ok();
        c.hup();
        c.curl(&format!("{} -u {}", c.tls(), c.user), PATIENT)
    };
    let (code, body) = fetch_as("doctor-engine-pw");
    assert_eq!(code, 200, "{body}");
    // A wrong engine password for this user: the engine refuses it, and the terminal is told
    // it is the gateway's credential (502), not asked for its own password again (401).
    let (code, body) = fetch_as("not-the-engine-pw");
    assert_eq!(code, 502, "{body}");
    assert!(c.audit_has("allow", "the engine refused the upstream credential for user"));
}

#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let c = Clinic::start_with("", "", &[("NOTIFY_SOCKET", s(&socket_path))]);
    let next = || {
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1");
    sh(&format!("kill -HUP {}", c.gateway.pid())).ok();
    assert_eq!(next(), "RELOADING=1");
    assert_eq!(next(), "READY=1");
    sh(&format!("kill -TERM {}", c.gateway.pid())).ok();
    assert_eq!(next(), "STOPPING=1");
}

/// A disk the audit log cannot be written to (every insert fails, as on a full disk): new access
/// is refused until it can, and no decision is lost meanwhile.
#[test]
fn no_access_is_granted_while_the_audit_log_cannot_be_written() {
    let c = Clinic::start("");
    let ok = format!("{} -u {}", c.tls(), c.user);
    assert_eq!(c.curl(&ok, PATIENT).0, 200);
    let sql = |statement: &str| {
        let db = rusqlite::Connection::open(audit_live(&c.path("data"))).unwrap();
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        db.execute_batch(statement).unwrap();
    };
    sql("CREATE TRIGGER full BEFORE INSERT ON batches BEGIN SELECT RAISE(ABORT, 'disk full'); END");
    let health = || {
        sh(&format!(
            "curl -s -o /dev/null -w %{{http_code}} http://{}/health",
            c.admin
        ))
        .ok()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while health() != "503" {
        assert!(
            std::time::Instant::now() < deadline,
            "the log never reported failing"
        );
        c.curl(&ok, PATIENT); // an entry that cannot be committed
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, body) = c.curl(&ok, PATIENT);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("audit log cannot be written"), "{body}");

    sql("DROP TRIGGER full");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while health() != "200" {
        assert!(std::time::Instant::now() < deadline, "the log never recovered");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        c.curl(&ok, PATIENT).0,
        200,
        "access again once the log is writable"
    );
    // The refusal waited in memory and is in the log now, in one intact chain.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !c.audit_has("deny", "the audit log cannot be written") {
        assert!(
            std::time::Instant::now() < deadline,
            "the refusal was not recorded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let verify = sh(&format!("kakehashi audit verify --data-dir {}", c.data())).ok();
    assert!(verify.contains("intact"), "{verify}");
}
