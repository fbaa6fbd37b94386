//! The plan as a person reads it, and as JSON.

use std::fmt::Write;

use carve_core::addr::{Address, Mib, PhysRange, Size};
use carve_core::dt::Machine;
use carve_core::plan::layout::VmallocSource;
use carve_core::plan::Plan;
use serde_json::{json, Value};

/// A labelled physical range of the map.
struct Row {
    range: PhysRange,
    what: String,
}

fn physical_rows(machine: &Machine, plan: &Plan) -> Vec<Row> {
    let mut rows = Vec::new();
    for c in &plan.carveouts {
        let mut flags = Vec::new();
        if c.no_map {
            flags.push("no-map");
        }
        if c.reusable {
            flags.push("reusable");
        }
        if c.dynamic {
            flags.push("placed");
        }
        if let Some(compat) = &c.compatible {
            flags.push(compat.as_str());
        }
        let kind = if c.memreserve { "memreserve" } else { "carveout" };
        let flags = if flags.is_empty() { String::new() } else { format!(" ({})", flags.join(", ")) };
        // A CMA pool's free pages back the guests' movable parts: say whose.
        let lent: Vec<String> = plan
            .guests
            .iter()
            .filter_map(|g| g.movable.as_ref().filter(|m| !c.memreserve && m.pool == c.name).map(|m| (g, m)))
            .map(|(g, m)| format!("{} {}", g.name, Mib(m.size)))
            .collect();
        let lent = if lent.is_empty() { String::new() } else { format!("; movable RAM of {}", lent.join(", ")) };
        rows.push(Row { range: c.range, what: format!("{kind} {}{flags}{lent}", c.name) });
    }
    rows.push(Row { range: plan.monitor_image, what: "monitor image".into() });
    for g in &machine.guests {
        for (kind, m) in [("kernel", &g.kernel), ("ramdisk", &g.ramdisk), ("device tree", &g.device_tree)] {
            if let Some(m) = m {
                rows.push(Row { range: m.range, what: format!("{} {kind} module {}", g.name, m.node) });
            }
        }
    }
    for g in &plan.guests {
        for e in &g.extents {
            rows.push(Row {
                range: e.pa_range(),
                what: format!("{} RAM, IPA {:#x}-{:#x}", g.name, e.ipa.as_u64(), e.ipa.as_u64() + e.size),
            });
        }
    }
    for r in plan.monitor_free.ranges() {
        rows.push(Row { range: *r, what: "free (the monitor's)".into() });
    }
    rows.sort_by_key(|r| (r.range.start(), r.range.end()));
    rows
}

pub fn text(dtb: &str, machine: &Machine, plan: &Plan) -> String {
    let mut o = String::new();
    let model = machine.model.as_deref().unwrap_or("no model");
    let _ = writeln!(o, "carve memory plan: {dtb} ({model})");
    let _ = writeln!(o);
    let _ = writeln!(o, "RAM");
    for r in &plan.ram {
        let _ = writeln!(o, "  {r}  {:>9}", Mib(r.size).to_string());
    }
    let _ = writeln!(
        o,
        "  total {}, {} CPU(s) in the tree",
        Mib(plan.ram.iter().map(|r| r.size).sum()),
        machine.cpus.len()
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "Physical map");
    for row in physical_rows(machine, plan) {
        let _ = writeln!(o, "  {}  {:>9}  {}", row.range, size_str(row.range.size), row.what);
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "Guests");
    if plan.guests.is_empty() {
        let _ = writeln!(o, "  none (add one with --guest SIZE)");
    }
    for g in &plan.guests {
        let _ = writeln!(
            o,
            "  {}: {} at IPA {:#x}-{:#x}, {} CPU(s) from CPU {}, {} extent(s)",
            g.name,
            Mib(g.size),
            g.ipa_base.as_u64(),
            g.ipa_base.as_u64() + g.size,
            g.cpus,
            g.first_cpu,
            g.extents.len()
        );
        for e in &g.extents {
            let _ =
                writeln!(o, "    IPA {:#012x} -> PA {:#012x}  {:>9}", e.ipa.as_u64(), e.pa.as_u64(), size_str(e.size));
        }
        if let Some(m) = &g.movable {
            let r = m.ipa_range();
            let _ = writeln!(
                o,
                "    movable: IPA {:#012x} - {:#012x} ({}) from CMA pool {}",
                r.start(),
                r.end(),
                Mib(m.size),
                m.pool
            );
        }
        if let Some(d) = &g.desc {
            for given in machine.given.iter().filter(|x| x.guest == d.path) {
                let windows: Vec<String> =
                    given.device.regs.iter().map(|r| format!("{:#x} ({})", r.start(), size_str(r.size))).collect();
                let spis: Vec<String> = given.spis.iter().map(u32::to_string).collect();
                let _ = writeln!(
                    o,
                    "    given {} at {}, interrupts: {}",
                    given.device.node,
                    windows.join(", "),
                    if spis.is_empty() { String::from("none") } else { spis.join(", ") }
                );
            }
            if let Some(args) = &d.bootargs {
                let _ = writeln!(o, "    bootargs \"{args}\"");
            }
        }
    }
    let _ = writeln!(o);
    let m = &plan.monitor;
    let _ = writeln!(o, "Monitor virtual map (Hyp stage-1; PAGE_OFFSET {} = PA {})", m.page_offset, m.phys_offset);
    let mut vrows: Vec<(u64, u64, String)> = Vec::new();
    for l in &m.lowmem {
        vrows.push((
            l.va.as_u64(),
            l.size,
            format!("lowmem  -> PA {:#x}-{:#x}", l.pa.as_u64(), l.pa.as_u64() + l.size),
        ));
    }
    for v in &m.vmalloc {
        let what = match v.source {
            VmallocSource::Hole => "vmalloc (in a hole of the linear map)",
            VmallocSource::Dedicated => "vmalloc (dedicated)",
        };
        vrows.push((v.va.as_u64(), v.size, what.to_string()));
    }
    vrows.push((m.vmemmap.start(), m.vmemmap.size, "vmemmap (page records, backed where RAM is)".into()));
    vrows.push((m.pkmap.start(), m.pkmap.size, "pkmap (kmap window for highmem)".into()));
    vrows.push((m.fixmap.start(), m.fixmap.size, "fixmap".into()));
    vrows.sort();
    for (va, size, what) in vrows {
        let _ = writeln!(o, "  {:#010x}-{:#010x}  {:>9}  {what}", va, va + size, size_str(size));
    }
    let _ = writeln!(
        o,
        "  lowmem {} (without holes the same RAM would get {}), highmem {}, vmalloc {} ({} of it in holes)",
        Mib(m.lowmem_total()),
        Mib(m.lowmem_without_holes),
        Mib(m.highmem_total()),
        Mib(m.vmalloc_total()),
        Mib(m.vmalloc_in_holes())
    );
    for h in &m.highmem {
        let _ = writeln!(o, "  highmem PA {h}  {}", size_str(h.size));
    }
    if !plan.warnings.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(o, "Warnings");
        for w in &plan.warnings {
            let _ = writeln!(o, "  {w}");
        }
    }
    o
}

fn size_str(b: u64) -> String {
    Size(b).to_string()
}

pub fn json(machine: &Machine, plan: &Plan) -> Value {
    let m = &plan.monitor;
    json!({
        "model": machine.model,
        "ram": plan.ram.iter().map(|r| json!({"base": r.start(), "size": r.size})).collect::<Vec<_>>(),
        "carveouts": plan.carveouts.iter().map(|c| json!({
            "name": c.name, "base": c.range.start(), "size": c.range.size,
            "no_map": c.no_map, "reusable": c.reusable, "dynamic": c.dynamic,
            "memreserve": c.memreserve, "compatible": c.compatible,
        })).collect::<Vec<_>>(),
        "monitor_image": {"base": plan.monitor_image.start(), "size": plan.monitor_image.size},
        "guests": plan.guests.iter().map(|g| json!({
            "name": g.name, "ipa_base": g.ipa_base.as_u64(), "size": g.size,
            "cpus": g.cpus, "first_cpu": g.first_cpu, "cpu_ids": g.cpu_ids,
            "extents": g.extents.iter().map(|e| json!({"ipa": e.ipa.as_u64(), "pa": e.pa.as_u64(), "size": e.size})).collect::<Vec<_>>(),
            "movable": g.movable.as_ref().map(|m| json!({"pool": m.pool, "ipa": m.ipa.as_u64(), "size": m.size})),
            "devices": machine.given.iter().filter(|x| g.desc.as_ref().is_some_and(|d| d.path == x.guest)).map(|x| json!({
                "node": x.device.node,
                "regs": x.device.regs.iter().map(|r| json!({"base": r.start(), "size": r.size})).collect::<Vec<_>>(),
                "interrupts": x.spis,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "monitor": {
            "page_offset": m.page_offset.as_u64(),
            "phys_offset": m.phys_offset.as_u64(),
            "lowmem": m.lowmem.iter().map(|l| json!({"va": l.va.as_u64(), "pa": l.pa.as_u64(), "size": l.size})).collect::<Vec<_>>(),
            "vmalloc": m.vmalloc.iter().map(|v| json!({"va": v.va.as_u64(), "size": v.size,
                "hole": v.source == VmallocSource::Hole})).collect::<Vec<_>>(),
            "highmem": m.highmem.iter().map(|h| json!({"pa": h.start(), "size": h.size})).collect::<Vec<_>>(),
            "vmemmap": {"va": m.vmemmap.start(), "size": m.vmemmap.size},
            "pkmap": {"va": m.pkmap.start(), "size": m.pkmap.size},
            "fixmap": {"va": m.fixmap.start(), "size": m.fixmap.size},
            "lowmem_total": m.lowmem_total(),
            "lowmem_without_holes": m.lowmem_without_holes,
            "free": plan.monitor_free.ranges().iter().map(|r| json!({"pa": r.start(), "size": r.size})).collect::<Vec<_>>(),
        },
        "warnings": plan.warnings,
    })
}
