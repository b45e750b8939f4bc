//! Futures made in their box.
//!
//! `Box::pin(fut)` makes the future on the stack and then copies it to the heap, at its full
//! size: every state it can reach, not the few words it starts with. For the request path's
//! futures that was kilobytes copied per request (a fifth of the gateway's `memmove`). Allocating
//! first and making the future in the allocation lets the compiler write it there directly.

use std::future::Future;
use std::pin::Pin;

/// The future `make` returns, in a box allocated before it is made.
#[inline(always)]
pub fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}
