//! TUN mode: a kernel device carries the tunnel, for router deployments.
//!
//! The kernel holds the gateway's tunnel address (so it answers ping and routes the terminals'
//! network to the device); the gateway's routes listen on that address like any socket, and a
//! connection's terminal is the peer whose tunnel address is its source. That is sound because
//! the server drops every packet whose inner source is not its peer's own address before the
//! kernel sees it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use engine_proxy::failover::Engine;
use tokio::net::TcpListener;

use crate::audit::{Decision, Entry};
use crate::config::WireGuard;
use crate::identity::Terminal;
use crate::listener;
use crate::state::{Gateway, StartError};
use crate::wg::server::Port;

/// Creates the device with the gateway's tunnel address, up. Needs CAP_NET_ADMIN.
pub fn device(config: &WireGuard) -> Result<tun::Device, StartError> {
    let mut tun = tun::Configuration::default();
    let mask = u32::MAX << (32 - u32::from(config.address.prefix));
    tun.tun_name(&config.tun_name)
        .address(config.address.address)
        .netmask(std::net::Ipv4Addr::from(mask))
        .mtu(config.mtu)
        .up();
    tun::create(&tun).map_err(|e| StartError::File {
        path: format!("/dev/net/tun ({})", config.tun_name).into(),
        message: format!(
            "cannot create the TUN device for wireguard.mode = \"tun\": {e} \
             (it needs CAP_NET_ADMIN; mode = \"userspace\" needs no privileges)"
        ),
    })
}

/// Binds a route's port on the tunnel address (the device must be up).
pub fn bind(address: SocketAddr) -> Result<std::net::TcpListener, StartError> {
    let listener =
        std::net::TcpListener::bind(address).map_err(|source| StartError::Listen { address, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| StartError::Listen { address, source })?;
    Ok(listener)
}

/// Accepts on a tunnel port until shutdown; each connection's terminal is found by its source.
pub async fn serve(
    gateway: Arc<Gateway>,
    engine: Arc<Engine>,
    listener: TcpListener,
    port: Arc<Port>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    while let Some((stream, source)) = listener::accept(&listener, &mut stopping).await {
        let _ = stream.set_nodelay(true);
        let IpAddr::V4(ip) = source.ip() else { continue };
        let found = gateway.live().inventory.by_tunnel_address(ip).and_then(|t| {
            let key = t.wireguard.as_ref()?.public_key;
            Some((Terminal::from_wireguard(&t.name, &key), key))
        });
        let Some((terminal, key)) = found else {
            gateway.audit.record_soon(Entry {
                decision: Decision::Deny,
                reason: format!("{ip} is no terminal's tunnel address"),
                source: source.to_string(),
                route: port.route.name().to_owned(),
                ..Entry::default()
            });
            continue;
        };
        let (gateway, engine, port, stopping) =
            (gateway.clone(), engine.clone(), port.clone(), stopping.clone());
        tokio::spawn(async move {
            listener::tunnel(
                &gateway, engine, stream, source, &port.route, terminal, key, port.tls, stopping,
            )
            .await;
        });
    }
}
