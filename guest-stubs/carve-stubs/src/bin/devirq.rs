//! devirq: a guest that shares the machine and takes the interrupts of a
//! device given to it (`carve,devices`), or, not given it, cannot reach it.
//!
//! The device is QEMU `virt`'s PL031 real-time clock (0x09010000, SPI 2,
//! INTID 34): writing its match register with the current count raises its
//! interrupt at once (the count has reached the match), and clearing it
//! lowers the line, so each round is one interrupt.
//!
//! - Given it (its DTB has the node): the SPI enables through the emulated
//!   distributor, and [`ROUNDS`] rounds each take exactly INTID 34, through
//!   the hardware GICV, as the monitor injects it (HW = 1).
//! - Not given it: its distributor keeps SPI 34 disabled and not pending
//!   whatever it writes, a read of the device's page is refused with an
//!   abort, and no interrupt reaches it while it waits with IRQs unmasked.
//!
//! Output: `devirq: given` or `devirq: not given`, a line per check, then
//! `devirq: PASS` (or `FAIL`).
#![cfg_attr(target_arch = "arm", no_std, no_main)]

#[cfg(target_arch = "arm")]
mod stub {
    use core::sync::atomic::{AtomicU32, Ordering};

    use carve_stubs::gic::{self, GICC, GICC_EOIR, GICC_IAR, GICD, GICD_ICENABLER, GICD_ISENABLER, GICD_ISPENDR};
    use carve_stubs::rt::{self, Touch};
    use carve_stubs::{hvc, say, timer};

    carve_stubs::entry!(main);

    /// QEMU `virt`'s PL031 and its interrupt (SPI 2).
    const RTC: u32 = 0x0901_0000;
    const RTC_NODE: &[u8] = b"pl031@9010000\0";
    const RTC_IRQ: u32 = 34;
    /// PL031 registers (DDI 0224): data, match, interrupt mask, clear.
    const RTCDR: u32 = 0x00;
    const RTCMR: u32 = 0x04;
    const RTCIMSC: u32 = 0x10;
    const RTCICR: u32 = 0x1c;
    /// Interrupts the owner takes.
    const ROUNDS: u32 = 5;

    /// Interrupts taken that were the RTC's, and those that were anything else (the last one's IAR).
    static RTC_TAKEN: AtomicU32 = AtomicU32::new(0);
    static OTHER_TAKEN: AtomicU32 = AtomicU32::new(0);
    static OTHER_IAR: AtomicU32 = AtomicU32::new(0);

    extern "C" fn on_irq() {
        let iar = gic::read(GICC + GICC_IAR);
        let id = iar & 0x3ff;
        if id >= 1020 {
            return;
        }
        if id == RTC_IRQ {
            // The line low before the EOI, which deactivates the physical interrupt too.
            gic::write(RTC + RTCICR, 1);
            RTC_TAKEN.fetch_add(1, Ordering::Relaxed);
        } else {
            OTHER_TAKEN.fetch_add(1, Ordering::Relaxed);
            OTHER_IAR.store(iar, Ordering::Relaxed);
        }
        gic::write(GICC + GICC_EOIR, iar);
    }

    /// Waits until `f` holds or `ms` milliseconds of the virtual count pass; whether it held.
    fn wait(ms: u64, f: impl Fn() -> bool) -> bool {
        let end = timer::cntvct() + u64::from(timer::cntfrq()) * ms / 1000;
        while timer::cntvct() < end {
            if f() {
                return true;
            }
            core::hint::spin_loop();
        }
        f()
    }

    fn spi_bit(reg: u32) -> bool {
        gic::read(GICD + reg + 4 * (RTC_IRQ / 32)) & (1 << (RTC_IRQ % 32)) != 0
    }

    fn owner() -> bool {
        gic::write(GICD + GICD_ISENABLER + 4 * (RTC_IRQ / 32), 1 << (RTC_IRQ % 32));
        let enabled = spi_bit(GICD_ISENABLER);
        say!("devirq: SPI {} enabled in its distributor: {}", RTC_IRQ, enabled);
        gic::enable();
        gic::irqs_on();
        gic::write(RTC + RTCIMSC, 1);
        let mut rounds_ok = true;
        for round in 1..=ROUNDS {
            // The match register at the current count: the interrupt at once.
            gic::write(RTC + RTCMR, gic::read(RTC + RTCDR));
            let got = wait(1000, || RTC_TAKEN.load(Ordering::Relaxed) >= round);
            if !got {
                say!("devirq: round {}: no interrupt within 1 s", round);
                rounds_ok = false;
                break;
            }
        }
        gic::write(RTC + RTCIMSC, 0);
        gic::irqs_off();
        let (taken, other) = (RTC_TAKEN.load(Ordering::Relaxed), OTHER_TAKEN.load(Ordering::Relaxed));
        say!(
            "devirq: device interrupt {} taken {} times (want {}), other interrupts {} (last IAR {:#x})",
            RTC_IRQ,
            taken,
            ROUNDS,
            other,
            OTHER_IAR.load(Ordering::Relaxed)
        );
        enabled && rounds_ok && taken == ROUNDS && other == 0
    }

    fn outsider() -> bool {
        gic::write(GICD + GICD_ISENABLER + 4 * (RTC_IRQ / 32), 1 << (RTC_IRQ % 32));
        gic::write(GICD + GICD_ISPENDR + 4 * (RTC_IRQ / 32), 1 << (RTC_IRQ % 32));
        let (enabled, pending) = (spi_bit(GICD_ISENABLER), spi_bit(GICD_ISPENDR));
        say!(
            "devirq: SPI {} after enabling and pending it: enabled {} pending {} (want both false)",
            RTC_IRQ,
            enabled,
            pending
        );
        let touch = rt::touch_read(RTC + RTCDR);
        let refused = matches!(touch, Touch::Refused(_));
        say!("devirq: a read of the device's page refused with an abort: {}", refused);
        gic::enable();
        gic::irqs_on();
        // The owner's interrupts come and go meanwhile; none may reach this guest.
        wait(1500, || false);
        gic::irqs_off();
        gic::write(GICD + GICD_ICENABLER + 4 * (RTC_IRQ / 32), 1 << (RTC_IRQ % 32));
        let taken = RTC_TAKEN.load(Ordering::Relaxed) + OTHER_TAKEN.load(Ordering::Relaxed);
        say!("devirq: interrupts taken while waiting 1.5 s: {} (want 0)", taken);
        !enabled && !pending && refused && taken == 0
    }

    fn main(dtb: u32) -> ! {
        rt::set_irq_handler(on_irq);
        let given = rt::dtb_holds(dtb, RTC_NODE);
        say!("devirq: {}", if given { "given /pl031@9010000" } else { "not given /pl031@9010000" });
        let ok = if given { owner() } else { outsider() };
        say!("devirq: {}", if ok { "PASS" } else { "FAIL" });
        hvc::system_off()
    }
}

#[cfg(not(target_arch = "arm"))]
fn main() {
    eprintln!("devirq is a guest for carve: build it with scripts/build-stubs");
    std::process::exit(2);
}
