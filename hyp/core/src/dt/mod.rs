//! The device tree: checked reading into typed descriptions, and guest DTBs out.
//!
//! - [`header`]: the FDT header and `/memreserve/`, validated before any parsing.
//! - [`tree`]: the blob as an owned tree of nodes and raw properties (via the `fdt` crate).
//! - [`machine`]: what carve needs of the machine: RAM, carveouts, guests, devices.

pub mod header;
pub mod machine;
pub mod tree;
pub mod write;

#[cfg(test)]
mod tests;

pub use machine::{Machine, MovableRequest, Reserved, ReservedKind};
pub use tree::{DtError, Tree};
