//! PSCI as the monitor serves it to a guest: decoding calls and deciding answers.
//!
//! Arm Power State Coordination Interface, DEN0022D: function IDs (chapter 5),
//! return codes (5.2.2), CPU_ON/CPU_OFF/AFFINITY_INFO semantics (5.4-5.6).
//! Pure logic: the trap handler turns an [`Action`] into register writes,
//! a secondary CPU start, or the end of the guest.

use crate::addr::{Address, Ipa, IpaRange};

pub use carve_abi::psci::*;

/// A vCPU's power state as AFFINITY_INFO reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Power {
    On = 0,
    Off = 1,
    OnPending = 2,
}

/// What the guest asked, from r0-r3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    Version,
    Features(u32),
    CpuOn {
        target: u64,
        entry: u64,
        context: u64,
    },
    CpuOff,
    AffinityInfo {
        target: u64,
        level: u32,
    },
    MigrateInfoType,
    SystemOff,
    SystemReset,
    /// Anything else, including CPU_SUSPEND: NOT_SUPPORTED.
    Unknown(u32),
}

impl Call {
    /// Decodes the SMC32/SMC64 calling convention (for an AArch32 caller the
    /// 64-bit IDs carry 32-bit values in r1-r3).
    pub fn decode(r: [u32; 4]) -> Call {
        match r[0] {
            PSCI_VERSION => Call::Version,
            PSCI_FEATURES => Call::Features(r[1]),
            CPU_ON | CPU_ON_64 => Call::CpuOn { target: r[1] as u64, entry: r[2] as u64, context: r[3] as u64 },
            CPU_OFF => Call::CpuOff,
            AFFINITY_INFO | AFFINITY_INFO_64 => Call::AffinityInfo { target: r[1] as u64, level: r[2] },
            MIGRATE_INFO_TYPE => Call::MigrateInfoType,
            SYSTEM_OFF => Call::SystemOff,
            SYSTEM_RESET => Call::SystemReset,
            other => Call::Unknown(other),
        }
    }
}

/// What the monitor does about a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Write this to r0 and return to the guest.
    Return(u32),
    /// Start vCPU `vcpu` at `entry` with r0 = `context`; the caller answers SUCCESS.
    StartVcpu {
        vcpu: usize,
        entry: Ipa,
        context: u32,
    },
    /// Stop the calling vCPU (it does not return).
    StopVcpu,
    SystemOff,
    SystemReset,
}

/// The guest as PSCI sees it: its vCPUs' MPIDRs and its RAM.
pub struct GuestCpus<'a> {
    /// MPIDR affinity of each vCPU (as the guest's DT lists them).
    pub mpidr: &'a [u64],
    pub power: &'a mut [Power],
    pub ram: IpaRange,
}

fn code(c: i32) -> Action {
    Action::Return(c as u32)
}

impl GuestCpus<'_> {
    fn vcpu_of(&self, target: u64) -> Option<usize> {
        // Affinity fields only (MPIDR[23:0]); bit 31 (RES1 in MPIDR) is ignored.
        self.mpidr.iter().position(|m| m & 0x00ff_ffff == target & 0x00ff_ffff)
    }

    /// Decides the answer to `call` from vCPU `caller`. Updates power states.
    pub fn handle(&mut self, caller: usize, call: Call) -> Action {
        match call {
            Call::Version => Action::Return(VERSION_1_0),
            Call::Features(id) => match id {
                PSCI_VERSION | PSCI_FEATURES | CPU_ON | CPU_ON_64 | CPU_OFF | AFFINITY_INFO | AFFINITY_INFO_64
                | MIGRATE_INFO_TYPE | SYSTEM_OFF | SYSTEM_RESET => code(SUCCESS),
                _ => code(NOT_SUPPORTED),
            },
            Call::MigrateInfoType => Action::Return(MIGRATE_NOT_REQUIRED),
            Call::SystemOff => Action::SystemOff,
            Call::SystemReset => Action::SystemReset,
            Call::CpuOff => {
                if let Some(p) = self.power.get_mut(caller) {
                    *p = Power::Off;
                }
                Action::StopVcpu
            }
            Call::AffinityInfo { target, level } => {
                if level != 0 {
                    return code(INVALID_PARAMETERS);
                }
                match self.vcpu_of(target) {
                    Some(v) => Action::Return(self.power[v] as u32),
                    None => code(INVALID_PARAMETERS),
                }
            }
            Call::CpuOn { target, entry, context } => {
                let Some(v) = self.vcpu_of(target) else { return code(INVALID_PARAMETERS) };
                if !self.ram.contains(entry) {
                    return code(INVALID_ADDRESS);
                }
                match self.power[v] {
                    Power::On => code(ALREADY_ON),
                    Power::OnPending => code(ON_PENDING),
                    Power::Off => {
                        self.power[v] = Power::OnPending;
                        match Ipa::from_u64(entry) {
                            Some(entry) => Action::StartVcpu { vcpu: v, entry, context: context as u32 },
                            None => code(INVALID_ADDRESS),
                        }
                    }
                }
            }
            Call::Unknown(_) => code(NOT_SUPPORTED),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram() -> IpaRange {
        IpaRange::from_raw(0x4000_0000, 0x3000_0000).unwrap()
    }

    #[test]
    fn boot_sequence_of_a_linux_guest() {
        let mpidr = [0x8000_0000, 0x8000_0001];
        let mut power = [Power::On, Power::Off];
        let mut g = GuestCpus { mpidr: &mpidr, power: &mut power, ram: ram() };
        assert_eq!(g.handle(0, Call::decode([PSCI_VERSION, 0, 0, 0])), Action::Return(VERSION_1_0));
        assert_eq!(g.handle(0, Call::decode([PSCI_FEATURES, CPU_ON, 0, 0])), Action::Return(0));
        assert_eq!(g.handle(0, Call::decode([PSCI_FEATURES, CPU_SUSPEND, 0, 0])), Action::Return(u32::MAX));
        assert_eq!(g.handle(0, Call::decode([MIGRATE_INFO_TYPE, 0, 0, 0])), Action::Return(2));
        assert_eq!(
            g.handle(0, Call::decode([CPU_ON, 1, 0x4010_0000, 7])),
            Action::StartVcpu { vcpu: 1, entry: Ipa::new(0x4010_0000), context: 7 }
        );
        assert_eq!(g.handle(0, Call::decode([AFFINITY_INFO, 1, 0, 0])), Action::Return(Power::OnPending as u32));
        assert_eq!(g.handle(0, Call::decode([CPU_ON, 1, 0x4010_0000, 7])), Action::Return(ON_PENDING as u32));
        assert_eq!(g.handle(1, Call::decode([CPU_OFF, 0, 0, 0])), Action::StopVcpu);
        assert_eq!(g.handle(0, Call::decode([AFFINITY_INFO, 1, 0, 0])), Action::Return(Power::Off as u32));
        assert_eq!(g.handle(0, Call::decode([SYSTEM_OFF, 0, 0, 0])), Action::SystemOff);
    }

    #[test]
    fn bad_arguments_get_the_specs_codes() {
        let mpidr = [0x8000_0000];
        let mut power = [Power::On];
        let mut g = GuestCpus { mpidr: &mpidr, power: &mut power, ram: ram() };
        // A CPU the guest does not own.
        assert_eq!(g.handle(0, Call::decode([CPU_ON, 3, 0x4000_0000, 0])), Action::Return(INVALID_PARAMETERS as u32));
        // An entry point outside its RAM.
        assert_eq!(g.handle(0, Call::decode([CPU_ON, 0, 0x1000, 0])), Action::Return(INVALID_ADDRESS as u32));
        // Itself: already on.
        assert_eq!(g.handle(0, Call::decode([CPU_ON, 0, 0x4000_0000, 0])), Action::Return(ALREADY_ON as u32));
        assert_eq!(g.handle(0, Call::decode([0x8400_00ff, 0, 0, 0])), Action::Return(NOT_SUPPORTED as u32));
        assert_eq!(g.handle(0, Call::decode([AFFINITY_INFO, 0, 1, 0])), Action::Return(INVALID_PARAMETERS as u32));
    }
}
