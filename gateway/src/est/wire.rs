//! EST's encodings (RFC 7030 §4.2.1, §4.1.3; RFC 8951): bodies are base64 of DER, both ways.

use base64::Engine as _;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};

/// A PKCS#7 certs-only answer: base64 in lines of 64 characters, as `openssl base64` writes.
pub fn pkcs7(der: &[u8]) -> Response<Full<Bytes>> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut body = String::with_capacity(encoded.len() + encoded.len() / 64 + 1);
    for line in encoded.as_bytes().chunks(64) {
        body.push_str(std::str::from_utf8(line).unwrap_or_default());
        body.push('\n');
    }
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/pkcs7-mime; smime-type=certs-only"),
    );
    headers.insert(
        HeaderName::from_static("content-transfer-encoding"),
        HeaderValue::from_static("base64"),
    );
    resp
}

/// The DER of a CSR sent as base64 (white space anywhere). PEM armour is tolerated, since
/// `openssl req` writes it and the base64 inside is the same.
pub fn csr_body(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| {
        "the body is not base64 text: send the CSR's DER as base64 (RFC 7030 §4.2.1)".to_owned()
    })?;
    let inner: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("-----"))
        .flat_map(|l| l.chars().filter(|c| !c.is_ascii_whitespace()))
        .collect();
    if inner.is_empty() {
        return Err("the body is empty: expected a CSR, base64 DER".into());
    }
    base64::engine::general_purpose::STANDARD
        .decode(inner.as_bytes())
        .map_err(|e| format!("the body is not valid base64 ({e}): expected a CSR, base64 DER"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_bodies_in_base64_with_lines_or_pem_armour() {
        assert_eq!(
            csr_body(b"MIIB\r\nAAA=\n").unwrap(),
            [0x30, 0x82, 0x01, 0x00, 0x00]
        );
        assert_eq!(
            csr_body(b"-----BEGIN CERTIFICATE REQUEST-----\nMIIBAAA=\n-----END CERTIFICATE REQUEST-----\n")
                .unwrap()
                .len(),
            5
        );
        assert!(csr_body(b"").is_err());
        assert!(csr_body(b"not base64!").is_err());
        assert!(csr_body(&[0x30, 0x82, 0xff]).is_err());
    }
}
