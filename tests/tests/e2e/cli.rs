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
        (
            "terminal",
            &["add", "wireguard", "list", "disable", "enable", "remove"][..],
        ),
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
fn demo_setup_only_leaves_a_working_clinic_and_can_run_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let out = kakehashi(&["demo", "--setup-only", "--dir", s(&dir)]).ok();
    assert!(out.contains("kakehashi gateway run --config"), "{out}");
    for f in [
        "ca.pem", "terminal.pem", "terminal.key", "terminal.p12", "terminal.p12.password", "server.pem",
        "server.key", "crl.pem", "user.txt", "engine.toml", "gateway.toml", "uplink.pem", "engine.pem",
        "terminal-wg.conf", "terminal-wg.url", "terminal-wg.png",
    ] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    for f in [
        "terminal.key", "terminal.p12", "terminal.p12.password", "server.key", "ca.key", "user.txt",
        "upstream.password", "uplink.key", "engine.key", "terminal-wg.conf", "terminal-wg.png",
        "data/wireguard.key",
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

    // The WireGuard terminal: its own inventory entry, a config wg-quick reads that names the
    // gateway's key and outer address, and the URL inside the tunnel.
    assert_eq!(
        std::fs::read_to_string(dir.join("terminal-wg.url")).unwrap(),
        "http://10.77.0.1:8000\n"
    );
    let conf = std::fs::read_to_string(dir.join("terminal-wg.conf")).unwrap();
    let toml = std::fs::read_to_string(dir.join("gateway.toml")).unwrap();
    let port = toml
        .lines()
        .find_map(|l| l.strip_prefix("listen = \"0.0.0.0:"))
        .and_then(|l| l.split('"').next())
        .unwrap_or_else(|| panic!("no [wireguard] listen on 0.0.0.0 in gateway.toml:\n{toml}"));
    assert!(conf.contains(&format!("Endpoint = 127.0.0.1:{port}\n")), "{conf}");
    assert!(
        conf.contains("AllowedIPs = 10.77.0.1/32\n") && conf.contains("Address = 10.77.0.2/32\n"),
        "{conf}"
    );
    let gateway_key = std::fs::read_to_string(dir.join("data/wireguard.key")).unwrap();
    let gateway_public = super::wireguard_cli::wg_pubkey(gateway_key.trim());
    assert!(
        conf.contains(&format!("PublicKey = {gateway_public}\n")),
        "{conf}"
    );
    sh(&format!("wg-quick strip {}", s(&dir.join("terminal-wg.conf")))).ok();
    let list = kakehashi(&["terminal", "list", "--json", "--data-dir", s(&dir.join("data"))]).ok();
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["name"], "reception-1");
    assert!(list[0]["wireguard"].is_null());
    assert_eq!(list[1]["name"], "terminal-wg");
    assert_eq!(list[1]["wireguard"]["address"], "10.77.0.2");
    sh(&format!(
        "kakehashi gateway check --config {}",
        s(&dir.join("gateway.toml"))
    ))
    .ok();

    let before = snapshot(&dir);
    let again = kakehashi(&["demo", "--setup-only", "--dir", s(&dir)]).ok();
    assert!(again.contains("Reusing the demo clinic"), "{again}");
    assert_unchanged(&before, &snapshot(&dir));
}

/// The README's main job: `kakehashi demo` starts both processes and prints what to type.
#[test]
fn demo_runs_the_cloud_and_the_gateway_and_its_curl_command_fetches_a_patient() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let ports = DemoPorts::new("127.0.0.1");
    let mut demo = start_demo(&dir, &ports);
    assert_eq!(demo.url, format!("https://{}", ports.listen));
    let user = std::fs::read_to_string(dir.join("user.txt")).unwrap();
    let d = s(&dir);
    let out = sh(&format!(
        "curl -s --cacert {d}/ca.pem --cert {d}/terminal.pem --key {d}/terminal.key -u {} {}/api01rv2/patientgetv2?id=1&format=json",
        user.trim(),
        demo.url
    ))
    .ok();
    assert!(out.contains("\"Patient_ID\":\"1\""), "{out}");
    // SIGTERM stops both children, gracefully (the gateway flushes its audit log).
    sh(&format!("kill -TERM {}", demo.pid())).ok();
    wait_until_closed(&ports);
    demo.kill();
    sh(&format!("kakehashi audit verify --config {d}/gateway.toml")).ok();
}

/// `kill -9` of the demo leaves nothing behind: the kernel ends its cloud engine and gateway
/// (the parent-death signal they asked for), so the ports are free and the same demo starts
/// again at once instead of failing with "Address already in use".
#[test]
fn killing_the_demo_ends_its_children_and_frees_its_ports() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let ports = DemoPorts::new("127.0.0.1");
    let mut demo = start_demo(&dir, &ports);
    let children = children_of(demo.pid());
    assert_eq!(
        children.len(),
        2,
        "the demo runs engine-sim and the gateway: {children:?}"
    );
    let engine: u32 = std::fs::read_to_string(dir.join("engine.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(children.contains(&engine), "{children:?} {engine}");

    demo.kill();
    let started = std::time::Instant::now();
    while children.iter().any(|&pid| running(pid)) {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the demo's children outlived it: {:?}",
            children.iter().filter(|&&p| running(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    wait_until_closed(&ports);
    // The same ports, the same clinic: a second demo starts.
    let mut again = start_demo(&dir, &ports);
    assert_eq!(again.url, format!("https://{}", ports.listen));
    sh(&format!("kill -TERM {}", again.pid())).ok();
    wait_until_closed(&ports);
    again.kill();
}

fn start_demo(dir: &std::path::Path, ports: &DemoPorts) -> Server {
    let mut args = vec!["demo", "--dir", s(dir)];
    args.extend(ports.args());
    Server::start(&args)
}

/// Waits until nothing accepts connections on the demo's TCP ports any more.
fn wait_until_closed(ports: &DemoPorts) {
    let started = std::time::Instant::now();
    let open = || {
        [&ports.listen, &ports.engine, &ports.admin, &ports.est]
            .into_iter()
            .filter(|a| std::net::TcpStream::connect(a.as_str()).is_ok())
            .cloned()
            .collect::<Vec<_>>()
    };
    while !open().is_empty() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "still listening: {:?}",
            open()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The process ids whose parent is `pid` (from /proc/PID/stat: "PID (COMM) STATE PPID ...").
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| stat(p).is_some_and(|(_, ppid)| ppid == pid))
        .collect()
}

/// Whether `pid` is still a live process (a zombie waiting for a reaper has ended).
fn running(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// A process's state letter and parent id.
fn stat(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the fields follow the last ')'.
    let mut fields = text[text.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}
