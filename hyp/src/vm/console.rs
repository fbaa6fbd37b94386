//! The console several guests share: each guest's emulated UART, the physical console, and the multiplexer between them.
//!
//! With several guests none is given the physical console UART: the monitor
//! owns it. Each guest gets an emulated SBSA UART (`carve_core::vm::vuart`)
//! at the console's own address, with its interrupt, which its device tree
//! names as `arm,sbsa-uart` (`dt::write`, `emulated_console`); its page is
//! left out of the guest's stage-2, so every access traps here
//! ([`emulate`]); an access the syndrome does not describe (LDRD/STRD,
//! writeback, LDM/STM) is refused with a data abort at the guest's vector,
//! and both are counted (logged when the guest ends). What guests write goes through the multiplexer
//! (`carve_core::vm::console`): whole lines, prefixed with the guest's name.
//!
//! Where the lines go, and how they share the UART with the monitor's log:
//! - the log on semihosting (QEMU) or on another UART (`carve,log`): the
//!   console UART carries the guests' lines as plain text, and the
//!   monitor's own lines on it (which guest has the input) start with
//!   `(carve)| `; the defmt frames never touch it;
//! - the log on the console UART itself (`carve,log` names it): the UART
//!   carries only defmt frames, so each console line is logged as a record
//!   (`console: guest@1| text`) and `defmt-print` shows it in order with the
//!   log.
//!
//! Input is read from the console UART when the monitor drives it (a
//! driver for its kind, and not a second UART it could not map: the
//! fixmap's console slot is the log's): at each emulated UART access, and
//! from the UART's receive interrupt once the monitor takes interrupts. It
//! goes to the guest with the focus; Ctrl-A three times moves the focus.
//!
//! Lock order: the guests' lock ([`super::VMS`]) before [`CONSOLE`]; nothing
//! takes the guests' lock while holding this one. A guest's interrupt line
//! changes are told to the virtual GIC after [`CONSOLE`] is released.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use carve_core::dt::machine::Machine;
use carve_core::syndrome::Abort;
use carve_core::vm::console::{Console, Input};
use carve_core::vm::vuart::{self, Vuart, WriteEffect};
use spin::Mutex;

use super::Vm;
use crate::arch::guest;
use crate::arch::uart::Uart;
use crate::arch::vectors::TrapFrame;

/// Where console lines go.
enum Sink {
    /// Plain text on the console UART.
    Uart(Uart),
    /// defmt records (the log is on the console UART, or the monitor cannot drive the console):
    /// bytes gather here until a line ends.
    Log(Vec<u8>),
}

impl Sink {
    fn write(&mut self, bytes: &[u8]) {
        match self {
            Sink::Uart(u) => u.write_all(bytes),
            Sink::Log(line) => {
                for &b in bytes {
                    match b {
                        b'\r' => {}
                        b'\n' => {
                            defmt::info!("console: {=str}", core::str::from_utf8(line).unwrap_or("(not UTF-8)"));
                            line.clear();
                        }
                        _ => line.push(b),
                    }
                }
            }
        }
    }
}

/// The shared console's state.
struct Shared {
    mux: Console,
    /// Guest `i`'s emulated UART.
    uarts: Vec<Vuart>,
    /// Guest `i`'s accesses to its UART page: (emulated, refused with an abort).
    counts: Vec<(u64, u64)>,
    /// The interrupt line level the virtual GIC was last told, per guest.
    told: Vec<bool>,
    /// The IPA of every guest's emulated UART page (the machine console's address).
    ipa: u64,
    /// The GIC interrupt ID of the emulated UARTs (the machine console's).
    irq: Option<u32>,
    sink: Sink,
    /// Where input comes from: the console UART, when the monitor drives it.
    input: Option<Uart>,
}

static CONSOLE: Mutex<Option<Shared>> = Mutex::new(None);

/// The page number (IPA >> 12) of the guests' emulated UART, `u32::MAX` while
/// there is none: the trap path checks it before taking [`CONSOLE`], so other
/// emulated MMIO (the test device) pays no lock for it.
static PAGE: AtomicU32 = AtomicU32::new(u32::MAX);

/// The focused guest's unfinished line holds other guests' lines back for a
/// fiftieth of a second after its last byte (a second of the counter / 50).
const HOLD_DIV: u32 = 50;

/// Sets guest `vm`'s interrupt `intid` (an SPI) to `level`, with the guests' lock held.
///
/// The virtual GIC raises or lowers it in the guest (and kicks its vCPU).
fn set_guest_irq(vm: &mut Vm, intid: u32, level: bool) {
    super::vgic::set_spi_level(vm, intid, level);
}

/// Whether several guests share the console: they are not given devices and the machine names a console.
pub fn shared(machine: &Machine, guests: usize) -> bool {
    guests > 1 && machine.uart.is_some()
}

/// Sets the shared console up for guests `names` (in the plan's order), and logs what it decided.
pub fn init(machine: &Machine, names: &[&str]) {
    let Some(console) = &machine.uart else { return };
    let Some(regs) = console.regs.first().copied() else { return };
    let log_here = machine.log_uart.as_ref().is_some_and(|l| l.device.node == console.node);
    let (sink, input, how) = match (machine.uart_kind, &machine.log_uart) {
        _ if log_here => {
            let u = crate::arch::logger::uart();
            (Sink::Log(Vec::new()), u, "logged as records (the log is on that UART)")
        }
        (Some(kind), None) => {
            let span = match kind {
                carve_core::dt::machine::UartKind::Pl011 => 0x48,
                carve_core::dt::machine::UartKind::Ns16550 { reg_shift, .. } => 8u64 << reg_shift,
            };
            match crate::arch::uart::map_log_uart(regs.start(), span.min(regs.size), kind) {
                Ok(u) => (Sink::Uart(u), Some(u), "plain lines on it"),
                Err(e) => {
                    defmt::error!("console: cannot map {=str}: {}", console.node.as_str(), e);
                    (Sink::Log(Vec::new()), None, "logged as records (the UART could not be mapped); no input")
                }
            }
        }
        (Some(_), Some(_)) => {
            (Sink::Log(Vec::new()), None, "logged as records (the log has the fixmap's UART slot); no input")
        }
        (None, _) => (Sink::Log(Vec::new()), None, "logged as records (no driver for it); no input"),
    };
    defmt::info!(
        "console: {=usize} guests share {=str}: each gets an emulated SBSA UART at IPA {=u64:#010x} (interrupt {=?}); their lines {=str}",
        names.len(),
        console.node.as_str(),
        regs.start(),
        machine.uart_irq,
        how
    );
    let mut s = Shared {
        mux: Console::new(names.iter().map(|n| String::from(*n)), u64::from(crate::arch::counter_hz() / HOLD_DIV)),
        uarts: names.iter().map(|_| Vuart::new()).collect(),
        counts: alloc::vec![(0, 0); names.len()],
        told: alloc::vec![false; names.len()],
        ipa: regs.start(),
        irq: machine.uart_irq,
        sink,
        input,
    };
    if let (Some(u), Some(irq)) = (input.filter(|_| !log_here), machine.uart_irq) {
        // Its receive interrupt is the monitor's: the virtual GIC routes it here.
        u.set_rx_interrupt(true);
        super::vgic::set_monitor_irq(irq, receive);
    }
    if input.is_some() {
        let Shared { mux, sink, .. } = &mut s;
        mux.set_focus(0, crate::arch::counter(), &mut |b: &[u8]| sink.write(b));
        defmt::info!("console: input goes to {=str} (Ctrl-A three times: the next guest)", names[0]);
    }
    *CONSOLE.lock() = Some(s);
    PAGE.store((regs.start() >> 12) as u32, Ordering::Release);
}

impl Shared {
    /// Lets the console's time pass, then takes what the console UART
    /// received and hands it to the focused guest's UART.
    fn poll_input(&mut self, now: u64) {
        let Shared { mux, sink, .. } = self;
        mux.tick(now, &mut |b: &[u8]| sink.write(b));
        let Some(u) = self.input else { return };
        while let Some(byte) = u.get() {
            let Shared { mux, sink, uarts, .. } = self;
            match mux.input(byte, now, &mut |b: &[u8]| sink.write(b)) {
                i @ Input::Deliver { guest, .. } => {
                    for &b in i.bytes() {
                        uarts[guest].receive(b);
                    }
                }
                Input::Focus { guest } => {
                    defmt::info!("console: input goes to {=str} (Ctrl-A three times)", mux.name(guest));
                }
                Input::Held => {}
            }
        }
    }

    /// The guests whose interrupt line changed since the virtual GIC was last told: (guest, level), at most one each.
    fn line_changes(&mut self, out: &mut Vec<(usize, bool)>) {
        for (g, u) in self.uarts.iter().enumerate() {
            let level = u.irq();
            if self.told[g] != level {
                self.told[g] = level;
                out.push((g, level));
            }
        }
    }
}

/// Tells the virtual GIC the line changes `changes` (with [`CONSOLE`] released, the guests' lock held).
fn tell(vms: &mut [Vm], irq: Option<u32>, changes: &[(usize, bool)]) {
    if let Some(intid) = irq {
        for &(g, level) in changes {
            if let Some(vm) = vms.get_mut(g) {
                set_guest_irq(vm, intid, level);
            }
        }
    }
}

/// A stage-2 data abort of guest `index` at `ipa`: `Some(true)` an access to
/// the guest's emulated UART, done (a load's value in its register; the
/// caller steps over the instruction), `Some(false)` an access to it the
/// syndrome does not describe (LDRD/STRD, writeback, LDM/STM) or that names
/// the PC, refused (the caller injects a data abort), `None` not the UART
/// (or no shared console).
pub fn emulate(vms: &mut [Vm], index: usize, frame: &mut TrapFrame, a: Abort, ipa: u64) -> Option<bool> {
    if ipa >> 12 != u64::from(PAGE.load(Ordering::Acquire)) {
        return None;
    }
    let mut changes = Vec::new();
    let irq = {
        let mut guard = CONSOLE.lock();
        let s = guard.as_mut()?;
        if !(s.ipa..s.ipa + vuart::SIZE).contains(&ipa) || index >= s.uarts.len() {
            return None;
        }
        // The register as the guest's mode has it (SP and LR are banked: Linux's writel may store from LR).
        let access = a.access().and_then(|x| guest::banked::read(frame, x.reg).map(|stored| (x, stored)));
        let Some((access, stored)) = access else {
            s.counts[index].1 += 1;
            return Some(false);
        };
        s.counts[index].0 += 1;
        let now = crate::arch::counter();
        s.poll_input(now);
        let (offset, bytes) = (ipa - s.ipa, access.size.bytes());
        if a.write() {
            if let WriteEffect::Transmit(byte) = s.uarts[index].write(offset, bytes, stored) {
                let Shared { mux, sink, .. } = s;
                mux.output(index, byte, now, &mut |b: &[u8]| sink.write(b));
            }
        } else {
            guest::banked::write(frame, access.reg, access.load_value(s.uarts[index].read(offset, bytes)));
        }
        s.line_changes(&mut changes);
        arm_hold(s);
        s.irq
    };
    tell(vms, irq, &changes);
    Some(true)
}

/// Arms this CPU's Hyp timer for the held lines' deadline, if lines wait:
/// they go out then even when no guest touches its UART again.
fn arm_hold(s: &Shared) {
    if let Some(at) = s.mux.deadline() {
        crate::arch::timer::arm(at);
    }
}

/// The Hyp timer fired (on the CPU that armed it): lines held behind an open
/// line that has since gone quiet go out, and the timer is armed again if
/// some still wait.
pub fn hold_over() {
    let mut guard = CONSOLE.lock();
    let Some(s) = guard.as_mut() else { return };
    let Shared { mux, sink, .. } = s;
    mux.tick(crate::arch::counter(), &mut |b: &[u8]| sink.write(b));
    arm_hold(s);
}

/// What the console UART received, to the focused guest (from its receive interrupt).
pub fn receive() {
    let mut vms = super::VMS.lock();
    let mut changes = Vec::new();
    let irq = {
        let mut guard = CONSOLE.lock();
        let Some(s) = guard.as_mut() else { return };
        s.poll_input(crate::arch::counter());
        s.line_changes(&mut changes);
        arm_hold(s);
        s.irq
    };
    tell(&mut vms, irq, &changes);
}

/// Guest `index` restarts: its held partial line goes out and its emulated
/// UART is back to reset (its virtual GIC, reset too, holds its line low).
pub fn restarted(index: usize) {
    let mut guard = CONSOLE.lock();
    let Some(s) = guard.as_mut() else { return };
    let Shared { mux, sink, uarts, told, .. } = s;
    if let (Some(u), Some(t)) = (uarts.get_mut(index), told.get_mut(index)) {
        u.reset();
        *t = false;
    }
    mux.flush(index, &mut |b: &[u8]| sink.write(b));
}

/// Guest `index` ended (`how`): its held partial line goes out, and the console says so.
pub fn ended(index: usize, how: &str) {
    let mut guard = CONSOLE.lock();
    let Some(s) = guard.as_mut() else { return };
    if let (Some(&(emulated, refused)), Some(u)) = (s.counts.get(index), s.uarts.get(index)) {
        defmt::info!(
            "console: {=str}'s UART: {=u64} accesses emulated, {=u64} refused with an abort, {=u64} to offsets it does not have; {=u64} bytes sent",
            s.mux.name(index),
            emulated,
            refused,
            u.unknown,
            u.tx_bytes
        );
    }
    let Shared { mux, sink, .. } = s;
    mux.flush(index, &mut |b: &[u8]| sink.write(b));
    let mut text = String::from(mux.name(index));
    text.push_str(" ended: ");
    text.push_str(how);
    mux.notice(&text, &mut |b: &[u8]| sink.write(b));
}
