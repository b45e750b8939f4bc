//! The clinic PKI: everything a certified vendor needs to give a clinic its own certificate
//! authority and its terminals their certificates, in seconds rather than days.
//!
//! Built on rcgen (writing certificates, CSRs and CRLs) and x509-parser (reading and checking
//! them), with aws-lc-rs underneath. The pieces, one concept each:
//!
//! - [`ca`]: a CA directory and the operations that change it, under a lock, committed atomically;
//! - [`profile`]: what a terminal, server or uplink certificate may do;
//! - [`keys`]: key algorithms, and keys at rest (encrypted PKCS#8, zeroized in memory);
//! - [`index`]: the record of every certificate issued;
//! - [`csr`], [`p12`], [`pkcs7`], [`decode`]: the formats that come in and go out;
//! - [`inspect`], [`verify`]: reading and judging what others hand us;
//! - [`files`]: writes that are whole or absent;
//! - [`cli`]: `kakehashi cert …`.
#![forbid(unsafe_code)]

pub mod ca;
pub mod cli;
pub mod csr;
pub mod decode;
pub mod error;
pub mod files;
pub mod index;
pub mod inspect;
pub mod keys;
pub mod p12;
pub mod pkcs7;
pub mod profile;
pub mod verify;

pub use error::{Error, Result};
