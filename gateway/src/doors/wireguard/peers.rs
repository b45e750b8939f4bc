//! The peers: one boringtun `Tunn` per WireGuard terminal in the inventory, and the three ways a
//! packet finds its peer.
//!
//! A handshake initiation names its sender only inside the encryption, so it is matched by the
//! static key that boringtun's anonymous parse recovers ([`Peers::by_key`]); every later packet
//! carries the receiver index the gateway chose, whose upper 24 bits are the peer's slot
//! ([`Peers::by_index`]); a packet leaving the gateway is matched by its destination address, the
//! peer's tunnel address ([`Peers::by_address`]).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use boringtun::noise::Tunn;
use boringtun::noise::rate_limiter::RateLimiter;

use crate::doors::admission::Admission;
use crate::doors::wireguard::keys::{PublicKey, Secret};
use crate::store::inventory::{Registration, WireGuardPeer};

/// One WireGuard terminal.
pub struct Peer {
    /// The terminal's name, for logs; who the peer is for the routes is the admission rule's to
    /// say when a connection opens (`super::admit`).
    pub name: String,
    pub key: PublicKey,
    /// The only inner source address its packets may carry.
    pub address: Ipv4Addr,
    pub tunn: Tunn,
    /// Where its latest authenticated packet came from: where replies go (roaming).
    pub endpoint: Option<SocketAddr>,
    /// Changes to the inventory entry that need a new `Tunn` (a new preshared key).
    psk: Option<Secret>,
}

/// Every peer, by slot, key and tunnel address.
#[derive(Default)]
pub struct Peers {
    slots: Vec<Option<Peer>>,
    free: Vec<usize>,
    by_key: HashMap<PublicKey, usize>,
    by_address: HashMap<Ipv4Addr, usize>,
}

/// The largest slot a receiver index can name (boringtun keeps the low 8 bits for sessions).
const MAX_SLOTS: usize = 1 << 24;

impl Peers {
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn by_key(&self, key: &PublicKey) -> Option<usize> {
        self.by_key.get(key).copied()
    }

    /// The slot a receiver index names.
    pub fn by_index(&self, receiver_index: u32) -> Option<usize> {
        let slot = (receiver_index >> 8) as usize;
        self.slots.get(slot)?.as_ref().map(|_| slot)
    }

    pub fn by_address(&self, ip: Ipv4Addr) -> Option<usize> {
        self.by_address.get(&ip).copied()
    }

    pub fn get(&self, slot: usize) -> Option<&Peer> {
        self.slots.get(slot)?.as_ref()
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Peer> {
        self.slots.get_mut(slot)?.as_mut()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Peer> {
        self.slots.iter_mut().flatten()
    }

    /// Makes the table match the WireGuard terminals the admission rule admits. A peer that was
    /// removed, disabled or given another key or address loses its `Tunn` (its sessions end at
    /// once); the addresses of those peers are returned so their streams can be cut too. An
    /// unchanged peer keeps its session.
    pub fn sync(
        &mut self,
        admission: &Admission,
        private: &Secret,
        limiter: &Arc<RateLimiter>,
    ) -> Vec<Ipv4Addr> {
        let wanted: HashMap<PublicKey, (&Registration, &WireGuardPeer)> = admission
            .inventory()
            .iter()
            .filter(|t| admission.registered(&t.name).is_ok())
            .filter_map(|t| t.wireguard.as_ref().map(|w| (w.public_key, (t, w))))
            .collect();
        let mut cut = Vec::new();
        let stale: Vec<usize> = self
            .by_key
            .iter()
            .filter(|(key, slot)| {
                let Some(peer) = self.slots[**slot].as_ref() else {
                    return true;
                };
                match wanted.get(key) {
                    Some((t, w)) => {
                        t.name != peer.name || w.address != peer.address || w.preshared_key != peer.psk
                    }
                    None => true,
                }
            })
            .map(|(_, slot)| *slot)
            .collect();
        for slot in stale {
            if let Some(peer) = self.slots[slot].take() {
                self.by_key.remove(&peer.key);
                self.by_address.remove(&peer.address);
                cut.push(peer.address);
                self.free.push(slot);
            }
        }
        for (key, (t, w)) in wanted {
            if self.by_key.contains_key(&key) || self.by_address.contains_key(&w.address) {
                continue;
            }
            let slot = match self.free.pop() {
                Some(s) => s,
                None if self.slots.len() < MAX_SLOTS => {
                    self.slots.push(None);
                    self.slots.len() - 1
                }
                None => {
                    tracing::error!(terminal = %t.name, "more WireGuard peers than receiver indexes; not added");
                    continue;
                }
            };
            let tunn = Tunn::new(
                private.static_secret(),
                boringtun::x25519::PublicKey::from(key.0),
                w.preshared_key.as_ref().map(|k| *k.bytes()),
                None,
                slot as u32,
                Some(limiter.clone()),
            );
            self.slots[slot] = Some(Peer {
                name: t.name.clone(),
                key,
                address: w.address,
                tunn,
                endpoint: None,
                psk: w.preshared_key.clone(),
            });
            self.by_key.insert(key, slot);
            self.by_address.insert(w.address, slot);
        }
        cut
    }
}
