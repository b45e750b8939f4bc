//! Firmware versions: dotted numbers (`1.4.2`), compared number by number.
//!
//! Deliberately smaller than semver: no pre-release or build suffixes, whose ordering rules an
//! appliance's version floor must not depend on.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::Error;

/// At most this many parts (`1.2.3.4`).
const MAX_PARTS: usize = 4;

/// A version: one to four dotted decimal numbers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version(Vec<u64>);

impl FromStr for Version {
    type Err = Error;

    fn from_str(text: &str) -> Result<Version, Error> {
        let bad = |why| Error::Version {
            text: text.to_owned(),
            why,
        };
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() > MAX_PARTS {
            return Err(bad("at most four dotted numbers"));
        }
        let mut numbers = Vec::with_capacity(parts.len());
        for part in parts {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("expected dotted decimal numbers such as 1.4.2"));
            }
            if part.len() > 1 && part.starts_with('0') {
                return Err(bad("a number with a leading zero"));
            }
            numbers.push(part.parse().map_err(|_| bad("a number too large"))?);
        }
        Ok(Version(numbers))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Version) -> Ordering {
        let len = self.0.len().max(other.0.len());
        (0..len)
            .map(|i| {
                let a = self.0.get(i).copied().unwrap_or(0);
                let b = other.0.get(i).copied().unwrap_or(0);
                a.cmp(&b)
            })
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Version) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text: Vec<String> = self.0.iter().map(u64::to_string).collect();
        f.write_str(&text.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().expect("a version")
    }

    #[test]
    fn numbers_compare_as_numbers() {
        assert!(v("1.10") > v("1.9"));
        assert!(v("2") > v("1.99.99"));
        assert_eq!(v("1.2"), v("1.2"));
        assert_eq!(v("1.2").cmp(&v("1.2.0")), Ordering::Equal);
        assert_eq!(v("0.1.0").to_string(), "0.1.0");
    }

    #[test]
    fn malformed_versions_are_refused() {
        for bad in [
            "", "1..2", "v1", "1.2-rc1", "01.2", "1.2.3.4.5", "99999999999999999999",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad}");
        }
    }
}
