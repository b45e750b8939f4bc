//! How a segment stores its entries: one row per commit (a batch), its entries packed into one
//! blob. The writer commits every entry of a 20 ms window at once; as one row each, SQLite's
//! work per row (sixteen values bound and copied, a record built, a B-tree seek and insert) was
//! two fifths of the writer's CPU, and the writer a tenth of the gateway's under load. As one row
//! per commit that work is paid once per commit, and what remains per entry is its hash and a
//! few bytes written.
//!
//! A batch is its entries in id order, each:
//!
//! ```text
//! time text || decision text || reason text || terminal opt || user opt || source text
//! || route text || method opt || path opt || upstream opt || status num-opt
//! || bytes_in num || bytes_out num || duration_ms num || hash (32 bytes)
//! ```
//!
//! A text is `varint(length) || UTF-8 bytes`; an optional text is `0` when absent and
//! `varint(length + 1) || bytes` when present; a number is a zigzag varint (every `i64`, as the
//! chain hash covers it), an optional number `0` or `varint(zigzag + 1)`. A varint is LEB128, at
//! most ten bytes. The row holds the batch's last id, its count and its last hash beside the
//! blob, so the chain's end is read without the blob, and an entry's id is its place in the batch.
//!
//! The blob comes from a file anyone with the disk can edit: decoding checks every length and
//! says what is wrong where, and the chain hash, not the encoding, is what proves an entry
//! unchanged.

use super::entry::Fields;

/// Appends one entry (`fields` and its chain `hash`) to a batch.
pub(super) fn encode(f: &Fields<'_>, hash: &[u8; 32], out: &mut Vec<u8>) {
    for text in [f.time, f.decision, f.reason] {
        put_text(out, text);
    }
    put_opt(out, f.terminal);
    put_opt(out, f.user);
    put_text(out, f.source);
    put_text(out, f.route);
    for opt in [f.method, f.path, f.upstream] {
        put_opt(out, opt);
    }
    match f.status {
        None => out.push(0),
        Some(s) => put_varint(out, zigzag(s) + 1),
    }
    for n in [f.bytes_in, f.bytes_out, f.duration_ms] {
        put_varint(out, zigzag(n));
    }
    out.extend_from_slice(hash);
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn put_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => out.push(0),
        Some(s) => {
            put_varint(out, s.len() as u64 + 1);
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// Every `i64` as a `u64` that is small when the number is near zero.
fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    (n >> 1) as i64 ^ -((n & 1) as i64)
}

/// The entries of one batch, decoded in order without copying: `first` is the id of its first
/// entry. Yields an error (what is wrong, and where) for bytes that are not a batch, and then
/// nothing more.
pub(super) struct Decoder<'a> {
    rest: &'a [u8],
    id: u64,
    /// Where `rest` starts in the blob, for the error.
    at: usize,
    len: usize,
    failed: bool,
}

impl<'a> Decoder<'a> {
    pub(super) fn new(blob: &'a [u8], first: u64) -> Decoder<'a> {
        Decoder {
            rest: blob,
            id: first,
            at: 0,
            len: blob.len(),
            failed: false,
        }
    }

    fn entry(&mut self) -> Result<(Fields<'a>, [u8; 32]), String> {
        let time = self.text("time")?;
        let decision = self.text("decision")?;
        let reason = self.text("reason")?;
        let terminal = self.opt("terminal")?;
        let user = self.opt("user")?;
        let source = self.text("source")?;
        let route = self.text("route")?;
        let method = self.opt("method")?;
        let path = self.opt("path")?;
        let upstream = self.opt("upstream")?;
        let status = match self.varint("status")? {
            0 => None,
            n => Some(unzigzag(n - 1)),
        };
        let bytes_in = unzigzag(self.varint("bytes_in")?);
        let bytes_out = unzigzag(self.varint("bytes_out")?);
        let duration_ms = unzigzag(self.varint("duration_ms")?);
        let mut hash = [0; 32];
        hash.copy_from_slice(self.take(32, "hash")?);
        let fields = Fields {
            id: self.id,
            time,
            decision,
            reason,
            terminal,
            user,
            source,
            route,
            method,
            path,
            upstream,
            status,
            bytes_in,
            bytes_out,
            duration_ms,
        };
        Ok((fields, hash))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.rest.len() {
            return Err(format!(
                "its {what} at byte {} runs past the batch's end (byte {})",
                self.at, self.len
            ));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        self.at += n;
        Ok(head)
    }

    fn varint(&mut self, what: &str) -> Result<u64, String> {
        // Nearly every length and number fits in one byte.
        if let [b, rest @ ..] = self.rest
            && b & 0x80 == 0
        {
            self.rest = rest;
            self.at += 1;
            return Ok(u64::from(*b));
        }
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1, what)?[0];
            n |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                // The tenth byte carries only the top bit.
                return match shift < 63 || b <= 1 {
                    true => Ok(n),
                    false => Err(format!("its {what} at byte {} is beyond 64 bits", self.at - 1)),
                };
            }
        }
        Err(format!("its {what} at byte {} is beyond 64 bits", self.at - 1))
    }

    fn bytes_of(&mut self, len: u64, what: &str) -> Result<&'a str, String> {
        let at = self.at;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes).map_err(|_| format!("its {what} at byte {at} is not UTF-8"))
    }

    fn text(&mut self, what: &str) -> Result<&'a str, String> {
        let len = self.varint(what)?;
        self.bytes_of(len, what)
    }

    fn opt(&mut self, what: &str) -> Result<Option<&'a str>, String> {
        match self.varint(what)? {
            0 => Ok(None),
            n => self.bytes_of(n - 1, what).map(Some),
        }
    }
}

/// Each entry's fields, borrowed from the blob, and its stored hash.
impl<'a> Iterator for Decoder<'a> {
    type Item = Result<(Fields<'a>, [u8; 32]), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let entry = self.entry().map_err(|e| format!("entry {}: {e}", self.id));
        self.failed = entry.is_err();
        self.id += 1;
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(id: u64, path: Option<&str>, status: Option<i64>, n: i64) -> Fields<'_> {
        Fields {
            id,
            time: "2026-12-06T07:00:00.123Z",
            decision: "deny",
            reason: "password ok",
            terminal: Some("reception-1"),
            user: None,
            source: "10.0.0.7:50123",
            route: "api",
            method: Some("GET"),
            path,
            upstream: Some(""),
            status,
            bytes_in: n,
            bytes_out: i64::MAX,
            duration_ms: i64::MIN,
        }
    }

    #[test]
    fn a_batch_decodes_to_what_was_encoded() {
        let long = "p".repeat(300);
        let entries = [
            fields(7, Some("/api/v1/patients/1"), Some(200), 0),
            fields(8, None, None, -1),
            fields(9, Some(&long), Some(-5), 1 << 40),
        ];
        let mut blob = Vec::new();
        for (i, f) in entries.iter().enumerate() {
            encode(f, &[i as u8; 32], &mut blob);
        }
        let decoded: Vec<_> = Decoder::new(&blob, 7).collect::<Result<_, _>>().unwrap();
        assert_eq!(decoded.len(), 3);
        for (i, ((g, hash), f)) in decoded.iter().zip(&entries).enumerate() {
            assert_eq!(format!("{g:?}"), format!("{f:?}"));
            assert_eq!(*hash, [i as u8; 32]);
        }
    }

    #[test]
    fn bytes_that_are_not_a_batch_get_an_error_never_a_panic() {
        let mut blob = Vec::new();
        encode(&fields(1, Some("/x"), Some(404), 9), &[3; 32], &mut blob);
        // Every cut short of the whole, and every single byte changed to each extreme.
        for cut in 1..blob.len() {
            let out: Vec<_> = Decoder::new(&blob[..cut], 1).collect();
            assert!(out.last().unwrap().is_err(), "cut at {cut}");
        }
        for i in 0..blob.len() {
            for b in [0x00, 0x7f, 0x80, 0xff] {
                let mut bad = blob.clone();
                bad[i] = b;
                let _ = Decoder::new(&bad, 1).count();
            }
        }
        let err = Decoder::new(&[0xff; 11], 5).next().unwrap().unwrap_err();
        assert!(err.starts_with("entry 5: its time"), "{err}");
        let err = Decoder::new(&[2, 0xc3, 0x28], 1).next().unwrap().unwrap_err();
        assert!(err.contains("not UTF-8"), "{err}");
        // After an error, nothing more.
        let mut d = Decoder::new(&[0x05], 1);
        assert!(d.next().unwrap().is_err());
        assert!(d.next().is_none());
    }
}
