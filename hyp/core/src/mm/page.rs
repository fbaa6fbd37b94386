//! The page database: page frame numbers, 16-byte page records, memory sections and the sparse virtual memmap.
//!
//! Physical memory is described in sections of 2 MiB ([`SECTION_SHIFT`]). A
//! section is *present* when any page of it is RAM the monitor may ever touch
//! (RAM less the `no-map` carveouts); [`Sections`] keeps one bit per section of
//! the RAM span, and [`Sections::pfn_valid`] answers from that bitmap alone,
//! without touching a page record (seed 001: ia64's cheap `pfn_valid`).
//!
//! The records form one array at a fixed virtual base, the vmemmap window of
//! the monitor's layout: the record of `pfn` is at `vmemmap + (pfn - base_pfn) *
//! 16`, so `pfn_to_page` and `page_to_pfn` are address arithmetic
//! ([`Sections::record_va`], [`Sections::pfn_of_record`]). Only the parts of
//! the window that describe present sections are backed, with 2 MiB blocks
//! where a whole run of 256 sections is present ([`vmemmap_backing`], seed 003).
//! A present section's records cover all its 512 pages, so pages in a present
//! section that are not RAM (or are `no-map`) have records that stay reserved.
//!
//! The records are reached through the [`PageStore`] trait: the monitor
//! implements it over the vmemmap window in its architecture layer, host tests
//! use [`VecPageStore`], which holds only present sections (a record of an
//! absent section is `None`, so a stray access fails a test instead of reading
//! someone else's memory).

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use crate::addr::{Address, PhysAddr, PhysRange, VirtAddr, VirtRange, PAGE_SIZE, SIZE_2M};
use crate::plan::layout::PAGE_RECORD_SIZE;
use crate::plan::{Plan, RangeSet};

/// log2 of the page size.
pub const PAGE_SHIFT: u32 = 12;
/// log2 of the section size: sections are 2 MiB, one level-2 block.
pub const SECTION_SHIFT: u32 = 21;
/// Bytes in a section.
pub const SECTION_SIZE: u64 = 1 << SECTION_SHIFT;
/// Pages in a section.
pub const PAGES_PER_SECTION: u64 = 1 << (SECTION_SHIFT - PAGE_SHIFT);
/// Bytes of page records one section needs: 8 KiB.
pub const SECTION_RECORD_BYTES: u64 = PAGES_PER_SECTION * PAGE_RECORD_SIZE;
/// Sections whose records fill one 2 MiB block of the vmemmap window: 256 (512 MiB of RAM).
pub const SECTIONS_PER_VMEMMAP_BLOCK: u64 = SIZE_2M / SECTION_RECORD_BYTES;

const _: () = assert!(SECTION_SIZE == SIZE_2M && PAGE_SIZE == 1 << PAGE_SHIFT);

/// A page frame number: a physical address shifted right by 12. 64-bit, as
/// LPAE physical addresses are 40 bits wide.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pfn(pub u64);

impl Pfn {
    /// The frame holding `pa`.
    pub const fn of(pa: PhysAddr) -> Pfn {
        Pfn(pa.raw() >> PAGE_SHIFT)
    }
    /// The frame's first byte, if it is inside the 40-bit physical space.
    pub fn addr(self) -> Option<PhysAddr> {
        PhysAddr::from_u64(self.0.checked_mul(PAGE_SIZE)?)
    }
    /// The frame's first byte as a number (may exceed the 40-bit space for a made-up frame number).
    pub const fn raw_addr(self) -> u64 {
        self.0.saturating_mul(PAGE_SIZE)
    }
    /// `self + n`, or `None` on overflow.
    pub fn checked_add(self, n: u64) -> Option<Pfn> {
        self.0.checked_add(n).map(Pfn)
    }
    /// The frames whose every byte lies inside `r` (the range shrunk inward to page boundaries), as `[start, end)`.
    pub fn inside(r: &PhysRange) -> (Pfn, Pfn) {
        let start = r.start().div_ceil(PAGE_SIZE);
        let end = r.end() / PAGE_SIZE;
        (Pfn(start), Pfn(end.max(start)))
    }
}

impl fmt::Debug for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pfn({:#x})", self.0)
    }
}

impl fmt::Display for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pfn {:#x}", self.0)
    }
}

/// Who holds a page: the buddy allocator's and the CMA pools' accounting key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Owner {
    /// Nobody: the page is free (or reserved and unmanaged).
    Free,
    /// The monitor itself: heap, stacks, vmalloc backing, kmap'd buffers.
    Monitor,
    /// Guest RAM of the guest with this VMID.
    Guest(u8),
    /// Stage-2 translation tables.
    Stage2Tables,
    /// The monitor's own Hyp stage-1 translation tables.
    HypTables,
    /// Backing of the vmemmap window (the page records themselves).
    Vmemmap,
    /// A contiguous allocation from a CMA pool.
    Cma,
}

impl Owner {
    /// Every owner kind but `Guest` has one counter; guests have one per VMID.
    pub(crate) const KINDS: usize = 7;

    /// The owner's kind as stored in a page record, and its argument (the VMID).
    pub(crate) const fn encode(self) -> (u8, u8) {
        match self {
            Owner::Free => (0, 0),
            Owner::Monitor => (1, 0),
            Owner::Guest(vmid) => (2, vmid),
            Owner::Stage2Tables => (3, 0),
            Owner::HypTables => (4, 0),
            Owner::Vmemmap => (5, 0),
            Owner::Cma => (6, 0),
        }
    }

    /// The owner a record's two bytes describe; an unknown kind (a corrupted record) reads as `None`.
    pub(crate) const fn decode(kind: u8, arg: u8) -> Option<Owner> {
        Some(match kind {
            0 => Owner::Free,
            1 => Owner::Monitor,
            2 => Owner::Guest(arg),
            3 => Owner::Stage2Tables,
            4 => Owner::HypTables,
            5 => Owner::Vmemmap,
            6 => Owner::Cma,
            _ => return None,
        })
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Free => write!(f, "free"),
            Owner::Monitor => write!(f, "monitor"),
            Owner::Guest(vmid) => write!(f, "guest VMID {vmid}"),
            Owner::Stage2Tables => write!(f, "stage-2 tables"),
            Owner::HypTables => write!(f, "Hyp tables"),
            Owner::Vmemmap => write!(f, "vmemmap"),
            Owner::Cma => write!(f, "CMA"),
        }
    }
}

/// Page record flags.
pub mod flags {
    /// The head of a free buddy block (its order is in the record).
    pub const FREE: u8 = 1 << 0;
    /// The head of an allocated buddy block (its order and owner are in the record).
    pub const HEAD: u8 = 1 << 1;
    /// Not the buddy allocator's: outside RAM, a carveout, the image, a CMA pool.
    pub const RESERVED: u8 = 1 << 2;
    /// Part of a CMA pool.
    pub const CMA: u8 = 1 << 3;
    /// A CMA page lent to a guest: movable, its IPA is in the record.
    pub const LENT: u8 = 1 << 4;
}

/// "No page": the end of a free list.
pub const NIL: u32 = u32::MAX;

/// One page's record in the page database: 16 bytes, [`PAGE_RECORD_SIZE`].
///
/// A free buddy block is described by its head record (`FREE`, its order, the
/// list links); the records of its other pages are zero ("tail"). An allocated
/// block likewise by its head (`HEAD`, order, owner). The links are indices
/// into the page array (PFN offsets from the base), never pointers, so the
/// record means the same at any virtual address. `ipa_pfn` is the reverse map
/// of a guest page: the IPA frame the page is mapped at.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Page {
    next: u32,
    prev: u32,
    ipa_pfn: u32,
    flags: u8,
    order: u8,
    owner_kind: u8,
    owner_arg: u8,
}

const _: () = assert!(core::mem::size_of::<Page>() as u64 == PAGE_RECORD_SIZE);

impl Page {
    /// A record of a page nobody manages.
    pub const fn reserved() -> Page {
        Page { next: NIL, prev: NIL, ipa_pfn: 0, flags: flags::RESERVED, order: 0, owner_kind: 0, owner_arg: 0 }
    }
    /// A tail record: a page inside a buddy block that is not its head.
    pub const fn tail() -> Page {
        Page { next: NIL, prev: NIL, ipa_pfn: 0, flags: 0, order: 0, owner_kind: 0, owner_arg: 0 }
    }
    /// The [`flags`] bits.
    pub const fn flags(&self) -> u8 {
        self.flags
    }
    /// Whether `flag` is set.
    pub const fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
    /// Sets the [`flags`] bits.
    pub fn set_flags(&mut self, flags: u8) {
        self.flags = flags;
    }
    /// The order of the block this record heads (meaningful with `FREE` or `HEAD`).
    pub const fn order(&self) -> u8 {
        self.order
    }
    /// Sets the order of the block this record heads.
    pub fn set_order(&mut self, order: u8) {
        self.order = order;
    }
    /// Who holds the page (or the block it heads). A corrupted record reads as [`Owner::Free`].
    pub fn owner(&self) -> Owner {
        Owner::decode(self.owner_kind, self.owner_arg).unwrap_or(Owner::Free)
    }
    /// Sets who holds the page.
    pub fn set_owner(&mut self, owner: Owner) {
        let (kind, arg) = owner.encode();
        self.owner_kind = kind;
        self.owner_arg = arg;
    }
    /// The next block in the free list (an index into the page array), or [`NIL`].
    pub const fn next(&self) -> u32 {
        self.next
    }
    /// The previous block in the free list, or [`NIL`].
    pub const fn prev(&self) -> u32 {
        self.prev
    }
    /// Sets the free-list links.
    pub fn set_links(&mut self, prev: u32, next: u32) {
        self.prev = prev;
        self.next = next;
    }
    /// The IPA frame a guest page is mapped at (IPAs are 40 bits, so the frame fits 28 bits).
    pub const fn ipa_pfn(&self) -> u32 {
        self.ipa_pfn
    }
    /// Sets the reverse map's IPA frame.
    pub fn set_ipa_pfn(&mut self, ipa_pfn: u32) {
        self.ipa_pfn = ipa_pfn;
    }
}

impl fmt::Debug for Page {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Page {{ flags: {:#04x}, order: {}, owner: {}", self.flags, self.order, self.owner())?;
        if self.next != NIL || self.prev != NIL {
            write!(f, ", prev: {:#x}, next: {:#x}", self.prev, self.next)?;
        }
        write!(f, " }}")
    }
}

/// Why the page database could not be set up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MemMapError {
    /// No RAM to describe.
    NoRam,
    /// The RAM span has more pages than a 32-bit record index reaches.
    SpanTooLarge { span: u64 },
    /// The store has no record for a page of a present section (the vmemmap backing is missing).
    Unbacked { pfn: Pfn },
}

impl fmt::Display for MemMapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoRam => write!(f, "page database: no RAM to describe"),
            Self::SpanTooLarge { span } => {
                write!(f, "page database: a RAM span of {span:#x} bytes has too many pages for 32-bit record indices")
            }
            Self::Unbacked { pfn } => write!(f, "page database: no record for {pfn} of a present section"),
        }
    }
}

/// The memory sections of the RAM span and which of them are present.
#[derive(Clone, PartialEq, Eq)]
pub struct Sections {
    /// The first frame of the span: the lowest RAM address rounded down to a section.
    base_pfn: u64,
    nr_sections: u32,
    /// Bit `i`: section `i` holds a page the monitor may touch.
    present: Vec<u64>,
    present_count: u32,
}

impl fmt::Debug for Sections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Sections {{ base: {:#x}, sections: {}, present: {} }}",
            self.base_pfn * PAGE_SIZE,
            self.nr_sections,
            self.present_count
        )
    }
}

impl Sections {
    /// The sections of the span of `ram` (lowest start rounded down to a
    /// section, to the highest end), with those touching `present` marked. The
    /// base is the one the monitor layout's vmemmap window uses.
    pub fn new(ram: &[PhysRange], present: &RangeSet) -> Result<Sections, MemMapError> {
        let first = ram.iter().filter(|r| !r.is_empty()).map(|r| r.start()).min().ok_or(MemMapError::NoRam)?;
        let last = ram.iter().map(|r| r.end()).max().ok_or(MemMapError::NoRam)?;
        let base = first & !(SECTION_SIZE - 1);
        let nr = (last - base).div_ceil(SECTION_SIZE);
        // Record indices (and buddy links) are u32, with NIL reserved.
        let nr_sections = u32::try_from(nr)
            .ok()
            .filter(|&n| u64::from(n) * PAGES_PER_SECTION < u64::from(NIL))
            .ok_or(MemMapError::SpanTooLarge { span: last - base })?;
        let mut s = Sections {
            base_pfn: base >> PAGE_SHIFT,
            nr_sections,
            present: vec![0; (nr_sections as usize).div_ceil(64)],
            present_count: 0,
        };
        for r in present.ranges() {
            let (start, end) = Pfn::inside(r);
            if start >= end || end.0 <= s.base_pfn {
                continue;
            }
            let lo = start.0.saturating_sub(s.base_pfn) / PAGES_PER_SECTION;
            let hi = (end.0 - 1 - s.base_pfn) / PAGES_PER_SECTION;
            let hi = hi.min(u64::from(nr_sections).saturating_sub(1));
            s.set_present_range(lo as u32, hi as u32 + 1);
        }
        s.present_count = s.present.iter().map(|w| w.count_ones()).sum();
        Ok(s)
    }

    /// The sections of a plan: the span of its RAM, present where RAM is not a `no-map` carveout.
    pub fn for_plan(plan: &Plan) -> Result<Sections, MemMapError> {
        let mut present = RangeSet::from_ranges(plan.ram.iter().copied());
        for c in plan.carveouts.iter().filter(|c| c.no_map) {
            present.remove(c.range);
        }
        Sections::new(&plan.ram, &present)
    }

    /// Marks sections `[lo, hi)` present, a bitmap word at a time (the count is the caller's).
    fn set_present_range(&mut self, lo: u32, hi: u32) {
        set_bits(&mut self.present, lo, hi);
    }

    /// The presence bitmap: bit `i % 64` of word `i / 64` for section `i`.
    pub(crate) fn present_words(&self) -> &[u64] {
        &self.present
    }

    /// Whether every section in `[lo, hi)` is present (a bitmap word at a time).
    pub fn all_present(&self, lo: u32, hi: u32) -> bool {
        hi <= self.nr_sections && first_clear(&self.present, lo, hi) == hi
    }

    /// The first frame of the span (what index 0 of the page array describes).
    pub fn base_pfn(&self) -> Pfn {
        Pfn(self.base_pfn)
    }
    /// Sections in the span.
    pub fn nr_sections(&self) -> u32 {
        self.nr_sections
    }
    /// Pages in the span (the length of the page array).
    pub fn span_pages(&self) -> u64 {
        u64::from(self.nr_sections) * PAGES_PER_SECTION
    }
    /// Present sections.
    pub fn present_sections(&self) -> u32 {
        self.present_count
    }
    /// Pages in present sections: how many records must exist.
    pub fn present_pages(&self) -> u64 {
        u64::from(self.present_count) * PAGES_PER_SECTION
    }
    /// Whether section `sec` (counted from the base) is present.
    #[inline]
    pub fn is_present(&self, sec: u32) -> bool {
        sec < self.nr_sections && self.present.get((sec / 64) as usize).is_some_and(|w| w & (1 << (sec % 64)) != 0)
    }

    /// Whether `pfn` has a page record: inside the span and in a present section. Reads only the bitmap.
    pub fn pfn_valid(&self, pfn: Pfn) -> bool {
        self.index_of(pfn).is_some()
    }

    /// The index of `pfn`'s record in the page array, if it has one.
    pub fn index_of(&self, pfn: Pfn) -> Option<u32> {
        let idx = self.span_index(pfn)?;
        self.is_present(idx / PAGES_PER_SECTION as u32).then_some(idx)
    }

    /// `pfn`'s index in the page array if it is inside the span (present or not).
    #[inline]
    pub fn span_index(&self, pfn: Pfn) -> Option<u32> {
        let off = pfn.0.checked_sub(self.base_pfn)?;
        // < span_pages < NIL
        (off < self.span_pages()).then_some(off as u32)
    }

    /// The frame whose record is at `index` (no presence check).
    pub fn pfn_at(&self, index: u32) -> Pfn {
        Pfn(self.base_pfn + u64::from(index))
    }

    /// The first frame of section `sec`.
    pub fn section_pfn(&self, sec: u32) -> Pfn {
        Pfn(self.base_pfn + u64::from(sec) * PAGES_PER_SECTION)
    }

    /// Runs of present sections as physical ranges, in address order.
    pub fn present_ranges(&self) -> Vec<PhysRange> {
        let mut out: Vec<PhysRange> = Vec::new();
        let mut sec = 0;
        while sec < self.nr_sections {
            if !self.is_present(sec) {
                sec += 1;
                continue;
            }
            let start = sec;
            while sec < self.nr_sections && self.is_present(sec) {
                sec += 1;
            }
            let base = self.section_pfn(start).raw_addr();
            out.extend(PhysRange::from_raw(base, u64::from(sec - start) * SECTION_SIZE));
        }
        out
    }

    /// `pfn_to_page`: the virtual address of `pfn`'s record in a vmemmap window at `vmemmap_base`.
    pub fn record_va(&self, vmemmap_base: VirtAddr, pfn: Pfn) -> Option<VirtAddr> {
        let idx = self.index_of(pfn)?;
        vmemmap_base.checked_add(u64::from(idx) * PAGE_RECORD_SIZE)
    }

    /// `page_to_pfn`: the frame whose record is at `va` in a vmemmap window at
    /// `vmemmap_base` (`va` must be the start of a record of a present section).
    pub fn pfn_of_record(&self, vmemmap_base: VirtAddr, va: VirtAddr) -> Option<Pfn> {
        let off = va.as_u64().checked_sub(vmemmap_base.as_u64())?;
        if !off.is_multiple_of(PAGE_RECORD_SIZE) {
            return None;
        }
        let pfn = Pfn(self.base_pfn + off / PAGE_RECORD_SIZE);
        self.pfn_valid(pfn).then_some(pfn)
    }
}

/// Sets bits `[lo, hi)` of a bitmap of u64 words.
fn set_bits(map: &mut [u64], lo: u32, hi: u32) {
    let mut i = lo;
    while i < hi {
        let (word, bit) = ((i / 64) as usize, i % 64);
        let n = (64 - bit).min(hi - i);
        let mask = if n == 64 { u64::MAX } else { ((1u64 << n) - 1) << bit };
        if let Some(w) = map.get_mut(word) {
            *w |= mask;
        }
        i += n;
    }
}

/// The first bit in `[lo, hi)` that is clear in `map` (bits past its end read clear), or `hi`.
fn first_clear(map: &[u64], lo: u32, hi: u32) -> u32 {
    let mut i = lo;
    while i < hi {
        let (word, bit) = ((i / 64) as usize, i % 64);
        let clear = !map.get(word).copied().unwrap_or(0) >> bit;
        if clear != 0 {
            return (i + clear.trailing_zeros()).min(hi);
        }
        i += 64 - bit;
    }
    hi
}

/// One piece of the vmemmap window that must be backed by RAM.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VmemmapChunk {
    /// Where in the window; `va.size` bytes of RAM back it.
    pub va: VirtRange,
    /// [`SIZE_2M`]: one 2 MiB block (back it with a 2 MiB-aligned order-9
    /// block, map it with a level-2 block); [`PAGE_SIZE`]: a run of 4 KiB pages.
    pub granule: u64,
}

/// Which parts of the vmemmap window `window` must be backed for the present
/// sections: a 2 MiB block wherever all 256 sections it describes are present,
/// else the 8 KiB of each present section's records, runs merged. The bytes
/// are exactly 8 KiB per present section: proportional to present RAM (4 MiB
/// of records per GiB), nothing for sections that hold no RAM the monitor touches.
pub fn vmemmap_backing(window: VirtRange, sections: &Sections) -> Result<Vec<VmemmapChunk>, MemMapError> {
    let needed = u64::from(sections.nr_sections()) * SECTION_RECORD_BYTES;
    if needed > window.size || !window.base.is_aligned(SIZE_2M) {
        return Err(MemMapError::SpanTooLarge { span: sections.span_pages() * PAGE_SIZE });
    }
    let mut out: Vec<VmemmapChunk> = Vec::new();
    let per_block = SECTIONS_PER_VMEMMAP_BLOCK as u32;
    let blocks = sections.nr_sections().div_ceil(per_block);
    for b in 0..blocks {
        let first = b * per_block;
        let full = sections.all_present(first, first + per_block);
        if full {
            let va = VirtRange::from_raw(window.start() + u64::from(b) * SIZE_2M, SIZE_2M)
                .ok_or(MemMapError::SpanTooLarge { span: sections.span_pages() * PAGE_SIZE })?;
            out.push(VmemmapChunk { va, granule: SIZE_2M });
            continue;
        }
        for s in first..(first + per_block).min(sections.nr_sections()) {
            if !sections.is_present(s) {
                continue;
            }
            let start = window.start() + u64::from(s) * SECTION_RECORD_BYTES;
            match out.last_mut() {
                Some(last) if last.granule == PAGE_SIZE && last.va.end() == start => {
                    last.va.size += SECTION_RECORD_BYTES
                }
                _ => out.push(VmemmapChunk {
                    va: VirtRange::from_raw(start, SECTION_RECORD_BYTES)
                        .ok_or(MemMapError::SpanTooLarge { span: sections.span_pages() * PAGE_SIZE })?,
                    granule: PAGE_SIZE,
                }),
            }
        }
    }
    Ok(out)
}

/// Bytes of RAM a vmemmap backing takes.
pub fn backing_bytes(chunks: &[VmemmapChunk]) -> u64 {
    chunks.iter().map(|c| c.va.size).sum()
}

/// Where page records live. The monitor implements it over the vmemmap window
/// (record `index` at `vmemmap_base + 16 * index`); [`MemMap`] only asks for
/// indices of present sections, and an implementation answers `None` for a
/// record it does not hold rather than reading unbacked memory.
pub trait PageStore {
    /// The record at `index` of the page array.
    fn page(&self, index: u32) -> Option<&Page>;
    /// The record at `index`, for writing.
    fn page_mut(&mut self, index: u32) -> Option<&mut Page>;

    /// Whether the store holds the record at `index` (without reading it).
    fn has(&self, index: u32) -> bool {
        self.page(index).is_some()
    }

    /// The index of a record of a present section of `sections` that the store
    /// lacks (the first or last of such a section), if any. A store that
    /// answers for exactly those sections may say `None` at once.
    fn first_missing(&self, sections: &Sections) -> Option<u32> {
        (0..sections.nr_sections()).filter(|&s| sections.is_present(s)).find_map(|sec| {
            let first = sec * PAGES_PER_SECTION as u32;
            [first, first + PAGES_PER_SECTION as u32 - 1].into_iter().find(|&i| !self.has(i))
        })
    }

    /// Sets every record in `[start, end)` (one section at most) to `page`;
    /// `false` if one is missing. Stores over plain memory override this with
    /// one slice write: it is the boot path's cost per page.
    fn fill(&mut self, start: u32, end: u32, page: Page) -> bool {
        (start..end).all(|i| self.page_mut(i).map(|p| *p = page).is_some())
    }

    /// Whether every record in `[start, end)` (one section at most) exists and satisfies `f`.
    fn all(&self, start: u32, end: u32, f: &dyn Fn(&Page) -> bool) -> bool {
        (start..end).all(|i| self.page(i).is_some_and(f))
    }
}

/// Page records on the heap, one boxed array per present section: the host's
/// vmemmap. Records of absent sections do not exist.
#[derive(Clone)]
pub struct VecPageStore {
    sections: Vec<Option<Box<[Page]>>>,
}

impl VecPageStore {
    /// Records (reserved) for every present section of `sections`.
    pub fn new(sections: &Sections) -> VecPageStore {
        let sections = (0..sections.nr_sections())
            .map(|s| {
                sections.is_present(s).then(|| vec![Page::reserved(); PAGES_PER_SECTION as usize].into_boxed_slice())
            })
            .collect();
        VecPageStore { sections }
    }

    /// Bytes of records held: 8 KiB per present section.
    pub fn bytes(&self) -> u64 {
        self.sections.iter().flatten().count() as u64 * SECTION_RECORD_BYTES
    }
}

impl fmt::Debug for VecPageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VecPageStore {{ sections: {}, bytes: {} }}", self.sections.len(), self.bytes())
    }
}

impl PageStore for VecPageStore {
    fn page(&self, index: u32) -> Option<&Page> {
        let sec = self.sections.get((index / PAGES_PER_SECTION as u32) as usize)?.as_ref()?;
        sec.get((index % PAGES_PER_SECTION as u32) as usize)
    }
    fn page_mut(&mut self, index: u32) -> Option<&mut Page> {
        let sec = self.sections.get_mut((index / PAGES_PER_SECTION as u32) as usize)?.as_mut()?;
        sec.get_mut((index % PAGES_PER_SECTION as u32) as usize)
    }
}

/// The record every page of a section that is not initialised yet reads as.
static RESERVED: Page = Page::reserved();

/// The page database: sections plus the record store, addressed by frame number.
///
/// A present section's records are initialised when something first needs
/// them, not when the database is made (Linux's deferred struct page init):
/// until then the section is *unready*, every one of its records reads as
/// [`Page::reserved`] without the store being read, and the store may hold
/// anything there (the vmemmap backing as the boot loader left it). The first
/// write initialises the section: one fill with the value being written when
/// the write covers the whole section, else a fill with `Page::reserved()`
/// first. So bringing the database up costs nothing per page, and a section
/// nobody touches costs nothing at all.
#[derive(Clone, Debug)]
pub struct MemMap<S: PageStore> {
    sections: Sections,
    store: S,
    /// Bit `i`: section `i`'s records in the store are initialised.
    ready: Vec<u64>,
    ready_count: u32,
}

impl<S: PageStore> MemMap<S> {
    /// The database over `store`, every record of every present section
    /// reading as [`Page::reserved`]. Nothing is written: sections are
    /// initialised on first use. Fails if the store lacks the first or last
    /// record of a present section (its vmemmap backing is missing).
    pub fn new(sections: Sections, store: S) -> Result<MemMap<S>, MemMapError> {
        if let Some(idx) = store.first_missing(&sections) {
            return Err(MemMapError::Unbacked { pfn: sections.pfn_at(idx) });
        }
        let words = (sections.nr_sections() as usize).div_ceil(64);
        Ok(MemMap { sections, store, ready: vec![0; words], ready_count: 0 })
    }

    /// Whether section `sec`'s records are initialised.
    #[inline]
    pub fn is_ready(&self, sec: u32) -> bool {
        self.ready.get((sec / 64) as usize).is_some_and(|w| w & (1 << (sec % 64)) != 0)
    }

    /// Whether `pfn`'s record is initialised (false for a frame without a record).
    pub fn pfn_ready(&self, pfn: Pfn) -> bool {
        self.sections.index_of(pfn).is_some_and(|i| self.is_ready(i / PAGES_PER_SECTION as u32))
    }

    /// Sections whose records are initialised.
    pub fn ready_sections(&self) -> u32 {
        self.ready_count
    }

    fn set_ready(&mut self, sec: u32) {
        if let Some(w) = self.ready.get_mut((sec / 64) as usize) {
            if *w & (1 << (sec % 64)) == 0 {
                *w |= 1 << (sec % 64);
                self.ready_count += 1;
            }
        }
    }

    /// Initialises section `sec` (records reserved) unless it is; `false` if the store lacks a record.
    fn make_ready(&mut self, sec: u32) -> bool {
        if self.is_ready(sec) {
            return true;
        }
        let first = sec * PAGES_PER_SECTION as u32;
        if !self.store.fill(first, first + PAGES_PER_SECTION as u32, Page::reserved()) {
            return false;
        }
        self.set_ready(sec);
        true
    }

    /// Calls `f(first_index, end_index)` for each run of `[start, end)` that
    /// lies in one section; `Err(pfn)` at the first frame with no record.
    fn by_section(&self, start: u64, end: u64, mut f: impl FnMut(u32, u32) -> bool) -> Result<(), Pfn> {
        let mut p = start;
        while p < end {
            let idx = self.sections.index_of(Pfn(p)).ok_or(Pfn(p))?;
            let in_sec = PAGES_PER_SECTION - u64::from(idx) % PAGES_PER_SECTION;
            let n = in_sec.min(end - p) as u32;
            if !f(idx, idx + n) {
                return Err(Pfn(p));
            }
            p += u64::from(n);
        }
        Ok(())
    }

    /// Sets the records of frames `[start, end)` to `page`; `Err` at the first
    /// frame without one. A whole unready section is initialised by this one
    /// fill; a part of one is initialised (reserved) first.
    pub fn fill_pfns(&mut self, start: u64, end: u64, page: Page) -> Result<(), Pfn> {
        // Check every frame has a record before writing any.
        self.by_section(start, end, |_, _| true)?;
        let mut p = start;
        while p < end {
            let idx = self.sections.index_of(Pfn(p)).ok_or(Pfn(p))?;
            let sec = idx / PAGES_PER_SECTION as u32;
            let in_sec = PAGES_PER_SECTION - u64::from(idx) % PAGES_PER_SECTION;
            let n = in_sec.min(end - p) as u32;
            let whole = u64::from(n) == PAGES_PER_SECTION;
            if !(whole || self.make_ready(sec)) || !self.store.fill(idx, idx + n, page) {
                return Err(Pfn(p));
            }
            if whole {
                self.set_ready(sec);
            }
            p += u64::from(n);
        }
        Ok(())
    }

    /// Whether every frame in `[start, end)` has a record satisfying `f`
    /// (an unready section's records are all [`Page::reserved`]: `f` is asked once for it).
    pub fn all_pfns(&self, start: u64, end: u64, f: &dyn Fn(&Page) -> bool) -> bool {
        let mut reserved_ok = None;
        let mut p = start;
        while p < end {
            let Some(idx) = self.sections.index_of(Pfn(p)) else { return false };
            let sec = idx / PAGES_PER_SECTION as u32;
            if self.is_ready(sec) {
                let n = (PAGES_PER_SECTION - u64::from(idx) % PAGES_PER_SECTION).min(end - p) as u32;
                if !self.store.all(idx, idx + n, f) {
                    return false;
                }
                p += u64::from(n);
            } else {
                if !*reserved_ok.get_or_insert_with(|| f(&RESERVED)) {
                    return false;
                }
                // The whole run of present, unready sections from here, a bitmap word at a time.
                let stop = self.unready_end(sec);
                p = self.sections.section_pfn(stop).0.min(end);
            }
        }
        true
    }

    /// The first section at or after `sec` that is absent or ready.
    fn unready_end(&self, sec: u32) -> u32 {
        let nr = self.sections.nr_sections();
        let present = self.sections.present_words();
        let mut i = sec;
        while i < nr {
            let (word, bit) = ((i / 64) as usize, i % 64);
            let unready = present.get(word).copied().unwrap_or(0) & !self.ready.get(word).copied().unwrap_or(0);
            let stop = !unready >> bit;
            if stop != 0 {
                return (i + stop.trailing_zeros()).min(nr);
            }
            i += 64 - bit;
        }
        nr
    }

    /// The sections the database covers.
    pub fn sections(&self) -> &Sections {
        &self.sections
    }
    /// The record store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Whether `pfn` has a record (section presence only).
    pub fn pfn_valid(&self, pfn: Pfn) -> bool {
        self.sections.pfn_valid(pfn)
    }

    /// `pfn`'s record, if it has one.
    pub fn page(&self, pfn: Pfn) -> Option<&Page> {
        self.page_at(self.sections.span_index(pfn)?)
    }

    /// `pfn`'s record, for writing (its section is initialised first).
    pub fn page_mut(&mut self, pfn: Pfn) -> Option<&mut Page> {
        let idx = self.sections.span_index(pfn)?;
        self.page_at_mut(idx)
    }

    /// The record at array index `index` (for list links); `None` outside present sections.
    #[inline]
    pub fn page_at(&self, index: u32) -> Option<&Page> {
        let sec = index / PAGES_PER_SECTION as u32;
        // Only present sections become ready: one bitmap test on the allocator's paths.
        if self.is_ready(sec) {
            self.store.page(index)
        } else {
            self.sections.is_present(sec).then_some(&RESERVED)
        }
    }

    /// The record at array index `index` of a section that is initialised
    /// already, for writing; `None` for any other (the buddy's free-list and
    /// allocated-block records, which are always initialised: a cheaper path
    /// than [`page_at_mut`](Self::page_at_mut), which may have to initialise).
    #[inline]
    pub fn ready_page_mut(&mut self, index: u32) -> Option<&mut Page> {
        if self.is_ready(index / PAGES_PER_SECTION as u32) {
            self.store.page_mut(index)
        } else {
            None
        }
    }

    /// The record at array index `index`, for writing (its section is initialised first).
    #[inline]
    pub fn page_at_mut(&mut self, index: u32) -> Option<&mut Page> {
        let sec = index / PAGES_PER_SECTION as u32;
        let ready = self.is_ready(sec) || (self.sections.is_present(sec) && self.make_ready(sec));
        if !ready {
            return None;
        }
        self.store.page_mut(index)
    }
}

/// Takes `size` bytes aligned to `align` from the lowest part of `free` that
/// ends at or below `limit`, before any allocator exists (the vmemmap backing,
/// the first table pages). `None` if nothing fits.
pub fn early_alloc(free: &mut RangeSet, size: u64, align: u64, limit: u64) -> Option<PhysRange> {
    if size == 0 || !align.is_power_of_two() {
        return None;
    }
    let found = free.ranges().iter().find_map(|r| {
        let start = r.start().checked_add(align - 1)? & !(align - 1);
        let end = start.checked_add(size)?;
        (end <= r.end() && end <= limit).then(|| PhysRange::from_bounds(start, end)).flatten()
    })?;
    free.remove(found);
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn r(base: u64, size: u64) -> PhysRange {
        PhysRange::from_raw(base, size).unwrap()
    }

    #[test]
    fn record_is_sixteen_bytes_and_owner_round_trips() {
        assert_eq!(core::mem::size_of::<Page>(), 16);
        let mut p = Page::reserved();
        for o in [
            Owner::Free,
            Owner::Monitor,
            Owner::Guest(0),
            Owner::Guest(255),
            Owner::Stage2Tables,
            Owner::HypTables,
            Owner::Vmemmap,
            Owner::Cma,
        ] {
            p.set_owner(o);
            assert_eq!(p.owner(), o);
        }
        assert_eq!(Owner::decode(200, 0), None);
    }

    #[test]
    fn pfn_valid_follows_sections() {
        // 1 GiB at 0x40000000 with a 128 MiB hole at 0x50000000, and 3 MiB at 0x1_0010_0000.
        let ram = [r(0x4000_0000, 1024 * MIB), r(0x1_0010_0000, 3 * MIB)];
        let mut present = RangeSet::from_ranges(ram);
        present.remove(r(0x5000_0000, 128 * MIB));
        let s = Sections::new(&ram, &present).unwrap();
        assert_eq!(s.base_pfn(), Pfn(0x40000));
        assert_eq!(s.nr_sections(), ((0x1_0040_0000u64 - 0x4000_0000) / SECTION_SIZE) as u32);
        assert_eq!(s.present_sections(), 512 - 64 + 2);
        assert!(s.pfn_valid(Pfn(0x40000)));
        assert!(s.pfn_valid(Pfn(0x4ffff)));
        assert!(!s.pfn_valid(Pfn(0x50000)));
        assert!(!s.pfn_valid(Pfn(0x57fff)));
        assert!(s.pfn_valid(Pfn(0x58000)));
        assert!(!s.pfn_valid(Pfn(0x80000)));
        assert!(!s.pfn_valid(Pfn(0x3ffff)));
        // The section at 0x1_0000_0000 is present (RAM starts 1 MiB into it): its first records exist.
        assert!(s.pfn_valid(Pfn(0x10_0000)));
        assert!(s.pfn_valid(Pfn(0x10_03ff)));
        assert!(!s.pfn_valid(Pfn(0x10_0400)));
        assert!(!s.pfn_valid(Pfn(u64::MAX)));
        assert_eq!(
            s.present_ranges(),
            [r(0x4000_0000, 256 * MIB), r(0x5800_0000, 0x2800_0000), r(0x1_0000_0000, 4 * MIB)]
        );
    }

    #[test]
    fn pfn_to_page_is_arithmetic() {
        let ram = [r(0x4000_0000, 64 * MIB)];
        let s = Sections::new(&ram, &RangeSet::from_ranges(ram)).unwrap();
        let base = VirtAddr::new(0xff00_0000);
        assert_eq!(s.record_va(base, Pfn(0x40000)), Some(base));
        assert_eq!(s.record_va(base, Pfn(0x40001)), Some(VirtAddr::new(0xff00_0010)));
        assert_eq!(s.pfn_of_record(base, VirtAddr::new(0xff00_0010)), Some(Pfn(0x40001)));
        assert_eq!(s.pfn_of_record(base, VirtAddr::new(0xff00_0011)), None);
        assert_eq!(s.record_va(base, Pfn(0x44000)), None);
    }

    #[test]
    fn vmemmap_backing_is_proportional_and_uses_blocks_for_full_runs() {
        // 2 GiB at 0x80000000 with a 64 MiB no-map hole at 0xa0000000 (in the second 512 MiB).
        let ram = [r(0x8000_0000, 2048 * MIB)];
        let mut present = RangeSet::from_ranges(ram);
        present.remove(r(0xa000_0000, 64 * MIB));
        let s = Sections::new(&ram, &present).unwrap();
        let window = VirtRange::from_raw(0xff00_0000, 8 * MIB).unwrap();
        let chunks = vmemmap_backing(window, &s).unwrap();
        assert_eq!(backing_bytes(&chunks), u64::from(s.present_sections()) * SECTION_RECORD_BYTES);
        // Blocks 0, 2, 3 whole; block 1 in 4 KiB pages around the hole's 32 sections.
        let blocks: Vec<_> = chunks.iter().filter(|c| c.granule == SIZE_2M).map(|c| c.va.start()).collect();
        assert_eq!(blocks, [0xff00_0000, 0xff40_0000, 0xff60_0000]);
        let pages: Vec<_> = chunks.iter().filter(|c| c.granule == PAGE_SIZE).map(|c| c.va).collect();
        assert_eq!(pages.len(), 1, "{pages:?}");
        assert_eq!(pages[0].start(), 0xff20_0000 + 32 * SECTION_RECORD_BYTES);
        assert_eq!(pages[0].end(), 0xff40_0000);
        // A window too small for the span is refused, not overrun.
        assert!(vmemmap_backing(VirtRange::from_raw(0xff00_0000, 2 * MIB).unwrap(), &s).is_err());
    }

    #[test]
    fn store_holds_only_present_sections() {
        let ram = [r(0x4000_0000, 8 * MIB)];
        let mut present = RangeSet::from_ranges(ram);
        present.remove(r(0x4020_0000, 2 * MIB));
        let s = Sections::new(&ram, &present).unwrap();
        let store = VecPageStore::new(&s);
        assert_eq!(store.bytes(), 3 * SECTION_RECORD_BYTES);
        let mm = MemMap::new(s, store).unwrap();
        assert!(mm.page(Pfn(0x40000)).is_some_and(|p| p.has(flags::RESERVED)));
        assert!(mm.page(Pfn(0x40200)).is_none());
        assert!(mm.page_at(0x200).is_none());
        // A store that lacks a present section is refused.
        let all = Sections::new(&ram, &RangeSet::from_ranges(ram)).unwrap();
        let holed = Sections::new(&ram, &present).unwrap();
        assert_eq!(
            MemMap::new(all, VecPageStore::new(&holed)).unwrap_err(),
            MemMapError::Unbacked { pfn: Pfn(0x40200) }
        );
    }

    #[test]
    fn sections_are_initialised_on_first_write_only() {
        // 16 MiB: sections 0-7, section 4 a no-map hole. The store starts as
        // tails everywhere, so a record read before its section was
        // initialised would not read reserved.
        let ram = [r(0x4000_0000, 16 * MIB)];
        let mut present = RangeSet::from_ranges(ram);
        present.remove(r(0x4080_0000, 2 * MIB));
        let s = Sections::new(&ram, &present).unwrap();
        let mut store = VecPageStore::new(&s);
        for i in 0..s.span_pages() as u32 {
            if let Some(p) = store.page_mut(i) {
                *p = Page::tail();
            }
        }
        let mut mm = MemMap::new(s, store).unwrap();
        let reserved = |p: &Page| *p == Page::reserved();
        let sec = |n: u64| 0x40000 + n * PAGES_PER_SECTION;
        assert_eq!(mm.ready_sections(), 0);
        assert!(mm.all_pfns(sec(0), sec(4), &reserved));
        assert!(mm.all_pfns(sec(5), sec(8), &reserved));
        assert!(!mm.all_pfns(sec(3), sec(5), &reserved), "no records in the hole");
        assert_eq!(mm.page(Pfn(sec(6) + 3)), Some(&Page::reserved()));
        // Part of section 1: the section is initialised (reserved), then the part written.
        mm.fill_pfns(sec(1) + 10, sec(1) + 20, Page::tail()).unwrap();
        assert_eq!(mm.ready_sections(), 1);
        assert!(mm.all_pfns(sec(1), sec(1) + 10, &reserved));
        assert!(mm.all_pfns(sec(1) + 10, sec(1) + 20, &|p| *p == Page::tail()));
        assert!(mm.all_pfns(sec(1) + 20, sec(4), &reserved));
        assert!(!mm.all_pfns(sec(0), sec(4), &reserved));
        // A whole section and the start of the next: one fill for the first, the second initialised first.
        let mut head = Page::tail();
        head.set_flags(flags::HEAD);
        mm.fill_pfns(sec(2), sec(3) + 1, head).unwrap();
        assert!(mm.all_pfns(sec(2), sec(3) + 1, &|p| *p == head));
        assert!(mm.all_pfns(sec(3) + 1, sec(4), &reserved));
        assert_eq!(mm.ready_sections(), 3);
        assert!(mm.is_ready(2) && mm.is_ready(3) && !mm.is_ready(0) && !mm.is_ready(5));
        // Writing one record initialises its section; absent sections have none to write.
        mm.page_mut(Pfn(sec(7))).unwrap().set_order(3);
        assert!(mm.is_ready(7) && mm.all_pfns(sec(7) + 1, sec(8), &reserved));
        assert!(mm.page_mut(Pfn(sec(4))).is_none());
        assert_eq!(mm.fill_pfns(sec(3), sec(5), Page::tail()), Err(Pfn(sec(4))));
        assert!(mm.all_pfns(sec(3) + 1, sec(4), &reserved), "a refused fill writes nothing");
    }

    #[test]
    fn early_alloc_takes_aligned_low_memory() {
        let mut free = RangeSet::from_ranges([r(0x4000_1000, 16 * MIB)]);
        let a = early_alloc(&mut free, 2 * MIB, SIZE_2M, u64::MAX).unwrap();
        assert_eq!(a, r(0x4020_0000, 2 * MIB));
        assert!(!free.overlaps(&a));
        assert_eq!(early_alloc(&mut free, 64 * MIB, PAGE_SIZE, u64::MAX), None);
        assert_eq!(early_alloc(&mut free, PAGE_SIZE, PAGE_SIZE, 0x4000_1000), None);
        assert_eq!(early_alloc(&mut free, PAGE_SIZE, 3, u64::MAX), None);
    }
}
