//! Whether a terminal may connect: one rule for every door, and for the re-check after a reload.
//!
//! A terminal is admitted when its proof holds and the inventory has it registered and enabled.
//! The proof is a client certificate that chains to the clinic CA, is valid now and is not on the
//! CRL (WebPKI's checks), whose subject CN names the terminal; or the static key of a WireGuard
//! peer, which the inventory maps to a terminal. The TLS door runs this rule inside the handshake
//! (see [`crate::doors::tls`]), the WireGuard door when a tunnel connection opens, and every
//! long-lived connection again when a reload changes the snapshot, so a terminal disabled or
//! revoked by the reload loses its connections too.

use std::sync::Arc;

use rustls::CertificateError;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

use engine_proxy::scope::Scopes;

use crate::doors::identity::{self, Proof, Terminal};
use crate::doors::wireguard::keys::PublicKey;
use crate::store::inventory::Inventory;

/// Why a terminal is not admitted. Its text is what the audit log records.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no client certificate")]
    NoCertificate,
    /// WebPKI refused the certificate (chain, validity, CRL).
    #[error("{}", describe(.0))]
    Certificate(rustls::Error),
    #[error("the certificate names no terminal: {0}")]
    NoName(String),
    #[error("terminal {0:?} is not registered in the inventory")]
    Unregistered(String),
    #[error("terminal {0:?} is disabled")]
    Disabled(String),
    #[error("the WireGuard key is no longer registered")]
    UnknownKey,
}

/// The rule, with the inventory and the clinic CA (and CRL) of one snapshot.
#[derive(Clone, Debug)]
pub struct Admission {
    inventory: Arc<Inventory>,
    /// WebPKI's chain, validity and CRL checks against the clinic CA.
    webpki: Arc<dyn ClientCertVerifier>,
}

impl Admission {
    pub fn new(inventory: Arc<Inventory>, webpki: Arc<dyn ClientCertVerifier>) -> Admission {
        Admission { inventory, webpki }
    }

    pub fn inventory(&self) -> &Arc<Inventory> {
        &self.inventory
    }

    /// WebPKI's verifier, for what rustls asks of a client verifier besides the verdict (root
    /// hints, signature checks).
    pub fn webpki(&self) -> &Arc<dyn ClientCertVerifier> {
        &self.webpki
    }

    /// The inventory's half of the rule: registered, and enabled now; and what it may call.
    pub fn registered(&self, name: &str) -> Result<Scopes, Refusal> {
        match self.inventory.get(name) {
            Some(t) if t.enabled => Ok(t.scopes),
            Some(_) => Err(Refusal::Disabled(name.to_owned())),
            None => Err(Refusal::Unregistered(name.to_owned())),
        }
    }

    /// A client certificate (leaf and intermediates): WebPKI's checks, then the terminal it names.
    pub fn certificate(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<String, Refusal> {
        self.webpki
            .verify_client_cert(leaf, intermediates, now)
            .map_err(Refusal::Certificate)?;
        let name = identity::terminal_name(leaf).map_err(Refusal::NoName)?;
        self.registered(&name)?;
        Ok(name)
    }

    /// A WireGuard peer's static key: the terminal it is registered to, if that one is enabled,
    /// and what it may call.
    pub fn wireguard(&self, key: &PublicKey) -> Result<(Terminal, Scopes), Refusal> {
        let registered = self.inventory.by_wireguard_key(key).ok_or(Refusal::UnknownKey)?;
        let scopes = self.registered(&registered.name)?;
        Ok((Terminal::from_wireguard(&registered.name, key), scopes))
    }

    /// Whether a terminal admitted under an earlier snapshot still is under this one, and what
    /// it may call now.
    pub fn proof(&self, proof: &Proof) -> Result<Scopes, Refusal> {
        match proof {
            Proof::WireGuard(key) => self.wireguard(key).map(|(_, scopes)| scopes),
            Proof::Certificate(chain) => {
                let (leaf, intermediates) = chain.split_first().ok_or(Refusal::NoCertificate)?;
                let name = self.certificate(leaf, intermediates, UnixTime::now())?;
                self.registered(&name)
            }
        }
    }
}

/// A TLS or certificate error in words an operator reads in the audit log.
pub fn describe(error: &rustls::Error) -> String {
    use rustls::Error as E;
    match error {
        E::NoCertificatesPresented => "no client certificate".into(),
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "client certificate not issued by the clinic CA".into(),
            CertificateError::Revoked => "client certificate revoked".into(),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "client certificate expired".into()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "client certificate not yet valid".into()
            }
            CertificateError::Other(other) => other.0.to_string(),
            other => format!("client certificate refused: {other:?}"),
        },
        E::PeerIncompatible(why) => format!("client offers nothing the policy allows: {why:?}"),
        E::InvalidMessage(_) | E::InappropriateHandshakeMessage { .. } | E::InappropriateMessage { .. } => {
            format!("not a TLS client: {error}")
        }
        other => format!("handshake failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::inventory::{self, WireGuardPeer};
    use crate::testing::Clinic;

    #[test]
    fn certificates_of_registered_enabled_terminals_only() {
        let c = Clinic::new(&[("reception-1", true), ("lost-laptop", false)], &[]);
        let rule = c.live.now().admission.clone();
        let now = UnixTime::now();
        let name = rule.certificate(&c.certificate("reception-1"), &[], now).unwrap();
        assert_eq!(name, "reception-1");
        let refused = |r: Result<String, Refusal>| r.unwrap_err().to_string();
        assert_eq!(
            refused(rule.certificate(&c.certificate("lost-laptop"), &[], now)),
            "terminal \"lost-laptop\" is disabled"
        );
        assert_eq!(
            refused(rule.certificate(&c.certificate("stranger"), &[], now)),
            "terminal \"stranger\" is not registered in the inventory"
        );
        let elsewhere = Clinic::new(&[], &[]);
        assert_eq!(
            refused(rule.certificate(&elsewhere.certificate("reception-1"), &[], now)),
            "client certificate not issued by the clinic CA"
        );
        assert!(matches!(
            rule.proof(&Proof::Certificate(Vec::new())),
            Err(Refusal::NoCertificate)
        ));
    }

    #[test]
    fn a_wireguard_key_is_admitted_as_the_terminal_it_is_registered_to() {
        let c = Clinic::new(&[("tablet", true), ("old-tablet", false)], &[]);
        let conn = crate::store::open(&c.data_dir).unwrap();
        let key = |name: &str, address: [u8; 4]| {
            let public_key = crate::doors::wireguard::keys::Secret::generate()
                .unwrap()
                .public_key();
            let peer = WireGuardPeer {
                public_key,
                preshared_key: None,
                address: address.into(),
            };
            inventory::set_wireguard(&conn, name, &peer).unwrap();
            public_key
        };
        let (tablet, old) = (key("tablet", [10, 77, 0, 2]), key("old-tablet", [10, 77, 0, 3]));
        c.reload();
        let rule = c.live.now().admission.clone();
        let (terminal, _) = rule.wireguard(&tablet).unwrap();
        assert_eq!(terminal.name, "tablet");
        assert_eq!(
            terminal.fingerprint,
            Terminal::from_wireguard("tablet", &tablet).fingerprint
        );
        assert!(matches!(rule.wireguard(&old), Err(Refusal::Disabled(_))));
        let unknown = crate::doors::wireguard::keys::Secret::generate()
            .unwrap()
            .public_key();
        assert!(matches!(
            rule.proof(&Proof::WireGuard(unknown)),
            Err(Refusal::UnknownKey)
        ));
    }
}
