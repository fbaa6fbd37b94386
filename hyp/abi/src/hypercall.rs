//! carve's own hypercalls and emulated device: the ABI between the monitor and guests.
//!
//! Calls use `HVC #0` with the SMC Calling Convention (Arm DEN0028): r0 holds
//! a function ID in the Vendor Specific Hypervisor Service range (owning
//! entity 6, fast, SMC32: `0x8600_xxxx`), r1-r3 the arguments; r0 returns a
//! status (PSCI-style: 0 success, negative error) or a value.
//!

/// `CONSOLE_WRITE(ipa, len)`: the monitor prints `len` bytes (at most
/// [`CONSOLE_MAX`]) read from the guest's RAM at `ipa`, prefixed with the
/// guest's name. Returns the bytes printed, or [`INVALID_ADDRESS`] if the
/// range is not the guest's RAM.
pub const CONSOLE_WRITE: u32 = 0x8600_0001;
/// `NOP`: returns 0 at once. For measuring an HVC round trip.
pub const NOP: u32 = 0x8600_0002;
/// `INFO(what)`: monitor facts for tests. `what` = [`INFO_FREE_TABLE_PAGES`],
/// [`INFO_VMID`], [`INFO_RESTARTS`].
pub const INFO: u32 = 0x8600_0003;
/// `DUMP_MAP`: the monitor logs its memory map again (the plan and its counters).
pub const DUMP_MAP: u32 = 0x8600_0004;

pub const INFO_FREE_TABLE_PAGES: u32 = 0;
pub const INFO_VMID: u32 = 1;
pub const INFO_RESTARTS: u32 = 2;

/// The longest console write.
pub const CONSOLE_MAX: u32 = 256;

/// Statuses: PSCI's.
pub use crate::psci::{INVALID_ADDRESS, INVALID_PARAMETERS, NOT_SUPPORTED, SUCCESS};

/// An emulated device page every guest sees at this IPA: nothing backs it,
/// so each access is a stage-2 data abort that the monitor emulates.
pub const TESTDEV_IPA: u64 = 0x0bff_0000;
/// Offset 0, read: a counter of emulated reads by this guest (32-bit loads only).
pub const TESTDEV_COUNTER: u64 = 0x0;
/// Offset 4, read: the constant [`TESTDEV_MAGIC`].
pub const TESTDEV_ID: u64 = 0x4;
pub const TESTDEV_MAGIC: u32 = 0xca7e_0001;
/// Writes to the page are ignored (and counted as traps).
pub const TESTDEV_SIZE: u64 = 0x1000;

/// Whether `id` belongs to carve's range.
pub fn is_carve_call(id: u32) -> bool {
    id & 0xffff_0000 == 0x8600_0000
}
