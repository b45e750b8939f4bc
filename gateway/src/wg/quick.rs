//! A terminal's WireGuard config in the standard `wg-quick` format, and the same as a QR code.
//!
//! The format is the one every WireGuard client reads: `wg-quick up FILE` on Linux and macOS,
//! "import from file" on Windows, and the QR code scanned by the Android and iOS apps (the text
//! is the QR code's content, byte for byte). The config carries the terminal's private key, which
//! the gateway never stores: every string and buffer holding it here is a [`Zeroizing`] one,
//! wiped when dropped, and every file written from it is mode 0600. (The `qrcode` crate's own
//! working buffers are outside our reach; they live only while a code is being made.)

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use zeroize::Zeroizing;

use crate::db::StoreError;
use crate::wg::keys::{PublicKey, Secret};

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
    pub fn new(text: &str) -> Result<Qr, StoreError> {
        let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::L).map_err(
            |e| {
                StoreError::Invalid(format!(
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
    pub fn to_png(&self) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let pixels = self.side() * PNG_SCALE;
        let mut image = Zeroizing::new(vec![0u8; pixels * pixels]);
        for (i, pixel) in image.iter_mut().enumerate() {
            let (x, y) = (i % pixels / PNG_SCALE, i / pixels / PNG_SCALE);
            *pixel = if self.dark(x, y) { 0 } else { 255 };
        }
        let side = u32::try_from(pixels)
            .map_err(|_| StoreError::Invalid(format!("a QR code of {pixels} pixels is too large")))?;
        let mut png = Zeroizing::new(Vec::new());
        let failed =
            |e: png::EncodingError| StoreError::Invalid(format!("cannot encode the QR code as PNG: {e}"));
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
    fn too_much_for_a_qr_code_is_an_error_not_a_panic() {
        let err = Qr::new(&"x".repeat(8000)).unwrap_err().to_string();
        assert!(err.contains("does not fit a QR code"), "{err}");
    }
}
