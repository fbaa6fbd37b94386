//! Running a guest on this CPU: the virtualization registers, entering it, and firmware calls.
//!
//! Arm ARM (DDI 0406C.d) B1.14 (Virtualization Extensions), B4.1 (HCR, VTCR,
//! VTTBR, HCPTR, HSTR, VPIDR, VMPIDR, CNTHCTL, CNTVOFF). Every CPU that runs a
//! guest programs these itself: PSCI CPU_ON starts a CPU with its Hyp
//! registers reset.

use core::arch::asm;

use aarch32_cpu::register::{CntVoff, Cnthctl, Hcptr, Hcr, Hstr, Vmpidr, Vpidr};

use super::regs::{Vtcr, Vttbr};
use super::vectors::TrapFrame;
use super::{cache, midr};

/// HCR bits (Arm ARM B4.1.65, HCR, Hyp Configuration Register). aarch32-cpu's
/// `Hcr` names most of them but not TSC, so the monitor names the ones it sets.
pub mod hcr {
    /// VM, bit 0: stage-2 translation on for the Non-secure PL1&0 regime.
    pub const VM: u32 = 1 << 0;
    /// SWIO, bit 1: a guest's data cache invalidate by set/way is done as clean and invalidate.
    pub const SWIO: u32 = 1 << 1;
    /// FB, bit 9: a guest's TLB and branch predictor maintenance is broadcast in the Inner Shareable domain.
    pub const FB: u32 = 1 << 9;
    /// BSU, bits [11:10] = 0b01: a guest's barriers apply to at least the Inner Shareable domain.
    pub const BSU_INNER_SHAREABLE: u32 = 0b01 << 10;
    /// TSC, bit 19: a guest's SMC traps to Hyp mode (HSR.EC 0x13).
    pub const TSC: u32 = 1 << 19;
    /// FMO, bit 3: physical FIQs go to Hyp mode, and the guest's FIQs are virtual.
    pub const FMO: u32 = 1 << 3;
    /// IMO, bit 4: physical IRQs go to Hyp mode, and the guest's IRQs are virtual (the GICV interface).
    pub const IMO: u32 = 1 << 4;
}

/// HCR while a guest runs: stage-2 on, set/way invalidation upgraded to
/// clean+invalidate, SMC trapped (it becomes a PSCI call to the monitor), TLB
/// and cache maintenance broadcast and barriers upgraded to Inner Shareable,
/// since a vCPU may be any CPU. IMO, FMO and AMO (bits 4, 3, 5) stay clear for a
/// guest that owns the GIC CPU interface it is given; a guest with the virtual
/// GIC adds IMO and FMO ([`VcpuRegs::virtual_irqs`]).
pub const HCR_GUEST: u32 = hcr::VM | hcr::SWIO | hcr::FB | hcr::BSU_INNER_SHAREABLE | hcr::TSC;
const _: () = assert!(HCR_GUEST == 0x0008_0603);

/// CPSR for entering a Linux guest (booting.rst): SVC mode, IRQ, FIQ and
/// asynchronous aborts masked, ARM state, little-endian.
pub const SPSR_SVC_MASKED: u32 = 0x13 | (1 << 6) | (1 << 7) | (1 << 8);

/// What one vCPU needs of this CPU.
#[derive(Clone, Copy, Debug)]
pub struct VcpuRegs {
    /// VTTBR: the stage-2 root with the guest's VMID in bits [55:48].
    pub vttbr: u64,
    /// The value VTCR must hold for the stage-2 tables (carve-core's `VTCR_VALUE`).
    pub vtcr: u32,
    /// What the guest reads as MPIDR (VMPIDR, B4.1.163).
    pub vmpidr: u32,
    /// Physical IRQs and FIQs go to Hyp mode (HCR.IMO/FMO): the guest has the virtual GIC.
    pub virtual_irqs: bool,
}

/// Programs this CPU for `vcpu`: stage-2 translation, traps, timers, ID registers.
pub fn configure(vcpu: &VcpuRegs) {
    // SAFETY: VTCR/VTTBR describe complete stage-2 tables built by carve-core and
    // cleaned to the point of coherency; they take effect for PL1/PL0 only, not for
    // the monitor running here.
    unsafe {
        Vtcr::write(vcpu.vtcr);
        Vttbr::write(vcpu.vttbr);
    }
    // SAFETY: VPIDR/VMPIDR change only what the guest reads as MIDR/MPIDR: this
    // CPU's MIDR, and the MPIDR the guest's device tree lists for this vCPU.
    unsafe {
        Vpidr::write(Vpidr(midr()));
        Vmpidr::write(Vmpidr(vcpu.vmpidr));
    }
    // PL1 may use the physical counter and timer (Linux picks the virtual timer
    // anyway); the virtual counter is the physical one (CNTVOFF resets UNKNOWN).
    Cnthctl::write(Cnthctl::new_with_raw_value(0b11));
    CntVoff::write(CntVoff(0));
    // No coprocessor (VFP/NEON included) and no CP15 register is trapped.
    Hcptr::write(Hcptr::new_with_raw_value(0));
    // SAFETY: HSTR = 0 traps no CP15 primary register; it changes only what guests trap.
    unsafe { Hstr::write(Hstr(0)) };
    let irqs = if vcpu.virtual_irqs { hcr::IMO | hcr::FMO } else { 0 };
    Hcr::write(Hcr::new_with_raw_value(HCR_GUEST | irqs));
    cache::isb();
    // Entries left by an earlier guest with the same VMID must not be used.
    cache::tlb_invalidate_guests_all_is();
}

/// Enters the guest with the registers in `frame` (r0-r12, LR_usr, ELR_hyp = where, SPSR_hyp = how).
///
/// The caller has configured this CPU ([`configure`]) and cleaned to the
/// point of coherency everything it wrote into guest memory.
pub fn enter(frame: &TrapFrame) -> ! {
    // The guest starts with its caches off: it must fetch what was just written.
    cache::invalidate_icache_all();
    let p: *const TrapFrame = frame;
    // SAFETY: the frame is a complete, valid guest context (`TrapFrame` layout:
    // r0-r12 at 0, LR_usr at 52, ELR at 56, SPSR at 60); ERET switches to the
    // guest's mode and stage-2 translation, and the monitor is reached again
    // only through HVBAR, on this same Hyp stack.
    unsafe {
        asm!(
            ".arch_extension virt",
            "ldr r1, [r0, #56]",
            "ldr r2, [r0, #60]",
            "msr elr_hyp, r1",
            "msr spsr_cxsf, r2", // not `msr spsr_hyp`: UNPREDICTABLE in Hyp mode
            "ldr lr, [r0, #52]", // Hyp's LR is LR_usr: the guest's
            "ldm r0, {{r0-r12}}",
            "eret",
            in("r0") p,
            options(noreturn)
        )
    }
}

/// A PSCI call to the firmware from Hyp mode (SMC conduit: QEMU's own PSCI
/// answers SMCs from Hyp). Returns r0.
pub fn firmware_psci(function: u32, a: u32, b: u32, c: u32) -> i32 {
    let r0: u32;
    // SAFETY: an SMC with the SMC32 calling convention: r0-r3 in, r0 out,
    // r1-r3 and r12 may be clobbered; memory is not touched by the callee.
    unsafe {
        asm!(
            ".arch_extension sec",
            "smc #0",
            inlateout("r0") function => r0,
            inlateout("r1") a => _,
            inlateout("r2") b => _,
            inlateout("r3") c => _,
            out("r12") _,
            options(nostack)
        )
    };
    r0 as i32
}

/// The guest's PL1 state the monitor reads or sets: for injecting an abort, and for a restart.
/// From Hyp mode these CP15 accesses reach the Non-secure PL1 copies (Arm ARM B1.14).
pub mod pl1 {
    use core::arch::asm;

    macro_rules! cp15_rw {
        ($read:ident, $write:ident, $crn:literal, $op1:literal, $crm:literal, $op2:literal, $doc:literal) => {
            #[doc = $doc]
            #[allow(dead_code)] // each register comes as a pair; not every reader is used
            pub fn $read() -> u32 {
                let v: u32;
                // SAFETY: reading a guest PL1 register from Hyp mode has no side effect.
                unsafe {
                    asm!(concat!("mrc p15, ", $op1, ", {}, c", $crn, ", c", $crm, ", ", $op2), out(reg) v,
                        options(nomem, nostack, preserves_flags))
                };
                v
            }
            #[doc = $doc]
            pub fn $write(v: u32) {
                // SAFETY: the register belongs to the guest's PL1 state, not to the
                // monitor: writing it changes only what the guest sees when it runs.
                unsafe {
                    asm!(concat!("mcr p15, ", $op1, ", {}, c", $crn, ", c", $crm, ", ", $op2), in(reg) v,
                        options(nostack, preserves_flags))
                };
            }
        };
    }

    cp15_rw!(sctlr, set_sctlr, "1", "0", "0", "0", "SCTLR: the guest's system control (M, C, I, V, TE, EE).");
    cp15_rw!(ttbcr, set_ttbcr, "2", "0", "0", "2", "TTBCR: EAE tells the guest's fault-status format.");
    cp15_rw!(vbar, set_vbar, "12", "0", "0", "0", "VBAR: the guest's vector base (when SCTLR.V = 0).");
    cp15_rw!(dfsr, set_dfsr, "5", "0", "0", "0", "DFSR: the guest's data fault status.");
    cp15_rw!(ifsr, set_ifsr, "5", "0", "0", "1", "IFSR: the guest's instruction fault status.");
    cp15_rw!(dfar, set_dfar, "6", "0", "0", "0", "DFAR: the guest's data fault address.");
    cp15_rw!(ifar, set_ifar, "6", "0", "0", "2", "IFAR: the guest's instruction fault address.");
    cp15_rw!(contextidr, set_contextidr, "13", "0", "0", "1", "CONTEXTIDR: the guest's ASID and process ID.");

    /// Sets the guest's Abort-mode SPSR and LR (banked-register MSR, Virtualization Extensions).
    pub fn set_abort_banked(spsr: u32, lr: u32) {
        // SAFETY: SPSR_abt and LR_abt are the guest's Abort-mode registers;
        // Hyp mode may write them with the banked MSR forms (Arm ARM B9.3.10).
        unsafe {
            asm!(
                ".arch_extension virt",
                "msr SPSR_abt, {s}",
                "msr LR_abt, {l}",
                s = in(reg) spsr,
                l = in(reg) lr,
                options(nomem, nostack, preserves_flags)
            )
        };
    }
}

/// The guest's general-purpose registers a trap frame does not hold: SP and LR
/// of its current mode, and r8-r12 of FIQ mode (Arm ARM B9.3.9/B9.3.10, the
/// banked-register MRS and MSR of the Virtualization Extensions). The frame
/// holds r0-r12 as User mode sees them and LR_usr.
pub mod banked {
    use core::arch::asm;

    use crate::arch::vectors::TrapFrame;

    macro_rules! banked_rw {
        ($name:literal) => {
            (
                || -> u32 {
                    let v: u32;
                    // SAFETY: reading a guest's banked register from Hyp mode has no side effect.
                    unsafe {
                        asm!(".arch_extension virt", concat!("mrs {}, ", $name), out(reg) v,
                            options(nomem, nostack, preserves_flags))
                    };
                    v
                },
                |v: u32| {
                    // SAFETY: the register is the guest's, for the mode it trapped in: writing
                    // it is what the load being emulated does.
                    unsafe {
                        asm!(".arch_extension virt", concat!("msr ", $name, ", {}"), in(reg) v,
                            options(nomem, nostack, preserves_flags))
                    };
                },
            )
        };
    }

    type Access = (fn() -> u32, fn(u32));

    /// Register `reg` (0-14) of the guest's mode (CPSR.M of `spsr`), as a reader and a writer; `None` for the PC.
    fn banked(spsr: u32, reg: u8) -> Option<Access> {
        let mode = spsr & 0x1f;
        Some(match (mode, reg) {
            (0x11, 8) => banked_rw!("r8_fiq"),
            (0x11, 9) => banked_rw!("r9_fiq"),
            (0x11, 10) => banked_rw!("r10_fiq"),
            (0x11, 11) => banked_rw!("r11_fiq"),
            (0x11, 12) => banked_rw!("r12_fiq"),
            (0x11, 13) => banked_rw!("SP_fiq"),
            (0x11, 14) => banked_rw!("LR_fiq"),
            (0x12, 13) => banked_rw!("SP_irq"),
            (0x12, 14) => banked_rw!("LR_irq"),
            (0x13, 13) => banked_rw!("SP_svc"),
            (0x13, 14) => banked_rw!("LR_svc"),
            (0x17, 13) => banked_rw!("SP_abt"),
            (0x17, 14) => banked_rw!("LR_abt"),
            (0x1b, 13) => banked_rw!("SP_und"),
            (0x1b, 14) => banked_rw!("LR_und"),
            (0x10 | 0x1f, 13) => banked_rw!("SP_usr"),
            _ => return None,
        })
    }

    /// The value of the guest's register `reg` (0-14) at the trap; `None` for the PC (or a bad number).
    pub fn read(frame: &TrapFrame, reg: u8) -> Option<u32> {
        if let Some((r, _)) = banked(frame.spsr, reg) {
            return Some(r());
        }
        match reg {
            0..=12 => Some(frame.r[usize::from(reg)]),
            14 => Some(frame.lr_usr), // User and System mode's LR
            _ => None,
        }
    }

    /// Sets the guest's register `reg` (0-14); false for the PC (or a bad number).
    pub fn write(frame: &mut TrapFrame, reg: u8, v: u32) -> bool {
        if let Some((_, w)) = banked(frame.spsr, reg) {
            w(v);
            return true;
        }
        match reg {
            0..=12 => frame.r[usize::from(reg)] = v,
            14 => frame.lr_usr = v,
            _ => return false,
        }
        true
    }
}

/// SCTLR as Cortex-A15 resets it (MMU, caches and alignment checks off): a restarted guest starts here.
pub const SCTLR_RESET: u32 = 0x00c5_0078;

/// Makes a restarted guest find its PL1 state as at reset: MMU off, no stale translations.
pub fn reset_pl1() {
    pl1::set_sctlr(SCTLR_RESET);
    pl1::set_ttbcr(0);
    pl1::set_vbar(0);
    pl1::set_contextidr(0);
    cache::isb();
    cache::tlb_invalidate_guests_all_is();
}

/// Idles this CPU for good (a CPU whose guest is gone, or that runs none).
pub fn park() -> ! {
    loop {
        // SAFETY: WFI only waits; interrupts are masked in Hyp, so this sleeps until an event.
        unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
    }
}
