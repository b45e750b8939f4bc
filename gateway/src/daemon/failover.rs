//! The gateway's side of failover: the tasks that watch the cloud and hand the journal back, and
//! what they tell the operator (logs, metrics, audit log).
//!
//! The decisions are `engine_proxy`'s ([`engine_proxy::health`], [`engine_proxy::replay`]);
//! this module runs them on the main runtime and records every change of state and every
//! journal entry handed back, so the audit log tells the whole story of an outage.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use engine_proxy::failover::codes;
use engine_proxy::format::{self, Format};
use engine_proxy::health::{self, Mode, Probe};
use engine_proxy::journal::{Entry as JournalEntry, Settlement};
use engine_proxy::replay;
use engine_proxy::rules::Call;
use engine_proxy::scope::{Scope, Scopes};
use hyper::body::Bytes;
use hyper::header::HeaderValue;

use crate::audit::{Decision, Entry, Text};
use crate::auth::Standing;
use crate::daemon::gateway::{Gateway, StartError};
use crate::metrics::Metrics;
use crate::pipeline::authorize;

/// The route name of these entries in the audit log.
const ROUTE: &str = "hybrid";

/// Starts the prober, the replayer (with a local journal) and the recorder of state changes.
pub fn start(gateway: &Arc<Gateway>) -> Result<(), StartError> {
    let failover = &gateway.failover;
    let config = &gateway.config.failover;
    let (method, path) = config.probe().unwrap_or((hyper::Method::POST, "/"));
    let probe = Probe {
        method,
        path: path.to_owned(),
        body: config.probe_body.clone(),
        authorization: gateway.people.clinic_credential(),
    };
    for tunnel in gateway.take_tunnels() {
        tokio::spawn(tunnel.run());
    }
    for (path, upstream) in gateway.paths()?.into_iter().enumerate() {
        tokio::spawn(health::watch_path(
            failover.health.clone(),
            path,
            upstream,
            probe.clone(),
        ));
    }
    if let Some(journal) = gateway.journal() {
        let (observer, asked) = (gateway.clone(), gateway.clone());
        tokio::spawn(replay::hand_back(
            journal.clone(),
            failover.health.clone(),
            gateway.paths()?,
            Box::new(move |entry| caller(&asked, entry)),
            Box::new(move |entry, settlement| handed_back(&observer, entry, settlement)),
        ));
    }
    tokio::spawn(record_changes(gateway.clone()));
    if let Some(history) = &gateway.status.history {
        tokio::spawn(engine_proxy::history::keep(
            history.clone(),
            failover.health.clone(),
        ));
    }
    Ok(())
}

/// Logs, counts and audits every change of the hybrid state.
async fn record_changes(gateway: Arc<Gateway>) {
    let mut changes = gateway.failover.health.subscribe();
    let mut mode = changes.borrow_and_update().mode;
    while changes.changed().await.is_ok() {
        let change = changes.borrow_and_update().clone();
        let m = &gateway.metrics;
        if change.mode != mode {
            Metrics::inc(&m.hybrid_changes_total);
            mode = change.mode;
        } else {
            Metrics::inc(&m.uplink_path_changes_total);
        }
        Metrics::set(&m.hybrid_mode, change.mode as u64);
        let reason = format!("{}: {}", change.mode.as_str(), change.reason);
        match change.mode {
            Mode::Emergency => {
                tracing::warn!(mode = change.mode.as_str(), reason = %change.reason, "hybrid state")
            }
            _ => tracing::info!(mode = change.mode.as_str(), reason = %change.reason, "hybrid state"),
        }
        if let Some(path) = change.path {
            Metrics::set(&m.uplink_path, path as u64);
        }
        gateway.audit.record_soon(Entry {
            upstream: Some(path_label(&gateway, change.path)),
            ..Entry::new(Decision::Allow, ROUTE, "gateway", &reason)
        });
    }
}

/// Who a journaled write is made for now ([`replay::Caller`]): its terminal must still be
/// registered and enabled, its person still there and not locked, and both must hold the scope
/// the engine API rules give the call today. Otherwise it is quarantined with the reason.
fn caller(gateway: &Gateway, entry: &JournalEntry) -> Result<HeaderValue, Settlement> {
    let refuse = |why: String| Settlement::Quarantined {
        status: None,
        api_result: Some(codes::NO_LONGER_ALLOWED.into()),
        answer: Bytes::new(),
        reason: format!("{NO_LONGER_ALLOWED}: {why}"),
    };
    let terminal = match &entry.terminal {
        None => Scopes::ALL,
        Some(name) => gateway
            .live
            .now()
            .admission
            .registered(name)
            .map_err(|r| refuse(r.to_string()))?,
    };
    let (credential, person) = match gateway.people.standing(entry.user.as_deref()) {
        Standing::Allowed(credential, scopes) => (credential, scopes),
        Standing::Gone(why) => return Err(refuse(why)),
        Standing::Unknown(e) => {
            return Err(Settlement::Retry {
                error: format!("cannot read the user database: {e}"),
            });
        }
    };
    let (path, query) = match entry.path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (entry.path.as_str(), None),
    };
    let number = format::request_number(Format::from_query(query), &entry.body);
    let call = Call {
        request_number: number.as_deref(),
        ..Call::new(path, query)
    };
    let needed = gateway
        .failover
        .rules
        .classify(&call)
        .map_or(Scope::Write, |r| r.scope);
    match authorize::lacking(needed, terminal, person) {
        None => Ok(credential),
        Some(_) => Err(refuse(format!(
            "the write needs scope {needed}; terminal has {terminal}, person has {person}"
        ))),
    }
}

/// How the reason of a write quarantined by [`caller`] begins.
const NO_LONGER_ALLOWED: &str = "no longer allowed";

/// One attempt to hand a journaled write back, in the audit log and metrics.
fn handed_back(gateway: &Gateway, entry: &JournalEntry, settlement: &Settlement) {
    let m = &gateway.metrics;
    let (reason, status) = match settlement {
        Settlement::Delivered {
            status, api_result, ..
        } => {
            Metrics::inc(&m.journal_delivered_total);
            let result = api_result.as_deref().unwrap_or("none");
            (
                format!(
                    "journal entry #{} delivered to the cloud (Api_Result {result})",
                    entry.id
                ),
                Some(*status),
            )
        }
        Settlement::Quarantined { status, reason, .. } => {
            Metrics::inc(&m.journal_quarantined_total);
            if reason.starts_with(NO_LONGER_ALLOWED) {
                Metrics::inc(&m.journal_no_longer_allowed_total);
            }
            tracing::warn!(entry = entry.id, %reason, "journal entry quarantined");
            (
                format!("journal entry #{} quarantined: {reason}", entry.id),
                *status,
            )
        }
        Settlement::Retry { error } => {
            Metrics::inc(&m.journal_retries_total);
            (
                format!("journal entry #{} not delivered, will retry: {error}", entry.id),
                None,
            )
        }
    };
    let decision = match settlement {
        Settlement::Quarantined { .. } => Decision::Deny,
        _ => Decision::Allow,
    };
    gateway.audit.record_soon(Entry {
        terminal: entry.terminal.clone().map(Text::from),
        user: entry.user.clone().map(Text::from),
        method: Some(entry.method.clone().into()),
        path: Some(entry.path.clone()),
        upstream: Some(path_label(gateway, gateway.failover.health.preferred())),
        status,
        bytes_in: entry.body.len() as u64,
        ..Entry::new(decision, "journal", "gateway", &reason)
    });
}

/// Copies the failover figures kept elsewhere into the metrics, before they are rendered.
pub fn refresh_metrics(gateway: &Gateway) {
    let m = &gateway.metrics;
    let health = &gateway.failover.health;
    Metrics::set(&m.hybrid_mode, health.mode() as u64);
    let sum = |count: fn(&health::Link) -> &std::sync::atomic::AtomicU64| {
        health.links().iter().map(|l| count(l).load(Relaxed)).sum()
    };
    Metrics::set(&m.probes_total, sum(|l| &l.probes_total));
    Metrics::set(&m.probe_failures_total, sum(|l| &l.probe_failures_total));
    if let Some(path) = health.preferred() {
        Metrics::set(&m.uplink_path, path as u64);
    }
    if let Some(journal) = gateway.journal() {
        Metrics::set(&m.journal_pending, journal.pending());
    }
}

/// The engine a path reaches, for the audit log ([`Gateway::path_labels`]). `None`: every path
/// is down.
pub fn path_label(gateway: &Gateway, path: Option<usize>) -> Text {
    let labels = &gateway.path_labels;
    match (path, labels.len()) {
        (_, 1) => Text::from(&labels[0]),
        (Some(p), _) if p < labels.len() => Text::from(&labels[p]),
        _ => Text::Static("no path"),
    }
}

/// Each path's figures, labelled by its name, in the Prometheus text format (after
/// [`Metrics::render`]'s fixed set).
pub fn render_paths(gateway: &Gateway) -> String {
    use std::fmt::Write as _;
    let health = &gateway.failover.health;
    let views = health.paths();
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(usize) -> String| {
        let _ = writeln!(out, "# HELP kakehashi_{name} {help}");
        let _ = writeln!(out, "# TYPE kakehashi_{name} {kind}");
        for (i, view) in views.iter().enumerate() {
            let _ = writeln!(out, "kakehashi_{name}{{path=\"{}\"}} {}", view.name, value(i));
        }
    };
    let links = health.links();
    family(
        "uplink_path_up",
        "gauge",
        "Whether the path reaches the cloud (1) or is down (0).",
        &|i| u8::from(views[i].up).to_string(),
    );
    family(
        "uplink_path_active",
        "gauge",
        "Whether the path carries new calls now.",
        &|i| u8::from(views[i].active).to_string(),
    );
    family(
        "uplink_path_probes_total",
        "counter",
        "Health probes sent over the path.",
        &|i| links[i].probes_total.load(Relaxed).to_string(),
    );
    family(
        "uplink_path_probe_failures_total",
        "counter",
        "Probes over the path unanswered in time or answered 5xx.",
        &|i| links[i].probe_failures_total.load(Relaxed).to_string(),
    );
    family(
        "uplink_path_deadline_seconds",
        "gauge",
        "How long a call waits on the path before another path (or the cache) is tried; follows its latency.",
        &|i| format!("{:.3}", views[i].deadline.as_secs_f64()),
    );
    family(
        "uplink_path_availability_ratio",
        "gauge",
        "The share of time the path has been up since the gateway started.",
        &|i| format!("{:.6}", views[i].availability),
    );
    out
}
