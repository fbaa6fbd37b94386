//! trapcost: a guest that times HVC round trips and emulated MMIO reads with the virtual counter.
//!
//! Two loops of the same shape, run `LOOPS` times each, timed with CNTVCT
//! (ISB before each read) and compared with the same loop without the trap:
//! - `movw/movt r0, NOP; hvc #0` against `movw/movt; nop`: an HVC round trip
//!   to carve (trap, dispatch, return);
//! - `ldr r0, [TESTDEV + COUNTER]` against the same load from RAM: a stage-2
//!   data abort that carve emulates as an MMIO read (the test device page,
//!   hyp/abi/src/hypercall.rs), checked to count every read.
//!
//! Under `qemu -icount shift=0` every instruction takes 1 ns of virtual time:
//! instructions per trap = (ticks - baseline ticks) * 1e9 / CNTFRQ / LOOPS
//! (scripts/bench-traps prints that). Output, one line each:
//! `trapcost: hvc loops=L ticks=T baseline=B freq=F`, the same for `mmio`,
//! a line in nanoseconds for each, then `trapcost: PASS` (or `FAIL`).
#![cfg_attr(target_arch = "arm", no_std, no_main)]

#[cfg(target_arch = "arm")]
mod stub {
    use core::arch::global_asm;

    use carve_stubs::{abi, hvc, say, timer};

    carve_stubs::entry!(main);

    const LOOPS: u32 = 20_000;

    global_asm!(
        r#"
        .arm
        .arch_extension virt
        @ tc_hvc(n): n NOP hypercalls; returns the last result.
        .section .text.tc_loops, "ax", %progbits
        .global tc_hvc
        .type tc_hvc, %function
tc_hvc:
        push {{r4, lr}}
        mov r4, r0
1:      movw r0, #{nop_lo}
        movt r0, #{nop_hi}
        hvc #0
        subs r4, r4, #1
        bne 1b
        pop {{r4, pc}}

        @ tc_hvc_baseline(n): the same loop with a nop for the hvc.
        .global tc_hvc_baseline
        .type tc_hvc_baseline, %function
tc_hvc_baseline:
        push {{r4, lr}}
        mov r4, r0
1:      movw r0, #{nop_lo}
        movt r0, #{nop_hi}
        nop
        subs r4, r4, #1
        bne 1b
        pop {{r4, pc}}

        @ tc_load(n, addr): n word loads from addr; returns the last value.
        .global tc_load
        .type tc_load, %function
tc_load:
        push {{r4, lr}}
        mov r4, r0
1:      ldr r0, [r1]
        subs r4, r4, #1
        bne 1b
        pop {{r4, pc}}
"#,
        nop_lo = const abi::NOP & 0xffff,
        nop_hi = const abi::NOP >> 16,
    );

    extern "C" {
        fn tc_hvc(n: u32) -> u32;
        fn tc_hvc_baseline(n: u32) -> u32;
        fn tc_load(n: u32, addr: u32) -> u32;
    }

    /// Counter ticks `f` takes.
    fn timed(f: impl FnOnce() -> u32) -> (u64, u32) {
        let t0 = timer::cntvct();
        let r = f();
        let t1 = timer::cntvct();
        (t1 - t0, r)
    }

    /// Nanoseconds per iteration, in tenths.
    fn ns_tenths(ticks: u64, freq: u32, loops: u32) -> u64 {
        ticks * 10_000_000_000 / u64::from(freq.max(1)) / u64::from(loops)
    }

    fn main(_dtb: u32) -> ! {
        let freq = timer::cntfrq();
        let counter = (abi::TESTDEV_IPA + abi::TESTDEV_COUNTER) as u32;
        let id = (abi::TESTDEV_IPA + abi::TESTDEV_ID) as u32;
        let ram_word: u32 = 0;
        let ram = core::ptr::addr_of!(ram_word) as u32;
        say!("trapcost: CNTFRQ {} Hz, {} iterations per loop", freq, LOOPS);

        // SAFETY: the loop makes no call and touches no memory (a `nop` for the `hvc`).
        let (base_hvc, _) = timed(|| unsafe { tc_hvc_baseline(LOOPS) });
        // SAFETY: NOP hypercalls: per SMCCC only r0-r3 (and r12) change, and the assembly saves r4.
        let (hvc_ticks, nop_result) = timed(|| unsafe { tc_hvc(LOOPS) });
        // SAFETY: loads from `ram_word`, a live local of ours.
        let (base_mmio, _) = timed(|| unsafe { tc_load(LOOPS, ram) });
        // SAFETY: one load from the test device page, which carve emulates for every guest.
        let first = unsafe { tc_load(1, counter) };
        // SAFETY: as above, LOOPS loads from the emulated test device.
        let (mmio_ticks, last) = timed(|| unsafe { tc_load(LOOPS, counter) });
        // SAFETY: one load from the emulated test device.
        let magic = unsafe { tc_load(1, id) };

        say!("trapcost: hvc loops={} ticks={} baseline={} freq={}", LOOPS, hvc_ticks, base_hvc, freq);
        say!("trapcost: mmio loops={} ticks={} baseline={} freq={}", LOOPS, mmio_ticks, base_mmio, freq);
        let hvc_ns = ns_tenths(hvc_ticks.saturating_sub(base_hvc), freq, LOOPS);
        let mmio_ns = ns_tenths(mmio_ticks.saturating_sub(base_mmio), freq, LOOPS);
        let nop_ok = nop_result == abi::SUCCESS as u32;
        let count_ok = last.wrapping_sub(first) == LOOPS;
        let magic_ok = magic == abi::TESTDEV_MAGIC;
        let timed_ok = hvc_ticks > base_hvc && mmio_ticks > base_mmio;
        say!(
            "trapcost: hvc round trip {}.{} ns of guest time (NOP returned {:#x})",
            hvc_ns / 10,
            hvc_ns % 10,
            nop_result
        );
        say!(
            "trapcost: emulated mmio read {}.{} ns of guest time (COUNTER {} -> {}, {} reads; ID {:#010x})",
            mmio_ns / 10,
            mmio_ns % 10,
            first,
            last,
            last.wrapping_sub(first),
            magic
        );
        let ok = nop_ok && count_ok && magic_ok && timed_ok;
        if !ok {
            say!(
                "trapcost: NOP result {}, COUNTER counted every read {}, ID magic {}, traps slower than the baselines {}",
                if nop_ok { "ok" } else { "wrong" },
                if count_ok { "yes" } else { "NO" },
                if magic_ok { "ok" } else { "wrong" },
                if timed_ok { "yes" } else { "NO" }
            );
        }
        say!("trapcost: {}", if ok { "PASS" } else { "FAIL" });
        hvc::system_off()
    }
}

#[cfg(not(target_arch = "arm"))]
fn main() {
    eprintln!("trapcost is a guest for carve: build it with scripts/build-stubs");
    std::process::exit(2);
}
