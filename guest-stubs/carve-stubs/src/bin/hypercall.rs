//! hypercall: a guest that makes PSCI and carve calls with good and bad arguments and checks the answers.
//!
//! Run with two vCPUs on a machine with three CPUs, so that there is a CPU
//! the guest does not own. The expected answers come from the PSCI
//! specification (Arm DEN0022D: return codes in table 5, CPU_ON 5.6,
//! AFFINITY_INFO 5.7, MIGRATE_INFO_TYPE 5.8, PSCI_FEATURES 5.15), the SMC
//! Calling Convention (Arm DEN0028: an unknown function ID returns
//! NOT_SUPPORTED, -1; r4 and up are preserved) and carve's own ABI
//! (hyp/abi/src/hypercall.rs). Where the specification allows more than
//! one answer, each allowed one is accepted.
//!
//! It also starts its second vCPU twice (CPU_ON, which must run the entry
//! point in SVC mode with the MMU off and r0 = the context; the vCPU waits
//! until this CPU has checked it is on, then calls CPU_OFF) and watches
//! AFFINITY_INFO follow.
//!
//! Output: one line per check, `hypercall: <call>: got <code>, want <codes>: ok` (or `FAIL`),
//! then `hypercall: N checks, M failed, PASS` (or `FAIL`).
#![cfg_attr(target_arch = "arm", no_std, no_main)]

#[cfg(target_arch = "arm")]
mod stub {
    use core::arch::global_asm;
    use core::fmt::Write;

    use carve_stubs::abi::{self, status_name};
    use carve_stubs::console::Line;
    use carve_stubs::{hvc, rt, say, timer, Hex};

    carve_stubs::entry!(main);

    global_asm!(
        r#"
        .arm
        .arch_extension virt
        @ hc_nop_preserves() -> bitmask of registers a NOP hypercall changed:
        @ bit n = rn (4-11), 13 = SP_svc, 14 = LR_svc, 15 = LR_usr, 16 = SP_usr.
        @ (Hyp mode shares LR_usr: a monitor that does not save it corrupts the guest's.)
        .section .text.hc_nop_preserves, "ax", %progbits
        .global hc_nop_preserves
        .type hc_nop_preserves, %function
hc_nop_preserves:
        push {{r4-r11, lr}}
        cps #0x1f
        mov r2, sp
        mov r3, lr
        ldr sp, =0x5e5e5e50
        ldr lr, =0x1e1e1e1e
        cps #0x13
        push {{r2, r3}}
        ldr r1, =hc_saved_sp
        str sp, [r1]
        ldr r4, =0x44440004
        ldr r5, =0x44440005
        ldr r6, =0x44440006
        ldr r7, =0x44440007
        ldr r8, =0x44440008
        ldr r9, =0x44440009
        ldr r10, =0x4444000a
        ldr r11, =0x4444000b
        ldr lr, =0x1e5c0de0
        movw r0, #{nop_lo}
        movt r0, #{nop_hi}
        hvc #0
        mov r0, #0
        ldr r1, =0x44440004
        cmp r4, r1
        orrne r0, r0, #(1 << 4)
        ldr r1, =0x44440005
        cmp r5, r1
        orrne r0, r0, #(1 << 5)
        ldr r1, =0x44440006
        cmp r6, r1
        orrne r0, r0, #(1 << 6)
        ldr r1, =0x44440007
        cmp r7, r1
        orrne r0, r0, #(1 << 7)
        ldr r1, =0x44440008
        cmp r8, r1
        orrne r0, r0, #(1 << 8)
        ldr r1, =0x44440009
        cmp r9, r1
        orrne r0, r0, #(1 << 9)
        ldr r1, =0x4444000a
        cmp r10, r1
        orrne r0, r0, #(1 << 10)
        ldr r1, =0x4444000b
        cmp r11, r1
        orrne r0, r0, #(1 << 11)
        ldr r1, =0x1e5c0de0
        cmp lr, r1
        orrne r0, r0, #(1 << 14)
        ldr r1, =hc_saved_sp
        ldr r1, [r1]
        cmp sp, r1
        orrne r0, r0, #(1 << 13)
        mov r4, r0
        cps #0x1f
        ldr r1, =0x5e5e5e50
        cmp sp, r1
        orrne r4, r4, #(1 << 16)
        ldr r1, =0x1e1e1e1e
        cmp lr, r1
        orrne r4, r4, #(1 << 15)
        cps #0x13
        pop {{r2, r3}}
        cps #0x1f
        mov sp, r2
        mov lr, r3
        cps #0x13
        mov r0, r4
        pop {{r4-r11, pc}}
        .ltorg

        .section .bss.hc_saved_sp, "aw", %nobits
        .balign 4
hc_saved_sp:
        .space 4
"#,
        nop_lo = const abi::NOP & 0xffff,
        nop_hi = const abi::NOP >> 16,
    );

    extern "C" {
        fn hc_nop_preserves() -> u32;
    }

    /// The context values the secondary must see in r0.
    const CONTEXTS: [u32; 2] = [0xc0de_0001, 0xc0de_0002];
    /// How long to wait for a secondary to run or to be off.
    const WAIT_S: u64 = 10;

    struct Checks {
        n: u32,
        failed: u32,
    }

    impl Checks {
        /// A check whose answer must be one of `want`.
        fn expect(&mut self, what: core::fmt::Arguments<'_>, got: i32, want: &[i32]) {
            let ok = want.contains(&got);
            let mut line = Line::new();
            let _ = write!(line, "hypercall: {}: got {} ({}), want ", what, got, status_name(got));
            for (i, w) in want.iter().enumerate() {
                let _ = write!(line, "{}{} ({})", if i > 0 { " or " } else { "" }, w, status_name(*w));
            }
            let _ = write!(line, ": {}", if ok { "ok" } else { "FAIL" });
            line.finish();
            self.tally(ok);
        }

        /// A check decided by the caller, with its own words.
        fn check(&mut self, what: core::fmt::Arguments<'_>, ok: bool) {
            say!("hypercall: {}: {}", what, if ok { "ok" } else { "FAIL" });
            self.tally(ok);
        }

        fn tally(&mut self, ok: bool) {
            self.n += 1;
            if !ok {
                self.failed += 1;
            }
        }
    }

    /// Polls `done` until it holds or [`WAIT_S`] seconds of counter time pass.
    fn wait_until(mut done: impl FnMut() -> bool) -> bool {
        let freq = u64::from(timer::cntfrq().max(1));
        let deadline = timer::cntvct() + WAIT_S * freq;
        while timer::cntvct() < deadline {
            if done() {
                return true;
            }
        }
        done()
    }

    /// Starts vCPU 1 with `context`, waits for it to run, lets it turn itself off, waits for that.
    fn secondary_round(c: &mut Checks, round: usize, entry: u32) {
        let ctx = CONTEXTS[round];
        let runs_before = rt::secondary_run().runs;
        c.expect(
            format_args!("CPU_ON(1, {}, {:#x}) round {}", Hex(entry.into()), ctx, round + 1),
            hvc::cpu_on(1, entry, ctx),
            &[abi::SUCCESS],
        );
        // Asked again at once: it is pending or already on (it cannot be off: it waits for us).
        c.expect(
            format_args!("CPU_ON(1) again at once"),
            hvc::cpu_on(1, entry, ctx),
            &[abi::ALREADY_ON, abi::ON_PENDING],
        );
        let ran = wait_until(|| rt::secondary_run().runs > runs_before);
        let s = rt::secondary_run();
        c.check(
            format_args!(
                "vCPU 1 ran (round {}): context {:#x} (want {:#x}), mode {:#x} (want SVC 0x13), MMU {}",
                round + 1,
                s.context,
                ctx,
                s.mode,
                if s.mmu_on { "on" } else { "off" }
            ),
            ran && s.context == ctx && s.mode == 0x13 && !s.mmu_on,
        );
        c.expect(format_args!("AFFINITY_INFO(1, 0) while it runs"), hvc::affinity_info(1, 0), &[abi::AFF_ON]);
        c.expect(format_args!("CPU_ON(1) while it runs"), hvc::cpu_on(1, entry, ctx), &[abi::ALREADY_ON]);
        rt::release_secondary(s.runs);
        let mut last = abi::AFF_ON;
        let off = wait_until(|| {
            last = hvc::affinity_info(1, 0);
            last == abi::AFF_OFF
        });
        c.check(
            format_args!("AFFINITY_INFO(1, 0) after its CPU_OFF (round {}): {} (want OFF 1)", round + 1, last),
            off,
        );
        c.check(
            format_args!(
                "it ran once (round {}): {} runs, and its CPU_OFF did not return: {:?}",
                round + 1,
                rt::secondary_run().runs,
                rt::secondary_run().cpu_off_returned
            ),
            rt::secondary_run().runs == runs_before + 1 && rt::secondary_run().cpu_off_returned.is_none(),
        );
    }

    fn main(dtb: u32) -> ! {
        let mut ram = None;
        if let Err(e) = rt::read_dt(dtb, |r| {
            if r.is_memory && r.size > 0 && ram.is_none() {
                ram = Some((r.base, r.size));
            }
        }) {
            say!("hypercall: DTB at {}: {}, FAIL", Hex(dtb.into()), e);
            hvc::system_off()
        }
        let Some((base, size)) = ram else {
            say!("hypercall: no memory node in the DTB, FAIL");
            hvc::system_off()
        };
        let (base, end) = (base as u32, (base + size) as u32);
        let entry = rt::secondary_entry();
        let mut c = Checks { n: 0, failed: 0 };
        say!(
            "hypercall: RAM {}-{}, two vCPUs expected, secondary entry {}",
            Hex(base.into()),
            Hex(end.into()),
            Hex(entry.into())
        );

        // PSCI_VERSION: 1.x (FEATURES below exists from 1.0), bit 31 clear.
        let v = hvc::psci_version();
        c.check(format_args!("PSCI_VERSION: {:#x} = {}.{} (want 1.x)", v, v >> 16, v & 0xffff), v >> 16 == 1);
        // The same through SMC: the monitor must trap it (HCR.TSC) and answer the same.
        let s = hvc::smc(abi::PSCI_VERSION, 0, 0, 0);
        c.check(format_args!("PSCI_VERSION through SMC: {:#x} (want the HVC answer {:#x})", s, v), s == v);

        for (fid, name) in [
            (abi::PSCI_VERSION, "PSCI_VERSION"),
            (abi::CPU_OFF, "CPU_OFF"),
            (abi::CPU_ON, "CPU_ON"),
            (abi::AFFINITY_INFO, "AFFINITY_INFO"),
            (abi::MIGRATE_INFO_TYPE, "MIGRATE_INFO_TYPE"),
            (abi::SYSTEM_OFF, "SYSTEM_OFF"),
            (abi::SYSTEM_RESET, "SYSTEM_RESET"),
            (abi::PSCI_FEATURES, "PSCI_FEATURES"),
        ] {
            c.expect(format_args!("PSCI_FEATURES({})", name), hvc::psci_features(fid), &[abi::SUCCESS]);
        }
        c.expect(
            format_args!("PSCI_FEATURES(0x840000ff, not a PSCI function)"),
            hvc::psci_features(0x8400_00ff),
            &[abi::NOT_SUPPORTED],
        );
        c.expect(
            format_args!("PSCI_FEATURES(CONSOLE_WRITE, a carve call)"),
            hvc::psci_features(abi::CONSOLE_WRITE),
            &[abi::NOT_SUPPORTED],
        );
        for fid in [0x8400_00ffu32, 0xc400_00ff, 0x8600_ffff, 0x8200_0001, 0x8300_0000] {
            c.expect(format_args!("unknown function {:#010x}", fid), hvc::call(fid, 0, 0, 0), &[abi::NOT_SUPPORTED]);
        }
        c.expect(
            format_args!("MIGRATE_INFO_TYPE (no Trusted OS)"),
            hvc::call(abi::MIGRATE_INFO_TYPE, 0, 0, 0),
            &[abi::MIGRATE_NOT_REQUIRED],
        );

        // AFFINITY_INFO and CPU_ON with bad arguments.
        c.expect(format_args!("AFFINITY_INFO(0, 0), itself"), hvc::affinity_info(0, 0), &[abi::AFF_ON]);
        c.expect(format_args!("AFFINITY_INFO(1, 0), its second vCPU"), hvc::affinity_info(1, 0), &[abi::AFF_OFF]);
        c.expect(
            format_args!("AFFINITY_INFO(2, 0), a machine CPU it does not own"),
            hvc::affinity_info(2, 0),
            &[abi::INVALID_PARAMETERS],
        );
        c.expect(
            format_args!("CPU_ON(2), a machine CPU it does not own"),
            hvc::cpu_on(2, entry, 0),
            &[abi::INVALID_PARAMETERS],
        );
        c.expect(format_args!("CPU_ON(0x100), no such CPU"), hvc::cpu_on(0x100, entry, 0), &[abi::INVALID_PARAMETERS]);
        c.expect(
            format_args!("CPU_ON(1, 0x00001000), entry outside its RAM"),
            hvc::cpu_on(1, 0x1000, 0),
            &[abi::INVALID_ADDRESS],
        );
        c.expect(
            format_args!("CPU_ON(1, {}), entry just past its RAM", Hex(end.into())),
            hvc::cpu_on(1, end, 0),
            &[abi::INVALID_ADDRESS],
        );
        c.expect(
            format_args!("CPU_ON(1, {}), entry just below its RAM", Hex((base - 4).into())),
            hvc::cpu_on(1, base - 4, 0),
            &[abi::INVALID_ADDRESS],
        );
        c.expect(format_args!("CPU_ON(0), itself"), hvc::cpu_on(0, entry, 0), &[abi::ALREADY_ON]);
        c.expect(
            format_args!("AFFINITY_INFO(1, 0) after the refused CPU_ONs"),
            hvc::affinity_info(1, 0),
            &[abi::AFF_OFF],
        );

        // The second vCPU, started twice.
        secondary_round(&mut c, 0, entry);
        secondary_round(&mut c, 1, entry);

        // carve's calls.
        c.expect(format_args!("NOP"), hvc::nop(), &[abi::SUCCESS]);
        // SAFETY: the assembly saves and restores every register it sets
        // (including the User-mode SP and LR, through System mode) and makes one NOP call.
        let changed = unsafe { hc_nop_preserves() };
        c.check(
            format_args!("NOP preserves r4-r11, SP and LR (SVC and User): changed mask {:#x} (bit n = rn)", changed),
            changed == 0,
        );
        let vmid = hvc::info(abi::INFO_VMID);
        c.check(format_args!("INFO(VMID): {} (want 1-255)", vmid), (1..=255).contains(&vmid));
        c.expect(format_args!("INFO(RESTARTS) on the first boot"), hvc::info(abi::INFO_RESTARTS), &[0]);
        let free = hvc::info(abi::INFO_FREE_TABLE_PAGES);
        c.check(format_args!("INFO(FREE_TABLE_PAGES): {} (want >= 0)", free), free >= 0);
        c.expect(
            format_args!("INFO(0x1234), unknown"),
            hvc::info(0x1234),
            &[abi::INVALID_PARAMETERS, abi::NOT_SUPPORTED],
        );
        c.expect(format_args!("DUMP_MAP"), hvc::call(abi::DUMP_MAP, 0, 0, 0), &[abi::SUCCESS]);
        c.expect(
            format_args!("CONSOLE_WRITE(0x00001000, 4), outside its RAM"),
            hvc::console_write(0x1000, 4),
            &[abi::INVALID_ADDRESS],
        );
        c.expect(
            format_args!("CONSOLE_WRITE({}, 4), across the end of its RAM", Hex((end - 2).into())),
            hvc::console_write(end - 2, 4),
            &[abi::INVALID_ADDRESS],
        );
        c.expect(
            format_args!("CONSOLE_WRITE(0xfffffff0, 32), wrapping past 4 GiB"),
            hvc::console_write(0xffff_fff0, 32),
            &[abi::INVALID_ADDRESS],
        );
        // 300 bytes: a head the test looks for, dots, and a tail past byte 256 that must not be printed.
        let mut text = [b'.'; 300];
        let head = b"hypercall: a 300-byte console write, cut at 256 by the monitor: ";
        let tail = b"this tail must not be printed";
        text[..head.len()].copy_from_slice(head);
        text[300 - tail.len()..].copy_from_slice(tail);
        let long = hvc::console_write(text.as_ptr() as u32, text.len() as u32);
        c.expect(format_args!("CONSOLE_WRITE of {} bytes", text.len()), long, &[abi::CONSOLE_MAX as i32]);
        c.expect(format_args!("CONSOLE_WRITE of 0 bytes"), hvc::console_write(text.as_ptr() as u32, 0), &[0]);

        say!("hypercall: {} checks, {} failed, {}", c.n, c.failed, if c.failed == 0 { "PASS" } else { "FAIL" });
        hvc::system_off()
    }
}

#[cfg(not(target_arch = "arm"))]
fn main() {
    eprintln!("hypercall is a guest for carve: build it with scripts/build-stubs");
    std::process::exit(2);
}
