//! vtimer: a guest that takes many virtual-timer interrupts through its GIC, and times them.
//!
//! With several guests on the machine its GIC is carve's virtual one (GICD
//! emulated, GICV at the GICC address, PPI 27 injected as a hardware
//! interrupt); alone it is the physical GIC passed through. Two phases, timed
//! with CNTVCT (under `qemu -icount shift=0` a tick is CNTFRQ-th of a second
//! and an instruction one nanosecond):
//! - latency: `LATENCY` times, the timer armed 2000 ticks ahead; the handler
//!   reads CNTVCT first thing: ticks from CVAL to the handler's first
//!   instruction, summed (physical exception, monitor, injection, the guest's
//!   IRQ vector);
//! - round trip: the timer's deadline in the past (CVAL 0), `ROUNDS`
//!   interrupts back to back, each acknowledged, masked at the timer, EOIed
//!   and unmasked again by the handler: the whole cycle, the guest's handler
//!   and EOI included.
//!
//! - GICD cost: `GICD_LOOPS` word reads of GICD_ISENABLER0 and writes of
//!   GICD_IPRIORITYR0 (SGIs 0-3: its own), against the same loops on RAM.
//! - priority: the timer's priority is 0xa0; with the CPU interface's
//!   priority mask at 0xa0 its pending interrupt must not be taken (GICv2
//!   3.3: only a priority higher than the mask is signalled), and once the
//!   mask is 0xff it must be.
//!
//! Any other interrupt ID it acknowledges is a failure (another guest's SGI,
//! say). Output: `vtimer: latency loops=L ticks=T freq=F`, `vtimer: roundtrip
//! loops=N ticks=T freq=F`, `vtimer: gicd-read loops=N ticks=T baseline=B
//! freq=F`, the same for `gicd-write`, then `vtimer: PASS` (or `FAIL` with the reason).
#![cfg_attr(target_arch = "arm", no_std, no_main)]

#[cfg(target_arch = "arm")]
mod stub {
    use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

    use carve_stubs::gic::{self, GICC, GICC_EOIR, GICC_IAR, GICD, VTIMER};
    use carve_stubs::{hvc, rt, say, timer};

    carve_stubs::entry!(main);

    const LATENCY: u32 = 200;
    const GICD_LOOPS: u32 = 2000;

    core::arch::global_asm!(
        r#"
        .arm
        .section .text.vt_loops, "ax", %progbits
        @ vt_load(n, addr): n word loads from addr.
        .global vt_load
        .type vt_load, %function
vt_load:
1:      ldr r2, [r1]
        subs r0, r0, #1
        bne 1b
        mov r0, r2
        bx lr
        @ vt_store(n, addr, value): n word stores to addr.
        .global vt_store
        .type vt_store, %function
vt_store:
1:      str r2, [r1]
        subs r0, r0, #1
        bne 1b
        bx lr
"#
    );

    extern "C" {
        fn vt_load(n: u32, addr: u32) -> u32;
        fn vt_store(n: u32, addr: u32, value: u32);
    }

    /// Counter ticks `f` takes.
    fn timed(f: impl FnOnce()) -> u64 {
        let t0 = timer::cntvct();
        f();
        timer::cntvct() - t0
    }
    const ROUNDS: u32 = 5000;

    static COUNT: AtomicU32 = AtomicU32::new(0);
    static LIMIT: AtomicU32 = AtomicU32::new(0);
    /// Latency phase: sum of (CNTVCT at the handler) - CVAL.
    static LATENCY_SUM: AtomicU64 = AtomicU64::new(0);
    static MEASURE_LATENCY: AtomicU32 = AtomicU32::new(0);
    static OTHER: AtomicU32 = AtomicU32::new(0);
    static OTHER_ID: AtomicU32 = AtomicU32::new(0);

    extern "C" fn on_irq() {
        let t = timer::cntvct();
        let iar = gic::read(GICC + GICC_IAR);
        let id = iar & 0x3ff;
        if id == VTIMER {
            if MEASURE_LATENCY.load(Ordering::Relaxed) != 0 {
                LATENCY_SUM.fetch_add(t.wrapping_sub(gic::vtimer_cval()), Ordering::Relaxed);
            }
            let n = COUNT.load(Ordering::Relaxed) + 1;
            let last = n >= LIMIT.load(Ordering::Relaxed);
            // The line drops here (masked) and rises again after the EOI (unmasked):
            // QEMU 7.2 signals a level interrupt again only on a change of its line
            // once it was deactivated through a HW list register (measured).
            gic::set_vtimer_ctl(0b11);
            COUNT.store(n, Ordering::Release);
            gic::write(GICC + GICC_EOIR, iar);
            if !last && MEASURE_LATENCY.load(Ordering::Relaxed) == 0 {
                gic::set_vtimer_ctl(1);
            }
            return;
        } else if id < 1020 {
            OTHER.fetch_add(1, Ordering::Relaxed);
            OTHER_ID.store(iar, Ordering::Relaxed);
        }
        if id < 1020 {
            gic::write(GICC + GICC_EOIR, iar);
        }
    }

    /// Waits until `COUNT` reaches `n`, or gives up after `spins`.
    fn wait_count(n: u32, spins: u32) -> bool {
        for _ in 0..spins {
            if COUNT.load(Ordering::Acquire) >= n {
                return true;
            }
        }
        COUNT.load(Ordering::Acquire) >= n
    }

    fn main(_dtb: u32) -> ! {
        let freq = timer::cntfrq();
        rt::set_irq_handler(on_irq);
        let typer = gic::read(GICD + gic::GICD_TYPER);
        let targets = gic::read(GICD + gic::GICD_ITARGETSR);
        say!("vtimer: GICD_TYPER {:#x} IIDR {:#x} ITARGETSR0 {:#x}", typer, gic::read(GICD + gic::GICD_IIDR), targets);
        gic::write(GICD + gic::GICD_IPRIORITYR + 24, 0xa000_0000);
        gic::write(GICD + gic::GICD_ISENABLER, 1 << VTIMER);
        let enabled = gic::read(GICD + gic::GICD_ISENABLER) & (1 << VTIMER) != 0;
        gic::enable();
        gic::irqs_on();

        // Latency: one interrupt per arming.
        MEASURE_LATENCY.store(1, Ordering::Relaxed);
        LIMIT.store(u32::MAX, Ordering::Relaxed);
        let mut lat_ok = true;
        for i in 0..LATENCY {
            gic::set_vtimer_cval(timer::cntvct() + 2000);
            gic::set_vtimer_ctl(1);
            if !wait_count(i + 1, 10_000_000) {
                lat_ok = false;
                break;
            }
        }
        let lat_ticks = LATENCY_SUM.load(Ordering::Relaxed);

        // Round trip: the line stays asserted until ROUNDS interrupts were taken.
        MEASURE_LATENCY.store(0, Ordering::Relaxed);
        COUNT.store(0, Ordering::Relaxed);
        LIMIT.store(ROUNDS, Ordering::Relaxed);
        let t0 = timer::cntvct();
        gic::set_vtimer_cval(0);
        gic::set_vtimer_ctl(1);
        let rt_ok = wait_count(ROUNDS, 100_000_000);
        let t1 = timer::cntvct();
        gic::irqs_off();

        // GICD cost: emulated (virtual GIC) or the device itself (passed through).
        let ram_word: u32 = 0;
        let ram = core::ptr::addr_of!(ram_word) as u32;
        // SAFETY: loads and stores of `ram_word`, a live local, and of the guest's own GICD registers
        // (ISENABLER0 read; IPRIORITYR0, the priorities of its SGIs 0-3, written with the value it holds).
        let (rd_base, rd, wr_base, wr) = unsafe {
            (
                timed(|| {
                    vt_load(GICD_LOOPS, ram);
                }),
                timed(|| {
                    vt_load(GICD_LOOPS, GICD + gic::GICD_ISENABLER);
                }),
                timed(|| vt_store(GICD_LOOPS, ram, 0)),
                timed(|| vt_store(GICD_LOOPS, GICD + gic::GICD_IPRIORITYR, 0xa0a0_a0a0)),
            )
        };
        // Priority: masked at 0xa0 (its own priority), then let through.
        COUNT.store(0, Ordering::Relaxed);
        LIMIT.store(1, Ordering::Relaxed);
        gic::write(GICC + gic::GICC_PMR, 0xa0);
        gic::set_vtimer_cval(0);
        gic::set_vtimer_ctl(1);
        gic::irqs_on();
        let masked_taken = u32::from(wait_count(1, 2_000_000));
        gic::write(GICC + gic::GICC_PMR, 0xff);
        let unmasked_taken = wait_count(1, 10_000_000);
        gic::irqs_off();
        gic::set_vtimer_ctl(0b10);
        let prio_ok = masked_taken == 0 && unmasked_taken;
        say!(
            "vtimer: priority 0xa0 under mask 0xa0: {} taken (want 0); under mask 0xff: taken {}",
            masked_taken,
            unmasked_taken
        );
        say!("vtimer: gicd-read loops={} ticks={} baseline={} freq={}", GICD_LOOPS, rd, rd_base, freq);
        say!("vtimer: gicd-write loops={} ticks={} baseline={} freq={}", GICD_LOOPS, wr, wr_base, freq);
        say!("vtimer: latency loops={} ticks={} freq={}", LATENCY, lat_ticks, freq);
        say!("vtimer: roundtrip loops={} ticks={} freq={}", ROUNDS, t1 - t0, freq);
        let other = OTHER.load(Ordering::Relaxed);
        // ITARGETSR0 reads its own CPU's bit, or zero with one CPU interface (GICv2 4.3.12).
        let one_cpu = (typer >> 5) & 7 == 0;
        let targets_ok = targets == if one_cpu { 0 } else { 0x0101_0101 };
        let ok = lat_ok && rt_ok && enabled && other == 0 && targets_ok && prio_ok;
        if !ok {
            say!(
                "vtimer: latency phase done {}, round trips done {} ({} taken), enable read back {}, ITARGETSR0 {:#x}, {} other interrupts (last IAR {:#x})",
                lat_ok,
                rt_ok,
                COUNT.load(Ordering::Relaxed),
                enabled,
                targets,
                other,
                OTHER_ID.load(Ordering::Relaxed)
            );
        }
        say!("vtimer: {}", if ok { "PASS" } else { "FAIL" });
        hvc::system_off()
    }
}

#[cfg(not(target_arch = "arm"))]
fn main() {
    eprintln!("vtimer is a guest for carve: build it with scripts/build-stubs");
    std::process::exit(2);
}
