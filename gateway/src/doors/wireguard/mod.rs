//! The WireGuard door.
//!
//! A terminal's packets arrive on one UDP socket; each peer is a boringtun `Tunn` ([`peers`]).
//! The [`device`] thread decrypts ([`receive`]), encrypts ([`send`]) and keeps time ([`timers`]);
//! decrypted packets go to a userspace TCP/IP stack holding the gateway's tunnel address
//! ([`stack`], the default) or to a kernel TUN device ([`tun`]). A TCP connection to a configured
//! port is then handed to the workers ([`Handoff`]), where [`admit`] applies the admission rule to
//! the peer's key (and, on a `tls` port, runs the TLS door inside the tunnel) and the same
//! pipeline as for a TLS connection serves it.

pub mod device;
pub mod keys;
pub mod peers;
pub mod receive;
pub mod send;
pub mod stack;
pub mod timers;
pub mod tun;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use engine_proxy::boxed::boxed;

use crate::audit::{Decision, Entry};
use crate::config::{ListenerKind, WireGuard, WireGuardMode};
use crate::doors::identity::{Identified, Proof};
use crate::doors::slot::Slot;
use crate::doors::{Admitted, Doors, tls};
use crate::io::Io;
use crate::shutdown::Shutdown;
use crate::store::StoreError;
use keys::PublicKey;

/// The WireGuard socket's kernel buffers, each way.
const UDP_BUFFER: usize = 4 << 20;

/// Why the WireGuard door could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("/dev/net/tun ({name}): {message}")]
    Device { name: String, message: String },
    #[error("{0}")]
    Key(#[from] StoreError),
    #[error("cannot start the WireGuard thread: {0}")]
    Thread(std::io::Error),
}

/// A connection out of the tunnel, on its way to a worker: open, with its slot, not admitted yet.
pub struct Opened {
    pub stream: Box<dyn Io>,
    /// The terminal's tunnel address and port.
    pub source: SocketAddr,
    /// The static key of the peer it came through.
    pub key: PublicKey,
    /// The port on the gateway's tunnel address.
    pub port: u16,
    pub slot: Slot,
}

/// Hands an opened tunnel connection to a worker, which admits it ([`admit`]) and serves it.
pub type Handoff = Arc<dyn Fn(Opened) + Send + Sync>;

/// A port on the tunnel address: the listener route it serves, and how.
pub struct Port {
    pub route: Arc<str>,
    pub kind: ListenerKind,
    /// TLS inside the tunnel, with the terminal's client certificate.
    pub tls: bool,
}

/// The running door: its UDP address and its thread.
pub struct Started {
    pub address: SocketAddr,
    pub thread: std::thread::JoinHandle<()>,
}

/// Binds the WireGuard socket (in TUN mode also creates the device and binds the ports on the
/// tunnel address), so that every failure is reported before the gateway says READY, then serves
/// on a thread of its own: new connections until `shutdown`, packets until `exiting` (so the
/// requests in flight at shutdown can finish).
pub fn start(
    config: &WireGuard,
    doors: Doors,
    ports: &[(u16, Arc<str>)],
    handoff: Handoff,
    shutdown: Shutdown,
    exiting: Shutdown,
) -> Result<Started, SetupError> {
    let key_path = config.private_key.clone().unwrap_or_default();
    let private = keys::load_or_create(&key_path)?;
    let listen = |address| move |source| SetupError::Listen { address, source };
    let udp = std::net::UdpSocket::bind(config.listen).map_err(listen(config.listen))?;
    let bound = udp.local_addr().map_err(listen(config.listen))?;
    udp.set_nonblocking(true).map_err(listen(bound))?;
    // Room for bursts at line rate, since every terminal shares this one socket: past the
    // system's limit with CAP_NET_ADMIN, else up to it (net.core.rmem_max, wmem_max).
    use rustix::net::sockopt as so;
    if so::set_socket_recv_buffer_size_force(&udp, UDP_BUFFER).is_err() {
        let _ = so::set_socket_recv_buffer_size(&udp, UDP_BUFFER);
    }
    if so::set_socket_send_buffer_size_force(&udp, UDP_BUFFER).is_err() {
        let _ = so::set_socket_send_buffer_size(&udp, UDP_BUFFER);
    }
    let tunnel_ip = config.address.address;
    let (tun_device, tunnel_listeners) = match config.mode {
        WireGuardMode::Userspace => (None, Vec::new()),
        WireGuardMode::Tun => {
            let device = tun::device(config)?;
            let mut listeners = Vec::new();
            for (port, route) in ports {
                let socket = tun::bind(SocketAddr::from((tunnel_ip, *port)))?;
                listeners.push((*port, route.clone(), socket));
            }
            (Some(device), listeners)
        }
    };
    let served: Vec<u16> = ports.iter().map(|(port, _)| *port).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SetupError::Thread)?;
    let (mtu, prefix) = (usize::from(config.mtu), config.address.prefix);
    let thread = std::thread::Builder::new()
        .name("wireguard".into())
        .spawn(move || {
            runtime.block_on(async move {
                let socket = match tokio::net::UdpSocket::from_std(udp) {
                    Ok(s) => s,
                    Err(e) => return tracing::error!(error = %e, "WireGuard cannot use its socket"),
                };
                let inside = match tun_device {
                    None => device::Inside::Stack(Box::new(stack::Stack::new(
                        tunnel_ip,
                        prefix,
                        mtu,
                        &served,
                        doors.slots.clone(),
                    ))),
                    Some(dev) => match ::tun::AsyncDevice::new(dev) {
                        Ok(d) => device::Inside::Tun(d),
                        Err(e) => return tracing::error!(error = %e, "WireGuard cannot use its TUN device"),
                    },
                };
                // In TUN mode the kernel accepts; these loops only hand connections over.
                for (port, route, listener) in tunnel_listeners {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let accepting = tun::serve(
                                doors.clone(),
                                listener,
                                port,
                                route,
                                handoff.clone(),
                                shutdown.clone(),
                            );
                            tokio::spawn(accepting);
                        }
                        Err(e) => tracing::error!(error = %e, port, "WireGuard cannot use a tunnel port"),
                    }
                }
                let device = device::Device {
                    doors,
                    socket,
                    private,
                    inside,
                    address: tunnel_ip,
                    handoff,
                    exiting,
                };
                device.run().await;
            });
        })
        .map_err(SetupError::Thread)?;
    tracing::info!(address = %bound, tunnel = %config.address, mode = ?config.mode, "WireGuard listening");
    Ok(Started {
        address: bound,
        thread,
    })
}

/// The door for a tunnel connection, on the worker that serves it: the admission rule for the
/// peer's key; on a `tls` port, the TLS door inside the tunnel too, whose certificate must name
/// the same terminal (one device, not a key borrowed from another). Audited either way.
pub async fn admit(doors: &Doors, opened: Opened, port: &Port) -> Option<Admitted<Box<dyn Io>>> {
    let started = Instant::now();
    let Opened {
        stream,
        source,
        key,
        slot,
        ..
    } = opened;
    let snapshot = doors.live.now();
    let entry = |decision, terminal: Option<&str>, reason: String| Entry {
        decision,
        reason: reason.into(),
        terminal: terminal.map(|t| t.to_owned().into()),
        source: source.to_string().into(),
        route: (&port.route).into(),
        duration_ms: started.elapsed().as_millis() as u64,
        ..Entry::default()
    };
    let (peer, scopes) = match snapshot.admission.wireguard(&key) {
        Ok(admitted) => admitted,
        Err(why) => {
            doors
                .audit
                .record_soon(entry(Decision::Deny, None, why.to_string()));
            return None;
        }
    };
    if port.tls {
        let admitted = boxed(|| tls::admit(doors, stream, source, slot, &port.route, port.kind)).await?;
        if admitted.who.terminal.name != peer.name {
            doors.audit.record_soon(entry(
                Decision::Deny,
                Some(&peer.name),
                format!(
                    "the certificate of terminal {:?} inside the WireGuard tunnel of {:?}",
                    admitted.who.terminal.name, peer.name
                ),
            ));
            return None;
        }
        return Some(Admitted {
            stream: Box::new(admitted.stream),
            who: admitted.who,
            source,
            slot: admitted.slot,
        });
    }
    doors.audit.record_soon(entry(
        Decision::Allow,
        Some(&peer.name),
        "terminal admitted (WireGuard)".into(),
    ));
    Some(Admitted {
        stream,
        who: Identified {
            terminal: peer,
            proof: Proof::WireGuard(key),
            generation: snapshot.generation,
            scopes,
        },
        source,
        slot,
    })
}
