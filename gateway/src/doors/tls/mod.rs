//! The TLS door: one handshake for every TLS listener (the terminal listeners, TLS inside the
//! WireGuard tunnel, and the EST listener), and what makes its outcome an admitted terminal.
//!
//! The admission rule runs inside the handshake ([`policy`]), so a refused terminal never gets an
//! application byte through. A resumed session skipped that check, so it is run again here.
//! Every outcome is audited with its reason; a handshake has `limits.handshake_timeout_secs`.

pub mod policy;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::audit::{Decision, Entry};
use crate::config::ListenerKind;
use crate::doors::identity::{Identified, Proof, Terminal};
use crate::doors::slot::Slot;
use crate::doors::{Admitted, Doors};
use crate::io::Io;
use crate::metrics::Metrics;

/// A completed handshake: the stream and the certificate chain the client presented, if any.
pub struct Handshake<S> {
    pub stream: TlsStream<S>,
    /// Leaf first; empty when the client presented none (possible only where it is optional).
    pub chain: Vec<CertificateDer<'static>>,
    /// A resumed session, whose certificate the verifier did not see this time.
    pub resumed: bool,
}

/// Why there is no handshake: in the words the audit log records.
#[derive(Debug)]
pub enum Failed {
    /// The client broke off, spoke something else, or was refused by the verifier.
    Refused(String),
    /// Not finished within the time allowed.
    TimedOut(Duration),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Refused(why) => f.write_str(why),
            Failed::TimedOut(t) => write!(f, "no TLS handshake within {} s", t.as_secs()),
        }
    }
}

/// Runs the server side of a handshake with `config` (whose verifier decides on certificates).
pub async fn handshake<S: Io>(
    stream: S,
    config: Arc<ServerConfig>,
    timeout: Duration,
) -> Result<Handshake<S>, Failed> {
    let stream = match tokio::time::timeout(timeout, TlsAcceptor::from(config).accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(Failed::Refused(policy::describe_failure(&e))),
        Err(_) => return Err(Failed::TimedOut(timeout)),
    };
    let session = stream.get_ref().1;
    let chain = session
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    Ok(Handshake {
        stream,
        chain,
        resumed,
    })
}

impl<S> Handshake<S> {
    /// The protocol version and cipher suite, for the audit log.
    pub fn summary(&self) -> String {
        let session = self.stream.get_ref().1;
        format!(
            "{}, {}",
            session
                .protocol_version()
                .map_or("?".into(), |v| format!("{v:?}")),
            session
                .negotiated_cipher_suite()
                .map_or("?".into(), |s| format!("{:?}", s.suite())),
        )
    }
}

/// The terminal listeners' door: the handshake, the admission rule (inside it, or again for a
/// resumed session), the terminal's identity; allow or deny, audited on the route `route`.
pub async fn admit<S: Io>(
    doors: &Doors,
    stream: S,
    source: SocketAddr,
    slot: Slot,
    route: &str,
    kind: ListenerKind,
) -> Option<Admitted<TlsStream<S>>> {
    let started = Instant::now();
    let snapshot = doors.live.now();
    let config = match kind {
        ListenerKind::Api => snapshot.api_tls.clone(),
        ListenerKind::Tcp => snapshot.tcp_tls.clone(),
    };
    let entry = |decision, reason: String| Entry {
        decision,
        reason: reason.into(),
        source: source.to_string().into(),
        route: route.to_owned().into(),
        duration_ms: started.elapsed().as_millis() as u64,
        ..Entry::default()
    };
    let handshake = match handshake(stream, config, doors.handshake_timeout).await {
        Ok(h) => h,
        Err(failed) => {
            let counter = match failed {
                Failed::Refused(_) => &doors.metrics.handshake_failures_total,
                Failed::TimedOut(_) => &doors.metrics.handshake_timeouts_total,
            };
            Metrics::inc(counter);
            doors.audit.record_soon(entry(Decision::Deny, failed.to_string()));
            return None;
        }
    };
    let summary = handshake.summary();
    let Handshake {
        stream,
        chain,
        resumed,
    } = handshake;
    let proof = Proof::Certificate(chain);
    // A full handshake ran the verifier just now, with this snapshot. A resumed one did not:
    // its certificate was checked when the session began (in this snapshot: a reload starts new
    // sessions), so check validity and the rest again now.
    let checked = match resumed {
        true => snapshot
            .admission
            .proof(&proof)
            .map(drop)
            .map_err(|r| r.to_string()),
        false => Ok(()),
    };
    let terminal = checked.and_then(|()| match &proof {
        Proof::Certificate(chain) => {
            Terminal::from_certificate(chain.first().ok_or("no client certificate")?)
        }
        Proof::WireGuard(_) => Err("not a certificate".into()),
    });
    let (terminal, scopes) = match terminal.and_then(|t| {
        let scopes = snapshot
            .admission
            .registered(&t.name)
            .map_err(|r| r.to_string())?;
        Ok((t, scopes))
    }) {
        Ok(admitted) => admitted,
        Err(why) => {
            Metrics::inc(&doors.metrics.handshake_failures_total);
            doors.audit.record_soon(entry(Decision::Deny, why));
            return None;
        }
    };
    Metrics::inc(&doors.metrics.handshakes_total);
    doors.audit.record_soon(Entry {
        terminal: Some(terminal.name.clone().into()),
        ..entry(Decision::Allow, format!("terminal admitted ({summary})"))
    });
    Some(Admitted {
        who: Identified {
            terminal,
            proof,
            generation: snapshot.generation,
            scopes,
        },
        stream,
        source,
        slot,
    })
}
