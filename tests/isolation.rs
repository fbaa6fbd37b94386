//! Isolation between guests under QEMU: a guest's fault stays its own.
//!
//! Each test writes a machine (the shared test library's `virt_dts`: guests
//! under `/chosen`, their kernels loaded by `-device loader`) and runs the
//! monitor on it under QEMU `virt` with a timeout. A guest's kernel is either
//! one of the stubs (`scripts/build-stubs`) or a raw program the test writes.

use std::path::PathBuf;

use carve_tests::{compile_dts, number_after, run_dtb, stub, test_dir, virt_dts, GuestNode, Run, RunOptions, MEM_MIB};

const MIB: u64 = 1 << 20;

/// One guest: its node, with `carve,on-fault`.
fn guest(name: &'static str, kib: u64, module: u64, kernel: PathBuf, on_fault: &str) -> GuestNode {
    GuestNode { name, kib, cpus: 1, module, kernel, props: format!("\t\t\tcarve,on-fault = \"{on_fault}\";\n") }
}

/// Builds the machine for `guests` (`smp` CPUs), runs the monitor with the
/// guests' kernels loaded at their module addresses and returns the run.
fn run_guests(name: &str, smp: u32, guests: &[GuestNode]) -> Run {
    let dir = test_dir!("isolation", name);
    let (dtb, _) = compile_dts(&dir, &virt_dts(smp, MEM_MIB, "", guests));
    let loads = guests.iter().map(|g| (g.kernel.clone(), g.module)).collect();
    run_dtb(&dir, name, &dtb, &RunOptions { smp, loads, ..RunOptions::default() })
}

// --- the tests ------------------------------------------------------------------------

/// Two guests, one CPU each. guest@0's kernel is tests/monitor.rs's fault
/// program with a delay loop before the load: `mov r0, #0x0a000000`,
/// `mov r2, #0x02000000`, `1: subs r2, r2, #1`, `bne 1b`, `ldr r1, [r0]`
/// (QEMU virt's first virtio-mmio window, which no guest is given), `b .`.
/// The delay (32 M iterations, a small fraction of memtest's run) lets guest@1
/// enter before guest@0 faults, so the fault hits while both run (without it,
/// guest@0 faulted and ended before CPU 1 had even entered guest@1). With
/// `carve,on-fault = "stop"` the monitor logs the stage-2 data abort (IPA, PC,
/// HSR) and ends guest@0 alone. guest@1 runs memtest over its 64 MiB and must
/// finish it, PASS, after guest@0's fault; the run ends with status 10 (a
/// guest faulted) once guest@1 has powered off.
#[test]
fn a_faulting_guest_is_stopped_and_the_other_runs_on() {
    let name = "stop-one-of-two";
    let dir = test_dir!("isolation", name);
    let program: Vec<u8> = [0xe3a0_040au32, 0xe3a0_2402, 0xe252_2001, 0x1aff_fffd, 0xe590_1000, 0xeaff_fffe]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let faulter = dir.join("touch-virtio.bin");
    std::fs::write(&faulter, &program).expect("write the program");
    let guests = [
        guest("guest@0", 16 * 1024, 0x4800_0000, faulter, "stop"),
        guest("guest@1", 64 * 1024, 0x4900_0000, stub("memtest").to_path_buf(), "stop"),
    ];
    let run = run_guests(name, 2, &guests);
    run.assert_status(10);

    // guest@0: the fault, with IPA, PC (the ldr, fifth word of the kernel at IPA 0x40010000) and syndrome
    // (HSR.EC 0x24: a data abort from a guest; ISV, a word read into r1).
    let fault = run
        .line_index("vm: guest@0: stage-2 data abort at IPA 0x000a000000 (not mapped for it), PC 0x40010010, HSR 0x93");
    let entered1 = run.line_index("vm: guest@1: vCPU 0 on CPU 1 entering at IPA 0x40010000");
    assert!(
        entered1 < fault,
        "guest@1 entered only after guest@0 had faulted: the delay loop is too short\n{}",
        run.context()
    );
    let stopped = run.line_index("vm: guest@0 stopped after ");
    let ended = run.line_index("vm: guest@0 ended (");
    assert!(fault < stopped && stopped < ended, "fault, stop and end out of order\n{}", run.context());
    assert!(
        run.log.lines().nth(ended).is_some_and(|l| l.ends_with("; the other guests run on")),
        "guest@0's end does not say the other guests run on\n{}",
        run.context()
    );
    // guest@1 never faulted and was not stopped with guest@0.
    assert!(!run.log.contains("vm: guest@1: stage-2 data abort"), "guest@1 faulted\n{}", run.context());
    assert!(!run.log.contains("vm: guest@1: stage-2 instruction abort"), "guest@1 faulted\n{}", run.context());
    assert!(!run.log.contains("vm: guest@1 stopped"), "guest@1 was stopped\n{}", run.context());

    // guest@1: memtest over all of its RAM, PASS, reported after guest@0 had faulted.
    run.assert_no_fail("guest@1");
    let pass = run.line("guest@1", "memtest: bank ");
    assert!(
        pass.starts_with(&format!("memtest: bank 0x40000000+{:#010x}, ", 64 * MIB))
            && pass.ends_with(", 0 mismatches, PASS"),
        "{pass}\n{}",
        run.context()
    );
    let pass_at = run.line_index(" guest@1: memtest: bank ");
    assert!(
        pass_at > fault,
        "guest@1's PASS (line {pass_at}) came before guest@0's fault (line {fault})\n{}",
        run.context()
    );
    let off = run.line_index("vm: guest@1 powered off (SYSTEM_OFF)");
    assert!(off > pass_at, "{}", run.context());
    // The run ended only once both had: guest@0 faulted, guest@1 powered off.
    assert!(run.line_index("vm: guest@0: Faulted after 0 restart(s)") > off, "{}", run.context());
    assert!(run.line_index("vm: guest@1: PoweredOff after 0 restart(s)") > off, "{}", run.context());
}

/// probe2 (guest-stubs/carve-stubs/src/bin/probe2.rs), one 16 MiB guest with
/// `carve,on-fault = "inject"` and its MMU off, at three IPAs it was not given
/// (a virtio-mmio slot, machine RAM above its own, the top of the 32-bit space):
/// (a) branches there: each fetch is logged by the monitor as a stage-2
///     instruction abort (PC = IPA = the target) and comes back to the stub
///     as a prefetch abort with IFAR = the target, from which it recovers;
/// (b) cleans/invalidates the data cache by VA there (DCCIMVAC, DCIMVAC):
///     QEMU treats these as no-ops, so nothing can be refused, and the test
///     checks only that they took no abort and stopped nothing;
/// (c) stores there: each is logged as a stage-2 data abort (write) and
///     comes back as a data abort with DFAR = the target.
/// The guest then powers off normally (status 0): the monitor stayed up.
#[test]
fn probe2_fetches_and_stores_outside_ram_are_refused_and_cache_maintenance_there_is_harmless() {
    const TARGETS: [&str; 3] = ["0x000a000000", "0x0050000000", "0x00fff00000"];
    let guests = [guest("guest@0", 16 * 1024, 0x4800_0000, stub("probe2").to_path_buf(), "inject")];
    let run = run_guests("probe2", 1, &guests);
    run.assert_status(0);
    run.assert_no_fail("guest@0");
    let summary = run.line("guest@0", "probe2: ifetch 3 tries ");

    // (a) Every fetch refused, logged and injected; the stub saw IFAR = target.
    assert_eq!(number_after(summary, "tries "), 3, "{summary}");
    for (t, ipa) in TARGETS.iter().enumerate() {
        let pc = format!("{:#010x}", u64::from_str_radix(&ipa[2..], 16).unwrap());
        run.line_index(&format!(
            "vm: guest@0: stage-2 instruction abort at IPA {ipa} (not mapped for it), PC {pc}, HSR "
        ));
        let l = run.line("guest@0", &format!("probe2: ifetch {pc}: "));
        assert!(
            l.starts_with(&format!("probe2: ifetch {pc}: 1 prefetch abort(s), IFSR 0x8, IFAR {pc}, ")),
            "target {t}: {l}"
        );
    }

    // (b) Cache maintenance by VA outside the guest's RAM. QEMU (7.2, TCG) implements
    // DCCIMVAC/DCIMVAC as no-ops that never translate the address, so no stage-2
    // abort is ever raised and the monitor never sees them: what we can check is
    // that they took no abort at all, that the monitor logged no fault for them,
    // that nothing trapped or stopped, and that the guest ran on to the end. (On
    // hardware a stage-2 abort with HSR.ISS.CM set is expected instead; the stub
    // accepts either, and this test pins down QEMU's behaviour.)
    let dc_aborted = number_after(summary, "dcache 6 tries ");
    assert_eq!(dc_aborted, 0, "QEMU now faults cache maintenance by VA: update this test\n{}", run.context());
    for op in ["DCCIMVAC", "DCIMVAC"] {
        for ipa in TARGETS {
            let va = format!("{:#010x}", u64::from_str_radix(&ipa[2..], 16).unwrap());
            let l = run.line("guest@0", &format!("probe2: {op} {va}: "));
            assert!(l.starts_with(&format!("probe2: {op} {va}: 0 data abort(s)")) && l.ends_with(", ok"), "{l}");
        }
    }

    // (c) Every store refused, logged as a write fault and injected.
    assert_eq!(number_after(summary, "store 3 tries "), 3, "{summary}");
    for ipa in TARGETS {
        let va = format!("{:#010x}", u64::from_str_radix(&ipa[2..], 16).unwrap());
        let fault = run.line_index(&format!("vm: guest@0: stage-2 data abort at IPA {ipa} (not mapped for it), PC "));
        assert!(run.log.lines().nth(fault).is_some_and(|l| l.ends_with(" (write)")), "{}", run.context());
        let l = run.line("guest@0", &format!("probe2: store {va}: "));
        assert!(l.starts_with(&format!("probe2: store {va}: refused, DFSR 0x808, DFAR {va}, ok")), "{l}");
    }

    // The monitor logged exactly the 3 fetches and 3 stores, nothing for (b), and the guest ended normally.
    assert_eq!(run.log.matches("vm: guest@0: stage-2 instruction abort").count(), 3, "{}", run.context());
    assert_eq!(run.log.matches("vm: guest@0: stage-2 data abort").count(), 3, "{}", run.context());
    assert!(summary.ends_with(", PASS"), "{summary}");
    run.assert_logged("vm: guest@0 powered off (SYSTEM_OFF)");
    assert!(!run.log.contains("stopped after"), "{}", run.context());
}
