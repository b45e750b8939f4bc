//! What every connection shares, and what a reload replaces.
//!
//! The reloadable part ([`Live`]: certificates, CA, CRL, inventory) is an immutable snapshot behind
//! one lock, swapped whole on SIGHUP: a connection works with one consistent snapshot, and a
//! failed reload leaves the previous one in place. Established connections are re-checked
//! against a new snapshot on their next request, so a terminal revoked or disabled by the reload
//! loses its connections too, while every other connection carries on undisturbed.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use engine_proxy::cache::Cache;
use engine_proxy::failover::{Engine, Failover, Local};
use engine_proxy::health::Health;
use engine_proxy::journal::Journal;
use engine_proxy::upstream::Upstream;
use rustls::ServerConfig;
use rustls::pki_types::UnixTime;
use rustls::server::danger::ClientCertVerifier;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::identity::Proof;
use crate::inventory::Inventory;
use crate::metrics::Metrics;
use crate::person::{People, Settings};
use crate::{db, tls};

/// Why the gateway could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Store(#[from] db::StoreError),
    #[error(transparent)]
    Upstream(#[from] engine_proxy::upstream::UpstreamError),
    #[error(transparent)]
    Journal(#[from] engine_proxy::journal::JournalError),
    #[error(transparent)]
    LocalStore(#[from] engine_proxy::sqlite::DbError),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error(transparent)]
    Ca(#[from] cert_tool::Error),
    #[error(transparent)]
    Appliance(#[from] crate::appliance::ApplianceError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The reloadable snapshot.
pub struct Live {
    /// Counts reloads; a connection that saw an older one re-checks its terminal.
    pub generation: u64,
    pub inventory: Arc<Inventory>,
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// For api listeners (ALPN http/1.1) and for raw TCP listeners (no ALPN).
    pub api_tls: Arc<ServerConfig>,
    pub tcp_tls: Arc<ServerConfig>,
    /// For the EST listener (client certificate optional), when there is one.
    pub est_tls: Option<Arc<ServerConfig>>,
    /// When the loaded CRL's next update is due; past it the CRL is still enforced, and
    /// `crl_stale` and a log warning say a fresh one is late.
    pub crl_next_update: Option<time::OffsetDateTime>,
}

impl Live {
    fn load(config: &Config, generation: u64) -> Result<Live, StartError> {
        let inventory = Arc::new(Inventory::load(&db::open(&config.data_dir)?)?);
        let verifier = tls::terminal_verifier(&config.tls, inventory.clone())?;
        let est_tls = match &config.est {
            Some(_) => Some(tls::server_config(
                &config.tls,
                tls::est_verifier(&config.tls)?,
                &[b"http/1.1"],
            )?),
            None => None,
        };
        Ok(Live {
            generation,
            api_tls: tls::server_config(&config.tls, verifier.clone(), &[b"http/1.1"])?,
            tcp_tls: tls::server_config(&config.tls, verifier.clone(), &[])?,
            est_tls,
            crl_next_update: config.tls.crl.as_deref().and_then(tls::crl_next_update),
            inventory,
            verifier,
        })
    }

    /// Whether the loaded CRL is past its next update (and since when).
    pub fn crl_stale(&self) -> Option<time::OffsetDateTime> {
        self.crl_next_update
            .filter(|t| *t <= time::OffsetDateTime::now_utc())
    }

    /// Whether a terminal admitted earlier is still admitted by this snapshot: for a certificate,
    /// chain, validity, CRL and inventory, exactly as in a new handshake; for a WireGuard peer, its
    /// key still registered to an enabled terminal.
    pub fn admits(&self, proof: &Proof) -> Result<(), String> {
        let chain = match proof {
            Proof::Certificate(chain) => chain,
            Proof::WireGuard(key) => {
                return match self.inventory.by_wireguard_key(key) {
                    Some(t) if t.enabled => Ok(()),
                    Some(t) => Err(format!("terminal {:?} is disabled", t.name)),
                    None => Err("the WireGuard key is no longer registered".into()),
                };
            }
        };
        let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
            .map_err(|e| tls::describe_error(&e))
    }
}

/// The running gateway.
pub struct Gateway {
    pub config: Config,
    pub people: Arc<People>,
    /// The uplink's TLS client configuration, for raw TCP routes.
    pub uplink: Arc<rustls::ClientConfig>,
    /// The uplink certificate with the on-premises engine's trust anchors, when there is one.
    pub onprem_tls: Option<Arc<rustls::ClientConfig>>,
    /// Health, the rules table, and the local engine.
    pub failover: Arc<Failover>,
    pub audit: AuditLog,
    pub metrics: Metrics,
    /// One permit per open terminal connection.
    pub connections: Arc<tokio::sync::Semaphore>,
    live: RwLock<Arc<Live>>,
    /// Tells raw TCP streams that a reload happened.
    pub reloaded: tokio::sync::watch::Sender<u64>,
    /// The clinic CA, when the appliance issues certificates itself (`[est]`).
    pub authority: Option<crate::est::authority::Authority>,
    /// One reload at a time: SIGHUP and an enrollment may ask at once.
    reloading: std::sync::Mutex<()>,
}

impl Gateway {
    pub fn start(config: Config) -> Result<Gateway, StartError> {
        let live = Live::load(&config, 0)?;
        let uplink = tls::client_config(&config.upstream.ca, &config.upstream.cert, &config.upstream.key)?;
        // Each worker builds its own client (see `upstream`); this one proves the URL is usable.
        Upstream::new(
            &config.upstream.url,
            uplink.clone(),
            config.limits.upstream_timeout(),
        )?;
        let password = read_secret(&config.upstream.password_file)?;
        let clinic = crate::person::basic(&config.upstream.user, &password);
        let settings = Settings {
            person: config.auth.person,
            cache: std::time::Duration::from_secs(config.auth.cache_secs),
            failures: config.auth.lockout_failures,
            window: std::time::Duration::from_secs(config.auth.lockout_window_secs),
            session: std::time::Duration::from_secs(config.auth.session_secs),
        };
        let people = Arc::new(People::new(settings, db::open(&config.data_dir)?, clinic));
        let audit = AuditLog::open(&config.data_dir)?;
        let metrics = Metrics::default();
        let local = match &config.failover.engine {
            Some(url) => Local::Engine { url: url.clone() },
            None => {
                let (cache, note) = Cache::open(&config.data_dir, config.failover.cache_max_bytes)?;
                if let Some(note) = note {
                    tracing::warn!("{note}");
                }
                let journal = Journal::open(&config.data_dir)?;
                Local::Store {
                    cache: Box::new(cache),
                    journal,
                }
            }
        };
        let onprem_tls = match &config.failover.engine {
            Some(_) => {
                let ca = config.failover.engine_ca.as_ref().unwrap_or(&config.upstream.ca);
                Some(Arc::new(tls::client_config(
                    ca, &config.upstream.cert, &config.upstream.key,
                )?))
            }
            None => None,
        };
        let failover = Arc::new(Failover {
            rules: config.failover.rules(),
            health: Health::new(config.failover.health()),
            local,
            max_entry_bytes: config.failover.max_entry_bytes,
        });
        Metrics::set(&metrics.terminals_enabled, live.inventory.enabled_count() as u64);
        let authority = crate::est::authority::Authority::from_config(&config);
        if let Some(authority) = &authority {
            crate::est::check_authority(&config, authority)?;
        }
        Ok(Gateway {
            authority,
            reloading: std::sync::Mutex::new(()),
            connections: Arc::new(tokio::sync::Semaphore::new(config.limits.max_connections)),
            people,
            uplink: Arc::new(uplink),
            onprem_tls,
            failover,
            audit,
            metrics,
            live: RwLock::new(Arc::new(live)),
            reloaded: tokio::sync::watch::channel(0).0,
            config,
        })
    }

    /// A pooled client to the cloud engine. Each worker has its own, so that a request and the
    /// upstream connection carrying it live on the same thread; the prober and the replayer have
    /// theirs.
    pub fn upstream(&self) -> Result<Upstream, StartError> {
        let config = &self.config;
        Ok(Upstream::new(
            &config.upstream.url,
            (*self.uplink).clone(),
            config.limits.upstream_timeout(),
        )?)
    }

    /// The route stage for one worker: its clients to the cloud and the on-premises engine.
    pub fn engine(&self) -> Result<Engine, StartError> {
        let onprem = match (&self.failover.local, &self.onprem_tls) {
            (Local::Engine { url }, Some(tls)) => Some(Upstream::new(
                url,
                (**tls).clone(),
                self.config.limits.upstream_timeout(),
            )?),
            _ => None,
        };
        Ok(Engine {
            cloud: self.upstream()?,
            onprem,
            failover: self.failover.clone(),
        })
    }

    /// The journal, when the local engine is the appliance's own.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        match &self.failover.local {
            Local::Store { journal, .. } => Some(journal),
            Local::Engine { .. } => None,
        }
    }

    /// The current snapshot.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the certificates, CA, CRL, inventory and the engine password (SIGHUP, a new
    /// CRL, an imported bundle). On error nothing changes.
    pub fn reload(&self) -> Result<(), StartError> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.live().generation + 1;
        let live = Live::load(&self.config, generation)?;
        let password = read_secret(&self.config.upstream.password_file)?;
        self.people
            .set_clinic(crate::person::basic(&self.config.upstream.user, &password));
        Metrics::set(
            &self.metrics.terminals_enabled,
            live.inventory.enabled_count() as u64,
        );
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
        self.people.forget_cached();
        self.reloaded.send_replace(generation);
        Ok(())
    }

    /// Resolves when a reload stops admitting this certificate, with the reason: what ends a
    /// long-lived stream (raw TCP, WebSocket) of a terminal that was revoked or disabled.
    pub async fn revoked(&self, proof: &Proof) -> String {
        let mut reloads = self.reloaded.subscribe();
        while reloads.changed().await.is_ok() {
            if let Err(why) = self.live().admits(proof) {
                return why;
            }
        }
        std::future::pending().await
    }
}

/// The first line of a secret file, which must not be readable by others.
pub fn read_secret(path: &std::path::Path) -> Result<zeroize::Zeroizing<String>, StartError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |message: String| StartError::File {
        path: path.to_owned(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err(format!(
            "holds a password but has mode {:o}: expected 0600 (chmod 600 {})",
            meta.permissions().mode() & 0o777,
            path.display()
        )));
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?);
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(err("expected the password on the first line".into()));
    }
    Ok(zeroize::Zeroizing::new(line.to_owned()))
}
