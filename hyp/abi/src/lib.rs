//! carve's guest ABI: what a guest and the monitor must agree on, in one place.
//!
//! `no_std` without `alloc`, so the bare-metal guest stubs can depend on it as
//! well as the monitor's core.
#![no_std]
#![forbid(unsafe_code)]

pub mod hypercall;
pub mod psci;

/// Where the monitor puts a guest's kernel: guest RAM base + this (as QEMU's own loader does).
pub const KERNEL_OFFSET: u64 = 0x1_0000;
