//! `firmware build --rootfs` and `[firmware] rootfs_a`, `rootfs_b`: a root file system image
//! carried in the signed image and streamed into the inactive slot's target, a file and a loop
//! block device, before the slot goes on trial; refused when it does not fit, when the target
//! is mounted, or when the image and the appliance disagree about having one.

use std::path::{Path, PathBuf};

use super::firmware::{Clinic, image_with, status};
use crate::support::{kakehashi, s, tool};

/// An image of `version` whose binary is `binary` and root file system is `rootfs`.
fn image_with_rootfs(clinic: &Path, version: &str, binary: &[u8], rootfs: &[u8]) -> PathBuf {
    let fs = clinic.join(format!("rootfs-{version}"));
    std::fs::write(&fs, rootfs).expect("rootfs");
    image_with(clinic, version, binary, &["--rootfs", s(&fs)])
}

fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 249) as u8 ^ seed).collect()
}

#[test]
fn firmware_root_file_system_streams_into_the_inactive_slots_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Clinic {
        dir: clinic, config, ..
    } = Clinic::new(
        tmp.path(),
        "rootfs_a = \"rootfs-a.img\"\nrootfs_b = \"rootfs-b.img\"\n",
    );
    // The targets exist beforehand, as partitions would.
    std::fs::write(clinic.join("rootfs-a.img"), bytes(300_000, 1)).expect("a");
    std::fs::write(clinic.join("rootfs-b.img"), bytes(300_000, 2)).expect("b");
    kakehashi(&["gateway", "check", "--config", s(&config)]).ok();
    let install = |img: &Path| kakehashi(&["firmware", "install", s(img), "--config", s(&config)]);

    // An image without a root file system would leave slot b booting an old one.
    let plain = super::firmware::image_of(&clinic, "0.1.5", b"binary only");
    install(&plain).fails_with(&["firmware.rootfs_a, rootfs_b", "the image carries none"]);

    let rootfs = bytes(200_000, 7);
    let out = install(&image_with_rootfs(&clinic, "0.2.0", b"binary 0.2.0", &rootfs)).ok();
    assert!(out.contains("its root file system in"), "{out}");
    assert_eq!(std::fs::read(clinic.join("rootfs-b.img")).expect("b"), rootfs);
    assert_eq!(
        std::fs::read(clinic.join("rootfs-a.img")).expect("a"),
        bytes(300_000, 1)
    );
    let st = status(&config);
    assert_eq!(st["trial"]["slot"], "b");
    assert_eq!(st["slots"]["b"]["rootfs"], rootfs.len() as u64);
}

/// A loop device over a file of `size` bytes, detached on drop.
struct Loop(String);

impl Loop {
    fn new(backing: &Path, size: usize) -> Option<Loop> {
        std::fs::write(backing, vec![0u8; size]).expect("backing file");
        let out = tool("losetup", &["--find", "--show", s(backing)]);
        (out.code == 0).then(|| Loop(out.stdout.trim().to_owned()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = tool("losetup", &["-d", &self.0]);
    }
}

#[test]
fn firmware_root_file_system_streams_into_a_loop_block_device() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let size = 1 << 20;
    let (Some(a), Some(b)) = (
        Loop::new(&tmp.path().join("a.img"), size),
        Loop::new(&tmp.path().join("b.img"), size),
    ) else {
        eprintln!("skipped: losetup cannot attach a loop device here (it needs root)");
        return;
    };
    let Clinic {
        dir: clinic, config, ..
    } = Clinic::new(
        tmp.path(),
        &format!("rootfs_a = \"{}\"\nrootfs_b = \"{}\"\n", a.0, b.0),
    );
    kakehashi(&["gateway", "check", "--config", s(&config)]).ok();
    let install = |img: &Path| kakehashi(&["firmware", "install", s(img), "--config", s(&config)]);

    // Mounted (it may be the running system): refused before a byte is written.
    let mount_point = tmp.path().join("mnt");
    std::fs::create_dir(&mount_point).expect("mount point");
    if tool("mkfs.ext4", &["-q", &b.0]).code == 0 && tool("mount", &[&b.0, s(&mount_point)]).code == 0 {
        let refused = install(&image_with_rootfs(&clinic, "0.1.9", b"binary", &bytes(4096, 5)));
        tool("umount", &[s(&mount_point)]).ok();
        refused.fails_with(&[&b.0, &format!("it is mounted at {}", s(&mount_point))]);
    } else {
        eprintln!(
            "the mount check skipped: cannot make and mount a file system on {}",
            b.0
        );
    }

    // Larger than the partition: refused before a byte is written.
    let too_big = image_with_rootfs(&clinic, "0.2.0", b"binary", &bytes(size + 1, 3));
    install(&too_big).fails_with(&[
        &b.0,
        &format!(
            "it holds {size} bytes, and the image's root file system is {}",
            size + 1
        ),
    ]);
    assert!(status(&config)["trial"].is_null());

    let rootfs = bytes(700_000, 9);
    install(&image_with_rootfs(&clinic, "0.2.1", b"binary", &rootfs)).ok();
    let device = std::fs::read(tmp.path().join("b.img")).expect("b's backing file");
    assert_eq!(&device[..rootfs.len()], &rootfs[..]);
    assert_eq!(device.len(), size, "a partition keeps its size");
    assert!(
        std::fs::read(tmp.path().join("a.img"))
            .expect("a")
            .iter()
            .all(|&x| x == 0),
        "the committed slot's partition is untouched"
    );
    assert_eq!(status(&config)["trial"]["slot"], "b");
}
