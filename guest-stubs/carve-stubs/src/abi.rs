//! The monitor's guest ABI as the stubs see it: carve's hypercalls, PSCI, the test device.
//!
//! Mirrors `carve_core::vm::hypercall` and `carve_core::vm::psci`, which the
//! stubs cannot depend on (carve-core needs `alloc`); tests/stubs.rs checks on
//! the host that every value here equals the monitor's.

/// carve's calls: SMCCC Vendor Specific Hypervisor Service, fast, SMC32.
pub const CONSOLE_WRITE: u32 = 0x8600_0001;
pub const NOP: u32 = 0x8600_0002;
pub const INFO: u32 = 0x8600_0003;
pub const DUMP_MAP: u32 = 0x8600_0004;
pub const INFO_FREE_TABLE_PAGES: u32 = 0;
pub const INFO_VMID: u32 = 1;
pub const INFO_RESTARTS: u32 = 2;
/// The longest console write the monitor prints.
pub const CONSOLE_MAX: u32 = 256;

/// The emulated test device (every guest has it; each access traps).
pub const TESTDEV_IPA: u64 = 0x0bff_0000;
pub const TESTDEV_SIZE: u64 = 0x1000;
pub const TESTDEV_COUNTER: u64 = 0x0;
pub const TESTDEV_ID: u64 = 0x4;
pub const TESTDEV_MAGIC: u32 = 0xca7e_0001;

/// PSCI function IDs (Arm DEN0022D, chapter 5), SMC32 forms.
pub const PSCI_VERSION: u32 = 0x8400_0000;
pub const CPU_SUSPEND: u32 = 0x8400_0001;
pub const CPU_OFF: u32 = 0x8400_0002;
pub const CPU_ON: u32 = 0x8400_0003;
pub const AFFINITY_INFO: u32 = 0x8400_0004;
pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
pub const SYSTEM_OFF: u32 = 0x8400_0008;
pub const SYSTEM_RESET: u32 = 0x8400_0009;
pub const PSCI_FEATURES: u32 = 0x8400_000a;

/// PSCI return codes (DEN0022D table 5); carve's calls use the same.
pub const SUCCESS: i32 = 0;
pub const NOT_SUPPORTED: i32 = -1;
pub const INVALID_PARAMETERS: i32 = -2;
pub const DENIED: i32 = -3;
pub const ALREADY_ON: i32 = -4;
pub const ON_PENDING: i32 = -5;
pub const INTERNAL_FAILURE: i32 = -6;
pub const INVALID_ADDRESS: i32 = -9;

/// AFFINITY_INFO answers (DEN0022D 5.7).
pub const AFF_ON: i32 = 0;
pub const AFF_OFF: i32 = 1;
pub const AFF_ON_PENDING: i32 = 2;

/// MIGRATE_INFO_TYPE: "Trusted OS is not present or does not require migration".
pub const MIGRATE_NOT_REQUIRED: i32 = 2;

/// Where the monitor enters a kernel: guest RAM base + this (hyp/core/src/vm/boot.rs).
pub const KERNEL_OFFSET: u64 = 0x1_0000;

/// The name of a PSCI/carve status, for messages.
pub fn status_name(code: i32) -> &'static str {
    match code {
        SUCCESS => "SUCCESS",
        NOT_SUPPORTED => "NOT_SUPPORTED",
        INVALID_PARAMETERS => "INVALID_PARAMETERS",
        DENIED => "DENIED",
        ALREADY_ON => "ALREADY_ON",
        ON_PENDING => "ON_PENDING",
        INTERNAL_FAILURE => "INTERNAL_FAILURE",
        -7 => "NOT_PRESENT",
        -8 => "DISABLED",
        INVALID_ADDRESS => "INVALID_ADDRESS",
        c if c > 0 => "a value",
        _ => "an unknown code",
    }
}
