//! Guest traps: PSCI and carve calls (HVC, or a trapped SMC), emulated MMIO (the vGIC's GICD, the shared console's UARTs), stage-2 faults.
//!
//! The architecture layer hands over the HSR as a [`Syndrome`], which
//! carve-core decodes (Arm ARM B3.13.6): an HVC (ELR_hyp already past it), an
//! SMC trapped by HCR.TSC (ELR_hyp at the SMC: step over it by HSR.IL), and
//! prefetch and data aborts from a guest (stage-2). The faulting IPA is
//! HPFAR[31:4] (IPA[39:12]) with the page offset from HDFAR; a data abort
//! with a valid ISS says the access size, the register and the direction,
//! which is what MMIO emulation needs.

use aarch32_cpu::register::{Hdfar, Hifar, Hpfar};
use carve_core::dt::machine::FaultPolicy;
use carve_core::syndrome::{Abort, Class, Syndrome};
use carve_core::vm::hypercall as hc;
use carve_core::vm::psci::{Action, Call, GuestCpus, Power, INTERNAL_FAILURE, SUCCESS};

use super::inject::{self, Abort as Inject};
use super::{Ending, Vm, PLAN, VMS};
use crate::arch::guest;
use crate::arch::mmu;
use crate::arch::semihost::{self, ExitCode};
use crate::arch::vectors::TrapFrame;

/// This physical CPU's number (Aff0 of MPIDR).
fn this_cpu() -> u32 {
    crate::arch::mpidr() & 0xff
}

/// What to do once the lock is released.
enum After {
    Resume,
    /// The guest ended: end the run with this status, or park this CPU.
    Ended(Option<ExitCode>),
    /// Start a physical CPU for a vCPU: (firmware target MPIDR, CPU number, VM index, vCPU).
    StartCpu(u32, u32, usize, usize),
    /// Stop this CPU (a vCPU's CPU_OFF).
    CpuOff,
    /// Restarting guest `index` from vCPU `caller`: wait until its other vCPUs stopped, then rebuild it.
    AwaitStop(usize, usize),
    /// The guest was rebuilt from vCPU `caller` (not vCPU 0), whose CPU did not
    /// wait for it: start vCPU 0's CPU (firmware target MPIDR, CPU number), then stop this one.
    BootVcpu0(u32, u32),
    /// This CPU's vCPU 0 stopped for a restart: it waits in the monitor for the fresh boot.
    AwaitBoot,
}

/// How long a restart waits for the other vCPUs to stop: 1 s of counter time.
const STOP_WAIT_MS: u64 = 1000;

/// Handles a trap from the guest on this CPU; returning resumes it.
pub fn handle(frame: &mut TrapFrame, hsr: Syndrome) {
    let cpu = this_cpu();
    let after = {
        let mut vms = VMS.lock();
        let Some(index) = vms.iter().position(|v| v.vcpu_on(cpu).is_some()) else {
            drop(vms);
            defmt::error!("vm: a guest trap (HSR {=u32:#010x}) on CPU {=u32}, which runs no guest", hsr.raw(), cpu);
            semihost::exit(ExitCode::UnhandledTrap)
        };
        if vms[index].stopping_any {
            stop_or_dispatch(&mut vms, index, cpu, frame, hsr)
        } else {
            dispatch(&mut vms, index, cpu, frame, hsr)
        }
    };
    if !matches!(after, After::Resume) {
        after_trap(after, cpu, frame)
    }
}

/// A trap of a guest some of whose vCPUs are asked to stop (a restart under way).
#[inline(never)] // off the hot trap path
fn stop_or_dispatch(vms: &mut [Vm], index: usize, cpu: u32, frame: &mut TrapFrame, hsr: Syndrome) -> After {
    let vcpu = vms[index].vcpu_on(cpu).unwrap_or(0);
    if super::stop_if_asked(&mut vms[index], vcpu) {
        if vcpu == 0 {
            After::AwaitBoot
        } else {
            After::CpuOff
        }
    } else {
        dispatch(vms, index, cpu, frame, hsr)
    }
}

/// What a trap that does not simply resume leads to, with the guests' lock released.
#[inline(never)] // off the hot trap path
fn after_trap(after: After, cpu: u32, frame: &mut TrapFrame) {
    let after = match after {
        After::AwaitStop(index, caller) => await_stop(index, caller, frame),
        other => other,
    };
    match after {
        After::Resume | After::AwaitStop(..) => {}
        After::BootVcpu0(target, pcpu) => {
            let mut r = carve_core::vm::psci::ALREADY_ON;
            // Its CPU may still be on its way off from the stop.
            for _ in 0..100_000 {
                r = crate::arch::smp::cpu_on(pcpu, target);
                if r != carve_core::vm::psci::ALREADY_ON {
                    break;
                }
            }
            if r != SUCCESS {
                defmt::error!("vm: CPU_ON of CPU {=u32} for the restarted vCPU 0 failed: {=i32}", pcpu, r);
            }
            crate::arch::smp::cpu_off(cpu);
            super::run_cpu(cpu)
        }
        After::Ended(code) => super::after_end(code),
        After::AwaitBoot => super::run_cpu(cpu),
        After::StartCpu(target, pcpu, index, vcpu) => {
            let r = crate::arch::smp::cpu_on(pcpu, target);
            if r == SUCCESS {
                frame.r[0] = SUCCESS as u32;
            } else {
                defmt::error!("vm: CPU_ON of CPU {=u32} (MPIDR {=u32:#x}) failed: {=i32}", pcpu, target, r);
                let mut vms = VMS.lock();
                vms[index].pending[vcpu] = None;
                vms[index].power[vcpu] = Power::Off;
                frame.r[0] = INTERNAL_FAILURE as u32;
            }
        }
        After::CpuOff => {
            // Off, or (a boot monitor's CPUs) back in the pen until started again.
            crate::arch::smp::cpu_off(cpu);
            super::run_cpu(cpu)
        }
    }
}

#[inline(always)] // the hot trap path: HVC and MMIO go through here
fn dispatch(vms: &mut [Vm], index: usize, cpu: u32, frame: &mut TrapFrame, hsr: Syndrome) -> After {
    vms[index].traps += 1;
    match hsr.class() {
        class @ (Class::Hvc | Class::Smc) => {
            if class == Class::Smc {
                frame.elr = frame.elr.wrapping_add(hsr.instruction_len());
            }
            if hc::is_carve_call(frame.r[0]) {
                frame.r[0] = carve_call(vms, index, frame) as u32;
                return After::Resume;
            }
            psci_call(vms, index, cpu, frame)
        }
        Class::PrefetchAbortFromGuest | Class::DataAbortFromGuest => match hsr.abort() {
            Some(a) => abort(vms, index, frame, hsr, a),
            None => unhandled(vms, index, frame, hsr),
        },
        _ => unhandled(vms, index, frame, hsr),
    }
}

/// A trap the monitor does not serve: the guest is stopped.
#[inline(never)] // off the hot trap path
fn unhandled(vms: &mut [Vm], index: usize, frame: &TrapFrame, hsr: Syndrome) -> After {
    defmt::error!(
        "vm: {=str}: unhandled trap EC {=u8:#04x} HSR {=u32:#010x} at PC {=u32:#010x}; stopping it",
        vms[index].name(),
        hsr.ec(),
        hsr.raw(),
        frame.elr
    );
    After::Ended(super::mark_ended(vms, index, Ending::Faulted))
}

#[inline(never)] // off the HVC fast path: keeps carve calls short
fn psci_call(vms: &mut [Vm], index: usize, cpu: u32, frame: &mut TrapFrame) -> After {
    let call = Call::decode([frame.r[0], frame.r[1], frame.r[2], frame.r[3]]);
    let vm = &mut vms[index];
    let caller = vm.vcpu_on(cpu).unwrap_or(0);
    let mpidrs = vm.vcpu_mpidr.clone();
    let ram = vm.ram();
    let mut cpus = GuestCpus { mpidr: &mpidrs, power: &mut vm.power, ram };
    match cpus.handle(caller, call) {
        Action::Return(v) => {
            frame.r[0] = v;
            After::Resume
        }
        Action::StartVcpu { vcpu, entry, context } => {
            let mut f = TrapFrame { r: [0; 13], lr_usr: 0, elr: entry.raw() as u32, spsr: guest::SPSR_SVC_MASKED };
            f.r[0] = context;
            vm.pending[vcpu] = Some(f);
            After::StartCpu(vm.pcpu_mpidr[vcpu] as u32, vm.cpu_ids[vcpu], index, vcpu)
        }
        Action::StopVcpu => {
            defmt::info!("vm: {=str}: vCPU {=usize} off", vm.name(), caller);
            After::CpuOff
        }
        Action::SystemOff => {
            defmt::info!("vm: {=str} powered off (SYSTEM_OFF)", vm.name());
            defmt::info!("traps: {=u64}", vm.traps);
            super::log_touches(vm);
            After::Ended(super::mark_ended(vms, index, Ending::PoweredOff))
        }
        Action::SystemReset => {
            defmt::info!("vm: {=str} asked for SYSTEM_RESET after {=u64} traps", vm.name(), vm.traps);
            restart_or_end(vms, index, caller, frame)
        }
    }
}

/// Restarts guest `index` from its vCPU `caller` (on this CPU): stops the
/// others first ([`super::stop_others`]; the wait is [`await_stop`], with the
/// lock released), or ends the guest if that fails.
fn restart_or_end(vms: &mut [Vm], index: usize, caller: usize, frame: &mut TrapFrame) -> After {
    super::log_touches(&vms[index]);
    match super::stop_others(&mut vms[index], caller) {
        Ok(0) => rebuild(vms, index, caller, frame),
        Ok(_) => After::AwaitStop(index, caller),
        Err(e) => {
            defmt::error!("vm: restart failed: {=str}", e.as_str());
            After::Ended(super::mark_ended(vms, index, Ending::Faulted))
        }
    }
}

/// Waits (lock released) until every other vCPU of guest `index` stopped, then rebuilds it.
#[inline(never)] // off the hot trap path
fn await_stop(index: usize, caller: usize, frame: &mut TrapFrame) -> After {
    let t0 = crate::arch::counter();
    let limit = u64::from(crate::arch::counter_hz()) * STOP_WAIT_MS / 1000;
    loop {
        {
            let mut vms = VMS.lock();
            let waiting = vms[index].stopping.iter().filter(|&&s| s).count();
            if waiting == 0 {
                defmt::info!(
                    "vm: {=str}: every other vCPU stopped after {=u64} counter ticks",
                    vms[index].name(),
                    crate::arch::counter() - t0
                );
                return rebuild(&mut vms, index, caller, frame);
            }
            if crate::arch::counter() - t0 > limit {
                defmt::error!(
                    "vm: {=str}: {=usize} vCPU(s) did not stop within {=u64} ms for the restart: the guest is stopped",
                    vms[index].name(),
                    waiting,
                    STOP_WAIT_MS
                );
                return After::Ended(super::mark_ended(&mut vms, index, Ending::Faulted));
            }
        }
        for _ in 0..1000 {
            core::hint::spin_loop();
        }
    }
}

/// Rebuilds guest `index` ([`super::restart`]) once no other vCPU runs: vCPU 0
/// boots on this CPU if `caller` is vCPU 0, else on its own CPU, started for it.
fn rebuild(vms: &mut [Vm], index: usize, caller: usize, frame: &mut TrapFrame) -> After {
    let vm = &mut vms[index];
    if let Err(e) = super::restart(vm) {
        defmt::error!("vm: restart failed: {=str}", e.as_str());
        return After::Ended(super::mark_ended(vms, index, Ending::Faulted));
    }
    if caller != 0 {
        // vCPU 0's CPU waits in the monitor (it ran), or is off and is started for it.
        vm.power[caller] = Power::Off;
        return if vm.boot_cpu_waits {
            After::CpuOff
        } else {
            After::BootVcpu0(vm.pcpu_mpidr[0] as u32, vm.cpu_ids[0])
        };
    }
    let Some(fresh) = vm.pending[0].take() else {
        return After::Ended(super::mark_ended(vms, index, Ending::Faulted));
    };
    vm.power[0] = Power::On;
    let regs = vm.vcpu_regs(0);
    if regs.virtual_irqs {
        super::vgic::reset_cpu();
    }
    guest::reset_pl1();
    guest::configure(&regs);
    *frame = fresh;
    After::Resume
}

/// `CONSOLE_WRITE(ipa, len)`: the guest's bytes, gathered piece by piece
/// (they may cross from one movable page to another), logged with its name.
#[inline(never)] // off the hot trap path
fn console_write(vm: &mut Vm, frame: &TrapFrame) -> i32 {
    let (ipa, len) = (u64::from(frame.r[1]), frame.r[2].min(hc::CONSOLE_MAX));
    if len == 0 {
        return if vm.ram_pa(ipa, 1).is_some() { 0 } else { hc::INVALID_ADDRESS };
    }
    // Bytes the guest never wrote read as the zeroes its first touch would give it.
    if super::touch_range(vm, ipa, u64::from(len), &[]).is_err() {
        return hc::INVALID_ADDRESS;
    }
    let mut buf = [0u8; hc::CONSOLE_MAX as usize];
    let n = len as usize;
    let read = super::for_each_piece(vm, ipa, u64::from(len), |pa, off, k| {
        crate::window::read_phys(pa, &mut buf[off as usize..(off + k) as usize])
    });
    if read.is_err() {
        return hc::INVALID_ADDRESS;
    }
    let text = core::str::from_utf8(&buf[..n]).unwrap_or("(not UTF-8)");
    defmt::info!("{=str}: {=str}", vm.name(), text.trim_end_matches('\n'));
    n as i32
}

/// carve's own calls (see carve-abi, `hyp/abi/src/hypercall.rs`); the CMA
/// test calls only in a `selftest` build.
fn carve_call(vms: &mut [Vm], index: usize, frame: &TrapFrame) -> i32 {
    match frame.r[0] {
        hc::NOP => hc::SUCCESS,
        hc::CONSOLE_WRITE => console_write(&mut vms[index], frame),
        hc::INFO => match frame.r[1] {
            hc::INFO_FREE_TABLE_PAGES => mmu::free_table_pages().unwrap_or(-1),
            hc::INFO_VMID => i32::from(vms[index].vmid),
            hc::INFO_RESTARTS => vms[index].restarts as i32,
            _ => hc::INVALID_PARAMETERS,
        },
        #[cfg(feature = "selftest")]
        hc::CMA_TEST_ALLOC => super::selftest::cma_alloc(vms, index, frame.r[1], frame.r[2], frame.r[3]),
        #[cfg(feature = "selftest")]
        hc::CMA_TEST_STATUS => super::selftest::cma_status(&vms[index], frame.r[1]),
        #[cfg(feature = "selftest")]
        hc::CMA_TEST_FREE => super::selftest::cma_free(&vms[index]),
        hc::DUMP_MAP => {
            if let Some((machine, plan)) = PLAN.lock().as_ref() {
                crate::report::log_plan(machine, plan);
                // The counters too: /proc/meminfo's, the owners', the CMA pools', vmallocinfo.
                let figures = *crate::mm::FIGURES.lock();
                if let Some(f) = figures {
                    crate::mm::log_meminfo(plan, &f);
                }
            }
            hc::SUCCESS
        }
        _ => hc::NOT_SUPPORTED,
    }
}

/// A stage-2 abort: the GICD page, the emulated UART of a shared console and the test device are emulated (an access to the
/// first two the syndrome does not describe gets a data abort); anything else is a fault handled by the guest's policy.
fn abort(vms: &mut [Vm], index: usize, frame: &mut TrapFrame, hsr: Syndrome, a: Abort) -> After {
    let far = if a.is_data() { Hdfar::read().0 } else { Hifar::read().0 };
    // HPFAR[31:4] holds IPA[39:12]: build the IPA in 64 bits.
    let ipa = (u64::from(Hpfar::read().0 >> 4) << 12) | u64::from(far & 0xfff);
    if a.is_data() {
        // The GICD page, or the emulated UART of a shared console.
        let served = super::vgic::emulate(&mut vms[index], this_cpu(), frame, &a, ipa)
            .or_else(|| super::console::emulate(vms, index, frame, a, ipa));
        match served {
            Some(true) => {
                frame.elr = frame.elr.wrapping_add(hsr.instruction_len());
                return After::Resume;
            }
            Some(false) => {
                inject::abort(frame, Inject::Data { write: a.write() }, far);
                return After::Resume;
            }
            None => {}
        }
    }
    #[cfg(feature = "selftest")]
    if a.is_data()
        && super::selftest::is_testdev(ipa)
        && super::selftest::emulate_testdev(&mut vms[index], frame, a, ipa)
    {
        frame.elr = frame.elr.wrapping_add(hsr.instruction_len());
        return After::Resume;
    }
    let vm = &mut vms[index];
    if a.status().is_translation_or_permission() && super::fault_in(vm, ipa, a.write()) {
        // Guest RAM: mapped on this first touch, or meanwhile (another vCPU's touch, a CMA move); the access goes again.
        return After::Resume;
    }
    defmt::error!(
        "vm: {=str}: stage-2 {=str} abort at IPA {=u64:#012x} (not mapped for it), PC {=u32:#010x}, HSR {=u32:#010x}{=str}",
        vm.name(),
        if a.is_data() { "data" } else { "instruction" },
        ipa,
        frame.elr,
        hsr.raw(),
        if a.write() { " (write)" } else { "" }
    );
    match vm.on_fault {
        FaultPolicy::Inject => {
            inject::abort(frame, if a.is_data() { Inject::Data { write: a.write() } } else { Inject::Prefetch }, far);
            After::Resume
        }
        FaultPolicy::Reset => {
            defmt::info!("vm: {=str}: on-fault = reset", vm.name());
            let caller = vm.vcpu_on(this_cpu()).unwrap_or(0);
            restart_or_end(vms, index, caller, frame)
        }
        FaultPolicy::Stop => {
            defmt::error!("vm: {=str} stopped after {=u64} traps", vm.name(), vm.traps);
            After::Ended(super::mark_ended(vms, index, Ending::Faulted))
        }
    }
}
