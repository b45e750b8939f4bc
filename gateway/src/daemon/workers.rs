//! The workers: where every terminal connection is served, whichever door it came through.
//!
//! One thread per core, each a single-threaded runtime with its own listening sockets (one
//! address bound once per worker, SO_REUSEPORT: the kernel spreads new connections over them)
//! and its own pipeline, whose router has its own connections to the engine: a request, its
//! terminal connection and the engine connection carrying it stay on one thread, as in nginx's
//! worker model, with no cross-thread wake-ups on the hot path. Connections out of the WireGuard
//! tunnel are handed to the workers in turn ([`Workers::handoff`]), so tunnels use every core
//! too while packet crypto stays on the WireGuard thread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokio::net::TcpListener;

use engine_proxy::boxed::boxed;

use crate::config::ListenerKind;
use crate::daemon::gateway::{Gateway, StartError};
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
    next: AtomicUsize,
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
        let mut threads = Vec::new();
        for w in 0..count {
            let pipeline = Arc::new(gateway.pipeline()?);
            let doors = gateway.doors();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| StartError::File {
                    path: "worker runtime".into(),
                    message: e.to_string(),
                })?;
            let mut serving = Vec::new();
            for l in listening.iter_mut() {
                if let Some(socket) = l.sockets.pop() {
                    let handler = handler(pipeline.clone(), l.route.clone(), shutdown.clone());
                    serving.push((socket, l.route.name().clone(), l.kind, handler));
                }
            }
            workers.push(Worker {
                runtime: runtime.handle().clone(),
                pipeline,
            });
            let (shutdown, mut exiting) = (shutdown.clone(), exiting.clone());
            let thread = std::thread::Builder::new()
                .name(format!("worker-{w}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        for (socket, route, kind, handler) in serving {
                            match TcpListener::from_std(socket) {
                                Ok(socket) => {
                                    let accepting = tcp::serve(
                                        doors.clone(),
                                        socket,
                                        route,
                                        kind,
                                        shutdown.clone(),
                                        handler,
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
        let workers = Workers {
            workers,
            next: AtomicUsize::new(0),
        };
        Ok((Arc::new(workers), threads))
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

    /// Where the WireGuard door hands the connections its tunnel opens: each to the next worker
    /// in turn, which admits it (the admission rule for the peer's key, and TLS inside the tunnel
    /// on a `tls` port) and serves it on the port's route.
    pub fn handoff(
        self: &Arc<Self>,
        doors: Doors,
        ports: HashMap<u16, TunnelPort>,
        shutdown: Shutdown,
    ) -> Handoff {
        let (workers, ports) = (self.clone(), Arc::new(ports));
        Arc::new(move |opened: Opened| {
            let n = workers.next.fetch_add(1, Relaxed) % workers.workers.len();
            let worker = &workers.workers[n];
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
