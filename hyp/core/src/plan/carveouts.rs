//! Carveouts: static reserved ranges checked against each other, dynamic ones placed.
//!
//! Dynamic regions (`size`, `alignment`, `alloc-ranges`) are placed in tree
//! order, each at the highest aligned address inside its allocation ranges that
//! overlaps no static region, no region placed before it, no boot module and
//! not the monitor: the same top-down policy Linux's memblock uses, so a guest
//! sees them where a native kernel would have put them. Without
//! `alloc-ranges`, a region goes below 4 GiB (where 32-bit DMA reaches).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::{PlanError, RangeSet};
use crate::addr::{PhysRange, Size, SIZE_4G};
use crate::dt::machine::{Machine, ReservedKind};

/// One reserved physical range, as the plan keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Carveout {
    /// The node name, e.g. `ipu-pool@50000000`, or `/memreserve/ #0`.
    pub name: String,
    pub range: PhysRange,
    pub no_map: bool,
    pub reusable: bool,
    pub compatible: Option<String>,
    /// Placed by the plan (`size`), not given (`reg`).
    pub dynamic: bool,
    pub memreserve: bool,
}

impl Carveout {
    /// Whether the contiguous allocator makes a pool of it: `reusable`, not
    /// `no-map`, `compatible = "shared-dma-pool"`. These are the carveouts
    /// [`crate::mm::CmaPool::from_plan`] takes, and the only ones a guest's
    /// movable memory ([`super::Movable`]) may come from.
    pub fn is_cma_pool(&self) -> bool {
        self.reusable && !self.no_map && self.compatible.as_deref() == Some(crate::mm::cma::SHARED_DMA_POOL)
    }

    /// Why it is not a CMA pool, e.g. `no-map, not reusable, no compatible`; empty when it is one.
    pub fn not_a_pool_because(&self) -> String {
        let mut why: Vec<String> = Vec::new();
        if self.no_map {
            why.push("no-map".into());
        }
        if !self.reusable {
            why.push("not reusable".into());
        }
        match self.compatible.as_deref() {
            Some(crate::mm::cma::SHARED_DMA_POOL) => {}
            Some(other) => why.push(format!("compatible {other:?}")),
            None => why.push("no compatible".into()),
        }
        why.join(", ")
    }

    /// The bytes of the whole 4 KiB pages inside its range (what a CMA pool over it holds).
    pub fn whole_pages(&self) -> u64 {
        let start = self.range.start().next_multiple_of(crate::addr::PAGE_SIZE);
        let end = self.range.end() & !(crate::addr::PAGE_SIZE - 1);
        end.saturating_sub(start)
    }

    /// A plain reservation: neither `no-map` nor `reusable` (a `/memreserve/`
    /// entry, say). It is RAM the OS maps but does not allocate: a boot module
    /// may lie in one ([`super::guests::module_in_reservations`]).
    pub fn is_plain(&self) -> bool {
        !self.no_map && !self.reusable
    }

    fn conflicts_with(&self, other: &Carveout) -> bool {
        (self.no_map && other.reusable) || (self.reusable && other.no_map)
    }

    /// `no-map`, `reusable`, both, or `reserved` (a plain reservation), for messages.
    pub fn flags(&self) -> &'static str {
        match (self.no_map, self.reusable) {
            (true, true) => "no-map and reusable",
            (true, false) => "no-map",
            (false, true) => "reusable",
            (false, false) => "reserved",
        }
    }
}

/// Checks and places every reserved region. `held` is what must not be
/// overlapped by dynamic placement (boot modules, the monitor's fixed image).
pub fn place(
    machine: &Machine,
    ram: &RangeSet,
    held: &RangeSet,
    warnings: &mut Vec<String>,
) -> Result<Vec<Carveout>, PlanError> {
    let mut out: Vec<Carveout> = Vec::new();
    for r in &machine.reserved {
        let ReservedKind::Static(ranges) = &r.kind else { continue };
        if r.no_map && r.reusable {
            return Err(PlanError::new(
                r.name.as_str(),
                "is both no-map and reusable: a region the OS may not map cannot be lent to it",
            ));
        }
        for range in ranges {
            let c = Carveout {
                name: r.name.clone(),
                range: *range,
                no_map: r.no_map,
                reusable: r.reusable,
                compatible: r.compatible.clone(),
                dynamic: false,
                memreserve: r.memreserve,
            };
            let in_ram = ram.intersect(*range).total();
            if in_ram == 0 {
                warnings.push(format!("{}: {} lies outside RAM: nothing to keep out of it", c.name, c.range));
            } else if in_ram < range.size {
                warnings.push(format!(
                    "{}: {} lies partly outside RAM: {} of it is RAM and kept out",
                    c.name,
                    c.range,
                    Size(in_ram)
                ));
            }
            check_against(&c, &out, warnings)?;
            out.push(c);
        }
    }
    for r in &machine.reserved {
        let ReservedKind::Dynamic { size, alignment, alloc_ranges } = &r.kind else { continue };
        let within: Vec<PhysRange> = if alloc_ranges.is_empty() {
            let low = PhysRange::from_bounds(0, SIZE_4G).expect("4 GiB fits");
            if ram.intersect(low).is_empty() {
                ram.ranges().to_vec()
            } else {
                alloc::vec![low]
            }
        } else {
            alloc_ranges.clone()
        };
        let mut free = RangeSet::new();
        for w in &within {
            for x in ram.intersect(*w).ranges() {
                free.insert(*x);
            }
        }
        for c in &out {
            free.remove(c.range);
        }
        free.remove_all(held);
        let spot = free.ranges().iter().rev().find_map(|f| {
            // Highest aligned start in `f` with room for `size`.
            let last = f.end().checked_sub(*size)?;
            let start = last & !(alignment - 1);
            (start >= f.start()).then(|| PhysRange::from_raw(start, *size)).flatten()
        });
        let Some(range) = spot else {
            let largest = free.ranges().iter().map(|f| f.size).max().unwrap_or(0);
            let places: Vec<String> = within.iter().map(|w| format!("{w}")).collect();
            return Err(PlanError::new(
                r.name.as_str(),
                format!(
                    "size {} (alignment {}) has no room left in its alloc-ranges {} (largest free piece {})",
                    Size(*size),
                    Size(*alignment),
                    places.join(", "),
                    Size(largest)
                ),
            ));
        };
        out.push(Carveout {
            name: r.name.clone(),
            range,
            no_map: r.no_map,
            reusable: r.reusable,
            compatible: r.compatible.clone(),
            dynamic: true,
            memreserve: false,
        });
    }
    out.sort_by(|a, b| (a.range.start(), &a.name).cmp(&(b.range.start(), &b.name)));
    Ok(out)
}

/// Refuses `c` if it overlaps a placed region with conflicting flags; warns
/// once (naming the first, counting the rest) if it overlaps some with the same flags.
fn check_against(c: &Carveout, placed: &[Carveout], warnings: &mut Vec<String>) -> Result<(), PlanError> {
    let mut merged: Option<&Carveout> = None;
    let mut more = 0usize;
    for o in placed.iter().filter(|o| o.range.overlaps(&c.range)) {
        if c.conflicts_with(o) {
            return Err(PlanError::new(
                c.name.as_str(),
                format!(
                    "{} ({}) overlaps {} {} ({}): the flags conflict",
                    c.range,
                    c.flags(),
                    o.name,
                    o.range,
                    o.flags()
                ),
            ));
        }
        if c.memreserve || o.memreserve {
            continue; // U-Boot lists the initrd both ways: not worth a warning.
        }
        if merged.is_none() {
            merged = Some(o);
        } else {
            more += 1;
        }
    }
    if let Some(o) = merged {
        let also = if more > 0 { format!(" (and {more} more)") } else { String::new() };
        warnings
            .push(format!("{}: {} overlaps {} {}{also} with the same flags: merged", c.name, c.range, o.name, o.range));
    }
    Ok(())
}
