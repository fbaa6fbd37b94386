//! Reader tests on blobs written in the test with vm-fdt.

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use vm_fdt::{FdtReserveEntry, FdtWriter};

use super::header::HeaderError;
use super::machine::{PsciMethod, ReservedKind, UartKind};
use super::{DtError, Machine};
use crate::addr::PhysRange;

/// A small QEMU-virt-like tree; `extra` adds to the root before it closes.
fn blob(extra: impl FnOnce(&mut FdtWriter)) -> Vec<u8> {
    blob_with(&[], extra)
}

fn blob_with(memreserve: &[(u64, u64)], extra: impl FnOnce(&mut FdtWriter)) -> Vec<u8> {
    let rsv: Vec<FdtReserveEntry> = memreserve.iter().map(|&(a, s)| FdtReserveEntry::new(a, s).unwrap()).collect();
    let mut w = FdtWriter::new_with_mem_reserv(&rsv).unwrap();
    let root = w.begin_node("").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    w.property_string("model", "test-virt").unwrap();
    let mem = w.begin_node("memory@40000000").unwrap();
    w.property_string("device_type", "memory").unwrap();
    w.property_array_u64("reg", &[0x4000_0000, 0x4000_0000, 0x1_0000_0000, 0x8000_0000]).unwrap();
    w.end_node(mem).unwrap();
    let uart = w.begin_node("pl011@9000000").unwrap();
    w.property_string_list("compatible", vec!["arm,pl011".into(), "arm,primecell".into()]).unwrap();
    w.property_array_u64("reg", &[0x0900_0000, 0x1000]).unwrap();
    w.end_node(uart).unwrap();
    let gic = w.begin_node("intc@8000000").unwrap();
    w.property_string("compatible", "arm,cortex-a15-gic").unwrap();
    w.property_array_u64(
        "reg",
        &[0x0800_0000, 0x1_0000, 0x0801_0000, 0x1_0000, 0x0803_0000, 0x1_0000, 0x0804_0000, 0x1_0000],
    )
    .unwrap();
    w.end_node(gic).unwrap();
    let psci = w.begin_node("psci").unwrap();
    w.property_string_list("compatible", vec!["arm,psci-1.0".into(), "arm,psci-0.2".into(), "arm,psci".into()])
        .unwrap();
    w.property_string("method", "hvc").unwrap();
    w.end_node(psci).unwrap();
    let aliases = w.begin_node("aliases").unwrap();
    w.property_string("serial0", "/pl011@9000000").unwrap();
    w.end_node(aliases).unwrap();
    extra(&mut w);
    w.end_node(root).unwrap();
    w.finish().unwrap()
}

fn reserved_memory(w: &mut FdtWriter, children: impl FnOnce(&mut FdtWriter)) {
    let rm = w.begin_node("reserved-memory").unwrap();
    w.property_u32("#address-cells", 2).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    w.property_null("ranges").unwrap();
    children(w);
    w.end_node(rm).unwrap();
}

fn chosen_guest(w: &mut FdtWriter, stdout: &str, guest: impl FnOnce(&mut FdtWriter)) {
    let ch = w.begin_node("chosen").unwrap();
    w.property_string("stdout-path", stdout).unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 1).unwrap();
    guest(w);
    w.end_node(ch).unwrap();
}

fn err(b: &[u8]) -> String {
    Machine::from_dtb(b).unwrap_err().to_string()
}

#[test]
fn reads_ram_above_4g_devices_and_psci() {
    let m = Machine::from_dtb(&blob(|_| {})).unwrap();
    assert_eq!(m.model.as_deref(), Some("test-virt"));
    assert_eq!(m.ram.len(), 2);
    assert_eq!(m.ram[1].range, PhysRange::from_raw(0x1_0000_0000, 0x8000_0000).unwrap());
    let gic = m.gic.unwrap();
    assert_eq!(gic.distributor.start(), 0x0800_0000);
    assert_eq!(gic.vcpu_interface.unwrap().start(), 0x0804_0000);
    assert_eq!(m.psci.unwrap().method, PsciMethod::Hvc);
}

#[test]
fn reads_carveouts_static_dynamic_and_memreserve() {
    let b = blob_with(&[(0x4a00_0000, 0x20_0000)], |w| {
        reserved_memory(w, |w| {
            let n = w.begin_node("ipu@50000000").unwrap();
            w.property_array_u64("reg", &[0x5000_0000, 0x0800_0000, 0x5c00_0000, 0x10_0000]).unwrap();
            w.property_null("no-map").unwrap();
            w.end_node(n).unwrap();
            let n = w.begin_node("linux,cma").unwrap();
            w.property_string("compatible", "shared-dma-pool").unwrap();
            w.property_null("reusable").unwrap();
            w.property_u64("size", 0x400_0000).unwrap();
            w.property_u64("alignment", 0x40_0000).unwrap();
            w.property_array_u64("alloc-ranges", &[0x4000_0000, 0x2000_0000]).unwrap();
            w.end_node(n).unwrap();
            let n = w.begin_node("off@70000000").unwrap();
            w.property_array_u64("reg", &[0x7000_0000, 0x1000]).unwrap();
            w.property_string("status", "disabled").unwrap();
            w.end_node(n).unwrap();
        })
    });
    let m = Machine::from_dtb(&b).unwrap();
    assert_eq!(m.reserved.len(), 3, "{:?}", m.reserved);
    let ipu = &m.reserved[0];
    assert!(ipu.no_map && !ipu.reusable);
    assert!(matches!(&ipu.kind, ReservedKind::Static(r) if r.len() == 2));
    let cma = &m.reserved[1];
    assert!(cma.reusable && cma.compatible.as_deref() == Some("shared-dma-pool"));
    assert!(
        matches!(&cma.kind, ReservedKind::Dynamic { size: 0x400_0000, alignment: 0x40_0000, alloc_ranges } if alloc_ranges.len() == 1)
    );
    assert!(m.reserved[2].memreserve);
}

#[test]
fn reads_a_guest_in_the_dom0less_binding() {
    let b = blob(|w| {
        chosen_guest(w, "serial0:115200n8", |w| {
            let g = w.begin_node("guest@0").unwrap();
            w.property_string("compatible", "carve,guest").unwrap();
            w.property_u32("#address-cells", 1).unwrap();
            w.property_u32("#size-cells", 1).unwrap();
            w.property_array_u32("memory", &[0, 0xc0000]).unwrap();
            w.property_u32("cpus", 2).unwrap();
            let k = w.begin_node("module@48000000").unwrap();
            w.property_string_list("compatible", vec!["multiboot,kernel".into(), "multiboot,module".into()]).unwrap();
            w.property_array_u32("reg", &[0x4800_0000, 0x80_0000]).unwrap();
            w.property_string("bootargs", "console=ttyAMA0").unwrap();
            w.end_node(k).unwrap();
            let r = w.begin_node("module@4a000000").unwrap();
            w.property_string_list("compatible", vec!["multiboot,ramdisk".into(), "multiboot,module".into()]).unwrap();
            w.property_array_u32("reg", &[0x4a00_0000, 0x20_0000]).unwrap();
            w.end_node(r).unwrap();
            w.end_node(g).unwrap();
            let x = w.begin_node("domU1").unwrap();
            w.property_string("compatible", "xen,domain").unwrap();
            w.property_u32("memory", 0x40000).unwrap();
            w.end_node(x).unwrap();
        })
    });
    let m = Machine::from_dtb(&b).unwrap();
    assert_eq!(m.guests.len(), 2);
    let g = &m.guests[0];
    assert_eq!(g.memory, 768 << 20);
    assert_eq!(g.cpus, 2);
    assert_eq!(g.kernel.as_ref().unwrap().range.start(), 0x4800_0000);
    assert_eq!(g.ramdisk.as_ref().unwrap().range.size, 0x20_0000);
    assert_eq!(g.bootargs.as_deref(), Some("console=ttyAMA0"));
    assert_eq!(m.guests[1].memory, 256 << 20);
    // stdout-path through an alias, with options.
    assert_eq!(m.uart.unwrap().regs[0].start(), 0x0900_0000);
}

#[test]
fn refusals_name_the_node_and_the_numbers() {
    let b = blob(|w| {
        let n = w.begin_node("bus").unwrap();
        w.property_u32("#address-cells", 3).unwrap();
        w.end_node(n).unwrap();
        reserved_memory(w, |w| {
            let n = w.begin_node("bad").unwrap();
            w.property_u64("size", 0x1000).unwrap();
            w.property_u64("alignment", 0x3000).unwrap();
            w.end_node(n).unwrap();
        })
    });
    assert_eq!(err(&b), "/reserved-memory/bad: alignment: 0x3000 is not a power of two");

    let b = blob(|w| {
        let n = w.begin_node("memory@80000000").unwrap();
        w.property_string("device_type", "memory").unwrap();
        w.end_node(n).unwrap();
    });
    assert_eq!(err(&b), "/memory@80000000: memory node has no reg: carve cannot tell where RAM is");

    let b = blob(|w| {
        let n = w.begin_node("reserved-memory").unwrap();
        w.property_u32("#address-cells", 3).unwrap();
        w.end_node(n).unwrap();
    });
    assert!(err(&b).starts_with("/reserved-memory: #address-cells: 3; carve reads addresses of 1 or 2"));

    let b = blob(|w| {
        reserved_memory(w, |w| {
            let n = w.begin_node("odd").unwrap();
            w.property_array_u32("reg", &[0, 0x5000_0000, 0]).unwrap();
            w.end_node(n).unwrap();
        })
    });
    assert!(err(&b).starts_with("/reserved-memory/odd: reg: 12 bytes is not a whole number"), "{}", err(&b));
}

/// A `carve,guest` with `props` written by the caller.
fn guest_blob(props: impl FnOnce(&mut FdtWriter)) -> Vec<u8> {
    blob(|w| {
        chosen_guest(w, "/pl011@9000000", |w| {
            let g = w.begin_node("guest@0").unwrap();
            w.property_string("compatible", "carve,guest").unwrap();
            w.property_u32("#address-cells", 1).unwrap();
            w.property_u32("#size-cells", 1).unwrap();
            w.property_array_u32("memory", &[0, 0x10000]).unwrap();
            props(w);
            w.end_node(g).unwrap();
        })
    })
}

#[test]
fn cpu_ids_are_read_and_checked_against_cpus() {
    let m = Machine::from_dtb(&guest_blob(|w| w.property_array_u32("carve,cpu-ids", &[2, 0]).unwrap())).unwrap();
    assert_eq!((m.guests[0].cpus, m.guests[0].cpu_ids.as_deref()), (2, Some(&[2, 0][..])));
    let m = Machine::from_dtb(&guest_blob(|w| {
        w.property_u32("cpus", 1).unwrap();
        w.property_array_u32("carve,cpu-ids", &[3]).unwrap();
    }))
    .unwrap();
    assert_eq!((m.guests[0].cpus, m.guests[0].cpu_ids.as_deref()), (1, Some(&[3][..])));
    let m = Machine::from_dtb(&guest_blob(|w| w.property_u32("cpus", 2).unwrap())).unwrap();
    assert_eq!((m.guests[0].cpus, m.guests[0].cpu_ids.as_deref()), (2, None));

    let b = guest_blob(|w| {
        w.property_u32("cpus", 2).unwrap();
        w.property_array_u32("carve,cpu-ids", &[0, 1, 2]).unwrap();
    });
    assert_eq!(err(&b), "/chosen/guest@0: carve,cpu-ids: 3 CPU id(s), but cpus = <2>: one id per vCPU");
    let b = guest_blob(|w| w.property_array_u32("carve,cpu-ids", &[1, 0, 1]).unwrap());
    assert_eq!(err(&b), "/chosen/guest@0: carve,cpu-ids: CPU 1 is listed twice (vCPUs 0 and 2): a CPU runs one vCPU");
    let b = guest_blob(|w| w.property("carve,cpu-ids", &[0, 0, 1]).unwrap());
    assert_eq!(err(&b), "/chosen/guest@0: carve,cpu-ids: 3 bytes, expected one 4-byte cell (a CPU index) per vCPU");
    let b = guest_blob(|w| w.property_null("carve,cpu-ids").unwrap());
    assert!(err(&b).starts_with("/chosen/guest@0: carve,cpu-ids: 0 bytes"), "{}", err(&b));
}

#[test]
fn bad_strings_and_headers_are_errors_not_panics() {
    let b = blob(|w| {
        chosen_guest(w, "/pl011@9000000", |w| {
            let g = w.begin_node("guest@0").unwrap();
            w.property("compatible", b"carve,guest").unwrap(); // no NUL: not a string
            w.end_node(g).unwrap();
        })
    });
    // A compatible without its NUL matches nothing: the node is not a guest.
    assert!(Machine::from_dtb(&b).unwrap().guests.is_empty());
    let good = blob(|_| {});
    // Shorter than a header: Truncated; a whole header whose totalsize is past the end: BadTotalSize.
    for cut in [0, 10, 39] {
        let r = Machine::from_dtb(&good[..cut]);
        assert!(matches!(r, Err(DtError::Header(HeaderError::Truncated { len })) if len == cut), "cut at {cut}: {r:?}");
    }
    let totalsize = u32::from_be_bytes(good[4..8].try_into().unwrap());
    assert_eq!(totalsize as usize, good.len());
    for cut in [40, 100, good.len() - 1] {
        let r = Machine::from_dtb(&good[..cut]);
        let want = HeaderError::BadTotalSize { totalsize, len: cut };
        assert!(matches!(r, Err(DtError::Header(h)) if h == want), "cut at {cut}: {r:?}");
    }
    let mut bad = good.clone();
    bad[0] = 0xde;
    assert!(err(&bad).starts_with("FDT header: bad magic 0xde0dfeed"));
}

/// Every single-byte corruption of a real blob: never a panic.
#[test]
fn single_byte_mutations_never_panic() {
    let good = blob(|w| {
        reserved_memory(w, |w| {
            let n = w.begin_node("ipu@50000000").unwrap();
            w.property_array_u64("reg", &[0x5000_0000, 0x0800_0000]).unwrap();
            w.property_null("no-map").unwrap();
            w.end_node(n).unwrap();
        })
    });
    let mut outcomes = [0usize; 2];
    for i in 0..good.len() {
        for v in [0x00, 0xff, 0x01, 0x80, good[i] ^ 0x04] {
            let mut b = good.clone();
            b[i] = v;
            match Machine::from_dtb(&b) {
                Ok(m) => {
                    outcomes[0] += 1;
                    // The plan of a corrupted tree: a plan that verifies, or a one-line refusal.
                    match crate::plan::plan(&m, &crate::plan::PlanConfig::default()) {
                        Ok(p) => assert_eq!(crate::plan::verify(&p), Ok(()), "byte {i} = {v:#x}"),
                        Err(e) => {
                            let e = e.to_string();
                            assert!(!e.is_empty() && !e.contains('\n'), "byte {i} = {v:#x}: {e:?}");
                        }
                    }
                }
                Err(e) => {
                    outcomes[1] += 1;
                    assert!(!e.to_string().is_empty());
                }
            }
        }
    }
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
}

/// Limits that keep a tree's reading within the monitor's heap, each refused with its numbers.
#[test]
fn oversized_trees_are_refused_before_they_are_held() {
    // (A node name past MAX_NAME, which vm-fdt will not write: tests/corpus/bad/node-name-too-long.dts.)
    // Properties past MAX_TREE_BYTES.
    let b = blob(|w| {
        let n = w.begin_node("many").unwrap();
        for i in 0..(super::tree::MAX_TREE_BYTES / super::tree::PROP_COST) {
            w.property_u32(&alloc::format!("p{i}"), 0).unwrap();
        }
        w.end_node(n).unwrap();
    });
    assert!(err(&b).starts_with("FDT needs more than 512 KiB to hold ("), "{}", err(&b));
    assert!(err(&b).contains("up to /many)"), "{}", err(&b));

    // A reg of more than MAX_REG_ENTRIES entries.
    let b = blob(|w| {
        reserved_memory(w, |w| {
            let n = w.begin_node("big").unwrap();
            let reg: Vec<u64> = (0..1025u64).flat_map(|i| [0x5000_0000 + i * 0x2000, 0x1000]).collect();
            w.property_array_u64("reg", &reg).unwrap();
            w.end_node(n).unwrap();
        })
    });
    assert_eq!(err(&b), "/reserved-memory/big: reg: 1025 entries; carve reads up to 1024");

    // More RAM banks than MAX_RAM_BANKS over several memory nodes.
    let b = blob(|w| {
        for k in 0..3u64 {
            let n = w.begin_node(&alloc::format!("memory@{k}")).unwrap();
            w.property_string("device_type", "memory").unwrap();
            let reg: Vec<u64> = (0..100u64).flat_map(|i| [0x2_0000_0000 + (k * 100 + i) * 0x10_0000, 0x1000]).collect();
            w.property_array_u64("reg", &reg).unwrap();
            w.end_node(n).unwrap();
        }
    });
    assert_eq!(err(&b), "/memory@2: reg: more than 256 RAM banks in the memory nodes; carve reads up to 256");
}

/// A huge `compatible` is read lazily: it plans, and costs one pass.
#[test]
fn a_huge_string_list_is_not_collected() {
    let b = blob(|w| {
        reserved_memory(w, |w| {
            let n = w.begin_node("pool@50000000").unwrap();
            w.property("compatible", &vec![0u8; 1 << 20]).unwrap();
            w.property_array_u64("reg", &[0x5000_0000, 0x10_0000]).unwrap();
            w.end_node(n).unwrap();
        })
    });
    let m = Machine::from_dtb(&b).unwrap();
    assert_eq!(m.reserved[0].compatible.as_deref(), Some(""));
    let tree = super::Tree::parse(&b).unwrap();
    let pool = tree.find("/reserved-memory/pool@50000000").unwrap();
    assert!(pool.is_compatible("") && !pool.is_compatible("shared-dma-pool"));
    assert!(pool
        .strings_prop("compatible")
        .unwrap_err()
        .to_string()
        .contains("1048576 strings; carve reads lists of up to 256"));
}

#[test]
fn reserved_nodes_keep_their_phandles() {
    let b = blob(|w| {
        reserved_memory(w, |w| {
            let n = w.begin_node("cma@50000000").unwrap();
            w.property_string("compatible", "shared-dma-pool").unwrap();
            w.property_null("reusable").unwrap();
            w.property_array_u64("reg", &[0x5000_0000, 0x400_0000]).unwrap();
            w.property_u32("phandle", 0x11).unwrap();
            w.end_node(n).unwrap();
            let n = w.begin_node("old@58000000").unwrap();
            w.property_array_u64("reg", &[0x5800_0000, 0x10_0000]).unwrap();
            w.property_u32("linux,phandle", 0x12).unwrap();
            w.end_node(n).unwrap();
            let n = w.begin_node("none@59000000").unwrap();
            w.property_array_u64("reg", &[0x5900_0000, 0x10_0000]).unwrap();
            w.end_node(n).unwrap();
        })
    });
    let m = Machine::from_dtb(&b).unwrap();
    let ph: Vec<Option<u32>> = m.reserved.iter().map(|r| r.phandle).collect();
    assert_eq!(ph, [Some(0x11), Some(0x12), None]);

    let b = blob(|w| {
        reserved_memory(w, |w| {
            let n = w.begin_node("cma@50000000").unwrap();
            w.property_array_u64("reg", &[0x5000_0000, 0x400_0000]).unwrap();
            w.property_u64("phandle", 0x11).unwrap();
            w.end_node(n).unwrap();
        })
    });
    assert_eq!(
        err(&b),
        "/reserved-memory/cma@50000000: phandle: 8 bytes, expected one 4-byte cell (the node's phandle)"
    );
    let b = blob(|w| {
        reserved_memory(w, |w| {
            let n = w.begin_node("cma@50000000").unwrap();
            w.property_array_u64("reg", &[0x5000_0000, 0x400_0000]).unwrap();
            w.property_null("linux,phandle").unwrap();
            w.end_node(n).unwrap();
        })
    });
    assert_eq!(
        err(&b),
        "/reserved-memory/cma@50000000: linux,phandle: 0 bytes, expected one 4-byte cell (the node's phandle)"
    );
}

#[test]
fn a_guest_asks_for_movable_memory_from_a_pool() {
    use super::machine::MovableRequest;
    // The guest has 64 MiB (0x10000 KiB); 32 MiB (0x8000 KiB) of it from the pool with phandle 0x11.
    let m = Machine::from_dtb(&guest_blob(|w| {
        w.property_u32("memory-region", 0x11).unwrap();
        w.property_array_u32("carve,movable-memory", &[0, 0x8000]).unwrap();
    }))
    .unwrap();
    assert_eq!(m.guests[0].movable, Some(MovableRequest { region: 0x11, size: 32 << 20 }));
    // One cell, like `memory`; all of the guest's memory.
    let m = Machine::from_dtb(&guest_blob(|w| {
        w.property_u32("memory-region", 0x11).unwrap();
        w.property_u32("carve,movable-memory", 0x10000).unwrap();
    }))
    .unwrap();
    assert_eq!(m.guests[0].movable, Some(MovableRequest { region: 0x11, size: 64 << 20 }));
    assert_eq!(Machine::from_dtb(&guest_blob(|_| {})).unwrap().guests[0].movable, None);
}

#[test]
fn movable_memory_refusals_name_the_property_and_the_numbers() {
    let with = |region: Option<&[u32]>, kib: Option<&[u32]>| {
        err(&guest_blob(|w| {
            if let Some(r) = region {
                w.property_array_u32("memory-region", r).unwrap();
            }
            if let Some(k) = kib {
                w.property_array_u32("carve,movable-memory", k).unwrap();
            }
        }))
    };
    assert_eq!(
        with(None, Some(&[0, 0x8000])),
        "/chosen/guest@0: carve,movable-memory: 32768 KiB, but no memory-region names the CMA pool that backs it"
    );
    assert_eq!(
        with(Some(&[0x11]), None),
        "/chosen/guest@0: memory-region: names a pool (phandle 0x11) but carve,movable-memory is missing: \
         say how many KiB of the guest's memory it backs"
    );
    assert_eq!(
        with(Some(&[0x11]), Some(&[0, 0])),
        "/chosen/guest@0: carve,movable-memory: 0 KiB: leave it and memory-region out for a guest without movable memory"
    );
    assert_eq!(
        with(Some(&[0x11]), Some(&[0, 0x401])),
        "/chosen/guest@0: carve,movable-memory: 1025 KiB is not a whole number of 4 KiB pages"
    );
    assert_eq!(
        with(Some(&[0x11]), Some(&[0, 0x10004])),
        "/chosen/guest@0: carve,movable-memory: 65540 KiB is more than the guest's memory (65536 KiB)"
    );
    assert_eq!(
        with(Some(&[0x11]), Some(&[0x4000_0000, 0, 0])),
        "/chosen/guest@0: carve,movable-memory: 12 bytes, expected one or two cells"
    );
    assert_eq!(
        with(Some(&[0x11, 0x12]), Some(&[0, 0x8000])),
        "/chosen/guest@0: memory-region: 2 phandles; a guest's movable memory comes from one pool"
    );
    let b = guest_blob(|w| {
        w.property("memory-region", &[0, 0x11]).unwrap();
        w.property_array_u32("carve,movable-memory", &[0, 0x8000]).unwrap();
    });
    assert_eq!(
        err(&b),
        "/chosen/guest@0: memory-region: 2 bytes, expected one 4-byte cell (the phandle of a /reserved-memory pool)"
    );
    // KiB that overflow bytes are more than any memory.
    assert_eq!(
        with(Some(&[0x11]), Some(&[0xffff_ffff, 0xffff_fffc])),
        "/chosen/guest@0: carve,movable-memory: 18446744073709551612 KiB is more than the guest's memory (65536 KiB)"
    );
}

#[test]
fn the_console_uart_kind_and_interrupt_come_from_the_tree() {
    // QEMU's own tree: a PL011 whose interrupt is SPI 1 of the GIC (the root's interrupt-parent).
    let m = Machine::from_dtb(include_bytes!("testdata/qemu-virt-1280-smp2.dtb")).unwrap();
    assert_eq!(m.uart_kind, Some(UartKind::Pl011));
    assert_eq!(m.uart_irq, Some(33));

    // An Allwinner-style 8250 on a bus whose interrupt-parent is the GIC: PPI and SPI numbering,
    // reg-shift and reg-io-width read; a UART of no known family has no kind and no refusal.
    let uart = |compat: &str, shift: Option<u32>, width: Option<u32>, irq: [u32; 3]| {
        let compat = compat.to_string();
        blob(move |w| {
            let soc = w.begin_node("soc").unwrap();
            w.property_u32("#address-cells", 1).unwrap();
            w.property_u32("#size-cells", 1).unwrap();
            w.property_null("ranges").unwrap();
            w.property_u32("interrupt-parent", 0x8001).unwrap();
            let gic = w.begin_node("interrupt-controller@1c81000").unwrap();
            w.property_string("compatible", "arm,gic-400").unwrap();
            w.property_u32("#interrupt-cells", 3).unwrap();
            w.property_array_u32("reg", &[0x01c8_1000, 0x1000, 0x01c8_2000, 0x2000]).unwrap();
            w.property_u32("phandle", 0x8001).unwrap();
            w.end_node(gic).unwrap();
            let u = w.begin_node("serial@1c28000").unwrap();
            w.property_string_list("compatible", vec![compat, "other,uart".into()]).unwrap();
            w.property_array_u32("reg", &[0x01c2_8000, 0x400]).unwrap();
            w.property_array_u32("interrupts", &irq).unwrap();
            if let Some(s) = shift {
                w.property_u32("reg-shift", s).unwrap();
            }
            if let Some(wd) = width {
                w.property_u32("reg-io-width", wd).unwrap();
            }
            w.end_node(u).unwrap();
            w.end_node(soc).unwrap();
            let chosen = w.begin_node("chosen").unwrap();
            w.property_string("stdout-path", "/soc/serial@1c28000:115200n8").unwrap();
            w.end_node(chosen).unwrap();
        })
    };
    let m = Machine::from_dtb(&uart("snps,dw-apb-uart", Some(2), Some(4), [0, 0, 4])).unwrap();
    assert_eq!(m.uart.as_ref().unwrap().regs[0].start(), 0x01c2_8000);
    assert_eq!(m.uart_kind, Some(UartKind::Ns16550 { reg_shift: 2, io_width: 4 }));
    assert_eq!(m.uart_irq, Some(32));
    let m = Machine::from_dtb(&uart("ns16550a", None, None, [1, 9, 4])).unwrap();
    assert_eq!(m.uart_kind, Some(UartKind::Ns16550 { reg_shift: 0, io_width: 1 }));
    assert_eq!(m.uart_irq, Some(25));
    let m = Machine::from_dtb(&uart("acme,mystery-uart", None, None, [0, 5, 4])).unwrap();
    assert_eq!((m.uart_kind, m.uart_irq), (None, Some(37)));
    let m = Machine::from_dtb(&uart("ns16550a", None, Some(2), [0, 0, 4])).unwrap();
    assert_eq!(m.uart_kind, None);
    assert_eq!(m.warnings, ["/soc/serial@1c28000: reg-io-width: 2: carve drives 8250 registers 1 or 4 bytes wide"]);
}

#[test]
fn carve_log_names_a_uart_carve_can_drive() {
    let with_log = |path: &str| {
        let path = path.to_string();
        blob(move |w| {
            let u = w.begin_node("serial@9040000").unwrap();
            w.property_string("compatible", "ns16550a").unwrap();
            w.property_array_u64("reg", &[0x0904_0000, 0x100]).unwrap();
            w.property_u32("reg-shift", 2).unwrap();
            w.end_node(u).unwrap();
            let chosen = w.begin_node("chosen").unwrap();
            w.property_string("stdout-path", "serial0").unwrap();
            w.property_string("carve,log", &path).unwrap();
            w.end_node(chosen).unwrap();
        })
    };
    let m = Machine::from_dtb(&with_log("/serial@9040000:115200")).unwrap();
    let log = m.log_uart.unwrap();
    assert_eq!(log.device.regs[0].start(), 0x0904_0000);
    assert_eq!(log.kind, UartKind::Ns16550 { reg_shift: 2, io_width: 1 });
    assert_eq!(m.uart.unwrap().regs[0].start(), 0x0900_0000);
    assert_eq!(Machine::from_dtb(&with_log("serial0")).unwrap().log_uart.unwrap().kind, UartKind::Pl011);
    assert_eq!(err(&with_log("/nowhere")), "/chosen: carve,log: \"/nowhere\" names no node");
    assert_eq!(
        err(&with_log("/psci")),
        "/chosen: carve,log: /psci (arm,psci-1.0) is not a UART carve has a driver for (PL011, 8250/16550)"
    );
}

/// Two siblings with one name make a path that names two nodes: refused, at
/// any depth (fuzz regression `guest-dtb-duplicate-node-names.dtb`).
#[test]
fn sibling_nodes_with_one_name_are_refused() {
    let b = blob(|w| {
        for _ in 0..2 {
            let n = w.begin_node("timer").unwrap();
            w.property_string("compatible", "arm,armv7-timer").unwrap();
            w.end_node(n).unwrap();
        }
    });
    assert_eq!(
        err(&b),
        "/: two children are named timer; sibling nodes need distinct names, or their path is ambiguous"
    );
    let b = blob(|w| {
        let bus = w.begin_node("soc").unwrap();
        for _ in 0..2 {
            let n = w.begin_node("serial@1000").unwrap();
            w.end_node(n).unwrap();
        }
        w.end_node(bus).unwrap();
    });
    assert!(err(&b).starts_with("/soc: two children are named serial@1000;"), "{}", err(&b));
    // The same name with and without a unit address is two names.
    let b = blob(|w| {
        for name in ["timer", "timer@1"] {
            let n = w.begin_node(name).unwrap();
            w.end_node(n).unwrap();
        }
    });
    assert!(Machine::from_dtb(&b).is_ok());
}

/// A GIC or console is a device only outside the root children that are not
/// devices (memory, /reserved-memory, /chosen, PSCI, aliases), where the
/// guest DTB writer would drop it.
#[test]
fn devices_are_not_read_from_nodes_that_are_not_devices() {
    fn gic_at(w: &mut FdtWriter, name: &str, compatible: &[&str], device_type: Option<&str>) {
        let n = w.begin_node(name).unwrap();
        w.property_string_list("compatible", compatible.iter().map(|c| c.to_string()).collect()).unwrap();
        w.property_array_u64("reg", &[0x0900_0000, 0x1_0000, 0x0901_0000, 0x1_0000]).unwrap();
        if let Some(t) = device_type {
            w.property_string("device_type", t).unwrap();
        }
        w.end_node(n).unwrap();
    }
    const GIC: [&str; 1] = ["arm,gic-400"];
    type Extra = fn(&mut FdtWriter);
    let cases: [(&str, Extra); 4] = [
        ("reserved-memory", |w| reserved_memory(w, |w| gic_at(w, "gic@9000000", &GIC, None))),
        ("memory", |w| gic_at(w, "mem@9000000", &GIC, Some("memory"))),
        ("psci", |w| gic_at(w, "fw@9000000", &["arm,gic-400", "arm,psci-0.2"], None)),
        ("chosen", |w| gic_at(w, "chosen", &GIC, None)),
    ];
    for (what, extra) in cases {
        let mut b = blob(extra);
        // Take the real GIC (intc@8000000) out by changing its compatible.
        let at = b.windows(18).position(|s| s == b"arm,cortex-a15-gic").unwrap();
        b[at..at + 3].copy_from_slice(b"xyz");
        let m = Machine::from_dtb(&b).unwrap();
        assert_eq!(m.gic.map(|g| g.node), None, "{what}: a GIC read from a node that is no device");
        // The same GIC node as a device is read.
        let mut b = blob(|w| gic_at(w, "gic@9000000", &GIC, None));
        b[at..at + 3].copy_from_slice(b"xyz");
        assert_eq!(Machine::from_dtb(&b).unwrap().gic.map(|g| g.node).as_deref(), Some("/gic@9000000"));
    }
    // A console named in a node that is no device: a warning, no console.
    let m = Machine::from_dtb(&blob(|w| chosen_guest(w, "/psci", |_| {}))).unwrap();
    assert!(m.uart.is_none());
    assert!(m.warnings.iter().any(|w| w.contains("names /psci, which is no device")), "{:?}", m.warnings);
}
