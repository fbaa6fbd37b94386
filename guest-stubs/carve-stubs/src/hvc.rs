//! SMCCC calls to the monitor over `HVC #0`: PSCI and carve's own calls.
//!
//! SMC Calling Convention (Arm DEN0028), SMC32/HVC32: r0 the function ID and
//! the result, r1-r3 arguments (and possibly results, so clobbered here); r4
//! and up are preserved by the callee. r12 is treated as clobbered too.

use core::arch::asm;

use crate::abi;

/// One call: `hvc #0` with r0-r3 = `fid`, `a1`-`a3`; returns r0.
#[inline(always)]
pub fn hvc(fid: u32, a1: u32, a2: u32, a3: u32) -> u32 {
    let r0: u32;
    // SAFETY: HVC traps to the monitor, which returns to the next instruction
    // with only r0-r3 (and r12, by our choice) changed. Calls that read guest
    // memory (CONSOLE_WRITE) only read it: the asm is not `nomem`, so the
    // compiler has written the buffer out before the call.
    unsafe {
        asm!(
            "hvc #0",
            inlateout("r0") fid => r0,
            inlateout("r1") a1 => _,
            inlateout("r2") a2 => _,
            inlateout("r3") a3 => _,
            lateout("r12") _,
            options(nostack),
        );
    }
    r0
}

/// The same call through `smc #0` (the monitor traps SMC with HCR.TSC).
#[inline(always)]
pub fn smc(fid: u32, a1: u32, a2: u32, a3: u32) -> u32 {
    let r0: u32;
    // SAFETY: as for `hvc`: SMC from the guest traps to the monitor (or, if
    // the monitor failed to trap it, goes to QEMU's PSCI firmware); either
    // way only r0-r3 change and no memory of ours is written.
    unsafe {
        asm!(
            "smc #0",
            inlateout("r0") fid => r0,
            inlateout("r1") a1 => _,
            inlateout("r2") a2 => _,
            inlateout("r3") a3 => _,
            lateout("r12") _,
            options(nostack),
        );
    }
    r0
}

/// A call whose result is a status (negative) or a non-negative value.
pub fn call(fid: u32, a1: u32, a2: u32, a3: u32) -> i32 {
    hvc(fid, a1, a2, a3) as i32
}

pub fn psci_version() -> u32 {
    hvc(abi::PSCI_VERSION, 0, 0, 0)
}

pub fn psci_features(fid: u32) -> i32 {
    call(abi::PSCI_FEATURES, fid, 0, 0)
}

pub fn cpu_on(target: u32, entry: u32, context: u32) -> i32 {
    call(abi::CPU_ON, target, entry, context)
}

pub fn affinity_info(target: u32, level: u32) -> i32 {
    call(abi::AFFINITY_INFO, target, level, 0)
}

/// CPU_OFF: returns only if the monitor refused (the status).
pub fn cpu_off() -> i32 {
    call(abi::CPU_OFF, 0, 0, 0)
}

/// carve's INFO(what): a value, or a negative status.
pub fn info(what: u32) -> i32 {
    call(abi::INFO, what, 0, 0)
}

pub fn nop() -> i32 {
    call(abi::NOP, 0, 0, 0)
}

/// CONSOLE_WRITE of `len` bytes at guest address `ipa`: bytes printed or a status.
pub fn console_write(ipa: u32, len: u32) -> i32 {
    call(abi::CONSOLE_WRITE, ipa, len, 0)
}

/// PSCI SYSTEM_OFF: the guest ends. If the monitor returns, say so and stop here.
pub fn system_off() -> ! {
    let r = call(abi::SYSTEM_OFF, 0, 0, 0);
    crate::say!("stub: FAIL: SYSTEM_OFF returned {} ({})", r, abi::status_name(r));
    halt()
}

/// PSCI SYSTEM_RESET: the monitor boots the guest again. Returns only if refused.
pub fn system_reset() -> i32 {
    call(abi::SYSTEM_RESET, 0, 0, 0)
}

/// Waits forever (interrupts are masked: `wfi` would return at once on a pending one).
pub fn halt() -> ! {
    loop {
        // SAFETY: `wfe` only waits for an event; it changes no state we rely on.
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
}
