//! kmap and fixmap: reaching pages the linear map does not (highmem, RAM above 4 GiB) through small windows.
//!
//! **pkmap** ([`Pkmap`]): the 2 MiB window at `PKMAP_BASE` holds 512 slots of
//! one page. [`Pkmap::kmap`] of a lowmem page returns its linear address and
//! keeps no state; of a highmem page, a slot with a use count. Unmapping is
//! lazy, as in Linux: [`Pkmap::kunmap`] only drops the count, the page stays
//! mapped in its slot, and a later `kmap` of the same page finds it there. A
//! slot is reused for another page only when its count is 0; the caller then
//! unmaps the old page (the table code invalidates its TLB entry) before
//! mapping the new one. The bookkeeping here is pure: the table writes go
//! through the caller's [`PageTable<HypStage1>`], or [`Pkmap::kmap_into`] does
//! them. A page that is freed must first leave the pkmap ([`Pkmap::evict`]),
//! or a stale alias of it survives.
//!
//! **fixmap** ([`fixmap`]): the pages from `FIXMAP_BASE` up, fixed by index
//! and known before any allocator runs: the early console, per-CPU slots for
//! short atomic mappings ([`KmapAtomic`], a per-CPU stack: no lock, no
//! cross-CPU TLB shootdown, only the local TLB entry is invalidated), and the
//! early device tree.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::page::Pfn;
use super::table::{Attrs, HypStage1, MapError, PageTable, TableMemory};
use crate::addr::{Address, PhysAddr, PhysRange, VirtAddr, PAGE_SIZE};
use crate::plan::layout::{LinearRun, MonitorLayout, PKMAP_BASE, PKMAP_SIZE};

/// Slots in the pkmap window: 2 MiB of 4 KiB pages.
pub const PKMAP_SLOTS: usize = (PKMAP_SIZE / PAGE_SIZE) as usize;

/// Why a kmap or fixmap request was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum KmapError {
    /// The frame is not a physical page (past the 40-bit space).
    BadPfn { pfn: Pfn },
    /// Every slot is in use.
    Full,
    /// The address is not a kmapped page.
    NotMapped { va: VirtAddr },
    /// The page is not in use in the pkmap.
    NotKmapped { pfn: Pfn },
    /// The page is still in use in a slot, so it cannot be evicted.
    InUse { pfn: Pfn, count: u32 },
    /// A slot count would overflow.
    TooManyUses { pfn: Pfn },
    /// No such fixmap slot (CPU or index out of range).
    NoSlot,
    /// The per-CPU stack is unwound out of order: `va` is not its top.
    NotTop { va: VirtAddr },
    /// A fixmap region too large for its slots.
    TooLarge { size: u64, max: u64 },
    /// The table could not be changed.
    Map(MapError),
}

impl fmt::Display for KmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BadPfn { pfn } => write!(f, "kmap: {pfn} is not a physical page"),
            Self::Full => write!(f, "kmap: all {PKMAP_SLOTS} pkmap slots are in use"),
            Self::NotMapped { va } => write!(f, "kmap: {va} is not a kmapped page"),
            Self::NotKmapped { pfn } => write!(f, "kmap: {pfn} is not kmapped"),
            Self::InUse { pfn, count } => write!(f, "kmap: {pfn} is still mapped {count} time(s)"),
            Self::TooManyUses { pfn } => write!(f, "kmap: {pfn} is mapped too many times"),
            Self::NoSlot => write!(f, "fixmap: no such slot"),
            Self::NotTop { va } => write!(f, "kmap_atomic: {va} is not the last mapping of this CPU"),
            Self::TooLarge { size, max } => write!(f, "fixmap: {size:#x} bytes do not fit its {max:#x}-byte slots"),
            Self::Map(e) => write!(f, "kmap: {e}"),
        }
    }
}

impl From<MapError> for KmapError {
    fn from(e: MapError) -> Self {
        KmapError::Map(e)
    }
}

/// The linear-map address of `pa`, if the linear map reaches it.
fn linear(lowmem: &[LinearRun], pa: u64) -> Option<VirtAddr> {
    lowmem
        .iter()
        .find(|l| pa >= l.pa.as_u64() && pa - l.pa.as_u64() < l.size)
        .and_then(|l| VirtAddr::from_u64(l.va.as_u64() + (pa - l.pa.as_u64())))
}

/// What a [`Pkmap::kmap`] asks of the caller.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kmapped {
    /// A lowmem page: its linear address; nothing to map, nothing to unmap later.
    Lowmem(VirtAddr),
    /// A pkmap slot.
    Slot {
        /// The slot's address.
        va: VirtAddr,
        /// Another page still mapped at `va` from an earlier, finished use:
        /// unmap it first (with its TLB entry).
        evict: Option<Pfn>,
        /// Map this page at `va` (Normal memory, read/write, never executable).
        /// `None`: the page is mapped there already.
        map: Option<PhysAddr>,
    },
}

impl Kmapped {
    /// The address to use the page at.
    pub fn va(&self) -> VirtAddr {
        match *self {
            Kmapped::Lowmem(va) | Kmapped::Slot { va, .. } => va,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// The page mapped in the slot, if any (count 0: mapped but unused).
    pfn: Option<Pfn>,
    count: u32,
}

/// The pkmap slot allocator.
#[derive(Clone, Debug)]
pub struct Pkmap {
    base: VirtAddr,
    slots: Vec<Slot>,
    lowmem: Vec<LinearRun>,
    /// Where the search for a slot to reuse starts (round robin).
    next: usize,
}

impl Pkmap {
    /// The pkmap of `layout`: its window and its linear map.
    pub fn new(layout: &MonitorLayout) -> Pkmap {
        Pkmap::with_window(layout.pkmap.base, &layout.lowmem)
    }

    /// A pkmap of [`PKMAP_SLOTS`] slots from `base`, `lowmem` being the linear map.
    pub fn with_window(base: VirtAddr, lowmem: &[LinearRun]) -> Pkmap {
        Pkmap { base, slots: vec![Slot::default(); PKMAP_SLOTS], lowmem: lowmem.to_vec(), next: 0 }
    }

    fn slot_va(&self, i: usize) -> VirtAddr {
        // i < 512 and the window is 2 MiB below the fixmap: inside the 32-bit space.
        VirtAddr::from_u64(self.base.as_u64() + i as u64 * PAGE_SIZE).unwrap_or(PKMAP_BASE)
    }

    fn slot_of(&self, va: VirtAddr) -> Option<usize> {
        let off = va.as_u64().checked_sub(self.base.as_u64())?;
        let i = (off / PAGE_SIZE) as usize;
        (i < self.slots.len()).then_some(i)
    }

    /// Maps `pfn` for use: see [`Kmapped`] for what the caller must do.
    pub fn kmap(&mut self, pfn: Pfn) -> Result<Kmapped, KmapError> {
        let pa = pfn.addr().ok_or(KmapError::BadPfn { pfn })?;
        if let Some(va) = linear(&self.lowmem, pa.as_u64()) {
            return Ok(Kmapped::Lowmem(va));
        }
        if let Some(i) = self.slots.iter().position(|s| s.pfn == Some(pfn)) {
            let s = &mut self.slots[i];
            s.count = s.count.checked_add(1).ok_or(KmapError::TooManyUses { pfn })?;
            return Ok(Kmapped::Slot { va: self.slot_va(i), evict: None, map: None });
        }
        // A never-used slot first, else an unused one (whose old page must go).
        let n = self.slots.len();
        let i = (0..n)
            .map(|k| (self.next + k) % n)
            .find(|&i| self.slots[i].pfn.is_none())
            .or_else(|| (0..n).map(|k| (self.next + k) % n).find(|&i| self.slots[i].count == 0))
            .ok_or(KmapError::Full)?;
        let evict = self.slots[i].pfn;
        self.slots[i] = Slot { pfn: Some(pfn), count: 1 };
        self.next = (i + 1) % n;
        Ok(Kmapped::Slot { va: self.slot_va(i), evict, map: Some(pa) })
    }

    /// Ends one use of `pfn` (a lowmem page: nothing to do). The page stays mapped in its slot until reused.
    pub fn kunmap(&mut self, pfn: Pfn) -> Result<(), KmapError> {
        let pa = pfn.addr().ok_or(KmapError::BadPfn { pfn })?;
        if linear(&self.lowmem, pa.as_u64()).is_some() {
            return Ok(());
        }
        let i = self.slots.iter().position(|s| s.pfn == Some(pfn) && s.count > 0);
        let i = i.ok_or(KmapError::NotKmapped { pfn })?;
        self.slots[i].count -= 1;
        Ok(())
    }

    /// The page a pkmap address maps (`kmap_to_page`), if it is in use or still mapped.
    pub fn page_at(&self, va: VirtAddr) -> Option<Pfn> {
        self.slots.get(self.slot_of(va)?)?.pfn
    }

    /// Uses of `pfn` now (0 when mapped but unused, or not in the pkmap).
    pub fn count(&self, pfn: Pfn) -> u32 {
        self.slots.iter().find(|s| s.pfn == Some(pfn)).map_or(0, |s| s.count)
    }

    /// Slots in use (count above 0).
    pub fn in_use(&self) -> usize {
        self.slots.iter().filter(|s| s.count > 0).count()
    }

    /// Takes `pfn` out of the pkmap before the page is freed: `Some(va)` if a
    /// stale mapping of it must be unmapped, `None` if it had none; an error
    /// while it is in use.
    pub fn evict(&mut self, pfn: Pfn) -> Result<Option<VirtAddr>, KmapError> {
        let Some(i) = self.slots.iter().position(|s| s.pfn == Some(pfn)) else { return Ok(None) };
        if self.slots[i].count > 0 {
            return Err(KmapError::InUse { pfn, count: self.slots[i].count });
        }
        self.slots[i].pfn = None;
        Ok(Some(self.slot_va(i)))
    }

    /// Forgets every unused mapping (Linux's `flush_all_zero_pkmaps`): the
    /// caller unmaps each returned address (one TLB invalidation of the window suffices).
    pub fn flush_unused(&mut self) -> Vec<(VirtAddr, Pfn)> {
        let mut out = Vec::new();
        for i in 0..self.slots.len() {
            if let Slot { pfn: Some(pfn), count: 0 } = self.slots[i] {
                self.slots[i].pfn = None;
                out.push((self.slot_va(i), pfn));
            }
        }
        out
    }

    /// [`kmap`](Self::kmap), doing the table work: unmaps an evicted page
    /// (invalidating its TLB entry) and maps the new one. On a table error the
    /// slot is given back.
    pub fn kmap_into<M: TableMemory + ?Sized>(
        &mut self,
        table: &mut PageTable<HypStage1>,
        mem: &mut M,
        pfn: Pfn,
    ) -> Result<VirtAddr, KmapError> {
        let k = self.kmap(pfn)?;
        if let Kmapped::Slot { va, evict, map } = k {
            let undo = |p: &mut Pkmap| {
                if let Some(i) = p.slot_of(va) {
                    p.slots[i] = Slot::default();
                }
            };
            if evict.is_some() {
                if let Err(e) = table.unmap(mem, va, PAGE_SIZE) {
                    undo(self);
                    return Err(e.into());
                }
            }
            if let Some(pa) = map {
                if let Err(e) = table.map(mem, va, pa, PAGE_SIZE, Attrs::ram_nx()) {
                    undo(self);
                    return Err(e.into());
                }
            }
        }
        Ok(k.va())
    }
}

pub mod fixmap {
    //! Fixmap slot indices and their addresses.
    //!
    //! Index `i` is the page at `FIXMAP_BASE + i * 4 KiB`. The fixmap ends one
    //! page below the top of the address space (a guard), so it has 255 pages:
    //!
    //! | indices | use |
    //! |---|---|
    //! | [`FIX_CONSOLE`] | the early console UART |
    //! | [`FIX_BOARD`] .. + [`FIX_BOARD_PAGES`] | the board's control registers (power-off, CPU release, the GIC distributor) |
    //! | [`FIX_KMAP_BEGIN`] .. [`FIX_KMAP_END`] | [`KMAP_ATOMIC_SLOTS`] per CPU, for [`FIX_MAX_CPUS`] CPUs |
    //! | [`FIX_FDT_BEGIN`] .. [`FIXMAP_PAGES`] | the early device tree, [`FIX_FDT_PAGES`] pages |

    use super::*;
    use crate::plan::layout::{FIXMAP_BASE, FIXMAP_END};

    /// Pages in the fixmap: 255.
    pub const FIXMAP_PAGES: u32 = ((FIXMAP_END.raw() - FIXMAP_BASE.raw()) as u64 / PAGE_SIZE) as u32;
    /// The early console's page.
    pub const FIX_CONSOLE: u32 = 0;
    /// The pages of the board's control registers the monitor drives itself
    /// (the Versatile Express system registers, for power-off and SYS_FLAGS;
    /// the GIC distributor, to wake CPUs a boot monitor holds).
    pub const FIX_BOARD: u32 = 1;
    /// How many board pages.
    pub const FIX_BOARD_PAGES: u32 = 2;
    /// CPUs with fixmap slots of their own (two Cortex-A15 clusters of four).
    pub const FIX_MAX_CPUS: u32 = 8;
    /// Atomic kmap slots per CPU: how deep one CPU's mappings may nest (a copy's source and destination, and two spare).
    pub const KMAP_ATOMIC_SLOTS: u32 = 4;
    /// The first per-CPU kmap slot.
    pub const FIX_KMAP_BEGIN: u32 = FIX_BOARD + FIX_BOARD_PAGES;
    /// One past the last per-CPU kmap slot.
    pub const FIX_KMAP_END: u32 = FIX_KMAP_BEGIN + FIX_MAX_CPUS * KMAP_ATOMIC_SLOTS;
    /// The first page of the early device-tree window.
    pub const FIX_FDT_BEGIN: u32 = FIX_KMAP_END;
    /// Pages of the early device-tree window: the rest of the fixmap (880 KiB).
    /// A tree is mapped up to the end of its strings block, not its `totalsize`
    /// (QEMU pads its generated DTB to 1 MiB).
    pub const FIX_FDT_PAGES: u32 = FIXMAP_PAGES - FIX_FDT_BEGIN;

    const _: () = assert!(FIX_FDT_BEGIN < FIXMAP_PAGES && FIX_FDT_PAGES >= 128);

    /// The address of fixmap slot `idx`.
    pub fn fix_to_virt(idx: u32) -> Option<VirtAddr> {
        (idx < FIXMAP_PAGES).then(|| VirtAddr::new(FIXMAP_BASE.raw() + idx * PAGE_SIZE as u32))
    }

    /// The fixmap slot of `va`.
    pub fn virt_to_fix(va: VirtAddr) -> Option<u32> {
        let idx = va.raw().checked_sub(FIXMAP_BASE.raw())? / PAGE_SIZE as u32;
        (idx < FIXMAP_PAGES).then_some(idx)
    }

    /// CPU `cpu`'s atomic kmap slot `slot`.
    pub fn kmap_slot(cpu: u32, slot: u32) -> Result<u32, KmapError> {
        if cpu >= FIX_MAX_CPUS || slot >= KMAP_ATOMIC_SLOTS {
            return Err(KmapError::NoSlot);
        }
        Ok(FIX_KMAP_BEGIN + cpu * KMAP_ATOMIC_SLOTS + slot)
    }

    /// A fixed mapping to make: `size` bytes of physical `pa` at `va`.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub struct FixMapping {
        /// Where to map (page aligned).
        pub va: VirtAddr,
        /// What to map (page aligned).
        pub pa: PhysAddr,
        /// Bytes to map (whole pages).
        pub size: u64,
        /// The address of the byte asked for.
        pub target: VirtAddr,
    }

    /// The console's fixed mapping: the page holding the UART register at `pa` (map it as Device).
    pub fn console(pa: PhysAddr) -> FixMapping {
        let page = pa.align_down(PAGE_SIZE);
        let va = VirtAddr::new(FIXMAP_BASE.raw() + FIX_CONSOLE * PAGE_SIZE as u32);
        let off = (pa.as_u64() - page.as_u64()) as u32;
        FixMapping { va, pa: page, size: PAGE_SIZE, target: VirtAddr::new(va.raw() + off) }
    }

    /// Board page `index`'s fixed mapping: the page holding the register at `pa` (map it as Device).
    pub fn board(index: u32, pa: PhysAddr) -> Result<FixMapping, KmapError> {
        if index >= FIX_BOARD_PAGES {
            return Err(KmapError::NoSlot);
        }
        let page = pa.align_down(PAGE_SIZE);
        let va = VirtAddr::new(FIXMAP_BASE.raw() + (FIX_BOARD + index) * PAGE_SIZE as u32);
        let off = (pa.as_u64() - page.as_u64()) as u32;
        Ok(FixMapping { va, pa: page, size: PAGE_SIZE, target: VirtAddr::new(va.raw() + off) })
    }

    /// The early device tree's fixed mapping: `size` bytes at `pa` (map them read-only, never executable).
    pub fn fdt(pa: PhysAddr, size: u64) -> Result<FixMapping, KmapError> {
        let max = u64::from(FIX_FDT_PAGES) * PAGE_SIZE;
        let page = pa.align_down(PAGE_SIZE);
        let off = pa.as_u64() - page.as_u64();
        let bytes =
            off.checked_add(size).and_then(|b| b.checked_next_multiple_of(PAGE_SIZE)).filter(|&b| b > 0 && b <= max);
        let bytes = bytes.ok_or(KmapError::TooLarge { size, max })?;
        PhysRange::new(page, bytes).ok_or(KmapError::TooLarge { size, max })?;
        let va = VirtAddr::new(FIXMAP_BASE.raw() + FIX_FDT_BEGIN * PAGE_SIZE as u32);
        Ok(FixMapping { va, pa: page, size: bytes, target: VirtAddr::new(va.raw() + off as u32) })
    }
}

/// What a [`KmapAtomic::push`] asks of the caller.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AtomicMapping {
    /// The address to use the page at.
    pub va: VirtAddr,
    /// Map this page at `va` (Normal, read/write, never executable); `None` for a lowmem page.
    pub map: Option<PhysAddr>,
}

/// One CPU's atomic kmap slots: a stack, unwound in reverse order.
#[derive(Clone, Debug)]
pub struct KmapAtomic {
    cpu: u32,
    depth: u32,
    lowmem: Vec<LinearRun>,
}

impl KmapAtomic {
    /// CPU `cpu`'s stack (`cpu` below [`fixmap::FIX_MAX_CPUS`]).
    pub fn new(cpu: u32, layout: &MonitorLayout) -> Result<KmapAtomic, KmapError> {
        fixmap::kmap_slot(cpu, 0)?;
        Ok(KmapAtomic { cpu, depth: 0, lowmem: layout.lowmem.clone() })
    }

    /// Mappings in use.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Maps `pfn` in this CPU's next slot (a lowmem page: its linear address, no slot used).
    pub fn push(&mut self, pfn: Pfn) -> Result<AtomicMapping, KmapError> {
        let pa = pfn.addr().ok_or(KmapError::BadPfn { pfn })?;
        if let Some(va) = linear(&self.lowmem, pa.as_u64()) {
            return Ok(AtomicMapping { va, map: None });
        }
        let idx = fixmap::kmap_slot(self.cpu, self.depth).map_err(|_| KmapError::Full)?;
        let va = fixmap::fix_to_virt(idx).ok_or(KmapError::NoSlot)?;
        self.depth += 1;
        Ok(AtomicMapping { va, map: Some(pa) })
    }

    /// Ends the mapping at `va`, which must be the last one pushed (or a lowmem
    /// address). `Some(va)`: the caller unmaps it and invalidates this CPU's TLB entry for it.
    pub fn pop(&mut self, va: VirtAddr) -> Result<Option<VirtAddr>, KmapError> {
        if fixmap::virt_to_fix(va).is_none() && self.lowmem.iter().any(|l| l.va_range().contains(va.as_u64())) {
            return Ok(None);
        }
        let top = self.depth.checked_sub(1).ok_or(KmapError::NotMapped { va })?;
        let idx = fixmap::kmap_slot(self.cpu, top)?;
        let top_va = fixmap::fix_to_virt(idx).ok_or(KmapError::NoSlot)?;
        if va.align_down(PAGE_SIZE) != top_va {
            return Err(KmapError::NotTop { va });
        }
        self.depth = top;
        Ok(Some(top_va))
    }
}

#[cfg(test)]
mod tests {
    use super::fixmap::*;
    use super::*;
    use crate::mm::table::VecMemory;
    use crate::plan::layout::{lay_out, LayoutConfig, FIXMAP_BASE};
    use crate::plan::RangeSet;

    const MIB: u64 = 1 << 20;

    /// 6 GiB from 0x40000000 with nothing carved: lowmem ends well below the RAM above 4 GiB.
    fn layout() -> MonitorLayout {
        let ram = RangeSet::from_ranges([PhysRange::from_raw(0x4000_0000, 6144 * MIB).unwrap()]);
        lay_out(&ram, &[], &LayoutConfig::default()).unwrap()
    }

    #[test]
    fn lowmem_pages_use_the_linear_map() {
        let l = layout();
        let mut k = Pkmap::new(&l);
        let low = Pfn(0x40123);
        let va = l.linear_va(PhysAddr::new(0x4012_3000)).unwrap();
        assert_eq!(k.kmap(low), Ok(Kmapped::Lowmem(va)));
        assert_eq!(k.kunmap(low), Ok(()));
        assert_eq!(k.in_use(), 0);
    }

    #[test]
    fn highmem_slots_are_counted_and_reused_lazily() {
        let l = layout();
        let mut k = Pkmap::new(&l);
        let high = Pfn(0x18_0000); // 6 GiB physical: highmem, above 4 GiB
        let Kmapped::Slot { va, evict: None, map: Some(pa) } = k.kmap(high).unwrap() else { panic!() };
        assert_eq!(va, PKMAP_BASE);
        assert_eq!(pa.as_u64(), 0x1_8000_0000);
        // Again: same slot, nothing to map.
        assert_eq!(k.kmap(high).unwrap(), Kmapped::Slot { va, evict: None, map: None });
        assert_eq!(k.count(high), 2);
        assert_eq!(k.page_at(va), Some(high));
        k.kunmap(high).unwrap();
        k.kunmap(high).unwrap();
        assert!(k.kunmap(high).is_err(), "one kunmap too many");
        // Unused but still mapped: a new kmap of it finds it.
        assert_eq!(k.kmap(high).unwrap().va(), va);
        k.kunmap(high).unwrap();
        // Fill every slot: the unused one is evicted last.
        let mut vas = Vec::new();
        for i in 1..PKMAP_SLOTS as u64 {
            vas.push(k.kmap(Pfn(0x18_0000 + i)).unwrap());
        }
        assert!(vas.iter().all(|m| matches!(m, Kmapped::Slot { evict: None, .. })));
        let m = k.kmap(Pfn(0x19_0000)).unwrap();
        assert_eq!(m, Kmapped::Slot { va, evict: Some(high), map: Some(PhysAddr::new(0x19_0000000)) });
        assert_eq!(k.kmap(Pfn(0x19_0001)), Err(KmapError::Full));
        assert_eq!(k.evict(Pfn(0x19_0000)), Err(KmapError::InUse { pfn: Pfn(0x19_0000), count: 1 }));
        k.kunmap(Pfn(0x19_0000)).unwrap();
        assert_eq!(k.evict(Pfn(0x19_0000)), Ok(Some(va)));
        assert_eq!(k.evict(Pfn(0x19_0000)), Ok(None));
        assert_eq!(k.kmap(Pfn(u64::MAX)), Err(KmapError::BadPfn { pfn: Pfn(u64::MAX) }));
    }

    #[test]
    fn kmap_into_writes_and_replaces_mappings() {
        let l = layout();
        let mut k = Pkmap::new(&l);
        let mut mem = VecMemory::default();
        let mut table = PageTable::<HypStage1>::new(&mut mem).unwrap();
        let first = k.kmap_into(&mut table, &mut mem, Pfn(0x14_0000)).unwrap();
        assert_eq!(table.translate(&mem, first).unwrap().pa, PhysAddr::new(0x14_0000000));
        k.kunmap(Pfn(0x14_0000)).unwrap();
        for (va, _) in k.flush_unused() {
            table.unmap(&mut mem, va, PAGE_SIZE).unwrap();
        }
        assert!(table.translate(&mem, first).is_none());
        // Lowmem: nothing written.
        let before = mem.pages_in_use();
        let va = k.kmap_into(&mut table, &mut mem, Pfn(0x40000)).unwrap();
        assert_eq!(va, l.page_offset);
        assert_eq!(mem.pages_in_use(), before);
        // Reuse of an unused slot unmaps the old page first.
        let mut k = Pkmap::with_window(PKMAP_BASE, &l.lowmem);
        for i in 0..PKMAP_SLOTS as u64 {
            k.kmap_into(&mut table, &mut mem, Pfn(0x14_0000 + i)).unwrap();
            k.kunmap(Pfn(0x14_0000 + i)).unwrap();
        }
        let va = k.kmap_into(&mut table, &mut mem, Pfn(0x15_0000)).unwrap();
        assert_eq!(va, PKMAP_BASE);
        assert_eq!(table.translate(&mem, va).unwrap().pa, PhysAddr::new(0x15_0000000));
    }

    #[test]
    fn fixmap_indices_and_addresses() {
        assert_eq!(FIXMAP_PAGES, 255);
        assert_eq!(fix_to_virt(FIX_CONSOLE), Some(FIXMAP_BASE));
        assert_eq!(fix_to_virt(FIXMAP_PAGES), None);
        assert_eq!(fix_to_virt(FIXMAP_PAGES - 1), Some(VirtAddr::new(0xffff_e000)));
        assert_eq!(virt_to_fix(VirtAddr::new(0xfff0_1234)), Some(1));
        assert_eq!(virt_to_fix(VirtAddr::new(0xffff_f000)), None);
        assert_eq!(kmap_slot(0, 0), Ok(FIX_KMAP_BEGIN));
        assert_eq!(kmap_slot(7, 3), Ok(FIX_KMAP_END - 1));
        assert_eq!(kmap_slot(8, 0), Err(KmapError::NoSlot));
        assert_eq!(kmap_slot(0, 4), Err(KmapError::NoSlot));
        // The slots of every CPU are distinct and none is the console's or the tree's.
        let mut all: Vec<u32> =
            (0..FIX_MAX_CPUS).flat_map(|c| (0..KMAP_ATOMIC_SLOTS).map(move |s| kmap_slot(c, s).unwrap())).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len() as u32, FIX_MAX_CPUS * KMAP_ATOMIC_SLOTS);
        assert!(all.iter().all(|&i| i != FIX_CONSOLE && !(FIX_BOARD..FIX_BOARD + FIX_BOARD_PAGES).contains(&i)));
        assert!(all.iter().all(|&i| i < FIX_FDT_BEGIN));
        assert_eq!(
            board(1, PhysAddr::new(0x2c00_1f00)).unwrap().target.raw(),
            fix_to_virt(FIX_BOARD + 1).unwrap().raw() + 0xf00
        );
        assert!(board(FIX_BOARD_PAGES, PhysAddr::new(0)).is_err());

        let c = console(PhysAddr::new(0x0900_0018));
        assert_eq!(
            (c.va, c.pa, c.size, c.target.raw()),
            (FIXMAP_BASE, PhysAddr::new(0x0900_0000), PAGE_SIZE, 0xfff0_0018)
        );
        let t = fdt(PhysAddr::new(0x4000_0800), 0x2000).unwrap();
        assert_eq!(t.size, 3 * PAGE_SIZE);
        assert_eq!(t.target.raw(), t.va.raw() + 0x800);
        assert_eq!(t.va, fix_to_virt(FIX_FDT_BEGIN).unwrap());
        assert!(fdt(PhysAddr::new(0x4000_0000), 1 << 20).is_err(), "1 MiB does not fit");
        assert!(fdt(PhysAddr::new(0x4000_0000), 0).is_err());
        assert!(fdt(PhysAddr::new(0x4000_0000), u64::MAX).is_err());
    }

    #[test]
    fn atomic_kmaps_nest_per_cpu() {
        let l = layout();
        let mut cpu1 = KmapAtomic::new(1, &l).unwrap();
        assert!(KmapAtomic::new(FIX_MAX_CPUS, &l).is_err());
        let a = cpu1.push(Pfn(0x10_0000)).unwrap();
        let b = cpu1.push(Pfn(0x10_0001)).unwrap();
        assert_eq!(a.va, fix_to_virt(kmap_slot(1, 0).unwrap()).unwrap());
        assert_eq!(b.va, fix_to_virt(kmap_slot(1, 1).unwrap()).unwrap());
        assert_eq!(b.map, Some(PhysAddr::new(0x1_0000_1000)));
        // Lowmem needs no slot.
        let low = cpu1.push(Pfn(0x40000)).unwrap();
        assert_eq!(low, AtomicMapping { va: l.page_offset, map: None });
        assert_eq!(cpu1.pop(low.va), Ok(None));
        assert_eq!(cpu1.pop(a.va), Err(KmapError::NotTop { va: a.va }));
        assert_eq!(cpu1.pop(b.va), Ok(Some(b.va)));
        assert_eq!(cpu1.pop(a.va), Ok(Some(a.va)));
        assert!(cpu1.pop(a.va).is_err());
        for i in 0..KMAP_ATOMIC_SLOTS {
            cpu1.push(Pfn(0x10_0000 + u64::from(i))).unwrap();
        }
        assert_eq!(cpu1.push(Pfn(0x10_0010)), Err(KmapError::Full));
    }
}
