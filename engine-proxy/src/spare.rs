//! Per-thread spares of what every request makes and drops: its header maps and the buffers its
//! heads are written into. Made and freed for each request and answer, they were a quarter of a
//! request's allocations; a worker thread serves its requests from start to end, so what one
//! request gives back the next one on the thread takes, without a lock.
//!
//! Bounded both ways: a pool keeps a few spares, each of a size that a head needs, and lets
//! anything larger go to the allocator. Once a burst is over, the gateway has each worker free
//! its spares ([`release`]) before the allocator gives its free pages back.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::thread::LocalKey;

use hyper::header::HeaderMap;

/// One thread's spares of one kind.
type Pool<T> = RefCell<Vec<T>>;

/// Takes a spare that `fits` from this thread's `pool`, the most recently given first.
fn take<T>(pool: &'static LocalKey<Pool<T>>, fits: impl Fn(&T) -> bool) -> Option<T> {
    pool.try_with(|spares| {
        let mut spares = spares.try_borrow_mut().ok()?;
        let at = spares.iter().rposition(fits)?;
        Some(spares.swap_remove(at))
    })
    .ok()
    .flatten()
}

/// Gives `spare` (emptied by the caller) back to this thread's `pool`, which keeps at most `max`.
/// The thread may be ending (its pool already gone), or the pool in use further up the stack (a
/// destructor that gives back while another gives back): then the spare is freed.
fn give<T>(pool: &'static LocalKey<Pool<T>>, spare: T, max: usize) {
    let _ = pool.try_with(|spares| {
        if let Ok(mut spares) = spares.try_borrow_mut()
            && spares.len() < max
        {
            spares.push(spare);
        }
    });
}

/// Frees this thread's spares, of every kind: for the end of a burst, when what the threads keep
/// for the next request would only stay resident.
pub fn release() {
    let _ = SPARE_BUFFERS.try_with(|spares| spares.take());
    let _ = SPARE_MAPS.try_with(|spares| spares.take());
}

/// Header maps given back ([`recycle`]) that fit at most this many fields are kept, a worker
/// thread's spares at most [`MAPS`] (about 3 KB each), enough for its requests in flight under
/// load.
const MAP_KEEP: usize = 32;
const MAPS: usize = 16;
/// New maps get room for at least this many fields, so that a spare fits the next head, whether
/// a terminal's request or the engine's answer, without growing.
const MAP_NEW: usize = 16;

std::thread_local! {
    static SPARE_MAPS: Pool<HeaderMap> = const { RefCell::new(Vec::new()) };
}

/// An empty header map with room for `len` fields: a spare, or a new one.
pub fn map(len: usize) -> HeaderMap {
    take(&SPARE_MAPS, |m| m.capacity() >= len).unwrap_or_else(|| HeaderMap::with_capacity(len.max(MAP_NEW)))
}

/// Gives back the header map of a message that is done with, for the next head parsed on this
/// thread ([`map`]); a map larger than a head needs is freed.
pub fn recycle(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > MAP_KEEP {
        return;
    }
    map.clear();
    give(&SPARE_MAPS, map, MAPS);
}

/// Spare buffers per thread, and the largest kept: a head, or a head with a small body.
const BUFFERS: usize = 16;
const BUFFER_KEEP: usize = 4096;
/// A new buffer's room: most heads fit.
const BUFFER_NEW: usize = 512;

std::thread_local! {
    static SPARE_BUFFERS: Pool<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A byte buffer from this thread's spares, given back (emptied) when dropped.
pub struct Buffer(Vec<u8>);

impl Buffer {
    pub fn new() -> Buffer {
        Buffer(take(&SPARE_BUFFERS, |_| true).unwrap_or_else(|| Vec::with_capacity(BUFFER_NEW)))
    }
}

impl Default for Buffer {
    fn default() -> Self {
        Buffer::new()
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let mut buf = std::mem::take(&mut self.0);
        if buf.capacity() <= BUFFER_KEEP {
            buf.clear();
            give(&SPARE_BUFFERS, buf, BUFFERS);
        }
    }
}

impl Deref for Buffer {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_empty_and_a_large_one_is_let_go() {
        let mut first = Buffer::new();
        first.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let at = first.as_ptr();
        drop(first);
        let second = Buffer::new();
        assert!(second.is_empty());
        assert_eq!(second.as_ptr(), at, "the spare was taken");
        drop(second);
        let mut large = Buffer::new();
        large.reserve(2 * BUFFER_KEEP);
        drop(large);
        let next = Buffer::new();
        assert!(next.capacity() <= BUFFER_KEEP, "the large one was not kept");
        drop(next);
        release();
        assert!(
            SPARE_BUFFERS.with(|spares| spares.borrow().is_empty()),
            "released"
        );
    }

    #[test]
    fn a_map_larger_than_a_head_needs_is_let_go() {
        let mut large = HeaderMap::with_capacity(4 * MAP_KEEP);
        large.insert(hyper::header::HOST, hyper::header::HeaderValue::from_static("c"));
        recycle(large);
        assert!(map(1).capacity() <= MAP_KEEP);
    }
}
