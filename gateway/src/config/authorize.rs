//! `[authorize]`: what the authorize stage does with a call the engine API rules do not know.
//! The rules themselves (which scope each call needs) are the `[[failover.route]]` rows and
//! their built-in defaults; what each terminal and person holds is in the inventory
//! (`terminal set --scopes`, `user set --scopes`).

use serde::Deserialize;

/// The `[authorize]` section; it may be left out.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorize {
    #[serde(default)]
    pub unknown_calls: UnknownCalls,
}

/// Who may make a call that no rule names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownCalls {
    /// Nobody: a call is made only when the rules say what it is (the default).
    #[default]
    Deny,
    /// Anyone holding the `write` scope (an unknown call might change anything). It goes to
    /// the cloud only, never to the cache or the journal.
    Write,
}
