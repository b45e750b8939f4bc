//! WireGuard for terminals: keys, the clinic's tunnel network, and a terminal's config in the
//! standard `wg-quick` format and as a QR code.
//!
//! The vendor makes WireGuard terminals (`kakehashi provision terminal add --kind wireguard`) and
//! so does the appliance (`kakehashi terminal add --wireguard`): both write the same config with
//! this code. The format is the one every WireGuard client reads: `wg-quick up FILE` on Linux and
//! macOS, "import from file" on Windows, and the QR code scanned by the Android and iOS apps (the
//! text is the QR code's content, byte for byte).
//!
//! A config carries the terminal's private key, which neither the vendor nor the gateway stores:
//! every key lives in a [`Secret`] (wiped when dropped), every string and buffer holding one here
//! is a [`Zeroizing`] one, and every file written from it is mode 0600. (The `qrcode` crate's own
//! working buffers are outside our reach; they live only while a code is being made.)

use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::Error;

/// The MTU inside the tunnel when the configuration does not say (`wireguard.mtu`).
pub const DEFAULT_MTU: u16 = 1420;
/// `PersistentKeepalive` in terminal configs when the configuration does not say, seconds.
pub const DEFAULT_KEEPALIVE: u16 = 25;

/// A 32-byte secret: a private key or a preshared key. Never printed by `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret([u8; 32]);

impl PartialEq for Secret {
    /// In constant time, as every comparison of secrets here.
    fn eq(&self, other: &Secret) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&self.0, &other.0).is_ok()
    }
}

impl Eq for Secret {}

/// A public key: what the inventory stores to recognise a terminal.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl Secret {
    /// 32 bytes from the operating system's generator (aws-lc-rs, as every other key here).
    pub fn generate() -> Result<Secret, Error> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Error::Random)?;
        Ok(Secret(bytes))
    }

    pub fn from_base64(text: &str) -> Result<Secret, String> {
        decode32(text).map(Secret)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The public key of this private key (Curve25519, clamped as X25519 requires).
    pub fn public_key(&self) -> PublicKey {
        let secret = boringtun::x25519::StaticSecret::from(self.0);
        PublicKey(boringtun::x25519::PublicKey::from(&secret).to_bytes())
    }

    /// The key for boringtun.
    pub fn static_secret(&self) -> boringtun::x25519::StaticSecret {
        boringtun::x25519::StaticSecret::from(self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl PublicKey {
    pub fn from_base64(text: &str) -> Result<PublicKey, String> {
        decode32(text).map(PublicKey)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

fn decode32(text: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|e| format!("expected a WireGuard key (44 characters of base64): {e}"))?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("expected a 32-byte WireGuard key, got {} bytes", bytes.len()))
}

/// An IPv4 address with its network prefix: `10.77.0.1/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct TunnelNet {
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
}

impl TunnelNet {
    /// Whether `ip` is inside this network.
    pub fn contains(&self, ip: std::net::Ipv4Addr) -> bool {
        let mask = self.mask();
        u32::from(ip) & mask == u32::from(self.address) & mask
    }

    fn mask(&self) -> u32 {
        u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0)
    }

    /// The addresses a terminal may be given: the network's hosts except the gateway's own.
    pub fn hosts(&self) -> impl Iterator<Item = std::net::Ipv4Addr> + '_ {
        let network = u32::from(self.address) & self.mask();
        let broadcast = network | !self.mask();
        (network + 1..broadcast)
            .map(std::net::Ipv4Addr::from)
            .filter(move |ip| *ip != self.address)
    }
}

impl std::str::FromStr for TunnelNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected =
            || format!("expected an IPv4 address with its prefix such as \"10.77.0.1/24\", got {s:?}");
        let (ip, prefix) = s.split_once('/').ok_or_else(expected)?;
        let address: std::net::Ipv4Addr = ip.parse().map_err(|_| expected())?;
        let prefix: u8 = prefix.parse().map_err(|_| expected())?;
        if !(8..=30).contains(&prefix) {
            return Err(format!(
                "prefix /{prefix} in {s:?}: expected /8 to /30, room for terminals"
            ));
        }
        let net = TunnelNet { address, prefix };
        if u32::from(address) & !net.mask() == 0 || u32::from(address) | net.mask() == u32::MAX {
            return Err(format!(
                "{s:?}: the gateway needs a host address, not the network or broadcast address"
            ));
        }
        Ok(net)
    }
}

impl TryFrom<String> for TunnelNet {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::fmt::Display for TunnelNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// Modules of light margin around a QR code: the 4 the standard asks for, so scanners find it.
pub const QUIET_ZONE: usize = 4;
/// Pixels per module in a PNG: 8 gives a 500-odd pixel image that phones read from a screen or
/// paper.
pub const PNG_SCALE: usize = 8;

/// What a terminal needs to reach the gateway over WireGuard.
#[derive(Debug)]
pub struct TerminalConfig<'a> {
    /// The terminal's private key, generated for this config and stored nowhere else.
    pub private_key: &'a Secret,
    /// The terminal's tunnel address (its only allowed inner source address).
    pub address: Ipv4Addr,
    /// The MTU inside the tunnel (`wireguard.mtu`).
    pub mtu: u16,
    /// The gateway's public key.
    pub gateway_key: PublicKey,
    /// The preshared key both sides mix into the handshake, if any.
    pub preshared_key: Option<&'a Secret>,
    /// `host:port` of the gateway's UDP socket as the terminal reaches it.
    pub endpoint: &'a str,
    /// The gateway's own tunnel address: the only address routed into the tunnel, so the
    /// terminal's other traffic stays where it was.
    pub gateway_address: Ipv4Addr,
    /// Seconds between keepalives (0: none), for terminals behind NAT.
    pub persistent_keepalive: u16,
}

impl TerminalConfig<'_> {
    /// The `wg-quick` text: `[Interface]` and one `[Peer]`, the gateway.
    pub fn text(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(512));
        // Writing into a String cannot fail.
        let _ = write!(
            text,
            "[Interface]\nPrivateKey = {}\nAddress = {}/32\nMTU = {}\n\n[Peer]\nPublicKey = {}\n",
            Zeroizing::new(self.private_key.to_base64()).as_str(),
            self.address,
            self.mtu,
            self.gateway_key,
        );
        if let Some(psk) = self.preshared_key {
            let _ = writeln!(
                text,
                "PresharedKey = {}",
                Zeroizing::new(psk.to_base64()).as_str()
            );
        }
        let _ = write!(
            text,
            "Endpoint = {}\nAllowedIPs = {}/32\n",
            self.endpoint, self.gateway_address
        );
        if self.persistent_keepalive != 0 {
            let _ = writeln!(text, "PersistentKeepalive = {}", self.persistent_keepalive);
        }
        text
    }
}

/// A QR code's modules (`true` is dark), row by row, without the quiet zone.
pub struct Qr {
    modules: Zeroizing<Vec<bool>>,
    width: usize,
}

impl std::fmt::Debug for Qr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Qr({0}×{0})", self.width)
    }
}

impl Qr {
    /// The QR code of `text`, at error correction level L as `qrencode` makes them for
    /// `wg-quick`: the smallest code, which matters for a config of some 300 bytes.
    pub fn new(text: &str) -> Result<Qr, Error> {
        let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::L).map_err(
            |e| {
                Error::Invalid(format!(
                    "the WireGuard config ({} bytes) does not fit a QR code: {e}",
                    text.len()
                ))
            },
        )?;
        Ok(Qr {
            width: code.width(),
            modules: Zeroizing::new(
                code.to_colors()
                    .into_iter()
                    .map(|c| c == qrcode::Color::Dark)
                    .collect(),
            ),
        })
    }

    /// Modules per side, without the quiet zone.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Whether the module at (x, y) of the code with its quiet zone is dark.
    fn dark(&self, x: usize, y: usize) -> bool {
        let inside = |v: usize| v.checked_sub(QUIET_ZONE).filter(|v| *v < self.width);
        match (inside(x), inside(y)) {
            (Some(x), Some(y)) => self.modules[y * self.width + x],
            _ => false,
        }
    }

    /// Modules per side with the quiet zone.
    fn side(&self) -> usize {
        self.width + 2 * QUIET_ZONE
    }

    /// The code for a terminal: two modules per character cell with the half blocks `▀▄█`, as
    /// `qrencode -t ansiutf8` draws it. Each line sets its own colours (white blocks for light
    /// modules on a black background) and resets them at its end, so the code reads the same on
    /// a dark or a light terminal, quiet zone included.
    pub fn to_terminal(&self) -> Zeroizing<String> {
        let side = self.side();
        let mut out = Zeroizing::new(String::with_capacity((side * 3 + 16) * side.div_ceil(2)));
        for y in (0..side).step_by(2) {
            out.push_str("\x1b[40;97m");
            for x in 0..side {
                let top = !self.dark(x, y);
                // Below an odd last row, the margin goes on: light.
                let bottom = y + 1 >= side || !self.dark(x, y + 1);
                out.push(match (top, bottom) {
                    (true, true) => '█',
                    (true, false) => '▀',
                    (false, true) => '▄',
                    (false, false) => ' ',
                });
            }
            out.push_str("\x1b[0m\n");
        }
        out
    }

    /// A grayscale PNG: [`PNG_SCALE`] pixels per module, black on white, with the quiet zone.
    pub fn to_png(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        let pixels = self.side() * PNG_SCALE;
        let mut image = Zeroizing::new(vec![0u8; pixels * pixels]);
        for (i, pixel) in image.iter_mut().enumerate() {
            let (x, y) = (i % pixels / PNG_SCALE, i / pixels / PNG_SCALE);
            *pixel = if self.dark(x, y) { 0 } else { 255 };
        }
        let side = u32::try_from(pixels)
            .map_err(|_| Error::Invalid(format!("a QR code of {pixels} pixels is too large")))?;
        let mut png = Zeroizing::new(Vec::new());
        let failed = |e: png::EncodingError| Error::Invalid(format!("cannot encode the QR code as PNG: {e}"));
        let mut encoder = png::Encoder::new(&mut *png, side, side);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(failed)?;
        writer.write_image_data(&image).map_err(failed)?;
        writer.finish().map_err(failed)?;
        Ok(png)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_public_key_matches_wg() {
        // The RFC 7748 test vector (Alice), as `wg pubkey` computes it.
        let private = Secret::from_base64("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=").unwrap();
        assert_eq!(
            private.public_key().to_base64(),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
        assert!(PublicKey::from_base64("short").is_err());
        assert!(PublicKey::from_base64(&STANDARD.encode([0u8; 31])).is_err());
        assert_eq!(format!("{private:?}"), "Secret(…)");
    }

    fn config<'a>(private: &'a Secret, psk: Option<&'a Secret>, keepalive: u16) -> TerminalConfig<'a> {
        TerminalConfig {
            private_key: private,
            address: Ipv4Addr::new(10, 77, 0, 2),
            mtu: 1420,
            gateway_key: PublicKey([9; 32]),
            preshared_key: psk,
            endpoint: "clinic.example:51820",
            gateway_address: Ipv4Addr::new(10, 77, 0, 1),
            persistent_keepalive: keepalive,
        }
    }

    #[test]
    fn the_text_is_wg_quick_format_with_optional_lines() {
        let private = Secret::from_base64("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=").unwrap();
        let psk = Secret::from_base64(&PublicKey([1; 32]).to_base64()).unwrap();
        let text = config(&private, Some(&psk), 25).text();
        assert_eq!(
            text.as_str(),
            format!(
                "[Interface]\nPrivateKey = dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\nAddress = 10.77.0.2/32\n\
                 MTU = 1420\n\n[Peer]\nPublicKey = {}\nPresharedKey = {}\nEndpoint = clinic.example:51820\n\
                 AllowedIPs = 10.77.0.1/32\nPersistentKeepalive = 25\n",
                PublicKey([9; 32]),
                PublicKey([1; 32]),
            )
        );
        let bare = config(&private, None, 0).text();
        assert!(
            !bare.contains("PresharedKey") && !bare.contains("PersistentKeepalive"),
            "{}",
            *bare
        );
    }

    #[test]
    fn the_qr_code_has_its_quiet_zone_on_the_terminal_and_in_the_png() {
        let private = Secret::generate().unwrap();
        let psk = Secret::generate().unwrap();
        let text = config(&private, Some(&psk), 25).text();
        let qr = Qr::new(&text).unwrap();
        let side = qr.width() + 2 * QUIET_ZONE;

        let term = qr.to_terminal();
        let lines: Vec<&str> = term.lines().collect();
        assert_eq!(lines.len(), side.div_ceil(2));
        let cells = |l: &str| {
            l.trim_start_matches("\x1b[40;97m")
                .trim_end_matches("\x1b[0m")
                .to_owned()
        };
        assert!(lines.iter().all(|l| cells(l).chars().count() == side));
        // The first two lines are quiet zone: all light; the third starts the finder pattern.
        assert!(cells(lines[0]).chars().all(|c| c == '█'));
        assert!(cells(lines[2]).chars().nth(QUIET_ZONE).is_some_and(|c| c != '█'));

        let png = qr.to_png().unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let decoder = png::Decoder::new(std::io::Cursor::new(png.to_vec()));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut pixels).unwrap();
        assert_eq!(info.width as usize, side * PNG_SCALE);
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        // Light all around, dark where the top-left finder pattern begins.
        let at = |x: usize, y: usize| pixels[y * info.width as usize + x];
        assert_eq!(at(0, 0), 255);
        let corner = QUIET_ZONE * PNG_SCALE;
        assert_eq!(at(corner, corner), 0);
        assert_eq!(at(corner - 1, corner), 255);
    }

    #[test]
    fn tunnel_networks_parse_and_give_hosts_but_the_gateway() {
        let net: TunnelNet = "10.9.0.2/30".parse().unwrap();
        assert_eq!(net.to_string(), "10.9.0.2/30");
        assert_eq!(net.hosts().collect::<Vec<_>>(), [Ipv4Addr::new(10, 9, 0, 1)]);
        assert!(net.contains(Ipv4Addr::new(10, 9, 0, 3)) && !net.contains(Ipv4Addr::new(10, 9, 0, 4)));
        for bad in [
            "10.77.0.1", "10.77.0.0/24", "10.77.0.255/24", "10.77.0.1/31", "x/24",
        ] {
            assert!(bad.parse::<TunnelNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn too_much_for_a_qr_code_is_an_error_not_a_panic() {
        let err = Qr::new(&"x".repeat(8000)).unwrap_err().to_string();
        assert!(err.contains("does not fit a QR code"), "{err}");
    }
}
