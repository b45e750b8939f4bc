//! `kakehashi backup` at its two targets: the vendor's SFTP server (a real OpenSSH `sshd` on a
//! loopback port, with its own configuration and keys) and a directory. An archive appears at
//! either only under its final name, whole and verified; a replacement restored from one fetched
//! with OpenSSH's own `sftp` serves the clinic; a wrong host key, a refused login and a server
//! gone fail the run with the reason; an incremental archive restores whole from the server,
//! the earlier archive it refers to fetched beside it; and a run killed with SIGKILL while it
//! uploads leaves nothing under an archive's name, the earlier archives intact, and the next run
//! cleans up.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::backup::{audit_entries_in, backup, backup_json, file_name, homes_of, intact};
use super::gateway::{Clinic, PATIENT};
use crate::support::*;

/// An OpenSSH server on a free loopback port, serving `internal-sftp` to the one client key it
/// made; stopped on drop.
struct Sshd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Sshd {
    /// Keys, `authorized_keys` and `sshd_config` in `dir`; then `sshd -D -e -f CONFIG`.
    fn start(dir: &Path) -> Sshd {
        std::fs::create_dir_all(dir).unwrap();
        // sshd insists on its privilege separation directory, even with a config of its own.
        std::fs::create_dir_all("/run/sshd").unwrap();
        for key in ["host_key", "client_key", "other_key"] {
            keygen(&dir.join(key));
        }
        std::fs::copy(dir.join("client_key.pub"), dir.join("authorized_keys")).unwrap();
        let port = free_port();
        let config = dir.join("sshd_config");
        write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile none\n\
                 Subsystem sftp internal-sftp\n",
                s(&dir.join("host_key")),
                s(&dir.join("authorized_keys"))
            ),
        );
        let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f", s(&config)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sshd (scripts/test installs openssh-server)");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "sshd is not listening: {}",
                std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sshd {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    /// A `known_hosts` line for this server with `key`'s public half.
    fn known_hosts(&self, key: &str) -> String {
        let public = std::fs::read_to_string(self.dir.join(format!("{key}.pub"))).unwrap();
        let fields: Vec<&str> = public.split_whitespace().take(2).collect();
        format!("[127.0.0.1]:{} {}\n", self.port, fields.join(" "))
    }

    fn url(&self, remote: &Path) -> String {
        format!("sftp://root@127.0.0.1:{}{}", self.port, s(remote))
    }

    /// Points the clinic's `[backup]` at `remote` on this server: its host key pinned and the
    /// client key beside gateway.toml.
    fn configure(&self, clinic: &Path, remote: &Path) {
        write(&clinic.join("backup-known-hosts"), self.known_hosts("host_key"));
        std::fs::copy(self.dir.join("client_key"), clinic.join("backup-ssh.key")).unwrap();
        set_target(
            clinic,
            &format!(
                "sftp = \"{}\"\nknown_hosts = \"backup-known-hosts\"\nidentity = \"backup-ssh.key\"",
                self.url(remote)
            ),
        );
    }

    /// Fetches `remote` with OpenSSH's own `sftp`, as a vendor would.
    fn fetch(&self, remote: &Path, local: &Path) {
        let batch = self.dir.join("batch");
        write(&batch, format!("get {} {}\n", s(remote), s(local)));
        let known = self.dir.join("known_hosts");
        write(&known, self.known_hosts("host_key"));
        tool(
            "sftp",
            &[
                "-b",
                s(&batch),
                "-i",
                s(&self.dir.join("client_key")),
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                &format!("UserKnownHostsFile={}", s(&known)),
                "-P",
                &self.port.to_string(),
                "root@127.0.0.1",
            ],
        )
        .ok();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    tool("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-f", s(path)]).ok();
}

/// Replaces the demo's `dir = …` line of `[backup]` with `lines`.
fn set_target(clinic: &Path, lines: &str) {
    let config = clinic.join("gateway.toml");
    let toml = std::fs::read_to_string(&config).unwrap();
    let at = toml.find("\ndir = ").expect("the demo's backup.dir") + 1;
    let end = at + toml[at..].find('\n').unwrap();
    write(&config, format!("{}{lines}{}", &toml[..at], &toml[end..]));
}

pub(super) fn set_keep(clinic: &Path, keep: u32) {
    let config = clinic.join("gateway.toml");
    let toml = std::fs::read_to_string(&config).unwrap();
    let toml = toml
        .lines()
        .map(|l| match l.starts_with("keep = ") {
            true => format!("keep = {keep}"),
            false => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    write(&config, toml);
}

/// The file names in `dir`, sorted.
pub(super) fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every (name, size) seen in a directory while something runs, looked at every millisecond.
struct Watch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(String, u64)>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Watch {
    fn start(dir: &Path) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (dir, stop2, seen2) = (dir.to_owned(), stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                    if let Ok(meta) = entry.metadata() {
                        let seen_now = (entry.file_name().to_string_lossy().into_owned(), meta.len());
                        let mut seen = seen2.lock().unwrap();
                        if !seen.contains(&seen_now) {
                            seen.push(seen_now);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        Watch { stop, seen, thread }
    }

    fn stop(self) -> Vec<(String, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap()
    }
}

#[test]
fn a_backup_to_sftp_appears_whole_verifies_and_a_replacement_restored_from_it_serves() {
    let dir = Clinic::setup("127.0.0.1");
    let clinic = dir.path().join("clinic");
    let sshd = Sshd::start(&dir.path().join("sshd"));
    let remote = dir.path().join("vendor");
    std::fs::create_dir(&remote).unwrap();
    sshd.configure(&clinic, &remote);
    let config = clinic.join("gateway.toml");
    let check = kakehashi(&["gateway", "check", "--config", s(&config)]).ok();
    assert!(
        check.contains(&format!(
            "backup: to {}, keep 14, its host key pinned in",
            sshd.url(&remote)
        )),
        "{check}"
    );
    let mut a = Clinic::adopt(dir, "");
    let (code, body) = a.curl(&format!("{} -u {}", a.tls(), a.user), PATIENT);
    assert_eq!(code, 200, "{body}");

    // Only ever a hidden partial file, and then the archive whole under its name.
    let watch = Watch::start(&remote);
    let (out, archive) = backup(&config);
    let seen = watch.stop();
    let url = sshd.url(&remote);
    assert!(archive.starts_with(&format!("{url}/kakehashi-")), "{out}");
    let name = archive.rsplit('/').next().unwrap().to_owned();
    assert_eq!(names(&remote), std::slice::from_ref(&name));
    let bytes = std::fs::metadata(remote.join(&name)).unwrap().len();
    assert!(out.contains(&format!("{bytes} bytes")), "{out}");
    for (seen, len) in &seen {
        match *seen == name {
            true => assert_eq!(*len, bytes, "{name} seen before it was whole"),
            false => assert!(
                seen.starts_with(".kakehashi-") && seen.ends_with(".backup.partial"),
                "{seen} at the target"
            ),
        }
    }
    assert_eq!(mode(&remote.join(&name)), 0o600);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.path("data/backup.json")).unwrap()).unwrap();
    assert_eq!(state["last_ok"], true, "{state}");
    assert_eq!(state["last_good_archive"], archive.as_str(), "{state}");
    assert_eq!(a.metric("backup_last_ok"), 1);

    // Listed and verified at the target: the newest by default, or named by its URL.
    let list = kakehashi(&["backup", "list", "--config", s(&config)]).ok();
    assert!(
        list.contains(&format!("{archive}  ")) && list.contains("this appliance"),
        "{list}"
    );
    for verify in [
        vec!["backup", "verify", "--config", s(&config)],
        vec!["backup", "verify", &archive, "--config", s(&config)],
        vec!["backup", "verify", &name, "--config", s(&config)],
    ] {
        let out = kakehashi(&verify).ok();
        assert!(out.contains(&format!("{archive}: verified")), "{out}");
    }

    // The vendor fetches it with OpenSSH's sftp; a replacement is restored from it and serves
    // the same terminal.
    let fetched = a.dir.path().join("fetched.backup");
    sshd.fetch(&remote.join(&name), &fetched);
    a.gateway.kill();
    let new = a.dir.path().join("replacement");
    kakehashi(&[
        "backup",
        "restore",
        s(&fetched),
        "--identity",
        s(&a.path("backup.key")),
        "--to",
        s(&new),
    ])
    .ok();
    // Or straight from the server, the host key pinned: the same directory.
    let from_url = a.dir.path().join("from-url");
    let age_key = a.path("backup.key");
    let restore_url = |extra: &[&str]| {
        let mut args = vec![
            "backup",
            "restore",
            &archive,
            "--identity",
            s(&age_key),
            "--to",
            s(&from_url),
        ];
        args.extend_from_slice(extra);
        kakehashi(&args)
    };
    restore_url(&[]).fails_with(&["needs --known-hosts", "--ssh-key"]);
    let pinned = a.path("backup-known-hosts");
    let ssh_key = a.path("backup-ssh.key");
    let wrong = a.dir.path().join("wrong-known-hosts");
    write(&wrong, sshd.known_hosts("other_key"));
    restore_url(&["--known-hosts", s(&wrong), "--ssh-key", s(&ssh_key)])
        .fails_with(&["Host key verification failed"]);
    assert!(!from_url.exists(), "nothing restored");
    restore_url(&["--known-hosts", s(&pinned), "--ssh-key", s(&ssh_key)]).ok();
    assert_eq!(
        std::fs::read(from_url.join("data/gateway.db")).unwrap(),
        std::fs::read(new.join("data/gateway.db")).unwrap()
    );

    let restored: toml::Table = std::fs::read_to_string(new.join("gateway.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(restored["backup"]["sftp"].as_str(), Some(url.as_str()));
    let key = new.join(restored["backup"]["identity"].as_str().unwrap());
    assert_eq!(mode(&key), 0o600, "the SSH key restored as a secret");
    kakehashi(&["gateway", "check", "--config", s(&new.join("gateway.toml"))]).ok();
    let _b = Server::start(&["gateway", "run", "--config", s(&new.join("gateway.toml"))]);
    let (code, body) = a.curl(&format!("{} -u {}", a.tls(), a.user), PATIENT);
    assert_eq!(code, 200, "{body}");

    // The replacement goes on backing up to the same server, as the same appliance.
    let (_, second) = backup(&new.join("gateway.toml"));
    assert!(second.starts_with(&format!("{url}/kakehashi-")), "{second}");
    let list = kakehashi(&["backup", "list", "--config", s(&new.join("gateway.toml"))]).ok();
    assert_eq!(list.matches("this appliance").count(), 2, "{list}");
}

/// An incremental archive at the server refers to the sealed audit segments of an earlier one
/// there; restored from its URL, the earlier one is fetched from the same directory, and the
/// restored log is the whole chain.
#[test]
fn an_incremental_archive_on_the_sftp_server_restores_whole_from_its_url() {
    const SEGMENT: u64 = 64 << 10;
    let dir = Clinic::setup("127.0.0.1");
    let clinic = dir.path().join("clinic");
    let config = clinic.join("gateway.toml");
    let data = clinic.join("data");
    let sshd = Sshd::start(&dir.path().join("sshd"));
    let remote = dir.path().join("vendor");
    std::fs::create_dir(&remote).unwrap();
    sshd.configure(&clinic, &remote);

    audit_entries_in(&data, 2000, "signed in", SEGMENT);
    let (first, m1) = backup_json(&config);
    assert!(first.starts_with(&sshd.url(&remote)), "{first}");
    assert_eq!(m1["format"], 1, "{m1}");
    audit_entries_in(&data, 50, "signed out", SEGMENT);
    let (second, m2) = backup_json(&config);
    assert_eq!(m2["format"], 2, "{m2}");
    assert_eq!(homes_of(&m2), vec![file_name(&first)]);
    let out = kakehashi(&["backup", "verify", &second, "--config", s(&config)]).ok();
    assert!(out.contains(&format!("{second}: verified")), "{out}");
    let live = intact(&config);
    // The live log against the archive on the server, by its URL: its last entry is the 2050th.
    let out = kakehashi(&["audit", "verify", "--against", &second, "--config", s(&config)]).ok();
    assert!(
        out.contains("matches the backup taken") && out.contains("to 2050 are the archive's"),
        "{out}"
    );
    kakehashi(&[
        "audit",
        "verify",
        "--against",
        "nosuch.backup",
        "--config",
        s(&config),
    ])
    .fails_with(&["/vendor/nosuch.backup: cannot open: the SFTP server says: No such file"]);

    let new = dir.path().join("new");
    let restore = |archive: &str, to: &Path| {
        kakehashi(&[
            "backup",
            "restore",
            archive,
            "--identity",
            s(&clinic.join("backup.key")),
            "--to",
            s(to),
            "--known-hosts",
            s(&clinic.join("backup-known-hosts")),
            "--ssh-key",
            s(&clinic.join("backup-ssh.key")),
        ])
    };
    restore(&second, &new).ok();
    assert_eq!(intact(&new.join("gateway.toml")), live);

    // The earlier archive gone from the server: named, nothing restored.
    let first_name = file_name(&first);
    std::fs::rename(remote.join(&first_name), dir.path().join("aside.backup")).unwrap();
    let gone = dir.path().join("gone");
    restore(&second, &gone).fails_with(&["refers to audit segments in", &first_name, "cannot be read"]);
    assert!(!gone.exists(), "nothing restored");
}

#[test]
fn a_wrong_host_key_a_refused_login_and_a_server_gone_fail_the_run_and_retention_keeps_the_newest() {
    let dir = Clinic::setup("127.0.0.1");
    let clinic = dir.path().join("clinic");
    let config = clinic.join("gateway.toml");
    let sshd = Sshd::start(&dir.path().join("sshd"));
    let remote = dir.path().join("vendor");
    std::fs::create_dir(&remote).unwrap();
    sshd.configure(&clinic, &remote);

    // Retention at the target: the oldest goes once the third is verified.
    set_keep(&clinic, 2);
    let (_, first) = backup(&config);
    backup(&config);
    let (out, _) = backup(&config);
    assert!(out.contains(&format!("removed (backup.keep): {first}")), "{out}");
    assert_eq!(names(&remote).len(), 2);
    assert!(!names(&remote).iter().any(|n| first.ends_with(n.as_str())));
    let before = snapshot(&remote);
    let last_error = || -> String {
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(clinic.join("data/backup.json")).unwrap()).unwrap();
        assert_eq!(state["last_ok"], false, "{state}");
        state["last_error"].as_str().unwrap_or_default().to_owned()
    };

    // Another key answers at the server's address: refused, nothing written.
    let known = clinic.join("backup-known-hosts");
    write(&known, sshd.known_hosts("other_key"));
    kakehashi(&["backup", "run", "--config", s(&config)])
        .fails_with(&["Host key verification failed", "backup.known_hosts"]);
    assert!(last_error().contains("Host key verification failed"));
    assert_unchanged(&before, &snapshot(&remote));
    write(&known, sshd.known_hosts("host_key"));

    // A key the server does not take, and one that others can read.
    let key = clinic.join("backup-ssh.key");
    std::fs::copy(sshd.dir.join("other_key"), &key).unwrap();
    kakehashi(&["backup", "run", "--config", s(&config)])
        .fails_with(&["Permission denied (publickey)", "backup.identity"]);
    assert!(last_error().contains("Permission denied"));
    std::fs::copy(sshd.dir.join("client_key"), &key).unwrap();
    sh(&format!("chmod 644 {}", s(&key))).ok();
    kakehashi(&["gateway", "check", "--config", s(&config)])
        .fails_with(&["backup.identity", "is mode 0644", "refused", "chmod 600"]);
    sh(&format!("chmod 600 {}", s(&key))).ok();
    assert_unchanged(&before, &snapshot(&remote));
    let toml = std::fs::read_to_string(&config).unwrap();
    write(&config, toml.replace("\"backup-ssh.key\"", "\"backup %h.key\""));
    kakehashi(&["gateway", "check", "--config", s(&config)])
        .fails_with(&["backup.identity", "backup %h.key", "ssh would read"]);
    write(&config, toml);

    // The server gone.
    drop(sshd);
    kakehashi(&["backup", "run", "--config", s(&config)]).fails_with(&["Connection refused"]);
    assert!(last_error().contains("Connection refused"));
    assert_unchanged(&before, &snapshot(&remote));
}

/// Incompressible bytes (xorshift), fast: an archive that takes a moment to upload.
fn noise(bytes: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(bytes + 8);
    while out.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

#[test]
fn a_backup_killed_while_it_uploads_leaves_no_archive_half_written_at_either_target() {
    let dir = Clinic::setup("127.0.0.1");
    let clinic = dir.path().join("clinic");
    let config = clinic.join("gateway.toml");
    write(&clinic.join("data/bulk.bin"), noise(24 << 20));
    let sshd = Sshd::start(&dir.path().join("sshd"));
    let remote = dir.path().join("vendor");
    std::fs::create_dir(&remote).unwrap();
    let usb = clinic.join("backups");

    for (target, at) in [("dir", &usb), ("sftp", &remote)] {
        match target {
            "dir" => {}
            _ => sshd.configure(&clinic, &remote),
        }
        backup(&config);
        let before = snapshot(at);

        // SIGKILL once the upload is under way.
        let mut run = Command::new(bin())
            .args(["backup", "run", "--config", s(&config)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        let partial = loop {
            let found = std::fs::read_dir(at).unwrap().flatten().find(|e| {
                e.file_name().to_string_lossy().ends_with(".partial")
                    && e.metadata().is_ok_and(|m| m.len() >= 1 << 20)
            });
            if let Some(e) = found {
                break e.file_name().to_string_lossy().into_owned();
            }
            assert!(
                run.try_wait().unwrap().is_none(),
                "{target}: the run ended before it was seen uploading"
            );
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{target}: no upload seen"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        run.kill().unwrap();
        run.wait().unwrap();

        // Nothing under an archive's name, the earlier archive untouched, the partial hidden.
        std::thread::sleep(Duration::from_millis(100));
        let mut after = snapshot(at);
        assert!(after.remove(Path::new(&partial)).is_some(), "{target}: {partial}");
        assert_unchanged(&before, &after);
        let list = kakehashi(&["backup", "list", "--config", s(&config)]).ok();
        assert!(!list.contains(".partial"), "{target}: {list}");

        // The next run removes it and succeeds.
        let (out, archive) = backup(&config);
        assert!(
            out.contains(&partial) && out.contains("left by a run that did not finish"),
            "{target}: {out}"
        );
        assert!(!names(at).iter().any(|n| n.ends_with(".partial")), "{target}");
        assert_eq!(names(at).len(), before.len() + 1, "{target}");
        assert!(archive.ends_with(".backup"), "{archive}");
    }
}
