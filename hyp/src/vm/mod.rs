//! Guests: stage-2 from the plan, boot images loaded, vCPUs entered, traps served.
//!
//! A guest's RAM is the plan's extents mapped at its dense IPA range with the
//! largest blocks; the devices it is given (the console UART, the GIC
//! distributor and CPU interface) are mapped at their physical addresses and
//! nothing else is, so any other access is a stage-2 fault the monitor sees.

mod trap;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use carve_core::addr::{Address, Ipa, IpaRange, PhysAddr, PhysRange, Size, PAGE_SIZE};
use carve_core::dt::machine::Machine;
use carve_core::dt::tree::Tree;
use carve_core::dt::write::{guest_dtb, guest_mpidrs, GuestDtbOptions};
use carve_core::mm::{Attrs, MapStats, PageTable, Stage2, VTCR_VALUE};
use carve_core::plan::GuestPlan;
use carve_core::vm::boot::{self, BootLayout};
use carve_core::vm::psci::Power;
use spin::Mutex;

use crate::arch::guest::{self, VcpuRegs, SPSR_SVC_MASKED};
use crate::arch::mmu;
use crate::arch::semihost::{self, ExitCode};
use crate::arch::vectors::TrapFrame;

pub use trap::handle as handle_trap;

/// One guest: what the plan decided and what the monitor built for it.
pub struct Vm {
    pub plan: GuestPlan,
    pub vmid: u8,
    pub stage2: PageTable<Stage2>,
    /// MPIDR of each vCPU as the guest's device tree lists them.
    pub vcpu_mpidr: Vec<u64>,
    /// MPIDR of the physical CPU each vCPU runs on.
    pub pcpu_mpidr: Vec<u64>,
    /// The physical CPU number of vCPU 0.
    pub first_cpu: u32,
    pub power: Vec<Power>,
    /// Entry point and context of a vCPU that CPU_ON is starting.
    pub pending: Vec<Option<(Ipa, u32)>>,
    pub boot: BootLayout,
    /// Traps taken, all vCPUs.
    pub traps: u64,
}

/// The running guest (one for now).
pub static VM: Mutex<Option<Vm>> = Mutex::new(None);

/// Why a guest could not be built; a sentence for the log.
pub type VmError = String;

impl Vm {
    pub fn ram(&self) -> IpaRange {
        self.plan.ipa_range()
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
        }
    }
}

/// Calls `f(pa, offset, len)` for each physically contiguous piece of guest IPAs `[ipa, ipa + len)`.
fn for_each_piece(
    g: &GuestPlan,
    ipa: u64,
    len: u64,
    mut f: impl FnMut(u64, u64, u64) -> Result<(), VmError>,
) -> Result<(), VmError> {
    let mut done = 0;
    while done < len {
        let at = ipa + done;
        let e = g
            .extents
            .iter()
            .find(|e| e.ipa_range().contains(at))
            .ok_or_else(|| format!("{}: IPA {at:#x} is not guest RAM", g.name))?;
        let n = (e.ipa.as_u64() + e.size - at).min(len - done);
        f(e.pa.as_u64() + (at - e.ipa.as_u64()), done, n)?;
        done += n;
    }
    Ok(())
}

fn mmu_err(what: &str, e: mmu::MmuError) -> VmError {
    format!("{what}: {e:?}")
}

/// Builds guest `index` of the plan: stage-2, images and DTB in its RAM.
pub fn build(tree: &Tree<'_>, machine: &Machine, g: &GuestPlan, index: usize) -> Result<Vm, VmError> {
    let desc = g.desc.as_ref().ok_or_else(|| format!("{}: not described by the device tree", g.name))?;
    let kernel = desc.kernel.as_ref().ok_or_else(|| format!("{}: no kernel module", g.name))?;

    // Stage-2: RAM, then the devices the guest is given.
    let mut stats = MapStats::default();
    let stage2 = mmu::with_pool(|pool| -> Result<PageTable<Stage2>, VmError> {
        let mut s2 = PageTable::<Stage2>::new(pool).map_err(|e| format!("{}: stage-2 root: {e}", g.name))?;
        for e in &g.extents {
            stats += s2.map(pool, e.ipa, e.pa, e.size, Attrs::ram()).map_err(|err| format!("{}: {err}", g.name))?;
        }
        for (what, r) in passthrough(machine) {
            let base = r.start() & !(PAGE_SIZE - 1);
            let size = (r.end() - base).next_multiple_of(PAGE_SIZE);
            let ipa = Ipa::from_u64(base).ok_or_else(|| format!("{what} at {base:#x} is past the IPA space"))?;
            let pa = PhysAddr::from_u64(base).ok_or_else(|| format!("{what} at {base:#x} is past the PA space"))?;
            stats += s2.map(pool, ipa, pa, size, Attrs::device()).map_err(|err| format!("{}: {what}: {err}", g.name))?;
            defmt::info!("vm: {=str}: {=str} passed through at {=u64:#010x} ({=u64} KiB)", g.name.as_str(), what, base, size / 1024);
        }
        Ok(s2)
    })
    .ok_or_else(|| String::from("no table pool: the Hyp map is not up"))??;
    defmt::info!(
        "vm: {=str}: stage-2 root {=u64:#010x}, {=u32} 1 GiB + {=u32} 2 MiB blocks + {=u32} 4 KiB pages, {=u32} table pages",
        g.name.as_str(),
        stage2.root().as_u64(),
        stats.blocks_1g,
        stats.blocks_2m,
        stats.pages_4k,
        stats.tables_allocated
    );

    // Where the images go, then copy them in.
    let ramdisk = desc.ramdisk.as_ref();
    let layout = boot::layout(&g.name, g.ipa_range(), kernel.range.size, ramdisk.map(|r| r.range.size))
        .map_err(|e| format!("{e}"))?;
    load(g, "kernel", kernel.range, layout.kernel)?;
    if let (Some(r), Some(at)) = (ramdisk, layout.initrd) {
        load(g, "initrd", r.range, at)?;
    }
    let opts = GuestDtbOptions { initrd: layout.initrd, bootargs: desc.bootargs.as_deref(), owned_carveouts: &[] };
    let dtb = guest_dtb(tree, machine, g, &opts).map_err(|e| format!("{}: guest DTB: {e}", g.name))?;
    if dtb.len() as u64 > boot::DTB_MAX {
        return Err(format!("{}: guest DTB is {} bytes, more than the {} reserved", g.name, dtb.len(), Size(boot::DTB_MAX)));
    }
    for_each_piece(g, layout.dtb.start(), dtb.len() as u64, |pa, off, n| {
        mmu::write_phys(pa, &dtb[off as usize..(off + n) as usize]).map_err(|e| mmu_err("writing the guest DTB", e))
    })?;
    defmt::info!(
        "vm: {=str}: DTB {=usize} bytes at IPA {=u64:#010x}, bootargs \"{=str}\"",
        g.name.as_str(),
        dtb.len(),
        layout.dtb.start(),
        desc.bootargs.as_deref().unwrap_or("")
    );

    let vcpu_mpidr = guest_mpidrs(machine, g).to_vec();
    let cpus = g.cpus as usize;
    let pcpu_mpidr: Vec<u64> =
        (0..cpus).map(|v| machine.cpus.get(g.first_cpu as usize + v).copied().unwrap_or(v as u64)).collect();
    let mut power = alloc::vec![Power::Off; cpus];
    power[0] = Power::On;
    Ok(Vm {
        plan: g.clone(),
        vmid: (index + 1) as u8,
        stage2,
        vcpu_mpidr,
        pcpu_mpidr,
        first_cpu: g.first_cpu,
        power,
        pending: alloc::vec![None; cpus],
        boot: layout,
        traps: 0,
    })
}

/// The device windows a guest is given: the console UART and the GIC distributor and CPU interface.
fn passthrough(machine: &Machine) -> Vec<(&'static str, PhysRange)> {
    let mut v = Vec::new();
    if let Some(u) = &machine.uart {
        if let Some(r) = u.regs.first() {
            v.push(("UART", *r));
        }
    }
    if let Some(gic) = &machine.gic {
        v.push(("GIC distributor", gic.distributor));
        v.push(("GIC CPU interface", gic.cpu_interface));
    }
    v
}

/// Copies a boot module from where the loader put it into guest RAM.
fn load(g: &GuestPlan, what: &str, from: PhysRange, to: IpaRange) -> Result<(), VmError> {
    for_each_piece(g, to.start(), from.size, |pa, off, n| {
        mmu::copy_phys(pa, from.start() + off, n).map_err(|e| mmu_err(what, e))
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

/// Runs vCPU 0 of the guest on this (the boot) CPU. Does not return.
pub fn run(vm: Vm) -> ! {
    let regs = vm.vcpu_regs(0);
    let mut frame = TrapFrame { r: [0; 13], lr_usr: 0, elr: vm.boot.kernel.start() as u32, spsr: SPSR_SVC_MASKED };
    // Linux's ARM boot protocol: r0 = 0, r1 = ~0 (no machine type: DT boot), r2 = the DTB.
    frame.r[1] = !0;
    frame.r[2] = vm.boot.dtb.start() as u32;
    defmt::info!(
        "vm: {=str}: entering at IPA {=u32:#010x} in SVC mode, r2 = DTB {=u32:#010x}, VMID {=u8}",
        vm.plan.name.as_str(),
        frame.elr,
        frame.r[2],
        vm.vmid
    );
    *VM.lock() = Some(vm);
    guest::configure(&regs);
    guest::enter(&frame)
}

/// A secondary CPU started by a guest's CPU_ON: run the pending vCPU.
pub fn run_secondary(cpu: u32) -> ! {
    if let Err(e) = mmu::enable_secondary() {
        defmt::error!("vm: CPU {=u32}: cannot turn the MMU on: {}", cpu, e);
        semihost::exit(ExitCode::MmuSetup)
    }
    let (regs, frame) = {
        let mut guard = VM.lock();
        let Some(vm) = guard.as_mut() else {
            defmt::error!("vm: CPU {=u32} started with no guest to run", cpu);
            semihost::exit(ExitCode::Unimplemented)
        };
        let vcpu = cpu.wrapping_sub(vm.first_cpu) as usize;
        let Some((entry, context)) = vm.pending.get_mut(vcpu).and_then(Option::take) else {
            defmt::error!("vm: CPU {=u32} started, but no vCPU of {=str} waits for it", cpu, vm.plan.name.as_str());
            semihost::exit(ExitCode::Unimplemented)
        };
        vm.power[vcpu] = Power::On;
        let mut frame = TrapFrame { r: [0; 13], lr_usr: 0, elr: entry.as_u64() as u32, spsr: SPSR_SVC_MASKED };
        frame.r[0] = context;
        defmt::info!(
            "vm: {=str}: vCPU {=usize} on CPU {=u32} entering at IPA {=u32:#010x}",
            vm.plan.name.as_str(),
            vcpu,
            cpu,
            frame.elr
        );
        (vm.vcpu_regs(vcpu), frame)
    };
    guest::configure(&regs);
    guest::enter(&frame)
}
