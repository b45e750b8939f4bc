//! The raw TCP route: bytes from an admitted terminal to a fixed upstream, for protocols the
//! gateway does not understand.
//!
//! The same stages as an api request, as far as a stream has them: admit (the audit log must be
//! writable), authenticate (a person signed in on this terminal, when the route requires it: a
//! stream carries no credentials of its own), forward (the upstream the hybrid state chooses,
//! `engine_proxy::stream`), and one audit entry with the bytes moved when it ends. A reload that
//! stops admitting the terminal ends the stream.

use std::sync::Arc;
use std::time::Instant;

use engine_proxy::health::Health;
use engine_proxy::scope::{Scope, Scopes};
use engine_proxy::stream::Targets;

use crate::audit::{AuditLog, Decision, Entry};
use crate::auth::People;
use crate::doors::Admitted;
use crate::doors::live::Live;
use crate::io::Io;
use crate::metrics::Metrics;
use crate::pipeline::relay::relay;
use crate::shutdown::Shutdown;

/// One raw TCP route, fixed at start.
pub struct StreamRoute {
    pub name: Arc<str>,
    pub require_login: bool,
    /// What terminal and signed-in person must both hold.
    pub scope: Scope,
    pub targets: Targets,
}

/// What a stream uses of the gateway.
pub struct Streams {
    pub live: Arc<Live>,
    pub people: Arc<People>,
    pub health: Arc<Health>,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
}

impl Streams {
    /// Carries one terminal's stream to the route's upstream, and audits it.
    pub async fn serve<S: Io>(&self, route: &StreamRoute, admitted: Admitted<S>, stopping: Shutdown) {
        let started = Instant::now();
        // The slot is held until the stream ends.
        let Admitted {
            mut stream,
            who,
            source,
            slot: _slot,
        } = admitted;
        let mut entry = Entry {
            terminal: Some(who.terminal.name.clone().into()),
            source: source.to_string().into(),
            route: (&route.name).into(),
            upstream: Some(route.targets.cloud.address.clone().into()),
            ..Entry::default()
        };
        // New streams follow the hybrid state; streams in flight stay where they are.
        let person = match route.require_login {
            true => self.people.signed_in(&who.terminal),
            false => Some(Scopes::ALL),
        };
        let target = if self.audit.is_failing() {
            Err(crate::audit::FAILING.to_owned())
        } else if let Some(why) = refusal(route.scope, who.scopes, person) {
            Err(why)
        } else {
            route
                .targets
                .choose(self.health.mode())
                .map_err(|e| e.to_string())
        };
        let target = match target {
            Ok(target) => target,
            Err(why) => {
                if why.starts_with("refused: the route needs") {
                    Metrics::inc(&self.metrics.streams_denied_scope_total);
                }
                entry.decision = Decision::Deny;
                entry.reason = why.into();
                self.audit.record_soon(entry);
                return;
            }
        };
        entry.upstream = Some(target.address.clone().into());
        let mut upstream = match route.targets.connect(target).await {
            Ok(s) => s,
            Err(e) => {
                Metrics::inc(&self.metrics.upstream_errors_total);
                entry.decision = Decision::Allow;
                entry.reason = format!("allowed; upstream unreachable: {e}").into();
                self.audit.record_soon(entry);
                return;
            }
        };
        Metrics::inc(&self.metrics.tcp_streams_total);
        entry.decision = Decision::Allow;
        entry.reason = "allowed".into();
        let sides = (&mut stream, &mut *upstream);
        relay(sides, &self.live, &who.proof, stopping, &mut entry, "stream").await;
        Metrics::add(&self.metrics.bytes_from_terminals_total, entry.bytes_in);
        Metrics::add(&self.metrics.bytes_to_terminals_total, entry.bytes_out);
        entry.duration_ms = started.elapsed().as_millis() as u64;
        self.audit.record_soon(entry);
    }
}

/// Why a stream may not open: nobody signed in (where the route requires it), or the route's
/// scope missing from the terminal's or the person's.
fn refusal(needed: Scope, terminal: Scopes, person: Option<Scopes>) -> Option<String> {
    let Some(person) = person else {
        return Some("no person signed in on this terminal".to_owned());
    };
    crate::pipeline::authorize::lacking(needed, terminal, person).map(|_| {
        format!("refused: the route needs scope {needed}; terminal has {terminal}, person has {person}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_needs_a_person_where_required_and_the_routes_scope_from_both() {
        let client: Scopes = "client".parse().unwrap();
        assert_eq!(
            refusal(Scope::Client, Scopes::ALL, None).as_deref(),
            Some("no person signed in on this terminal")
        );
        assert!(refusal(Scope::Client, Scopes::ALL, Some(client)).is_none());
        assert!(refusal(Scope::Client, client, Some(Scopes::ALL)).is_none());
        assert_eq!(
            refusal(Scope::Write, client, Some(Scopes::ALL)).as_deref(),
            Some(
                "refused: the route needs scope write; terminal has client, person has client,reference,write"
            )
        );
    }
}
