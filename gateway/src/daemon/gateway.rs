//! The running gateway: what the daemon starts once and shares between its doors, workers and
//! tasks, and the reload that replaces its reloadable part.
//!
//! Nothing below the daemon takes this whole: each door and each stage is given the parts it
//! uses ([`Gateway::doors`], [`Gateway::pipeline`]).

use std::path::PathBuf;
use std::sync::Arc;

use engine_proxy::cache::Cache;
use engine_proxy::client::Route as PathRoute;
use engine_proxy::failover::{Failover, Local, Router};
use engine_proxy::health::Health;
use engine_proxy::journal::Journal;
use engine_proxy::stream::{Target, Targets};
use engine_proxy::upstream::Upstream;

use crate::audit::AuditLog;
use crate::auth::{People, Settings};
use crate::config::{Config, Listener, ListenerKind};
use crate::doors::Doors;
use crate::doors::live::{Live, LoadError, Snapshot};
use crate::doors::slot::Slots;
use crate::doors::tls::policy::{self, TlsError};
use crate::est::authority::Authority;
use crate::http1;
use crate::metrics::Metrics;
use crate::pipeline::stream::{StreamRoute, Streams};
use crate::pipeline::{Pipeline, Route, admit, authenticate, authorize, forward, limit, pages, respond};
use crate::store::{self, StoreError};

/// Why the gateway could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] LoadError),
    #[error(transparent)]
    Upstream(#[from] engine_proxy::upstream::UpstreamError),
    #[error(transparent)]
    Stream(#[from] engine_proxy::stream::StreamError),
    #[error(transparent)]
    Journal(#[from] engine_proxy::journal::JournalError),
    #[error(transparent)]
    LocalStore(#[from] engine_proxy::sqlite::DbError),
    #[error(transparent)]
    WireGuard(#[from] crate::doors::wireguard::SetupError),
    #[error(transparent)]
    Uplink(#[from] crate::uplink::TunnelError),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error(transparent)]
    Ca(#[from] cert_tool::Error),
    #[error(transparent)]
    Appliance(#[from] crate::appliance::ApplianceError),
    #[error(transparent)]
    Authority(#[from] crate::est::AuthorityError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The running gateway.
pub struct Gateway {
    pub config: Config,
    /// Who is admitted now: the reloadable snapshot.
    pub live: Arc<Live>,
    pub people: Arc<People>,
    /// The uplink's TLS client configuration.
    pub uplink: Arc<rustls::ClientConfig>,
    /// Each path's WireGuard tunnel, for the paths that have one (by path index).
    tunnels: Vec<Option<Arc<crate::uplink::Tunnel>>>,
    /// The tunnels' tasks, until [`Gateway::take_tunnels`] starts them on the runtime.
    drivers: std::sync::Mutex<Vec<crate::uplink::Driver>>,
    /// The uplink certificate with the on-premises engine's trust anchors, when there is one.
    pub onprem_tls: Option<Arc<rustls::ClientConfig>>,
    /// Health, the rules table, and the local engine.
    pub failover: Arc<Failover>,
    /// Each cloud path's engine as the audit log names it ([`crate::config::Upstream::labels`]),
    /// made once: every request's entry and every journal entry handed back shares it.
    pub path_labels: Vec<Arc<str>>,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    /// The data directory's disk budget (`[storage]`), fixed at start.
    pub budget: crate::budget::Budget,
    pub slots: Slots,
    /// The clinic CA, when the appliance issues certificates itself (`[est]`).
    pub authority: Option<Authority>,
    /// What the status page is made of (`crate::status`).
    pub status: Arc<crate::status::Sources>,
    /// One reload at a time: SIGHUP, the file watcher and an enrollment may ask at once.
    reloading: std::sync::Mutex<()>,
}

impl Gateway {
    pub fn start(config: Config) -> Result<Gateway, StartError> {
        let snapshot = Snapshot::load(&config, 0)?;
        let uplink = policy::client_config(&config.upstream.ca, &config.upstream.cert, &config.upstream.key)?;
        let password = read_secret(&config.upstream.password_file)?;
        let clinic = crate::auth::basic(&config.upstream.user, &password);
        let settings = Settings {
            person: config.auth.person,
            cache: std::time::Duration::from_secs(config.auth.cache_secs),
            failures: config.auth.lockout_failures,
            window: std::time::Duration::from_secs(config.auth.lockout_window_secs),
            session: std::time::Duration::from_secs(config.auth.session_secs),
        };
        let people = Arc::new(People::new(settings, store::open(&config.data_dir)?, clinic));
        let budget = crate::budget::Budget::of(&config);
        // A supervisor's child may run beside an older version: it leaves the log's layout.
        let format = match crate::cli::demo::supervised() {
            true => crate::audit::Format::Keep,
            false => crate::audit::Format::Batches,
        };
        let audit = AuditLog::open_as(&config.data_dir, budget.segment_bytes, format)?;
        let metrics = Arc::new(Metrics::default());
        let local = match &config.failover.engine {
            Some(url) => Local::Engine { url: url.clone() },
            None => {
                let (cache, note) = Cache::open(
                    &config.data_dir,
                    budget.cache_bytes(config.failover.cache_max_bytes),
                )?;
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
                Some(Arc::new(policy::client_config(
                    ca, &config.upstream.cert, &config.upstream.key,
                )?))
            }
            None => None,
        };
        let failover = Arc::new(Failover {
            rules: config.failover.rules(),
            health: Health::new(config.failover.health(), config.upstream.names()),
            local,
            max_entry_bytes: config.failover.max_entry_bytes,
        });
        Metrics::set(
            &metrics.terminals_enabled,
            snapshot.inventory().enabled_count() as u64,
        );
        let authority = Authority::from_config(&config);
        if let Some(authority) = &authority {
            crate::est::check_authority(&config, authority)?;
        }
        let live = Arc::new(Live::new(snapshot));
        let status = Arc::new(status_sources(&config, &failover, &live, &audit, budget));
        let slots = Slots::new(config.limits.max_connections, metrics.clone());
        let (mut tunnels, mut drivers) = (Vec::new(), Vec::new());
        tunnels.push(None);
        for path in &config.upstream.paths {
            tunnels.push(match &path.wireguard {
                Some(wg) => {
                    let (tunnel, driver) = crate::uplink::open(&path.name, wg, slots.clone())?;
                    drivers.push(driver);
                    Some(tunnel)
                }
                None => None,
            });
        }
        let gateway = Gateway {
            path_labels: config.upstream.labels().into_iter().map(Arc::from).collect(),
            tunnels,
            drivers: std::sync::Mutex::new(drivers),
            authority,
            status,
            reloading: std::sync::Mutex::new(()),
            slots,
            people,
            uplink: Arc::new(uplink),
            onprem_tls,
            failover,
            audit,
            metrics,
            budget,
            live,
            config,
        };
        // Each worker builds its own clients (see `router`); these prove the URLs usable.
        gateway.paths()?;
        Ok(gateway)
    }

    /// A pooled client to the cloud engine per path, in order of preference. Each worker has its
    /// own, so that a request and the upstream connection carrying it live on the same thread;
    /// the probers and the replayer have theirs.
    pub fn paths(&self) -> Result<Vec<Upstream>, StartError> {
        let upstream = &self.config.upstream;
        let timeout = self.config.limits.upstream_timeout();
        let first = upstream.first();
        let paths = std::iter::once(&first).chain(&upstream.paths);
        paths
            .zip(&self.tunnels)
            .map(|(path, tunnel)| {
                let route = match tunnel {
                    Some(tunnel) => PathRoute::Dial(tunnel.clone()),
                    None => PathRoute::Line {
                        connect: path.connect,
                        bind: path.bind,
                        interface: path.interface.clone(),
                    },
                };
                let url = path.url.as_deref().unwrap_or(&upstream.url);
                Ok(Upstream::over(url, (*self.uplink).clone(), timeout, route)?)
            })
            .collect()
    }

    /// The WireGuard uplinks' tasks, to run on the main runtime (once; later calls get none).
    pub fn take_tunnels(&self) -> Vec<crate::uplink::Driver> {
        std::mem::take(&mut *self.drivers.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The route stage for one worker: its clients to the cloud and the on-premises engine.
    pub fn router(&self) -> Result<Router, StartError> {
        let onprem = match (&self.failover.local, &self.onprem_tls) {
            (Local::Engine { url }, Some(tls)) => Some(Upstream::new(
                url,
                (**tls).clone(),
                self.config.limits.upstream_timeout(),
            )?),
            _ => None,
        };
        Ok(Router {
            paths: self.paths()?,
            onprem,
            failover: self.failover.clone(),
        })
    }

    /// What the doors share.
    pub fn doors(&self) -> Doors {
        Doors {
            live: self.live.clone(),
            slots: self.slots.clone(),
            audit: self.audit.clone(),
            metrics: self.metrics.clone(),
            handshake_timeout: self.config.limits.handshake_timeout(),
        }
    }

    /// The stages for one worker, with its own router.
    pub fn pipeline(&self) -> Result<Pipeline, StartError> {
        let limits = &self.config.limits;
        Ok(Pipeline {
            admit: admit::Admit {
                live: self.live.clone(),
                audit: self.audit.clone(),
            },
            pages: pages::Pages {
                people: self.people.clone(),
                metrics: self.metrics.clone(),
                status: Some(self.status.clone()),
            },
            authenticate: authenticate::Authenticate {
                people: self.people.clone(),
                metrics: self.metrics.clone(),
            },
            authorize: authorize::Authorize {
                failover: self.failover.clone(),
                unknown_calls: self.config.authorize.unknown_calls,
                metrics: self.metrics.clone(),
            },
            limit: limit::Limit {
                max_body_bytes: limits.max_body_bytes,
            },
            forward: forward::Forward::new(
                Arc::new(self.router()?),
                self.metrics.clone(),
                self.path_labels.clone(),
                self.config.failover.engine.as_deref(),
            ),
            respond: respond::Respond {
                audit: self.audit.clone(),
                metrics: self.metrics.clone(),
                health: self.failover.health.clone(),
                live: self.live.clone(),
            },
            streams: Streams {
                live: self.live.clone(),
                people: self.people.clone(),
                health: self.failover.health.clone(),
                audit: self.audit.clone(),
                metrics: self.metrics.clone(),
            },
            http: http1::Limits {
                header_timeout: limits.header_timeout(),
                max_header_bytes: limits.max_header_bytes,
            },
            metrics: self.metrics.clone(),
        })
    }

    /// What a listener serves.
    ///
    /// A raw TCP route's targets are checked here (an address or name the TLS layer cannot use).
    pub fn route(&self, listener: &Listener) -> Result<Route, StartError> {
        let name: Arc<str> = listener.route().into();
        match listener.kind {
            ListenerKind::Api => Ok(Route::Api(name)),
            ListenerKind::Tcp => {
                let timeout = self.config.limits.upstream_timeout();
                // The on-premises engine's scheme says whether it speaks TLS.
                let onprem_tls = self.onprem_tls.clone().filter(|_| {
                    self.config
                        .failover
                        .engine
                        .as_deref()
                        .is_some_and(|u| u.starts_with("https:"))
                });
                Ok(Route::Stream(Arc::new(StreamRoute {
                    name,
                    require_login: listener.require_login,
                    scope: listener.scope.unwrap_or(engine_proxy::scope::Scope::Write),
                    targets: Targets {
                        cloud: Target::new(
                            listener.upstream.clone().unwrap_or_default(),
                            listener.upstream_tls.then(|| self.uplink.clone()),
                            timeout,
                        )?,
                        fallback: match listener.fallback.clone() {
                            Some(address) => Some(Target::new(address, onprem_tls, timeout)?),
                            None => None,
                        },
                    },
                })))
            }
        }
    }

    /// The journal, when the local engine is the appliance's own.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        match &self.failover.local {
            Local::Store { journal, .. } => Some(journal),
            Local::Engine { .. } => None,
        }
    }

    /// Re-reads the certificates, CA, CRL, inventory and the engine password (SIGHUP, a new
    /// CRL, an imported bundle, an enrollment). On error nothing changes.
    pub fn reload(&self) -> Result<(), StartError> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = Snapshot::load(&self.config, self.live.generation() + 1)?;
        let password = read_secret(&self.config.upstream.password_file)?;
        self.people
            .set_clinic(crate::auth::basic(&self.config.upstream.user, &password));
        Metrics::set(
            &self.metrics.terminals_enabled,
            snapshot.inventory().enabled_count() as u64,
        );
        self.live.replace(snapshot);
        self.people.forget_cached();
        Ok(())
    }
}

/// The status page's sources. The outage history is a convenience: a `history.db` that cannot
/// be opened is logged and the page shows no availability, but the gateway serves.
fn status_sources(
    config: &Config,
    failover: &Failover,
    live: &Arc<Live>,
    audit: &AuditLog,
    budget: crate::budget::Budget,
) -> crate::status::Sources {
    let history = match engine_proxy::history::History::open(&config.data_dir) {
        Ok(history) => Some(history),
        Err(e) => {
            tracing::warn!("the status page shows no availability: {e}");
            None
        }
    };
    let mut certificates = vec![
        ("server", config.tls.cert.clone()),
        ("uplink", config.upstream.cert.clone()),
        ("clinic CA", config.tls.client_ca.clone()),
    ];
    certificates.dedup_by(|a, b| a.1 == b.1);
    crate::status::Sources {
        health: failover.health.clone(),
        journal: match &failover.local {
            Local::Store { journal, .. } => Some(journal.clone()),
            Local::Engine { .. } => None,
        },
        history,
        live: live.clone(),
        audit: audit.clone(),
        operators: config.status.operators.clone(),
        data_dir: config.data_dir.clone(),
        certificates,
        firmware_slots: config.firmware.as_ref().map(|f| (f.slots(), f.backend())),
        budget,
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
