//! The WireGuard front door.
//!
//! A terminal's packets arrive on one UDP socket ([`server`]); each peer is a boringtun `Tunn`
//! ([`peer`]). Decrypted packets go either to a userspace TCP/IP stack holding the gateway's
//! tunnel address ([`stack`], the default) or to a kernel TUN device ([`tun`]). Either way a TCP
//! connection to a configured port becomes a stream in the same pipeline as a TLS connection,
//! with the peer's inventory terminal as its identity.

pub mod keys;
pub mod quick;
