//! carve's portable core: everything the monitor decides that does not touch hardware.
//!
//! - [`addr`]: typed physical, intermediate-physical and Hyp virtual addresses.
//! - [`dt`]: the machine's device tree into typed descriptions, and guest DTBs out.
//! - [`plan`]: a pure function from that description to a memory plan.
//! - [`mm`]: LPAE translation tables (Hyp stage-1 and stage-2) and the walker.
//! - [`vm`]: guest boot layout and PSCI decisions.
//! - [`syndrome`]: the Hyp Syndrome Register decoded (exception class, aborts, calls).
//!
//! The crate is `no_std` + `alloc` and forbids `unsafe`: raw table memory is
//! reached through the [`mm::table::TableMemory`] trait, which the monitor
//! implements in its architecture layer and the host tests implement with a map.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod addr;
pub mod dt;
pub mod mm;
pub mod plan;
pub mod syndrome;
pub mod vm;
