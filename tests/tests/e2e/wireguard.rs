//! The WireGuard front door, judged by a WireGuard we did not write: `wireguard-go` and `wg` in a
//! network namespace are the terminal, curl and ping inside it are its programs, and the gateway
//! runs outside it, in userspace mode and in TUN mode.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::gateway::{Clinic, PATIENT};
use crate::support::*;

/// A terminal: a network namespace joined to this one by a veth pair (`10.201.N.1` here,
/// `10.201.N.2` there), running wireguard-go with a wg-quick config. Removed on drop.
pub(crate) struct Terminal {
    ns: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a command and insists on success, naming it when it fails.
#[track_caller]
pub(crate) fn run(line: &str) -> String {
    let r = sh(line);
    assert_eq!(r.code, 0, "{line}\nstdout: {}\nstderr: {}", r.stdout, r.stderr);
    r.stdout
}

/// Starts wireguard-go with interface `interface` in namespace `ns` (it daemonizes).
#[track_caller]
pub(crate) fn wireguard_go(ns: &str, interface: &str) {
    let started = tool(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "env",
            "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1",
            "wireguard-go",
            interface,
        ],
    );
    assert_eq!(started.code, 0, "wireguard-go: {}", started.stderr);
}

impl Terminal {
    /// Brings up `config` (a wg-quick file) in a new namespace, its endpoint pointed at this side
    /// of the veth and the gateway's `port`.
    pub(crate) fn up(config: &std::path::Path, port: u16) -> Terminal {
        // Names unique across namespaces and test runs on this machine (interfaces ≤ 15 bytes).
        let n = (std::process::id() % 200 + NEXT.fetch_add(1, Ordering::Relaxed)) % 250 + 1;
        let ns = format!("khw{}x{n}", std::process::id() % 1000);
        let t = Terminal { ns };
        t.teardown();
        let ns = &t.ns;
        for line in [
            format!("ip netns add {ns}"),
            format!("ip link add {ns}h type veth peer name {ns}n"),
            format!("ip link set {ns}n netns {ns}"),
            format!("ip addr add 10.201.{n}.1/24 dev {ns}h"),
            format!("ip link set {ns}h up"),
            format!("ip -n {ns} addr add 10.201.{n}.2/24 dev {ns}n"),
            format!("ip -n {ns} link set {ns}n up"),
            format!("ip -n {ns} link set lo up"),
        ] {
            run(&line);
        }
        wireguard_go(ns, ns);
        let text = std::fs::read_to_string(config).expect("the terminal's config");
        let address = text
            .lines()
            .find_map(|l| l.strip_prefix("Address = "))
            .expect("an Address line")
            .to_owned();
        // The endpoint this side of the veth, in the config itself: with a keepalive,
        // wireguard-go starts a handshake the moment it is configured.
        let stripped: String = run(&format!("wg-quick strip {}", s(config)))
            .lines()
            .map(|l| match l.starts_with("Endpoint") {
                true => format!("Endpoint = 10.201.{n}.1:{port}\n"),
                false => format!("{l}\n"),
            })
            .collect();
        let conf = config.with_extension("stripped");
        write(&conf, stripped);
        for line in [
            format!("ip netns exec {ns} wg setconf {ns} {}", s(&conf)),
            format!("ip -n {ns} addr add {address} dev {ns}"),
            format!("ip -n {ns} link set {ns} mtu 1420 up"),
        ] {
            run(&line);
        }
        t
    }

    /// Routes the tunnel network's gateway address (`/32`) into the tunnel.
    pub(crate) fn route(&self, gateway: &str) -> &Terminal {
        run(&format!(
            "ip -n {} route add {gateway}/32 dev {}",
            self.ns, self.ns
        ));
        self
    }

    /// `ip netns exec NS ARGS…`.
    fn exec(&self, args: &[&str]) -> Run {
        let mut all = vec!["netns", "exec", self.ns.as_str()];
        all.extend_from_slice(args);
        tool("ip", &all)
    }

    /// curl inside the namespace: the status (0 when nothing answered) and the body.
    pub(crate) fn curl(&self, options: &[&str], url: &str) -> (u16, String) {
        let mut args = vec!["curl", "-s", "-m", "4", "-w", "~STATUS~%{http_code}"];
        args.extend_from_slice(options);
        args.push(url);
        let out = self.exec(&args);
        let (body, code) = out.stdout.rsplit_once("~STATUS~").unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// Waits (a restarted gateway has no session: WireGuard retries its handshake) until ping
    /// gets through, or panics after `within`.
    pub(crate) fn wait_for_ping(&self, gateway: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.ping(gateway) {
            assert!(
                Instant::now() < deadline,
                "no ping through the tunnel within {within:?}"
            );
        }
    }

    fn ping(&self, address: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "1", address]).code == 0
    }

    fn teardown(&self) {
        // wireguard-go outlives its namespace unless it is stopped first.
        let pids = tool("ip", &["netns", "pids", &self.ns]).stdout;
        for pid in pids.split_whitespace() {
            tool("kill", &["-9", pid]);
        }
        tool("ip", &["netns", "del", &self.ns]);
        tool("ip", &["link", "del", &format!("{}h", self.ns)]);
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A clinic whose gateway listens for WireGuard on every address, `edit` applied to its
/// gateway.toml first.
fn clinic(edit: impl Fn(String) -> String) -> Clinic {
    let dir = Clinic::setup("0.0.0.0");
    let config = dir.path().join("clinic/gateway.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    write(&config, edit(text));
    Clinic::adopt(dir, "")
}

impl Clinic {
    /// The UDP port WireGuard listens on.
    pub(crate) fn wg_port(&self) -> u16 {
        let text = std::fs::read_to_string(self.path("gateway.toml")).unwrap();
        let wg = text.split("[wireguard]").nth(1).expect("a [wireguard] section");
        wg.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("listen")?
                    .split('"')
                    .nth(1)?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()
            })
            .expect("wireguard.listen")
    }
}

pub(crate) const TUNNEL: &str = "10.77.0.1";

pub(crate) fn patient_url(gateway: &str) -> String {
    format!("http://{gateway}:8000{PATIENT}")
}

#[test]
fn a_wireguard_terminal_reaches_the_engine_with_id_and_password_and_answers_ping() {
    let clinic = clinic(|t| t);
    let t = Terminal::up(&clinic.path("terminal-wg.conf"), clinic.wg_port());
    t.route(TUNNEL).wait_for_ping(TUNNEL, Duration::from_secs(10));
    // The same pipeline as over TLS: the person must sign in, and the answer is the engine's.
    let url = std::fs::read_to_string(clinic.path("terminal-wg.url")).unwrap();
    assert_eq!(url.trim(), format!("http://{TUNNEL}:8000"));
    let (status, body) = t.curl(&["-u", &clinic.user], &patient_url(TUNNEL));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"Api_Result\":\"00\""), "{body}");
    let (status, _) = t.curl(&[], &patient_url(TUNNEL));
    assert_eq!(status, 401, "no ID and password, no engine");
    let (status, _) = t.curl(&["-u", "reception:wrong-password"], &patient_url(TUNNEL));
    assert_eq!(status, 401);
    // A big body goes through the stack both ways intact (windows, segmentation).
    let blob = clinic.path("blob.json");
    write(&blob, format!("{{\"pad\":\"{}\"}}", "x".repeat(3 << 20)));
    let (status, _) = t.curl(
        &[
            "-u",
            &clinic.user,
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", s(&blob)),
        ],
        &format!("http://{TUNNEL}:8000/api01rv2/system01dailyv2?format=json"),
    );
    assert_eq!(status, 200);
    // Nothing but the configured ports answers inside the tunnel.
    let (status, _) = t.curl(&[], &format!("http://{TUNNEL}:8443/"));
    assert_eq!(status, 0);
    assert!(clinic.metric("wg_handshakes_total") >= 1);
    assert!(clinic.audit_has("allow", "terminal admitted (WireGuard)"));
    let audit = clinic.audit();
    let request = audit
        .iter()
        .find(|e| e["path"].as_str().is_some_and(|p| p.contains("patientgetv2")) && e["status"] == 200)
        .expect("the request in the audit log");
    assert_eq!(request["terminal"], "terminal-wg");
    assert!(
        request["source"].as_str().unwrap().starts_with("10.77.0.2:"),
        "{request}"
    );
}

#[test]
fn an_unknown_key_and_garbage_get_nothing_and_the_real_terminal_keeps_working() {
    let clinic = clinic(|t| t);
    let port = clinic.wg_port();
    // A config like the real one, with a key the gateway has never seen.
    let real = std::fs::read_to_string(clinic.path("terminal-wg.conf")).unwrap();
    let stranger_key = run("wg genkey").trim().to_owned();
    let stranger = clinic.path("stranger.conf");
    let text: String = real
        .lines()
        .map(|l| match l.strip_prefix("PrivateKey = ") {
            Some(_) => format!("PrivateKey = {stranger_key}\n"),
            None => format!("{l}\n"),
        })
        .collect();
    write(&stranger, text);
    let s1 = Terminal::up(&stranger, port);
    s1.route(TUNNEL);
    assert!(!s1.ping(TUNNEL));
    let (status, _) = s1.curl(&["-u", &clinic.user], &patient_url(TUNNEL));
    assert_eq!(status, 0, "an unknown key must get no answer at all");
    let shown = s1.exec(&["wg", "show", &s1.ns, "transfer"]).stdout;
    assert!(shown.contains("\t0\t"), "the stranger received nothing: {shown}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while clinic.metric("wg_dropped_unknown_key_total") == 0 {
        assert!(
            Instant::now() < deadline,
            "the stranger's handshakes were not counted"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Malformed, truncated and random datagrams: dropped, counted, no reply, no harm.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let target = format!("127.0.0.1:{port}");
    let mut junk = vec![
        vec![1u8, 0, 0, 0],
        vec![4u8; 10],
        vec![0xff; 200],
        [1, 0, 0, 0].repeat(37),
        [4, 0, 0, 0, 9, 9, 9, 9].repeat(20),
    ];
    junk.push(Vec::new());
    for j in &junk {
        udp.send_to(j, &target).unwrap();
    }
    let mut buf = [0u8; 256];
    assert!(udp.recv_from(&mut buf).is_err(), "garbage got a reply");
    assert!(clinic.metric("wg_dropped_invalid_total") >= 3);
    let t = Terminal::up(&clinic.path("terminal-wg.conf"), port);
    t.route(TUNNEL).wait_for_ping(TUNNEL, Duration::from_secs(10));
    let (status, _) = t.curl(&["-u", &clinic.user], &patient_url(TUNNEL));
    assert_eq!(status, 200);
}

#[test]
fn a_disabled_terminal_is_cut_off_after_sighup_and_a_roaming_one_keeps_its_session() {
    let clinic = clinic(|t| t);
    let t = Terminal::up(&clinic.path("terminal-wg.conf"), clinic.wg_port());
    t.route(TUNNEL).wait_for_ping(TUNNEL, Duration::from_secs(10));
    let handshakes = clinic.metric("wg_handshakes_total");
    // Roaming: the terminal's outer address changes (a new source port, as when a NAT rebinds
    // or a laptop changes networks); the gateway answers at the new one.
    let ns = &t.ns;
    let before = t
        .exec(&["wg", "show", ns, "listen-port"])
        .stdout
        .trim()
        .to_owned();
    let new_port = free_udp_port().to_string();
    run(&format!("ip netns exec {ns} wg set {ns} listen-port {new_port}"));
    assert_ne!(before, new_port);
    let (status, _) = t.curl(&["-u", &clinic.user], &patient_url(TUNNEL));
    assert_eq!(status, 200, "after roaming");
    assert_eq!(
        clinic.metric("wg_handshakes_total"),
        handshakes,
        "roaming kept the session: no new handshake"
    );
    // Disabled and reloaded: the session ends, and no new one starts.
    let data = clinic.data();
    sh(&format!(
        "kakehashi terminal disable terminal-wg --data-dir {data}"
    ))
    .ok();
    clinic.hup();
    assert!(!t.ping(TUNNEL), "the disabled terminal's session must be gone");
    let (status, _) = t.curl(&["-u", &clinic.user], &patient_url(TUNNEL));
    assert_eq!(status, 0);
    assert_eq!(clinic.metric("wg_peers"), 0);
    // Enabled again: it handshakes anew and works.
    sh(&format!(
        "kakehashi terminal enable terminal-wg --data-dir {data}"
    ))
    .ok();
    clinic.hup();
    t.wait_for_ping(TUNNEL, Duration::from_secs(15));
    let (status, _) = t.curl(&["-u", &clinic.user], &patient_url(TUNNEL));
    assert_eq!(status, 200);
}

#[test]
fn a_spoofed_inner_source_address_is_dropped() {
    let clinic = clinic(|t| t);
    let t = Terminal::up(&clinic.path("terminal-wg.conf"), clinic.wg_port());
    t.route(TUNNEL).wait_for_ping(TUNNEL, Duration::from_secs(10));
    run(&format!("ip -n {} addr add 10.77.0.99/32 dev {}", t.ns, t.ns));
    let (status, _) = t.curl(
        &["--interface", "10.77.0.99", "-u", &clinic.user],
        &patient_url(TUNNEL),
    );
    assert_eq!(
        status, 0,
        "a packet from another terminal's address must not get through"
    );
    assert!(clinic.metric("wg_dropped_spoofed_total") >= 1);
    let (status, _) = t.curl(&["-u", &clinic.user], &patient_url(TUNNEL));
    assert_eq!(status, 200, "the terminal's own address still works");
}

/// TUN mode shares the root namespace's routing table with every other test: one test, its own
/// device name and network.
#[test]
fn tun_mode_serves_the_same_pipeline_and_drops_spoofed_sources() {
    let device = format!("khtun{}", std::process::id() % 10000);
    let clinic = clinic(|t| {
        t.replace(
            "address = \"10.77.0.1/24\"",
            &format!("address = \"10.78.0.1/24\"\nmode = \"tun\"\ntun_name = \"{device}\""),
        )
    });
    // A terminal enrolled in this network (the demo's is in 10.77.0.0/24).
    let conf = clinic.path("tun-terminal.conf");
    sh(&format!(
        "kakehashi terminal add tun-terminal --wireguard --config {} --out {}",
        s(&clinic.path("gateway.toml")),
        s(&conf)
    ))
    .ok();
    clinic.hup();
    let t = Terminal::up(&conf, clinic.wg_port());
    t.route("10.78.0.1")
        .wait_for_ping("10.78.0.1", Duration::from_secs(10));
    let (status, body) = t.curl(&["-u", &clinic.user], &patient_url("10.78.0.1"));
    assert_eq!(status, 200, "{body}");
    let (status, _) = t.curl(&[], &patient_url("10.78.0.1"));
    assert_eq!(status, 401);
    run(&format!("ip -n {} addr add 10.78.0.99/32 dev {}", t.ns, t.ns));
    let (status, _) = t.curl(
        &["--interface", "10.78.0.99", "-u", &clinic.user],
        &patient_url("10.78.0.1"),
    );
    assert_eq!(status, 0);
    assert!(clinic.metric("wg_dropped_spoofed_total") >= 1);
    let audit = clinic.audit();
    assert!(
        audit
            .iter()
            .any(|e| e["terminal"] == "tun-terminal" && e["status"] == 200)
    );
    // Disabled and reloaded: cut off here too.
    sh(&format!(
        "kakehashi terminal disable tun-terminal --data-dir {}",
        clinic.data()
    ))
    .ok();
    clinic.hup();
    let (status, _) = t.curl(&["-u", &clinic.user], &patient_url("10.78.0.1"));
    assert_eq!(status, 0);
}

#[test]
fn tls_inside_the_tunnel_needs_the_certificate_of_the_same_terminal() {
    let clinic = clinic(|t| {
        format!(
            "{t}\n[[wireguard.port]]\nport = 8000\nroute = \"api\"\n\n[[wireguard.port]]\nport = 8443\nroute = \"api\"\ntls = true\n"
        )
    });
    // The WireGuard terminal's own certificate, from the clinic CA.
    let out = clinic.path("wgcert");
    std::fs::create_dir_all(&out).unwrap();
    sh(&format!(
        "kakehashi cert issue --dir {} --profile terminal --name terminal-wg --out {}",
        s(&clinic.path("")),
        s(&out)
    ))
    .ok();
    let t = Terminal::up(&clinic.path("terminal-wg.conf"), clinic.wg_port());
    t.route(TUNNEL).wait_for_ping(TUNNEL, Duration::from_secs(10));
    let tls = |cert: &str, key: &str| {
        t.curl(
            &[
                "--resolve",
                &format!("localhost:8443:{TUNNEL}"),
                "--cacert",
                s(&clinic.path("ca.pem")),
                "--cert",
                cert,
                "--key",
                key,
                "-u",
                &clinic.user,
            ],
            &format!("https://localhost:8443{PATIENT}"),
        )
    };
    let own = (out.join("terminal-wg.pem"), out.join("terminal-wg.key"));
    let (status, body) = tls(s(&own.0), s(&own.1));
    assert_eq!(status, 200, "{body}");
    // Another terminal's certificate inside this terminal's tunnel: refused.
    let (status, _) = tls(s(&clinic.path("terminal.pem")), s(&clinic.path("terminal.key")));
    assert_eq!(status, 0);
    assert!(clinic.audit_has("deny", "inside the WireGuard tunnel of \"terminal-wg\""));
    // Plain HTTP still serves port 8000.
    let (status, _) = t.curl(&["-u", &clinic.user], &patient_url(TUNNEL));
    assert_eq!(status, 200);
}

#[test]
fn a_bad_wireguard_section_is_refused_naming_the_key() {
    let dir = Clinic::setup("0.0.0.0");
    let config = dir.path().join("clinic/gateway.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    let cases: [(&str, &str, &[&str]); 6] = [
        (
            "address = \"10.77.0.1/24\"",
            "address = \"10.77.0.0/24\"",
            &["network or broadcast"],
        ),
        (
            "address = \"10.77.0.1/24\"",
            "address = \"10.77.0.1/31\"",
            &["/31", "expected /8 to /30"],
        ),
        (
            "address = \"10.77.0.1/24\"",
            "address = \"10.77.0.1\"",
            &["10.77.0.1/24"],
        ),
        (
            "[wireguard]",
            "[wireguard]\nmode = \"kernel\"",
            &["kernel", "userspace", "tun"],
        ),
        (
            "[wireguard]",
            "[wireguard]\nmtu = 100",
            &["wireguard.mtu", "1280 to 9000"],
        ),
        (
            "[wireguard]",
            "[[wireguard.port]]\nport = 8000\nroute = \"nope\"\n\n[wireguard]",
            &["wireguard.port[0].route", "\"nope\"", "routes: api"],
        ),
    ];
    for (from, to, needles) in cases {
        assert!(good.contains(from), "{from}");
        write(&config, good.replacen(from, to, 1));
        sh(&format!("kakehashi gateway check --config {}", s(&config))).fails_with(needles);
    }
}

#[test]
fn a_handshake_flood_gets_cookie_replies_and_the_terminal_still_connects() {
    use boringtun::noise::{Tunn, TunnResult};
    let clinic = clinic(|t| t);
    let port = clinic.wg_port();
    let key = std::fs::read_to_string(clinic.path("data/wireguard.key")).unwrap();
    let gateway = kakehashi_gateway::doors::wireguard::keys::Secret::from_base64(&key)
        .unwrap()
        .public_key();
    // Valid initiations (correct MAC1 for this gateway) from a key it does not know, far over the
    // rate limit, from one address.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let stranger = boringtun::x25519::StaticSecret::from([7u8; 32]);
    let mut buf = vec![0u8; 2048];
    for i in 0..400 {
        let mut tunn = Tunn::new(
            stranger.clone(),
            boringtun::x25519::PublicKey::from(gateway.0),
            None,
            None,
            i,
            None,
        );
        if let TunnResult::WriteToNetwork(init) = tunn.format_handshake_initiation(&mut buf, false) {
            udp.send_to(init, ("127.0.0.1", port)).unwrap();
        }
    }
    let mut cookies = 0;
    let mut reply = [0u8; 256];
    while let Ok((n, _)) = udp.recv_from(&mut reply) {
        assert_eq!((n, reply[0]), (64, 3), "only cookie replies (type 3, 64 bytes)");
        cookies += 1;
    }
    assert!(cookies > 0, "no cookie reply under load");
    // (This socket may not have kept every reply: its receive buffer is small.)
    assert!(clinic.metric("wg_cookies_sent_total") >= cookies);
    assert_eq!(clinic.metric("wg_handshakes_total"), 0);
    // The real terminal (wireguard-go answers cookies) gets in.
    let t = Terminal::up(&clinic.path("terminal-wg.conf"), port);
    // (A cookie costs wireguard-go a retry: 5 s each, more when the machine is busy.)
    t.route(TUNNEL).wait_for_ping(TUNNEL, Duration::from_secs(30));
    let (status, _) = t.curl(&["-u", &clinic.user], &patient_url(TUNNEL));
    assert_eq!(status, 200);
}
