//! The global defmt logger: frames to semihosting or to a UART the guests do not own, and the early frames kept for the UART.
//!
//! defmt encodes each log line as a self-delimiting frame (rzCOBS, ended by
//! a zero byte), so any byte stream carries them and `defmt-print -e ELF`
//! decodes them from QEMU's stdout (semihosting) or from a UART's output
//! alike. Frames go to the current sink:
//! - [`Sink::Semihosting`]: QEMU's `-semihosting` stdout (the tests' path;
//!   only in the image built with the `semihosting` feature);
//! - [`Sink::Uart`]: a UART the monitor owns, set by [`use_uart`] once the
//!   device tree has named it and the Hyp map reaches it;
//! - [`Sink::Nowhere`]: the image a board boots, until a UART takes the log.
//!
//! Until [`use_uart`] or [`settle`] is called, every whole frame is also
//! kept in a small buffer, and [`use_uart`] sends those first: the UART's log
//! starts at the monitor's first line even though the UART was found later.
//!
//! Frames from several CPUs never interleave: a frame is written inside one
//! critical section (aarch32-cpu's multi-core implementation: interrupts
//! masked and a lock shared by the CPUs).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use super::uart::Uart;

/// Bytes of early frames kept for [`use_uart`].
const EARLY_BYTES: usize = 16 * 1024;

/// Where frames go.
#[derive(Clone, Copy, Debug)]
pub enum Sink {
    /// QEMU's semihosting stdout.
    #[cfg(feature = "semihosting")]
    Semihosting,
    /// No semihosting and no UART yet: frames are only kept for [`use_uart`].
    #[cfg(not(feature = "semihosting"))]
    Nowhere,
    /// A UART the monitor owns.
    Uart(Uart),
}

/// Where frames go before a UART takes them.
#[cfg(feature = "semihosting")]
const FIRST_SINK: Sink = Sink::Semihosting;
#[cfg(not(feature = "semihosting"))]
const FIRST_SINK: Sink = Sink::Nowhere;

/// The logger's state. Only touched inside the critical section that
/// `acquire` enters and `release` leaves (or that [`use_uart`]/[`settle`] enter).
struct State {
    encoder: defmt::Encoder,
    restore: critical_section::RestoreState,
    out: Out,
}

/// Where encoded bytes go: the sink, and the early buffer while it is kept.
struct Out {
    sink: Sink,
    /// Early frames: `early[..early_len]` are whole frames.
    early: [u8; EARLY_BYTES],
    early_len: usize,
    /// Where the frame being written started in `early`, or `None` when not keeping frames.
    frame_start: Option<usize>,
    /// The frame being written did not fit: it is dropped from `early`, and keeping stops.
    early_full: bool,
}

struct Cell(UnsafeCell<State>);
// SAFETY: the state is reached only inside the critical section, which
// serialises every CPU (see `with_state`).
unsafe impl Sync for Cell {}

static STATE: Cell = Cell(UnsafeCell::new(State {
    encoder: defmt::Encoder::new(),
    restore: critical_section::RestoreState::invalid(),
    out: Out { sink: FIRST_SINK, early: [0; EARLY_BYTES], early_len: 0, frame_start: None, early_full: false },
}));

/// Set while a frame is being written (between `acquire` and `release`).
static TAKEN: AtomicBool = AtomicBool::new(false);
/// Whether early frames are still being kept.
static KEEPING: AtomicBool = AtomicBool::new(true);

/// Runs `f` on the state.
///
/// # Safety
/// The caller is inside the critical section and no other reference to the state lives.
unsafe fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    // SAFETY: the caller's promise: one CPU at a time, one reference at a time.
    f(unsafe { &mut *STATE.0.get() })
}

impl Out {
    /// Sends encoded bytes to the sink, and keeps them while early frames are kept.
    fn emit(&mut self, bytes: &[u8]) {
        match self.sink {
            #[cfg(feature = "semihosting")]
            Sink::Semihosting => {
                use semihosting::io::Write as _;
                if let Ok(mut out) = semihosting::io::stdout() {
                    let _ = out.write_all(bytes);
                }
            }
            #[cfg(not(feature = "semihosting"))]
            Sink::Nowhere => {}
            Sink::Uart(u) => u.write_all(bytes),
        }
        if self.frame_start.is_some() && !self.early_full {
            match self.early.get_mut(self.early_len..self.early_len + bytes.len()) {
                Some(dst) => {
                    dst.copy_from_slice(bytes);
                    self.early_len += bytes.len();
                }
                None => self.early_full = true,
            }
        }
    }
}

#[defmt::global_logger]
struct Logger;

// SAFETY: `acquire` enters a critical section that `release` leaves, and a
// frame in progress on this CPU makes a second `acquire` panic instead of
// nesting, as the trait requires.
unsafe impl defmt::Logger for Logger {
    fn acquire() {
        // SAFETY: paired with the `critical_section::release` in `release`.
        let restore = unsafe { critical_section::acquire() };
        if TAKEN.swap(true, Ordering::Relaxed) {
            panic!("defmt logger taken reentrantly");
        }
        // SAFETY: inside the critical section; `TAKEN` makes this the only user.
        unsafe {
            with_state(|s| {
                s.restore = restore;
                s.out.frame_start = KEEPING.load(Ordering::Relaxed).then_some(s.out.early_len);
                s.encoder.start_frame(|b| s.out.emit(b));
            })
        }
    }

    unsafe fn flush() {
        // SAFETY: the caller holds the logger (trait contract), so we are inside the critical section.
        unsafe {
            with_state(|s| {
                if let Sink::Uart(u) = s.out.sink {
                    u.flush();
                }
            })
        }
    }

    unsafe fn release() {
        // SAFETY: as in `flush`.
        let restore = unsafe {
            with_state(|s| {
                s.encoder.end_frame(|b| s.out.emit(b));
                let out = &mut s.out;
                if out.early_full {
                    // The last frame did not fit: drop its part, keep whole frames only, and stop keeping.
                    if let Some(start) = out.frame_start {
                        out.early_len = start;
                    }
                    KEEPING.store(false, Ordering::Relaxed);
                }
                out.frame_start = None;
                s.restore
            })
        };
        TAKEN.store(false, Ordering::Relaxed);
        // SAFETY: paired with the `critical_section::acquire` in `acquire`.
        unsafe { critical_section::release(restore) };
    }

    unsafe fn write(bytes: &[u8]) {
        // SAFETY: as in `flush`.
        unsafe {
            with_state(|s| {
                s.encoder.write(bytes, |b| s.out.emit(b));
            })
        }
    }
}

/// From now on frames go to `uart`, after the early frames kept so far; keeping stops.
pub fn use_uart(uart: Uart) {
    critical_section::with(|_| {
        // SAFETY: inside the critical section, outside any frame (a frame holds the section until it ends).
        unsafe {
            with_state(|s| {
                uart.write_all(&s.out.early[..s.out.early_len]);
                s.out.sink = Sink::Uart(uart);
            })
        }
        KEEPING.store(false, Ordering::Relaxed);
    })
}

/// The UART the log goes to, if one took it (the console several guests
/// share may be that UART: it then reads input from it and logs their lines).
pub fn uart() -> Option<Uart> {
    critical_section::with(|_| {
        // SAFETY: inside the critical section (re-entrant on this CPU), only the sink is read.
        unsafe {
            with_state(|s| match s.out.sink {
                Sink::Uart(u) => Some(u),
                #[allow(unreachable_patterns)]
                _ => None,
            })
        }
    })
}

/// Stops keeping early frames (the sink is final: no UART will take the log).
pub fn settle() {
    KEEPING.store(false, Ordering::Relaxed);
}

/// Whether a frame is being written (by any CPU): logging now would wait for
/// it, or, on the CPU writing it, nest.
#[cfg_attr(feature = "semihosting", allow(dead_code))] // for the board's exit (semihost.rs)
pub fn busy() -> bool {
    TAKEN.load(Ordering::Relaxed)
}

/// Waits until everything the log UART was given has left it (before power-off).
#[cfg_attr(feature = "semihosting", allow(dead_code))] // for the board's exit (semihost.rs)
pub fn flush() {
    critical_section::with(|_| {
        // SAFETY: inside the critical section (re-entrant on this CPU), only the sink is read.
        let sink = unsafe { with_state(|s| s.out.sink) };
        if let Sink::Uart(u) = sink {
            u.flush();
        }
    })
}
