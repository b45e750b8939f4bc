//! Everything behind "route".
//!
//! Today: [`sim`], the reference engine (`kakehashi engine-sim`). This crate will also own
//! upstream health, HTTP and TCP proxying to the cloud receipt engine, the local engine (read
//! cache, durable write journal, exactly-once replay) and the engine API rules table.
#![forbid(unsafe_code)]

pub mod sim;
