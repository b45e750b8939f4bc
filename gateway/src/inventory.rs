//! The terminal inventory: which clinic terminals may connect at all.
//!
//! A terminal is identified by its client certificate's subject common name, which equals its
//! inventory `name`; the certificate itself is checked separately against the clinic CA and CRL.
//! Being registered and enabled here is the second condition: a vendor can switch a terminal off
//! (a laptop left in a taxi) at once, before a new CRL is published, and switch it back on.
//!
//! The gateway holds an immutable [`Inventory`] snapshot, loaded at start and again on SIGHUP, so
//! a connection never waits for the database and never sees half of a change.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::db::{self, Result, StoreError};

/// A note's longest length, so that listings stay readable.
pub const NOTE_MAX: usize = 200;

/// One registered terminal.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Terminal {
    /// The certificate common name that identifies it (the rule of `kakehashi cert issue --name`).
    pub name: String,
    /// Whether it may connect now; a disabled terminal is refused even with a valid certificate.
    pub enabled: bool,
    /// When it was registered, RFC 3339.
    pub added: String,
    /// Free text for the vendor: whose it is, where it stands.
    pub note: Option<String>,
    pub wireguard: Option<WireGuardPeer>,
}

/// A terminal's WireGuard identity: how the gateway recognises its packets and which inner
/// source address they may carry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WireGuardPeer {
    pub public_key: crate::wg::keys::PublicKey,
    #[serde(skip)]
    pub preshared_key: Option<crate::wg::keys::Secret>,
    pub address: std::net::Ipv4Addr,
}

/// An immutable snapshot of the inventory, for lookups on every connection without the database.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    terminals: BTreeMap<String, Terminal>,
}

impl Inventory {
    /// Reads every terminal from `gateway.db` (opened with [`db::open`]).
    pub fn load(conn: &Connection) -> Result<Inventory> {
        let path = db_path(conn);
        let mut stmt = conn
            .prepare("SELECT name, enabled, added, note FROM terminals ORDER BY name")
            .map_err(StoreError::sqlite(&path, "read the terminals"))?;
        let terminals = stmt
            .query_map([], from_row)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(StoreError::sqlite(&path, "read the terminals"))?;
        Ok(Inventory {
            terminals: terminals.into_iter().map(|t| (t.name.clone(), t)).collect(),
        })
    }

    /// The terminal with this certificate common name, enabled or not.
    pub fn get(&self, name: &str) -> Option<&Terminal> {
        self.terminals.get(name)
    }

    /// TEMPORARY (replaced by the inventory branch).
    pub fn by_wireguard_key(&self, key: &crate::wg::keys::PublicKey) -> Option<&Terminal> {
        self.terminals
            .values()
            .find(|t| t.wireguard.as_ref().is_some_and(|w| w.public_key == *key))
    }

    /// TEMPORARY (replaced by the inventory branch).
    pub fn by_tunnel_address(&self, ip: std::net::Ipv4Addr) -> Option<&Terminal> {
        self.terminals
            .values()
            .find(|t| t.wireguard.as_ref().is_some_and(|w| w.address == ip))
    }

    /// Whether a terminal of this name is registered and enabled: the gateway's whole question.
    pub fn allows(&self, name: &str) -> bool {
        self.get(name).is_some_and(|t| t.enabled)
    }

    /// How many terminals are registered (enabled or not).
    pub fn len(&self) -> usize {
        self.terminals.len()
    }

    /// How many terminals may connect now (the `terminals_enabled` metric).
    pub fn enabled_count(&self) -> usize {
        self.terminals.values().filter(|t| t.enabled).count()
    }

    /// Whether no terminal is registered.
    pub fn is_empty(&self) -> bool {
        self.terminals.is_empty()
    }

    /// Every terminal, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Terminal> {
        self.terminals.values()
    }
}

/// Registers a new, enabled terminal. The name follows the certificate name rule.
pub fn add(conn: &Connection, name: &str, note: Option<&str>) -> Result<Terminal> {
    check_name(name)?;
    if let Some(note) = note {
        db::check_text("--note", note, NOTE_MAX)?;
    }
    let path = db_path(conn);
    let terminal = Terminal {
        name: name.to_owned(),
        enabled: true,
        added: db::now_text(),
        note: note.map(str::to_owned),
        wireguard: None,
    };
    let tx = conn
        .unchecked_transaction()
        .map_err(StoreError::sqlite(&path, "begin a transaction"))?;
    if let Some(existing) = find(&tx, name)? {
        return Err(StoreError::TerminalExists {
            name: name.to_owned(),
            added: existing.added,
        });
    }
    tx.execute(
        "INSERT INTO terminals (name, enabled, added, note) VALUES (?1, 1, ?2, ?3)",
        params![terminal.name, terminal.added, terminal.note],
    )
    .and_then(|_| tx.commit())
    .map_err(StoreError::sqlite(&path, "add the terminal"))?;
    Ok(terminal)
}

/// Enables or disables a terminal; refuses (changing nothing) if it already is so.
pub fn set_enabled(conn: &Connection, name: &str, enabled: bool) -> Result<()> {
    let path = db_path(conn);
    let tx = conn
        .unchecked_transaction()
        .map_err(StoreError::sqlite(&path, "begin a transaction"))?;
    let current = find(&tx, name)?.ok_or_else(|| unknown(name))?;
    if current.enabled == enabled {
        return Err(StoreError::TerminalAlready {
            name: name.to_owned(),
            state: if enabled { "enabled" } else { "disabled" },
        });
    }
    tx.execute(
        "UPDATE terminals SET enabled = ?2 WHERE name = ?1",
        params![name, enabled],
    )
    .and_then(|_| tx.commit())
    .map_err(StoreError::sqlite(&path, "change the terminal"))?;
    Ok(())
}

/// Removes a terminal from the inventory; its certificate should be revoked too.
pub fn remove(conn: &Connection, name: &str) -> Result<Terminal> {
    let path = db_path(conn);
    let tx = conn
        .unchecked_transaction()
        .map_err(StoreError::sqlite(&path, "begin a transaction"))?;
    let current = find(&tx, name)?.ok_or_else(|| unknown(name))?;
    tx.execute("DELETE FROM terminals WHERE name = ?1", params![name])
        .and_then(|_| tx.commit())
        .map_err(StoreError::sqlite(&path, "remove the terminal"))?;
    Ok(current)
}

/// The certificate-name rule of the PKI, so every certificate name can be registered and every
/// registered name can be issued.
pub fn check_name(name: &str) -> Result<()> {
    cert_tool::profile::check_name(name).map_err(|e| StoreError::Invalid(format!("terminal name {e}")))
}

fn find(conn: &Connection, name: &str) -> Result<Option<Terminal>> {
    conn.query_row(
        "SELECT name, enabled, added, note FROM terminals WHERE name = ?1",
        params![name],
        from_row,
    )
    .optional()
    .map_err(StoreError::sqlite(&db_path(conn), "read the terminal"))
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Terminal> {
    Ok(Terminal {
        name: r.get(0)?,
        enabled: r.get(1)?,
        added: r.get(2)?,
        note: r.get(3)?,
        wireguard: None,
    })
}

fn unknown(name: &str) -> StoreError {
    StoreError::UnknownTerminal {
        name: name.to_owned(),
    }
}

/// The file behind a connection, for error messages.
pub(crate) fn db_path(conn: &Connection) -> std::path::PathBuf {
    conn.path().unwrap_or("gateway.db").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_disable_enable_remove_and_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = db::open(tmp.path()).unwrap();
        add(&conn, "reception-1", Some("front desk")).unwrap();
        add(&conn, "dr.sato@clinic", None).unwrap();
        assert!(matches!(
            add(&conn, "reception-1", None),
            Err(StoreError::TerminalExists { .. })
        ));
        set_enabled(&conn, "reception-1", false).unwrap();
        assert!(matches!(
            set_enabled(&conn, "reception-1", false),
            Err(StoreError::TerminalAlready {
                state: "disabled",
                ..
            })
        ));
        let inv = Inventory::load(&conn).unwrap();
        assert_eq!(inv.len(), 2);
        assert!(!inv.allows("reception-1"));
        assert!(inv.allows("dr.sato@clinic"));
        assert!(!inv.allows("nobody"));
        assert_eq!(
            inv.get("reception-1").unwrap().note.as_deref(),
            Some("front desk")
        );
        remove(&conn, "reception-1").unwrap();
        assert!(matches!(
            remove(&conn, "reception-1"),
            Err(StoreError::UnknownTerminal { .. })
        ));
        assert!(add(&conn, ".hidden", None).is_err());
        assert!(add(&conn, "ok", Some("two\nlines")).is_err());
    }
}
