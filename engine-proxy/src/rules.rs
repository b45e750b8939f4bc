//! The engine API rules: which calls read, which write, which must not be made offline, and
//! which scope ([`crate::scope`]) a caller needs for each.
//!
//! The engine's method does not tell reads from writes (most reads are POST), so the proxy asks
//! this table, in order, first match wins: the configured rules, then the defaults below (from
//! DESIGN.md, "The cloud engine's API"). A row matches a path pattern and, where one call does
//! several things, the query's `class` or the body's `Request_Number`. A call no rule names is
//! treated as `refuse`: forwarded while the cloud answers, refused while it does not, and only
//! for callers the configuration trusts with unknown calls. Deny by default: a call the gateway
//! does not understand is never answered from a cache or journaled.

use std::time::Duration;

use memchr::memmem::Finder;

use crate::scope::Scope;

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
    /// The query's `class`, for calls that pick their function by it (`None`: any).
    pub class: Option<String>,
    /// The body's `Request_Number`, for calls that do several things by it (`None`: any).
    pub request_number: Option<String>,
    pub action: Action,
    /// What a caller must hold to make the call.
    pub scope: Scope,
    /// For reads: how long a cached answer may still be served.
    pub ttl: Duration,
}

impl Rule {
    /// The scope a row asks for when it names none: reading needs `reference`; writing, and a
    /// cloud-only call (which may change anything), `write`.
    pub fn default_scope(action: Action) -> Scope {
        match action {
            Action::Read => Scope::Reference,
            Action::Write | Action::Refuse => Scope::Write,
        }
    }

    fn matches_class(&self, class: Option<&str>) -> bool {
        self.class.as_deref().is_none_or(|c| Some(c) == class)
    }
}

/// How long a cached read may be served when its rule does not say.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// One built-in row: path, `class`, `Request_Number`, action, scope.
type Builtin = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Action,
    Scope,
);

/// The built-in table, after any configured rules.
const DEFAULTS: &[Builtin] = &[
    // The desktop client: its JSON-RPC, its blob API and the push WebSocket. Stateful, cloud only.
    ("/rpc/*", None, None, Action::Refuse, Scope::Client),
    ("/blobapi/*", None, None, Action::Refuse, Scope::Client),
    ("/ws", None, None, Action::Refuse, Scope::Client),
    // The multi-step "v3" calls hold locks on the engine that started them.
    ("*/medicalmodv3*", None, None, Action::Refuse, Scope::Write),
    ("*/patientmodv3*", None, None, Action::Refuse, Scope::Write),
    ("*/incomev3*", None, None, Action::Refuse, Scope::Write),
    // Under /api01rv2 but changing state.
    ("/api01rv2/okusuriputv2", None, None, Action::Write, Scope::Write),
    // Under /api01rv2 but making print data and blobs on the engine.
    (
        "/api01rv2/prescriptionv2",
        None,
        None,
        Action::Refuse,
        Scope::Write,
    ),
    (
        "/api01rv2/medicinenotebookv2",
        None,
        None,
        Action::Refuse,
        Scope::Write,
    ),
    ("/api01rv2/karteno1v2", None, None, Action::Refuse, Scope::Write),
    ("/api01rv2/karteno3v2", None, None, Action::Refuse, Scope::Write),
    (
        "/api01rv2/invoicereceiptv2",
        None,
        None,
        Action::Refuse,
        Scope::Write,
    ),
    ("/api01rv2/statementv2", None, None, Action::Refuse, Scope::Write),
    ("/api01rv2/*", None, None, Action::Read, Scope::Reference),
    ("/orca51/*lst*", None, None, Action::Read, Scope::Reference),
    // Calls that write, except the function named by their body: reading a reception
    // (`acceptmodv2`, since late 2024) and listing the engine's users (`manageusersv2`).
    (
        "/orca11/acceptmodv2",
        None,
        Some("00"),
        Action::Read,
        Scope::Reference,
    ),
    (
        "/orca101/manageusersv2",
        None,
        Some("01"),
        Action::Read,
        Scope::Reference,
    ),
    ("/api21/*", None, None, Action::Write, Scope::Write),
    ("/orca1*", None, None, Action::Write, Scope::Write),
    ("/orca2*", None, None, Action::Write, Scope::Write),
    ("/orca3*", None, None, Action::Write, Scope::Write),
    ("/orca4*", None, None, Action::Write, Scope::Write),
];

/// What the table looks at in a call: its path, its query's `class`, and (only when a row asks
/// for it, see [`Rules::needs_request_number`]) its body's `Request_Number`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Call<'a> {
    /// The request path, query excluded, `/api` prefix or not.
    pub path: &'a str,
    pub class: Option<&'a str>,
    pub request_number: Option<&'a str>,
}

impl<'a> Call<'a> {
    /// A call's path and query `class`, from its path-and-query.
    pub fn new(path: &'a str, query: Option<&'a str>) -> Call<'a> {
        let class = query.and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("class=")));
        Call {
            path,
            class,
            request_number: None,
        }
    }
}

/// The ordered table.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
    /// Each rule's path pattern, split once here: every request is compared with the rules
    /// before its own, twice (for its `Request_Number`, then its scope).
    patterns: Vec<Pattern>,
}

impl Rules {
    /// `configured` rules first, then the defaults.
    pub fn new(configured: Vec<Rule>) -> Rules {
        let defaults = DEFAULTS
            .iter()
            .map(|&(path, class, request_number, action, scope)| Rule {
                path: path.to_owned(),
                class: class.map(str::to_owned),
                request_number: request_number.map(str::to_owned),
                action,
                scope,
                ttl: DEFAULT_TTL,
            });
        let rules: Vec<Rule> = configured.into_iter().chain(defaults).collect();
        let patterns = rules.iter().map(|r| Pattern::new(&r.path)).collect();
        Rules { rules, patterns }
    }

    /// The rules whose path pattern and `class` match the call, in order.
    fn matching_head<'s>(&'s self, call: &Call<'_>) -> impl Iterator<Item = &'s Rule> {
        let path = engine_path(call.path);
        let lead = Lead::of(path);
        self.rules
            .iter()
            .zip(&self.patterns)
            .filter(move |(r, p)| p.matches_led(path, lead) && r.matches_class(call.class))
            .map(|(r, _)| r)
    }

    /// The first rule that matches the call, or `None`: a call the gateway does not know, treated
    /// as [`Action::Refuse`] offline and refused to anyone the configuration does not trust with
    /// unknown calls.
    pub fn classify(&self, call: &Call<'_>) -> Option<&Rule> {
        self.matching_head(call).find(|r| {
            r.request_number
                .as_deref()
                .is_none_or(|n| Some(n) == call.request_number)
        })
    }

    /// Whether the call's rule depends on its body's `Request_Number`: the first row that
    /// matches its path and `class` asks for one. Only then is the body read before the call
    /// is authorized.
    pub fn needs_request_number(&self, call: &Call<'_>) -> bool {
        self.head_rule(call).is_some_and(|r| r.request_number.is_some())
    }

    /// The first rule that matches the call's path and `class`: the call's rule, unless it asks
    /// for a `Request_Number` ([`Rules::classify`] then, with the body's). One pass over the
    /// table for most calls, where asking [`Rules::needs_request_number`] and then classifying
    /// would make two.
    pub fn head_rule(&self, call: &Call<'_>) -> Option<&Rule> {
        self.matching_head(call).next()
    }

    /// The action for a path, unknown paths refused.
    pub fn action(&self, path: &str) -> Action {
        self.classify(&Call::new(path, None))
            .map_or(Action::Refuse, |r| r.action)
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

/// A text's first [`Lead::BYTES`] bytes as one number, zeros after a shorter text's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lead(u128);

impl Lead {
    const BYTES: usize = 16;

    fn of(text: &str) -> Lead {
        let mut bytes = [0; Lead::BYTES];
        let n = text.len().min(Lead::BYTES);
        bytes[..n].copy_from_slice(&text.as_bytes()[..n]);
        Lead(u128::from_le_bytes(bytes))
    }
}

/// A path pattern, where `*` matches any run of characters (`/` included), split at its `*`s.
#[derive(Debug, Clone)]
struct Pattern {
    /// Before the first `*`: most rules differ here, so most comparisons end here.
    first: Box<str>,
    /// `first`'s lead and a mask of the bytes it has: a path whose lead differs under the mask
    /// cannot start with `first`, and one comparison of two numbers says so. Comparing the texts
    /// byte by byte, a call to `memcmp` for each of the table's rows, cost 2 % of the gateway's
    /// CPU per request.
    lead: Lead,
    mask: u128,
    /// Between `*`s, in order; empty runs (`**`) left out. Each is searched for with a searcher
    /// made here, once: `str::find` set one up on every call, for every request.
    middle: Box<[Finder<'static>]>,
    /// After the last `*`; `None` for a pattern without one, which matches only itself.
    last: Option<Box<str>>,
}

impl Pattern {
    fn new(pattern: &str) -> Pattern {
        let (first, rest) = match pattern.split_once('*') {
            Some((first, after)) => (first, Some(after)),
            None => (pattern, None),
        };
        let lead = Lead::of(first);
        let mask = match first.len() {
            n if n >= Lead::BYTES => u128::MAX,
            n => (1u128 << (8 * n)) - 1,
        };
        let Some(after) = rest else {
            return Pattern {
                first: pattern.into(),
                lead,
                mask,
                middle: Box::default(),
                last: None,
            };
        };
        let (middle, last) = after.rsplit_once('*').unwrap_or(("", after));
        Pattern {
            first: first.into(),
            lead,
            mask,
            middle: middle
                .split('*')
                .filter(|p| !p.is_empty())
                .map(|p| Finder::new(p).into_owned())
                .collect(),
            last: Some(last.into()),
        }
    }

    #[cfg(test)]
    fn matches(&self, text: &str) -> bool {
        self.matches_led(text, Lead::of(text))
    }

    /// Whether `text`, whose lead is `lead`, matches.
    fn matches_led(&self, text: &str, lead: Lead) -> bool {
        if lead.0 & self.mask != self.lead.0 {
            return false;
        }
        // The leads agree, so `text` starts with `first`'s first bytes, up to 16 of them, unless
        // it is shorter than `first` (its lead is padded with zeros, which a NUL in `first` may
        // equal). Only a longer `first`'s rest is compared: a call to `memcmp` for every row
        // whose lead agrees, even an empty `first`, cost 1.4 % of the CPU.
        let n = self.first.len();
        let starts = text.len() >= n
            && (n <= Lead::BYTES || text.as_bytes()[Lead::BYTES..n] == self.first.as_bytes()[Lead::BYTES..]);
        if !starts {
            return false;
        }
        let Some(last) = &self.last else {
            return text.len() == n;
        };
        // `first` is whole characters, so where it ends in `text` is a character boundary.
        let Some(mut rest) = text.get(n..) else {
            return false;
        };
        for part in &self.middle {
            // The part is whole characters, so where it ends is a character boundary.
            match part
                .find(rest.as_bytes())
                .and_then(|i| rest.get(i + part.needle().len()..))
            {
                Some(after) => rest = after,
                None => return false,
            }
        }
        last.is_empty() || rest.ends_with(&**last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(pattern: &str, text: &str) -> bool {
        Pattern::new(pattern).matches(text)
    }

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
        assert!(glob("/a**b", "/ab"));
        assert!(glob("*", ""));
        assert!(
            !glob("/ab*ba", "/aba"),
            "the prefix and the suffix may not overlap"
        );
    }

    #[test]
    fn the_lead_comparison_rejects_only_what_cannot_match() {
        // Prefixes shorter than, as long as and longer than the lead's 16 bytes.
        assert!(glob("/0123456789abcde*", "/0123456789abcdef/x"));
        assert!(!glob("/0123456789abcde*", "/0123456789abcdX"));
        assert!(glob("/api01rv2/okusuriputv2", "/api01rv2/okusuriputv2"));
        assert!(!glob("/api01rv2/okusuriputv2", "/api01rv2/okusuriputv3"));
        assert!(!glob("/api01rv2/okusuriputv2", "/api01rv2/okusuri"));
        assert!(!glob("/api01rv2/*", "/api"));
        assert!(glob("/api*", "/api"));
        assert!(!glob("/api*", ""));
        // A NUL in the pattern looks like the padding after a shorter text: the lead passes it,
        // the full comparison does not.
        assert!(!glob("/a\0*", "/a"));
        assert!(glob("/a\0*", "/a\0b"));
        assert!(!glob("/ab\0", "/ab"));
        // Past the lead, the rest of a longer prefix is compared.
        assert!(glob("/0123456789abcdefXY*", "/0123456789abcdefXY/z"));
        assert!(!glob("/0123456789abcdefXY*", "/0123456789abcdefXZ/z"));
        assert!(!glob("/0123456789abcdefXY", "/0123456789abcdefX"));
        // Characters of more than one byte.
        assert!(glob("/é*", "/é/x"));
        assert!(!glob("/é*", "/e/x"));
        assert!(glob("/é*ß", "/é/ß"));
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
    fn scopes_by_path_class_and_request_number() {
        let r = Rules::new(vec![Rule {
            path: "/api01rv2/system01lstv2".into(),
            class: Some("99".into()),
            request_number: None,
            action: Action::Refuse,
            scope: Scope::Write,
            ttl: DEFAULT_TTL,
        }]);
        let scope = |path: &str, query: Option<&str>, number: Option<&str>| {
            let call = Call {
                request_number: number,
                ..Call::new(path, query)
            };
            r.classify(&call).map(|rule| rule.scope)
        };
        assert_eq!(scope("/rpc/", None, None), Some(Scope::Client));
        assert_eq!(scope("/api/ws", None, None), Some(Scope::Client));
        assert_eq!(
            scope("/api01rv2/patientgetv2", Some("id=1"), None),
            Some(Scope::Reference)
        );
        assert_eq!(
            scope("/api01rv2/system01lstv2", Some("class=01"), None),
            Some(Scope::Reference)
        );
        assert_eq!(
            scope("/api01rv2/system01lstv2", Some("format=json&class=99"), None),
            Some(Scope::Write)
        );
        assert_eq!(
            scope("/orca11/acceptmodv2", Some("class=01"), Some("01")),
            Some(Scope::Write)
        );
        assert_eq!(
            scope("/orca11/acceptmodv2", None, Some("00")),
            Some(Scope::Reference)
        );
        assert_eq!(scope("/orca11/acceptmodv2", None, None), Some(Scope::Write));
        assert_eq!(scope("/api01rv2/prescriptionv2", None, None), Some(Scope::Write));
        assert_eq!(scope("/sim/upload", None, None), None);

        assert!(r.needs_request_number(&Call::new("/orca11/acceptmodv2", None)));
        assert!(r.needs_request_number(&Call::new("/api/orca101/manageusersv2", None)));
        assert!(!r.needs_request_number(&Call::new("/orca14/appointmodv2", Some("class=01"))));
        assert!(!r.needs_request_number(&Call::new("/api01rv2/patientgetv2", None)));
    }

    #[test]
    fn configured_rules_come_first() {
        let r = Rules::new(vec![Rule {
            path: "/api01rv2/system01dailyv2".into(),
            class: None,
            request_number: None,
            action: Action::Refuse,
            scope: Scope::Write,
            ttl: DEFAULT_TTL,
        }]);
        assert_eq!(r.action("/api01rv2/system01dailyv2"), Action::Refuse);
        assert_eq!(r.action("/api01rv2/patientgetv2"), Action::Read);
    }
}
