//! Guest traps: PSCI calls (HVC, or a trapped SMC) and stage-2 faults.
//!
//! HSR.EC values (Arm ARM B3.13.6): 0x12 HVC (ELR_hyp already past it), 0x13
//! SMC trapped by HCR.TSC (ELR_hyp at the SMC: step over it), 0x20 prefetch
//! abort and 0x24 data abort from a guest (stage-2). The faulting IPA is
//! HPFAR[31:4] (IPA[39:12]) with the page offset from HDFAR.

use aarch32_cpu::register::{Hdfar, Hifar, Hpfar};
use carve_core::vm::psci::{Action, Call, GuestCpus, SUCCESS};

use super::VM;
use crate::arch::guest::firmware_psci;
use crate::arch::semihost::{self, ExitCode};
use crate::arch::vectors::TrapFrame;

const EC_HVC: u32 = 0x12;
const EC_SMC: u32 = 0x13;
const EC_IABT_LOWER: u32 = 0x20;
const EC_DABT_LOWER: u32 = 0x24;
/// PSCI's INTERNAL_FAILURE: the firmware refused to start a physical CPU.
const INTERNAL_FAILURE: i32 = -6;

/// Handles a trap from the guest on this CPU; returning resumes it.
pub fn handle(frame: &mut TrapFrame, hsr: u32) {
    let ec = hsr >> 26;
    let mut guard = VM.lock();
    let Some(vm) = guard.as_mut() else {
        drop(guard);
        defmt::error!("vm: a guest trap (HSR {=u32:#010x}) with no guest", hsr);
        semihost::exit(ExitCode::UnhandledTrap)
    };
    vm.traps += 1;
    match ec {
        EC_HVC | EC_SMC => {
            if ec == EC_SMC {
                // HSR.IL: 32-bit instruction (4 bytes) or 16-bit Thumb (2).
                frame.elr = frame.elr.wrapping_add(if hsr & (1 << 25) != 0 { 4 } else { 2 });
            }
            let call = Call::decode([frame.r[0], frame.r[1], frame.r[2], frame.r[3]]);
            let caller = (crate::arch::mpidr() & 0xff).wrapping_sub(vm.first_cpu) as usize;
            let ram = vm.ram();
            let mpidrs = vm.vcpu_mpidr.clone();
            let mut cpus = GuestCpus { mpidr: &mpidrs, power: &mut vm.power, ram };
            match cpus.handle(caller, call) {
                Action::Return(v) => frame.r[0] = v,
                Action::StartVcpu { vcpu, entry, context } => {
                    vm.pending[vcpu] = Some((entry, context));
                    let target = vm.pcpu_mpidr[vcpu] as u32;
                    let cpu = vm.first_cpu + vcpu as u32;
                    drop(guard);
                    let r = firmware_psci(
                        carve_core::vm::psci::CPU_ON,
                        target,
                        crate::arch::secondary_entry(),
                        cpu,
                    );
                    if r != SUCCESS {
                        defmt::error!("vm: firmware CPU_ON of CPU {=u32} (MPIDR {=u32:#x}) failed: {=i32}", cpu, target, r);
                        let mut guard = VM.lock();
                        if let Some(vm) = guard.as_mut() {
                            vm.pending[vcpu] = None;
                            vm.power[vcpu] = carve_core::vm::psci::Power::Off;
                        }
                        frame.r[0] = INTERNAL_FAILURE as u32;
                    } else {
                        frame.r[0] = SUCCESS as u32;
                    }
                }
                Action::StopVcpu => {
                    drop(guard);
                    defmt::info!("vm: vCPU {=usize} off", caller);
                    firmware_psci(carve_core::vm::psci::CPU_OFF, 0, 0, 0);
                    defmt::error!("vm: firmware CPU_OFF returned");
                    semihost::exit(ExitCode::UnhandledTrap)
                }
                Action::SystemOff => {
                    defmt::info!("vm: {=str} powered off (SYSTEM_OFF)", vm.plan.name.as_str());
                    defmt::info!("traps: {=u64}", vm.traps);
                    semihost::exit(ExitCode::Success)
                }
                Action::SystemReset => {
                    defmt::info!("vm: {=str} asked for SYSTEM_RESET; restarting guests is not supported yet: stopping", vm.plan.name.as_str());
                    defmt::info!("traps: {=u64}", vm.traps);
                    semihost::exit(ExitCode::Success)
                }
            }
        }
        EC_IABT_LOWER | EC_DABT_LOWER => {
            let far = if ec == EC_DABT_LOWER { Hdfar::read().0 } else { Hifar::read().0 };
            // HPFAR[31:4] holds IPA[39:12]: build the IPA in 64 bits.
            let ipa = (u64::from(Hpfar::read().0 >> 4) << 12) | u64::from(far & 0xfff);
            defmt::error!(
                "vm: {=str}: stage-2 {=str} abort at IPA {=u64:#012x} (not mapped for it), PC {=u32:#010x}, HSR {=u32:#010x}{=str}",
                vm.plan.name.as_str(),
                if ec == EC_DABT_LOWER { "data" } else { "instruction" },
                ipa,
                frame.elr,
                hsr,
                if ec == EC_DABT_LOWER && hsr & (1 << 6) != 0 { " (write)" } else { "" }
            );
            defmt::error!("vm: {=str} stopped after {=u64} traps", vm.plan.name.as_str(), vm.traps);
            semihost::exit(ExitCode::GuestFault)
        }
        _ => {
            defmt::error!(
                "vm: {=str}: unhandled trap EC {=u32:#04x} HSR {=u32:#010x} at PC {=u32:#010x}; stopping it",
                vm.plan.name.as_str(),
                ec,
                hsr,
                frame.elr
            );
            semihost::exit(ExitCode::UnhandledTrap)
        }
    }
}
