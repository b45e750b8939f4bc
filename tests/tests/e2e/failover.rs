//! Failover: the cloud engine (engine-sim) killed, black-holed (SIGSTOP: the kernel still accepts,
//! nothing answers), flapping, or restarted; the gateway SIGKILLed mid-journal; the data
//! directory full. Terminals are rustls clients on keep-alive connections; the truth about what
//! reached the cloud is read from the cloud's own SQLite file.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use super::gateway::{Clinic, PATIENT};
use crate::support::*;

/// Quick return after an outage, so the tests do not wait out the production default.
const FAST: &str = "\n[failover]\nhealthy_secs = 1\n";

/// One answer: status, lower-cased header block, body.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: String,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    }

    pub(crate) fn api_result(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(&self.body).unwrap_or_default();
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(|r| r["Api_Result"].as_str())
            .unwrap_or("")
            .to_owned()
    }
}

/// A terminal: one keep-alive connection, reopened when it breaks (a restarted gateway).
pub(crate) struct Terminal<'a> {
    clinic: &'a Clinic,
    config: Arc<rustls::ClientConfig>,
    conn: Option<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>>,
}

impl<'a> Terminal<'a> {
    pub(crate) fn new(clinic: &'a Clinic) -> Terminal<'a> {
        Terminal {
            clinic,
            config: clinic.client("terminal.pem", "terminal.key"),
            conn: None,
        }
    }

    pub(crate) fn get(&mut self, path: &str) -> Option<Reply> {
        self.call("GET", path, "")
    }

    pub(crate) fn post(&mut self, path: &str, body: &str) -> Option<Reply> {
        self.call("POST", path, body)
    }

    /// One request; `None` when the connection failed (it is reopened next time).
    fn call(&mut self, method: &str, path: &str, body: &str) -> Option<Reply> {
        let auth = base64(&self.clinic.user);
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if self.conn.is_none() {
            let name = rustls::pki_types::ServerName::try_from("localhost").ok()?;
            let tls = rustls::ClientConnection::new(self.config.clone(), name).ok()?;
            let tcp = std::net::TcpStream::connect(self.clinic.addr()).ok()?;
            tcp.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
            self.conn = Some(rustls::StreamOwned::new(tls, tcp));
        }
        let reply = send(self.conn.as_mut()?, &request);
        if reply.is_none() {
            self.conn = None;
        }
        reply
    }
}

fn send(conn: &mut (impl Read + Write), request: &str) -> Option<Reply> {
    conn.write_all(request.as_bytes()).ok()?;
    let mut reader = BufReader::new(conn);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let status = line.split(' ').nth(1)?.parse().ok()?;
    let mut headers = String::new();
    let mut length = 0;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        if h.trim().is_empty() {
            break;
        }
        let h = h.to_lowercase();
        if let Some(v) = h.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        headers.push_str(&h);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn base64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

impl Clinic {
    /// Sends `signal`; a SIGSTOP returns once every thread of the process has stopped. `kill`
    /// returns before the signal has reached them all, and until then the cloud may still answer.
    fn signal(&self, pid: u32, signal: &str) {
        sh(&format!("kill -{signal} {pid}")).ok();
        if signal == "STOP" {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !all_stopped(pid) {
                assert!(Instant::now() < deadline, "process {pid} did not stop");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// SIGKILLs the cloud and starts it again on the same port and database.
    fn restart_engine(&mut self) {
        self.engine.kill();
        self.engine = Server::start(&["engine-sim", "--config", s(&self.path("engine.toml"))]);
    }

    fn restart_gateway(&mut self) {
        self.gateway.kill();
        self.gateway = Server::start(&["gateway", "run", "--config", s(&self.path("gateway.toml"))]);
    }

    /// Waits for the hybrid state (0 normal, 1 emergency, 2 recovery).
    pub(crate) fn wait_mode(&self, mode: u64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.metric("hybrid_mode") != mode {
            assert!(
                Instant::now() < deadline,
                "hybrid mode {mode} not reached within {within:?}: {:#?}",
                self.failover_figures()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the journal is handed back, however long it is, as long as it keeps
    /// shrinking: a faster gateway takes more writes offline, and has more to hand back.
    fn wait_drained(&self, stalled: Duration) {
        let mut pending = self.metric("journal_pending");
        let mut moved = Instant::now();
        while pending != 0 {
            assert!(
                moved.elapsed() < stalled,
                "the journal did not shrink for {stalled:?}: {:#?}",
                self.failover_figures()
            );
            std::thread::sleep(Duration::from_millis(50));
            let now = self.metric("journal_pending");
            if now < pending {
                moved = Instant::now();
            }
            pending = now;
        }
    }

    /// The gateway's failover and journal metrics, for a failed wait's message.
    fn failover_figures(&self) -> Vec<String> {
        let metrics = sh(&format!("curl -s http://{}/metrics", self.admin)).ok();
        metrics
            .lines()
            .filter(|l| !l.starts_with('#') && ["hybrid", "journal", "probe"].iter().any(|k| l.contains(k)))
            .map(str::to_owned)
            .collect()
    }

    /// Markers of medical records the cloud holds for `date`, with how often each is there.
    pub(crate) fn cloud_records(&self, date: &str) -> BTreeMap<String, u32> {
        let db = rusqlite::Connection::open(self.path("engine.db")).unwrap();
        let mut stmt = db.prepare("SELECT body FROM medical WHERE date = ?1").unwrap();
        let mut out = BTreeMap::new();
        for body in stmt.query_map([date], |r| r.get::<_, String>(0)).unwrap() {
            let v: serde_json::Value = serde_json::from_str(&body.unwrap()).unwrap();
            *out.entry(v["Marker"].as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
        out
    }
}

pub(crate) const WRITE: &str = "/api21/medicalmodv2?class=01&format=json";

pub(crate) fn record(date: &str, marker: &str) -> String {
    format!(r#"{{"medicalreq":{{"Patient_ID":"1","Perform_Date":"{date}","Marker":"{marker}"}}}}"#)
}

/// A write the terminal was told is safe: taken by the cloud (`00`) or journaled (`W90`).
pub(crate) fn acknowledged(reply: &Option<Reply>) -> bool {
    reply
        .as_ref()
        .is_some_and(|r| r.status == 200 && matches!(r.api_result().as_str(), "00" | "W90"))
}

#[test]
fn the_cloud_killed_under_twenty_reading_terminals_costs_no_read() {
    let clinic = Clinic::start(FAST);
    let paths: Vec<String> = (1..=3)
        .map(|id| format!("/api01rv2/patientgetv2?id={id}&format=json"))
        .collect();
    let mut t = Terminal::new(&clinic);
    for p in &paths {
        assert_eq!(t.get(p).unwrap().api_result(), "00", "warming the cache");
    }
    let stop = AtomicBool::new(false);
    let (failed, emergency) = std::thread::scope(|scope| {
        let readers: Vec<_> = (0..20)
            .map(|i| {
                let (clinic, paths, stop) = (&clinic, &paths, &stop);
                scope.spawn(move || {
                    let mut t = Terminal::new(clinic);
                    let (mut failed, mut emergency) = (Vec::new(), 0);
                    let mut n = i;
                    while !stop.load(Relaxed) {
                        n += 1;
                        match t.get(&paths[n % paths.len()]) {
                            Some(r) if r.status == 200 && r.api_result() == "00" => {
                                if r.header("x-hybridmode") == Some("emergency") {
                                    emergency += 1;
                                }
                            }
                            Some(r) => failed.push(format!("{} {}", r.status, r.body)),
                            None => failed.push("connection failed".into()),
                        }
                    }
                    (failed, emergency)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs(1));
        clinic.signal(clinic.engine.pid(), "KILL");
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Relaxed);
        readers.into_iter().fold((Vec::new(), 0), |(mut f, e), r| {
            let (failed, emergency) = r.join().unwrap();
            f.extend(failed);
            (f, e + emergency)
        })
    });
    assert!(
        failed.is_empty(),
        "{} failed reads, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(emergency > 0, "some reads were answered from the cache");
    let mut t = Terminal::new(&clinic);
    let cached = t.get(PATIENT).unwrap();
    assert!(
        cached.header("age").is_some(),
        "a cached answer says its age: {}",
        cached.headers
    );
    assert!(clinic.audit_has("allow", "the cache"));
    assert!(clinic.audit_has("allow", "emergency: cloud down"));
}

#[test]
fn a_black_holed_cloud_is_noticed_within_a_second_and_the_waiting_read_answered() {
    let clinic = Clinic::start(FAST);
    let mut t = Terminal::new(&clinic);
    assert_eq!(t.get(PATIENT).unwrap().api_result(), "00");
    clinic.signal(clinic.engine.pid(), "STOP");
    let stopped = Instant::now();
    let reply = t.get(PATIENT).expect("an answer");
    let waited = stopped.elapsed();
    assert_eq!(reply.api_result(), "00", "{}", reply.body);
    let what = format!("after {waited:?}: {}", reply.headers);
    assert_eq!(reply.header("x-hybridmode"), Some("emergency"), "{what}");
    assert!(reply.header("age").is_some(), "from the cache {what}");
    assert!(waited < Duration::from_secs(1), "answered {what}");
    eprintln!("black hole: the first read was answered locally after {waited:?}");
    // The cache answered at the read's deadline, before any probe had failed; the probe it asked
    // for then took the cloud down.
    assert!(clinic.audit_has("allow", "the cloud had not answered within"));
    clinic.wait_mode(1, Duration::from_secs(2));
    clinic.signal(clinic.engine.pid(), "CONT");
}

#[test]
fn writes_while_the_cloud_is_down_reach_it_exactly_once_when_it_returns() {
    let mut clinic = Clinic::start(FAST);
    let date = "2031-01-01";
    clinic.signal(clinic.engine.pid(), "KILL");
    clinic.wait_mode(1, Duration::from_secs(2));
    let mut t = Terminal::new(&clinic);
    let mut ids = Vec::new();
    for i in 0..10 {
        let r = t.post(WRITE, &record(date, &format!("w{i}"))).unwrap();
        assert_eq!((r.status, r.api_result().as_str()), (200, "W90"), "{}", r.body);
        assert_eq!(r.header("x-hybridmode"), Some("emergency"));
        assert!(r.body.contains("Accepted offline"), "{}", r.body);
        ids.push(
            r.header("x-kakehashi-journal-id")
                .expect("the journal id")
                .to_owned(),
        );
    }
    // A retried write (same idempotency key) is journaled once.
    let keyed = format!(
        "POST {WRITE} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\nContent-Type: application/json\r\n\
         Idempotency-Key: retry-1\r\nContent-Length: {}\r\n\r\n{}",
        base64(&clinic.user),
        record(date, "keyed").len(),
        record(date, "keyed")
    );
    let mut conn = clinic.connect("terminal.pem", "terminal.key");
    let first = send(&mut conn, &keyed).unwrap();
    let again = send(&mut conn, &keyed).unwrap();
    assert_eq!(
        first.header("x-kakehashi-journal-id"),
        again.header("x-kakehashi-journal-id")
    );
    // Not cached, refused, multi-step: clear answers in the engine's format.
    let miss = t.get("/api01rv2/patientgetv2?id=3&format=json").unwrap();
    assert_eq!(
        (miss.status, miss.api_result().as_str()),
        (503, "90"),
        "{}",
        miss.body
    );
    let v3 = t
        .post("/api21/medicalmodv31?format=json", "{\"medicalv3req1\":{}}")
        .unwrap();
    assert_eq!((v3.status, v3.api_result().as_str()), (503, "91"), "{}", v3.body);
    assert_eq!(clinic.metric("journal_pending"), 11);

    drop((t, conn));
    clinic.restart_engine();
    clinic.wait_mode(0, Duration::from_secs(10));
    let mut t = Terminal::new(&clinic);
    let cloud = clinic.cloud_records(date);
    let expected: BTreeMap<String, u32> = (0..10)
        .map(|i| (format!("w{i}"), 1))
        .chain([("keyed".to_owned(), 1)])
        .collect();
    assert_eq!(cloud, expected);
    assert!(clinic.audit_has("allow", "delivered to the cloud"));
    assert!(clinic.audit_has("allow", "normal: the journal is empty"));
    // Back to normal: a write goes straight to the cloud.
    let r = t.post(WRITE, &record(date, "online")).unwrap();
    assert_eq!(
        (r.api_result().as_str(), r.header("x-hybridmode")),
        ("00", Some("normal"))
    );
}

#[test]
fn sigkill_of_the_gateway_fifty_times_during_offline_writes_and_replay_loses_and_invents_nothing() {
    let mut clinic = Clinic::start(FAST);
    let date = "2031-02-02";
    let mut acked = Vec::new();
    let mut sent = 0;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut random = |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    for round in 0..50 {
        // Even rounds: the cloud is down and writes are journaled. Odd rounds: the cloud is
        // back and the journal is being handed back.
        let down = round % 2 == 0;
        let engine = clinic.engine.pid();
        clinic.signal(engine, if down { "STOP" } else { "CONT" });
        let deadline = Instant::now() + Duration::from_millis(100 + random(600));
        let mut t = Terminal::new(&clinic);
        while Instant::now() < deadline {
            let marker = format!("r{round}-{sent}");
            sent += 1;
            let reply = t.post(WRITE, &record(date, &marker));
            if acknowledged(&reply) {
                acked.push(marker);
            }
        }
        clinic.restart_gateway();
    }
    clinic.signal(clinic.engine.pid(), "CONT");
    let replay = Instant::now();
    clinic.wait_drained(Duration::from_secs(30));
    clinic.wait_mode(0, Duration::from_secs(30));
    let cloud = clinic.cloud_records(date);
    let twice: Vec<_> = cloud.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    let lost: Vec<_> = acked.iter().filter(|m| !cloud.contains_key(*m)).collect();
    assert!(lost.is_empty(), "acknowledged but not in the cloud: {lost:?}");
    assert!(cloud.keys().all(|m| m.starts_with('r')), "nothing invented");
    assert!(
        acked.len() > 50,
        "the test wrote enough to mean something: {}",
        acked.len()
    );
    eprintln!(
        "{sent} writes sent, {} acknowledged, {} in the cloud; the last gateway handed back its journal in {:?}",
        acked.len(),
        cloud.len(),
        replay.elapsed()
    );
}

#[test]
fn a_flapping_cloud_makes_no_flapping_state_no_failed_read_and_no_duplicate() {
    let clinic = Clinic::start(FAST);
    let date = "2031-03-03";
    let mut t = Terminal::new(&clinic);
    assert_eq!(t.get(PATIENT).unwrap().api_result(), "00");
    let changes_before = clinic.metric("hybrid_changes_total");
    let stop = AtomicBool::new(false);
    let engine = clinic.engine.pid();
    let (failed, acked) = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut t = Terminal::new(&clinic);
            let mut failed = Vec::new();
            while !stop.load(Relaxed) {
                match t.get(PATIENT) {
                    Some(r) if r.api_result() == "00" => {}
                    other => failed.push(other.map_or("no answer".into(), |r| r.body)),
                }
            }
            failed
        });
        let writer = scope.spawn(|| {
            let mut t = Terminal::new(&clinic);
            let mut acked = Vec::new();
            let mut n = 0;
            while !stop.load(Relaxed) {
                n += 1;
                let marker = format!("f{n}");
                if acknowledged(&t.post(WRITE, &record(date, &marker))) {
                    acked.push(marker);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            acked
        });
        let started = Instant::now();
        let mut stopped = false;
        while started.elapsed() < Duration::from_secs(30) {
            stopped = !stopped;
            clinic.signal(engine, if stopped { "STOP" } else { "CONT" });
            std::thread::sleep(Duration::from_millis(300));
        }
        clinic.signal(engine, "CONT");
        stop.store(true, Relaxed);
        (reader.join().unwrap(), writer.join().unwrap())
    });
    assert!(
        failed.is_empty(),
        "{} failed reads, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    clinic.wait_mode(0, Duration::from_secs(20));
    let changes = clinic.metric("hybrid_changes_total") - changes_before;
    assert!(
        changes <= 4,
        "the state changed {changes} times in 30 s of flapping"
    );
    let cloud = clinic.cloud_records(date);
    assert!(cloud.values().all(|n| *n == 1), "duplicates: {cloud:?}");
    assert!(
        acked.iter().all(|m| cloud.contains_key(m)),
        "an acknowledged write is missing"
    );
}

/// A small file system mounted over the clinic's data directory; unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn over(data: &std::path::Path) -> SmallDisk {
        let aside = data.with_extension("aside");
        std::fs::rename(data, &aside).unwrap();
        std::fs::create_dir(data).unwrap();
        sh(&format!("mount -t tmpfs -o size=3m tmpfs {}", s(data))).ok();
        sh(&format!("cp -a {}/. {}/", s(&aside), s(data))).ok();
        SmallDisk(data.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = sh(&format!("umount -l {}", s(&self.0)));
    }
}

#[test]
fn a_full_disk_refuses_writes_clearly_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let clinic_dir = dir.path().join("clinic");
    sh(&format!(
        "kakehashi demo --setup-only --dir {} {}",
        s(&clinic_dir),
        DemoPorts::new("127.0.0.1").line()
    ))
    .ok();
    let disk = SmallDisk::over(&clinic_dir.join("data"));
    let mut clinic = Clinic::adopt(dir, FAST);
    let date = "2031-04-04";
    clinic.signal(clinic.engine.pid(), "KILL");
    clinic.wait_mode(1, Duration::from_secs(2));
    // Leave a little room, then write until the journal cannot take more.
    let free: u64 = tool("df", &["-B1", "--output=avail", s(&disk.0)])
        .ok()
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("free bytes");
    let blocks = free.saturating_sub(400 * 1024) / 4096;
    let filler = format!("of={}/filler", s(&disk.0));
    let _ = tool(
        "dd",
        &["if=/dev/zero", &filler, "bs=4k", &format!("count={blocks}")],
    );
    let mut t = Terminal::new(&clinic);
    let (mut acked, mut refused) = (Vec::new(), None);
    for i in 0..400 {
        let marker = format!("d{i}");
        let big = format!("{marker}-{}", "x".repeat(2000));
        let r = t.post(WRITE, &record(date, &big)).expect("an answer");
        match (r.status, r.api_result().as_str()) {
            (200, "W90") => acked.push(big),
            (503, "92") => {
                refused = Some(r.body);
                break;
            }
            other => panic!("unexpected {other:?}: {}", r.body),
        }
    }
    let refused = refused.expect("the disk filled up");
    assert!(
        refused.contains("Nothing was saved") && refused.contains("full"),
        "{refused}"
    );
    assert!(!acked.is_empty());
    std::fs::remove_file(disk.0.join("filler")).unwrap();
    drop(t);
    clinic.restart_engine();
    clinic.wait_mode(0, Duration::from_secs(15));
    let cloud = clinic.cloud_records(date);
    assert!(
        acked.iter().all(|m| cloud.get(m) == Some(&1)),
        "every acknowledged write, once"
    );
    assert_eq!(cloud.len(), acked.len(), "nothing refused was sent");
    drop(clinic);
}

#[test]
fn a_damaged_journal_stops_the_start_by_name_and_a_damaged_cache_is_rebuilt() {
    let mut clinic = Clinic::start(FAST);
    clinic.gateway.kill();
    let journal = clinic.path("data").join("journal.db");
    // A whole damaged database: the file and no write-ahead log beside it (SQLite would read
    // the newest pages from the log).
    for wal in ["journal.db-wal", "journal.db-shm", "cache.db-wal", "cache.db-shm"] {
        let _ = std::fs::remove_file(clinic.path("data").join(wal));
    }
    let garbage = b"not a journal at all; not an SQLite database either".repeat(20);
    write(&journal, &garbage);
    let run = kakehashi(&["gateway", "run", "--config", s(&clinic.path("gateway.toml"))]);
    let run = run.fails_with(&["journal.db", "not a usable SQLite database"]);
    assert_ne!(run.code, 0);
    assert_eq!(std::fs::read(&journal).unwrap(), garbage, "never truncated");
    std::fs::remove_file(&journal).unwrap();
    for wal in ["cache.db-wal", "cache.db-shm"] {
        let _ = std::fs::remove_file(clinic.path("data").join(wal));
    }
    write(&clinic.path("data").join("cache.db"), &garbage);
    clinic.restart_gateway();
    assert!(clinic.path("data").join("cache.db.damaged").exists());
    assert_eq!(Terminal::new(&clinic).get(PATIENT).unwrap().api_result(), "00");
}

#[test]
fn an_on_premises_engine_takes_every_call_while_the_cloud_is_down() {
    let (onprem_port, raw_port) = (free_port(), free_port());
    let extra = format!(
        "{FAST}engine = \"https://127.0.0.1:{onprem_port}\"\n\n[[listener]]\naddress = \"127.0.0.1:{raw_port}\"\n\
         kind = \"tcp\"\nupstream = \"localhost:ENGINE_PORT\"\nfallback = \"localhost:{onprem_port}\"\nrequire_login = false\n"
    );
    let clinic = Clinic::start(&extra);
    // A raw TCP route (HTTP inside, which the gateway does not read): the engine's own answer.
    let raw = |clinic: &Clinic| {
        let url = format!("https://127.0.0.1:{raw_port}{PATIENT}");
        let out = sh(&format!("curl -s -i {} -u ormaster:ormaster {url}", clinic.tls()));
        out.stdout
    };
    let conf = std::fs::read_to_string(clinic.path("engine.toml")).unwrap();
    let conf = conf
        .lines()
        .map(|l| match l.split_once('=') {
            Some((k, _)) if k.trim() == "listen" => format!("listen = \"127.0.0.1:{onprem_port}\""),
            Some((k, _)) if k.trim() == "db" => "db = \"onprem.db\"".to_owned(),
            _ => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    write(&clinic.path("onprem.toml"), conf);
    let _onprem = Server::start(&["engine-sim", "--config", s(&clinic.path("onprem.toml"))]);
    assert!(
        raw(&clinic).starts_with("HTTP/1.1 200"),
        "the raw route reaches the cloud"
    );
    clinic.signal(clinic.engine.pid(), "KILL");
    clinic.wait_mode(1, Duration::from_secs(2));
    assert!(
        raw(&clinic).starts_with("HTTP/1.1 200"),
        "a new raw stream goes to the on-premises engine"
    );
    let fallback = format!("localhost:{onprem_port}");
    assert!(
        clinic
            .audit()
            .iter()
            .any(|e| e["route"] == format!("tcp:{raw_port}") && e["upstream"] == fallback)
    );
    let mut t = Terminal::new(&clinic);
    let read = t.get("/api01rv2/patientgetv2?id=3&format=json").unwrap();
    assert_eq!(
        (read.api_result().as_str(), read.header("x-hybridmode")),
        ("00", Some("emergency"))
    );
    let write = t.post(WRITE, &record("2031-05-05", "onprem")).unwrap();
    assert_eq!(
        write.api_result(),
        "00",
        "the on-premises engine took it: {}",
        write.body
    );
    let db = rusqlite::Connection::open(clinic.path("onprem.db")).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT count(*) FROM medical WHERE date = '2031-05-05'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
}

/// Whether every thread of `pid` is stopped (state `T` in `/proc/PID/task/*/stat`).
fn all_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(|t| t.ok()).all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit_once(") ")
                    .map(|(_, rest)| rest.starts_with(['T', 't']))
            })
            .unwrap_or(false)
    })
}
