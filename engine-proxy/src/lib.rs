//! Everything behind "route": where an authorized request goes, and what answers it.
//!
//! The uplink and its health:
//! - [`upstream`]: the mutual-TLS uplink to the cloud engine, which makes an authorized
//!   request a correct proxied one (hop-by-hop fields, `Via`, the engine credential) and streams
//!   its bodies both ways;
//! - [`client`]: the HTTP/1.1 client it sends with, pooled per path and worker; [`chunked`] and
//!   [`fields`] hold the framing rules it shares with the gateway's terminal-side server;
//! - [`health`]: whether the cloud answers (an active prober with hysteresis, passive suspicion
//!   from failing traffic), and the hybrid state `normal`, `emergency`, `recovery` it decides;
//! - [`tls`]: the one crypto provider, PEM loading, and the uplink's client configuration.
//!
//! HTTP proxying and failover: [`failover`] is the route stage. It forwards to the cloud, or
//! answers in its place from the local engine, by the engine API rules ([`rules`]: which calls
//! read, which write, which must not be made offline; data, with DESIGN.md's defaults), in the
//! engine's own body formats ([`format`](mod@format): JSON and ORCA's typed XML). The same rules
//! say which [`scope`] a call needs: the authorize stage asks them before the call is routed.
//!
//! The local engine, which keeps the clinic working while the cloud cannot answer:
//! - [`cache`]: the read cache, filled from the cloud's answers;
//! - [`journal`]: the durable write journal (on disk before the terminal hears "accepted");
//! - [`replay`]: handing the journal back to the cloud in order, each entry exactly once;
//! - [`sqlite`]: how both open their files; [`digest`]: the SHA-256 of the cache's keys (and the
//!   gateway's audit chain).
//!
//! The reference engine that tests and the demo run against is its own crate, `engine-sim`
//! (`engine-proxy/sim`): the appliance never needs it.
#![forbid(unsafe_code)]

pub mod boxed;
pub mod cache;
pub mod chunked;
pub mod client;
pub mod digest;
pub mod failover;
pub mod fields;
pub mod format;
pub mod health;
pub mod history;
pub mod journal;
pub mod replay;
pub mod rewind;
pub mod rules;
pub mod scope;
pub mod spare;
pub mod sqlite;
pub mod stream;
pub mod tls;
pub mod upstream;
