//! Handing freed memory back to the system: glibc keeps what a burst of requests freed, and
//! these two calls make it let go. [`crate::daemon::trim`] decides when (only once the gateway is
//! quiet); the threads that allocate on the request path call [`empty_thread_cache`] for
//! themselves.
//!
//! Elsewhere than glibc (musl) the allocator has neither a per-thread cache nor a trim call, and
//! both functions do nothing.

/// glibc's per-thread cache (tcache), at its defaults, which the units in `deploy/` keep: up to
/// `TCACHE_COUNT` freed blocks for each of `TCACHE_BINS` chunk sizes (32 to 1,040 bytes, in steps
/// of 16).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TCACHE_BINS: usize = 64;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TCACHE_COUNT: usize = 7;

/// Gives the allocator's free pages back to the system.
///
/// It locks each arena while it walks it, so call it only when the gateway is quiet.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn trim() {
    // SAFETY: malloc_trim takes no pointer and has no precondition: glibc takes each arena's
    // lock while it walks it, so it may run beside allocations on any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Empties the calling thread's cache of freed blocks, so that [`trim`] can give their pages back.
///
/// The cache is what makes a small allocation cheap: a block the thread freed is handed out again
/// without taking an arena's lock (8 % of the gateway's CPU per request, `bench/cpu-ab.sh`). But
/// its blocks count as in use, and after a burst they sit scattered over pages that are otherwise
/// free: 1.4 MiB that `malloc_trim` cannot return (`bench/memory.sh`). glibc empties a thread's
/// cache only when the thread exits. So this takes every cached block out (an allocation is
/// served from the cache first, so allocating each size as many times as the cache holds takes
/// them all), and a thread started for it frees them and exits, which puts them back into the
/// arenas.
///
/// A few hundred microseconds, and about 240 KiB held meanwhile: for a quiet moment, like [`trim`].
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn empty_thread_cache() {
    // Vec<u8>'s capacity is what malloc is asked for; a request of 24 + 16·i bytes is a chunk of
    // 32 + 16·i, the cache's bin i.
    let blocks: Vec<Vec<u8>> = (0..TCACHE_BINS)
        .flat_map(|bin| (0..TCACHE_COUNT).map(move |_| Vec::with_capacity(24 + 16 * bin)))
        .collect();
    match std::thread::Builder::new()
        .name("tcache-drain".into())
        .spawn(move || drop(blocks))
    {
        Ok(thread) => {
            let _ = thread.join();
        }
        // Without a thread the blocks go back to this thread's cache: no worse than before.
        Err(e) => tracing::debug!(error = %e, "cannot start a thread to empty the allocator's cache"),
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() {}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn empty_thread_cache() {}
