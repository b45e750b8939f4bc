//! The status page's cost when someone looks: rendering the HTML (staff's and the operator's
//! page) and the JSON from a report with a full set of outages, terminals and certificates.
//! Gathering the report is SQLite reads of the journal and the history, and for the operator the
//! audit log's newest entries (measured here on a log of 40,000); `bench/status.sh` measures the
//! whole answer through the gateway.
//!
//! `cargo bench -p kakehashi-gateway --bench status`.

use criterion::{Criterion, criterion_group, criterion_main};
use kakehashi_gateway::status::{Expiring, Lang, Operator, Outage, Report, TerminalState, render};

fn report(operator: bool) -> Report {
    Report {
        mode: "emergency".into(),
        since: "2026-12-04T12:00:00Z".into(),
        journal_pending: 42,
        journal_oldest: Some("2026-12-04T12:00:01Z".into()),
        journal_quarantined: 1,
        last_contact: Some("2026-12-04T11:59:59Z".into()),
        availability_24h: Some(0.9931),
        availability_7d: Some(0.9990),
        outages: (0..5)
            .map(|i| Outage {
                started: format!("2026-12-0{}T09:00:00Z", i + 1),
                ended: (i > 0).then(|| format!("2026-12-0{}T09:05:00Z", i + 1)),
                reason: "cloud down: no answer within 1.2s".into(),
            })
            .collect(),
        paths: ["fibre", "vpn"]
            .into_iter()
            .enumerate()
            .map(|(i, name)| kakehashi_gateway::status::PathState {
                name: name.into(),
                up: true,
                active: i == 0,
                since: None,
                last_contact: Some("2026-12-04T12:00:04Z".into()),
                availability: 0.999,
            })
            .collect(),
        generated: "2026-12-04T12:00:05Z".into(),
        operator: operator.then(|| Operator {
            terminals: (0..30)
                .map(|i| TerminalState {
                    name: format!("reception-{i}"),
                    enabled: i % 7 != 0,
                    doors: if i % 2 == 0 { "tls" } else { "tls+wireguard" }.into(),
                    last_seen: Some("2026-12-04T11:58:00.123Z".into()),
                })
                .collect(),
            expiring: vec![Expiring {
                what: "server".into(),
                subject: "CN=engine.demo-clinic.test".into(),
                not_after: "2026-12-14T00:00:00Z".into(),
                days_left: 9,
            }],
            crl_next_update: Some("2026-12-11T00:00:00Z".into()),
            crl_stale: false,
            audit_chain: "ok".into(),
            disk_free_bytes: Some(40 << 30),
            version: "0.1.0".into(),
            recent_refusals: (0..10)
                .map(|i| kakehashi_gateway::audit::Refusal {
                    time: format!("2026-12-04T11:5{i}:00.000Z"),
                    terminal: Some(format!("reception-{i}")),
                    user: Some("nurse".into()),
                    request: Some("POST /api21/medicalmodv2?class=01".into()),
                    reason: "the call needs scope write; the person has reference".into(),
                })
                .collect(),
            firmware: None,
            disk: None,
            backup: Some(kakehashi_gateway::backup::state::State {
                last_run: Some("2026-12-04T11:00:00.000Z".into()),
                last_ok: true,
                last_good: Some("2026-12-04T11:00:00.000Z".into()),
                ..Default::default()
            }),
        }),
    }
}

fn status(c: &mut Criterion) {
    let staff = report(false);
    let operator = report(true);
    eprintln!(
        "page weight: staff {} bytes, operator (30 terminals) {} bytes, JSON {} bytes",
        render::page(&staff, Lang::Ja).len(),
        render::page(&operator, Lang::Ja).len(),
        operator.json().len()
    );
    c.bench_function("status html (staff)", |b| {
        b.iter(|| render::page(&staff, Lang::Ja))
    });
    c.bench_function("status html (operator, 30 terminals)", |b| {
        b.iter(|| render::page(&operator, Lang::Ja))
    });
    c.bench_function("status json (operator)", |b| b.iter(|| operator.json()));
}

/// The operator's refusals and last-seen times, read from the newest
/// [`AUDIT_WINDOW`](kakehashi_gateway::status::collect::AUDIT_WINDOW) entries of a log twice
/// that long: 30 terminals, one entry in 50 a refusal.
fn audit_window(c: &mut Criterion) {
    use kakehashi_gateway::audit::{self, AuditLog, Decision, Entry};
    use kakehashi_gateway::status::collect::AUDIT_WINDOW;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = AuditLog::open(dir.path()).expect("the audit log");
    for i in 0..2 * AUDIT_WINDOW {
        let decision = if i % 50 == 0 {
            Decision::Deny
        } else {
            Decision::Allow
        };
        log.record_blocking(Entry {
            terminal: Some(format!("reception-{}", i % 30).into()),
            user: Some("nurse".into()),
            method: Some("GET".into()),
            path: Some("/api01rv2/patientgetv2?id=1".into()),
            ..Entry::new(decision, "api", "10.0.0.2:50000", "scope reference")
        });
    }
    log.close_blocking().expect("the audit log closed");
    c.bench_function("status operator: audit window (20,000 of 40,000)", |b| {
        b.iter(|| audit::recent(dir.path(), AUDIT_WINDOW, 10).expect("read"))
    });
}

criterion_group!(benches, status, audit_window);
criterion_main!(benches);
