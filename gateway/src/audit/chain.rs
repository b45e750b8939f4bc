//! What makes the log tamper-evident: the chain hash that links every entry to the one before
//! it, the time text it hashes, and the head file that attests the chain's end. Writing and
//! verifying both rely on these, so they are defined once, here.

use std::path::Path;

use engine_proxy::digest::Sha256;
use rusqlite::{Connection, OptionalExtension};
use time::OffsetDateTime;

use super::AUDIT_HEAD;
use super::entry::{Fields, get_u64};
use super::segment::Layout;
use crate::store::{Result, StoreError};

/// Domain separation for the chain hash, and its version.
const HASH_DOMAIN: &[u8] = b"kakehashi-audit-v1\0";

/// The chain hash of an entry: SHA-256 over a length-prefixed encoding that no two different
/// entries share:
///
/// ```text
/// "kakehashi-audit-v1" 0x00 || prev_hash (32 bytes) || id (u64 BE)
/// || time || decision || reason || terminal || user || source || route || method || path
/// || upstream || status || bytes_in || bytes_out || duration_ms
/// ```
///
/// A text is `u32 BE byte length || UTF-8 bytes`; a number is `i64 BE`; an optional field is
/// `0x00` when absent and `0x01 ||` its encoding when present. `prev_hash` is not in the fields
/// but the argument, so that [`verify`](super::verify) checks the link and the contents separately.
pub fn chain_hash(prev: &[u8; 32], record: &Fields<'_>) -> [u8; 32] {
    let mut h = Sha256::default();
    let text = |h: &mut Sha256, s: &str| {
        h.update(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
        h.update(s.as_bytes());
    };
    let opt_text = |h: &mut Sha256, s: Option<&str>| match s {
        None => h.update(&[0]),
        Some(s) => {
            h.update(&[1]);
            text(h, s);
        }
    };
    h.update(HASH_DOMAIN);
    h.update(prev);
    h.update(&record.id.to_be_bytes());
    text(&mut h, record.time);
    text(&mut h, record.decision);
    text(&mut h, record.reason);
    opt_text(&mut h, record.terminal);
    opt_text(&mut h, record.user);
    text(&mut h, record.source);
    text(&mut h, record.route);
    opt_text(&mut h, record.method);
    opt_text(&mut h, record.path);
    opt_text(&mut h, record.upstream);
    match record.status {
        None => h.update(&[0]),
        Some(s) => {
            h.update(&[1]);
            h.update(&s.to_be_bytes());
        }
    }
    for n in [record.bytes_in, record.bytes_out, record.duration_ms] {
        h.update(&n.to_be_bytes());
    }
    h.finish()
}

/// The current time as the log records it: RFC 3339, UTC, milliseconds. The fixed width makes
/// text order time order, which `export --since` relies on.
///
/// Written digit by digit: every request's entry is stamped, and the `time` crate's general
/// formatter cost a percent of the gateway's CPU under load. The text is part of each entry's
/// hash, so the two must agree byte for byte (a test holds them to it); a year outside
/// 0000–9999 takes the general formatter.
pub fn timestamp(t: OffsetDateTime) -> String {
    let mut text = String::with_capacity(24);
    stamp(t, &mut text);
    text
}

/// [`timestamp`] into `out` (emptied first): the audit writer stamps each entry of a batch into
/// one buffer, where a `String` each would be an allocation per request.
pub fn stamp(t: OffsetDateTime, out: &mut String) {
    out.clear();
    let t = t.to_offset(time::UtcOffset::UTC);
    if t.year() < 0 || t.year() > 9999 {
        out.push_str(&formatted(t));
        return;
    }
    let year = t.year().unsigned_abs();
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let fields = [
        (0, 4, year),
        (5, 2, u32::from(u8::from(t.month()))),
        (8, 2, u32::from(t.day())),
        (11, 2, u32::from(t.hour())),
        (14, 2, u32::from(t.minute())),
        (17, 2, u32::from(t.second())),
        (20, 3, u32::from(t.millisecond())),
    ];
    for (at, width, mut value) in fields {
        for digit in text[at..at + width].iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    match std::str::from_utf8(&text) {
        Ok(text) => out.push_str(text),
        Err(_) => out.push_str(&formatted(t)),
    }
}

/// [`timestamp`] by the `time` crate's formatter.
fn formatted(t: OffsetDateTime) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&format).unwrap_or_else(|_| t.to_string())
}

/// The last committed entry's id and hash, in a segment of `layout`.
pub(super) fn last_entry(conn: &Connection, layout: Layout, db: &Path) -> Result<Option<(u64, [u8; 32])>> {
    let sql = match layout {
        Layout::Batches => "SELECT last, hash FROM batches ORDER BY last DESC LIMIT 1",
        Layout::Rows | Layout::Legacy => "SELECT id, hash FROM entries ORDER BY id DESC LIMIT 1",
    };
    conn.query_row(sql, [], |r| Ok((get_u64(r, 0)?, r.get::<_, Vec<u8>>(1)?)))
        .optional()
        .map_err(StoreError::sqlite(db, "read the last entry"))?
        .map(|(id, hash)| {
            <[u8; 32]>::try_from(hash.as_slice())
                .map(|h| (id, h))
                .map_err(|_| StoreError::Corrupt {
                    path: db.into(),
                    what: format!("entry {id}: its hash is not 32 bytes"),
                })
        })
        .transpose()
}

/// A point file's id and hash (`audit.head`, `audit/pruned`); `None` if there is no such file.
/// A malformed one is an error.
pub(super) fn read_point(path: &Path) -> Result<Option<(u64, [u8; 32])>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("read", path)(e)),
    };
    let parsed = text.trim_end().split_once(' ').and_then(|(id, hash)| {
        let id = id.parse::<u64>().ok()?;
        let hash = <[u8; 32]>::try_from(hex::decode(hash).ok()?.as_slice()).ok()?;
        Some((id, hash))
    });
    parsed.map(Some).ok_or_else(|| StoreError::Corrupt {
        path: path.into(),
        what: "not a chain point (expected \"ID HASH\", the hash as 64 hex digits)".into(),
    })
}

/// Writes a point file atomically (mode 0600): `ID HASH-HEX`.
pub(super) fn write_point(path: &Path, (id, hash): (u64, [u8; 32])) -> Result<()> {
    let text = format!("{id} {}\n", hex::encode(hash));
    cert_tool::files::write_atomic(path, text.as_bytes(), cert_tool::files::SECRET)?;
    Ok(())
}

/// What is wrong between the head file and a log that ends at `last_id`, if anything;
/// `hash_at` looks an entry's hash up in the log.
pub(super) fn head_problem(
    head: Option<&(u64, [u8; 32])>,
    last_id: u64,
    hash_at: impl FnOnce(u64) -> Result<Option<[u8; 32]>>,
) -> Result<Option<String>> {
    let Some(&(head_id, head_hash)) = head else {
        return Ok((last_id > 0).then(|| {
            format!("{AUDIT_HEAD} is missing but the log has {last_id} entries: its end cannot be checked")
        }));
    };
    if head_id > last_id {
        return Ok(Some(format!(
            "the log ends at entry {last_id} but {AUDIT_HEAD} records entry {head_id}: \
             the last {} entries were removed",
            head_id - last_id
        )));
    }
    if head_id == 0 {
        return Ok(None);
    }
    Ok(match hash_at(head_id)? {
        None => Some(format!(
            "entry {head_id}, recorded in {AUDIT_HEAD}, is missing from the log"
        )),
        Some(h) if h != head_hash => Some(format!(
            "entry {head_id}: its hash differs from the one recorded in {AUDIT_HEAD}: \
             the end of the log was replaced"
        )),
        Some(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_the_general_formatters_to_the_byte() {
        let offset = time::UtcOffset::from_hms(9, 0, 0).unwrap();
        let mut instants = vec![
            OffsetDateTime::UNIX_EPOCH,
            time::macros::datetime!(2028-02-29 23:59:59.999 UTC),
            time::macros::datetime!(9999-12-31 23:59:59.999 UTC),
            time::macros::datetime!(2026-12-05 08:00:00.5 +09:00),
        ];
        // A spread of instants with every field's digits moving, milliseconds included.
        for i in 0..2_000i64 {
            let t = OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(i * 7_919_993_111 + i);
            instants.push(t);
            instants.push(t.to_offset(offset));
        }
        for t in instants {
            assert_eq!(timestamp(t), formatted(t.to_offset(time::UtcOffset::UTC)), "{t}");
        }
        let before_year_0 = time::macros::datetime!(-0001-12-31 23:59:59.999 UTC);
        assert_eq!(timestamp(before_year_0), formatted(before_year_0));
    }
}
