//! A clinic for unit tests that need no socket: a CA with its terminals' certificates, the
//! gateway's server certificate, an inventory and people in a data directory on disk, and the
//! snapshot, audit log and people the doors and stages are built from.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::header::HeaderValue;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;

use engine_proxy::scope::Scopes;

use crate::audit::{AuditLog, Record};
use crate::auth::{People, Settings};
use crate::config::Tls;
use crate::doors::identity::{Identified, Proof, Terminal};
use crate::doors::live::{Live, Snapshot};
use crate::store::{self, inventory, inventory::Inventory, users};

/// The test clinic and its files.
pub struct Clinic {
    /// Holds the files; they go when the clinic does.
    _dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    pub tls: Tls,
    pub data_dir: PathBuf,
    pub live: Arc<Live>,
    pub audit: AuditLog,
    pub people: Arc<People>,
}

/// The password of every person the clinic has.
pub const PASSWORD: &str = "correct horse battery";

impl Clinic {
    /// A clinic whose inventory has `terminals` (name, enabled) and whose people are `users`.
    pub fn new(terminals: &[(&str, bool)], users: &[&str]) -> Clinic {
        let dir = tempfile::tempdir().unwrap();
        let path = |f: &str| dir.path().join(f);
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(vec![]).unwrap();
        // Named for its directory: two clinics' CAs must not share a name.
        let ca_name = format!("test clinic CA {}", dir.path().display());
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["gateway.test".into()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        std::fs::write(path("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(path("server.pem"), server.pem()).unwrap();
        std::fs::write(path("server.key"), server_key.serialize_pem()).unwrap();
        let tls = Tls {
            cert: path("server.pem"),
            key: path("server.key"),
            client_ca: path("ca.pem"),
            crl: None,
        };
        let data_dir = path("data");
        let conn = store::open(&data_dir).unwrap();
        for (name, enabled) in terminals {
            inventory::add(&conn, name, None, Scopes::ALL).unwrap();
            if !enabled {
                inventory::set_enabled(&conn, name, false).unwrap();
            }
        }
        let hash = users::hash_password(PASSWORD.as_bytes()).unwrap();
        for id in users {
            users::add(&conn, id, &hash, None, Scopes::ALL).unwrap();
        }
        let settings = Settings {
            person: true,
            cache: Duration::from_secs(60),
            failures: 3,
            window: Duration::from_secs(900),
            session: Duration::from_secs(3600),
        };
        let people = Arc::new(People::new(
            settings,
            store::open(&data_dir).unwrap(),
            HeaderValue::from_static("Basic Y2xpbmljOmNsaW5pYw=="),
        ));
        Clinic {
            audit: AuditLog::open(&data_dir).unwrap(),
            live: Arc::new(Live::new(snapshot(&tls, &data_dir, 0))),
            _dir: dir,
            issuer,
            tls,
            data_dir,
            people,
        }
    }

    /// Makes a new snapshot from the data directory, as SIGHUP would.
    pub fn reload(&self) {
        let next = snapshot(&self.tls, &self.data_dir, self.live.generation() + 1);
        self.live.replace(next);
    }

    /// Disables a terminal in the inventory (on disk; [`Clinic::reload`] makes it count).
    pub fn disable(&self, name: &str) {
        inventory::set_enabled(&store::open(&self.data_dir).unwrap(), name, false).unwrap();
    }

    /// Sets what a terminal may call (on disk; [`Clinic::reload`] makes it count).
    pub fn set_scopes(&self, name: &str, scopes: Scopes) {
        inventory::set_scopes(&store::open(&self.data_dir).unwrap(), name, scopes).unwrap();
    }

    /// A client certificate for `name`, issued by the clinic CA.
    pub fn certificate(&self, name: &str) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.signed_by(&key, &self.issuer).unwrap().der().clone()
    }

    /// A terminal admitted by its certificate under the current snapshot.
    pub fn admitted(&self, name: &str) -> Identified {
        let cert = self.certificate(name);
        Identified {
            terminal: Terminal::from_certificate(&cert).unwrap(),
            scopes: self.live.now().admission.registered(name).unwrap_or(Scopes::NONE),
            proof: Proof::Certificate(vec![cert]),
            generation: self.live.generation(),
        }
    }

    /// Every audit entry written so far.
    pub async fn audited(&self) -> Vec<Record> {
        self.audit.flush().await.unwrap();
        let mut all = Vec::new();
        crate::audit::export(&self.data_dir, None, |r| {
            all.push(r.clone());
            Ok(())
        })
        .unwrap();
        all
    }
}

/// The inventory as the data directory has it now, as snapshot `generation`.
fn snapshot(tls: &Tls, data_dir: &std::path::Path, generation: u64) -> Snapshot {
    let inventory = Inventory::load(&store::open(data_dir).unwrap()).unwrap();
    Snapshot::with_inventory(tls, false, Arc::new(inventory), generation).unwrap()
}

/// A request as the terminal side's HTTP/1.1 server hands it to the stages.
pub fn request(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> hyper::Request<crate::http1::Body> {
    let mut req = hyper::Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let body = match body {
        "" => crate::http1::Body::empty(),
        text => crate::http1::Body::full(hyper::body::Bytes::copy_from_slice(text.as_bytes())),
    };
    req.body(body).unwrap()
}

/// The body of an answer, as text.
pub async fn text(resp: hyper::Response<engine_proxy::upstream::ProxyBody>) -> String {
    use http_body_util::BodyExt;
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// An HTTP Basic `Authorization` value.
pub fn basic(id: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{password}"))
    )
}

/// The cloud's health as a freshly started gateway sees it: `normal`.
/// The failover state of a gateway with an on-premises engine (nothing on disk), the default
/// rules after `rules`, and a 1 KiB bound on buffered bodies.
pub fn failover(rules: Vec<engine_proxy::rules::Rule>) -> engine_proxy::failover::Failover {
    engine_proxy::failover::Failover {
        rules: engine_proxy::rules::Rules::new(rules),
        health: health(),
        local: engine_proxy::failover::Local::Engine {
            url: "http://onprem.test:8000".into(),
        },
        max_entry_bytes: 1024,
    }
}

pub fn health() -> Arc<engine_proxy::health::Health> {
    let second = Duration::from_secs(1);
    engine_proxy::health::Health::new(
        engine_proxy::health::Settings {
            interval: second,
            timeout: second,
            deadline_min: second,
            healthy_for: second,
        },
        vec![],
    )
}
