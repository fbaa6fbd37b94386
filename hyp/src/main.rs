//! carve's monitor: the Hyp-mode (PL2) image for ARMv7-A with the Virtualization Extensions.
//!
//! `_start` (arch/entry.rs) maps the image at its link address wherever the
//! loader put it, turns the MMU on, picks a stack, clears `.bss`, sets HVBAR
//! and calls [`hyp_main`]: it checks the CPU's features, switches to the
//! monitor's own Hyp map, reads the DTB through the fixmap, sends the log to
//! the UART `/chosen/carve,log` names, learns how the board powers off and
//! starts CPUs, plans the machine, brings its memory up and runs the guests.
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
/// then at the start of RAM).
#[cfg(target_arch = "arm")]
extern "C" fn hyp_main(r0: u32, r1: u32, r2: u32) -> ! {
    arch::heap::init();

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
    // By feature, not by part number: any core with both runs carve (`_start`
    // refuses a core without them that was started outside Hyp mode).
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
        defmt::error!("hyp: this CPU lacks the Virtualization Extensions or LPAE: carve runs on cores that have both (Cortex-A15, A7, A17)");
        semihost::exit(ExitCode::NoVirtualization)
    }

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

    match arch::mmu::enable_boot_map(&layout) {
        Ok(report) => defmt::info!("hyp: MMU on ({})", report),
        Err(e) => {
            defmt::error!("hyp: cannot build the Hyp map: {}", e);
            semihost::exit(ExitCode::MmuSetup)
        }
    }

    let dtb_addr = boot::dtb_address(r2);
    let dtb = match read_dtb_header(dtb_addr, image_pa) {
        Ok(dtb) => dtb,
        Err(e) => {
            defmt::error!("hyp: {}", e);
            semihost::exit(ExitCode::BadDtb)
        }
    };
    defmt::info!(
        "hyp: DTB at {=u32:#010x}{=str}: magic {=u32:#010x} ok, totalsize {=u32} bytes, version {=u32} (compatible with {=u32})",
        dtb.addr,
        if r2 == 0 { " (r2 = 0: start of RAM)" } else { "" },
        boot::FDT_MAGIC,
        dtb.size,
        dtb.version,
        dtb.last_comp_version
    );

    let dtb_va = match arch::mmu::map_early_dtb(dtb.addr, dtb.used) {
        Ok(va) => {
            defmt::info!("hyp: DTB's {=u32} used bytes at {=u32:#010x} (fixmap)", dtb.used, va);
            va
        }
        Err(e) => {
            defmt::error!("hyp: cannot map the DTB: {}", e);
            semihost::exit(if matches!(e, arch::mmu::MmuError::DtbTooLarge { .. }) {
                ExitCode::BadDtb
            } else {
                ExitCode::MmuSetup
            })
        }
    };

    if !arch::trap_selftest() {
        defmt::error!("hyp: trap self-test: registers came back wrong from HVC");
        semihost::exit(ExitCode::UnhandledTrap)
    }
    defmt::info!("hyp: trap path ok (HVC from Hyp mode: frame saved, handled, restored, eret)");

    // The tree's used part, read through the fixmap, copied to the heap as a
    // whole blob; then the early window goes.
    let early = arch::phys::dtb_bytes(dtb_va, dtb.used);
    if early.get(4..8) != Some(&dtb.size.to_be_bytes()[..])
        || early.get(..4) != Some(&boot::FDT_MAGIC.to_be_bytes()[..])
    {
        defmt::error!("hyp: the DTB reads differently with the MMU on");
        semihost::exit(ExitCode::MmuSetup)
    }
    let blob: &'static [u8] = match carve_core::dt::header::trimmed(early, dtb.size as usize) {
        Ok(copy) => alloc::vec::Vec::leak(copy),
        Err(e) => {
            defmt::error!("dt: {}", defmt::Display2Format(&e));
            semihost::exit(ExitCode::BadDtb)
        }
    };
    if let Err(e) = arch::mmu::unmap_early_dtb(dtb_va, dtb.used) {
        defmt::error!("hyp: unmapping the early DT window: {}", e);
        semihost::exit(ExitCode::MmuSetup)
    }
    let tree = match carve_core::dt::Tree::parse(blob) {
        Ok(t) => t,
        Err(e) => {
            defmt::error!("dt: {}", defmt::Display2Format(&e));
            semihost::exit(ExitCode::BadDtb)
        }
    };
    let machine = match carve_core::dt::Machine::from_tree(&tree) {
        Ok(m) => m,
        Err(e) => {
            defmt::error!("dt: {}", defmt::Display2Format(&e));
            semihost::exit(ExitCode::BadDtb)
        }
    };
    log_to_uart(&machine);
    board_control(&machine);
    let page = |a: usize| a as u64 & !0xfff;
    // The monitor's own command line (`vmalloc=`) shapes its layout before planning.
    let layout_config =
        match carve_core::plan::bootargs::layout_config(machine.bootargs.as_deref(), &Default::default()) {
            Ok(c) => c,
            Err(e) => {
                defmt::error!("plan: {}", defmt::Display2Format(&e));
                semihost::exit(ExitCode::BadPlan)
            }
        };
    let config = carve_core::plan::PlanConfig {
        layout: layout_config,
        monitor_image: carve_core::plan::MonitorImage::At(range(image_pa.0 & !0xfff, (image_pa.1 + 0xfff) & !0xfff)),
        monitor_extra: alloc::vec![range(page(dtb.addr as usize), page(dtb.addr as usize + dtb.size as usize + 0xfff))],
        ..Default::default()
    };
    let plan = match carve_core::plan::plan(&machine, &config) {
        Ok(p) => p,
        Err(e) => {
            defmt::error!("plan: {}", defmt::Display2Format(&e));
            semihost::exit(ExitCode::BadPlan)
        }
    };
    if let Err(e) = carve_core::plan::verify(&plan) {
        defmt::error!("plan: broken invariant (a bug in carve): {=str}", e.as_str());
        semihost::exit(ExitCode::Panic)
    }
    report::log_plan(&machine, &plan);
    defmt::info!(
        "hyp: heap {=usize} KiB in use, {=usize} KiB free",
        arch::heap::used() / 1024,
        arch::heap::free() / 1024
    );
    match arch::mmu::map_linear(&plan.monitor.lowmem) {
        Ok(s) => defmt::info!(
            "hyp: lowmem linear map on: {=u32} 1 GiB + {=u32} 2 MiB blocks + {=u32} pages",
            s.blocks_1g,
            s.blocks_2m,
            s.pages_4k
        ),
        Err(e) => {
            defmt::error!("hyp: cannot map lowmem: {}", e);
            semihost::exit(ExitCode::MmuSetup)
        }
    }

    let figures = match mm::init(&plan) {
        Ok(f) => f,
        Err(e) => {
            defmt::error!("mm: {=str}", e.as_str());
            semihost::exit(ExitCode::MmuSetup)
        }
    };
    mm::init_kmap_atomic(&plan);
    window::init(&plan);
    mm::log_meminfo(&plan, &figures);
    if mm::selftest_has(machine.bootargs.as_deref(), "cma") {
        defmt::info!("cma: test calls enabled (carve.selftest=cma)");
        vm::enable_cma_test_calls();
    }
    if mm::selftest_requested(machine.bootargs.as_deref()) {
        let ok = mm::selftest(&plan, &figures);
        if plan.guests.is_empty() {
            semihost::exit(if ok { ExitCode::Success } else { ExitCode::Panic })
        }
    }

    if plan.guests.is_empty() {
        defmt::info!("hyp: no guest under /chosen: nothing to run");
        semihost::exit(ExitCode::Success)
    }
    *vm::PLAN.lock() = Some((machine.clone(), plan.clone()));
    vm::start(&tree, &machine, &plan)
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
    match (&machine.cpu_start, &machine.gic) {
        (Some(CpuStart::Psci), _) => {
            defmt::info!("hyp: CPUs start through PSCI CPU_ON (SMC)");
            arch::smp::use_psci();
        }
        (Some(CpuStart::VexpressSysFlags { sysreg }), Some(gic)) => {
            let gicd = arch::mmu::map_board(BoardPage::GicDistributor, gic.distributor.start());
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

/// Maps the FDT header at physical `addr` in the fixmap and checks it; `image`
/// is the monitor's physical `[start, end)`.
#[cfg(target_arch = "arm")]
fn read_dtb_header(addr: u32, image: (u64, u64)) -> Result<boot::Dtb, boot::DtbError> {
    if addr & 7 != 0 {
        return Err(boot::DtbError::Misaligned { addr });
    }
    let va = arch::mmu::map_early_dtb(addr, boot::FDT_HEADER_SIZE)
        .map_err(|_| boot::DtbError::BadRange { addr, totalsize: boot::FDT_HEADER_SIZE })?;
    let checked = boot::check_dtb(addr, arch::phys::dtb_bytes(va, boot::FDT_HEADER_SIZE), image);
    if let Err(e) = arch::mmu::unmap_early_dtb(va, boot::FDT_HEADER_SIZE) {
        defmt::error!("hyp: unmapping the DTB's header: {}", e);
        semihost::exit(ExitCode::MmuSetup)
    }
    checked
}

/// A physical range from bounds the monitor computed itself (its image, its DTB).
#[cfg(target_arch = "arm")]
fn range(start: u64, end: u64) -> carve_core::addr::PhysRange {
    carve_core::addr::PhysRange::from_bounds(start, end)
        .unwrap_or(carve_core::addr::PhysRange { base: carve_core::addr::PhysAddr::new(0), size: 0 })
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
