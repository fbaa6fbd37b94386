//! Build script: how the Arm builds of the stubs are linked.
//!
//! Every stub is one flat image that carve copies to guest IPA base + 0x10000
//! (0x40010000 with the default base) and enters at its first byte, so each is
//! linked at that address with `link.x`: `_start` first, then text, rodata,
//! data, and a `.bss` (stacks included) that `_start` clears. On the host the
//! binaries are stubs that say how to build them, and nothing is linked here.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=link.x");
    if env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("arm") {
        return;
    }
    let dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    println!("cargo:rustc-link-search={}", dir.display());
    for arg in ["-Tlink.x", "--build-id=none", "-zmax-page-size=4096"] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
