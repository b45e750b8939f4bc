//! Does this certificate hold, for this CA, now?
//!
//! The same questions the gateway will ask of every terminal: signed by the clinic CA, inside its
//! validity period, allowed to authenticate, not revoked. The answer is a verdict with the reason,
//! not an error: an invalid certificate is a normal outcome.

use std::path::Path;

use ::time::OffsetDateTime;
use x509_parser::prelude::*;

use crate::ca::rfc3339;
use crate::error::{Error, Result};
use crate::index::Reason;
use crate::{decode, files};

/// The outcome of a verification.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid, with what the certificate is good for.
    Valid(String),
    /// Invalid, and why.
    Invalid(String),
}

/// Verifies `cert_path` against the CA in `ca_path` and, if given, the CRL in `crl_path`.
pub fn verify(
    ca_path: &Path,
    crl_path: Option<&Path>,
    cert_path: &Path,
    now: OffsetDateTime,
) -> Result<Verdict> {
    let ca_der = decode::certificate(ca_path)?;
    let cert_der = decode::certificate(cert_path)?;
    let (_, ca) =
        X509Certificate::from_der(&ca_der).map_err(|e| Error::malformed(ca_path, "CA certificate", e))?;
    let (_, cert) =
        X509Certificate::from_der(&cert_der).map_err(|e| Error::malformed(cert_path, "certificate", e))?;
    let at = ASN1Time::from(now);
    let invalid = |why: String| Ok(Verdict::Invalid(why));

    if !ca.is_ca() {
        return invalid(format!("{} is not a CA certificate", ca_path.display()));
    }
    if !ca.validity().is_valid_at(at) {
        return invalid(format!(
            "the CA certificate is outside its validity period ({} to {})",
            rfc3339(ca.validity().not_before.to_datetime()),
            rfc3339(ca.validity().not_after.to_datetime())
        ));
    }
    if cert.issuer().as_raw() != ca.subject().as_raw() {
        return invalid(format!(
            "issued by \"{}\", not by this CA (\"{}\")",
            cert.issuer(),
            ca.subject()
        ));
    }
    if cert.verify_signature(Some(ca.public_key())).is_err() {
        return invalid("its signature does not verify with the CA's key".into());
    }
    let validity = cert.validity();
    if at < validity.not_before {
        return invalid(format!(
            "not valid before {}",
            rfc3339(validity.not_before.to_datetime())
        ));
    }
    if at > validity.not_after {
        return invalid(format!(
            "expired on {}",
            rfc3339(validity.not_after.to_datetime())
        ));
    }
    if cert_der != ca_der && cert.is_ca() {
        return invalid("it is a CA certificate, not a terminal, server or uplink certificate".into());
    }
    let bad = |e: X509Error| Error::malformed(cert_path, "certificate", e);
    if let Some(ku) = cert.key_usage().map_err(bad)?
        && !ku.value.digital_signature()
        && cert_der != ca_der
    {
        return invalid("its key usage does not allow digitalSignature, which TLS needs".into());
    }
    let purposes = match cert.extended_key_usage().map_err(bad)? {
        Some(eku) => {
            let e = eku.value;
            let mut p = Vec::new();
            if e.client_auth || e.any {
                p.push("clientAuth");
            }
            if e.server_auth || e.any {
                p.push("serverAuth");
            }
            if p.is_empty() && cert_der != ca_der {
                return invalid("its extended key usage allows neither clientAuth nor serverAuth".into());
            }
            p.join(", ")
        }
        None => "any purpose".into(),
    };

    if let Some(crl_path) = crl_path
        && let Some(why) = revoked(&ca, crl_path, &cert, at)?
    {
        return invalid(why);
    }
    Ok(Verdict::Valid(format!(
        "{} (serial {}), {}, until {}{}",
        cert.subject(),
        hex::encode_upper(cert.raw_serial()),
        purposes,
        rfc3339(validity.not_after.to_datetime()),
        if crl_path.is_some() { ", not revoked" } else { "" },
    )))
}

/// Checks the CRL itself (issuer, signature, freshness), then looks for the certificate in it.
fn revoked(
    ca: &X509Certificate,
    crl_path: &Path,
    cert: &X509Certificate,
    at: ASN1Time,
) -> Result<Option<String>> {
    let der = decode::pem_or_der(crl_path, &files::read(crl_path)?, "X509 CRL")?;
    let (_, crl) =
        CertificateRevocationList::from_der(&der).map_err(|e| Error::malformed(crl_path, "CRL", e))?;
    if crl.issuer().as_raw() != ca.subject().as_raw() || crl.verify_signature(ca.public_key()).is_err() {
        return Ok(Some(format!(
            "the CRL {} was not signed by this CA",
            crl_path.display()
        )));
    }
    if let Some(next) = crl.next_update()
        && at > next
    {
        return Ok(Some(format!(
            "the CRL {} is out of date (next update was due {}): publish a new one with `kakehashi cert crl`",
            crl_path.display(),
            rfc3339(next.to_datetime())
        )));
    }
    let serial = cert.raw_serial();
    Ok(crl
        .iter_revoked_certificates()
        .find(|r| r.raw_serial() == serial)
        .map(|r| {
            let reason = r
                .reason_code()
                .map(|(_, c)| format!(" ({})", Reason::describe(c.0)))
                .unwrap_or_default();
            format!(
                "revoked on {}{}",
                rfc3339(r.revocation_date.to_datetime()),
                reason
            )
        }))
}
