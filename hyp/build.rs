//! Build script: which linker scripts link the monitor image.
//!
//! The image has one link address, fixed in `link.x` (it runs from wherever
//! a loader puts it: see `arch/entry.rs`), so nothing here depends on the board.
//! Only the Arm build links with `link.x` and `defmt.x`; on the host `hyp` is a stub.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=link.x");
    println!("cargo:rerun-if-changed=build.rs");

    if env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("arm") {
        return;
    }

    // link.x lives next to Cargo.toml; defmt.x comes from defmt.
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    println!("cargo:rustc-link-search={}", manifest.display());
    println!("cargo:rustc-link-arg-bins=-Tlink.x");
    println!("cargo:rustc-link-arg-bins=-Tdefmt.x");
    // Keep the entry even though nothing in Rust refers to it.
    println!("cargo:rustc-link-arg-bins=--undefined=_start");
}
