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

use core::sync::atomic::{AtomicBool, Ordering};

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
