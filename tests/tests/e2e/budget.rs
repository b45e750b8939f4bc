//! The disk budget (`[storage] budget`): under load, with a small budget, the data directory stays
//! within it; sealed audit segments are pruned only once `kakehashi backup run` verified an
//! archive that holds them; the chain still verifies locally and against the archive; no request
//! is refused; a restore brings the segments back and the chain goes on.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::gateway::{Clinic, PATIENT};
use crate::support::*;

const BUDGET: u64 = 16 << 20;

/// What `dir` takes on disk (allocated blocks, as `du` and the gateway count).
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => allocated(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// `n` authenticated reads on one keep-alive connection (curl's URL globbing); how many got 200.
fn load(c: &Clinic, n: u32) -> usize {
    let out = sh(&format!(
        "curl -s -o /dev/null -w %{{http_code}}~ {} -u {} {}{PATIENT}&n=[1-{n}]",
        c.tls(),
        c.user,
        c.gateway.url
    ))
    .ok();
    out.split('~').filter(|code| *code == "200").count()
}

fn segments(data: &Path) -> Vec<u64> {
    let mut firsts: Vec<u64> = std::fs::read_dir(data.join("audit"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".db")?.parse().ok())
        .collect();
    firsts.sort();
    firsts
}

fn offbox(data: &Path) -> u64 {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("backup.json")).unwrap()).unwrap();
    state["audit_offbox_id"].as_u64().expect("audit_offbox_id")
}

#[test]
fn under_load_a_small_budget_holds_and_only_verified_segments_are_pruned() {
    let c = Clinic::start("\n[storage]\nbudget = \"16MiB\"\naudit_segment = \"128KiB\"\n");
    let config = c.path("gateway.toml");
    let data = c.path("data");

    // The data directory's size, sampled all along.
    let max = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (max, done, data) = (max.clone(), done.clone(), data.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                max.fetch_max(allocated(&data), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // More than the audit log's share (a quarter), and no backup yet: nothing is pruned.
    assert_eq!(load(&c, 20_000), 20_000, "nothing refused");
    std::thread::sleep(Duration::from_secs(6)); // the gateway's own budget check ran
    assert_eq!(segments(&data)[0], 1, "no backup, no pruning");
    assert!(!data.join("audit/pruned").exists());
    assert_eq!(c.metric("disk_budget_bytes"), BUDGET);
    let audit = c.metric("disk_audit_bytes");
    let head: u64 = std::fs::read_to_string(data.join("audit.head"))
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    eprintln!(
        "audit: {head} entries in {audit} bytes ({} an entry, the WAL included)",
        audit / head
    );
    assert!(audit > BUDGET / 4, "over its share");
    assert_eq!(c.metric("audit_offbox_id"), 0);

    // Each verified backup lets the oldest segments go, never beyond what it holds.
    let mut archives = Vec::new();
    for round in 0..3 {
        if round > 0 {
            assert_eq!(load(&c, 6_000), 6_000, "nothing refused");
        }
        let out = kakehashi(&["backup", "run", "--config", s(&config)]).ok();
        archives.push(out.lines().last().expect("the archive").to_owned());
        let held = offbox(&data);
        assert!(held > 0);
        let first_left = segments(&data)[0];
        assert!(first_left > 1, "round {round}: pruned after the backup: {out}");
        assert!(first_left - 1 <= held, "pruned only what the archive holds");
        let pruned = std::fs::read_to_string(data.join("audit/pruned")).unwrap();
        let through: u64 = pruned.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(through, first_left - 1);
        assert!(
            out.contains("pruned audit segment (in this verified backup)"),
            "{out}"
        );
    }
    std::thread::sleep(Duration::from_secs(6));
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let max = max.load(Ordering::Relaxed);
    eprintln!("the data directory at most {max} bytes of a {BUDGET}-byte budget");
    assert!(max <= BUDGET, "{max} bytes: over the budget");
    assert_eq!(c.metric("disk_budget_alert"), 0);
    assert!(c.metric("disk_used_bytes") <= BUDGET);

    // The local chain is intact from the recorded prune; the archive's joins it.
    let verify = kakehashi(&["audit", "verify", "--config", s(&config)]).ok();
    assert!(
        verify.contains("audit log intact") && verify.contains("were pruned"),
        "{verify}"
    );
    let last = archives.last().unwrap();
    let against = kakehashi(&["audit", "verify", "--config", s(&config), "--against", last]).ok();
    assert!(against.contains("matches the backup taken"), "{against}");
    // Every prune is in the log itself.
    let export = kakehashi(&["audit", "export", "--json", "--config", s(&config)]).ok();
    assert!(
        export
            .lines()
            .any(|l| l.contains("\"route\":\"storage\"") && l.contains("pruned audit segment")),
        "the prunes are audited"
    );

    // A replacement from the last archive has its segments, and its chain goes on.
    let new = c.dir.path().join("replacement");
    kakehashi(&[
        "backup",
        "restore",
        last,
        "--identity",
        s(&c.path("backup.key")),
        "--to",
        s(&new),
    ])
    .ok();
    let restored = kakehashi(&["audit", "verify", "--data-dir", s(&new.join("data"))]).ok();
    assert!(restored.contains("audit log intact"), "{restored}");
    assert!(segments(&new.join("data")).len() > 1, "the segments came back");
}
