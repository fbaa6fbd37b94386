//! Running a guest on this CPU: the virtualization registers, entering it, and firmware calls.
//!
//! Arm ARM (DDI 0406C.d) B1.14 (Virtualization Extensions), B4.1 (HCR, VTCR,
//! VTTBR, HCPTR, HSTR, VPIDR, VMPIDR, CNTHCTL, CNTVOFF). Every CPU that runs a
//! guest programs these itself: PSCI CPU_ON starts a CPU with its Hyp
//! registers reset.

use core::arch::asm;

use aarch32_cpu::register::{Cnthctl, CntVoff, Hcptr, Hcr, Hstr, Vmpidr, Vpidr};

use super::regs::{Vtcr, Vttbr};
use super::vectors::TrapFrame;
use super::{cache, midr};

/// HCR (B4.1.65) while a guest runs: stage-2 on (VM), set/way invalidation
/// upgraded to clean+invalidate (SWIO), SMC trapped (TSC: it becomes a PSCI
/// call to the monitor), TLB and cache maintenance broadcast (FB) and barriers
/// upgraded to Inner Shareable (BSU = 0b01), since a vCPU may be any CPU.
/// IMO/FMO/AMO stay clear: the guest owns the GIC CPU interface it is given.
pub const HCR_GUEST: u32 = (1 << 0) | (1 << 1) | (1 << 19) | (1 << 9) | (0b01 << 10);

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
    Hcr::write(Hcr::new_with_raw_value(HCR_GUEST));
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
