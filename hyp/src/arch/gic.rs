//! The physical GICv2 as the monitor drives it when guests share the machine:
//! its distributor and CPU interface for the monitor's own use, and the
//! virtual interface control (GICH) with its list registers.
//!
//! ARM IHI 0048B (GICv2): 4.3 distributor, 4.4 CPU interface (GICC_CTLR.EOImode:
//! with it set, a write to GICC_EOIR only drops the running priority and
//! GICC_DIR deactivates), 5.3 virtual interface control (GICH_HCR, VTR, MISR,
//! EISR, ELRSR, the list registers). A list register with HW = 1 names a
//! physical interrupt the guest's EOI of the virtual one deactivates.
//!
//! Every CPU that runs a vCPU programs its own banked parts ([`init_cpu`]);
//! the boot CPU programs the shared distributor once ([`init_distributor`]).
//! The register blocks are reached at virtual addresses the `mm` layer
//! ioremapped and handed to [`set_base`].

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

/// The SGI the monitor sends to make another CPU look at its vCPU's pending interrupts.
pub const KICK_SGI: u32 = 15;
/// The maintenance interrupt (PPI 9, INTID 25 on Cortex-A15/A7 and QEMU virt).
pub const MAINTENANCE_PPI: u32 = 25;
/// Special INTIDs from GICC_IAR: 1020-1023 mean no interrupt.
pub const SPURIOUS: u32 = 1020;

// Distributor (4.1.2).
const GICD_CTLR: usize = 0x000;
const GICD_TYPER: usize = 0x004;
const GICD_ISENABLER: usize = 0x100;
const GICD_ICENABLER: usize = 0x180;
const GICD_ISPENDR: usize = 0x200;
const GICD_ICPENDR: usize = 0x280;
const GICD_ISACTIVER: usize = 0x300;
const GICD_ICACTIVER: usize = 0x380;
const GICD_IPRIORITYR: usize = 0x400;
const GICD_ITARGETSR: usize = 0x800;
const GICD_ICFGR: usize = 0xc00;
const GICD_SGIR: usize = 0xf00;
// CPU interface (4.1.3).
const GICC_CTLR: usize = 0x000;
const GICC_PMR: usize = 0x004;
const GICC_BPR: usize = 0x008;
const GICC_IAR: usize = 0x00c;
const GICC_EOIR: usize = 0x010;
const GICC_DIR: usize = 0x1000;
/// GICC_CTLR: EnableGrp0 | EnableGrp1 | EOImode (bit 9: without Security Extensions, the one that applies).
const GICC_CTLR_VALUE: u32 = 1 | 2 | (1 << 9);
// Virtual interface control (5.3).
const GICH_HCR: usize = 0x000;
const GICH_VTR: usize = 0x004;
const GICH_EISR0: usize = 0x020;
const GICH_ELRSR0: usize = 0x030;
const GICH_APR: usize = 0x0f0;
const GICH_LR0: usize = 0x100;
/// GICH_HCR.En: the virtual CPU interface works.
const GICH_HCR_EN: u32 = 1;

/// The priority the monitor gives every physical interrupt (all equal: none preempts another in Hyp).
const PRIORITY: u32 = 0xa0;

/// List register fields (5.3.11).
pub mod lr {
    pub const HW: u32 = 1 << 31;
    pub const PENDING: u32 = 1 << 28;
    /// HW = 0 only: a maintenance interrupt when the guest deactivates it.
    pub const EOI: u32 = 1 << 19;

    /// A pending virtual interrupt: `vintid`, the guest's 8-bit `priority`
    /// (the top five kept), and for HW = 1 the physical INTID, else the SGI source CPU.
    #[inline(always)]
    pub const fn pending(vintid: u32, priority: u8, hw: bool, pintid_or_source: u32, eoi: bool) -> u32 {
        let prio = ((priority as u32) >> 3) << 23;
        if hw {
            HW | PENDING | prio | ((pintid_or_source & 0x3ff) << 10) | (vintid & 0x3ff)
        } else {
            PENDING | prio | if eoi { EOI } else { 0 } | ((pintid_or_source & 7) << 10) | (vintid & 0x3ff)
        }
    }
}

static GICD: AtomicUsize = AtomicUsize::new(0);
static GICC: AtomicUsize = AtomicUsize::new(0);
static GICH: AtomicUsize = AtomicUsize::new(0);
/// Number of list registers (GICH_VTR.ListRegs + 1).
static LRS: AtomicU32 = AtomicU32::new(0);

#[inline(always)]
fn read(base: &AtomicUsize, off: usize) -> u32 {
    let va = base.load(Ordering::Relaxed) + off;
    // SAFETY: `set_base` stored the virtual address of the register block,
    // ioremapped as Device memory for good; `off` is a register offset inside it.
    unsafe { core::ptr::read_volatile(va as *const u32) }
}

#[inline(always)]
fn write(base: &AtomicUsize, off: usize, v: u32) {
    let va = base.load(Ordering::Relaxed) + off;
    // SAFETY: as in `read`; the monitor owns the physical GIC while guests share the machine.
    unsafe { core::ptr::write_volatile(va as *mut u32, v) }
}

/// Whether the monitor has taken the GIC ([`set_base`]).
pub fn adopted() -> bool {
    GICH.load(Ordering::Relaxed) != 0
}

/// Records where the distributor, CPU interface (two pages) and virtual interface control are mapped.
///
/// # Safety
/// Each address must map its whole register block as Device memory for good,
/// and no guest may be given the distributor or CPU interface meanwhile.
pub unsafe fn set_base(gicd: usize, gicc: usize, gich: usize) {
    GICD.store(gicd, Ordering::Relaxed);
    GICC.store(gicc, Ordering::Relaxed);
    GICH.store(gich, Ordering::Relaxed);
}

/// [`set_base`] for the `vm` layer, which holds the addresses `mm::ioremap` returned.
pub fn adopt(gicd: usize, gicc: usize, gich: usize) {
    // SAFETY: the caller passes addresses `mm::ioremap` mapped as Device memory for
    // good over the GIC's distributor (4 KiB), CPU interface (8 KiB) and GICH
    // (4 KiB), and gives neither the distributor nor the CPU interface to a guest.
    unsafe { set_base(gicd, gicc, gich) }
}

/// Interrupt IDs the distributor implements (GICD_TYPER.ITLinesNumber).
pub fn lines() -> u32 {
    ((read(&GICD, GICD_TYPER) & 0x1f) + 1) * 32
}

/// Programs the shared distributor: every SPI disabled, inactive, not
/// pending, priority [`PRIORITY`], targeted at CPU 0; then enabled.
pub fn init_distributor() {
    write(&GICD, GICD_CTLR, 0);
    let lines = lines() as usize;
    for i in 1..lines / 32 {
        write(&GICD, GICD_ICENABLER + 4 * i, !0);
        write(&GICD, GICD_ICPENDR + 4 * i, !0);
        write(&GICD, GICD_ICACTIVER + 4 * i, !0);
    }
    for i in 8..lines / 4 {
        write(&GICD, GICD_IPRIORITYR + 4 * i, PRIORITY * 0x0101_0101);
        write(&GICD, GICD_ITARGETSR + 4 * i, 0x0101_0101);
    }
    write(&GICD, GICD_CTLR, 1);
}

/// Programs this CPU's banked parts: SGIs and PPIs off but the kick SGI and
/// the maintenance interrupt, the CPU interface with split EOI/deactivate,
/// the virtual interface on with empty list registers.
pub fn init_cpu() {
    write(&GICD, GICD_ICENABLER, !0);
    write(&GICD, GICD_ICPENDR, !0);
    write(&GICD, GICD_ICACTIVER, !0);
    for i in 0..8 {
        write(&GICD, GICD_IPRIORITYR + 4 * i, PRIORITY * 0x0101_0101);
    }
    // The Hyp timer off until the monitor arms it (its state out of reset is unknown).
    super::timer::disarm();
    write(&GICD, GICD_ISENABLER, (1 << KICK_SGI) | (1 << MAINTENANCE_PPI) | (1 << super::timer::PPI));
    write(&GICC, GICC_PMR, 0xff);
    write(&GICC, GICC_BPR, 0);
    write(&GICC, GICC_CTLR, GICC_CTLR_VALUE);
    let n = (read(&GICH, GICH_VTR) & 0x3f) + 1;
    LRS.store(n, Ordering::Relaxed);
    for i in 0..n as usize {
        write(&GICH, GICH_LR0 + 4 * i, 0);
    }
    write(&GICH, GICH_APR, 0);
    write(&GICH, GICH_HCR, GICH_HCR_EN);
}

/// This CPU's interfaces off: no interrupt is signalled to it any more.
pub fn cpu_interface_off() {
    write(&GICH, GICH_HCR, 0);
    write(&GICC, GICC_CTLR, 0);
}

/// Number of list registers.
#[inline(always)]
pub fn list_registers() -> u32 {
    LRS.load(Ordering::Relaxed)
}

/// Acknowledges the highest-priority pending interrupt (GICC_IAR: INTID [9:0], source CPU [12:10]).
#[inline(always)]
pub fn ack() -> u32 {
    read(&GICC, GICC_IAR)
}

/// Drops the running priority of an acknowledged interrupt (it stays active until [`deactivate`]).
#[inline(always)]
pub fn eoi(iar: u32) {
    write(&GICC, GICC_EOIR, iar);
}

/// Deactivates an interrupt the monitor handled itself.
#[inline(always)]
pub fn deactivate(iar: u32) {
    write(&GICC, GICC_DIR, iar);
}

/// List registers that hold nothing (GICH_ELRSR0: bit n for LR n).
#[inline(always)]
pub fn empty_lrs() -> u32 {
    read(&GICH, GICH_ELRSR0) & ((1u32 << list_registers()) - 1)
}

/// List registers whose entry the guest has finished: empty (GICH_ELRSR0), or
/// deactivated with the EOI bit set, which keeps them out of ELRSR until the
/// monitor clears them (GICH_EISR0; 5.3.8: an LR is empty only if its state is
/// invalid and HW = 1 or EOI = 0).
#[inline(always)]
pub fn finished_lrs() -> u32 {
    (read(&GICH, GICH_ELRSR0) | read(&GICH, GICH_EISR0)) & ((1u32 << list_registers()) - 1)
}

#[inline(always)]
pub fn read_lr(n: u32) -> u32 {
    read(&GICH, GICH_LR0 + 4 * n as usize)
}

#[inline(always)]
pub fn write_lr(n: u32, v: u32) {
    write(&GICH, GICH_LR0 + 4 * n as usize, v);
}

/// Sends SGI `id` to the CPUs in `cpus` (bit n = CPU interface n).
pub fn send_sgi(cpus: u8, id: u32) {
    write(&GICD, GICD_SGIR, (u32::from(cpus) << 16) | (id & 0xf));
}

/// Which of the set/clear register banks a [`bits`] operation writes (carve-core names them).
pub use carve_core::vm::vgic::Bank;

/// Writes `mask` to the set/clear register of `bank` covering INTIDs `first..first + 32`
/// (for INTIDs below 32: this CPU's banked copy).
pub fn bits(bank: Bank, first: u32, mask: u32) {
    let base = match bank {
        Bank::SetEnable => GICD_ISENABLER,
        Bank::ClearEnable => GICD_ICENABLER,
        Bank::SetPending => GICD_ISPENDR,
        Bank::ClearPending => GICD_ICPENDR,
        Bank::SetActive => GICD_ISACTIVER,
        Bank::ClearActive => GICD_ICACTIVER,
    };
    if first < lines() {
        write(&GICD, base + (first / 32) as usize * 4, mask);
    }
}

/// Routes SPI `intid` to the CPU interfaces in `cpus`.
pub fn set_target(intid: u32, cpus: u8) {
    if (32..lines()).contains(&intid) {
        let word = GICD_ITARGETSR + (intid as usize & !3);
        let shift = (intid & 3) * 8;
        let v = (read(&GICD, word) & !(0xff << shift)) | (u32::from(cpus) << shift);
        write(&GICD, word, v);
    }
}

/// Makes SPI `intid` edge-triggered or level-sensitive.
pub fn set_edge(intid: u32, edge: bool) {
    if (32..lines()).contains(&intid) {
        let word = GICD_ICFGR + (intid as usize / 16) * 4;
        let bit = 2 << ((intid % 16) * 2);
        let v = read(&GICD, word);
        write(&GICD, word, if edge { v | bit } else { v & !bit });
    }
}
