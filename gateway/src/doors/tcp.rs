//! A terminal listener's socket: accept, take a slot, pick the worker ([`Balance`]), run the TLS
//! door, hand the admitted connection to its route.
//!
//! The costly part of a bad connection is bounded at every step: a connection over
//! `limits.max_connections` is closed at once; a handshake has `limits.handshake_timeout_secs`;
//! what comes after is the route's (`crate::pipeline`).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

use engine_proxy::boxed::boxed;

use crate::config::ListenerKind;
use crate::doors::balance::Balance;
use crate::doors::slot::Slot;
use crate::doors::{Admitted, Doors, tls};
use crate::metrics::Metrics;
use crate::shutdown::{Shutdown, stopped};

/// What a door hands its admitted connections to: the route, whose future is boxed at its own
/// size, since it is most of what an idle terminal costs.
pub type Handler<S> = Arc<dyn Fn(Admitted<S>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// One worker as a listener's door sees it: where its tasks run, and what it hands admitted
/// connections to (its own pipeline).
pub struct Worker {
    pub runtime: tokio::runtime::Handle,
    pub handler: Handler<TlsStream<TcpStream>>,
}

/// One listener's door, shared by its connections' tasks: a task holds one pointer to it, not a
/// copy of each part (a connection's task lives as long as the connection, and an idle terminal
/// costs what its task holds).
struct Door {
    doors: Doors,
    route: Arc<str>,
    kind: ListenerKind,
    /// Every worker, by index, for this listener, and how many connections each serves.
    workers: Arc<[Worker]>,
    balance: Arc<Balance>,
}

/// Accepts on worker `me`'s socket until shutdown begins; each connection is admitted and served
/// on a task of its own, on this worker or, if another serves fewer, on the least busy
/// ([`Balance`]).
pub async fn serve(
    doors: Doors,
    listener: TcpListener,
    route: Arc<str>,
    kind: ListenerKind,
    mut shutdown: Shutdown,
    (me, workers, balance): (usize, Arc<[Worker]>, Arc<Balance>),
) {
    let door = Arc::new(Door {
        doors,
        route,
        kind,
        workers,
        balance,
    });
    while let Some((stream, source)) = accept(&listener, &mut shutdown).await {
        let doors = &door.doors;
        Metrics::inc(&doors.metrics.connections_accepted_total);
        let Some(slot) = doors.slots.take() else {
            tracing::warn!(peer = %source, "connection limit reached; closing a new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let to = door.balance.pick(me);
        let slot = slot.serving(door.balance.serve(to));
        let Some(worker) = door.workers.get(to).filter(|_| to != me) else {
            tokio::spawn(admit(door.clone(), to, stream, source, slot));
            continue;
        };
        // Another worker's reactor takes the socket over: it leaves this one's here and joins
        // that one's on its thread.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(peer = %source, error = %e, "cannot hand a connection to another worker");
                continue;
            }
        };
        let door = door.clone();
        worker.runtime.spawn(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => admit(door, to, stream, source, slot).await,
                Err(e) => {
                    tracing::warn!(peer = %source, error = %e, "a worker cannot take a connection over")
                }
            }
        });
    }
}

/// The TLS door, then worker `to`'s route, for one accepted connection.
async fn admit(door: Arc<Door>, to: usize, stream: TcpStream, source: SocketAddr, slot: Slot) {
    // The handshake's state is its own allocation, freed before the connection settles into its
    // long idle life.
    let admitted = boxed(|| tls::admit(&door.doors, stream, source, slot, &door.route, door.kind)).await;
    if let (Some(admitted), Some(worker)) = (admitted, door.workers.get(to)) {
        (worker.handler)(admitted).await;
    }
}

/// The next connection, or `None` once shutdown has begun. A failed accept (out of file
/// descriptors or memory) backs off rather than spins.
pub async fn accept(listener: &TcpListener, shutdown: &mut Shutdown) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => return Some(pair),
                Err(e) => {
                    tracing::warn!(error = %e, address = ?listener.local_addr().ok(), "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            () = stopped(shutdown) => return None,
        }
    }
}
