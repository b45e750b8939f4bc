//! Finding the appliance: the one way every appliance command (`terminal`, `user`, `audit`,
//! `journal`, `gateway run|check|init|import-bundle`) learns where the appliance is.
//!
//! The rule, the same for every command:
//! 1. `--data-dir DIR` (or `KAKEHASHI_DATA_DIR`) names the data directory outright; the
//!    configuration is then not read for it;
//! 2. otherwise the configuration, `--config FILE` (or `KAKEHASHI_CONFIG`; default
//!    `/etc/kakehashi/gateway.toml`), names it with its `data_dir` (relative to the file);
//! 3. no `--data-dir` and no configuration file: an error that names both options.
//!
//! Finding the data directory only parses the configuration (strictly, as `gateway check` does:
//! a typo anywhere is reported with its file and key); it does not open the files the
//! configuration names. `kakehashi user list` has no business failing because the TLS key is
//! readable only by the gateway's user.
//!
//! Commands that use more of the configuration than its `data_dir` load it whole and checked
//! ([`ApplianceArgs::load`]): `gateway run` and `check`, `terminal revoke` (its `[est]` CA and
//! `tls.crl`), `terminal add --wireguard` and `terminal wireguard` (its `[wireguard]` section
//! and the gateway's key). They work where the gateway of that configuration works, so a
//! `--data-dir` naming another directory is refused there: mixing one gateway's settings with
//! another's state registers terminals that no running gateway admits.

use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};

/// The environment variable naming the data directory instead of the configuration's
/// `data_dir` (for tests and scripts).
pub const DATA_DIR_ENV: &str = "KAKEHASHI_DATA_DIR";
/// The environment variable naming the configuration (set by the systemd unit).
pub const CONFIG_ENV: &str = "KAKEHASHI_CONFIG";
/// The configuration when neither `--config` nor `KAKEHASHI_CONFIG` names one.
pub const DEFAULT_CONFIG: &str = "/etc/kakehashi/gateway.toml";

/// `--config FILE` and `--data-dir DIR`: where the appliance is. Accepted before or after the
/// subcommand (`kakehashi terminal --config F list` and `kakehashi terminal list --config F`).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ApplianceArgs {
    /// The gateway's configuration (gateway.toml); its data_dir is the appliance's data
    /// directory [default: /etc/kakehashi/gateway.toml]
    #[arg(long, value_name = "FILE", env = CONFIG_ENV, global = true)]
    pub config: Option<PathBuf>,
    /// The appliance's data directory, instead of the configuration's data_dir (commands that
    /// use the rest of the configuration too refuse a different one)
    #[arg(long, value_name = "DIR", env = DATA_DIR_ENV, global = true)]
    pub data_dir: Option<PathBuf>,
}

/// Why the appliance could not be found; every message names the options that would find it.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// Neither a data directory nor a configuration to read one from.
    #[error(
        "no configuration at {}{}, and no --data-dir: name the gateway's configuration with \
         --config FILE (or {CONFIG_ENV}), or its data directory with --data-dir DIR (or {DATA_DIR_ENV})",
        path.display(),
        if *default { " (the default of --config)" } else { "" }
    )]
    NoConfig { path: PathBuf, default: bool },
    /// The command needs the configuration itself, and there is none.
    #[error(
        "no configuration at {}{}: this command needs the gateway's configuration ({needs}); \
         name it with --config FILE (or {CONFIG_ENV})",
        path.display(),
        if *default { " (the default of --config)" } else { "" }
    )]
    ConfigNeeded {
        path: PathBuf,
        default: bool,
        needs: &'static str,
    },
    /// The configuration could not be read or is not valid (names the file and the key).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--data-dir` names another directory than the configuration that the command also uses.
    #[error(
        "--data-dir (or {DATA_DIR_ENV}) is {}, but {} says data_dir = {}: this command works \
         where the gateway of that configuration does; leave --data-dir out, or name the \
         configuration of {} with --config",
        given.display(),
        config.display(),
        data_dir.display(),
        given.display()
    )]
    Disagree {
        given: PathBuf,
        config: PathBuf,
        data_dir: PathBuf,
    },
}

impl ApplianceArgs {
    /// A configuration error, or, for a configuration file that does not exist, the error that
    /// names the options that would find the appliance (and what the command `needs` it for).
    fn missing(&self, e: ConfigError, needs: Option<&'static str>) -> LocateError {
        let path = self.config_file().to_owned();
        let default = self.config.is_none();
        match e {
            ConfigError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                match needs {
                    None => LocateError::NoConfig { path, default },
                    Some(needs) => LocateError::ConfigNeeded { path, default, needs },
                }
            }
            e => e.into(),
        }
    }

    /// The configuration file: `--config`, `KAKEHASHI_CONFIG` or the default.
    pub fn config_file(&self) -> &Path {
        self.config.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG))
    }

    /// The data directory: `--data-dir`, else the configuration's `data_dir` (parsed, not
    /// checked: see the module documentation).
    pub fn data_dir(&self) -> Result<PathBuf, LocateError> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        let path = self.config_file();
        let config = Config::parse(path).map_err(|e| self.missing(e, None))?;
        Ok(config.data_dir)
    }

    /// The configuration as written (parsed, not checked) and the data directory (`--data-dir`,
    /// else its `data_dir`), from one reading of the file: for a command that uses both, which
    /// must not come from two versions of a file rewritten in between. `needs` is said in the
    /// error when there is no configuration.
    pub fn parse(&self, needs: &'static str) -> Result<(Config, PathBuf), LocateError> {
        let config = Config::parse(self.config_file()).map_err(|e| self.missing(e, Some(needs)))?;
        let data_dir = self.data_dir.clone().unwrap_or_else(|| config.data_dir.clone());
        Ok((config, data_dir))
    }

    /// The whole configuration, checked as `gateway check` checks it, for a command that uses
    /// `needs` (said in the error when there is no configuration); a `--data-dir` that is not
    /// its `data_dir` is refused.
    pub fn load(&self, needs: &'static str) -> Result<Config, LocateError> {
        let path = self.config_file();
        let config = Config::load(path).map_err(|e| self.missing(e, Some(needs)))?;
        if let Some(given) = &self.data_dir
            && !same_path(given, &config.data_dir)
        {
            return Err(LocateError::Disagree {
                given: given.clone(),
                config: path.to_owned(),
                data_dir: config.data_dir,
            });
        }
        Ok(config)
    }
}

/// Whether two spellings name the same file or directory (either may not exist yet).
pub fn same_path(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MINIMAL;

    fn args(config: Option<&Path>, data_dir: Option<&Path>) -> ApplianceArgs {
        ApplianceArgs {
            config: config.map(Path::to_owned),
            data_dir: data_dir.map(Path::to_owned),
        }
    }

    #[test]
    fn data_dir_wins_then_the_configuration_then_an_error_naming_both_options() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("gateway.toml");
        let given = tmp.path().join("elsewhere");
        // --data-dir: the configuration is not even read.
        assert_eq!(args(Some(&file), Some(&given)).data_dir().unwrap(), given);

        let err = args(Some(&file), None).data_dir().unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "no configuration at {}, and no --data-dir",
                file.display()
            )) && err.contains("--config FILE (or KAKEHASHI_CONFIG)")
                && err.contains("--data-dir DIR (or KAKEHASHI_DATA_DIR)"),
            "{err}"
        );
        let err = args(None, None).data_dir().unwrap_err().to_string();
        assert!(
            err.contains("/etc/kakehashi/gateway.toml (the default of --config)"),
            "{err}"
        );

        // Parsed only: the files it names need not exist; data_dir is relative to the file.
        std::fs::write(&file, MINIMAL).unwrap();
        assert_eq!(
            args(Some(&file), None).data_dir().unwrap(),
            tmp.path().join("state")
        );
        // ... but a configuration that does not parse is reported as gateway check would.
        std::fs::write(&file, format!("{MINIMAL}\n[tls2]\n")).unwrap();
        let err = args(Some(&file), None).data_dir().unwrap_err().to_string();
        assert!(
            err.contains(&file.display().to_string()) && err.contains("tls2"),
            "{err}"
        );
    }

    #[test]
    fn load_checks_the_files_and_refuses_another_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("gateway.toml");
        let err = args(Some(&file), None)
            .load("its [est] section")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("needs the gateway's configuration (its [est] section)"),
            "{err}"
        );
        std::fs::write(&file, MINIMAL).unwrap();
        let err = args(Some(&file), None).load("x").unwrap_err().to_string();
        assert!(err.contains("tls.cert: cannot read"), "{err}");
    }
}
