//! The WireGuard device: one UDP socket, every peer, and the tunnel's inside, on a thread of its
//! own.
//!
//! One task owns it all, so packets need no locks. Its loop ([`Device::run`]) turns three wheels,
//! each in a file named for it, as wireguard-go's `device/` does: [`receive`](super::receive)
//! (datagrams in: find the peer, decrypt, check the inner source, hand the packet inside),
//! [`send`](super::send) (packets out of the inside: encrypt for the peer the destination names,
//! send to its latest endpoint) and [`timers`](super::timers) (boringtun's timers every 250 ms,
//! the rate limiter's second, and the peers kept in step with reloads).
//!
//! Packet crypto and the userspace TCP/IP stack stay on this thread, where they need no locks;
//! a TCP connection the inside accepts is handed over at once ([`Handoff`]) to the workers that
//! serve TLS connections, so every terminal's requests use every core.

use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;
use tokio::net::UdpSocket;

use crate::doors::Doors;
use crate::doors::wireguard::keys::Secret;
use crate::doors::wireguard::peers::Peers;
use crate::doors::wireguard::stack::{Accepted, Stack};
use crate::doors::wireguard::{Handoff, Opened};
use crate::shutdown::Shutdown;

/// Handshake initiations per second before the rate limiter asks for cookies.
pub(super) const HANDSHAKES_PER_SEC: u64 = 100;
/// Datagrams (or device packets) handled before the rest of the loop gets a turn.
pub(super) const BATCH: usize = 256;
/// Rounds of the loop before yielding to the runtime's other tasks (TUN mode's accept loops).
const ROUNDS: usize = 32;
pub(super) const TICK: Duration = Duration::from_millis(250);
/// Larger than any datagram: a WireGuard message is at most the MTU plus 32 bytes.
const BUF: usize = 65536;

/// Where decrypted packets go.
pub enum Inside {
    /// The userspace stack holding the tunnel address.
    Stack(Box<Stack>),
    /// A kernel TUN device; the kernel holds the tunnel address.
    Tun(tun::AsyncDevice),
}

/// What the device is given to run.
pub struct Device {
    pub doors: Doors,
    pub socket: UdpSocket,
    pub private: Secret,
    pub inside: Inside,
    /// The gateway's tunnel address: the only inner destination accepted.
    pub address: Ipv4Addr,
    /// Where connections the userspace stack accepts go.
    pub handoff: Handoff,
    /// Ends the device itself, once the requests in flight had their time.
    pub exiting: Shutdown,
}

/// The running state: the device, its peers and its buffers.
pub(super) struct Running {
    pub(super) d: Device,
    pub(super) public: boringtun::x25519::PublicKey,
    pub(super) limiter: Arc<RateLimiter>,
    pub(super) peers: Peers,
    /// The snapshot generation the peers were last made to match.
    pub(super) generation: u64,
    pub(super) recv: Box<[u8]>,
    pub(super) work: Box<[u8]>,
    tick: tokio::time::Interval,
    pub(super) ticks: u64,
    wake: Pin<Box<tokio::time::Sleep>>,
}

impl Device {
    /// Serves until the daemon exits.
    pub async fn run(self) {
        let public = boringtun::x25519::PublicKey::from(&self.private.static_secret());
        let limiter = Arc::new(RateLimiter::new(&public, HANDSHAKES_PER_SEC));
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut r = Running {
            d: self,
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
                if *self.d.exiting.borrow() {
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
        // Still busy: let the runtime's other tasks run, then carry on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Sleeps until the userspace stack next needs attention (a retransmission, a delayed ACK).
    fn arm(&mut self, cx: &mut Context<'_>) {
        if let Inside::Stack(stack) = &mut self.d.inside
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

    /// Hands a connection the userspace stack accepted to the workers, with the key of the peer
    /// whose tunnel address it came from (the receive path admits only the peer's own address).
    pub(super) fn open(&self, a: Accepted) {
        let IpAddr::V4(ip) = a.source.ip() else { return };
        let Some(peer) = self.peers.by_address(ip).and_then(|slot| self.peers.get(slot)) else {
            return;
        };
        (self.d.handoff)(Opened {
            stream: Box::new(a.stream),
            source: a.source,
            key: peer.key,
            port: a.port,
            slot: a.slot,
        });
    }
}

/// The destination of an IPv4 packet.
pub(super) fn destination(packet: &[u8]) -> Option<Ipv4Addr> {
    match Tunn::dst_address(packet)? {
        IpAddr::V4(ip) => Some(ip),
        IpAddr::V6(_) => None,
    }
}
