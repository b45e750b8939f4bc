//! Userspace mode: a TCP/IP stack (smoltcp) that holds the gateway's tunnel address.
//!
//! The same stack serves the gateway's own WireGuard uplink ([`crate::uplink`]), where it opens
//! connections instead of accepting them ([`Stack::connect`]).
//!
//! Decrypted packets go in through [`Stack::deliver`]; packets for the peers come out of
//! [`Stack::outbound`]. A TCP connection to a configured port becomes a byte stream (one end of a
//! `tokio::io::duplex` pipe) handed to the gateway's pipeline; the stack moves bytes between the
//! smoltcp socket and the other end. Ping to the tunnel address is answered by smoltcp; anything
//! else is dropped.
//!
//! Packet buffers are recycled through a free list, so after warm-up no packet allocates.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::task::{Context, Poll};

use smoltcp::iface::{Config, Interface, PollIngressSingleResult, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

use crate::doors::slot::{Slot, Slots};

/// Receive window per connection: large enough for a fast line inside the tunnel.
const RX_BUFFER: usize = 512 * 1024;
const TX_BUFFER: usize = 256 * 1024;
/// The pipe between a connection's socket and its pipeline task.
const PIPE_BUFFER: usize = 256 * 1024;
/// Idle connections are probed this often, and aborted when the peer stops answering.
const KEEPALIVE: Duration = Duration::from_secs(30);
const DEAD_AFTER: Duration = Duration::from_secs(120);
/// How long a connection the gateway opens may wait for its handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A new connection for the pipeline.
pub struct Accepted {
    /// The terminal's tunnel address and port.
    pub source: std::net::SocketAddr,
    /// The port on the gateway's tunnel address.
    pub port: u16,
    pub stream: DuplexStream,
    /// The connection's slot, which the stack holds too until its socket is gone.
    pub slot: Slot,
}

/// The stack and its connections.
pub struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    wire: Wire,
    listeners: Vec<(u16, SocketHandle)>,
    conns: Vec<Conn>,
    /// Every open connection holds its socket's buffers, so it takes one of the gateway's
    /// connection slots (`limits.max_connections`) and keeps it until its socket is gone: one
    /// terminal's SYNs cannot take the gateway's memory.
    slots: Slots,
    /// Connections over the bound, reset and removed once the reset is sent.
    refusing: Vec<SocketHandle>,
    started: std::time::Instant,
    /// The local port of the last connection opened ([`Stack::connect`]).
    next_port: u16,
}

/// One connection: the smoltcp socket and the stack's end of the pipe.
struct Conn {
    handle: SocketHandle,
    pipe: DuplexStream,
    peer: Ipv4Addr,
    /// The pipeline closed its side: the socket was told to close.
    closed_in: bool,
    /// The terminal closed its side: the pipe was shut down for writing.
    closed_out: bool,
    /// A connection from a terminal holds a slot; one the gateway opens (its uplink) does not:
    /// the uplink's connection pool bounds those.
    _slot: Option<Slot>,
}

impl Stack {
    pub fn new(address: Ipv4Addr, prefix: u8, mtu: usize, ports: &[u16], slots: Slots) -> Stack {
        let mut wire = Wire {
            mtu,
            rx: VecDeque::new(),
            tx: RefCell::new(VecDeque::new()),
            free: RefCell::new(Vec::new()),
        };
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed();
        let started = std::time::Instant::now();
        let mut iface = Interface::new(config, &mut wire, Instant::from_millis(0));
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(address), prefix));
        });
        let mut stack = Stack {
            iface,
            sockets: SocketSet::new(Vec::new()),
            wire,
            listeners: Vec::new(),
            conns: Vec::new(),
            slots,
            refusing: Vec::new(),
            started,
            next_port: 0,
        };
        for &port in ports {
            let handle = stack.listen(port);
            stack.listeners.push((port, handle));
        }
        stack
    }

    fn listen(&mut self, port: u16) -> SocketHandle {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; RX_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
        );
        socket.set_nagle_enabled(false);
        socket.set_keep_alive(Some(KEEPALIVE));
        socket.set_timeout(Some(DEAD_AFTER));
        // A port always has a listening socket, and listen cannot fail on a fresh one with a
        // non-zero port.
        let _ = socket.listen(port);
        self.sockets.add(socket)
    }

    fn now(&self) -> Instant {
        Instant::from_millis(self.started.elapsed().as_millis() as i64)
    }

    /// Queues a decrypted packet from a peer (already checked: its source is the peer's).
    pub fn deliver(&mut self, packet: &[u8]) {
        let mut buf = self.wire.free.get_mut().pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(packet);
        self.wire.rx.push_back(buf);
    }

    /// Runs the stack: input, connections, output. New connections go to `accept`. Returns
    /// whether anything moved, so the caller polls again before sleeping.
    pub fn poll(&mut self, cx: &mut Context<'_>, accept: &mut impl FnMut(Accepted)) -> bool {
        let now = self.now();
        let mut moved = false;
        // Packets one at a time, so that a listening socket taken by a SYN is replaced before
        // the next SYN arrives: simultaneous connections to one port all succeed.
        loop {
            match self
                .iface
                .poll_ingress_single(now, &mut self.wire, &mut self.sockets)
            {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => moved = true,
                PollIngressSingleResult::SocketStateChanged => {
                    moved = true;
                    self.replenish(accept);
                }
            }
        }
        self.replenish(accept);
        moved |= self.pump(cx);
        self.iface.poll_egress(now, &mut self.wire, &mut self.sockets);
        self.iface.poll_maintenance(now);
        let sockets = &mut self.sockets;
        self.refusing.retain(|&h| {
            // An aborted socket is Closed at once; its reset went out with the egress above.
            sockets.remove(h);
            false
        });
        moved
    }

    /// When smoltcp next needs polling if nothing arrives.
    pub fn delay(&mut self) -> Option<std::time::Duration> {
        let now = self.now();
        self.iface
            .poll_delay(now, &self.sockets)
            .map(|d| std::time::Duration::from_micros(d.total_micros()))
    }

    /// Each packet the stack wants sent, to `send` (which encrypts it for its peer).
    pub fn outbound(&mut self, mut send: impl FnMut(&[u8])) {
        loop {
            let Some(buf) = self.wire.tx.get_mut().pop_front() else {
                return;
            };
            send(&buf);
            self.wire.free.get_mut().push(buf);
        }
    }

    /// Turns listening sockets that took a connection into connections, and listens anew.
    fn replenish(&mut self, accept: &mut impl FnMut(Accepted)) {
        for i in 0..self.listeners.len() {
            let (port, handle) = self.listeners[i];
            let socket = self.sockets.get::<tcp::Socket>(handle);
            if socket.state() == tcp::State::Listen {
                continue;
            }
            let remote = socket.remote_endpoint();
            self.listeners[i].1 = self.listen(port);
            let Some(IpEndpoint {
                addr: IpAddress::Ipv4(peer),
                port: peer_port,
            }) = remote
            else {
                self.sockets.remove(handle);
                continue;
            };
            let Some(slot) = self.slots.take() else {
                self.sockets.get_mut::<tcp::Socket>(handle).abort();
                self.refusing.push(handle);
                continue;
            };
            let (stream, pipe) = tokio::io::duplex(PIPE_BUFFER);
            let (slot, held) = slot.share();
            self.conns.push(Conn {
                handle,
                pipe,
                peer,
                closed_in: false,
                closed_out: false,
                _slot: Some(held),
            });
            accept(Accepted {
                source: (peer, peer_port).into(),
                port,
                stream,
                slot,
            });
        }
    }

    /// Moves bytes between every connection's socket and its pipe; drops finished connections.
    fn pump(&mut self, cx: &mut Context<'_>) -> bool {
        let mut moved = false;
        let sockets = &mut self.sockets;
        self.conns.retain_mut(|c| {
            let socket = sockets.get_mut::<tcp::Socket>(c.handle);
            // Terminal → pipeline.
            while socket.can_recv() {
                let wrote = socket.recv(|data| match Pin::new(&mut c.pipe).poll_write(cx, data) {
                    Poll::Ready(Ok(n)) => (n, Ok(n)),
                    Poll::Ready(Err(e)) => (0, Err(e)),
                    Poll::Pending => (0, Ok(0)),
                });
                match wrote {
                    Ok(Ok(0)) => break,
                    Ok(Ok(_)) => moved = true,
                    // The pipeline is gone: so is the connection.
                    other => {
                        tracing::debug!(peer = %c.peer, result = ?other, "tunnel connection aborted");
                        socket.abort();
                        break;
                    }
                }
            }
            // The terminal sent FIN (or the connection died) and everything before it is through.
            let ended = matches!(
                socket.state(),
                tcp::State::CloseWait
                    | tcp::State::LastAck
                    | tcp::State::Closing
                    | tcp::State::TimeWait
                    | tcp::State::Closed
            );
            if !c.closed_out
                && ended
                && socket.recv_queue() == 0
                && Pin::new(&mut c.pipe).poll_shutdown(cx).is_ready()
            {
                tracing::trace!(peer = %c.peer, state = %socket.state(), "terminal closed its side");
                c.closed_out = true;
                moved = true;
            }
            // Pipeline → terminal.
            while !c.closed_in && socket.can_send() {
                let read = socket.send(|space| {
                    if space.is_empty() {
                        return (0, None);
                    }
                    let mut buf = ReadBuf::new(space);
                    match Pin::new(&mut c.pipe).poll_read(cx, &mut buf) {
                        Poll::Ready(Ok(())) => {
                            let n = buf.filled().len();
                            (n, Some(n))
                        }
                        Poll::Ready(Err(_)) => (0, Some(0)),
                        Poll::Pending => (0, None),
                    }
                });
                match read {
                    Ok(Some(0)) | Err(_) => {
                        tracing::trace!(peer = %c.peer, "tunnel connection closed by the gateway");
                        socket.close();
                        c.closed_in = true;
                        moved = true;
                    }
                    Ok(Some(_)) => moved = true,
                    Ok(None) => break,
                }
            }
            let done = matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait);
            if done {
                sockets.remove(c.handle);
            }
            !done
        });
        moved
    }

    /// Opens a connection to `remote` from an ephemeral port: the pipe's other end, to write to
    /// at once (bytes wait in the pipe until the handshake completes; a refused or unanswered
    /// connection ends the pipe).
    pub fn connect(&mut self, remote: std::net::SocketAddrV4) -> Result<DuplexStream, String> {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; RX_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
        );
        socket.set_nagle_enabled(false);
        socket.set_keep_alive(Some(KEEPALIVE));
        // An unanswered SYN gives up in seconds, not the idle connection's two minutes.
        socket.set_timeout(Some(CONNECT_TIMEOUT));
        self.next_port = if self.next_port < 49152 {
            49152 + (seed() % 16384) as u16
        } else {
            self.next_port.wrapping_add(1).max(49152)
        };
        let endpoint = IpEndpoint::new(IpAddress::Ipv4(*remote.ip()), remote.port());
        socket
            .connect(self.iface.context(), endpoint, self.next_port)
            .map_err(|e| format!("cannot connect to {remote} inside the tunnel: {e}"))?;
        let handle = self.sockets.add(socket);
        let (stream, pipe) = tokio::io::duplex(PIPE_BUFFER);
        self.conns.push(Conn {
            handle,
            pipe,
            peer: *remote.ip(),
            closed_in: false,
            closed_out: false,
            _slot: None,
        });
        Ok(stream)
    }

    /// Ends every connection from `peer` (a peer removed or disabled by a reload).
    pub fn cut(&mut self, peer: Ipv4Addr) {
        for c in self.conns.iter().filter(|c| c.peer == peer) {
            self.sockets.get_mut::<tcp::Socket>(c.handle).abort();
        }
    }
}

/// smoltcp's view of the tunnel: packets in from the peers, packets out to them.
struct Wire {
    mtu: usize,
    rx: VecDeque<Vec<u8>>,
    tx: RefCell<VecDeque<Vec<u8>>>,
    free: RefCell<Vec<Vec<u8>>>,
}

impl Device for Wire {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((
            Rx {
                packet,
                free: &self.free,
            },
            Tx {
                tx: &self.tx,
                free: &self.free,
            },
        ))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx {
            tx: &self.tx,
            free: &self.free,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

struct Rx<'a> {
    packet: Vec<u8>,
    free: &'a RefCell<Vec<Vec<u8>>>,
}

impl smoltcp::phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.packet);
        self.free.borrow_mut().push(self.packet);
        r
    }
}

struct Tx<'a> {
    tx: &'a RefCell<VecDeque<Vec<u8>>>,
    free: &'a RefCell<Vec<Vec<u8>>>,
}

impl smoltcp::phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = self.free.borrow_mut().pop().unwrap_or_default();
        buf.resize(len, 0);
        let r = f(&mut buf);
        self.tx.borrow_mut().push_back(buf);
        r
    }
}

/// smoltcp's initial sequence numbers and ports derive from this seed.
fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}
