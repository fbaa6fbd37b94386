//! What the fuzz targets assert, over any bytes. Shared with `tests/corpus.rs`,
//! which runs every input under `tests/corpus/fuzz-regressions/` through the
//! same checks (it includes this file with `#[path]`), so a crash the fuzzer
//! once found stays a test.
//!
//! A panic anywhere (the reader, the plan, the writer, or an assertion here)
//! is a bug: the monitor runs the same code on whatever blob it is handed.

#![allow(dead_code)] // each fuzz target uses part of it

use carve_core::addr::{Address, PhysRange};
use carve_core::dt::machine::PsciMethod;
use carve_core::dt::write::{guest_dtb, guest_mpidrs, GuestDtbOptions};
use carve_core::dt::{Machine, Tree};
use carve_core::plan::{self, GuestPlan, MonitorImage, PlanConfig};
use carve_core::vm::boot;

const MIB: u64 = 1 << 20;

/// The plan configurations every readable blob is planned under:
/// `scripts/plan --guest 256M` (no kernel required, the monitor's image in the
/// lowest free RAM), and the monitor's own under QEMU (its image at
/// 0x40200000, the blob itself at 0x40000000, a kernel required).
pub fn configs(blob_len: usize) -> [PlanConfig; 2] {
    let cli = PlanConfig { extra_guests: vec![256 * MIB], require_kernel: false, ..PlanConfig::default() };
    let dtb_pages = (blob_len as u64).next_multiple_of(0x1000).max(0x1000);
    let monitor = PlanConfig {
        monitor_image: MonitorImage::At(PhysRange::from_raw(0x4020_0000, 4 * MIB).expect("a constant range")),
        monitor_extra: vec![PhysRange::from_raw(0x4000_0000, dtb_pages).expect("a blob under 4 GiB")],
        ..PlanConfig::default()
    };
    [cli, monitor]
}

/// A refusal is one line (the plan tool prints it as one, the monitor logs it
/// as one) that says something.
pub fn check_message(what: &str, msg: &str) {
    assert!(!msg.trim().is_empty(), "{what}: an empty refusal");
    assert!(!msg.contains(['\n', '\r']), "{what}: a refusal of more than one line: {msg:?}");
}

/// The reader and the plan: a refusal, or a plan that passes `verify` with every guest asked for.
pub fn dt_plan(data: &[u8]) {
    let machine = match Machine::from_dtb(data) {
        Ok(m) => m,
        Err(e) => return check_message("dt", &e.to_string()),
    };
    for w in &machine.warnings {
        check_message("dt warning", w);
    }
    for config in configs(data.len()) {
        match plan::plan(&machine, &config) {
            Ok(p) => {
                if let Err(e) = plan::verify(&p) {
                    panic!("the plan breaks an invariant: {e}\n{p:#?}");
                }
                assert_eq!(p.guests.len(), machine.guests.len() + config.extra_guests.len());
                check_cpus(&machine, &p.guests);
            }
            Err(e) => check_message("plan", &e.to_string()),
        }
    }
}

/// Each guest's CPUs: as many as it asked for, none shared, all of the machine's (when it lists any).
fn check_cpus(machine: &Machine, guests: &[GuestPlan]) {
    let mut seen = std::collections::BTreeMap::new();
    for g in guests {
        assert_eq!(g.cpu_ids.len(), g.cpus as usize, "{}: {:?} for {} CPU(s)", g.name, g.cpu_ids, g.cpus);
        assert_eq!(g.cpu_ids.first().copied(), Some(g.first_cpu), "{}: first_cpu", g.name);
        if let Some(want) = g.desc.as_ref().and_then(|d| d.cpu_ids.as_ref()) {
            assert_eq!(&g.cpu_ids, want, "{}: carve,cpu-ids not honoured", g.name);
        }
        for &c in &g.cpu_ids {
            if !machine.cpus.is_empty() {
                assert!((c as usize) < machine.cpus.len(), "{}: CPU {c} of {}", g.name, machine.cpus.len());
            }
            if let Some(other) = seen.insert(c, g.name.clone()) {
                panic!("CPU {c} given to both {other} and {}", g.name);
            }
        }
    }
}

/// The guest-DTB writer, read back: for every guest the monitor would boot, the
/// DTB it writes parses and says the same: one RAM bank that is the guest's
/// IPA range, no guests, no carveouts, PSCI through HVC, the CPUs the monitor
/// gives it, the devices passed through at the same addresses.
pub fn guest_dtb_roundtrip(data: &[u8]) {
    let Ok(tree) = Tree::parse(data) else { return };
    let Ok(machine) = Machine::from_tree(&tree) else { return };
    let [cli, monitor] = configs(data.len());
    for config in [monitor, cli] {
        let Ok(p) = plan::plan(&machine, &config) else { continue };
        for g in &p.guests {
            let desc = g.desc.as_ref();
            let kernel = desc.and_then(|d| d.kernel.as_ref()).map_or(4 * MIB, |k| k.range.size);
            let ramdisk = desc.and_then(|d| d.ramdisk.as_ref()).map(|r| r.range.size);
            let initrd = match boot::layout(&g.name, g.ipa_range(), kernel, ramdisk) {
                Ok(l) => l.initrd,
                Err(e) => {
                    check_message("boot layout", &e.to_string());
                    continue;
                }
            };
            let opts = GuestDtbOptions {
                initrd,
                bootargs: desc.and_then(|d| d.bootargs.as_deref()),
                owned_carveouts: &[],
                emulated_console: false,
            };
            let out = match guest_dtb(&tree, &machine, g, &opts) {
                Ok(out) => out,
                Err(e) => {
                    check_message("guest DTB", &e.to_string());
                    continue;
                }
            };
            check_guest_tree(&machine, g, &out);
        }
    }
}

fn check_guest_tree(machine: &Machine, g: &GuestPlan, out: &[u8]) {
    let gm = match Machine::from_dtb(out) {
        Ok(m) => m,
        Err(e) => panic!("{}: the guest DTB the writer made does not read back: {e}", g.name),
    };
    let ram: Vec<(u64, u64)> = gm.ram.iter().map(|b| (b.range.start(), b.range.size)).collect();
    assert_eq!(ram, [(g.ipa_base.as_u64(), g.size)], "{}: guest RAM", g.name);
    assert!(gm.guests.is_empty(), "{}: guests in a guest's tree", g.name);
    assert!(gm.reserved.is_empty(), "{}: carveouts in a guest's tree: {:?}", g.name, gm.reserved);
    let psci = gm.psci.as_ref().unwrap_or_else(|| panic!("{}: no PSCI node", g.name));
    assert!(psci.method == PsciMethod::Hvc && psci.v02, "{}: PSCI {psci:?}", g.name);
    assert_eq!(gm.cpus, guest_mpidrs(machine, g), "{}: the vCPUs' MPIDRs", g.name);
    if let Some(gic) = &machine.gic {
        let ggic = gm.gic.as_ref().unwrap_or_else(|| panic!("{}: the GIC is gone", g.name));
        assert_eq!((ggic.distributor, ggic.cpu_interface), (gic.distributor, gic.cpu_interface), "{}: GIC", g.name);
        assert!(ggic.hyp_interface.is_none() && ggic.vcpu_interface.is_none(), "{}: GICH/GICV", g.name);
    }
    if let Some(uart) = &machine.uart {
        let guart = gm.uart.as_ref().unwrap_or_else(|| panic!("{}: the console is gone", g.name));
        assert_eq!(guart.regs, uart.regs, "{}: console", g.name);
    }
}
