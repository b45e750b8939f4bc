//! Everything behind "route" (not built yet).
//!
//! This crate will own upstream health, HTTP and TCP proxying to the cloud receipt engine, the
//! local engine (read cache, durable write journal, exactly-once replay), the engine API rules
//! table, and `engine-sim`, the reference engine for installation checks, demos and tests. Until
//! then it exports nothing, so that nothing can be mistaken for working.
#![forbid(unsafe_code)]
