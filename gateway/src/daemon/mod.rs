//! The daemon's life cycle: `kakehashi gateway run`.
//!
//! Start: read and check the configuration, load TLS material and the inventory ([`gateway`]),
//! bind every listener (or fail naming the address), start the [`workers`], the WireGuard door,
//! the EST and admin listeners, the [`failover`] tasks, the file [`watch`], the disk budget's
//! [`storage`] task and the allocator's [`trim`], then print
//! `READY <URL>` and notify [`systemd`]. SIGHUP reloads certificates, CRL and inventory without
//! touching established connections; SIGTERM or Ctrl-C stops accepting, lets in-flight requests
//! finish for `limits.shutdown_secs`, and flushes the audit log. SIGUSR2 (`kakehashi firmware
//! activate`) stops the same way in a gateway the firmware supervisor started, which then hands
//! over to the supervisor to start the version on trial ([`Stopped::Activate`]); any other
//! gateway ignores it.

pub mod admin;
pub mod failover;
pub mod gateway;
pub mod logging;
pub mod storage;
pub mod systemd;
pub mod trim;
pub mod watch;
pub mod workers;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{Config, ListenerKind};
use crate::doors::wireguard;
use crate::metrics::Metrics;
use gateway::{Gateway, StartError};
use workers::{TunnelPort, Workers};

/// Why the gateway stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM or Ctrl-C.
    Terminated,
    /// SIGUSR2 in a gateway that `activatable` said the firmware supervisor started: the
    /// caller starts the supervisor again in this process.
    Activate,
}

/// Runs the gateway with `config` until SIGTERM or Ctrl-C, or SIGUSR2 if `activatable`.
pub fn run(config: Config, activatable: bool) -> Result<Stopped, StartError> {
    logging::init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::File {
            path: config.source.clone(),
            message: format!("cannot start the async runtime: {e}"),
        })?;
    runtime.block_on(serve(config, activatable))
}

async fn bind(address: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Listen { address, source })
}

/// The gateway runs on the workers; this thread keeps signals, the admin and EST listeners and
/// the background tasks.
async fn serve(config: Config, activatable: bool) -> Result<Stopped, StartError> {
    let gateway = Arc::new(Gateway::start(config)?);
    failover::start(&gateway)?;
    if gateway.config.tls.crl.is_none() {
        tracing::warn!(
            "no tls.crl: a revoked terminal certificate would be admitted; set it to the clinic CA's CRL"
        );
    }
    let count = gateway.config.limits.workers();
    let listening = workers::bind(&gateway, count)?;
    let est_listener = match &gateway.config.est {
        Some(est) => Some(bind(est.listen).await?),
        None => None,
    };
    let admin_listener = match gateway.config.admin.address {
        Some(a) => Some(bind(a).await?),
        None => None,
    };
    let ready = listening
        .iter()
        .find(|l| l.kind == ListenerKind::Api)
        .map(|l| l.address);
    let routes: HashMap<String, (Arc<crate::pipeline::Route>, ListenerKind)> = listening
        .iter()
        .map(|l| (l.route.name().to_string(), (l.route.clone(), l.kind)))
        .collect();

    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let (exit, exiting) = tokio::sync::watch::channel(false);
    let (workers, mut threads) =
        Workers::start(&gateway, count, listening, shutdown.clone(), exiting.clone())?;
    if let Some(wg) = &gateway.config.wireguard {
        let mut ports = HashMap::new();
        let mut served = Vec::new();
        for p in &wg.ports {
            // `gateway check` made sure every port names a listener's route.
            let Some((route, kind)) = routes.get(&p.route) else {
                continue;
            };
            served.push((p.port, route.name().clone()));
            let door = wireguard::Port {
                route: route.name().clone(),
                kind: *kind,
                tls: p.tls,
            };
            ports.insert(
                p.port,
                TunnelPort {
                    door,
                    route: route.clone(),
                },
            );
        }
        let handoff = workers.handoff(gateway.doors(), ports, shutdown.clone());
        let started = wireguard::start(
            wg,
            gateway.doors(),
            &served,
            handoff,
            shutdown.clone(),
            exiting.clone(),
        )?;
        threads.push(started.thread);
    }
    let admin_task = admin_listener.map(|l| {
        if let Ok(a) = l.local_addr() {
            tracing::info!(address = %a, "metrics at http://{a}/metrics");
        }
        tokio::spawn(admin::serve(gateway.clone(), l))
    });
    let est_task = est_listener.map(|l| {
        if let Ok(a) = l.local_addr() {
            tracing::info!(address = %a, "EST enrollment at https://{a}{}", crate::est::PREFIX);
        }
        tokio::spawn(crate::est::serve(est_service(&gateway), l, shutdown.clone()))
    });
    let watching = tokio::spawn(watch::crl_and_bundle(gateway.clone()));
    let budgeting = tokio::spawn(storage::keep_within_budget(gateway.clone()));
    let trimming = tokio::spawn(trim::after_bursts(
        gateway.metrics.clone(),
        gateway.audit.clone(),
        workers.clone(),
    ));
    // Before READY: a SIGHUP sent as soon as READY is seen must find its handler, not the
    // default action (which ends the process).
    let signals = || -> Result<_, StartError> {
        let sig = |kind| {
            signal(kind).map_err(|e| StartError::File {
                path: "signal handler".into(),
                message: e.to_string(),
            })
        };
        Ok((
            sig(SignalKind::hangup())?,
            sig(SignalKind::terminate())?,
            sig(SignalKind::interrupt())?,
            sig(SignalKind::user_defined2())?,
        ))
    };
    let (mut hup, mut term, mut int, mut usr2) = signals()?;
    if let Some(address) = ready {
        println!("READY https://{address}");
        let _ = std::io::stdout().flush();
    }
    systemd::notify("READY=1");

    let stopped = loop {
        tokio::select! {
            _ = hup.recv() => {
                systemd::notify("RELOADING=1");
                match gateway.reload() {
                    Ok(()) => {
                        Metrics::inc(&gateway.metrics.reloads_total);
                        let terminals = gateway.live.now().inventory().enabled_count();
                        tracing::info!(terminals, "reloaded certificates, CRL and inventory");
                    }
                    Err(e) => {
                        Metrics::inc(&gateway.metrics.reload_failures_total);
                        tracing::error!(error = %e, "reload failed; keeping the previous configuration");
                    }
                }
                systemd::notify("READY=1");
            }
            _ = term.recv() => break Stopped::Terminated,
            _ = int.recv() => break Stopped::Terminated,
            _ = usr2.recv() => {
                if activatable {
                    tracing::info!("SIGUSR2: stopping to hand over to the firmware supervisor, which starts the version on trial");
                    break Stopped::Activate;
                }
                tracing::warn!("SIGUSR2 ignored: this gateway was not started by `kakehashi firmware boot`");
            }
        }
    };
    systemd::notify("STOPPING=1");
    tracing::info!("stopping: no new connections; finishing requests in flight");
    let _ = stop.send(true);
    for task in admin_task.into_iter().chain(est_task) {
        task.abort();
    }
    watching.abort();
    budgeting.abort();
    trimming.abort();
    let grace = std::time::Duration::from_secs(gateway.config.limits.shutdown_secs);
    // Every open connection holds a slot: all of them back means all connections are closed.
    if !gateway.slots.drained(grace).await {
        tracing::warn!("requests still in flight after {grace:?}; closing them");
    }
    let _ = exit.send(true);
    for thread in threads {
        let _ = thread.join();
    }
    if let Err(e) = gateway.audit.clone().close().await {
        tracing::error!(error = %e, "the audit log could not be flushed");
    }
    tracing::info!("stopped");
    Ok(stopped)
}

/// What the EST listener uses of the gateway, and the reload it asks for after an enrollment.
fn est_service(gateway: &Arc<Gateway>) -> crate::est::Est {
    let reloader = gateway.clone();
    crate::est::Est {
        doors: gateway.doors(),
        authority: gateway.authority.clone(),
        client_ca: gateway.config.tls.client_ca.clone(),
        data_dir: gateway.config.data_dir.clone(),
        header_timeout: gateway.config.limits.header_timeout(),
        max_header_bytes: gateway.config.limits.max_header_bytes,
        reload: Arc::new(move || reloader.reload().map_err(|e| e.to_string())),
    }
}
