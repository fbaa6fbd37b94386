//! The monitor's own memory, made real: sections and vmemmap, the buddy allocator, vmalloc, CMA pools ([`cma`]), and the `carve.selftest=mm` self-tests.
//!
//! [`init`] runs once the lowmem linear map is on, in the order the core's
//! API asks for: sections of the plan, the vmemmap backed only for present
//! sections (taken early from `monitor_free` below 4 GiB), the page database
//! over it, the buddy allocator over every page no carveout, module or image
//! owns (the guests' extents handed out to `Owner::Guest(vmid)` at once), the
//! CMA pools, and vmalloc over the layout's holes and dedicated area. It logs
//! the counters `/proc/meminfo` would show.
//!
//! Nothing there costs a write per page of RAM the guests do not get: a
//! section's page records are written when the section is first used, and the
//! free memory is handed to the buddy deferred, so its records are written when
//! an allocation needs it (the lowest first) or when a CPU no guest uses lists
//! it ([`finish_deferred`], started by `vm`). The raw memory work is in
//! `arch::memmap`; this module is safe code.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use carve_core::addr::{Address, PhysAddr, PhysRange, VirtAddr, PAGE_SIZE};
use carve_core::mm::kmap::fixmap::FIX_MAX_CPUS;
use carve_core::mm::page::{backing_bytes, vmemmap_backing};
use carve_core::mm::{
    Attrs, CmaPool, KmapAtomic, MemMap, Owner, PageTable, Pfn, Pkmap, Sections, Stage2, VmKind, Vmalloc,
};
use carve_core::plan::layout::VmallocSource;
use carve_core::plan::Plan;
use spin::Mutex;

use crate::arch;
use crate::arch::memmap::{self, MemState, VmemmapStore, MEM};
use crate::arch::mmu;

pub mod cma;

/// vmalloc over the Hyp map (lock after `MEM`, before `HYP_MAP`).
pub static VMALLOC: Mutex<Option<Vmalloc>> = Mutex::new(None);
/// The CMA pools of the plan.
pub static CMA: Mutex<Vec<CmaPool>> = Mutex::new(Vec::new());

/// What [`init`] found, kept for [`log_meminfo`] on a guest's `DUMP_MAP`.
pub static FIGURES: Mutex<Option<Figures>> = Mutex::new(None);

/// What [`init`] found, for the log and the self-tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct Figures {
    pub vmemmap_backed: u64,
    pub present_pages: u64,
    pub init_ticks: u64,
}

/// Brings the monitor's memory up (see the module's doc).
pub fn init(plan: &Plan) -> Result<Figures, String> {
    let t0 = arch::counter();
    let sections = Sections::for_plan(plan).map_err(|e| format!("sections: {e}"))?;
    let chunks = vmemmap_backing(plan.monitor.vmemmap, &sections).map_err(|e| format!("vmemmap: {e}"))?;
    let mut free = plan.monitor_free.clone();
    let backing = memmap::map_vmemmap(&chunks, &mut free).map_err(|e| format!("vmemmap: {e}"))?;
    let figures =
        Figures { vmemmap_backed: backing_bytes(&chunks), present_pages: sections.present_pages(), init_ticks: 0 };
    let store = VmemmapStore::new(plan.monitor.vmemmap.base, sections.clone());
    let t1 = arch::counter();
    let mm = MemMap::new(sections, store).map_err(|e| format!("page database: {e}"))?;
    let t2 = arch::counter();
    let mut buddy = carve_core::mm::Buddy::new(mm);
    for r in &backing {
        buddy.add_allocated_range(*r, Owner::Vmemmap).map_err(|e| format!("vmemmap backing {r:?}: {e}"))?;
    }
    // Free memory's records are written when an allocation needs it (or a spare CPU lists it: `finish_deferred`).
    for r in free.ranges() {
        buddy.defer_free_range(*r).map_err(|e| format!("monitor free {r:?}: {e}"))?;
    }
    let t3 = arch::counter();
    for (i, g) in plan.guests.iter().enumerate() {
        for e in &g.extents {
            let r = e.pa_range();
            // Allocated at once: one pass over the records per section.
            buddy
                .add_allocated_range(r, Owner::Guest((i + 1) as u8))
                .map_err(|err| format!("{}: extent {r:?}: {err}", g.name))?;
        }
    }
    let t4 = arch::counter();
    let cma = CmaPool::from_plan(plan, &mut buddy).map_err(|e| format!("CMA: {e}"))?;
    defmt::info!(
        "mm: bring-up in counter ticks: vmemmap mapped {=u64}, page records {=u64}, free ranges {=u64}, guest extents {=u64}",
        t1 - t0,
        t2 - t1,
        t3 - t2,
        t4 - t3
    );
    defmt::info!(
        "mm: {=u64} free pages ({=u64} MiB) deferred: their records are written when an allocation needs them, or by a CPU no guest uses",
        buddy.deferred_pages(),
        buddy.deferred_pages() >> 8
    );
    *MEM.lock() = Some(MemState { buddy, lowmem: plan.monitor.lowmem.clone() });
    *VMALLOC.lock() = Some(Vmalloc::new(&plan.monitor));
    *CMA.lock() = cma;
    let figures = Figures { init_ticks: arch::counter().wrapping_sub(t0), ..figures };
    *FIGURES.lock() = Some(figures);
    Ok(figures)
}

/// Pages a step of [`finish_deferred`] lists with the lock held: 64 MiB.
const DEFERRED_STEP: u64 = 16384;

/// Lists the rest of the deferred free memory (its records written), a step
/// at a time with the lock let go in between, so an allocation on another CPU
/// waits for one step at most. For a CPU with nothing else to do. Returns the
/// pages listed and the counter ticks it took.
pub fn finish_deferred() -> Result<(u64, u64), String> {
    let t0 = arch::counter();
    let mut total = 0;
    loop {
        let mut mem = MEM.lock();
        let m = mem.as_mut().ok_or("no page allocator")?;
        let n = m.buddy.grow(DEFERRED_STEP).map_err(|e| format!("{e}"))?;
        if n == 0 {
            break;
        }
        total += n;
    }
    Ok((total, arch::counter() - t0))
}

/// Each CPU's atomic kmap slots (its fixmap pages), for copying pages outside lowmem.
static KMAP: [Mutex<Option<KmapAtomic>>; FIX_MAX_CPUS as usize] = [const { Mutex::new(None) }; FIX_MAX_CPUS as usize];

/// Sets up every CPU's atomic kmap slots (after [`init`]).
pub fn init_kmap_atomic(plan: &Plan) {
    for (cpu, slot) in KMAP.iter().enumerate() {
        *slot.lock() = KmapAtomic::new(cpu as u32, &plan.monitor).ok();
    }
}

fn this_cpu() -> u32 {
    arch::mpidr() & 0xff
}

fn map_fix(va: VirtAddr, pa: PhysAddr) -> Result<(), String> {
    let mut mem = MEM.lock();
    mmu::with_hyp_table(mem.as_mut(), |t, tm| t.map(tm, va, pa, PAGE_SIZE, Attrs::ram_nx()))
        .ok_or("no Hyp map")?
        .map(|_| ())
        .map_err(|e| format!("kmap_atomic: {e}"))
}

fn unmap_fix(va: VirtAddr) -> Result<(), String> {
    let mut mem = MEM.lock();
    mmu::with_hyp_table(mem.as_mut(), |t, tm| t.unmap(tm, va, PAGE_SIZE))
        .ok_or("no Hyp map")?
        .map_err(|e| format!("kunmap_atomic: {e}"))
}

/// Runs `f` on the virtual address of page `pfn`: its linear address in
/// lowmem, else one of this CPU's fixmap slots for the time of the call (the
/// way Linux's `kmap_atomic` reaches highmem). Calls nest (a copy maps two).
pub fn with_page<R>(pfn: Pfn, f: impl FnOnce(u32) -> R) -> Result<R, String> {
    let slots = KMAP.get(this_cpu() as usize).ok_or("no kmap_atomic slots for this CPU")?;
    let a = slots.lock().as_mut().ok_or("kmap_atomic is not set up")?.push(pfn).map_err(|e| format!("{e}"))?;
    if let Some(pa) = a.map {
        if let Err(e) = map_fix(a.va, pa) {
            let _ = slots.lock().as_mut().map(|k| k.pop(a.va));
            return Err(e);
        }
    }
    let r = f(a.va.raw());
    let popped = slots.lock().as_mut().ok_or("kmap_atomic is not set up")?.pop(a.va).map_err(|e| format!("{e}"))?;
    if let Some(va) = popped {
        unmap_fix(va)?;
    }
    Ok(r)
}

/// Copies page `src` to page `dst`.
pub fn copy_page(dst: Pfn, src: Pfn) -> Result<(), String> {
    with_page(src, |s| with_page(dst, |d| memmap::copy_page_va(d, s)))?
}

/// Instructions for `ticks` of the counter, under `-icount shift=0` (one instruction per ns).
fn instructions(ticks: u64) -> u64 {
    ticks * 1_000_000_000 / u64::from(arch::counter_hz().max(1))
}

/// Logs the counters a person would look for, like `/proc/meminfo`.
pub fn log_meminfo(plan: &Plan, f: &Figures) {
    let mem = MEM.lock();
    let Some(m) = mem.as_ref() else { return };
    let kb = |pages: u64| pages * (PAGE_SIZE / 1024);
    defmt::info!("mm: MemTotal: {=u64} kB (managed)", kb(m.buddy.managed_pages()));
    defmt::info!(
        "mm: MemFree: {=u64} kB ({=u64} kB of it deferred, records not written yet)",
        kb(m.buddy.free_pages()),
        kb(m.buddy.deferred_pages())
    );
    let mut owners = alloc::vec![Owner::Monitor];
    owners.extend((1..=plan.guests.len()).map(|v| Owner::Guest(v as u8)));
    owners.extend([Owner::Stage2Tables, Owner::HypTables, Owner::Vmemmap, Owner::Cma]);
    for owner in owners {
        let pages = m.buddy.owner_pages(owner);
        defmt::info!("mm: owner {=str}: {=u64} pages ({=u64} kB)", format!("{owner}").as_str(), pages, kb(pages));
    }
    for p in CMA.lock().iter() {
        defmt::info!(
            "mm: CMA {=str}: {=u64} pages, {=u64} free, {=u64} lent, {=u64} allocated",
            p.name(),
            p.total_pages(),
            p.free_pages(),
            p.lent_pages(),
            p.contig_pages()
        );
    }
    if let Some(v) = VMALLOC.lock().as_ref() {
        defmt::info!(
            "mm: VmallocTotal: {=u64} kB, VmallocUsed: {=u64} kB, VmallocLargestFree: {=u64} kB",
            v.total() / 1024,
            (v.total() - v.free_bytes()) / 1024,
            v.largest_free() / 1024
        );
        for line in v.vmallocinfo() {
            defmt::info!("mm: vmallocinfo: {=str}", line.as_str());
        }
    }
    defmt::info!(
        "mm: vmemmap: {=u64} bytes backed for {=u64} present pages ({=u64} bytes of RAM present)",
        f.vmemmap_backed,
        f.present_pages,
        f.present_pages * PAGE_SIZE
    );
    defmt::info!(
        "mm: lowmem {=u64} kB, lowmem_without_holes {=u64} kB",
        plan.monitor.lowmem_total() / 1024,
        plan.monitor.lowmem_without_holes / 1024
    );
    defmt::info!(
        "mm: up in {=u64} counter ticks ({=u64} instructions under -icount shift=0)",
        f.init_ticks,
        instructions(f.init_ticks)
    );
}

/// Whether `bootargs` asks for the memory self-tests (`carve.selftest=mm`).
pub fn selftest_requested(bootargs: Option<&str>) -> bool {
    selftest_has(bootargs, "mm")
}

/// Whether `bootargs` names self-test `name` in `carve.selftest=a,b,...` (or `all`).
pub fn selftest_has(bootargs: Option<&str>, name: &str) -> bool {
    bootargs.is_some_and(|a| {
        a.split_ascii_whitespace()
            .filter_map(|w| w.strip_prefix("carve.selftest="))
            .any(|v| v.split(',').any(|t| t == name || t == "all"))
    })
}

fn verdict(name: &str, ok: bool) -> bool {
    if ok {
        defmt::info!("mm-selftest: {=str}: PASS", name);
    } else {
        defmt::error!("mm-selftest: {=str}: FAIL", name);
    }
    ok
}

/// vmalloc of `size` bytes: pages from the buddy (`Owner::Monitor`), mapped in the Hyp map.
pub fn vmalloc(size: u64) -> Result<VirtAddr, String> {
    let mut mem = MEM.lock();
    let m = mem.as_mut().ok_or("no buddy")?;
    let mut vm = VMALLOC.lock();
    let v = vm.as_mut().ok_or("no vmalloc")?;
    let n = size.div_ceil(PAGE_SIZE);
    let mut pages = Vec::new();
    for _ in 0..n {
        match m.buddy.alloc(0, Owner::Monitor).ok().and_then(|p| p.addr()) {
            Some(pa) => pages.push(pa),
            None => {
                for p in &pages {
                    let _ = m.buddy.free(Pfn::of(*p), 0);
                }
                return Err(format!("out of pages after {}", pages.len()));
            }
        }
    }
    let r = mmu::with_hyp_table(Some(&mut *m), |table, tm| v.vmap(table, tm, &pages, Attrs::ram_nx(), VmKind::Vmalloc))
        .ok_or("no Hyp map")?;
    match r {
        Ok(range) => Ok(range.base),
        Err(e) => {
            for p in &pages {
                let _ = m.buddy.free(Pfn::of(*p), 0);
            }
            Err(format!("{e}"))
        }
    }
}

/// vfree of a [`vmalloc`] area: unmapped, then its pages back to the buddy.
pub fn vfree(va: VirtAddr) -> Result<(), String> {
    let mut mem = MEM.lock();
    let m = mem.as_mut().ok_or("no buddy")?;
    let mut vm = VMALLOC.lock();
    let v = vm.as_mut().ok_or("no vmalloc")?;
    let area = *v.find(va).ok_or("not a vmalloc area")?;
    let pages = mmu::with_hyp_table(Some(&mut *m), |table, tm| -> Result<Vec<PhysAddr>, String> {
        let mut pages = Vec::new();
        for i in 0..area.range.size / PAGE_SIZE {
            let a = VirtAddr::from_u64(area.range.start() + i * PAGE_SIZE).ok_or("bad VA")?;
            pages.push(table.translate(tm, a).ok_or("unmapped page in a vmalloc area")?.pa);
        }
        v.vunmap(table, tm, va).map_err(|e| format!("{e}"))?;
        Ok(pages)
    })
    .ok_or("no Hyp map")??;
    for p in pages {
        m.buddy.free(Pfn::of(p), 0).map_err(|e| format!("{e}"))?;
    }
    Ok(())
}

fn free_pages() -> u64 {
    MEM.lock().as_ref().map(|m| m.buddy.free_pages()).unwrap_or(0)
}

fn owner_pages(o: Owner) -> u64 {
    MEM.lock().as_ref().map(|m| m.buddy.owner_pages(o)).unwrap_or(0)
}

/// ioremap of the console UART, reading PL011 PeriphID0 (0x11), then iounmap.
fn test_ioremap() -> bool {
    let mut mem = MEM.lock();
    let mut vm = VMALLOC.lock();
    let (Some(m), Some(v)) = (mem.as_mut(), vm.as_mut()) else { return verdict("ioremap", false) };
    let pa = PhysAddr::new(u64::from(mmu::QEMU_VIRT_UART0));
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
fn test_lowmem(plan: &Plan) -> bool {
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
fn test_sparse(plan: &Plan, f: &Figures) -> bool {
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
fn test_highmem(plan: &Plan) -> bool {
    const PAGES: u64 = 256;
    let mut mem = MEM.lock();
    let Some(m) = mem.as_mut() else { return verdict("highmem", false) };
    let above = PhysRange::from_bounds(1 << 32, 1 << 40);
    let run = match m.buddy.alloc_contig(PAGES, 1, above, Owner::Monitor) {
        Ok(r) => r,
        Err(e) => {
            defmt::info!("mm-selftest: highmem: SKIPPED (no free RAM above 4 GiB: {=str})", format!("{e}").as_str());
            return true;
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
fn test_cycles() -> bool {
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
fn test_cma() -> bool {
    const VMID: u8 = 255;
    const IPA: u64 = 0x80_0000_0000;
    let Some((pool_pages, name)) = CMA.lock().first().map(|p| (p.total_pages(), String::from(p.name()))) else {
        defmt::info!("mm-selftest: cma: SKIPPED (no reusable shared-dma-pool carveout)");
        return true;
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

/// The memory self-tests; true if all passed.
pub fn selftest(plan: &Plan, f: &Figures) -> bool {
    let mut ok = true;
    ok &= test_ioremap();
    ok &= test_lowmem(plan);
    ok &= test_sparse(plan, f);
    ok &= test_highmem(plan);
    ok &= test_cycles();
    ok &= test_cma();
    bench();
    log_meminfo(plan, f);
    defmt::info!("mm-selftest: {=str}", if ok { "all PASS" } else { "FAILED" });
    ok
}
