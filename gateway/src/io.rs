//! The byte streams the gateway serves: what the front doors hand to the routes.
//!
//! One trait, so that a TLS stream over TCP, a plain stream out of the WireGuard tunnel and TLS
//! inside the tunnel all go through the same pipeline.

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream a route can serve: TCP, TLS over TCP, or a stream out of the WireGuard tunnel.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}
