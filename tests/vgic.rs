//! The virtual GIC under QEMU: guests that share the machine take interrupts
//! through carve's emulated distributor and the hardware GICV, and cannot
//! reach each other's.
//!
//! Machines from the shared test library's `virt_dts`; guests are the stubs
//! `vtimer` (many virtual-timer interrupts, timed; fails on any other
//! interrupt it acknowledges), `sgiprobe` (SGIs to CPUs it does not own,
//! writes to SPIs it does not own), `gicdfuzz` (random accesses to its
//! emulated GICD or UART page) and `consoles` (lines through its emulated
//! UART) from `scripts/build-stubs`.

use carve_tests::{
    compile_dts, consoles_line, number_after, run_dtb, stub, test_dir, virt_dts, GuestNode, Run, RunOptions, MEM_MIB,
};

fn guest(name: &'static str, module: u64, kernel: &str) -> GuestNode {
    GuestNode { name, kib: 16 * 1024, cpus: 1, module, kernel: stub(kernel).to_path_buf(), props: String::new() }
}

fn run_guests(name: &str, smp: u32, guests: &[GuestNode]) -> Run {
    run_guests_for(name, smp, guests, 0)
}

/// As [`run_guests`], `timeout_s` seconds at most (`RunOptions`' default if 0).
fn run_guests_for(name: &str, smp: u32, guests: &[GuestNode], timeout_s: u32) -> Run {
    let dir = test_dir!("vgic", name);
    let (dtb, _) = compile_dts(&dir, &virt_dts(smp, MEM_MIB, "", guests));
    let loads = guests.iter().map(|g| (g.kernel.clone(), g.module)).collect();
    run_dtb(&dir, name, &dtb, &RunOptions { smp, loads, timeout_s, ..RunOptions::default() })
}

/// The first log line holding every one of `needles`.
fn log_line<'a>(run: &'a Run, needles: &[&str]) -> &'a str {
    run.log
        .lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap_or_else(|| panic!("no log line with {needles:?}\n{}", run.context()))
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
    let end0 = log_line(&run, &["vgic: guest@0:", "emulated"]);
    let injected = number_after(end0, "writes to interrupts or CPUs not its own ignored; ");
    assert!(injected >= 5200, "guest@0 took 5200 timer interrupts, the monitor injected {injected}\n{}", run.context());
    let end1 = log_line(&run, &["vgic: guest@1:", "emulated"]);
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
    let end1 = log_line(&run, &["vgic: guest@1:", "emulated"]);
    let refused = number_after(end1, "emulated, ");
    assert!(refused > 0, "no access was refused: {end1}\n{}", run.context());
}

/// The same hardening for the emulated UART of the shared console: guest@0
/// runs `gicdfuzz` with `gicdfuzz.uart` (20,000 random accesses of every
/// shape, at random offsets and alignments in its emulated SBSA UART page,
/// half among its registers, random values: random bytes to DR), guest@1
/// `consoles` (40 lines through its own emulated UART, a byte at a time),
/// guest@2 `vtimer`. Every access must complete or come back as an abort at
/// guest@0's vector (LDRD/STRD/LDM/STM always, counted by the stub and by
/// the monitor), the monitor must not crash (exit 0 once all powered off),
/// guest@0's UART must still work afterwards; guest@1's 40 lines must come
/// out on the console UART whole, in order and prefixed, every line there
/// must carry a guest's prefix, and guest@2 must take its 5200 timer
/// interrupts (vtimer: PASS, and the monitor injected as many).
#[test]
fn random_uart_accesses_get_an_abort_or_a_defined_result_and_the_other_guests_run_on() {
    let mut fuzz = guest("guest@0", 0x4800_0000, "gicdfuzz");
    fuzz.props = String::from("\t\t\tbootargs = \"gicdfuzz.uart\";\n");
    let guests = [fuzz, guest("guest@1", 0x4900_0000, "consoles"), guest("guest@2", 0x4a00_0000, "vtimer")];
    let run = run_guests_for("gicdfuzz-uart", 3, &guests, 240);
    run.assert_status(0);
    for g in ["guest@0", "guest@1", "guest@2"] {
        run.assert_no_fail(g);
    }
    run.line("guest@0", "gicdfuzz: PASS");
    run.line("guest@1", "consoles: vm2 wrote 40 lines, PASS");
    run.line("guest@2", "vtimer: PASS");
    // The stub's own counts: the shapes with no valid syndrome were all refused, and some of each.
    for shape in ["ldrd", "strd", "ldm", "stm"] {
        let l = run.line("guest@0", &format!("gicdfuzz: uart: {shape}: "));
        let aborted = number_after(l, "done, ");
        assert!(l.contains(": 0 done, ") && aborted > 0, "{shape}: {l}\n{}", run.context());
    }
    // The monitor's: accesses emulated, and refused with an abort (injected at the guest's vector).
    let end0 = log_line(&run, &["console: guest@0's UART: "]);
    let emulated = number_after(end0, "guest@0's UART: ");
    let refused = number_after(end0, "accesses emulated, ");
    assert!(emulated > 5000 && refused > 1000, "guest@0's UART: {end0}\n{}", run.context());
    run.assert_not_logged("stage-2 data abort");
    let end2 = log_line(&run, &["vgic: guest@2:", "emulated"]);
    let injected = number_after(end2, "writes to interrupts or CPUs not its own ignored; ");
    assert!(injected >= 5200, "guest@2 took 5200 timer interrupts, the monitor injected {injected}\n{}", run.context());

    // The console UART: plain prefixed lines (the log is on semihosting).
    let bytes = std::fs::read(&run.uart_path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).replace('\r', "");
    let context = format!("console UART:\n{text}\n{}", run.context());
    let mut mine: Vec<&str> = Vec::new();
    let mut fuzz_lines = 0;
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (name, rest) =
            line.split_once("| ").unwrap_or_else(|| panic!("a line without a prefix: {line:?}\n{context}"));
        match name {
            "(carve)" => {}
            "guest@0" => fuzz_lines += 1,
            "guest@1" => mine.push(rest),
            "guest@2" => {}
            _ => panic!("an unknown prefix {name:?} in {line:?}\n{context}"),
        }
    }
    // guest@1 is never focused: each of its lines goes out whole, once, in order, and nothing else of it.
    let want: Vec<String> = (0..40).map(|i| consoles_line(2, i)).collect();
    assert_eq!(mine, want, "guest@1's lines on the console\n{context}");
    assert!(
        text.lines().any(|l| l == "guest@0| gicdfuzz: the UART works after the fuzz"),
        "guest@0's line after the fuzz is not whole on the console\n{context}"
    );
    assert!(fuzz_lines > 1, "the fuzz sent no bytes through guest@0's UART\n{context}");
}

/// Two guests share the machine and guest@0's node gives it QEMU virt's PL031
/// (`carve,devices = "/pl031@9010000"`): both run `devirq`. guest@0's tree
/// has the device, its SPI enables and five rounds each bring exactly that
/// interrupt (the physical SPI routed to guest@0's CPU and injected as a
/// hardware interrupt); guest@1's tree lacks it, its distributor keeps the
/// SPI off, its read of the device's page gets an abort (`carve,on-fault =
/// "inject"`), and no interrupt reaches it while guest@0's come.
#[test]
fn a_device_given_to_one_guest_interrupts_that_guest_alone() {
    let mut owner = guest("guest@0", 0x4800_0000, "devirq");
    owner.props = String::from("\t\t\tcarve,devices = \"/pl031@9010000\";\n");
    // guest@1 is told of the abort its read of the device's page takes (it stops otherwise).
    let mut outsider = guest("guest@1", 0x4900_0000, "devirq");
    outsider.props = String::from("\t\t\tcarve,on-fault = \"inject\";\n");
    let guests = [owner, outsider];
    let run = run_guests("devirq", 2, &guests);
    run.assert_status(0);
    for g in ["guest@0", "guest@1"] {
        run.assert_no_fail(g);
        run.line(g, "devirq: PASS");
    }
    run.line("guest@0", "devirq: given /pl031@9010000");
    run.line("guest@1", "devirq: not given /pl031@9010000");
    run.line("guest@0", "devirq: device interrupt 34 taken 5 times (want 5), other interrupts 0");
    run.assert_logged("vgic: guest@0: physical interrupt 34 is its own, routed to CPU 0");
    run.assert_logged("map:   given /pl031@9010000: PA 0x009010000 4 KiB, interrupts [34]");
    run.assert_logged("vm: guest@0: pl031@9010000 passed through at 0x09010000");
    run.assert_not_logged("that no guest owns");
    let end1 = log_line(&run, &["vgic: guest@1:", "emulated"]);
    let ignored = number_after(end1, "refused with an abort, ");
    assert!(ignored >= 2, "guest@1's writes to SPI 34 were not counted as ignored: {end1}\n{}", run.context());
}
