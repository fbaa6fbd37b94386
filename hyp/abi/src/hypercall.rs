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

/// `CMA_TEST_ALLOC(pages, align, flags)`, a test call the monitor answers
/// only when its own bootargs hold `carve.selftest=cma` (else
/// [`NOT_SUPPORTED`]): starts, on a physical CPU no guest uses, a contiguous
/// allocation of `pages` (0: the whole pool) aligned to `align` pages from the
/// CMA pool that backs the caller's movable memory, and returns at once with
/// [`SUCCESS`] while the guest runs on. Each guest page in the way is moved
/// (copied, its stage-2 entry switched, the TLB invalidated by VMID). Once
/// done, the monitor fills the allocation with a poison pattern of its own.
/// `flags` bit 0 ([`CMA_MAP`]): map the allocation in the monitor's vmalloc
/// space (else it gets no mapping at all). [`DENIED`] while one is under way
/// or not yet freed; [`NOT_SUPPORTED`] when the caller has no movable memory
/// or no CPU is free to run it; [`INVALID_PARAMETERS`] for a bad alignment.
pub const CMA_TEST_ALLOC: u32 = 0x8600_0005;
/// `CMA_TEST_STATUS(what)`: `what` = [`CMA_STATUS_STATE`] (0 none, 1 under
/// way, 2 done; negative: it failed, with that status), [`CMA_STATUS_MOVED`]
/// (guest pages moved so far), [`CMA_STATUS_WAITS`] (the caller's stage-2
/// faults on a page being moved, retried after the move), [`CMA_STATUS_PAGES`]
/// (pages allocated).
pub const CMA_TEST_STATUS: u32 = 0x8600_0006;
/// `CMA_TEST_FREE`: the monitor checks that its poison pattern is intact in
/// the whole allocation (no guest write reached a page after it moved), then
/// frees it. [`SUCCESS`], [`INTERNAL_FAILURE`] if the poison was disturbed (it
/// is freed all the same), or [`DENIED`] if there is no finished allocation.
pub const CMA_TEST_FREE: u32 = 0x8600_0007;

pub const CMA_MAP: u32 = 1;
pub const CMA_STATUS_STATE: u32 = 0;
pub const CMA_STATUS_MOVED: u32 = 1;
pub const CMA_STATUS_WAITS: u32 = 2;
pub const CMA_STATUS_PAGES: u32 = 3;

pub const INFO_FREE_TABLE_PAGES: u32 = 0;
pub const INFO_VMID: u32 = 1;
pub const INFO_RESTARTS: u32 = 2;

/// The longest console write.
pub const CONSOLE_MAX: u32 = 256;

/// Statuses: PSCI's.
pub use crate::psci::{DENIED, INTERNAL_FAILURE, INVALID_ADDRESS, INVALID_PARAMETERS, NOT_SUPPORTED, SUCCESS};

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
