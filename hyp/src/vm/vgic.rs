//! The virtual GIC of guests that share the machine: the glue between
//! carve-core's emulated distributor, the trapped GICD page, physical
//! interrupts, and this CPU's list registers.
//!
//! - The guest's GICD page is left out of its stage-2: every access traps
//!   and [`emulate`] serves it from the guest's [`Distributor`].
//! - The hardware GICV page is mapped at the guest's GICC address: the guest
//!   acknowledges, EOIs and deactivates without the monitor.
//! - Physical IRQs come to Hyp mode (HCR.IMO/FMO). The virtual timer's PPI 27
//!   goes straight into a free list register as a hardware interrupt (HW = 1:
//!   the guest's deactivation of the virtual one deactivates the physical one),
//!   without taking the guests' lock ([`irq`]'s fast path). Its physical
//!   enable follows the guest's GICD_ISENABLER0/ICENABLER0.
//! - Virtual interrupts (SGIs between one guest's vCPUs, emulated devices'
//!   lines) wait in the distributor; [`flush`] moves them into free list
//!   registers with the EOI bit set, so the guest's deactivation raises the
//!   maintenance interrupt and the monitor retires them ([`sync`]). One list
//!   register is always left for the timer. A vCPU on another CPU is kicked
//!   with the physical SGI [`gic::KICK_SGI`].
//!
//! The Hyp timer's PPI ([`timer::PPI`]) is the monitor's own: when it fires,
//! the shared console's held lines go out ([`super::console::hold_over`]).
//!
//! Each vCPU runs on its own physical CPU for good, so a CPU's list registers
//! belong to one vCPU and are never saved or restored.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use carve_core::dt::machine::Machine;
use carve_core::syndrome::{Abort, AccessSize};

use carve_core::vm::vgic::{reg, Config, Distributor, HwOp, Kind, GICD_SIZE, VTIMER_PPI};

use super::{Vm, VMS};
use crate::arch::gic::{self, lr, Bank};
use crate::arch::guest::banked;
use crate::arch::timer;
use crate::arch::vectors::TrapFrame;

/// The most physical CPUs the monitor tracks list registers for.
const MAX_CPUS: usize = 8;
/// GICD_IPRIORITYR's word that holds the virtual timer's priority (INTIDs 24-27).
const IPRIORITYR_TIMER_WORD: u32 = reg::IPRIORITYR + (VTIMER_PPI & !3);

/// A physical SPI the monitor serves itself (the console UART's), 0 if none, and its handler.
static MONITOR_IRQ: AtomicU32 = AtomicU32::new(0);
static MONITOR_IRQ_HANDLER: spin::Mutex<Option<fn()>> = spin::Mutex::new(None);
/// The CPU interface physical monitor interrupts are routed to (a CPU that runs a vCPU).
static MONITOR_IRQ_CPU: AtomicU32 = AtomicU32::new(u32::MAX);

/// Per physical CPU: the list registers holding virtual (HW = 0) entries the distributor counts as held.
static VIRT_LRS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];
/// Per physical CPU: the priority the guest of the vCPU there gave its virtual
/// timer (GICD_IPRIORITYR, INTID 27), for the fast path, which takes no lock.
static TIMER_PRIORITY: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];
/// Per physical CPU: virtual-timer interrupts injected (the bench reads them at the end).
pub static TIMER_INJECTED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// A guest's virtual GIC.
pub struct VmGic {
    pub dist: Distributor,
    /// The distributor at reset, for restarts.
    fresh: Distributor,
    /// Where its GICD page is (the machine's distributor address).
    pub gicd: u64,
    /// Emulated GICD accesses.
    pub accesses: u64,
    /// GICD accesses refused with an abort (no valid syndrome, a size or alignment the GIC does not allow).
    pub refused: u64,
}

impl VmGic {
    /// The virtual GIC of a guest of `cpus` vCPUs on `machine`: its SGIs, the
    /// virtual timer (hardware-backed), and the console UART's line as a
    /// virtual SPI (the emulated UART raises it).
    /// With `uart_given` (a lone guest given the console UART itself) the line is
    /// the physical one, injected as a hardware interrupt. `given` are the
    /// SPIs of the devices its `carve,devices` names: hardware interrupts too.
    pub fn new(machine: &Machine, cpus: usize, uart_given: bool, given: &[u32]) -> Option<VmGic> {
        let gic = machine.gic.as_ref()?;
        let uart: &[u32] = match &machine.uart_irq {
            Some(i) if *i >= 32 => core::slice::from_ref(i),
            _ => &[],
        };
        let mut hw: Vec<u32> = given.to_vec();
        if uart_given {
            hw.extend_from_slice(uart);
        }
        let virtual_spis = if uart_given { &[][..] } else { uart };
        let dist = Distributor::new(&Config { cpus, virtual_spis, hw_spis: &hw, hw_ppis: 1 << VTIMER_PPI });
        Some(VmGic { fresh: dist.clone(), dist, gicd: gic.distributor.start(), accesses: 0, refused: 0 })
    }

    /// Back to reset (a guest's restart).
    pub fn reset(&mut self) {
        self.dist = self.fresh.clone();
        self.accesses = 0;
        self.refused = 0;
    }
}

/// Where the hardware GICV page goes in a guest: (IPA of the GICC, PA of the GICV, size).
pub fn gicv_window(machine: &Machine) -> Result<Option<(u64, u64, u64)>, String> {
    let Some(gic) = machine.gic.as_ref() else { return Ok(None) };
    let v = gic.vcpu_interface.ok_or_else(|| format!("{}: the GIC has no GICV (virtual CPU interface)", gic.node))?;
    // GICv2's CPU interface is 8 KiB (GICC_DIR at 0x1000); map what both windows hold.
    let size = gic.cpu_interface.size.min(v.size).max(0x2000).next_multiple_of(0x1000);
    if v.size < 0x2000 {
        return Err(format!("{}: GICV at {:#x} is {:#x} bytes, less than 8 KiB", gic.node, v.start(), v.size));
    }
    Ok(Some((gic.cpu_interface.start(), v.start(), size)))
}

/// Takes the physical GIC for the monitor when guests share the machine:
/// maps its distributor, CPU interface and GICH, programs the distributor,
/// installs the IRQ handler. False (and why, logged) if the machine's GIC has
/// no virtualization parts or cannot be mapped.
pub fn start(machine: &Machine) -> bool {
    let Some(g) = machine.gic.as_ref() else {
        defmt::info!("vm: several guests and no GIC in the tree: no interrupts for guests");
        return false;
    };
    let (Some(gich), Some(_)) = (g.hyp_interface, g.vcpu_interface) else {
        defmt::info!(
            "vm: several guests, and the GIC {=str} has no GICH/GICV: no virtual GIC, guests get no interrupts",
            g.node.as_str()
        );
        return false;
    };
    let map = |what: &str, pa: u64, size: u64| match crate::mm::ioremap(pa, size) {
        Ok(va) => Some(va),
        Err(e) => {
            defmt::error!("vm: virtual GIC: cannot map the {=str} at {=u64:#010x}: {=str}", what, pa, e.as_str());
            None
        }
    };
    let (Some(d), Some(c), Some(h)) = (
        map("GIC distributor", g.distributor.start(), 0x1000),
        map("GIC CPU interface", g.cpu_interface.start(), 0x2000),
        map("GICH", gich.start(), 0x1000),
    ) else {
        return false;
    };
    // The three blocks were just ioremapped as Device memory for good, and with
    // several guests none is given the distributor or CPU interface.
    gic::adopt(d, c, h);
    gic::init_distributor();
    crate::arch::vectors::set_guest_irq_handler(irq);
    defmt::info!(
        "vm: the monitor takes physical IRQs (HCR.IMO/FMO); each guest gets a virtual GIC (GICD emulated, GICV at its GICC, {=u32} interrupt lines on the machine)",
        gic::lines()
    );
    true
}

/// Makes physical SPI `intid` the monitor's own: when it fires, `handler` runs
/// (on the CPU it is routed to, with no lock held; the interrupt is
/// deactivated after it returns, so a level-sensitive line must be quiet by
/// then). Call before the guests start or after; only one such interrupt.
pub fn set_monitor_irq(intid: u32, handler: fn()) {
    if intid < 32 {
        return;
    }
    *MONITOR_IRQ_HANDLER.lock() = Some(handler);
    MONITOR_IRQ.store(intid, Ordering::Release);
    route_monitor_irq();
}

/// Routes and enables the monitor's own SPI once the GIC is the monitor's and a CPU is chosen.
fn route_monitor_irq() {
    let (id, cpu) = (MONITOR_IRQ.load(Ordering::Acquire), MONITOR_IRQ_CPU.load(Ordering::Acquire));
    if id == 0 || cpu >= 8 || !gic::adopted() {
        return;
    }
    gic::set_target(id, 1 << cpu);
    gic::bits(Bank::SetEnable, id & !31, 1 << (id % 32));
    defmt::info!("vgic: physical interrupt {=u32} is the monitor's, routed to CPU {=u32}", id, cpu);
}

/// The guests are built: the monitor's own interrupts go to CPU `cpu` (one that runs a vCPU).
pub fn guests_built(cpu: u32) {
    MONITOR_IRQ_CPU.store(cpu, Ordering::Release);
    route_monitor_irq();
}

/// Programs this CPU's GIC parts for a vCPU with the virtual GIC: empty list registers.
pub fn reset_cpu() {
    gic::init_cpu();
    VIRT_LRS[this_cpu() as usize % MAX_CPUS].store(0, Ordering::Relaxed);
    TIMER_PRIORITY[this_cpu() as usize % MAX_CPUS].store(0, Ordering::Relaxed);
}

/// This physical CPU's number (Aff0 of MPIDR), which is also its GIC CPU interface number on the machines carve runs on.
#[inline(always)]
fn this_cpu() -> u32 {
    crate::arch::mpidr() & 0xff
}

/// Raises (true) or lowers (false) virtual SPI `intid` of `vm` (level-sensitive). Kicks the
/// target vCPU. Call with the guests' lock held. No virtual GIC (a lone guest): nothing.
pub fn set_spi_level(vm: &mut Vm, intid: u32, level: bool) {
    let Some(g) = vm.vgic.as_mut() else { return };
    let kick = g.dist.set_level(intid, level);
    deliver(vm, kick);
}

/// Declares `intid` a virtual SPI of `vm` (before it runs). False if it cannot be.
#[allow(dead_code)] // the emulated UART calls it (issue 10's console part)
pub fn add_virtual_spi(vm: &mut Vm, intid: u32) -> bool {
    vm.vgic.as_mut().is_some_and(|g| g.dist.claim_spi(intid, false))
}

/// Makes the vCPUs in `kick` (bit v = vCPU v) look at their pending interrupts:
/// this CPU's at once, the others' with the kick SGI.
fn deliver(vm: &mut Vm, kick: u8) {
    if kick == 0 {
        return;
    }
    let cpu = this_cpu();
    let mut others = 0u8;
    for v in 0..vm.cpu_ids.len().min(8) {
        if kick & (1 << v) == 0 {
            continue;
        }
        let pcpu = vm.cpu_ids[v];
        if pcpu == cpu {
            flush(vm, v, cpu);
        } else if pcpu < 8 {
            others |= 1 << pcpu;
        }
    }
    if others != 0 {
        gic::send_sgi(others, gic::KICK_SGI);
    }
}

/// Retires the virtual entries of this CPU's list registers the guest has deactivated.
fn sync(vm: &mut Vm, vcpu: usize, cpu: u32) {
    let Some(g) = vm.vgic.as_mut() else { return };
    let slot = &VIRT_LRS[cpu as usize % MAX_CPUS];
    let held = slot.load(Ordering::Relaxed);
    let done = held & gic::finished_lrs();
    if done == 0 {
        return;
    }
    let mut m = done;
    while m != 0 {
        let n = m.trailing_zeros();
        m &= m - 1;
        let v = gic::read_lr(n);
        g.dist.retire(vcpu, v & 0x3ff);
        gic::write_lr(n, 0);
    }
    slot.store(held & !done, Ordering::Relaxed);
}

/// Moves what waits for `vcpu` (on this CPU) into free list registers, one kept for the timer.
fn flush(vm: &mut Vm, vcpu: usize, cpu: u32) {
    sync(vm, vcpu, cpu);
    let Some(g) = vm.vgic.as_mut() else { return };
    let slot = &VIRT_LRS[cpu as usize % MAX_CPUS];
    let mut held = slot.load(Ordering::Relaxed);
    let mut free = gic::empty_lrs() & !held;
    // Two kept for hardware interrupts: the timer and a device's line.
    while free.count_ones() > 2 {
        let Some(p) = g.dist.next(vcpu) else { break };
        let n = free.trailing_zeros();
        free &= free - 1;
        gic::write_lr(n, lr::pending(p.intid, p.priority, false, u32::from(p.source), true));
        held |= 1 << n;
    }
    slot.store(held, Ordering::Relaxed);
}

/// A physical IRQ taken while a guest ran on this CPU.
pub fn irq(_frame: &mut TrapFrame) {
    let iar = gic::ack();
    let id = iar & 0x3ff;
    let cpu = this_cpu();
    if id == VTIMER_PPI {
        // Fast path: its physical enable mirrors the guest's, so it is wanted. Priority drop
        // now; the guest's EOI of the virtual interrupt deactivates the physical one.
        gic::eoi(iar);
        let free = gic::empty_lrs() & !VIRT_LRS[cpu as usize % MAX_CPUS].load(Ordering::Relaxed);
        if free != 0 {
            let priority = TIMER_PRIORITY[cpu as usize % MAX_CPUS].load(Ordering::Relaxed);
            gic::write_lr(free.trailing_zeros(), lr::pending(VTIMER_PPI, priority, true, VTIMER_PPI, false));
            TIMER_INJECTED[cpu as usize % MAX_CPUS].fetch_add(1, Ordering::Relaxed);
        } else {
            // Cannot happen while one list register is kept for it; never livelock if it does.
            gic::bits(Bank::ClearEnable, 0, 1 << VTIMER_PPI);
            gic::deactivate(iar);
        }
        return;
    }
    if id >= gic::SPURIOUS {
        return;
    }
    gic::eoi(iar);
    if id == timer::PPI {
        // The monitor's own deadline: off (its line drops), then its work.
        timer::disarm();
        gic::deactivate(iar);
        super::console::hold_over();
        return;
    }
    if id >= 32 && id != MONITOR_IRQ.load(Ordering::Relaxed) && inject_hw_spi(cpu, iar) {
        return;
    }
    if id == MONITOR_IRQ.load(Ordering::Relaxed) {
        let handler = *MONITOR_IRQ_HANDLER.lock();
        if let Some(f) = handler {
            f();
        }
        gic::deactivate(iar);
        return;
    }
    gic::deactivate(iar);
    if id != gic::KICK_SGI && id != gic::MAINTENANCE_PPI {
        defmt::warn!("vgic: CPU {=u32}: physical interrupt {=u32} that no guest owns; ignored", cpu, id);
    }
    let mut vms = VMS.lock();
    if let Some((vm, vcpu)) = vms.iter_mut().find_map(|v| v.vcpu_on(cpu).map(|i| (v, i))) {
        flush(vm, vcpu, cpu);
    }
}

/// A physical SPI of a device given to the guest on this CPU: into a free list
/// register as a hardware interrupt (the guest's EOI deactivates it). False if
/// it is no guest's here (the caller deactivates it).
fn inject_hw_spi(cpu: u32, iar: u32) -> bool {
    let id = iar & 0x3ff;
    let vms = VMS.lock();
    let Some((vm, vcpu)) = vms.iter().find_map(|v| v.vcpu_on(cpu).map(|i| (v, i))) else { return false };
    let Some(g) = vm.vgic.as_ref().filter(|g| g.dist.kind(id) == Kind::Hw) else { return false };
    let free = gic::empty_lrs() & !VIRT_LRS[cpu as usize % MAX_CPUS].load(Ordering::Relaxed);
    if free == 0 {
        // Never livelock on a line no list register can take: off until the guest enables it again.
        gic::bits(Bank::ClearEnable, id & !31, 1 << (id % 32));
        gic::deactivate(iar);
        defmt::warn!("vgic: {=str}: no free list register for its interrupt {=u32}: disabled", vm.name(), id);
        return true;
    }
    gic::write_lr(free.trailing_zeros(), lr::pending(id, g.dist.priority(vcpu, id), true, id, false));
    true
}

/// Routes the physical SPIs of devices given to `vm` to the CPU of its vCPU 0.
pub fn route_hw_spis(vm: &Vm) {
    let (Some(g), Some(&cpu)) = (vm.vgic.as_ref(), vm.cpu_ids.first()) else { return };
    for id in 32..g.dist.lines() {
        if g.dist.kind(id) == Kind::Hw && cpu < 8 {
            gic::set_target(id, 1 << cpu);
            defmt::info!(
                "vgic: {=str}: physical interrupt {=u32} is its own, routed to CPU {=u32}",
                vm.name(),
                id,
                cpu
            );
        }
    }
}

/// Serves a guest's access to its GICD page at `ipa`, if it is one: `Some(true)`
/// done (the caller steps over the instruction), `Some(false)` refused (the
/// caller injects a data abort), `None` not the GICD page.
#[inline(always)]
pub fn emulate(vm: &mut Vm, cpu: u32, frame: &mut TrapFrame, a: &Abort, ipa: u64) -> Option<bool> {
    // The check every emulated access pays, inline; the emulation out of line.
    let gicd = vm.vgic.as_ref()?.gicd;
    if !(gicd..gicd + GICD_SIZE).contains(&ipa) {
        return None;
    }
    emulate_gicd(vm, cpu, frame, a, ipa)
}

/// [`emulate`] for an access to the GICD page.
#[inline(never)]
fn emulate_gicd(vm: &mut Vm, cpu: u32, frame: &mut TrapFrame, a: &Abort, ipa: u64) -> Option<bool> {
    let vcpu = vm.vcpu_on(cpu).unwrap_or(0);
    let g = vm.vgic.as_mut()?;
    // No valid syndrome (LDRD/STRD, writeback, LDM/STM): not emulated, the guest gets an abort.
    g.accesses += 1;
    // The PC as the register is not emulated either.
    let Some(access) = a.access().filter(|x| x.reg <= 14) else {
        g.refused += 1;
        return Some(false);
    };
    let offset = (ipa - g.gicd) as u32;
    let size = access.size.bytes();
    let reg = access.reg;
    if a.write() {
        let Some(value) = banked::read(frame, reg) else {
            g.refused += 1;
            return Some(false);
        };
        let Ok(out) = g.dist.write(vcpu, offset, size, value) else {
            g.refused += 1;
            return Some(false);
        };
        if (IPRIORITYR_TIMER_WORD..IPRIORITYR_TIMER_WORD + 4).contains(&offset) {
            note_timer_priority(&g.dist, vcpu, cpu);
        }
        apply(vm, out.hw);
        deliver(vm, out.kick);
    } else {
        let Ok(v) = g.dist.read(vcpu, offset, size) else {
            g.refused += 1;
            return Some(false);
        };
        let v = match (access.size, access.sign_extend) {
            (AccessSize::Byte, true) => v as u8 as i8 as u32,
            _ => v,
        };
        if !banked::write(frame, reg, v) {
            g.refused += 1;
            return Some(false);
        }
    }
    Some(true)
}

/// Keeps the timer's priority where the lock-free fast path reads it (banked: this vCPU's).
/// Out of line: [`emulate`] is on the path of every emulated access.
#[inline(never)]
#[cold]
fn note_timer_priority(dist: &Distributor, vcpu: usize, cpu: u32) {
    TIMER_PRIORITY[cpu as usize % MAX_CPUS].store(dist.priority(vcpu, VTIMER_PPI), Ordering::Relaxed);
}

/// Does a guest's write's physical side: PPIs on this CPU (the writing vCPU's), SPIs on the distributor.
fn apply(vm: &Vm, op: HwOp) {
    match op {
        HwOp::None => {}
        HwOp::Bits { bank, first, mask } => gic::bits(bank, first, mask),
        HwOp::Target { first, vcpus, mask } => {
            for (k, &want) in vcpus.iter().enumerate().filter(|(k, _)| mask & (1 << k) != 0) {
                let cpus = (0..vm.cpu_ids.len().min(8))
                    .filter(|&v| want & (1 << v) != 0)
                    .fold(0u8, |m, v| m | (1u8 << (vm.cpu_ids[v] & 7)));
                gic::set_target(first + k as u32, cpus);
            }
        }
        HwOp::Config { first, edge, mask } => {
            for k in (0..16).filter(|k| mask & (1 << k) != 0) {
                gic::set_edge(first + k, edge & (1 << k) != 0);
            }
        }
    }
}

/// The physical SPIs of devices given to `vm` (its restart, its end): disabled,
/// not pending, not active, so none reaches a guest that has not enabled it again.
pub fn release_hw_spis(vm: &Vm) {
    let Some(g) = vm.vgic.as_ref() else { return };
    for id in (32..g.dist.lines()).filter(|&id| g.dist.kind(id) == Kind::Hw) {
        for bank in [Bank::ClearEnable, Bank::ClearPending, Bank::ClearActive] {
            gic::bits(bank, id & !31, 1 << (id % 32));
        }
    }
}

/// A guest ended: its devices' interrupts are switched off, and the monitor's
/// own interrupt moves to a CPU of a guest still running.
pub fn guest_ended(vms: &[Vm], index: usize) {
    if vms[index].vgic.is_none() {
        return;
    }
    release_hw_spis(&vms[index]);
    log_end(&vms[index]);
    let routed = MONITOR_IRQ_CPU.load(Ordering::Acquire);
    if vms[index].cpu_ids.contains(&routed) {
        if let Some(&cpu) = vms.iter().filter(|v| v.done.is_none()).flat_map(|v| v.cpu_ids.iter()).min() {
            guests_built(cpu);
        }
    }
}

/// This CPU runs no vCPU any more: its CPU interface stops signalling, so a
/// parked CPU's WFI is not woken for good by a line left asserted (its timer's).
pub fn quiesce_cpu() {
    if gic::adopted() {
        gic::cpu_interface_off();
    }
}

/// Logs what a guest's virtual GIC did, when it ends.
fn log_end(vm: &Vm) {
    let Some(g) = vm.vgic.as_ref() else { return };
    let timer: u64 = vm.cpu_ids.iter().map(|&c| TIMER_INJECTED[c as usize % MAX_CPUS].load(Ordering::Relaxed)).sum();
    defmt::info!(
        "vgic: {=str}: {=u64} GICD accesses emulated, {=u64} refused with an abort, {=u64} writes to interrupts or CPUs not its own ignored; {=u64} virtual-timer interrupts injected",
        vm.name(),
        g.accesses,
        g.refused,
        g.dist.ignored_writes(),
        timer
    );
}
