//! Scopes: what a caller may do at the engine, in the three levels the cloud engine's own plans
//! sell.
//!
//! - `client`: the desktop client (its JSON-RPC `/rpc/`, its blob API, the push WebSocket);
//! - `reference` (参照型API): calls that read;
//! - `write` (読み書きAPI): calls that change state. Like the plan it mirrors, it includes
//!   `reference`: a set written with `write` always holds `reference` too.
//!
//! A terminal and a person each hold a set; a call is allowed when the intersection holds the
//! scope the engine API rules ([`crate::rules`]) give the call. The set is a byte of bits, so the
//! check on every request is an `&` and a compare.

use std::fmt;
use std::str::FromStr;

/// One level of access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Client,
    Reference,
    Write,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Client, Scope::Reference, Scope::Write];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Client => "client",
            Scope::Reference => "reference",
            Scope::Write => "write",
        }
    }

    const fn bit(self) -> u8 {
        match self {
            Scope::Client => 1,
            Scope::Reference => 2,
            Scope::Write => 4,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that names no scope, or a list that says nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScopeError(String);

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Scope, ScopeError> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                ScopeError(format!(
                    "unknown scope {s:?}: expected client, reference or write (or all, or none)"
                ))
            })
    }
}

/// A set of scopes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    /// Every scope: what a terminal or person has when nothing was configured (the behaviour of
    /// installations from before scopes).
    pub const ALL: Scopes = Scopes(1 | 2 | 4);
    pub const NONE: Scopes = Scopes(0);

    /// Every scope (for serde's `default`: a terminal or person declared without scopes).
    pub const fn all() -> Scopes {
        Scopes::ALL
    }

    /// Whether this is every scope (for serde's `skip_serializing_if`: what a file without the
    /// field means, so files that use no scopes stay as they were).
    pub fn is_all(&self) -> bool {
        *self == Scopes::ALL
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// What a terminal and a person may both do.
    pub fn intersection(self, other: Scopes) -> Scopes {
        Scopes(self.0 & other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// The set as one byte, for an atomic that a reload updates; [`Scopes::from_bits`] reverses it.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Unknown bits are dropped.
    pub fn from_bits(bits: u8) -> Scopes {
        Scopes(bits & Scopes::ALL.0)
    }

    /// `write` includes `reference`, as in the engine's plans.
    fn with(self, scope: Scope) -> Scopes {
        let implied = match scope {
            Scope::Write => Scope::Reference.bit(),
            _ => 0,
        };
        Scopes(self.0 | scope.bit() | implied)
    }
}

impl From<Scope> for Scopes {
    fn from(scope: Scope) -> Scopes {
        Scopes::NONE.with(scope)
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Scopes {
        iter.into_iter().fold(Scopes::NONE, Scopes::with)
    }
}

/// `client,reference`, `reference,write`, `all` or `none`: a comma-separated list, as given on
/// the command line and stored in the inventory.
impl FromStr for Scopes {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Scopes, ScopeError> {
        match s.trim() {
            "" => Err(ScopeError(
                "an empty list of scopes: give client, reference, write (comma-separated), all or none"
                    .into(),
            )),
            "all" => Ok(Scopes::ALL),
            "none" => Ok(Scopes::NONE),
            list => list.split(',').map(|w| w.trim().parse::<Scope>()).collect(),
        }
    }
}

/// The canonical list: `client,reference,write` order, `none` for the empty set.
impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Scopes::NONE {
            return f.write_str("none");
        }
        for (i, scope) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(scope.as_str())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

/// A list of names in JSON and TOML (`["reference", "write"]`), as bundles and listings carry it.
impl serde::Serialize for Scopes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> serde::Deserialize<'de> for Scopes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Scopes, D::Error> {
        Ok(Vec::<Scope>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_to_canonical_sets_and_write_includes_reference() {
        let p = |s: &str| s.parse::<Scopes>().map(|s| s.to_string());
        assert_eq!(p("client").unwrap(), "client");
        assert_eq!(p("write").unwrap(), "reference,write");
        assert_eq!(p(" write , client ").unwrap(), "client,reference,write");
        assert_eq!(p("all").unwrap(), "client,reference,write");
        assert_eq!(p("none").unwrap(), "none");
        assert_eq!(
            p("reference,admin").unwrap_err().to_string(),
            "unknown scope \"admin\": expected client, reference or write (or all, or none)"
        );
        assert!(p("").is_err());
        assert!(p("client,").is_err(), "an empty item is no scope");
    }

    #[test]
    fn a_call_needs_its_scope_in_both_sets() {
        let terminal: Scopes = "reference,write".parse().unwrap();
        let person: Scopes = "client,reference".parse().unwrap();
        let both = terminal.intersection(person);
        assert!(both.contains(Scope::Reference));
        assert!(!both.contains(Scope::Write) && !both.contains(Scope::Client));
        assert_eq!(Scopes::from_bits(both.bits()), both);
        assert_eq!(Scopes::from_bits(0xff), Scopes::ALL);
    }

    #[test]
    fn json_is_a_list_of_names() {
        let s: Scopes = "write".parse().unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), r#"["reference","write"]"#);
        let back: Scopes = serde_json::from_str(r#"["client"]"#).unwrap();
        assert_eq!(back, Scopes::from(Scope::Client));
        assert!(serde_json::from_str::<Scopes>(r#"["root"]"#).is_err());
    }
}
