//! `[storage]`: how much of the disk the data directory may take. Absent, half of the file
//! system it is on (measured when the gateway starts): the router's flash also holds the
//! system, and a full disk stops the gateway (the audit log fails closed).

use serde::Deserialize;

use super::{Config, ConfigError};

/// The data directory's disk budget.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// The budget: bytes (`67108864`) or a size with a unit (`"64MiB"`, `"1GiB"`, `"500MB"`).
    #[serde(default)]
    pub budget: Option<Size>,
    /// How large the live audit segment grows before it is sealed [default: a 32nd of the
    /// budget, from 64 KiB to 64 MiB]. Sealed segments are what pruning lets go, whole.
    #[serde(default)]
    pub audit_segment: Option<Size>,
}

/// A size as written in the file: a number of bytes or a text with a unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Bytes(i64),
    Text(String),
}

impl Size {
    /// The size in bytes, or what is wrong with it.
    pub fn bytes(&self) -> Result<u64, String> {
        let expected = "expected bytes or a size such as \"64MiB\", \"512KiB\", \"2GiB\", \"500MB\"";
        match self {
            Size::Bytes(n) => u64::try_from(*n).map_err(|_| format!("{n}: {expected}")),
            Size::Text(text) => {
                let t = text.trim();
                let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
                let (number, unit) = t.split_at(split);
                let number: u64 = number.parse().map_err(|_| format!("{text:?}: {expected}"))?;
                let factor: u64 = match unit.trim() {
                    "" | "B" => 1,
                    "KiB" => 1 << 10,
                    "MiB" => 1 << 20,
                    "GiB" => 1 << 30,
                    "TiB" => 1 << 40,
                    "kB" | "KB" => 1_000,
                    "MB" => 1_000_000,
                    "GB" => 1_000_000_000,
                    "TB" => 1_000_000_000_000,
                    _ => return Err(format!("{text:?}: unknown unit; {expected}")),
                };
                number
                    .checked_mul(factor)
                    .ok_or_else(|| format!("{text:?}: too large"))
            }
        }
    }
}

/// The smallest budget the gateway runs with: its databases, one audit segment being written
/// and one sealed, and a backup's scratch copy.
pub const MIN_BUDGET: u64 = 4 << 20;
/// The smallest audit segment.
pub const MIN_SEGMENT: u64 = 64 << 10;

impl Config {
    pub(super) fn check_storage(&self) -> Result<(), ConfigError> {
        if let Some(budget) = &self.storage.budget {
            let bytes = budget.bytes().map_err(|m| self.invalid("storage.budget", m))?;
            if bytes < MIN_BUDGET {
                return Err(self.invalid(
                    "storage.budget",
                    format!("{bytes} bytes: at least 4MiB (the databases, two audit segments and a backup's scratch copy)"),
                ));
            }
        }
        if let Some(segment) = &self.storage.audit_segment {
            let bytes = segment
                .bytes()
                .map_err(|m| self.invalid("storage.audit_segment", m))?;
            if bytes < MIN_SEGMENT {
                return Err(self.invalid("storage.audit_segment", format!("{bytes} bytes: at least 64KiB")));
            }
            if let Some(budget) = self.storage.budget.as_ref().and_then(|b| b.bytes().ok())
                && bytes > budget / 8
            {
                return Err(self.invalid(
                    "storage.audit_segment",
                    format!(
                        "{bytes} bytes: at most an eighth of storage.budget ({})",
                        budget / 8
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_with_and_without_units() {
        let ok = |s: Size| s.bytes().unwrap();
        assert_eq!(ok(Size::Bytes(4096)), 4096);
        assert_eq!(ok(Size::Text("64MiB".into())), 64 << 20);
        assert_eq!(ok(Size::Text("64 MiB".into())), 64 << 20);
        assert_eq!(ok(Size::Text("500MB".into())), 500_000_000);
        assert!(
            Size::Text("64 megs".into())
                .bytes()
                .unwrap_err()
                .contains("unknown unit")
        );
        assert!(Size::Text("MiB".into()).bytes().is_err());
        assert!(Size::Bytes(-1).bytes().is_err());
        assert!(
            Size::Text("99999999999TiB".into())
                .bytes()
                .unwrap_err()
                .contains("too large")
        );
    }
}
