//! Opening a connection to the engine: TCP from this host (to the URL's host or a fixed address,
//! from a given source address or interface) or a path's own dialer, then TLS unless the engine
//! is an on-premises one over plain HTTP.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};

use super::ClientError;

/// How a path reaches the engine.
#[derive(Clone)]
pub enum Route {
    /// A TCP connection from this host. Optionally to a fixed address (the engine's across a
    /// private interconnect: the URL's host still names the certificate it must present), from a
    /// given source address or through a given interface (a second line).
    Line {
        connect: Option<SocketAddr>,
        bind: Option<IpAddr>,
        interface: Option<String>,
    },
    /// A byte stream the gateway opens itself: its own WireGuard tunnel to the data centre.
    Dial(Arc<dyn Dial>),
}

/// Opens byte streams to the engine over something other than the host's TCP: the gateway's
/// WireGuard uplink implements it with its userspace TCP/IP stack, so the tunnel needs neither a
/// kernel module nor privileges.
/// The URL's host still names the certificate the engine must present; where the stream goes is
/// the dialer's (the engine's address inside the tunnel).
pub trait Dial: Send + Sync + 'static {
    fn dial(&self) -> Pin<Box<dyn Future<Output = io::Result<DuplexStream>> + Send>>;
}

impl Route {
    /// A TCP connection to the URL's host, as the routing table sends it.
    pub const DIRECT: Route = Route::Line {
        connect: None,
        bind: None,
        interface: None,
    };
}

/// How to reach the engine over one path.
pub(crate) struct Connector {
    host: String,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    route: Route,
    /// For the TCP connection and the TLS handshake together.
    timeout: Duration,
}

/// A connection to the engine and what has been read from it but not yet used.
pub(crate) struct Conn {
    pub(crate) io: Io,
    pub(crate) buf: BytesMut,
}

/// The byte stream: TLS over the transport, or the transport itself.
pub(crate) enum Io {
    Plain(Transport),
    Tls(Box<tokio_rustls::client::TlsStream<Transport>>),
}

/// What carries the bytes: the host's TCP, or a path's own dialer (the WireGuard uplink).
pub(crate) enum Transport {
    Tcp(TcpStream),
    Pipe(DuplexStream),
}

impl Connector {
    /// `host` as the URL has it (an IPv6 address in brackets). The uplink's client and raw TCP
    /// routes (`crate::stream`) both connect through one.
    pub(crate) fn new(
        host: &str,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
        route: Route,
        timeout: Duration,
    ) -> Result<Connector, String> {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let tls = match tls {
            Some(config) => {
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| format!("{host:?} cannot name a TLS server: {e}"))?;
                Some((tokio_rustls::TlsConnector::from(config), name))
            }
            None => None,
        };
        Ok(Connector {
            host,
            port,
            tls,
            route,
            timeout,
        })
    }

    /// A new connection, TLS handshake done.
    pub(crate) async fn connect(&self) -> Result<Conn, ClientError> {
        let timeout = self.timeout;
        let io = tokio::time::timeout(timeout, self.open())
            .await
            .map_err(|_| ClientError::Connect(format!("no connection within {timeout:?}")))??;
        Ok(Conn {
            io,
            buf: BytesMut::new(),
        })
    }

    async fn open(&self) -> Result<Io, ClientError> {
        let transport = match &self.route {
            Route::Line {
                connect,
                bind,
                interface,
            } => {
                let addresses: Vec<SocketAddr> = match connect {
                    Some(address) => vec![*address],
                    None => tokio::net::lookup_host((self.host.as_str(), self.port))
                        .await
                        .map_err(|e| ClientError::Connect(format!("resolving {}: {e}", self.host)))?
                        .collect(),
                };
                let mut failed = None;
                let mut connected = None;
                for address in addresses {
                    match tcp(address, *bind, interface.as_deref()).await {
                        Ok(stream) => {
                            connected = Some(stream);
                            break;
                        }
                        Err(e) => failed = Some(format!("tcp connect to {address}: {e}")),
                    }
                }
                match connected {
                    Some(stream) => Transport::Tcp(stream),
                    None => {
                        let why = failed.unwrap_or_else(|| format!("{} resolves to no address", self.host));
                        return Err(ClientError::Connect(why));
                    }
                }
            }
            Route::Dial(dial) => Transport::Pipe(
                dial.dial()
                    .await
                    .map_err(|e| ClientError::Connect(format!("dialling the path: {e}")))?,
            ),
        };
        match &self.tls {
            None => Ok(Io::Plain(transport)),
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), transport).await.map_err(|e| {
                    ClientError::Connect(format!("TLS with {}: {}", self.host, error_chain(&e)))
                })?;
                Ok(Io::Tls(Box::new(tls)))
            }
        }
    }
}

/// A TCP connection to `address`, from `bind` (when of the same family) and through
/// `interface` when given.
async fn tcp(address: SocketAddr, bind: Option<IpAddr>, interface: Option<&str>) -> io::Result<TcpStream> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(interface) = interface {
        socket.bind_device(Some(interface.as_bytes()))?;
    }
    if let Some(ip) = bind.filter(|ip| ip.is_ipv4() == address.is_ipv4()) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(address).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The whole `source()` chain of an error, where tokio-rustls keeps rustls' reason for a
/// failed handshake.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

impl Conn {
    /// Whether the engine has neither closed the connection nor sent anything on it since its
    /// last answer (either makes it unusable), without waiting.
    pub(crate) fn is_open(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut read = ReadBuf::new(&mut byte);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut read),
            Poll::Pending
        )
    }

    /// The connection as the pool keeps it: without a large read buffer left from a large
    /// answer.
    pub(crate) fn idle(mut self) -> Conn {
        if self.buf.capacity() > super::RECORD {
            self.buf = BytesMut::new();
        }
        self
    }
}

/// `AsyncRead` and `AsyncWrite` for an enum of two streams: each call goes to the variant's.
macro_rules! either_stream {
    ($ty:ident: $a:ident | $b:ident) => {
        impl AsyncRead for $ty {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::$a(s) => Pin::new(s).poll_read(cx, buf),
                    $ty::$b(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }

        impl AsyncWrite for $ty {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $ty::$a(s) => Pin::new(s).poll_write(cx, buf),
                    $ty::$b(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::$a(s) => Pin::new(s).poll_flush(cx),
                    $ty::$b(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $ty::$a(s) => Pin::new(s).poll_shutdown(cx),
                    $ty::$b(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

either_stream!(Io: Plain | Tls);
either_stream!(Transport: Tcp | Pipe);
