//! Who is on the other end of a connection: the terminal, named by its certificate.
//!
//! Two front doors identify a terminal: TLS by its client certificate, whose subject CN is the
//! terminal's inventory name (cert-tool writes it so), and WireGuard by the peer's static public key,
//! registered in the inventory. Either way the [`Proof`] stays with the connection so a reload can
//! ask again, and its SHA-256 fingerprint binds a login session to it, so a stolen cookie is useless
//! on another terminal.

use engine_proxy::scope::Scopes;
use rustls::pki_types::CertificateDer;

use crate::doors::wireguard::keys::PublicKey;

/// A terminal that passed the handshake: its certificate chained to the clinic CA and was not
/// revoked, or its WireGuard key completed a handshake; and it was enabled in the inventory then.
#[derive(Clone, Debug)]
pub struct Terminal {
    pub name: String,
    pub fingerprint: [u8; 32],
}

impl Terminal {
    /// The identity of a completed handshake's client certificate.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Result<Terminal, String> {
        let name = terminal_name(cert)?;
        Ok(Terminal {
            name,
            fingerprint: sha256(&[cert.as_ref()]),
        })
    }

    /// The identity of a WireGuard peer registered under `name`.
    pub fn from_wireguard(name: &str, key: &PublicKey) -> Terminal {
        Terminal {
            name: name.to_owned(),
            // Domain-separated, so no certificate can share a peer's fingerprint.
            fingerprint: sha256(&[b"kakehashi wireguard peer\0", &key.0]),
        }
    }
}

/// What proved a terminal's identity, kept with its connections for the re-check after a reload.
#[derive(Clone, Debug)]
pub enum Proof {
    /// A TLS client certificate chain, leaf first.
    Certificate(Vec<CertificateDer<'static>>),
    /// The static public key of the WireGuard peer the connection came through.
    WireGuard(PublicKey),
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = engine_proxy::digest::Sha256::default();
    for p in parts {
        h.update(p);
    }
    h.finish()
}

/// The subject CN of a certificate, which names the terminal.
pub fn terminal_name(cert: &CertificateDer<'_>) -> Result<String, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("unparsable certificate: {e}"))?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .ok_or("the subject has no CN")?
        .as_str()
        .map_err(|e| format!("the subject CN is not a string: {e}"))?;
    Ok(cn.to_owned())
}

/// A terminal a door admitted: who, proven how, and under which snapshot it was checked last.
#[derive(Clone, Debug)]
pub struct Identified {
    pub terminal: Terminal,
    pub proof: Proof,
    /// The generation of the snapshot ([`crate::doors::live::Snapshot`]) that admitted it.
    pub generation: u64,
    /// What the inventory let it call under that snapshot.
    pub scopes: Scopes,
}
