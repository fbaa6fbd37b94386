//! The virtual GIC under QEMU: guests that share the machine take interrupts
//! through carve's emulated distributor and the hardware GICV, and cannot
//! reach each other's.
//!
//! Machines from the shared test library's `virt_dts`; guests are the stubs
//! `vtimer` (many virtual-timer interrupts, timed; fails on any other
//! interrupt it acknowledges) and `sgiprobe` (SGIs to CPUs it does not own,
//! writes to SPIs it does not own) from `scripts/build-stubs`.

use carve_tests::{compile_dts, number_after, run_dtb, stub, test_dir, virt_dts, GuestNode, Run, RunOptions, MEM_MIB};

fn guest(name: &'static str, module: u64, kernel: &str) -> GuestNode {
    GuestNode { name, kib: 16 * 1024, cpus: 1, module, kernel: stub(kernel).to_path_buf(), props: String::new() }
}

fn run_guests(name: &str, smp: u32, guests: &[GuestNode]) -> Run {
    let dir = test_dir!("vgic", name);
    let (dtb, _) = compile_dts(&dir, &virt_dts(smp, MEM_MIB, "", guests));
    let loads = guests.iter().map(|g| (g.kernel.clone(), g.module)).collect();
    run_dtb(&dir, name, &dtb, &RunOptions { smp, loads, ..RunOptions::default() })
}

/// Two guests on two CPUs: guest@0 runs `vtimer` (200 armed timer interrupts,
/// then 5000 back to back), guest@1 `sgiprobe` (SGIs to CPUs 1-7 and to "all
/// but self", which must reach nobody, guest@0 included; SGIs to itself,
/// which must arrive; every SPI enabled, pended and targeted, of which only
/// its own line may read back). Both must PASS, the monitor must say it took
/// the physical interrupts and count guest@1's forbidden writes, and the
/// virtual-timer interrupts it injected for guest@0 must be at least the 5200
/// the stub took.
#[test]
fn two_guests_take_timer_interrupts_and_sgis_stay_inside_a_guest() {
    let guests = [guest("guest@0", 0x4800_0000, "vtimer"), guest("guest@1", 0x4900_0000, "sgiprobe")];
    let run = run_guests("vtimer-sgiprobe", 2, &guests);
    run.assert_status(0);
    run.assert_logged("the monitor takes physical IRQs (HCR.IMO/FMO)");
    run.assert_logged("vm: guest@0: virtual GIC: the hardware GICV 0x08040000");
    for g in ["guest@0", "guest@1"] {
        run.assert_no_fail(g);
    }
    run.line("guest@0", "vtimer: PASS");
    run.line("guest@1", "sgiprobe: PASS");
    run.line("guest@1", "sgiprobe: SGIs to CPUs 1-7 and to all but self: 0 came back");
    let end0 = run
        .log
        .lines()
        .find(|l| l.contains("vgic: guest@0:") && l.contains("emulated"))
        .unwrap_or_else(|| panic!("{}", run.context()));
    let injected = number_after(end0, "writes to interrupts or CPUs not its own ignored; ");
    assert!(injected >= 5200, "guest@0 took 5200 timer interrupts, the monitor injected {injected}\n{}", run.context());
    let end1 = run
        .log
        .lines()
        .find(|l| l.contains("vgic: guest@1:") && l.contains("emulated"))
        .unwrap_or_else(|| panic!("{}", run.context()));
    let ignored = number_after(end1, "refused with an abort, ");
    assert!(ignored >= 3, "guest@1's SGIs to other CPUs and SPI writes were not counted: {end1}\n{}", run.context());
}

/// A lone guest keeps the physical GIC: the same `vtimer` stub passes with no
/// monitor in its interrupt path, and the log says the GIC was passed through.
#[test]
fn a_lone_guest_keeps_the_physical_gic() {
    let run = run_guests("vtimer-alone", 1, &[guest("guest@0", 0x4800_0000, "vtimer")]);
    run.assert_status(0);
    run.assert_no_fail("guest@0");
    run.line("guest@0", "vtimer: PASS");
    run.assert_logged("GIC distributor");
    run.assert_not_logged("the monitor takes physical IRQs");
}

/// Hardening: guest@1 runs `gicdfuzz` (20,000 random accesses of every shape,
/// LDRD/STRD/LDM/STM and writeback included, at random offsets and
/// alignments in its emulated GICD page, random values), guest@0 `vtimer`
/// beside it. Every access must complete or be refused with an abort at
/// the guest's own vector (the ones with no valid syndrome always refused),
/// the monitor must not crash (exit 0 once both powered off), guest@1's
/// virtual GIC must still deliver its timer afterwards, and guest@0 must pass.
#[test]
fn random_gicd_accesses_get_an_abort_or_a_defined_result_and_the_other_guest_runs_on() {
    let guests = [guest("guest@0", 0x4800_0000, "vtimer"), guest("guest@1", 0x4900_0000, "gicdfuzz")];
    let run = run_guests("vtimer-gicdfuzz", 2, &guests);
    run.assert_status(0);
    for g in ["guest@0", "guest@1"] {
        run.assert_no_fail(g);
    }
    run.line("guest@0", "vtimer: PASS");
    run.line("guest@1", "gicdfuzz: PASS");
    let end1 = run
        .log
        .lines()
        .find(|l| l.contains("vgic: guest@1:") && l.contains("emulated"))
        .unwrap_or_else(|| panic!("{}", run.context()));
    let refused = number_after(end1, "emulated, ");
    assert!(refused > 0, "no access was refused: {end1}\n{}", run.context());
}
