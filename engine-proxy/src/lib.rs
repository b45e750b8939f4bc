//! Everything behind "route".
//!
//! [`upstream`]: the pooled mutual-TLS uplink that forwards authorized requests to the cloud
//! engine. [`sim`]: the reference engine (`kakehashi engine-sim`). This crate will also own
//! upstream health, the local engine (read cache, durable write journal, exactly-once replay) and
//! the engine API rules table.
#![forbid(unsafe_code)]

pub mod sim;
pub mod tls;
pub mod upstream;
