//! The CA's record of every certificate it issued.
//!
//! One JSON file, `index.json`, replaced atomically under the directory lock. It is the commit
//! point of every change: a certificate exists for the CA when, and only when, the index says so.
//! JSON rather than a database so a vendor can read, diff and back it up with ordinary tools.

use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::files;
use crate::profile::Profile;

/// The index format version this build reads and writes.
const VERSION: u32 = 1;

/// Why a certificate was revoked (RFC 5280 §5.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl Reason {
    /// The reason for an RFC 5280 reason code, as the command line names it (`key-compromise`).
    pub fn describe(code: u8) -> String {
        use clap::ValueEnum;
        Reason::value_variants()
            .iter()
            .find(|r| r.to_rcgen() as u8 == code)
            .and_then(|r| r.to_possible_value())
            .map(|v| v.get_name().to_owned())
            .unwrap_or_else(|| format!("reason {code}"))
    }

    /// The reason as rcgen writes it into a CRL entry.
    pub fn to_rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            Reason::Unspecified => R::Unspecified,
            Reason::KeyCompromise => R::KeyCompromise,
            Reason::CaCompromise => R::CaCompromise,
            Reason::AffiliationChanged => R::AffiliationChanged,
            Reason::Superseded => R::Superseded,
            Reason::CessationOfOperation => R::CessationOfOperation,
            Reason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
        }
    }
}

/// A revocation recorded in the index.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Revocation {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub reason: Reason,
}

/// One issued certificate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    /// Upper-case hex, no separators: what `--serial` takes and what openssl prints.
    pub serial: String,
    pub name: String,
    pub profile: Profile,
    /// The subject key's algorithm and size: `ecdsa-p256`, `rsa-3072`, ...
    pub key: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// SHA-256 of the certificate's DER, upper-case hex.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
}

/// A certificate's standing at a given moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Valid,
    Expired,
    Revoked,
}

impl Status {
    /// The status as listings print it.
    pub fn name(self) -> &'static str {
        match self {
            Status::Valid => "valid",
            Status::Expired => "expired",
            Status::Revoked => "revoked",
        }
    }
}

impl Entry {
    /// Revoked beats expired: a revoked certificate stays on the CRL until it expires.
    pub fn status(&self, now: OffsetDateTime) -> Status {
        if self.revoked.is_some() {
            Status::Revoked
        } else if now > self.not_after {
            Status::Expired
        } else {
            Status::Valid
        }
    }
}

/// The index as a whole.
#[derive(Debug, Serialize, Deserialize)]
pub struct Index {
    version: u32,
    /// The number of the last CRL published; the next is one more.
    pub crl_number: u64,
    pub entries: Vec<Entry>,
}

impl Index {
    /// An index for a new CA.
    pub fn new() -> Index {
        Index {
            version: VERSION,
            crl_number: 0,
            entries: Vec::new(),
        }
    }

    /// Reads the index at `path`.
    pub fn load(path: &Path) -> Result<Index> {
        let bytes = files::read(path)?;
        let index: Index =
            serde_json::from_slice(&bytes).map_err(|e| Error::malformed(path, "certificate index", e))?;
        if index.version != VERSION {
            return Err(Error::malformed(
                path,
                "certificate index",
                format!(
                    "version {} is not {VERSION}, the one this build knows",
                    index.version
                ),
            ));
        }
        Ok(index)
    }

    /// Replaces the index at `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        files::write_atomic(path, &self.to_bytes()?, files::PUBLIC)
    }

    /// Writes the index to a staged file, for operations that commit several files together.
    pub fn stage(&self, path: &Path) -> Result<files::Staged> {
        files::Staged::new(path, &self.to_bytes()?, files::PUBLIC)
    }

    fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Crypto {
            what: "index serialization",
            detail: e.to_string(),
        })?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// The entry with this serial (any case, colons allowed, as openssl and browsers print them).
    pub fn by_serial(&self, serial: &str) -> Option<usize> {
        let wanted = normalize_serial(serial);
        self.entries.iter().position(|e| e.serial == wanted)
    }

    /// The entries for `name` that are valid now.
    pub fn valid_named(&self, name: &str, now: OffsetDateTime) -> Vec<usize> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.name == name && e.status(now) == Status::Valid)
            .map(|(i, _)| i)
            .collect()
    }
}

impl Default for Index {
    fn default() -> Self {
        Index::new()
    }
}

/// Upper-case hex without separators or leading zero bytes.
pub fn normalize_serial(serial: &str) -> String {
    let hex: String = serial
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    hex.trim_start_matches("00").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_match_however_they_are_written() {
        assert_eq!(normalize_serial("4a:e0:be"), "4AE0BE");
        assert_eq!(normalize_serial("00:4A"), "4A");
        assert_eq!(normalize_serial("4AE0BE"), "4AE0BE");
    }

    #[test]
    fn reasons_are_named_as_the_command_line_takes_them() {
        assert_eq!(Reason::describe(1), "key-compromise");
        assert_eq!(Reason::describe(4), "superseded");
        assert_eq!(Reason::describe(42), "reason 42");
    }
}
