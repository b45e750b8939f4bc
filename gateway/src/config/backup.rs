//! `[backup]`: where `kakehashi backup run` writes its archives and who can open them. Absent,
//! the backup commands refuse to run.
//!
//! The target is a directory (`dir`: a USB disk, a NAS mount) or an SFTP server (`sftp`: the
//! vendor's), reached through the system's OpenSSH client with a pinned host key
//! (`known_hosts`) and the appliance's own key (`identity`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Config, ConfigError};

/// A backup target and the archive's recipients.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backup {
    /// The directory archives go to: a USB disk or a NAS mount. Outside the data directory, or
    /// the backups would fill the disk they protect and die with it. Or `sftp`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The SFTP server archives go to, `sftp://USER@HOST[:PORT]/PATH` ([`SftpUrl`]). Or `dir`.
    #[serde(default)]
    pub sftp: Option<String>,
    /// With `sftp`: the server's host key, pinned (OpenSSH's `known_hosts` format). A server
    /// that shows another key is refused: that is what keeps the archives from an impostor.
    #[serde(default)]
    pub known_hosts: Option<PathBuf>,
    /// With `sftp`: the appliance's SSH private key (mode 0600), the login at the server.
    #[serde(default)]
    pub identity: Option<PathBuf>,
    /// Who can restore: age recipients (`age1…`), the clinic's and the vendor's. The appliance
    /// adds its own (`DATA_DIR/backup-self.key`), to verify each archive after writing it.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// More recipients, one per line (`#` comments), as `age -R` reads them.
    #[serde(default)]
    pub recipients_file: Option<PathBuf>,
    /// How many of this appliance's archives the directory keeps; older ones are removed once
    /// a new one is verified.
    #[serde(default = "default_keep")]
    pub keep: usize,
}

fn default_keep() -> usize {
    14
}

/// An SFTP target: `sftp://USER@HOST[:PORT]/PATH`, the form OpenSSH's `sftp` and most tools
/// take. `PATH` is absolute (`/srv/backups`); `/~/backups` is `backups` in the login's home.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SftpUrl {
    pub user: String,
    /// A host name or address; an IPv6 address without its brackets.
    pub host: String,
    pub port: u16,
    /// The directory at the server, as the SFTP server is asked for it.
    pub path: String,
}

impl SftpUrl {
    /// Parses the URL; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<SftpUrl, String> {
        let form = "the form is sftp://USER@HOST[:PORT]/PATH";
        let rest = text
            .strip_prefix("sftp://")
            .ok_or_else(|| format!("{text:?} does not begin with sftp://: {form}"))?;
        if rest
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '%')
        {
            return Err(format!(
                "{text:?}: white space, control characters and %-escapes are not read: {form}"
            ));
        }
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| format!("{text:?} names no directory: {form}"))?;
        let (user, hostport) = authority
            .rsplit_once('@')
            .ok_or_else(|| format!("{text:?} names no user (the login at the server): {form}"))?;
        let word = |s: &str| {
            !s.is_empty()
                && !s.starts_with('-')
                && s.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        };
        if !word(user) {
            return Err(format!(
                "{text:?}: the user {user:?} is not a login name (letters, digits, '.', '_', '-')"
            ));
        }
        let (host, port) = match hostport.strip_prefix('[') {
            Some(v6) => {
                let (addr, after) = v6
                    .split_once(']')
                    .ok_or_else(|| format!("{text:?}: an IPv6 address without its closing ']'"))?;
                if addr.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err(format!("{text:?}: {addr:?} is not an IPv6 address"));
                }
                (addr, after.strip_prefix(':'))
            }
            None => {
                let (host, port) = match hostport.split_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (hostport, None),
                };
                if !word(host) {
                    return Err(format!("{text:?}: {host:?} is not a host name or address"));
                }
                (host, port)
            }
        };
        let port = match port {
            None => 22,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{text:?}: the port {p:?} is not one (1 to 65535)"))?,
        };
        let path = match path.strip_prefix("~") {
            Some("") => ".".to_owned(),
            Some(home) => match home.strip_prefix('/') {
                Some("") => ".".to_owned(),
                Some(rel) => rel.trim_end_matches('/').to_owned(),
                None => return Err(format!("{text:?}: \"~user\" paths are not read: {form}")),
            },
            None => format!("/{}", path.trim_end_matches('/')),
        };
        Ok(SftpUrl {
            user: user.to_owned(),
            host: host.to_owned(),
            port,
            path,
        })
    }
}

impl std::fmt::Display for SftpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        };
        let path = match self.path.strip_prefix('/') {
            Some(abs) => abs.to_owned(),
            None if self.path == "." => "~".to_owned(),
            None => format!("~/{}", self.path),
        };
        write!(f, "sftp://{}@{host}:{}/{path}", self.user, self.port)
    }
}

impl Backup {
    /// The SFTP target, when there is one (checked by `gateway check`).
    pub fn sftp_url(&self) -> Option<Result<SftpUrl, String>> {
        self.sftp.as_deref().map(SftpUrl::parse)
    }
}

impl Config {
    pub(super) fn check_backup(&self) -> Result<(), ConfigError> {
        let Some(b) = &self.backup else { return Ok(()) };
        match (&b.dir, b.sftp_url()) {
            (Some(_), Some(_)) => {
                return Err(self.invalid("backup.sftp", "one target: backup.dir or backup.sftp, not both"));
            }
            (None, None) => {
                return Err(self.invalid(
                    "backup.dir",
                    "no target: name backup.dir (a USB disk, a NAS mount) or backup.sftp \
                     (sftp://USER@HOST/PATH, the vendor's server)",
                ));
            }
            (Some(dir), None) => {
                if dir.starts_with(&self.data_dir) {
                    return Err(self.invalid(
                        "backup.dir",
                        format!(
                            "{} is inside data_dir {}: backups must leave the disk they protect (a USB disk, a NAS mount)",
                            dir.display(),
                            self.data_dir.display()
                        ),
                    ));
                }
                for (key, set) in [
                    ("backup.known_hosts", b.known_hosts.is_some()),
                    ("backup.identity", b.identity.is_some()),
                ] {
                    if set {
                        return Err(self.invalid(key, "only with backup.sftp"));
                    }
                }
            }
            (None, Some(url)) => {
                url.map_err(|e| self.invalid("backup.sftp", e))?;
                if b.known_hosts.is_none() {
                    return Err(self.invalid(
                        "backup.known_hosts",
                        "missing: backup.sftp needs the server's host key pinned in a known_hosts file",
                    ));
                }
                if b.identity.is_none() {
                    return Err(self.invalid(
                        "backup.identity",
                        "missing: backup.sftp needs the appliance's SSH private key to log in",
                    ));
                }
            }
        }
        if !(1..=1000).contains(&b.keep) {
            return Err(self.invalid("backup.keep", "from 1 to 1000 archives"));
        }
        let listed = self.backup_recipients()?;
        if listed.is_empty() {
            return Err(self.invalid(
                "backup.recipients",
                "no recipient: name the clinic's and the vendor's age recipients (age1…), or a recipients_file; \
                 without one nobody but this appliance could restore",
            ));
        }
        Ok(())
    }

    /// The SFTP target's files: the pinned host keys and the private key, which must be the
    /// appliance's alone (mode 0600, as `ssh` itself insists).
    pub(super) fn check_backup_files(&self) -> Result<(), ConfigError> {
        let Some(b) = &self.backup else { return Ok(()) };
        for (key, path) in [
            ("backup.known_hosts", &b.known_hosts),
            ("backup.identity", &b.identity),
        ] {
            // ssh takes white space as a list, '%' as its tokens, '"' as quoting in these.
            if let Some(path) = path
                && path
                    .to_str()
                    .is_none_or(|t| t.chars().any(|c| c.is_whitespace() || c == '%' || c == '"'))
            {
                return Err(self.invalid(
                    key,
                    format!(
                        "{}: ssh would read its white space, '%' or '\"' as its own syntax: name a path without them",
                        path.display()
                    ),
                ));
            }
        }
        if let Some(path) = &b.known_hosts {
            let text = std::fs::read_to_string(path).map_err(|e| {
                self.invalid(
                    "backup.known_hosts",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let keys = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .count();
            if keys == 0 {
                return Err(self.invalid(
                    "backup.known_hosts",
                    format!(
                        "{} holds no host key: add the server's (`ssh-keyscan -p PORT HOST`, its fingerprint \
                         checked with the vendor)",
                        path.display()
                    ),
                ));
            }
        }
        if let Some(path) = &b.identity {
            check_private_key(path).map_err(|e| self.invalid("backup.identity", e))?;
        }
        Ok(())
    }

    /// The configured recipients (not the appliance's own), each checked.
    pub fn backup_recipients(&self) -> Result<Vec<age::x25519::Recipient>, ConfigError> {
        let Some(b) = &self.backup else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (i, text) in b.recipients.iter().enumerate() {
            let r = text.trim().parse().map_err(|e| {
                self.invalid(
                    format!("backup.recipients[{i}]"),
                    format!("{text:?} is not an age X25519 recipient (age1…): {e}"),
                )
            })?;
            out.push(r);
        }
        if let Some(path) = &b.recipients_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                self.invalid(
                    "backup.recipients_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let r = line.parse().map_err(|e| {
                    self.invalid(
                        "backup.recipients_file",
                        format!(
                            "{} line {}: not an age X25519 recipient (age1…): {e}",
                            path.display(),
                            n + 1
                        ),
                    )
                })?;
                out.push(r);
            }
        }
        Ok(out)
    }
}

/// A private key file: readable, and nobody's but its owner's (mode 0600 or stricter).
fn check_private_key(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is mode {mode:04o}: a private key others can read is refused (`chmod 600 {}`)",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::SftpUrl;

    #[test]
    fn sftp_urls_are_read_strictly() {
        let u = SftpUrl::parse("sftp://backup@nas.example:2222/srv/kakehashi/").expect("a URL");
        assert_eq!(
            (u.user.as_str(), u.host.as_str(), u.port, u.path.as_str()),
            ("backup", "nas.example", 2222, "/srv/kakehashi")
        );
        assert_eq!(u.to_string(), "sftp://backup@nas.example:2222/srv/kakehashi");
        let home = SftpUrl::parse("sftp://k@[::1]/~/backups").expect("a URL");
        assert_eq!(
            (home.host.as_str(), home.port, home.path.as_str()),
            ("::1", 22, "backups")
        );
        assert_eq!(home.to_string(), "sftp://k@[::1]:22/~/backups");
        assert_eq!(SftpUrl::parse("sftp://k@h/~").expect("home").path, ".");
        for (bad, why) in [
            ("https://k@h/x", "does not begin with sftp://"),
            ("sftp://h/x", "names no user"),
            ("sftp://k@h", "names no directory"),
            ("sftp://k@h:0/x", "is not one"),
            ("sftp://k@h:ssh/x", "is not one"),
            ("sftp://k@-oProxyCommand=x/x", "is not a host name"),
            ("sftp://-l@h/x", "is not a login name"),
            ("sftp://k@h/a b", "white space"),
            ("sftp://k@h/a%20b", "%-escapes"),
            ("sftp://k@[::1/x", "closing"),
            ("sftp://k@h/~other/x", "~user"),
        ] {
            let err = SftpUrl::parse(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
