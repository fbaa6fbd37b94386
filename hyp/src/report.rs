//! The memory map the monitor decided, logged before any guest runs.

use carve_core::addr::Address;
use carve_core::dt::Machine;
use carve_core::plan::layout::VmallocSource;
use carve_core::plan::Plan;

const MIB: u64 = 1 << 20;

/// Logs RAM, carveouts, the monitor's place, each guest's extents and the monitor's virtual map.
pub fn log_plan(machine: &Machine, plan: &Plan) {
    defmt::info!(
        "map: machine \"{=str}\", {=usize} CPU(s), {=usize} guest(s) in /chosen",
        machine.model.as_deref().unwrap_or("?"),
        machine.cpus.len(),
        machine.guests.len()
    );
    for r in &plan.ram {
        defmt::info!("map: RAM        {=u64:#011x}-{=u64:#011x} {=u64} MiB", r.start(), r.end(), r.size / MIB);
    }
    for c in &plan.carveouts {
        defmt::info!(
            "map: carveout   {=u64:#011x}-{=u64:#011x} {=u64} KiB {=str}{=str}{=str}{=str}",
            c.range.start(),
            c.range.end(),
            c.range.size / 1024,
            c.name.as_str(),
            if c.no_map { " no-map" } else { "" },
            if c.reusable { " reusable" } else { "" },
            if c.dynamic { " (placed)" } else { "" }
        );
    }
    let m = plan.monitor_image;
    defmt::info!("map: monitor    {=u64:#011x}-{=u64:#011x} image, stacks, tables, heap", m.start(), m.end());
    for g in &plan.guests {
        defmt::info!(
            "map: {=str}: {=u64} MiB at IPA {=u64:#011x}-{=u64:#011x}, {=u32} CPU(s), {=usize} extent(s)",
            g.name.as_str(),
            g.size / MIB,
            g.ipa_base.as_u64(),
            g.ipa_base.as_u64() + g.size,
            g.cpus,
            g.extents.len()
        );
        for e in &g.extents {
            defmt::info!(
                "map:   IPA {=u64:#011x} -> PA {=u64:#011x} {=u64} MiB",
                e.ipa.as_u64(),
                e.pa.as_u64(),
                e.size / MIB
            );
        }
        if let Some(m) = &g.movable {
            defmt::info!(
                "map:   IPA {=u64:#011x} -> CMA pool {=str}, {=u64} KiB movable (lent page by page at run time)",
                m.ipa.as_u64(),
                m.pool.as_str(),
                m.size / 1024
            );
        }
        let path = g.desc.as_ref().map(|d| d.path.as_str());
        for given in machine.given.iter().filter(|x| Some(x.guest.as_str()) == path) {
            for r in &given.device.regs {
                defmt::info!(
                    "map:   given {=str}: PA {=u64:#011x} {=u64} KiB, interrupts {=[?]}",
                    given.device.node.as_str(),
                    r.start(),
                    r.size.div_ceil(1024),
                    given.spis.as_slice()
                );
            }
        }
    }
    defmt::info!("map: monitor free RAM {=u64} MiB", plan.monitor_free.total() / MIB);
    let l = &plan.monitor;
    for r in &l.lowmem {
        defmt::info!(
            "vmap: {=u32:#010x}-{=u32:#010x} lowmem -> PA {=u64:#011x} ({=u64} MiB)",
            r.va.raw(),
            (r.va.as_u64() + r.size) as u32,
            r.pa.as_u64(),
            r.size / MIB
        );
    }
    for v in &l.vmalloc {
        defmt::info!(
            "vmap: {=u32:#010x}-{=u32:#010x} vmalloc {=str} ({=u64} MiB)",
            v.va.raw(),
            (v.va.as_u64() + v.size) as u32,
            if v.source == VmallocSource::Hole { "in a no-map hole" } else { "dedicated" },
            v.size / MIB
        );
    }
    defmt::info!("vmap: {=u32:#010x} vmemmap ({=u64} MiB)", l.vmemmap.base.raw(), l.vmemmap.size / MIB);
    defmt::info!("vmap: {=u32:#010x} pkmap ({=u64} MiB)", l.pkmap.base.raw(), l.pkmap.size / MIB);
    defmt::info!("vmap: {=u32:#010x} fixmap", l.fixmap.base.raw());
    defmt::info!(
        "vmap: lowmem {=u64} MiB (without holes: {=u64} MiB), highmem {=u64} MiB, vmalloc {=u64} MiB ({=u64} MiB in holes)",
        l.lowmem_total() / MIB,
        l.lowmem_without_holes / MIB,
        l.highmem_total() / MIB,
        l.vmalloc_total() / MIB,
        l.vmalloc_in_holes() / MIB
    );
    for w in &plan.warnings {
        defmt::warn!("plan: {=str}", w.as_str());
    }
}
