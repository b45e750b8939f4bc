//! `kakehashi firmware install URL`: an image fetched over HTTPS (through a redirect, checked
//! against `firmware.ca`) and over plain HTTP, streamed into the inactive slot; a server whose
//! certificate is not trusted, a download cut mid-payload, one that stalls past
//! `fetch_timeout_secs`, a tampered image, a missing one and a server announcing more bytes than
//! the signed manifest: each refused with the URL and the reason, nothing left in the slot,
//! nothing on trial.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;

use super::firmware::{Clinic, assert_audited, image_of, status};
use crate::support::{kakehashi, s};

/// What the image server answers for a path.
#[derive(Clone)]
enum Answer {
    /// `200 OK` and these bytes.
    Whole(Vec<u8>),
    /// `200 OK` announcing all of these bytes, then the connection closed after the first `n`.
    Cut(Vec<u8>, usize),
    /// A redirect to this path.
    Redirect(&'static str),
    /// `200 OK` announcing all of these bytes, the first `n` sent, then nothing for 20 s.
    Stall(Vec<u8>, usize),
}

/// A small file server, HTTPS with the demo's server certificate or plain HTTP: what a
/// vendor's update server does, and what a broken one does. One thread per connection.
fn serve(tls: Option<Arc<rustls::ServerConfig>>, answers: HashMap<&'static str, Answer>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let answers = Arc::new(answers);
    std::thread::spawn(move || {
        for tcp in listener.incoming().map_while(Result::ok) {
            let (tls, answers) = (tls.clone(), answers.clone());
            std::thread::spawn(move || {
                let _ = match tls {
                    Some(config) => {
                        let Ok(conn) = rustls::ServerConnection::new(config) else {
                            return;
                        };
                        answer(&mut rustls::StreamOwned::new(conn, tcp), &answers)
                    }
                    None => answer(&mut { tcp }, &answers),
                };
            });
        }
    });
    port
}

fn answer(stream: &mut impl ReadWrite, answers: &HashMap<&'static str, Answer>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        if stream.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split(' ').nth(1).unwrap_or("/");
    let ok = |stream: &mut dyn Write, body: &[u8], sent: usize| -> std::io::Result<()> {
        write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )?;
        stream.write_all(&body[..sent])?;
        stream.flush()
    };
    match answers.get(path) {
        Some(Answer::Whole(body)) => ok(stream, body, body.len())?,
        Some(Answer::Cut(body, n)) => ok(stream, body, *n)?,
        Some(Answer::Stall(body, n)) => {
            ok(stream, body, *n)?;
            std::thread::sleep(std::time::Duration::from_secs(20));
        }
        Some(Answer::Redirect(to)) => {
            write!(
                stream,
                "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n"
            )?;
        }
        None => stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?,
    }
    stream.flush()
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The demo clinic's server certificate (issued for 127.0.0.1 by the clinic CA).
fn tls_config(clinic: &Path) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(clinic.join("server.pem"))
        .expect("server.pem")
        .collect::<Result<Vec<_>, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(clinic.join("server.key")).expect("server.key");
    Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config"),
    )
}

/// Changes `firmware.ca` from `engine.pem` to `ca`.
fn set_ca(config: &Path, ca: &str) {
    let text = std::fs::read_to_string(config).expect("gateway.toml");
    let changed = text.replace("ca = \"engine.pem\"", &format!("ca = \"{ca}\""));
    assert_ne!(text, changed, "firmware.ca in the clinic's gateway.toml");
    std::fs::write(config, changed).expect("write");
}

#[test]
fn firmware_install_from_a_url_streams_into_the_slot_and_refuses_what_is_broken() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // The CA a server must chain to: at first a certificate that issued nothing.
    let Clinic {
        dir: clinic, config, ..
    } = Clinic::new(tmp.path(), "ca = \"engine.pem\"\nfetch_timeout_secs = 2\n");
    kakehashi(&["gateway", "check", "--config", s(&config)]).ok();
    // Sixteen 64 KiB chunks and a bit.
    let payload: Vec<u8> = (0..(16 * 65536 + 100)).map(|i| (i % 253) as u8).collect();
    let good = std::fs::read(image_of(&clinic, "0.2.0", &payload)).expect("image");
    let payload_at = good.len() - payload.len();
    let mut tampered = good.clone();
    tampered[payload_at + 5 * 65536 + 7] ^= 1;
    let mut longer = good.clone();
    longer.extend_from_slice(b"appended");
    let next = std::fs::read(image_of(&clinic, "0.2.1", &payload[..70000])).expect("image");
    let answers = HashMap::from([
        ("/kakehashi-0.2.0.img", Answer::Whole(good.clone())),
        ("/latest", Answer::Redirect("/kakehashi-0.2.0.img")),
        ("/cut.img", Answer::Cut(good.clone(), payload_at + 3 * 65536 + 10)),
        ("/stall.img", Answer::Stall(good.clone(), payload_at + 65536)),
        ("/tampered.img", Answer::Whole(tampered)),
        ("/longer.img", Answer::Whole(longer)),
        ("/kakehashi-0.2.1.img", Answer::Whole(next)),
    ]);
    let https = serve(Some(tls_config(&clinic)), answers.clone());
    let http = serve(None, answers);
    let url = |path: &str| format!("https://127.0.0.1:{https}{path}");
    let install = |url: &str| kakehashi(&["firmware", "install", url, "--config", s(&config)]);
    let nothing_in_slot_b = || {
        let st = status(&config);
        assert!(st["trial"].is_null() && st["slots"]["b"].is_null(), "{st}");
        assert!(!clinic.join("slots/b/.kakehashi.partial").exists());
    };

    // A server whose certificate does not chain to firmware.ca: refused at the handshake.
    let latest = url("/latest");
    install(&latest).fails_with(&[
        &latest,
        "cannot connect to 127.0.0.1",
        "the TLS handshake",
        "UnknownIssuer",
    ]);
    assert!(!clinic.join("slots").exists(), "a refused download wrote nothing");
    set_ca(&config, "ca.pem");

    // Refused before or while the payload streams: the URL and the reason named.
    let missing = url("/kakehashi-9.9.9.img");
    install(&missing).fails_with(&[&missing, "404 Not Found"]);
    let cut = url("/cut.img");
    install(&cut).fails_with(&[&cut, "cut short after", &format!("of {} bytes", good.len())]);
    nothing_in_slot_b();
    let stall = url("/stall.img");
    install(&stall).fails_with(&[
        &stall,
        &format!(
            "the server sent nothing for 2 s after {} of {} bytes",
            payload_at + 65536,
            good.len()
        ),
    ]);
    nothing_in_slot_b();
    let tampered = url("/tampered.img");
    install(&tampered).fails_with(&[&format!(
        "{tampered}: chunk 5 of the payload does not match its SHA-256"
    )]);
    nothing_in_slot_b();
    install(&url("/longer.img")).fails_with(&[
        &format!("announces {} bytes", good.len() + 8),
        &format!("makes the image {} bytes", good.len()),
    ]);
    nothing_in_slot_b();

    // Over HTTPS through a redirect: installed, on trial, byte for byte.
    let out = install(&latest).ok();
    assert!(
        out.contains(&format!("from {}", url("/kakehashi-0.2.0.img"))),
        "{out}"
    );
    let st = status(&config);
    assert_eq!(
        (st["trial"]["version"].as_str(), st["trial"]["slot"].as_str()),
        (Some("0.2.0"), Some("b"))
    );
    assert_eq!(
        std::fs::read(clinic.join("slots/b/kakehashi")).expect("slot b"),
        payload
    );

    // Over plain HTTP: the signature is the same check.
    kakehashi(&["firmware", "rollback", "--config", s(&config)]).ok();
    install(&format!("http://127.0.0.1:{http}/kakehashi-0.2.1.img")).ok();
    assert_eq!(status(&config)["trial"]["version"], "0.2.1");

    // An expiry in the past is refused at build time (the appliance refuses an expired image:
    // the firmware crate's unit tests).
    let payload_file = clinic.join("payload-0.2.0");
    kakehashi(&[
        "firmware",
        "build",
        "--version",
        "0.3.0",
        "--binary",
        s(&payload_file),
        "--key",
        s(&clinic.join("firmware.key")),
        "--out",
        s(&clinic.join("expired.img")),
        "--expires",
        "2020-01-01",
    ])
    .fails_with(&["--expires 2020-01-01T00:00:00Z: that is not in the future"]);

    assert_audited(
        &config,
        &[
            &format!("image {cut} refused"),
            &format!("from {}", url("/kakehashi-0.2.0.img")),
        ],
    );
}
