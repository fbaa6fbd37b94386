//! Guests: stage-2 from the plan, boot images loaded, vCPUs entered, traps served.
//!
//! A guest's RAM is the plan's extents at its dense IPA range, mapped on
//! first touch ([`carve_core::vm::touch`]): stage-2 starts with none of it,
//! and the guest's first access to a 2 MiB window (or a movable page) is a
//! translation fault on which the monitor zeroes the window and maps it with
//! the largest blocks that fit ([`fault_in`]). So no byte that was in that
//! memory before the guest (a loader's, an earlier boot's, the monitor's) is
//! readable by it, and a restart only forgets what was mapped. The windows
//! the monitor writes the boot images into are touched by the monitor
//! itself: zeroed where the images leave gaps, then loaded and mapped. When one guest runs, it is given the console UART, the
//! devices the UART depends on (its clock, reset and pin controllers, as its
//! DTB lists them: `dt::write::passed_through`), and the GIC distributor and
//! CPU interface, at their physical addresses (it owns the interrupt
//! controller: HCR.IMO/FMO stay clear). A lone guest whose node says
//! `carve,devices = "all"` is given the board: every device but the
//! monitor's log UART and the GIC's hypervisor parts, and its DTB's buses
//! carry `dma-ranges` so its devices' DMA reaches its remapped RAM. When
//! several run, each is given only the devices its `carve,devices` names
//! by path (and those they depend on: `dt::write::given_devices`), never
//! one another guest has, their SPIs hardware interrupts of its virtual GIC.
//! Every other access is a stage-2 fault.
//!
//! The movable part of a guest's RAM (a CMA pool's free pages, lent at build
//! time) is mapped page by page, so a contiguous allocation can move one page
//! at a time while the guest runs ([`cma`]); [`Vm::movable`] keeps the
//! frame behind each of its pages.
//!
//! Each vCPU runs on its own physical CPU: vCPU `v` of a guest on CPU
//! `cpu_ids[v]` (the plan's, from `carve,cpu-ids` or the lowest free CPUs). The boot CPU (CPU 0) builds every guest, starts the first
//! vCPU of each guest that lives on another CPU (`arch::smp`: the firmware's
//! PSCI CPU_ON, or a boot monitor's SYS_FLAGS), and then runs its own.

mod cma;
pub mod console;
mod inject;
#[cfg(feature = "selftest")]
pub mod selftest;
mod trap;
pub mod vgic;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use carve_core::addr::{Address, Ipa, IpaRange, PhysAddr, PhysRange, Size, PAGE_SIZE};
use carve_core::dt::machine::{FaultPolicy, Machine};
use carve_core::dt::tree::Tree;
use carve_core::dt::write::{
    check_given, dma_buses, gets_the_board, given_devices, guest_dtb, guest_mpidrs, passed_through, GuestDtbOptions,
};
use carve_core::mm::{Attrs, MapStats, PageTable, Stage2, VTCR_VALUE};
use carve_core::plan::{GuestPlan, Plan};
use carve_core::vm::boot::{self, BootLayout};
use carve_core::vm::psci::Power;
use carve_core::vm::touch::{gaps, FirstTouch, Piece, Unit};
use spin::Mutex;

use crate::arch::guest::{self, VcpuRegs, SPSR_SVC_MASKED};
use crate::arch::mmu;
use crate::arch::semihost::{self, ExitCode};
use crate::arch::vectors::{self, TrapFrame};

/// One guest: what the plan decided and what the monitor built for it.
pub struct Vm {
    pub plan: GuestPlan,
    pub vmid: u8,
    pub stage2: PageTable<Stage2>,
    /// The guest's DTB, kept for restarts.
    pub dtb: Vec<u8>,
    /// Where each boot module is before it is copied in (the loader's copy stays for restarts).
    pub kernel: PhysRange,
    pub ramdisk: Option<PhysRange>,
    /// MPIDR of each vCPU as the guest's device tree lists them.
    pub vcpu_mpidr: Vec<u64>,
    /// MPIDR of the physical CPU each vCPU runs on.
    pub pcpu_mpidr: Vec<u64>,
    /// The physical CPU number of each vCPU.
    pub cpu_ids: Vec<u32>,
    pub power: Vec<Power>,
    /// The first registers of a vCPU being started (by the boot or by CPU_ON).
    pub pending: Vec<Option<TrapFrame>>,
    pub boot: BootLayout,
    pub on_fault: FaultPolicy,
    /// Traps taken, all vCPUs, since the last (re)start.
    pub traps: u64,
    pub restarts: u32,
    /// Reads of the emulated test device.
    #[cfg(feature = "selftest")]
    pub testdev_reads: u32,
    /// Stopped for good (powered off, or stopped after a fault).
    pub done: Option<Ending>,
    /// The frame behind page `i` of the plan's movable part (IPA `movable.ipa + i * 4 KiB`).
    pub movable: Vec<u32>,
    /// The device windows mapped 1:1 in its stage-2 (node, physical range), kept for restarts.
    pub devices: Vec<(String, PhysRange)>,
    /// Stage-2 faults on a page being moved, retried once the move was done.
    pub migration_waits: u64,
    /// The virtual GIC, when guests share the machine (`None`: the physical GIC is passed through).
    pub vgic: Option<vgic::VmGic>,
    /// The hardware GICV page mapped at the guest's GICC address (IPA, PA, size), kept for restarts.
    pub gicv: Option<(u64, u64, u64)>,
    /// Which of its RAM is mapped yet (zeroed on first touch), since the last (re)start.
    pub touch: FirstTouch,
    /// First-touch faults the guest took (the monitor's own touches for its images not counted).
    pub touch_faults: u64,
    /// vCPUs asked to stop for a restart: each stops at its next trap (or start).
    pub stopping: Vec<bool>,
    /// Whether any of `stopping` is set (one load on the trap path).
    pub stopping_any: bool,
    /// A restart is under way: vCPU 0's CPU, stopped, waits in the monitor for the fresh boot.
    pub restarting: bool,
    /// vCPU 0 ran (or was starting) when the restart began: its CPU waits for the fresh boot.
    pub boot_cpu_waits: bool,
}

/// How a guest ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug, defmt::Format)]
pub enum Ending {
    PoweredOff,
    Faulted,
}

/// Every guest the monitor runs.
pub static VMS: Mutex<Vec<Vm>> = Mutex::new(Vec::new());

/// The plan and machine, for `DUMP_MAP`.
pub static PLAN: Mutex<Option<(Machine, Plan)>> = Mutex::new(None);

/// Why a guest could not be built; a sentence for the log.
pub type VmError = String;

impl Vm {
    pub fn ram(&self) -> IpaRange {
        self.plan.ipa_range()
    }

    pub fn name(&self) -> &str {
        &self.plan.name
    }

    /// The vCPU of this guest running on physical CPU `cpu`.
    pub fn vcpu_on(&self, cpu: u32) -> Option<usize> {
        self.cpu_ids.iter().position(|&c| c == cpu)
    }

    /// The value VTTBR holds for this guest: root and VMID (B4.1.160).
    pub fn vttbr(&self) -> u64 {
        self.stage2.root().as_u64() | (u64::from(self.vmid) << 48)
    }

    pub fn vcpu_regs(&self, vcpu: usize) -> VcpuRegs {
        VcpuRegs {
            vttbr: self.vttbr(),
            vtcr: VTCR_VALUE,
            // MPIDR bit 31 is RES1 (multiprocessing extensions); affinity from the guest's DT.
            vmpidr: 0x8000_0000 | (self.vcpu_mpidr.get(vcpu).copied().unwrap_or(0) as u32 & 0x00ff_ffff),
            virtual_irqs: self.vgic.is_some(),
        }
    }

    /// The registers vCPU 0 starts a fresh boot with (Linux's ARM boot protocol:
    /// r0 = 0, r1 = ~0 for a DT boot, r2 = the DTB; SVC mode, interrupts masked).
    pub fn boot_frame(&self) -> TrapFrame {
        let mut f = TrapFrame { r: [0; 13], lr_usr: 0, elr: self.boot.kernel.start() as u32, spsr: SPSR_SVC_MASKED };
        f.r[1] = !0;
        f.r[2] = self.boot.dtb.start() as u32;
        f
    }

    /// Where guest RAM at `ipa` is, and how many bytes from there are
    /// physically contiguous: to the end of its extent, or of its page in the
    /// movable part.
    pub fn ram_piece(&self, ipa: u64) -> Option<(u64, u64)> {
        if let Some(e) = self.plan.extents.iter().find(|e| e.ipa_range().contains(ipa)) {
            return Some((e.pa.as_u64() + (ipa - e.ipa.as_u64()), e.ipa.as_u64() + e.size - ipa));
        }
        let m = self.plan.movable.as_ref().filter(|m| m.ipa_range().contains(ipa))?;
        let off = ipa - m.ipa.as_u64();
        let frame = *self.movable.get((off / PAGE_SIZE) as usize)?;
        Some((u64::from(frame) * PAGE_SIZE + off % PAGE_SIZE, PAGE_SIZE - off % PAGE_SIZE))
    }

    /// The physical address of guest RAM at `ipa`, for `len` bytes that are physically contiguous.
    pub fn ram_pa(&self, ipa: u64, len: u64) -> Option<u64> {
        let (pa, n) = self.ram_piece(ipa)?;
        (len <= n).then_some(pa)
    }

    /// Index of the movable page at `ipa`, if it is one.
    pub fn movable_index(&self, ipa: Ipa) -> Option<usize> {
        let m = self.plan.movable.as_ref().filter(|m| m.ipa_range().contains(ipa.as_u64()))?;
        Some(((ipa.as_u64() - m.ipa.as_u64()) / PAGE_SIZE) as usize)
    }
}

/// Calls `f(pa, offset, len)` for each physically contiguous piece of guest IPAs `[ipa, ipa + len)`.
pub fn for_each_piece(
    vm: &Vm,
    ipa: u64,
    len: u64,
    mut f: impl FnMut(u64, u64, u64) -> Result<(), VmError>,
) -> Result<(), VmError> {
    let mut done = 0;
    while done < len {
        let at = ipa + done;
        let (pa, n) = vm.ram_piece(at).ok_or_else(|| format!("{}: IPA {at:#x} is not guest RAM", vm.name()))?;
        let n = n.min(len - done);
        f(pa, done, n)?;
        done += n;
    }
    Ok(())
}

/// Builds guest `index` of the plan: stage-2, images and DTB in its RAM.
/// `devices` says whether it is given the console, what it depends on, and the
/// GIC; `virtual_gic` whether it gets the virtual GIC instead.
pub fn build(
    tree: &Tree<'_>,
    machine: &Machine,
    g: &GuestPlan,
    index: usize,
    devices: bool,
    virtual_gic: bool,
) -> Result<Vm, VmError> {
    let desc = g.desc.as_ref().ok_or_else(|| format!("{}: not described by the device tree", g.name))?;
    let kernel = desc.kernel.as_ref().ok_or_else(|| format!("{}: no kernel module", g.name))?;
    let ramdisk = desc.ramdisk.as_ref();
    // Several guests: the console is the monitor's, each guest gets an emulated one ([`console`]).
    let emulated_console = !devices && machine.uart.is_some();

    // The movable part's pages, lent by their CMA pool; then stage-2: RAM, then the devices the guest is given.
    let vmid = (index + 1) as u8;
    let movable = cma::lend(g, vmid)?;
    let uart_given = devices && machine.uart.is_some();
    let devices =
        if devices { passthrough(tree, machine, g, !virtual_gic)? } else { shared_devices(tree, machine, g)? };
    let gicv = if virtual_gic { vgic::gicv_window(machine).map_err(|e| format!("{}: {e}", g.name))? } else { None };
    let stage2 = build_stage2(g, &devices, gicv)?;
    let layout = boot::layout(&g.name, g.ipa_range(), kernel.range.size, ramdisk.map(|r| r.range.size))
        .map_err(|e| format!("{e}"))?;
    let opts = GuestDtbOptions {
        initrd: layout.initrd,
        bootargs: desc.bootargs.as_deref(),
        owned_carveouts: &[],
        emulated_console,
    };
    let dtb = guest_dtb(tree, machine, g, &opts).map_err(|e| format!("{}: guest DTB: {e}", g.name))?;
    if dtb.len() as u64 > boot::DTB_MAX {
        return Err(format!(
            "{}: guest DTB is {} bytes, more than the {} reserved",
            g.name,
            dtb.len(),
            Size(boot::DTB_MAX)
        ));
    }

    let cpus = g.cpus as usize;
    let pcpu_mpidr: Vec<u64> =
        g.cpu_ids.iter().map(|&c| machine.cpus.get(c as usize).copied().unwrap_or(u64::from(c))).collect();
    let mut vm = Vm {
        plan: g.clone(),
        vmid,
        stage2,
        dtb,
        kernel: kernel.range,
        ramdisk: ramdisk.map(|r| r.range),
        vcpu_mpidr: guest_mpidrs(machine, g).to_vec(),
        pcpu_mpidr,
        cpu_ids: g.cpu_ids.clone(),
        power: alloc::vec![Power::Off; cpus],
        pending: alloc::vec![None; cpus],
        boot: layout,
        on_fault: desc.on_fault,
        traps: 0,
        restarts: 0,
        #[cfg(feature = "selftest")]
        testdev_reads: 0,
        done: None,
        movable,
        migration_waits: 0,
        devices,
        vgic: if virtual_gic { vgic::VmGic::new(machine, cpus, uart_given, &given_spis(machine, g)) } else { None },
        gicv,
        touch: FirstTouch::new(g),
        touch_faults: 0,
        stopping: alloc::vec![false; cpus],
        stopping_any: false,
        restarting: false,
        boot_cpu_waits: false,
    };
    load_images(&mut vm)?;
    vm.power[0] = Power::OnPending;
    vm.pending[0] = Some(vm.boot_frame());
    log_memory(&vm);
    Ok(vm)
}

/// A guest's stage-2 as it starts: its device windows (and the GICV page at
/// its GICC address, with the virtual GIC), none of its RAM (mapped on first touch).
fn build_stage2(
    g: &GuestPlan,
    devices: &[(String, PhysRange)],
    gicv: Option<(u64, u64, u64)>,
) -> Result<PageTable<Stage2>, VmError> {
    let mut stats = MapStats::default();
    let stage2 = mmu::with_pool(|pool| -> Result<PageTable<Stage2>, VmError> {
        let mut s2 = PageTable::<Stage2>::new(pool).map_err(|e| format!("{}: stage-2 root: {e}", g.name))?;
        for (what, base, size) in device_pages(devices) {
            let ipa = Ipa::from_u64(base).ok_or_else(|| format!("{what} at {base:#x} is past the IPA space"))?;
            let pa = PhysAddr::from_u64(base).ok_or_else(|| format!("{what} at {base:#x} is past the PA space"))?;
            stats +=
                s2.map(pool, ipa, pa, size, Attrs::device()).map_err(|err| format!("{}: {what}: {err}", g.name))?;
            defmt::info!(
                "vm: {=str}: {=str} passed through at {=u64:#010x} ({=u64} KiB)",
                g.name.as_str(),
                what.as_str(),
                base,
                size / 1024
            );
        }
        if let Some((ipa, pa, size)) = gicv {
            let (Some(at), Some(to)) = (Ipa::from_u64(ipa), PhysAddr::from_u64(pa)) else {
                return Err(format!("{}: GICV at {pa:#x} or GICC at {ipa:#x} is out of range", g.name));
            };
            stats += s2.map(pool, at, to, size, Attrs::device()).map_err(|err| format!("{}: GICV: {err}", g.name))?;
            defmt::info!(
                "vm: {=str}: virtual GIC: the hardware GICV {=u64:#010x} ({=u64} KiB) at its GICC {=u64:#010x}; its GICD is emulated",
                g.name.as_str(),
                pa,
                size / 1024,
                ipa
            );
        }
        Ok(s2)
    })
    .ok_or_else(|| String::from("no table pool: the Hyp map is not up"))??;
    defmt::info!(
        "vm: {=str}: stage-2 root {=u64:#010x}, devices in {=u32} 1 GiB + {=u32} 2 MiB blocks + {=u32} 4 KiB pages, {=u32} table pages; RAM mapped on first touch",
        g.name.as_str(),
        stage2.root().as_u64(),
        stats.blocks_1g,
        stats.blocks_2m,
        stats.pages_4k,
        stats.tables_allocated
    );
    Ok(stage2)
}

/// Instructions for `ticks` of the counter under `-icount shift=0` (one instruction per ns).
fn instructions(ticks: u64) -> u64 {
    ticks * 1_000_000_000 / u64::from(crate::arch::counter_hz().max(1))
}

/// Copies kernel, initrd and DTB into the guest's RAM, into units first
/// touched here (zeroed where the images leave gaps, then mapped); logs what it cost.
fn load_images(vm: &mut Vm) -> Result<(), VmError> {
    let t_touch = crate::arch::counter();
    let mut images: Vec<IpaRange> = Vec::new();
    images.extend(IpaRange::from_raw(vm.boot.kernel.start(), vm.kernel.size));
    if let (Some(r), Some(at)) = (vm.ramdisk, vm.boot.initrd) {
        images.extend(IpaRange::from_raw(at.start(), r.size));
    }
    images.extend(IpaRange::from_raw(vm.boot.dtb.start(), vm.dtb.len() as u64));
    for r in images.clone() {
        touch_range(vm, r.start(), r.size, &images)?;
    }
    let t0 = crate::arch::counter();
    let touch_ticks = t0 - t_touch;
    let vm = &*vm;
    let g = &vm.plan;
    load(vm, "kernel", vm.kernel, vm.boot.kernel)?;
    if let (Some(r), Some(at)) = (vm.ramdisk, vm.boot.initrd) {
        load(vm, "initrd", r, at)?;
    }
    for_each_piece(vm, vm.boot.dtb.start(), vm.dtb.len() as u64, |pa, off, n| {
        crate::window::write_phys(pa, &vm.dtb[off as usize..(off + n) as usize])
            .map_err(|e| format!("writing the guest DTB: {e}"))
    })?;
    let ticks = crate::arch::counter() - t0;
    defmt::info!(
        "vm: {=str}: DTB {=usize} bytes at IPA {=u64:#010x}",
        g.name.as_str(),
        vm.dtb.len(),
        vm.boot.dtb.start()
    );
    let bytes = vm.kernel.size + vm.ramdisk.map_or(0, |r| r.size) + vm.dtb.len() as u64;
    let pa = vm.ram_piece(g.ipa_range().start()).map_or(0, |(pa, _)| pa);
    defmt::info!(
        "vm: {=str}: images copied: {=u64} bytes in {=u64} counter ticks, {=u64} instructions a KiB under -icount shift=0, into guest RAM at PA {=u64:#x}; {=u64} units touched for them, {=u64} KiB zeroed around them in {=u64} counter ticks",
        g.name.as_str(),
        bytes,
        ticks,
        instructions(ticks) * 1024 / bytes.max(1),
        pa,
        vm.touch.touches,
        vm.touch.zeroed / 1024,
        touch_ticks
    );
    Ok(())
}

/// The pieces of unit `u`: a window's parts in the extents, or a movable page and its frame.
fn unit_pieces(vm: &Vm, u: Unit) -> Vec<Piece> {
    match u {
        Unit::Window(n) => vm.touch.window_pieces(&vm.plan, n),
        Unit::Movable(n) => {
            let span = vm.touch.span(u);
            vm.movable
                .get(n)
                .map(|&f| Piece { ipa: span.base, pa: PhysAddr::new(u64::from(f) * PAGE_SIZE), size: PAGE_SIZE })
                .into_iter()
                .collect()
        }
    }
}

/// The first touch of unit `u`: its memory zeroed (but where `keep`, which
/// the caller is about to write), then mapped with the largest blocks that fit.
fn first_touch(vm: &mut Vm, u: Unit, keep: &[IpaRange]) -> Result<(), VmError> {
    let mut zeroed = 0;
    let pieces = unit_pieces(vm, u);
    for p in &pieces {
        #[cfg(feature = "selftest")]
        if selftest::SKIP_ZERO.load(core::sync::atomic::Ordering::Relaxed) {
            break;
        }
        for gap in gaps(p.ipa_range(), keep) {
            let pa = p.pa.as_u64() + (gap.start() - p.ipa.as_u64());
            crate::window::zero_phys(pa, gap.size)
                .map_err(|e| format!("{}: zeroing guest RAM at PA {pa:#x}: {e}", vm.name()))?;
            zeroed += gap.size;
        }
    }
    let stage2 = &mut vm.stage2;
    mmu::with_pool(|pool| -> Result<(), VmError> {
        for p in &pieces {
            stage2
                .map(pool, p.ipa, p.pa, p.size, Attrs::ram())
                .map_err(|e| format!("mapping guest RAM at IPA {:#x}: {e}", p.ipa.as_u64()))?;
        }
        Ok(())
    })
    .ok_or_else(|| String::from("no table pool: the Hyp map is not up"))??;
    vm.touch.set_touched(u, zeroed);
    Ok(())
}

/// Touches, as the monitor, every unit of guest RAM `[ipa, ipa + len)` not touched yet.
pub fn touch_range(vm: &mut Vm, ipa: u64, len: u64, keep: &[IpaRange]) -> Result<(), VmError> {
    for u in vm.touch.units_of(&vm.plan, ipa, len) {
        if !vm.touch.is_touched(u) {
            first_touch(vm, u, keep)?;
        }
    }
    Ok(())
}

/// A stage-2 translation or permission fault at `ipa` (a `write` or not):
/// whether it was guest RAM the access may now go to. RAM not touched yet is
/// zeroed and mapped here (a first-touch fault); RAM mapped already was
/// mapped meanwhile (another vCPU's first touch, or a movable page moved
/// while this trap waited on the guests' lock).
pub fn fault_in(vm: &mut Vm, ipa: u64, write: bool) -> bool {
    let Some(u) = vm.touch.unit(&vm.plan, ipa) else { return false };
    if !vm.touch.is_touched(u) {
        return match first_touch(vm, u, &[]) {
            Ok(()) => {
                vm.touch_faults += 1;
                true
            }
            Err(e) => {
                defmt::error!("vm: first touch: {=str}", e.as_str());
                false
            }
        };
    }
    let Some(at) = Ipa::from_u64(ipa) else { return false };
    let vttbr = vm.vttbr();
    let stage2 = &vm.stage2;
    let mapped = mmu::with_guest_tables(vttbr, |tm| stage2.translate(tm, at))
        .flatten()
        .is_some_and(|t| !write || t.attrs.access == carve_core::mm::table::Access::ReadWrite);
    if mapped && matches!(u, Unit::Movable(_)) {
        vm.migration_waits += 1;
    }
    mapped
}

/// Logs the pages stage-2 tables hold and the buddy's free pages as a boot of the guest starts (the same every boot).
fn log_memory(vm: &Vm) {
    if let Some((tables, free)) = crate::mm::table_and_free_pages() {
        defmt::info!(
            "vm: {=str}: boot {=u32}: stage-2 table pages {=u64}, buddy free pages {=u64}",
            vm.name(),
            vm.restarts,
            tables,
            free
        );
    }
}

/// Unmaps all of the guest's RAM from its stage-2 (the TLB invalidated by its
/// VMID on every CPU): a vCPU still running faults on its next access.
fn unmap_ram(vm: &mut Vm) -> Result<(), VmError> {
    let pieces: Vec<Piece> = vm.touch.touched_units().into_iter().flat_map(|u| unit_pieces(vm, u)).collect();
    let vttbr = vm.vttbr();
    let stage2 = &mut vm.stage2;
    mmu::with_guest_tables(vttbr, |tm| -> Result<(), VmError> {
        for p in &pieces {
            stage2.unmap(tm, p.ipa, p.size).map_err(|e| format!("unmapping IPA {:#x}: {e}", p.ipa.as_u64()))?;
        }
        Ok(())
    })
    .ok_or_else(|| String::from("no Hyp map"))??;
    vm.touch.forget();
    Ok(())
}

/// The first step of restarting a guest of several vCPUs from vCPU `caller`:
/// its RAM unmapped, and every other vCPU that runs (or is being started)
/// asked to stop: it does at its next trap, which its next access to RAM is
/// (`arch::smp::kick` wakes a CPU that waits). Returns how many were asked.
pub fn stop_others(vm: &mut Vm, caller: usize) -> Result<usize, VmError> {
    let others: Vec<usize> = (0..vm.power.len()).filter(|&v| v != caller && vm.power[v] != Power::Off).collect();
    if others.is_empty() {
        return Ok(0);
    }
    unmap_ram(vm)?;
    vm.restarting = true;
    vm.boot_cpu_waits = caller != 0 && vm.power[0] != Power::Off;
    vm.stopping_any = true;
    for &v in &others {
        vm.stopping[v] = true;
        if vm.power[v] == Power::OnPending {
            vm.pending[v] = None; // not entered yet: it stops when its CPU arrives
        } else if !crate::arch::smp::kick(vm.cpu_ids[v]) {
            defmt::warn!(
                "vm: {=str}: no GIC distributor to wake vCPU {=usize}: it stops at its next trap",
                vm.name(),
                v
            );
        }
    }
    defmt::info!(
        "vm: {=str}: restart from vCPU {=usize}: RAM unmapped, {=usize} other vCPU(s) asked to stop",
        vm.name(),
        caller,
        others.len()
    );
    Ok(others.len())
}

/// Stops vCPU `vcpu` if it was asked to (a restart): true if it was.
pub fn stop_if_asked(vm: &mut Vm, vcpu: usize) -> bool {
    if !vm.stopping.get(vcpu).copied().unwrap_or(false) {
        return false;
    }
    vm.stopping[vcpu] = false;
    vm.stopping_any = vm.stopping.iter().any(|&s| s);
    vm.power[vcpu] = Power::Off;
    vm.pending[vcpu] = None;
    defmt::info!("vm: {=str}: vCPU {=usize} stopped for the restart", vm.name(), vcpu);
    true
}

/// Logs how much of its RAM the guest has touched (at its power-off or restart).
pub fn log_touches(vm: &Vm) {
    let (windows, pages) = vm.touch.touched();
    defmt::info!(
        "vm: {=str}: first touch: {=u64} faults, {=usize} 2 MiB windows + {=usize} movable pages mapped, {=u64} KiB zeroed (of {=u64} MiB)",
        vm.name(),
        vm.touch_faults,
        windows,
        pages,
        vm.touch.zeroed / 1024,
        vm.plan.size >> 20
    );
}

/// The pages that hold `devices`' windows, merged where devices share a page
/// (an Allwinner clock and pin controller do): (names, base, size).
fn device_pages(devices: &[(String, PhysRange)]) -> Vec<(String, u64, u64)> {
    let mut pages: Vec<(String, u64, u64)> = devices
        .iter()
        .map(|(what, r)| {
            let base = r.start() & !(PAGE_SIZE - 1);
            (what.clone(), base, r.end().next_multiple_of(PAGE_SIZE))
        })
        .collect();
    pages.sort_by_key(|p| p.1);
    let mut merged: Vec<(String, u64, u64)> = Vec::new();
    for (what, start, end) in pages {
        match merged.last_mut() {
            Some(last) if start <= last.2 => {
                if !last.0.split(" and ").any(|n| n == what) {
                    last.0 = format!("{} and {what}", last.0);
                }
                last.2 = last.2.max(end);
            }
            _ => merged.push((what, start, end)),
        }
    }
    merged.into_iter().map(|(what, start, end)| (what, start, end - start)).collect()
}

/// The device windows a lone guest is given: the console UART and the
/// devices it depends on, as its DTB lists them, and the GIC distributor and
/// CPU interface (never its hypervisor parts). None may be the monitor's log UART.
fn passthrough(
    tree: &Tree<'_>,
    machine: &Machine,
    g: &GuestPlan,
    with_gic: bool,
) -> Result<Vec<(String, PhysRange)>, VmError> {
    let listed = passed_through(tree, machine, g).map_err(|e| format!("{}: guest DTB: {e}", g.name))?;
    if gets_the_board(machine, g) {
        log_board(tree, machine, g, listed.len())?;
    }
    let mut v = windows(listed);
    if let Some(gic) = machine.gic.as_ref().filter(|_| with_gic) {
        v.push((String::from("GIC distributor"), gic.distributor));
        v.push((String::from("GIC CPU interface"), gic.cpu_interface));
    }
    not_the_log_uart(machine, g, v)
}

/// The device windows a guest that shares the machine is given: the devices
/// its `carve,devices` names and those they depend on ([`given_devices`]);
/// never the console (emulated), the GIC (virtual) or the monitor's log UART.
fn shared_devices(tree: &Tree<'_>, machine: &Machine, g: &GuestPlan) -> Result<Vec<(String, PhysRange)>, VmError> {
    let given = given_devices(tree, machine, g).map_err(|e| format!("{}: guest DTB: {e}", g.name))?;
    not_the_log_uart(machine, g, windows(given))
}

/// Each device's windows, named by its node's last path component; a
/// zero-sized window (a placeholder `reg`) has no page to map.
fn windows(devices: Vec<carve_core::dt::machine::Device>) -> Vec<(String, PhysRange)> {
    let mut v: Vec<(String, PhysRange)> = Vec::new();
    for d in devices {
        let name = d.node.rsplit('/').next().unwrap_or(d.node.as_str());
        for r in d.regs.into_iter().filter(|r| r.size > 0) {
            v.push((String::from(name), r));
        }
    }
    v
}

/// The interrupts of the devices `g`'s `carve,devices` names (GIC SPIs).
fn given_spis(machine: &Machine, g: &GuestPlan) -> Vec<u32> {
    let path = g.desc.as_ref().map(|d| d.path.as_str());
    machine.given.iter().filter(|d| Some(d.guest.as_str()) == path).flat_map(|d| d.spis.iter().copied()).collect()
}

/// `v`, unless a window in it holds the monitor's log UART.
fn not_the_log_uart(
    machine: &Machine,
    g: &GuestPlan,
    v: Vec<(String, PhysRange)>,
) -> Result<Vec<(String, PhysRange)>, VmError> {
    if let Some(log) = &machine.log_uart {
        if let Some((what, _)) = v.iter().find(|(_, r)| log.device.regs.iter().any(|l| l.overlaps(r))) {
            return Err(format!(
                "{}: would be given {what}, which holds the monitor's log UART {}",
                g.name, log.device.node
            ));
        }
    }
    Ok(v)
}

/// Logs that `g` is given the board, and which buses translate its DMA.
fn log_board(tree: &Tree<'_>, machine: &Machine, g: &GuestPlan, devices: usize) -> Result<(), VmError> {
    defmt::info!(
        "vm: {=str}: given the board (carve,devices = \"all\"): {=usize} devices, all but the monitor's log UART, power-off node and the GIC's hypervisor parts; without an IOMMU their DMA reaches all memory",
        g.name.as_str(),
        devices
    );
    let remapped = g.extents.iter().filter(|e| e.ipa.as_u64() != e.pa.as_u64()).count();
    for bus in dma_buses(tree, machine, g).map_err(|e| format!("{}: guest DTB: {e}", g.name))? {
        defmt::info!(
            "vm: {=str}: dma-ranges on {=str}: {=usize} entries, one per extent ({=usize} remapped), bus address = PA, CPU address = IPA",
            g.name.as_str(),
            bus.as_str(),
            g.extents.len(),
            remapped
        );
    }
    Ok(())
}

/// Copies a boot module from where the loader put it into guest RAM.
fn load(vm: &Vm, what: &str, from: PhysRange, to: IpaRange) -> Result<(), VmError> {
    let g = &vm.plan;
    for_each_piece(vm, to.start(), from.size, |pa, off, n| {
        crate::window::copy_phys(pa, from.start() + off, n).map_err(|e| format!("{what}: {e}"))
    })?;
    defmt::info!(
        "vm: {=str}: {=str} {=u64} bytes from PA {=u64:#010x} to IPA {=u64:#010x}",
        g.name.as_str(),
        what,
        from.size,
        from.start(),
        to.start()
    );
    Ok(())
}

/// Boots a guest again from its images, once no vCPU of it runs: fresh
/// stage-2 tables with none of its RAM mapped (each unit zeroed again on its
/// first touch), the same plan, `carve,restarts` in its DTB one more. vCPU 0
/// is left pending with its first registers; the others are off until the
/// guest starts them (PSCI CPU_ON), as on a real machine.
pub fn restart(vm: &mut Vm) -> Result<(), VmError> {
    // Tear the old stage-2 down first, so the new one gets the same pages back.
    let old = core::mem::replace(&mut vm.stage2, build_stage2(&vm.plan, &vm.devices, vm.gicv)?);
    mmu::with_pool(|pool| old.destroy(pool));
    vm.touch.forget();
    vm.touch_faults = 0;
    vm.restarts += 1;
    carve_core::dt::write::set_restarts(&mut vm.dtb, vm.restarts)
        .map_err(|e| format!("{}: guest DTB: {e}", vm.name()))?;
    load_images(vm)?;
    vm.traps = 0;
    #[cfg(feature = "selftest")]
    {
        vm.testdev_reads = 0;
    }
    vgic::release_hw_spis(vm);
    if let Some(g) = vm.vgic.as_mut() {
        g.reset();
    }
    console::restarted(usize::from(vm.vmid) - 1);
    vm.power.iter_mut().for_each(|p| *p = Power::Off);
    vm.pending.iter_mut().for_each(|p| *p = None);
    vm.stopping.iter_mut().for_each(|s| *s = false);
    vm.stopping_any = false;
    vm.restarting = false;
    vm.power[0] = Power::OnPending;
    vm.pending[0] = Some(vm.boot_frame());
    defmt::info!(
        "vm: {=str}: restarted ({=u32} so far): RAM unmapped (zeroed again on first touch), images reloaded",
        vm.name(),
        vm.restarts
    );
    log_memory(vm);
    Ok(())
}

/// Builds every guest of the plan, starts those on other CPUs, runs the one on this CPU.
pub fn start(tree: &Tree<'_>, machine: &Machine, plan: &Plan) -> ! {
    vectors::set_guest_trap_handler(trap::handle);
    let lone = plan.guests.len() == 1;
    let asked = lone && plan.guests[0].desc.as_ref().is_some_and(|d| d.virtual_gic);
    let virtual_gic = (!lone || asked) && vgic::start(machine);
    // A lone guest is given the UART and, unless it asked for the virtual one, the GIC.
    let devices = lone;
    if lone && !asked {
        defmt::info!("vm: one guest: the physical GIC is passed through (no monitor in its interrupt path)");
    } else if lone && virtual_gic {
        defmt::info!(
            "vm: one guest with carve,virtual-gic: it gets the virtual GIC, and the console UART with its line"
        );
    } else if !virtual_gic {
        defmt::info!("vm: {=usize} guests: none is given the UART or the GIC (they share nothing but the console the monitor emulates)", plan.guests.len());
    }
    if console::shared(machine, plan.guests.len()) {
        let names: Vec<&str> = plan.guests.iter().map(|g| g.name.as_str()).collect();
        console::init(machine, &names);
    }
    if let Err(e) = check_given(tree, machine, &plan.guests) {
        defmt::error!("vm: {=str}", alloc::format!("{e}").as_str());
        semihost::exit(ExitCode::BadPlan)
    }
    let mut vms = Vec::new();
    for (i, g) in plan.guests.iter().enumerate() {
        match build(tree, machine, g, i, devices, virtual_gic) {
            Ok(vm) => vms.push(vm),
            Err(e) => {
                defmt::error!("vm: {=str}", e.as_str());
                semihost::exit(ExitCode::BadPlan)
            }
        }
    }
    let others: Vec<(u32, u32, String)> = vms
        .iter()
        .filter(|v| !v.cpu_ids.contains(&0))
        .map(|v| (v.cpu_ids[0], v.pcpu_mpidr[0] as u32, v.plan.name.clone()))
        .collect();
    let spare = (0..machine.cpus.len() as u32).find(|c| !vms.iter().any(|v| v.cpu_ids.contains(c)));
    if virtual_gic {
        for v in &vms {
            vgic::route_hw_spis(v);
        }
        if let Some(&cpu) = vms.iter().flat_map(|v| v.cpu_ids.iter()).min() {
            vgic::guests_built(cpu);
        }
    }
    *VMS.lock() = vms;
    for (cpu, mpidr, name) in others {
        let r = crate::arch::smp::cpu_on(cpu, mpidr);
        if r != 0 {
            defmt::error!("vm: {=str}: CPU_ON of CPU {=u32} failed ({=i32})", name.as_str(), cpu, r);
            semihost::exit(ExitCode::BadPlan)
        }
    }
    if let (Some(cpu), Some(_)) = (spare, &machine.psci) {
        start_deferred_init(cpu, machine.cpus[cpu as usize] as u32);
    }
    run_cpu(0)
}

/// The CPU that lists the monitor's deferred free memory, while it does (`u32::MAX`: none).
static DEFERRED_CPU: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(u32::MAX);

/// Starts CPU `cpu` (MPIDR `mpidr`), which no guest uses, on the rest of the
/// monitor's memory bring-up ([`crate::mm::finish_deferred`]); then it turns
/// itself off. Allocations meanwhile grow the lists themselves as they need.
fn start_deferred_init(cpu: u32, mpidr: u32) {
    let deferred = crate::arch::memmap::MEM.lock().as_ref().map_or(0, |m| m.buddy.deferred_pages());
    if deferred == 0 {
        return;
    }
    DEFERRED_CPU.store(cpu, core::sync::atomic::Ordering::Release);
    let r = guest::firmware_psci(carve_core::vm::psci::CPU_ON, mpidr, crate::arch::secondary_entry(), cpu);
    if r != 0 {
        DEFERRED_CPU.store(u32::MAX, core::sync::atomic::Ordering::Release);
        defmt::info!(
            "mm: firmware CPU_ON of CPU {=u32} failed ({=i32}): the {=u64} deferred pages are listed as allocations need them",
            cpu,
            r,
            deferred
        );
    }
}

/// Waits until CPU `cpu` is not listing deferred memory (before another job is started on it).
#[cfg(feature = "selftest")] // only the CMA test calls start jobs on spare CPUs
pub fn wait_deferred_init(cpu: u32) {
    while DEFERRED_CPU.load(core::sync::atomic::Ordering::Acquire) == cpu {
        core::hint::spin_loop();
    }
}

/// On the CPU [`start_deferred_init`] started: lists the deferred memory, then turns the CPU off.
fn run_deferred_init(cpu: u32) -> ! {
    match crate::mm::finish_deferred() {
        Ok((pages, ticks)) => defmt::info!(
            "mm: CPU {=u32} listed the last {=u64} deferred pages ({=u64} MiB) in {=u64} counter ticks while the guests ran",
            cpu,
            pages,
            pages >> 8,
            ticks
        ),
        Err(e) => defmt::error!("mm: CPU {=u32}: listing deferred memory: {=str}", cpu, e.as_str()),
    }
    DEFERRED_CPU.store(u32::MAX, core::sync::atomic::Ordering::Release);
    guest::firmware_psci(carve_core::vm::psci::CPU_OFF, 0, 0, 0);
    defmt::error!("mm: firmware CPU_OFF returned on CPU {=u32}", cpu);
    guest::park()
}

/// Runs whatever vCPU waits for physical CPU `cpu`; parks the CPU if none does.
pub fn run_cpu(cpu: u32) -> ! {
    if DEFERRED_CPU.load(core::sync::atomic::Ordering::Acquire) == cpu {
        run_deferred_init(cpu)
    }
    #[cfg(feature = "selftest")]
    if let Some(job) = selftest::take_job(cpu) {
        selftest::run_job(job)
    }
    let (regs, frame) = loop {
        let asked = crate::arch::counter();
        let mut vms = VMS.lock();
        let waited = crate::arch::counter().saturating_sub(asked);
        // Said when it is long (over 1 ms): the guests' lock is taken by every trap of every guest.
        if waited > u64::from(crate::arch::counter_hz() / 1000) {
            defmt::info!(
                "vm: CPU {=u32} waited {=u64} us for the guests' lock before entering a vCPU",
                cpu,
                waited * 1_000_000 / u64::from(crate::arch::counter_hz().max(1))
            );
        }
        let Some((vm, vcpu)) = vms.iter_mut().find_map(|vm| vm.vcpu_on(cpu).map(|v| (vm, v))) else {
            drop(vms);
            defmt::info!("vm: CPU {=u32} runs no guest: parked", cpu);
            guest::park()
        };
        // Started for a vCPU that a restart stopped before it ran: off again (vCPU 0 waits below).
        if stop_if_asked(vm, vcpu) && vcpu != 0 {
            drop(vms);
            crate::arch::smp::cpu_off(cpu);
            continue;
        }
        // vCPU 0 stopped by a restart another vCPU asked for: wait for the fresh boot (or the guest's end).
        if vcpu == 0 && vm.pending[0].is_none() && (vm.restarting || vm.done.is_some()) {
            let ended = vm.done.is_some();
            drop(vms);
            if ended {
                guest::park()
            }
            for _ in 0..1000 {
                core::hint::spin_loop();
            }
            continue;
        }
        let Some(frame) = vm.pending.get_mut(vcpu).and_then(Option::take) else {
            defmt::error!("vm: CPU {=u32} started, but no vCPU of {=str} waits for it", cpu, vm.name());
            semihost::exit(ExitCode::Unimplemented)
        };
        vm.power[vcpu] = Power::On;
        defmt::info!(
            "vm: {=str}: vCPU {=usize} on CPU {=u32} entering at IPA {=u32:#010x}, r0-r2 {=u32:#x} {=u32:#x} {=u32:#x}, VMID {=u8}",
            vm.name(),
            vcpu,
            cpu,
            frame.elr,
            frame.r[0],
            frame.r[1],
            frame.r[2],
            vm.vmid
        );
        break (vm.vcpu_regs(vcpu), frame);
    };
    if regs.virtual_irqs {
        vgic::reset_cpu();
    }
    // PSCI CPU_ON and a boot: PL1 as at reset (MMU and caches off).
    guest::reset_pl1();
    guest::configure(&regs);
    if !ENTERED.swap(true, core::sync::atomic::Ordering::Relaxed) {
        let t = crate::arch::counter();
        defmt::info!(
            "vm: first guest instruction at counter tick {=u64}: {=u64} us after reset ({=u64} instructions under -icount shift=0)",
            t,
            t * 1_000_000 / u64::from(crate::arch::counter_hz().max(1)),
            instructions(t)
        );
    }
    guest::enter(&frame)
}

/// Whether any vCPU has been entered yet.
static ENTERED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// A secondary CPU, its MMU on: started through PSCI CPU_ON (by the monitor
/// or for a guest's CPU_ON), or released from the boot monitor's holding
/// loop (`pen`), where it waits until a start is asked for it.
pub fn run_secondary(cpu: u32, pen: bool) -> ! {
    if pen {
        crate::arch::smp::wait_for_start(cpu);
    }
    run_cpu(cpu)
}

/// Marks guest `index` ended. When every guest has, returns the run's exit status.
pub fn mark_ended(vms: &mut [Vm], index: usize, how: Ending) -> Option<ExitCode> {
    vms[index].done = Some(how);
    vgic::guest_ended(vms, index);
    console::ended(index, if how == Ending::PoweredOff { "powered off" } else { "stopped after a fault" });
    if !vms.iter().all(|v| v.done.is_some()) {
        defmt::info!("vm: {=str} ended ({}); the other guests run on", vms[index].name(), how);
        return None;
    }
    for v in vms.iter() {
        defmt::info!("vm: {=str}: {} after {=u32} restart(s)", v.name(), v.done.unwrap_or(Ending::Faulted), v.restarts);
    }
    let faulted = vms.iter().any(|v| v.done == Some(Ending::Faulted));
    Some(if faulted { ExitCode::GuestFault } else { ExitCode::Success })
}

/// After [`mark_ended`], with the lock released: end the run, or park this CPU.
pub fn after_end(code: Option<ExitCode>) -> ! {
    match code {
        Some(code) => semihost::exit(code),
        None => {
            vgic::quiesce_cpu();
            guest::park()
        }
    }
}
