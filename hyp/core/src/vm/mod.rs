//! The pure half of the guest lifecycle: where boot images go, PSCI decisions, the emulated GIC distributor, the emulated UART and the shared console.
//!
//! The monitor's `vm` layer turns these decisions into register writes,
//! copies and traps; keeping them here lets the host test them.

pub mod boot;
pub mod console;
pub mod psci;
pub mod touch;
pub mod vgic;
pub mod vuart;

/// carve's own hypercalls and test device (the guest ABI crate).
pub use carve_abi::hypercall;
