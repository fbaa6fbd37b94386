//! Starting and stopping the machine's other CPUs: PSCI firmware, or a boot monitor's SYS_FLAGS release.
//!
//! With PSCI firmware (QEMU `virt`, `orangepi-pc`: the tree's PSCI node with
//! `method = "smc"`), CPU_ON starts a CPU at `_secondary_start` with its
//! number as context, and CPU_OFF stops it.
//!
//! Versatile Express has no PSCI firmware: its boot monitor (QEMU models it
//! with a small loop) holds the other CPUs in WFI until the motherboard's
//! SYS_FLAGS register holds an entry point and an interrupt wakes them. The
//! first time a CPU is asked for, the monitor writes `_secondary_pen`'s
//! physical address there and sends SGI 0 to every other CPU through the
//! GIC distributor (enabling it if no one has: Linux does the same with its
//! own entry point). Every CPU released comes to `_secondary_pen`, turns its
//! MMU on and waits in [`wait_for_start`] until a start is asked for it; a
//! CPU turned off waits there again. (The SGI stays pending at each CPU
//! until its guest acknowledges it: Linux counts SGI 0 as its wake-up IPI.)
//!
//! Stopping a CPU that runs a guest ([`kick`], for a guest's restart): the
//! `vm` layer first unmaps all of the guest's RAM from its stage-2 (TLB
//! invalidated by VMID, inner shareable), so that the CPU's next fetch or
//! access to it is a stage-2 fault, which traps to the monitor whatever the
//! guest was doing. Only a CPU that waits does not fetch: SEV wakes it from
//! WFE (Linux parks CPUs it stops for a reboot in a WFE loop, interrupts
//! masked), and SGI 0 from the GIC distributor wakes it from WFI (a wake-up
//! event even with interrupts masked). The guest owns the GIC (HCR.IMO
//! clear), so the SGI goes to its vector, whose fetch faults; it stays
//! pending until the guest's next boot acknowledges it, where Linux counts
//! SGI 0 as its wake-up IPI, which does nothing. That is the smallest thing
//! that reaches a lone guest's CPU with the GIC passed through: the monitor
//! takes no interrupt, and needs neither the virtual GIC nor a Hyp timer.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use carve_core::vm::psci;
use spin::Mutex;

use super::guest::firmware_psci;

/// SYS_FLAGSSET and SYS_FLAGSCLR in the Versatile Express system registers (ARM DUI 0447J, 4.3).
const SYS_FLAGSSET: usize = 0x30;
const SYS_FLAGSCLR: usize = 0x34;
/// GICD_CTLR and GICD_SGIR (GICv2, ARM IHI 0048B, 4.3): distributor enable;
/// TargetListFilter 0b01 in bits [25:24] sends to every CPU but this one.
const GICD_CTLR: usize = 0x000;
const GICD_SGIR: usize = 0xf00;
const SGIR_ALL_BUT_SELF: u32 = 0b01 << 24;
/// CPUTargetList, bits [23:16]: the CPU interfaces an SGI with TargetListFilter 0b00 goes to.
const SGIR_TARGET_SHIFT: u32 = 16;

/// The GIC distributor's registers, mapped for good (0: the machine has none mapped).
static GICD: AtomicUsize = AtomicUsize::new(0);

/// The GIC distributor is mapped at `va` (the fixmap's board slot).
pub fn set_gic_distributor(va: usize) {
    GICD.store(va, Ordering::Release);
}

/// Wakes CPU `cpu` from WFE and WFI: SEV, and SGI 0 to its CPU interface
/// (interface `cpu`, as on QEMU `virt` and the boards carve runs on). Returns
/// whether the SGI could be sent (a distributor is mapped).
pub fn kick(cpu: u32) -> bool {
    super::cache::dsb();
    sev();
    let gicd = GICD.load(Ordering::Acquire);
    if gicd == 0 || cpu >= 8 {
        return false;
    }
    // SAFETY: `gicd` maps the GIC distributor's page as Device memory for
    // good; GICD_SGIR only makes SGI 0 pending at one CPU interface, which
    // wakes that CPU and is handled (or ignored) by whoever owns its interrupts.
    unsafe { write32(gicd + GICD_SGIR, 1 << (SGIR_TARGET_SHIFT + cpu)) };
    super::cache::dsb();
    true
}

/// How other CPUs start.
#[derive(Clone, Copy, Debug)]
enum Starter {
    /// The tree names no way.
    None,
    /// PSCI CPU_ON / CPU_OFF through the firmware (SMC).
    Psci,
    /// SYS_FLAGS of the system registers mapped at `sysregs`, an SGI from the distributor at `gicd`.
    SysFlags { sysregs: usize, gicd: usize },
}

static STARTER: Mutex<Starter> = Mutex::new(Starter::None);
/// SYS_FLAGS was written and the CPUs woken: they are in (or on their way to) the pen.
static RELEASED: AtomicBool = AtomicBool::new(false);
/// A start is asked for CPU `i` (SYS_FLAGS machines): the pen lets it through.
static START: [AtomicBool; super::entry::MAX_CPUS] = [const { AtomicBool::new(false) }; super::entry::MAX_CPUS];
/// CPU `i` runs, or was asked to (SYS_FLAGS machines): a second start is ALREADY_ON.
static RUNNING: [AtomicBool; super::entry::MAX_CPUS] = [const { AtomicBool::new(false) }; super::entry::MAX_CPUS];

/// Start CPUs through the PSCI firmware.
pub fn use_psci() {
    *STARTER.lock() = Starter::Psci;
}

/// Start CPUs by SYS_FLAGS (the system registers mapped at `sysregs`) and an
/// SGI from the GIC distributor mapped at `gicd`. `mpidrs` are the CPUs'
/// affinities in CPU-number order, for the pen to find its number.
pub fn use_sys_flags(sysregs: usize, gicd: usize, mpidrs: &[u64]) {
    super::entry::set_cpu_mpidrs(mpidrs);
    *STARTER.lock() = Starter::SysFlags { sysregs, gicd };
}

/// Starts CPU `cpu` (affinity `mpidr`) at the monitor's secondary entry;
/// returns a PSCI status (SUCCESS, ALREADY_ON, ...).
pub fn cpu_on(cpu: u32, mpidr: u32) -> i32 {
    let starter = *STARTER.lock();
    match starter {
        Starter::None => psci::NOT_SUPPORTED,
        Starter::Psci => firmware_psci(psci::CPU_ON, mpidr, super::secondary_entry(), cpu),
        Starter::SysFlags { sysregs, gicd } => {
            let Some(running) = RUNNING.get(cpu as usize) else { return psci::INVALID_PARAMETERS };
            if cpu == 0 {
                return psci::INVALID_PARAMETERS;
            }
            if running.swap(true, Ordering::AcqRel) {
                return psci::ALREADY_ON;
            }
            START[cpu as usize].store(true, Ordering::Release);
            super::cache::dsb();
            sev();
            if !RELEASED.swap(true, Ordering::AcqRel) {
                release(sysregs, gicd);
            }
            psci::SUCCESS
        }
    }
}

/// Writes `_secondary_pen` into SYS_FLAGS and wakes every other CPU with SGI 0.
fn release(sysregs: usize, gicd: usize) {
    let entry = super::secondary_pen_entry();
    // SAFETY: `sysregs` and `gicd` map the system registers' and the GIC
    // distributor's pages as Device memory for good (the fixmap's board
    // slots); SYS_FLAGS only tells the held CPUs where to go, and an SGI to
    // them only wakes them (their own banked enables are untouched).
    unsafe {
        write32(sysregs + SYS_FLAGSCLR, u32::MAX);
        write32(sysregs + SYS_FLAGSSET, entry);
        super::cache::dsb();
        let ctlr = read32(gicd + GICD_CTLR);
        write32(gicd + GICD_CTLR, ctlr | 1);
        write32(gicd + GICD_SGIR, SGIR_ALL_BUT_SELF);
    }
    super::cache::dsb();
}

/// Stops this CPU (`cpu`): PSCI CPU_OFF (never returns), or back to the pen,
/// returning when a start is asked for it again.
pub fn cpu_off(cpu: u32) {
    let starter = *STARTER.lock();
    match starter {
        Starter::Psci => {
            firmware_psci(psci::CPU_OFF, 0, 0, 0);
        }
        Starter::SysFlags { .. } | Starter::None => {
            if let Some(r) = RUNNING.get(cpu as usize) {
                r.store(false, Ordering::Release);
            }
            wait_for_start(cpu);
        }
    }
}

/// Waits (WFE) until a start is asked for CPU `cpu`: the pen a released CPU waits in.
pub fn wait_for_start(cpu: u32) {
    let Some(start) = START.get(cpu as usize) else { super::guest::park() };
    while !start.swap(false, Ordering::AcqRel) {
        wfe();
    }
}

fn sev() {
    // SAFETY: SEV only signals an event to every CPU.
    unsafe { core::arch::asm!("sev", options(nomem, nostack, preserves_flags)) };
}

fn wfe() {
    // SAFETY: WFE only waits for an event (interrupts are masked in Hyp mode).
    unsafe { core::arch::asm!("wfe", options(nomem, nostack, preserves_flags)) };
}

/// # Safety
/// `va` is a mapped Device register.
unsafe fn write32(va: usize, value: u32) {
    // SAFETY: the caller's promise.
    unsafe { core::ptr::write_volatile(va as *mut u32, value) }
}

/// # Safety
/// `va` is a mapped Device register.
unsafe fn read32(va: usize) -> u32 {
    // SAFETY: the caller's promise.
    unsafe { core::ptr::read_volatile(va as *const u32) }
}
