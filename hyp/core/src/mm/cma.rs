//! CMA: contiguous pools from `reusable` `shared-dma-pool` carveouts whose free pages back guest RAM until claimed.
//!
//! A pool is a range of frames and two bitmaps: pages *lent* to guests
//! (movable: the guest maps them in stage-2, and the pool records in each page
//! record which guest and at which IPA) and pages *allocated* contiguously;
//! the rest are free. [`CmaPool::lend`] hands free pages to a guest.
//! [`CmaPool::alloc_contig`] claims an aligned run, choosing the candidate
//! that needs the fewest moves, and returns one [`Migration`] per lent page in
//! its way: the monitor copies the page to a fresh page from the buddy
//! allocator, switches the guest's stage-2 entry, and invalidates the guest's
//! TLB entries by VMID, while the guest runs on. The allocation is the
//! caller's once every migration is done.
//!
//! An allocation may ask for no monitor mapping at all (seed 002): then no
//! vmalloc space is used, so a pool larger than vmalloc space can still be
//! allocated whole (for a device, or a guest, that needs only its physical
//! address).

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::buddy::{Buddy, BuddyError};
use super::page::{flags, Owner, Page, PageStore, Pfn};
use super::vmalloc::{VmKind, Vmalloc, VmallocError};
use crate::addr::{Ipa, PhysAddr, PhysRange, VirtRange, PAGE_SIZE, PA_LIMIT};
use crate::plan::Plan;

/// The `compatible` of a CMA pool carveout.
pub const SHARED_DMA_POOL: &str = "shared-dma-pool";

/// Why a pool refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CmaError {
    /// A pool page has no page record, or is not a reserved page (the buddy manages it, or another pool).
    NotReserved { pfn: Pfn },
    /// A pool of no whole page.
    Empty,
    /// A count of 0, or an alignment that is not a power of two.
    BadRequest { count: u64, align: u64 },
    /// Only `free` pages are free to lend.
    Exhausted { want: u64, free: u64 },
    /// No aligned run of `count` pages is free of contiguous allocations.
    NoRun { count: u64, align: u64 },
    /// The buddy allocator had no page to move a guest page to.
    Migration(BuddyError),
    /// No vmalloc space for the monitor's mapping.
    Vmalloc(VmallocError),
    /// The page is not lent from this pool.
    NotLent { pfn: Pfn },
    /// No contiguous allocation starts at this address.
    NotAllocated { pa: PhysAddr },
    /// The IPA is outside the 40-bit space.
    BadIpa { ipa: u64 },
}

impl fmt::Display for CmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NotReserved { pfn } => write!(f, "cma: {pfn} is not a reserved page with a record"),
            Self::Empty => write!(f, "cma: the pool holds no whole page"),
            Self::BadRequest { count, align } => {
                write!(f, "cma: {count} page(s) aligned to {align} page(s) is not a request")
            }
            Self::Exhausted { want, free } => write!(f, "cma: {want} page(s) asked to lend, {free} free"),
            Self::NoRun { count, align } => {
                write!(f, "cma: no run of {count} page(s) aligned to {align} page(s) free of other allocations")
            }
            Self::Migration(e) => write!(f, "cma: no page to move a guest page to: {e}"),
            Self::Vmalloc(e) => write!(f, "cma: {e}"),
            Self::NotLent { pfn } => write!(f, "cma: {pfn} is not lent from this pool"),
            Self::NotAllocated { pa } => write!(f, "cma: no allocation starts at {pa}"),
            Self::BadIpa { ipa } => write!(f, "cma: IPA {ipa:#x} is outside the 40-bit space"),
        }
    }
}

/// One guest page that a contiguous allocation must move out of its way.
///
/// The monitor: copies the page `from` to `to`; replaces the guest's stage-2
/// entry for `ipa` (break-before-make: invalidate the old entry, TLBI by IPA
/// or the VMID's whole stage-2, then write the new one; a block mapping over
/// `ipa` is split first); and invalidates the guest's TLB entries by VMID. To
/// keep the copy exact while the guest runs, the entry is made read-only (or
/// invalid) before the copy, so a write traps and waits for the switch.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Migration {
    /// The pool page the guest uses now.
    pub from: Pfn,
    /// A fresh page from the buddy allocator, held by the guest ([`Owner::Guest`]), its IPA recorded.
    pub to: Pfn,
    /// The guest's VMID (the TLB invalidation's).
    pub vmid: u8,
    /// Where the guest sees the page.
    pub ipa: Ipa,
}

/// A contiguous allocation from a pool.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CmaAllocation {
    /// The pages claimed.
    pub range: PhysRange,
    /// The monitor's virtual range for it (kind `cma` in vmallocinfo), to map
    /// with `range`; `None` when no mapping was asked for.
    pub va: Option<VirtRange>,
    /// What must happen before the range is usable, in frame order.
    pub migrations: Vec<Migration>,
}

/// One pool.
#[derive(Clone, Debug)]
pub struct CmaPool {
    name: String,
    base: u64,
    pages: u64,
    lent: Vec<u64>,
    contig: Vec<u64>,
    /// Live allocations: physical range and virtual range.
    allocations: Vec<(PhysRange, Option<VirtRange>)>,
}

fn bit(map: &[u64], i: u64) -> bool {
    map.get((i / 64) as usize).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

/// Set bits in `[start, end)`.
fn count_range(map: &[u64], start: u64, end: u64) -> u64 {
    let mut n = 0;
    let mut i = start;
    while i < end {
        let (word, bit) = ((i / 64) as usize, i % 64);
        let take = (64 - bit).min(end - i);
        let mask = if take == 64 { u64::MAX } else { ((1u64 << take) - 1) << bit };
        n += u64::from((map.get(word).copied().unwrap_or(0) & mask).count_ones());
        i += take;
    }
    n
}

fn set_bit(map: &mut [u64], i: u64, on: bool) {
    if let Some(w) = map.get_mut((i / 64) as usize) {
        if on {
            *w |= 1 << (i % 64);
        } else {
            *w &= !(1 << (i % 64));
        }
    }
}

impl CmaPool {
    /// A pool over the whole pages of `range`, whose records must exist and be
    /// reserved (the buddy allocator does not manage them); they are flagged CMA.
    pub fn new<S: PageStore>(name: &str, range: PhysRange, buddy: &mut Buddy<S>) -> Result<CmaPool, CmaError> {
        let (start, end) = Pfn::inside(&range);
        if start >= end {
            return Err(CmaError::Empty);
        }
        buddy.check_reserved(start.0, end.0).map_err(|e| match e {
            BuddyError::NotReserved { pfn } | BuddyError::NoRecord { pfn } => CmaError::NotReserved { pfn },
            _ => CmaError::NotReserved { pfn: start },
        })?;
        let mut pool = Page::reserved();
        pool.set_flags(flags::RESERVED | flags::CMA);
        // One fill per section (a section nobody used yet is written once).
        buddy.memmap_mut().fill_pfns(start.0, end.0, pool).map_err(|pfn| CmaError::NotReserved { pfn })?;
        let pages = end.0 - start.0;
        let words = pages.div_ceil(64) as usize;
        Ok(CmaPool {
            name: name.into(),
            base: start.0,
            pages,
            lent: vec![0; words],
            contig: vec![0; words],
            allocations: Vec::new(),
        })
    }

    /// A pool for every `reusable` `shared-dma-pool` carveout of `plan` ([`crate::plan::Carveout::is_cma_pool`]).
    pub fn from_plan<S: PageStore>(plan: &Plan, buddy: &mut Buddy<S>) -> Result<Vec<CmaPool>, CmaError> {
        plan.carveouts.iter().filter(|c| c.is_cma_pool()).map(|c| CmaPool::new(&c.name, c.range, buddy)).collect()
    }

    /// The carveout's node name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The pool's pages as a physical range.
    pub fn range(&self) -> PhysRange {
        PhysRange::from_raw(self.base * PAGE_SIZE, self.pages * PAGE_SIZE)
            .unwrap_or(PhysRange { base: PhysAddr::new(0), size: 0 })
    }
    /// Pages in the pool.
    pub fn total_pages(&self) -> u64 {
        self.pages
    }
    /// Pages lent to guests.
    pub fn lent_pages(&self) -> u64 {
        self.lent.iter().map(|w| u64::from(w.count_ones())).sum()
    }
    /// Pages in contiguous allocations.
    pub fn contig_pages(&self) -> u64 {
        self.contig.iter().map(|w| u64::from(w.count_ones())).sum()
    }
    /// Pages neither lent nor allocated.
    pub fn free_pages(&self) -> u64 {
        self.pages - self.lent_pages() - self.contig_pages()
    }
    /// Whether `pfn` is lent from this pool.
    pub fn is_lent(&self, pfn: Pfn) -> bool {
        pfn.0.checked_sub(self.base).is_some_and(|i| i < self.pages && bit(&self.lent, i))
    }
    /// The live allocations.
    pub fn allocations(&self) -> &[(PhysRange, Option<VirtRange>)] {
        &self.allocations
    }

    /// Lends `count` free pages to guest `vmid`, which maps page `i` of the
    /// result at `ipa + i * 4 KiB`. The highest free pages go first (contiguous
    /// allocations search from the bottom, so fewer moves). Returned in frame order.
    pub fn lend<S: PageStore>(
        &mut self,
        buddy: &mut Buddy<S>,
        count: u64,
        vmid: u8,
        ipa: Ipa,
    ) -> Result<Vec<Pfn>, CmaError> {
        let free = self.free_pages();
        if count > free {
            return Err(CmaError::Exhausted { want: count, free });
        }
        let last = ipa.raw().checked_add(count * PAGE_SIZE).filter(|&e| e <= PA_LIMIT);
        last.ok_or(CmaError::BadIpa { ipa: ipa.raw() })?;
        let mut got: Vec<u64> = (0..self.pages)
            .rev()
            .filter(|&i| !bit(&self.lent, i) && !bit(&self.contig, i))
            .take(count as usize)
            .collect();
        got.reverse();
        let mm = buddy.memmap_mut();
        for (n, &i) in got.iter().enumerate() {
            set_bit(&mut self.lent, i, true);
            if let Some(r) = mm.page_mut(Pfn(self.base + i)) {
                r.set_flags(flags::RESERVED | flags::CMA | flags::LENT);
                r.set_owner(Owner::Guest(vmid));
                // ipa + count pages < 2^40, so the frame fits 28 bits.
                r.set_ipa_pfn(((ipa.raw() + n as u64 * PAGE_SIZE) / PAGE_SIZE) as u32);
            }
        }
        Ok(got.into_iter().map(|i| Pfn(self.base + i)).collect())
    }

    /// Takes back a lent page (its guest unmapped it, or is gone).
    pub fn unlend<S: PageStore>(&mut self, buddy: &mut Buddy<S>, pfn: Pfn) -> Result<(), CmaError> {
        if !self.is_lent(pfn) {
            return Err(CmaError::NotLent { pfn });
        }
        set_bit(&mut self.lent, pfn.0 - self.base, false);
        if let Some(r) = buddy.memmap_mut().page_mut(pfn) {
            *r = Page::reserved();
            r.set_flags(flags::RESERVED | flags::CMA);
        }
        Ok(())
    }

    /// The guest and IPA a lent page is mapped at.
    pub fn lent_to<S: PageStore>(&self, buddy: &Buddy<S>, pfn: Pfn) -> Option<(u8, Ipa)> {
        if !self.is_lent(pfn) {
            return None;
        }
        let r = buddy.memmap().page(pfn)?;
        let Owner::Guest(vmid) = r.owner() else { return None };
        Some((vmid, Ipa::new(u64::from(r.ipa_pfn()) * PAGE_SIZE)))
    }

    /// Claims `count` pages whose first frame is a multiple of `align` pages.
    /// Of the candidate runs free of other allocations, the one with the fewest
    /// lent pages wins (the lowest on a tie); each lent page in it gets a fresh
    /// page from `buddy` and a [`Migration`]. With `map`, a virtual range of
    /// the size is reserved there for the monitor's mapping; without, no
    /// vmalloc space is used. On any failure nothing changes.
    pub fn alloc_contig<S: PageStore>(
        &mut self,
        buddy: &mut Buddy<S>,
        count: u64,
        align: u64,
        map: Option<&mut Vmalloc>,
    ) -> Result<CmaAllocation, CmaError> {
        if count == 0 || !align.is_power_of_two() {
            return Err(CmaError::BadRequest { count, align });
        }
        let no_run = CmaError::NoRun { count, align };
        if count > self.pages {
            return Err(no_run);
        }
        // Slide a window over the aligned candidates, keeping its lent and
        // allocated counts: O(pool / 64 + candidates), no heap.
        let mut best: Option<(u64, u64)> = None;
        let first = self.base.checked_next_multiple_of(align).ok_or(no_run)? - self.base;
        let mut s = first;
        let (mut lent, mut contig) = (count_range(&self.lent, s, s + count), count_range(&self.contig, s, s + count));
        while s + count <= self.pages {
            if contig == 0 && best.is_none_or(|(m, _)| lent < m) {
                best = Some((lent, self.base + s));
                if lent == 0 {
                    break;
                }
            }
            let (e, next) = (s + count, s.saturating_add(align));
            let (out_end, in_end) = (next.min(e), e.saturating_add(align).min(self.pages));
            let (in_start, out_start) = (e.max(next), s);
            lent = lent - count_range(&self.lent, out_start, out_end) + count_range(&self.lent, in_start, in_end);
            contig =
                contig - count_range(&self.contig, out_start, out_end) + count_range(&self.contig, in_start, in_end);
            s = next;
        }
        let (_, start) = best.ok_or(no_run)?;
        let range = PhysRange::from_raw(start * PAGE_SIZE, count * PAGE_SIZE).ok_or(no_run)?;

        // Virtual space first: the easiest to give back.
        let mut vmalloc = map;
        let va = match vmalloc.as_deref_mut() {
            Some(v) => Some(v.alloc_phys(range.size, PAGE_SIZE, VmKind::Cma, range.base).map_err(CmaError::Vmalloc)?),
            None => None,
        };
        // A fresh page for every lent page in the way.
        let mut migrations = Vec::new();
        for p in start..start + count {
            if !bit(&self.lent, p - self.base) {
                continue;
            }
            let Some((vmid, ipa)) = self.lent_to(buddy, Pfn(p)) else { continue };
            match buddy.alloc(0, Owner::Guest(vmid)) {
                Ok(to) => {
                    let _ = buddy.set_ipa(to, ipa);
                    migrations.push(Migration { from: Pfn(p), to, vmid, ipa });
                }
                Err(e) => {
                    for m in &migrations {
                        let _ = buddy.free(m.to, 0);
                    }
                    if let (Some(v), Some(va)) = (vmalloc, va) {
                        let _ = v.free(va.base);
                    }
                    return Err(CmaError::Migration(e));
                }
            }
        }
        // Commit.
        let mm = buddy.memmap_mut();
        for p in start..start + count {
            set_bit(&mut self.lent, p - self.base, false);
            set_bit(&mut self.contig, p - self.base, true);
            if let Some(r) = mm.page_mut(Pfn(p)) {
                *r = Page::reserved();
                r.set_flags(flags::RESERVED | flags::CMA);
                r.set_owner(Owner::Cma);
            }
        }
        self.allocations.push((range, va));
        Ok(CmaAllocation { range, va, migrations })
    }

    /// Gives back the allocation that starts at `pa`; its pages become free
    /// (lendable again). Returns its virtual range, if it had one: the caller
    /// unmaps it and frees it ([`Vmalloc::vunmap`]).
    pub fn free_contig<S: PageStore>(
        &mut self,
        buddy: &mut Buddy<S>,
        pa: PhysAddr,
    ) -> Result<Option<VirtRange>, CmaError> {
        let i = self.allocations.iter().position(|(r, _)| r.base == pa).ok_or(CmaError::NotAllocated { pa })?;
        let (range, va) = self.allocations.swap_remove(i);
        let (start, end) = Pfn::inside(&range);
        let mm = buddy.memmap_mut();
        for p in start.0..end.0 {
            set_bit(&mut self.contig, p - self.base, false);
            if let Some(r) = mm.page_mut(Pfn(p)) {
                *r = Page::reserved();
                r.set_flags(flags::RESERVED | flags::CMA);
            }
        }
        Ok(va)
    }

    /// Undoes `a` when its migrations stopped after the first `done` (those
    /// pages moved; the rest did not): every page not moved is lent again to
    /// its guest at its IPA (the guest still maps it), the fresh page meant
    /// for it goes back to `buddy`, and the rest of the range is free again.
    /// Returns the virtual range, if the allocation had one, for the caller to
    /// free. On an error nothing changes.
    pub fn abort_contig<S: PageStore>(
        &mut self,
        buddy: &mut Buddy<S>,
        a: &CmaAllocation,
        done: usize,
    ) -> Result<Option<VirtRange>, CmaError> {
        if !self.allocations.iter().any(|(r, _)| *r == a.range) {
            return Err(CmaError::NotAllocated { pa: a.range.base });
        }
        let undo = a.migrations.get(done..).unwrap_or(&[]);
        for m in undo {
            if !a.range.contains(m.from.raw_addr()) {
                return Err(CmaError::NotLent { pfn: m.from });
            }
        }
        // Every fresh page must be a guest's order-0 block, so the frees below cannot fail.
        for m in undo {
            match buddy.block_of(m.to) {
                Some(b) if b.order == 0 && b.owner == Owner::Guest(m.vmid) => {}
                _ => return Err(CmaError::NotLent { pfn: m.to }),
            }
        }
        for m in undo {
            buddy.free(m.to, 0).map_err(CmaError::Migration)?;
        }
        let va = self.free_contig(buddy, a.range.base)?;
        let mm = buddy.memmap_mut();
        for m in undo {
            set_bit(&mut self.lent, m.from.0 - self.base, true);
            if let Some(r) = mm.page_mut(m.from) {
                r.set_flags(flags::RESERVED | flags::CMA | flags::LENT);
                r.set_owner(Owner::Guest(m.vmid));
                r.set_ipa_pfn((m.ipa.raw() / PAGE_SIZE) as u32);
            }
        }
        Ok(va)
    }

    /// Checks the pool against its page records: bitmaps disjoint, every page
    /// flagged CMA, `LENT` exactly on lent pages (each with a guest owner),
    /// allocations exactly the allocated pages.
    pub fn check<S: PageStore>(&self, buddy: &Buddy<S>) -> Result<(), String> {
        let mut in_allocs = vec![false; self.pages as usize];
        for (r, _) in &self.allocations {
            let (s, e) = Pfn::inside(r);
            for p in s.0..e.0 {
                let slot = in_allocs
                    .get_mut((p.wrapping_sub(self.base)) as usize)
                    .ok_or_else(|| format!("{}: allocation {r} outside the pool", self.name))?;
                if *slot {
                    return Err(format!("{}: allocations overlap at {}", self.name, Pfn(p)));
                }
                *slot = true;
            }
        }
        for i in 0..self.pages {
            let pfn = Pfn(self.base + i);
            let (l, c) = (bit(&self.lent, i), bit(&self.contig, i));
            let r = buddy.memmap().page(pfn).ok_or_else(|| format!("{}: {pfn} has no record", self.name))?;
            if l && c {
                return Err(format!("{}: {pfn} is both lent and allocated", self.name));
            }
            if c != in_allocs[i as usize] {
                return Err(format!("{}: {pfn} allocated bit disagrees with the allocations", self.name));
            }
            if !r.has(flags::CMA) || !r.has(flags::RESERVED) || r.has(flags::LENT) != l {
                return Err(format!("{}: {pfn} record {r:?} disagrees with the pool", self.name));
            }
            if l && !matches!(r.owner(), Owner::Guest(_)) {
                return Err(format!("{}: lent {pfn} has owner {}", self.name, r.owner()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::VirtAddr;
    use crate::mm::page::{MemMap, Sections, VecPageStore};
    use crate::plan::layout::{VmallocRange, VmallocSource};
    use crate::plan::RangeSet;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn r(base: u64, size: u64) -> PhysRange {
        PhysRange::from_raw(base, size).unwrap()
    }

    /// 16 MiB at 0x40000000: a 4 MiB pool at 0x40400000, the rest in the buddy.
    fn setup() -> (Buddy<VecPageStore>, CmaPool) {
        let ram = [r(0x4000_0000, 16 * MIB)];
        let sections = Sections::new(&ram, &RangeSet::from_ranges(ram)).unwrap();
        let mm = MemMap::new(sections.clone(), VecPageStore::new(&sections)).unwrap();
        let mut buddy = Buddy::new(mm);
        buddy.add_free_range(r(0x4000_0000, 4 * MIB)).unwrap();
        buddy.add_free_range(r(0x4080_0000, 8 * MIB)).unwrap();
        let pool = CmaPool::new("cma@40400000", r(0x4040_0000, 4 * MIB), &mut buddy).unwrap();
        (buddy, pool)
    }

    fn vmalloc() -> Vmalloc {
        Vmalloc::from_ranges(&[VmallocRange {
            va: VirtAddr::new(0xf000_0000),
            size: 16 * MIB,
            source: VmallocSource::Dedicated,
        }])
    }

    #[test]
    fn pool_pages_are_not_the_buddys() {
        let (mut buddy, pool) = setup();
        assert_eq!(pool.total_pages(), 1024);
        assert_eq!(pool.free_pages(), 1024);
        pool.check(&buddy).unwrap();
        assert!(buddy.add_free_range(r(0x4040_0000, PAGE_SIZE)).is_err());
        assert!(buddy.free(Pfn(0x40400), 0).is_err());
        assert!(CmaPool::new("again", r(0x4040_0000, MIB), &mut buddy).is_err(), "pages already a pool's");
        assert!(CmaPool::new("buddy", r(0x4000_0000, MIB), &mut buddy).is_err(), "pages the buddy manages");
        // Deferred free pages read reserved, but are the buddy's all the same.
        let mut fresh = {
            let ram = [r(0x4000_0000, 16 * MIB)];
            let sections = Sections::new(&ram, &RangeSet::from_ranges(ram)).unwrap();
            Buddy::new(MemMap::new(sections.clone(), VecPageStore::new(&sections)).unwrap())
        };
        fresh.defer_free_range(r(0x4000_0000, 8 * MIB)).unwrap();
        assert_eq!(
            CmaPool::new("deferred", r(0x4070_0000, 2 * MIB), &mut fresh).unwrap_err(),
            CmaError::NotReserved { pfn: Pfn(0x40700) }
        );
        assert!(CmaPool::new("beside", r(0x4080_0000, 2 * MIB), &mut fresh).is_ok());
        assert_eq!(CmaPool::new("tiny", r(0x40c0_0001, 0x10), &mut buddy).unwrap_err(), CmaError::Empty);
    }

    #[test]
    fn contig_over_lent_pages_migrates_exactly_those() {
        let (mut buddy, mut pool) = setup();
        let lent = pool.lend(&mut buddy, 1000, 1, Ipa::new(0x4000_0000)).unwrap();
        assert_eq!(lent.len(), 1000);
        assert_eq!(lent[0], Pfn(0x40400 + 24), "the highest pages");
        assert!(lent.windows(2).all(|w| w[0].0 + 1 == w[1].0));
        assert_eq!(pool.lent_to(&buddy, lent[5]), Some((1, Ipa::new(0x4000_5000))));
        pool.check(&buddy).unwrap();
        assert_eq!(pool.lend(&mut buddy, 25, 2, Ipa::new(0)), Err(CmaError::Exhausted { want: 25, free: 24 }));

        let buddy_free = buddy.free_pages();
        // Two 2 MiB candidates: the lower has 488 lent pages, the upper 512.
        let a = pool.alloc_contig(&mut buddy, 512, 512, None).unwrap();
        assert_eq!(a.range, r(0x4040_0000, 2 * MIB));
        assert_eq!(a.va, None);
        assert_eq!(a.migrations.len(), 488);
        for (k, m) in a.migrations.iter().enumerate() {
            assert_eq!(m.from, Pfn(0x40400 + 24 + k as u64));
            assert_eq!(m.vmid, 1);
            assert_eq!(m.ipa, Ipa::new(0x4000_0000 + k as u64 * PAGE_SIZE));
            assert!(!a.range.contains(m.to.raw_addr()));
            assert_eq!(buddy.block_of(m.to).unwrap().owner, Owner::Guest(1));
            assert_eq!(buddy.ipa_of(m.to), Some(m.ipa.raw()));
        }
        assert_eq!(buddy.free_pages(), buddy_free - 488);
        assert_eq!(buddy.owner_pages(Owner::Guest(1)), 488);
        assert_eq!((pool.contig_pages(), pool.lent_pages(), pool.free_pages()), (512, 512, 0));
        pool.check(&buddy).unwrap();
        buddy.check().unwrap();

        // The other half is all lent; nothing else fits beside the allocation.
        assert_eq!(pool.alloc_contig(&mut buddy, 513, 1, None), Err(CmaError::NoRun { count: 513, align: 1 }));
        assert_eq!(
            pool.free_contig(&mut buddy, PhysAddr::new(0x4040_1000)),
            Err(CmaError::NotAllocated { pa: PhysAddr::new(0x4040_1000) })
        );
        assert_eq!(pool.free_contig(&mut buddy, a.range.base), Ok(None));
        assert_eq!((pool.contig_pages(), pool.lent_pages(), pool.free_pages()), (0, 512, 512));
        pool.check(&buddy).unwrap();
    }

    #[test]
    fn failure_changes_nothing() {
        let (mut buddy, mut pool) = setup();
        pool.lend(&mut buddy, 1024, 3, Ipa::new(0x8000_0000)).unwrap();
        // Drain the buddy so no migration target exists.
        while buddy.alloc(0, Owner::Monitor).is_ok() {}
        let mut v = vmalloc();
        let e = pool.alloc_contig(&mut buddy, 16, 16, Some(&mut v));
        assert_eq!(e, Err(CmaError::Migration(BuddyError::OutOfMemory { order: 0 })));
        assert_eq!(v.free_bytes(), v.total());
        assert_eq!(pool.lent_pages(), 1024);
        pool.check(&buddy).unwrap();
        assert_eq!(pool.alloc_contig(&mut buddy, 0, 1, None), Err(CmaError::BadRequest { count: 0, align: 1 }));
        assert_eq!(pool.alloc_contig(&mut buddy, 1, 3, None), Err(CmaError::BadRequest { count: 1, align: 3 }));
        assert_eq!(pool.alloc_contig(&mut buddy, 2000, 1, None), Err(CmaError::NoRun { count: 2000, align: 1 }));
    }

    #[test]
    fn unmapped_allocation_uses_no_vmalloc_space() {
        // Seed 002: a pool larger than vmalloc space, allocated whole without a mapping.
        let (mut buddy, mut pool) = setup();
        let mut v = Vmalloc::from_ranges(&[VmallocRange {
            va: VirtAddr::new(0xf000_0000),
            size: MIB,
            source: VmallocSource::Dedicated,
        }]);
        assert_eq!(
            pool.alloc_contig(&mut buddy, 1024, 1, Some(&mut v)).unwrap_err(),
            CmaError::Vmalloc(VmallocError::NoSpace { size: 4 * MIB, largest: MIB })
        );
        let whole = pool.alloc_contig(&mut buddy, 1024, 1, None).unwrap();
        assert_eq!(whole.range, pool.range());
        assert_eq!(v.free_bytes(), MIB);
        pool.free_contig(&mut buddy, whole.range.base).unwrap();
        // A mapped one takes vmalloc space, shown as cma.
        let mut v = vmalloc();
        let a = pool.alloc_contig(&mut buddy, 256, 256, Some(&mut v)).unwrap();
        let va = a.va.unwrap();
        assert_eq!(va.size, MIB);
        assert!(v.vmallocinfo()[0].contains("cma phys=0x40400000"), "{:?}", v.vmallocinfo());
        assert_eq!(pool.free_contig(&mut buddy, a.range.base), Ok(Some(va)));
        v.free(va.base).unwrap();
        assert_eq!(v.free_bytes(), v.total());
    }

    #[test]
    fn abort_puts_unmoved_pages_back_with_their_guests() {
        let (mut buddy, mut pool) = setup();
        pool.lend(&mut buddy, 1024, 2, Ipa::new(0x8000_0000)).unwrap();
        let free = buddy.free_pages();
        let a = pool.alloc_contig(&mut buddy, 256, 256, None).unwrap();
        assert_eq!(a.migrations.len(), 256);
        // The first 100 moved; the rest did not.
        assert_eq!(pool.abort_contig(&mut buddy, &a, 100), Ok(None));
        assert_eq!(buddy.free_pages(), free - 100, "the 100 moved pages stay the guest's");
        assert_eq!(pool.lent_pages(), 1024 - 100);
        assert_eq!(pool.free_pages(), 100);
        assert_eq!(pool.contig_pages(), 0);
        for m in &a.migrations[100..] {
            assert_eq!(pool.lent_to(&buddy, m.from), Some((2, m.ipa)));
        }
        for m in &a.migrations[..100] {
            assert!(!pool.is_lent(m.from));
            assert_eq!(buddy.block_of(m.to).unwrap().owner, Owner::Guest(2));
        }
        pool.check(&buddy).unwrap();
        buddy.check().unwrap();
        // Twice is refused.
        assert_eq!(pool.abort_contig(&mut buddy, &a, 100), Err(CmaError::NotAllocated { pa: a.range.base }));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Lend(u64, u8),
        Unlend(usize),
        Alloc(u64, u32, bool),
        Free(usize),
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Lend/unlend/alloc/free cycles keep the pool and the buddy consistent,
        /// every migration moves a page that was lent and lands outside the
        /// allocation, and giving everything back restores the free counts.
        #[test]
        fn cycles_return_free_counts(ops in proptest::collection::vec(prop_oneof![
            (1u64..300, 1u8..4).prop_map(|(c, v)| Op::Lend(c, v)),
            any::<usize>().prop_map(Op::Unlend),
            (1u64..600, 0u32..10, any::<bool>()).prop_map(|(c, a, m)| Op::Alloc(c, a, m)),
            any::<usize>().prop_map(Op::Free),
        ], 1..40)) {
            let (mut buddy, mut pool) = setup();
            let mut v = vmalloc();
            let buddy_free = buddy.free_pages();
            let mut lent: Vec<Pfn> = Vec::new();
            let mut moved: Vec<Pfn> = Vec::new();
            let mut allocs: Vec<CmaAllocation> = Vec::new();
            for op in ops {
                match op {
                    Op::Lend(count, vmid) => {
                        if let Ok(pages) = pool.lend(&mut buddy, count, vmid, Ipa::new(0x4000_0000)) {
                            lent.extend(pages);
                        }
                    }
                    Op::Unlend(i) if !lent.is_empty() => {
                        let p = lent.swap_remove(i % lent.len());
                        pool.unlend(&mut buddy, p).unwrap();
                        prop_assert!(pool.unlend(&mut buddy, p).is_err());
                    }
                    Op::Alloc(count, align_log, map) => {
                        // The candidate a brute-force search picks: fewest lent pages, lowest first.
                        let align = 1u64 << align_log;
                        let base = pool.range().start() / PAGE_SIZE;
                        let taken = |p: u64| pool.allocations().iter().any(|(r, _)| r.contains(p * PAGE_SIZE));
                        let mut want_best: Option<(u64, u64)> = None;
                        let mut c = base.next_multiple_of(align);
                        while c + count <= base + pool.total_pages() {
                            if !(c..c + count).any(taken) {
                                let cost = (c..c + count).filter(|&p| pool.is_lent(Pfn(p))).count() as u64;
                                if want_best.is_none_or(|(m, _)| cost < m) { want_best = Some((cost, c)); }
                            }
                            c += align;
                        }
                        let vm = if map { Some(&mut v) } else { None };
                        let got = pool.alloc_contig(&mut buddy, count, align, vm);
                        prop_assert_eq!(
                            got.as_ref().ok().map(|a| (a.migrations.len() as u64, a.range.start() / PAGE_SIZE)),
                            want_best,
                            "the run with the fewest moves, lowest first"
                        );
                        if let Ok(a) = got {
                            prop_assert_eq!(a.range.start() / PAGE_SIZE % (1 << align_log), 0);
                            prop_assert_eq!(a.va.is_some(), map);
                            let in_way: Vec<Pfn> = lent.iter().copied().filter(|p| a.range.contains(p.raw_addr())).collect();
                            let mut from: Vec<Pfn> = a.migrations.iter().map(|m| m.from).collect();
                            from.sort();
                            let mut want = in_way.clone();
                            want.sort();
                            prop_assert_eq!(from, want);
                            lent.retain(|p| !a.range.contains(p.raw_addr()));
                            moved.extend(a.migrations.iter().map(|m| m.to));
                            allocs.push(a);
                        }
                    }
                    Op::Free(i) if !allocs.is_empty() => {
                        let a = allocs.swap_remove(i % allocs.len());
                        let va = pool.free_contig(&mut buddy, a.range.base).unwrap();
                        prop_assert_eq!(va, a.va);
                        if let Some(va) = va { v.free(va.base).unwrap(); }
                    }
                    _ => {}
                }
                pool.check(&buddy).map_err(TestCaseError::fail)?;
                buddy.check().map_err(TestCaseError::fail)?;
                prop_assert_eq!(pool.lent_pages(), lent.len() as u64);
                prop_assert_eq!(buddy.free_pages() + moved.len() as u64, buddy_free);
            }
            for a in allocs {
                if let Some(va) = pool.free_contig(&mut buddy, a.range.base).unwrap() { v.free(va.base).unwrap(); }
            }
            for p in lent { pool.unlend(&mut buddy, p).unwrap(); }
            for p in moved { buddy.free(p, 0).unwrap(); }
            prop_assert_eq!(pool.free_pages(), pool.total_pages());
            prop_assert_eq!(buddy.free_pages(), buddy_free);
            prop_assert_eq!(v.free_bytes(), v.total());
            pool.check(&buddy).map_err(TestCaseError::fail)?;
        }
    }
}
