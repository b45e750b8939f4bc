//! The status page: one glance says whether the cloud is reachable, what is waiting and what
//! needs attention (`/kakehashi/status` on the api listeners, `/status.json` on the admin
//! listener, `kakehashi status`).
//!
//! [`collect`] gathers a [`Report`] from what the gateway already keeps (the health, the
//! journal, the outage history, the live snapshot, the audit log), on request only: nothing on
//! the proxy path works for a page nobody looks at. [`render`] turns it into HTML (maud
//! templates, Japanese first) and the page's stylesheet and script; JSON is the same report
//! through serde. The stage that serves it, behind the same door, admission and audit as every
//! request, is `crate::pipeline::pages`.

pub mod collect;
pub mod render;

use serde::{Deserialize, Serialize};

pub use collect::Sources;

/// What the page shows, and the JSON's shape. Times are RFC 3339 in UTC.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// `normal`, `emergency` or `recovery`: the hybrid state (`X-Hybridmode`).
    pub mode: String,
    /// When the current state began (or the gateway started).
    pub since: String,
    /// Writes accepted while the cloud was down, not yet handed back.
    pub journal_pending: u64,
    /// When the oldest of them was accepted.
    pub journal_oldest: Option<String>,
    /// Writes the cloud refused: an operator decides (`kakehashi journal`).
    pub journal_quarantined: u64,
    /// The last time the cloud answered anything, a probe or a call.
    pub last_contact: Option<String>,
    /// The share of time the cloud was up, 0 to 1; `null` until the record is a minute old.
    pub availability_24h: Option<f64>,
    pub availability_7d: Option<f64>,
    /// The last outages, the latest first.
    pub outages: Vec<Outage>,
    /// Each path to the cloud, in order of preference (one, `upstream.url`, unless
    /// `[[upstream.path]]` adds more).
    #[serde(default)]
    pub paths: Vec<PathState>,
    /// When this report was made.
    pub generated: String,
    /// The operator's sections: only for a signed-in operator, and on the admin listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<Operator>,
}

/// One path to the cloud.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathState {
    pub name: String,
    pub up: bool,
    /// Whether it carries the traffic now.
    pub active: bool,
    /// When it last went down or came back; `null`: not since the gateway started.
    pub since: Option<String>,
    pub last_contact: Option<String>,
    /// The share of time it has been up since the gateway started, 0 to 1.
    pub availability: f64,
}

/// One outage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outage {
    pub started: String,
    /// `null` while it lasts.
    pub ended: Option<String>,
    pub reason: String,
}

/// What the vendor's first questions on a support call are about.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Operator {
    pub terminals: Vec<TerminalState>,
    /// Certificates the gateway uses that expire within 30 days (or have).
    pub expiring: Vec<Expiring>,
    /// When the loaded CRL's next update is due, and whether it is past.
    pub crl_next_update: Option<String>,
    pub crl_stale: bool,
    /// `ok`, or `failing` when the audit log cannot be written.
    pub audit_chain: String,
    /// Free space for the data directory, in bytes.
    pub disk_free_bytes: Option<u64>,
    pub version: String,
    /// The latest refusals in the audit log (of its newest entries), newest first.
    #[serde(default)]
    pub recent_refusals: Vec<crate::audit::Refusal>,
    /// What the last `kakehashi backup run` did (absent: none ran).
    #[serde(default)]
    pub backup: Option<crate::backup::state::State>,
    /// The data directory against its disk budget, and its alerts.
    #[serde(default)]
    pub disk: Option<crate::budget::Report>,
    /// The firmware slots, on an appliance that takes signed updates (`[firmware]`, slots set up).
    #[serde(default)]
    pub firmware: Option<FirmwareSlots>,
}

/// Which slot runs, and a trial or a rollback, as `kakehashi firmware status` says them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirmwareSlots {
    /// The version that answers (its slot's, as installed; this build's when it runs from
    /// outside the slots), and the slot it runs from.
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub booted: Option<String>,
    /// `a` or `b`, and the version installed there.
    pub committed: String,
    pub committed_version: Option<String>,
    /// The slot on trial, and how many of its starts were used.
    pub trial: Option<String>,
    pub bootcount: u32,
    pub bootlimit: u32,
    /// The last trial given up, and why.
    pub rolled_back: Option<String>,
}

impl FirmwareSlots {
    /// One line for `/health`: what runs from where, what is committed, a trial and a rollback.
    pub fn line(&self) -> String {
        let mut line = format!(
            "firmware: {} from {}; committed slot {}",
            self.version,
            self.booted
                .as_deref()
                .map_or("outside the slots".to_owned(), |s| format!("slot {s}")),
            self.committed
        );
        if let Some(v) = &self.committed_version {
            line.push_str(&format!(" ({v})"));
        }
        if let Some(t) = &self.trial {
            line.push_str(&format!(
                "; slot {t} on trial, start {} of {}",
                self.bootcount, self.bootlimit
            ));
        }
        if let Some(why) = &self.rolled_back {
            line.push_str(&format!("; rolled back: {why}"));
        }
        line
    }

    /// The Prometheus lines: which version runs from which slot, the trial and its starts, a
    /// rollback.
    pub fn metrics(&self) -> String {
        // The version comes from a slot's description on disk: escaped as a label value.
        let label = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
        format!(
            "# HELP kakehashi_firmware_info The running version, the slot it runs from (none: outside the slots) and the committed slot.\n\
             # TYPE kakehashi_firmware_info gauge\n\
             kakehashi_firmware_info{{version=\"{}\",booted_slot=\"{}\",committed_slot=\"{}\"}} 1\n\
             # HELP kakehashi_firmware_trial 1 while a version is on trial (not committed yet).\n\
             # TYPE kakehashi_firmware_trial gauge\n\
             kakehashi_firmware_trial {}\n\
             # HELP kakehashi_firmware_bootcount Starts of the version on trial so far (the supervisor gives it up at the boot limit).\n\
             # TYPE kakehashi_firmware_bootcount gauge\n\
             kakehashi_firmware_bootcount {}\n\
             # HELP kakehashi_firmware_rolled_back 1 when the last trial was given up and the committed slot runs again.\n\
             # TYPE kakehashi_firmware_rolled_back gauge\n\
             kakehashi_firmware_rolled_back {}\n",
            label(&self.version),
            self.booted.as_deref().unwrap_or(""),
            self.committed,
            u8::from(self.trial.is_some()),
            self.bootcount,
            u8::from(self.rolled_back.is_some()),
        )
    }
}

/// A registered terminal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TerminalState {
    pub name: String,
    pub enabled: bool,
    /// `tls`, or `tls+wireguard` when it also has a WireGuard key.
    pub doors: String,
    /// Its latest entry among the audit log's newest ([`collect::AUDIT_WINDOW`]).
    #[serde(default)]
    pub last_seen: Option<String>,
}

/// A certificate close to its end.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Expiring {
    /// `server`, `uplink`, `clinic CA`.
    pub what: String,
    pub subject: String,
    pub not_after: String,
    /// Negative once expired.
    pub days_left: i64,
}

impl Report {
    /// The JSON the page's URL and the admin listener answer.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// The page's language: Japanese unless the browser prefers English or the page is asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Ja,
    En,
}

impl Lang {
    /// `?lang=en|ja` first, then the first language of `Accept-Language`.
    pub fn choose(query: Option<&str>, accept_language: Option<&str>) -> Lang {
        let asked = query.and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "lang")
                .map(|(_, v)| v.into_owned())
        });
        match asked.as_deref() {
            Some("en") => return Lang::En,
            Some("ja") => return Lang::Ja,
            _ => {}
        }
        let first = accept_language
            .and_then(|a| a.split(',').next())
            .map(|t| t.trim().to_ascii_lowercase());
        match first {
            Some(t) if t.starts_with("en") => Lang::En,
            _ => Lang::Ja,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::Ja => "ja",
            Lang::En => "en",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn japanese_first_english_when_asked_or_preferred() {
        assert_eq!(Lang::choose(None, None), Lang::Ja);
        assert_eq!(Lang::choose(None, Some("en-US,en;q=0.9,ja;q=0.8")), Lang::En);
        assert_eq!(Lang::choose(None, Some("ja,en;q=0.5")), Lang::Ja);
        assert_eq!(Lang::choose(Some("lang=en"), Some("ja")), Lang::En);
        assert_eq!(Lang::choose(Some("lang=ja"), Some("en")), Lang::Ja);
    }
}
