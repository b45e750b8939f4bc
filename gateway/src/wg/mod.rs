//! The WireGuard front door.
//!
//! A terminal's packets arrive on one UDP socket ([`server`]); each peer is a boringtun `Tunn`
//! ([`peer`]). Decrypted packets go either to a userspace TCP/IP stack holding the gateway's
//! tunnel address ([`stack`], the default) or to a kernel TUN device ([`tun`]). Either way a TCP
//! connection to a configured port becomes a stream in the same pipeline as a TLS connection,
//! with the peer's inventory terminal as its identity.

pub mod keys;
pub mod peer;
pub mod server;
pub mod stack;
pub mod tun;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::WireGuardMode;
use crate::listener::Route;
use crate::state::{Gateway, StartError};

/// The WireGuard socket's kernel buffers, each way.
const UDP_BUFFER: usize = 4 << 20;

/// Binds the WireGuard socket (in TUN mode also creates the device and binds the routes' ports on
/// the tunnel address), so that every failure is reported before the gateway says READY, then
/// serves on a thread of its own: new connections until `stopping`, packets until `exiting` (so
/// the requests in flight at shutdown can finish). Returns the bound UDP address.
pub fn start(
    gateway: &Arc<Gateway>,
    routes: &HashMap<String, Arc<Route>>,
    stopping: tokio::sync::watch::Receiver<bool>,
    exiting: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<(SocketAddr, std::thread::JoinHandle<()>)>, StartError> {
    let Some(config) = &gateway.config.wireguard else {
        return Ok(None);
    };
    let key_path = config.private_key.clone().unwrap_or_default();
    let private = keys::load_or_create(&key_path)?;
    let udp = std::net::UdpSocket::bind(config.listen).map_err(|source| StartError::Listen {
        address: config.listen,
        source,
    })?;
    let bound = udp.local_addr().map_err(|source| StartError::Listen {
        address: config.listen,
        source,
    })?;
    udp.set_nonblocking(true).map_err(|source| StartError::Listen {
        address: bound,
        source,
    })?;
    // Room for bursts at line rate, since every terminal shares this one socket: past the
    // system's limit with CAP_NET_ADMIN, else up to it (net.core.rmem_max, wmem_max).
    use rustix::net::sockopt as so;
    if so::set_socket_recv_buffer_size_force(&udp, UDP_BUFFER).is_err() {
        let _ = so::set_socket_recv_buffer_size(&udp, UDP_BUFFER);
    }
    if so::set_socket_send_buffer_size_force(&udp, UDP_BUFFER).is_err() {
        let _ = so::set_socket_send_buffer_size(&udp, UDP_BUFFER);
    }
    let ports: HashMap<u16, server::Port> = config
        .ports
        .iter()
        .filter_map(|p| {
            let route = routes.get(&p.route)?.clone();
            Some((p.port, server::Port { route, tls: p.tls }))
        })
        .collect();
    let tunnel_ip = config.address.address;
    let (device, tunnel_listeners) = match config.mode {
        WireGuardMode::Userspace => (None, Vec::new()),
        WireGuardMode::Tun => {
            let device = tun::device(config)?;
            let mut listeners = Vec::new();
            for &port in ports.keys() {
                listeners.push((port, tun::bind(SocketAddr::from((tunnel_ip, port)))?));
            }
            (Some(device), listeners)
        }
    };
    let engine = Arc::new(gateway.engine()?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::File {
            path: "WireGuard runtime".into(),
            message: e.to_string(),
        })?;
    let gateway = gateway.clone();
    let (mtu, prefix) = (usize::from(config.mtu), config.address.prefix);
    let max_conns = gateway.config.limits.max_connections;
    let thread = std::thread::Builder::new()
        .name("wireguard".into())
        .spawn(move || {
            runtime.block_on(async move {
                let socket = match tokio::net::UdpSocket::from_std(udp) {
                    Ok(s) => s,
                    Err(e) => return tracing::error!(error = %e, "WireGuard cannot use its socket"),
                };
                let inside = match device {
                    None => {
                        let served: Vec<u16> = ports.keys().copied().collect();
                        server::Inside::Stack(Box::new(stack::Stack::new(
                            tunnel_ip, prefix, mtu, &served, max_conns,
                        )))
                    }
                    Some(device) => match ::tun::AsyncDevice::new(device) {
                        Ok(d) => server::Inside::Tun(d),
                        Err(e) => return tracing::error!(error = %e, "WireGuard cannot use its TUN device"),
                    },
                };
                let mut ports = ports;
                for (port, listener) in tunnel_listeners {
                    let (Ok(listener), Some(p)) =
                        (tokio::net::TcpListener::from_std(listener), ports.remove(&port))
                    else {
                        continue;
                    };
                    let p = Arc::new(p);
                    tokio::spawn(tun::serve(
                        gateway.clone(),
                        engine.clone(),
                        listener,
                        p.clone(),
                        stopping.clone(),
                    ));
                    // The server itself needs no port table in TUN mode: the kernel accepts.
                }
                let server = server::Server {
                    gateway,
                    engine,
                    socket,
                    private,
                    inside,
                    ports,
                    address: tunnel_ip,
                    stopping,
                    exiting,
                };
                server.run().await;
            });
        })
        .map_err(|e| StartError::File {
            path: "WireGuard thread".into(),
            message: e.to_string(),
        })?;
    tracing::info!(address = %bound, tunnel = %config.address, mode = ?config.mode, "WireGuard listening");
    Ok(Some((bound, thread)))
}
