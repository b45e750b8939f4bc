//! The saved corpus and every regression input, replayed through the fuzz targets' entry points
//! on stable: `scripts/test` runs what the fuzzers found in seconds.

use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut count = 0;
    for kind in ["corpus", "regressions"] {
        let dir = fuzz.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        paths.sort();
        for path in paths.iter().filter(|p| p.is_file()) {
            let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{} fails its target", path.display());
            count += 1;
        }
    }
    assert!(
        count > 0,
        "no corpus for fuzz target {target} in {}",
        fuzz.display()
    );
}

/// A test per target, named after it, that replays its corpus and regressions.
macro_rules! replay {
    ($($(#[$attr:meta])* $target:ident,)*) => {
        $(
            $(#[$attr])*
            #[test]
            fn $target() {
                replay(stringify!($target), super::$target);
            }
        )*
    };
}

replay! {
    h1,
    h1_differential,
    h1_answer,
    engine_body,
    est_body,
    csr,
    gateway_toml,
    #[cfg(feature = "demo")]
    engine_toml,
    bundle_sealed,
    bundle_opened,
    records,
    sftp,
    wireguard,
    firmware_image,
    firmware_manifest,
}

/// The seeds only the gateway's code can make: a bundle sealed to the fuzz identity, and a
/// terminal's WireGuard handshake initiation to the gateway's fuzz key. Run by hand
/// (`-- --ignored`), with `fuzz/seeds/make.py` for the rest.
#[test]
#[ignore]
fn write_seeds() {
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519::{PublicKey, StaticSecret};

    let corpus = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let payload = std::fs::read_to_string(corpus.join("bundle_opened/seed-payload"))
        .unwrap_or_else(|e| panic!("run fuzz/seeds/make.py first: {e}"));
    let sealed = super::seal(&payload).unwrap_or_else(|| panic!("sealing the seed payload"));
    std::fs::write(corpus.join("bundle_sealed/seed-bundle"), sealed).unwrap_or_else(|e| panic!("{e}"));

    let gateway = PublicKey::from(&StaticSecret::from(super::GATEWAY_KEY));
    let mut terminal = Tunn::new(
        StaticSecret::from(super::TERMINAL_KEY),
        gateway,
        None,
        None,
        1,
        None,
    );
    let mut out = vec![0u8; 2048];
    let TunnResult::WriteToNetwork(init) = terminal.format_handshake_initiation(&mut out, false) else {
        panic!("no handshake initiation");
    };
    let mut seed = vec![0u8];
    seed.extend_from_slice(&(init.len() as u16).to_be_bytes());
    seed.extend_from_slice(init);
    std::fs::write(corpus.join("wireguard/seed-handshake"), seed).unwrap_or_else(|e| panic!("{e}"));
}
