//! The guest's GICv2 as a stub drives it: distributor and CPU interface at
//! QEMU `virt`'s addresses (the monitor keeps them at the same IPAs: the
//! distributor emulated, the CPU interface the hardware GICV), and the
//! virtual timer (CNTV_*). ARM IHI 0048B 4.3 and 4.4; Arm ARM B8 (generic timer).

use core::arch::asm;

/// QEMU `virt`: the distributor and CPU interface the guest's DTB names.
pub const GICD: u32 = 0x0800_0000;
pub const GICC: u32 = 0x0801_0000;

pub const GICD_CTLR: u32 = 0x000;
pub const GICD_TYPER: u32 = 0x004;
pub const GICD_IIDR: u32 = 0x008;
pub const GICD_ISENABLER: u32 = 0x100;
pub const GICD_ICENABLER: u32 = 0x180;
pub const GICD_ISPENDR: u32 = 0x200;
pub const GICD_IPRIORITYR: u32 = 0x400;
pub const GICD_ITARGETSR: u32 = 0x800;
pub const GICD_SGIR: u32 = 0xf00;
pub const GICC_CTLR: u32 = 0x000;
pub const GICC_PMR: u32 = 0x004;
pub const GICC_IAR: u32 = 0x00c;
pub const GICC_EOIR: u32 = 0x010;

/// The virtual timer's interrupt.
pub const VTIMER: u32 = 27;

#[inline(always)]
pub fn read(addr: u32) -> u32 {
    // SAFETY: a device register of the guest's GIC, mapped (or emulated) by the monitor.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

#[inline(always)]
pub fn write(addr: u32, v: u32) {
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// Distributor on, CPU interface on with every priority let through.
pub fn enable() {
    write(GICD + GICD_CTLR, 1);
    write(GICC + GICC_PMR, 0xff);
    write(GICC + GICC_CTLR, 1);
}

/// IRQs unmasked at PL1 (CPSR.I clear).
pub fn irqs_on() {
    // SAFETY: the stub installed an IRQ handler before calling this.
    unsafe { asm!("cpsie i", options(nomem, nostack)) };
}

pub fn irqs_off() {
    // SAFETY: masking IRQs has no other effect.
    unsafe { asm!("cpsid i", options(nomem, nostack)) };
}

/// CNTV_CTL: bit 0 enable, bit 1 IMASK.
pub fn set_vtimer_ctl(v: u32) {
    // SAFETY: the guest's own virtual timer.
    unsafe { asm!("mcr p15, 0, {}, c14, c3, 1", "isb", in(reg) v, options(nomem, nostack)) };
}

/// CNTV_CVAL: fires when the virtual count reaches it.
pub fn set_vtimer_cval(v: u64) {
    // SAFETY: the guest's own virtual timer.
    unsafe {
        asm!("mcrr p15, 3, {}, {}, c14", "isb", in(reg) v as u32, in(reg) (v >> 32) as u32, options(nomem, nostack))
    };
}

pub fn vtimer_cval() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reading the guest's own timer register.
    unsafe { asm!("mrrc p15, 3, {}, {}, c14", out(reg) lo, out(reg) hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}
