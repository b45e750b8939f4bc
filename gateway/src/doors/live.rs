//! What admits terminals now, and what a reload replaces.
//!
//! The reloadable part ([`Snapshot`]: certificates, CA, CRL, inventory) is immutable, behind one
//! lock, swapped whole on SIGHUP: a connection works with one consistent snapshot, and a failed
//! reload leaves the previous one in place. Established connections are checked against a new
//! snapshot on their next request (or at once, for streams: [`Live::revoked`]), so a terminal
//! revoked or disabled by the reload loses its connections too, while every other connection
//! carries on undisturbed.

use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use tokio::sync::watch;

use crate::config::{Config, Tls};
use crate::doors::admission::{Admission, Refusal};
use crate::doors::identity::Proof;
use crate::doors::tls::policy::{self, TlsError};
use crate::store::{self, StoreError, inventory::Inventory};

/// Why a snapshot could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// The reloadable snapshot.
pub struct Snapshot {
    /// Counts reloads; a connection that saw an older one re-checks its terminal.
    pub generation: u64,
    pub admission: Admission,
    /// For api listeners (ALPN http/1.1) and for raw TCP listeners (no ALPN).
    pub api_tls: Arc<ServerConfig>,
    pub tcp_tls: Arc<ServerConfig>,
    /// For the EST listener (client certificate optional), when there is one.
    pub est_tls: Option<Arc<ServerConfig>>,
    /// When the loaded CRL's next update is due; past it the CRL is still enforced, and
    /// `crl_stale` and a log warning say a fresh one is late.
    pub crl_next_update: Option<time::OffsetDateTime>,
}

impl Snapshot {
    /// Reads the inventory, the clinic CA, the CRL and the gateway's certificate.
    pub fn load(config: &Config, generation: u64) -> Result<Snapshot, LoadError> {
        let inventory = Arc::new(Inventory::load(&store::open(&config.data_dir)?)?);
        Snapshot::with_inventory(&config.tls, config.est.is_some(), inventory, generation)
    }

    /// The same, with an inventory already read (`gateway check` reads none from a data
    /// directory that does not exist yet); `est`: with the EST listener's TLS configuration.
    pub fn with_inventory(
        tls: &Tls,
        est: bool,
        inventory: Arc<Inventory>,
        generation: u64,
    ) -> Result<Snapshot, LoadError> {
        let admission = Admission::new(inventory, policy::webpki(tls, false)?);
        let verifier = policy::terminal_verifier(admission.clone());
        let est_tls = match est {
            true => Some(policy::server_config(
                tls,
                policy::webpki(tls, true)?,
                &[b"http/1.1"],
            )?),
            false => None,
        };
        Ok(Snapshot {
            generation,
            api_tls: policy::server_config(tls, verifier.clone(), &[b"http/1.1"])?,
            tcp_tls: policy::server_config(tls, verifier, &[])?,
            est_tls,
            crl_next_update: tls.crl.as_deref().and_then(policy::crl_next_update),
            admission,
        })
    }

    /// Whether the loaded CRL is past its next update (and since when).
    pub fn crl_stale(&self) -> Option<time::OffsetDateTime> {
        self.crl_next_update
            .filter(|t| *t <= time::OffsetDateTime::now_utc())
    }

    pub fn inventory(&self) -> &Arc<Inventory> {
        self.admission.inventory()
    }
}

/// The current snapshot, and news of the next one.
pub struct Live {
    current: RwLock<Arc<Snapshot>>,
    /// The generation of the current snapshot, for those that wait for a reload.
    reloaded: watch::Sender<u64>,
}

impl Live {
    pub fn new(first: Snapshot) -> Live {
        Live {
            reloaded: watch::channel(first.generation).0,
            current: RwLock::new(Arc::new(first)),
        }
    }

    /// The current snapshot.
    pub fn now(&self) -> Arc<Snapshot> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current snapshot's generation, without taking the snapshot: what a keep-alive
    /// connection reads on every request to see whether it must check its terminal again.
    pub fn generation(&self) -> u64 {
        *self.reloaded.borrow()
    }

    /// Puts a new snapshot in place; every connection checks its terminal against it.
    pub fn replace(&self, next: Snapshot) {
        let generation = next.generation;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        self.reloaded.send_replace(generation);
    }

    /// Resolves when a reload stops admitting this proof, with the reason: what ends a
    /// long-lived stream (raw TCP, WebSocket) of a terminal that was revoked or disabled.
    pub async fn revoked(&self, proof: &Proof) -> Refusal {
        let mut reloads = self.reloaded.subscribe();
        while reloads.changed().await.is_ok() {
            if let Err(why) = self.now().admission.proof(proof) {
                return why;
            }
        }
        std::future::pending().await
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::Clinic;

    #[tokio::test]
    async fn a_reload_that_refuses_a_terminal_ends_its_streams() {
        let c = Clinic::new(&[("reception-1", true), ("reception-2", true)], &[]);
        let (one, two) = (c.admitted("reception-1"), c.admitted("reception-2"));
        let live = c.live.clone();
        let watching = tokio::spawn(async move { live.revoked(&one.proof).await.to_string() });
        // A reload that changes nothing for it, then one that disables the other terminal.
        c.reload();
        c.disable("reception-2");
        c.reload();
        tokio::task::yield_now().await;
        assert!(!watching.is_finished(), "its terminal is still admitted");
        assert!(c.live.now().admission.proof(&two.proof).is_err());
        c.disable("reception-1");
        c.reload();
        let why = tokio::time::timeout(std::time::Duration::from_secs(5), watching)
            .await
            .expect("the stream ends")
            .unwrap();
        assert_eq!(why, "terminal \"reception-1\" is disabled");
    }
}
