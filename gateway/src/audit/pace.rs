//! The audit writer's share of the processor.
//!
//! A commit is a burst of work on one thread: under load, about a millisecond every
//! [`GROUP_WINDOW`](super::writer) of chain hashes, the batch's blob and SQLite's commit. In the
//! kernel's normal class the writer gets a core as soon as it wakes, and the requests of the
//! worker it displaced wait for it: at half of the gateway's peak, that was much of what the
//! gateway added to the 99th percentile beyond nginx. In the idle class (`SCHED_IDLE`) it runs on
//! what the workers leave, and a worker that wakes takes the core back at once.
//!
//! The idle class gets almost nothing while the workers keep every core busy, so under a load
//! that saturates the machine the writer would fall further and further behind. Whoever finds
//! an eighth of the queue waiting (`BEHIND`), or waits for the writer (a flush, a close), moves
//! it back to the normal class, and so does the writer itself when it has taken as many off the
//! queue for one commit; it returns to the idle class once less than a 32nd is left
//! (under load a queue is never empty after a commit: entries keep coming while it commits).
//! The way back needs the kernel's leave: `CAP_SYS_NICE`, or an `RLIMIT_NICE` of 20, which
//! allows no priority above the default (the units in `deploy/` set `LimitNICE=20`). Without
//! either, the writer stays in the normal class, as before.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use rustix::process::{Resource, getrlimit};
use rustix::thread::{CapabilitySet, Pid, capabilities, gettid};

/// The writer thread's scheduling class, shared by the writer and those who queue for it.
#[derive(Default)]
pub(super) struct Pace {
    /// Whether the writer is in the idle class: read for every entry queued, so apart from the
    /// lock.
    idle: AtomicBool,
    /// The writer thread while it runs and may leave the idle class; held across each change,
    /// so that `idle` and the kernel's view never part, and a thread ID is never used after its
    /// thread has ended (the kernel may give it to another).
    writer: Mutex<Option<Pid>>,
}

impl Pace {
    /// Called on the writer thread as it starts: it enters the idle class if it may come back.
    pub(super) fn start(&self) {
        *self.lock() = may_return().then(gettid);
        self.set(true);
    }

    /// Called on the writer thread as it ends.
    pub(super) fn stop(&self) {
        self.set(false);
        *self.lock() = None;
    }

    /// Whether the writer is in the idle class now (one load: asked for every entry queued).
    pub(super) fn idle(&self) -> bool {
        self.idle.load(Relaxed)
    }

    /// Someone waits for the writer, or it has fallen behind: it returns to the normal class.
    pub(super) fn wanted(&self) {
        if self.idle.load(Relaxed) {
            self.set(false);
        }
    }

    /// The writer has caught up: back to the idle class.
    pub(super) fn relax(&self) {
        if !self.idle.load(Relaxed) {
            self.set(true);
        }
    }

    fn set(&self, idle: bool) {
        let writer = self.lock();
        let Some(thread) = *writer else { return };
        if self.idle.load(Relaxed) == idle {
            return;
        }
        let policy = if idle { libc::SCHED_IDLE } else { libc::SCHED_OTHER };
        // A refusal (a filter on system calls) leaves the class as it was, and `idle` with it.
        if set_policy(thread, policy).is_ok() {
            self.idle.store(idle, Relaxed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Pid>> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether a thread of this process may leave the idle class for the normal one at the default
/// priority (the kernel treats the idle class as nice 20 for this: `sched(7)`).
fn may_return() -> bool {
    let nice_limit = getrlimit(Resource::Nice).current.unwrap_or(u64::MAX);
    nice_limit >= 20 || capabilities(None).is_ok_and(|c| c.effective.contains(CapabilitySet::SYS_NICE))
}

/// `sched_setscheduler(2)`, which rustix does not wrap.
#[allow(unsafe_code)]
fn set_policy(thread: Pid, policy: libc::c_int) -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `param` is a valid `sched_param` for the length of the call, which only reads it
    // and keeps no pointer to it; the thread ID is a plain integer (a thread that has ended
    // makes the call fail with ESRCH).
    match unsafe { libc::sched_setscheduler(thread.as_raw_nonzero().get(), policy, &param) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The thread's scheduling policy as the kernel reports it (`/proc`, field 41 of `stat`).
    fn policy(thread: Pid) -> libc::c_int {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{}/stat", thread.as_raw_nonzero()))
            .expect("the thread's stat");
        // The fields after the command name, which may hold spaces: the third field is first.
        let after = &stat[stat.rfind(')').expect("a command name") + 2..];
        after
            .split(' ')
            .nth(41 - 3)
            .expect("a policy")
            .parse()
            .expect("a number")
    }

    #[test]
    fn the_writer_idles_is_called_back_and_lets_its_thread_go() {
        if !may_return() {
            // Neither CAP_SYS_NICE nor RLIMIT_NICE 20: the writer stays normal, as `start` says.
            let pace = Pace::default();
            pace.start();
            assert!(!pace.idle());
            return;
        }
        let pace = Arc::new(Pace::default());
        let (started, thread) = std::sync::mpsc::channel();
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        let writer = {
            let pace = pace.clone();
            std::thread::spawn(move || {
                pace.start();
                started.send(gettid()).unwrap();
                let _ = finished.recv();
            })
        };
        let tid = thread.recv().unwrap();
        assert!(pace.idle());
        assert_eq!(policy(tid), libc::SCHED_IDLE);

        // Called back from another thread, as a worker that finds it behind does.
        pace.wanted();
        assert!(!pace.idle());
        assert_eq!(policy(tid), libc::SCHED_OTHER);
        pace.relax();
        assert_eq!(policy(tid), libc::SCHED_IDLE);

        // Once stopped it is normal, and its thread ID is not touched again.
        pace.stop();
        assert_eq!(policy(tid), libc::SCHED_OTHER);
        pace.relax();
        assert!(!pace.idle());
        assert_eq!(policy(tid), libc::SCHED_OTHER);
        finish.send(()).unwrap();
        writer.join().unwrap();
    }
}
