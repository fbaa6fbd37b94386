//! Guests: each gets one dense IPA range backed by physical extents that skip everything else.
//!
//! Extents are chosen so stage-2 can use the largest blocks: each extent
//! starts at a physical address congruent to its IPA modulo 1 GiB when a whole
//! gibibyte fits, else modulo 2 MiB, and every extent but the last is a whole
//! number of 2 MiB so the next one stays congruent. Among equally aligned
//! candidates the largest piece wins (fewer extents), then the highest address
//! (low RAM stays near the monitor's image).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use super::{Carveout, PlanConfig, PlanError, RangeSet, DEFAULT_IPA_BASE};
use crate::addr::{Address, Ipa, IpaRange, Mib, PhysAddr, PhysRange, Size, PAGE_SIZE, SIZE_1G, SIZE_2M};
use crate::dt::machine::{Guest, Machine, MovableRequest};

/// One piece of a guest's RAM: `size` bytes at IPA `ipa` backed at `pa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub ipa: Ipa,
    pub pa: PhysAddr,
    pub size: u64,
}

impl Extent {
    pub fn pa_range(&self) -> PhysRange {
        PhysRange { base: self.pa, size: self.size }
    }
    pub fn ipa_range(&self) -> IpaRange {
        IpaRange { base: self.ipa, size: self.size }
    }
}

/// The part of a guest's RAM that free pages of a CMA pool back (DESIGN.md,
/// piece 5): `size` bytes at IPA `ipa`, the top of the guest's dense range.
/// Which pages is decided at run time, page by page, and may change while the
/// guest runs (a contiguous allocation moves them), so the plan names only
/// the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Movable {
    /// The pool: the name of a `reusable` `shared-dma-pool` carveout, as in [`super::Plan::carveouts`].
    pub pool: String,
    pub ipa: Ipa,
    pub size: u64,
}

impl Movable {
    pub fn ipa_range(&self) -> IpaRange {
        IpaRange { base: self.ipa, size: self.size }
    }
}

/// What the plan decided for one guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestPlan {
    pub name: String,
    pub ipa_base: Ipa,
    pub size: u64,
    pub cpus: u32,
    /// The machine CPU vCPU 0 runs on (`cpu_ids[0]`). When [`Self::cpus_contiguous`]
    /// (always, unless `carve,cpu-ids` names CPUs out of order or another
    /// guest's named CPUs split the free ones), vCPU `v` runs on `first_cpu + v`.
    pub first_cpu: u32,
    /// The machine CPU (an index into the `/cpus` nodes in tree order,
    /// [`Machine::cpus`]) each vCPU runs on, in vCPU order: `carve,cpu-ids`
    /// when the guest names them, else the lowest CPUs no other guest has.
    pub cpu_ids: Vec<u32>,
    /// In IPA order, contiguous from `ipa_base`, covering all of the guest's
    /// RAM but its movable part.
    pub extents: Vec<Extent>,
    /// The top of the guest's RAM backed by free pages of a CMA pool
    /// (`memory-region` + `carve,movable-memory`), chosen at run time; `None`
    /// when the guest asks for none.
    pub movable: Option<Movable>,
    /// The guest as the tree describes it (`None` for a `--guest` what-if).
    pub desc: Option<Guest>,
}

impl GuestPlan {
    pub fn ipa_range(&self) -> IpaRange {
        IpaRange { base: self.ipa_base, size: self.size }
    }

    /// Whether vCPU `v` runs on machine CPU `first_cpu + v` for every `v`.
    pub fn cpus_contiguous(&self) -> bool {
        self.cpu_ids.iter().zip(self.first_cpu..).all(|(&c, want)| c == want)
    }

    /// The vCPU that runs on machine CPU `cpu`, if this guest has one there.
    pub fn vcpu_on(&self, cpu: u32) -> Option<usize> {
        self.cpu_ids.iter().position(|&c| c == cpu)
    }

    /// The bytes of RAM the extents back: [`Self::size`] less the movable part.
    pub fn fixed_size(&self) -> u64 {
        self.size.saturating_sub(self.movable.as_ref().map_or(0, |m| m.size))
    }

    /// The physical address behind `ipa`, if an extent backs it. `None` for
    /// IPAs outside the guest's RAM, and for those in its movable part
    /// ([`Self::movable`]): which pool page backs those is decided at run
    /// time, and may change while the guest runs; the plan does not know it.
    pub fn pa_of(&self, ipa: Ipa) -> Option<PhysAddr> {
        self.extents
            .iter()
            .find(|e| e.ipa_range().contains(ipa.as_u64()))
            .and_then(|e| PhysAddr::from_u64(e.pa.as_u64() + (ipa.as_u64() - e.ipa.as_u64())))
    }
}

/// A guest to place.
struct Wanted {
    name: String,
    size: u64,
    cpus: u32,
    /// `carve,cpu-ids`, checked against the machine's CPUs and the other guests'.
    cpu_ids: Option<Vec<u32>>,
    ipa_base: Option<Ipa>,
    movable: Option<MovableRequest>,
    desc: Option<Guest>,
}

/// Places every guest; returns the plans and the RAM left to the monitor.
pub fn place(
    machine: &Machine,
    config: &PlanConfig,
    ram: &RangeSet,
    carveouts: &[Carveout],
    mut free: RangeSet,
    warnings: &mut Vec<String>,
) -> Result<(Vec<GuestPlan>, RangeSet), PlanError> {
    // The tree's guests, then the what-if ones: (name, bytes, CPUs, IPA base, description).
    let mut wanted: Vec<Wanted> = machine
        .guests
        .iter()
        .map(|g| Wanted {
            name: g.name.clone(),
            size: g.memory,
            cpus: g.cpus,
            cpu_ids: g.cpu_ids.clone(),
            ipa_base: g.ipa_base,
            movable: g.movable,
            desc: Some(g.clone()),
        })
        .collect();
    for (i, size) in config.extra_guests.iter().enumerate() {
        let name = format!("guest@{}", machine.guests.len() + i);
        wanted.push(Wanted { name, size: *size, cpus: 1, cpu_ids: None, ipa_base: None, movable: None, desc: None });
    }
    check_modules(machine, ram, carveouts, config.require_kernel, warnings)?;
    let mut owner = claim_named_cpus(machine, &wanted)?;

    let mut plans: Vec<GuestPlan> = Vec::new();
    for Wanted { name, size, cpus, cpu_ids, ipa_base, movable, desc } in wanted {
        if size % PAGE_SIZE != 0 {
            return Err(PlanError::new(
                name,
                format!("memory {} KiB is not a whole number of 4 KiB pages", size / 1024),
            ));
        }
        let cpu_ids = match cpu_ids {
            Some(ids) => ids,
            None => take_free_cpus(&mut owner, &name, cpus)?,
        };
        let base = match ipa_base {
            Some(b) => b,
            None => default_base(machine, ram, &name, size, warnings),
        };
        let ipa = IpaRange::new(base, size).ok_or_else(|| {
            PlanError::new(
                name.as_str(),
                format!("RAM at IPA {base} size {} runs past the 40-bit IPA space", Size(size)),
            )
        })?;
        if !base.is_aligned(PAGE_SIZE) {
            return Err(PlanError::new(name, format!("carve,ipa-base {base} is not 4 KiB aligned")));
        }
        check_devices(&name, machine, &ipa)?;
        let movable = match movable {
            Some(req) => Some(movable_part(machine, ram, carveouts, &plans, &name, &ipa, req)?),
            None => None,
        };
        // Only the fixed part comes out of free RAM: the pool's pages back the rest.
        let fixed = size - movable.as_ref().map_or(0, |m| m.size);
        let available = free.total().saturating_sub(config.monitor_min_free);
        let too_big = || too_big(fixed, movable.as_ref(), available, carveouts, ram, config, &plans);
        if fixed > available {
            return Err(PlanError::new(name, too_big()));
        }
        let extents = choose_extents(&mut free, base, fixed).ok_or_else(|| PlanError::new(name.as_str(), too_big()))?;
        let first_cpu = cpu_ids.first().copied().unwrap_or(0);
        plans.push(GuestPlan { name, ipa_base: base, size, cpus, first_cpu, cpu_ids, extents, movable, desc });
    }
    Ok((plans, free))
}

/// The guest's movable part, once `req` passes: the phandle names one
/// `/reserved-memory` node, planned as one carveout inside RAM that is a CMA
/// pool ([`Carveout::is_cma_pool`]), whose whole pages hold this guest's
/// movable bytes and those of the `earlier` guests naming it. The part is the
/// top `req.size` bytes of the guest's IPA range `ipa`.
fn movable_part(
    machine: &Machine,
    ram: &RangeSet,
    carveouts: &[Carveout],
    earlier: &[GuestPlan],
    name: &str,
    ipa: &IpaRange,
    req: MovableRequest,
) -> Result<Movable, PlanError> {
    let ph = req.region;
    // The reader refuses these; a machine built in code may still ask.
    if req.size == 0 || !req.size.is_multiple_of(PAGE_SIZE) || req.size > ipa.size {
        return Err(PlanError::new(
            name,
            format!(
                "carve,movable-memory {} is not a whole number of 4 KiB pages from 4 KiB up to its memory {}",
                Size(req.size),
                Size(ipa.size)
            ),
        ));
    }
    let mut nodes = machine.reserved.iter().filter(|r| r.phandle == Some(ph));
    let Some(node) = nodes.next() else {
        return Err(PlanError::new(
            name,
            format!(
                "memory-region <{ph:#x}> names no enabled /reserved-memory node: movable memory comes from a CMA pool there"
            ),
        ));
    };
    if let Some(other) = nodes.next() {
        return Err(PlanError::new(
            name,
            format!(
                "memory-region <{ph:#x}> is ambiguous: /reserved-memory nodes {} and {} both have that phandle",
                node.name, other.name
            ),
        ));
    }
    let ranges: Vec<&Carveout> = carveouts.iter().filter(|c| !c.memreserve && c.name == node.name).collect();
    let &[pool] = ranges.as_slice() else {
        return Err(PlanError::new(
            name,
            format!(
                "memory-region <{ph:#x}> names {}, which has {} ranges: a CMA pool that backs guest RAM is one",
                node.name,
                ranges.len()
            ),
        ));
    };
    if !pool.is_cma_pool() {
        return Err(PlanError::new(
            name,
            format!(
                "memory-region <{ph:#x}> names {} ({}), which is not a CMA pool: movable memory needs a reusable shared-dma-pool without no-map",
                pool.name,
                pool.not_a_pool_because()
            ),
        ));
    }
    if !ram.contains_range(&pool.range) {
        return Err(PlanError::new(
            name,
            format!(
                "memory-region <{ph:#x}> names {} at {}, which is not all RAM: a CMA pool's pages back guest RAM",
                pool.name, pool.range
            ),
        ));
    }
    let capacity = pool.whole_pages();
    let sharing: Vec<(&str, u64)> = earlier
        .iter()
        .filter_map(|g| g.movable.as_ref().filter(|m| m.pool == pool.name).map(|m| (g.name.as_str(), m.size)))
        .collect();
    let taken: u64 = sharing.iter().map(|(_, s)| s).sum();
    if taken + req.size > capacity {
        let mut msg = format!(
            "its movable {} does not fit in the CMA pool {}: {} of whole pages",
            Size(req.size),
            pool.name,
            Size(capacity)
        );
        if !sharing.is_empty() {
            let each: Vec<String> = sharing.iter().map(|(g, s)| format!("{g} {}", Size(*s))).collect();
            msg.push_str(&format!(", of which earlier guests take {} ({})", Size(taken), each.join(", ")));
        }
        return Err(PlanError::new(name, msg));
    }
    let at = Ipa::from_u64(ipa.end() - req.size).ok_or_else(|| {
        PlanError::new(name, format!("its movable part at IPA {:#x} is past the IPA space", ipa.end() - req.size))
    })?;
    Ok(Movable { pool: pool.name.clone(), ipa: at, size: req.size })
}

/// The machine's CPUs: its `/cpus` nodes, or one when it lists none (a guest
/// DTB can then describe only one vCPU).
fn machine_cpus(machine: &Machine) -> usize {
    machine.cpus.len().max(1)
}

/// Gives each guest that names its CPUs (`carve,cpu-ids`) those CPUs, before
/// any guest takes free ones: the owner of each machine CPU so far.
fn claim_named_cpus(machine: &Machine, wanted: &[Wanted]) -> Result<Vec<Option<String>>, PlanError> {
    let n = machine_cpus(machine);
    let mut owner: Vec<Option<String>> = alloc::vec![None; n];
    for w in wanted {
        for &id in w.cpu_ids.iter().flatten() {
            let Some(slot) = owner.get_mut(id as usize) else {
                let has = if machine.cpus.is_empty() {
                    String::from("lists no CPU in /cpus (one is assumed: CPU 0)")
                } else {
                    format!("has {n} CPU(s) (0-{}) in /cpus", n - 1)
                };
                return Err(PlanError::new(
                    w.name.as_str(),
                    format!("carve,cpu-ids names CPU {id}, but the machine {has}"),
                ));
            };
            if let Some(other) = slot {
                return Err(PlanError::new(w.name.as_str(), format!("CPU {id} is already {other}'s")));
            }
            *slot = Some(w.name.clone());
        }
    }
    Ok(owner)
}

/// The lowest `cpus` machine CPUs no guest has yet, now `name`'s.
fn take_free_cpus(owner: &mut [Option<String>], name: &str, cpus: u32) -> Result<Vec<u32>, PlanError> {
    let free: Vec<usize> = (0..owner.len()).filter(|&i| owner[i].is_none()).collect();
    if (cpus as usize) > free.len() {
        return Err(PlanError::new(
            name,
            format!("asks for {cpus} CPU(s), but only {} of the machine's {} are left", free.len(), owner.len()),
        ));
    }
    let mut ids = Vec::with_capacity(cpus as usize);
    for &i in &free[..cpus as usize] {
        owner[i] = Some(String::from(name));
        ids.push(i as u32);
    }
    Ok(ids)
}

/// `wants 2048 MiB, 1536 MiB free after carveouts (a@1 56 MiB, ...)`; `size`
/// is what the extents must back (the guest's RAM less its `movable` part).
fn too_big(
    size: u64,
    movable: Option<&Movable>,
    available: u64,
    carveouts: &[Carveout],
    ram: &RangeSet,
    config: &PlanConfig,
    earlier: &[GuestPlan],
) -> String {
    let mut taken: Vec<String> = carveouts
        .iter()
        .filter_map(|c| {
            let in_ram = ram.intersect(c.range).total();
            (in_ram > 0).then(|| format!("{} {}", c.name, Mib(in_ram)))
        })
        .collect();
    if taken.len() > 6 {
        let rest = taken.len() - 5;
        taken.truncate(5);
        taken.push(format!("and {rest} more"));
    }
    let mut msg = format!("wants {}", Mib(size));
    if let Some(m) = movable {
        msg.push_str(&format!(" (besides {} movable from {})", Mib(m.size), m.pool));
    }
    msg.push_str(&format!(", {} free after carveouts", Mib(available)));
    if !taken.is_empty() {
        msg.push_str(&format!(" ({})", taken.join(", ")));
    }
    msg.push_str(&format!(", the monitor (image and {} kept free)", Mib(config.monitor_min_free)));
    if !earlier.is_empty() {
        let g: Vec<String> = earlier.iter().map(|g| format!("{} {}", g.name, Mib(g.fixed_size()))).collect();
        msg.push_str(&format!(" and earlier guests ({})", g.join(", ")));
    }
    msg
}

/// Modules must be in RAM, apart from each other, and outside carveouts but
/// plain reservations; a guest needs a kernel.
///
/// A loader reserves what it loaded: U-Boot lists the initrd as a
/// `/memreserve/` entry, and some boards also list it under `/reserved-memory`
/// without flags. A module lying wholly inside such plain reservations
/// (neither `no-map` nor `reusable`) is planned where it is, with a warning:
/// the range is reserved and held, so no guest's extents and none of the
/// monitor's free memory come from it. A module that touches a `no-map`
/// region (memory the OS may not map) or a `reusable` one (lent out as a CMA
/// pool), or lies only partly inside reservations, is refused.
fn check_modules(
    machine: &Machine,
    ram: &RangeSet,
    carveouts: &[Carveout],
    require_kernel: bool,
    warnings: &mut Vec<String>,
) -> Result<(), PlanError> {
    let mut seen: Vec<(&str, PhysRange)> = Vec::new();
    for g in &machine.guests {
        if require_kernel && g.kernel.is_none() {
            return Err(PlanError::new(g.path.as_str(), "has no multiboot,kernel module: nothing to boot"));
        }
        for m in [&g.kernel, &g.ramdisk, &g.device_tree].into_iter().flatten() {
            if !ram.contains_range(&m.range) {
                return Err(PlanError::new(m.node.as_str(), format!("{} is not inside RAM", m.range)));
            }
            if let Some(w) = module_in_reservations(m.node.as_str(), m.range, carveouts)? {
                warnings.push(w);
            }
            if let Some((other, r)) = seen.iter().find(|(_, r)| r.overlaps(&m.range)) {
                return Err(PlanError::new(m.node.as_str(), format!("{} overlaps the module {other} {r}", m.range)));
            }
            seen.push((m.node.as_str(), m.range));
        }
    }
    Ok(())
}

/// The module `node` at `range` against the carveouts: `None` when it overlaps
/// none, a warning when it lies wholly inside plain reservations, else the
/// refusal. [`super::verify`] checks the same rule on the finished plan.
pub fn module_in_reservations(
    node: &str,
    range: PhysRange,
    carveouts: &[Carveout],
) -> Result<Option<String>, PlanError> {
    let over: Vec<&Carveout> = carveouts.iter().filter(|c| c.range.overlaps(&range)).collect();
    let Some(first) = over.first() else { return Ok(None) };
    if let Some(c) = over.iter().find(|c| !c.is_plain()) {
        return Err(PlanError::new(
            node,
            format!(
                "{range} overlaps the carveout {} {} ({}), which is not a plain reservation: only one without no-map and reusable may hold what a loader put there",
                c.name,
                c.range,
                c.flags()
            ),
        ));
    }
    let mut outside = RangeSet::from_ranges([range]);
    for c in &over {
        outside.remove(c.range);
    }
    if !outside.is_empty() {
        return Err(PlanError::new(
            node,
            format!(
                "{range} lies only partly inside the reservation {} {} ({} of it outside every reservation): a module lies wholly inside reservations or outside all of them",
                first.name,
                first.range,
                Size(outside.total())
            ),
        ));
    }
    let more = match over.len() {
        1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    Ok(Some(format!(
        "{node}: {range} lies inside the reservation {} {}{more}: planned where the loader put it, and kept out of every guest and of the monitor's free memory",
        first.name, first.range
    )))
}

/// 0x40000000, unless the guest's RAM there would cover a device it sees: then
/// the machine's own RAM base, where a native kernel finds RAM and no device can be.
fn default_base(machine: &Machine, ram: &RangeSet, name: &str, size: u64, warnings: &mut Vec<String>) -> Ipa {
    let fits = |b: Ipa| IpaRange::new(b, size).is_some_and(|r| check_devices(name, machine, &r).is_ok());
    if fits(DEFAULT_IPA_BASE) {
        return DEFAULT_IPA_BASE;
    }
    let native = ram.ranges().first().and_then(|r| Ipa::from_u64(r.start() & !(SIZE_2M - 1)));
    match native {
        Some(b) if fits(b) => {
            warnings.push(format!(
                "{name}: RAM at IPA {DEFAULT_IPA_BASE} would cover a device the guest sees; it starts at {b}, the machine's own RAM base"
            ));
            b
        }
        _ => DEFAULT_IPA_BASE,
    }
}

/// A guest sees the devices passed to it at their physical addresses: its RAM must not cover them.
fn check_devices(name: &str, machine: &Machine, ipa: &IpaRange) -> Result<(), PlanError> {
    let mut windows: Vec<(&str, &str, PhysRange)> = Vec::new();
    if let Some(u) = &machine.uart {
        windows.extend(u.regs.iter().map(|r| ("the UART", u.node.as_str(), *r)));
    }
    if let Some(g) = &machine.gic {
        windows.push(("the GIC distributor", g.node.as_str(), g.distributor));
        windows.push(("the GIC CPU interface", g.node.as_str(), g.cpu_interface));
    }
    for (what, node, r) in windows {
        if ipa.start() < r.end() && r.start() < ipa.end() {
            return Err(PlanError::new(
                name,
                format!(
                    "its RAM at IPA {:#x}-{:#x} covers {what} ({node} at {:#x}), which the guest sees at that address",
                    ipa.start(),
                    ipa.end(),
                    r.start()
                ),
            ));
        }
    }
    Ok(())
}

/// The first physical address at or after `from` congruent to `ipa` modulo `align`.
fn congruent_start(from: u64, ipa: u64, align: u64) -> Option<u64> {
    let want = ipa & (align - 1);
    let have = from & (align - 1);
    from.checked_add(want.wrapping_sub(have) & (align - 1))
}

/// Takes `size` bytes for IPAs `[base, base + size)` out of `free`. `None` when it does not fit.
pub fn choose_extents(free: &mut RangeSet, base: Ipa, size: u64) -> Option<Vec<Extent>> {
    let mut extents = Vec::new();
    let mut cursor = base.as_u64();
    let mut remaining = size;
    let mut trial = free.clone();
    while remaining > 0 {
        // (alignment level, usable bytes, pa): the best candidate.
        let mut best: Option<(u64, u64, u64)> = None;
        for f in trial.ranges() {
            for align in [SIZE_1G, SIZE_2M, PAGE_SIZE] {
                let Some(pa) = congruent_start(f.start(), cursor, align) else { continue };
                if pa >= f.end() {
                    continue;
                }
                let mut usable = (f.end() - pa).min(remaining);
                if usable < remaining && align >= SIZE_2M {
                    // Keep the next extent congruent: take whole 2 MiB.
                    usable &= !(SIZE_2M - 1);
                }
                // A 1 GiB (2 MiB) congruence is only worth it if a block that big fits.
                let worth = usable >= align || usable == remaining;
                if usable == 0 || !worth {
                    continue;
                }
                let cand = (align, usable, pa);
                if best.is_none_or(|b| (cand.0, cand.1, cand.2) > (b.0, b.1, b.2)) {
                    best = Some(cand);
                }
                break;
            }
        }
        let (_, take, pa) = best?;
        let pa_r = PhysRange::from_raw(pa, take)?;
        extents.push(Extent { ipa: Ipa::from_u64(cursor)?, pa: pa_r.base, size: take });
        trial.remove(pa_r);
        cursor += take;
        remaining -= take;
    }
    *free = trial;
    Some(extents)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(rs: &[(u64, u64)]) -> RangeSet {
        RangeSet::from_ranges(rs.iter().map(|&(a, s)| PhysRange::from_raw(a, s).unwrap()))
    }

    #[test]
    fn two_carveout_virt_gives_two_2m_extents() {
        // -m 1280 at 0x40000000, no-map at 0x50000000 and 0x60000000 (128 MiB each), monitor in the first 8 MiB.
        let mut free = set(&[(0x4080_0000, 0x0f80_0000), (0x5800_0000, 0x0800_0000), (0x6800_0000, 0x2800_0000)]);
        let e = choose_extents(&mut free, DEFAULT_IPA_BASE, 768 << 20).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0], Extent { ipa: Ipa::new(0x4000_0000), pa: PhysAddr::new(0x6800_0000), size: 640 << 20 });
        assert_eq!(e[1], Extent { ipa: Ipa::new(0x6800_0000), pa: PhysAddr::new(0x5800_0000), size: 128 << 20 });
        assert_eq!(free.total(), 0x0f80_0000);
    }

    #[test]
    fn gibibyte_congruence_above_4g() {
        let mut free = set(&[(0x4000_0000, 0x1000_0000), (0x1_0000_0000, 0xc000_0000)]);
        let e = choose_extents(&mut free, DEFAULT_IPA_BASE, 2 << 30).unwrap();
        assert_eq!(e, [Extent { ipa: Ipa::new(0x4000_0000), pa: PhysAddr::new(0x1_0000_0000), size: 2 << 30 }]);
    }

    #[test]
    fn too_little_leaves_free_untouched() {
        let mut free = set(&[(0x4000_0000, 0x100_0000)]);
        let before = free.clone();
        assert!(choose_extents(&mut free, DEFAULT_IPA_BASE, 0x200_0000).is_none());
        assert_eq!(free, before);
    }

    proptest! {
        /// Any layout: extents are disjoint, inside the free set, IPA-contiguous, exactly the size;
        /// and congruent mod 2 MiB whenever the free set and size are 2 MiB-granular.
        #[test]
        fn extents_are_sound(
            pieces in proptest::collection::vec((0u64..512, 1u64..64), 1..12),
            size_pages in 1u64..4096,
            two_meg in any::<bool>(),
        ) {
            let unit = if two_meg { SIZE_2M } else { PAGE_SIZE };
            let free0 = set(&pieces.iter().map(|&(a, s)| (0x4000_0000 + a * unit * 4, s * unit)).collect::<Vec<_>>());
            let size = size_pages * unit;
            let mut free = free0.clone();
            match choose_extents(&mut free, DEFAULT_IPA_BASE, size) {
                None => prop_assert!(free0.total() < size || free == free0),
                Some(ext) => {
                    prop_assert_eq!(ext.iter().map(|e| e.size).sum::<u64>(), size);
                    let mut cursor = DEFAULT_IPA_BASE.as_u64();
                    let mut used = RangeSet::new();
                    for e in &ext {
                        prop_assert_eq!(e.ipa.as_u64(), cursor);
                        cursor += e.size;
                        prop_assert!(free0.contains_range(&e.pa_range()));
                        prop_assert!(!used.overlaps(&e.pa_range()));
                        used.insert(e.pa_range());
                        if two_meg {
                            prop_assert_eq!(e.pa.as_u64() % SIZE_2M, e.ipa.as_u64() % SIZE_2M);
                        }
                    }
                    prop_assert_eq!(free.total() + size, free0.total());
                }
            }
        }
    }
}
