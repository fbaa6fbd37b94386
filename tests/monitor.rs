//! The monitor under QEMU: it starts in Hyp mode, turns its MMU on, and refuses what it must.
//!
//! Each test builds the image with `scripts/build` (once per test process),
//! runs it on QEMU `virt` (Cortex-A15, virtualization on, no network) under a
//! timeout, decodes the defmt log (semihosting stdout) with `defmt-print`, and
//! checks QEMU's exit status (the monitor's exit code, see
//! `hyp/src/arch/semihost.rs`) and the log lines. A missing QEMU or
//! defmt-print fails the test with a pointer to `scripts/setup`: nothing here
//! skips itself into a pass.

use std::path::Path;

use carve_tests::{dtc, test_dir, Run, MACHINE_HYP};

/// Seconds QEMU may run before `timeout` stops it (status 124).
const TIMEOUT_S: u32 = 60;

/// Runs the monitor on QEMU `machine` with `extra` arguments (see [`carve_tests::run_monitor`]).
fn run_monitor(name: &'static str, machine: &str, extra: &[&str]) -> Run {
    let dir = test_dir!("monitor", name);
    carve_tests::run_monitor(&dir, name, machine, extra, TIMEOUT_S)
}

#[test]
fn boots_in_hyp_mode_and_turns_the_mmu_on() {
    let run = run_monitor("boot", MACHINE_HYP, &[]);
    run.assert_status(0);
    run.assert_logged("hyp: CPU mode Hyp (0x1a)");
    run.assert_logged("hyp: CPU Cortex-A15 r");
    run.assert_logged("Virtualization Extensions true (ID_PFR1");
    run.assert_logged("DTB at 0x40000000 (r2 = 0: start of RAM): magic 0xd00dfeed ok");
    run.assert_logged("hyp: MMU on");
    run.assert_logged("hyp: trap path ok");
    // QEMU's own tree: RAM planned and mapped, no guest to run.
    run.assert_logged("map: RAM        0x040000000-0x090000000 1280 MiB");
    run.assert_logged("hyp: lowmem linear map on");
    run.assert_logged("hyp: no guest under /chosen: nothing to run");
}

/// A guest whose "kernel" is three instructions: `mov r0, #0x0a000000`,
/// `ldr r1, [r0]` (QEMU virt's first virtio-mmio window, which no guest is
/// given), `b .`. The load is a stage-2 data abort: the monitor must log the
/// IPA, the PC and the syndrome, stop the guest and end the run with status 10.
#[test]
fn stage2_fault_is_logged_and_the_guest_stopped() {
    let dir = test_dir!("monitor", "fault-files");
    let program: Vec<u8> = [0xe3a0_040au32, 0xe590_1000, 0xeaff_fffe].iter().flat_map(|w| w.to_le_bytes()).collect();
    let kernel = dir.join("touch-virtio.bin");
    std::fs::write(&kernel, &program).expect("write the program");
    let dts = dir.join("fault.dts");
    std::fs::write(
        &dts,
        r#"/dts-v1/;
/include/ "qemu-virt.dtsi"
/ {
    chosen {
        #address-cells = <1>;
        #size-cells = <1>;
        stdout-path = "/pl011@9000000";
        guest@0 {
            compatible = "carve,guest";
            #address-cells = <1>;
            #size-cells = <1>;
            memory = <0x0 0x10000>;
            cpus = <1>;
            module@48000000 {
                compatible = "multiboot,kernel", "multiboot,module";
                reg = <0x48000000 0xc>;
            };
        };
    };
};
"#,
    )
    .expect("write the tree");
    let dtb = dir.join("fault.dtb");
    dtc(&dts, &dtb);
    let loader = format!("loader,file={},addr=0x48000000,force-raw=on", kernel.display());
    let dtb_arg = dtb.display().to_string();

    let run = run_monitor("stage2-fault", MACHINE_HYP, &["-dtb", &dtb_arg, "-device", &loader]);
    run.assert_status(10);
    run.assert_logged("vm: guest@0: vCPU 0 on CPU 0 entering at IPA 0x40010000");
    // ldr at the second word of the kernel (IPA 0x40010004); HSR.EC 0x24 (data abort from a guest).
    run.assert_logged("stage-2 data abort at IPA 0x000a000000 (not mapped for it), PC 0x40010004, HSR 0x93");
    run.assert_logged("vm: guest@0 stopped after 1 traps");
}

/// QEMU refuses `-dtb` of a file that is not an FDT, and a `-device loader`
/// blob over the DTB QEMU puts at the start of RAM collides with it ("ROM
/// regions are overlapping") in CPU 0's address space. Loaded through CPU 1's
/// (`cpu-num=1`; CPU 1 stays powered off until PSCI CPU_ON), the junk is
/// written after the DTB (measured on QEMU 7.2), so the monitor finds junk at
/// 0x40000000.
#[test]
fn refuses_a_dtb_with_a_bad_magic() {
    let dir = test_dir!("monitor", "bad-dtb-files");
    let junk = dir.join("not-a-dtb.bin");
    std::fs::write(&junk, b"this is not a flattened device tree, only text to fill a header").expect("write the junk");
    let loader = format!("loader,file={},addr=0x40000000,force-raw=on,cpu-num=1", junk.display());

    let run = run_monitor("bad-dtb-magic", MACHINE_HYP, &["-smp", "2", "-device", &loader]);
    run.assert_status(2);
    // "this" as a big-endian word.
    run.assert_logged("DTB at 0x40000000: bad magic 0x74686973 (an FDT starts with 0xd00dfeed)");
    // Only the header was looked at: the blob was never mapped whole.
    run.assert_not_logged("used bytes at");
}

/// Without the Virtualization Extensions (QEMU `virt` without
/// `virtualization=on` clears ID_PFR1's field) the CPU has no Hyp mode:
/// `_start` refuses it by that feature, not by its part number, in one line
/// (semihosting's debug console: QEMU's stderr) before anything else could
/// log, with status 14.
#[test]
fn refuses_a_cpu_without_the_virtualization_extensions() {
    let run = run_monitor("no-virt", "virt", &[]);
    run.assert_status(14);
    run.assert_not_logged("Hyp monitor starting");
    assert!(
        run.qemu_stderr.contains("carve: this CPU has no Virtualization Extensions (ID_PFR1.Virtualization = 0)"),
        "the refusal's line is missing\n{}",
        run.context()
    );
}

/// A CPU that has the Virtualization Extensions but was started outside Hyp
/// mode (with `secure=on` QEMU starts an ELF in Secure SVC) is refused as
/// such: status 3 and one line saying to start carve in Hyp mode.
#[test]
fn refuses_to_start_outside_hyp_mode() {
    let run = run_monitor("not-hyp", "virt,secure=on,virtualization=on", &[]);
    run.assert_status(3);
    run.assert_not_logged("Hyp monitor starting");
    assert!(
        run.qemu_stderr.contains("carve: not started in Hyp mode: this CPU has the Virtualization Extensions"),
        "the refusal's line is missing\n{}",
        run.context()
    );
}

/// `/chosen/carve,log` names a UART: the log goes there, as defmt frames
/// `defmt-print` decodes from the UART's output, starting with the frames
/// logged before the tree named it (kept and sent first). What follows the
/// switch no longer goes to semihosting. QEMU `virt` has one UART, so the
/// machine runs no guest (the plan refuses a guest given the log's UART:
/// `tests/corpus/bad/log-uart-is-the-console.dts`).
#[test]
fn the_log_goes_to_the_uart_carve_log_names() {
    let dir = test_dir!("monitor", "log-uart");
    let dts = dir.join("log-uart.dts");
    std::fs::write(
        &dts,
        "/dts-v1/;\n/include/ \"qemu-virt.dtsi\"\n/ {\n\tchosen {\n\t\tcarve,log = \"/pl011@9000000\";\n\t};\n};\n",
    )
    .expect("write the tree");
    let dtb = dir.join("log-uart.dtb");
    dtc(&dts, &dtb);
    let dtb_arg = dtb.display().to_string();

    let run = run_monitor("log-uart", MACHINE_HYP, &["-dtb", &dtb_arg]);
    run.assert_status(0);
    run.assert_logged("hyp: log goes to /pl011@9000000 at 0x09000000 from here on (carve,log)");
    run.assert_not_logged("hyp: no guest under /chosen");

    let log = run.uart_log();
    let context = format!("UART log decoded:\n{log}\n--- run ---\n{}", run.context());
    // The first frame of the run, kept from before the switch, then the rest of the boot.
    let first = log.lines().next().unwrap_or("");
    assert!(first.contains("Hyp monitor starting"), "the UART log does not start at the first frame\n{context}");
    for line in ["hyp: log on /pl011@9000000 (carve,log)", "map: RAM", "hyp: no guest under /chosen: nothing to run"] {
        assert!(log.contains(line), "the UART log lacks {line:?}\n{context}");
    }
}

/// The images `scripts/build` leaves (the QEMU ELF and the board image's ELF)
/// carry no self-test: asked for one on its command line the QEMU image
/// refuses to run (status 12) instead of running without it, and none of the
/// self-tests' log lines is in either ELF (defmt keeps every format string in
/// the ELF), while the self-test image has them.
#[test]
fn the_plain_image_has_no_self_tests_and_says_so() {
    let run = run_monitor("plain-selftest", MACHINE_HYP, &["-append", "carve.selftest=mm"]);
    run.assert_status(12);
    run.assert_logged("hyp: bootargs ask for carve.selftest=, but this image has no self-tests (build it with scripts/build --selftest)");
    run.assert_not_logged("mm-selftest");
    let has = |elf: &Path, text: &str| {
        let bytes = std::fs::read(elf).expect("read the ELF");
        bytes.windows(text.len()).any(|w| w == text.as_bytes())
    };
    let (_, board_elf) = carve_tests::board_image();
    for text in ["mm-selftest: ", "mm-bench: ", "test calls enabled"] {
        assert!(!has(carve_tests::monitor_elf(), text), "the plain image holds {text:?}");
        assert!(!has(&board_elf, text), "the board image holds {text:?}");
        assert!(has(carve_tests::selftest_elf(), text), "the self-test image lacks {text:?}");
    }
}

/// A self-test name the monitor does not know is refused with the names it does.
#[test]
fn an_unknown_self_test_is_refused() {
    let run = run_monitor("unknown-selftest", MACHINE_HYP, &["-append", "carve.selftest=mm,nosuch"]);
    run.assert_status(12);
    run.assert_logged(
        "hyp: bootargs carve.selftest=nosuch: no such self-test (there are mm, cma, cma-no-tlbi, no-zero, or all)",
    );
}
