//! Who is on the other end of a connection: the terminal, named by its certificate.
//!
//! The certificate's subject CN is the terminal's inventory name (cert-tool writes it so). Its
//! SHA-256 fingerprint binds a login session to the certificate that created it, so a stolen
//! cookie is useless on another terminal.

use rustls::pki_types::CertificateDer;

/// A terminal that passed the handshake: its certificate chained to the clinic CA, was not
/// revoked, and its name was enabled in the inventory at that moment.
#[derive(Clone, Debug)]
pub struct Terminal {
    pub name: String,
    pub fingerprint: [u8; 32],
}

impl Terminal {
    /// The identity of a completed handshake's client certificate.
    pub fn from_certificate(cert: &CertificateDer<'_>) -> Result<Terminal, String> {
        let name = terminal_name(cert)?;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.as_ref());
        let mut fingerprint = [0; 32];
        fingerprint.copy_from_slice(digest.as_ref());
        Ok(Terminal { name, fingerprint })
    }
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
