//! The U-Boot environment on files in a temporary directory: the format, which copy is read,
//! which is written, torn writes, and what is refused. (The e2e tests check the same files with
//! libubootenv's own `fw_printenv` and `fw_setenv`.)

use super::*;
use crate::bootloader::Slot;

const SIZE: usize = 0x400;

/// One copy: CRC, the flags byte if `flags` is given, the `entries`, zero padding.
fn copy(flags: Option<u8>, entries: &[&str]) -> Vec<u8> {
    let header = if flags.is_some() { 5 } else { 4 };
    let mut bytes = vec![0u8; SIZE];
    if let Some(f) = flags {
        bytes[4] = f;
    }
    let mut at = header;
    for e in entries {
        bytes[at..at + e.len()].copy_from_slice(e.as_bytes());
        at += e.len() + 1;
    }
    let crc = crc32fast::hash(&bytes[header..]);
    bytes[..4].copy_from_slice(&crc.to_le_bytes());
    bytes
}

struct Fixture {
    _dir: tempfile::TempDir,
    file: PathBuf,
}

impl Fixture {
    /// A file holding copies `first` and `second`, one after the other.
    fn new(first: &[u8], second: &[u8]) -> Fixture {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("uboot.env");
        std::fs::write(&file, [first, second].concat()).expect("write");
        Fixture { _dir: dir, file }
    }

    fn env(&self) -> UBootEnv {
        let areas = vec![self.area(0), self.area(SIZE as i64)];
        UBootEnv::new(areas, "test").expect("env")
    }

    fn area(&self, offset: i64) -> Area {
        Area {
            path: self.file.clone(),
            offset,
            size: SIZE,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.file).expect("read")
    }

    /// The flags bytes of the two copies.
    fn flags(&self) -> [u8; 2] {
        let b = self.bytes();
        [b[4], b[SIZE + 4]]
    }

    fn vars(&self) -> Entries {
        self.env().load().expect("load").vars
    }
}

fn state(trial: Option<Slot>, bootcount: u32) -> BootEnv {
    BootEnv {
        committed: Slot::A,
        trial,
        bootcount,
        bootlimit: 3,
        rolled_back: None,
    }
}

const FOREIGN: &[&str] = &["bootcmd=run kakehashi_boot", "ethaddr=02:00:00:00:00:01", "odd"];

#[test]
fn writes_the_other_copy_with_the_next_flags_and_keeps_every_foreign_variable() {
    let f = Fixture::new(&copy(Some(7), FOREIGN), &copy(Some(6), &["bootcmd=old"]));
    let env = f.env();
    assert_eq!(env.read().expect("read"), None, "never set up");
    env.write(&state(None, 0)).expect("write");
    assert_eq!(f.flags(), [7, 8]);
    env.write(&state(Some(Slot::B), 0)).expect("write");
    assert_eq!(f.flags(), [9, 8]);
    env.write(&state(Some(Slot::B), 1)).expect("write");
    assert_eq!(f.flags(), [9, 10]);
    assert_eq!(env.read().expect("read"), Some(state(Some(Slot::B), 1)));
    let vars = f.vars();
    assert_eq!(
        &vars.0[..3],
        FOREIGN.iter().map(|e| e.as_bytes().to_vec()).collect::<Vec<_>>()
    );
    assert_eq!(vars.get("upgrade_available").as_deref(), Some(&b"1"[..]));
    assert_eq!(vars.get("kakehashi_slot").as_deref(), Some(&b"a"[..]));
    // The layout is the one U-Boot reads: the data ends in two NULs, zero padding after.
    let bytes = f.bytes();
    let data = &bytes[SIZE + 5..2 * SIZE];
    let end = data.windows(2).position(|w| w == [0, 0]).expect("end");
    assert!(data[end..].iter().all(|&b| b == 0));
}

#[test]
fn the_newer_valid_copy_is_read() {
    let a = |flags| copy(Some(flags), &["kakehashi_slot=a", "bootlimit=3"]);
    let b = |flags| copy(Some(flags), &["kakehashi_slot=b", "bootlimit=3"]);
    for (first, second, expected) in [
        (a(1), b(2), Slot::B),
        (a(2), b(1), Slot::A),
        (a(5), b(5), Slot::A), // equal: the first, as libubootenv
        (a(255), b(0), Slot::B),
        (a(0), b(255), Slot::A),
        (a(254), b(255), Slot::B),
    ] {
        let f = Fixture::new(&first, &second);
        let got = f.env().read().expect("read").expect("set up").committed;
        assert_eq!(got, expected, "flags {} and {}", first[4], second[4]);
    }
}

#[test]
fn a_copy_with_a_bad_crc_is_passed_over_whatever_its_flags() {
    let mut broken = copy(Some(9), &["kakehashi_slot=b", "bootlimit=3"]);
    broken[20] ^= 1;
    let good = copy(Some(1), &["kakehashi_slot=a", "bootlimit=3"]);
    for f in [Fixture::new(&broken, &good), Fixture::new(&good, &broken)] {
        let env = f.env();
        assert_eq!(env.read().expect("read").expect("set up").committed, Slot::A);
        // The write replaces the broken copy, never the good one.
        env.write(&state(Some(Slot::B), 0)).expect("write");
        assert_eq!(f.flags().iter().filter(|&&x| x == 2).count(), 1);
        assert_eq!(env.read().expect("read"), Some(state(Some(Slot::B), 0)));
    }
}

/// Power loss inside a write leaves part of the new copy over the old bytes of the copy being
/// written: whatever the cut, the state before the write is read, until the write completes.
#[test]
fn a_torn_write_of_either_copy_reads_as_the_state_before_it() {
    let f = Fixture::new(&copy(Some(1), FOREIGN), &copy(Some(0), &[]));
    let env = f.env();
    let steps = [
        state(None, 0),
        state(Some(Slot::B), 0),
        state(Some(Slot::B), 1),
        state(None, 0),
    ];
    let mut before = None;
    for (n, next) in steps.iter().enumerate() {
        let old = f.bytes();
        env.write(next).expect("write");
        let new = f.bytes();
        let target = if n % 2 == 0 { SIZE } else { 0 }; // the copy written alternates
        let other = SIZE - target;
        assert_eq!(
            old[other..other + SIZE],
            new[other..other + SIZE],
            "the current copy untouched"
        );
        for cut in [1, 4, 5, 6, 40, SIZE / 2, SIZE - 1] {
            let mut torn = old.clone();
            torn[target..target + cut].copy_from_slice(&new[target..target + cut]);
            std::fs::write(&f.file, &torn).expect("write");
            // A cut past the new bytes that differ is the whole write.
            let expected = if torn == new {
                Some(next.clone())
            } else {
                before.clone()
            };
            assert_eq!(env.read().expect("read"), expected, "step {n}, cut at {cut}");
        }
        std::fs::write(&f.file, &new).expect("write");
        before = Some(next.clone());
    }
}

#[test]
fn a_full_environment_is_refused_and_left_as_it_was() {
    let big = format!("bootargs={}", "x".repeat(SIZE - 30));
    let f = Fixture::new(&copy(Some(1), &[&big]), &copy(Some(0), &[]));
    let before = f.bytes();
    let err = f.env().write(&state(None, 0)).expect_err("full");
    assert!(
        err.to_string()
            .starts_with("the boot environment test: full: the variables need"),
        "{err}"
    );
    assert_eq!(f.bytes(), before);
}

#[test]
fn no_valid_copy_is_an_error_naming_both() {
    let mut first = copy(Some(1), FOREIGN);
    first[0] ^= 1;
    let f = Fixture::new(&first, &[0xff; SIZE]);
    let before = f.bytes();
    let path = f.file.display();
    let expected = format!(
        "the boot environment test: no copy has a valid CRC ({path} at 0x0 (0x400 bytes); \
         {path} at 0x400 (0x400 bytes)): U-Boot runs on its built-in default environment. \
         Save it once (saveenv at the U-Boot prompt), then try again"
    );
    let env = f.env();
    assert_eq!(env.read().expect_err("invalid").to_string(), expected);
    assert_eq!(
        env.write(&state(None, 0)).expect_err("invalid").to_string(),
        expected
    );
    assert_eq!(f.bytes(), before, "nothing written");
}

#[test]
fn a_single_copy_is_read_and_never_written() {
    let f = Fixture::new(&copy(None, &["kakehashi_slot=b", "bootlimit=5"]), &[]);
    let env = UBootEnv::new(vec![f.area(0)], "test").expect("env");
    let read = env.read().expect("read").expect("set up");
    assert_eq!((read.committed, read.bootlimit), (Slot::B, 5));
    let err = env.write(&read).expect_err("refused");
    assert!(err.to_string().contains("it has one copy"), "{err}");
}

#[test]
fn offsets_from_the_end_and_short_files() {
    let f = Fixture::new(
        &copy(Some(1), &["kakehashi_slot=a", "bootlimit=3"]),
        &copy(Some(2), &[]),
    );
    let env = UBootEnv::new(vec![f.area(-2 * SIZE as i64), f.area(-(SIZE as i64))], "test").expect("env");
    // The second copy, newer, has no kakehashi state.
    assert_eq!(env.read().expect("read"), None);
    let short = UBootEnv::new(vec![f.area(SIZE as i64 + 1), f.area(0)], "test").expect("env");
    let err = short.read().expect_err("short");
    assert!(
        err.to_string()
            .ends_with("at 0x401 (0x400 bytes): the file ends before the copy does"),
        "{err}"
    );
}

#[test]
fn fw_env_config_is_read_as_libubootenv_reads_it() {
    let text = "# MMC: two copies\n\n/dev/mmcblk0 0x3fe000 0x2000 0x200\n  /dev/mmcblk0\t-0x2000 2000\n";
    let areas = parse_config(text).expect("parse");
    assert_eq!(
        areas,
        vec![
            Area {
                path: "/dev/mmcblk0".into(),
                offset: 0x3fe000,
                size: 0x2000
            },
            Area {
                path: "/dev/mmcblk0".into(),
                offset: -0x2000,
                size: 0x2000 // hexadecimal, with or without 0x
            },
        ]
    );
    assert_eq!(parse_config("/f 010 10").expect("octal")[0].offset, 8);
    assert_eq!(parse_config("/f 4096 10").expect("decimal")[0].offset, 4096);
    for (text, expected) in [
        ("", "no line names a copy of the environment (DEVICE OFFSET SIZE)"),
        (
            "# only\n/f 0",
            "line 2: \"/f 0\": expected DEVICE OFFSET SIZE [SECTOR_SIZE [SECTORS]]",
        ),
        (
            "/dev/mtd1 0 0x1000",
            "line 1: /dev/mtd1 is an MTD or UBI device: Kakehashi writes the environment only to files and block devices",
        ),
        (
            "env.bin 0 0x1000",
            "line 1: env.bin: the device must be an absolute path",
        ),
        (
            "/f 0x 0x1000",
            "line 1: offset \"0x\" is not a number (0x… hex, 0… octal, or decimal)",
        ),
        (
            "/f 09 0x1000",
            "line 1: offset \"09\" is not a number (0x… hex, 0… octal, or decimal)",
        ),
        (
            "/f 0 0",
            "line 1: size \"0\" is not a positive hexadecimal number",
        ),
        (
            "/f 0 4k",
            "line 1: size \"4k\" is not a positive hexadecimal number",
        ),
        (
            "/f 0 1\n/f 1 1\n/f 2 1",
            "line 3: a third copy: an environment has one or two",
        ),
    ] {
        assert_eq!(parse_config(text).expect_err(text), expected);
    }
}

#[test]
fn copies_that_cannot_make_an_environment_are_refused() {
    let area = |offset, size| Area {
        path: "/f".into(),
        offset,
        size,
    };
    for (areas, expected) in [
        (vec![], "no copy of the environment is named"),
        (
            vec![area(0, 0x100), area(0x100, 0x200)],
            "the two copies differ in size: /f at 0x0 (0x100 bytes) and /f at 0x100 (0x200 bytes)",
        ),
        (
            vec![area(0, 0x100), area(0x80, 0x100)],
            "the two copies overlap: /f at 0x0 (0x100 bytes) and /f at 0x80 (0x100 bytes)",
        ),
        (
            vec![area(0, 5)],
            "/f at 0x0 (0x5 bytes): too small for an environment",
        ),
    ] {
        let err = UBootEnv::new(areas, "C").err().expect(expected);
        assert_eq!(err.to_string(), format!("the boot environment C: {expected}"));
    }
}
