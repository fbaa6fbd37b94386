//! Logging: defmt frames (the global logger is `arch::logger`: semihosting, or the UART `/chosen/carve,log` names), decoded on the host by `defmt-print -e <ELF>`.
//!
//! `DEFMT_LOG` picks the level at build time (`scripts/build` defaults it to
//! `info`). Each frame carries a timestamp: the physical counter converted to
//! microseconds since the counter started (CNTPCT / CNTFRQ).

use core::sync::atomic::{AtomicBool, Ordering};

use crate::arch;
use crate::arch::semihost::{self, ExitCode};

/// Microseconds since the physical counter started.
fn micros() -> u64 {
    let ticks = arch::counter();
    match u64::from(arch::counter_hz()) {
        0 => 0, // CNTFRQ not programmed by firmware: no time rather than a division by zero
        hz => ticks / hz * 1_000_000 + ticks % hz * 1_000_000 / hz,
    }
}

defmt::timestamp!("{=u64:us}", micros());

/// Set by the first panic: a panic while reporting one exits without logging.
static PANICKING: AtomicBool = AtomicBool::new(false);

/// Logs a panic (location and message) and ends the run with status 1.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    if !PANICKING.swap(true, Ordering::AcqRel) {
        defmt::error!("hyp: panic: {}", defmt::Display2Format(info));
    }
    semihost::exit(ExitCode::Panic)
}
