//! The version floor: the highest version ever committed on this appliance. An image must be
//! above it, so neither a downgrade nor a replay of an old signed image installs. It only rises,
//! and it is written atomically (a file in the data directory).

use std::path::{Path, PathBuf};

use crate::{Error, Result, Version, atomic};

/// The floor's file, `firmware.floor` in the data directory.
pub const FILE: &str = "firmware.floor";

pub struct Floor {
    path: PathBuf,
}

impl Floor {
    pub fn new(data_dir: &Path) -> Floor {
        Floor {
            path: data_dir.join(FILE),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The floor, or `None` if none was ever set.
    pub fn read(&self) -> Result<Option<Version>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => text
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| Error::State(format!("{}: {e}", self.path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("cannot read", &self.path)(e)),
        }
    }

    /// Raises the floor to `version`; a lower or equal version leaves it as it is.
    pub fn raise(&self, version: &Version) -> Result<Version> {
        match self.read()? {
            Some(floor) if floor >= *version => Ok(floor),
            _ => {
                atomic::write(&self.path, format!("{version}\n").as_bytes(), 0o644)?;
                Ok(version.clone())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_only_rises() {
        let dir = tempfile::tempdir().expect("dir");
        let floor = Floor::new(dir.path());
        assert_eq!(floor.read().expect("read"), None);
        let v = |s: &str| s.parse::<Version>().expect("version");
        floor.raise(&v("1.2")).expect("raise");
        floor.raise(&v("1.1")).expect("raise");
        assert_eq!(floor.read().expect("read"), Some(v("1.2")));
        floor.raise(&v("1.3")).expect("raise");
        assert_eq!(floor.read().expect("read"), Some(v("1.3")));
    }
}
