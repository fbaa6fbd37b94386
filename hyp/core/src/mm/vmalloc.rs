//! vmalloc: the monitor's allocator of virtually contiguous ranges, over the layout's vmalloc space.
//!
//! The space is every [`VmallocRange`] of the layout: the virtual holes that
//! `no-map` carveouts leave inside the linear map and the dedicated area above
//! lowmem (seed 000). Free space is a sorted, coalesced list of ranges; an
//! allocation is the first fit, and is followed by one unmapped guard page
//! (inside the same free range, so the page after an area is never someone
//! else's mapping: a run off its end faults). The guard is not part of the
//! returned range but stays reserved until the area is freed.
//!
//! On top of the range allocator, [`Vmalloc::vmap`], [`Vmalloc::vmalloc`] and
//! [`Vmalloc::ioremap`] write the mappings through the Hyp stage-1
//! [`PageTable`], and [`Vmalloc::vunmap`] (also `vfree`, `iounmap`) removes
//! them; [`PageTable::unmap`] invalidates the TLB entries of the range (through
//! [`TableMemory::invalidate_tlb`]) before the range or its pages are reused.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use super::buddy::{Buddy, BuddyError};
use super::page::{Owner, PageStore, Pfn};
use super::table::{Attrs, HypStage1, MapError, PageTable, TableMemory};
use crate::addr::{Address, PhysAddr, Size, VirtAddr, VirtRange, PAGE_SIZE};
use crate::plan::layout::{MonitorLayout, VmallocRange};

/// Bytes of unmapped guard after every area.
pub const GUARD_SIZE: u64 = PAGE_SIZE;

/// What an area is for: the `caller` column of [`Vmalloc::vmallocinfo`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VmKind {
    /// Pages from the buddy allocator mapped contiguously ([`Vmalloc::vmalloc`]).
    Vmalloc,
    /// Pages the caller owns, mapped contiguously ([`Vmalloc::vmap`]).
    Vmap,
    /// MMIO with Device attributes ([`Vmalloc::ioremap`]).
    Ioremap,
    /// A contiguous allocation from a CMA pool.
    Cma,
    /// Virtual space reserved with [`Vmalloc::alloc`], mapped by the caller.
    Reserved,
}

impl VmKind {
    /// The name `vmallocinfo` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            VmKind::Vmalloc => "vmalloc",
            VmKind::Vmap => "vmap",
            VmKind::Ioremap => "ioremap",
            VmKind::Cma => "cma",
            VmKind::Reserved => "reserved",
        }
    }
}

/// One allocated area.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct VmArea {
    /// The usable range (the guard page after it is not included).
    pub range: VirtRange,
    /// Who asked for it.
    pub kind: VmKind,
    /// The first physical address, when the area maps one contiguous physical range (ioremap, CMA).
    pub phys: Option<PhysAddr>,
}

/// Why vmalloc refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum VmallocError {
    /// A size of 0.
    ZeroSize,
    /// An alignment that is not a power of two, or an address or size that is not whole pages.
    BadAlignment { value: u64 },
    /// No free range holds `size` bytes (plus the guard) at that alignment; the largest free range is `largest`.
    NoSpace { size: u64, largest: u64 },
    /// No area starts at this address.
    NotAllocated { va: VirtAddr },
    /// The area is of another kind than the call expects (`vfree` of an ioremap, say).
    WrongKind { va: VirtAddr, kind: VmKind },
    /// The table could not be changed.
    Map(MapError),
    /// The pages could not be allocated.
    Pages(BuddyError),
}

impl fmt::Display for VmallocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::ZeroSize => write!(f, "vmalloc: size 0"),
            Self::BadAlignment { value } => write!(f, "vmalloc: {value:#x} is not a power of two or not whole pages"),
            Self::NoSpace { size, largest } => write!(
                f,
                "vmalloc: no room for {} plus a guard page (largest free range {})",
                Size(size),
                Size(largest)
            ),
            Self::NotAllocated { va } => write!(f, "vmalloc: no area starts at {va}"),
            Self::WrongKind { va, kind } => write!(f, "vmalloc: the area at {va} is {}", kind.as_str()),
            Self::Map(e) => write!(f, "vmalloc: {e}"),
            Self::Pages(e) => write!(f, "vmalloc: {e}"),
        }
    }
}

impl From<MapError> for VmallocError {
    fn from(e: MapError) -> Self {
        VmallocError::Map(e)
    }
}

/// The vmalloc range allocator.
#[derive(Clone, Debug)]
pub struct Vmalloc {
    /// The space, as the layout gives it.
    space: Vec<VmallocRange>,
    /// Free ranges: sorted, disjoint, not adjacent.
    free: Vec<VirtRange>,
    /// Areas by start address.
    areas: BTreeMap<u32, VmArea>,
}

impl Vmalloc {
    /// An allocator over every vmalloc range of `layout` (holes and the dedicated area).
    pub fn new(layout: &MonitorLayout) -> Vmalloc {
        Vmalloc::from_ranges(&layout.vmalloc)
    }

    /// An allocator over `ranges` (whole pages of each are used).
    pub fn from_ranges(ranges: &[VmallocRange]) -> Vmalloc {
        let mut v = Vmalloc { space: ranges.to_vec(), free: Vec::new(), areas: BTreeMap::new() };
        for r in ranges {
            let start = r.va.align_up(PAGE_SIZE).map(|a| a.as_u64());
            let end = (r.va.as_u64() + r.size) & !(PAGE_SIZE - 1);
            if let Some(range) = start.and_then(|s| VirtRange::from_bounds(s, end)).filter(|r| !r.is_empty()) {
                v.insert_free(range);
            }
        }
        v
    }

    /// The layout ranges this allocator serves.
    pub fn space(&self) -> &[VmallocRange] {
        &self.space
    }
    /// All vmalloc space in bytes, hole space included (what `vmalloc=` sizes).
    pub fn total(&self) -> u64 {
        self.space.iter().map(|r| r.size).sum()
    }
    /// Bytes in free ranges.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().map(|r| r.size).sum()
    }
    /// The largest free range.
    pub fn largest_free(&self) -> u64 {
        self.free.iter().map(|r| r.size).max().unwrap_or(0)
    }
    /// The free ranges, in address order.
    pub fn free_ranges(&self) -> &[VirtRange] {
        &self.free
    }
    /// The allocated areas, in address order.
    pub fn areas(&self) -> impl Iterator<Item = &VmArea> {
        self.areas.values()
    }
    /// The area that holds `va`, if any.
    pub fn find(&self, va: VirtAddr) -> Option<&VmArea> {
        self.areas.range(..=va.raw()).next_back().map(|(_, a)| a).filter(|a| a.range.contains(va.as_u64()))
    }

    /// One line per area, like Linux's `/proc/vmallocinfo`:
    /// `0xf0000000-0xf0002000    8192 ioremap phys=0x09000000`. The size includes the guard page.
    pub fn vmallocinfo(&self) -> Vec<String> {
        self.areas
            .values()
            .map(|a| {
                let mut line = format!(
                    "{:#010x}-{:#010x} {:>9} {}",
                    a.range.start(),
                    a.range.end() + GUARD_SIZE,
                    a.range.size + GUARD_SIZE,
                    a.kind.as_str()
                );
                if let Some(pa) = a.phys {
                    line.push_str(&format!(" phys={:#010x}", pa.as_u64()));
                }
                line
            })
            .collect()
    }

    fn insert_free(&mut self, r: VirtRange) {
        let pos = self.free.partition_point(|f| f.start() < r.start());
        self.free.insert(pos, r);
        // Merge with the following range, then with the preceding one.
        if pos + 1 < self.free.len() && self.free[pos].end() == self.free[pos + 1].start() {
            self.free[pos].size += self.free[pos + 1].size;
            self.free.remove(pos + 1);
        }
        if pos > 0 && self.free[pos - 1].end() == self.free[pos].start() {
            self.free[pos - 1].size += self.free[pos].size;
            self.free.remove(pos);
        }
    }

    fn alloc_area(
        &mut self,
        size: u64,
        align: u64,
        kind: VmKind,
        phys: Option<PhysAddr>,
    ) -> Result<VirtRange, VmallocError> {
        if size == 0 {
            return Err(VmallocError::ZeroSize);
        }
        if !align.is_power_of_two() {
            return Err(VmallocError::BadAlignment { value: align });
        }
        let align = align.max(PAGE_SIZE);
        let no_space = VmallocError::NoSpace { size, largest: self.largest_free() };
        let size = size.checked_next_multiple_of(PAGE_SIZE).ok_or(no_space)?;
        let need = size.checked_add(GUARD_SIZE).ok_or(no_space)?;
        let (i, start) = self
            .free
            .iter()
            .enumerate()
            .find_map(|(i, f)| {
                let start = f.start().checked_next_multiple_of(align)?;
                (start.checked_add(need)? <= f.end()).then_some((i, start))
            })
            .ok_or(no_space)?;
        let f = self.free.remove(i);
        let range = VirtRange::from_raw(start, size).ok_or(no_space)?;
        for piece in [VirtRange::from_bounds(f.start(), start), VirtRange::from_bounds(start + need, f.end())]
            .into_iter()
            .flatten()
            .filter(|p| !p.is_empty())
        {
            self.insert_free(piece);
        }
        self.areas.insert(range.base.raw(), VmArea { range, kind, phys });
        Ok(range)
    }

    /// Reserves `size` bytes (rounded up to pages) aligned to `align` (a power
    /// of two; at least a page), plus the guard page after them, for `kind`.
    /// Nothing is mapped: the caller maps what it needs.
    pub fn alloc(&mut self, size: u64, align: u64, kind: VmKind) -> Result<VirtRange, VmallocError> {
        self.alloc_area(size, align, kind, None)
    }

    /// Like [`alloc`](Self::alloc), remembering the physical start for `vmallocinfo`.
    pub fn alloc_phys(
        &mut self,
        size: u64,
        align: u64,
        kind: VmKind,
        phys: PhysAddr,
    ) -> Result<VirtRange, VmallocError> {
        self.alloc_area(size, align, kind, Some(phys))
    }

    /// Gives back the area that starts at `va` and its guard page. Whatever the
    /// caller mapped there must be unmapped already ([`vunmap`](Self::vunmap) does both).
    pub fn free(&mut self, va: VirtAddr) -> Result<VmArea, VmallocError> {
        let area = self.areas.remove(&va.raw()).ok_or(VmallocError::NotAllocated { va })?;
        let with_guard =
            VirtRange::new(area.range.base, area.range.size + GUARD_SIZE).ok_or(VmallocError::NotAllocated { va })?;
        self.insert_free(with_guard);
        Ok(area)
    }

    // --- mapping ---

    /// Maps `pages` (physical page addresses, any order, any place: highmem
    /// above 4 GiB too) at consecutive virtual pages with `attrs`, as `kind`.
    /// Physically contiguous runs are mapped in one call, so aligned runs get
    /// blocks. On failure nothing stays mapped or reserved.
    pub fn vmap<M: TableMemory + ?Sized>(
        &mut self,
        table: &mut PageTable<HypStage1>,
        mem: &mut M,
        pages: &[PhysAddr],
        attrs: Attrs,
        kind: VmKind,
    ) -> Result<VirtRange, VmallocError> {
        if let Some(p) = pages.iter().find(|p| !p.is_aligned(PAGE_SIZE)) {
            return Err(VmallocError::BadAlignment { value: p.as_u64() });
        }
        let range = self.alloc(pages.len() as u64 * PAGE_SIZE, PAGE_SIZE, kind)?;
        let mut done = 0usize;
        let result = (|| {
            while done < pages.len() {
                let mut run = 1;
                while done + run < pages.len()
                    && pages[done + run].as_u64() == pages[done].as_u64() + run as u64 * PAGE_SIZE
                {
                    run += 1;
                }
                let va = VirtAddr::from_u64(range.start() + done as u64 * PAGE_SIZE)
                    .ok_or(VmallocError::BadAlignment { value: range.start() })?;
                table.map(mem, va, pages[done], run as u64 * PAGE_SIZE, attrs)?;
                done += run;
            }
            Ok(())
        })();
        if let Err(e) = result {
            if done > 0 {
                // What was mapped was mapped by us: unmapping it cannot find a hole.
                let _ = table.unmap(mem, range.base, done as u64 * PAGE_SIZE);
            }
            let _ = self.free(range.base);
            return Err(e);
        }
        Ok(range)
    }

    /// Maps the MMIO range `[pa, pa + size)` with Device attributes; returns the
    /// virtual address of `pa` itself (the page offset kept).
    pub fn ioremap<M: TableMemory + ?Sized>(
        &mut self,
        table: &mut PageTable<HypStage1>,
        mem: &mut M,
        pa: PhysAddr,
        size: u64,
    ) -> Result<VirtAddr, VmallocError> {
        if size == 0 {
            return Err(VmallocError::ZeroSize);
        }
        let first = pa.align_down(PAGE_SIZE);
        let offset = pa.as_u64() - first.as_u64();
        let bytes = offset
            .checked_add(size)
            .and_then(|b| b.checked_next_multiple_of(PAGE_SIZE))
            .ok_or(VmallocError::NoSpace { size, largest: self.largest_free() })?;
        let range = self.alloc_phys(bytes, PAGE_SIZE, VmKind::Ioremap, first)?;
        if let Err(e) = table.map(mem, range.base, first, bytes, Attrs::device()) {
            let _ = self.free(range.base);
            return Err(e.into());
        }
        VirtAddr::from_u64(range.start() + offset).ok_or(VmallocError::NotAllocated { va: range.base })
    }

    /// Undoes [`ioremap`](Self::ioremap): `va` is any address inside the mapping.
    pub fn iounmap<M: TableMemory + ?Sized>(
        &mut self,
        table: &mut PageTable<HypStage1>,
        mem: &mut M,
        va: VirtAddr,
    ) -> Result<VmArea, VmallocError> {
        let area = *self.find(va).ok_or(VmallocError::NotAllocated { va })?;
        if area.kind != VmKind::Ioremap {
            return Err(VmallocError::WrongKind { va, kind: area.kind });
        }
        self.vunmap(table, mem, area.range.base)
    }

    /// Unmaps the area at `va` (the table code invalidates the TLB entries of
    /// the whole range) and frees its virtual space. The pages stay the
    /// caller's. If the area is not wholly mapped, nothing changes.
    pub fn vunmap<M: TableMemory + ?Sized>(
        &mut self,
        table: &mut PageTable<HypStage1>,
        mem: &mut M,
        va: VirtAddr,
    ) -> Result<VmArea, VmallocError> {
        let area = *self.areas.get(&va.raw()).ok_or(VmallocError::NotAllocated { va })?;
        table.unmap(mem, area.range.base, area.range.size)?;
        self.free(va)
    }

    /// `vmalloc`: `size` bytes (rounded up to pages) of pages from `buddy`,
    /// held by `owner`, mapped read/write, never executable, at one virtual
    /// range. The pages need not be contiguous nor in lowmem. On failure
    /// everything taken is given back.
    pub fn vmalloc<S: PageStore, M: TableMemory + ?Sized>(
        &mut self,
        buddy: &mut Buddy<S>,
        table: &mut PageTable<HypStage1>,
        mem: &mut M,
        size: u64,
        owner: Owner,
    ) -> Result<VirtRange, VmallocError> {
        if size == 0 {
            return Err(VmallocError::ZeroSize);
        }
        let n = size.div_ceil(PAGE_SIZE);
        if n.saturating_add(1).saturating_mul(PAGE_SIZE) > self.largest_free() {
            return Err(VmallocError::NoSpace { size, largest: self.largest_free() });
        }
        let mut pages: Vec<PhysAddr> = Vec::new();
        let give_back = |buddy: &mut Buddy<S>, pages: &[PhysAddr]| {
            for p in pages {
                let _ = buddy.free(Pfn::of(*p), 0);
            }
        };
        for _ in 0..n {
            match buddy.alloc(0, owner).map(|p| p.addr()) {
                Ok(Some(pa)) => pages.push(pa),
                Ok(None) => {
                    give_back(buddy, &pages);
                    return Err(VmallocError::Pages(BuddyError::OutOfMemory { order: 0 }));
                }
                Err(e) => {
                    give_back(buddy, &pages);
                    return Err(VmallocError::Pages(e));
                }
            }
        }
        self.vmap(table, mem, &pages, Attrs::ram_nx(), VmKind::Vmalloc).inspect_err(|_| give_back(buddy, &pages))
    }

    /// `vfree`: unmaps an area from [`vmalloc`](Self::vmalloc) (invalidating its
    /// TLB entries) and gives its pages back to `buddy`.
    pub fn vfree<S: PageStore, M: TableMemory + ?Sized>(
        &mut self,
        buddy: &mut Buddy<S>,
        table: &mut PageTable<HypStage1>,
        mem: &mut M,
        va: VirtAddr,
    ) -> Result<(), VmallocError> {
        let area = *self.areas.get(&va.raw()).ok_or(VmallocError::NotAllocated { va })?;
        if area.kind != VmKind::Vmalloc {
            return Err(VmallocError::WrongKind { va, kind: area.kind });
        }
        let mut pages = Vec::new();
        for i in 0..area.range.size / PAGE_SIZE {
            let page = VirtAddr::from_u64(area.range.start() + i * PAGE_SIZE)
                .and_then(|v| table.translate(mem, v))
                .ok_or(VmallocError::Map(MapError::NotMapped {
                    regime: "Hyp stage 1",
                    input: area.range.start() + i * PAGE_SIZE,
                }))?;
            pages.push(page.pa);
        }
        self.vunmap(table, mem, va)?;
        for pa in pages {
            buddy.free(Pfn::of(pa), 0).map_err(VmallocError::Pages)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dt::machine::{Machine, RamBank, Reserved, ReservedKind};
    use crate::mm::page::{MemMap, Sections, VecPageStore};
    use crate::mm::table::{MemType, VecMemory};
    use crate::plan::layout::VmallocSource;
    use crate::plan::{plan, PlanConfig, RangeSet};
    use alloc::vec;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    /// QEMU virt `-m 1280` with the two 128 MiB no-map carveouts; `vmalloc=320M`.
    fn two_carveouts() -> crate::plan::Plan {
        let carve = |name: &str, base: u64| Reserved {
            name: name.into(),
            kind: ReservedKind::Static(vec![crate::addr::PhysRange::from_raw(base, 128 * MIB).unwrap()]),
            no_map: true,
            reusable: false,
            compatible: None,
            memreserve: false,
            phandle: None,
        };
        let m = Machine {
            ram: vec![RamBank {
                node: "/memory@40000000".into(),
                range: crate::addr::PhysRange::from_raw(0x4000_0000, 1280 * MIB).unwrap(),
            }],
            reserved: vec![carve("ipu-pool@50000000", 0x5000_0000), carve("fb@60000000", 0x6000_0000)],
            cpus: vec![0],
            ..Machine::default()
        };
        let mut cfg = PlanConfig { require_kernel: false, ..PlanConfig::default() };
        cfg.layout.vmalloc_size = 320 * MIB;
        plan(&m, &cfg).unwrap()
    }

    fn holes(layout: &MonitorLayout) -> Vec<VirtRange> {
        layout
            .vmalloc
            .iter()
            .filter(|v| v.source == VmallocSource::Hole)
            .map(|v| VirtRange::new(v.va, v.size).unwrap())
            .collect()
    }

    #[test]
    fn space_is_holes_plus_dedicated_and_first_fit_uses_the_holes() {
        let p = two_carveouts();
        let mut v = Vmalloc::new(&p.monitor);
        assert_eq!(v.total(), p.monitor.vmalloc_total());
        assert_eq!(v.free_bytes(), v.total());
        assert!(v.total() >= 320 * MIB);
        let holes = holes(&p.monitor);
        assert_eq!(holes.len(), 2);
        // The first allocation lands in the first hole, with a guard after it.
        let a = v.alloc(5 * PAGE_SIZE, PAGE_SIZE, VmKind::Vmalloc).unwrap();
        assert_eq!(a.base, holes[0].base);
        let b = v.alloc(1, PAGE_SIZE, VmKind::Vmalloc).unwrap();
        assert_eq!(b.start(), a.end() + GUARD_SIZE);
        // One that does not fit the rest of the first hole goes to the second.
        let c = v.alloc(holes[0].size - 8 * PAGE_SIZE, PAGE_SIZE, VmKind::Vmalloc).unwrap();
        assert!(holes[1].contains_range(&c), "{c:?}");
        // Guards are reserved: free bytes drop by the sizes plus one page each.
        assert_eq!(v.free_bytes(), v.total() - a.size - b.size - c.size - 3 * GUARD_SIZE);
        // An allocation never takes the last page of a hole (its guard would be lowmem).
        let rest = v.free_ranges().iter().find(|f| holes[0].contains_range(f)).copied().unwrap();
        assert_eq!(rest.end(), holes[0].end());
        let e = v.alloc(rest.size, PAGE_SIZE, VmKind::Reserved);
        assert!(e.is_err() || !holes[0].contains_range(&e.unwrap()), "needs its guard inside the hole");
        let e = v.alloc(rest.size - GUARD_SIZE, PAGE_SIZE, VmKind::Reserved).unwrap();
        assert_eq!(e.end() + GUARD_SIZE, holes[0].end());
        for r in [a, b, c, e] {
            v.free(r.base).unwrap();
        }
        assert_eq!(v.free_bytes(), v.total());
        assert_eq!(v.free(a.base), Err(VmallocError::NotAllocated { va: a.base }));
    }

    #[test]
    fn bad_requests_are_errors() {
        let p = two_carveouts();
        let mut v = Vmalloc::new(&p.monitor);
        assert_eq!(v.alloc(0, PAGE_SIZE, VmKind::Vmalloc), Err(VmallocError::ZeroSize));
        assert_eq!(v.alloc(1, 3, VmKind::Vmalloc), Err(VmallocError::BadAlignment { value: 3 }));
        assert!(matches!(v.alloc(u64::MAX, PAGE_SIZE, VmKind::Vmalloc), Err(VmallocError::NoSpace { .. })));
        assert!(matches!(v.alloc(v.total(), PAGE_SIZE, VmKind::Vmalloc), Err(VmallocError::NoSpace { .. })));
        assert_eq!(v.free(VirtAddr::new(0x1000)), Err(VmallocError::NotAllocated { va: VirtAddr::new(0x1000) }));
        assert_eq!(v.free_bytes(), v.total());
    }

    #[test]
    fn alignment_is_honoured_and_waste_stays_free() {
        let p = two_carveouts();
        let mut v = Vmalloc::new(&p.monitor);
        let _ = v.alloc(PAGE_SIZE, PAGE_SIZE, VmKind::Vmalloc).unwrap();
        let big = v.alloc(2 * MIB, 2 * MIB, VmKind::Cma).unwrap();
        assert!(big.base.is_aligned(2 * MIB));
        assert_eq!(v.free_bytes(), v.total() - PAGE_SIZE - 2 * MIB - 2 * GUARD_SIZE);
    }

    #[test]
    fn vmap_ioremap_and_vfree_write_the_table_and_invalidate() {
        let p = two_carveouts();
        let mut v = Vmalloc::new(&p.monitor);
        let mut mem = VecMemory::default();
        let mut table = PageTable::<HypStage1>::new(&mut mem).unwrap();

        // ioremap of the UART: device attributes, page offset kept.
        let uart = v.ioremap(&mut table, &mut mem, PhysAddr::new(0x0900_0010), 0x20).unwrap();
        assert_eq!(uart.as_u64() & 0xfff, 0x10);
        let t = table.translate(&mem, uart).unwrap();
        assert_eq!((t.pa, t.attrs.mem), (PhysAddr::new(0x0900_0010), MemType::Device));
        assert!(v.vmallocinfo()[0].contains("ioremap phys=0x09000000"), "{:?}", v.vmallocinfo());

        // vmalloc: pages from a buddy, including highmem above 4 GiB.
        let ram = [crate::addr::PhysRange::from_raw(0x1_0000_0000, 8 * MIB).unwrap()];
        let sections = Sections::new(&ram, &RangeSet::from_ranges(ram)).unwrap();
        let mm = MemMap::new(sections.clone(), VecPageStore::new(&sections)).unwrap();
        let mut buddy = Buddy::new(mm);
        buddy.add_free_range(ram[0]).unwrap();
        let area = v.vmalloc(&mut buddy, &mut table, &mut mem, 3 * PAGE_SIZE + 1, Owner::Monitor).unwrap();
        assert_eq!(area.size, 4 * PAGE_SIZE);
        assert_eq!(buddy.owner_pages(Owner::Monitor), 4);
        for i in 0..4 {
            let t = table.translate(&mem, VirtAddr::new(area.base.raw() + i * 0x1000)).unwrap();
            assert!(t.pa.as_u64() >= 0x1_0000_0000);
            assert_eq!(t.attrs, Attrs::ram_nx());
        }
        // The guard page is not mapped.
        assert!(table.translate(&mem, VirtAddr::new(area.base.raw() + 0x4000)).is_none());
        assert_eq!(
            v.vfree(&mut buddy, &mut table, &mut mem, uart),
            Err(VmallocError::NotAllocated { va: uart }),
            "not an area start"
        );
        let flushes = mem.tlb_invalidations();
        v.vfree(&mut buddy, &mut table, &mut mem, area.base).unwrap();
        assert!(mem.tlb_invalidations() > flushes, "vfree invalidates the TLB");
        assert!(table.translate(&mem, area.base).is_none());
        assert_eq!(buddy.free_pages(), buddy.managed_pages());
        v.iounmap(&mut table, &mut mem, uart).unwrap();
        assert_eq!(v.free_bytes(), v.total());
        let mut leaves = 0;
        table.for_each_leaf(&mem, |_| leaves += 1);
        assert_eq!(leaves, 0);

        // A failed vmap leaves nothing behind: a table budget that runs out.
        let mut tight = VecMemory::with_budget(PhysAddr::new(0x80_0000_0000), 1);
        let mut t2 = PageTable::<HypStage1>::new(&mut tight).unwrap();
        let pages = [PhysAddr::new(0x4000_0000), PhysAddr::new(0x4000_2000)];
        assert!(matches!(
            v.vmap(&mut t2, &mut tight, &pages, Attrs::ram_nx(), VmKind::Vmap),
            Err(VmallocError::Map(MapError::OutOfMemory { .. }))
        ));
        assert_eq!(v.free_bytes(), v.total());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Alloc(u64, u32),
        Free(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (1u64..64 * 4096, 12u32..22).prop_map(|(s, a)| Op::Alloc(s, a)),
            1 => (1u64..160 * MIB, 12u32..24).prop_map(|(s, a)| Op::Alloc(s, a)),
            4 => any::<usize>().prop_map(Op::Free),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Areas and their guards never overlap, stay inside the vmalloc ranges
        /// (holes included), keep their alignment, and freeing everything gives
        /// all the space back.
        #[test]
        fn areas_and_guards_are_disjoint_and_inside(ops in proptest::collection::vec(op(), 1..80)) {
            let p = two_carveouts();
            let space: Vec<VirtRange> = p.monitor.vmalloc.iter().map(|r| VirtRange::new(r.va, r.size).unwrap()).collect();
            let mut v = Vmalloc::new(&p.monitor);
            let mut live: Vec<VirtRange> = Vec::new();
            for op in ops {
                match op {
                    Op::Alloc(size, align_log) => {
                        if let Ok(r) = v.alloc(size, 1 << align_log, VmKind::Vmalloc) {
                            prop_assert_eq!(r.size, size.next_multiple_of(PAGE_SIZE));
                            prop_assert!(r.base.is_aligned(1 << align_log));
                            let with_guard = VirtRange::new(r.base, r.size + GUARD_SIZE).unwrap();
                            prop_assert!(space.iter().any(|s| s.contains_range(&with_guard)), "{:?} outside", with_guard);
                            for l in &live {
                                let lg = VirtRange::new(l.base, l.size + GUARD_SIZE).unwrap();
                                prop_assert!(!lg.overlaps(&with_guard), "{:?} overlaps {:?}", with_guard, lg);
                            }
                            live.push(r);
                        }
                    }
                    Op::Free(i) if !live.is_empty() => {
                        let r = live.swap_remove(i % live.len());
                        prop_assert_eq!(v.free(r.base).map(|a| a.range), Ok(r));
                    }
                    _ => {}
                }
                let used: u64 = live.iter().map(|l| l.size + GUARD_SIZE).sum();
                prop_assert_eq!(v.free_bytes() + used, v.total());
                prop_assert_eq!(v.areas().count(), live.len());
            }
            for r in live.drain(..) {
                v.free(r.base).unwrap();
            }
            prop_assert_eq!(v.free_bytes(), v.total());
            let fresh = Vmalloc::new(&p.monitor);
            prop_assert_eq!(v.free_ranges(), fresh.free_ranges());
        }
    }
}
