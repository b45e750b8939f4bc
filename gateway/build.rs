//! How the `kakehashi` binary is linked (docs/development.md, "Code laid out for the router").
//!
//! The kernel maps an executable's code 64 KiB around every page a process touches, so code run at
//! start and on the request path, spread over the whole binary, made most of it resident. The
//! linker is given the functions that run (`kakehashi.order`, made by `scripts/symbol-order`) to
//! lay out together first; names it does not find are skipped, so a stale list costs memory, never
//! correctness. Relative relocations are packed (RELR, glibc 2.36 and later), which makes the
//! table the loader reads at start 300 KB smaller.
//!
//! Both are flags of LLVM's lld, which rustc links x86_64 Linux binaries with since 1.90 (the
//! workspace's `rust-version`); a build for another target gets neither unless its linker is lld
//! and they are passed the same way.

fn main() {
    println!("cargo::rerun-if-changed=kakehashi.order");
    println!("cargo::rerun-if-env-changed=KAKEHASHI_LINK_MAP");
    if std::env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu") {
        return;
    }
    let link = |arg: &str| println!("cargo::rustc-link-arg-bin=kakehashi={arg}");
    let order = concat!(env!("CARGO_MANIFEST_DIR"), "/kakehashi.order");
    link(&format!("-Wl,--symbol-ordering-file={order}"));
    link("-Wl,--no-warn-symbol-ordering");
    link("-Wl,-z,pack-relative-relocs");
    // scripts/symbol-order: the link map names the input section of every address the run
    // touched, in the mangled names the order file needs.
    if let Ok(map) = std::env::var("KAKEHASHI_LINK_MAP") {
        link(&format!("-Wl,-Map={map}"));
        link("-Wl,--no-demangle");
    }
}
