//! carve's monitor: the Hyp-mode (PL2) image for ARMv7-A with the Virtualization Extensions.
//!
//! `_start` (arch/entry.rs) maps the image at its link address wherever the
//! loader put it, turns the MMU on, picks a stack, clears `.bss`, sets HVBAR
//! and calls [`hyp_main`], which runs the boot's steps ([`boot`]): it checks
//! the CPU's features, switches to the monitor's own Hyp map, reads the DTB
//! through the fixmap, checks the trap path, sends the log to the UART
//! `/chosen/carve,log` names, learns how the board powers off and starts
//! CPUs, plans the machine and logs the plan, maps lowmem, brings its memory
//! up, runs the self-tests `carve.selftest=` asks for, and runs the guests
//! (`vm`). The first step that fails logs one sentence and ends the run with
//! its [`BootError`]'s exit status.
//!
//! Only `arch` touches the hardware and holds `unsafe`; the rest of the crate
//! denies it. On a host target this crate is a stub: build it with `cargo hyp`.
#![cfg_attr(target_arch = "arm", no_std, no_main)]
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(target_arch = "arm")]
extern crate alloc;

#[cfg(target_arch = "arm")]
#[allow(unsafe_code)]
mod arch;
#[cfg(target_arch = "arm")]
mod boot;
#[cfg(target_arch = "arm")]
mod log;
#[cfg(target_arch = "arm")]
mod mm;
#[cfg(target_arch = "arm")]
mod report;
#[cfg(target_arch = "arm")]
mod selftest;
#[cfg(target_arch = "arm")]
mod vm;
#[cfg(target_arch = "arm")]
mod window;

#[cfg(target_arch = "arm")]
use arch::semihost::{self, ExitCode};

/// CPSR.M for Hyp mode (Arm ARM B1.3.1).
#[cfg(target_arch = "arm")]
const MODE_HYP: u32 = 0x1a;

/// The name of a CPSR.M value.
#[cfg(target_arch = "arm")]
fn mode_name(mode: u32) -> &'static str {
    match mode {
        0x10 => "User",
        0x11 => "FIQ",
        0x12 => "IRQ",
        0x13 => "Supervisor",
        0x16 => "Monitor",
        0x17 => "Abort",
        MODE_HYP => "Hyp",
        0x1b => "Undefined",
        0x1f => "System",
        _ => "unknown",
    }
}

/// The boot CPU's Rust entry, called by `_start` with the loader's r0-r2.
///
/// r2 is the DTB's physical address (0 under QEMU's ELF loader: the DTB is
/// then at the start of RAM). Boot is the steps of [`boot`]; the first that
/// fails logs its [`BootError`] and ends the run with that error's status.
#[cfg(target_arch = "arm")]
extern "C" fn hyp_main(r0: u32, r1: u32, r2: u32) -> ! {
    arch::heap::init();
    match boot(r0, r1, r2) {
        Ok(Booted { tree, machine, plan, self_tested }) => {
            if plan.guests.is_empty() {
                if !self_tested {
                    defmt::info!("hyp: no guest under /chosen: nothing to run");
                }
                semihost::exit(ExitCode::Success)
            }
            *vm::PLAN.lock() = Some((machine.clone(), plan.clone()));
            vm::start(&tree, &machine, &plan)
        }
        Err(e) => {
            defmt::error!("{}", e);
            semihost::exit(e.exit_code())
        }
    }
}

/// What the boot leaves for the guests: the machine's tree, its description, and the plan.
#[cfg(target_arch = "arm")]
struct Booted {
    tree: carve_core::dt::Tree<'static>,
    machine: carve_core::dt::Machine,
    plan: carve_core::plan::Plan,
    /// The memory self-tests ran, and passed.
    self_tested: bool,
}

/// The boot, one named step after the other.
#[cfg(target_arch = "arm")]
fn boot(r0: u32, r1: u32, r2: u32) -> Result<Booted, BootError> {
    check_cpu(r0, r1, r2)?;
    let (layout, image_pa) = log_image();
    enable_mmu(&layout)?;
    let dtb = find_dtb(r2, image_pa)?;
    let dtb_va = map_dtb(&dtb)?;
    check_trap_path()?;
    let blob = copy_dtb(dtb_va, &dtb)?;
    let tree = carve_core::dt::Tree::parse(blob).map_err(BootError::Tree)?;
    let machine = carve_core::dt::Machine::from_tree(&tree).map_err(BootError::Tree)?;
    log_to_uart(&machine);
    board_control(&machine);
    let plan = plan_machine(&machine, image_pa, &dtb)?;
    map_lowmem(&plan)?;
    let figures = bring_up_memory(&plan)?;
    let self_tested = run_self_tests(&machine, &plan, &figures)?;
    Ok(Booted { tree, machine, plan, self_tested })
}

/// Logs who runs (CPU mode, MIDR, MPIDR, its features) and what the loader
/// passed; refuses a core without the Virtualization Extensions or LPAE (by
/// feature, not by part number: any core with both runs carve).
#[cfg(target_arch = "arm")]
fn check_cpu(r0: u32, r1: u32, r2: u32) -> Result<(), BootError> {
    let mode = arch::cpsr_mode();
    defmt::info!("carve {=str}: Hyp monitor starting", env!("CARGO_PKG_VERSION"));
    defmt::info!(
        "hyp: CPU mode {=str} ({=u32:#04x}), MIDR {=u32:#010x}, MPIDR {=u32:#010x}",
        mode_name(mode),
        mode,
        arch::midr(),
        arch::mpidr()
    );
    defmt::info!("hyp: loader registers r0={=u32:#x} r1={=u32:#x} r2={=u32:#010x}", r0, r1, r2);
    // `_start` refuses a core without them that was started outside Hyp mode.
    let cpu = arch::cpu_features();
    let midr = arch::midr();
    defmt::info!(
        "hyp: CPU {=str} r{=u32}p{=u32}: Virtualization Extensions {=bool} (ID_PFR1 {=u32:#010x}), LPAE {=bool} (ID_MMFR0 {=u32:#010x})",
        arch::cpu_name(midr),
        (midr >> 20) & 0xf,
        midr & 0xf,
        cpu.virtualization,
        cpu.id_pfr1,
        cpu.lpae,
        cpu.id_mmfr0
    );
    if !(cpu.virtualization && cpu.lpae) {
        return Err(BootError::NoVirtualization);
    }
    Ok(())
}

/// Logs the image's parts and where the loader put it; returns its layout
/// (virtual, at the link address) and its physical `[start, end)`.
#[cfg(target_arch = "arm")]
fn log_image() -> (arch::ImageLayout, (u64, u64)) {
    let layout = arch::image_layout();
    let image_pa =
        (arch::image_pa(layout.image.0), arch::image_pa(layout.image.0) + (layout.image.1 - layout.image.0) as u64);
    let kib = |(start, end): (usize, usize)| (end - start) / 1024;
    defmt::info!(
        "hyp: image {=usize:#010x}-{=usize:#010x} ({=usize} KiB: text {=usize}, rodata {=usize}, data {=usize}, bss {=usize}, stacks {=usize})",
        layout.image.0,
        layout.image.1,
        kib(layout.image),
        kib(layout.text),
        kib(layout.rodata),
        kib(layout.data),
        kib(layout.bss),
        kib(layout.stacks)
    );
    defmt::info!("hyp: image loaded at PA {=u64:#010x}-{=u64:#010x}, runs at its link address", image_pa.0, image_pa.1);
    (layout, image_pa)
}

/// The monitor's own Hyp map, switched to from the one `_start` built.
#[cfg(target_arch = "arm")]
fn enable_mmu(layout: &arch::ImageLayout) -> Result<(), BootError> {
    let report = arch::mmu::enable_boot_map(layout).map_err(BootError::Mmu)?;
    defmt::info!("hyp: MMU on ({})", report);
    Ok(())
}

/// The DTB the loader points at (r2, or QEMU's place when r2 is 0), its header
/// read through the fixmap and checked; `image` is the monitor's physical `[start, end)`.
#[cfg(target_arch = "arm")]
fn find_dtb(r2: u32, image: (u64, u64)) -> Result<boot::Dtb, BootError> {
    let addr = boot::dtb_address(r2);
    if addr & 7 != 0 {
        return Err(BootError::Dtb(boot::DtbError::Misaligned { addr }));
    }
    let va = arch::mmu::map_early_dtb(addr, boot::FDT_HEADER_SIZE)
        .map_err(|_| BootError::Dtb(boot::DtbError::BadRange { addr, totalsize: boot::FDT_HEADER_SIZE }))?;
    let checked = boot::check_dtb(addr, arch::phys::dtb_bytes(va, boot::FDT_HEADER_SIZE), image);
    arch::mmu::unmap_early_dtb(va, boot::FDT_HEADER_SIZE).map_err(BootError::DtbHeaderUnmap)?;
    let dtb = checked.map_err(BootError::Dtb)?;
    defmt::info!(
        "hyp: DTB at {=u32:#010x}{=str}: magic {=u32:#010x} ok, totalsize {=u32} bytes, version {=u32} (compatible with {=u32})",
        dtb.addr,
        if r2 == 0 { " (r2 = 0: start of RAM)" } else { "" },
        boot::FDT_MAGIC,
        dtb.size,
        dtb.version,
        dtb.last_comp_version
    );
    Ok(dtb)
}

/// The DTB's used bytes in the fixmap's early DT window; returns their virtual address.
#[cfg(target_arch = "arm")]
fn map_dtb(dtb: &boot::Dtb) -> Result<u32, BootError> {
    let va = arch::mmu::map_early_dtb(dtb.addr, dtb.used).map_err(BootError::DtbMap)?;
    defmt::info!("hyp: DTB's {=u32} used bytes at {=u32:#010x} (fixmap)", dtb.used, va);
    Ok(va)
}

/// An HVC from Hyp mode and back: HVBAR, the trap frame and `eret` work.
#[cfg(target_arch = "arm")]
fn check_trap_path() -> Result<(), BootError> {
    if !arch::trap_selftest() {
        return Err(BootError::TrapPath);
    }
    defmt::info!("hyp: trap path ok (HVC from Hyp mode: frame saved, handled, restored, eret)");
    Ok(())
}

/// The tree's used part, read through the fixmap and copied to the heap as a
/// whole blob; then the early window goes.
#[cfg(target_arch = "arm")]
fn copy_dtb(dtb_va: u32, dtb: &boot::Dtb) -> Result<&'static [u8], BootError> {
    let early = arch::phys::dtb_bytes(dtb_va, dtb.used);
    if early.get(4..8) != Some(&dtb.size.to_be_bytes()[..])
        || early.get(..4) != Some(&boot::FDT_MAGIC.to_be_bytes()[..])
    {
        return Err(BootError::DtbChanged);
    }
    let copy = carve_core::dt::header::trimmed(early, dtb.size as usize).map_err(BootError::Header)?;
    arch::mmu::unmap_early_dtb(dtb_va, dtb.used).map_err(BootError::EarlyUnmap)?;
    Ok(alloc::vec::Vec::leak(copy))
}

/// The plan for this machine, with the monitor's own command line (`vmalloc=`)
/// and its image and DTB kept out of every guest; verified, then logged.
#[cfg(target_arch = "arm")]
fn plan_machine(
    machine: &carve_core::dt::Machine,
    image_pa: (u64, u64),
    dtb: &boot::Dtb,
) -> Result<carve_core::plan::Plan, BootError> {
    use carve_core::plan::{self, bootargs, MonitorImage, PlanConfig};
    let layout_config =
        bootargs::layout_config(machine.bootargs.as_deref(), &Default::default()).map_err(BootError::Plan)?;
    let image = monitor_range("image", image_pa.0, image_pa.1)?;
    let dtb_range = monitor_range("DTB", u64::from(dtb.addr), u64::from(dtb.addr) + u64::from(dtb.size))?;
    let config = PlanConfig {
        layout: layout_config,
        monitor_image: MonitorImage::At(image),
        monitor_extra: alloc::vec![dtb_range],
        ..Default::default()
    };
    let plan = plan::plan(machine, &config).map_err(BootError::Plan)?;
    plan::verify(&plan).map_err(BootError::PlanInvariant)?;
    report::log_plan(machine, &plan);
    defmt::info!(
        "hyp: heap {=usize} KiB in use, {=usize} KiB free",
        arch::heap::used() / 1024,
        arch::heap::free() / 1024
    );
    Ok(plan)
}

/// The pages `[start, end)` rounded out take: a range of the monitor's own (its image, its DTB).
#[cfg(target_arch = "arm")]
fn monitor_range(what: &'static str, start: u64, end: u64) -> Result<carve_core::addr::PhysRange, BootError> {
    const PAGE: u64 = carve_core::addr::PAGE_SIZE;
    carve_core::addr::PhysRange::from_bounds(start & !(PAGE - 1), end.next_multiple_of(PAGE))
        .ok_or(BootError::MonitorRange { what, start, end })
}

/// The lowmem linear map of the plan.
#[cfg(target_arch = "arm")]
fn map_lowmem(plan: &carve_core::plan::Plan) -> Result<(), BootError> {
    let s = arch::mmu::map_linear(&plan.monitor.lowmem).map_err(BootError::Lowmem)?;
    defmt::info!(
        "hyp: lowmem linear map on: {=u32} 1 GiB + {=u32} 2 MiB blocks + {=u32} pages",
        s.blocks_1g,
        s.blocks_2m,
        s.pages_4k
    );
    Ok(())
}

/// The monitor's memory (page records, buddy, CMA pools, vmalloc, kmap slots, copy windows), its counters logged.
#[cfg(target_arch = "arm")]
fn bring_up_memory(plan: &carve_core::plan::Plan) -> Result<mm::Figures, BootError> {
    let figures = mm::init(plan).map_err(BootError::Memory)?;
    mm::init_kmap_atomic(plan);
    window::init(plan);
    mm::log_meminfo(plan, &figures);
    Ok(figures)
}

/// The self-tests `carve.selftest=` asks for (see [`selftest`]): true if the
/// memory self-tests ran (and passed: a failure stops the boot, guests or not).
#[cfg(target_arch = "arm")]
fn run_self_tests(
    machine: &carve_core::dt::Machine,
    plan: &carve_core::plan::Plan,
    figures: &mm::Figures,
) -> Result<bool, BootError> {
    let asked = selftest::requested(machine.bootargs.as_deref())
        .map_err(|name| BootError::SelfTestName(alloc::string::String::from(name)))?;
    if !asked.any() {
        return Ok(false);
    }
    #[cfg(not(feature = "selftest"))]
    {
        let _ = (plan, figures);
        Err(BootError::NoSelfTests)
    }
    #[cfg(feature = "selftest")]
    {
        if asked.cma {
            defmt::info!("cma: test calls enabled (carve.selftest=cma)");
            vm::selftest::enable_cma_calls();
        }
        if asked.cma_no_tlbi {
            defmt::warn!("cma: carve.selftest=cma-no-tlbi: page moves skip the TLB invalidation (a broken monitor, for the stale-translation test only)");
            mm::cma::SKIP_TLBI.store(true, core::sync::atomic::Ordering::Relaxed);
        }
        if asked.no_zero {
            defmt::warn!("vm: carve.selftest=no-zero: guest RAM is mapped on first touch WITHOUT zeroing (a broken monitor, for the first-touch test only)");
            vm::selftest::SKIP_ZERO.store(true, core::sync::atomic::Ordering::Relaxed);
        }
        if asked.mm && !mm::selftest::run(machine, plan, figures) {
            return Err(BootError::SelfTestFailed);
        }
        Ok(asked.mm)
    }
}

/// Sends the log to the UART `/chosen/carve,log` names, early frames first;
/// without one the log stays where it is (semihosting; in the board image,
/// nowhere: a board names its log UART).
#[cfg(target_arch = "arm")]
fn log_to_uart(machine: &carve_core::dt::Machine) {
    let Some(log) = &machine.log_uart else {
        arch::logger::settle();
        return;
    };
    let regs = log.device.regs[0];
    // 16550 registers span 8 << reg-shift bytes; a PL011's block is 4 KiB, of which the driver uses the first 0x48.
    let span = match log.kind {
        carve_core::dt::machine::UartKind::Pl011 => 0x48,
        carve_core::dt::machine::UartKind::Ns16550 { reg_shift, .. } => 8u64 << reg_shift,
    };
    match arch::uart::map_log_uart(regs.start(), span.min(regs.size), log.kind) {
        Ok(uart) => {
            defmt::info!(
                "hyp: log goes to {=str} at {=u64:#010x} from here on (carve,log)",
                log.device.node.as_str(),
                regs.start()
            );
            arch::logger::use_uart(uart);
            defmt::info!("hyp: log on {=str} (carve,log)", log.device.node.as_str());
        }
        Err(e) => {
            defmt::error!("hyp: cannot map the log UART {=str}: {}", log.device.node.as_str(), e);
            arch::logger::settle();
        }
    }
}

/// How this machine powers off and starts its other CPUs, as its tree says:
/// logged, and the registers that takes mapped in the fixmap's board slots.
#[cfg(target_arch = "arm")]
fn board_control(machine: &carve_core::dt::Machine) {
    use arch::mmu::BoardPage;
    use carve_core::dt::machine::{CpuStart, PowerOff};
    // The system registers' page, mapped once for both uses.
    let mut sysregs: Option<(u64, usize)> = None;
    let mut map_sysregs = |pa: u64| -> Option<usize> {
        let page = pa & !0xfff;
        if let Some((p, va)) = sysregs {
            return (p == page).then_some(va + (pa - page) as usize);
        }
        match arch::mmu::map_board(BoardPage::SysRegs, pa) {
            Ok(va) => {
                sysregs = Some((page, va - (pa - page) as usize));
                Some(va)
            }
            Err(e) => {
                defmt::error!("hyp: cannot map the system registers at {=u64:#010x}: {}", pa, e);
                None
            }
        }
    };
    match &machine.power_off {
        Some(PowerOff::Psci) => {
            defmt::info!("hyp: power-off: PSCI SYSTEM_OFF through the firmware (SMC)");
            arch::power::set(&PowerOff::Psci, None);
        }
        Some(off @ PowerOff::VexpressSysCfg { node, sysreg, function, site, .. }) => {
            match map_sysregs(sysreg.start()) {
                Some(va) => {
                    defmt::info!(
                        "hyp: power-off: {=str}, SYS_CFGCTRL function {=u32} site {=u32} of the system registers at {=u64:#010x}",
                        node.as_str(),
                        *function,
                        *site,
                        sysreg.start()
                    );
                    arch::power::set(off, Some(va));
                }
                None => defmt::error!("hyp: no power-off: the system registers are not mapped"),
            }
        }
        None => defmt::warn!("hyp: the tree names no way to power off (no PSCI with SMC, no arm,vexpress-shutdown)"),
    }
    // The GIC distributor: SGIs that wake CPUs (held by a boot monitor, or running a guest to be stopped).
    let gicd = machine.gic.as_ref().map(|gic| arch::mmu::map_board(BoardPage::GicDistributor, gic.distributor.start()));
    if let Some(Ok(va)) = gicd {
        arch::smp::set_gic_distributor(va);
    }
    match (&machine.cpu_start, &machine.gic) {
        (Some(CpuStart::Psci), _) => {
            defmt::info!("hyp: CPUs start through PSCI CPU_ON (SMC)");
            arch::smp::use_psci();
        }
        (Some(CpuStart::VexpressSysFlags { sysreg }), Some(gic)) => {
            let gicd = gicd.unwrap_or(Err(arch::mmu::MmuError::BadRegion {
                what: "GIC distributor",
                start: gic.distributor.start(),
                end: gic.distributor.end(),
            }));
            match (map_sysregs(sysreg.start()), gicd) {
                (Some(va), Ok(gicd)) => {
                    defmt::info!(
                        "hyp: CPUs start from the boot monitor's loop: SYS_FLAGS at {=u64:#010x}, SGI 0 from the GIC distributor at {=u64:#010x}",
                        sysreg.start() + 0x30,
                        gic.distributor.start()
                    );
                    arch::smp::use_sys_flags(va, gicd, &machine.cpus);
                }
                (_, Err(e)) => defmt::error!("hyp: cannot map the GIC distributor: {}: no CPU can start", e),
                (None, _) => defmt::error!("hyp: the system registers are not mapped: no CPU can start"),
            }
        }
        (Some(CpuStart::VexpressSysFlags { .. }), None) => {
            defmt::error!("hyp: SYS_FLAGS needs a GIC to wake the CPUs, and the tree has none: no CPU can start")
        }
        (None, _) => {}
    }
}

/// Why the boot stopped before any guest ran: each logs as one sentence and has its exit status.
#[cfg(target_arch = "arm")]
enum BootError {
    /// The CPU has no Virtualization Extensions or no LPAE.
    NoVirtualization,
    /// The monitor's own Hyp map could not be built.
    Mmu(arch::mmu::MmuError),
    /// The loader's DTB is missing, misaligned or has a bad header.
    Dtb(boot::DtbError),
    /// The DTB header's fixmap page could not be unmapped.
    DtbHeaderUnmap(arch::mmu::MmuError),
    /// The DTB's used bytes could not be mapped (or do not fit the early DT window).
    DtbMap(arch::mmu::MmuError),
    /// An HVC from Hyp mode did not come back with the registers it should.
    TrapPath,
    /// The DTB's header reads differently through the MMU than before it.
    DtbChanged,
    /// The blob's header, read in full, is not one carve reads.
    Header(carve_core::dt::header::HeaderError),
    /// The early DT window could not be unmapped.
    EarlyUnmap(arch::mmu::MmuError),
    /// The tree does not parse, or does not describe a machine.
    Tree(carve_core::dt::DtError),
    /// The plan refused the machine (or the monitor's own command line).
    Plan(carve_core::plan::PlanError),
    /// The plan breaks one of its own invariants: a bug in carve.
    PlanInvariant(alloc::string::String),
    /// The monitor's own image or DTB bounds are not a physical range: a bug in carve.
    MonitorRange { what: &'static str, start: u64, end: u64 },
    /// The lowmem linear map could not be built.
    Lowmem(arch::mmu::MmuError),
    /// The monitor's memory could not be brought up.
    Memory(alloc::string::String),
    /// `carve.selftest=` names a self-test there is none of.
    SelfTestName(alloc::string::String),
    /// `carve.selftest=` asks for self-tests this image was built without.
    #[cfg(not(feature = "selftest"))]
    NoSelfTests,
    /// A memory self-test failed (each part's verdict is logged above).
    #[cfg(feature = "selftest")]
    SelfTestFailed,
}

#[cfg(target_arch = "arm")]
impl BootError {
    /// The status the run ends with.
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::NoVirtualization => ExitCode::NoVirtualization,
            Self::Dtb(_) | Self::Header(_) | Self::Tree(_) => ExitCode::BadDtb,
            Self::DtbMap(arch::mmu::MmuError::DtbTooLarge { .. }) => ExitCode::BadDtb,
            Self::Mmu(_)
            | Self::DtbHeaderUnmap(_)
            | Self::DtbMap(_)
            | Self::DtbChanged
            | Self::EarlyUnmap(_)
            | Self::Lowmem(_)
            | Self::Memory(_) => ExitCode::MmuSetup,
            Self::TrapPath => ExitCode::UnhandledTrap,
            Self::Plan(_) => ExitCode::BadPlan,
            Self::PlanInvariant(_) | Self::MonitorRange { .. } => ExitCode::Panic,
            Self::SelfTestName(_) => ExitCode::SelfTest,
            #[cfg(not(feature = "selftest"))]
            Self::NoSelfTests => ExitCode::SelfTest,
            #[cfg(feature = "selftest")]
            Self::SelfTestFailed => ExitCode::SelfTest,
        }
    }
}

#[cfg(target_arch = "arm")]
impl defmt::Format for BootError {
    fn format(&self, f: defmt::Formatter) {
        use defmt::Display2Format as D;
        match self {
            Self::NoVirtualization => defmt::write!(
                f,
                "hyp: this CPU lacks the Virtualization Extensions or LPAE: carve runs on cores that have both (Cortex-A15, A7, A17)"
            ),
            Self::Mmu(e) => defmt::write!(f, "hyp: cannot build the Hyp map: {}", e),
            Self::Dtb(e) => defmt::write!(f, "hyp: {}", e),
            Self::DtbHeaderUnmap(e) => defmt::write!(f, "hyp: unmapping the DTB's header: {}", e),
            Self::DtbMap(e) => defmt::write!(f, "hyp: cannot map the DTB: {}", e),
            Self::TrapPath => defmt::write!(f, "hyp: trap self-test: registers came back wrong from HVC"),
            Self::DtbChanged => defmt::write!(f, "hyp: the DTB reads differently with the MMU on"),
            Self::Header(e) => defmt::write!(f, "dt: {}", D(e)),
            Self::EarlyUnmap(e) => defmt::write!(f, "hyp: unmapping the early DT window: {}", e),
            Self::Tree(e) => defmt::write!(f, "dt: {}", D(e)),
            Self::Plan(e) => defmt::write!(f, "plan: {}", D(e)),
            Self::PlanInvariant(e) => defmt::write!(f, "plan: broken invariant (a bug in carve): {=str}", e.as_str()),
            Self::MonitorRange { what, start, end } => defmt::write!(
                f,
                "hyp: the monitor's {=str} {=u64:#x}-{=u64:#x} is not a physical range (a bug in carve)",
                what,
                start,
                end
            ),
            Self::Lowmem(e) => defmt::write!(f, "hyp: cannot map lowmem: {}", e),
            Self::Memory(e) => defmt::write!(f, "mm: {=str}", e.as_str()),
            Self::SelfTestName(name) => defmt::write!(
                f,
                "hyp: bootargs carve.selftest={=str}: no such self-test (there are {=str}, or all)",
                name.as_str(),
                selftest::NAMES
            ),
            #[cfg(not(feature = "selftest"))]
            Self::NoSelfTests => defmt::write!(
                f,
                "hyp: bootargs ask for carve.selftest=, but this image has no self-tests (build it with scripts/build --selftest)"
            ),
            #[cfg(feature = "selftest")]
            Self::SelfTestFailed => defmt::write!(f, "hyp: a self-test failed: no guest is started"),
        }
    }
}

/// A secondary CPU's Rust entry, with its MMU on and the monitor's map in
/// HTTBR: from `_secondary_start` (PSCI CPU_ON, `pen` = 0) or `_secondary_pen`
/// (released by SYS_FLAGS, `pen` = 1). It runs the vCPU the guest's CPU_ON asked for.
#[cfg(target_arch = "arm")]
extern "C" fn hyp_secondary(cpu: u32, pen: u32) -> ! {
    vm::run_secondary(cpu, pen != 0)
}

/// On the host there is no monitor: say how to build one.
#[cfg(not(target_arch = "arm"))]
fn main() {
    eprintln!("hyp is the monitor image for armv7a-none-eabi: build it with `cargo hyp` or scripts/build");
    std::process::exit(2);
}
