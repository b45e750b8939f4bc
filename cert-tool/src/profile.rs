//! What each kind of certificate may do.
//!
//! A profile alone decides a certificate's extensions. Nothing a requester puts in a CSR reaches
//! the certificate except its public key and its common name: a request for `CA:TRUE` still gets a
//! terminal certificate.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::error::{Error, Result};

/// The certificate profiles a clinic CA issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// A clinic terminal authenticating to the gateway: clientAuth only.
    Terminal,
    /// The gateway's TLS server, named as the engine so terminals connect unchanged: serverAuth.
    Server,
    /// The gateway's own client certificate towards the cloud engine: clientAuth only.
    Uplink,
    /// A clinic's issuing CA on its appliance, signed by a vendor root: path length 0 and
    /// clientAuth only, so it can issue terminal certificates and nothing else. Signed by
    /// `kakehashi provision clinic add`, never on the `cert` command line.
    #[value(skip)]
    IssuingCa,
    /// A clinic CA held by the vendor, signed by a vendor root: path length 0; it issues the
    /// gateway's server certificate and the terminals the vendor makes. Made by `kakehashi
    /// provision clinic add`, never on the `cert` command line.
    #[value(skip)]
    ClinicCa,
}

impl Profile {
    /// The profile's name on the command line and in the index.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Terminal => "terminal",
            Profile::Server => "server",
            Profile::Uplink => "uplink",
            Profile::IssuingCa => "issuing-ca",
            Profile::ClinicCa => "clinic-ca",
        }
    }

    /// Whether certificates of this profile are CAs.
    pub fn is_ca(self) -> bool {
        matches!(self, Profile::IssuingCa | Profile::ClinicCa)
    }
}

/// A subject alternative name as given on the command line: `dns:NAME` or `ip:ADDR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

impl std::str::FromStr for San {
    type Err = String;

    fn from_str(s: &str) -> Result<San, String> {
        let (kind, value) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected dns:NAME or ip:ADDR"))?;
        match kind {
            "dns" => {
                let valid = !value.is_empty()
                    && value.len() <= 253
                    && value.split('.').enumerate().all(|(i, label)| {
                        let wildcard = i == 0 && label == "*";
                        wildcard
                            || (!label.is_empty()
                                && label.len() <= 63
                                && !label.starts_with('-')
                                && !label.ends_with('-')
                                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
                    });
                if !valid {
                    return Err(format!("{value:?} is not a DNS host name"));
                }
                Ok(San::Dns(value.to_ascii_lowercase()))
            }
            "ip" => value
                .parse()
                .map(San::Ip)
                .map_err(|_| format!("{value:?} is not an IPv4 or IPv6 address")),
            _ => Err(format!("{s:?}: unknown kind {kind:?}, expected dns: or ip:")),
        }
    }
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            San::Dns(name) => write!(f, "dns:{name}"),
            San::Ip(addr) => write!(f, "ip:{addr}"),
        }
    }
}

/// Checks a common name that also names files and index entries.
///
/// Letters and digits of any script (a terminal may be called 受付1), `.`, `-`, `_` and `@`; at most
/// 64 characters (the X.520 limit for a common name); never a path.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.chars().count() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'));
    if ok {
        Ok(())
    } else {
        Err(Error::Refused(format!(
            "{name:?}: not a usable name: use 1 to 64 letters, digits, '.', '-', '_' or '@', \
             not starting with '.'"
        )))
    }
}

/// The parameters of a certificate issued under `profile` (a leaf, or a CA under a vendor root).
pub fn issued_params(
    profile: Profile,
    name: &str,
    sans: &[San],
    serial: SerialNumber,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams> {
    check_name(name)?;
    if profile == Profile::Server && sans.is_empty() {
        return Err(Error::Refused(
            "the server profile needs at least one --san (dns:NAME or ip:ADDR): \
             TLS clients check the name there, not in the common name"
                .into(),
        ));
    }
    let usage = match profile {
        Profile::Terminal | Profile::Uplink => ExtendedKeyUsagePurpose::ClientAuth,
        Profile::Server => ExtendedKeyUsagePurpose::ServerAuth,
        Profile::IssuingCa | Profile::ClinicCa => {
            let mut params = ca_params(name, serial, not_before, not_after, 0);
            params.use_authority_key_identifier_extension = true;
            if profile == Profile::IssuingCa {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
            return Ok(params);
        }
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(name);
    params.serial_number = Some(serial);
    params.not_before = not_before;
    params.not_after = not_after;
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.subject_alt_names = sans
        .iter()
        .map(|san| match san {
            San::Dns(name) => name
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|_| Error::Refused(format!("{name:?} is not a DNS host name"))),
            San::Ip(addr) => Ok(SanType::IpAddress(*addr)),
        })
        .collect::<Result<_>>()?;
    Ok(params)
}

/// The parameters of a CA.
///
/// Path length 0 for a clinic CA: it signs terminal, server and uplink certificates and nothing
/// that could sign in turn, so a stolen terminal key never becomes a CA. A vendor root has path
/// length 1: it signs clinic and issuing CAs, which sign leaves only.
pub fn ca_params(
    name: &str,
    serial: SerialNumber,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    path_len: u8,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(name);
    params.serial_number = Some(serial);
    params.not_before = not_before;
    params.not_after = not_after;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    params
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_parse_or_say_why_not() {
        assert_eq!(
            "dns:Orca.Example.JP".parse(),
            Ok(San::Dns("orca.example.jp".into()))
        );
        assert_eq!(
            "ip:192.168.1.1".parse::<San>(),
            Ok(San::Ip([192, 168, 1, 1].into()))
        );
        assert!("ip:::1".parse::<San>().is_ok());
        assert!("dns:*.example.jp".parse::<San>().is_ok());
        for bad in [
            "orca.example.jp", "dns:", "dns:a..b", "dns:-a.jp", "dns:a_b.jp", "ip:300.1.1.1", "uri:x",
        ] {
            assert!(bad.parse::<San>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_are_safe_file_names() {
        for good in ["reception-1", "受付1", "dr.tanaka@clinic", "tablet_7"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".hidden", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
