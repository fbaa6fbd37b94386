//! CMA pools at run time: lending free pages, contiguous allocations, and moving one page of a stage-2.
//!
//! The pools ([`super::CMA`]) are the core's [`carve_core::mm::CmaPool`]s.
//! [`lend`] hands a pool's free pages to whoever will map them (a guest's
//! movable memory). A contiguous allocation ([`alloc`]) claims a run of a
//! pool; for each lent page in its way the core names a fresh page from the
//! buddy, and the caller's `mover` moves it (for a running guest, the `vm`
//! layer, which knows the guest; [`migrate_page`] does the page and table
//! work for it). Moves stop at the first failure and the allocation is
//! undone ([`carve_core::mm::CmaPool::abort_contig`]): no lent page is lost.
//!
//! [`migrate_page`] moves one page of a stage-2 while the guest may run: the
//! entry is made read-only (the TLB invalidated by the guest's VMID), the
//! page copied, then the entry switched to the new page by break-before-make
//! (invalid, TLB by VMID, new entry). A guest access that faults meanwhile
//! waits on whatever lock the caller holds and is retried.
//!
//! Nothing in the monitor claims CMA memory on its own yet: outside a
//! `selftest` build (whose test calls and self-tests claim pools) only
//! [`lend`] has a caller, and the rest waits for its first user.
#![cfg_attr(not(feature = "selftest"), allow(dead_code))]

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};

use carve_core::addr::{Address, Ipa, PhysAddr, PhysRange, VirtRange};
use carve_core::mm::table::Access;
use carve_core::mm::{Attrs, CmaAllocation, Migration, PageTable, Pfn, Stage2};

use super::{copy_page, CMA, VMALLOC};
use crate::arch;
use crate::arch::memmap::MEM;
use crate::arch::mmu;

/// Lends `pages` free pages of pool `pool` to VMID `vmid` at IPA `ipa`: the frames, in IPA order.
pub fn lend(pool: &str, pages: u64, vmid: u8, ipa: Ipa) -> Result<Vec<Pfn>, String> {
    let mut mem = MEM.lock();
    let state = mem.as_mut().ok_or("no page allocator")?;
    let mut pools = CMA.lock();
    let p = pools.iter_mut().find(|p| p.name() == pool).ok_or_else(|| format!("no CMA pool {pool}"))?;
    p.lend(&mut state.buddy, pages, vmid, ipa).map_err(|e| format!("{pool}: {e}"))
}

/// The index of the pool named `name`.
pub fn pool_index(name: &str) -> Option<usize> {
    CMA.lock().iter().position(|p| p.name() == name)
}

/// The pages of pool `pool`.
pub fn pool_pages(pool: usize) -> Option<u64> {
    CMA.lock().get(pool).map(|p| p.total_pages())
}

/// A test switch of `selftest` builds (`carve.selftest=cma-no-tlbi`): moves
/// leave the TLB alone, so a guest's CPU keeps translating a moved page to
/// its old frame. Only the stale-translation test sets it, to show that its
/// check fails when the invalidation is missing.
#[cfg(feature = "selftest")]
pub static SKIP_TLBI: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Moves one page as `m` says, in the stage-2 `stage2` of the guest whose
/// VTTBR is `vttbr`: read-only, copy, switch (see the module's doc). On an
/// error the guest still maps the old page, read/write.
pub fn migrate_page(stage2: &mut PageTable<Stage2>, vttbr: u64, m: &Migration) -> Result<(), String> {
    let from = m.from.addr().ok_or("a frame past the physical space")?;
    let to = m.to.addr().ok_or("a frame past the physical space")?;
    let remap = |s2: &mut PageTable<Stage2>, pa: PhysAddr, attrs: Attrs| -> Result<(), String> {
        let change = |tm: &mut dyn carve_core::mm::TableMemory| s2.remap_page(tm, m.ipa, pa, attrs);
        #[cfg(feature = "selftest")]
        let r = if SKIP_TLBI.load(Ordering::Relaxed) {
            mmu::with_guest_tables_without_tlbi(vttbr, change)
        } else {
            mmu::with_guest_tables(vttbr, change)
        };
        #[cfg(not(feature = "selftest"))]
        let r = mmu::with_guest_tables(vttbr, change);
        r.ok_or("no Hyp map")?.map_err(|e| format!("IPA {:#x}: {e}", m.ipa.as_u64()))
    };
    remap(stage2, from, Attrs { access: Access::ReadOnly, ..Attrs::ram() })?;
    if let Err(e) = copy_page(m.to, m.from) {
        let _ = remap(stage2, from, Attrs::ram());
        return Err(e);
    }
    remap(stage2, to, Attrs::ram())
}

/// A finished contiguous allocation.
#[derive(Clone, Debug)]
pub struct Allocation {
    pub pool: usize,
    pub range: PhysRange,
    pub va: Option<VirtRange>,
    pub moved: u32,
    /// Counter ticks for all of it, and for the claim alone (choosing the run, fresh pages from the buddy).
    pub ticks: u64,
    pub claim_ticks: u64,
}

/// Lent pages moved by the allocation under way.
static MOVED: AtomicU32 = AtomicU32::new(0);

/// Lent pages moved so far by the allocation under way (or the last one).
pub fn moved_so_far() -> u32 {
    MOVED.load(Ordering::Relaxed)
}

/// Claims `count` pages aligned to `align` pages from pool `pool`, moving the
/// lent pages in the way with `mover`, then maps the range in vmalloc space
/// if `map`. On a failure the allocation is undone and every lent page stays
/// where it was mapped.
pub fn alloc(
    pool: usize,
    count: u64,
    align: u64,
    map: bool,
    mut mover: impl FnMut(&Migration) -> Result<(), String>,
) -> Result<Allocation, String> {
    let t0 = arch::counter();
    MOVED.store(0, Ordering::Relaxed);
    let a: CmaAllocation = {
        let mut mem = MEM.lock();
        let m = mem.as_mut().ok_or("no page allocator")?;
        let mut pools = CMA.lock();
        let p = pools.get_mut(pool).ok_or("no such CMA pool")?;
        let mut vmalloc = VMALLOC.lock();
        let v = if map { Some(vmalloc.as_mut().ok_or("no vmalloc")?) } else { None };
        p.alloc_contig(&mut m.buddy, count, align, v).map_err(|e| format!("{}: {e}", p.name()))?
    };
    let claim_ticks = arch::counter() - t0;
    let mut failure = None;
    for (k, m) in a.migrations.iter().enumerate() {
        if let Err(e) = mover(m) {
            failure =
                Some((k, format!("moving {} (IPA {:#x} of VMID {}) to {}: {e}", m.from, m.ipa.as_u64(), m.vmid, m.to)));
            break;
        }
        MOVED.fetch_add(1, Ordering::Relaxed);
    }
    let mapped = match (&failure, a.va) {
        (None, Some(va)) => {
            let mut mem = MEM.lock();
            mmu::with_hyp_table(mem.as_mut(), |t, tm| t.map(tm, va.base, a.range.base, a.range.size, Attrs::ram_nx()))
                .ok_or_else(|| String::from("no Hyp map"))
                .and_then(|r| r.map(|_| ()).map_err(|e| format!("mapping the allocation: {e}")))
        }
        _ => Ok(()),
    };
    if let Err(e) = mapped {
        failure = Some((a.migrations.len(), e));
    }
    if let Some((done, why)) = failure {
        undo(pool, &a, done);
        return Err(why);
    }
    Ok(Allocation {
        pool,
        range: a.range,
        va: a.va,
        moved: a.migrations.len() as u32,
        ticks: arch::counter() - t0,
        claim_ticks,
    })
}

fn undo(pool: usize, a: &CmaAllocation, done: usize) {
    let mut mem = MEM.lock();
    let Some(m) = mem.as_mut() else { return };
    let mut pools = CMA.lock();
    let Some(p) = pools.get_mut(pool) else { return };
    match p.abort_contig(&mut m.buddy, a, done) {
        Ok(Some(va)) => {
            if let Some(v) = VMALLOC.lock().as_mut() {
                let _ = v.free(va.base);
            }
        }
        Ok(None) => {}
        Err(e) => defmt::error!("cma: undoing an allocation: {=str}", format!("{e}").as_str()),
    }
}

/// Gives an allocation back: unmapped (if it was mapped) and its pages free in the pool.
pub fn free(a: &Allocation) -> Result<(), String> {
    let mut mem = MEM.lock();
    let m = mem.as_mut().ok_or("no page allocator")?;
    if let Some(va) = a.va {
        mmu::with_hyp_table(Some(&mut *m), |t, tm| t.unmap(tm, va.base, va.size))
            .ok_or("no Hyp map")?
            .map_err(|e| format!("unmapping the allocation: {e}"))?;
        VMALLOC.lock().as_mut().ok_or("no vmalloc")?.free(va.base).map_err(|e| format!("{e}"))?;
    }
    let mut pools = CMA.lock();
    let p = pools.get_mut(a.pool).ok_or("no such CMA pool")?;
    p.free_contig(&mut m.buddy, a.range.base).map_err(|e| format!("{e}"))?;
    Ok(())
}
