//! The monitor's own memory under QEMU: the `carve.selftest=mm` self-tests (ioremap, lowmem and vmalloc in holes, sparse vmemmap, highmem through kmap and fixmap, alloc/free cycles, CMA) and their figures.
//!
//! Each test writes or picks a machine tree without a guest, runs the
//! self-test image (`scripts/build --selftest`) with `carve.selftest=mm` (and
//! `vmalloc=` where it matters) in `-append`, which QEMU writes to
//! `/chosen/bootargs`, the monitor's own command line, and checks the exit
//! status (0: no part failed), which parts ran and passed and which the
//! machine could not run (SKIPPED, never counted as a pass), and the figures
//! the monitor logs. Machines with RAM above 4 GiB run on
//! `qemu-system-aarch64 -cpu cortex-a15`.

use std::path::PathBuf;

use carve_tests::{compile_dts, dtc, repo_root, run_dtb, test_dir, Image, Run, RunOptions};

/// Runs the self-test image with `dtb` and `bootargs` on `qemu-system-aarch64`
/// if `aarch64` (RAM above 4 GiB), else `qemu-system-arm`, with `mem_mb` of RAM.
fn run(name: &str, aarch64: bool, mem_mb: u64, dtb: &std::path::Path, bootargs: &str) -> Run {
    let opts = RunOptions {
        mem_mib: mem_mb,
        aarch64,
        image: Image::SelfTest,
        append: Some(bootargs),
        ..RunOptions::default()
    };
    run_dtb(&test_dir!("mm", name), name, dtb, &opts)
}

/// Compiles a tree given as source text into the test's directory.
fn dtb_from(name: &str, source: &str) -> PathBuf {
    compile_dts(&test_dir!("mm", name), source).0
}

/// The six parts of the memory self-tests, in the order they run.
const PARTS: [&str; 6] = ["ioremap", "lowmem", "sparse", "highmem", "cycles", "cma"];

/// Asserts each part's verdict (`PASS` or `SKIPPED`, by what the machine makes
/// possible) and the summary that counts them: a skipped part is never a pass.
fn assert_parts(run: &Run, verdicts: [&str; 6]) {
    for (part, verdict) in PARTS.iter().zip(verdicts) {
        run.line_index(&format!("mm-selftest: {part}: {verdict}"));
    }
    let pass = verdicts.iter().filter(|v| **v == "PASS").count();
    let skipped: Vec<&str> = PARTS.iter().zip(verdicts).filter(|p| p.1 == "SKIPPED").map(|p| *p.0).collect();
    if skipped.is_empty() {
        run.assert_logged("mm-selftest: all PASS");
    } else {
        run.assert_logged(&format!(
            "mm-selftest: {pass} PASS, 0 FAIL, {} SKIPPED; not passed: {}",
            skipped.len(),
            skipped.join(" ")
        ));
        run.assert_not_logged("mm-selftest: all PASS");
    }
}

/// The numbers in the first log line that contains `needle`, in order.
fn numbers(run: &Run, needle: &str) -> Vec<u64> {
    let line = run
        .log
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("the log lacks {needle:?}\n{}", run.context()));
    let rest = &line[line.find(needle).unwrap()..];
    rest.split(|c: char| !c.is_ascii_alphanumeric())
        .filter_map(
            |w| if let Some(h) = w.strip_prefix("0x") { u64::from_str_radix(h, 16).ok() } else { w.parse().ok() },
        )
        .collect()
}

/// (1) and (5): the two-carveout machine with `vmalloc=320M`: lowmem as large
/// as without the holes, 64 vmalloc areas of 1-4 MiB all inside the holes,
/// each written and read back; ioremap of the UART; alloc/free cycles that
/// leave the free-page counts where they were; the bench figures.
#[test]
fn lowmem_vmalloc_in_holes_ioremap_and_cycles() {
    let dtb = dtb_from(
        "lowmem",
        r#"/dts-v1/;
/include/ "qemu-virt.dtsi"
/include/ "carveouts-2.dtsi"
/ {
    reserved-memory {
        cma_pool: cma@70000000 {
            compatible = "shared-dma-pool";
            reusable;
            reg = <0x0 0x70000000 0x0 0x01000000>;
        };
    };
    chosen {
        stdout-path = "/pl011@9000000";
    };
};
"#,
    );
    let run = run("lowmem", false, 1280, &dtb, "carve.selftest=mm vmalloc=320M");
    run.assert_status(0);
    // No RAM above 4 GiB on this machine: highmem cannot run (the next test runs it).
    assert_parts(&run, ["PASS", "PASS", "PASS", "SKIPPED", "PASS", "PASS"]);
    run.assert_logged("PeriphID0 0x11");
    // The bootargs reached the plan: 320 MiB of vmalloc space, 256 of it in the holes.
    let l = numbers(&run, "mm-selftest: lowmem: lowmem");
    assert_eq!(l[0], l[1], "lowmem {} kB with holes, {} kB without\n{}", l[0], l[1], run.context());
    assert_eq!((l[3], l[4]), (262_144, 327_680), "vmalloc in holes / total\n{}", run.context());
    let v = numbers(&run, "mm-selftest: lowmem: 64 vmalloc areas");
    assert_eq!((v[0], v[1], v[2]), (64, 64, 64), "areas, in holes, patterns ok\n{}", run.context());
    assert_eq!(v[3], v[4], "free pages before/after vmalloc\n{}", run.context());
    let c = numbers(&run, "mm-selftest: cycles: free pages");
    // before, after buddy, after vmalloc, after S2 (then 64 MiB, 4 KiB); S2 table pages before, after
    assert!(c[..4].iter().all(|&n| n == c[0]) && c[6] == c[7], "cycles: {c:?}\n{}", run.context());
    // (4, 5) CMA: 1,024 lent pages moved by a claim of the whole 16 MiB pool, with and without a
    // mapping; then every count back where it was.
    for (i, what) in ["with no mapping", "mapped in vmalloc"].iter().enumerate() {
        let m = numbers(&run, &format!("4096 pages claimed{}{what}", if i == 0 { " " } else { ", " }));
        assert_eq!(&m[..4], &[4096, 1024, 1024, 1024], "claimed, lent, moved, intact ({what})\n{}", run.context());
    }
    let f = numbers(&run, "mm-selftest: cma: free pages");
    assert!(f.chunks(2).all(|p| p[0] == p[1]), "cma cycle counts {f:?}\n{}", run.context());
    run.assert_logged("mm-bench: buddy alloc+free:");
    run.assert_logged("mm-bench: vmalloc+vfree (1 page):");
    run.assert_logged("mm-bench: CMA migration (unmapped):");
}

/// (2) 6 GiB, all but 256 MiB below 4 GiB carved out: pages above 4 GiB
/// zeroed and checked through kmap and through the per-CPU fixmap slots.
#[test]
fn highmem_through_kmap_and_fixmap() {
    let dtb = dtb_from(
        "highmem",
        r#"/dts-v1/;
/include/ "qemu-virt.dtsi"
&memory {
    reg = <0x0 0x40000000 0x1 0x80000000>;
};
/ {
    reserved-memory {
        #address-cells = <2>;
        #size-cells = <2>;
        ranges;
        carveout@50000000 {
            reg = <0x0 0x50000000 0x0 0xb0000000>;
            no-map;
        };
    };
    chosen {
        stdout-path = "/pl011@9000000";
    };
};
"#,
    );
    let run = run("highmem", true, 6144, &dtb, "carve.selftest=mm");
    run.assert_status(0);
    let h = numbers(&run, "mm-selftest: highmem:");
    // pages, address, checked through kmap, through fixmap
    assert!(h[1] >= 1 << 32, "the pages are not above 4 GiB: {h:?}\n{}", run.context());
    assert_eq!((h[2], h[3]), (h[0], h[0]), "pages checked\n{}", run.context());
    // No CMA pool on this machine: the lowmem test runs that part.
    assert_parts(&run, ["PASS", "PASS", "PASS", "PASS", "PASS", "SKIPPED"]);
}

/// (3) dts/virt-sparse.dts: 6 GiB with a 2 GiB no-map hole. The vmemmap is
/// backed for present RAM only (16 bytes a page), pfn_valid is false every
/// 2 MiB across the hole and true on present RAM.
#[test]
fn sparse_vmemmap_and_pfn_valid() {
    let dtb = test_dir!("mm", "sparse").join("virt-sparse.dtb");
    dtc(&repo_root().join("dts/virt-sparse.dts"), &dtb);
    let run = run("sparse", true, 6144, &dtb, "carve.selftest=mm");
    run.assert_status(0);
    let s = numbers(&run, "mm-selftest: sparse: vmemmap_backed");
    let (backed, present) = (s[0], s[1]);
    assert_eq!(present, 4 << 18, "present pages: 4 GiB of RAM\n{}", run.context());
    assert_eq!(backed, (present * 16).next_multiple_of(8192), "vmemmap bytes backed\n{}", run.context());
    let p = numbers(&run, "mm-selftest: sparse: pfn_valid false at");
    // false at N of N hole samples (2 GiB / 2 MiB), true at M of M RAM samples
    assert_eq!((p[0], p[1]), (1024, 1024), "hole samples\n{}", run.context());
    assert_eq!(p[2], p[3], "RAM samples\n{}", run.context());
    assert!(p[2] >= 2048, "RAM samples\n{}", run.context());
    assert_parts(&run, ["PASS", "PASS", "PASS", "PASS", "PASS", "SKIPPED"]);
}
