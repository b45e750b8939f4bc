//! SHA-256 over a message built from many small pieces, as the read cache's keys and the audit
//! log's chain hash are: every request computes one of each.
//!
//! aws-lc's streaming context costs an allocation to start and a call through its generic
//! digest layer for every piece; for a message of a few hundred bytes that cost more than the
//! hashing itself. [`Sha256`] gathers the pieces in a buffer on its own stack frame and hashes
//! them in one call, with aws-lc's one-shot function, which allocates nothing; a message longer
//! than the buffer streams on through a context from there.
//!
//! Not for secrets: the pieces stay in the buffer after the hash is made.

use aws_lc_rs::digest::{Context, SHA256, digest};

/// What a message may hold before it streams through a context: an audit entry (about 300
/// bytes), a cached call's key without a large body.
const GATHER: usize = 512;

/// SHA-256, fed piece by piece.
pub struct Sha256 {
    buf: [u8; GATHER],
    len: usize,
    /// Only once the message outgrows `buf`.
    streaming: Option<Context>,
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256 {
            buf: [0; GATHER],
            len: 0,
            streaming: None,
        }
    }
}

impl Sha256 {
    // Inlined: most pieces are a length or a number of known size, which the caller's copy then
    // makes without a call to memcpy (a call per piece cost more than the copying).
    #[inline]
    pub fn update(&mut self, piece: &[u8]) {
        if let Some(room) = self.buf.get_mut(self.len..self.len + piece.len()) {
            copy_small(room, piece);
            self.len += piece.len();
            return;
        }
        let ctx = self.streaming.get_or_insert_with(|| Context::new(&SHA256));
        ctx.update(&self.buf[..self.len]);
        self.len = 0;
        if piece.len() <= GATHER {
            self.buf[..piece.len()].copy_from_slice(piece);
            self.len = piece.len();
        } else {
            ctx.update(piece);
        }
    }

    /// A piece preceded by its length (`u64` BE): a list of such pieces cannot be read two ways.
    #[inline]
    pub fn update_framed(&mut self, piece: &[u8]) {
        self.update(&(piece.len() as u64).to_be_bytes());
        self.update(piece);
    }

    /// Ends the message and returns its hash; `self` then starts a new, empty one. (By
    /// reference: taken by value, the whole gatherer, 600 bytes, was copied into each call,
    /// inlined or not.)
    pub fn finish(&mut self) -> [u8; 32] {
        let gathered = &self.buf[..std::mem::take(&mut self.len)];
        let hash = match self.streaming.take() {
            None => digest(&SHA256, gathered),
            Some(mut ctx) => {
                ctx.update(gathered);
                ctx.finish()
            }
        };
        let mut out = [0; 32];
        out.copy_from_slice(hash.as_ref());
        out
    }
}

/// `dst.copy_from_slice(src)` (of the same length), without a call to `memcpy` for the few bytes
/// that most pieces of a text are: an audit entry's fields are, and its hash took 33 calls to
/// `memcpy` of 8 bytes on average. Up to 16 bytes are copied as two overlapping moves of a fixed
/// size, a few instructions each.
#[inline]
fn copy_small(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    match n {
        0 => {}
        1..=3 => {
            // Indices 0, n/2 and n-1 cover every byte of 1, 2 or 3.
            dst[0] = src[0];
            dst[n / 2] = src[n / 2];
            dst[n - 1] = src[n - 1];
        }
        4..=7 => {
            dst[..4].copy_from_slice(&src[..4]);
            dst[n - 4..n].copy_from_slice(&src[n - 4..n]);
        }
        8..=16 => {
            dst[..8].copy_from_slice(&src[..8]);
            dst[n - 8..n].copy_from_slice(&src[n - 8..n]);
        }
        _ => dst.copy_from_slice(src),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gathered, streamed, and both across the buffer's edge: always the hash of the whole
    /// message.
    #[test]
    fn any_split_hashes_the_whole_message() {
        let message: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        for len in [0, 1, 31, GATHER - 1, GATHER, GATHER + 1, 2 * GATHER + 5, 5000] {
            let whole = digest(&SHA256, &message[..len]);
            let small = 1..=17;
            for piece in small.chain([64, GATHER - 3, GATHER, GATHER + 9, 5000]) {
                let mut h = Sha256::default();
                for chunk in message[..len].chunks(piece) {
                    h.update(chunk);
                }
                assert_eq!(h.finish(), whole.as_ref(), "length {len}, pieces of {piece}");
                // And it starts again empty.
                h.update(b"abc");
                assert_eq!(h.finish(), digest(&SHA256, b"abc").as_ref());
            }
        }
    }
}
