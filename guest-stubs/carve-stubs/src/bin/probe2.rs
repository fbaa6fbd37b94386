//! probe2: instruction fetches, cache maintenance and stores outside the guest's RAM.
//!
//! Run with `carve,on-fault = "inject"` and its MMU off (VA = IPA), in 16 MiB
//! at IPA 0x40000000:
//!
//! (a) **Instruction fetch.** It branches (`blx`) to IPAs it was not given.
//!     The monitor must log a stage-2 instruction abort and inject a prefetch
//!     abort: taken at this stub's own prefetch-abort vector (its vector
//!     table replaces the runtime's for (a) and (b)) with IFAR = the target
//!     and IFSR = a synchronous external abort (short format: FS 0b01000);
//!     the handler records them and returns to a known continuation.
//! (b) **Cache maintenance by VA.** `DCCIMVAC` (clean and invalidate to the
//!     point of coherency) and `DCIMVAC` (invalidate) on IPAs it was not
//!     given. Arm ARM B3.12 lets these take a stage-2 abort; QEMU may treat
//!     them as no-ops. Data aborts taken at them are counted (DFAR must be
//!     the address) and resumed after the instruction; none at all is
//!     reported as such, not as a failure (the test decides).
//! (c) **Stores.** `str` to IPAs it was not given, through the runtime's
//!     touch_write: each must be refused with a data abort (DFAR, WnR).
//!
//! Output (CONSOLE_WRITE), one line per part, then
//! `probe2: ifetch T tries R refused, dcache T tries R aborted, store T tries R refused, PASS`.
#![cfg_attr(target_arch = "arm", no_std, no_main)]

#[cfg(target_arch = "arm")]
mod stub {
    use core::arch::global_asm;
    use core::sync::atomic::{AtomicU32, Ordering};

    use carve_stubs::rt::{self, Touch};
    use carve_stubs::{hvc, say, Hex};

    carve_stubs::entry!(main);

    /// IPAs outside the guest's RAM (0x40000000 + 16 MiB) and its devices:
    /// a virtio-mmio slot, RAM of the machine above the guest's, the end of the 32-bit space.
    const FOREIGN: [u32; 3] = [0x0a00_0000, 0x5000_0000, 0xfff0_0000];

    /// What probe2's own abort handlers saw: [count, FSR, FAR, LR] for prefetch and data aborts.
    #[no_mangle]
    static PROBE2_PABT: [AtomicU32; 4] = [const { AtomicU32::new(0) }; 4];
    #[no_mangle]
    static PROBE2_DABT: [AtomicU32; 4] = [const { AtomicU32::new(0) }; 4];

    global_asm!(
        r#"
    .arm
    .section .text.probe2_vectors, "ax", %progbits
    .balign 32
    .global probe2_vectors
probe2_vectors:
    b probe2_unexpected
    b probe2_unexpected
    b probe2_unexpected
    b probe2_pabt
    b probe2_dabt
    b probe2_unexpected
    b probe2_unexpected
    b probe2_unexpected

probe2_pabt:
    push {{r0, r1}}
    ldr r0, =PROBE2_PABT
    ldr r1, [r0]
    add r1, r1, #1
    str r1, [r0]
    mrc p15, 0, r1, c5, c0, 1   @ IFSR
    str r1, [r0, #4]
    mrc p15, 0, r1, c6, c0, 2   @ IFAR
    str r1, [r0, #8]
    str lr, [r0, #12]
    pop {{r0, r1}}
    ldr lr, =probe2_continue
    movs pc, lr                 @ back to SVC mode (SPSR_abt), at the continuation

probe2_dabt:
    push {{r0, r1}}
    ldr r0, =PROBE2_DABT
    ldr r1, [r0]
    add r1, r1, #1
    str r1, [r0]
    mrc p15, 0, r1, c5, c0, 0   @ DFSR
    str r1, [r0, #4]
    mrc p15, 0, r1, c6, c0, 0   @ DFAR
    str r1, [r0, #8]
    str lr, [r0, #12]
    pop {{r0, r1}}
    subs pc, lr, #4             @ resume after the aborted instruction

probe2_unexpected:
    b probe2_unexpected         @ the test times out or sees no summary

    @ Branches to r0, which must abort; the prefetch-abort handler returns to probe2_continue.
    .section .text.probe2_jump, "ax", %progbits
    .global probe2_jump
probe2_jump:
    push {{r4-r11, lr}}
    blx r0
    .global probe2_continue
probe2_continue:
    pop {{r4-r11, pc}}

    .section .text.probe2_dc, "ax", %progbits
    .global probe2_dccimvac
probe2_dccimvac:
    dsb
    mcr p15, 0, r0, c7, c14, 1
    dsb
    isb
    bx lr
    .global probe2_dcimvac
probe2_dcimvac:
    dsb
    mcr p15, 0, r0, c7, c6, 1
    dsb
    isb
    bx lr

    .section .text.probe2_vbar, "ax", %progbits
    .global probe2_set_vbar
probe2_set_vbar:
    mrc p15, 0, r1, c12, c0, 0
    mcr p15, 0, r0, c12, c0, 0
    isb
    mov r0, r1
    bx lr
    .ltorg
"#
    );

    extern "C" {
        fn probe2_jump(target: u32);
        fn probe2_dccimvac(va: u32);
        fn probe2_dcimvac(va: u32);
        fn probe2_set_vbar(vbar: u32) -> u32;
        static probe2_vectors: u8;
    }

    fn snapshot(a: &[AtomicU32; 4]) -> [u32; 4] {
        [0, 1, 2, 3].map(|i| a[i].load(Ordering::Acquire))
    }

    fn main(_dtb: u32) -> ! {
        let mut ok = true;
        // SAFETY: probe2_vectors is a 32-byte-aligned vector table whose handlers
        // use the Abort stack the runtime set up; the old VBAR is put back below.
        let old_vbar = unsafe { probe2_set_vbar(&raw const probe2_vectors as u32) };

        // (a) Instruction fetches.
        let mut fetch_refused = 0;
        for &target in &FOREIGN {
            let before = snapshot(&PROBE2_PABT);
            // SAFETY: the branch target is not this guest's: the fetch aborts and the
            // handler returns to probe2_continue, which restores the callee-saved registers.
            unsafe { probe2_jump(target) };
            let after = snapshot(&PROBE2_PABT);
            let taken = after[0] - before[0];
            let good = taken == 1 && after[1] & 0x40f == 0b1000 && after[2] == target && after[3] == target + 4;
            say!(
                "probe2: ifetch {}: {} prefetch abort(s), IFSR {:#x}, IFAR {}, LR {}, {}",
                Hex(target.into()),
                taken,
                after[1],
                Hex(after[2].into()),
                Hex(after[3].into()),
                if good { "ok" } else { "FAIL" }
            );
            if good {
                fetch_refused += 1;
            } else {
                ok = false;
            }
        }

        // (b) Cache maintenance by VA.
        let mut dc_aborted = 0;
        let mut dc_tries = 0;
        for (name, op) in [("DCCIMVAC", probe2_dccimvac as unsafe extern "C" fn(u32)), ("DCIMVAC", probe2_dcimvac)] {
            for &target in &FOREIGN {
                dc_tries += 1;
                let before = snapshot(&PROBE2_DABT);
                // SAFETY: a cache maintenance operation by VA: it either aborts (the
                // handler resumes after it) or completes; nothing of ours is at `target`.
                unsafe { op(target) };
                let after = snapshot(&PROBE2_DABT);
                let taken = after[0] - before[0];
                let good = taken == 0 || (taken == 1 && after[2] == target);
                say!(
                    "probe2: {} {}: {} data abort(s), DFSR {:#x}, DFAR {}, {}",
                    name,
                    Hex(target.into()),
                    taken,
                    if taken > 0 { after[1] } else { 0 },
                    Hex(if taken > 0 { after[2] } else { 0 }.into()),
                    if good { "ok" } else { "FAIL" }
                );
                dc_aborted += taken;
                ok &= good;
            }
        }
        // SAFETY: back to the runtime's vectors (for (c)'s touch_write).
        unsafe { probe2_set_vbar(old_vbar) };

        // (c) Stores.
        let mut store_refused = 0;
        for &target in &FOREIGN {
            let good = match rt::touch_write(target, 0xdead_beef) {
                Touch::Refused(a) => {
                    let good = a.dfar == target && a.dfsr & (1 << 11) != 0 && a.dfsr & 0x40f == 0b1000;
                    say!(
                        "probe2: store {}: refused, DFSR {:#x}, DFAR {}, {}",
                        Hex(target.into()),
                        a.dfsr,
                        Hex(a.dfar.into()),
                        if good { "ok" } else { "FAIL" }
                    );
                    good
                }
                Touch::Done(_) => {
                    say!("probe2: store {}: not refused, FAIL", Hex(target.into()));
                    false
                }
            };
            if good {
                store_refused += 1;
            }
            ok &= good;
        }

        say!(
            "probe2: ifetch {} tries {} refused, dcache {} tries {} aborted, store {} tries {} refused, {}",
            FOREIGN.len(),
            fetch_refused,
            dc_tries,
            dc_aborted,
            FOREIGN.len(),
            store_refused,
            if ok { "PASS" } else { "FAIL" }
        );
        hvc::system_off()
    }
}

#[cfg(not(target_arch = "arm"))]
fn main() {
    eprintln!("probe2 is a guest for carve: build it with scripts/build-stubs");
    std::process::exit(2);
}
