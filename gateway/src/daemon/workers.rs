//! The workers: where every terminal connection is served, whichever door it came through.
//!
//! One thread per core, each a single-threaded runtime with its own listening sockets (one
//! address bound once per worker, SO_REUSEPORT: the kernel spreads new connections over them)
//! and its own pipeline, whose router has its own connections to the engine: a request, its
//! terminal connection and the engine connection carrying it stay on one thread, as in nginx's
//! worker model, with no cross-thread wake-ups on the hot path. The kernel's spread is a hash,
//! uneven over a few terminals: a worker serving more than another hands a new connection to
//! the least busy before its handshake ([`Balance`]). Connections out of the WireGuard tunnel go
//! to the least busy worker ([`Workers::handoff`]), so tunnels use every core too while packet
//! crypto stays on the WireGuard thread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use engine_proxy::boxed::boxed;

use crate::config::ListenerKind;
use crate::daemon::gateway::{Gateway, StartError};
use crate::doors::balance::Balance;
use crate::doors::tcp::Handler;
use crate::doors::wireguard::{self, Handoff, Opened};
use crate::doors::{Doors, tcp};
use crate::pipeline::{Pipeline, Route};
use crate::shutdown::Shutdown;

/// One terminal listener, bound once per worker.
pub struct Listening {
    pub address: SocketAddr,
    pub route: Arc<Route>,
    pub kind: ListenerKind,
    sockets: Vec<std::net::TcpListener>,
}

/// Binds every `[[listener]]` once per worker, port 0 included (the first socket's address is
/// the one all workers share), so that a bad address fails before anything runs.
pub fn bind(gateway: &Gateway, workers: usize) -> Result<Vec<Listening>, StartError> {
    let mut listening = Vec::new();
    for l in &gateway.config.listeners {
        let first = shared_socket(l.address)?;
        let address = first.local_addr().map_err(|source| StartError::Listen {
            address: l.address,
            source,
        })?;
        let mut sockets = vec![first];
        for _ in 1..workers {
            sockets.push(shared_socket(address)?);
        }
        let route = Arc::new(gateway.route(l)?);
        tracing::info!(%address, route = %route.name(), workers, "listening");
        listening.push(Listening {
            address,
            route,
            kind: l.kind,
            sockets,
        });
    }
    Ok(listening)
}

/// One listening socket on `address` that every worker binds (SO_REUSEPORT).
fn shared_socket(address: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    let err = |source| StartError::Listen { address, source };
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.set_reuseport(true).map_err(err)?;
    socket.bind(address).map_err(err)?;
    // Deregistered from this runtime: each worker registers its own with its own runtime.
    socket.listen(1024).and_then(|l| l.into_std()).map_err(err)
}

/// One worker as the others see it: where to spawn, and its pipeline.
struct Worker {
    runtime: tokio::runtime::Handle,
    pipeline: Arc<Pipeline>,
}

/// The running workers.
pub struct Workers {
    workers: Vec<Worker>,
    balance: Arc<Balance>,
}

/// A port on the tunnel address: how the door admits its connections, and the route serving them.
pub struct TunnelPort {
    pub door: wireguard::Port,
    pub route: Arc<Route>,
}

impl Workers {
    /// Starts `count` workers, each serving its share of every listener until `shutdown`, and
    /// living until `exiting` (the requests in flight at shutdown get their grace period).
    /// Returns them and their threads, to be joined once they exit.
    pub fn start(
        gateway: &Gateway,
        count: usize,
        mut listening: Vec<Listening>,
        shutdown: Shutdown,
        exiting: Shutdown,
    ) -> Result<(Arc<Workers>, Vec<std::thread::JoinHandle<()>>), StartError> {
        let mut workers = Vec::new();
        let mut runtimes = Vec::new();
        for _ in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| StartError::File {
                    path: "worker runtime".into(),
                    message: e.to_string(),
                })?;
            workers.push(Worker {
                runtime: runtime.handle().clone(),
                pipeline: Arc::new(gateway.pipeline()?),
            });
            runtimes.push(runtime);
        }
        let balance = Balance::new(count);
        // Each listener: every worker's runtime and handler, for connections handed between them.
        let doors_of: Vec<Arc<[tcp::Worker]>> = listening
            .iter()
            .map(|l| {
                workers
                    .iter()
                    .map(|w| tcp::Worker {
                        runtime: w.runtime.clone(),
                        handler: handler(w.pipeline.clone(), l.route.clone(), shutdown.clone()),
                    })
                    .collect()
            })
            .collect();
        let mut threads = Vec::new();
        for (me, runtime) in runtimes.into_iter().enumerate() {
            let doors = gateway.doors();
            let mut serving = Vec::new();
            for (l, door) in listening.iter_mut().zip(&doors_of) {
                if let Some(socket) = l.sockets.pop() {
                    serving.push((socket, l.route.name().clone(), l.kind, door.clone()));
                }
            }
            let (shutdown, mut exiting, balance) = (shutdown.clone(), exiting.clone(), balance.clone());
            let thread = std::thread::Builder::new()
                .name(format!("worker-{me}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        for (socket, route, kind, door) in serving {
                            match TcpListener::from_std(socket) {
                                Ok(socket) => {
                                    let accepting = tcp::serve(
                                        doors.clone(),
                                        socket,
                                        route,
                                        kind,
                                        shutdown.clone(),
                                        (me, door, balance.clone()),
                                    );
                                    tokio::spawn(accepting);
                                }
                                Err(e) => tracing::error!(error = %e, "a worker cannot use its socket"),
                            }
                        }
                        let _ = exiting.wait_for(|e| *e).await;
                    });
                    // Dropping the runtime here cancels whatever outlived the grace period.
                })
                .map_err(|e| StartError::File {
                    path: "worker thread".into(),
                    message: e.to_string(),
                })?;
            threads.push(thread);
        }
        Ok((Arc::new(Workers { workers, balance }), threads))
    }

    /// Has every worker free the spares its thread keeps for the next request
    /// ([`engine_proxy::spare`]): at the end of a burst, before the allocator trims.
    pub async fn release_spares(&self) {
        for worker in &self.workers {
            let _ = worker
                .runtime
                .spawn(async { engine_proxy::spare::release() })
                .await;
        }
    }

    /// Where the WireGuard door hands the connections its tunnel opens: each to the least busy
    /// worker ([`Balance`]), which admits it (the admission rule for the peer's key, and TLS
    /// inside the tunnel on a `tls` port) and serves it on the port's route.
    pub fn handoff(
        self: &Arc<Self>,
        doors: Doors,
        ports: HashMap<u16, TunnelPort>,
        shutdown: Shutdown,
    ) -> Handoff {
        let (workers, ports) = (self.clone(), Arc::new(ports));
        Arc::new(move |mut opened: Opened| {
            let n = workers.balance.least();
            let Some(worker) = workers.workers.get(n) else {
                return;
            };
            opened.slot = opened.slot.serving(workers.balance.serve(n));
            let (doors, ports, pipeline, shutdown) = (
                doors.clone(),
                ports.clone(),
                worker.pipeline.clone(),
                shutdown.clone(),
            );
            worker.runtime.spawn(async move {
                let Some(port) = ports.get(&opened.port) else {
                    return;
                };
                if let Some(admitted) = boxed(|| wireguard::admit(&doors, opened, &port.door)).await {
                    pipeline.serve(admitted, &port.route, shutdown).await;
                }
            });
        })
    }
}

/// What a worker's terminal listener hands its admitted connections to: its pipeline.
fn handler<S: crate::io::Io>(pipeline: Arc<Pipeline>, route: Arc<Route>, shutdown: Shutdown) -> Handler<S> {
    Arc::new(move |admitted| pipeline.serve(admitted, &route, shutdown.clone()))
}
