//! Shutdown as every long-lived task sees it. On SIGTERM the daemon turns the flag true: doors
//! stop accepting, idle keep-alive connections and streams close, requests in flight finish; after
//! `limits.shutdown_secs` the worker runtimes are dropped with whatever is left.

/// The flag: `true` once a graceful shutdown has begun.
pub type Shutdown = tokio::sync::watch::Receiver<bool>;

/// Resolves once shutdown has begun (or the daemon's run loop is gone).
pub async fn stopped(shutdown: &mut Shutdown) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// A wait for [`stopped`] in a task that polls it on every wake-up, as a connection's `select!`
/// over its reads, its timer and the shutdown does. Polling the wait itself takes the lock of the
/// waiter list that every connection of every worker shares (0.3 % of the gateway's CPU
/// under load); once the first poll has put the task on that list, a poll here only reads the
/// channel's version, an atomic, and polls the wait once that has changed. The task stays on the
/// list, so the shutdown still wakes it.
pub struct Stop<'a, F> {
    wait: std::pin::Pin<&'a mut F>,
    flag: &'a Shutdown,
    waiting: bool,
}

impl<'a, F: Future<Output = ()>> Stop<'a, F> {
    /// `wait` is [`stopped`] on a clone of `flag`.
    pub fn new(wait: std::pin::Pin<&'a mut F>, flag: &'a Shutdown) -> Self {
        Stop {
            wait,
            flag,
            waiting: false,
        }
    }
}

impl<F: Future<Output = ()>> Future for Stop<'_, F> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        // A closed channel (the run loop gone) counts as a change: the wait then resolves.
        if self.waiting && !self.flag.has_changed().unwrap_or(true) {
            return std::task::Poll::Pending;
        }
        self.waiting = true;
        self.wait.as_mut().poll(cx)
    }
}
