//! Ending the run: the monitor's exit statuses, and how the run ends.
//!
//! In the image the QEMU tests run (feature `semihosting`), SYS_EXIT_EXTENDED
//! ends QEMU with the given status, which `scripts/run-hyp` and the tests
//! check. In the image a board boots there is no semihosting host: the
//! status is logged (`hyp: stopping: ...`, on the log UART) and the board is
//! powered off the way its tree says ([`super::power`]). Every fatal path
//! logs its reason first, then exits with one of these codes: the run never
//! hangs silently where a mechanism exists to end it.

/// Why the monitor stopped: QEMU's exit status.
///
/// The entry assembly uses `NotHyp`, `BadCpu` and `DoubleFault` before any
/// logging is possible (they are passed to it as constants).
#[derive(Clone, Copy, PartialEq, Eq, Debug, defmt::Format)]
#[repr(u8)]
pub enum ExitCode {
    /// Everything asked for was done.
    Success = 0,
    /// A Rust panic (a broken invariant); the panic message is in the log.
    Panic = 1,
    /// The device tree handed over is missing or malformed.
    BadDtb = 2,
    /// The image was entered in a mode other than Hyp (no log: exits from `_start`).
    NotHyp = 3,
    /// The boot CPU's MPIDR, or a secondary's CPU number, is out of range (no log).
    BadCpu = 4,
    /// An exception taken from Hyp mode itself (undefined instruction, abort, ...).
    HypException = 5,
    /// A guest trap or interrupt that the monitor does not handle yet.
    UnhandledTrap = 6,
    /// A second exception while the first was being reported (no log).
    DoubleFault = 7,
    /// The Hyp stage-1 tables could not be built.
    MmuSetup = 8,
    /// A path that exists but is not written yet.
    Unimplemented = 9,
    /// A guest made an access the monitor does not allow (a stage-2 fault): it was stopped.
    GuestFault = 10,
    /// The device tree describes nothing the monitor can plan or run (the log says why).
    BadPlan = 11,
    /// A self-test `carve.selftest=` asked for failed, or this image was built without self-tests.
    SelfTest = 12,
    /// The loader put the image where it cannot run: not 4 KiB aligned, over
    /// the DTB, past 4 GiB, or overlapping its own link address (no log: exits from `_start`).
    BadLoad = 13,
    /// The CPU has no Virtualization Extensions or no LPAE (no log: exits from `_start`).
    NoVirtualization = 14,
}

impl ExitCode {
    /// The status as QEMU reports it.
    pub const fn status(self) -> i32 {
        self as i32
    }
}

/// Ends the run with `code`: semihosting's SYS_EXIT_EXTENDED (falling back
/// to SYS_EXIT) in the QEMU test image; on a board, a last log line with the
/// status, the log flushed, then the board's power-off.
///
/// Call it after logging why.
pub fn exit(code: ExitCode) -> ! {
    #[cfg(feature = "semihosting")]
    semihosting::process::exit(code.status());
    #[cfg(not(feature = "semihosting"))]
    {
        // A CPU that stops inside a log frame (a panic in the logger) cannot log again.
        if !super::logger::busy() {
            if code == ExitCode::Success {
                defmt::info!("hyp: stopping: status 0 (Success): powering off");
            } else {
                defmt::error!("hyp: stopping: status {=i32} ({}): powering off", code.status(), code);
            }
        }
        super::logger::flush();
        super::power::off();
        super::guest::park()
    }
}
