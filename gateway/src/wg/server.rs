//! The WireGuard server: one UDP socket, every peer, and the tunnel's inside.
//!
//! One task on its own thread owns it all, so packets need no locks: it reads datagrams in
//! batches, finds each one's peer ([`crate::wg::peer`]), lets boringtun authenticate and decrypt
//! it, checks that the inner source address is the peer's own, and hands the packet inside
//! ([`Inside`]); what comes back out is encrypted for the peer its destination names and sent to
//! the peer's latest endpoint. boringtun's timers run every 250 ms (handshake retries, keepalives,
//! session expiry), and its rate limiter answers a handshake flood with cookies.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;

use engine_proxy::failover::Engine;

use crate::listener::{self, Route};
use crate::metrics::Metrics;
use crate::state::Gateway;
use crate::wg::keys::{PublicKey, Secret};
use crate::wg::peer::Peers;
use crate::wg::stack::{Accepted, Stack};

/// Handshake initiations per second before the rate limiter asks for cookies.
const HANDSHAKES_PER_SEC: u64 = 100;
/// Datagrams read before the rest of the loop gets a turn.
const BATCH: usize = 256;
/// Rounds of the loop before yielding to the pipeline's tasks on this thread.
const ROUNDS: usize = 32;
const TICK: Duration = Duration::from_millis(250);
/// Larger than any datagram: a WireGuard message is at most the MTU plus 32 bytes.
const BUF: usize = 65536;

/// Where decrypted packets go.
pub enum Inside {
    /// The userspace stack holding the tunnel address.
    Stack(Box<Stack>),
    /// A kernel TUN device; the kernel holds the tunnel address.
    Tun(tun::AsyncDevice),
}

/// A tunnel port: the route it serves and whether TLS runs inside the tunnel.
pub struct Port {
    pub route: Arc<Route>,
    pub tls: bool,
}

pub struct Server {
    pub gateway: Arc<Gateway>,
    pub engine: Arc<Engine>,
    pub socket: UdpSocket,
    pub private: Secret,
    pub inside: Inside,
    pub ports: HashMap<u16, Port>,
    /// The gateway's tunnel address: the only inner destination accepted.
    pub address: Ipv4Addr,
    /// Ends new connections (they are refused) and, for those open, keep-alive.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    /// Ends the server itself, once the requests in flight had their time.
    pub exiting: tokio::sync::watch::Receiver<bool>,
}

/// The running state: the server and its buffers.
struct Running {
    s: Server,
    public: boringtun::x25519::PublicKey,
    limiter: Arc<RateLimiter>,
    peers: Peers,
    generation: u64,
    recv: Box<[u8]>,
    work: Box<[u8]>,
    tick: tokio::time::Interval,
    ticks: u64,
    wake: Pin<Box<tokio::time::Sleep>>,
}

impl Server {
    /// Serves until shutdown begins.
    pub async fn run(self) {
        let public = boringtun::x25519::PublicKey::from(&self.private.static_secret());
        let limiter = Arc::new(RateLimiter::new(&public, HANDSHAKES_PER_SEC));
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut r = Running {
            s: self,
            public,
            limiter,
            peers: Peers::default(),
            generation: u64::MAX,
            recv: vec![0; BUF].into_boxed_slice(),
            work: vec![0; BUF].into_boxed_slice(),
            tick,
            ticks: 0,
            wake: Box::pin(tokio::time::sleep(Duration::ZERO)),
        };
        r.sync();
        std::future::poll_fn(|cx| r.poll(cx)).await;
        tracing::info!("WireGuard stopped");
    }
}

impl Running {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..ROUNDS {
            // Until Pending, so that the next tick wakes this task.
            while self.tick.poll_tick(cx).is_ready() {
                if *self.s.exiting.borrow() {
                    return Poll::Ready(());
                }
                self.on_tick();
            }
            let mut moved = self.receive(cx);
            moved |= self.inside(cx);
            if !moved {
                self.arm(cx);
                return Poll::Pending;
            }
        }
        // Still busy: let the pipeline's tasks on this thread run, then carry on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Sleeps until the userspace stack next needs attention (a retransmission, a delayed ACK).
    fn arm(&mut self, cx: &mut Context<'_>) {
        if let Inside::Stack(stack) = &mut self.s.inside
            && let Some(delay) = stack.delay()
        {
            self.wake
                .as_mut()
                .reset(tokio::time::Instant::now() + delay.min(TICK));
            if self.wake.as_mut().poll(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
        }
    }

    /// Reads a batch of datagrams and handles each.
    fn receive(&mut self, cx: &mut Context<'_>) -> bool {
        let mut moved = false;
        for _ in 0..BATCH {
            let mut buf = ReadBuf::new(&mut self.recv);
            let from = match self.s.socket.poll_recv_from(cx, &mut buf) {
                Poll::Ready(Ok(from)) => from,
                Poll::Ready(Err(e)) => {
                    // Not worth a busy loop: the next tick or datagram tries again.
                    tracing::debug!(error = %e, "WireGuard socket receive error");
                    break;
                }
                Poll::Pending => break,
            };
            let len = buf.filled().len();
            moved = true;
            self.datagram(cx, from, len);
        }
        moved
    }

    /// One datagram: find its peer, decrypt, check, deliver.
    fn datagram(&mut self, cx: &mut Context<'_>, from: SocketAddr, len: usize) {
        let metrics = &self.s.gateway.metrics;
        let datagram = &self.recv[..len];
        let packet = match self
            .limiter
            .verify_packet(Some(from.ip()), datagram, &mut self.work)
        {
            Ok(packet) => packet,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                Metrics::inc(&metrics.wg_cookies_sent_total);
                let _ = self.s.socket.try_send_to(cookie, from);
                return;
            }
            Err(_) => {
                Metrics::inc(&metrics.wg_dropped_invalid_total);
                return;
            }
        };
        let (slot, is_data) = match &packet {
            Packet::HandshakeInit(init) => {
                match parse_handshake_anon(&self.s.private.static_secret(), &self.public, init) {
                    Ok(half) => (self.peers.by_key(&PublicKey(half.peer_static_public)), false),
                    Err(_) => {
                        Metrics::inc(&metrics.wg_dropped_invalid_total);
                        return;
                    }
                }
            }
            Packet::HandshakeResponse(p) => (self.peers.by_index(p.receiver_idx), false),
            Packet::PacketCookieReply(p) => (self.peers.by_index(p.receiver_idx), false),
            Packet::PacketData(p) => (self.peers.by_index(p.receiver_idx), true),
        };
        let Some(slot) = slot else {
            Metrics::inc(&metrics.wg_dropped_unknown_key_total);
            return;
        };
        let Some(peer) = self.peers.get_mut(slot) else {
            return;
        };
        let mut input: &[u8] = datagram;
        loop {
            match peer.tunn.decapsulate(Some(from.ip()), input, &mut self.work) {
                TunnResult::Done => {
                    if is_data && !input.is_empty() {
                        peer.endpoint = Some(from);
                    }
                    return;
                }
                TunnResult::Err(e) => {
                    tracing::trace!(terminal = %peer.terminal.name, error = ?e, "WireGuard packet refused");
                    Metrics::inc(&metrics.wg_dropped_invalid_total);
                    return;
                }
                TunnResult::WriteToNetwork(out) => {
                    // A handshake answered (or packets queued behind it): the peer is authentic
                    // and at this address.
                    if !is_data && input.len() == datagram.len() {
                        Metrics::inc(&metrics.wg_handshakes_total);
                    }
                    peer.endpoint = Some(from);
                    let _ = self.s.socket.try_send_to(out, from);
                    input = &[];
                }
                TunnResult::WriteToTunnelV4(inner, source) => {
                    peer.endpoint = Some(from);
                    if source != peer.address {
                        Metrics::inc(&metrics.wg_dropped_spoofed_total);
                        tracing::debug!(terminal = %peer.terminal.name, %source, "inner source address is not the terminal's; dropped");
                        return;
                    }
                    if destination(inner) != Some(self.s.address) {
                        Metrics::inc(&metrics.wg_dropped_unroutable_total);
                        return;
                    }
                    Metrics::inc(&metrics.wg_packets_received_total);
                    match &mut self.s.inside {
                        Inside::Stack(stack) => stack.deliver(inner),
                        Inside::Tun(dev) => {
                            // A full device queue drops the packet, as a router would.
                            let _ = Pin::new(dev).poll_write(cx, inner);
                        }
                    }
                    return;
                }
                TunnResult::WriteToTunnelV6(..) => {
                    Metrics::inc(&metrics.wg_dropped_unroutable_total);
                    return;
                }
            }
        }
    }

    /// Runs the inside (stack or device) and encrypts what it sends.
    fn inside(&mut self, cx: &mut Context<'_>) -> bool {
        let Running {
            s, peers, work, recv, ..
        } = self;
        let metrics = &s.gateway.metrics;
        match &mut s.inside {
            Inside::Stack(stack) => {
                let mut accepted = Vec::new();
                let moved = stack.poll(cx, &mut |a| accepted.push(a));
                Metrics::add(&metrics.connections_refused_total, stack.take_refused());
                stack.outbound(|packet| seal(peers, work, &s.socket, metrics, packet));
                for a in accepted {
                    spawn(s, peers, a);
                }
                moved
            }
            Inside::Tun(dev) => {
                let mut moved = false;
                for _ in 0..BATCH {
                    let mut buf = ReadBuf::new(recv);
                    match Pin::new(&mut *dev).poll_read(cx, &mut buf) {
                        Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                            moved = true;
                            let len = buf.filled().len();
                            seal(peers, work, &s.socket, metrics, &recv[..len]);
                        }
                        _ => break,
                    }
                }
                moved
            }
        }
    }

    /// The timers: boringtun's, the rate limiter's second, and reloads.
    fn on_tick(&mut self) {
        self.ticks += 1;
        if self.ticks.is_multiple_of(4) {
            self.limiter.reset_count();
        }
        let generation = *self.s.gateway.reloaded.borrow();
        if generation != self.generation {
            self.sync();
        }
        for peer in self.peers.iter_mut() {
            match peer.tunn.update_timers(&mut self.work) {
                TunnResult::WriteToNetwork(out) => {
                    if let Some(endpoint) = peer.endpoint {
                        let _ = self.s.socket.try_send_to(out, endpoint);
                    }
                }
                TunnResult::Err(boringtun::noise::errors::WireGuardError::ConnectionExpired) => {
                    // Sessions expired after a long silence: the terminal starts a new
                    // handshake when it next sends; there is nothing to retry from this side.
                }
                _ => {}
            }
        }
    }

    /// Makes the peers match the current inventory, ending the sessions and streams of those
    /// that were removed, disabled or changed.
    fn sync(&mut self) {
        let live = self.s.gateway.live();
        self.generation = live.generation;
        let cut = self.peers.sync(&live.inventory, &self.s.private, &self.limiter);
        for address in &cut {
            if let Inside::Stack(stack) = &mut self.s.inside {
                stack.cut(*address);
            }
        }
        if !cut.is_empty() {
            tracing::info!(
                peers = self.peers.len(),
                ended = cut.len(),
                "WireGuard peers reloaded"
            );
        }
        Metrics::set(&self.s.gateway.metrics.wg_peers, self.peers.len() as u64);
    }
}

/// Encrypts a packet for the peer its destination names and sends it to the peer's endpoint.
fn seal(peers: &mut Peers, work: &mut [u8], socket: &UdpSocket, metrics: &Metrics, packet: &[u8]) {
    // boringtun panics on a destination buffer smaller than the packet plus its 32 bytes; the
    // device's MTU keeps packets far below, and a packet that is not is dropped, not a panic.
    if packet.len() + 32 > work.len() {
        Metrics::inc(&metrics.wg_dropped_unroutable_total);
        return;
    }
    let Some(dst) = destination(packet) else { return };
    let Some(peer) = peers.by_address(dst).and_then(|slot| peers.get_mut(slot)) else {
        Metrics::inc(&metrics.wg_dropped_unroutable_total);
        return;
    };
    match peer.tunn.encapsulate(packet, work) {
        TunnResult::WriteToNetwork(out) => {
            if let Some(endpoint) = peer.endpoint {
                let _ = socket.try_send_to(out, endpoint);
            }
        }
        TunnResult::Err(e) => tracing::trace!(error = ?e, "cannot encrypt for the peer"),
        // No session yet: boringtun queued the packet and will send it after the handshake.
        _ => {}
    }
}

/// Hands a new tunnel connection to the pipeline, with its peer as the terminal.
fn spawn(s: &Server, peers: &Peers, a: Accepted) {
    let (Some(port), IpAddr::V4(ip)) = (s.ports.get(&a.port), a.source.ip()) else {
        return;
    };
    let Some(peer) = peers.by_address(ip).and_then(|slot| peers.get(slot)) else {
        return;
    };
    let (gateway, engine, route, stopping) = (
        s.gateway.clone(),
        s.engine.clone(),
        port.route.clone(),
        s.stopping.clone(),
    );
    let (terminal, key, tls) = (peer.terminal.clone(), peer.key, port.tls);
    tokio::spawn(async move {
        listener::tunnel(
            &gateway, engine, a.stream, a.source, &route, terminal, key, tls, stopping,
        )
        .await;
    });
}

/// The destination of an IPv4 packet.
fn destination(packet: &[u8]) -> Option<Ipv4Addr> {
    match Tunn::dst_address(packet)? {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    }
}
