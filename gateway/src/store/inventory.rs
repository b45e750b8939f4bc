//! The terminal inventory: which clinic terminals may connect at all.
//!
//! A terminal is identified by its client certificate's subject common name, which equals its
//! inventory `name`; the certificate itself is checked separately against the clinic CA and CRL.
//! Being registered and enabled here is the second condition: a vendor can switch a terminal off
//! (a laptop left in a taxi) at once, before a new CRL is published, and switch it back on.
//!
//! A terminal may also have a WireGuard identity ([`WireGuardPeer`]): its public key, which is how
//! the gateway recognises its packets, an optional preshared key, and its one tunnel address, the
//! only inner source address its packets may carry. The terminal's private key is never here: it
//! exists only in the config file (or QR code) handed to the terminal.
//!
//! The gateway holds an immutable [`Inventory`] snapshot, loaded at start and again on SIGHUP, so
//! a connection never waits for the database and never sees half of a change.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use engine_proxy::scope::Scopes;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use zeroize::{Zeroize, Zeroizing};

use crate::config::TunnelNet;
use crate::store::{self, Result, StoreError, db_path};
use provisioning_shared::wireguard::{PublicKey, Secret};

/// Every column of a terminal, in the order [`from_row`] reads them.
const COLUMNS: &str = "name, enabled, added, note, wg_public_key, wg_preshared_key, wg_address, scopes";

/// A note's longest length, so that listings stay readable.
pub const NOTE_MAX: usize = 200;

/// One terminal as the inventory registers it (the identity a door admits is
/// [`crate::doors::identity::Terminal`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Registration {
    /// The certificate common name that identifies it (the rule of `kakehashi cert issue --name`).
    pub name: String,
    /// Whether it may connect now; a disabled terminal is refused even with a valid certificate.
    pub enabled: bool,
    /// When it was registered, RFC 3339.
    pub added: String,
    /// Free text for the vendor: whose it is, where it stands.
    pub note: Option<String>,
    /// Its WireGuard identity, if it connects over WireGuard too (`null` in JSON when not).
    pub wireguard: Option<WireGuardPeer>,
    /// What may be called from it, whoever signs in.
    pub scopes: Scopes,
}

/// A terminal's WireGuard identity: how the gateway recognises its packets and which inner
/// source address they may carry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct WireGuardPeer {
    pub public_key: PublicKey,
    /// Mixed into the handshake for post-quantum resistance; never listed or printed.
    #[serde(skip)]
    pub preshared_key: Option<Secret>,
    pub address: Ipv4Addr,
}

/// An immutable snapshot of the inventory, for lookups on every connection without the database.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    terminals: BTreeMap<String, Registration>,
    /// Terminal names by WireGuard public key: the lookup of every handshake.
    by_key: HashMap<PublicKey, String>,
    /// Terminal names by tunnel address: the lookup of every decrypted packet.
    by_address: HashMap<Ipv4Addr, String>,
}

impl Inventory {
    /// Reads every terminal from `gateway.db` (opened with [`store::open`]).
    pub fn load(conn: &Connection) -> Result<Inventory> {
        let path = db_path(conn);
        let mut stmt = conn
            .prepare(&format!("SELECT {COLUMNS} FROM terminals ORDER BY name"))
            .map_err(StoreError::sqlite(&path, "read the terminals"))?;
        let rows = stmt
            .query_map([], from_row)
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(StoreError::sqlite(&path, "read the terminals"))?;
        let mut inventory = Inventory::default();
        for row in rows {
            let terminal = row.parse(&path)?;
            if let Some(peer) = &terminal.wireguard {
                inventory.by_key.insert(peer.public_key, terminal.name.clone());
                inventory.by_address.insert(peer.address, terminal.name.clone());
            }
            inventory.terminals.insert(terminal.name.clone(), terminal);
        }
        Ok(inventory)
    }

    /// The terminal whose WireGuard public key this is, enabled or not.
    pub fn by_wireguard_key(&self, key: &PublicKey) -> Option<&Registration> {
        self.by_key.get(key).and_then(|name| self.terminals.get(name))
    }

    /// The terminal with this tunnel address, enabled or not.
    pub fn by_tunnel_address(&self, ip: Ipv4Addr) -> Option<&Registration> {
        self.by_address.get(&ip).and_then(|name| self.terminals.get(name))
    }

    /// The terminal with this certificate common name, enabled or not.
    pub fn get(&self, name: &str) -> Option<&Registration> {
        self.terminals.get(name)
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
    pub fn iter(&self) -> impl Iterator<Item = &Registration> {
        self.terminals.values()
    }
}

/// Registers a new, enabled terminal that may call `scopes`. The name follows the certificate
/// name rule.
pub fn add(conn: &Connection, name: &str, note: Option<&str>, scopes: Scopes) -> Result<Registration> {
    let tx = begin(conn)?;
    let terminal = insert(&tx, name, note, scopes)?;
    commit(tx, "add the terminal")?;
    Ok(terminal)
}

/// Gives an existing terminal a WireGuard identity (refuses if it has one, or if the key or
/// address is taken).
pub fn set_wireguard(conn: &Connection, name: &str, peer: &WireGuardPeer) -> Result<()> {
    let tx = begin(conn)?;
    attach(&tx, name, peer)?;
    commit(tx, "give the terminal a WireGuard identity")
}

/// Takes a terminal's WireGuard identity away (it stays registered for TLS); returns what it was.
pub fn clear_wireguard(conn: &Connection, name: &str) -> Result<Option<WireGuardPeer>> {
    let tx = begin(conn)?;
    let current = find(&tx, name)?.ok_or_else(|| unknown(name))?;
    tx.execute(
        "UPDATE terminals SET wg_address = NULL, wg_preshared_key = NULL, wg_public_key = NULL \
         WHERE name = ?1",
        params![name],
    )
    .map_err(StoreError::sqlite(&db_path(&tx), "change the terminal"))?;
    commit(tx, "change the terminal")?;
    Ok(current.wireguard)
}

/// The first free address of `net.hosts()` not used by any terminal (error naming the network
/// when full).
pub fn free_address(conn: &Connection, net: &TunnelNet) -> Result<Ipv4Addr> {
    let path = db_path(conn);
    let used = conn
        .prepare("SELECT wg_address FROM terminals WHERE wg_address IS NOT NULL")
        .and_then(|mut stmt| {
            stmt.query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(StoreError::sqlite(&path, "read the tunnel addresses"))?;
    // A row that does not parse is reported by `Inventory::load`; here it just takes no address.
    let used: std::collections::HashSet<Ipv4Addr> = used.iter().filter_map(|a| a.parse().ok()).collect();
    net.hosts()
        .find(|ip| !used.contains(ip))
        .ok_or_else(|| StoreError::TunnelNetworkFull { net: net.to_string() })
}

/// Whether [`enroll_wireguard`] registers a new terminal or equips a registered one.
#[derive(Clone, Copy, Debug)]
pub enum Enroll<'a> {
    /// `terminal add NAME --wireguard`: a new terminal, with this note and these scopes.
    New { note: Option<&'a str>, scopes: Scopes },
    /// `terminal wireguard NAME`: a registered terminal without a WireGuard identity yet.
    Existing,
}

/// Registers (or takes) a terminal and gives it a WireGuard identity with the next free address
/// of `net`, all in one transaction, so that no half-registered terminal is ever seen.
///
/// `prepare` gets the allocated address and returns the identity together with whatever must be
/// ready before the change counts (the staged config file); it runs inside the transaction, so
/// when it fails nothing changes. The transaction takes the write lock at once: two commands
/// enrolling at the same moment take turns instead of picking the same address.
pub fn enroll_wireguard<T>(
    conn: &Connection,
    name: &str,
    how: Enroll<'_>,
    net: &TunnelNet,
    prepare: impl FnOnce(Ipv4Addr) -> Result<(WireGuardPeer, T)>,
) -> Result<(Registration, T)> {
    let tx = begin(conn)?;
    let mut terminal = match how {
        Enroll::New { note, scopes } => insert(&tx, name, note, scopes)?,
        Enroll::Existing => find(&tx, name)?.ok_or_else(|| unknown(name))?,
    };
    if let Some(peer) = &terminal.wireguard {
        return Err(StoreError::WireGuardExists {
            name: name.to_owned(),
            address: peer.address,
        });
    }
    let address = free_address(&tx, net)?;
    let (peer, prepared) = prepare(address)?;
    attach(&tx, name, &peer)?;
    commit(tx, "register the terminal's WireGuard identity")?;
    terminal.wireguard = Some(peer);
    Ok((terminal, prepared))
}

/// A write transaction that holds the database's write lock from its first statement, so that
/// what it read (a free address, a missing name) is still true when it writes.
fn begin(conn: &Connection) -> Result<rusqlite::Transaction<'_>> {
    rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)
        .map_err(StoreError::sqlite(&db_path(conn), "begin a transaction"))
}

fn commit(tx: rusqlite::Transaction<'_>, what: &'static str) -> Result<()> {
    let path = db_path(&tx);
    tx.commit().map_err(StoreError::sqlite(&path, what))
}

/// Inserts a new, enabled terminal inside the caller's transaction.
pub(crate) fn insert(
    tx: &Connection,
    name: &str,
    note: Option<&str>,
    scopes: Scopes,
) -> Result<Registration> {
    check_name(name)?;
    if let Some(note) = note {
        store::check_text("--note", note, NOTE_MAX)?;
    }
    if let Some(existing) = find(tx, name)? {
        return Err(StoreError::TerminalExists {
            name: name.to_owned(),
            added: existing.added,
        });
    }
    let terminal = Registration {
        name: name.to_owned(),
        enabled: true,
        added: store::now_text(),
        note: note.map(str::to_owned),
        wireguard: None,
        scopes,
    };
    tx.execute(
        "INSERT INTO terminals (name, enabled, added, note, scopes) VALUES (?1, 1, ?2, ?3, ?4)",
        params![
            terminal.name,
            terminal.added,
            terminal.note,
            store::scopes_text(scopes)
        ],
    )
    .map_err(StoreError::sqlite(&db_path(tx), "add the terminal"))?;
    Ok(terminal)
}

/// Records `peer` for the registered terminal `name` inside the caller's transaction, refusing a
/// second identity and a key or address that another terminal has.
fn attach(tx: &Connection, name: &str, peer: &WireGuardPeer) -> Result<()> {
    let path = db_path(tx);
    let current = find(tx, name)?.ok_or_else(|| unknown(name))?;
    if let Some(existing) = current.wireguard {
        return Err(StoreError::WireGuardExists {
            name: name.to_owned(),
            address: existing.address,
        });
    }
    let key = peer.public_key.to_base64();
    let holder = |column: &str, value: &str| {
        tx.query_row(
            &format!("SELECT name FROM terminals WHERE {column} = ?1"),
            params![value],
            |r| r.get::<_, String>(0),
        )
        .optional()
        .map_err(StoreError::sqlite(&path, "read the terminals"))
    };
    if let Some(by) = holder("wg_public_key", &key)? {
        return Err(StoreError::WireGuardKeyTaken { key, by });
    }
    if let Some(by) = holder("wg_address", &peer.address.to_string())? {
        return Err(StoreError::TunnelAddressTaken {
            address: peer.address,
            by,
        });
    }
    let mut psk = peer.preshared_key.as_ref().map(Secret::to_base64);
    let updated = tx.execute(
        "UPDATE terminals SET wg_public_key = ?2, wg_preshared_key = ?3, wg_address = ?4 WHERE name = ?1",
        params![name, key, psk, peer.address.to_string()],
    );
    psk.zeroize();
    updated.map_err(StoreError::sqlite(
        &path,
        "give the terminal a WireGuard identity",
    ))?;
    Ok(())
}

/// Enables or disables a terminal; refuses (changing nothing) if it already is so. A terminal
/// disabled on the appliance stays disabled through later bundles until it is enabled here.
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
    // Disabled here, it is the appliance's to enable again: a later bundle does not re-enable
    // it (see `appliance::import`).
    tx.execute(
        "UPDATE terminals SET enabled = ?2, origin = CASE WHEN ?2 THEN origin ELSE 'local' END WHERE name = ?1",
        params![name, enabled],
    )
    .and_then(|_| tx.commit())
    .map_err(StoreError::sqlite(&path, "change the terminal"))?;
    Ok(())
}

/// Replaces what may be called from a terminal; the running gateway applies it at its next
/// reload (SIGHUP), to connections already open too.
pub fn set_scopes(conn: &Connection, name: &str, scopes: Scopes) -> Result<()> {
    let path = db_path(conn);
    let n = conn
        .execute(
            "UPDATE terminals SET scopes = ?2 WHERE name = ?1",
            params![name, store::scopes_text(scopes)],
        )
        .map_err(StoreError::sqlite(&path, "change the terminal"))?;
    if n == 0 { Err(unknown(name)) } else { Ok(()) }
}

/// Removes a terminal from the inventory; its certificate should be revoked too.
pub fn remove(conn: &Connection, name: &str) -> Result<Registration> {
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

fn find(conn: &Connection, name: &str) -> Result<Option<Registration>> {
    let path = db_path(conn);
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM terminals WHERE name = ?1"),
        params![name],
        from_row,
    )
    .optional()
    .map_err(StoreError::sqlite(&path, "read the terminal"))?
    .map(|row| row.parse(&path))
    .transpose()
}

/// A terminal's row as stored, before its WireGuard columns are checked.
struct Row {
    terminal: Registration,
    public_key: Option<String>,
    preshared_key: Option<Zeroizing<String>>,
    address: Option<String>,
    scopes: Option<String>,
}

impl Row {
    /// The terminal, or what is wrong with its WireGuard columns (edited by hand, or damaged).
    fn parse(mut self, path: &std::path::Path) -> Result<Registration> {
        let corrupt = |what: String| StoreError::Corrupt {
            path: path.to_owned(),
            what: format!("terminal {:?}: {what}", self.terminal.name),
        };
        let peer = match (self.public_key.as_deref(), self.address.as_deref()) {
            (None, None) => None,
            (Some(key), Some(address)) => Some(WireGuardPeer {
                public_key: PublicKey::from_base64(key)
                    .map_err(|e| corrupt(format!("wg_public_key: {e}")))?,
                preshared_key: match self.preshared_key.as_deref() {
                    Some(psk) => Some(
                        Secret::from_base64(psk).map_err(|e| corrupt(format!("wg_preshared_key: {e}")))?,
                    ),
                    None => None,
                },
                address: address
                    .parse()
                    .map_err(|_| corrupt(format!("wg_address: expected an IPv4 address, got {address:?}")))?,
            }),
            _ => {
                return Err(corrupt(
                    "a WireGuard key without an address, or the reverse".into(),
                ));
            }
        };
        self.terminal.wireguard = peer;
        self.terminal.scopes = store::scopes_column(
            path,
            &format!("terminal {:?}", self.terminal.name),
            self.scopes.as_deref(),
        )?;
        Ok(self.terminal)
    }
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        terminal: Registration {
            name: r.get(0)?,
            enabled: r.get(1)?,
            added: r.get(2)?,
            note: r.get(3)?,
            wireguard: None,
            scopes: Scopes::ALL,
        },
        public_key: r.get(4)?,
        preshared_key: r.get::<_, Option<String>>(5)?.map(Zeroizing::new),
        address: r.get(6)?,
        scopes: r.get(7)?,
    })
}

fn unknown(name: &str) -> StoreError {
    StoreError::UnknownTerminal {
        name: name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_disable_enable_remove_and_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = store::open(tmp.path()).unwrap();
        add(&conn, "reception-1", Some("front desk"), Scopes::ALL).unwrap();
        add(&conn, "dr.sato@clinic", None, Scopes::ALL).unwrap();
        assert!(matches!(
            add(&conn, "reception-1", None, Scopes::ALL),
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
        assert_eq!(inv.get("reception-1").map(|t| t.enabled), Some(false));
        assert_eq!(inv.get("dr.sato@clinic").map(|t| t.enabled), Some(true));
        assert!(inv.get("nobody").is_none());
        assert_eq!(
            inv.get("reception-1").unwrap().note.as_deref(),
            Some("front desk")
        );
        remove(&conn, "reception-1").unwrap();
        assert!(matches!(
            remove(&conn, "reception-1"),
            Err(StoreError::UnknownTerminal { .. })
        ));
        assert!(add(&conn, ".hidden", None, Scopes::ALL).is_err());
        assert!(add(&conn, "ok", Some("two\nlines"), Scopes::ALL).is_err());
    }

    fn peer(address: Ipv4Addr, psk: bool) -> WireGuardPeer {
        WireGuardPeer {
            public_key: Secret::generate().unwrap().public_key(),
            preshared_key: psk.then(|| Secret::generate().unwrap()),
            address,
        }
    }

    /// Enrolls with a fresh key and no preshared key.
    fn enroll(conn: &Connection, name: &str, how: Enroll<'_>, net: &TunnelNet) -> Result<Registration> {
        enroll_wireguard(conn, name, how, net, |a| Ok((peer(a, false), ()))).map(|(t, ())| t)
    }

    #[test]
    fn wireguard_identities_are_unique_looked_up_and_listed_without_the_psk() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = store::open(tmp.path()).unwrap();
        add(&conn, "tablet-1", None, Scopes::ALL).unwrap();
        add(&conn, "tablet-2", None, Scopes::ALL).unwrap();
        add(&conn, "tls-only", None, Scopes::ALL).unwrap();
        let one = peer(Ipv4Addr::new(10, 77, 0, 2), true);
        set_wireguard(&conn, "tablet-1", &one).unwrap();
        assert!(matches!(
            set_wireguard(&conn, "tablet-1", &peer(Ipv4Addr::new(10, 77, 0, 9), false)),
            Err(StoreError::WireGuardExists { .. })
        ));
        let same_key = WireGuardPeer {
            address: Ipv4Addr::new(10, 77, 0, 3),
            ..one.clone()
        };
        let err = set_wireguard(&conn, "tablet-2", &same_key).unwrap_err();
        assert!(
            err.to_string()
                .contains("already the key of terminal \"tablet-1\""),
            "{err}"
        );
        let same_address = peer(one.address, false);
        let err = set_wireguard(&conn, "tablet-2", &same_address).unwrap_err();
        assert!(
            err.to_string().contains("10.77.0.2 is already the address"),
            "{err}"
        );
        assert!(matches!(
            set_wireguard(&conn, "ghost", &peer(Ipv4Addr::new(10, 77, 0, 4), false)),
            Err(StoreError::UnknownTerminal { .. })
        ));
        let two = peer(Ipv4Addr::new(10, 77, 0, 3), false);
        set_wireguard(&conn, "tablet-2", &two).unwrap();

        let inv = Inventory::load(&conn).unwrap();
        assert_eq!(inv.get("tablet-1").unwrap().wireguard.as_ref(), Some(&one));
        assert_eq!(inv.by_wireguard_key(&one.public_key).unwrap().name, "tablet-1");
        assert_eq!(inv.by_tunnel_address(two.address).unwrap().name, "tablet-2");
        assert!(inv.by_tunnel_address(Ipv4Addr::new(10, 77, 0, 4)).is_none());
        assert!(inv.by_wireguard_key(&PublicKey([7; 32])).is_none());
        assert_eq!(inv.get("tls-only").unwrap().wireguard, None);

        let json = serde_json::to_value(inv.iter().collect::<Vec<_>>()).unwrap();
        assert_eq!(json[0]["name"], "tablet-1");
        assert_eq!(json[0]["wireguard"]["address"], "10.77.0.2");
        assert_eq!(json[0]["wireguard"]["public_key"], one.public_key.to_base64());
        assert!(json[0]["wireguard"].get("preshared_key").is_none());
        assert!(json[2]["wireguard"].is_null());

        assert_eq!(clear_wireguard(&conn, "tablet-2").unwrap(), Some(two));
        assert!(
            Inventory::load(&conn)
                .unwrap()
                .by_tunnel_address(Ipv4Addr::new(10, 77, 0, 3))
                .is_none()
        );
        // Removing a terminal frees its key and address.
        remove(&conn, "tablet-1").unwrap();
        add(&conn, "tablet-3", None, Scopes::ALL).unwrap();
        set_wireguard(&conn, "tablet-3", &one).unwrap();
    }

    #[test]
    fn addresses_are_allocated_in_order_skipping_the_gateway_and_a_full_network_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = store::open(tmp.path()).unwrap();
        // /30: hosts .1 and .2, of which .2 is the gateway's: one terminal fits.
        let small: TunnelNet = "10.9.0.2/30".parse().unwrap();
        assert_eq!(free_address(&conn, &small).unwrap(), Ipv4Addr::new(10, 9, 0, 1));
        let net: TunnelNet = "10.77.0.1/24".parse().unwrap();
        let mut names = Vec::new();
        for i in 0..3 {
            let name = format!("t{i}");
            let (terminal, ()) = enroll_wireguard(
                &conn,
                &name,
                Enroll::New {
                    note: None,
                    scopes: Scopes::ALL,
                },
                &net,
                |address| Ok((peer(address, true), ())),
            )
            .unwrap();
            names.push(terminal.wireguard.unwrap().address);
        }
        assert_eq!(
            names,
            [
                Ipv4Addr::new(10, 77, 0, 2),
                Ipv4Addr::new(10, 77, 0, 3),
                Ipv4Addr::new(10, 77, 0, 4)
            ]
        );
        // A freed address in the middle is given again first.
        remove(&conn, "t1").unwrap();
        assert_eq!(free_address(&conn, &net).unwrap(), Ipv4Addr::new(10, 77, 0, 3));

        enroll(
            &conn,
            "only",
            Enroll::New {
                note: None,
                scopes: Scopes::ALL,
            },
            &small,
        )
        .unwrap();
        let err = enroll(
            &conn,
            "more",
            Enroll::New {
                note: None,
                scopes: Scopes::ALL,
            },
            &small,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("no free tunnel address left in 10.9.0.2/30"),
            "{err}"
        );
        assert!(
            Inventory::load(&conn).unwrap().get("more").is_none(),
            "nothing half-registered"
        );
    }

    #[test]
    fn a_failed_enrollment_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = store::open(tmp.path()).unwrap();
        let net: TunnelNet = "10.77.0.1/24".parse().unwrap();
        let failed = enroll_wireguard::<()>(
            &conn,
            "tablet",
            Enroll::New {
                note: None,
                scopes: Scopes::ALL,
            },
            &net,
            |_| Err(StoreError::Invalid("the config file could not be written".into())),
        );
        assert!(failed.is_err());
        assert!(Inventory::load(&conn).unwrap().is_empty());

        add(&conn, "reception", None, Scopes::ALL).unwrap();
        assert!(matches!(
            enroll(
                &conn,
                "reception",
                Enroll::New {
                    note: None,
                    scopes: Scopes::ALL
                },
                &net
            ),
            Err(StoreError::TerminalExists { .. })
        ));
        assert!(matches!(
            enroll(&conn, "ghost", Enroll::Existing, &net),
            Err(StoreError::UnknownTerminal { .. })
        ));
        enroll(&conn, "reception", Enroll::Existing, &net).unwrap();
        let err = enroll(&conn, "reception", Enroll::Existing, &net).unwrap_err();
        assert!(
            err.to_string()
                .contains("already has a WireGuard identity (tunnel address 10.77.0.2)"),
            "{err}"
        );
    }

    #[test]
    fn a_damaged_wireguard_column_is_reported_with_the_terminal() {
        let tmp = tempfile::tempdir().unwrap();
        let conn = store::open(tmp.path()).unwrap();
        add(&conn, "tablet", None, Scopes::ALL).unwrap();
        conn.execute(
            "UPDATE terminals SET wg_public_key = 'not base64!', wg_address = '10.77.0.2'",
            [],
        )
        .unwrap();
        let err = Inventory::load(&conn).unwrap_err().to_string();
        assert!(err.contains("terminal \"tablet\": wg_public_key"), "{err}");
    }
}
