//! Powering the board off: the mechanism the machine's device tree names.
//!
//! A board has no semihosting host to end the run, so the image a board
//! boots ends it the way the board's own software does: PSCI `SYSTEM_OFF`
//! through the firmware (an SMC, when the tree's `psci` node says
//! `method = "smc"`: QEMU `virt` and `orangepi-pc`), or the Versatile Express
//! motherboard's configuration controller (SYS_CFGCTRL function 8,
//! "shutdown", as the tree's `arm,vexpress-shutdown` node names it: the
//! board has no PSCI firmware). With neither, the CPU stops where it is.

// The QEMU test image ends through semihosting; it only records the mechanism.
#![cfg_attr(feature = "semihosting", allow(dead_code))]

use carve_core::dt::machine::PowerOff;
use spin::Mutex;

use super::guest::firmware_psci;

/// Versatile Express system registers (ARM DUI 0447J, 4.3): SYS_CFGDATA,
/// SYS_CFGCTRL (start bit 31, write bit 30, DCC [29:26], function [25:20],
/// site [17:16], position [15:12], device [11:0]) and SYS_CFGSTAT.
const SYS_CFGDATA: usize = 0xa0;
const SYS_CFGCTRL: usize = 0xa4;
const SYS_CFGSTAT: usize = 0xa8;
const CFGCTRL_START: u32 = 1 << 31;
const CFGCTRL_WRITE: u32 = 1 << 30;

/// How this machine powers off, once the device tree said.
#[derive(Clone, Copy, Debug)]
enum Mechanism {
    /// Not known yet, or the tree names none.
    None,
    /// PSCI SYSTEM_OFF through the firmware (SMC).
    Psci,
    /// A write to SYS_CFGCTRL of the system registers mapped at `va`.
    VexpressSysCfg { va: usize, ctrl: u32 },
}

static MECHANISM: Mutex<Mechanism> = Mutex::new(Mechanism::None);

/// Uses the machine's mechanism from now on; `sysreg_va` is where the
/// Versatile Express system registers are mapped, if the mechanism needs them.
pub fn set(off: &PowerOff, sysreg_va: Option<usize>) {
    let m = match (off, sysreg_va) {
        (PowerOff::Psci, _) => Mechanism::Psci,
        (PowerOff::VexpressSysCfg { dcc, function, site, position, device, .. }, Some(va)) => {
            let ctrl = CFGCTRL_START
                | CFGCTRL_WRITE
                | (dcc & 0xf) << 26
                | (function & 0x3f) << 20
                | (site & 0x3) << 16
                | (position & 0xf) << 12
                | (device & 0xfff);
            Mechanism::VexpressSysCfg { va, ctrl }
        }
        (PowerOff::VexpressSysCfg { .. }, None) => Mechanism::None,
    };
    *MECHANISM.lock() = m;
}

/// Powers the board off; returns only if the mechanism did not (or there is none).
pub fn off() {
    // The lock may be held by a CPU that stopped for good: do not wait for it.
    let m = MECHANISM.try_lock().map(|m| *m).unwrap_or(Mechanism::None);
    match m {
        Mechanism::None => {}
        Mechanism::Psci => {
            firmware_psci(carve_core::vm::psci::SYSTEM_OFF, 0, 0, 0);
        }
        Mechanism::VexpressSysCfg { va, ctrl } => {
            // SAFETY: `va` maps the system registers' page as Device memory for
            // good (the fixmap's board slot); SYS_CFGSTAT is cleared, the data
            // word written, then the request started, as the board's manual asks.
            unsafe {
                core::ptr::write_volatile((va + SYS_CFGSTAT) as *mut u32, 0);
                core::ptr::write_volatile((va + SYS_CFGDATA) as *mut u32, 0);
                core::ptr::write_volatile((va + SYS_CFGCTRL) as *mut u32, ctrl);
            }
            super::cache::dsb();
        }
    }
}
