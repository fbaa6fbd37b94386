//! sgiprobe: a one-vCPU guest that sends SGIs to CPUs it does not own and
//! tries to take interrupts that are not its own, through carve's virtual GIC.
//!
//! - GICD_TYPER must say one CPU (so ITARGETSR0 reads as zero, GICv2 4.3.12).
//! - SGIs to CPU interfaces 1-7 (a target list) and to "all but self" reach
//!   nobody: none comes back to it, and the other guests (the test runs
//!   `vtimer` beside it, which fails on any interrupt but its timer) see none.
//! - SGIs to itself (filter "self", and target list bit 0) arrive, with
//!   source CPU 0: the virtual GIC delivers SGIs at all.
//! - Enabling, pending and targeting every SPI reads back only its own ones
//!   (the console UART's line, SPI 1 on QEMU virt); its pending SPI is never
//!   delivered to it as anything else.
//! Output: one line per check, then `sgiprobe: PASS` (or `FAIL`).
#![cfg_attr(target_arch = "arm", no_std, no_main)]

#[cfg(target_arch = "arm")]
mod stub {
    use core::sync::atomic::{AtomicU32, Ordering};

    use carve_stubs::gic::{self, GICC, GICC_EOIR, GICC_IAR, GICD, GICD_ISENABLER, GICD_SGIR};
    use carve_stubs::{hvc, rt, say};

    carve_stubs::entry!(main);

    /// IAR values taken, in order (up to 8), and how many.
    static TAKEN: [AtomicU32; 8] = [const { AtomicU32::new(0) }; 8];
    static COUNT: AtomicU32 = AtomicU32::new(0);

    extern "C" fn on_irq() {
        let iar = gic::read(GICC + GICC_IAR);
        if iar & 0x3ff >= 1020 {
            return;
        }
        let n = COUNT.fetch_add(1, Ordering::Relaxed) as usize;
        if let Some(slot) = TAKEN.get(n) {
            slot.store(iar, Ordering::Relaxed);
        }
        gic::write(GICC + GICC_EOIR, iar);
    }

    fn settle() {
        for _ in 0..200_000 {
            core::hint::spin_loop();
        }
    }

    fn main(_dtb: u32) -> ! {
        rt::set_irq_handler(on_irq);
        let typer = gic::read(GICD + gic::GICD_TYPER);
        let targets = gic::read(GICD + gic::GICD_ITARGETSR);
        // One CPU interface: ITARGETSR is RAZ/WI (GICv2 4.3.12).
        let one_cpu = (typer >> 5) & 7 == 0 && targets == 0;
        say!("sgiprobe: GICD_TYPER {:#x} ITARGETSR0 {:#x}: one CPU {}", typer, targets, one_cpu);
        gic::write(GICD + GICD_ISENABLER, 0xffff);
        gic::enable();
        gic::irqs_on();

        // To CPUs it does not own: a target list naming 1-7, then "all but self".
        gic::write(GICD + GICD_SGIR, (0xfe << 16) | 1);
        gic::write(GICD + GICD_SGIR, (1 << 24) | 2);
        settle();
        let stray = COUNT.load(Ordering::Relaxed);
        say!("sgiprobe: SGIs to CPUs 1-7 and to all but self: {} came back (want 0)", stray);

        // To itself: both forms arrive, from CPU 0.
        gic::write(GICD + GICD_SGIR, (2 << 24) | 3);
        settle();
        gic::write(GICD + GICD_SGIR, (0x01 << 16) | 4);
        settle();
        let n = COUNT.load(Ordering::Relaxed);
        let (a, b) = (TAKEN[0].load(Ordering::Relaxed), TAKEN[1].load(Ordering::Relaxed));
        let own_ok = n == 2 && a == 3 && b == 4;
        say!("sgiprobe: SGIs to itself: {} taken, IARs {:#x} {:#x} (want SGI 3 then 4 from CPU 0)", n, a, b);

        // Every SPI: enable, pend, target; only its own read back.
        let mut seen = [0u32; 3];
        for (i, s) in seen.iter_mut().enumerate() {
            let off = 4 + 4 * i as u32;
            gic::write(GICD + GICD_ISENABLER + off, !0);
            gic::write(GICD + gic::GICD_ISPENDR + off, !0);
            *s = gic::read(GICD + GICD_ISENABLER + off);
        }
        for i in 8..24 {
            gic::write(GICD + gic::GICD_ITARGETSR + 4 * i, 0x0101_0101);
        }
        settle();
        gic::irqs_off();
        let spis_ok = seen == [1 << 1, 0, 0];
        say!(
            "sgiprobe: SPIs enabled after writing all ones: {:#x} {:#x} {:#x} (want 0x2 0 0)",
            seen[0],
            seen[1],
            seen[2]
        );
        let later = COUNT.load(Ordering::Relaxed);
        let others_ok =
            (2..later as usize).all(|k| TAKEN.get(k).is_none_or(|t| t.load(Ordering::Relaxed) & 0x3ff == 33));
        say!("sgiprobe: interrupts taken after the SPI writes: {} (only its own SPI 33 allowed)", later - n);
        let ok = one_cpu && stray == 0 && own_ok && spis_ok && others_ok;
        say!("sgiprobe: {}", if ok { "PASS" } else { "FAIL" });
        hvc::system_off()
    }
}

#[cfg(not(target_arch = "arm"))]
fn main() {
    eprintln!("sgiprobe is a guest for carve: build it with scripts/build-stubs");
    std::process::exit(2);
}
