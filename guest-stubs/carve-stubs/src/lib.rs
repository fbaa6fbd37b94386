//! carve-stubs: the runtime shared by carve's bare-metal guest stubs.
//!
//! A stub is a flat image that carve boots as a guest's `multiboot,kernel`
//! module: the monitor copies it to guest IPA base + 0x10000 and enters its
//! first byte in SVC mode, MMU and caches off, with r0 = 0, r1 = ~0 and r2 =
//! the IPA of the guest's DTB (hyp/core/src/vm/boot.rs). This crate gives
//! each stub (src/bin/*.rs):
//! - [`rt`]: `_start` (checks its load address, sets VBAR and the stacks,
//!   clears `.bss`, calls the stub's `stub_main(dtb)`), the exception vectors
//!   and the data-abort handler the isolation probe counts aborts with, a
//!   secondary-CPU entry for PSCI CPU_ON, and the panic handler;
//! - [`hvc`]: SMCCC calls over `HVC #0` (PSCI and carve's own calls) and the
//!   console: [`say!`] prints one line through `CONSOLE_WRITE`, which the
//!   monitor logs with the guest's name as prefix;
//! - [`mmu`]: an LPAE stage-1 of four 1 GiB blocks (identity RAM, caches on,
//!   and a movable window that reaches any 40-bit IPA);
//! - [`fdt`]: a bounds-checked walk of the DTB for `reg` ranges;
//! - [`abi`]: the monitor's constants (hypercalls, PSCI, the test device).
//!
//! Console output never uses semihosting: a guest's semihosting calls go to
//! QEMU directly, past the monitor (DESIGN.md), so nothing a stub reports
//! could be trusted to have passed the monitor's isolation.
//!
//! `fdt` and `abi` are plain Rust and build on the host too (tests/stubs.rs
//! tests them there); everything else exists only for `target_arch = "arm"`.
#![cfg_attr(target_arch = "arm", no_std)]

pub mod abi;
pub mod fdt;

#[cfg(target_arch = "arm")]
pub mod console;
#[cfg(target_arch = "arm")]
pub mod gic;
#[cfg(target_arch = "arm")]
pub mod hvc;
#[cfg(target_arch = "arm")]
pub mod mmu;
#[cfg(target_arch = "arm")]
pub mod rt;
#[cfg(target_arch = "arm")]
pub mod sbsa;
#[cfg(target_arch = "arm")]
pub mod timer;

/// Formats `u64` values as `0x...` with at least 8 hex digits (the width of IPAs below 4 GiB).
#[derive(Clone, Copy)]
pub struct Hex(pub u64);

impl core::fmt::Display for Hex {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}
