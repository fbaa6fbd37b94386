//! gicdfuzz: a guest that throws random accesses at its emulated GIC distributor, or at its emulated UART.
//!
//! `ROUNDS` accesses, each a random shape (byte, halfword, word loads and
//! stores, loads and stores with writeback, LDRD/STRD, LDM/STM: the last
//! ones give the monitor no valid syndrome), at a random offset and
//! alignment in the GICD page, storing random values. With `gicdfuzz.uart`
//! in its device tree (`bootargs`) the page is its emulated SBSA UART's
//! instead (`hyp/core/src/vm/vuart.rs`; the `pl011@` node of its DT), half
//! the offsets among its registers (the first 0x50 bytes): random bytes go
//! to DR, so to the shared console as its lines. Each must complete
//! (a defined result) or come back as a data abort at the guest's own
//! vector: the stub counts both, per shape. IRQs stay masked meanwhile (its
//! own random SGIR writes may pend SGIs to itself). Then it puts its
//! distributor back in order and takes `TIMER` virtual-timer interrupts: the
//! monitor and this guest's virtual GIC still work. Another guest (the test
//! runs `vtimer` beside it) must keep getting its own timer interrupts.
//! In UART mode it then clears the UART's interrupt mask and status, checks
//! its flags (transmit FIFO empty, not full, not busy; receive FIFO empty)
//! and writes the line `gicdfuzz: the UART works after the fuzz` through it.
//! Output: the counts, then `gicdfuzz: PASS` (or `FAIL`).
#![cfg_attr(target_arch = "arm", no_std, no_main)]

#[cfg(target_arch = "arm")]
mod stub {
    use core::fmt::Write as _;
    use core::sync::atomic::{AtomicU32, Ordering};

    use carve_stubs::gic::{self, GICC, GICC_EOIR, GICC_IAR, GICD, VTIMER};
    use carve_stubs::rt::{self, Touch, OPS, OP_NAMES};
    use carve_stubs::sbsa::{self, FR_BUSY, FR_RXFE, FR_TXFE, FR_TXFF};
    use carve_stubs::{hvc, say, timer};

    carve_stubs::entry!(main);

    const ROUNDS: u32 = 20_000;
    const TIMER: u32 = 100;

    static TICKS: AtomicU32 = AtomicU32::new(0);

    extern "C" fn on_irq() {
        let iar = gic::read(GICC + GICC_IAR);
        let id = iar & 0x3ff;
        if id >= 1020 {
            return;
        }
        if id == VTIMER {
            let n = TICKS.load(Ordering::Relaxed) + 1;
            TICKS.store(n, Ordering::Release);
            // Masked, EOI, unmasked: the line must change to be signalled again (see vtimer).
            gic::set_vtimer_ctl(0b11);
            gic::write(GICC + GICC_EOIR, iar);
            if n < TIMER {
                gic::set_vtimer_ctl(1);
            }
            return;
        }
        gic::write(GICC + GICC_EOIR, iar);
    }

    fn fail(args: core::fmt::Arguments<'_>) -> ! {
        say!("gicdfuzz: {}, FAIL", args);
        hvc::system_off()
    }

    fn main(dtb: u32) -> ! {
        rt::set_irq_handler(on_irq);
        let uart = if rt::dtb_holds(dtb, b"gicdfuzz.uart") {
            match rt::console_uart(dtb) {
                Ok(Some(base)) => Some(base),
                Ok(None) => fail(format_args!("no pl011@ node in the DT")),
                Err(e) => fail(format_args!("reading the DT: {:?}", e)),
            }
        } else {
            None
        };
        let (what, page) = match uart {
            Some(base) => ("uart", base),
            None => ("gicd", GICD),
        };
        let mut x: u32 = 0x2545_f491 ^ (timer::cntvct() as u32);
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let mut done = [0u32; OPS as usize];
        let mut aborted = [0u32; OPS as usize];
        for _ in 0..ROUNDS {
            let r = next();
            let op = r % OPS;
            // The UART's registers are few: half the offsets among them.
            let span = if uart.is_some() && r & (1 << 12) != 0 { 0x4f } else { 0xfff };
            // Offsets across the page, aligned to 1, 2 or 4 bytes (or not at all), and a random value.
            let off = match (r >> 8) % 4 {
                0 => next() & span,
                1 => next() & span & 0xffe,
                _ => next() & span & 0xffc,
            };
            let value = next();
            match rt::touch_op(op, page + off.min(0xff8), value) {
                Touch::Done(_) => done[op as usize] += 1,
                Touch::Refused(_) => aborted[op as usize] += 1,
            }
        }
        for k in 0..OPS as usize {
            say!("gicdfuzz: {}: {}: {} done, {} aborted", what, OP_NAMES[k], done[k], aborted[k]);
        }
        // No valid syndrome: the monitor cannot emulate these; each must have been refused.
        let no_syndrome_refused = [8usize, 9, 10, 11].iter().all(|&k| done[k] == 0 && aborted[k] > 0);
        let some_done = done[2] > 0 && done[5] > 0;

        let mut uart_ok = true;
        if let Some(base) = uart {
            sbsa::write(base, sbsa::IMSC, 0);
            sbsa::write(base, sbsa::ICR, sbsa::INT_ALL);
            let fr = sbsa::read(base, sbsa::FR);
            if fr & (FR_TXFE | FR_TXFF | FR_BUSY | FR_RXFE) != FR_TXFE | FR_RXFE {
                say!("gicdfuzz: uart: FR {:#x} after the fuzz, FAIL", fr);
                uart_ok = false;
            }
            // The fuzz's bytes may have left a line unfinished: end it first.
            let _ = write!(sbsa::Uart(base), "\ngicdfuzz: the UART works after the fuzz\n");
        }

        // Back in order: its timer through its virtual GIC.
        gic::write(GICD + gic::GICD_CTLR, 0);
        for i in 0..32 {
            gic::write(GICD + gic::GICD_ICENABLER + 4 * i, !0); // a random ISENABLER write may have enabled an SPI (its UART's)
        }
        gic::write(GICD + 0x280, !0); // ICPENDR0
        gic::write(GICD + 0x380, !0); // ICACTIVER0: a random ISACTIVER write may have left its timer active
        gic::write(GICD + 0xf10, !0); // CPENDSGIR
        gic::write(GICD + 0xf14, !0);
        gic::write(GICD + 0xf18, !0);
        gic::write(GICD + 0xf1c, !0);
        for i in 0..8 {
            gic::write(GICD + gic::GICD_IPRIORITYR + 4 * i, 0xa0a0_a0a0);
        }
        gic::write(GICD + gic::GICD_ISENABLER, 1 << VTIMER);
        gic::enable();
        gic::set_vtimer_cval(0);
        gic::set_vtimer_ctl(1);
        gic::irqs_on();
        let mut spins = 0u32;
        while TICKS.load(Ordering::Acquire) < TIMER && spins < 50_000_000 {
            spins += 1;
        }
        gic::irqs_off();
        let ticks = TICKS.load(Ordering::Acquire);
        say!("gicdfuzz: afterwards, {} of {} timer interrupts taken", ticks, TIMER);
        let ok = no_syndrome_refused && some_done && uart_ok && ticks >= TIMER;
        say!("gicdfuzz: {}", if ok { "PASS" } else { "FAIL" });
        hvc::system_off()
    }
}

#[cfg(not(target_arch = "arm"))]
fn main() {
    eprintln!("gicdfuzz is a guest for carve: build it with scripts/build-stubs");
    std::process::exit(2);
}
