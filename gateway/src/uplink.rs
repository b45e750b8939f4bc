//! A path to the cloud through a WireGuard tunnel the gateway dials itself.
//!
//! The data centre's VPN concentrator is the one peer; boringtun's `Tunn` initiates the session
//! and keeps it (rekeys, keepalives), and the userspace stack the WireGuard door uses
//! ([`Stack`]) holds the gateway's address inside the tunnel and opens TCP connections to the
//! engine's. The uplink's connection pool sees those connections as byte streams
//! ([`engine_proxy::client::Dial`]), so TLS to the engine, its pool, probes and failover work
//! over the tunnel exactly as over a line: no kernel module, no TUN device, no privileges.
//!
//! One task owns the socket, the session and the stack, so nothing here takes a lock; workers
//! ask it for connections over a channel.

use std::future::Future;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use tokio::io::{DuplexStream, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::config::PathWireGuard;
use crate::doors::slot::Slots;
use crate::doors::wireguard::keys::{self, PublicKey};
use crate::doors::wireguard::stack::Stack;

/// boringtun's timers want a turn about this often.
const TICK: Duration = Duration::from_millis(250);
/// Larger than any datagram.
const BUF: usize = 65536;
/// How often a concentrator that does not resolve (or a socket that does not bind) is tried again.
const RESOLVE_AGAIN: Duration = Duration::from_secs(5);

type Reply = oneshot::Sender<Result<DuplexStream, String>>;

/// The dialer the path's connection pool uses: asks the tunnel's task for a connection.
pub struct Tunnel {
    requests: mpsc::UnboundedSender<Reply>,
}

impl engine_proxy::client::Dial for Tunnel {
    fn dial(&self) -> Pin<Box<dyn Future<Output = io::Result<DuplexStream>> + Send>> {
        let (reply, answer) = oneshot::channel();
        let sent = self.requests.send(reply);
        Box::pin(async move {
            let gone = || io::Error::other("the WireGuard uplink has stopped");
            sent.map_err(|_| gone())?;
            answer.await.map_err(|_| gone())?.map_err(io::Error::other)
        })
    }
}

/// Why the tunnel could not be set up: its configuration. A concentrator that cannot be
/// reached, or whose name does not resolve yet (the line is down at boot), is not an error here:
/// the path is down until it answers, and the others carry the clinic.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("path {path}: {source}")]
    Key {
        path: String,
        source: Box<crate::store::StoreError>,
    },
    #[error("path {path}: wireguard.peer: {why}")]
    Peer { path: String, why: String },
}

/// The task's state: the session with the concentrator, the stack inside, and where to send.
pub struct Driver {
    name: String,
    /// The concentrator's `host:port`, resolved by the task (and again while it fails).
    endpoint: String,
    tunn: Tunn,
    stack: Stack,
    engine: SocketAddrV4,
    requests: mpsc::UnboundedReceiver<Reply>,
}

/// Sets a tunnel up (its key read or created) without sending anything yet: [`Driver::run`]
/// resolves the concentrator and starts the session, on the runtime.
pub fn open(name: &str, config: &PathWireGuard, slots: Slots) -> Result<(Arc<Tunnel>, Driver), TunnelError> {
    let private = keys::load_or_create(&config.private_key).map_err(|source| TunnelError::Key {
        path: name.to_owned(),
        source: Box::new(source),
    })?;
    let peer = PublicKey::from_base64(&config.peer).map_err(|why| TunnelError::Peer {
        path: name.to_owned(),
        why,
    })?;
    tracing::info!(
        path = name,
        public_key = %private.public_key(),
        endpoint = %config.endpoint,
        "WireGuard uplink: the concentrator must know this public key"
    );
    let tunn = Tunn::new(
        private.static_secret(),
        boringtun::x25519::PublicKey::from(peer.0),
        None,
        (config.keepalive_secs > 0).then_some(config.keepalive_secs),
        0,
        None,
    );
    let stack = Stack::new(
        config.address.address,
        config.address.prefix,
        usize::from(config.mtu),
        &[],
        slots,
    );
    let (requests, asked) = mpsc::unbounded_channel();
    let driver = Driver {
        name: name.to_owned(),
        endpoint: config.endpoint.clone(),
        tunn,
        stack,
        engine: config.engine,
        requests: asked,
    };
    Ok((Arc::new(Tunnel { requests }), driver))
}

impl Driver {
    /// Keeps the tunnel for as long as the gateway runs.
    pub async fn run(self) {
        let Driver {
            name,
            endpoint,
            mut tunn,
            mut stack,
            engine,
            mut requests,
        } = self;
        let Some(socket) = connect(&name, &endpoint, &mut requests).await else {
            return;
        };
        let mut work = vec![0u8; BUF];
        let mut datagram = vec![0u8; BUF];
        let mut tick = tokio::time::interval(TICK);
        let mut wake = Box::pin(tokio::time::sleep(TICK));
        // The session is started at once, so the first call does not wait for a handshake and
        // the prober sees a concentrator that does not answer as a path that does not. Sent
        // with `send`, not `try_send`: a new socket's readiness is unknown until the runtime has
        // polled it, and a `try_send` then drops the datagram (WireGuard would retry only after
        // its 5 s REKEY_TIMEOUT).
        if let TunnResult::WriteToNetwork(p) = tunn.format_handshake_initiation(&mut work, false) {
            let _ = socket.send(p).await;
        }
        std::future::poll_fn(|cx| {
            loop {
                let mut moved = false;
                loop {
                    match requests.poll_recv(cx) {
                        Poll::Ready(Some(reply)) => {
                            let _ = reply.send(stack.connect(engine));
                            moved = true;
                        }
                        // Every path client is gone: so is the gateway.
                        Poll::Ready(None) => return Poll::Ready(()),
                        Poll::Pending => break,
                    }
                }
                loop {
                    let mut buf = ReadBuf::new(&mut datagram);
                    match socket.poll_recv(cx, &mut buf) {
                        Poll::Ready(Ok(())) => {
                            moved = true;
                            receive(&mut tunn, &mut stack, &socket, buf.filled(), &mut work);
                        }
                        Poll::Ready(Err(e)) => {
                            // A refused datagram (nothing listening at the endpoint) arrives
                            // here as an error; the probes tell the path's health.
                            tracing::debug!(path = %name, "WireGuard uplink: {e}");
                            break;
                        }
                        Poll::Pending => break,
                    }
                }
                moved |= stack.poll(cx, &mut |_| {});
                stack.outbound(|packet| {
                    if let TunnResult::WriteToNetwork(p) = tunn.encapsulate(packet, &mut work) {
                        let _ = socket.try_send(p);
                    }
                });
                if tick.poll_tick(cx).is_ready() {
                    if let TunnResult::WriteToNetwork(p) = tunn.update_timers(&mut work) {
                        let _ = socket.try_send(p);
                    }
                    moved = true;
                }
                if !moved {
                    break;
                }
            }
            let delay = stack.delay().unwrap_or(TICK).min(TICK);
            wake.as_mut().reset(tokio::time::Instant::now() + delay);
            let _ = wake.as_mut().poll(cx);
            Poll::Pending
        })
        .await;
    }
}

/// A UDP socket connected to the concentrator, once its name resolves and a socket binds;
/// meanwhile every connection asked for is refused with the reason, and the attempt repeats
/// every few seconds. `None`: every path client is gone.
async fn connect(
    name: &str,
    endpoint: &str,
    requests: &mut mpsc::UnboundedReceiver<Reply>,
) -> Option<UdpSocket> {
    let mut logged = false;
    loop {
        let attempt = async {
            let to = tokio::net::lookup_host(endpoint)
                .await?
                .next()
                .ok_or_else(|| io::Error::other("resolves to no address"))?;
            let any: SocketAddr = match to {
                SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let socket = UdpSocket::bind(any).await?;
            socket.connect(to).await?;
            Ok::<_, io::Error>(socket)
        };
        let why = match attempt.await {
            Ok(socket) => return Some(socket),
            Err(e) => format!("the concentrator {endpoint:?}: {e}"),
        };
        if !std::mem::replace(&mut logged, true) {
            tracing::warn!(path = %name, "WireGuard uplink: {why}; the path is down until it answers");
        }
        let retry = tokio::time::sleep(RESOLVE_AGAIN);
        tokio::pin!(retry);
        loop {
            tokio::select! {
                () = &mut retry => break,
                asked = requests.recv() => match asked {
                    Some(reply) => {
                        let _ = reply.send(Err(why.clone()));
                    }
                    None => return None,
                },
            }
        }
    }
}

/// One datagram from the concentrator: a handshake answered (and the packets queued meanwhile
/// sent), or a packet for the stack.
fn receive(tunn: &mut Tunn, stack: &mut Stack, socket: &UdpSocket, datagram: &[u8], work: &mut [u8]) {
    match tunn.decapsulate(None, datagram, work) {
        TunnResult::WriteToNetwork(p) => {
            let _ = socket.try_send(p);
            while let TunnResult::WriteToNetwork(p) = tunn.decapsulate(None, &[], work) {
                let _ = socket.try_send(p);
            }
        }
        TunnResult::WriteToTunnelV4(packet, _) => stack.deliver(packet),
        TunnResult::Err(e) => tracing::trace!("WireGuard uplink: a datagram refused: {e:?}"),
        _ => {}
    }
}
