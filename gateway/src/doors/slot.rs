//! Connection slots: `limits.max_connections` bounds what every door together may hold open.
//!
//! A connection takes a slot before it costs anything (a handshake, a tunnel socket's buffers)
//! and holds it until it closes, whichever door it came through (TLS, WireGuard, EST). The slot
//! also keeps the `connections_open` gauge, and a connection turned away for want of one counts
//! in `connections_refused_total`, so the limit and its figures cannot disagree.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::doors::balance::Served;
use crate::metrics::Metrics;

/// Every slot of the gateway; cheap to clone.
#[derive(Clone)]
pub struct Slots {
    semaphore: Arc<Semaphore>,
    total: u32,
    metrics: Arc<Metrics>,
}

/// One open connection's slot, given back when its last holder drops it, and the connection's
/// count on the worker serving it ([`Balance`]), ended with the holder that serves it. Whatever
/// the connection turns into (a relayed WebSocket after an upgrade, a raw stream) carries its
/// slot along, so that both the limit and the balance see it until it closes.
pub struct Slot {
    held: Hold,
    serving: Option<Served>,
}

/// A TLS connection has one holder, so its slot is the permit itself (no allocation); a tunnel
/// connection has two, the userspace stack's socket and the route serving it ([`Slot::share`]).
enum Hold {
    Own(Held),
    Shared(Arc<Held>),
}

impl Slot {
    /// The slot for two holders: it is given back when both have let it go. The first keeps the
    /// count on a worker, if it had one.
    pub fn share(self) -> (Slot, Slot) {
        let shared = match self.held {
            Hold::Own(held) => Arc::new(held),
            Hold::Shared(shared) => shared,
        };
        let other = Slot {
            held: Hold::Shared(shared.clone()),
            serving: None,
        };
        let this = Slot {
            held: Hold::Shared(shared),
            serving: self.serving,
        };
        (this, other)
    }

    /// The slot of a connection that `served` counts on its worker, for as long as it is held.
    pub fn serving(mut self, served: Served) -> Slot {
        self.serving = Some(served);
        self
    }
}

/// The permit itself; its drop closes the connection's account.
pub struct Held {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Slots {
    pub fn new(total: usize, metrics: Arc<Metrics>) -> Slots {
        let total = u32::try_from(total)
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32);
        Slots {
            semaphore: Arc::new(Semaphore::new(total as usize)),
            total,
            metrics,
        }
    }

    /// A slot for a new connection, or `None` (counted) when all are taken: the caller closes
    /// the connection at once.
    pub fn take(&self) -> Option<Slot> {
        match self.semaphore.clone().try_acquire_owned() {
            Ok(permit) => {
                Metrics::inc(&self.metrics.connections_open);
                let held = Held {
                    _permit: permit,
                    metrics: self.metrics.clone(),
                };
                Some(Slot {
                    held: Hold::Own(held),
                    serving: None,
                })
            }
            Err(_) => {
                Metrics::inc(&self.metrics.connections_refused_total);
                None
            }
        }
    }

    /// Waits until every slot is back (all connections closed), at most `grace`; whether they
    /// all came back.
    pub async fn drained(&self, grace: Duration) -> bool {
        tokio::time::timeout(grace, self.semaphore.acquire_many(self.total))
            .await
            .is_ok_and(|all| all.is_ok())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        Metrics::dec(&self.metrics.connections_open);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_bound_connections_and_keep_the_gauge() {
        let metrics = Arc::new(Metrics::default());
        let slots = Slots::new(2, metrics.clone());
        let a = slots.take().expect("a first slot");
        let (b, b_too) = slots.take().expect("a second slot").share();
        assert!(slots.take().is_none(), "the limit holds");
        let load = |g: &std::sync::atomic::AtomicU64| g.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(load(&metrics.connections_open), 2);
        assert_eq!(load(&metrics.connections_refused_total), 1);
        drop(a);
        assert_eq!(load(&metrics.connections_open), 1);
        assert!(
            !slots.drained(Duration::from_millis(10)).await,
            "one is still open"
        );
        drop(b);
        assert!(
            !slots.drained(Duration::from_millis(10)).await,
            "a shared slot has a holder left"
        );
        drop(b_too);
        assert!(slots.drained(Duration::from_millis(10)).await);
    }

    /// The count on a worker ends with the holder that serves the connection, not before.
    #[test]
    fn a_slot_carries_its_count_on_a_worker() {
        let slots = Slots::new(2, Arc::new(Metrics::default()));
        let balance = crate::doors::balance::Balance::new(2);
        let (serving, stack) = slots.take().expect("a slot").share();
        let serving = serving.serving(balance.serve(0));
        assert_eq!(balance.pick(0), 1, "worker 0 serves one");
        drop(stack);
        assert_eq!(balance.pick(0), 1, "the stack's half does not carry the count");
        drop(serving);
        assert_eq!(balance.pick(0), 0, "closed, the count is back");
    }
}
