//! The generic timer's virtual counter, the stubs' clock.
//!
//! Under `qemu -icount shift=0` every instruction takes 1 ns of virtual time,
//! so counter ticks convert to instructions: ticks * 1e9 / CNTFRQ.

use core::arch::asm;

/// CNTVCT, the 64-bit virtual count, after an ISB (so earlier instructions are done).
#[inline(always)]
pub fn cntvct() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reading CNTVCT has no side effects and is allowed at PL1.
    unsafe {
        asm!("isb", "mrrc p15, 1, {lo}, {hi}, c14", lo = out(reg) lo, hi = out(reg) hi, options(nomem, nostack));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// CNTFRQ, the counter's frequency in Hz.
pub fn cntfrq() -> u32 {
    let f: u32;
    // SAFETY: reading CNTFRQ has no side effects.
    unsafe { asm!("mrc p15, 0, {f}, c14, c0, 0", f = out(reg) f, options(nomem, nostack)) };
    f
}
