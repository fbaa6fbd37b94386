//! Checks a plan against the promises it makes, independently of how it was made.
//!
//! Used by the property tests, by the run over every board DTB, and by the
//! monitor before it acts on a plan: a broken invariant is a bug in carve, and
//! this says which one in a sentence instead of letting a guest see it.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::guests::module_in_reservations;
use super::layout::VmallocSource;
use super::{Plan, RangeSet};
use crate::addr::{Address, IpaRange, PhysRange, SIZE_2M};

/// `Ok` when every invariant holds; else the first one broken.
pub fn verify(plan: &Plan) -> Result<(), String> {
    let ram = RangeSet::from_ranges(plan.ram.iter().copied());
    let mut taken = RangeSet::new();
    for c in &plan.carveouts {
        taken.insert(c.range);
    }
    if taken.overlaps(&plan.monitor_image) {
        return Err(format!("the monitor image {} overlaps a carveout", plan.monitor_image));
    }
    taken.insert(plan.monitor_image);
    // Movable bytes lent from each pool, by pool name.
    let mut lent: Vec<(&str, u64)> = Vec::new();
    for g in &plan.guests {
        let movable = g.movable.as_ref().map_or(0, |m| m.size);
        let Some(fixed) = g.size.checked_sub(movable) else {
            return Err(format!("{}: movable part of {movable:#x} bytes, the guest has {:#x}", g.name, g.size));
        };
        let mut cursor = g.ipa_base.as_u64();
        let mut total = 0u64;
        for e in &g.extents {
            if e.ipa.as_u64() != cursor {
                return Err(format!("{}: extent at IPA {:#x} does not follow {:#x}", g.name, e.ipa.as_u64(), cursor));
            }
            if e.size == 0 || e.size % 4096 != 0 || !e.pa.is_aligned(4096) {
                return Err(format!("{}: extent at PA {} is not whole pages", g.name, e.pa));
            }
            let r: PhysRange = e.pa_range();
            if !ram.contains_range(&r) {
                return Err(format!("{}: extent {} is not inside one RAM bank", g.name, r));
            }
            if taken.overlaps(&r) {
                return Err(format!("{}: extent {} overlaps a carveout, the monitor or another guest", g.name, r));
            }
            if plan.monitor_free.overlaps(&r) {
                return Err(format!("{}: extent {} is also counted as the monitor's free RAM", g.name, r));
            }
            taken.insert(r);
            cursor += e.size;
            total += e.size;
        }
        if total != fixed {
            return Err(match g.movable {
                None => format!("{}: extents cover {total:#x} bytes, the guest has {:#x}", g.name, g.size),
                Some(_) => format!(
                    "{}: extents cover {total:#x} bytes, the guest has {fixed:#x} besides its movable {movable:#x}",
                    g.name
                ),
            });
        }
        if let Some(m) = &g.movable {
            // The rest of the guest's range, from a pool that is one CMA pool carveout inside RAM.
            if m.size == 0 || m.size % 4096 != 0 {
                return Err(format!("{}: movable part of {:#x} bytes is not whole pages", g.name, m.size));
            }
            if m.ipa.as_u64() != cursor || IpaRange::new(m.ipa, m.size).is_none() {
                return Err(format!(
                    "{}: movable part at IPA {:#x} does not follow the extents, which end at {cursor:#x}",
                    g.name,
                    m.ipa.as_u64()
                ));
            }
            let pools: Vec<_> = plan.carveouts.iter().filter(|c| !c.memreserve && c.name == m.pool).collect();
            let [pool] = pools.as_slice() else {
                return Err(format!("{}: movable pool {} is {} carveout(s), not one", g.name, m.pool, pools.len()));
            };
            if !pool.is_cma_pool() || !ram.contains_range(&pool.range) {
                return Err(format!("{}: movable pool {} {} is not a CMA pool inside RAM", g.name, m.pool, pool.range));
            }
            match lent.iter_mut().find(|(p, _)| *p == m.pool) {
                Some((_, n)) => *n += m.size,
                None => lent.push((m.pool.as_str(), m.size)),
            }
        }
    }
    // Boot modules: in RAM, apart from each other, the monitor's image and its
    // free RAM and every guest's extents; in no carveout but plain
    // reservations, and then wholly inside them (the loader reserved them).
    let mut modules: Vec<(&str, PhysRange)> = Vec::new();
    for g in &plan.guests {
        let Some(d) = &g.desc else { continue };
        for m in [&d.kernel, &d.ramdisk, &d.device_tree].into_iter().flatten() {
            let (node, r) = (m.node.as_str(), m.range);
            if !ram.contains_range(&r) {
                return Err(format!("module {node} {r} is not inside RAM"));
            }
            if let Err(e) = module_in_reservations(node, r, &plan.carveouts) {
                return Err(format!("module {e}"));
            }
            if r.overlaps(&plan.monitor_image) {
                return Err(format!("module {node} {r} overlaps the monitor image {}", plan.monitor_image));
            }
            if plan.monitor_free.overlaps(&r) {
                return Err(format!("module {node} {r} is also counted as the monitor's free RAM"));
            }
            if let Some(o) = plan.guests.iter().find(|o| o.extents.iter().any(|e| e.pa_range().overlaps(&r))) {
                return Err(format!("module {node} {r} overlaps {}'s RAM", o.name));
            }
            if let Some((other, _)) = modules.iter().find(|(_, o)| o.overlaps(&r)) {
                return Err(format!("module {node} {r} overlaps the module {other}"));
            }
            modules.push((node, r));
        }
    }
    for (name, bytes) in lent {
        let capacity = plan.carveouts.iter().find(|c| !c.memreserve && c.name == name).map_or(0, |c| c.whole_pages());
        if bytes > capacity {
            return Err(format!("guests' movable parts take {bytes:#x} bytes of pool {name}, which has {capacity:#x}"));
        }
    }
    for r in plan.monitor_free.ranges() {
        if !ram.contains_range(r) {
            return Err(format!("monitor free RAM {r} is not RAM"));
        }
        if let Some(c) = plan.carveouts.iter().find(|c| c.range.overlaps(r)) {
            return Err(format!("monitor free RAM {r} overlaps the carveout {} {}", c.name, c.range));
        }
        if r.overlaps(&plan.monitor_image) {
            return Err(format!("monitor free RAM {r} overlaps the monitor image {}", plan.monitor_image));
        }
    }
    // The linear map: only RAM that is not no-map, VA-contiguous from PAGE_OFFSET with holes as vmalloc.
    let m = &plan.monitor;
    let mut no_map = RangeSet::new();
    for c in plan.carveouts.iter().filter(|c| c.no_map) {
        no_map.insert(c.range);
    }
    for l in &m.lowmem {
        let r = PhysRange { base: l.pa, size: l.size };
        if !ram.contains_range(&r) || no_map.overlaps(&r) {
            return Err(format!("lowmem maps {r}, which is not mappable RAM"));
        }
        let va_off = l.va.as_u64() - m.page_offset.as_u64();
        if l.pa.as_u64() - m.phys_offset.as_u64() != va_off {
            return Err(format!("lowmem at VA {} is not linear (PA {})", l.va, l.pa));
        }
    }
    let hole_total: u64 = m.vmalloc.iter().filter(|v| v.source == VmallocSource::Hole).map(|v| v.size).sum();
    let dedicated: u64 = m.vmalloc.iter().filter(|v| v.source == VmallocSource::Dedicated).map(|v| v.size).sum();
    let wanted = m.config.vmalloc_size.saturating_sub(hole_total).max(m.config.vmalloc_min_dedicated);
    if dedicated + SIZE_2M <= wanted && m.highmem_total() > 0 {
        return Err(format!("dedicated vmalloc {dedicated:#x} is smaller than the {wanted:#x} the budget leaves"));
    }
    if m.lowmem_end.as_u64() > m.vmemmap.start() {
        return Err(String::from("the linear map runs into the vmemmap"));
    }
    Ok(())
}
