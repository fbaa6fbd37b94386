//! The `carve.selftest=mm` self-tests and benchmarks of the monitor's memory (only in a `selftest` build).
//!
//! Each part logs `mm-selftest: NAME: PASS`, `FAIL`, or `SKIPPED (why)` when
//! the machine cannot show it (no RAM above 4 GiB, no CMA pool): a skipped
//! part did not run and is not counted as a pass. The last line counts them.
//! `tests/mm.rs` runs them on machines that make each part possible, and
//! `scripts/bench-mm` prints the `mm-bench:` figures (instructions under
//! `-icount shift=0`).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use carve_core::addr::{Address, PhysAddr, PhysRange, PAGE_SIZE};
use carve_core::dt::Machine;
use carve_core::mm::{Attrs, KmapAtomic, Owner, PageTable, Pfn, Pkmap, Stage2};
use carve_core::plan::layout::VmallocSource;
use carve_core::plan::Plan;

use super::{cma, instructions, log_meminfo, vfree, vmalloc, with_page, Figures, CMA, VMALLOC};
use crate::arch;
use crate::arch::memmap::{self, MEM};
use crate::arch::mmu;

/// How one part of the self-tests went.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Verdict {
    Pass,
    Fail,
    /// The machine cannot show this part (no RAM above 4 GiB, no CMA pool, ...): it did not run.
    Skipped,
}

/// Logs and returns the verdict of part `name`.
fn verdict(name: &str, ok: bool) -> Verdict {
    if ok {
        defmt::info!("mm-selftest: {=str}: PASS", name);
        Verdict::Pass
    } else {
        defmt::error!("mm-selftest: {=str}: FAIL", name);
        Verdict::Fail
    }
}

/// Logs that part `name` did not run, and why.
fn skipped(name: &str, why: &str) -> Verdict {
    defmt::info!("mm-selftest: {=str}: SKIPPED ({=str})", name, why);
    Verdict::Skipped
}

fn free_pages() -> u64 {
    MEM.lock().as_ref().map(|m| m.buddy.free_pages()).unwrap_or(0)
}

fn owner_pages(o: Owner) -> u64 {
    MEM.lock().as_ref().map(|m| m.buddy.owner_pages(o)).unwrap_or(0)
}

/// ioremap of the console UART (a PL011), reading its PeriphID0 (0x11), then iounmap.
fn test_ioremap(machine: &Machine) -> Verdict {
    let uart = machine.uart.as_ref().filter(|u| u.compatible.as_deref() == Some("arm,pl011"));
    let Some(pa) = uart.and_then(|u| u.regs.first()).map(|r| r.base) else {
        return skipped("ioremap", "the machine names no PL011 console");
    };
    let mut mem = MEM.lock();
    let mut vm = VMALLOC.lock();
    let (Some(m), Some(v)) = (mem.as_mut(), vm.as_mut()) else { return verdict("ioremap", false) };
    let r = mmu::with_hyp_table(Some(m), |table, tm| -> Result<(u32, u32), String> {
        let va = v.ioremap(table, tm, pa, PAGE_SIZE).map_err(|e| format!("{e}"))?;
        let id = memmap::read32(va.raw() + 0xfe0);
        v.iounmap(table, tm, va).map_err(|e| format!("{e}"))?;
        Ok((va.raw(), id))
    });
    match r {
        Some(Ok((va, id))) => {
            defmt::info!(
                "mm-selftest: ioremap: UART {=u64:#x} at {=u32:#010x}, PeriphID0 {=u32:#04x}",
                pa.as_u64(),
                va,
                id
            );
            verdict("ioremap", id == 0x11)
        }
        Some(Err(e)) => {
            defmt::error!("mm-selftest: ioremap: {=str}", e.as_str());
            verdict("ioremap", false)
        }
        None => verdict("ioremap", false),
    }
}

/// (1) lowmem coverage with holes against the no-hole figure (logged); vmalloc areas land in the holes and hold a pattern.
fn test_lowmem(plan: &Plan) -> Verdict {
    let lay = &plan.monitor;
    let holes: Vec<(u64, u64)> = lay
        .vmalloc
        .iter()
        .filter(|r| r.source == VmallocSource::Hole)
        .map(|r| (r.va.as_u64(), r.va.as_u64() + r.size))
        .collect();
    defmt::info!(
        "mm-selftest: lowmem: lowmem {=u64} kB, lowmem_without_holes {=u64} kB, {=usize} holes of vmalloc ({=u64} kB), vmalloc total {=u64} kB",
        lay.lowmem_total() / 1024,
        lay.lowmem_without_holes / 1024,
        holes.len(),
        lay.vmalloc_in_holes() / 1024,
        lay.vmalloc_total() / 1024
    );
    // Equal coverage holds when the vmalloc budget covers the holes (tests/mm.rs
    // checks it on such a machine); elsewhere the figures are only logged.
    let mut ok = true;
    let before = free_pages();
    let mut areas = Vec::new();
    let (mut in_hole, mut patterns) = (0u32, 0u32);
    for i in 0..64u32 {
        let size = u64::from(i % 4 + 1) << 20;
        match vmalloc(size) {
            Ok(va) => {
                let s = va.as_u64();
                let hole = holes.iter().any(|&(a, b)| s >= a && s + size <= b);
                in_hole += u32::from(hole);
                let good = memmap::pattern_check(va.raw(), size as usize, i);
                patterns += u32::from(good);
                defmt::info!(
                    "mm-selftest: vmalloc #{=u32}: {=u64} KiB at {=u32:#010x} {=str}, pattern {=str}",
                    i,
                    size / 1024,
                    va.raw(),
                    if hole { "in a hole" } else { "dedicated" },
                    if good { "ok" } else { "BAD" }
                );
                ok &= good;
                areas.push(va);
            }
            Err(e) => {
                defmt::error!("mm-selftest: vmalloc #{=u32} ({=u64} KiB): {=str}", i, size / 1024, e.as_str());
                ok = false;
            }
        }
    }
    for va in areas {
        if let Err(e) = vfree(va) {
            defmt::error!("mm-selftest: vfree {=u32:#010x}: {=str}", va.raw(), e.as_str());
            ok = false;
        }
    }
    let after = free_pages();
    defmt::info!(
        "mm-selftest: lowmem: 64 vmalloc areas, {=u32} in holes, {=u32} patterns ok; free pages {=u64} before, {=u64} after",
        in_hole,
        patterns,
        before,
        after
    );
    verdict("lowmem", ok && before == after && (holes.is_empty() || in_hole > 0))
}

/// (3) vmemmap backed in proportion to present RAM; pfn_valid false across no-map holes, true on present RAM.
fn test_sparse(plan: &Plan, f: &Figures) -> Verdict {
    let mem = MEM.lock();
    let Some(m) = mem.as_ref() else { return verdict("sparse", false) };
    let s = m.buddy.memmap().sections();
    let expect = f.present_pages * 16;
    let (mut hole_samples, mut hole_bad, mut ram_samples, mut ram_bad) = (0u32, 0u32, 0u32, 0u32);
    const STEP: u64 = 2 << 20;
    for c in plan.carveouts.iter().filter(|c| c.no_map) {
        let start = c.range.start().next_multiple_of(STEP);
        let mut a = start;
        while a + STEP <= c.range.end() {
            hole_samples += 1;
            hole_bad += u32::from(s.pfn_valid(Pfn(a / PAGE_SIZE)));
            a += STEP;
        }
    }
    for r in s.present_ranges() {
        let mut a = r.start();
        while a < r.end() {
            ram_samples += 1;
            ram_bad += u32::from(!s.pfn_valid(Pfn(a / PAGE_SIZE)));
            a += STEP;
        }
    }
    defmt::info!(
        "mm-selftest: sparse: vmemmap_backed {=u64} bytes, present_pages {=u64} (x16 = {=u64}), sections {=u32} of {=u32} present",
        f.vmemmap_backed,
        f.present_pages,
        expect,
        s.present_sections(),
        s.nr_sections()
    );
    defmt::info!(
        "mm-selftest: sparse: pfn_valid false at {=u32} of {=u32} hole samples, true at {=u32} of {=u32} RAM samples",
        hole_samples - hole_bad,
        hole_samples,
        ram_samples - ram_bad,
        ram_samples
    );
    verdict("sparse", f.vmemmap_backed == expect && hole_bad == 0 && ram_bad == 0)
}

/// (2) pages above 4 GiB zeroed and checked through kmap and through the per-CPU fixmap slots.
fn test_highmem(plan: &Plan) -> Verdict {
    const PAGES: u64 = 256;
    let mut mem = MEM.lock();
    let Some(m) = mem.as_mut() else { return verdict("highmem", false) };
    let above = PhysRange::from_bounds(1 << 32, 1 << 40);
    let run = match m.buddy.alloc_contig(PAGES, 1, above, Owner::Monitor) {
        Ok(r) => r,
        Err(e) => {
            return skipped("highmem", format!("no free RAM above 4 GiB: {e}").as_str());
        }
    };
    let mut pkmap = Pkmap::new(&plan.monitor);
    let mut atomic = match KmapAtomic::new(0, &plan.monitor) {
        Ok(k) => k,
        Err(_) => return verdict("highmem", false),
    };
    let (mut via_kmap, mut via_fixmap, mut ok) = (0u32, 0u32, true);
    let r = mmu::with_hyp_table(Some(&mut *m), |table, tm| {
        for i in 0..PAGES {
            let pfn = Pfn(run.start() / PAGE_SIZE + i);
            match pkmap.kmap_into(table, tm, pfn) {
                Ok(va) => {
                    let good = memmap::zero_check(va.raw(), PAGE_SIZE as usize)
                        && memmap::pattern_check(va.raw(), PAGE_SIZE as usize, i as u32);
                    via_kmap += u32::from(good);
                    ok &= good && pkmap.kunmap(pfn).is_ok();
                }
                Err(_) => ok = false,
            }
            match atomic.push(pfn) {
                Ok(a) => {
                    if let Some(pa) = a.map {
                        ok &= table.map(tm, a.va, pa, PAGE_SIZE, Attrs::ram_nx()).is_ok();
                    }
                    let good = memmap::zero_check(a.va.raw(), PAGE_SIZE as usize);
                    via_fixmap += u32::from(good);
                    ok &= good;
                    match atomic.pop(a.va) {
                        Ok(Some(va)) => ok &= table.unmap(tm, va, PAGE_SIZE).is_ok(),
                        Ok(None) => {}
                        Err(_) => ok = false,
                    }
                }
                Err(_) => ok = false,
            }
        }
        for (va, _) in pkmap.flush_unused() {
            ok &= table.unmap(tm, va, PAGE_SIZE).is_ok();
        }
    });
    ok &= r.is_some();
    ok &= m.buddy.free_range(run).is_ok();
    defmt::info!(
        "mm-selftest: highmem: {=u64} pages at {=u64:#x}: {=u32} checked through kmap, {=u32} through fixmap (KmapAtomic)",
        PAGES,
        run.start(),
        via_kmap,
        via_fixmap
    );
    verdict("highmem", ok && via_kmap as u64 == PAGES && via_fixmap as u64 == PAGES)
}

/// (5) alloc/free cycles return the free-page counts to where they started.
fn test_cycles() -> Verdict {
    let before = free_pages();
    let s2_before = owner_pages(Owner::Stage2Tables);
    let mut ok = true;
    {
        let mut mem = MEM.lock();
        if let Some(m) = mem.as_mut() {
            for _ in 0..4 {
                let mut got = Vec::new();
                for order in 0..=10u8 {
                    match m.buddy.alloc(order, Owner::Monitor) {
                        Ok(p) => got.push((p, order)),
                        Err(_) => ok = false,
                    }
                }
                for (p, o) in got {
                    ok &= m.buddy.free(p, o).is_ok();
                }
            }
        }
    }
    let after_buddy = free_pages();
    for i in 0..16u64 {
        match vmalloc((i % 4 + 1) * PAGE_SIZE) {
            Ok(va) => ok &= vfree(va).is_ok(),
            Err(_) => ok = false,
        }
    }
    let after_vmalloc = free_pages();
    let mut s2_pages = 0u64;
    let built = mmu::with_pool(|tm| -> bool {
        let Ok(mut s2) = PageTable::<Stage2>::new(tm) else { return false };
        // IPA and PA never congruent modulo 2 MiB: 4 KiB leaves, one level-3 table per 2 MiB.
        let r = s2.map(tm, carve_core::addr::Ipa::new(0x4000_0000), PhysAddr::new(0x4000_1000), 64 << 20, Attrs::ram());
        s2.destroy(tm);
        r.is_ok()
    });
    ok &= built == Some(true);
    if let Some(m) = MEM.lock().as_ref() {
        s2_pages = m.buddy.owner_pages(Owner::Stage2Tables);
    }
    let after = free_pages();
    defmt::info!(
        "mm-selftest: cycles: free pages {=u64} before, {=u64} after buddy cycles (every order to the largest), {=u64} after vmalloc/vfree, {=u64} after an S2 table build+destroy (64 MiB of 4 KiB leaves); S2 table pages {=u64} before, {=u64} after",
        before,
        after_buddy,
        after_vmalloc,
        after,
        s2_before,
        s2_pages
    );
    verdict(
        "cycles",
        ok && before == after && after_buddy == before && after_vmalloc == before && s2_pages == s2_before,
    )
}

/// (4, 5) A contiguous allocation over pages lent to a stand-in guest: a
/// stage-2 of its own (VMID 255, never entered) maps 1,024 pool pages, each
/// holding a pattern; the whole pool is claimed, moving each page (read-only,
/// copy, switch, TLB invalidation by VMID) exactly as for a running guest; the
/// patterns are read back through the stand-in's stage-2; then everything is
/// given back and the free counts (buddy, pool, vmalloc, stage-2 table pages)
/// must be where they started. Twice: with and without a monitor mapping.
/// Also measures the migration cost (instructions per page under -icount).
fn test_cma() -> Verdict {
    const VMID: u8 = 255;
    const IPA: u64 = 0x80_0000_0000;
    let Some((pool_pages, name)) = CMA.lock().first().map(|p| (p.total_pages(), String::from(p.name()))) else {
        return skipped("cma", "no reusable shared-dma-pool carveout");
    };
    let lend = pool_pages.min(1024);
    let vm_free = || VMALLOC.lock().as_ref().map(|v| v.free_bytes()).unwrap_or(0);
    let pool_free = || CMA.lock().first().map(|p| p.free_pages()).unwrap_or(0);
    let before = (free_pages(), pool_free(), vm_free(), owner_pages(Owner::Stage2Tables));
    let mut ok = true;
    for map in [false, true] {
        // Lend and map, one pattern per page.
        let lent = {
            let mut mem = MEM.lock();
            let Some(m) = mem.as_mut() else { return verdict("cma", false) };
            let mut pools = CMA.lock();
            match pools[0].lend(&mut m.buddy, lend, VMID, carve_core::addr::Ipa::new(IPA)) {
                Ok(p) => p,
                Err(e) => {
                    defmt::error!("mm-selftest: cma: lend: {=str}", format!("{e}").as_str());
                    return verdict("cma", false);
                }
            }
        };
        let Some(Ok(mut s2)) = mmu::with_pool(|tm| PageTable::<Stage2>::new(tm)) else { return verdict("cma", false) };
        let vttbr = s2.root().as_u64() | (u64::from(VMID) << 48);
        let seed = |i: usize| 0xc0de_0000 ^ i as u32;
        for (i, p) in lent.iter().enumerate() {
            let ipa = carve_core::addr::Ipa::new(IPA + i as u64 * PAGE_SIZE);
            let pa = p.addr().unwrap_or(PhysAddr::new(0));
            ok &= mmu::with_pool(|tm| s2.map(tm, ipa, pa, PAGE_SIZE, Attrs::ram()).is_ok()) == Some(true);
            ok &= with_page(*p, |va| memmap::fill_words(va, PAGE_SIZE as usize, |w| seed(i) ^ w as u32)).is_ok();
        }
        // Claim the whole pool: every lent page moves.
        let t0 = arch::counter();
        let a = cma::alloc(0, pool_pages, 1, map, |m| cma::migrate_page(&mut s2, vttbr, m));
        let ticks = arch::counter() - t0;
        let (mut patterns, mut moved_to) = (0u32, Vec::new());
        for i in 0..lent.len() {
            let ipa = carve_core::addr::Ipa::new(IPA + i as u64 * PAGE_SIZE);
            let t = mmu::with_pool(|tm| s2.translate(tm, ipa)).flatten();
            let Some(t) = t else { continue };
            let pfn = Pfn::of(t.pa);
            moved_to.push(pfn);
            let good =
                with_page(pfn, |va| memmap::check_words(va, PAGE_SIZE as usize, |w| seed(i) ^ w as u32)) == Ok(true);
            patterns += u32::from(good);
        }
        match &a {
            Ok(a) => {
                let moved = a.moved.max(1);
                defmt::info!(
                    "mm-selftest: cma: pool {=str}: {=u64} pages claimed{=str} over {=usize} lent pages: {=u32} moved, {=u32} patterns intact after the move",
                    name.as_str(),
                    pool_pages,
                    if map { ", mapped in vmalloc" } else { " with no mapping" },
                    lent.len(),
                    a.moved,
                    patterns
                );
                defmt::info!(
                    "mm-bench: CMA migration ({=str}): {=u64} instructions a page ({=u32} pages, the claim included); the claim alone {=u64} instructions a page moved, the moves alone {=u64}",
                    if map { "mapped" } else { "unmapped" },
                    instructions(ticks) / u64::from(moved),
                    a.moved,
                    instructions(a.claim_ticks) / u64::from(moved),
                    instructions(a.ticks - a.claim_ticks) / u64::from(moved)
                );
                ok &= a.moved as usize == lent.len() && a.va.is_some() == map;
                ok &= cma::free(a).is_ok();
            }
            Err(e) => {
                defmt::error!("mm-selftest: cma: allocation: {=str}", e.as_str());
                ok = false;
            }
        }
        ok &= patterns as usize == lent.len();
        // Give everything back: the moved pages to the buddy, the stand-in's tables.
        {
            let mut mem = MEM.lock();
            if let Some(m) = mem.as_mut() {
                for p in &moved_to {
                    ok &= m.buddy.free(*p, 0).is_ok();
                }
            }
        }
        mmu::with_pool(|tm| s2.destroy(tm));
    }
    let after = (free_pages(), pool_free(), vm_free(), owner_pages(Owner::Stage2Tables));
    defmt::info!(
        "mm-selftest: cma: free pages {=u64} before, {=u64} after; pool free {=u64} before, {=u64} after; vmalloc free {=u64} before, {=u64} after; S2 table pages {=u64} before, {=u64} after",
        before.0,
        after.0,
        before.1,
        after.1,
        before.2,
        after.2,
        before.3,
        after.3
    );
    verdict("cma", ok && before == after)
}

/// Bench: buddy alloc+free and vmalloc+vfree (1 page), in instructions under -icount shift=0.
fn bench() {
    const N: u64 = 1000;
    let t0 = arch::counter();
    {
        let mut mem = MEM.lock();
        if let Some(m) = mem.as_mut() {
            for _ in 0..N {
                if let Ok(p) = m.buddy.alloc(0, Owner::Monitor) {
                    let _ = m.buddy.free(p, 0);
                }
            }
        }
    }
    let t1 = arch::counter();
    const NV: u64 = 200;
    for _ in 0..NV {
        if let Ok(va) = vmalloc(PAGE_SIZE) {
            let _ = vfree(va);
        }
    }
    let t2 = arch::counter();
    // With another area in the same 2 MiB, the level-3 table stays: no table page allocated, zeroed, scanned, freed.
    let anchor = vmalloc(PAGE_SIZE).ok();
    let t3 = arch::counter();
    for _ in 0..NV {
        if let Ok(va) = vmalloc(PAGE_SIZE) {
            let _ = vfree(va);
        }
    }
    let t4 = arch::counter();
    if let Some(a) = anchor {
        let _ = vfree(a);
    }
    defmt::info!("mm-bench: buddy alloc+free: {=u64} instructions", instructions(t1 - t0) / N);
    defmt::info!("mm-bench: vmalloc+vfree (1 page): {=u64} instructions", instructions(t4 - t3) / NV);
    defmt::info!(
        "mm-bench: vmalloc+vfree (1 page, alone in its 2 MiB: a table page allocated and freed each time): {=u64} instructions",
        instructions(t2 - t1) / NV
    );
}

/// The memory self-tests. True if none failed and at least one ran; a part
/// the machine cannot show is SKIPPED, counted apart and never as a pass.
pub fn run(machine: &Machine, plan: &Plan, f: &Figures) -> bool {
    let parts = [
        ("ioremap", test_ioremap(machine)),
        ("lowmem", test_lowmem(plan)),
        ("sparse", test_sparse(plan, f)),
        ("highmem", test_highmem(plan)),
        ("cycles", test_cycles()),
        ("cma", test_cma()),
    ];
    bench();
    log_meminfo(plan, f);
    let count = |v: Verdict| parts.iter().filter(|p| p.1 == v).count() as u32;
    let (pass, fail, skip) = (count(Verdict::Pass), count(Verdict::Fail), count(Verdict::Skipped));
    let mut names = String::new();
    for (name, _) in parts.iter().filter(|p| p.1 != Verdict::Pass) {
        names.push(' ');
        names.push_str(name);
    }
    if pass as usize == parts.len() {
        defmt::info!("mm-selftest: all PASS");
    } else {
        defmt::info!(
            "mm-selftest: {=u32} PASS, {=u32} FAIL, {=u32} SKIPPED; not passed:{=str}",
            pass,
            fail,
            skip,
            names.as_str()
        );
    }
    fail == 0 && pass > 0
}
