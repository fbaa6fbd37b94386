//! The monitor's RAM overhead per GiB managed, for the machines of `dts/` (built in code): figures for the README.
//!
//! Run with `cargo test -p carve-core overhead -- --nocapture` to see the table.
//! For each machine the tree is written with vm-fdt the way its `.dts` reads,
//! read back with [`Machine::from_dtb`], planned with the monitor's defaults,
//! and then measured:
//!
//! - vmemmap: the RAM backing the page records of present sections ([`vmemmap_backing`]);
//! - Hyp tables: the monitor's stage-1 tables for its image (4 KiB pages, as
//!   the boot map's per-section permissions need), the linear map, the
//!   vmemmap, the pkmap and fixmap windows and one ioremap (the console);
//! - stage-2: every guest's tables for its extents;
//! - CMA: the pools' bitmaps (heap).
//!
//! "Managed" is RAM less the `no-map` carveouts: what has page records.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use vm_fdt::FdtWriter;

use super::cma::CmaPool;
use super::page::{backing_bytes, vmemmap_backing, MemMap, Sections, VecPageStore, SECTION_RECORD_BYTES};
use super::table::{Attrs, HypStage1, PageTable, Stage2, TableMemory, VecMemory};
use super::vmalloc::Vmalloc;
use super::Buddy;
use crate::addr::{Address, PhysAddr, VirtAddr, PAGE_SIZE, SIZE_1G, SIZE_2M};
use crate::dt::Machine;
use crate::plan::layout::{FIXMAP_BASE, PKMAP_BASE};
use crate::plan::{plan, Plan, PlanConfig};

const MIB: u64 = 1 << 20;

/// A `/reserved-memory` child.
enum Res {
    Static { name: &'static str, base: u64, size: u64, no_map: bool, cma: bool },
    Dynamic { name: &'static str, size: u64, align: u64, alloc: (u64, u64) },
}

/// A machine of `dts/`.
struct Spec {
    name: &'static str,
    ram: (u64, u64),
    cpus: u32,
    reserved: Vec<Res>,
    /// Guest RAM in KiB and vCPUs.
    guest: Option<(u32, u32)>,
    bootargs: Option<&'static str>,
}

fn two_carveouts() -> Vec<Res> {
    vec![
        Res::Static { name: "ipu-pool@50000000", base: 0x5000_0000, size: 128 * MIB, no_map: true, cma: false },
        Res::Static { name: "fb@60000000", base: 0x6000_0000, size: 128 * MIB, no_map: true, cma: false },
    ]
}

fn specs() -> Vec<Spec> {
    vec![
        Spec {
            name: "virt-plain (-m 768)",
            ram: (0x4000_0000, 768 * MIB),
            cpus: 1,
            reserved: vec![],
            guest: None,
            bootargs: Some("console=ttyAMA0"),
        },
        Spec {
            name: "virt-2carveouts (-m 1280)",
            ram: (0x4000_0000, 1280 * MIB),
            cpus: 1,
            reserved: two_carveouts(),
            guest: Some((0xc0000, 1)),
            bootargs: None,
        },
        Spec {
            name: "virt-smp2 (-m 1280 -smp 2)",
            ram: (0x4000_0000, 1280 * MIB),
            cpus: 2,
            reserved: two_carveouts(),
            guest: Some((0xc0000, 2)),
            bootargs: None,
        },
        Spec {
            name: "virt-cma (-m 1024)",
            ram: (0x4000_0000, 1024 * MIB),
            cpus: 1,
            reserved: vec![
                Res::Static { name: "cma@50000000", base: 0x5000_0000, size: 64 * MIB, no_map: false, cma: true },
                Res::Dynamic { name: "dsp-pool", size: 32 * MIB, align: 4 * MIB, alloc: (0x6000_0000, 0x2000_0000) },
            ],
            guest: Some((0x80000, 1)),
            bootargs: None,
        },
        Spec {
            name: "virt-highmem (-m 6144)",
            ram: (0x4000_0000, 6144 * MIB),
            cpus: 1,
            reserved: vec![Res::Static {
                name: "carveout@50000000",
                base: 0x5000_0000,
                size: 0xb000_0000,
                no_map: true,
                cma: false,
            }],
            guest: Some((0xc0000, 1)),
            bootargs: None,
        },
    ]
}

/// The tree of `spec`, as its `.dts` would compile.
fn dtb(spec: &Spec) -> Vec<u8> {
    let mut w = FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    w.property_string("model", "linux,dummy-virt").unwrap();
    let cpus = w.begin_node("cpus").unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 0).unwrap();
    for c in 0..spec.cpus {
        let n = w.begin_node(&alloc::format!("cpu@{c}")).unwrap();
        w.property_string("device_type", "cpu").unwrap();
        w.property_string("compatible", "arm,cortex-a15").unwrap();
        w.property_u32("reg", c).unwrap();
        w.end_node(n).unwrap();
    }
    w.end_node(cpus).unwrap();
    let mem = w.begin_node("memory@40000000").unwrap();
    w.property_string("device_type", "memory").unwrap();
    w.property_array_u64("reg", &[spec.ram.0, spec.ram.1]).unwrap();
    w.end_node(mem).unwrap();
    let psci = w.begin_node("psci").unwrap();
    w.property_string_list("compatible", vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()]).unwrap();
    w.property_string("method", "smc").unwrap();
    w.end_node(psci).unwrap();
    let uart = w.begin_node("pl011@9000000").unwrap();
    w.property_string_list("compatible", vec!["arm,pl011".into(), "arm,primecell".into()]).unwrap();
    w.property_array_u64("reg", &[0x0900_0000, 0x1000]).unwrap();
    w.end_node(uart).unwrap();
    if !spec.reserved.is_empty() {
        let rm = w.begin_node("reserved-memory").unwrap();
        w.property_u32("#address-cells", 2).unwrap();
        w.property_u32("#size-cells", 2).unwrap();
        w.property_null("ranges").unwrap();
        for r in &spec.reserved {
            match *r {
                Res::Static { name, base, size, no_map, cma } => {
                    let n = w.begin_node(name).unwrap();
                    if cma {
                        w.property_string("compatible", "shared-dma-pool").unwrap();
                        w.property_null("reusable").unwrap();
                    }
                    w.property_array_u64("reg", &[base, size]).unwrap();
                    if no_map {
                        w.property_null("no-map").unwrap();
                    }
                    w.end_node(n).unwrap();
                }
                Res::Dynamic { name, size, align, alloc } => {
                    let n = w.begin_node(name).unwrap();
                    w.property_u64("size", size).unwrap();
                    w.property_u64("alignment", align).unwrap();
                    w.property_array_u64("alloc-ranges", &[alloc.0, alloc.1]).unwrap();
                    w.property_null("no-map").unwrap();
                    w.end_node(n).unwrap();
                }
            }
        }
        w.end_node(rm).unwrap();
    }
    let ch = w.begin_node("chosen").unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 1).unwrap();
    w.property_string("stdout-path", "/pl011@9000000").unwrap();
    if let Some(args) = spec.bootargs {
        w.property_string("bootargs", args).unwrap();
    }
    if let Some((kib, cpus)) = spec.guest {
        let g = w.begin_node("guest@0").unwrap();
        w.property_string("compatible", "carve,guest").unwrap();
        w.property_u32("#address-cells", 1).unwrap();
        w.property_u32("#size-cells", 1).unwrap();
        w.property_array_u32("memory", &[0, kib]).unwrap();
        w.property_u32("cpus", cpus).unwrap();
        let k = w.begin_node("module@48000000").unwrap();
        w.property_string_list("compatible", vec!["multiboot,kernel".into(), "multiboot,module".into()]).unwrap();
        w.property_array_u32("reg", &[0x4800_0000, 0x60_0000]).unwrap();
        w.property_string("bootargs", "console=ttyAMA0").unwrap();
        w.end_node(k).unwrap();
        let r = w.begin_node("module@4a000000").unwrap();
        w.property_string_list("compatible", vec!["multiboot,ramdisk".into(), "multiboot,module".into()]).unwrap();
        w.property_array_u32("reg", &[0x4a00_0000, 0x10_0000]).unwrap();
        w.end_node(r).unwrap();
        w.end_node(g).unwrap();
    }
    w.end_node(ch).unwrap();
    w.end_node(root).unwrap();
    w.finish().unwrap()
}

/// What the monitor spends on one plan.
#[derive(Debug)]
struct Overhead {
    ram: u64,
    managed: u64,
    guest: u64,
    vmemmap: u64,
    hyp_tables: u64,
    stage2: u64,
    cma_bitmaps: u64,
}

impl Overhead {
    fn total(&self) -> u64 {
        self.vmemmap + self.hyp_tables + self.stage2 + self.cma_bitmaps
    }
}

/// Maps `[pa, pa + size)` at `va` in `page` pieces (4 KiB pieces force level-3 tables).
fn map_in<M: TableMemory>(t: &mut PageTable<HypStage1>, mem: &mut M, va: u64, pa: u64, size: u64, piece: u64) {
    let mut off = 0;
    while off < size {
        let n = piece.min(size - off);
        t.map(mem, VirtAddr::from_u64(va + off).unwrap(), PhysAddr::new(pa + off), n, Attrs::ram_nx()).unwrap();
        off += n;
    }
}

fn measure(p: &Plan) -> Overhead {
    let sections = Sections::for_plan(p).unwrap();
    let chunks = vmemmap_backing(p.monitor.vmemmap, &sections).unwrap();
    let vmemmap = backing_bytes(&chunks);
    assert_eq!(vmemmap, u64::from(sections.present_sections()) * SECTION_RECORD_BYTES);

    // Hyp stage-1.
    let mut mem = VecMemory::default();
    let mut hyp = PageTable::<HypStage1>::new(&mut mem).unwrap();
    let img = p.monitor_image;
    assert!(img.end() <= p.page_offset().as_u64(), "the image's mapping sits below PAGE_OFFSET");
    map_in(&mut hyp, &mut mem, img.start(), img.start(), img.size, PAGE_SIZE);
    for l in &p.monitor.lowmem {
        map_in(&mut hyp, &mut mem, l.va.as_u64(), l.pa.as_u64(), l.size, l.size);
    }
    // Backing at made-up physical addresses, aligned like the real ones.
    let mut backing = 0x40_0000_0000u64;
    for c in &chunks {
        backing = backing.next_multiple_of(c.granule);
        map_in(&mut hyp, &mut mem, c.va.start(), backing, c.va.size, c.va.size);
        backing += c.va.size;
    }
    map_in(&mut hyp, &mut mem, PKMAP_BASE.as_u64(), 0x1_0000_0000, PAGE_SIZE, PAGE_SIZE);
    map_in(&mut hyp, &mut mem, FIXMAP_BASE.as_u64(), 0x0900_0000, PAGE_SIZE, PAGE_SIZE);
    let mut vmalloc = Vmalloc::new(&p.monitor);
    vmalloc.ioremap(&mut hyp, &mut mem, PhysAddr::new(0x0900_0000), 0x1000).unwrap();
    let hyp_tables = mem.bytes_in_use();

    // Stage-2.
    let mut stage2 = 0;
    for g in &p.guests {
        let mut mem = VecMemory::default();
        let mut t = PageTable::<Stage2>::new(&mut mem).unwrap();
        for e in &g.extents {
            t.map(&mut mem, e.ipa, e.pa, e.size, Attrs::ram()).unwrap();
        }
        stage2 += mem.bytes_in_use();
    }

    // CMA pool bitmaps: two bits a page.
    let store = VecPageStore::new(&sections);
    let mut buddy = Buddy::new(MemMap::new(sections.clone(), store).unwrap());
    let pools = CmaPool::from_plan(p, &mut buddy).unwrap();
    let cma_bitmaps = pools.iter().map(|c| 2 * c.total_pages().div_ceil(64) * 8).sum();

    Overhead {
        ram: p.ram.iter().map(|r| r.size).sum(),
        managed: sections_managed(p),
        guest: p.guest_total(),
        vmemmap,
        hyp_tables,
        stage2,
        cma_bitmaps,
    }
}

/// RAM less the `no-map` carveouts.
fn sections_managed(p: &Plan) -> u64 {
    let mut present = crate::plan::RangeSet::from_ranges(p.ram.iter().copied());
    for c in p.carveouts.iter().filter(|c| c.no_map) {
        present.remove(c.range);
    }
    present.total()
}

fn kib(b: u64) -> String {
    alloc::format!("{} KiB", b.div_ceil(1024))
}

#[test]
fn overhead_per_gib_managed_for_the_dts_machines() {
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>10} {:>10} {:>9} {:>8} {:>11} {:>14} {:>16}",
        "machine",
        "RAM",
        "managed",
        "guest",
        "vmemmap",
        "Hyp tbl",
        "stage-2",
        "CMA bm",
        "total",
        "per GiB mgd",
        "stage-2/GiB gst"
    );
    for spec in specs() {
        let m = Machine::from_dtb(&dtb(&spec)).unwrap();
        assert_eq!(m.bootargs.as_deref(), spec.bootargs, "/chosen/bootargs is read");
        let p = plan(&m, &PlanConfig::default()).unwrap_or_else(|e| panic!("{}: {e}", spec.name));
        crate::plan::verify(&p).unwrap();
        let o = measure(&p);
        let per_gib = o.total() * SIZE_1G / o.managed;
        let s2_per_gib = (o.guest > 0).then(|| o.stage2 * SIZE_1G / o.guest);
        println!(
            "{:<28} {:>5} MiB {:>5} MiB {:>5} MiB {:>10} {:>10} {:>9} {:>8} {:>11} {:>14} {:>16}",
            spec.name,
            o.ram / MIB,
            o.managed / MIB,
            o.guest / MIB,
            kib(o.vmemmap),
            kib(o.hyp_tables),
            kib(o.stage2),
            alloc::format!("{} B", o.cma_bitmaps),
            kib(o.total()),
            kib(per_gib),
            s2_per_gib.map_or(String::from("-"), kib),
        );
        // Page records dominate: 4 MiB per GiB of present RAM, plus tables.
        assert!(o.vmemmap <= (o.managed.next_multiple_of(SIZE_2M) / PAGE_SIZE) * 16 + SIZE_2M);
        assert!(per_gib < 4 * MIB + 256 * 1024, "{}: {} per GiB", spec.name, kib(per_gib));
        // The whole overhead fits in what the plan leaves the monitor.
        assert!(o.total() <= p.monitor_free.total(), "{}: {} > {}", spec.name, o.total(), p.monitor_free.total());
        // The guest's stage-2 stays small: blocks where the extents allow.
        if let Some(s2) = s2_per_gib {
            assert!(s2 <= 64 * 1024, "{}: stage-2 {} per GiB of guest", spec.name, kib(s2));
        }
    }
}
