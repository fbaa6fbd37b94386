//! Build script: how the Arm build of `cntvct` is linked.
//!
//! A plain static ELF executable for Linux (ET_EXEC, EABI5, soft-float): one
//! read+execute segment from 0x10000 (the traditional ARM executable base,
//! above Linux's `mmap_min_addr`), 4 KiB page alignment (the file stays about
//! 3.5 KB instead of 64 KiB of padding), entry `_start`, no symbols or debug
//! info (it goes into the initrd, where every byte is loaded by the guest).

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("arm") {
        return;
    }
    for arg in [
        "--image-base=0x10000",
        "-zmax-page-size=4096",
        "--no-rosegment",
        "--entry=_start",
        "--static",
        "--strip-all",
        "--build-id=none",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
