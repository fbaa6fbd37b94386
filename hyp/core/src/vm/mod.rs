//! The pure half of the guest lifecycle: where boot images go, and PSCI decisions.
//!
//! The monitor's `vm` layer turns these decisions into register writes,
//! copies and traps; keeping them here lets the host test them.

pub mod boot;
pub mod psci;
pub mod touch;

/// carve's own hypercalls and test device (the guest ABI crate).
pub use carve_abi::hypercall;
