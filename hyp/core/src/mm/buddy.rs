//! The binary buddy allocator over the page database: every page of RAM that no carveout, module or image owns.
//!
//! Blocks are 2^order pages, naturally aligned in physical frame numbers (an
//! order-9 block is a 2 MiB-aligned 2 MiB, usable as one level-2 block in
//! stage-2 or Hyp stage-1). A free block is its head record flagged `FREE`
//! with its order, linked into the free list of that order through the
//! records' `u32` index links; an allocated block is its head flagged `HEAD`
//! with its order and [`Owner`]. Freeing merges a block with its buddy (the
//! block at `pfn ^ (1 << order)`) as long as the buddy is a free block of the
//! same order, so when everything is free again the lists hold the largest
//! blocks the managed ranges allow.
//!
//! Guest RAM comes from [`Buddy::alloc_range`] (the plan chose the extents),
//! table pages and monitor pages from [`Buddy::alloc`], contiguous runs from
//! [`Buddy::alloc_contig`]. Nothing here panics on bad input: a double free, a
//! frame without a record, a wrong order or a range that is not free is a
//! [`BuddyError`] and leaves the allocator as it was.
//!
//! Free memory enters the lists in the largest aligned blocks its range
//! allows, and may enter them later than it is handed over: memory given with
//! [`Buddy::defer_free_range`] is counted free at once, but its page records
//! are not touched (they stay unready in the [`MemMap`]) until an allocation
//! needs it or someone with time to spare calls [`Buddy::grow`]. Every way a
//! page is handed out (`alloc`, `alloc_range`, `alloc_contig`) first grows the
//! lists from deferred memory when they cannot serve the request, lowest
//! addresses first, so a page is never handed out before its record is
//! written (Linux's `DEFERRED_STRUCT_PAGE_INIT` and `deferred_grow_zone`).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use super::page::{flags, MemMap, Owner, Page, PageStore, Pfn, NIL, PAGES_PER_SECTION};
use crate::addr::{Ipa, PhysRange, PAGE_SIZE};

/// The default largest order: 2^10 pages, 4 MiB (Linux's MAX_ORDER - 1 on 32-bit Arm).
pub const MAX_ORDER: u8 = 10;
/// The largest order a [`Buddy`] may be built with: 2^18 pages, 1 GiB (a level-1 block).
pub const MAX_ORDER_LIMIT: u8 = 18;
/// Pages an allocation that finds the lists empty moves from deferred memory
/// into them at least: 32 MiB (a few thousand records, a few dozen blocks).
pub const GROW_PAGES: u64 = 8192;

/// Why the allocator refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BuddyError {
    /// `order` is above the allocator's largest order.
    BadOrder { order: u8, max: u8 },
    /// Pages cannot be allocated to [`Owner::Free`].
    BadOwner,
    /// A count of 0 pages, or an alignment that is not a power of two.
    BadRequest { count: u64, align: u64 },
    /// No free block of `order` or larger.
    OutOfMemory { order: u8 },
    /// No run of `count` free pages aligned to `align` pages.
    NoContiguous { count: u64, align: u64 },
    /// The frame has no page record (outside RAM's span, or in an absent section).
    NoRecord { pfn: Pfn },
    /// The frame is not a reserved page, so it cannot be handed to the allocator (it is managed already, or CMA).
    NotReserved { pfn: Pfn },
    /// The frame is not free.
    NotFree { pfn: Pfn },
    /// The frame is not the head of an allocated block (a double free, a tail page, a foreign page).
    NotAllocated { pfn: Pfn },
    /// The block at `pfn` has order `actual`, not `order`.
    WrongOrder { pfn: Pfn, order: u8, actual: u8 },
    /// The block at `pfn` runs past the end of the range being freed.
    PartialBlock { pfn: Pfn },
    /// A record the allocator relies on is missing or inconsistent (memory corruption, or a bug).
    Corrupt { pfn: Pfn },
}

impl fmt::Display for BuddyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadOrder { order, max } => write!(f, "buddy: order {order} is above the largest order {max}"),
            Self::BadOwner => write!(f, "buddy: pages cannot be allocated to nobody"),
            Self::BadRequest { count, align } => {
                write!(f, "buddy: {count} page(s) aligned to {align} page(s) is not a request")
            }
            Self::OutOfMemory { order } => write!(f, "buddy: no free block of order {order} or larger"),
            Self::NoContiguous { count, align } => {
                write!(f, "buddy: no run of {count} free page(s) aligned to {align} page(s)")
            }
            Self::NoRecord { pfn } => write!(f, "buddy: {pfn} has no page record"),
            Self::NotReserved { pfn } => write!(f, "buddy: {pfn} is managed already or belongs to a CMA pool"),
            Self::NotFree { pfn } => write!(f, "buddy: {pfn} is not free"),
            Self::NotAllocated { pfn } => write!(f, "buddy: {pfn} is not the head of an allocated block"),
            Self::WrongOrder { pfn, order, actual } => {
                write!(f, "buddy: the block at {pfn} has order {actual}, not {order}")
            }
            Self::PartialBlock { pfn } => write!(f, "buddy: the block at {pfn} runs past the range being freed"),
            Self::Corrupt { pfn } => write!(f, "buddy: the record of {pfn} is inconsistent"),
        }
    }
}

/// One block as [`Buddy::block_of`] finds it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Block {
    /// The block's first frame.
    pub pfn: Pfn,
    /// log2 of its pages.
    pub order: u8,
    /// [`Owner::Free`] for a free block.
    pub owner: Owner,
}

impl Block {
    /// Pages in the block.
    pub fn pages(&self) -> u64 {
        1 << self.order
    }
    /// Whether the block is free.
    pub fn is_free(&self) -> bool {
        self.owner == Owner::Free
    }
}

/// A binary buddy allocator over a [`MemMap`].
pub struct Buddy<S: PageStore> {
    mm: MemMap<S>,
    max_order: u8,
    /// Head of each order's free list (an index into the page array), or NIL.
    heads: [u32; MAX_ORDER_LIMIT as usize + 1],
    /// Free blocks per order.
    blocks: [u64; MAX_ORDER_LIMIT as usize + 1],
    /// Pages in the free lists.
    free_pages: u64,
    managed_pages: u64,
    /// Free memory not in the lists yet, as frame ranges `[start, end)`:
    /// sorted, disjoint, not adjacent; their records are untouched.
    deferred: Vec<(u64, u64)>,
    deferred_pages: u64,
    /// Allocated pages per owner kind (the `Guest` slot unused).
    by_kind: [u64; Owner::KINDS],
    /// Allocated pages per guest VMID.
    by_guest: [u64; 256],
}

impl<S: PageStore> fmt::Debug for Buddy<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buddy")
            .field("max_order", &self.max_order)
            .field("managed_pages", &self.managed_pages)
            .field("free_pages", &self.free_pages)
            .field("deferred_pages", &self.deferred_pages)
            .field("free_blocks", &&self.blocks[..=self.max_order as usize])
            .finish()
    }
}

/// Pages in a block of `order` (saturating, so a corrupted record's order cannot overflow a shift).
const fn pages(order: u8) -> u64 {
    if order < 64 {
        1 << order
    } else {
        u64::MAX
    }
}

impl<S: PageStore> Buddy<S> {
    /// An allocator with no pages yet and orders up to [`MAX_ORDER`].
    pub fn new(mm: MemMap<S>) -> Buddy<S> {
        Buddy {
            mm,
            max_order: MAX_ORDER,
            heads: [NIL; MAX_ORDER_LIMIT as usize + 1],
            blocks: [0; MAX_ORDER_LIMIT as usize + 1],
            free_pages: 0,
            managed_pages: 0,
            deferred: Vec::new(),
            deferred_pages: 0,
            by_kind: [0; Owner::KINDS],
            by_guest: [0; 256],
        }
    }

    /// An allocator with orders up to `max_order` (at most [`MAX_ORDER_LIMIT`]:
    /// 18 lets whole 1 GiB blocks form).
    pub fn with_max_order(mm: MemMap<S>, max_order: u8) -> Result<Buddy<S>, BuddyError> {
        if max_order > MAX_ORDER_LIMIT {
            return Err(BuddyError::BadOrder { order: max_order, max: MAX_ORDER_LIMIT });
        }
        Ok(Buddy { max_order, ..Buddy::new(mm) })
    }

    /// The page database (read-only: the allocator owns the records of the pages it manages).
    pub fn memmap(&self) -> &MemMap<S> {
        &self.mm
    }

    /// The page database for the records the allocator does not manage (CMA pools).
    pub(crate) fn memmap_mut(&mut self) -> &mut MemMap<S> {
        &mut self.mm
    }

    /// The largest order blocks reach.
    pub fn max_order(&self) -> u8 {
        self.max_order
    }
    /// Pages free now, deferred ones included.
    pub fn free_pages(&self) -> u64 {
        self.free_pages + self.deferred_pages
    }
    /// Free pages whose records are not written yet (not in the lists).
    pub fn deferred_pages(&self) -> u64 {
        self.deferred_pages
    }
    /// The deferred frame ranges `[start, end)`, lowest first.
    pub fn deferred_ranges(&self) -> &[(u64, u64)] {
        &self.deferred
    }
    /// Pages the allocator manages, free or not.
    pub fn managed_pages(&self) -> u64 {
        self.managed_pages
    }
    /// Free blocks of each order, `0..=max_order`.
    pub fn free_blocks(&self) -> &[u64] {
        &self.blocks[..=self.max_order as usize]
    }

    /// Pages held by `owner` ([`Owner::Free`]: free pages).
    pub fn owner_pages(&self, owner: Owner) -> u64 {
        match owner {
            Owner::Free => self.free_pages(),
            Owner::Guest(vmid) => self.by_guest[vmid as usize],
            other => self.by_kind[other.encode().0 as usize],
        }
    }

    /// Pages by owner: free first, then every owner holding any. The counts sum to [`managed_pages`](Self::managed_pages).
    pub fn pages_by_owner(&self) -> Vec<(Owner, u64)> {
        let mut out = Vec::new();
        out.push((Owner::Free, self.free_pages()));
        for owner in [Owner::Monitor, Owner::Stage2Tables, Owner::HypTables, Owner::Vmemmap, Owner::Cma] {
            let n = self.owner_pages(owner);
            if n > 0 {
                out.push((owner, n));
            }
        }
        for (vmid, &n) in self.by_guest.iter().enumerate() {
            if n > 0 {
                out.push((Owner::Guest(vmid as u8), n));
            }
        }
        out
    }

    fn account(&mut self, owner: Owner, n: u64, add: bool) {
        let slot = match owner {
            Owner::Free => return,
            Owner::Guest(vmid) => &mut self.by_guest[vmid as usize],
            other => &mut self.by_kind[other.encode().0 as usize],
        };
        *slot = if add { slot.saturating_add(n) } else { slot.saturating_sub(n) };
    }

    // --- records ---

    fn index(&self, pfn: u64) -> Result<u32, BuddyError> {
        self.mm.sections().index_of(Pfn(pfn)).ok_or(BuddyError::NoRecord { pfn: Pfn(pfn) })
    }

    fn rec(&self, pfn: u64) -> Result<Page, BuddyError> {
        self.mm.page(Pfn(pfn)).copied().ok_or(BuddyError::NoRecord { pfn: Pfn(pfn) })
    }

    /// The record at `idx`, which heads a free or allocated block (so its section is initialised), for writing.
    fn rec_at_mut(&mut self, idx: u32) -> Result<&mut Page, BuddyError> {
        let pfn = self.mm.sections().pfn_at(idx);
        self.mm.ready_page_mut(idx).ok_or(BuddyError::Corrupt { pfn })
    }

    fn set_rec(&mut self, pfn: u64, page: Page) -> Result<(), BuddyError> {
        let idx = self.index(pfn)?;
        *self.rec_at_mut(idx)? = page;
        Ok(())
    }

    /// Links the free block headed at `idx` into the list of `order`.
    fn push(&mut self, order: u8, idx: u32) -> Result<(), BuddyError> {
        if order > self.max_order {
            return Err(BuddyError::Corrupt { pfn: self.mm.sections().pfn_at(idx) });
        }
        let head = self.heads[order as usize];
        {
            let p = self.rec_at_mut(idx)?;
            *p = Page::tail();
            p.set_flags(flags::FREE);
            p.set_order(order);
            p.set_links(NIL, head);
        }
        if head != NIL {
            let next = self.rec_at_mut(head)?;
            let next_next = next.next();
            next.set_links(idx, next_next);
        }
        self.heads[order as usize] = idx;
        self.blocks[order as usize] += 1;
        Ok(())
    }

    /// Unlinks the free block headed at `idx` from the list of `order`; its record becomes a tail.
    fn unlink(&mut self, order: u8, idx: u32) -> Result<(), BuddyError> {
        if order > self.max_order {
            return Err(BuddyError::Corrupt { pfn: self.mm.sections().pfn_at(idx) });
        }
        let p = *self.rec_at_mut(idx)?;
        let (prev, next) = (p.prev(), p.next());
        if prev != NIL {
            let pp = self.rec_at_mut(prev)?;
            let pp_prev = pp.prev();
            pp.set_links(pp_prev, next);
        } else {
            self.heads[order as usize] = next;
        }
        if next != NIL {
            let np = self.rec_at_mut(next)?;
            let np_next = np.next();
            np.set_links(prev, np_next);
        }
        *self.rec_at_mut(idx)? = Page::tail();
        self.blocks[order as usize] = self.blocks[order as usize].saturating_sub(1);
        Ok(())
    }

    /// Frees the block of `order` at `pfn` (its records already tails), merging with free buddies.
    fn release(&mut self, mut pfn: u64, mut order: u8) -> Result<(), BuddyError> {
        while order < self.max_order {
            let buddy = pfn ^ pages(order);
            let Some(bidx) = self.mm.sections().index_of(Pfn(buddy)) else { break };
            let b = self.mm.page_at(bidx).copied().ok_or(BuddyError::Corrupt { pfn: Pfn(buddy) })?;
            if !(b.has(flags::FREE) && b.order() == order) {
                break;
            }
            self.unlink(order, bidx)?;
            pfn = pfn.min(buddy);
            order += 1;
        }
        let idx = self.index(pfn)?;
        self.push(order, idx)
    }

    /// The largest order a block at `pfn` can have without running past `end`.
    fn fit(&self, pfn: u64, end: u64) -> u8 {
        let mut order = 0;
        while order < self.max_order && pfn.is_multiple_of(pages(order + 1)) && pfn + pages(order + 1) <= end {
            order += 1;
        }
        order
    }

    /// The block (free or allocated) that holds `pfn`, if the allocator manages it.
    pub fn block_of(&self, pfn: Pfn) -> Option<Block> {
        for o in 0..=self.max_order {
            let head = pfn.0 & !(pages(o) - 1);
            let Some(p) = self.mm.page(Pfn(head)) else { continue };
            let is_head = (p.has(flags::FREE) || p.has(flags::HEAD)) && p.order() <= self.max_order;
            if is_head && head + pages(p.order()) > pfn.0 {
                let owner = if p.has(flags::FREE) { Owner::Free } else { p.owner() };
                return Some(Block { pfn: Pfn(head), order: p.order(), owner });
            }
        }
        None
    }

    // --- adding memory ---

    /// Hands the whole pages inside `range` to the allocator as free memory.
    /// Every one must have a record and be reserved (not managed yet, not CMA);
    /// otherwise nothing changes. Returns the pages added.
    pub fn add_free_range(&mut self, range: PhysRange) -> Result<u64, BuddyError> {
        let (start, end) = Pfn::inside(&range);
        self.check_reserved(start.0, end.0)?;
        self.list_free(start.0, end.0)?;
        let n = end.0 - start.0;
        self.managed_pages += n;
        Ok(n)
    }

    /// Puts the checked reserved frames `[start, end)` in the free lists as the largest aligned blocks.
    fn list_free(&mut self, start: u64, end: u64) -> Result<(), BuddyError> {
        let mut p = start;
        while p < end {
            let order = self.fit(p, end);
            self.mm.fill_pfns(p, p + pages(order), Page::tail()).map_err(|pfn| BuddyError::NoRecord { pfn })?;
            self.release(p, order)?;
            self.free_pages += pages(order);
            p += pages(order);
        }
        Ok(())
    }

    /// Hands the whole pages inside `range` to the allocator as free memory
    /// whose records are written later: they count as free and managed at
    /// once, but enter the free lists only when an allocation needs them or
    /// [`grow`](Self::grow) is called. The same checks as
    /// [`add_free_range`](Self::add_free_range); costs nothing per page.
    pub fn defer_free_range(&mut self, range: PhysRange) -> Result<u64, BuddyError> {
        let (start, end) = Pfn::inside(&range);
        let (start, end) = (start.0, end.0);
        if start >= end {
            return Ok(0);
        }
        self.check_reserved(start, end)?;
        let i = self.deferred.partition_point(|&(_, e)| e < start);
        self.deferred.insert(i, (start, end));
        // Merge with the neighbours it touches (check_reserved ruled out overlaps).
        if i + 1 < self.deferred.len() && self.deferred[i + 1].0 == end {
            self.deferred[i].1 = self.deferred[i + 1].1;
            self.deferred.remove(i + 1);
        }
        if i > 0 && self.deferred[i - 1].1 == start {
            self.deferred[i - 1].1 = self.deferred[i].1;
            self.deferred.remove(i);
        }
        let n = end - start;
        self.managed_pages += n;
        self.deferred_pages += n;
        Ok(n)
    }

    /// Moves up to about `max` pages of deferred memory, lowest first, into the
    /// free lists, writing their records (a chunk ends on a block of the
    /// largest order where the range allows). Returns the pages moved: 0 when
    /// nothing is deferred.
    pub fn grow(&mut self, max: u64) -> Result<u64, BuddyError> {
        let Some(&(start, end)) = self.deferred.first() else { return Ok(0) };
        let max = max.max(1);
        let mut stop = end;
        if end - start > max {
            let aligned = (start + max) & !(pages(self.max_order) - 1);
            stop = if aligned > start { aligned } else { start + max };
        }
        self.undefer(start, stop)?;
        Ok(stop - start)
    }

    /// Moves every deferred page inside frames `[lo, hi)` into the free lists.
    fn grow_within(&mut self, lo: u64, hi: u64) -> Result<u64, BuddyError> {
        let mut moved = 0;
        while let Some(&(s, e)) = self.deferred.iter().find(|&&(s, e)| s < hi && e > lo) {
            let (a, b) = (s.max(lo), e.min(hi));
            self.undefer(a, b)?;
            moved += b - a;
        }
        Ok(moved)
    }

    /// Takes `[start, end)` (inside one deferred range) out of the deferred
    /// set and into the free lists. On an error the range stays deferred.
    fn undefer(&mut self, start: u64, end: u64) -> Result<(), BuddyError> {
        let i = self
            .deferred
            .iter()
            .position(|&(s, e)| s <= start && end <= e)
            .ok_or(BuddyError::Corrupt { pfn: Pfn(start) })?;
        let (s, e) = self.deferred[i];
        let keep: Vec<(u64, u64)> = [(s, start), (end, e)].into_iter().filter(|&(a, b)| a < b).collect();
        self.deferred.splice(i..=i, keep.iter().copied());
        // The records must still read reserved: nobody may have claimed deferred pages meanwhile.
        let ok = self.check_reserved(start, end).and_then(|()| self.list_free(start, end));
        if let Err(err) = ok {
            // Put the range back where it was; what list_free listed is not undone (a corrupt map).
            let j = self.deferred.partition_point(|&(_, b)| b < start);
            self.deferred.splice(j..j + keep.len(), [(s, e)]);
            return Err(err);
        }
        self.deferred_pages -= end - start;
        Ok(())
    }

    /// Whether any page of frames `[lo, hi)` is deferred.
    fn deferred_in(&self, lo: u64, hi: u64) -> bool {
        self.deferred.iter().any(|&(s, e)| s < hi && e > lo)
    }

    /// Hands the whole pages inside `range` to the allocator as already
    /// allocated to `owner` (what was taken before the allocator existed: the
    /// vmemmap backing, the first tables). They are freed like any other block
    /// ([`free_range`](Self::free_range)).
    pub fn add_allocated_range(&mut self, range: PhysRange, owner: Owner) -> Result<u64, BuddyError> {
        if owner == Owner::Free {
            return Err(BuddyError::BadOwner);
        }
        let (start, end) = Pfn::inside(&range);
        self.check_reserved(start.0, end.0)?;
        self.mark_allocated(start.0, end.0, owner)?;
        let n = end.0 - start.0;
        self.managed_pages += n;
        self.account(owner, n, true);
        Ok(n)
    }

    /// Checks that every frame in `[start, end)` has a reserved record and is
    /// not the allocator's (deferred pages read reserved but are): the pages a
    /// range handed to the allocator, or to a CMA pool, must be.
    pub(crate) fn check_reserved(&self, start: u64, end: u64) -> Result<(), BuddyError> {
        // Deferred pages read reserved but are the allocator's already.
        if let Some(&(s, _)) = self.deferred.iter().find(|&&(s, e)| s < end && e > start) {
            return Err(BuddyError::NotReserved { pfn: Pfn(s.max(start)) });
        }
        // One pass per section on the fast path (none for an unready one); the slow one only names the culprit.
        if self.mm.all_pfns(start, end, &|p| p.flags() == flags::RESERVED) {
            return Ok(());
        }
        for p in start..end {
            if self.rec(p)?.flags() != flags::RESERVED {
                return Err(BuddyError::NotReserved { pfn: Pfn(p) });
            }
        }
        Ok(())
    }

    /// Writes `[start, end)` as allocated blocks of `owner`, largest first.
    fn mark_allocated(&mut self, start: u64, end: u64, owner: Owner) -> Result<(), BuddyError> {
        let mut p = start;
        while p < end {
            let order = self.fit(p, end);
            // The whole block, head included, so an unready section is written once.
            self.mm.fill_pfns(p, p + pages(order), Page::tail()).map_err(|pfn| BuddyError::NoRecord { pfn })?;
            let mut head = Page::tail();
            head.set_flags(flags::HEAD);
            head.set_order(order);
            head.set_owner(owner);
            self.set_rec(p, head)?;
            p += pages(order);
        }
        Ok(())
    }

    // --- allocating ---

    /// A block of 2^`order` pages for `owner`, the head's frame returned.
    pub fn alloc(&mut self, order: u8, owner: Owner) -> Result<Pfn, BuddyError> {
        if order > self.max_order {
            return Err(BuddyError::BadOrder { order, max: self.max_order });
        }
        if owner == Owner::Free {
            return Err(BuddyError::BadOwner);
        }
        let mut o = loop {
            if let Some(o) = (order..=self.max_order).find(|&o| self.heads[o as usize] != NIL) {
                break o;
            }
            // Nothing listed is large enough: list more of the deferred memory.
            if self.grow(GROW_PAGES.max(pages(self.max_order)))? == 0 {
                return Err(BuddyError::OutOfMemory { order });
            }
        };
        let idx = self.heads[o as usize];
        self.unlink(o, idx)?;
        let pfn = self.mm.sections().pfn_at(idx).0;
        while o > order {
            o -= 1;
            let upper = self.index(pfn + pages(o))?;
            self.push(o, upper)?;
        }
        let p = self.rec_at_mut(idx)?;
        p.set_flags(flags::HEAD);
        p.set_order(order);
        p.set_owner(owner);
        self.free_pages -= pages(order);
        self.account(owner, pages(order), true);
        Ok(Pfn(pfn))
    }

    /// Allocates exactly the whole pages inside `range` to `owner` (a guest's
    /// extent from the plan), every one of which must be free. The range is
    /// held as the largest aligned blocks that tile it.
    pub fn alloc_range(&mut self, range: PhysRange, owner: Owner) -> Result<(), BuddyError> {
        if owner == Owner::Free {
            return Err(BuddyError::BadOwner);
        }
        let (start, end) = Pfn::inside(&range);
        let (start, end) = (start.0, end.0);
        // Deferred pages in (the largest blocks around) the range join the lists first.
        if self.deferred_in(start, end) {
            let big = pages(self.max_order);
            self.grow_within(start & !(big - 1), end.saturating_add(big - 1) & !(big - 1))?;
        }
        // Check: every page inside a free block.
        let mut p = start;
        while p < end {
            match self.block_of(Pfn(p)) {
                Some(b) if b.is_free() => p = b.pfn.0 + b.pages(),
                _ => return Err(BuddyError::NotFree { pfn: Pfn(p) }),
            }
        }
        // Take the free blocks, give back the parts outside the range.
        let mut p = start;
        while p < end {
            let b = self.block_of(Pfn(p)).ok_or(BuddyError::Corrupt { pfn: Pfn(p) })?;
            let (head, stop) = (b.pfn.0, b.pfn.0 + b.pages());
            let idx = self.index(head)?;
            self.unlink(b.order, idx)?;
            for (lo, hi) in [(head, start.max(head)), (end.min(stop), stop)] {
                let mut q = lo;
                while q < hi {
                    let order = self.fit(q, hi);
                    let qi = self.index(q)?;
                    self.push(order, qi)?;
                    q += pages(order);
                }
            }
            p = stop;
        }
        self.mark_allocated(start, end, owner)?;
        self.free_pages -= end - start;
        self.account(owner, end - start, true);
        Ok(())
    }

    /// A run of `count` free pages whose first frame is a multiple of `align`
    /// (a power of two, in pages), inside `within` if given, for `owner`. The
    /// lowest such run is taken. Returns its physical range.
    pub fn alloc_contig(
        &mut self,
        count: u64,
        align: u64,
        within: Option<PhysRange>,
        owner: Owner,
    ) -> Result<PhysRange, BuddyError> {
        if count == 0 || !align.is_power_of_two() {
            return Err(BuddyError::BadRequest { count, align });
        }
        if owner == Owner::Free {
            return Err(BuddyError::BadOwner);
        }
        match self.find_contig(count, align, within) {
            Ok(range) => self.alloc_range(range, owner).map(|()| range),
            Err(none) => {
                // Deferred memory in the window may hold a run: list it and look again.
                let (lo, hi) = self.window(within);
                if self.deferred_in(lo, hi) {
                    self.grow_within(lo, hi)?;
                    let range = self.find_contig(count, align, within)?;
                    self.alloc_range(range, owner)?;
                    return Ok(range);
                }
                Err(none)
            }
        }
    }

    /// The frames `[lo, hi)` a contiguous search covers: `within`, inside the span.
    fn window(&self, within: Option<PhysRange>) -> (u64, u64) {
        let secs = self.mm.sections();
        let (span_lo, span_hi) = (secs.base_pfn().0, secs.base_pfn().0 + secs.span_pages());
        match within {
            Some(r) => {
                let (s, e) = Pfn::inside(&r);
                (s.0.max(span_lo), e.0.min(span_hi))
            }
            None => (span_lo, span_hi),
        }
    }

    /// The lowest run of `count` listed free pages aligned to `align` inside `within`.
    fn find_contig(&self, count: u64, align: u64, within: Option<PhysRange>) -> Result<PhysRange, BuddyError> {
        let none = BuddyError::NoContiguous { count, align };
        let span_lo = self.mm.sections().base_pfn().0;
        let (lo, hi) = self.window(within);
        // Walk block by block from a point no block straddles.
        let mut p = (lo & !(pages(self.max_order) - 1)).max(span_lo);
        let mut run: Option<u64> = None;
        let mut found = None;
        while p < hi {
            // No record, or an unready section (nothing of it is listed): skip the section.
            let rec = self.mm.page(Pfn(p)).filter(|_| self.mm.pfn_ready(Pfn(p)));
            let Some(rec) = rec else {
                run = None;
                p = (p / PAGES_PER_SECTION + 1) * PAGES_PER_SECTION;
                continue;
            };
            if rec.has(flags::FREE) {
                let stop = p.saturating_add(pages(rec.order()));
                let rs = *run.get_or_insert(p);
                let cand = rs.max(lo).checked_next_multiple_of(align).ok_or(none)?;
                if cand.checked_add(count).is_some_and(|e| e <= stop.min(hi)) {
                    found = Some(cand);
                    break;
                }
                p = stop;
            } else if rec.has(flags::HEAD) {
                run = None;
                p = p.saturating_add(pages(rec.order()));
            } else {
                run = None;
                p += 1;
            }
        }
        let start = found.ok_or(none)?;
        PhysRange::from_raw(start * PAGE_SIZE, count * PAGE_SIZE).ok_or(none)
    }

    // --- freeing ---

    /// Frees the block of 2^`order` pages at `pfn`, which must be the head of an allocated block of that order.
    pub fn free(&mut self, pfn: Pfn, order: u8) -> Result<(), BuddyError> {
        if order > self.max_order {
            return Err(BuddyError::BadOrder { order, max: self.max_order });
        }
        let rec = self.rec(pfn.0)?;
        if !rec.has(flags::HEAD) || rec.has(flags::FREE) {
            return Err(BuddyError::NotAllocated { pfn });
        }
        if rec.order() != order {
            return Err(BuddyError::WrongOrder { pfn, order, actual: rec.order() });
        }
        self.set_rec(pfn.0, Page::tail())?;
        self.release(pfn.0, order)?;
        self.free_pages += pages(order);
        self.account(rec.owner(), pages(order), false);
        Ok(())
    }

    /// Frees every block inside `range` (from [`alloc_range`](Self::alloc_range),
    /// [`alloc_contig`](Self::alloc_contig) or [`add_allocated_range`](Self::add_allocated_range)).
    /// The range must be tiled exactly by allocated blocks; otherwise nothing changes.
    pub fn free_range(&mut self, range: PhysRange) -> Result<(), BuddyError> {
        let (start, end) = Pfn::inside(&range);
        let mut p = start.0;
        while p < end.0 {
            let rec = self.rec(p)?;
            if !rec.has(flags::HEAD) || rec.has(flags::FREE) {
                return Err(BuddyError::NotAllocated { pfn: Pfn(p) });
            }
            if rec.order() > self.max_order {
                return Err(BuddyError::Corrupt { pfn: Pfn(p) });
            }
            if p + pages(rec.order()) > end.0 {
                return Err(BuddyError::PartialBlock { pfn: Pfn(p) });
            }
            p += pages(rec.order());
        }
        let mut p = start.0;
        while p < end.0 {
            let order = self.rec(p)?.order();
            self.free(Pfn(p), order)?;
            p += pages(order);
        }
        Ok(())
    }

    // --- reverse map ---

    /// Records that the allocated page `pfn` is mapped at guest IPA `ipa` (the reverse map).
    pub fn set_ipa(&mut self, pfn: Pfn, ipa: Ipa) -> Result<(), BuddyError> {
        match self.block_of(pfn) {
            Some(b) if !b.is_free() => {}
            _ => return Err(BuddyError::NotAllocated { pfn }),
        }
        let ipa_pfn = u32::try_from(ipa.raw() / PAGE_SIZE).map_err(|_| BuddyError::Corrupt { pfn })?;
        let idx = self.index(pfn.0)?;
        self.rec_at_mut(idx)?.set_ipa_pfn(ipa_pfn);
        Ok(())
    }

    /// The IPA recorded for the allocated page `pfn` by [`set_ipa`](Self::set_ipa) (0 if none was).
    pub fn ipa_of(&self, pfn: Pfn) -> Option<u64> {
        self.block_of(pfn).filter(|b| !b.is_free())?;
        Some(u64::from(self.mm.page(pfn)?.ipa_pfn()) * PAGE_SIZE)
    }

    // --- checking ---

    /// Checks every invariant by walking the free lists and the records: each
    /// listed block is a correctly aligned free head of its list's order with
    /// consistent links, no two free buddies of the same order (they would have
    /// merged), counts agree, and owners sum to the managed total. For tests,
    /// fuzzing and the monitor's self-check; `Err` says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let mut free = 0u64;
        for order in 0..=self.max_order {
            let mut idx = self.heads[order as usize];
            let mut prev = NIL;
            let mut n = 0u64;
            while idx != NIL {
                let pfn = self.mm.sections().pfn_at(idx);
                let p = self.mm.page_at(idx).ok_or_else(|| format!("list {order}: {pfn} has no record"))?;
                if !p.has(flags::FREE) || p.order() != order || p.prev() != prev {
                    return Err(format!("list {order}: {pfn} is {p:?}, after {prev:#x}"));
                }
                if !pfn.0.is_multiple_of(pages(order)) {
                    return Err(format!("list {order}: {pfn} is not aligned to its order"));
                }
                if order < self.max_order {
                    let buddy = Pfn(pfn.0 ^ pages(order));
                    if self.mm.page(buddy).is_some_and(|b| b.has(flags::FREE) && b.order() == order) {
                        return Err(format!("list {order}: {pfn} and its buddy {buddy} are both free"));
                    }
                }
                n += 1;
                if n > self.managed_pages {
                    return Err(format!("list {order} loops"));
                }
                free += pages(order);
                prev = idx;
                idx = p.next();
            }
            if n != self.blocks[order as usize] {
                return Err(format!("list {order} has {n} blocks, counted {}", self.blocks[order as usize]));
            }
        }
        if free != self.free_pages {
            return Err(format!("free lists hold {free} pages, counted {}", self.free_pages));
        }
        let mut deferred = 0u64;
        let mut last_end = None;
        for &(s, e) in &self.deferred {
            if s >= e || last_end.is_some_and(|l| s <= l) {
                return Err(format!("deferred ranges out of order at {:#x}..{:#x}", s, e));
            }
            if !self.mm.all_pfns(s, e, &|p| p.flags() == flags::RESERVED) {
                return Err(format!("a deferred page in {:#x}..{:#x} has a record that is not reserved", s, e));
            }
            deferred += e - s;
            last_end = Some(e);
        }
        if deferred != self.deferred_pages {
            return Err(format!("deferred ranges hold {deferred} pages, counted {}", self.deferred_pages));
        }
        let owned: u64 = self.pages_by_owner().iter().map(|&(_, n)| n).sum();
        if owned != self.managed_pages {
            return Err(format!("owners hold {owned} pages, managed {}", self.managed_pages));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::page::{Sections, VecPageStore};
    use crate::plan::RangeSet;
    use alloc::collections::BTreeSet;
    use alloc::vec;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn r(base: u64, size: u64) -> PhysRange {
        PhysRange::from_raw(base, size).unwrap()
    }

    /// 16 MiB at 0x40000000 with a 2 MiB no-map hole at 0x40800000 (an absent
    /// section) and a 3-page reserved region at 0x40401000 that stays out of the allocator.
    fn holed(max_order: u8) -> (Buddy<VecPageStore>, Vec<PhysRange>) {
        let ram = [r(0x4000_0000, 16 * MIB)];
        let mut present = RangeSet::from_ranges(ram);
        present.remove(r(0x4080_0000, 2 * MIB));
        let sections = Sections::new(&ram, &present).unwrap();
        let mm = MemMap::new(sections.clone(), VecPageStore::new(&sections)).unwrap();
        let mut b = Buddy::with_max_order(mm, max_order).unwrap();
        let free = vec![
            r(0x4000_0000, 0x40_1000),
            r(0x4040_4000, 0x4080_0000 - 0x4040_4000),
            r(0x40a0_0000, 0x4100_0000 - 0x40a0_0000),
        ];
        for f in &free {
            b.add_free_range(*f).unwrap();
        }
        (b, free)
    }

    #[test]
    fn fresh_allocator_holds_the_largest_blocks() {
        let (b, free) = holed(MAX_ORDER);
        b.check().unwrap();
        let total: u64 = free.iter().map(|f| f.size / PAGE_SIZE).sum();
        assert_eq!(b.free_pages(), total);
        assert_eq!(b.managed_pages(), total);
        // 0x40a00000..0x41000000: 2 MiB at 0x40a00000 (not 4 MiB aligned), then 4 MiB blocks at 0x40c00000.
        assert_eq!(b.block_of(Pfn(0x40c00)), Some(Block { pfn: Pfn(0x40c00), order: 10, owner: Owner::Free }));
        assert_eq!(b.block_of(Pfn(0x40a05)), Some(Block { pfn: Pfn(0x40a00), order: 9, owner: Owner::Free }));
        // The reserved pages and the hole are not the allocator's.
        assert_eq!(b.block_of(Pfn(0x40402)), None);
        assert_eq!(b.block_of(Pfn(0x40900)), None);
    }

    #[test]
    fn alloc_splits_and_free_merges() {
        let (mut b, _) = holed(MAX_ORDER);
        let before = b.free_blocks().to_vec();
        let p = b.alloc(0, Owner::Monitor).unwrap();
        assert_eq!(b.owner_pages(Owner::Monitor), 1);
        b.check().unwrap();
        let q = b.alloc(9, Owner::Guest(3)).unwrap();
        assert_eq!(q.0 % 512, 0, "order-9 blocks are 2 MiB aligned");
        assert_eq!(
            b.pages_by_owner(),
            vec![(Owner::Free, b.free_pages()), (Owner::Monitor, 1), (Owner::Guest(3), 512)]
        );
        b.free(p, 0).unwrap();
        b.free(q, 9).unwrap();
        b.check().unwrap();
        assert_eq!(b.free_blocks(), &before[..]);
    }

    #[test]
    fn bad_input_is_an_error_and_changes_nothing() {
        let (mut b, _) = holed(MAX_ORDER);
        let p = b.alloc(2, Owner::Monitor).unwrap();
        let free = b.free_pages();
        assert_eq!(b.free(p, 1), Err(BuddyError::WrongOrder { pfn: p, order: 1, actual: 2 }));
        assert_eq!(b.free(Pfn(p.0 + 1), 0), Err(BuddyError::NotAllocated { pfn: Pfn(p.0 + 1) }));
        assert_eq!(b.free(Pfn(0x40900), 0), Err(BuddyError::NoRecord { pfn: Pfn(0x40900) }));
        assert_eq!(b.free(Pfn(0x40402), 0), Err(BuddyError::NotAllocated { pfn: Pfn(0x40402) }));
        assert_eq!(b.free(Pfn(u64::MAX), 0), Err(BuddyError::NoRecord { pfn: Pfn(u64::MAX) }));
        b.free(p, 2).unwrap();
        assert_eq!(b.free(p, 2), Err(BuddyError::NotAllocated { pfn: p }), "double free");
        assert_eq!(b.free_pages(), free + 4);
        assert_eq!(b.alloc(MAX_ORDER + 1, Owner::Monitor), Err(BuddyError::BadOrder { order: 11, max: 10 }));
        assert_eq!(b.alloc(0, Owner::Free), Err(BuddyError::BadOwner));
        // Adding managed pages, reserved-and-absent pages, or pages twice is refused.
        assert!(matches!(b.add_free_range(r(0x4000_0000, PAGE_SIZE)), Err(BuddyError::NotReserved { .. })));
        assert!(matches!(b.add_free_range(r(0x4080_0000, PAGE_SIZE)), Err(BuddyError::NoRecord { .. })));
        b.check().unwrap();
        assert_eq!(b.free_pages(), b.managed_pages());
    }

    #[test]
    fn out_of_memory_then_recovery() {
        let (mut b, _) = holed(4);
        let mut got = Vec::new();
        while let Ok(p) = b.alloc(4, Owner::Stage2Tables) {
            got.push(p);
        }
        // Only order < 4 blocks remain (around the reserved pages).
        assert!(b.free_pages() < 3 * 16);
        assert_eq!(b.alloc(4, Owner::Monitor), Err(BuddyError::OutOfMemory { order: 4 }));
        for p in got {
            b.free(p, 4).unwrap();
        }
        assert_eq!(b.free_pages(), b.managed_pages());
        b.check().unwrap();
    }

    #[test]
    fn alloc_range_claims_exactly_and_frees_back() {
        let (mut b, _) = holed(MAX_ORDER);
        let before = b.free_blocks().to_vec();
        let extent = r(0x40a0_3000, 0x30_5000);
        b.alloc_range(extent, Owner::Guest(1)).unwrap();
        b.check().unwrap();
        assert_eq!(b.owner_pages(Owner::Guest(1)), extent.size / PAGE_SIZE);
        assert!(b.block_of(Pfn(0x40a02)).unwrap().is_free());
        assert_eq!(b.block_of(Pfn(0x40a03)).unwrap().owner, Owner::Guest(1));
        assert!(b.block_of(Pfn(0x40d08)).unwrap().is_free());
        // Over busy or reserved pages: refused, nothing changes.
        assert_eq!(
            b.alloc_range(r(0x40a0_0000, 0x4000), Owner::Monitor),
            Err(BuddyError::NotFree { pfn: Pfn(0x40a03) })
        );
        assert!(b.alloc_range(r(0x4040_0000, 0x2000), Owner::Monitor).is_err());
        // Freeing half an extent block is refused.
        assert!(b.free_range(r(0x40a0_3000, 0x1000)).is_ok(), "a single page block");
        assert!(b.free_range(r(0x40a0_4000, 0x1000)).is_err(), "part of an order-2 block");
        b.free_range(r(0x40a0_4000, extent.end() - 0x40a0_4000)).unwrap();
        b.check().unwrap();
        assert_eq!(b.free_blocks(), &before[..]);
        b.set_ipa(Pfn(0x40000), Ipa::new(0)).unwrap_err();
    }

    #[test]
    fn contig_skips_busy_and_reserved_pages_and_honours_alignment() {
        let (mut b, _) = holed(MAX_ORDER);
        // 0x40400000..0x40401000 then the reserved pages: a 2-page run cannot start at 0x40400.
        let got = b.alloc_contig(2, 1, Some(r(0x4040_0000, 0x10_0000)), Owner::Cma).unwrap();
        assert_eq!(got, r(0x4040_4000, 0x2000));
        // 3 MiB aligned to 1 MiB across the 2 MiB/4 MiB block boundary at 0x40c00000.
        let got = b.alloc_contig(768, 256, Some(r(0x40a0_0000, 6 * MIB)), Owner::Cma).unwrap();
        assert_eq!(got.start() % MIB, 0);
        assert_eq!(got, r(0x40a0_0000, 3 * MIB));
        // Across the absent section: impossible.
        let e = b.alloc_contig(1024, 1, Some(r(0x4060_0000, 6 * MIB)), Owner::Cma);
        assert_eq!(e, Err(BuddyError::NoContiguous { count: 1024, align: 1 }));
        assert_eq!(b.owner_pages(Owner::Cma), 770);
        b.free_range(got).unwrap();
        b.check().unwrap();
    }

    #[test]
    fn preallocated_ranges_are_accounted_and_freeable() {
        let ram = [r(0x4000_0000, 8 * MIB)];
        let sections = Sections::new(&ram, &RangeSet::from_ranges(ram)).unwrap();
        let mm = MemMap::new(sections.clone(), VecPageStore::new(&sections)).unwrap();
        let mut b = Buddy::new(mm);
        b.add_allocated_range(r(0x4000_0000, 0x3000), Owner::Vmemmap).unwrap();
        b.add_free_range(r(0x4000_3000, 8 * MIB - 0x3000)).unwrap();
        assert_eq!(b.pages_by_owner(), vec![(Owner::Free, 2048 - 3), (Owner::Vmemmap, 3)]);
        b.free_range(r(0x4000_0000, 0x3000)).unwrap();
        assert_eq!(b.free_blocks()[10], 2);
        b.check().unwrap();
    }

    /// A record store like a fresh vmemmap backing: every record starts as
    /// garbage (a free or allocated head of a random order, with random links),
    /// and every read of a record no fill has written since is counted as a stray.
    #[derive(Clone)]
    struct DirtyStore {
        inner: VecPageStore,
        written: Vec<bool>,
        strays: core::cell::Cell<u32>,
    }

    impl DirtyStore {
        fn new(sections: &Sections, seed: u64) -> DirtyStore {
            let mut inner = VecPageStore::new(sections);
            let n = sections.span_pages() as u32;
            let mut x = seed | 1;
            for i in 0..n {
                if let Some(p) = inner.page_mut(i) {
                    // xorshift: garbage that looks like list heads of any order.
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    p.set_flags(if x & 1 == 0 { flags::FREE } else { flags::HEAD });
                    p.set_order((x >> 8) as u8 % 12);
                    p.set_links((x >> 16) as u32 % n, (x >> 32) as u32 % n);
                    p.set_owner(Owner::Monitor);
                }
            }
            DirtyStore { inner, written: vec![false; n as usize], strays: core::cell::Cell::new(0) }
        }

        fn touch(&self, index: u32) {
            if !self.written.get(index as usize).copied().unwrap_or(true) {
                self.strays.set(self.strays.get() + 1);
            }
        }
    }

    impl PageStore for DirtyStore {
        fn page(&self, index: u32) -> Option<&Page> {
            self.touch(index);
            self.inner.page(index)
        }
        fn page_mut(&mut self, index: u32) -> Option<&mut Page> {
            self.touch(index);
            self.inner.page_mut(index)
        }
        fn has(&self, index: u32) -> bool {
            self.inner.page(index).is_some()
        }
        fn fill(&mut self, start: u32, end: u32, page: Page) -> bool {
            for i in start..end {
                if let Some(w) = self.written.get_mut(i as usize) {
                    *w = true;
                }
            }
            self.inner.fill(start, end, page)
        }
    }

    /// [`holed`]'s machine over a [`DirtyStore`], the free ranges whose bit is set in `defer` deferred.
    fn holed_deferred(max_order: u8, defer: u8, seed: u64) -> (Buddy<DirtyStore>, Vec<PhysRange>) {
        let ram = [r(0x4000_0000, 16 * MIB)];
        let mut present = RangeSet::from_ranges(ram);
        present.remove(r(0x4080_0000, 2 * MIB));
        let sections = Sections::new(&ram, &present).unwrap();
        let mm = MemMap::new(sections.clone(), DirtyStore::new(&sections, seed)).unwrap();
        let mut b = Buddy::with_max_order(mm, max_order).unwrap();
        let free = vec![
            r(0x4000_0000, 0x40_1000),
            r(0x4040_4000, 0x4080_0000 - 0x4040_4000),
            r(0x40a0_0000, 0x4100_0000 - 0x40a0_0000),
        ];
        for (i, f) in free.iter().enumerate() {
            if defer & (1 << i) != 0 {
                b.defer_free_range(*f).unwrap();
            } else {
                b.add_free_range(*f).unwrap();
            }
        }
        (b, free)
    }

    fn strays(b: &Buddy<DirtyStore>) -> u32 {
        b.memmap().store().strays.get()
    }

    #[test]
    fn deferred_memory_writes_no_record_until_needed() {
        let (mut b, free) = holed_deferred(MAX_ORDER, 0b111, 7);
        let total: u64 = free.iter().map(|f| f.size / PAGE_SIZE).sum();
        assert_eq!((b.free_pages(), b.managed_pages(), b.deferred_pages()), (total, total, total));
        assert_eq!(b.memmap().ready_sections(), 0, "deferring writes no record");
        b.check().unwrap();
        // The first allocation lists the lowest deferred memory, and only that.
        let p = b.alloc(0, Owner::Monitor).unwrap();
        // 0x40000000..0x40401000 listed: a 4 MiB block and the single page after it, which goes first.
        assert_eq!(p, Pfn(0x40400));
        assert_eq!(b.block_of(Pfn(0x40000)), Some(Block { pfn: Pfn(0x40000), order: 10, owner: Owner::Free }));
        assert!(b.memmap().pfn_ready(p));
        assert!(b.deferred_pages() < total);
        assert!(!b.memmap().pfn_ready(Pfn(0x40c00)), "memory above the first chunk is still unready");
        assert_eq!(b.free_pages(), total - 1);
        // Claiming an extent in deferred memory lists what it covers.
        b.alloc_range(r(0x40c0_3000, 0x10_0000), Owner::Guest(2)).unwrap();
        assert_eq!(b.block_of(Pfn(0x40c03)).map(|k| k.owner), Some(Owner::Guest(2)));
        // A contiguous run that only deferred memory holds.
        let run = b.alloc_contig(1024, 1024, Some(r(0x40e0_0000, 2 * MIB)), Owner::Cma);
        assert_eq!(run, Err(BuddyError::NoContiguous { count: 1024, align: 1024 }), "2 MiB cannot hold 4 MiB");
        let run = b.alloc_contig(512, 512, Some(r(0x40e0_0000, 2 * MIB)), Owner::Cma).unwrap();
        assert_eq!(run, r(0x40e0_0000, 2 * MIB));
        b.check().unwrap();
        assert_eq!(strays(&b), 0, "a record was read before it was written");
        // Deferred pages are the allocator's: not reserved, not free to give twice.
        assert!(matches!(b.add_free_range(r(0x40f0_0000, PAGE_SIZE)), Err(BuddyError::NotReserved { .. })));
        assert!(matches!(b.defer_free_range(r(0x40f0_0000, PAGE_SIZE)), Err(BuddyError::NotReserved { .. })));
        assert!(matches!(
            b.add_allocated_range(r(0x40f0_0000, PAGE_SIZE), Owner::Monitor),
            Err(BuddyError::NotReserved { .. })
        ));
        assert_eq!(b.free(Pfn(0x40f00), 0), Err(BuddyError::NotAllocated { pfn: Pfn(0x40f00) }));
        // Growing everything then freeing everything gives the same blocks as adding it all at once.
        while b.grow(100).unwrap() > 0 {}
        assert_eq!(b.deferred_pages(), 0);
        b.free(p, 0).unwrap();
        b.free_range(r(0x40c0_3000, 0x10_0000)).unwrap();
        b.free_range(run).unwrap();
        b.check().unwrap();
        assert_eq!(b.free_blocks(), holed(MAX_ORDER).0.free_blocks());
        assert_eq!(strays(&b), 0);
    }

    #[test]
    fn grow_lists_chunks_lowest_first_on_largest_block_boundaries() {
        let (mut b, _) = holed_deferred(MAX_ORDER, 0b100, 3);
        let before = b.deferred_pages();
        // 0x40a00000..0x41000000 deferred: a chunk of 1500 pages ends on the 4 MiB boundary below 0x40a00000 + 1500 pages.
        assert_eq!(b.grow(1500).unwrap(), 0x40c00 - 0x40a00);
        assert_eq!(b.deferred_ranges(), &[(0x40c00, 0x41000)]);
        assert_eq!(b.grow(10_000).unwrap(), 0x400);
        assert_eq!((b.grow(1).unwrap(), b.deferred_pages()), (0, 0));
        assert_eq!(b.free_pages(), b.managed_pages());
        assert!(before > 0);
        b.check().unwrap();
        assert_eq!(strays(&b), 0);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Alloc(u8, u8),
        Free(usize),
        Contig(u64, u32, u8),
        FreeAgain(usize),
        FreeForeign(u64),
        /// Deferred memory into the lists: at most this many pages.
        Grow(u64),
        /// `alloc_range` of pages `[pfn, pfn + n)` for an owner.
        Range(u64, u64, u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..=10, 0u8..4).prop_map(|(o, w)| Op::Alloc(o, w)),
            5 => any::<usize>().prop_map(Op::Free),
            2 => (1u64..700, 0u32..10, 0u8..4).prop_map(|(c, a, w)| Op::Contig(c, a, w)),
            1 => any::<usize>().prop_map(Op::FreeAgain),
            1 => (0x3ff00u64..0x41100).prop_map(Op::FreeForeign),
        ]
    }

    fn owner(w: u8) -> Owner {
        [Owner::Monitor, Owner::Guest(1), Owner::Guest(7), Owner::Stage2Tables][w as usize % 4]
    }

    /// A live allocation in the model: first frame, pages, owner, and whether it is one block.
    #[derive(Clone, Copy, Debug)]
    struct Live {
        pfn: u64,
        pages: u64,
        owner: Owner,
        order: Option<u8>,
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Random alloc/free sequences against a model: no page is handed out
        /// twice or outside the managed ranges, counts and owners agree, bad
        /// frees are refused, and freeing everything restores the first state.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec(op(), 1..120)) {
            let (mut b, free) = holed(MAX_ORDER);
            let initial = b.free_blocks().to_vec();
            let managed: BTreeSet<u64> = free.iter().flat_map(|f| {
                let (s, e) = Pfn::inside(f);
                s.0..e.0
            }).collect();
            let mut live: Vec<Live> = Vec::new();
            let mut freed: Vec<Live> = Vec::new();
            let mut taken: BTreeSet<u64> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Alloc(order, w) => {
                        if let Ok(p) = b.alloc(order, owner(w)) {
                            prop_assert_eq!(p.0 % (1 << order), 0);
                            for q in p.0..p.0 + (1 << order) {
                                prop_assert!(managed.contains(&q), "{:#x} not managed", q);
                                prop_assert!(taken.insert(q), "{:#x} handed out twice", q);
                            }
                            live.push(Live { pfn: p.0, pages: 1 << order, owner: owner(w), order: Some(order) });
                        }
                    }
                    Op::Contig(count, align_log, w) => {
                        if let Ok(range) = b.alloc_contig(count, 1 << align_log, None, owner(w)) {
                            let first = range.start() / PAGE_SIZE;
                            prop_assert_eq!(range.size, count * PAGE_SIZE);
                            prop_assert_eq!(first % (1 << align_log), 0);
                            for q in first..first + count {
                                prop_assert!(managed.contains(&q));
                                prop_assert!(taken.insert(q), "{:#x} handed out twice", q);
                            }
                            live.push(Live { pfn: first, pages: count, owner: owner(w), order: None });
                        }
                    }
                    Op::Free(i) if !live.is_empty() => {
                        let l = live.swap_remove(i % live.len());
                        match l.order {
                            Some(o) => b.free(Pfn(l.pfn), o).unwrap(),
                            None => b.free_range(PhysRange::from_raw(l.pfn * PAGE_SIZE, l.pages * PAGE_SIZE).unwrap()).unwrap(),
                        }
                        for q in l.pfn..l.pfn + l.pages { taken.remove(&q); }
                        freed.push(l);
                    }
                    Op::FreeAgain(i) if !freed.is_empty() => {
                        let l = freed[i % freed.len()];
                        // Unless the page was handed out again since, a second free is refused.
                        if !taken.contains(&l.pfn) {
                            let before = b.free_pages();
                            prop_assert!(b.free(Pfn(l.pfn), l.order.unwrap_or(0)).is_err());
                            prop_assert_eq!(b.free_pages(), before);
                        }
                    }
                    Op::FreeForeign(pfn) if !taken.contains(&pfn) => {
                        prop_assert!(b.free(Pfn(pfn), 0).is_err());
                    }
                    _ => {}
                }
                prop_assert_eq!(b.free_pages() + taken.len() as u64, managed.len() as u64);
                for w in 0..4 {
                    let want: u64 = live.iter().filter(|l| l.owner == owner(w)).map(|l| l.pages).sum();
                    prop_assert_eq!(b.owner_pages(owner(w)), want);
                }
                prop_assert_eq!(b.pages_by_owner().iter().map(|&(_, n)| n).sum::<u64>(), b.managed_pages());
                b.check().map_err(TestCaseError::fail)?;
            }
            for l in live.drain(..) {
                match l.order {
                    Some(o) => b.free(Pfn(l.pfn), o).unwrap(),
                    None => b.free_range(PhysRange::from_raw(l.pfn * PAGE_SIZE, l.pages * PAGE_SIZE).unwrap()).unwrap(),
                }
            }
            b.check().map_err(TestCaseError::fail)?;
            prop_assert_eq!(b.free_pages(), managed.len() as u64);
            prop_assert_eq!(b.free_blocks(), &initial[..], "coalescing restores the largest blocks");
        }

        /// The same kind of sequences over deferred memory whose records start
        /// as garbage, with growth steps in between: no record is read before it
        /// is written, no page is handed out before its record is ready, every
        /// handed-out page is managed and not handed out twice, and once all is
        /// grown and freed the lists hold the blocks of a non-deferred start.
        #[test]
        fn deferred_memory_is_never_handed_out_unready(
            defer in 1u8..8,
            seed in any::<u64>(),
            ops in proptest::collection::vec(prop_oneof![
                6 => op(),
                2 => (0u64..2000).prop_map(Op::Grow),
                2 => (0x40000u64..0x41000, 1u64..1200, 0u8..4).prop_map(|(p, n, w)| Op::Range(p, n, w)),
            ], 1..100),
        ) {
            let (mut b, free) = holed_deferred(MAX_ORDER, defer, seed);
            let managed: BTreeSet<u64> = free.iter().flat_map(|f| {
                let (s, e) = Pfn::inside(f);
                s.0..e.0
            }).collect();
            let mut live: Vec<Live> = Vec::new();
            let mut taken: BTreeSet<u64> = BTreeSet::new();
            for op in ops {
                let got = match op {
                    Op::Alloc(order, w) => b.alloc(order, owner(w)).ok().map(|p| Live { pfn: p.0, pages: 1 << order, owner: owner(w), order: Some(order) }),
                    Op::Contig(count, align_log, w) => b.alloc_contig(count, 1 << align_log, None, owner(w)).ok()
                        .map(|r| Live { pfn: r.start() / PAGE_SIZE, pages: count, owner: owner(w), order: None }),
                    Op::Range(pfn, n, w) => {
                        let range = PhysRange::from_raw(pfn * PAGE_SIZE, n * PAGE_SIZE).unwrap();
                        let ok = b.alloc_range(range, owner(w)).is_ok();
                        // Refused exactly when some page of it is not free (handed out, or not managed).
                        prop_assert_eq!(ok, (pfn..pfn + n).all(|q| managed.contains(&q) && !taken.contains(&q)));
                        ok.then_some(Live { pfn, pages: n, owner: owner(w), order: None })
                    }
                    Op::Grow(n) => {
                        let before = b.deferred_pages();
                        let moved = b.grow(n).unwrap();
                        prop_assert_eq!(b.deferred_pages(), before - moved);
                        prop_assert!(moved > 0 || before == 0);
                        None
                    }
                    Op::Free(i) | Op::FreeAgain(i) if !live.is_empty() => {
                        let l = live.swap_remove(i % live.len());
                        match l.order {
                            Some(o) => b.free(Pfn(l.pfn), o).unwrap(),
                            None => b.free_range(PhysRange::from_raw(l.pfn * PAGE_SIZE, l.pages * PAGE_SIZE).unwrap()).unwrap(),
                        }
                        for q in l.pfn..l.pfn + l.pages { taken.remove(&q); }
                        None
                    }
                    Op::FreeForeign(pfn) if !taken.contains(&pfn) => {
                        prop_assert!(b.free(Pfn(pfn), 0).is_err());
                        None
                    }
                    _ => None,
                };
                if let Some(l) = got {
                    for q in l.pfn..l.pfn + l.pages {
                        prop_assert!(managed.contains(&q), "{:#x} not managed", q);
                        prop_assert!(taken.insert(q), "{:#x} handed out twice", q);
                        prop_assert!(b.memmap().pfn_ready(Pfn(q)), "{:#x} handed out with its record unready", q);
                        prop_assert_eq!(b.block_of(Pfn(q)).map(|k| k.owner), Some(l.owner));
                    }
                    live.push(l);
                }
                prop_assert_eq!(strays(&b), 0, "a record was read before it was written");
                prop_assert_eq!(b.free_pages() + taken.len() as u64, managed.len() as u64);
                prop_assert_eq!(b.managed_pages(), managed.len() as u64);
                b.check().map_err(TestCaseError::fail)?;
            }
            for l in live.drain(..) {
                match l.order {
                    Some(o) => b.free(Pfn(l.pfn), o).unwrap(),
                    None => b.free_range(PhysRange::from_raw(l.pfn * PAGE_SIZE, l.pages * PAGE_SIZE).unwrap()).unwrap(),
                }
            }
            while b.grow(GROW_PAGES).unwrap() > 0 {}
            b.check().map_err(TestCaseError::fail)?;
            prop_assert_eq!(strays(&b), 0);
            prop_assert_eq!(b.free_pages(), managed.len() as u64);
            let reference = holed(MAX_ORDER).0;
            prop_assert_eq!(b.free_blocks(), reference.free_blocks(), "coalescing restores the largest blocks");
        }
    }
}
