//! Redundant uplinks: the cloud in a network namespace of its own, reached over two lines (veth
//! pairs), path A direct and path B through a WireGuard tunnel the gateway dials itself to a
//! concentrator we did not write (wireguard-go). A line is black-holed by dropping the cloud's
//! answers to it (nftables in the cloud's namespace: requests arrive, nothing comes back, as with
//! a dead line on the far side); the truth about writes is the cloud's database.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::failover::{Reply, Terminal, WRITE, acknowledged, record};
use super::gateway::{Clinic, PATIENT};
use super::wireguard::{run, wireguard_go};
use crate::support::*;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The cloud's namespace and the two lines to it: `10.202.N.1` here and `.2` there is line A,
/// `10.203.N.*` line B, and `10.204.N.*` the tunnel over B (concentrator `.1`, gateway `.2`).
struct Cloud {
    ns: String,
    n: u32,
}

impl Cloud {
    fn up(gateway_public: &str) -> (Cloud, String) {
        let n = (std::process::id() % 200 + NEXT.fetch_add(1, Relaxed)) % 250 + 1;
        let cloud = Cloud {
            ns: format!("khc{}x{n}", std::process::id() % 1000),
            n,
        };
        cloud.teardown();
        let (ns, n) = (&cloud.ns, cloud.n);
        run(&format!("ip netns add {ns}"));
        for (line, net) in [("a", 202), ("b", 203)] {
            for cmd in [
                format!("ip link add {ns}{line} type veth peer name {ns}{line}c"),
                format!("ip link set {ns}{line}c netns {ns}"),
                format!("ip addr add 10.{net}.{n}.1/24 dev {ns}{line}"),
                format!("ip link set {ns}{line} up"),
                format!("ip -n {ns} addr add 10.{net}.{n}.2/24 dev {ns}{line}c"),
                format!("ip -n {ns} link set {ns}{line}c up"),
            ] {
                run(&cmd);
            }
        }
        run(&format!("ip -n {ns} link set lo up"));
        let wg = format!("{ns}w");
        wireguard_go(ns, &wg);
        let private = run("wg genkey").trim().to_owned();
        let public = shell(&format!("echo {private} | wg pubkey")).trim().to_owned();
        let key = std::env::temp_dir().join(format!("{ns}.key"));
        write(&key, format!("{private}\n"));
        for cmd in [
            format!(
                "ip netns exec {ns} wg set {wg} listen-port 51820 private-key {} peer {gateway_public} allowed-ips 10.204.{n}.2/32",
                s(&key)
            ),
            format!("ip -n {ns} addr add 10.204.{n}.1/24 dev {wg}"),
            format!("ip -n {ns} link set {wg} mtu 1420 up"),
        ] {
            run(&cmd);
        }
        let _ = std::fs::remove_file(&key);
        (cloud, public)
    }

    /// Drops (or stops dropping) everything the cloud sends back over `line` (`a` or `b`).
    fn black_hole(&self, line: &str, on: bool) {
        self.drop_share(line, on.then_some(1));
    }

    /// Drops one in `every` of the packets the cloud sends back over `line` (`None`: none), with
    /// nftables in the cloud's namespace (its output hook, so no cached route escapes it).
    fn drop_share(&self, line: &str, every: Option<u32>) {
        let (ns, n) = (&self.ns, self.n);
        let net = if line == "a" { 202 } else { 203 };
        let table = format!("kkh_{line}");
        tool(
            "ip",
            &["netns", "exec", ns, "nft", "delete", "table", "inet", &table],
        );
        let Some(every) = every else { return };
        let rule = match every {
            1 => format!("ip daddr 10.{net}.{n}.1 drop"),
            k => format!("ip daddr 10.{net}.{n}.1 numgen random mod {k} == 0 drop"),
        };
        shell(&format!(
            "ip netns exec {ns} nft 'add table inet {table}; \
             add chain inet {table} out {{ type filter hook output priority 0; }}; \
             add rule inet {table} out {rule}'"
        ));
    }

    fn teardown(&self) {
        for pid in tool("ip", &["netns", "pids", &self.ns]).stdout.split_whitespace() {
            tool("kill", &["-9", pid]);
        }
        tool("ip", &["netns", "del", &self.ns]);
        for line in ["a", "b"] {
            tool("ip", &["link", "del", &format!("{}{line}", self.ns)]);
        }
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A demo clinic whose cloud is in `Cloud`'s namespace: path `a` (upstream.url) over line A,
/// path `vpn` through the tunnel over line B.
fn clinic() -> (Cloud, Clinic) {
    let dir = Clinic::setup("127.0.0.1");
    let d = dir.path().join("clinic");
    let key = d.join("uplink-wg.key");
    let private = run("wg genkey");
    write(&key, &private);
    run(&format!("chmod 600 {}", s(&key)));
    let public = shell(&format!("wg pubkey < {}", s(&key))).trim().to_owned();
    let (cloud, concentrator) = Cloud::up(&public);
    let n = cloud.n;
    let toml = d.join("gateway.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    let port = text
        .lines()
        .find_map(|l| l.strip_prefix("url = \"https://127.0.0.1:"))
        .and_then(|rest| rest.split('"').next())
        .expect("the demo's upstream.url")
        .to_owned();
    let text = text.replace(
        "[upstream]\n",
        &format!("[upstream]\nname = \"a\"\nconnect = \"10.202.{n}.2:{port}\"\n"),
    );
    write(&toml, text);
    let extra = format!(
        r#"
[failover]
healthy_secs = 1

[[upstream.path]]
name = "vpn"

[upstream.path.wireguard]
private_key = "uplink-wg.key"
peer = "{concentrator}"
endpoint = "10.203.{n}.2:51820"
address = "10.204.{n}.2/24"
engine = "10.204.{n}.1:{port}"
"#
    );
    let clinic = Clinic::adopt_with_cloud_in(dir, &extra, &cloud.ns);
    (cloud, clinic)
}

/// [`clinic`], once both paths answer their probes and a read has been answered (the cache
/// holds the patient).
fn ready() -> (Cloud, Clinic) {
    let (cloud, clinic) = clinic();
    let began = Instant::now();
    while clinic.path_metric("uplink_path_probes_total", "vpn") < 1.0
        || clinic.path_metric("uplink_path_up", "vpn") < 1.0
        || clinic.path_metric("uplink_path_up", "a") < 1.0
    {
        // The tunnel's first handshake is answered at once (a datagram dropped by a new
        // socket once cost WireGuard's 5 s retry here).
        assert!(
            began.elapsed() < Duration::from_secs(3),
            "the paths answered no probe within 3 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut t = Terminal::new(&clinic);
    assert_eq!(t.get(PATIENT).expect("an answer").api_result(), "00");
    clinic.wait_path(0, Duration::from_secs(1));
    (cloud, clinic)
}

impl Clinic {
    /// The labelled metric `name{path="PATH"}`.
    fn path_metric(&self, name: &str, path: &str) -> f64 {
        let text = curl_text(&format!("http://{}/metrics", self.admin));
        let prefix = format!("kakehashi_{name}{{path=\"{path}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in the metrics"))
    }

    /// Waits until path `path` carries the traffic (`kakehashi_uplink_path`), at most `within`.
    fn wait_path(&self, path: u64, within: Duration) -> Duration {
        let began = Instant::now();
        while self.metric("uplink_path") != path {
            assert!(
                began.elapsed() < within,
                "path {path} not in use within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        began.elapsed()
    }
}

/// A shell pipeline that must succeed; its output.
#[track_caller]
fn shell(line: &str) -> String {
    let r = tool("sh", &["-c", line]);
    assert_eq!(r.code, 0, "{line}: {}", r.stderr);
    r.stdout
}

fn curl_text(url: &str) -> String {
    tool("curl", &["-s", "-m", "5", url]).stdout
}

/// Readers and a writer on keep-alive connections while `during` runs; every failure, and the
/// markers of the writes acknowledged.
fn traffic(clinic: &Clinic, date: &str, during: impl FnOnce()) -> (Vec<String>, Vec<String>) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let stop = &stop;
                scope.spawn(move || {
                    let mut t = Terminal::new(clinic);
                    let mut failed = Vec::new();
                    while !stop.load(Relaxed) {
                        let reply = t.get(PATIENT);
                        if let Some(why) = not_from_the_cloud(&reply) {
                            failed.push(why);
                        }
                    }
                    failed
                })
            })
            .collect();
        let writer = scope.spawn(|| {
            let mut t = Terminal::new(clinic);
            let (mut failed, mut written) = (Vec::new(), Vec::new());
            for i in 0.. {
                if stop.load(Relaxed) {
                    break;
                }
                let marker = format!("m{i}");
                let reply = t.post(WRITE, &record(date, &marker));
                if acknowledged(&reply) {
                    written.push(marker);
                }
                if let Some(why) = not_from_the_cloud(&reply) {
                    failed.push(format!("write {why}"));
                }
            }
            (failed, written)
        });
        std::thread::sleep(Duration::from_millis(500));
        during();
        stop.store(true, Relaxed);
        let mut failed: Vec<String> = readers.into_iter().flat_map(|r| r.join().unwrap()).collect();
        let (write_failures, written) = writer.join().unwrap();
        failed.extend(write_failures);
        (failed, written)
    })
}

/// No call of [`traffic`] failed, and every write acknowledged is in the cloud exactly once
/// (none twice, acknowledged or not).
fn every_call_answered_by_the_cloud_once(clinic: &Clinic, date: &str, failed: &[String], written: &[String]) {
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(!written.is_empty());
    let records = clinic.cloud_records(date);
    for marker in written {
        assert_eq!(
            records.get(marker),
            Some(&1),
            "write {marker} in the cloud exactly once: {records:?}"
        );
    }
    assert!(records.values().all(|&n| n == 1), "no write twice: {records:?}");
}

/// Why an answer is not the cloud's own, in `normal` mode.
fn not_from_the_cloud(reply: &Option<Reply>) -> Option<String> {
    let Some(r) = reply else {
        return Some("no answer".into());
    };
    let normal = r.header("x-hybridmode") == Some("normal") && r.header("age").is_none();
    (!(r.status == 200 && r.api_result() == "00" && normal))
        .then(|| format!("{} {} {}", r.status, r.headers.replace('\n', " "), r.body))
}

#[test]
fn a_black_holed_line_moves_the_traffic_to_the_tunnel_without_a_failed_read_or_a_write_twice() {
    let (cloud, clinic) = ready();
    let mut t = Terminal::new(&clinic);

    // Line A goes silent under load: the tunnel carries everything within a second.
    let mut switched = Duration::ZERO;
    let (failed, written) = traffic(&clinic, "20261201", || {
        cloud.black_hole("a", true);
        switched = clinic.wait_path(1, Duration::from_secs(1));
        std::thread::sleep(Duration::from_secs(2));
    });
    eprintln!(
        "line A black-holed: path vpn in use after {switched:?}, {} writes acknowledged",
        written.len()
    );
    every_call_answered_by_the_cloud_once(&clinic, "20261201", &failed, &written);
    assert_eq!(clinic.metric("hybrid_mode"), 0, "the cloud never counted as down");
    assert!(clinic.audit_has("allow", "path a down"));
    assert!(
        clinic.audit_has("allow", "path vpn"),
        "calls answered through the tunnel are audited with it"
    );
    let status = curl_text(&format!("http://{}/status.json", clinic.admin));
    let json: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(json["paths"][0]["up"], false, "{status}");
    assert_eq!(json["paths"][1]["active"], true, "{status}");

    // Line A back: the traffic fails back once the line has been steady for the window.
    cloud.black_hole("a", false);
    let back = clinic.wait_path(0, Duration::from_secs(6));
    eprintln!("line A restored: back on path a after {back:?}");
    assert!(back >= Duration::from_secs(1), "not before the stable window");

    // Both lines silent: the local engine, as with one line.
    cloud.black_hole("a", true);
    cloud.black_hole("b", true);
    clinic.wait_mode(1, Duration::from_secs(3));
    let local = t.get(PATIENT).expect("an answer");
    assert_eq!(local.api_result(), "00", "the cache answers");
    assert_eq!(local.header("x-hybridmode"), Some("emergency"));
    assert!(clinic.audit_has("allow", "every path is down"));
}

#[test]
fn a_line_losing_a_fifth_of_its_packets_for_thirty_seconds_does_not_flap() {
    let (cloud, clinic) = ready();
    let before = clinic.metric("uplink_path_changes_total");
    let (failed, written) = traffic(&clinic, "20261202", || {
        cloud.drop_share("a", Some(5));
        std::thread::sleep(Duration::from_secs(30));
        cloud.drop_share("a", None);
    });
    let changes = clinic.metric("uplink_path_changes_total") - before;
    eprintln!(
        "20 % loss on line A for 30 s: {changes} path changes, {} writes acknowledged",
        written.len()
    );
    every_call_answered_by_the_cloud_once(&clinic, "20261202", &failed, &written);
    assert!(changes <= 3, "the paths changed {changes} times in 30 s");
    assert_eq!(clinic.metric("hybrid_changes_total"), 0, "never emergency");
}

#[test]
fn a_wrong_path_is_refused_with_its_key_and_a_deaf_or_unresolvable_concentrator_leaves_the_line_in_use() {
    let dir = Clinic::setup("127.0.0.1");
    let d = dir.path().join("clinic");
    let toml = d.join("gateway.toml");
    let base = std::fs::read_to_string(&toml).unwrap();
    for (extra, expected) in [
        (
            "\n[[upstream.path]]\nname = \"b\"\nurl = \"http://engine\"\n",
            "upstream.path[0].url",
        ),
        (
            "\n[[upstream.path]]\nname = \"primary\"\n",
            "upstream.path[0].name",
        ),
        (
            "\n[[upstream.path]]\nname = \"vpn\"\n[upstream.path.wireguard]\nprivate_key = \"k\"\npeer = \"not a key\"\nendpoint = \"10.0.0.1:51820\"\naddress = \"10.9.0.2/24\"\nengine = \"10.9.0.1:443\"\n",
            "upstream.path[0].wireguard.peer",
        ),
    ] {
        write(&toml, format!("{base}{extra}"));
        let r = kakehashi(&["gateway", "check", "--config", s(&toml)]);
        assert_ne!(r.code, 0, "{extra}");
        assert!(r.stderr.contains(expected), "{expected}: {}", r.stderr);
        assert!(r.stderr.contains("gateway.toml"), "names the file: {}", r.stderr);
    }
    // A concentrator that never answers (nothing listens there): that path is down, the line
    // carries the clinic in `normal`.
    let key = d.join("uplink-wg.key");
    write(&key, run("wg genkey"));
    run(&format!("chmod 600 {}", s(&key)));
    let peer = shell("wg genkey | wg pubkey").trim().to_owned();
    let port = free_udp_port();
    write(&toml, base);
    // And one whose concentrator's name does not resolve (the line is down at boot): the
    // gateway starts all the same.
    let tunnel = |name: &str, endpoint: &str| {
        format!(
            "\n[[upstream.path]]\nname = \"{name}\"\n[upstream.path.wireguard]\nprivate_key = \"uplink-wg.key\"\n\
             peer = \"{peer}\"\nendpoint = \"{endpoint}\"\naddress = \"10.9.0.2/24\"\nengine = \"10.9.0.1:443\"\n"
        )
    };
    let extra = format!(
        "\n[failover]\nhealthy_secs = 1\n{}{}",
        tunnel("vpn", &format!("127.0.0.1:{port}")),
        tunnel("unresolved", "concentrator.invalid:51820")
    );
    let clinic = Clinic::adopt(dir, &extra);
    let began = Instant::now();
    while clinic.path_metric("uplink_path_up", "vpn") > 0.0
        || clinic.path_metric("uplink_path_up", "unresolved") > 0.0
    {
        assert!(
            began.elapsed() < Duration::from_secs(5),
            "the deaf tunnel never went down"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut t = Terminal::new(&clinic);
    let reply = t.get(PATIENT).expect("an answer");
    assert_eq!(reply.header("x-hybridmode"), Some("normal"));
    assert_eq!(clinic.metric("uplink_path"), 0);
    assert!(clinic.audit_has("allow", "path vpn down"));
    assert!(clinic.audit_has("allow", "path unresolved down"));
}
