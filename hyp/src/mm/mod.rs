//! The monitor's own memory, made real: sections and vmemmap, the buddy allocator, vmalloc, CMA pools ([`cma`]).
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

use carve_core::addr::{Address, PhysAddr, VirtAddr, PAGE_SIZE};
use carve_core::mm::kmap::fixmap::FIX_MAX_CPUS;
use carve_core::mm::page::{backing_bytes, vmemmap_backing};
use carve_core::mm::{Attrs, CmaPool, KmapAtomic, MemMap, Owner, Pfn, Sections, VmKind, Vmalloc};
use carve_core::plan::Plan;
use spin::Mutex;

use crate::arch;
use crate::arch::memmap::{self, MemState, VmemmapStore, MEM};
use crate::arch::mmu;

pub mod cma;
#[cfg(feature = "selftest")]
pub mod selftest;

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
/// The pages stage-2 tables hold and the buddy's free pages, for a guest's restart log.
pub fn table_and_free_pages() -> Option<(u64, u64)> {
    let mem = MEM.lock();
    let m = mem.as_ref()?;
    Some((m.buddy.owner_pages(carve_core::mm::Owner::Stage2Tables), m.buddy.free_pages()))
}

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
#[cfg_attr(not(feature = "selftest"), allow(dead_code))] // only CMA moves copy pages, and only tests claim CMA memory yet
pub fn copy_page(dst: Pfn, src: Pfn) -> Result<(), String> {
    with_page(src, |s| with_page(dst, |d| memmap::copy_page_va(d, s)))?
}

/// Instructions for `ticks` of the counter, under `-icount shift=0` (one instruction per ns).
pub(crate) fn instructions(ticks: u64) -> u64 {
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

/// vmalloc of `size` bytes: pages from the buddy (`Owner::Monitor`), mapped in the Hyp map.
#[cfg_attr(not(feature = "selftest"), allow(dead_code))] // only the self-tests vmalloc so far
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
#[cfg_attr(not(feature = "selftest"), allow(dead_code))] // only the self-tests vmalloc so far
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

/// ioremap of `size` bytes of device registers at physical `pa` (Device
/// memory, in the vmalloc area, for good); returns the virtual address of `pa`.
pub fn ioremap(pa: u64, size: u64) -> Result<usize, String> {
    let at = PhysAddr::from_u64(pa).ok_or_else(|| format!("{pa:#x} is past the physical address space"))?;
    let mut mem = MEM.lock();
    let m = mem.as_mut().ok_or("no buddy")?;
    let mut vm = VMALLOC.lock();
    let v = vm.as_mut().ok_or("no vmalloc")?;
    let va = mmu::with_hyp_table(Some(&mut *m), |table, tm| v.ioremap(table, tm, at, size))
        .ok_or("no Hyp map")?
        .map_err(|e| format!("{e}"))?;
    Ok(va.raw() as usize)
}
