//! `kakehashi backup`: an appliance that took writes during an outage is backed up, hands its
//! journal back to the cloud and dies by SIGKILL; a replacement restored from the archive serves
//! the same terminals with nothing changed on them (curl over TLS, wireguard-go in a network
//! namespace), and every write is in the cloud exactly once.
//! Damaged, cut and foreign archives, a wrong key and a missing or full target are refused with
//! nothing changed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::backup_targets::{names, set_keep};
use super::gateway::{Clinic, PATIENT};
use super::wireguard::{TUNNEL, Terminal, patient_url};
use crate::support::*;

const WRITE: &str = "/api21/medicalmodv2?class=01&format=json";
const DATE: &str = "2026-12-05";

impl Clinic {
    fn until_metric(&self, name: &str, want: u64, within: Duration) {
        let start = Instant::now();
        while self.metric(name) != want {
            assert!(start.elapsed() < within, "{name} is not {want} after {within:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Appends `n` entries to the audit log in `data` (as a gateway would), the chain and head kept.
fn audit_entries(data: &Path, n: usize, reason: &str) {
    audit_entries_in(data, n, reason, kakehashi_gateway::audit::DEFAULT_SEGMENT_BYTES);
}

/// [`audit_entries`] in segments sealed at `segment` bytes (the writer seals after a commit:
/// one every 100 entries here).
pub(super) fn audit_entries_in(data: &Path, n: usize, reason: &str, segment: u64) {
    use kakehashi_gateway::audit::{AuditLog, Decision, Entry};
    let log = AuditLog::open_with(data, segment).unwrap();
    for i in 0..n {
        log.record_blocking(Entry::new(Decision::Allow, "api", "127.0.0.1:1", reason));
        if i % 100 == 99 {
            log.flush_blocking().unwrap();
        }
    }
    log.close_blocking().unwrap();
}

/// `backup run`: its output and its last line, the archive's path or URL.
pub(super) fn backup(config: &Path) -> (String, String) {
    let out = kakehashi(&["backup", "run", "--config", s(config)]).ok();
    let archive = out.lines().last().expect("the archive's path").to_owned();
    (out, archive)
}

#[test]
fn a_replacement_restored_from_a_backup_serves_the_same_terminals_and_sends_every_write_once() {
    // WireGuard on every address, for a terminal in its own network namespace.
    let mut a = Clinic::adopt(Clinic::setup("0.0.0.0"), "\n[failover]\nhealthy_secs = 1\n");
    let config = a.path("gateway.toml");
    let wg = Terminal::up(&a.path("terminal-wg.conf"), a.wg_port());
    wg.route(TUNNEL).wait_for_ping(TUNNEL, Duration::from_secs(10));

    // The cloud stops answering; three writes are journaled and acknowledged.
    sh(&format!("kill -STOP {}", a.engine.pid())).ok();
    a.until_metric("hybrid_mode", 1, Duration::from_secs(10));
    for i in 0..3 {
        let body =
            format!(r#"{{"medicalreq":{{"Patient_ID":"1","Perform_Date":"{DATE}","Marker":"bk-{i}"}}}}"#);
        let (code, answer) = a.curl(
            &format!(
                "{} -u {} -H Content-Type:application/json -d {body}",
                a.tls(),
                a.user
            ),
            WRITE,
        );
        assert_eq!(code, 200, "{answer}");
    }
    assert_eq!(a.metric("journal_pending"), 3);

    // The backup holds them.
    let (out, archive) = backup(&config);
    assert!(out.contains("(3 waiting)"), "{out}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.path("data/backup.json")).unwrap()).unwrap();
    assert_eq!(state["last_ok"], true, "{state}");
    assert_eq!(a.metric("backup_last_ok"), 1);
    assert!(a.metric("backup_last_success_timestamp_seconds") > 1_700_000_000);
    let status = kakehashi(&["status", "--config", s(&config)]).ok();
    assert!(status.contains("backup:        ok, last good"), "{status}");

    // The cloud returns and takes them from A; then A dies.
    sh(&format!("kill -CONT {}", a.engine.pid())).ok();
    a.until_metric("journal_pending", 0, Duration::from_secs(20));
    a.gateway.kill();

    // B, from the archive alone, on the same addresses.
    let new = a.dir.path().join("replacement");
    let out = kakehashi(&[
        "backup",
        "restore",
        &archive,
        "--identity",
        s(&a.path("backup.key")),
        "--to",
        s(&new),
    ])
    .ok();
    assert!(out.contains("3 journal entries waiting"), "{out}");
    assert_eq!(
        std::fs::read(new.join("data/wireguard.key")).unwrap(),
        std::fs::read(a.path("data/wireguard.key")).unwrap(),
        "the same WireGuard key: terminal configs keep working"
    );
    assert_eq!(mode(&new.join("data/gateway.db")) & 0o077, 0);
    kakehashi(&["gateway", "check", "--config", s(&new.join("gateway.toml"))]).ok();
    let _b = Server::start(&["gateway", "run", "--config", s(&new.join("gateway.toml"))]);

    // The terminal, unchanged, reaches B; B hands back the three writes A had already
    // delivered, and the cloud keeps each once (their idempotency keys).
    let (code, body) = a.curl(&format!("{} -u {}", a.tls(), a.user), PATIENT);
    assert_eq!(code, 200, "{body}");
    // The WireGuard terminal, its config and wireguard-go untouched: B has the same key, so a new
    // handshake (wireguard-go retries by itself) gets it through.
    wg.wait_for_ping(TUNNEL, Duration::from_secs(40));
    let (code, body) = wg.curl(&["-u", &a.user], &patient_url(TUNNEL));
    assert_eq!(code, 200, "{body}");
    a.until_metric("journal_pending", 0, Duration::from_secs(20));
    let journal = rusqlite::Connection::open(new.join("data/journal.db")).unwrap();
    let delivered: i64 = journal
        .query_row(
            "SELECT count(*) FROM entries WHERE state = 'delivered'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(delivered, 3, "B handed back all three itself");
    let records = a.cloud_records(DATE);
    assert_eq!(
        records,
        (0..3).map(|i| (format!("bk-{i}"), 1)).collect::<BTreeMap<_, _>>(),
        "every write exactly once"
    );

    // The audit chain goes on from A's: intact, longer than the archive's.
    let verify = kakehashi(&["audit", "verify", "--data-dir", s(&new.join("data"))]).ok();
    assert!(verify.contains("audit log intact"), "{verify}");
}

#[test]
fn a_replaced_audit_log_is_caught_against_a_backup() {
    let dir = Clinic::setup("127.0.0.1");
    let clinic = dir.path().join("clinic");
    let config = clinic.join("gateway.toml");
    let data = clinic.join("data");
    audit_entries(&data, 5, "signed in");
    let (_, archive) = backup(&config);
    audit_entries(&data, 3, "signed in");
    let out = kakehashi(&["audit", "verify", "--config", s(&config), "--against", &archive]).ok();
    assert!(
        out.contains("matches the backup taken") && out.contains("entries 1 to 5"),
        "{out}"
    );

    // Someone with root replaces the log with one of their own: a chain and a head that are
    // intact, which only the off-box copy can tell from the real one.
    std::fs::rename(data.join("audit"), dir.path().join("audit.real")).unwrap();
    std::fs::rename(data.join("audit.head"), dir.path().join("audit.head.real")).unwrap();
    audit_entries(&data, 8, "nothing happened");
    kakehashi(&["audit", "verify", "--config", s(&config)]).ok();
    kakehashi(&["audit", "verify", "--config", s(&config), "--against", &archive])
        .fails_with(&["does NOT match the backup", "entry 5 is not the live log's"]);
    // The vendor's copy of the key checks it too.
    kakehashi(&[
        "audit",
        "verify",
        "--config",
        s(&config),
        "--against",
        &archive,
        "--identity",
        s(&clinic.join("backup.key")),
    ])
    .fails_with(&["does NOT match the backup"]);
}

#[test]
fn damaged_cut_and_foreign_archives_a_wrong_key_and_a_missing_target_are_refused() {
    let dir = Clinic::setup("127.0.0.1");
    let clinic = dir.path().join("clinic");
    let config = clinic.join("gateway.toml");
    let (_, archive) = backup(&config);
    let archive = Path::new(&archive).to_owned();
    let bytes = std::fs::read(&archive).unwrap();
    let key = clinic.join("backup.key");
    let restore = |from: &Path, key: &Path, to: &Path| {
        kakehashi(&["backup", "restore", s(from), "--identity", s(key), "--to", s(to)])
    };
    let to = dir.path().join("new");

    // Cut short, and one byte changed in the middle.
    let cut = dir.path().join("cut.backup");
    write(&cut, &bytes[..bytes.len() / 2]);
    restore(&cut, &key, &to).fails_with(&["cut.backup", "damaged"]);
    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x20;
    let changed = dir.path().join("changed.backup");
    write(&changed, &flipped);
    restore(&changed, &key, &to).fails_with(&["changed.backup", "damaged"]);
    let not_one = dir.path().join("text.backup");
    write(&not_one, "hello\n");
    restore(&not_one, &key, &to).fails_with(&["text.backup", "not a Kakehashi backup"]);
    assert!(!to.exists(), "nothing restored");

    // Another clinic's key, and another appliance's archive verified here.
    let other = Clinic::setup("127.0.0.1");
    let other_clinic = other.path().join("clinic");
    restore(&archive, &other_clinic.join("backup.key"), &to)
        .fails_with(&["not encrypted to this key", "the archive is of appliance age1"]);
    let other_config = other_clinic.join("gateway.toml");
    kakehashi(&["backup", "verify", s(&archive), "--config", s(&other_config)])
        .fails_with(&["never took a backup"]);
    kakehashi(&[
        "audit",
        "verify",
        "--config",
        s(&other_config),
        "--against",
        s(&archive),
    ])
    .fails_with(&[
        "backup-self.key: this appliance never took a backup",
        "with --identity",
    ]);
    backup(&other_config);
    kakehashi(&["backup", "verify", s(&archive), "--config", s(&other_config)])
        .fails_with(&["not encrypted to this key"]);
    assert!(!to.exists(), "nothing restored");

    // Not into a directory that holds something.
    std::fs::create_dir(&to).unwrap();
    write(&to.join("keep.txt"), "mine");
    restore(&archive, &key, &to).fails_with(&["is not empty"]);
    assert_eq!(std::fs::read_to_string(to.join("keep.txt")).unwrap(), "mine");

    // The target gone (an unmounted USB disk): refused, the earlier archive untouched, and the
    // failure recorded for the metrics and the status page.
    let before = snapshot(&clinic.join("backups"));
    std::fs::rename(clinic.join("backups"), dir.path().join("unplugged")).unwrap();
    kakehashi(&["backup", "run", "--config", s(&config)]).fails_with(&["is not a directory", "mounted"]);
    std::fs::rename(dir.path().join("unplugged"), clinic.join("backups")).unwrap();
    assert_unchanged(&before, &snapshot(&clinic.join("backups")));
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(clinic.join("data/backup.json")).unwrap()).unwrap();
    assert_eq!(state["last_ok"], false, "{state}");
    assert!(
        state["last_good"].is_string(),
        "the earlier good one is remembered: {state}"
    );

    // A recipient that is not one: the configuration names the key.
    let toml = std::fs::read_to_string(&config).unwrap();
    write(
        &config,
        toml.replace("recipients = [\"age1", "recipients = [\"nope1"),
    );
    kakehashi(&["gateway", "check", "--config", s(&config)])
        .fails_with(&["backup.recipients[0]", "not an age X25519 recipient"]);
}

/// A tmpfs of `kib` KiB mounted at `dir` (created), unmounted on drop.
struct Small(std::path::PathBuf);

impl Small {
    fn mount(dir: &Path, kib: u32) -> Small {
        std::fs::create_dir_all(dir).unwrap();
        sh(&format!("mount -t tmpfs -o size={kib}k tmpfs {}", s(dir))).ok();
        Small(dir.to_owned())
    }

    /// Fills it up but for `left` bytes.
    fn fill(&self, left: u64) {
        let free = tool("df", &["-B1", "--output=avail", s(&self.0)]).stdout;
        let free: u64 = free
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df");
        write(
            &self.0.join("filler"),
            vec![0u8; free.saturating_sub(left) as usize],
        );
    }
}

impl Drop for Small {
    fn drop(&mut self) {
        tool("umount", &[s(&self.0)]);
    }
}

#[test]
fn a_full_target_is_named_for_what_it_is_and_loses_nothing() {
    let dir = Clinic::setup("127.0.0.1");
    let clinic = dir.path().join("clinic");
    let config = clinic.join("gateway.toml");
    let (_, archive) = backup(&config);
    let key = clinic.join("backup.key");

    // Backing up onto a full disk: refused with the reason, no partial archive, the earlier
    // archive (moved there first) untouched.
    let usb = Small::mount(&dir.path().join("usb"), 256);
    std::fs::copy(&archive, usb.0.join(Path::new(&archive).file_name().unwrap())).unwrap();
    usb.fill(0);
    let before = snapshot(&usb.0);
    let toml = std::fs::read_to_string(&config).unwrap();
    let moved = toml
        .lines()
        .map(|l| match l.starts_with("dir = ") {
            true => format!("dir = \"{}\"", s(&usb.0)),
            false => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    write(&config, moved);
    kakehashi(&["backup", "run", "--config", s(&config)]).fails_with(&["No space left on device"]);
    assert_unchanged(&before, &snapshot(&usb.0));

    // Restoring onto a disk too small: the target named as full, not the archive as damaged,
    // and nothing left behind.
    let small = Small::mount(&dir.path().join("small"), 64);
    small.fill(4096);
    let to = small.0.join("new");
    let r = kakehashi(&[
        "backup",
        "restore",
        &archive,
        "--identity",
        s(&key),
        "--to",
        s(&to),
    ])
    .fails_with(&["cannot write", "No space left on device"]);
    assert!(!r.stderr.contains("damaged"), "{}", r.stderr);
    assert!(!to.exists(), "nothing restored");
    let left: Vec<_> = std::fs::read_dir(&small.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("filler")],
        "no staging left behind"
    );
}

/// `backup run --json`: the archive's path and its manifest.
pub(super) fn backup_json(config: &Path) -> (String, serde_json::Value) {
    let out = kakehashi(&["backup", "run", "--json", "--config", s(config)]).ok();
    let v: serde_json::Value = serde_json::from_str(&out).expect("one JSON object");
    (v["archive"].as_str().unwrap().to_owned(), v["manifest"].clone())
}

/// The archives the manifest's referenced segments are in, by name, sorted and once each.
pub(super) fn homes_of(manifest: &serde_json::Value) -> Vec<String> {
    let mut homes: Vec<String> = manifest["referenced"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| r["archive"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default();
    homes.sort();
    homes.dedup();
    homes
}

/// `audit verify`'s verdict on the log of `config`: `audit log intact: N entries, head ID HASH`.
pub(super) fn intact(config: &Path) -> String {
    let out = kakehashi(&["audit", "verify", "--config", s(config)]).ok();
    out.lines().next().unwrap().to_owned()
}

pub(super) fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn each_sealed_audit_segment_goes_off_the_box_once_and_an_incremental_archive_restores_whole() {
    const SEGMENT: u64 = 64 << 10;
    let dir = Clinic::setup("127.0.0.1");
    let clinic = dir.path().join("clinic");
    let config = clinic.join("gateway.toml");
    let data = clinic.join("data");
    let key = clinic.join("backup.key");
    let backups = clinic.join("backups");
    let restore = |archive: &str, to: &Path| {
        kakehashi(&["backup", "restore", archive, "--identity", s(&key), "--to", s(to)])
    };
    let sealed = |data: &Path| {
        names(&data.join("audit"))
            .iter()
            .filter(|n| n.ends_with(".db"))
            .count()
            - 1
    };

    // The first archive holds every segment.
    audit_entries_in(&data, 2000, "signed in", SEGMENT);
    assert!(sealed(&data) >= 3, "segments sealed");
    let (first, m1) = backup_json(&config);
    assert_eq!(m1["format"], 1, "{m1}");
    assert!(m1.get("referenced").is_none(), "{m1}");

    // The next refers to them: each sealed segment is sent once.
    audit_entries_in(&data, 50, "signed in", SEGMENT);
    let (second, m2) = backup_json(&config);
    assert_eq!(m2["format"], 2, "{m2}");
    assert_eq!(homes_of(&m2), vec![file_name(&first)]);
    assert_eq!(m2["referenced"].as_array().unwrap().len(), sealed(&data), "{m2}");
    let size = |p: &str| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&second) * 3 < size(&first),
        "{} against {}",
        size(&second),
        size(&first)
    );

    // Segments sealed since go into the next archive, and the one after refers to both homes.
    audit_entries_in(&data, 1000, "signed out", SEGMENT);
    let (third, m3) = backup_json(&config);
    assert_eq!(homes_of(&m3), vec![file_name(&first)]);
    audit_entries_in(&data, 10, "signed out", SEGMENT);
    let (fourth, m4) = backup_json(&config);
    assert_eq!(homes_of(&m4), vec![file_name(&first), file_name(&third)]);
    let text = kakehashi(&["backup", "verify", &fourth, "--config", s(&config)]).ok();
    assert!(text.contains("verified"), "{text}");
    let live = intact(&config);

    // Restored, the incremental archive is the whole log: its segments fetched from their
    // homes beside it, the chain recomputed.
    let new = dir.path().join("new");
    restore(&fourth, &new).ok();
    assert_eq!(intact(&new.join("gateway.toml")), live);
    kakehashi(&["audit", "verify", "--config", s(&config), "--against", &fourth]).ok();

    // A home gone: the restore says which, restores nothing; `backup verify` fails; the next
    // run sends every segment again (a full archive), and then refers to that.
    let aside = dir.path().join("aside.backup");
    std::fs::rename(&first, &aside).unwrap();
    let gone = dir.path().join("gone");
    restore(&fourth, &gone).fails_with(&[
        "refers to audit segments in",
        &file_name(&first),
        "cannot be read",
    ]);
    assert!(!gone.exists());
    kakehashi(&["backup", "verify", &fourth, "--config", s(&config)]).fails_with(&[&file_name(&first)]);
    let (fifth, m5) = backup_json(&config);
    assert_eq!(m5["format"], 1, "{m5}");
    let (sixth, m6) = backup_json(&config);
    assert_eq!(homes_of(&m6), vec![file_name(&fifth)]);
    std::fs::rename(&aside, &first).unwrap();

    // A home replaced by another copy is caught, not restored.
    let saved = std::fs::read(&fifth).unwrap();
    std::fs::copy(&second, &fifth).unwrap();
    restore(&sixth, &gone).fails_with(&["does not hold that copy"]);
    assert!(!gone.exists());
    write(Path::new(&fifth), saved);

    // The retention keeps the homes the kept archives need: with keep = 1, the newest and the
    // archive that holds its segments.
    set_keep(&clinic, 1);
    let (seventh, m7) = backup_json(&config);
    let mut want = homes_of(&m7);
    assert_eq!(want, vec![file_name(&fifth)]);
    want.push(file_name(&seventh));
    want.sort();
    assert_eq!(names(&backups), want, "kept: the newest and its homes");
    let last = dir.path().join("last");
    restore(&seventh, &last).ok();
    assert_eq!(intact(&last.join("gateway.toml")), intact(&config));

    // The replacement is the same appliance: its first run refers to the same homes.
    let (_, m8) = backup_json(&last.join("gateway.toml"));
    assert_eq!(homes_of(&m8), vec![file_name(&fifth)], "{m8}");
}
