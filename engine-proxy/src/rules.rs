//! The engine API rules: which calls read, which write, which must not be made offline.
//!
//! The engine's method does not tell reads from writes (most reads are POST), so the proxy asks
//! this table, in order, first match wins: the configured rules, then the defaults below (from
//! DESIGN.md, "The cloud engine's API"). A call no rule names is treated as `refuse`: forwarded
//! while the cloud answers, refused while it does not. Deny by default: a call the gateway does
//! not understand is never answered from a cache or journaled.

use std::time::Duration;

/// What the local engine may do with a call when the cloud cannot answer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Answered from the cache when the cloud cannot answer; cloud answers fill the cache.
    Read,
    /// Journaled when the cloud cannot take it, replayed exactly once when it returns.
    Write,
    /// Cloud only: multi-step calls holding server-side locks, print jobs, anything unknown.
    Refuse,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Refuse => "refuse",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// A path pattern without the `/api` prefix; `*` matches any run of characters.
    pub path: String,
    pub action: Action,
    /// For reads: how long a cached answer may still be served.
    pub ttl: Duration,
}

/// How long a cached read may be served when its rule does not say.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// The built-in table, after any configured rules.
const DEFAULTS: &[(&str, Action)] = &[
    // The multi-step "v3" calls hold locks on the engine that started them.
    ("*/medicalmodv3*", Action::Refuse),
    ("*/patientmodv3*", Action::Refuse),
    ("*/incomev3*", Action::Refuse),
    // Under /api01rv2 but changing state.
    ("/api01rv2/okusuriputv2", Action::Write),
    // Under /api01rv2 but making print data and blobs on the engine.
    ("/api01rv2/prescriptionv2", Action::Refuse),
    ("/api01rv2/medicinenotebookv2", Action::Refuse),
    ("/api01rv2/karteno1v2", Action::Refuse),
    ("/api01rv2/karteno3v2", Action::Refuse),
    ("/api01rv2/invoicereceiptv2", Action::Refuse),
    ("/api01rv2/statementv2", Action::Refuse),
    ("/api01rv2/*", Action::Read),
    ("/orca51/*lst*", Action::Read),
    ("/api21/*", Action::Write),
    ("/orca1*", Action::Write),
    ("/orca2*", Action::Write),
    ("/orca3*", Action::Write),
    ("/orca4*", Action::Write),
];

/// The ordered table.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    /// `configured` rules first, then the defaults.
    pub fn new(configured: Vec<Rule>) -> Rules {
        let defaults = DEFAULTS.iter().map(|&(path, action)| Rule {
            path: path.to_owned(),
            action,
            ttl: DEFAULT_TTL,
        });
        Rules {
            rules: configured.into_iter().chain(defaults).collect(),
        }
    }

    /// The rule for a request path (query excluded), or `None`: treat as [`Action::Refuse`].
    pub fn classify(&self, path: &str) -> Option<&Rule> {
        let path = engine_path(path);
        self.rules.iter().find(|r| glob(&r.path, path))
    }

    /// The action for a path, unknown paths refused.
    pub fn action(&self, path: &str) -> Action {
        self.classify(path).map_or(Action::Refuse, |r| r.action)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }
}

/// The path as the on-premises engine names it: the cloud web version's `/api` prefix removed.
pub fn engine_path(path: &str) -> &str {
    path.strip_prefix("/api")
        .filter(|p| p.starts_with('/'))
        .unwrap_or(path)
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (`/` included).
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else {
        return rest.is_empty(); // no `*` at all
    };
    for part in parts {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_prefixes_infixes_and_suffixes() {
        assert!(glob("/api01rv2/*", "/api01rv2/patientgetv2"));
        assert!(!glob("/api01rv2/*", "/api21/medicalmodv2"));
        assert!(glob("/orca51/*lst*", "/orca51/masterlastupdatev3lst"));
        assert!(!glob("/orca51/*lst*", "/orca51/masterlastupdatev3"));
        assert!(glob("*/medicalmodv3*", "/api21/medicalmodv31"));
        assert!(glob("/exact", "/exact"));
        assert!(!glob("/exact", "/exactly"));
        assert!(glob("/a*b*b", "/abb"));
        assert!(!glob("/a*bb*b", "/abb"));
    }

    #[test]
    fn the_default_table_follows_the_design() {
        let r = Rules::new(Vec::new());
        assert_eq!(r.action("/api01rv2/patientgetv2"), Action::Read);
        assert_eq!(r.action("/api/api01rv2/patientlst2v2"), Action::Read);
        assert_eq!(r.action("/api01rv2/okusuriputv2"), Action::Write);
        assert_eq!(r.action("/api01rv2/prescriptionv2"), Action::Refuse);
        assert_eq!(r.action("/orca11/acceptmodv2"), Action::Write);
        assert_eq!(r.action("/orca101/manageusersv2"), Action::Write);
        assert_eq!(r.action("/orca14/appointmodv2"), Action::Write);
        assert_eq!(r.action("/api21/medicalmodv2"), Action::Write);
        assert_eq!(r.action("/api21/medicalmodv31"), Action::Refuse);
        assert_eq!(r.action("/orca12/patientmodv32"), Action::Refuse);
        assert_eq!(r.action("/orca51/somethinglstv2"), Action::Read);
        assert_eq!(r.action("/rpc/"), Action::Refuse);
        assert_eq!(r.action("/ws"), Action::Refuse);
    }

    #[test]
    fn configured_rules_come_first() {
        let r = Rules::new(vec![Rule {
            path: "/api01rv2/system01dailyv2".into(),
            action: Action::Refuse,
            ttl: DEFAULT_TTL,
        }]);
        assert_eq!(r.action("/api01rv2/system01dailyv2"), Action::Refuse);
        assert_eq!(r.action("/api01rv2/patientgetv2"), Action::Read);
    }
}
