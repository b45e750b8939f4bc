//! The Kakehashi appliance: the gateway's own state and, as it lands, its runtime.
//!
//! The state lives in one data directory (see [`db`]), and each kind has its module:
//!
//! - [`inventory`]: which terminals may connect (by certificate common name), enabled or not;
//! - [`users`]: the people who sign in, their argon2id password hashes and upstream credentials;
//! - [`audit`]: every access decision, in a hash chain that shows tampering;
//! - [`cli`]: `kakehashi terminal …`, `kakehashi user …` and `kakehashi audit …`.
#![forbid(unsafe_code)]

pub mod audit;
pub mod cli;
pub mod db;
pub mod inventory;
pub mod users;
