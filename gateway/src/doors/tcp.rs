//! A terminal listener's socket: accept, take a slot, run the TLS door, hand the admitted
//! connection to its route.
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
use crate::doors::{Admitted, Doors, tls};
use crate::metrics::Metrics;
use crate::shutdown::{Shutdown, stopped};

/// What a door hands its admitted connections to: the route, whose future is boxed at its own
/// size, since it is most of what an idle terminal costs.
pub type Handler<S> = Arc<dyn Fn(Admitted<S>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// One listener's door, shared by its connections' tasks: a task holds one pointer to it, not a
/// copy of each part (a connection's task lives as long as the connection, and an idle terminal
/// costs what its task holds).
struct Door {
    doors: Doors,
    route: Arc<str>,
    kind: ListenerKind,
    handler: Handler<TlsStream<TcpStream>>,
}

/// Accepts until shutdown begins; each connection is admitted on a task of its own.
pub async fn serve(
    doors: Doors,
    listener: TcpListener,
    route: Arc<str>,
    kind: ListenerKind,
    mut shutdown: Shutdown,
    handler: Handler<TlsStream<TcpStream>>,
) {
    let door = Arc::new(Door {
        doors,
        route,
        kind,
        handler,
    });
    while let Some((stream, source)) = accept(&listener, &mut shutdown).await {
        let doors = &door.doors;
        Metrics::inc(&doors.metrics.connections_accepted_total);
        let Some(slot) = doors.slots.take() else {
            tracing::warn!(peer = %source, "connection limit reached; closing a new connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let door = door.clone();
        tokio::spawn(async move {
            // The handshake's state is its own allocation, freed before the connection settles
            // into its long idle life.
            let admitted =
                boxed(|| tls::admit(&door.doors, stream, source, slot, &door.route, door.kind)).await;
            if let Some(admitted) = admitted {
                (door.handler)(admitted).await;
            }
        });
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
