//! smpreset: a guest of two vCPUs whose vCPU 1, not vCPU 0, asks for SYSTEM_RESET.
//!
//! Boot 0 (INFO(RESTARTS) = 0): vCPU 0 starts vCPU 1 with the runtime's
//! reset context, so vCPU 1 asks for SYSTEM_RESET at once, and waits in a
//! WFE loop with its interrupts masked (as Linux parks a CPU it stops). The
//! monitor must stop vCPU 0 (its RAM unmapped, its CPU woken by SEV), rebuild
//! the guest, and boot vCPU 0 again on its own CPU.
//!
//! Boot 1: vCPU 1 must be off (AFFINITY_INFO), and start again by CPU_ON:
//! it runs, turns itself off, and the stub powers off.
//!
//! On the monitor's emulated console UART (`arm,sbsa-uart`: guests share the
//! machine), boot 0 unmasks its receive interrupts and boot 1 says what
//! IMSC reads: 0 when the restart reset the emulated UART, as it must.
//!
//! Output: `smpreset: boot 0: ...`, then `smpreset: boot 1: vCPU 1 off after
//! the restart, started again, PASS` (or a line ending in FAIL).
#![cfg_attr(target_arch = "arm", no_std, no_main)]

#[cfg(target_arch = "arm")]
mod stub {
    use carve_stubs::{abi, hvc, rt, say, timer};

    carve_stubs::entry!(main);

    /// Seconds to wait for vCPU 1 to run or turn off.
    const WAIT_S: u64 = 5;

    fn wait_until(mut done: impl FnMut() -> bool) -> bool {
        let deadline = timer::cntvct() + WAIT_S * u64::from(timer::cntfrq().max(1));
        while timer::cntvct() < deadline {
            if done() {
                return true;
            }
        }
        done()
    }

    /// The emulated console UART's interrupt mask (SBSA UART / PL011 UARTIMSC) and what boot 0 writes.
    const IMSC: u32 = 0x38;
    const RX_RT: u32 = 0x50;

    fn main(dtb: u32) -> ! {
        let boot = hvc::info(abi::INFO_RESTARTS);
        let emulated_uart =
            rt::dtb_holds(dtb, b"arm,sbsa-uart\0").then(|| rt::console_uart(dtb).ok().flatten()).flatten();
        match boot {
            0 => {
                // Said before CPU_ON: once vCPU 1 runs, it asks for the reset at
                // once, and a console call of vCPU 0's may then be the trap that stops it.
                say!("smpreset: boot 0: starting vCPU 1, which asks for SYSTEM_RESET; vCPU 0 waits in WFE");
                if let Some(uart) = emulated_uart {
                    // SAFETY: the emulated UART's register (the monitor serves the page).
                    unsafe { core::ptr::write_volatile((uart + IMSC) as *mut u32, RX_RT) };
                }
                let r = hvc::cpu_on(1, rt::secondary_entry(), rt::RESET_CONTEXT);
                if r != 0 {
                    say!("smpreset: boot 0: CPU_ON(1) failed, FAIL");
                    hvc::system_off()
                }
                loop {
                    // SAFETY: WFE only waits for an event.
                    unsafe { core::arch::asm!("wfe", options(nomem, nostack, preserves_flags)) };
                }
            }
            1 => {
                if let Some(uart) = emulated_uart {
                    // SAFETY: as at boot 0.
                    let imsc = unsafe { core::ptr::read_volatile((uart + IMSC) as *const u32) };
                    say!(
                        "smpreset: boot 1: the emulated console UART's IMSC reads {:#x} (boot 0 wrote {:#x})",
                        imsc,
                        RX_RT
                    );
                }
                let off = hvc::affinity_info(1, 0);
                let r = hvc::cpu_on(1, rt::secondary_entry(), 7);
                let ran = wait_until(|| rt::secondary_run().runs == 1);
                rt::release_secondary(1);
                let gone = wait_until(|| hvc::affinity_info(1, 0) == 1);
                let ok = off == 1 && r == 0 && ran && rt::secondary_run().context == 7 && gone;
                say!(
                    "smpreset: boot 1: vCPU 1 {} after the restart (AFFINITY_INFO {}), CPU_ON {}, ran {}, off again {}: {}",
                    if off == 1 { "off" } else { "NOT off" },
                    off,
                    r,
                    ran,
                    gone,
                    if ok { "started again, PASS" } else { "FAIL" }
                );
                hvc::system_off()
            }
            n => {
                say!("smpreset: boot {}: too many boots, FAIL", n);
                hvc::system_off()
            }
        }
    }
}

#[cfg(not(target_arch = "arm"))]
fn main() {
    eprintln!("smpreset is a guest for carve: build it with scripts/build-stubs");
    std::process::exit(2);
}
