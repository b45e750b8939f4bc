//! `kakehashi terminal add --wireguard` and `terminal wireguard`: configs judged by wireguard-tools
//! (`wg-quick strip` parses them, `wg pubkey` derives the keys), and every refusal changing nothing.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::*;

/// The public key `wg pubkey` derives from a private key.
pub(crate) fn wg_pubkey(private: &str) -> String {
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run wg: {e} (scripts/test installs wireguard-tools)"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{private}\n").as_bytes())
        .expect("write to wg");
    let out = child.wait_with_output().expect("wg pubkey");
    assert!(out.status.success(), "wg pubkey refused the key {private:?}");
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

/// A demo clinic's files (nothing running): gateway.toml with its [wireguard] section.
struct Clinic {
    tmp: tempfile::TempDir,
}

impl Clinic {
    fn new() -> Clinic {
        let tmp = tempfile::tempdir().expect("tempdir");
        sh(&format!(
            "kakehashi demo --setup-only --dir {} {}",
            s(&tmp.path().join("clinic")),
            DemoPorts::new("127.0.0.1").line()
        ))
        .ok();
        Clinic { tmp }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.tmp.path().join(file)
    }

    fn config(&self) -> String {
        s(&self.path("clinic/gateway.toml")).to_owned()
    }

    /// `kakehashi terminal LINE --config gateway.toml`.
    fn k(&self, line: &str) -> Run {
        sh(&format!("kakehashi terminal {line} --config {}", self.config()))
    }

    fn list(&self) -> Vec<serde_json::Value> {
        let out = sh(&format!(
            "kakehashi terminal list --json --data-dir {}",
            s(&self.path("clinic/data"))
        ))
        .ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    fn terminal(&self, name: &str) -> serde_json::Value {
        self.list()
            .into_iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed"))
    }
}

/// The value of `Key = value` in a wg-quick config.
fn setting<'a>(conf: &'a str, key: &str) -> Option<&'a str> {
    conf.lines()
        .find_map(|l| l.strip_prefix(key)?.trim_start().strip_prefix('='))
        .map(str::trim)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn add_wireguard_writes_a_private_config_wg_reads_and_the_inventory_holds_its_public_key() {
    let c = Clinic::new();
    let (conf, png) = (c.path("tablet-1.conf"), c.path("tablet-1.png"));
    let out = c
        .k(&format!(
            "add tablet-1 --wireguard --note home-visits --out {} --qr-png {} --show-qr",
            s(&conf),
            s(&png)
        ))
        .ok();
    // Asked for: the QR code on stdout (half blocks with their own colours), then what was done.
    assert!(out.contains('█') && out.contains("\x1b[40;97m"), "{out}");
    assert!(
        out.contains("registered terminal tablet-1 (enabled), WireGuard address 10.77.0.3"),
        "{out}"
    );
    assert!(out.contains(s(&conf)) && out.contains("SIGHUP"), "{out}");
    assert_eq!(mode(&conf), 0o600);
    assert_eq!(mode(&png), 0o600);
    assert_eq!(&std::fs::read(&png).unwrap()[..8], b"\x89PNG\r\n\x1a\n");

    let text = read(&conf);
    let stripped = sh(&format!("wg-quick strip {}", s(&conf))).ok();
    assert!(stripped.contains("[Peer]"), "{stripped}");
    let terminal = c.terminal("tablet-1");
    assert_eq!(terminal["note"], "home-visits");
    assert_eq!(terminal["wireguard"]["address"], "10.77.0.3");
    let private = setting(&text, "PrivateKey").expect("PrivateKey");
    assert_eq!(terminal["wireguard"]["public_key"], wg_pubkey(private), "{text}");
    // The terminal's private key is nowhere on the gateway; its preshared key is, for the gateway.
    let db = rusqlite::Connection::open(c.path("clinic/data/gateway.db")).unwrap();
    let dump: Vec<String> = db
        .prepare("SELECT quote(wg_public_key) || quote(wg_preshared_key) FROM terminals")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    drop(db);
    assert!(!dump.concat().contains(private));
    let psk = setting(&text, "PresharedKey").expect("a preshared key by default");
    assert!(dump.concat().contains(psk));
    assert!(terminal["wireguard"].get("preshared_key").is_none());
    // The gateway's key, endpoint and address, as gateway.toml and the key file say.
    let gateway_key = read(&c.path("clinic/data/wireguard.key"));
    assert_eq!(
        setting(&text, "PublicKey"),
        Some(wg_pubkey(gateway_key.trim()).as_str())
    );
    let toml = read(&c.path("clinic/gateway.toml"));
    let endpoint = setting(&toml, "endpoint")
        .and_then(|v| v.split('"').nth(1))
        .expect("endpoint");
    assert_eq!(setting(&text, "Endpoint"), Some(endpoint));
    assert_eq!(setting(&text, "AllowedIPs"), Some("10.77.0.1/32"));
    assert_eq!(setting(&text, "Address"), Some("10.77.0.3/32"));
    assert_eq!(setting(&text, "MTU"), Some("1420"));

    let table = sh(&format!(
        "kakehashi terminal list --data-dir {}",
        s(&c.path("clinic/data"))
    ))
    .ok();
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{table}"))
            .to_owned()
    };
    assert!(table.lines().next().unwrap().contains("TUNNEL"), "{table}");
    assert!(row("tablet-1").contains("10.77.0.3"), "{table}");
    assert!(row("reception-1").contains(" - "), "{table}");

    // The same name again: refused, nothing changed, no file.
    let before = snapshot(c.tmp.path());
    c.k(&format!(
        "add tablet-1 --wireguard --out {}",
        s(&c.path("again.conf"))
    ))
    .fails_with(&["terminal \"tablet-1\" is already registered"]);
    assert_unchanged(&before, &snapshot(c.tmp.path()));
    // An existing output file is never overwritten.
    c.k(&format!("add tablet-2 --wireguard --out {}", s(&conf)))
        .fails_with(&["tablet-1.conf exists already; not overwriting it"]);
    assert_unchanged(&before, &snapshot(c.tmp.path()));
    // A directory that does not exist: the database is not touched either.
    c.k(&format!(
        "add tablet-2 --wireguard --out {}",
        s(&c.path("no/such/dir.conf"))
    ))
    .fails_with(&["no/such/dir.conf"]);
    assert_unchanged(&before, &snapshot(c.tmp.path()));
    assert!(c.list().iter().all(|t| t["name"] != "tablet-2"));
    // The data directory is the configuration's.
    c.k(&format!(
        "add tablet-2 --wireguard --out {} --data-dir {}",
        s(&c.path("t2.conf")),
        s(&c.path("elsewhere"))
    ))
    .fails_with(&["--data-dir", "data_dir", "leave --data-dir out"]);
    assert_unchanged(&before, &snapshot(c.tmp.path()));
}

#[test]
fn an_existing_terminal_gets_wireguard_once_and_the_default_file_is_name_wg_conf() {
    let c = Clinic::new();
    // No --out: NAME-wg.conf in the current directory.
    let run = Command::new(bin())
        .args([
            "terminal",
            "wireguard",
            "reception-1",
            "--no-psk",
            "--config",
            &c.config(),
        ])
        .current_dir(c.tmp.path())
        .env_remove("KAKEHASHI_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run kakehashi");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("gave terminal reception-1 a WireGuard identity, address 10.77.0.3"),
        "{stdout}"
    );
    let conf = c.path("reception-1-wg.conf");
    assert_eq!(mode(&conf), 0o600);
    let text = read(&conf);
    assert!(setting(&text, "PresharedKey").is_none(), "--no-psk:\n{text}");
    sh(&format!("wg-quick strip {}", s(&conf))).ok();
    let terminal = c.terminal("reception-1");
    assert_eq!(
        terminal["wireguard"]["public_key"],
        wg_pubkey(setting(&text, "PrivateKey").expect("PrivateKey"))
    );

    let before = snapshot(c.tmp.path());
    c.k(&format!(
        "wireguard reception-1 --out {}",
        s(&c.path("second.conf"))
    ))
    .fails_with(&["\"reception-1\" already has a WireGuard identity (tunnel address 10.77.0.3)"]);
    c.k(&format!("wireguard ghost --out {}", s(&c.path("ghost.conf"))))
        .fails_with(&["terminal \"ghost\" is not registered"]);
    // Options of --wireguard without it are a mistake, not ignored.
    sh(&format!(
        "kakehashi terminal add plain --out x.conf --data-dir {}",
        s(&c.path("clinic/data"))
    ))
    .fails_with(&["go with --wireguard"]);
    assert_unchanged(&before, &snapshot(c.tmp.path()));
}

#[test]
fn without_a_wireguard_section_or_a_reachable_endpoint_nothing_is_written() {
    let c = Clinic::new();
    let toml = read(&c.path("clinic/gateway.toml"));
    let start = toml
        .find("\n[wireguard]")
        .expect("[wireguard] in the demo's gateway.toml");
    let end = start + toml[start..].find("\n[auth]").expect("[auth] after it");
    // A fresh data directory too: not even it may appear.
    let without =
        format!("{}{}", &toml[..start], &toml[end..]).replace("data_dir = \"data\"", "data_dir = \"fresh\"");
    refused(
        &c,
        "no-wg.toml",
        &without,
        &["no-wg.toml: no [wireguard] section"],
    );

    // Listening on every address with no endpoint: a config naming 0.0.0.0 would be useless.
    let unreachable = toml
        .lines()
        .filter(|l| !l.starts_with("endpoint"))
        .map(|l| match l.strip_prefix("listen = \"127.0.0.1:") {
            Some(rest) => format!("listen = \"0.0.0.0:{rest}"),
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        .replace("data_dir = \"data\"", "data_dir = \"fresh\"");
    refused(
        &c,
        "any.toml",
        &unreachable,
        &["wireguard.endpoint is not set", "0.0.0.0:"],
    );
}

/// `terminal add --wireguard` with the configuration `text` fails naming `needles` and changes
/// nothing.
#[track_caller]
fn refused(c: &Clinic, name: &str, text: &str, needles: &[&str]) {
    let config = c.path("clinic").join(name);
    write(&config, text);
    let before = snapshot(c.tmp.path());
    sh(&format!(
        "kakehashi terminal add tablet --wireguard --config {} --out {}",
        s(&config),
        s(&c.path("tablet.conf"))
    ))
    .fails_with(needles);
    assert_unchanged(&before, &snapshot(c.tmp.path()));
}
