//! Counters for Prometheus, in its text exposition format.
//!
//! A fixed set of atomics: recording is one relaxed add on the hot path, and the format is a
//! dozen lines, so a metrics crate would cost more than it saves.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! metrics {
    ($($name:ident: $kind:literal, $help:literal;)*) => {
        /// Every counter and gauge the gateway exports.
        #[derive(Default)]
        pub struct Metrics {
            $(pub $name: AtomicU64,)*
        }

        impl Metrics {
            /// The Prometheus text format of every metric.
            pub fn render(&self) -> String {
                let mut out = String::new();
                $(
                    let _ = writeln!(out, "# HELP kakehashi_{} {}", stringify!($name), $help);
                    let _ = writeln!(out, "# TYPE kakehashi_{} {}", stringify!($name), $kind);
                    let _ = writeln!(out, "kakehashi_{} {}", stringify!($name), self.$name.load(Relaxed));
                )*
                out
            }
        }
    };
}

metrics! {
    connections_accepted_total: "counter", "TCP connections accepted on terminal listeners.";
    connections_refused_total: "counter", "Connections closed at once because limits.max_connections was reached.";
    connections_open: "gauge", "Connections open now, each holding one of limits.max_connections slots (terminal listeners, WireGuard tunnels, EST).";
    handshakes_total: "counter", "TLS handshakes completed with an admitted terminal.";
    handshake_failures_total: "counter", "TLS handshakes that failed or were refused (certificate, inventory, protocol).";
    handshake_timeouts_total: "counter", "TLS handshakes not finished within limits.handshake_timeout_secs.";
    requests_total: "counter", "HTTP requests answered on api listeners.";
    requests_denied_total: "counter", "HTTP requests refused by the gateway (person, terminal, scope, limits).";
    requests_scope_client_total: "counter", "Calls allowed that needed the client scope.";
    requests_scope_reference_total: "counter", "Calls allowed that needed the reference scope.";
    requests_scope_write_total: "counter", "Calls allowed that needed the write scope (unknown calls allowed by authorize.unknown_calls included).";
    requests_denied_scope_client_total: "counter", "Calls refused (403) for want of the client scope.";
    requests_denied_scope_reference_total: "counter", "Calls refused (403) for want of the reference scope.";
    requests_denied_scope_write_total: "counter", "Calls refused (403) for want of the write scope.";
    requests_denied_unknown_call_total: "counter", "Calls refused (403) because the engine API rules do not know them (authorize.unknown_calls = \"deny\").";
    requests_denied_noncanonical_total: "counter", "Requests refused (400) because their path is not canonical (dot-segments, //, encoded separators).";
    streams_denied_scope_total: "counter", "Raw TCP streams refused because terminal or person lacks the route's scope.";
    journal_no_longer_allowed_total: "counter", "Journaled writes quarantined at replay because their terminal or person may no longer make them.";
    auth_failures_total: "counter", "Wrong or unknown ID and password.";
    password_checks_total: "counter", "ID and password checks that ran argon2id (the others were answered from the auth.cache_secs cache).";
    lockouts_total: "counter", "Requests refused because a user or terminal is locked out.";
    upstream_errors_total: "counter", "Requests the engine did not answer (connect error, timeout).";
    upstream_responses_5xx_total: "counter", "Engine answers with a 5xx status.";
    tcp_streams_total: "counter", "Raw TCP streams forwarded.";
    bytes_from_terminals_total: "counter", "Body and stream bytes received from terminals.";
    bytes_to_terminals_total: "counter", "Body and stream bytes sent to terminals.";
    reloads_total: "counter", "Successful reloads (SIGHUP, a new CRL, an imported bundle).";
    reload_failures_total: "counter", "Reloads that failed (the previous configuration stays).";
    terminals_enabled: "gauge", "Enabled terminals in the loaded inventory.";
    hybrid_mode: "gauge", "The hybrid state: 0 normal, 1 emergency (the local engine answers), 2 recovery (handing the journal back).";
    hybrid_changes_total: "counter", "Changes of the hybrid state.";
    probes_total: "counter", "Health probes sent to the cloud engine.";
    probe_failures_total: "counter", "Health probes the cloud did not answer in time or answered 5xx.";
    uplink_path_changes_total: "counter", "Paths to the cloud that went down or came back while the hybrid state stayed as it was (another path carried the clinic).";
    uplink_path: "gauge", "The path carrying new calls to the cloud (0: upstream.url, then [[upstream.path]] in order); per-path figures are labelled kakehashi_uplink_path_*.";
    cache_answers_total: "counter", "Reads answered from the local cache because the cloud could not answer.";
    journal_appends_total: "counter", "Writes stored in the journal because the cloud could not take them.";
    journal_pending: "gauge", "Journaled writes not yet handed back to the cloud.";
    journal_delivered_total: "counter", "Journaled writes the cloud took.";
    journal_quarantined_total: "counter", "Journaled writes the cloud refused; they wait for an operator (kakehashi journal).";
    journal_retries_total: "counter", "Attempts to hand a journaled write back that did not get through.";
    refused_offline_total: "counter", "Calls refused in the engine's format because the cloud could not answer (not cached, cloud-only, journal failure).";
    onprem_answers_total: "counter", "Calls answered by the on-premises engine.";
    wg_peers: "gauge", "WireGuard peers loaded from the inventory (enabled terminals with a key).";
    wg_handshakes_total: "counter", "WireGuard handshakes answered for known peers.";
    wg_packets_received_total: "counter", "Authenticated WireGuard data packets delivered inside the tunnel.";
    wg_dropped_unknown_key_total: "counter", "WireGuard packets dropped: the key or receiver index belongs to no peer.";
    wg_dropped_invalid_total: "counter", "WireGuard packets dropped: malformed, truncated, replayed or failing authentication.";
    wg_dropped_spoofed_total: "counter", "WireGuard packets dropped: the inner source address is not the peer's.";
    wg_dropped_unroutable_total: "counter", "Packets dropped: inside the tunnel, to an address other than the gateway's (or to no peer).";
    wg_cookies_sent_total: "counter", "Cookie replies sent to handshakes under load (the rate limiter).";
    crl_stale: "gauge", "1 while the loaded CRL is past its next update (it is still enforced; publish a fresh one), else 0.";
    est_enrollments_total: "counter", "Terminals enrolled through EST simpleenroll with a one-time token.";
    est_renewals_total: "counter", "Terminal certificates renewed through EST simplereenroll.";
    est_refusals_total: "counter", "EST requests refused (token, certificate, CSR); each is in the audit log with its reason.";
    terminal_certs_expiring_30d: "gauge", "Valid terminal certificates of the appliance's CA ([est] ca_dir) that expire within 30 days.";
    backup_last_ok: "gauge", "1 when the last `kakehashi backup run` wrote and verified its archive, 0 when it failed or none ran.";
    disk_budget_bytes: "gauge", "The data directory's disk budget ([storage] budget; default half of its file system).";
    disk_used_bytes: "gauge", "What the data directory takes on disk now (allocated blocks; the firmware slots left out).";
    disk_audit_bytes: "gauge", "What the local audit log takes (its segments in audit/).";
    disk_journal_bytes: "gauge", "What the journal takes: writes not yet handed back, never pruned.";
    disk_cache_bytes: "gauge", "What the read cache takes (it evicts within a tenth of the budget).";
    disk_budget_alert: "gauge", "1 when the data directory uses 80 % of its budget or more (the status page says why), else 0.";
    disk_journal_alert: "gauge", "1 when the journal alone takes 25 % of the budget or more: it is never pruned, so only handing it back (or an operator) frees it.";
    audit_offbox_id: "gauge", "The highest audit entry a verified backup holds: sealed segments up to it may be pruned (0: none).";
    backup_last_success_timestamp_seconds: "gauge", "When the last verified backup was written (Unix seconds; 0: never). Alert when it is older than the schedule allows.";
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }
    pub fn dec(gauge: &AtomicU64) {
        gauge.fetch_sub(1, Relaxed);
    }
    pub fn set(gauge: &AtomicU64, n: u64) {
        gauge.store(n, Relaxed);
    }
}
