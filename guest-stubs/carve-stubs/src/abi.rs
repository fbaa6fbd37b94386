//! The monitor's guest ABI as the stubs see it: carve's hypercalls, PSCI, the test device.
//!
//! The numbers come from `carve-abi`, the crate the monitor's core uses too;
//! this module adds what only the stubs need (AFFINITY_INFO answers, names).

pub use carve_abi::hypercall::{
    CMA_MAP, CMA_STATUS_MOVED, CMA_STATUS_PAGES, CMA_STATUS_STATE, CMA_STATUS_WAITS, CMA_TEST_ALLOC, CMA_TEST_FREE,
    CMA_TEST_STATUS, CONSOLE_MAX, CONSOLE_WRITE, DUMP_MAP, INFO, INFO_FREE_TABLE_PAGES, INFO_RESTARTS, INFO_VMID, NOP,
    TESTDEV_COUNTER, TESTDEV_ID, TESTDEV_IPA, TESTDEV_MAGIC, TESTDEV_SIZE,
};
pub use carve_abi::psci::{
    AFFINITY_INFO, ALREADY_ON, CPU_OFF, CPU_ON, CPU_SUSPEND, DENIED, INTERNAL_FAILURE, INVALID_ADDRESS,
    INVALID_PARAMETERS, MIGRATE_INFO_TYPE, NOT_SUPPORTED, ON_PENDING, PSCI_FEATURES, PSCI_VERSION, SUCCESS, SYSTEM_OFF,
    SYSTEM_RESET,
};
pub use carve_abi::KERNEL_OFFSET;

/// AFFINITY_INFO answers (DEN0022D 5.7).
pub const AFF_ON: i32 = 0;
pub const AFF_OFF: i32 = 1;
pub const AFF_ON_PENDING: i32 = 2;

/// MIGRATE_INFO_TYPE: "Trusted OS is not present or does not require migration", as r0 reads back.
pub const MIGRATE_NOT_REQUIRED: i32 = carve_abi::psci::MIGRATE_NOT_REQUIRED as i32;

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
        carve_abi::psci::NOT_PRESENT => "NOT_PRESENT",
        carve_abi::psci::DISABLED => "DISABLED",
        INVALID_ADDRESS => "INVALID_ADDRESS",
        c if c > 0 => "a value",
        _ => "an unknown code",
    }
}
