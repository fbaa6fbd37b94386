//! Guest DTB tests: machine trees written here with vm-fdt (and QEMU virt's own), planned, written for a guest and read back.

extern crate std;

use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use vm_fdt::{FdtReserveEntry, FdtWriter};

use super::*;
use crate::addr::{Ipa, IpaRange, PhysAddr};
use crate::dt::machine::{Guest, PsciMethod, ReservedKind};
use crate::plan::{plan, PlanConfig};

const MIB: u64 = 1 << 20;
const GIC: u32 = 0x8003;
const V2M: u32 = 0x8004;
const GPIO: u32 = 0x8005;
const PCLK: u32 = 0x8000;

/// The QEMU virt DTB of `-M virt,virtualization=on -cpu cortex-a15 -m 1280 -smp 2`
/// (dumped with `dumpdtb=`, packed with `dtc -I dtb -O dtb`).
const QEMU_VIRT: &[u8] = include_bytes!("testdata/qemu-virt-1280-smp2.dtb");

/// The shape of a machine tree to build.
struct Spec {
    /// The root's `#address-cells` and `#size-cells` (1 or 2).
    cells: u32,
    cpus: u32,
    spin_table: bool,
    /// `/reserved-memory` children: name, base, size.
    carveouts: Vec<(String, u64, u64)>,
    memreserve: Vec<(u64, u64)>,
    /// A `carve,guest` under `/chosen` with this many CPUs.
    guest_cpus: Option<u32>,
    /// Instead: one 256 MiB, one-CPU guest per entry (`guest@N`), each with
    /// `carve,devices` set to the entry's strings when it has any.
    guest_devices: Vec<Vec<&'static str>>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            cells: 2,
            cpus: 2,
            spin_table: false,
            carveouts: vec![
                ("ipu-pool@50000000".into(), 0x5000_0000, 128 * MIB),
                ("fb@60000000".into(), 0x6000_0000, 128 * MIB),
            ],
            memreserve: vec![(0x4f00_0000, 0x10_0000)],
            guest_cpus: Some(1),
            guest_devices: Vec::new(),
        }
    }
}

/// `reg`-shaped bytes in `cells`-cell addresses and sizes.
fn reg(cells: u32, pairs: &[(u64, u64)]) -> Vec<u8> {
    let mut v = Vec::new();
    for &(a, s) in pairs {
        for x in [a, s] {
            if cells == 2 {
                v.extend(x.to_be_bytes());
            } else {
                v.extend((x as u32).to_be_bytes());
            }
        }
    }
    v
}

fn strs(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

/// A QEMU-virt-like machine: every kind of node the guest writer keeps, edits or drops.
fn machine_blob(spec: &Spec) -> Vec<u8> {
    let c = spec.cells;
    let rsv: Vec<FdtReserveEntry> = spec.memreserve.iter().map(|&(a, s)| FdtReserveEntry::new(a, s).unwrap()).collect();
    let mut w = FdtWriter::new_with_mem_reserv(&rsv).unwrap();
    let root = w.begin_node("").unwrap();
    w.property_u32("interrupt-parent", GIC).unwrap();
    w.property_string("model", "test-virt").unwrap();
    w.property_u32("#size-cells", c).unwrap();
    w.property_u32("#address-cells", c).unwrap();
    w.property_string("compatible", "linux,dummy-virt").unwrap();

    let n = w.begin_node("psci").unwrap();
    w.property_u32("cpu_on", 0x8400_0003).unwrap();
    w.property_string("method", "smc").unwrap();
    w.property_string_list("compatible", strs(&["arm,psci-1.0", "arm,psci-0.2", "arm,psci"])).unwrap();
    w.end_node(n).unwrap();

    let n = w.begin_node("memory@40000000").unwrap();
    w.property("reg", &reg(c, &[(0x4000_0000, 1280 * MIB)])).unwrap();
    w.property_string("device_type", "memory").unwrap();
    w.end_node(n).unwrap();

    let n = w.begin_node("platform-bus@c000000").unwrap();
    w.property_u32("interrupt-parent", GIC).unwrap();
    w.property_array_u32("ranges", &[0, 0, 0xc00_0000, 0x200_0000][2 - c as usize..]).unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 1).unwrap();
    w.property_string_list("compatible", strs(&["qemu,platform", "simple-bus"])).unwrap();
    w.end_node(n).unwrap();

    let n = w.begin_node("fw-cfg@9020000").unwrap();
    w.property("reg", &reg(c, &[(0x902_0000, 0x18)])).unwrap();
    w.property_string("compatible", "qemu,fw-cfg-mmio").unwrap();
    w.end_node(n).unwrap();

    let n = w.begin_node("virtio_mmio@a000000").unwrap();
    w.property_null("dma-coherent").unwrap();
    w.property_array_u32("interrupts", &[0, 0x10, 1]).unwrap();
    w.property("reg", &reg(c, &[(0xa00_0000, 0x200)])).unwrap();
    w.property_string("compatible", "virtio,mmio").unwrap();
    w.end_node(n).unwrap();

    let n = w.begin_node("gpio-keys").unwrap();
    w.property_string("compatible", "gpio-keys").unwrap();
    let k = w.begin_node("poweroff").unwrap();
    w.property_array_u32("gpios", &[GPIO, 3, 0]).unwrap();
    w.property_u32("linux,code", 0x74).unwrap();
    w.end_node(k).unwrap();
    w.end_node(n).unwrap();

    let n = w.begin_node("pl061@9030000").unwrap();
    w.property_u32("phandle", GPIO).unwrap();
    w.property_u32("clocks", PCLK).unwrap();
    w.property_null("gpio-controller").unwrap();
    w.property("reg", &reg(c, &[(0x903_0000, 0x1000)])).unwrap();
    w.end_node(n).unwrap();

    let n = w.begin_node("pcie@10000000").unwrap();
    w.property_array_u32("msi-map", &[0, V2M, 0, 0x1_0000]).unwrap();
    w.property("reg", &reg(c, &[(0x3f00_0000, 0x100_0000)])).unwrap();
    w.property_u32("#address-cells", 3).unwrap();
    w.property_u32("#size-cells", 2).unwrap();
    w.property_string("device_type", "pci").unwrap();
    w.property_string("compatible", "pci-host-ecam-generic").unwrap();
    w.end_node(n).unwrap();

    let n = w.begin_node("pl011@9000000").unwrap();
    w.property_string_list("clock-names", strs(&["uartclk", "apb_pclk"])).unwrap();
    w.property_array_u32("clocks", &[PCLK, PCLK]).unwrap();
    w.property_array_u32("interrupts", &[0, 1, 4]).unwrap();
    w.property("reg", &reg(c, &[(0x900_0000, 0x1000)])).unwrap();
    w.property_string_list("compatible", strs(&["arm,pl011", "arm,primecell"])).unwrap();
    w.end_node(n).unwrap();

    let n = w.begin_node("pmu").unwrap();
    w.property_string("compatible", "arm,cortex-a15-pmu").unwrap();
    w.end_node(n).unwrap();

    let n = w.begin_node("intc@8000000").unwrap();
    w.property_u32("phandle", GIC).unwrap();
    w.property_array_u32("interrupts", &[1, 9, 4]).unwrap();
    let gic = [(0x800_0000, 0x1_0000), (0x801_0000, 0x1_0000), (0x803_0000, 0x1_0000), (0x804_0000, 0x1_0000)];
    w.property("reg", &reg(c, &gic)).unwrap();
    w.property_string("compatible", "arm,cortex-a15-gic").unwrap();
    w.property_null("ranges").unwrap();
    w.property_u32("#size-cells", c).unwrap();
    w.property_u32("#address-cells", c).unwrap();
    w.property_null("interrupt-controller").unwrap();
    w.property_u32("#interrupt-cells", 3).unwrap();
    let v = w.begin_node("v2m@8020000").unwrap();
    w.property_u32("phandle", V2M).unwrap();
    w.property("reg", &reg(c, &[(0x802_0000, 0x1000)])).unwrap();
    w.property_null("msi-controller").unwrap();
    w.end_node(v).unwrap();
    w.end_node(n).unwrap();

    let n = w.begin_node("flash@0").unwrap();
    w.property("reg", &reg(c, &[(0, 0x400_0000), (0x400_0000, 0x400_0000)])).unwrap();
    w.property_string("compatible", "cfi-flash").unwrap();
    w.end_node(n).unwrap();

    cpus(&mut w, spec);

    let n = w.begin_node("timer").unwrap();
    w.property_array_u32("interrupts", &[1, 13, 0x304, 1, 14, 0x304, 1, 11, 0x304, 1, 10, 0x304]).unwrap();
    w.property_string("compatible", "arm,armv7-timer").unwrap();
    w.end_node(n).unwrap();

    let n = w.begin_node("apb-pclk").unwrap();
    w.property_u32("phandle", PCLK).unwrap();
    w.property_u32("clock-frequency", 24_000_000).unwrap();
    w.property_u32("#clock-cells", 0).unwrap();
    w.property_string("compatible", "fixed-clock").unwrap();
    w.end_node(n).unwrap();

    if !spec.carveouts.is_empty() {
        let rm = w.begin_node("reserved-memory").unwrap();
        w.property_u32("#address-cells", c).unwrap();
        w.property_u32("#size-cells", c).unwrap();
        w.property_null("ranges").unwrap();
        for (name, base, size) in &spec.carveouts {
            let n = w.begin_node(name).unwrap();
            w.property("reg", &reg(c, &[(*base, *size)])).unwrap();
            w.property_null("no-map").unwrap();
            w.end_node(n).unwrap();
        }
        w.end_node(rm).unwrap();
    }

    let n = w.begin_node("aliases").unwrap();
    w.property_string("serial0", "/pl011@9000000").unwrap();
    w.property_string("gpio0", "/pl061@9030000").unwrap();
    w.end_node(n).unwrap();

    chosen(&mut w, spec);
    w.end_node(root).unwrap();
    w.finish().unwrap()
}

fn cpus(w: &mut FdtWriter, spec: &Spec) {
    let n = w.begin_node("cpus").unwrap();
    w.property_u32("#size-cells", 0).unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    let map = w.begin_node("cpu-map").unwrap();
    let cl = w.begin_node("cluster0").unwrap();
    for i in 0..spec.cpus {
        let core = w.begin_node(&alloc::format!("core{i}")).unwrap();
        w.property_u32("cpu", 0x9000 + i).unwrap();
        w.end_node(core).unwrap();
    }
    w.end_node(cl).unwrap();
    w.end_node(map).unwrap();
    for i in 0..spec.cpus {
        let cpu = w.begin_node(&alloc::format!("cpu@{i}")).unwrap();
        w.property_u32("phandle", 0x9000 + i).unwrap();
        w.property_u32("reg", i).unwrap();
        if spec.spin_table {
            w.property_string("enable-method", "spin-table").unwrap();
            w.property_u64("cpu-release-addr", 0x4000_fff8).unwrap();
        } else {
            w.property_string("enable-method", "psci").unwrap();
        }
        w.property_string("compatible", "arm,cortex-a15").unwrap();
        w.property_string("device_type", "cpu").unwrap();
        w.end_node(cpu).unwrap();
    }
    w.end_node(n).unwrap();
}

fn chosen(w: &mut FdtWriter, spec: &Spec) {
    let ch = w.begin_node("chosen").unwrap();
    w.property_string("stdout-path", "serial0:115200n8").unwrap();
    w.property_array_u32("kaslr-seed", &[1, 2]).unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 1).unwrap();
    for (i, devices) in spec.guest_devices.iter().enumerate() {
        let g = w.begin_node(&format!("guest@{i}")).unwrap();
        w.property_string("compatible", "carve,guest").unwrap();
        w.property_u32("#address-cells", 1).unwrap();
        w.property_u32("#size-cells", 1).unwrap();
        w.property_array_u32("memory", &[0, 0x40000]).unwrap();
        w.property_u32("cpus", 1).unwrap();
        if !devices.is_empty() {
            w.property_string_list("carve,devices", strs(devices)).unwrap();
        }
        let at = 0x4800_0000 + i as u32 * 0x100_0000;
        let k = w.begin_node(&format!("module@{at:x}")).unwrap();
        w.property_string_list("compatible", strs(&["multiboot,kernel", "multiboot,module"])).unwrap();
        w.property_array_u32("reg", &[at, 0x80_0000]).unwrap();
        w.end_node(k).unwrap();
        w.end_node(g).unwrap();
    }
    if let Some(cpus) = spec.guest_cpus.filter(|_| spec.guest_devices.is_empty()) {
        let g = w.begin_node("guest@0").unwrap();
        w.property_string("compatible", "carve,guest").unwrap();
        w.property_u32("#address-cells", 1).unwrap();
        w.property_u32("#size-cells", 1).unwrap();
        w.property_array_u32("memory", &[0, 0xc0000]).unwrap();
        w.property_u32("cpus", cpus).unwrap();
        let k = w.begin_node("module@48000000").unwrap();
        w.property_string_list("compatible", strs(&["multiboot,kernel", "multiboot,module"])).unwrap();
        w.property_array_u32("reg", &[0x4800_0000, 0x80_0000]).unwrap();
        w.property_string("bootargs", "console=ttyAMA0").unwrap();
        w.end_node(k).unwrap();
        w.end_node(g).unwrap();
    }
    w.end_node(ch).unwrap();
}

/// The machine, its plan's first guest, and that guest's DTB.
fn guest_of(blob: &[u8], opts: &GuestDtbOptions<'_>) -> (Machine, GuestPlan, Result<Vec<u8>, DtError>) {
    let tree = Tree::parse(blob).unwrap();
    let m = Machine::from_tree(&tree).unwrap();
    let cfg = if m.guests.is_empty() {
        PlanConfig { extra_guests: vec![768 * MIB], require_kernel: false, ..PlanConfig::default() }
    } else {
        PlanConfig::default()
    };
    let p = plan(&m, &cfg).unwrap();
    let g = p.guests[0].clone();
    let out = guest_dtb(&tree, &m, &g, opts);
    (m, g, out)
}

fn paths(t: &Tree<'_>) -> Vec<String> {
    let mut v = Vec::new();
    t.root.walk(&mut |n| v.push(n.path.clone()));
    v
}

fn u64_at(t: &Tree<'_>, path: &str, prop: &'static str) -> u64 {
    t.find(path).unwrap().u64_prop(prop).unwrap().unwrap()
}

/// What every guest tree of a QEMU-virt-like machine must show.
fn check_guest_tree(out: &[u8], g: &GuestPlan) {
    let gm = Machine::from_dtb(out).unwrap();
    assert_eq!(gm.ram.len(), 1, "{:?}", gm.ram);
    assert_eq!((gm.ram[0].range.start(), gm.ram[0].range.end()), (g.ipa_base.raw(), g.ipa_base.raw() + g.size));
    assert!(gm.guests.is_empty());
    let psci = gm.psci.as_ref().unwrap();
    assert_eq!(psci.method, PsciMethod::Hvc);
    assert!(psci.v02);
    assert_eq!(gm.cpus.len(), g.cpus as usize);
    let gic = gm.gic.as_ref().unwrap();
    assert!(gic.hyp_interface.is_none() && gic.vcpu_interface.is_none());
    assert_eq!(gic.distributor.start(), 0x800_0000);
    assert_eq!(gic.cpu_interface.start(), 0x801_0000);
    assert_eq!(gm.uart.as_ref().unwrap().regs[0].start(), 0x900_0000);
    assert!(gm.timer.is_some());

    let t = Tree::parse(out).unwrap();
    assert!(t.memreserve.is_empty());
    let all = paths(&t);
    let memory: Vec<_> = all.iter().filter(|p| p.starts_with("/memory")).collect();
    assert_eq!(memory, [&alloc::format!("/memory@{:x}", g.ipa_base.raw())]);
    for gone in [
        "/virtio_mmio@a000000",
        "/pcie@10000000",
        "/pl061@9030000",
        "/gpio-keys",
        "/fw-cfg@9020000",
        "/flash@0",
        "/platform-bus@c000000",
        "/pmu",
        "/intc@8000000/v2m@8020000",
        "/cpus/cpu-map",
    ] {
        assert!(t.find(gone).is_none(), "{gone} should be gone: {all:?}");
    }
    assert!(t.find("/apb-pclk").is_some(), "the UART's clock: {all:?}");
    let intc = t.find("/intc@8000000").unwrap();
    assert!(!intc.has_prop("interrupts") && intc.has_prop("interrupt-controller"));
    let psci = t.find("/psci").unwrap();
    assert_eq!(psci.strings_prop("compatible").unwrap(), ["arm,psci-1.0", "arm,psci-0.2"]);
    assert!(!psci.has_prop("cpu_on"));
    for (i, c) in t.find("/cpus").unwrap().children.iter().enumerate() {
        assert_eq!(c.name, alloc::format!("cpu@{i}"));
        assert_eq!(c.str_prop("enable-method").unwrap(), Some("psci"));
        assert!(!c.has_prop("cpu-release-addr"));
    }
    let chosen = t.find("/chosen").unwrap();
    assert!(chosen.children.is_empty());
    assert!(!chosen.has_prop("kaslr-seed"));
    assert!(t.root.has_prop("interrupt-parent") && t.root.has_prop("compatible"));
}

#[test]
fn qemu_like_machine_becomes_one_dense_bank_and_passed_through_devices() {
    let blob = machine_blob(&Spec::default());
    let initrd = IpaRange::from_raw(0x4800_0000, 0x20_0000).unwrap();
    let opts =
        GuestDtbOptions { initrd: Some(initrd), bootargs: Some("console=ttyAMA0 root=/dev/ram"), ..Default::default() };
    let (m, g, out) = guest_of(&blob, &opts);
    assert_eq!(m.reserved.len(), 3, "two carveouts and a /memreserve/ in the machine");
    let out = out.unwrap();
    check_guest_tree(&out, &g);
    let gm = Machine::from_dtb(&out).unwrap();
    assert!(gm.reserved.is_empty(), "{:?}", gm.reserved);
    let t = Tree::parse(&out).unwrap();
    assert!(t.find("/reserved-memory").is_none());
    let chosen = t.find("/chosen").unwrap();
    assert_eq!(chosen.str_prop("bootargs").unwrap(), Some("console=ttyAMA0 root=/dev/ram"));
    assert_eq!(chosen.str_prop("stdout-path").unwrap(), Some("serial0:115200n8"));
    assert_eq!(chosen.prop("linux,initrd-start").unwrap().len(), 8, "two cells: the root's #address-cells");
    assert_eq!(u64_at(&t, "/chosen", "linux,initrd-start"), 0x4800_0000);
    assert_eq!(u64_at(&t, "/chosen", "linux,initrd-end"), 0x4820_0000);
    let aliases = t.find("/aliases").unwrap();
    assert!(aliases.has_prop("serial0") && !aliases.has_prop("gpio0"));
    assert_eq!(t.find("/intc@8000000").unwrap().prop("reg").unwrap().len(), 2 * 16);
    assert_eq!(t.root.str_prop("model").unwrap(), Some("test-virt"));
}

#[test]
fn one_cell_roots_get_one_cell_numbers() {
    let blob = machine_blob(&Spec { cells: 1, ..Spec::default() });
    let initrd = IpaRange::from_raw(0x4800_0000, 0x20_0000).unwrap();
    let opts = GuestDtbOptions { initrd: Some(initrd), ..Default::default() };
    let (_, g, out) = guest_of(&blob, &opts);
    let out = out.unwrap();
    check_guest_tree(&out, &g);
    let t = Tree::parse(&out).unwrap();
    let mem = t.find(&alloc::format!("/memory@{:x}", g.ipa_base.raw())).unwrap();
    assert_eq!(mem.prop("reg").unwrap().len(), 8);
    assert_eq!(t.find("/chosen").unwrap().prop("linux,initrd-end").unwrap(), 0x4820_0000u32.to_be_bytes());
    assert!(t.find("/chosen").unwrap().prop("bootargs").is_none());
    assert_eq!(t.find("/intc@8000000").unwrap().prop("reg").unwrap().len(), 2 * 8);
}

#[test]
fn ram_a_one_cell_root_cannot_describe_is_refused_with_the_numbers() {
    let blob = machine_blob(&Spec { cells: 1, ..Spec::default() });
    let tree = Tree::parse(&blob).unwrap();
    let m = Machine::from_tree(&tree).unwrap();
    let p = plan(&m, &PlanConfig::default()).unwrap();
    let mut g = p.guests[0].clone();
    g.ipa_base = Ipa::new(0xc000_0000);
    g.size = 2 << 30;
    let e = guest_dtb(&tree, &m, &g, &GuestDtbOptions::default()).unwrap_err().to_string();
    assert_eq!(
        e,
        "/: guest@0's RAM 0xc0000000-0x140000000 ends above 4 GiB, which the root's #address-cells = 1 cannot describe"
    );
    g.ipa_base = Ipa::new(0x4000_0000);
    g.size = 768 * MIB;
    let initrd = IpaRange::from_raw(0xffff_0000, 0x2_0000).unwrap();
    let e = guest_dtb(&tree, &m, &g, &GuestDtbOptions { initrd: Some(initrd), ..Default::default() })
        .unwrap_err()
        .to_string();
    assert!(e.contains("initrd end 0x100010000 does not fit"), "{e}");
}

#[test]
fn owned_carveouts_are_kept_and_only_those_even_64_of_them() {
    let mut spec = Spec::default();
    for i in 0..65u64 {
        let base = 0x8000_0000 + i * 2 * MIB;
        spec.carveouts.push((alloc::format!("pool{i}@{base:x}"), base, MIB));
    }
    let blob = machine_blob(&spec);
    let owned_names: Vec<String> = spec.carveouts[2..66].iter().map(|c| c.0.clone()).collect();
    let owned: Vec<&str> = owned_names.iter().map(String::as_str).collect();
    let (_, g, out) = guest_of(&blob, &GuestDtbOptions { owned_carveouts: &owned, ..Default::default() });
    let out = out.unwrap();
    check_guest_tree(&out, &g);
    let gm = Machine::from_dtb(&out).unwrap();
    assert_eq!(gm.reserved.len(), 64);
    let names: Vec<&str> = gm.reserved.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, owned);
    assert_eq!(
        gm.reserved[0].kind,
        ReservedKind::Static(vec![crate::addr::PhysRange::from_raw(0x8000_0000, MIB).unwrap()])
    );
    assert!(gm.reserved.iter().all(|r| r.no_map));
    let t = Tree::parse(&out).unwrap();
    let rm = t.find("/reserved-memory").unwrap();
    assert!(rm.has_prop("ranges") && rm.has_prop("#address-cells"));
    assert!(rm.child("ipu-pool@50000000").is_none() && rm.child("pool64@88000000").is_none());
}

#[test]
fn an_owned_carveout_the_tree_lacks_is_an_error() {
    let blob = machine_blob(&Spec::default());
    let (_, _, out) = guest_of(&blob, &GuestDtbOptions { owned_carveouts: &["nope@1"], ..Default::default() });
    assert_eq!(
        out.unwrap_err().to_string(),
        "/reserved-memory/nope@1: the guest is to own this carveout, but the tree has no such node"
    );
}

#[test]
fn guests_get_their_first_cpus_started_through_psci() {
    let blob = machine_blob(&Spec { cpus: 4, spin_table: true, guest_cpus: Some(2), ..Spec::default() });
    let (m, g, out) = guest_of(&blob, &GuestDtbOptions::default());
    let out = out.unwrap();
    assert_eq!(g.cpus, 2);
    check_guest_tree(&out, &g);
    assert_eq!(Machine::from_dtb(&out).unwrap().cpus, [0, 1]);
    assert_eq!(guest_mpidrs(&m, &g), [0, 1]);
    let t = Tree::parse(&out).unwrap();
    let cpus = t.find("/cpus").unwrap();
    assert_eq!(cpus.u32_prop("#address-cells").unwrap(), Some(1));
    assert_eq!(cpus.u32_prop("#size-cells").unwrap(), Some(0));
    assert_eq!(t.header.boot_cpuid_phys, 0);

    let tree = Tree::parse(&blob).unwrap();
    let mut too_many = g.clone();
    too_many.cpus = 5;
    let e = guest_dtb(&tree, &m, &too_many, &GuestDtbOptions::default()).unwrap_err();
    assert_eq!(e.to_string(), "/cpus: guest@0 wants 5 CPU(s), the tree describes 4");
}

/// A board-like tree: the UART on a bus, with a pin group, a regulator and a clock controller.
fn board_blob() -> Vec<u8> {
    let mut w = FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 1).unwrap();
    w.property_u32("interrupt-parent", 1).unwrap();
    let n = w.begin_node("memory@80000000").unwrap();
    w.property_string("device_type", "memory").unwrap();
    w.property_array_u32("reg", &[0x8000_0000, 0x4000_0000]).unwrap();
    w.end_node(n).unwrap();
    let n = w.begin_node("cpus").unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 0).unwrap();
    let c = w.begin_node("cpu@0").unwrap();
    w.property_string("device_type", "cpu").unwrap();
    w.property_u32("reg", 0).unwrap();
    w.property_u32("clocks", 3).unwrap(); // the clock controller: has reg, not kept
    w.end_node(c).unwrap();
    w.end_node(n).unwrap();
    let regs = w.begin_node("regulators").unwrap();
    for (name, ph) in [("regulator-3v3", 5), ("regulator-5v", 6)] {
        let r = w.begin_node(name).unwrap();
        w.property_string("compatible", "regulator-fixed").unwrap();
        w.property_u32("phandle", ph).unwrap();
        w.end_node(r).unwrap();
    }
    w.end_node(regs).unwrap();
    let soc = w.begin_node("soc").unwrap();
    w.property_string("compatible", "simple-bus").unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 1).unwrap();
    w.property_array_u32("ranges", &[0, 0x1000_0000, 0x1000_0000]).unwrap();
    let n = w.begin_node("interrupt-controller@1000").unwrap();
    w.property_string("compatible", "arm,cortex-a7-gic").unwrap();
    w.property_u32("phandle", 1).unwrap();
    w.property_array_u32("reg", &[0x1000, 0x1000, 0x2000, 0x2000, 0x4000, 0x2000, 0x6000, 0x2000]).unwrap();
    w.property_array_u32("interrupts", &[1, 9, 0xf04]).unwrap();
    w.end_node(n).unwrap();
    let n = w.begin_node("clock-controller@3000").unwrap();
    w.property_u32("phandle", 3).unwrap();
    w.property_u32("#clock-cells", 1).unwrap();
    w.property_array_u32("reg", &[0x3000, 0x100]).unwrap();
    w.property_u32("clocks", 8).unwrap(); // a fixed oscillator
    w.end_node(n).unwrap();
    let n = w.begin_node("osc24M").unwrap();
    w.property_string("compatible", "fixed-clock").unwrap();
    w.property_u32("phandle", 8).unwrap();
    w.property_u32("#clock-cells", 0).unwrap();
    w.end_node(n).unwrap();
    let n = w.begin_node("pinctrl@4000").unwrap();
    w.property_array_u32("reg", &[0x4000, 0x100]).unwrap();
    w.property_u32("interrupt-parent", 9).unwrap(); // a controller stacked on the GIC
    let p = w.begin_node("uart0-pins").unwrap();
    w.property_u32("phandle", 4).unwrap();
    w.end_node(p).unwrap();
    w.end_node(n).unwrap();
    let n = w.begin_node("serial@8000").unwrap();
    w.property_string("compatible", "snps,dw-apb-uart").unwrap();
    w.property_array_u32("reg", &[0x8000, 0x400]).unwrap();
    w.property_array_u32("clocks", &[3, 7]).unwrap();
    w.property_u32("pinctrl-0", 4).unwrap();
    w.property_u32("vcc-supply", 5).unwrap();
    w.end_node(n).unwrap();
    let n = w.begin_node("i2c@9000").unwrap();
    w.property_array_u32("reg", &[0x9000, 0x400]).unwrap();
    // Phandle 7, which the UART's `clocks` has as an argument: never a device it needs.
    w.property_u32("phandle", 7).unwrap();
    w.end_node(n).unwrap();
    let n = w.begin_node("interrupt-controller@c00").unwrap();
    w.property_array_u32("reg", &[0xc00, 0x400]).unwrap();
    w.property_u32("phandle", 9).unwrap();
    w.end_node(n).unwrap();
    w.end_node(soc).unwrap();
    let soc2 = w.begin_node("soc2").unwrap();
    w.property_string("compatible", "simple-bus").unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 1).unwrap();
    w.property_null("ranges").unwrap();
    let n = w.begin_node("virtio_mmio@a000000").unwrap();
    w.property_array_u32("reg", &[0xa00_0000, 0x200]).unwrap();
    w.end_node(n).unwrap();
    w.end_node(soc2).unwrap();
    let n = w.begin_node("timer").unwrap();
    w.property_string("compatible", "arm,armv8-timer").unwrap();
    w.end_node(n).unwrap();
    let n = w.begin_node("chosen").unwrap();
    w.property_string("stdout-path", "/soc/serial@8000:115200n8").unwrap();
    w.end_node(n).unwrap();
    let n = w.begin_node("aliases").unwrap();
    w.property_string("serial0", "/soc/serial@8000").unwrap();
    w.property_string("i2c0", "/soc/i2c@9000").unwrap();
    w.property_string("rtc0", "/soc/rtc").unwrap();
    w.end_node(n).unwrap();
    w.end_node(root).unwrap();
    w.finish().unwrap()
}

/// Nodes with `reg` come into a guest's tree only as devices passed through:
/// the GIC, the console, and what the console needs (its clock controller,
/// the pin controller holding its pin group, that controller's interrupt
/// parent), read phandle by phandle with each provider's argument count, so
/// an argument cell that happens to equal a phandle (7, the I2C controller's)
/// brings nothing. A CPU's reference to the clock controller alone would not.
#[test]
fn buses_stay_for_what_they_hold_and_only_the_consoles_providers_come_with_reg() {
    let blob = board_blob();
    let (_, g, out) = guest_of(&blob, &GuestDtbOptions::default());
    let t = Tree::parse(out.as_ref().unwrap()).unwrap();
    let expect = [
        "/",
        "/memory@40000000",
        "/cpus",
        "/cpus/cpu@0",
        "/regulators",
        "/regulators/regulator-3v3",
        "/soc",
        "/soc/interrupt-controller@1000",
        "/soc/clock-controller@3000",
        "/soc/osc24M",
        "/soc/pinctrl@4000",
        "/soc/pinctrl@4000/uart0-pins",
        "/soc/serial@8000",
        "/soc/interrupt-controller@c00",
        "/timer",
        "/chosen",
        "/aliases",
        "/psci",
    ];
    assert_eq!(paths(&t), expect, "guest RAM {:?}", g.ipa_range());
    assert_eq!(t.find("/soc").unwrap().prop("ranges").unwrap().len(), 12, "bus ranges unchanged");
    assert_eq!(t.find("/soc/interrupt-controller@1000").unwrap().prop("reg").unwrap().len(), 16);
    let aliases = t.find("/aliases").unwrap();
    assert!(aliases.has_prop("serial0") && !aliases.has_prop("i2c0") && !aliases.has_prop("rtc0"));
    let gm = Machine::from_dtb(out.as_ref().unwrap()).unwrap();
    assert_eq!(gm.uart.unwrap().regs[0].start(), 0x1000_8000);
    assert_eq!(gm.ram[0].range.start(), g.ipa_base.raw());

    let tree = Tree::parse(&blob).unwrap();
    let m = Machine::from_tree(&tree).unwrap();
    let sel = strip_for_guest(&tree, &m, &g).unwrap();
    assert!(sel.keeps("/soc/serial@8000") && sel.keeps("/soc/pinctrl@4000/uart0-pins"));
    assert!(sel.keeps("/soc/clock-controller@3000") && !sel.keeps("/soc/i2c@9000") && !sel.keeps("/soc2"));
    assert_eq!(given(&tree, &m, &g), CONSOLE_DEVICES.map(|(n, a)| (n.to_string(), a)));
}

/// What [`board_blob`]'s console needs, in the order [`passed_through`] lists it.
const CONSOLE_DEVICES: [(&str, u64); 4] = [
    ("/soc/serial@8000", 0x1000_8000),
    ("/soc/clock-controller@3000", 0x1000_3000),
    ("/soc/pinctrl@4000", 0x1000_4000),
    ("/soc/interrupt-controller@c00", 0x1000_0c00),
];

/// Each device [`passed_through`] lists, with its first window's physical address.
fn given(tree: &Tree<'_>, m: &Machine, g: &GuestPlan) -> Vec<(String, u64)> {
    passed_through(tree, m, g).unwrap().into_iter().map(|d| (d.node, d.regs[0].start())).collect()
}

#[test]
fn qemu_virt_dtb_goes_through() {
    let initrd = IpaRange::from_raw(0x4800_0000, 0x100_0000).unwrap();
    let opts = GuestDtbOptions { initrd: Some(initrd), bootargs: Some("console=ttyAMA0"), ..Default::default() };
    let (m, g, out) = guest_of(QEMU_VIRT, &opts);
    assert_eq!(m.cpus.len(), 2);
    let out = out.unwrap();
    check_guest_tree(&out, &g);
    let t = Tree::parse(&out).unwrap();
    assert_eq!(
        paths(&t),
        [
            "/",
            "/psci",
            "/memory@40000000",
            "/pl011@9000000",
            "/intc@8000000",
            "/cpus",
            "/cpus/cpu@0",
            "/timer",
            "/apb-pclk",
            "/chosen",
        ]
    );
    assert!(out.len() < 4096, "{} bytes", out.len());
    if let Some(path) = std::env::var_os("CARVE_DUMP_GUEST_DTB") {
        std::fs::write(path, &out).unwrap();
    }
}

/// Whatever a corrupted machine blob holds, writing a guest tree for it is an answer, not a panic.
#[test]
fn single_byte_mutations_never_panic() {
    let good = machine_blob(&Spec::default());
    let mut wrote = 0;
    for i in 0..good.len() {
        for v in [0x00, 0xff, 0x01, good[i] ^ 0x04] {
            let mut b = good.clone();
            b[i] = v;
            let Ok(tree) = Tree::parse(&b) else { continue };
            let Ok(m) = Machine::from_tree(&tree) else { continue };
            let cfg = PlanConfig { extra_guests: vec![64 * MIB], require_kernel: false, ..PlanConfig::default() };
            let Ok(p) = plan(&m, &cfg) else { continue };
            for g in &p.guests {
                if let Ok(out) = guest_dtb(&tree, &m, g, &GuestDtbOptions::default()) {
                    Tree::parse(&out).unwrap();
                    wrote += 1;
                }
            }
        }
    }
    assert!(wrote > 0);
}

/// A writer inside a root of one-cell addresses and sizes that holds one
/// `memory` node named `ram_node`, 1 GiB at 0x40000000; and the root's handle.
fn one_cell_root_with_ram(ram_node: &str) -> (FdtWriter, vm_fdt::FdtWriterNode) {
    let mut w = FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 1).unwrap();
    let n = w.begin_node(ram_node).unwrap();
    w.property_string("device_type", "memory").unwrap();
    w.property_array_u32("reg", &[0x4000_0000, 0x4000_0000]).unwrap();
    w.end_node(n).unwrap();
    (w, root)
}

/// CPU nodes without `reg` are not CPUs the machine counts, so no guest gets
/// one: vCPU `i`'s node must say the MPIDR the monitor gives it (a fuzz find:
/// tests/corpus/fuzz-regressions/guest-dtb-cpu-nodes-without-reg.dtb).
#[test]
fn cpu_nodes_without_reg_are_not_given_to_guests() {
    let (mut w, root) = one_cell_root_with_ram("memory@40000000");
    let n = w.begin_node("cpus").unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 0).unwrap();
    for i in 0..4u32 {
        let c = w.begin_node(&alloc::format!("cpu@{i}")).unwrap();
        w.property_string("device_type", "cpu").unwrap();
        if i >= 2 {
            w.property_u32("reg", i).unwrap();
        }
        w.end_node(c).unwrap();
    }
    w.end_node(n).unwrap();
    w.end_node(root).unwrap();
    let blob = w.finish().unwrap();
    let (m, g, out) = guest_of(&blob, &GuestDtbOptions::default());
    assert_eq!(m.cpus, [2, 3]);
    assert_eq!(guest_mpidrs(&m, &g), [2]);
    let out = out.unwrap();
    assert_eq!(Machine::from_dtb(&out).unwrap().cpus, [2]);
    assert!(Tree::parse(&out).unwrap().find("/cpus/cpu@2").is_some());
}

/// A huge property on a node every guest keeps: refused with the numbers, not
/// written into a DTB that would run the monitor's heap out.
#[test]
fn a_guest_dtb_past_its_cap_is_refused() {
    let mut w = FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    w.property_u32("#address-cells", 1).unwrap();
    w.property_u32("#size-cells", 1).unwrap();
    w.property("vendor,blob", &vec![0u8; MAX_GUEST_DTB]).unwrap();
    let n = w.begin_node("memory@40000000").unwrap();
    w.property_string("device_type", "memory").unwrap();
    w.property_array_u32("reg", &[0x4000_0000, 0x4000_0000]).unwrap();
    w.end_node(n).unwrap();
    w.end_node(root).unwrap();
    let blob = w.finish().unwrap();
    let (_, _, out) = guest_of(&blob, &GuestDtbOptions::default());
    let e = out.unwrap_err().to_string();
    assert!(e.starts_with("/: guest@0's DTB would hold more than 256 KiB of properties ("), "{e}");
}

/// A PSCI node known by its compatible under another name (a fuzz find:
/// tests/corpus/fuzz-regressions/guest-dtb-psci-node-named-cpus-*.dtb): the
/// machine's PSCI is read from it, and the guest's is written as `/psci`.
#[test]
fn a_psci_node_under_another_name_is_found_and_the_guest_gets_psci() {
    let (mut w, root) = one_cell_root_with_ram("memory@40000000");
    let n = w.begin_node("firmware-calls").unwrap();
    w.property_string("compatible", "arm,psci-1.0").unwrap();
    w.property_string("method", "smc").unwrap();
    w.end_node(n).unwrap();
    w.end_node(root).unwrap();
    let blob = w.finish().unwrap();
    let (m, _, out) = guest_of(&blob, &GuestDtbOptions::default());
    assert_eq!(m.psci.as_ref().map(|p| (p.node.as_str(), p.method)), Some(("/firmware-calls", PsciMethod::Smc)));
    let out = out.unwrap();
    let gm = Machine::from_dtb(&out).unwrap();
    assert_eq!(gm.psci.as_ref().map(|p| (p.node.as_str(), p.method)), Some(("/psci", PsciMethod::Hvc)));
    assert!(Tree::parse(&out).unwrap().find("/firmware-calls").is_none());
}

/// A device the guest is given, named as the guest's RAM node would be: the
/// guest's tree would name two nodes with one path, which the reader refuses.
/// The writer refuses first, with the names.
#[test]
fn a_device_named_like_the_guests_ram_node_is_refused() {
    let (mut w, root) = one_cell_root_with_ram("ram@40000000");
    let n = w.begin_node("memory@40000000").unwrap();
    w.property_string("device_type", "interrupt-controller").unwrap();
    w.property_string("compatible", "arm,cortex-a15-gic").unwrap();
    w.property_array_u32("reg", &[0x0800_0000, 0x1_0000, 0x0801_0000, 0x1_0000]).unwrap();
    w.end_node(n).unwrap();
    w.end_node(root).unwrap();
    let blob = w.finish().unwrap();
    let (m, g, out) = guest_of(&blob, &GuestDtbOptions::default());
    assert_eq!(m.gic.map(|g| g.node).as_deref(), Some("/memory@40000000"));
    assert_eq!(g.ipa_base.raw(), 0x4000_0000);
    assert_eq!(
        out.unwrap_err().to_string(),
        "/memory@40000000: guest@0 is given this node, which is not RAM, and its RAM node would take the same name"
    );
}

/// With several guests the console is the monitor's emulated SBSA UART: same
/// node, address and interrupt, `arm,sbsa-uart` with a fixed baud rate, no
/// clocks; `stdout-path` still names it, and the machine reader finds it as the console.
#[test]
fn an_emulated_console_is_written_as_an_sbsa_uart_where_the_pl011_was() {
    let opts = GuestDtbOptions { bootargs: Some("console=ttyAMA0"), emulated_console: true, ..Default::default() };
    let (m, _, out) = guest_of(QEMU_VIRT, &opts);
    let out = out.unwrap();
    let t = Tree::parse(&out).unwrap();
    let n = t.find("/pl011@9000000").unwrap();
    let names: Vec<&str> = n.props.iter().map(|p| p.name).collect();
    assert_eq!(names, ["compatible", "interrupts", "reg", "current-speed"], "the machine's order for what is kept");
    assert_eq!(n.prop("compatible"), Some(&b"arm,sbsa-uart\0"[..]));
    assert_eq!(n.u32_prop("current-speed").unwrap(), Some(crate::vm::vuart::BAUD));
    let machine_uart = Tree::parse(QEMU_VIRT).unwrap();
    let pl011 = machine_uart.find("/pl011@9000000").unwrap();
    assert_eq!(n.prop("reg"), pl011.prop("reg"));
    assert_eq!(n.prop("interrupts"), pl011.prop("interrupts"));
    let gm = Machine::from_dtb(&out).unwrap();
    let uart = gm.uart.as_ref().expect("stdout-path names the emulated UART");
    assert_eq!(uart.node, "/pl011@9000000");
    assert_eq!(uart.compatible.as_deref(), Some("arm,sbsa-uart"));
    assert_eq!(gm.uart_irq, m.uart_irq, "the same interrupt as the machine's console");
    // Without the option, the machine's PL011 as it is.
    let (_, _, plain) = guest_of(QEMU_VIRT, &GuestDtbOptions::default());
    let plain = plain.unwrap();
    let t = Tree::parse(&plain).unwrap();
    assert_eq!(t.find("/pl011@9000000").unwrap().prop("compatible"), pl011.prop("compatible"));
}

/// A guest's RAM in two extents, neither where its IPAs are: 256 MiB at
/// IPA 0x40000000 from PA 0x90000000, 256 MiB at IPA 0x50000000 from PA 0xa8000000.
fn two_extents() -> Vec<Extent> {
    let e = |ipa: u64, pa: u64| Extent { ipa: Ipa::from_u64(ipa).unwrap(), pa: PhysAddr::new(pa), size: 256 * MIB };
    vec![e(0x4000_0000, 0x9000_0000), e(0x5000_0000, 0xa800_0000)]
}

/// [`board_blob`]'s machine with its guest given the board (`carve,devices =
/// "all"`), RAM in [`two_extents`], and /soc/i2c@9000 standing for the
/// monitor's log UART.
fn board_guest() -> (Machine, GuestPlan) {
    let blob = board_blob();
    let tree = Tree::parse(&blob).unwrap();
    let mut m = Machine::from_tree(&tree).unwrap();
    let cfg = PlanConfig { extra_guests: vec![512 * MIB], require_kernel: false, ..PlanConfig::default() };
    let mut g = plan(&m, &cfg).unwrap().guests[0].clone();
    g.extents = two_extents();
    g.desc = Some(Guest {
        name: g.name.clone(),
        path: "/chosen/guest@0".into(),
        memory: g.size,
        cpus: 1,
        cpu_ids: None,
        ipa_base: None,
        kernel: None,
        ramdisk: None,
        device_tree: None,
        bootargs: None,
        on_fault: Default::default(),
        movable: None,
        virtual_gic: false,
        devices: DeviceGrant::All,
        named: Vec::new(),
    });
    let log = Device { node: "/soc/i2c@9000".into(), compatible: None, regs: vec![] };
    m.log_uart = Some(crate::dt::machine::LogUart { device: log, kind: crate::dt::machine::UartKind::Pl011 });
    (m, g)
}

/// Given the board, a lone guest keeps every node but the monitor's log UART
/// (and the GIC's hypervisor parts); every device on a memory-mapped bus is
/// listed for stage-2 at its physical address, after the console's; each
/// bus under the root that holds devices gets `dma-ranges`, one entry per
/// extent (bus address = PA, CPU address = IPA), read back from the DTB.
#[test]
fn a_guest_given_the_board_keeps_every_device_but_the_monitors_and_gets_dma_ranges() {
    let blob = board_blob();
    let tree = Tree::parse(&blob).unwrap();
    let (m, g) = board_guest();
    assert!(gets_the_board(&m, &g));
    let out = guest_dtb(&tree, &m, &g, &GuestDtbOptions::default()).unwrap();
    let t = Tree::parse(&out).unwrap();
    let p = paths(&t);
    for kept in ["/soc/interrupt-controller@1000", "/soc2", "/soc2/virtio_mmio@a000000", "/regulators/regulator-5v"] {
        assert!(p.contains(&kept.to_string()), "{kept} missing from {p:?}");
    }
    assert!(!p.contains(&"/soc/i2c@9000".to_string()), "the monitor's log UART was given: {p:?}");
    assert_eq!(t.find("/soc/interrupt-controller@1000").unwrap().prop("reg").unwrap().len(), 16, "GICH/GICV left out");

    let mut want: Vec<(String, u64)> = CONSOLE_DEVICES.map(|(n, a)| (n.to_string(), a)).to_vec();
    want.push(("/soc2/virtio_mmio@a000000".to_string(), 0x0a00_0000));
    assert_eq!(given(&tree, &m, &g), want, "the console's first, then the rest of the board");
    assert_eq!(dma_buses(&tree, &m, &g).unwrap(), ["/soc", "/soc2"]);

    let cells = Cells { address: 1, size: 1 };
    for bus in ["/soc", "/soc2"] {
        let value = t.find(bus).unwrap().prop("dma-ranges").unwrap();
        let back = decode_dma_ranges(bus, value, cells, cells).unwrap();
        let want = [
            DmaRange { bus: 0x9000_0000, cpu: 0x4000_0000, size: 256 * MIB },
            DmaRange { bus: 0xa800_0000, cpu: 0x5000_0000, size: 256 * MIB },
        ];
        assert_eq!(back, want, "{bus}");
    }

    // Not alone, the same guest is given nothing more than the console's devices, and no dma-ranges.
    let mut two = m.clone();
    two.guests = vec![g.desc.clone().unwrap(), g.desc.clone().unwrap()];
    assert!(!gets_the_board(&two, &g));
    let out = guest_dtb(&tree, &two, &g, &GuestDtbOptions::default()).unwrap();
    let t = Tree::parse(&out).unwrap();
    assert!(t.find("/soc2").is_none() && !t.find("/soc").unwrap().has_prop("dma-ranges"));
}

/// The writer takes the bus's own cell counts for bus addresses and sizes
/// and its parent's for CPU addresses, writes one entry per extent, and
/// composes with a bus's own `dma-ranges` (an Allwinner MBUS's: bus 0 is PA
/// 0x40000000), one entry per piece where both overlap; what it writes reads back.
#[test]
fn dma_ranges_take_their_cells_from_bus_and_parent_and_compose_with_the_machines() {
    let extents = two_extents();
    let (bus, parent) = (Cells { address: 2, size: 1 }, Cells { address: 1, size: 1 });
    let id = dma_ranges("/bus", None, bus, parent, &extents).unwrap();
    assert_eq!(id, dma_ranges("/bus", Some(&[]), bus, parent, &extents).unwrap(), "empty dma-ranges: the identity");
    let value = encode_dma_ranges("/bus", &id, bus, parent).unwrap();
    assert_eq!(value.len(), 2 * 4 * 4, "two entries of 2 + 1 + 1 cells");
    assert_eq!(&value[..16], &[0, 0, 0, 0, 0x90, 0, 0, 0, 0x40, 0, 0, 0, 0x10, 0, 0, 0]);
    assert_eq!(decode_dma_ranges("/bus", &value, bus, parent).unwrap(), id);

    // The machine's: bus 0..0x30000000 is PA 0x80000000..0xb0000000 (covers the
    // first extent and half the second).
    let one = Cells { address: 1, size: 1 };
    let mbus =
        encode_dma_ranges("/mbus", &[DmaRange { bus: 0, cpu: 0x8000_0000, size: 0x3000_0000 }], one, one).unwrap();
    let composed = dma_ranges("/mbus", Some(&mbus), one, one, &extents).unwrap();
    let want = [
        DmaRange { bus: 0x1000_0000, cpu: 0x4000_0000, size: 256 * MIB },
        DmaRange { bus: 0x2800_0000, cpu: 0x5000_0000, size: 128 * MIB },
    ];
    assert_eq!(composed, want);

    // RAM above 4 GiB cannot be written in one-cell bus addresses: an error naming the bus.
    let high = [Extent { ipa: Ipa::from_u64(0x4000_0000).unwrap(), pa: PhysAddr::new(0x1_0000_0000), size: MIB }];
    let r = dma_ranges("/soc", None, one, one, &high).unwrap();
    let err = encode_dma_ranges("/soc", &r, one, one).unwrap_err().to_string();
    assert!(err.contains("/soc") && err.contains("0x100000000"), "{err}");
    // Malformed machine dma-ranges are refused, not misread.
    assert!(dma_ranges("/soc", Some(&[0; 12]), bus, parent, &extents).is_err());
}

/// `carve,restarts` starts at 0 in `/chosen` and is patched in place, the blob's size unchanged.
#[test]
fn restarts_property_is_zero_and_patched_in_place() {
    let blob = machine_blob(&Spec::default());
    let (_, _, out) = guest_of(&blob, &GuestDtbOptions::default());
    let dtb = out.unwrap();
    let t = Tree::parse(&dtb).unwrap();
    assert_eq!(t.find("/chosen").unwrap().prop(RESTARTS), Some(&[0u8, 0, 0, 0][..]));
    let mut patched = dtb.clone();
    set_restarts(&mut patched, 3).unwrap();
    assert_eq!(patched.len(), dtb.len());
    let t = Tree::parse(&patched).unwrap();
    assert_eq!(t.find("/chosen").unwrap().prop(RESTARTS), Some(&[0u8, 0, 0, 3][..]));
    // Only those four bytes changed.
    assert_eq!(dtb.iter().zip(&patched).filter(|(a, b)| a != b).count(), 1);
    // A blob without it (the machine's own) is refused with a reason.
    assert_eq!(set_restarts(&mut blob.clone(), 1), Err("no /chosen/carve,restarts"));
    assert_eq!(set_restarts(&mut [0u8; 16], 1), Err("not a device tree"));
}

/// Two guests that share the machine, given a device each by path: each
/// guest's tree has its own device and not the other's, the machine lists
/// them with their interrupts (GIC SPIs), and nothing is shared.
#[test]
fn devices_named_in_carve_devices_go_to_their_guest_alone() {
    let spec = Spec {
        guest_devices: vec![vec!["/virtio_mmio@a000000"], vec!["console", "/pl061@9030000"]],
        ..Spec::default()
    };
    let blob = machine_blob(&spec);
    let tree = Tree::parse(&blob).unwrap();
    let m = Machine::from_tree(&tree).unwrap();
    let given: Vec<(&str, &str, &[u32])> =
        m.given.iter().map(|d| (d.guest.as_str(), d.device.node.as_str(), d.spis.as_slice())).collect();
    assert_eq!(
        given,
        [("/chosen/guest@0", "/virtio_mmio@a000000", &[48][..]), ("/chosen/guest@1", "/pl061@9030000", &[][..])]
    );
    assert_eq!(m.guests[1].named, ["/pl061@9030000"]);
    let p = plan(&m, &PlanConfig::default()).unwrap();
    check_given(&tree, &m, &p.guests).unwrap();
    let opts = GuestDtbOptions { emulated_console: true, ..Default::default() };
    for (g, own, other) in
        [(0, "/virtio_mmio@a000000", "/pl061@9030000"), (1, "/pl061@9030000", "/virtio_mmio@a000000")]
    {
        let out = guest_dtb(&tree, &m, &p.guests[g], &opts).unwrap();
        let t = Tree::parse(&out).unwrap();
        assert!(t.find(own).is_some() && t.find(other).is_none(), "guest@{g}: {:?}", paths(&t));
        let devices = given_devices(&tree, &m, &p.guests[g]).unwrap();
        assert_eq!(devices.iter().map(|d| d.node.as_str()).collect::<Vec<_>>(), [own]);
    }
    // A lone guest naming a device gets it beside the console.
    let lone = machine_blob(&Spec { guest_devices: vec![vec!["/virtio_mmio@a000000"]], ..Spec::default() });
    let (m, g, _) = guest_of(&lone, &GuestDtbOptions::default());
    let t = Tree::parse(&lone).unwrap();
    let all: Vec<String> = passed_through(&t, &m, &g).unwrap().into_iter().map(|d| d.node).collect();
    assert_eq!(all, ["/pl011@9000000", "/virtio_mmio@a000000"]);
}

/// What `carve,devices` may not name or share, each refused with the guest's
/// node, the device and why.
#[test]
fn devices_a_guest_may_not_be_given_are_refused_with_the_reason() {
    let cases: [(Vec<Vec<&'static str>>, &str); 9] = [
        (vec![vec!["/virtio_mmio@a000000"], vec!["/virtio_mmio@a000000"]], "is given to /chosen/guest@0 already"),
        (vec![vec!["/pl011@9000000"], vec![]], "shares a 4 KiB page with the console UART /pl011@9000000"),
        (vec![vec!["/intc@8000000"], vec![]], "shares a 4 KiB page with the GIC /intc@8000000"),
        (vec![vec!["/nowhere@0"], vec![]], "/nowhere@0: names no node"),
        (vec![vec!["/pmu"], vec![]], "/pmu has no reg: nothing to map"),
        (vec![vec!["/memory@40000000"], vec![]], "is no device"),
        (vec![vec!["all", "/pl061@9030000"], vec![]], "name no device beside it"),
        (vec![vec!["serial0"], vec![]], "expected \"console\", \"all\" or the path of a device node"),
        (vec![vec!["/pl061@9030000", "/pl061@9030000"], vec![]], "/pl061@9030000 is named twice"),
    ];
    for (guests, why) in cases {
        let blob = machine_blob(&Spec { guest_devices: guests.clone(), ..Spec::default() });
        let err = Machine::from_dtb(&blob).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("/chosen/guest@") && err.contains("carve,devices"), "{guests:?}: {err}");
        assert!(err.contains(why), "{guests:?}: {err:?} lacks {why:?}");
    }
}

/// A device's interrupts as GIC interrupt IDs: SPIs and PPIs in order, none
/// when it has none, and a reason when they cannot be routed.
#[test]
fn gic_interrupts_reads_every_specifier_or_says_why_not() {
    let blob = machine_blob(&Spec::default());
    let t = Tree::parse(&blob).unwrap();
    let ids = |path: &str| crate::dt::machine::gic_interrupts(&t, t.find(path).unwrap());
    assert_eq!(ids("/virtio_mmio@a000000"), Ok(vec![48]));
    assert_eq!(ids("/timer"), Ok(vec![29, 30, 27, 26]));
    assert_eq!(ids("/pl061@9030000"), Ok(vec![]));
    let mut w = FdtWriter::new().unwrap();
    let root = w.begin_node("").unwrap();
    let n = w.begin_node("intc").unwrap();
    w.property_u32("phandle", 1).unwrap();
    w.property_null("interrupt-controller").unwrap();
    w.property_u32("#interrupt-cells", 2).unwrap();
    w.end_node(n).unwrap();
    let n = w.begin_node("gic").unwrap();
    w.property_u32("phandle", 2).unwrap();
    w.property_string("compatible", "arm,gic-400").unwrap();
    w.property_u32("#interrupt-cells", 3).unwrap();
    w.end_node(n).unwrap();
    for (name, parent, cells) in
        [("a", 1, &[3u32, 4][..]), ("b", 2, &[0, 1, 4, 0][..]), ("c", 2, &[2, 1, 4][..]), ("d", 9, &[0, 1, 4][..])]
    {
        let n = w.begin_node(name).unwrap();
        w.property_u32("interrupt-parent", parent).unwrap();
        w.property_array_u32("interrupts", cells).unwrap();
        w.end_node(n).unwrap();
    }
    w.end_node(root).unwrap();
    let blob = w.finish().unwrap();
    let t = Tree::parse(&blob).unwrap();
    let why = |path: &str| crate::dt::machine::gic_interrupts(&t, t.find(path).unwrap()).unwrap_err();
    assert!(why("/a").contains("go to /intc, not to the GIC"), "{}", why("/a"));
    assert!(why("/b").contains("16 bytes"), "{}", why("/b"));
    assert!(why("/c").contains("<2 1> is no GIC SPI or PPI"), "{}", why("/c"));
    assert!(why("/d").contains("0x9 is no node's phandle"), "{}", why("/d"));
}
