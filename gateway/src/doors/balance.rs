//! Which worker serves a new terminal connection.
//!
//! Each worker accepts on its own socket of a listener (SO_REUSEPORT), and the kernel picks the
//! socket by a hash of the connection's addresses. Over a clinic's few long-lived terminals that
//! is uneven by chance: 8 connections from one client were split 7/1, 3/5, 2/6 and 6/2 between two
//! workers, and a worker given most terminals does most of the work while another core idles. A
//! worker that accepts a connection while another serves fewer hands it to the least busy before
//! the TLS handshake, so terminals spread evenly over the cores whatever their addresses hash to.
//! Connections out of the WireGuard tunnel go to the least busy worker too.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// How many connections each worker serves now.
pub struct Balance {
    served: Box<[AtomicUsize]>,
}

impl Balance {
    pub fn new(workers: usize) -> Arc<Balance> {
        Arc::new(Balance {
            served: (0..workers.max(1)).map(|_| AtomicUsize::new(0)).collect(),
        })
    }

    /// The worker for a connection that worker `by` accepted: `by` itself, unless another serves
    /// fewer.
    pub fn pick(&self, by: usize) -> usize {
        let least = self.least();
        let count = |w: usize| self.served.get(w).map_or(0, |n| n.load(Relaxed));
        if count(by) > count(least) { least } else { by }
    }

    /// The worker serving the fewest connections (the first of equals).
    pub fn least(&self) -> usize {
        (0..self.served.len())
            .min_by_key(|&w| self.served[w].load(Relaxed))
            .unwrap_or(0)
    }

    /// Counts a connection on `worker` until the returned guard is dropped: it goes into the
    /// connection's slot ([`Slot::serving`](crate::doors::slot::Slot::serving)), which lives as
    /// long as the connection, upgraded or not.
    pub fn serve(self: &Arc<Self>, worker: usize) -> Served {
        if let Some(n) = self.served.get(worker) {
            n.fetch_add(1, Relaxed);
        }
        Served {
            balance: self.clone(),
            worker,
        }
    }
}

/// One connection counted on its worker.
pub struct Served {
    balance: Arc<Balance>,
    worker: usize,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(n) = self.balance.served.get(self.worker) {
            n.fetch_sub(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst that one worker accepts alone ends spread over all of them, within one; closing
    /// connections gives their places back.
    #[test]
    fn a_burst_accepted_by_one_worker_is_spread_evenly() {
        let balance = Balance::new(2);
        let mut held = Vec::new();
        for _ in 0..32 {
            let to = balance.pick(0);
            held.push((to, balance.serve(to)));
        }
        let on = |w| held.iter().filter(|(to, _)| *to == w).count();
        assert!(on(0).abs_diff(on(1)) <= 1, "{} / {}", on(0), on(1));
        held.retain(|(to, _)| *to == 0);
        assert_eq!(balance.least(), 1, "worker 1's connections closed");
        assert_eq!(balance.pick(0), 1);
        assert_eq!(balance.pick(1), 1, "the least busy keeps what it accepts");
    }

    /// One worker: everything stays where it is.
    #[test]
    fn one_worker_keeps_everything() {
        let balance = Balance::new(1);
        let _held: Vec<_> = (0..5).map(|_| balance.serve(balance.pick(0))).collect();
        assert_eq!(balance.pick(0), 0);
    }
}
