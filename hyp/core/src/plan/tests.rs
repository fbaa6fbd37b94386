//! Whole-plan tests on machines built in code: the figures DESIGN.md is about, and properties.

use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use super::layout::VmallocSource;
use super::*;
use crate::addr::{Ipa, PhysAddr, SIZE_2M, SIZE_4G};
use crate::dt::machine::{CpuStart, Guest, Module, MovableRequest, RamBank, Reserved, ReservedKind};

const MIB: u64 = 1 << 20;

fn bank(base: u64, size: u64) -> RamBank {
    RamBank { node: "/memory@0".into(), range: PhysRange::from_raw(base, size).unwrap() }
}

fn carve(name: &str, base: u64, size: u64, no_map: bool, reusable: bool) -> Reserved {
    Reserved {
        name: name.into(),
        kind: ReservedKind::Static(vec![PhysRange::from_raw(base, size).unwrap()]),
        no_map,
        reusable,
        compatible: None,
        memreserve: false,
        phandle: None,
    }
}

/// QEMU virt with `-m MB` and the two 128 MiB no-map carveouts of DESIGN.md.
fn virt_two_carveouts(mb: u64) -> Machine {
    Machine {
        ram: vec![bank(0x4000_0000, mb * MIB)],
        reserved: vec![
            carve("ipu-pool@50000000", 0x5000_0000, 128 * MIB, true, false),
            carve("fb@60000000", 0x6000_0000, 128 * MIB, true, false),
        ],
        cpus: vec![0, 1],
        cpu_start: Some(CpuStart::Psci),
        ..Machine::default()
    }
}

fn what_if(sizes: &[u64]) -> PlanConfig {
    PlanConfig { extra_guests: sizes.to_vec(), require_kernel: false, ..PlanConfig::default() }
}

#[test]
fn dense_768m_guest_skips_both_carveouts() {
    let p = plan(&virt_two_carveouts(1280), &what_if(&[768 * MIB])).unwrap();
    verify(&p).unwrap();
    let g = &p.guests[0];
    assert_eq!(g.size, 768 * MIB);
    assert_eq!(g.ipa_base, DEFAULT_IPA_BASE);
    for e in &g.extents {
        for c in &p.carveouts {
            assert!(!e.pa_range().overlaps(&c.range), "{:?} overlaps {}", e, c.name);
        }
        assert_eq!(e.pa.as_u64() % SIZE_2M, e.ipa.as_u64() % SIZE_2M, "2 MiB blocks possible");
    }
    assert_eq!(g.extents.len(), 2, "{:?}", g.extents);
}

#[test]
fn holes_become_vmalloc_and_lowmem_does_not_shrink() {
    // With a budget that covers both holes, the linear map reaches as much RAM as without them.
    let mut cfg = what_if(&[]);
    cfg.layout.vmalloc_size = 320 * MIB;
    let with = plan(&virt_two_carveouts(1280), &cfg).unwrap();
    let mut flat = virt_two_carveouts(1024);
    flat.reserved.clear();
    let without = plan(&flat, &cfg).unwrap();
    verify(&with).unwrap();
    // The same RAM without holes gets the same lowmem, less only the wider
    // PFN span's page records (the holes' records take vmemmap space).
    let vmemmap_extra = with.monitor.vmemmap.size - without.monitor.vmemmap.size;
    assert_eq!(with.monitor.lowmem_total() + vmemmap_extra, without.monitor.lowmem_total());
    assert_eq!(with.monitor.lowmem_total(), with.monitor.lowmem_without_holes);
    let holes: Vec<_> = with.monitor.vmalloc.iter().filter(|v| v.source == VmallocSource::Hole).collect();
    assert_eq!(holes.len(), 2);
    // The holes sit where the carveouts' linear addresses would be.
    let po = with.monitor.page_offset.as_u64();
    assert_eq!(holes[0].va.as_u64(), po + 0x1000_0000);
    assert_eq!(holes[1].va.as_u64(), po + 0x2000_0000);
    assert_eq!(holes.iter().map(|h| h.size).sum::<u64>(), 256 * MIB);
    // vmalloc counts hole space: the whole budget is there, the dedicated area shrank by the holes.
    assert!(with.monitor.vmalloc_total() >= 320 * MIB);
    let dedicated = with.monitor.vmalloc.iter().find(|v| v.source == VmallocSource::Dedicated).unwrap();
    assert!(dedicated.size >= 64 * MIB && dedicated.size < 64 * MIB + SIZE_2M, "{:#x}", dedicated.size);
}

#[test]
fn many_holes_work() {
    let mut m = Machine { ram: vec![bank(0x8000_0000, 2048 * MIB)], ..Machine::default() };
    for i in 0..12u64 {
        m.reserved.push(carve(&alloc::format!("hole@{i}"), 0x8400_0000 + i * 0x0400_0000, 16 * MIB, true, false));
    }
    let p = plan(&m, &what_if(&[256 * MIB])).unwrap();
    verify(&p).unwrap();
    assert_eq!(p.monitor.vmalloc.iter().filter(|v| v.source == VmallocSource::Hole).count(), 12);
    assert_eq!(p.monitor.lowmem_total(), p.monitor.lowmem_without_holes);
}

#[test]
fn guest_above_4g_uses_gibibyte_blocks() {
    let m = Machine {
        ram: vec![bank(0x4000_0000, 6144 * MIB)],
        reserved: vec![carve("hole@50000000", 0x5000_0000, SIZE_4G - 0x5000_0000, true, false)],
        ..Machine::default()
    };
    let p = plan(&m, &what_if(&[2048 * MIB])).unwrap();
    verify(&p).unwrap();
    let e = &p.guests[0].extents;
    assert!(e.iter().all(|e| e.pa.as_u64() >= SIZE_4G));
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].pa.as_u64() % SIZE_1G, 0);
    // Highmem: everything above 4 GiB that the linear map does not reach.
    assert!(p.monitor.highmem.iter().any(|h| h.start() >= SIZE_4G));
}

#[test]
fn refusal_names_the_guest_and_the_numbers() {
    let m = virt_two_carveouts(1280);
    let e = plan(&m, &what_if(&[2048 * MIB])).unwrap_err();
    let s = e.to_string();
    assert!(s.starts_with("guest@0: wants 2048 MiB, "), "{s}");
    assert!(s.contains("ipu-pool@50000000 128 MiB"), "{s}");
    assert!(s.contains("fb@60000000 128 MiB"), "{s}");
}

#[test]
fn dynamic_carveout_goes_high_inside_its_ranges() {
    let mut m = virt_two_carveouts(1280);
    m.reserved.push(Reserved {
        name: "dyn@0".into(),
        kind: ReservedKind::Dynamic {
            size: 32 * MIB,
            alignment: 4 * MIB,
            alloc_ranges: vec![PhysRange::from_raw(0x4000_0000, 0x2000_0000).unwrap()],
        },
        no_map: true,
        reusable: false,
        compatible: None,
        memreserve: false,
        phandle: None,
    });
    let p = plan(&m, &what_if(&[])).unwrap();
    let d = p.carveouts.iter().find(|c| c.name == "dyn@0").unwrap();
    // Highest 4 MiB-aligned 32 MiB below 0x60000000 not in the first carveout: 0x5e000000.
    assert_eq!(d.range, PhysRange::from_raw(0x5e00_0000, 32 * MIB).unwrap());
    assert!(d.dynamic);

    // No room: the refusal says which node and how much there was.
    if let ReservedKind::Dynamic { alloc_ranges, .. } = &mut m.reserved[2].kind {
        alloc_ranges[0] = PhysRange::from_raw(0x5000_0000, 0x0800_0000).unwrap();
    }
    let e = plan(&m, &what_if(&[])).unwrap_err().to_string();
    assert!(e.starts_with("dyn@0: size 32 MiB (alignment 4 MiB) has no room"), "{e}");
}

#[test]
fn conflicting_overlap_is_refused_and_same_flags_merge() {
    let mut m = virt_two_carveouts(1280);
    m.reserved.push(carve("cma@52000000", 0x5200_0000, 16 * MIB, false, true));
    let e = plan(&m, &what_if(&[])).unwrap_err().to_string();
    assert!(e.starts_with("cma@52000000: "), "{e}");
    assert!(e.contains("ipu-pool@50000000") && e.contains("conflict"), "{e}");

    let mut m = virt_two_carveouts(1280);
    m.reserved.push(carve("fw@52000000", 0x5200_0000, 16 * MIB, true, false));
    let p = plan(&m, &what_if(&[])).unwrap();
    assert!(p.warnings.iter().any(|w| w.contains("merged")), "{:?}", p.warnings);
}

/// Overlaps with the same flags warn once per region, however many it overlaps
/// (a thousand mutually overlapping regions must not make a million sentences).
#[test]
fn same_flag_overlaps_warn_once_per_region() {
    let mut m = virt_two_carveouts(1280);
    for i in 0..3u64 {
        m.reserved.push(carve(&alloc::format!("fw{i}"), 0x5100_0000 + i * MIB, 16 * MIB, true, false));
    }
    let p = plan(&m, &what_if(&[])).unwrap();
    let merged: Vec<&String> = p.warnings.iter().filter(|w| w.contains("merged")).collect();
    assert_eq!(merged.len(), 3, "{merged:?}");
    assert!(
        merged[2].starts_with("fw2: ") && merged[2].contains("ipu-pool@50000000") && merged[2].contains("(and 2 more)"),
        "{merged:?}"
    );
}

#[test]
fn untidy_but_legal_trees_plan_with_warnings() {
    let mut m = virt_two_carveouts(1280);
    m.reserved.push(carve("sram@10000000", 0x1000_0000, MIB, true, false));
    m.reserved.push(carve("fb@8f000000", 0x8f00_0000, 32 * MIB, true, false));
    let p = plan(&m, &what_if(&[512 * MIB])).unwrap();
    verify(&p).unwrap();
    assert!(p.warnings.iter().any(|w| w.contains("sram@10000000") && w.contains("outside RAM")));
    assert!(p.warnings.iter().any(|w| w.contains("fb@8f000000") && w.contains("partly outside")));
}

#[test]
fn no_ram_is_a_clear_refusal() {
    let e = plan(&Machine::default(), &what_if(&[])).unwrap_err().to_string();
    assert!(e.contains("no RAM"), "{e}");
}

/// A boot module at `node`, `size` bytes at `base`.
fn module(node: &str, base: u64, size: u64) -> Module {
    Module { node: node.into(), range: PhysRange::from_raw(base, size).unwrap(), bootargs: None }
}

#[test]
fn modules_are_kept_out_and_checked() {
    let mut m = virt_two_carveouts(1280);
    m.guests.push(Guest {
        name: "guest@0".into(),
        path: "/chosen/guest@0".into(),
        memory: 768 * MIB,
        cpus: 1,
        cpu_ids: None,
        ipa_base: None,
        kernel: Some(module("/chosen/guest@0/module@48000000", 0x4800_0000, 8 * MIB)),
        ramdisk: Some(module("/chosen/guest@0/module@4a000000", 0x4a00_0000, 2 * MIB)),
        device_tree: None,
        bootargs: Some("console=ttyAMA0".into()),
        on_fault: Default::default(),
        virtual_gic: false,
        movable: None,
        devices: Default::default(),
        named: Vec::new(),
    });
    let p = plan(&m, &PlanConfig::default()).unwrap();
    verify(&p).unwrap();

    // A module inside a carveout is refused, naming both.
    m.guests[0].ramdisk = Some(module("/chosen/guest@0/module@50100000", 0x5010_0000, 2 * MIB));
    let e = plan(&m, &PlanConfig::default()).unwrap_err().to_string();
    assert!(e.starts_with("/chosen/guest@0/module@50100000: ") && e.contains("ipu-pool@50000000"), "{e}");

    // No kernel: nothing to boot.
    m.guests[0].kernel = None;
    m.guests[0].ramdisk = None;
    let e = plan(&m, &PlanConfig::default()).unwrap_err().to_string();
    assert!(e.contains("no multiboot,kernel"), "{e}");
}

/// A `/memreserve/` entry, as the reader makes one.
fn memreserve(i: usize, base: u64, size: u64) -> Reserved {
    Reserved { name: alloc::format!("/memreserve/ #{i}"), memreserve: true, ..carve("", base, size, false, false) }
}

/// A boot module inside a plain reservation (what U-Boot does with the initrd
/// it loaded) is planned with a warning, and its range is nobody's: no guest
/// extent, no monitor free RAM. Inside a no-map or reusable region, or only
/// partly inside a reservation, it is refused.
#[test]
fn modules_inside_plain_reservations_are_planned_with_a_warning() {
    let mut m = virt_two_carveouts(1280);
    let ramdisk = "/chosen/guest@0/module@4c000000";
    m.guests
        .push(Guest { ramdisk: Some(module(ramdisk, 0x4c00_0000, 0x34_5678)), ..small_guest(0, 1, None, 0x4800_0000) });
    // U-Boot's /memreserve/ of exactly the initrd, and the same range without flags in /reserved-memory.
    m.reserved.push(memreserve(0, 0x4c00_0000, 0x34_5678));
    m.reserved.push(carve("initrd@4c000000", 0x4c00_0000, 0x34_5678, false, false));
    let p = plan(&m, &PlanConfig::default()).unwrap();
    verify(&p).unwrap();
    let w: Vec<&String> = p.warnings.iter().filter(|w| w.starts_with(ramdisk)).collect();
    assert_eq!(
        w,
        [&alloc::format!(
            "{ramdisk}: 0x4c000000-0x4c345678 lies inside the reservation /memreserve/ #0 0x4c000000-0x4c345678 (and 1 more): planned where the loader put it, and kept out of every guest and of the monitor's free memory"
        )]
    );
    let r = PhysRange::from_raw(0x4c00_0000, 0x34_6000).unwrap();
    assert!(!p.monitor_free.overlaps(&r));
    assert!(p.guests.iter().flat_map(|g| &g.extents).all(|e| !e.pa_range().overlaps(&r)));

    // Two adjacent reservations that cover it together: still wholly reserved.
    m.reserved.truncate(2);
    m.reserved.push(memreserve(0, 0x4c00_0000, 0x20_0000));
    m.reserved.push(memreserve(1, 0x4c20_0000, 0x20_0000));
    verify(&plan(&m, &PlanConfig::default()).unwrap()).unwrap();

    // Only partly inside: refused, with the reservation and how much lies outside.
    m.reserved.truncate(2);
    m.reserved.push(memreserve(0, 0x4c00_0000, 0x20_0000));
    let e = plan(&m, &PlanConfig::default()).unwrap_err().to_string();
    assert_eq!(
        e,
        alloc::format!(
            "{ramdisk}: 0x4c000000-0x4c345678 lies only partly inside the reservation /memreserve/ #0 0x4c000000-0x4c200000 (1332856 bytes of it outside every reservation): a module lies wholly inside reservations or outside all of them"
        )
    );

    // Inside a reusable (CMA) region, even one a plain reservation also covers: refused.
    m.reserved.truncate(2);
    m.reserved.push(memreserve(0, 0x4c00_0000, 0x34_5678));
    m.reserved.push(carve("cma@4c000000", 0x4c00_0000, 0x100_0000, false, true));
    let e = plan(&m, &PlanConfig::default()).unwrap_err().to_string();
    assert!(
        e.starts_with(&alloc::format!(
            "{ramdisk}: 0x4c000000-0x4c345678 overlaps the carveout cma@4c000000 0x4c000000-0x4d000000 (reusable), which is not a plain reservation"
        )),
        "{e}"
    );
    // Inside a no-map one: refused.
    m.reserved.truncate(2);
    m.guests[0].ramdisk = Some(module(ramdisk, 0x5010_0000, 0x1000));
    let e = plan(&m, &PlanConfig::default()).unwrap_err().to_string();
    assert!(e.contains("overlaps the carveout ipu-pool@50000000 0x50000000-0x58000000 (no-map)"), "{e}");
}

/// A module where the monitor's image or the blob it was handed lies is refused.
#[test]
fn modules_under_the_monitor_are_refused() {
    let mut m = virt_two_carveouts(1280);
    m.guests.push(small_guest(0, 1, None, 0x4030_0000));
    let at = |base, size| PhysRange::from_raw(base, size).unwrap();
    let cfg = PlanConfig { monitor_image: MonitorImage::At(at(0x4020_0000, 4 * MIB)), ..PlanConfig::default() };
    let e = plan(&m, &cfg).unwrap_err().to_string();
    assert_eq!(
        e,
        "/chosen/guest@0/module@40300000: 0x40300000-0x40b00000 overlaps the monitor image 0x40200000-0x40600000"
    );
    m.guests[0] = small_guest(0, 1, None, 0x4000_0000);
    m.guests[0].kernel.as_mut().unwrap().range = at(0x4000_0000, 0x1000);
    let cfg = PlanConfig { monitor_extra: vec![at(0x4000_0000, 0x1000)], ..cfg };
    let e = plan(&m, &cfg).unwrap_err().to_string();
    assert!(e.ends_with("overlaps what the monitor holds at boot (its device tree) 0x40000000-0x40001000"), "{e}");
}

#[test]
fn cpus_are_counted() {
    let m = virt_two_carveouts(1280);
    let mut cfg = what_if(&[128 * MIB, 128 * MIB, 128 * MIB]);
    cfg.require_kernel = false;
    let e = plan(&m, &cfg).unwrap_err().to_string();
    assert!(e.starts_with("guest@2: asks for 1 CPU(s), but only 0 of the machine's 2 are left"), "{e}");
}

/// A guest of 64 MiB with a kernel module at `kernel` (8 MiB).
fn small_guest(n: u32, cpus: u32, cpu_ids: Option<Vec<u32>>, kernel: u64) -> Guest {
    let name = alloc::format!("guest@{n}");
    Guest {
        path: alloc::format!("/chosen/{name}"),
        name,
        memory: 64 * MIB,
        cpus,
        cpu_ids,
        ipa_base: None,
        kernel: Some(Module {
            node: alloc::format!("/chosen/guest@{n}/module@{kernel:x}"),
            range: PhysRange::from_raw(kernel, 8 * MIB).unwrap(),
            bootargs: None,
        }),
        ramdisk: None,
        device_tree: None,
        bootargs: None,
        on_fault: Default::default(),
        virtual_gic: false,
        movable: None,
        devices: Default::default(),
        named: Vec::new(),
    }
}

fn four_cpu_machine(guests: Vec<Guest>) -> Machine {
    let mut m = virt_two_carveouts(1280);
    m.cpus = vec![0, 1, 2, 3];
    m.guests = guests;
    m
}

#[test]
fn guests_without_cpu_ids_take_the_lowest_cpus_in_order() {
    let m = four_cpu_machine(vec![small_guest(0, 2, None, 0x4800_0000), small_guest(1, 1, None, 0x4900_0000)]);
    let p = plan(&m, &PlanConfig::default()).unwrap();
    verify(&p).unwrap();
    assert_eq!((p.guests[0].first_cpu, p.guests[0].cpu_ids.as_slice()), (0, &[0, 1][..]));
    assert_eq!((p.guests[1].first_cpu, p.guests[1].cpu_ids.as_slice()), (2, &[2][..]));
    assert!(p.guests.iter().all(|g| g.cpus_contiguous()));
    assert_eq!(p.guests[0].vcpu_on(1), Some(1));
    assert_eq!(p.guests[0].vcpu_on(2), None);
}

#[test]
fn cpu_ids_are_honoured_and_others_take_what_is_left() {
    // guest@0 takes the lowest free CPUs after guest@1 named 0 and 2: CPUs 1 and 3.
    let m =
        four_cpu_machine(vec![small_guest(0, 2, None, 0x4800_0000), small_guest(1, 2, Some(vec![2, 0]), 0x4900_0000)]);
    let p = plan(&m, &PlanConfig::default()).unwrap();
    assert_eq!(p.guests[0].cpu_ids, [1, 3]);
    assert_eq!(p.guests[0].first_cpu, 1);
    assert!(!p.guests[0].cpus_contiguous());
    assert_eq!(p.guests[1].cpu_ids, [2, 0]);
    assert_eq!(p.guests[1].first_cpu, 2);
    assert_eq!(p.guests[1].vcpu_on(0), Some(1));
    assert!(!p.guests[1].cpus_contiguous());

    let m = four_cpu_machine(vec![small_guest(0, 2, Some(vec![2, 3]), 0x4800_0000)]);
    let p = plan(&m, &PlanConfig::default()).unwrap();
    assert_eq!((p.guests[0].first_cpu, p.guests[0].cpus_contiguous()), (2, true));
}

#[test]
fn two_guests_naming_one_cpu_are_refused() {
    let m = four_cpu_machine(vec![
        small_guest(0, 2, Some(vec![0, 1]), 0x4800_0000),
        small_guest(1, 1, Some(vec![0]), 0x4900_0000),
    ]);
    let e = plan(&m, &PlanConfig::default()).unwrap_err().to_string();
    assert_eq!(e, "guest@1: CPU 0 is already guest@0's");
}

#[test]
fn a_cpu_id_the_machine_lacks_is_refused_with_the_numbers() {
    let m = four_cpu_machine(vec![small_guest(0, 2, Some(vec![1, 4]), 0x4800_0000)]);
    let e = plan(&m, &PlanConfig::default()).unwrap_err().to_string();
    assert_eq!(e, "guest@0: carve,cpu-ids names CPU 4, but the machine has 4 CPU(s) (0-3) in /cpus");
}

#[test]
fn more_cpus_than_exist_are_refused() {
    let m = four_cpu_machine(vec![small_guest(0, 5, None, 0x4800_0000)]);
    let e = plan(&m, &PlanConfig::default()).unwrap_err().to_string();
    assert_eq!(e, "guest@0: asks for 5 CPU(s), but only 4 of the machine's 4 are left");
    // Named CPUs count against the others.
    let m =
        four_cpu_machine(vec![small_guest(0, 3, None, 0x4800_0000), small_guest(1, 2, Some(vec![0, 1]), 0x4900_0000)]);
    let e = plan(&m, &PlanConfig::default()).unwrap_err().to_string();
    assert_eq!(e, "guest@0: asks for 3 CPU(s), but only 2 of the machine's 4 are left");
    // A tree without CPU nodes has one CPU to give; a huge `cpus` is refused, not allocated.
    let mut m = four_cpu_machine(vec![small_guest(0, u32::MAX, None, 0x4800_0000)]);
    m.cpus.clear();
    let e = plan(&m, &PlanConfig::default()).unwrap_err().to_string();
    assert_eq!(e, "guest@0: asks for 4294967295 CPU(s), but only 1 of the machine's 1 are left");
}

#[test]
fn monitor_at_a_fixed_place_is_kept_out() {
    let mut cfg = what_if(&[768 * MIB]);
    cfg.monitor_image = MonitorImage::At(PhysRange::from_raw(0x4020_0000, 0x40_0000).unwrap());
    cfg.monitor_extra = vec![PhysRange::from_raw(0x4000_0000, 0x10_0000).unwrap()];
    let p = plan(&virt_two_carveouts(1280), &cfg).unwrap();
    verify(&p).unwrap();
    assert_eq!(p.monitor_image.start(), 0x4020_0000);
    for e in &p.guests[0].extents {
        assert!(!e.pa_range().overlaps(&PhysRange::from_raw(0x4000_0000, 0x60_0000).unwrap()));
    }
}

prop_compose! {
    fn machine_strategy()(
        banks in proptest::collection::vec((0u64..64, 1u64..32), 1..4),
        holes in proptest::collection::vec((0u64..2048, 1u64..64, any::<bool>()), 0..8),
    ) -> Machine {
        // Banks in 64 MiB units from 0x40000000 (some overlap, some above 4 GiB); holes in 1 MiB units.
        let ram = banks.iter().map(|&(a, s)| bank(0x4000_0000 + a * 64 * MIB, s * 64 * MIB)).collect();
        let reserved = holes.iter().enumerate().map(|(i, &(a, s, nm))| {
            carve(&alloc::format!("r{i}@{a:x}"), 0x4000_0000 + a * MIB, s * MIB, nm, !nm && i % 3 == 0)
        }).collect();
        Machine { ram, reserved, cpus: vec![0, 1, 2, 3], ..Machine::default() }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any machine: a plan that verifies, or a refusal that names its subject. Never a panic.
    #[test]
    fn any_machine_plans_or_refuses(m in machine_strategy(), sizes in proptest::collection::vec(1u64..512, 0..3)) {
        let cfg = what_if(&sizes.iter().map(|s| s * 2 * MIB).collect::<Vec<_>>());
        match plan(&m, &cfg) {
            Ok(p) => {
                prop_assert_eq!(verify(&p), Ok(()));
                prop_assert_eq!(p.guests.len(), sizes.len());
                let total: u64 = m.ram.iter().map(|b| b.range.size).sum();
                prop_assert!(p.monitor.lowmem_total() + p.monitor.highmem_total() <= total);
            }
            Err(e) => {
                prop_assert!(!e.subject.is_empty());
                prop_assert!(e.to_string().len() > e.subject.len() + 10);
            }
        }
    }

    /// Every guest extent is as block-friendly as the free memory allows: with
    /// RAM and carveouts 2 MiB-granular, every extent is 2 MiB congruent.
    #[test]
    fn extents_keep_2m_congruence(m in machine_strategy(), size in 1u64..256) {
        let mut m = m;
        for r in &mut m.reserved {
            if let ReservedKind::Static(rs) = &mut r.kind {
                for x in rs.iter_mut() {
                    *x = PhysRange::from_raw(x.start() & !(SIZE_2M - 1), x.size.next_multiple_of(SIZE_2M)).unwrap();
                }
            }
        }
        if let Ok(p) = plan(&m, &what_if(&[size * SIZE_2M])) {
            for e in &p.guests[0].extents {
                prop_assert_eq!(e.pa.as_u64() % SIZE_2M, e.ipa.as_u64() % SIZE_2M, "{:?}", e);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any machine with a guest whose modules lie anywhere, some under a
    /// `/memreserve/` that covers all, the start or the end of one: a plan
    /// that verifies, in which every module that overlaps a carveout lies
    /// wholly in plain ones and has its warning; or a refusal naming a node.
    #[test]
    fn modules_in_reservations_plan_soundly(
        m in machine_strategy(),
        kernel in (0u64..2048, 1u64..16),
        ramdisk in (0u64..2048, 1u64..64),
        cover in 0u8..4,
    ) {
        let mut m = m;
        let mib = |(a, s): (u64, u64)| PhysRange::from_raw(0x4000_0000 + a * MIB, s * MIB / 4).unwrap();
        let (k, r) = (mib(kernel), mib(ramdisk));
        let mut g = small_guest(0, 1, None, k.start());
        g.kernel.as_mut().unwrap().range = k;
        g.ramdisk = Some(Module { node: "/chosen/guest@0/ramdisk".into(), range: r, bootargs: None });
        m.guests.push(g);
        // 0: none; 1: exactly the ramdisk; 2: its first half; 3: from its middle on past its end.
        let half = (r.size / 2) & !0xfff;
        match cover {
            1 => m.reserved.push(memreserve(0, r.start(), r.size)),
            2 if half > 0 => m.reserved.push(memreserve(0, r.start(), half)),
            3 if half > 0 => m.reserved.push(memreserve(0, r.start() + half, r.size)),
            _ => {}
        }
        match plan(&m, &PlanConfig::default()) {
            Ok(p) => {
                prop_assert_eq!(verify(&p), Ok(()));
                for md in [&k, &r] {
                    let over: Vec<_> = p.carveouts.iter().filter(|c| c.range.overlaps(md)).collect();
                    if !over.is_empty() {
                        prop_assert!(over.iter().all(|c| c.is_plain()));
                        // Wholly inside them: the /memreserve/ of half of it alone is not enough.
                        let mut outside = RangeSet::from_ranges([*md]);
                        over.iter().for_each(|c| outside.remove(c.range));
                        prop_assert!(outside.is_empty(), "{} is only partly reserved: {:?}", md, outside);
                        let said = alloc::format!("{md} lies inside the reservation");
                        let warned = p.warnings.iter().any(|w| w.contains(&said));
                        prop_assert!(warned, "no warning has {:?}", said);
                    }
                }
            }
            Err(e) => {
                prop_assert!(!e.subject.is_empty());
                prop_assert!(e.to_string().len() > e.subject.len() + 10);
            }
        }
    }
}

#[test]
fn linear_helpers_agree() {
    let p = plan(&virt_two_carveouts(1280), &what_if(&[])).unwrap();
    let va = p.monitor.linear_va(PhysAddr::new(0x4800_0000)).unwrap();
    assert_eq!(p.linear_pa(va), Some(PhysAddr::new(0x4800_0000)));
    assert_eq!(p.monitor.linear_va(PhysAddr::new(0x5000_0000)), None, "no-map is not linear-mapped");
    assert!(p.warnings.is_empty(), "{:?}", p.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Every guest extent, built into stage-2 tables, walks back to its PA, and
    /// each leaf is the largest block the extent's alignment allows.
    #[test]
    fn extents_walk_back_through_stage2(m in machine_strategy(), sizes in proptest::collection::vec(1u64..256, 1..3)) {
        use crate::mm::{Attrs, PageTable, Stage2, VecMemory};
        use crate::addr::{Ipa, SIZE_1G};
        let cfg = what_if(&sizes.iter().map(|s| s * SIZE_2M).collect::<Vec<_>>());
        if let Ok(p) = plan(&m, &cfg) {
            for g in &p.guests {
                let mut mem = VecMemory::default();
                let mut s2 = PageTable::<Stage2>::new(&mut mem).unwrap();
                for e in &g.extents {
                    s2.map(&mut mem, e.ipa, e.pa, e.size, Attrs::ram()).unwrap();
                }
                for e in &g.extents {
                    for off in [0, (e.size / 2) & !0xfff, e.size - 0x1000] {
                        let t = s2.translate(&mem, Ipa::new(e.ipa.as_u64() + off)).unwrap();
                        prop_assert_eq!(t.pa.as_u64(), e.pa.as_u64() + off);
                    }
                }
                // Leaves are maximal: no leaf could have been a bigger block.
                let mut leaves = Vec::new();
                s2.for_each_leaf(&mem, |l| leaves.push(l));
                for l in &leaves {
                    let bigger = if l.size == 0x1000 { SIZE_2M } else if l.size == SIZE_2M { SIZE_1G } else { continue };
                    let (i0, p0) = (l.input.as_u64() & !(bigger - 1), l.pa.as_u64() & !(bigger - 1));
                    let congruent = l.input.as_u64() - i0 == l.pa.as_u64() - p0;
                    let covered = congruent && g.extents.iter().any(|e| {
                        e.ipa.as_u64() <= i0 && i0 + bigger <= e.ipa.as_u64() + e.size
                            && e.pa.as_u64() + (i0 - e.ipa.as_u64()) == p0
                    });
                    prop_assert!(!covered, "leaf {:?} could have been a {:#x} block", l.input, bigger);
                }
                let total: u64 = leaves.iter().map(|l| l.size).sum();
                prop_assert_eq!(total, g.size);
            }
        }
    }
}

// Movable memory: a guest's RAM partly backed by a CMA pool (`memory-region` + `carve,movable-memory`).

/// A `reusable` `shared-dma-pool` at `base` with phandle `ph`.
fn cma_pool(name: &str, base: u64, size: u64, ph: u32) -> Reserved {
    Reserved { compatible: Some("shared-dma-pool".into()), phandle: Some(ph), ..carve(name, base, size, false, true) }
}

/// A guest of `mib` MiB whose top `movable_mib` come from the pool with phandle `ph`.
fn movable_guest(n: u32, mib: u64, movable_mib: u64, ph: u32, kernel: u64) -> Guest {
    let movable = (movable_mib > 0).then_some(MovableRequest { region: ph, size: movable_mib * MIB });
    Guest { memory: mib * MIB, movable, ..small_guest(n, 1, None, kernel) }
}

/// dts/virt-cma-guest.dts at `-m 1024`: a 64 MiB pool at 0x50000000 (phandle
/// 1), a dynamic 32 MiB no-map region in 0x60000000..0x80000000 (phandle 2).
fn virt_cma(guests: Vec<Guest>) -> Machine {
    let dsp = Reserved {
        name: "dsp-pool".into(),
        kind: ReservedKind::Dynamic {
            size: 32 * MIB,
            alignment: 4 * MIB,
            alloc_ranges: vec![PhysRange::from_raw(0x6000_0000, 0x2000_0000).unwrap()],
        },
        phandle: Some(2),
        ..carve("dsp-pool", 0, 1, true, false)
    };
    Machine {
        ram: vec![bank(0x4000_0000, 1024 * MIB)],
        reserved: vec![cma_pool("cma@50000000", 0x5000_0000, 64 * MIB, 1), dsp],
        cpus: vec![0, 1],
        cpu_start: Some(CpuStart::Psci),
        guests,
        ..Machine::default()
    }
}

fn movable_of(p: &Plan, g: usize) -> &Movable {
    p.guests[g].movable.as_ref().expect("a movable part")
}

#[test]
fn a_movable_part_is_the_top_of_the_guest_and_not_extents() {
    let p = plan(&virt_cma(vec![movable_guest(0, 512, 32, 1, 0x4800_0000)]), &PlanConfig::default()).unwrap();
    verify(&p).unwrap();
    let g = &p.guests[0];
    // The IPA range is the whole 512 MiB; extents back the low 480 MiB, the pool the top 32 MiB.
    assert_eq!((g.ipa_base, g.size), (DEFAULT_IPA_BASE, 512 * MIB));
    assert_eq!(g.ipa_range().end(), 0x6000_0000);
    assert_eq!(g.fixed_size(), 480 * MIB);
    assert_eq!(g.extents.iter().map(|e| e.size).sum::<u64>(), 480 * MIB);
    assert_eq!(g.extents.last().map(|e| e.ipa.as_u64() + e.size), Some(0x5e00_0000));
    assert_eq!(*movable_of(&p, 0), Movable { pool: "cma@50000000".into(), ipa: Ipa::new(0x5e00_0000), size: 32 * MIB });
    assert_eq!(movable_of(&p, 0).ipa_range().end(), 0x6000_0000);
    // No extent takes the pool's pages; the movable IPAs have no planned PA.
    let pool = p.carveouts.iter().find(|c| c.name == "cma@50000000").unwrap();
    assert!(pool.is_cma_pool() && pool.whole_pages() == 64 * MIB);
    assert!(g.extents.iter().all(|e| !e.pa_range().overlaps(&pool.range)));
    assert!(g.pa_of(Ipa::new(0x5dff_f000)).is_some());
    assert_eq!(g.pa_of(Ipa::new(0x5e00_0000)), None);
    assert_eq!(g.pa_of(Ipa::new(0x5fff_f000)), None);
    // The RAM left to the monitor is 32 MiB more than with the whole guest in extents.
    let whole = plan(&virt_cma(vec![movable_guest(0, 512, 0, 1, 0x4800_0000)]), &PlanConfig::default()).unwrap();
    assert!(whole.guests[0].movable.is_none());
    assert_eq!(p.monitor_free.total(), whole.monitor_free.total() + 32 * MIB);
}

#[test]
fn only_the_fixed_part_counts_against_free_ram() {
    // 1024 MiB less the pool (64), dsp-pool (32), the monitor (8) and the kernel module (8): 912 MiB
    // free, 896 MiB once the monitor keeps its 16 MiB. A 928 MiB guest fits only with 32 MiB movable.
    let e = plan(&virt_cma(vec![movable_guest(0, 928, 0, 1, 0x4800_0000)]), &PlanConfig::default()).unwrap_err();
    assert!(e.to_string().starts_with("guest@0: wants 928 MiB, 896 MiB free after carveouts"), "{e}");
    let p = plan(&virt_cma(vec![movable_guest(0, 928, 32, 1, 0x4800_0000)]), &PlanConfig::default()).unwrap();
    verify(&p).unwrap();
    assert_eq!(p.guests[0].fixed_size(), 896 * MIB);
    // Too big even so: the refusal counts the fixed part and names the movable one.
    let e = plan(&virt_cma(vec![movable_guest(0, 960, 32, 1, 0x4800_0000)]), &PlanConfig::default()).unwrap_err();
    assert!(
        e.to_string().starts_with(
            "guest@0: wants 928 MiB (besides 32 MiB movable from cma@50000000), 896 MiB free after carveouts"
        ),
        "{e}"
    );
}

#[test]
fn guests_sharing_a_pool_must_fit_in_its_pages() {
    let two = |a: u64, b: u64| {
        virt_cma(vec![movable_guest(0, 128, a, 1, 0x4800_0000), movable_guest(1, 128, b, 1, 0x4900_0000)])
    };
    let p = plan(&two(32, 32), &PlanConfig::default()).unwrap();
    verify(&p).unwrap();
    assert_eq!(movable_of(&p, 0).pool, movable_of(&p, 1).pool);
    assert_eq!(movable_of(&p, 1).ipa, Ipa::new(0x4000_0000 + 96 * MIB));
    let e = plan(&two(32, 48), &PlanConfig::default()).unwrap_err().to_string();
    assert_eq!(
        e,
        "guest@1: its movable 48 MiB does not fit in the CMA pool cma@50000000: 64 MiB of whole pages, \
         of which earlier guests take 32 MiB (guest@0 32 MiB)"
    );
    // One guest alone asking for more than the pool.
    let e = plan(&virt_cma(vec![movable_guest(0, 128, 96, 1, 0x4800_0000)]), &PlanConfig::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "guest@0: its movable 96 MiB does not fit in the CMA pool cma@50000000: 64 MiB of whole pages"
    );
    // A pool of partial pages holds only its whole ones.
    let mut m = virt_cma(vec![movable_guest(0, 128, 64, 1, 0x4800_0000)]);
    m.reserved[0] = cma_pool("cma@50000800", 0x5000_0800, 64 * MIB, 1);
    let e = plan(&m, &PlanConfig::default()).unwrap_err().to_string();
    assert!(e.ends_with("does not fit in the CMA pool cma@50000800: 65532 KiB of whole pages"), "{e}");
}

#[test]
fn a_dynamic_pool_backs_movable_memory() {
    let mut m = virt_cma(vec![movable_guest(0, 256, 16, 3, 0x4800_0000)]);
    m.reserved.push(Reserved {
        name: "linux,cma".into(),
        kind: ReservedKind::Dynamic {
            size: 16 * MIB,
            alignment: 4 * MIB,
            alloc_ranges: vec![PhysRange::from_raw(0x4000_0000, 0x1000_0000).unwrap()],
        },
        ..cma_pool("linux,cma", 0, 1, 3)
    });
    let p = plan(&m, &PlanConfig::default()).unwrap();
    verify(&p).unwrap();
    let pool = p.carveouts.iter().find(|c| c.name == "linux,cma").unwrap();
    assert!(pool.dynamic && pool.is_cma_pool());
    assert_eq!(pool.range, PhysRange::from_raw(0x4f00_0000, 16 * MIB).unwrap());
    assert_eq!(*movable_of(&p, 0), Movable { pool: "linux,cma".into(), ipa: Ipa::new(0x4f00_0000), size: 16 * MIB });
}

#[test]
fn movable_memory_from_what_is_no_pool_is_refused() {
    let refusal = |m: Machine| plan(&m, &PlanConfig::default()).unwrap_err().to_string();
    let e = refusal(virt_cma(vec![movable_guest(0, 256, 16, 7, 0x4800_0000)]));
    assert_eq!(
        e,
        "guest@0: memory-region <0x7> names no enabled /reserved-memory node: movable memory comes from a CMA pool there"
    );
    let e = refusal(virt_cma(vec![movable_guest(0, 256, 16, 2, 0x4800_0000)]));
    assert_eq!(
        e,
        "guest@0: memory-region <0x2> names dsp-pool (no-map, not reusable, no compatible), which is not a CMA pool: \
         movable memory needs a reusable shared-dma-pool without no-map"
    );
    // Reusable, but not a shared-dma-pool.
    let mut m = virt_cma(vec![movable_guest(0, 256, 16, 1, 0x4800_0000)]);
    m.reserved[0].compatible = Some("acme,pool".into());
    assert!(refusal(m).contains("names cma@50000000 (compatible \"acme,pool\"), which is not a CMA pool"));
    // A node of two ranges.
    let mut m = virt_cma(vec![movable_guest(0, 256, 16, 1, 0x4800_0000)]);
    m.reserved[0].kind = ReservedKind::Static(vec![
        PhysRange::from_raw(0x5000_0000, 32 * MIB).unwrap(),
        PhysRange::from_raw(0x5400_0000, 32 * MIB).unwrap(),
    ]);
    assert_eq!(
        refusal(m),
        "guest@0: memory-region <0x1> names cma@50000000, which has 2 ranges: a CMA pool that backs guest RAM is one"
    );
    // A pool partly outside RAM.
    let mut m = virt_cma(vec![movable_guest(0, 256, 16, 1, 0x4800_0000)]);
    m.reserved[0] = cma_pool("cma@7e000000", 0x7e00_0000, 64 * MIB, 1);
    assert_eq!(
        refusal(m),
        "guest@0: memory-region <0x1> names cma@7e000000 at 0x7e000000-0x82000000, which is not all RAM: \
         a CMA pool's pages back guest RAM"
    );
    // Two nodes with one phandle.
    let mut m = virt_cma(vec![movable_guest(0, 256, 16, 1, 0x4800_0000)]);
    m.reserved[1].phandle = Some(1);
    assert!(refusal(m).contains("memory-region <0x1> is ambiguous: /reserved-memory nodes cma@50000000 and dsp-pool"));
    // What the reader refuses, built in code: more movable than memory.
    let m = virt_cma(vec![movable_guest(0, 16, 32, 1, 0x4800_0000)]);
    assert!(refusal(m).starts_with("guest@0: carve,movable-memory 32 MiB is not a whole number of 4 KiB pages"));
}

#[test]
fn verify_checks_the_movable_promises() {
    let m = virt_cma(vec![movable_guest(0, 128, 32, 1, 0x4800_0000), movable_guest(1, 128, 32, 1, 0x4900_0000)]);
    let good = plan(&m, &PlanConfig::default()).unwrap();
    verify(&good).unwrap();
    let broken = |f: &dyn Fn(&mut Plan)| {
        let mut p = good.clone();
        f(&mut p);
        verify(&p).unwrap_err()
    };
    // guest@0: extents for IPA 0x40000000-0x46000000, movable 0x46000000-0x48000000.
    let e = broken(&|p| p.guests[0].movable.as_mut().unwrap().ipa = Ipa::new(0x4600_1000));
    assert_eq!(e, "guest@0: movable part at IPA 0x46001000 does not follow the extents, which end at 0x46000000");
    let e = broken(&|p| p.guests[0].movable.as_mut().unwrap().size = 16 * MIB);
    assert_eq!(e, "guest@0: extents cover 0x6000000 bytes, the guest has 0x7000000 besides its movable 0x1000000");
    let e = broken(&|p| p.guests[0].movable = None);
    assert_eq!(e, "guest@0: extents cover 0x6000000 bytes, the guest has 0x8000000");
    let e = broken(&|p| p.guests[0].movable.as_mut().unwrap().size = 256 * MIB);
    assert_eq!(e, "guest@0: movable part of 0x10000000 bytes, the guest has 0x8000000");
    let e = broken(&|p| {
        p.guests[0].size += 0x800;
        p.guests[0].movable.as_mut().unwrap().size += 0x800;
    });
    assert_eq!(e, "guest@0: movable part of 0x2000800 bytes is not whole pages");
    let e = broken(&|p| p.guests[1].movable.as_mut().unwrap().pool = "dsp-pool".into());
    assert!(e.starts_with("guest@1: movable pool dsp-pool 0x") && e.ends_with(" is not a CMA pool inside RAM"), "{e}");
    let e = broken(&|p| p.guests[0].movable.as_mut().unwrap().pool = "nowhere".into());
    assert_eq!(e, "guest@0: movable pool nowhere is 0 carveout(s), not one");
    let e = broken(&|p| {
        p.carveouts.iter_mut().find(|c| c.name == "cma@50000000").unwrap().range =
            PhysRange::from_raw(0x5000_0000, 48 * MIB).unwrap();
    });
    assert_eq!(e, "guests' movable parts take 0x4000000 bytes of pool cma@50000000, which has 0x3000000");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Guests with movable parts from one pool: a plan that verifies, whose
    /// extents map through stage-2 exactly the fixed part and whose pool holds
    /// every movable part; or a refusal naming a guest.
    #[test]
    fn movable_parts_plan_soundly(
        pool_mib in 1u64..128,
        guests in proptest::collection::vec((1u64..192, 0u64..64), 1..3),
    ) {
        use crate::mm::{Attrs, PageTable, Stage2, VecMemory};
        let guests: Vec<Guest> = guests
            .iter()
            .enumerate()
            .map(|(i, &(mib, mv))| movable_guest(i as u32, mib, mv.min(mib), 1, 0x4800_0000 + i as u64 * 0x100_0000))
            .collect();
        let mut m = virt_cma(guests);
        m.reserved[0] = cma_pool("cma@50000000", 0x5000_0000, pool_mib * MIB, 1);
        match plan(&m, &PlanConfig::default()) {
            Ok(p) => {
                prop_assert_eq!(verify(&p), Ok(()));
                let lent: u64 = p.guests.iter().filter_map(|g| g.movable.as_ref()).map(|mv| mv.size).sum();
                prop_assert!(lent <= pool_mib * MIB);
                for (g, want) in p.guests.iter().zip(&m.guests) {
                    prop_assert_eq!(g.size, want.memory);
                    prop_assert_eq!(g.movable.as_ref().map(|mv| mv.size), want.movable.map(|r| r.size));
                    let mut mem = VecMemory::default();
                    let mut s2 = PageTable::<Stage2>::new(&mut mem).unwrap();
                    for e in &g.extents {
                        s2.map(&mut mem, e.ipa, e.pa, e.size, Attrs::ram()).unwrap();
                    }
                    let mut mapped = 0;
                    s2.for_each_leaf(&mem, |l| mapped += l.size);
                    prop_assert_eq!(mapped, g.fixed_size());
                    if let Some(mv) = &g.movable {
                        prop_assert_eq!(mv.ipa.as_u64() + mv.size, g.ipa_range().end());
                        prop_assert!(s2.translate(&mem, mv.ipa).is_none());
                        prop_assert_eq!(g.pa_of(mv.ipa), None);
                    }
                }
            }
            Err(e) => prop_assert!(e.subject.starts_with("guest@"), "{}", e),
        }
    }
}

#[test]
fn a_vcpu_off_the_boot_cpu_needs_a_way_to_start_it() {
    let mut m = four_cpu_machine(vec![small_guest(0, 2, None, 0x4800_0000)]);
    m.cpu_start = None;
    let e = plan(&m, &PlanConfig::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "guest@0: vCPU 1 runs on CPU 1, but the tree gives no way to start a CPU (no PSCI node with method \"smc\", no Versatile Express system registers)"
    );
    // One vCPU on the boot CPU needs nothing started.
    m.guests = vec![small_guest(0, 1, None, 0x4800_0000)];
    plan(&m, &PlanConfig::default()).unwrap();
    m.cpu_start = Some(CpuStart::VexpressSysFlags { sysreg: PhysRange::from_raw(0x1c01_0000, 0x1000).unwrap() });
    m.guests = vec![small_guest(0, 2, None, 0x4800_0000)];
    plan(&m, &PlanConfig::default()).unwrap();
}
