//! `[est]`: enrollment over EST (RFC 7030), the one listener a client may reach without a
//! certificate. Its check ties it to the rest of the file: it needs `tls.crl`, where the
//! appliance writes the CRL when it revokes, and an address no terminal listener has.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{Config, ConfigError};

/// The EST listener: the one place a client may connect without a certificate, and where
/// nothing but enrollment exists. The appliance issues terminal certificates with the clinic CA
/// in `ca_dir`, and writes the CRL to `tls.crl` when it revokes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Est {
    /// `IP:PORT` of the EST listener (TLS with the gateway's server certificate).
    pub listen: SocketAddr,
    /// The clinic CA's directory (`kakehashi cert init-ca --dir`); its `ca.pem` must be one of
    /// the `tls.client_ca` certificates, so that what it issues is admitted.
    pub ca_dir: PathBuf,
    /// First line: the CA key's passphrase (mode 0600). Absent: the key must be unencrypted.
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
    /// Lifetime of an issued terminal certificate, days.
    #[serde(default = "default_est_days")]
    pub days: u32,
    /// Days until the next update of a CRL the appliance signs (after a revocation or renewal).
    #[serde(default = "default_crl_days")]
    pub crl_days: u32,
}

fn default_est_days() -> u32 {
    365
}
fn default_crl_days() -> u32 {
    7
}

impl Config {
    pub(super) fn check_est(&self) -> Result<(), ConfigError> {
        let Some(est) = &self.est else {
            return Ok(());
        };
        let ca = est.ca_dir.join("ca.pem");
        if let Err(e) = std::fs::File::open(&ca) {
            return Err(self.invalid(
                "est.ca_dir",
                format!(
                    "expected a CA directory (kakehashi cert init-ca): cannot read {}: {e}",
                    ca.display()
                ),
            ));
        }
        if let Some(p) = &est.passphrase_file
            && let Err(e) = std::fs::File::open(p)
        {
            return Err(self.invalid("est.passphrase_file", format!("cannot read {}: {e}", p.display())));
        }
        if self.tls.crl.is_none() {
            return Err(self.invalid(
                "tls.crl",
                "[est] needs it: the appliance writes the CRL there when it revokes or renews",
            ));
        }
        if self.listeners.iter().any(|l| l.address == est.listen) {
            return Err(self.invalid(
                "est.listen",
                format!(
                    "{} is a terminal listener's address; EST needs its own",
                    est.listen
                ),
            ));
        }
        if !(1..=3650).contains(&est.days) {
            return Err(self.invalid("est.days", "expected 1 to 3650"));
        }
        if !(1..=365).contains(&est.crl_days) {
            return Err(self.invalid("est.crl_days", "expected 1 to 365"));
        }
        Ok(())
    }
}
