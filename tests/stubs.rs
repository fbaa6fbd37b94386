//! carve tested from inside its guests: the bare-metal stubs of guest-stubs/carve-stubs under QEMU.
//!
//! Each test writes a machine DTS (`/include/ "qemu-virt.dtsi"`, RAM as QEMU's
//! `-m` gives it, the CPUs of `-smp`, guests under `/chosen` whose
//! `multiboot,kernel` module is a stub image loaded by `-device loader`),
//! runs the monitor (`scripts/build`) with it on QEMU `virt` under a
//! timeout, decodes the defmt log and checks what the stub reported through
//! carve's CONSOLE_WRITE hypercall (logged by the monitor as
//! `<guest name>: <line>`), what the monitor logged, and QEMU's exit status.
//! The stubs are built once per test process by `scripts/build-stubs`.
//! Missing tools fail the tests with a pointer to `scripts/setup`.
//!
//! The last tests here run on the host: the stubs' FDT reader (plain Rust,
//! included from the stubs' source), carve's call numbers against the SMC
//! Calling Convention and PSCI's against its specification, and the stubs'
//! link address and assembly against carve-abi.

use std::path::{Path, PathBuf};

use carve_core::addr::PhysRange;
use carve_core::dt::Machine;
use carve_core::plan::{self, MonitorImage, PlanConfig};
use carve_tests::{
    compile_dts, monitor_elf, number_after, run_dtb, stub, test_dir, virt_dts, GuestNode, Image, Run, RunOptions,
    MEM_MIB, RAM_BASE,
};

#[path = "../guest-stubs/carve-stubs/src/abi.rs"]
#[allow(dead_code, unused_imports)] // the tests use a few of its names
mod stub_abi;
#[path = "../guest-stubs/carve-stubs/src/fdt.rs"]
#[allow(dead_code)]
mod stub_fdt;

/// Guest RAM of the memory-walking stubs: small, so the suite stays fast.
const GUEST_MIB: u64 = 64;
/// What the probe test plants outside every guest; the probe must never see it.
const MARKER: &[u8; 16] = b"CARVE-SECRET-MRK";
const MIB: u64 = 1 << 20;

/// The address range `[lowest, highest)` the ELF's loadable segments take in memory (page-rounded).
fn elf_span(path: &Path) -> (u64, u64) {
    let elf = std::fs::read(path).expect("read the ELF");
    let u16_at = |at: usize| u64::from(u16::from_le_bytes([elf[at], elf[at + 1]]));
    let u32_at = |at: usize| u64::from(u32::from_le_bytes([elf[at], elf[at + 1], elf[at + 2], elf[at + 3]]));
    assert_eq!(&elf[..6], b"\x7fELF\x01\x01", "{} is not a 32-bit little-endian ELF", path.display());
    let (phoff, phentsize, phnum) = (u32_at(28) as usize, u16_at(42) as usize, u16_at(44) as usize);
    let loads: Vec<(u64, u64)> = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|&ph| u32_at(ph) == 1)
        .map(|ph| (u32_at(ph + 12), u32_at(ph + 12) + u32_at(ph + 20)))
        .collect();
    let start = loads.iter().map(|l| l.0).min().expect("a PT_LOAD segment");
    let end = loads.iter().map(|l| l.1).max().expect("a PT_LOAD segment");
    (start & !0xfff, end.next_multiple_of(0x1000))
}

// --- machines -------------------------------------------------------------------------

/// One guest node under `/chosen`.
struct Guest {
    /// The node name: `guest@N`.
    name: &'static str,
    mib: u64,
    cpus: u32,
    /// Where `-device loader` puts the stub image (the module's `reg`).
    module: u64,
    stub: &'static str,
    inject: bool,
    /// More properties of the guest node, each line tab-indented and `;`-ended.
    props: &'static str,
}

impl Guest {
    fn new(name: &'static str, stub: &'static str, mib: u64, module: u64) -> Self {
        Guest { name, mib, cpus: 1, module, stub, inject: false, props: "" }
    }

    /// The guest's node in the machine tree.
    fn node(&self) -> GuestNode {
        let mut props = String::from(self.props);
        if self.inject {
            props.insert_str(0, "\t\t\tcarve,on-fault = \"inject\";\n");
        }
        GuestNode {
            name: self.name,
            kib: self.mib * 1024,
            cpus: self.cpus,
            module: self.module,
            kernel: stub(self.stub).to_path_buf(),
            props,
        }
    }
}

/// The DTS of a QEMU virt machine with `smp` CPUs, `MEM_MIB` of RAM, `reserved` (a
/// `/reserved-memory` node or nothing) and `guests`.
fn machine_dts(smp: u32, reserved: &str, guests: &[Guest]) -> String {
    let nodes: Vec<GuestNode> = guests.iter().map(Guest::node).collect();
    virt_dts(smp, MEM_MIB, reserved, &nodes)
}

// --- runs -----------------------------------------------------------------------------

/// Runs the monitor with `dtb`, the guests' stubs loaded at their module addresses (and `opts.loads`).
fn run_monitor(name: &str, dtb: &Path, guests: &[Guest], opts: &RunOptions<'_>) -> Run {
    let mut opts = opts.clone();
    opts.loads.splice(0..0, guests.iter().map(|g| (stub(g.stub).to_path_buf(), g.module)));
    run_dtb(&test_dir!("stubs", name), name, dtb, &opts)
}

/// Builds the machine for `guests`, runs it and returns the run.
fn run_guests(name: &str, reserved: &str, guests: &[Guest], opts: &RunOptions<'_>) -> Run {
    let (dtb, _) = compile_dts(&test_dir!("stubs", name), &machine_dts(opts.smp.max(1), reserved, guests));
    run_monitor(name, &dtb, guests, opts)
}

// --- the stubs ------------------------------------------------------------------------

/// Checks a memtest PASS line of `guest` for a `GUEST_MIB` bank at 0x40000000; returns (vmid, seed).
fn check_memtest(run: &Run, guest: &str) -> (u64, u64) {
    let l = run.line(guest, "memtest: bank ");
    assert!(l.starts_with(&format!("memtest: bank 0x40000000+{:#010x}, ", GUEST_MIB * MIB)), "{l}\n{}", run.context());
    assert!(l.ends_with(", 0 mismatches, PASS"), "{guest}: {l}\n{}", run.context());
    let checked = number_after(l, ", ");
    let kept_from = number_after(l, "(image ");
    let kept_to = number_after(l, &format!("(image {kept_from:#010x}-"));
    // Everything but the stub's own image (code, data, stacks: well under 1 MiB) was checked.
    assert!(kept_to > kept_from && kept_to - kept_from < MIB, "{l}");
    assert_eq!(checked, GUEST_MIB * MIB - (kept_to - kept_from), "{l}");
    (number_after(l, "vmid "), number_after(l, "seed "))
}

/// memtest: one 64 MiB guest writes and checks two patterns over all of its RAM with its MMU and caches on.
#[test]
fn memtest_checks_all_of_its_ram() {
    let guests = [Guest::new("guest@0", "memtest", GUEST_MIB, 0x4800_0000)];
    let run = run_guests("memtest", "", &guests, &RunOptions::default());
    run.assert_status(0);
    run.assert_no_fail("guest@0");
    let (vmid, _) = check_memtest(&run, "guest@0");
    assert!(vmid >= 1, "INFO(VMID) gave {vmid}\n{}", run.context());
    run.assert_logged("vm: guest@0 powered off (SYSTEM_OFF)");
}

/// Two guests, one CPU each, run memtest at the same time with different patterns.
#[test]
fn two_guests_run_memtest_at_once_in_disjoint_memory() {
    let guests = [
        Guest::new("guest@0", "memtest", GUEST_MIB, 0x4800_0000),
        Guest::new("guest@1", "memtest", GUEST_MIB, 0x4900_0000),
    ];
    let run = run_guests("two-guests", "", &guests, &RunOptions { smp: 2, ..RunOptions::default() });
    run.assert_status(0);
    run.assert_no_fail("guest@0");
    run.assert_no_fail("guest@1");
    let (vmid0, seed0) = check_memtest(&run, "guest@0");
    let (vmid1, seed1) = check_memtest(&run, "guest@1");
    assert_ne!(vmid0, vmid1, "both guests have VMID {vmid0}\n{}", run.context());
    assert_ne!(seed0, seed1, "both guests used pattern seed {seed0:#x}\n{}", run.context());
    // They ran at the same time: each entered before the other finished its memtest.
    let entered: Vec<usize> =
        ["guest@0", "guest@1"].iter().map(|g| run.line_index(&format!("vm: {g}: vCPU 0 on CPU "))).collect();
    let done: Vec<usize> =
        ["guest@0", "guest@1"].iter().map(|g| run.line_index(&format!(" {g}: memtest: bank "))).collect();
    assert!(
        entered[0] < done[1] && entered[1] < done[0],
        "the runs did not overlap: entered at lines {entered:?}, memtest done at lines {done:?}\n{}",
        run.context()
    );
    let (e0, e1) = (run.extents("guest@0"), run.extents("guest@1"));
    assert!(!e0.is_empty() && !e1.is_empty(), "no extents logged\n{}", run.context());
    for a in &e0 {
        for b in &e1 {
            assert!(a.1 + a.2 <= b.1 || b.1 + b.2 <= a.1, "extents overlap: {a:x?} and {b:x?}\n{}", run.context());
        }
    }
}

/// The probe's machine: carveouts of each kind the plan knows (static `no-map`,
/// static mapped, dynamic `no-map` placed by the plan).
const PROBE_RESERVED: &str = "\treserved-memory {
\t\t#address-cells = <2>;
\t\t#size-cells = <2>;
\t\tranges;
\t\tipu-pool@50000000 {
\t\t\treg = <0x0 0x50000000 0x0 0x08000000>;
\t\t\tno-map;
\t\t};
\t\tfb@60000000 {
\t\t\treg = <0x0 0x60000000 0x0 0x08000000>;
\t\t\tno-map;
\t\t};
\t\tsecure-buffer@4c000000 {
\t\t\treg = <0x0 0x4c000000 0x0 0x00100000>;
\t\t};
\t\tdsp-pool {
\t\t\tsize = <0x0 0x00400000>;
\t\t\talignment = <0x0 0x00100000>;
\t\t\talloc-ranges = <0x0 0x70000000 0x0 0x10000000>;
\t\t\tno-map;
\t\t};
\t};
";

/// Plans the machine `blob` as the monitor `elf` will: its image where the
/// ELF says, the DTB QEMU puts at the start of RAM, grown to about twice its size.
fn plan_as_the_monitor(blob: &[u8], elf: &Path) -> plan::Plan {
    let machine = Machine::from_dtb(blob).expect("the machine's DT reads");
    let (img_start, img_end) = elf_span(elf);
    let dtb_end = RAM_BASE + (2 * blob.len() as u64 + 20_000).next_multiple_of(0x1000);
    let config = PlanConfig {
        monitor_image: MonitorImage::At(PhysRange::from_bounds(img_start, img_end).expect("image range")),
        monitor_extra: vec![PhysRange::from_bounds(RAM_BASE, dtb_end).expect("DTB range")],
        ..PlanConfig::default()
    };
    plan::plan(&machine, &config).expect("the machine plans")
}

/// probe: every touch outside what the guest was given is refused with an
/// injected abort the monitor logs, and no marker planted in the carveouts
/// or the monitor's free RAM shows up in the guest's RAM.
#[test]
fn probe_is_refused_everywhere_and_sees_no_secret() {
    let name = "probe";
    let dir = test_dir!("stubs", name);
    let guests = [Guest { inject: true, ..Guest::new("guest@0", "probe", GUEST_MIB, 0x4800_0000) }];
    // The scan must not be able to find the stub itself.
    let image = std::fs::read(stub("probe")).expect("read the probe");
    assert!(!image.windows(MARKER.len()).any(|w| w == MARKER), "the probe's image holds the marker");

    // Plan the machine as the monitor will (its image where the ELF says, the
    // DTB QEMU puts at the start of RAM, grown to about twice its size) and
    // pick marker pages in every carveout and in the monitor's free RAM.
    let (dtb, blob) = compile_dts(&dir, &machine_dts(1, PROBE_RESERVED, &guests));
    let plan = plan_as_the_monitor(&blob, monitor_elf());
    assert_eq!(plan.guests.len(), 1);
    let mut marks: Vec<(u64, String)> = Vec::new();
    for c in &plan.carveouts {
        let mid = (c.range.start() + c.range.size / 2) & !0xfff;
        for at in [c.range.start(), mid, c.range.end() - 0x1000] {
            marks.push((at, format!("carveout {}", c.name)));
        }
    }
    // Free RAM well away from the DTB QEMU writes at the start of RAM (its final size is QEMU's choice).
    for r in plan.monitor_free.ranges().iter().filter(|r| r.start() >= RAM_BASE + 2 * MIB && r.size >= 0x2000) {
        marks.push((r.start(), "monitor free RAM".into()));
        marks.push((r.end() - 0x1000, "monitor free RAM".into()));
    }
    marks.sort();
    marks.dedup_by_key(|m| m.0);
    assert!(marks.len() >= 12 + 2, "too few marker pages: {marks:x?}");
    let guest_pas: Vec<PhysRange> = plan.guests[0].extents.iter().map(|e| e.pa_range()).collect();
    for (at, what) in &marks {
        assert!(!guest_pas.iter().any(|g| g.contains(*at)), "marker at {at:#x} ({what}) would be guest RAM");
    }
    let page: Vec<u8> = MARKER.iter().copied().cycle().take(0x1000).collect();
    let marker_file = dir.join("marker.bin");
    std::fs::write(&marker_file, page).expect("write the marker page");
    let blobs: Vec<(PathBuf, u64)> = marks.iter().map(|m| (marker_file.clone(), m.0)).collect();

    // qemu-system-aarch64: qemu-system-arm 7.2 keeps a stage-2 fault's IPA in a
    // 32-bit target_ulong (ARMMMUFaultInfo.s2addr), so HPFAR loses IPA[39:32]
    // and the monitor would log faults above 4 GiB at their low 32 bits (the
    // walk itself uses all 40 bits). The machine and CPU are the same.
    let run = run_monitor(name, &dtb, &guests, &RunOptions { loads: blobs, aarch64: true, ..RunOptions::default() });
    run.assert_status(0);
    run.assert_no_fail("guest@0");
    run.line("guest@0", "probe: PASS");

    // Every touch was refused and logged by the monitor as a fault of this guest.
    let tally = run
        .console("guest@0")
        .into_iter()
        .find(|l| l.contains(" touches (") && l.contains(" refused"))
        .unwrap_or_else(|| panic!("no touch tally\n{}", run.context()))
        .to_string();
    let touches = number_after(&tally, "probe: ");
    let writes = number_after(&tally, "reads, ");
    assert!(touches > 3000, "only {touches} touches: {tally}");
    assert_eq!(number_after(&tally, "writes), "), touches, "{tally}");
    let faults: Vec<&str> = run.log.lines().filter(|l| l.contains("vm: guest@0: stage-2 data abort at IPA ")).collect();
    assert_eq!(faults.len() as u64, touches, "the monitor logged {} faults for {touches} touches", faults.len());
    assert_eq!(faults.iter().filter(|l| l.ends_with("(write)")).count() as u64, writes, "write faults");
    // Some of them, by IPA: GICH, a virtio slot, PCIe ECAM and 64-bit MMIO above 4 GiB, the last GiB.
    for ipa in ["0x0008030000", "0x000a003e00", "0x4010000000", "0x8000000000", "0xffc0000000"] {
        assert!(
            faults.iter().any(|l| l.contains(&format!("at IPA {ipa} "))),
            "no fault logged at IPA {ipa}\n{}",
            run.context()
        );
    }
    run.assert_logged("vm: guest@0 powered off (SYSTEM_OFF)");

    // The marker scan found nothing, and the markers were where the monitor put no guest RAM.
    let scan = run.line("guest@0", "probe: marker scan of ");
    assert!(scan.contains(": 0 copies (scanner self-test ok), PASS"), "{scan}");
    // The monitor's own account of where the guest is (it may differ from the
    // test's plan if the DTB QEMU wrote is larger than guessed): no marker there.
    let logged = run.extents("guest@0");
    assert!(!logged.is_empty(), "no extents logged\n{}", run.context());
    for (at, what) in &marks {
        assert!(
            !logged.iter().any(|&(_, pa, size)| (pa..pa + size).contains(at)),
            "marker at {at:#x} ({what}) was inside the guest's RAM {logged:x?}"
        );
    }
}

/// hypercall: PSCI and carve calls with good and bad arguments, two vCPUs on a three-CPU machine.
#[test]
fn hypercall_answers_follow_psci_and_the_carve_abi() {
    let guests = [Guest { cpus: 2, ..Guest::new("guest@0", "hypercall", 16, 0x4800_0000) }];
    let run = run_guests("hypercall", "", &guests, &RunOptions { smp: 3, ..RunOptions::default() });
    run.assert_status(0);
    run.assert_no_fail("guest@0");
    let end = run
        .console("guest@0")
        .into_iter()
        .find(|l| l.contains(" checks, "))
        .unwrap_or_else(|| panic!("no summary\n{}", run.context()))
        .to_string();
    assert!(end.ends_with(" checks, 0 failed, PASS"), "{end}");
    assert!(number_after(&end, "hypercall: ") >= 40, "{end}");
    // The long console write: cut at 256 bytes.
    run.assert_logged("guest@0: hypercall: a 300-byte console write, cut at 256 by the monitor: ....");
    assert!(!run.log.contains("this tail must not be printed"), "{}", run.context());
    // vCPU 1 ran and turned itself off twice.
    assert_eq!(run.log.matches("vm: guest@0: vCPU 1 off").count(), 2, "{}", run.context());
    // DUMP_MAP logged the map and the counters again, after the guest started.
    let started = run.log.find("vm: guest@0: vCPU 0 on CPU").expect("the guest started");
    let after = &run.log[started..];
    for needle in ["map: guest@0: 16 MiB at IPA", "mm: MemTotal:", "mm: owner guest VMID 1:", "mm: VmallocTotal:"] {
        assert!(after.contains(needle), "no {needle:?} after the guest started\n{}", run.context());
    }
}

/// The restart stub's summary line of each of its four boots.
fn restart_boots(run: &Run) -> Vec<&str> {
    let boots: Vec<&str> = run
        .console("guest@0")
        .into_iter()
        .filter(|l| l.starts_with("restart: boot ") && l.contains(": free table pages "))
        .collect();
    assert_eq!(boots.len(), 4, "want 4 boots: {boots:#?}\n{}", run.context());
    boots
}

/// restart: SYSTEM_RESET three times; each boot has zeroed RAM and sees the same free table pages.
#[test]
fn restart_boots_fresh_three_times_without_leaking() {
    let guests = [Guest::new("guest@0", "restart", 32, 0x4800_0000)];
    let run = run_guests("restart", "", &guests, &RunOptions::default());
    run.assert_status(0);
    run.assert_no_fail("guest@0");
    let boots = restart_boots(&run);
    let free: Vec<u64> = boots.iter().map(|l| number_after(l, "free table pages ")).collect();
    for (i, l) in boots.iter().enumerate() {
        assert_eq!(number_after(l, "restart: boot "), i as u64, "{l}");
        assert!(l.ends_with(", ok") && l.contains(" RAM fresh "), "{l}");
    }
    assert!(free.iter().all(|&f| f == free[0]), "free table pages differ between boots: {free:?}\n{}", run.context());
    run.line("guest@0", "restart: 3 restarts, every boot with fresh RAM, PASS");
    run.assert_logged("vm: guest@0: restarted (3 so far): RAM unmapped (zeroed again on first touch), images reloaded");
}

/// The restart test with half of the guest's RAM movable (lent from a CMA
/// pool, mapped page by page): each restart zeroes those pages too and maps
/// them again, with no table page lost.
#[test]
fn restart_with_movable_memory_zeroes_and_remaps_it() {
    let guests = [Guest {
        props: "\t\t\tmemory-region = <&cma_pool>;\n\t\t\tcarve,movable-memory = <0x0 0x4000>;\n",
        ..Guest::new("guest@0", "restart", 32, 0x4800_0000)
    }];
    let run = run_guests("restart-movable", CMA_POOL, &guests, &RunOptions::default());
    run.assert_status(0);
    run.assert_no_fail("guest@0");
    run.assert_logged("cma: guest@0: 4096 pages (16384 KiB) of IPA 0x41000000.. lent from pool cma@50000000");
    let boots = restart_boots(&run);
    let free: Vec<u64> = boots.iter().map(|l| number_after(l, "free table pages ")).collect();
    assert!(free.iter().all(|&f| f == free[0]), "free table pages differ between boots: {free:?}\n{}", run.context());
    // Every boot checked (nearly) all 32 MiB, the movable half included.
    assert!(boots.iter().all(|l| number_after(l, "RAM fresh (") > 32 * MIB - 2 * MIB), "{boots:#?}");
    run.line("guest@0", "restart: 3 restarts, every boot with fresh RAM, PASS");
}

/// The first-touch machine (256 MiB of RAM): a 16 MiB CMA pool at its top
/// and two `no-map` carveouts that leave no free run of 32 MiB, so the
/// guest's fixed RAM comes in several extents.
const TOUCH_RESERVED: &str = "\treserved-memory {\n\t\t#address-cells = <2>;\n\t\t#size-cells = <2>;\n\t\tranges;\n\t\tcma_pool: cma@4f000000 {\n\t\t\tcompatible = \"shared-dma-pool\";\n\t\t\treusable;\n\t\t\treg = <0x0 0x4f000000 0x0 0x1000000>;\n\t\t};\n\t\tcarveout@41000000 {\n\t\t\treg = <0x0 0x41000000 0x0 0x7000000>;\n\t\t\tno-map;\n\t\t};\n\t\tcarveout@49400000 {\n\t\t\treg = <0x0 0x49400000 0x0 0x4c00000>;\n\t\t\tno-map;\n\t\t};\n\t};\n";

const TOUCH_MIB: u64 = 256;

/// Runs the restart stub (48 MiB, its top 16 MiB movable from the pool) with
/// a page of `CARVE-PLANTED-PG` loaded by QEMU at the start, middle and end
/// of each of its extents and of the pool before the monitor starts, on
/// `image` with bootargs `append`; returns the run and the planted pages' count.
fn run_planted(name: &str, image: Image, append: Option<&str>) -> (Run, usize) {
    let dir = test_dir!("stubs", name);
    let guests = [Guest {
        props: "\t\t\tmemory-region = <&cma_pool>;\n\t\t\tcarve,movable-memory = <0x0 0x4000>;\n",
        ..Guest::new("guest@0", "restart", 48, 0x4800_0000)
    }];
    let nodes: Vec<GuestNode> = guests.iter().map(Guest::node).collect();
    let (dtb, blob) = compile_dts(&dir, &virt_dts(1, TOUCH_MIB, TOUCH_RESERVED, &nodes));
    let plan = plan_as_the_monitor(&blob, image.elf());
    let extents: Vec<PhysRange> = plan.guests[0].extents.iter().map(|e| e.pa_range()).collect();
    assert!(extents.len() >= 2, "the carveout should split the guest's RAM: {extents:x?}");
    let pool = PhysRange::from_raw(0x4f00_0000, 16 * MIB).expect("pool range");
    let mut marks = Vec::new();
    for r in extents.iter().chain([&pool]) {
        marks.extend([r.start(), (r.start() + r.size / 2) & !0xfff, r.end() - 0x1000]);
    }
    marks.sort_unstable();
    marks.dedup();
    let page: Vec<u8> = b"CARVE-PLANTED-PG".iter().copied().cycle().take(0x1000).collect();
    let file = dir.join("planted.bin");
    std::fs::write(&file, page).expect("write the planted page");
    let loads = marks.iter().map(|&at| (file.clone(), at)).collect();
    let opts = RunOptions { loads, image, append, mem_mib: TOUCH_MIB, ..RunOptions::default() };
    let run = run_monitor(name, &dtb, &guests, &opts);
    // The monitor put the guest where the test's plan did, so the marks are in its RAM.
    let logged = run.extents("guest@0");
    for &at in marks.iter().filter(|&&at| !pool.contains(at)) {
        assert!(logged.iter().any(|&(_, pa, size)| (pa..pa + size).contains(&at)), "mark {at:#x} not in {logged:x?}");
    }
    (run, marks.len())
}

/// First touch: RAM the guest reads before it writes it is zero, on the first
/// boot and after each restart, movable pages included, although pages of a
/// pattern were planted at the start, middle and end of every extent of its
/// RAM and of the CMA pool its movable part comes from before the monitor
/// started. The same machine with `carve.selftest=no-zero` (first touches map
/// without zeroing) must find every planted page: the check sees what is there.
#[test]
fn first_touch_zeroes_planted_ram_on_every_boot_and_the_control_finds_it() {
    let (run, planted) = run_planted("first-touch", Image::Plain, None);
    run.assert_status(0);
    run.assert_no_fail("guest@0");
    assert!(planted >= 9, "{planted} pages planted");
    let boots = restart_boots(&run);
    for l in &boots {
        assert!(
            l.contains(" RAM fresh (") && l.contains(" 0 words not zero, 0 planted pages), ok"),
            "{l}\n{}",
            run.context()
        );
        assert!(number_after(l, "RAM fresh (") > 48 * MIB - 2 * MIB, "{l}");
    }
    run.line("guest@0", "restart: 3 restarts, every boot with fresh RAM, PASS");
    // RAM was mapped on first touch, movable pages one by one, and each restart started over.
    let touches: Vec<&str> = run.log.lines().filter(|l| l.contains("vm: guest@0: first touch: ")).collect();
    assert_eq!(touches.len(), 4, "{touches:#?}");
    for l in &touches {
        assert!(l.contains(" 4096 movable pages mapped"), "{l}");
    }

    let (control, planted_c) = run_planted("first-touch-no-zero", Image::SelfTest, Some("carve.selftest=no-zero"));
    control.assert_logged("vm: carve.selftest=no-zero: guest RAM is mapped on first touch WITHOUT zeroing");
    let first = control.line("guest@0", "restart: boot 0: free table pages ");
    assert!(first.contains(" RAM NOT fresh ("), "{first}\n{}", control.context());
    assert_eq!(number_after(first, " words not zero, "), planted_c as u64, "every planted page seen: {first}");
}

/// smpreset: vCPU 1 of a two-vCPU guest asks for SYSTEM_RESET while vCPU 0
/// waits in WFE with its interrupts masked: the monitor stops vCPU 0 (RAM
/// unmapped, its CPU woken), rebuilds the guest, and vCPU 0 boots again on its
/// own CPU; vCPU 1 is off and starts again through CPU_ON.
#[test]
fn restart_asked_by_vcpu_1_boots_vcpu_0_again() {
    let guests = [Guest { cpus: 2, ..Guest::new("guest@0", "smpreset", 16, 0x4800_0000) }];
    let run = run_guests("smpreset", "", &guests, &RunOptions { smp: 2, ..RunOptions::default() });
    run.assert_status(0);
    run.assert_no_fail("guest@0");
    run.line("guest@0", "smpreset: boot 0: starting vCPU 1, which asks for SYSTEM_RESET");
    let end = run.line("guest@0", "smpreset: boot 1: vCPU 1 ");
    assert!(end.ends_with("started again, PASS"), "{end}\n{}", run.context());
    for want in [
        "vm: guest@0: restart from vCPU 1: RAM unmapped, 1 other vCPU(s) asked to stop",
        "vm: guest@0: vCPU 0 stopped for the restart",
        "vm: guest@0: restarted (1 so far)",
        "vm: guest@0: PoweredOff after 1 restart(s)",
    ] {
        run.assert_logged(want);
    }
    // vCPU 0 entered twice, both times on CPU 0.
    assert_eq!(
        run.log.matches("vm: guest@0: vCPU 0 on CPU 0 entering at IPA 0x40010000").count(),
        2,
        "{}",
        run.context()
    );
}

/// The same restart on the virtual GIC, with two guests beside it: there
/// the monitor, not the guest, owns the physical GIC, so the SGI that wakes
/// vCPU 0 is the monitor's kick. vCPU 0 boots again and vCPU 1 starts again
/// through CPU_ON, its emulated console UART is back to reset (IMSC 0), while
/// `vtimer` (guest@1) takes its 5,200 timer interrupts
/// and `devirq` (guest@2, given no device) waits 1.5 s with its interrupts
/// unmasked and must take none: one guest's restart neither stops the others
/// nor sends them an interrupt.
#[test]
fn restart_on_the_virtual_gic_leaves_the_guests_beside_it_running() {
    let guests = [
        Guest { cpus: 2, ..Guest::new("guest@0", "smpreset", 16, 0x4800_0000) },
        Guest::new("guest@1", "vtimer", 16, 0x4900_0000),
        Guest { inject: true, ..Guest::new("guest@2", "devirq", 16, 0x4a00_0000) },
    ];
    let run = run_guests("smpreset-vgic", "", &guests, &RunOptions { smp: 4, ..RunOptions::default() });
    run.assert_status(0);
    run.assert_logged("the monitor takes physical IRQs (HCR.IMO/FMO)");
    for g in ["guest@0", "guest@1", "guest@2"] {
        run.assert_no_fail(g);
    }
    let end = run.line("guest@0", "smpreset: boot 1: vCPU 1 ");
    assert!(end.ends_with("started again, PASS"), "{end}\n{}", run.context());
    run.assert_logged("vm: guest@0: restarted (1 so far)");
    run.assert_logged("vm: guest@0: PoweredOff after 1 restart(s)");
    // The restart reset its emulated UART.
    run.line("guest@0", "smpreset: boot 1: the emulated console UART's IMSC reads 0x0 (boot 0 wrote 0x50)");
    run.line("guest@1", "vtimer: PASS");
    run.line("guest@2", "devirq: interrupts taken while waiting 1.5 s: 0 (want 0)");
    run.line("guest@2", "devirq: PASS");
    for g in ["guest@1", "guest@2"] {
        run.assert_logged(&format!("vm: {g}: PoweredOff after 0 restart(s)"));
    }
    // The restart came while guest@2 waited.
    assert!(
        run.line_index("vm: guest@0: restarted (1 so far)") < run.line_index("guest@2: devirq: interrupts taken"),
        "guest@2 was done before guest@0 restarted: nothing shown\n{}",
        run.context()
    );
}

/// A 16 MiB CMA pool at 0x50000000, as `/reserved-memory`.
const CMA_POOL: &str = "\treserved-memory {\n\t\t#address-cells = <2>;\n\t\t#size-cells = <2>;\n\t\tranges;\n\t\tcma_pool: cma@50000000 {\n\t\t\tcompatible = \"shared-dma-pool\";\n\t\t\treusable;\n\t\t\treg = <0x0 0x50000000 0x0 0x1000000>;\n\t\t};\n\t};\n";

/// Test 4 of the monitor's memory: a contiguous allocation from a CMA pool
/// whose pages back a running guest. The guest (24 MiB, its top 16 MiB
/// movable from the 16 MiB pool) keeps checking and rewriting every word of
/// its RAM while the monitor, on the other CPU, claims the whole pool and
/// moves each of the guest's 4,096 pages in the way; afterwards the monitor
/// finds its own poison intact in the allocation.
#[test]
fn cma_allocation_moves_a_running_guests_pages() {
    let guests = [Guest {
        props: "\t\t\tmemory-region = <&cma_pool>;\n\t\t\tcarve,movable-memory = <0x0 0x4000>;\n",
        ..Guest::new("guest@0", "cma", 24, 0x4800_0000)
    }];
    let opts =
        RunOptions { smp: 2, append: Some("carve.selftest=cma"), image: Image::SelfTest, ..RunOptions::default() };
    let run = run_guests("cma", CMA_POOL, &guests, &opts);
    run.assert_status(0);
    run.assert_no_fail("guest@0");
    // The plan and the lending: the top 16 MiB of the guest's IPA range from the pool, page by page.
    run.assert_logged("map:   IPA 0x040800000 -> CMA pool cma@50000000, 16384 KiB movable");
    run.assert_logged("cma: guest@0: 4096 pages (16384 KiB) of IPA 0x40800000.. lent from pool cma@50000000 (PA 0x50000000..0x51000000)");
    let l = run.line("guest@0", "cma: bank ");
    assert!(
        l.starts_with("cma: bank 0x40000000+0x01800000, allocation of 4096 pages: 4096 guest pages moved, "),
        "{l}\n{}",
        run.context()
    );
    assert!(l.ends_with(", poison SUCCESS, 0 mismatches, PASS"), "{l}\n{}", run.context());
    // It ran while the guest ran: the guest checked and rewrote at least a whole page of its RAM
    // (in fact megabytes) between asking and the monitor being done.
    assert!(number_after(l, "moved, ") >= 4, "nothing swept while the allocation ran: {l}\n{}", run.context());
    run.assert_logged("kept the monitor's poison");
    run.assert_logged("4096 guest pages moved (copy, stage-2 switch, TLB invalidation by VMID)");
    // CPU 1, which no guest uses, listed the monitor's deferred free memory before the allocation ran there.
    let listed = run.line_index("mm: CPU 1 listed the last ");
    assert!(listed < run.line_index("cma: guest@0 asked for"), "{}", run.context());
}

/// Runs the cmatlb stub (24 MiB, its top 16 MiB movable from the 16 MiB pool)
/// with the monitor's `carve.selftest=SELFTEST`; returns the run and its summary line.
fn run_cmatlb(name: &str, selftest: &str) -> (Run, String) {
    let guests = [Guest {
        props: "\t\t\tmemory-region = <&cma_pool>;\n\t\t\tcarve,movable-memory = <0x0 0x4000>;\n",
        ..Guest::new("guest@0", "cmatlb", 24, 0x4800_0000)
    }];
    let append = format!("carve.selftest={selftest}");
    let opts = RunOptions { smp: 2, append: Some(&append), image: Image::SelfTest, ..RunOptions::default() };
    let run = run_guests(name, CMA_POOL, &guests, &opts);
    run.assert_status(0);
    let line = run.line("guest@0", "cmatlb: 8 hot pages at ").to_string();
    (run, line)
}

/// A move leaves the guest no stale translation: the cmatlb stub keeps 8 of
/// its movable pages' translations hot in its CPU's TLB (it reads nothing
/// else) while the monitor, on the other CPU, claims the whole pool and moves
/// all 4,096 of its movable pages, then writes its poison over their old
/// frames; afterwards every word the stub reads is its own pattern, from the
/// new copies. The same run with the monitor's test switch
/// `carve.selftest=cma-no-tlbi` (moves skip the TLB invalidation by VMID)
/// must read the old frames: every word of the 8 pages stale, the poison. So
/// the check fails when the invalidation is missing.
#[test]
fn cma_moves_leave_no_stale_translation_and_the_check_sees_one_without_the_tlbi() {
    let (run, line) = run_cmatlb("cmatlb", "cma");
    run.assert_no_fail("guest@0");
    assert!(line.ends_with(", 0 of 8192 words stale, free SUCCESS, PASS"), "{line}\n{}", run.context());
    assert_eq!(number_after(&line, " while "), 4096, "guest pages moved: {line}");
    assert!(number_after(&line, ", ") > 8 * 4096, "too few reads while the pages moved: {line}");
    run.assert_not_logged("skip the TLB invalidation");

    let (broken, line) = run_cmatlb("cmatlb-no-tlbi", "cma-no-tlbi");
    broken.assert_logged("cma: carve.selftest=cma-no-tlbi: page moves skip the TLB invalidation");
    assert!(
        line.ends_with(", 8192 of 8192 words stale, free SUCCESS, FAIL"),
        "without the TLB invalidation the stub still read the new copies: the check cannot fail\n{line}\n{}",
        broken.context()
    );
    assert_eq!(number_after(&line, " while "), 4096, "guest pages moved: {line}");
    // What it read was the monitor's poison (PA ^ 0x5ca1ab1e, hyp/src/vm/selftest.rs)
    // in an old frame: a page of the pool, at the offset of the word read.
    let first = broken.line("guest@0", "cmatlb: first stale word at ");
    let (at, read) = (number_after(first, " at "), number_after(first, "read "));
    let pa = read ^ 0x5ca1_ab1e;
    assert!(
        (0x5000_0000..0x5100_0000).contains(&pa) && pa % 4096 == at % 4096,
        "{first}: not the poison of a pool frame"
    );
    broken.assert_logged("guest pages moved (copy, stage-2 switch, NO TLB invalidation: carve.selftest=cma-no-tlbi)");
}

/// Parses a `trapcost: KIND loops=L ticks=T baseline=B freq=F` line into instructions per trap
/// (under `-icount shift=0` one instruction is 1 ns; the counter ticks at F Hz).
fn instructions_per_trap(line: &str) -> f64 {
    let (loops, ticks, base, freq) = (
        number_after(line, "loops="),
        number_after(line, "ticks="),
        number_after(line, "baseline="),
        number_after(line, "freq="),
    );
    assert!(loops > 0 && freq > 0 && ticks > base, "{line}");
    (ticks - base) as f64 * 1e9 / freq as f64 / loops as f64
}

/// trap cost: HVC round trips and emulated MMIO reads, timed under `-icount shift=0`.
#[test]
fn trap_cost_is_measured_in_instructions() {
    let guests = [Guest::new("guest@0", "trapcost", 16, 0x4800_0000)];
    let opts = RunOptions { icount: true, image: Image::SelfTest, ..RunOptions::default() };
    let run = run_guests("trapcost", "", &guests, &opts);
    run.assert_status(0);
    run.assert_no_fail("guest@0");
    run.line("guest@0", "trapcost: PASS");
    let hvc = instructions_per_trap(run.line("guest@0", "trapcost: hvc loops="));
    let mmio = instructions_per_trap(run.line("guest@0", "trapcost: mmio loops="));
    eprintln!("hvc round trip: {hvc:.0} instructions; emulated mmio read: {mmio:.0} instructions");
    // A trap to Hyp mode and back cannot be nearly free: a figure this low means the loop did not trap.
    assert!(hvc >= 20.0 && mmio >= 20.0, "hvc {hvc}, mmio {mmio}\n{}", run.context());
}

// --- the stubs' portable parts, on the host ---------------------------------------------

/// carve's own calls, as SMCCC (Arm DEN0028) says a hypervisor vendor's calls
/// look: fast (bit 31), SMC32 (bit 30 clear), owning entity 6, the Vendor
/// Specific Hypervisor Service (bits 29:24), bits 23:16 zero, a function number
/// below 0xff00 (0xff00-0xffff is each service's call-count/UID/revision
/// range); distinct; and `is_carve_call` takes exactly that range. The monitor
/// and the stubs both take the numbers from carve-abi, so this is what can drift.
#[test]
fn carve_calls_are_in_the_smccc_vendor_hypervisor_range() {
    use carve_core::vm::hypercall as hc;
    let calls = [
        hc::CONSOLE_WRITE,
        hc::NOP,
        hc::INFO,
        hc::DUMP_MAP,
        hc::CMA_TEST_ALLOC,
        hc::CMA_TEST_STATUS,
        hc::CMA_TEST_FREE,
    ];
    for id in calls {
        assert_eq!(id >> 31, 1, "{id:#010x}: not a fast call");
        assert_eq!((id >> 30) & 1, 0, "{id:#010x}: not SMC32");
        assert_eq!((id >> 24) & 0x3f, 6, "{id:#010x}: not the Vendor Specific Hypervisor Service");
        assert_eq!((id >> 16) & 0xff, 0, "{id:#010x}: bits 23:16 must be zero");
        assert!(id & 0xffff < 0xff00, "{id:#010x}: in the service-query range");
        assert!(hc::is_carve_call(id), "{id:#010x}");
    }
    assert_eq!(calls.iter().collect::<std::collections::BTreeSet<_>>().len(), calls.len(), "{calls:#x?}");
    for other in [0x8500_0000, 0x85ff_ffff, 0x8601_0000, 0x8400_0000, 0xc600_0001, 0x0600_0001] {
        assert!(!hc::is_carve_call(other), "{other:#010x} taken for carve's");
    }
    assert!(hc::is_carve_call(0x8600_0000) && hc::is_carve_call(0x8600_ffff));
}

/// The PSCI numbers carve answers and the stubs check, against the PSCI
/// specification (Arm DEN0022D: function IDs in chapter 5, return codes in
/// table 5, AFFINITY_INFO 5.7, MIGRATE_INFO_TYPE 5.8), written out here once;
/// and the stubs' AFFINITY_INFO answers against the monitor's power states.
#[test]
fn psci_numbers_follow_the_specification() {
    use carve_core::vm::psci;
    let functions = [
        (psci::PSCI_VERSION, 0x8400_0000),
        (psci::CPU_SUSPEND, 0x8400_0001),
        (psci::CPU_OFF, 0x8400_0002),
        (psci::CPU_ON, 0x8400_0003),
        (psci::CPU_ON_64, 0xc400_0003),
        (psci::AFFINITY_INFO, 0x8400_0004),
        (psci::AFFINITY_INFO_64, 0xc400_0004),
        (psci::MIGRATE_INFO_TYPE, 0x8400_0006),
        (psci::SYSTEM_OFF, 0x8400_0008),
        (psci::SYSTEM_RESET, 0x8400_0009),
        (psci::PSCI_FEATURES, 0x8400_000a),
    ];
    for (ours, spec) in functions {
        assert_eq!(ours, spec, "function ID {ours:#010x}, the specification says {spec:#010x}");
    }
    let codes = [
        (psci::SUCCESS, 0),
        (psci::NOT_SUPPORTED, -1),
        (psci::INVALID_PARAMETERS, -2),
        (psci::DENIED, -3),
        (psci::ALREADY_ON, -4),
        (psci::ON_PENDING, -5),
        (psci::INTERNAL_FAILURE, -6),
        (psci::NOT_PRESENT, -7),
        (psci::DISABLED, -8),
        (psci::INVALID_ADDRESS, -9),
    ];
    for (ours, spec) in codes {
        assert_eq!(ours, spec, "return code {ours}, the specification says {spec}");
    }
    assert_eq!(psci::VERSION_1_0, 0x0001_0000, "PSCI 1.0: major 1 in bits 31:16");
    assert_eq!(psci::MIGRATE_NOT_REQUIRED, 2, "MIGRATE_INFO_TYPE: no Trusted OS, or none that needs migrating");
    // AFFINITY_INFO: ON 0, OFF 1, ON_PENDING 2; the stubs expect them, the monitor answers with Power.
    assert_eq!([stub_abi::AFF_ON, stub_abi::AFF_OFF, stub_abi::AFF_ON_PENDING], [0, 1, 2]);
    assert_eq!([psci::Power::On as i32, psci::Power::Off as i32, psci::Power::OnPending as i32], [0, 1, 2]);
}

/// Every stub is linked where carve puts a guest's kernel: the default IPA
/// base (0x40000000) plus carve-abi's KERNEL_OFFSET; its link script writes
/// the address out, so this is where the two could drift apart.
#[test]
fn stubs_are_linked_where_carve_loads_a_kernel() {
    let want = RAM_BASE + carve_abi::KERNEL_OFFSET;
    for name in ["memtest", "probe", "probe2", "hypercall", "restart", "smpreset", "trapcost", "cma", "cmatlb"] {
        let flat = stub(name);
        let elf = flat.with_extension("");
        let (start, _) = elf_span(&elf);
        assert_eq!(
            start,
            want,
            "{name} ({}) is linked at {start:#x}, carve enters a kernel at {want:#x}",
            elf.display()
        );
    }
}

/// The stubs' assembly takes carve's and PSCI's function IDs from carve-abi
/// (`const` operands), never as numbers written into the instructions.
#[test]
fn stub_assembly_takes_function_ids_from_the_abi() {
    let dir = carve_tests::repo_root().join("guest-stubs/carve-stubs/src");
    let mut files = vec![dir.join("rt.rs")];
    files.extend(std::fs::read_dir(dir.join("bin")).expect("list the stubs").map(|e| e.expect("a stub").path()));
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read a stub");
        for (i, line) in text.lines().enumerate() {
            let l = line.trim_start();
            let id_half = l.starts_with("movt r0, #0x8") || l.starts_with("ldr r0, =0x8");
            assert!(!id_half, "{}:{}: a function ID written into the assembly: {line}", f.display(), i + 1);
        }
    }
}

/// The guest DTB carve writes for the probe's machine, by carve-core's own writer.
fn probe_guest_dtb() -> Vec<u8> {
    probe_guest_dtb_with(&carve_core::dt::write::GuestDtbOptions::default())
}

/// [`probe_guest_dtb`] written with `opts`.
fn probe_guest_dtb_with(opts: &carve_core::dt::write::GuestDtbOptions<'_>) -> Vec<u8> {
    let guests = [Guest { inject: true, ..Guest::new("guest@0", "probe", GUEST_MIB, 0x4800_0000) }];
    // The host tests run at once and share the directory: one compiles at a time.
    static COMPILING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let (_, blob) = {
        let _one = COMPILING.lock().unwrap_or_else(|e| e.into_inner());
        compile_dts(&test_dir!("stubs", "fdt-host"), &machine_dts(1, PROBE_RESERVED, &guests))
    };
    let tree = carve_core::dt::Tree::parse(&blob).expect("parse");
    let machine = Machine::from_tree(&tree).expect("machine");
    let config = PlanConfig {
        monitor_image: MonitorImage::At(PhysRange::from_bounds(0x4020_0000, 0x4060_0000).unwrap()),
        ..PlanConfig::default()
    };
    let plan = plan::plan(&machine, &config).expect("plan");
    carve_core::dt::write::guest_dtb(&tree, &machine, &plan.guests[0], opts).expect("guest DTB")
}

/// The stubs' FDT reader finds the initrd carve's writer puts in `/chosen` (the restart stub leaves it out of its check).
#[test]
fn stub_fdt_reader_finds_the_initrd() {
    assert_eq!(stub_fdt::Fdt::new(&probe_guest_dtb()).expect("header").initrd().expect("walk"), None);
    let initrd = carve_core::addr::IpaRange::from_raw(0x4120_0000, 0x54_a200).unwrap();
    let opts = carve_core::dt::write::GuestDtbOptions { initrd: Some(initrd), ..Default::default() };
    let dtb = probe_guest_dtb_with(&opts);
    let fdt = stub_fdt::Fdt::new(&dtb).expect("header");
    assert_eq!(fdt.initrd().expect("walk"), Some((0x4120_0000, 0x4174_a200)));
    // Its /chosen is not a memory node, and the rest reads as before.
    assert_eq!(fdt.memory().expect("walk").map(|m| (m.base, m.size)), Some((RAM_BASE, GUEST_MIB * MIB)));
}

/// The stubs' FDT reader finds, in a guest DTB from carve's writer, the one
/// bank and the devices passed through, and nothing it should not.
#[test]
fn stub_fdt_reader_reads_carves_guest_dtb() {
    let dtb = probe_guest_dtb();
    let fdt = stub_fdt::Fdt::new(&dtb).expect("header");
    let mut regs = Vec::new();
    fdt.for_each_reg(|r| regs.push((r.node.to_string(), r.is_memory, r.base, r.size))).expect("walk");
    let mem = fdt.memory().expect("walk").expect("a memory node");
    assert_eq!((mem.base, mem.size), (RAM_BASE, GUEST_MIB * MIB), "{regs:x?}");
    assert_eq!(regs.iter().filter(|r| r.1).count(), 1, "one memory range: {regs:x?}");
    for (node, base, size) in [("pl011@9000000", 0x0900_0000, 0x1000), ("intc@8000000", 0x0800_0000, 0x1_0000)] {
        assert!(regs.iter().any(|r| r.0 == node && r.2 == base && r.3 == size), "{node} missing: {regs:x?}");
    }
    // No carveout, no CPU (no size cells), nothing of the machine's that was not passed through.
    assert!(!regs.iter().any(|r| (0x5000_0000..0x7000_0000).contains(&r.2)), "{regs:x?}");
    assert!(!regs.iter().any(|r| r.0.starts_with("cpu@") || r.0.starts_with("virtio")), "{regs:x?}");
}

/// A malformed or truncated blob is an error, never a panic or an out-of-bounds read.
#[test]
fn stub_fdt_reader_refuses_malformed_blobs() {
    let dtb = probe_guest_dtb();
    let count = |b: &[u8]| -> Result<usize, stub_fdt::Error> {
        let mut n = 0;
        stub_fdt::Fdt::new(b)?.for_each_reg(|_| n += 1)?;
        Ok(n)
    };
    let whole = count(&dtb).expect("the whole blob reads");
    assert!(whole >= 4);
    let mut bad = dtb.clone();
    bad[0] ^= 1;
    assert!(matches!(count(&bad), Err(stub_fdt::Error::BadMagic(_))));
    // Every truncation is refused (totalsize no longer fits).
    for len in 0..dtb.len() {
        assert!(count(&dtb[..len]).is_err(), "a blob cut at {len} bytes was accepted");
    }
    // Flipping bytes in the structure block gives an error or some ranges, never a panic.
    let off_struct = u32::from_be_bytes(dtb[8..12].try_into().unwrap()) as usize;
    let mut seed = 0x1234_5678u32;
    for _ in 0..2000 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let mut b = dtb.clone();
        let at = off_struct + (seed as usize >> 8) % (b.len() - off_struct);
        b[at] = (seed >> 3) as u8;
        let _ = count(&b);
    }
}
