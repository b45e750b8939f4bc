//! Install, refusals and power loss at every step, on the files backend in a temporary directory.

use std::path::{Path, PathBuf};

use super::*;
use crate::backend::Backend;
use crate::boot::{self, Choice};
use crate::floor::Floor;
use crate::image::{BuildRequest, build, open};
use crate::rootfs::RootfsSlots;
use crate::{Version, key};

const CHUNK: u32 = 4096;
/// The appliance's clock in these tests.
const NOW: u64 = 1_800_000_000;

struct Fixture {
    dir: tempfile::TempDir,
    pinned: Vec<u8>,
    signer: aws_lc_rs::signature::EcdsaKeyPair,
    running: Vec<u8>,
    backend: Backend,
    /// Where each slot's root file system goes, if the appliance has them.
    rootfs: Option<RootfsSlots>,
}

fn v(s: &str) -> Version {
    s.parse().expect("version")
}

fn signer() -> (aws_lc_rs::signature::EcdsaKeyPair, Vec<u8>) {
    let (private, public) = key::generate().expect("key");
    let block = pem::parse(private.as_bytes()).expect("pem");
    (
        key::signing_key(block.contents()).expect("signer"),
        key::parse_public(public.as_bytes()).expect("public"),
    )
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with(|_| Backend::Files)
    }

    /// The boot state in a redundant U-Boot environment of two empty copies in a file.
    fn uboot() -> Fixture {
        Fixture::with(|dir| {
            let size = 0x1000;
            let mut copy = vec![0u8; size];
            let crc = crc32fast::hash(&copy[5..]);
            copy[..4].copy_from_slice(&crc.to_le_bytes());
            let file = dir.join("uboot.env");
            std::fs::write(&file, copy.repeat(2)).expect("env");
            let config = dir.join("fw_env.config");
            let text = format!("{0} 0 {size:x}\n{0} {size} {size:x}\n", file.display());
            std::fs::write(&config, text).expect("config");
            Backend::UBoot {
                fw_env_config: config,
            }
        })
    }

    fn with(backend: impl FnOnce(&Path) -> Backend) -> Fixture {
        let dir = tempfile::tempdir().expect("dir");
        let backend = backend(dir.path());
        let (signer, pinned) = signer();
        let running = b"the running kakehashi 1.0.0".repeat(500);
        let path = dir.path().join("running");
        std::fs::write(&path, &running).expect("write");
        let files = Files::new(&dir.path().join("slots"));
        let boot = backend.open(&files).expect("bootloader");
        assert!(files.adopt(&*boot, &path, "1.0.0", 3).expect("adopt"));
        Fixture {
            dir,
            pinned,
            signer,
            running,
            backend,
            rootfs: None,
        }
    }

    /// With a root file system per slot, in two files holding an older one.
    fn with_rootfs() -> Fixture {
        let mut f = Fixture::new();
        let slots = RootfsSlots {
            a: f.dir.path().join("rootfs-a"),
            b: f.dir.path().join("rootfs-b"),
        };
        std::fs::write(&slots.a, b"root file system a".repeat(4000)).expect("a");
        std::fs::write(&slots.b, b"root file system b".repeat(4000)).expect("b");
        f.rootfs = Some(slots);
        f
    }

    /// Where the boot state is.
    fn boot(&self) -> Box<dyn Bootloader> {
        self.backend.open(&self.files()).expect("bootloader")
    }

    fn files(&self) -> Files {
        Files::new(&self.dir.path().join("slots"))
    }

    fn floor(&self) -> Floor {
        Floor::new(self.dir.path())
    }

    /// An image of `version` (payload: 10.5 chunks of bytes that name it), signed by `signer`.
    fn image_by(&self, version: &str, board: &str, signer: &aws_lc_rs::signature::EcdsaKeyPair) -> PathBuf {
        self.build_image(version, board, signer, None)
    }

    /// An image of `version` carrying `rootfs` as its root file system.
    fn image_with_rootfs(&self, version: &str, rootfs: &[u8]) -> PathBuf {
        let path = self.dir.path().join(format!("rootfs-{version}"));
        std::fs::write(&path, rootfs).expect("write");
        self.build_image(version, "test-board", &self.signer, Some(&path))
    }

    fn build_image(
        &self,
        version: &str,
        board: &str,
        signer: &aws_lc_rs::signature::EcdsaKeyPair,
        rootfs: Option<&Path>,
    ) -> PathBuf {
        let binary = self.dir.path().join(format!("bin-{version}"));
        let payload: Vec<u8> = (0..(CHUNK as usize * 21 / 2))
            .map(|i| (i % 251) as u8 ^ version.len() as u8)
            .collect();
        std::fs::write(&binary, payload).expect("write");
        let out = self.dir.path().join(format!("{version}-{board}.img"));
        build(
            &BuildRequest {
                binary: &binary,
                rootfs,
                out: &out,
                version: v(version),
                board: board.into(),
                min_from: None,
                chunk_size: CHUNK,
                created: 0,
                expires: None,
            },
            signer,
        )
        .expect("build");
        out
    }

    fn image(&self, version: &str) -> PathBuf {
        self.image_by(version, "test-board", &self.signer)
    }

    fn install(&self, image: &Path, observe: &mut dyn FnMut(Step) -> Result<()>) -> Result<Installed> {
        let opened = open(image, &self.pinned)?;
        let files = self.files();
        let running = self.running_version();
        let floor = self.floor().read()?;
        install(
            opened,
            &Appliance {
                board: "test-board",
                floor: floor.as_ref(),
                running: &running,
                now: NOW,
            },
            &files,
            self.rootfs.as_ref(),
            &*self.boot(),
            3,
            observe,
        )
    }

    /// Installs `image` until `point`, where the power goes.
    fn install_until(&self, image: &Path, point: Step) {
        let err = self
            .install(image, &mut |step| {
                if step == point {
                    Err(Error::Stopped(step))
                } else {
                    Ok(())
                }
            })
            .expect_err("stopped");
        assert!(matches!(err, Error::Stopped(p) if p == point), "{err}");
    }

    fn running_version(&self) -> Version {
        let files = self.files();
        let env = self.boot().read().expect("read").expect("set up");
        v(&files
            .info(env.committed)
            .expect("info")
            .expect("committed info")
            .version)
    }

    /// The committed slot boots (no trial pending) and holds the running binary unchanged.
    fn assert_committed_boots(&self) {
        let files = self.files();
        assert_eq!(
            boot::choose(&*self.boot()).expect("choose"),
            Choice::Committed {
                slot: Slot::A,
                rolled_back: None
            }
        );
        assert_eq!(
            std::fs::read(files.binary(Slot::A)).expect("binary"),
            self.running
        );
        assert_eq!(files.info(Slot::A).expect("info").expect("info").version, "1.0.0");
    }
}

fn no_stop(_: Step) -> Result<()> {
    Ok(())
}

#[test]
fn installs_boots_on_trial_and_commits() {
    let f = Fixture::new();
    let image = f.image("1.1.0");
    let installed = f.install(&image, &mut no_stop).expect("install");
    assert_eq!(installed.slot, Slot::B);
    let files = f.files();
    assert_eq!(
        boot::choose(&files).expect("choose"),
        Choice::Trial {
            slot: Slot::B,
            attempt: 1,
            limit: 3
        }
    );
    boot::commit(&files, &f.floor(), &v("1.1.0")).expect("commit");
    assert_eq!(f.floor().read().expect("floor"), Some(v("1.1.0")));
    assert_eq!(
        boot::choose(&files).expect("choose"),
        Choice::Committed {
            slot: Slot::B,
            rolled_back: None
        }
    );
    // The same image again is a replay: refused by the floor.
    assert!(matches!(
        f.install(&image, &mut no_stop),
        Err(Error::BelowFloor { .. })
    ));
    // The next version goes into slot a; the committed slot b is untouched.
    assert_eq!(
        f.install(&f.image("1.2.0"), &mut no_stop).expect("install").slot,
        Slot::A
    );
}

#[test]
fn a_trial_past_its_boot_limit_rolls_back() {
    let f = Fixture::new();
    f.install(&f.image("1.1.0"), &mut no_stop).expect("install");
    let files = f.files();
    for attempt in 1..=3 {
        assert_eq!(
            boot::choose(&files).expect("choose"),
            Choice::Trial {
                slot: Slot::B,
                attempt,
                limit: 3
            }
        );
    }
    assert_eq!(
        boot::choose(&files).expect("choose"),
        Choice::Committed {
            slot: Slot::A,
            rolled_back: Some(Slot::B)
        }
    );
    f.assert_committed_boots();
    assert!(files.read().expect("read").expect("env").rolled_back.is_some());
}

#[test]
fn an_install_while_another_version_is_on_trial_is_refused() {
    let f = Fixture::new();
    f.install(&f.image("1.1.0"), &mut no_stop).expect("install");
    let err = f.install(&f.image("1.2.0"), &mut no_stop).expect_err("refused");
    assert!(matches!(err, Error::TrialPending { .. }), "{err}");
    assert!(err.to_string().contains("1.1.0 is on trial in slot b"), "{err}");
}

/// Every refusal leaves the slots as they were: the committed slot boots, the other is not
/// described, nothing is on trial.
fn assert_refused(f: &Fixture, image: &Path, expected: fn(&Error) -> bool) {
    let err = f.install(image, &mut no_stop).expect_err("refused");
    assert!(expected(&err), "unexpected: {err}");
    f.assert_committed_boots();
    assert_eq!(f.files().info(Slot::B).expect("info"), None);
    assert!(!atomic::temp_name(&f.files().binary(Slot::B)).exists());
}

#[test]
fn a_tampered_chunk_is_refused_before_it_is_written() {
    let f = Fixture::new();
    let image = f.image("1.1.0");
    let mut bytes = std::fs::read(&image).expect("read");
    let at = bytes.len() - CHUNK as usize; // inside the last whole chunk
    bytes[at] ^= 1;
    std::fs::write(&image, bytes).expect("write");
    assert_refused(&f, &image, |e| matches!(e, Error::BadChunk { index: 9, .. }));
}

#[test]
fn the_first_fault_in_the_payload_is_named_and_nothing_after_it_is_written() {
    let f = Fixture::new();
    let image = f.image("1.1.0");
    let bytes = std::fs::read(&image).expect("read");
    let size = open(&image, &f.pinned).expect("open").manifest.payload.size as usize;
    let chunk = |i: usize| bytes.len() - size + i * CHUNK as usize;
    // The chunks are read on one thread and checked on others, so a later fault may be met
    // first; the install still stops at the first in the payload's order.
    // The chunks changed, the one the image ends in, and the refusal expected.
    type Case = (&'static [usize], usize, fn(&Error) -> bool);
    let cases: [Case; 3] = [
        (&[3, 6], 8, |e| matches!(e, Error::BadChunk { index: 3, .. })),
        (&[4], 6, |e| matches!(e, Error::BadChunk { index: 4, .. })),
        (
            &[],
            5,
            |e| matches!(e, Error::Truncated(t) if t.contains("chunk 5 of 11")),
        ),
    ];
    for (changed, cut, expected) in cases {
        let mut damaged = bytes.clone();
        for &i in changed {
            damaged[chunk(i) + 7] ^= 1;
        }
        damaged.truncate(chunk(cut) + 10);
        std::fs::write(&image, &damaged).expect("write");
        let mut written = Vec::new();
        let err = f
            .install(&image, &mut |step| {
                if let Step::Chunk(i) = step {
                    written.push(i);
                }
                Ok(())
            })
            .expect_err("refused");
        assert!(expected(&err), "unexpected: {err}");
        let first = changed.first().copied().unwrap_or(cut);
        assert_eq!(written, (0..first).collect::<Vec<_>>());
        f.assert_committed_boots();
        assert!(!atomic::temp_name(&f.files().binary(Slot::B)).exists());
    }
}

#[test]
fn a_changed_manifest_fails_the_signature() {
    let f = Fixture::new();
    let image = f.image("1.1.0");
    let text = std::fs::read(&image).expect("read");
    let at = text
        .windows(5)
        .position(|w| w == b"1.1.0")
        .expect("version in the manifest");
    let mut changed = text.clone();
    changed[at + 2] = b'9';
    std::fs::write(&image, changed).expect("write");
    assert_refused(&f, &image, |e| matches!(e, Error::BadSignature));
}

#[test]
fn an_image_signed_by_another_key_is_refused() {
    let f = Fixture::new();
    let (other, _) = signer();
    let image = f.image_by("1.1.0", "test-board", &other);
    assert_refused(&f, &image, |e| matches!(e, Error::OtherKey { .. }));
}

#[test]
fn an_image_for_another_board_is_refused() {
    let f = Fixture::new();
    let image = f.image_by("1.1.0", "other-board", &f.signer);
    assert_refused(&f, &image, |e| {
        e.to_string() == "the image is for board \"other-board\", but this appliance is \"test-board\""
    });
}

#[test]
fn downgrades_and_replays_are_refused() {
    let f = Fixture::new();
    assert_refused(&f, &f.image("0.9.0"), |e| matches!(e, Error::BelowFloor { .. }));
    assert_refused(&f, &f.image("1.0.0"), |e| matches!(e, Error::BelowFloor { .. }));
    // A floor above the running version (a newer version was committed once, then rolled back
    // by the operator) refuses what lies between.
    f.floor().raise(&v("1.5.0")).expect("floor");
    assert_refused(&f, &f.image("1.4.0"), |e| e.to_string().contains("floor 1.5.0"));
}

#[test]
fn truncated_and_extended_images_are_refused() {
    let f = Fixture::new();
    let image = f.image("1.1.0");
    let bytes = std::fs::read(&image).expect("read");
    for cut in [5, 30, bytes.len() - 100] {
        std::fs::write(&image, &bytes[..cut]).expect("write");
        assert_refused(&f, &image, |e| {
            matches!(
                e,
                Error::Truncated(_) | Error::NotAnImage { .. } | Error::Malformed(_)
            )
        });
    }
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"appended");
    std::fs::write(&image, longer).expect("write");
    assert_refused(&f, &image, |e| matches!(e, Error::TrailingBytes(8)));
    std::fs::write(&image, b"#!/bin/sh\necho not an image\n").expect("write");
    assert_refused(&f, &image, |e| matches!(e, Error::NotAnImage { .. }));
}

#[test]
fn min_from_is_enforced() {
    let f = Fixture::new();
    let binary = f.dir.path().join("bin");
    std::fs::write(&binary, b"x").expect("write");
    let out = f.dir.path().join("min.img");
    build(
        &BuildRequest {
            binary: &binary,
            rootfs: None,
            out: &out,
            version: v("2.0.0"),
            board: "test-board".into(),
            min_from: Some(v("1.5.0")),
            chunk_size: CHUNK,
            created: 0,
            expires: None,
        },
        &f.signer,
    )
    .expect("build");
    assert_refused(&f, &out, |e| matches!(e, Error::TooOld { .. }));
}

#[test]
fn an_expired_image_is_refused_and_one_not_yet_expired_installs() {
    let f = Fixture::new();
    let binary = f.dir.path().join("bin");
    std::fs::write(&binary, b"x").expect("write");
    let build_expiring = |version: &str, expires: u64| {
        let out = f.dir.path().join(format!("{version}.img"));
        build(
            &BuildRequest {
                binary: &binary,
                rootfs: None,
                out: &out,
                version: v(version),
                board: "test-board".into(),
                min_from: None,
                chunk_size: CHUNK,
                created: 0,
                expires: Some(expires),
            },
            &f.signer,
        )
        .expect("build");
        out
    };
    assert_refused(&f, &build_expiring("2.0.0", NOW), |e| {
        matches!(e, Error::Expired { .. }) && e.to_string().contains("2027-01-15T08:00:00Z")
    });
    f.install(&build_expiring("2.0.1", NOW + 1), &mut no_stop)
        .expect("install");
}

/// Power loss after each write of an install: the committed slot still boots, unchanged, and
/// the next install succeeds. After the last step the new version is on trial, and the
/// committed slot boots again once the trial has used its starts.
#[test]
fn power_loss_at_every_step_leaves_the_committed_slot_booting() {
    power_loss_at_every_step(Fixture::new);
}

/// The same with the boot state in a U-Boot environment.
#[test]
fn power_loss_at_every_step_with_a_uboot_environment() {
    power_loss_at_every_step(Fixture::uboot);
}

fn power_loss_at_every_step(fixture: fn() -> Fixture) {
    let kill_points = [
        Step::Cleared,
        Step::Chunk(0),
        Step::Chunk(4),
        Step::Chunk(10),
        Step::Synced,
        Step::Renamed,
        Step::Described,
    ];
    for point in kill_points {
        let f = fixture();
        // A previous version in slot b, as after an earlier update and rollback.
        f.install(&f.image("1.0.5"), &mut no_stop).expect("first install");
        boot::abandon(&*f.boot(), "test").expect("abandon");
        let image = f.image("1.1.0");
        f.install_until(&image, point);
        f.assert_committed_boots();
        if point != Step::Described {
            assert_eq!(f.files().info(Slot::B).expect("info"), None, "at {point:?}");
        }
        let installed = f.install(&image, &mut no_stop).expect("install after power loss");
        assert_eq!(installed.slot, Slot::B);
        let expected = std::fs::read(f.dir.path().join("bin-1.1.0")).expect("payload");
        assert_eq!(
            std::fs::read(f.files().binary(Slot::B)).expect("b"),
            expected,
            "at {point:?}"
        );
    }

    let f = fixture();
    f.install(&f.image("1.1.0"), &mut |step| {
        if step == Step::Trial {
            Err(Error::Stopped(step))
        } else {
            Ok(())
        }
    })
    .expect_err("stopped");
    let loader = f.boot();
    for _ in 0..3 {
        assert!(matches!(
            boot::choose(&*loader).expect("choose"),
            Choice::Trial { .. }
        ));
    }
    assert!(matches!(
        boot::choose(&*loader).expect("choose"),
        Choice::Committed { slot: Slot::A, .. }
    ));
    f.assert_committed_boots();
}

/// Power loss between the two writes of a commit (the symlink switched, the state not yet
/// rewritten) reads as committed.
#[test]
fn power_loss_inside_a_commit_reads_as_committed() {
    let f = Fixture::new();
    f.install(&f.image("1.1.0"), &mut no_stop).expect("install");
    let slots = f.dir.path().join("slots");
    let temp = slots.join(".current.partial");
    std::os::unix::fs::symlink("b", &temp).expect("symlink");
    std::fs::rename(&temp, slots.join("current")).expect("rename");
    assert_eq!(
        boot::choose(&f.files()).expect("choose"),
        Choice::Committed {
            slot: Slot::B,
            rolled_back: None
        }
    );
}

/// A root file system in 5.5 chunks that names its version.
fn rootfs_of(version: &str) -> Vec<u8> {
    (0..(CHUNK as usize * 11 / 2))
        .map(|i| (i % 241) as u8 ^ version.as_bytes()[2])
        .collect()
}

#[test]
fn a_root_file_system_goes_to_the_inactive_slots_target_before_the_trial() {
    let f = Fixture::with_rootfs();
    let slots = f.rootfs.clone().expect("rootfs");
    let a_before = std::fs::read(&slots.a).expect("a");
    let rootfs = rootfs_of("1.1.0");
    let installed = f
        .install(&f.image_with_rootfs("1.1.0", &rootfs), &mut no_stop)
        .expect("install");
    assert_eq!(installed.slot, Slot::B);
    // The file is replaced whole (it held more before); the committed slot's is untouched.
    assert_eq!(std::fs::read(&slots.b).expect("b"), rootfs);
    assert_eq!(std::fs::read(&slots.a).expect("a"), a_before);
    let info = f.files().info(Slot::B).expect("info").expect("described");
    assert_eq!(info.rootfs, Some(rootfs.len() as u64));
    assert!(matches!(
        boot::choose(&*f.boot()).expect("choose"),
        Choice::Trial { slot: Slot::B, .. }
    ));
}

#[test]
fn a_root_file_system_and_an_appliance_must_agree() {
    let plain = Fixture::new();
    assert_refused(
        &plain,
        &plain.image_with_rootfs("1.1.0", &rootfs_of("1.1.0")),
        |e| e.to_string().contains("names no partitions"),
    );
    let f = Fixture::with_rootfs();
    assert_refused(&f, &f.image("1.1.0"), |e| {
        e.to_string().contains("the image carries none")
    });
    // A missing target is named, before anything is written.
    let slots = f.rootfs.clone().expect("rootfs");
    std::fs::remove_file(&slots.b).expect("remove");
    assert_refused(&f, &f.image_with_rootfs("1.1.0", &rootfs_of("1.1.0")), |e| {
        e.to_string().contains("rootfs-b: it does not exist")
    });
}

#[test]
fn a_tampered_root_file_system_chunk_is_refused_and_nothing_goes_on_trial() {
    let f = Fixture::with_rootfs();
    let image = f.image_with_rootfs("1.1.0", &rootfs_of("1.1.0"));
    let mut bytes = std::fs::read(&image).expect("read");
    let at = bytes.len() - CHUNK as usize; // inside the root file system's last whole chunk
    bytes[at] ^= 1;
    std::fs::write(&image, bytes).expect("write");
    assert_refused(&f, &image, |e| {
        matches!(
            e,
            Error::BadChunk {
                index: 4,
                what: "the root file system"
            }
        )
    });
}

/// Power loss while the root file system is written or just after: the slot is not described
/// and nothing is on trial; the next install writes it whole.
#[test]
fn power_loss_inside_the_root_file_system_leaves_the_committed_slot_booting() {
    for point in [Step::RootfsChunk(0), Step::RootfsChunk(3), Step::RootfsSynced] {
        let f = Fixture::with_rootfs();
        let rootfs = rootfs_of("1.1.0");
        let image = f.image_with_rootfs("1.1.0", &rootfs);
        f.install_until(&image, point);
        f.assert_committed_boots();
        assert_eq!(f.files().info(Slot::B).expect("info"), None, "at {point:?}");
        f.install(&image, &mut no_stop).expect("install after power loss");
        let slots = f.rootfs.as_ref().expect("rootfs");
        assert_eq!(std::fs::read(&slots.b).expect("b"), rootfs, "at {point:?}");
    }
}
