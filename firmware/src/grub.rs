//! The GRUB environment block backend: the boot state in the file GRUB's `load_env` reads, in
//! the format `grub-editenv` writes.
//!
//! The block is a file of fixed size (1024 bytes as `grub-editenv create` makes it; whatever
//! size it has is kept): the line `# GRUB Environment Block`, then `name=value` lines (a `\` or
//! a line break in a value is escaped with a `\`), lines beginning with `#` that GRUB skips,
//! then `#` up to the end. Every line this backend does not own is written back as it was, in
//! its place.
//!
//! **A write replaces the file whole**: the new block is written beside it, synced, renamed over
//! it and the directory synced ([`crate::atomic`]), so power loss leaves the old block or the
//! new one. (`grub-editenv` rewrites the block in place; GRUB finds the file by name at every
//! boot, so a new file serves it the same.) A symlink to the block, as some distributions keep
//! under `/boot/grub`, is followed: the file it points to is replaced, the link kept.

use std::borrow::Cow;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::bootloader::{BootEnv, Bootloader};
use crate::vars::{self, Vars};
use crate::{Error, Result, atomic};

/// Where GRUB keeps its environment block on a BIOS or EFI installation of Debian.
pub const DEFAULT_PATH: &str = "/boot/grub/grubenv";

const SIGNATURE: &[u8] = b"# GRUB Environment Block\n";

/// A GRUB environment block file.
pub struct GrubEnv {
    path: PathBuf,
}

impl GrubEnv {
    pub fn new(path: &Path) -> GrubEnv {
        GrubEnv {
            path: path.to_owned(),
        }
    }

    fn error(&self, why: impl Into<String>) -> Error {
        Error::Env {
            place: self.path.display().to_string(),
            why: why.into(),
        }
    }

    /// The block's bytes, or what is wrong with the file.
    fn load(&self, path: &Path) -> Result<Block> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.error(format!(
                    "does not exist: create it with `grub-editenv {} create`",
                    self.path.display()
                )));
            }
            Err(e) => return Err(Error::io("cannot read", path)(e)),
        };
        Block::parse(&bytes).map_err(|why| self.error(why))
    }
}

impl Bootloader for GrubEnv {
    fn read(&self) -> Result<Option<BootEnv>> {
        vars::decode(&self.load(&self.path)?, &self.path.display().to_string())
    }

    fn write(&self, env: &BootEnv) -> Result<()> {
        let path = std::fs::canonicalize(&self.path).map_err(Error::io("cannot resolve", &self.path))?;
        let mut block = self.load(&path)?;
        vars::encode(env, &mut block);
        let bytes = block.to_bytes().map_err(|needed| {
            self.error(format!(
                "full: the variables need {needed} bytes and the block holds {}",
                block.size
            ))
        })?;
        let mode = std::fs::metadata(&path)
            .map_err(Error::io("cannot read the mode of", &path))?
            .permissions()
            .mode();
        atomic::write(&path, &bytes, mode & 0o7777)
    }
}

/// The block: its size and its lines after the signature, each as stored (escapes kept, the
/// line break left off).
struct Block {
    size: usize,
    lines: Vec<Vec<u8>>,
}

impl Block {
    fn parse(bytes: &[u8]) -> Result<Block, String> {
        let Some(mut rest) = bytes.strip_prefix(SIGNATURE) else {
            return Err("not a GRUB environment block: it does not begin with \
                        \"# GRUB Environment Block\""
                .into());
        };
        let mut lines = Vec::new();
        while let Some(end) = line_end(rest) {
            lines.push(rest[..end].to_vec());
            rest = &rest[end + 1..];
        }
        if rest.iter().any(|&b| b != b'#') {
            return Err(format!(
                "damaged: its last {} bytes are neither lines nor # padding",
                rest.len()
            ));
        }
        Ok(Block {
            size: bytes.len(),
            lines,
        })
    }

    /// The block padded with `#` to its size; the bytes needed if it does not fit.
    fn to_bytes(&self) -> Result<Vec<u8>, usize> {
        let mut bytes = SIGNATURE.to_vec();
        for line in &self.lines {
            bytes.extend_from_slice(line);
            bytes.push(b'\n');
        }
        if bytes.len() > self.size {
            return Err(bytes.len());
        }
        bytes.resize(self.size, b'#');
        Ok(bytes)
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.lines.iter().position(|line| {
            line.strip_prefix(name.as_bytes())
                .is_some_and(|rest| rest.first() == Some(&b'='))
        })
    }
}

/// Where the line at the start of `bytes` ends: the first line break not escaped by a `\`.
fn line_end(bytes: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'\n' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

impl Vars for Block {
    fn get(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        let line = &self.lines[self.position(name)?];
        let mut value = Vec::new();
        let mut escaped = false;
        for &b in &line[name.len() + 1..] {
            if b == b'\\' && !escaped {
                escaped = true;
            } else {
                value.push(b);
                escaped = false;
            }
        }
        Some(Cow::Owned(value))
    }

    fn set(&mut self, name: &str, value: Option<&[u8]>) {
        let line = value.map(|v| {
            let mut line = [name.as_bytes(), b"="].concat();
            for &b in v {
                if b == b'\\' || b == b'\n' {
                    line.push(b'\\');
                }
                line.push(b);
            }
            line
        });
        match (self.position(name), line) {
            (Some(i), Some(line)) => self.lines[i] = line,
            (Some(i), None) => {
                self.lines.remove(i);
            }
            (None, Some(line)) => self.lines.push(line),
            (None, None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootloader::Slot;

    /// What `grub-editenv FILE create` makes (GRUB 2.06, Debian 12), then `set a=x\y b=1⏎2`.
    fn made_by_grub_editenv() -> Vec<u8> {
        let mut bytes = b"# GRUB Environment Block\n\
            # WARNING: Do not edit this file by tools other than grub-editenv!!!\n\
            a=x\\\\y\nb=1\\\n2\n"
            .to_vec();
        bytes.resize(1024, b'#');
        bytes
    }

    fn fixture(bytes: &[u8]) -> (tempfile::TempDir, GrubEnv) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("grubenv");
        std::fs::write(&path, bytes).expect("write");
        let env = GrubEnv::new(&path);
        (dir, env)
    }

    fn state(trial: Option<Slot>, rolled_back: Option<&str>) -> BootEnv {
        BootEnv {
            committed: Slot::B,
            trial,
            bootcount: u32::from(trial.is_some()),
            bootlimit: 3,
            rolled_back: rolled_back.map(str::to_owned),
        }
    }

    #[test]
    fn round_trips_keeping_the_size_and_every_foreign_line() {
        let original = made_by_grub_editenv();
        let (_dir, env) = fixture(&original);
        assert_eq!(env.read().expect("read"), None);
        let block = env.load(&env.path).expect("load");
        assert_eq!(block.get("a").as_deref(), Some(&b"x\\y"[..]));
        assert_eq!(block.get("b").as_deref(), Some(&b"1\n2"[..]));
        for s in [
            state(Some(Slot::A), None),
            state(None, Some("slot a: C:\\health failed")),
            state(None, None),
        ] {
            env.write(&s).expect("write");
            assert_eq!(env.read().expect("read"), Some(s));
        }
        let bytes = std::fs::read(&env.path).expect("read");
        assert_eq!(bytes.len(), 1024);
        let used = original.len() - original.iter().rev().take_while(|&&b| b == b'#').count();
        assert_eq!(
            bytes[..used],
            original[..used],
            "the foreign lines first, unchanged"
        );
        assert_eq!(
            String::from_utf8_lossy(&bytes[used..]).trim_end_matches('#'),
            "kakehashi_slot=b\nupgrade_available=0\nbootcount=0\nbootlimit=3\n"
        );
    }

    #[test]
    fn escapes_what_grub_escapes() {
        let (_dir, env) = fixture(&made_by_grub_editenv());
        let mut block = env.load(&env.path).expect("load");
        block.set("kakehashi_rolled_back", Some(b"a\\b\nc"));
        let bytes = block.to_bytes().expect("fits");
        assert!(
            bytes.windows(25).any(|w| w == b"kakehashi_rolled_back=a\\\\"),
            "backslash doubled"
        );
        let again = Block::parse(&bytes).expect("parse");
        assert_eq!(
            again.get("kakehashi_rolled_back").as_deref(),
            Some(&b"a\\b\nc"[..])
        );
    }

    #[test]
    fn a_full_block_is_refused_and_left_as_it_was() {
        let mut bytes = b"# GRUB Environment Block\nx=".to_vec();
        bytes.resize(1000, b'y');
        bytes.push(b'\n');
        bytes.resize(1024, b'#');
        let (_dir, env) = fixture(&bytes);
        let err = env.write(&state(None, None)).expect_err("full");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "the boot environment {}: full: the variables need 10",
                env.path.display()
            )) && text.ends_with(" bytes and the block holds 1024"),
            "{text}"
        );
        assert_eq!(std::fs::read(&env.path).expect("read"), bytes);
    }

    #[test]
    fn damaged_blocks_are_named() {
        let (dir, env) = fixture(b"kakehashi_slot=a\n");
        let place = env.path.display().to_string();
        assert_eq!(
            env.read().expect_err("no signature").to_string(),
            format!(
                "the boot environment {place}: not a GRUB environment block: it does not begin with \"# GRUB Environment Block\""
            )
        );
        std::fs::write(&env.path, b"# GRUB Environment Block\nkakehashi_slot=a\n###\0\0").expect("write");
        assert_eq!(
            env.read().expect_err("damaged").to_string(),
            format!(
                "the boot environment {place}: damaged: its last 5 bytes are neither lines nor # padding"
            )
        );
        let missing = GrubEnv::new(&dir.path().join("none"));
        assert!(
            missing
                .read()
                .expect_err("missing")
                .to_string()
                .ends_with("none create`")
        );
    }

    #[test]
    fn a_symlinked_block_is_replaced_behind_its_link() {
        let (dir, env) = fixture(&made_by_grub_editenv());
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("grubenv", &link).expect("symlink");
        GrubEnv::new(&link).write(&state(None, None)).expect("write");
        assert!(
            std::fs::symlink_metadata(&link)
                .expect("link")
                .file_type()
                .is_symlink()
        );
        assert_eq!(env.read().expect("read"), Some(state(None, None)));
    }
}
