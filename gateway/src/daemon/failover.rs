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

use crate::audit::{Decision, Entry};
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
    tokio::spawn(health::watch_cloud(
        failover.health.clone(),
        gateway.upstream()?,
        probe,
    ));
    if let Some(journal) = gateway.journal() {
        let (observer, asked) = (gateway.clone(), gateway.clone());
        tokio::spawn(replay::hand_back(
            journal.clone(),
            failover.health.clone(),
            gateway.upstream()?,
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
    changes.mark_unchanged();
    while changes.changed().await.is_ok() {
        let change = changes.borrow_and_update().clone();
        let m = &gateway.metrics;
        Metrics::inc(&m.hybrid_changes_total);
        Metrics::set(&m.hybrid_mode, change.mode as u64);
        let reason = format!("{}: {}", change.mode.as_str(), change.reason);
        match change.mode {
            Mode::Emergency => {
                tracing::warn!(mode = change.mode.as_str(), reason = %change.reason, "hybrid state")
            }
            _ => tracing::info!(mode = change.mode.as_str(), reason = %change.reason, "hybrid state"),
        }
        let upstream = gateway.config.upstream.url.clone();
        gateway.audit.record_soon(Entry {
            upstream: Some(upstream),
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
        terminal: entry.terminal.clone(),
        user: entry.user.clone(),
        method: Some(entry.method.clone()),
        path: Some(entry.path.clone()),
        upstream: Some(gateway.config.upstream.url.clone()),
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
    Metrics::set(&m.probes_total, health.probes_total.load(Relaxed));
    Metrics::set(&m.probe_failures_total, health.probe_failures_total.load(Relaxed));
    if let Some(journal) = gateway.journal() {
        Metrics::set(&m.journal_pending, journal.pending());
    }
}
