//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz, nightly) and for the corpus replay
//! that runs on stable with the other tests (`fuzzing::tests`). One function per target; each
//! drives the gateway's own code with bytes from outside, and panics only when that code
//! breaks a promise (a panic of its own, framing that disagrees with RFC 9112, an answer that
//! does not parse). `docs/fuzzing.md` describes the targets.
//!
//! Compiled for the tests and with the `fuzzing` feature; never in the binary.

pub mod reference;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use engine_proxy::format::{self, Format};
use engine_proxy::rules::{Call, Rules};

use crate::http1::frames::{self, Stop};

/// The gateway's default `limits.max_header_bytes` order of size.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// `h1`: the request heads and bodies of one connection, framed by the server's own parser and
/// decoders, the input arriving whole and in pieces of a size the first byte picks: the server
/// must frame the same requests however the bytes arrive, and never panic.
pub fn h1(data: &[u8]) {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let (whole, stop) = frames::frame(input, MAX_HEADER_BYTES, 0);
    let (pieces, _) = frames::frame(input, MAX_HEADER_BYTES, usize::from(step % 32));
    assert_eq!(whole, pieces, "framing depends on how the bytes arrive");
    let mut at = 0;
    for request in &whole {
        assert!(
            request.end > at && request.end <= input.len(),
            "{request:?} after {at}"
        );
        at = request.end;
    }
    if matches!(stop, Stop::Closed | Stop::Upgrade) {
        assert!(!whole.is_empty());
    }
}

/// `h1_answer`: what the engine sends on one uplink connection (after a first byte whose low
/// five bits pick a read size, and whose next bits make the request a `HEAD` and an upgrade),
/// framed by the uplink client's own head parser and body decoder: the same answers however the
/// bytes arrive, each ending after the one before and within the input, and never a panic.
pub fn h1_answer(data: &[u8]) {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let method = if first & 0x20 != 0 {
        hyper::Method::HEAD
    } else {
        hyper::Method::GET
    };
    let upgrade = first & 0x40 != 0;
    let (whole, stop) = engine_proxy::client::frames::frame(input, &method, upgrade, 0);
    let (pieces, _) = engine_proxy::client::frames::frame(input, &method, upgrade, usize::from(first % 32));
    assert_eq!(
        whole, pieces,
        "framing depends on how the bytes arrive ({stop:?})"
    );
    let mut at = 0;
    for answer in &whole {
        assert!(
            answer.end > at && answer.end <= input.len(),
            "{answer:?} after {at}"
        );
        assert!(
            answer.body.len() < answer.end - at,
            "{answer:?}: a body longer than its bytes"
        );
        at = answer.end;
    }
}

/// `h1_differential`: the server and the RFC 9112 reference ([`reference`]) agree on where each
/// request the server accepts ends, on its body and on its target; the server may refuse more.
pub fn h1_differential(data: &[u8]) {
    let (ours, stop) = frames::frame(data, MAX_HEADER_BYTES, 0);
    let theirs = reference::frame(data);
    for (i, ours) in ours.iter().enumerate() {
        let Some(theirs) = theirs.get(i) else {
            panic!("the gateway framed request {i} ({ours:?}), which RFC 9112 refuses or has not seen end");
        };
        assert_eq!(ours.method, theirs.method, "request {i}: method");
        assert_eq!(ours.target, theirs.target, "request {i}: target");
        assert_eq!(ours.end, theirs.end, "request {i}: where it ends");
        assert_eq!(ours.body, theirs.body, "request {i}: body");
    }
    if stop == Stop::Incomplete && theirs.len() > ours.len() {
        // The gateway waits for more of a request that RFC 9112 says has ended: a desync.
        let next = &theirs[ours.len()];
        let head_end = data[ours.last().map_or(0, |r| r.end)..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n");
        // A head beyond the gateway's limit is refused, not waited for, so only smaller ones.
        if head_end.is_some_and(|h| h < MAX_HEADER_BYTES) {
            panic!(
                "the gateway waits for more of request {} ({next:?}), which has ended",
                ours.len()
            );
        }
    }
}

/// `engine_body`: a call's path and query (the first line) and body (the rest) through the
/// engine API rules and both body formats, as the authorize stage and the offline answers use
/// them. An answer the gateway gives in the engine's place must parse in its format and carry
/// its code.
pub fn engine_body(data: &[u8]) {
    static RULES: OnceLock<Rules> = OnceLock::new();
    let rules = RULES.get_or_init(|| Rules::new(Vec::new()));
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let head = String::from_utf8_lossy(&data[..split]);
    let body = data.get(split + 1..).unwrap_or_default();
    let (path, query) = match head.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (head.as_ref(), None),
    };
    let format = Format::from_query(query);
    let call = Call::new(path, query);
    let number = rules
        .needs_request_number(&call)
        .then(|| format::request_number(format, body))
        .flatten();
    let call = Call {
        request_number: number.as_deref(),
        ..call
    };
    let _ = rules.classify(&call);
    let _ = rules.action(path);
    for format in [Format::Json, Format::Xml] {
        let _ = format::api_result(format, body);
        let _ = format::api_result_message(format, body);
        // An empty tree renders as an empty root, which is no request: nothing to read back.
        if let Ok(tree) = format::parse(format, body)
            && !tree.is_empty()
        {
            let rendered = format::render(format, &tree);
            let back = format::parse(format, &rendered);
            assert!(back.is_ok(), "{format:?} rendered does not parse: {back:?}");
        }
        let answer = format::engine_answer(format, path, body, "90", "fuzz <&> \"message\"");
        if format == Format::Xml {
            // Every element name of the gateway's own answer is a plain XML name.
            let text = String::from_utf8_lossy(&answer);
            for tag in text.split('<').skip(1).filter(|t| !t.starts_with('?')) {
                let name = tag.trim_start_matches('/');
                let name = &name[..name.find([' ', '>']).unwrap_or(name.len())];
                assert!(
                    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)),
                    "element <{name}> in the gateway's own answer: {text}"
                );
            }
        }
        assert_eq!(
            format::api_result(format, &answer).as_deref(),
            Some("90"),
            "the gateway's own {format:?} answer does not parse: {}",
            String::from_utf8_lossy(&answer)
        );
    }
}

/// `est_body`: an EST `simpleenroll` body (base64 DER, PEM armour tolerated) to the CSR the
/// authority would be given.
pub fn est_body(data: &[u8]) {
    if let Ok(der) = crate::est::wire::csr_body(data) {
        let _ = cert_tool::csr::Csr::from_der(Path::new("the request body"), &der);
    }
}

/// `csr`: cert-tool's CSR handling, PEM or DER, as `kakehashi cert sign` reads a file.
pub fn csr(data: &[u8]) {
    let path = Path::new("fuzz.csr");
    if let Ok(der) = cert_tool::decode::pem_or_der(path, data, "CERTIFICATE REQUEST") {
        let _ = cert_tool::csr::Csr::from_der(path, &der);
    }
}

/// `gateway_toml`: `gateway.toml` parsed and checked as `gateway check` does, except that the
/// files it names are not opened.
pub fn gateway_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = crate::config::Config::from_text(text, Path::new("/fuzz/gateway.toml")) {
        let _ = config.check_settings();
    }
}

/// `engine_toml`: `engine.toml`, the reference engine's configuration.
#[cfg(feature = "demo")]
pub fn engine_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = toml::from_str::<engine_sim::SimConfig>(text);
}

/// The appliance identity the bundle targets decrypt with (a fixed one, so that a corpus of
/// bundles keeps opening).
const IDENTITY: &str = "AGE-SECRET-KEY-1QYPQXPQ9QCRSSZG2PVXQ6RS0ZQG3YYC5Z5TPWXQERGD3C8G7RUSQGPQYEE";

fn identity() -> &'static age::x25519::Identity {
    static ID: OnceLock<age::x25519::Identity> = OnceLock::new();
    ID.get_or_init(|| {
        IDENTITY
            .parse()
            .unwrap_or_else(|e| panic!("the fuzz identity: {e}"))
    })
}

/// `bundle_sealed`: a bundle file as `gateway import-bundle` gets it, before decryption: the
/// envelope line, the age header and body.
pub fn bundle_sealed(data: &[u8]) {
    let _ = provisioning_shared::bundle::open(data, identity(), None);
}

/// `bundle_opened`: a bundle's payload after decryption and signature: the bytes are the
/// payload's JSON text, given to the checks [`provisioning_shared::bundle::open`] makes once the
/// signature holds, as if the fuzz identity's appliance had opened it and a vendor key of this
/// process had signed it; `$APPLIANCE` and `$VENDOR` in it become the appliance's recipient and
/// that key's fingerprint, so that the fuzzer gets past those checks. (Sealing and signing
/// every input, as `write_seeds` does once, made the target twenty times slower and reached no
/// other code: the signature over a payload of our own making always holds.) An opened payload
/// renders the `gateway.toml` the import would write, which must parse.
pub fn bundle_opened(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (appliance, vendor) = bundle_names();
    let text = text.replace("$APPLIANCE", appliance).replace("$VENDOR", vendor);
    if let Ok(opened) = provisioning_shared::bundle::payload(&text, appliance, vendor.clone()) {
        let config = crate::appliance::import::render_config(&opened.payload);
        // What the import checks before it writes anything; a payload may be refused there.
        let _ = toml::from_str::<crate::config::Config>(&config);
    }
}

/// The fuzz appliance's recipient and the fingerprint of this process's vendor key.
fn bundle_names() -> &'static (String, String) {
    static NAMES: OnceLock<(String, String)> = OnceLock::new();
    NAMES.get_or_init(|| {
        use aws_lc_rs::signature::KeyPair as _;
        let public = vendor().public_key().as_ref();
        (
            identity().to_public().to_string(),
            provisioning_shared::bundle::fingerprint(public),
        )
    })
}

/// A vendor signing key of this process.
fn vendor() -> &'static aws_lc_rs::signature::EcdsaKeyPair {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    static VENDOR: OnceLock<EcdsaKeyPair> = OnceLock::new();
    VENDOR.get_or_init(|| {
        EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
            .unwrap_or_else(|e| panic!("a vendor key: {e}"))
    })
}

/// A bundle of the payload `text` (`$APPLIANCE` and `$VENDOR` filled in) for the fuzz identity,
/// signed by a vendor key of this process.
#[cfg(test)]
fn seal(text: &str) -> Option<Vec<u8>> {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::KeyPair as _;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use provisioning_shared::bundle;
    use std::io::Write as _;

    let vendor = vendor();
    let (appliance, fingerprint) = bundle_names();
    let public = vendor.public_key().as_ref();
    let text = text
        .replace("$APPLIANCE", appliance)
        .replace("$VENDOR", fingerprint);
    let mut message = bundle::CONTEXT.to_vec();
    message.extend_from_slice(text.as_bytes());
    let signature = vendor.sign(&SystemRandom::new(), &message).ok()?;
    let signed = bundle::Signed {
        payload: text,
        key: STANDARD.encode(public),
        signature: STANDARD.encode(signature.as_ref()),
    };
    let inner = serde_json::to_vec(&signed).ok()?;
    let recipient = identity().to_public();
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient)).ok()?;
    let mut sealed = format!("{}{appliance}\n", bundle::LINE).into_bytes();
    let mut writer = encryptor.wrap_output(&mut sealed).ok()?;
    writer.write_all(&inner).ok()?;
    writer.finish().ok()?;
    Some(sealed)
}

/// `records`: journal, cache and audit records read back from their SQLite files, whatever
/// their columns hold (a damaged or tampered file): an error or a miss, never a panic. The bytes
/// are rows: for each column a type byte and a value.
pub fn records(data: &[u8]) {
    thread_local! {
        static FILES: RecordFiles = RecordFiles::open();
    }
    FILES.with(|files| files.read_back(data));
}

/// The files of the `records` target, opened once per process (a fuzzer runs one input after
/// another on one thread: opening them for every input made the target a hundred times
/// slower), on `/dev/shm` where there is one, so that commits cost no disk syncs.
struct RecordFiles {
    dir: PathBuf,
    cache: engine_proxy::cache::Cache,
    _journal: Arc<engine_proxy::journal::Journal>,
    /// The target's own connections, which write the rows the gateway's code reads back.
    cache_rows: rusqlite::Connection,
    journal_rows: (rusqlite::Connection, PathBuf),
    /// A data directory with an audit log, and its live segment.
    audit: PathBuf,
    audit_rows: rusqlite::Connection,
}

impl RecordFiles {
    fn open() -> RecordFiles {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("kakehashi-fuzz-records-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let (cache, _) = engine_proxy::cache::Cache::open(&dir, 1 << 20).unwrap_or_else(|e| panic!("{e}"));
        let journal = engine_proxy::journal::Journal::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        let cache_rows = rusqlite::Connection::open(dir.join("cache.db")).unwrap_or_else(|e| panic!("{e}"));
        let journal_rows = engine_proxy::journal::operator::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        let audit = dir.join("audit-log");
        crate::audit::AuditLog::open(&audit)
            .and_then(|log| log.close_blocking())
            .unwrap_or_else(|e| panic!("{e}"));
        let live = crate::audit::segment::list(&audit)
            .ok()
            .and_then(|mut all| all.pop())
            .unwrap_or_else(|| panic!("{}: no audit segment", audit.display()));
        let audit_rows = rusqlite::Connection::open(&live.path).unwrap_or_else(|e| panic!("{e}"));
        for conn in [&cache_rows, &journal_rows.0, &audit_rows] {
            let _ = conn.busy_timeout(std::time::Duration::from_secs(5));
        }
        RecordFiles {
            dir,
            cache,
            _journal: journal,
            cache_rows,
            journal_rows,
            audit,
            audit_rows,
        }
    }

    /// A row the gateway's code must read back without panicking.
    fn read_back(&self, data: &[u8]) {
        use rusqlite::types::Value;

        let mut rest = data;
        let mut value = || -> Value {
            let Some((&kind, after)) = rest.split_first() else {
                return Value::Null;
            };
            rest = after;
            let mut take = |n: usize| {
                let n = n.min(rest.len());
                let (v, after) = rest.split_at(n);
                rest = after;
                v
            };
            let mut word = [0u8; 8];
            match kind % 5 {
                0 => Value::Null,
                1 => {
                    let b = take(8);
                    word[..b.len()].copy_from_slice(b);
                    Value::Integer(i64::from_le_bytes(word))
                }
                2 => {
                    let b = take(8);
                    word[..b.len()].copy_from_slice(b);
                    Value::Real(f64::from_le_bytes(word))
                }
                3 => {
                    let n = take(1).first().copied().unwrap_or(0);
                    Value::Text(String::from_utf8_lossy(take(usize::from(n))).into_owned())
                }
                _ => {
                    let n = take(1).first().copied().unwrap_or(0);
                    Value::Blob(take(usize::from(n)).to_vec())
                }
            }
        };

        // The cache: one row under a key the lookup asks for.
        let key = [7u8; 32];
        let cache_row: Vec<Value> = (0..6).map(|_| value()).collect();
        let journal_row: Vec<Value> = (0..16).map(|_| value()).collect();
        let audit_row: Vec<Value> = (0..4).map(|_| value()).collect();
        let conn = &self.cache_rows;
        let _ = conn
            .prepare_cached("DELETE FROM entries")
            .and_then(|mut s| s.execute([]));
        let mut row = vec![Value::Blob(key.to_vec())];
        row.extend(cache_row);
        insert(conn, "entries", row);
        let _ = self.cache.get(&key);

        // The journal, as `kakehashi journal list|show` reads it.
        let (conn, path) = &self.journal_rows;
        let _ = conn
            .prepare_cached("DELETE FROM entries")
            .and_then(|mut s| s.execute([]));

        let id = match journal_row.first() {
            Some(Value::Integer(id)) => *id,
            _ => 1,
        };
        insert(conn, "entries", journal_row);
        let _ = engine_proxy::journal::operator::list(conn, path, &[]);
        let _ = engine_proxy::journal::operator::show(conn, path, id as u64);

        // The audit log: one batch (last id, count, last hash, the entries packed), as
        // `kakehashi audit verify` and `export`, the status page and a backup's check read it.
        let last = match audit_row.first() {
            Some(Value::Integer(id)) => *id as u64,
            _ => 1,
        };
        let _ = self
            .audit_rows
            .prepare_cached("DELETE FROM batches")
            .and_then(|mut s| s.execute([]));
        insert(&self.audit_rows, "batches", audit_row);
        let _ = crate::audit::verify(&self.audit);
        let _ = crate::audit::export(&self.audit, None, |_| Ok(()));
        let _ = crate::audit::recent(&self.audit, 100, 10);
        let _ = crate::audit::hash_of(&self.audit, last);
    }
}

/// Removes the files where the thread ends (the replay's test threads; a fuzzer's process
/// exits without running it).
impl Drop for RecordFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Inserts `row` into `table` (as many columns as it has values): a row the schema refuses is
/// simply not there.
fn insert(conn: &rusqlite::Connection, table: &str, row: Vec<rusqlite::types::Value>) {
    let columns: Vec<String> = conn
        .prepare_cached(&format!(
            "SELECT name FROM pragma_table_info('{table}') ORDER BY cid"
        ))
        .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(0))?.collect())
        .unwrap_or_default();
    let n = row.len().min(columns.len());
    if n == 0 {
        return;
    }
    let names = columns[..n].join(", ");
    let marks = vec!["?"; n].join(", ");
    let sql = format!("INSERT OR REPLACE INTO {table} ({names}) VALUES ({marks})");
    if let Ok(mut insert) = conn.prepare_cached(&sql) {
        let _ = insert.execute(rusqlite::params_from_iter(row.into_iter().take(n)));
    }
}

/// `sftp`: what an SFTP server says, as the backup target's client reads it: the bytes are
/// every reply the server sends, and the client does what a backup run does (open, write in a
/// pipeline, sync, rename, stat, list, read back, remove). A reply that is wrong is an error,
/// never a panic, a hang or an allocation beyond the client's reply limit.
pub fn sftp(data: &[u8]) {
    use crate::backup::sftp::{Download, Session, Upload};
    use std::io::{Cursor, Read as _, Write as _};

    let server = Box::new(Cursor::new(data.to_vec()));
    let Ok(mut session) = Session::over_streams(server, Box::new(std::io::sink())) else {
        return;
    };
    if let Ok(mut upload) = Upload::create(&mut session, "/backups/.a.partial") {
        // Two write requests in flight before the first answer.
        let _ = upload.write_all(&[7; 40_000]);
        let _ = upload.finish();
    }
    let _ = session.free_bytes("/backups");
    let _ = session.rename("/backups/.a.partial", "/backups/a");
    let _ = session.stat("/backups/a");
    let _ = session.list("/backups");
    if let Ok(download) = Download::open(&mut session, "/backups/a") {
        let _ = std::io::copy(&mut download.take(1 << 20), &mut std::io::sink());
    }
    let _ = session.remove("/backups/old");
    session.end();
}

/// `firmware_image`: an update image as `firmware install` reads it from a file or a download:
/// the magic line, the manifest's length, the signed envelope (JSON: the signer's key, the
/// signature, the manifest), the signature checked and the signer compared with the pinned key.
/// The payload after it is read by the installer chunk by chunk against the signed hashes; a
/// signed manifest is the `firmware_manifest` target's input.
pub fn firmware_image(data: &[u8]) {
    let reader = Box::new(std::io::Cursor::new(data.to_vec()));
    let _ = firmware::image::read_signed("fuzz.img".into(), reader, &[4; 65]);
}

/// `firmware_manifest`: an image's manifest once its signature holds, parsed and checked as
/// `firmware install` does (payload sizes, chunk sizes and hashes, versions), then against an
/// appliance (board, version floor, running version, `min_from`, expiry).
pub fn firmware_manifest(data: &[u8]) {
    let Ok(manifest) = serde_json::from_slice::<firmware::manifest::Manifest>(data) else {
        return;
    };
    let (Ok(running), Ok(floor)) = ("1.2.0".parse(), "1.1.0".parse()) else {
        return;
    };
    if manifest.check().is_ok() {
        let appliance = firmware::image::Appliance {
            board: "fuzz-board",
            floor: Some(&floor),
            running: &running,
            now: 1_800_000_000,
        };
        let _ = firmware::image::check(&manifest, &appliance);
    }
}

/// `wireguard`: the WireGuard receive path. The first byte picks what the rest is: datagrams
/// from the network (length-prefixed) through the rate limiter, the anonymous handshake parse
/// and a peer's decapsulation, as `doors::wireguard::receive` takes them; or decrypted packets
/// from a peer into the userspace TCP/IP stack that holds the gateway's tunnel address.
pub fn wireguard(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let packets = rest
        .chunks(1)
        .next()
        .map(|_| length_prefixed(rest))
        .unwrap_or_default();
    if mode % 2 == 0 {
        datagrams(&packets);
    } else {
        inner_packets(&packets);
    }
}

/// Splits `data` into pieces, each preceded by its length in two bytes (big-endian).
fn length_prefixed(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 && out.len() < 64 {
        let n = usize::from(u16::from_be_bytes([data[0], data[1]]));
        let n = n.min(data.len() - 2);
        out.push(&data[2..2 + n]);
        data = &data[2 + n..];
    }
    out
}

/// The gateway's and a terminal's fixed keys.
const GATEWAY_KEY: [u8; 32] = [0x11; 32];
const TERMINAL_KEY: [u8; 32] = [0x22; 32];

fn datagrams(datagrams: &[&[u8]]) {
    use boringtun::noise::handshake::parse_handshake_anon;
    use boringtun::noise::rate_limiter::RateLimiter;
    use boringtun::noise::{Packet, Tunn, TunnResult};
    use boringtun::x25519::{PublicKey, StaticSecret};

    // The keys' public halves are computed once: each is a scalar multiplication, and a fresh
    // tunnel (state must not leak from one input to the next) already costs one.
    static KEYS: OnceLock<(StaticSecret, PublicKey, PublicKey)> = OnceLock::new();
    let (secret, public, terminal) = KEYS.get_or_init(|| {
        let secret = StaticSecret::from(GATEWAY_KEY);
        let public = PublicKey::from(&secret);
        (secret, public, PublicKey::from(&StaticSecret::from(TERMINAL_KEY)))
    });
    let limiter = Arc::new(RateLimiter::new(public, 10));
    let mut tunn = Tunn::new(secret.clone(), *terminal, None, None, 0, Some(limiter.clone()));
    let from = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let mut work = vec![0u8; 65536];
    for datagram in datagrams {
        let packet = match limiter.verify_packet(Some(from), datagram, &mut work) {
            Ok(packet) => packet,
            Err(_) => continue,
        };
        if let Packet::HandshakeInit(init) = &packet {
            let _ = parse_handshake_anon(secret, public, init);
        }
        let mut input: &[u8] = datagram;
        loop {
            match tunn.decapsulate(Some(from), input, &mut work) {
                TunnResult::WriteToNetwork(_) => input = &[],
                TunnResult::WriteToTunnelV4(inner, _) => {
                    let _ = Tunn::dst_address(inner);
                    break;
                }
                _ => break,
            }
        }
    }
}

fn inner_packets(packets: &[&[u8]]) {
    use crate::doors::slot::Slots;
    use crate::doors::wireguard::stack::Stack;
    use boringtun::noise::Tunn;

    let address = Ipv4Addr::new(10, 77, 0, 1);
    let slots = Slots::new(4, Arc::new(crate::metrics::Metrics::default()));
    let mut stack = Stack::new(address, 24, 1420, &[8000], slots);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut accepted = Vec::new();
    for packet in packets {
        // What the receive path checks before a packet goes inside: an IPv4 packet for the
        // gateway's address.
        if Tunn::dst_address(packet) != Some(IpAddr::V4(address)) {
            continue;
        }
        stack.deliver(packet);
        let _ = stack.poll(&mut cx, &mut |a: crate::doors::wireguard::stack::Accepted| {
            let _: SocketAddr = a.source;
            accepted.push(a);
        });
        stack.outbound(|_| {});
    }
    let _ = stack.delay();
}

#[cfg(test)]
mod tests;
