//! Everything behind "route".
//!
//! [`upstream`]: the pooled mutual-TLS uplink that forwards authorized requests to the cloud
//! engine. [`sim`]: the reference engine (`kakehashi engine-sim`). This crate will also own
//! upstream health, the local engine (read cache, durable write journal, exactly-once replay) and
//! the engine API rules table.
#![forbid(unsafe_code)]

pub mod cache;
pub mod failover;
pub mod format;
pub mod health;
pub mod journal;
pub mod replay;
pub mod rules;
pub mod sim;
pub mod sqlite;
pub mod stream;
pub mod tls;
pub mod upstream;
