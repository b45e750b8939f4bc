//! Readable summaries of certificates, CSRs, CRLs, PKCS#12 files and keys.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use x509_parser::prelude::*;

use crate::ca::{rfc3339, sha256_hex};
use crate::decode::{self, Kind};
use crate::error::{Error, Result};
use crate::index::Reason;
use crate::p12;

/// What one object in a file says about itself.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Summary {
    Certificate(CertSummary),
    Csr(CsrSummary),
    Crl(CrlSummary),
    Pkcs12 {
        key: Option<String>,
        certificates: Vec<CertSummary>,
    },
    PrivateKey {
        encrypted: bool,
    },
}

#[derive(Debug, Serialize)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    pub key: String,
    pub signature: String,
    pub ca: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_len: Option<u32>,
    pub key_usage: Vec<String>,
    pub extended_key_usage: Vec<String>,
    pub subject_alt_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority_key_id: Option<String>,
    pub sha256: String,
}

#[derive(Debug, Serialize)]
pub struct CsrSummary {
    pub subject: String,
    pub key: String,
    pub signature_valid: bool,
    pub requested_extensions: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct CrlSummary {
    pub issuer: String,
    pub this_update: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_update: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crl_number: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority_key_id: Option<String>,
    pub revoked: Vec<RevokedSummary>,
}

#[derive(Debug, Serialize)]
pub struct RevokedSummary {
    pub serial: String,
    pub date: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Summarizes every object in a file. A PKCS#12 file needs its password.
pub fn inspect(path: &Path, password: Option<&p12::Password>) -> Result<Vec<Summary>> {
    let bytes = crate::files::read(path)?;
    decode::objects(path, &bytes)?
        .iter()
        .map(|o| match o.kind {
            Kind::Certificate => cert(path, &o.der).map(Summary::Certificate),
            Kind::Csr => csr(path, &o.der).map(Summary::Csr),
            Kind::Crl => crl(path, &o.der).map(Summary::Crl),
            Kind::Pkcs12 => {
                let password = password.ok_or_else(|| {
                    Error::Refused(format!(
                        "{}: a PKCS#12 file: give its password with --password-file FILE",
                        path.display()
                    ))
                })?;
                let (key, certs) = p12::open(path, &o.der, password)?;
                Ok(Summary::Pkcs12 {
                    key,
                    certificates: certs.iter().map(|c| cert(path, c)).collect::<Result<_>>()?,
                })
            }
            Kind::PrivateKey => Ok(Summary::PrivateKey { encrypted: false }),
            Kind::EncryptedPrivateKey => Ok(Summary::PrivateKey { encrypted: true }),
        })
        .collect()
}

/// Summarizes a DER certificate.
pub fn cert(path: &Path, der: &[u8]) -> Result<CertSummary> {
    let (_, c) = X509Certificate::from_der(der).map_err(|e| Error::malformed(path, "certificate", e))?;
    let bad = |e: X509Error| Error::malformed(path, "certificate", e);
    let bc = c.basic_constraints().map_err(bad)?;
    let mut key_usage = Vec::new();
    if let Some(ku) = c.key_usage().map_err(bad)? {
        let names = [
            (ku.value.digital_signature(), "digitalSignature"),
            (ku.value.non_repudiation(), "nonRepudiation"),
            (ku.value.key_encipherment(), "keyEncipherment"),
            (ku.value.data_encipherment(), "dataEncipherment"),
            (ku.value.key_agreement(), "keyAgreement"),
            (ku.value.key_cert_sign(), "keyCertSign"),
            (ku.value.crl_sign(), "cRLSign"),
        ];
        key_usage = names
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| n.to_string())
            .collect();
    }
    let mut extended_key_usage = Vec::new();
    if let Some(eku) = c.extended_key_usage().map_err(bad)? {
        let e = eku.value;
        for (on, name) in [
            (e.any, "any"),
            (e.server_auth, "serverAuth"),
            (e.client_auth, "clientAuth"),
            (e.code_signing, "codeSigning"),
            (e.email_protection, "emailProtection"),
            (e.time_stamping, "timeStamping"),
            (e.ocsp_signing, "OCSPSigning"),
        ] {
            if on {
                extended_key_usage.push(name.to_string());
            }
        }
        extended_key_usage.extend(e.other.iter().map(|o| o.to_id_string()));
    }
    let subject_alt_names = match c.subject_alternative_name().map_err(bad)? {
        Some(san) => san.value.general_names.iter().map(general_name).collect(),
        None => Vec::new(),
    };
    let mut subject_key_id = None;
    let mut authority_key_id = None;
    for ext in c.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => subject_key_id = Some(colon_hex(id.0)),
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                authority_key_id = aki.key_identifier.as_ref().map(|id| colon_hex(id.0))
            }
            _ => {}
        }
    }
    Ok(CertSummary {
        subject: c.subject().to_string(),
        issuer: c.issuer().to_string(),
        serial: hex::encode_upper(c.raw_serial()),
        not_before: rfc3339(c.validity().not_before.to_datetime()),
        not_after: rfc3339(c.validity().not_after.to_datetime()),
        key: decode::describe_key(c.public_key()),
        signature: signature_name(&c.signature_algorithm.algorithm),
        ca: bc.as_ref().is_some_and(|b| b.value.ca),
        path_len: bc.and_then(|b| b.value.path_len_constraint),
        key_usage,
        extended_key_usage,
        subject_alt_names,
        subject_key_id,
        authority_key_id,
        sha256: sha256_hex(der),
    })
}

fn csr(path: &Path, der: &[u8]) -> Result<CsrSummary> {
    let (_, r) = X509CertificationRequest::from_der(der)
        .map_err(|e| Error::malformed(path, "certificate signing request", e))?;
    let requested_extensions = r
        .requested_extensions()
        .map(|exts| exts.map(|e| format!("{e:?}")).collect())
        .unwrap_or_default();
    Ok(CsrSummary {
        subject: r.certification_request_info.subject.to_string(),
        key: decode::describe_key(&r.certification_request_info.subject_pki),
        signature_valid: r.verify_signature().is_ok(),
        requested_extensions,
    })
}

fn crl(path: &Path, der: &[u8]) -> Result<CrlSummary> {
    let (_, l) = CertificateRevocationList::from_der(der).map_err(|e| Error::malformed(path, "CRL", e))?;
    let authority_key_id = l.extensions().iter().find_map(|e| match e.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref().map(|id| colon_hex(id.0)),
        _ => None,
    });
    Ok(CrlSummary {
        issuer: l.issuer().to_string(),
        this_update: rfc3339(l.last_update().to_datetime()),
        next_update: l.next_update().map(|t| rfc3339(t.to_datetime())),
        crl_number: l.crl_number().map(|n| n.to_string()),
        authority_key_id,
        revoked: l
            .iter_revoked_certificates()
            .map(|r| RevokedSummary {
                serial: hex::encode_upper(r.raw_serial()),
                date: rfc3339(r.revocation_date.to_datetime()),
                reason: r.reason_code().map(|(_, code)| Reason::describe(code.0)),
            })
            .collect(),
    })
}

fn general_name(name: &GeneralName) -> String {
    match name {
        GeneralName::DNSName(d) => format!("dns:{d}"),
        GeneralName::IPAddress(b) => match b.len() {
            4 => format!("ip:{}", std::net::Ipv4Addr::from([b[0], b[1], b[2], b[3]])),
            16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(b);
                format!("ip:{}", std::net::Ipv6Addr::from(a))
            }
            _ => format!("ip:{}", hex::encode(b)),
        },
        GeneralName::RFC822Name(m) => format!("email:{m}"),
        GeneralName::URI(u) => format!("uri:{u}"),
        other => format!("{other}"),
    }
}

fn signature_name(oid: &x509_parser::oid_registry::Oid) -> String {
    match oid.to_id_string().as_str() {
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256".into(),
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384".into(),
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption".into(),
        "1.2.840.113549.1.1.12" => "sha384WithRSAEncryption".into(),
        "1.3.101.112" => "ED25519".into(),
        other => other.into(),
    }
}

fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Renders summaries for a person at a terminal.
pub fn render(summaries: &[Summary]) -> String {
    let mut out = String::new();
    for (i, s) in summaries.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        match s {
            Summary::Certificate(c) => render_cert(&mut out, c, ""),
            Summary::Csr(r) => {
                out.push_str("certificate signing request\n");
                row(&mut out, "", "subject", &r.subject);
                row(&mut out, "", "key", &r.key);
                row(
                    &mut out,
                    "",
                    "signature",
                    if r.signature_valid { "valid" } else { "INVALID" },
                );
                for e in &r.requested_extensions {
                    row(&mut out, "", "requests", e);
                }
            }
            Summary::Crl(l) => {
                out.push_str("certificate revocation list\n");
                row(&mut out, "", "issuer", &l.issuer);
                row(&mut out, "", "this update", &l.this_update);
                row(
                    &mut out,
                    "",
                    "next update",
                    l.next_update.as_deref().unwrap_or("(none)"),
                );
                row(
                    &mut out,
                    "",
                    "CRL number",
                    l.crl_number.as_deref().unwrap_or("(none)"),
                );
                if let Some(aki) = &l.authority_key_id {
                    row(&mut out, "", "authority key id", aki);
                }
                row(&mut out, "", "revoked", &l.revoked.len().to_string());
                for r in &l.revoked {
                    let reason = r.reason.as_deref().map(|x| format!(" ({x})")).unwrap_or_default();
                    let _ = writeln!(out, "    {}  {}{}", r.serial, r.date, reason);
                }
            }
            Summary::Pkcs12 { key, certificates } => {
                out.push_str("PKCS#12\n");
                row(&mut out, "", "private key", key.as_deref().unwrap_or("(none)"));
                for c in certificates {
                    render_cert(&mut out, c, "  ");
                }
            }
            Summary::PrivateKey { encrypted } => {
                out.push_str("private key\n");
                row(&mut out, "", "encrypted", if *encrypted { "yes" } else { "no" });
            }
        }
    }
    out
}

fn render_cert(out: &mut String, c: &CertSummary, indent: &str) {
    let _ = writeln!(out, "{indent}certificate");
    row(out, indent, "subject", &c.subject);
    row(out, indent, "issuer", &c.issuer);
    row(out, indent, "serial", &c.serial);
    row(out, indent, "not before", &c.not_before);
    row(out, indent, "not after", &c.not_after);
    row(out, indent, "key", &c.key);
    row(out, indent, "signature", &c.signature);
    let ca = match (c.ca, c.path_len) {
        (true, Some(n)) => format!("CA:TRUE, pathlen:{n}"),
        (true, None) => "CA:TRUE".into(),
        (false, _) => "CA:FALSE".into(),
    };
    row(out, indent, "basic constraints", &ca);
    row(out, indent, "key usage", &c.key_usage.join(", "));
    if !c.extended_key_usage.is_empty() {
        row(
            out,
            indent,
            "extended key usage",
            &c.extended_key_usage.join(", "),
        );
    }
    if !c.subject_alt_names.is_empty() {
        row(out, indent, "alt names", &c.subject_alt_names.join(", "));
    }
    if let Some(v) = &c.subject_key_id {
        row(out, indent, "subject key id", v);
    }
    if let Some(v) = &c.authority_key_id {
        row(out, indent, "authority key id", v);
    }
    row(out, indent, "sha256", &c.sha256);
}

fn row(out: &mut String, indent: &str, key: &str, value: &str) {
    let _ = writeln!(out, "{indent}  {:<19}{value}", format!("{key}:"));
}
