//! Stage 1, admit: is the terminal still admitted, and can its access be recorded?
//!
//! A door admitted the terminal when the connection opened. A keep-alive connection lives long,
//! so when a reload has made a new snapshot since the last request, the terminal is checked
//! again against it (a revoked or disabled terminal loses its open connections too). And no
//! access is granted that the audit log cannot record: while it cannot be written, every request
//! is refused (the refusal itself waits in memory until the log is writable again).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

use engine_proxy::scope::Scopes;

use hyper::StatusCode;
use hyper::header::{self, HeaderValue};

use crate::audit::AuditLog;
use crate::doors::identity::{Identified, Proof};
use crate::doors::live::Live;
use crate::pipeline::reply::Refused;

/// Where a connection's terminal stands: the snapshot it was last checked against, and what the
/// inventory let it call then.
pub struct Standing {
    checked: AtomicU64,
    scopes: AtomicU8,
}

impl Standing {
    /// As the door admitted it.
    pub fn new(who: &Identified) -> Standing {
        Standing {
            checked: AtomicU64::new(who.generation),
            scopes: AtomicU8::new(who.scopes.bits()),
        }
    }

    /// What the terminal may call, as of its last check.
    pub fn scopes(&self) -> Scopes {
        Scopes::from_bits(self.scopes.load(Relaxed))
    }
}

/// What the stage consults: the current snapshot, and whether the audit log is writable.
pub struct Admit {
    pub live: Arc<Live>,
    pub audit: AuditLog,
}

impl Admit {
    /// `standing` moves on when the terminal passes against a newer snapshot, with the scopes
    /// that snapshot gives it.
    pub fn check(&self, proof: &Proof, standing: &Standing) -> Result<(), Refused> {
        // The common case, nothing reloaded since the last request, reads the generation only:
        // no snapshot is taken.
        if standing.checked.load(Relaxed) != self.live.generation() {
            let snapshot = self.live.now();
            let scopes = snapshot.admission.proof(proof);
            if let Err(why) = scopes {
                let mut refused = Refused::text(
                    StatusCode::FORBIDDEN,
                    &format!("this terminal is no longer admitted ({why})"),
                    format!("terminal no longer admitted: {why}"),
                );
                refused
                    .response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return Err(refused);
            }
            if let Ok(scopes) = scopes {
                standing.scopes.store(scopes.bits(), Relaxed);
            }
            standing.checked.store(snapshot.generation, Relaxed);
        }
        if self.audit.is_failing() {
            return Err(Refused::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the audit log cannot be written, so access is refused until it can; ask the \
                 clinic's administrator",
                crate::audit::FAILING,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Clinic;

    #[test]
    fn a_terminal_is_checked_again_only_after_a_reload() {
        let c = Clinic::new(&[("reception-1", true)], &[]);
        let admit = Admit {
            live: c.live.clone(),
            audit: c.audit.clone(),
        };
        let who = c.admitted("reception-1");
        let standing = Standing::new(&who);
        assert!(admit.check(&who.proof, &standing).is_ok());
        c.reload();
        assert!(
            admit.check(&who.proof, &standing).is_ok(),
            "nothing changed for it"
        );
        assert_eq!(
            standing.checked.load(Relaxed),
            1,
            "checked against the new snapshot"
        );
        assert_eq!(standing.scopes(), Scopes::ALL);
        c.set_scopes("reception-1", "reference".parse().unwrap());
        c.reload();
        assert!(admit.check(&who.proof, &standing).is_ok());
        assert_eq!(
            standing.scopes().to_string(),
            "reference",
            "a reload narrows it at once"
        );
        c.disable("reception-1");
        c.reload();
        let refused = admit.check(&who.proof, &standing).unwrap_err();
        assert_eq!(refused.response.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            refused.response.headers().get(header::CONNECTION).unwrap(),
            "close"
        );
        assert_eq!(
            refused.reason,
            "terminal no longer admitted: terminal \"reception-1\" is disabled"
        );
    }
}
