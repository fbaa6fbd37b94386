//! The Hyp physical timer (CNTHP, Arm ARM B8.1): the monitor's own deadline
//! on each CPU, for work no guest trap would bring back in time (the shared
//! console's held lines). It compares with the physical count
//! ([`super::counter`]) and raises PPI [`PPI`] at this CPU's GIC interface.

use aarch32_cpu::register::CnthpCtl;

use super::regs::CnthpCval;

/// The Hyp timer's interrupt: PPI 10 (INTID 26), as the Cortex-A15 and A7
/// wire CNTHPIRQ and as their device trees' `arm,armv7-timer` nodes say.
pub const PPI: u32 = 26;

/// Fires at physical count `at` (at once if that has passed), replacing any earlier deadline.
pub fn arm(at: u64) {
    // SAFETY: CNTHP_CVAL is the monitor's own compare value; any 64-bit value is allowed.
    unsafe { CnthpCval::write(at) };
    super::cache::isb();
    CnthpCtl::write(CnthpCtl::new_with_raw_value(0).with_enable(true).with_imask(false));
    super::cache::isb();
}

/// Off: its interrupt line drops.
pub fn disarm() {
    CnthpCtl::write(CnthpCtl::new_with_raw_value(0));
    super::cache::isb();
}
