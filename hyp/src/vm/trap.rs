//! Guest traps: PSCI and carve calls (HVC, or a trapped SMC), emulated MMIO, stage-2 faults.
//!
//! HSR.EC values (Arm ARM B3.13.6): 0x12 HVC (ELR_hyp already past it), 0x13
//! SMC trapped by HCR.TSC (ELR_hyp at the SMC: step over it), 0x20 prefetch
//! abort and 0x24 data abort from a guest (stage-2). The faulting IPA is
//! HPFAR[31:4] (IPA[39:12]) with the page offset from HDFAR; a data abort's
//! ISS says, when ISV is set, the access size (SAS), the register (SRT) and
//! the direction (WnR), which is what MMIO emulation needs (B3.13.6).

use aarch32_cpu::register::{Hdfar, Hifar, Hpfar};
use carve_core::dt::machine::FaultPolicy;
use carve_core::vm::hypercall as hc;
use carve_core::vm::psci::{Action, Call, GuestCpus, Power, INTERNAL_FAILURE, SUCCESS};

use super::inject::{self, Abort};
use super::{Ending, Vm, PLAN, VMS};
use crate::arch::guest;
use crate::arch::mmu;
use crate::arch::semihost::{self, ExitCode};
use crate::arch::vectors::TrapFrame;

const EC_HVC: u32 = 0x12;
const EC_SMC: u32 = 0x13;
const EC_IABT_LOWER: u32 = 0x20;
const EC_DABT_LOWER: u32 = 0x24;
/// HSR.IL: the trapped instruction was 32-bit.
const HSR_IL: u32 = 1 << 25;

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
}

/// Handles a trap from the guest on this CPU; returning resumes it.
pub fn handle(frame: &mut TrapFrame, hsr: u32) {
    let cpu = this_cpu();
    let after = {
        let mut vms = VMS.lock();
        let Some(index) = vms.iter().position(|v| v.vcpu_on(cpu).is_some()) else {
            drop(vms);
            defmt::error!("vm: a guest trap (HSR {=u32:#010x}) on CPU {=u32}, which runs no guest", hsr, cpu);
            semihost::exit(ExitCode::UnhandledTrap)
        };
        dispatch(&mut vms, index, cpu, frame, hsr)
    };
    match after {
        After::Resume => {}
        After::Ended(code) => super::after_end(code),
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

fn dispatch(vms: &mut [Vm], index: usize, cpu: u32, frame: &mut TrapFrame, hsr: u32) -> After {
    let ec = hsr >> 26;
    vms[index].traps += 1;
    match ec {
        EC_HVC | EC_SMC => {
            if ec == EC_SMC {
                frame.elr = frame.elr.wrapping_add(if hsr & HSR_IL != 0 { 4 } else { 2 });
            }
            let id = frame.r[0];
            if id == hc::CMA_TEST_ALLOC {
                frame.r[0] = crate::cma::test_alloc(vms, index, frame.r[1], frame.r[2], frame.r[3]) as u32;
                return After::Resume;
            }
            if hc::is_carve_call(id) {
                frame.r[0] = carve_call(&mut vms[index], frame) as u32;
                return After::Resume;
            }
            psci_call(vms, index, cpu, frame)
        }
        EC_IABT_LOWER | EC_DABT_LOWER => abort(vms, index, frame, hsr),
        _ => {
            let vm = &vms[index];
            defmt::error!(
                "vm: {=str}: unhandled trap EC {=u32:#04x} HSR {=u32:#010x} at PC {=u32:#010x}; stopping it",
                vm.name(),
                ec,
                hsr,
                frame.elr
            );
            After::Ended(super::mark_ended(vms, index, Ending::Faulted))
        }
    }
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
            After::Ended(super::mark_ended(vms, index, Ending::PoweredOff))
        }
        Action::SystemReset => {
            defmt::info!("vm: {=str} asked for SYSTEM_RESET after {=u64} traps", vm.name(), vm.traps);
            restart_or_end(vms, index, frame)
        }
    }
}

/// Boots the guest again in place (its vCPU 0 is this CPU), or ends it if that fails.
fn restart_or_end(vms: &mut [Vm], index: usize, frame: &mut TrapFrame) -> After {
    match super::restart(&mut vms[index]) {
        Ok(fresh) => {
            *frame = fresh;
            After::Resume
        }
        Err(e) => {
            defmt::error!("vm: restart failed: {=str}", e.as_str());
            After::Ended(super::mark_ended(vms, index, Ending::Faulted))
        }
    }
}

/// `CONSOLE_WRITE(ipa, len)`: the guest's bytes, gathered piece by piece
/// (they may cross from one movable page to another), logged with its name.
#[inline(never)] // off the hot trap path
fn console_write(vm: &Vm, frame: &TrapFrame) -> i32 {
    let (ipa, len) = (u64::from(frame.r[1]), frame.r[2].min(hc::CONSOLE_MAX));
    if len == 0 {
        return if vm.ram_pa(ipa, 1).is_some() { 0 } else { hc::INVALID_ADDRESS };
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

/// carve's own calls (see carve_core::vm::hypercall).
fn carve_call(vm: &mut Vm, frame: &TrapFrame) -> i32 {
    match frame.r[0] {
        hc::NOP => hc::SUCCESS,
        hc::CONSOLE_WRITE => console_write(vm, frame),
        hc::INFO => match frame.r[1] {
            hc::INFO_FREE_TABLE_PAGES => mmu::free_table_pages().unwrap_or(-1),
            hc::INFO_VMID => i32::from(vm.vmid),
            hc::INFO_RESTARTS => vm.restarts as i32,
            _ => hc::INVALID_PARAMETERS,
        },
        hc::CMA_TEST_STATUS => crate::cma::test_status(vm, frame.r[1]),
        hc::CMA_TEST_FREE => crate::cma::test_free(vm),
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

/// A stage-2 abort: the test device is emulated; anything else is a fault handled by the guest's policy.
fn abort(vms: &mut [Vm], index: usize, frame: &mut TrapFrame, hsr: u32) -> After {
    let data = hsr >> 26 == EC_DABT_LOWER;
    let far = if data { Hdfar::read().0 } else { Hifar::read().0 };
    // HPFAR[31:4] holds IPA[39:12]: build the IPA in 64 bits.
    let ipa = (u64::from(Hpfar::read().0 >> 4) << 12) | u64::from(far & 0xfff);
    let vm = &mut vms[index];
    if data && super::is_testdev(ipa) && emulate_testdev(vm, frame, hsr, ipa) {
        frame.elr = frame.elr.wrapping_add(if hsr & HSR_IL != 0 { 4 } else { 2 });
        return After::Resume;
    }
    let write = data && hsr & (1 << 6) != 0;
    if moved_meanwhile(vm, ipa, write, hsr) {
        // A page that was being moved (CMA): its entry is switched now; the access goes again.
        vm.migration_waits += 1;
        return After::Resume;
    }
    defmt::error!(
        "vm: {=str}: stage-2 {=str} abort at IPA {=u64:#012x} (not mapped for it), PC {=u32:#010x}, HSR {=u32:#010x}{=str}",
        vm.name(),
        if data { "data" } else { "instruction" },
        ipa,
        frame.elr,
        hsr,
        if write { " (write)" } else { "" }
    );
    match vm.on_fault {
        FaultPolicy::Inject => {
            inject::abort(frame, if data { Abort::Data { write } } else { Abort::Prefetch }, far);
            After::Resume
        }
        FaultPolicy::Reset => {
            defmt::info!("vm: {=str}: on-fault = reset", vm.name());
            restart_or_end(vms, index, frame)
        }
        FaultPolicy::Stop => {
            defmt::error!("vm: {=str} stopped after {=u64} traps", vm.name(), vm.traps);
            After::Ended(super::mark_ended(vms, index, Ending::Faulted))
        }
    }
}

/// Whether the fault at `ipa` (syndrome `hsr`) came from a movable page the monitor was moving
/// (write-protected, or invalid for break-before-make) and the page is now
/// mapped for the access: the mover held the guests' lock this trap waited on.
#[inline(never)] // off the hot trap path
fn moved_meanwhile(vm: &mut Vm, ipa: u64, write: bool, hsr: u32) -> bool {
    // Only a translation fault (the entry invalid for break-before-make, FSC
    // 0b0001LL) or a permission fault (write-protected for the copy, 0b0011LL)
    // comes from a move; any other status is a real fault.
    if !matches!(hsr & 0x3c, 0x04 | 0x0c) {
        return false;
    }
    let Some(at) = <carve_core::addr::Ipa as carve_core::addr::Address>::from_u64(ipa) else { return false };
    if vm.movable_index(at).is_none() {
        return false;
    }
    let vttbr = vm.vttbr();
    let stage2 = &vm.stage2;
    mmu::with_guest_tables(vttbr, |tm| stage2.translate(tm, at))
        .flatten()
        .is_some_and(|t| !write || t.attrs.access == carve_core::mm::table::Access::ReadWrite)
}

/// Emulates an access to the test device from the syndrome; `false` if it cannot (no valid ISS).
fn emulate_testdev(vm: &mut Vm, frame: &mut TrapFrame, hsr: u32, ipa: u64) -> bool {
    let isv = hsr & (1 << 24) != 0;
    let sas = (hsr >> 22) & 0b11; // 0 byte, 1 halfword, 2 word
    let srt = ((hsr >> 16) & 0xf) as usize;
    let write = hsr & (1 << 6) != 0;
    if !isv || srt > 12 {
        return false; // no syndrome, or SP/LR/PC (banked): not emulated
    }
    if write {
        return true; // writes are ignored
    }
    let offset = ipa - hc::TESTDEV_IPA;
    let value = match offset & !3 {
        hc::TESTDEV_COUNTER => {
            vm.testdev_reads = vm.testdev_reads.wrapping_add(1);
            vm.testdev_reads
        }
        hc::TESTDEV_ID => hc::TESTDEV_MAGIC,
        _ => 0,
    };
    let shift = (offset & 3) * 8;
    let v = value >> shift;
    frame.r[srt] = match sas {
        0 => v & 0xff,
        1 => v & 0xffff,
        _ => v,
    };
    true
}
