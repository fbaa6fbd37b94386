//! The monitor's page database over the vmemmap window, and translation-table memory from the buddy allocator.
//!
//! [`VmemmapStore`] is carve-core's [`PageStore`] over the vmemmap window of
//! the monitor's layout: record `index` at `vmemmap + 16 * index`, answered
//! only for present sections (whose records [`map_vmemmap`] backed). The
//! buddy allocator over it lives in [`MEM`].
//!
//! [`HypTables`] is a [`TableMemory`] that hands out table pages from the
//! buddy (kept in lowmem, reached through the linear map) once it exists, and
//! still reads, writes and frees the static pool's pages (the boot Hyp
//! tables). Lock order: [`MEM`], then the vmalloc state, then `HYP_MAP`.

use carve_core::addr::PhysRange;
use carve_core::addr::{Address, PhysAddr, VirtAddr, PAGE_SIZE};
use carve_core::mm::page::VmemmapChunk;
use carve_core::mm::{Attrs, Buddy, MapError, Owner, Page, PageStore, Pfn, RegimeKind, Sections, TableMemory};
use carve_core::plan::{LinearRun, RangeSet};
use spin::Mutex;

use super::cache;
use super::mmu::{TablePool, HYP_MAP};

/// The page records of the present sections, at their vmemmap addresses.
pub struct VmemmapStore {
    base: usize,
    sections: Sections,
}

impl VmemmapStore {
    /// The store over the window at `base`, whose present sections' records
    /// [`map_vmemmap`] mapped (the caller's promise; checked by construction in `mm`).
    pub fn new(base: VirtAddr, sections: Sections) -> Self {
        Self { base: base.raw() as usize, sections }
    }

    #[inline(always)]
    fn ptr(&self, index: u32) -> Option<*mut Page> {
        let sec = index / carve_core::mm::page::PAGES_PER_SECTION as u32;
        if !self.sections.is_present(sec) {
            return None;
        }
        Some((self.base + 16 * index as usize) as *mut Page)
    }
}

impl PageStore for VmemmapStore {
    #[inline(always)]
    fn page(&self, index: u32) -> Option<&Page> {
        let p = self.ptr(index)?;
        // SAFETY: the record of a present section lies in the vmemmap backing
        // that map_vmemmap mapped read/write before this store was built; it is
        // 16-byte aligned (Page needs 4) and only the store's owner reaches it.
        Some(unsafe { &*p })
    }
    #[inline(always)]
    fn page_mut(&mut self, index: u32) -> Option<&mut Page> {
        let p = self.ptr(index)?;
        // SAFETY: as in `page`; `&mut self` makes this the only reference.
        Some(unsafe { &mut *p })
    }

    fn has(&self, index: u32) -> bool {
        self.ptr(index).is_some()
    }

    fn first_missing(&self, sections: &Sections) -> Option<u32> {
        // Built over the same sections, it answers for every present one (map_vmemmap backed them).
        if *sections == self.sections {
            return None;
        }
        (0..sections.nr_sections())
            .filter(|&s| sections.is_present(s) && !self.sections.is_present(s))
            .map(|s| s * carve_core::mm::page::PAGES_PER_SECTION as u32)
            .next()
    }

    fn fill(&mut self, start: u32, end: u32, page: Page) -> bool {
        let Some(records) = self.run_mut(start, end) else { return false };
        super::memops::fill_records(records, page);
        true
    }

    fn all(&self, start: u32, end: u32, f: &dyn Fn(&Page) -> bool) -> bool {
        let Some(p) = self.run_ptr(start, end) else { return false };
        // SAFETY: `run_ptr` checked that [start, end) lies in one present
        // section, whose records are mapped and contiguous in the vmemmap.
        let records = unsafe { core::slice::from_raw_parts(p, (end - start) as usize) };
        records.iter().all(f)
    }
}

impl VmemmapStore {
    /// The first record of `[start, end)` when the run lies in one present section.
    fn run_ptr(&self, start: u32, end: u32) -> Option<*mut Page> {
        let per = carve_core::mm::page::PAGES_PER_SECTION as u32;
        (end > start && (end - 1) / per == start / per).then(|| self.ptr(start)).flatten()
    }

    fn run_mut(&mut self, start: u32, end: u32) -> Option<&mut [Page]> {
        let p = self.run_ptr(start, end)?;
        // SAFETY: as in `all`; `&mut self` makes this the only reference to these records.
        Some(unsafe { core::slice::from_raw_parts_mut(p, (end - start) as usize) })
    }
}

/// The monitor's physical memory, once it is up.
pub struct MemState {
    /// Every page of RAM no carveout, module or image owns.
    pub buddy: Buddy<VmemmapStore>,
    /// The lowmem linear map (where table pages must lie to be written).
    pub lowmem: alloc::vec::Vec<LinearRun>,
}

/// The buddy allocator and the linear map it is reached through.
pub static MEM: Mutex<Option<MemState>> = Mutex::new(None);

/// Maps the vmemmap chunks at their window addresses, each backed by RAM taken
/// from `free` below 4 GiB (2 MiB-aligned for 2 MiB chunks). Returns the
/// backing ranges (to hand to the buddy as `Owner::Vmemmap`).
pub fn map_vmemmap(chunks: &[VmemmapChunk], free: &mut RangeSet) -> Result<alloc::vec::Vec<PhysRange>, MapError> {
    let mut out = alloc::vec::Vec::new();
    let mut guard = HYP_MAP.lock();
    let map = guard.as_mut().ok_or(MapError::OutOfMemory { regime: "vmemmap" })?;
    for c in chunks {
        let r = carve_core::mm::page::early_alloc(free, c.va.size, c.granule, 1 << 32)
            .ok_or(MapError::OutOfMemory { regime: "vmemmap" })?;
        map.table.map(&mut map.pool, c.va.base, r.base, c.va.size, Attrs::ram_nx())?;
        out.push(r);
    }
    Ok(out)
}

/// Reads a descriptor at `ptr`, single-copy atomic.
///
/// # Safety
/// `ptr` is an 8-byte aligned, mapped table descriptor.
unsafe fn read_desc(ptr: *const u64) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller's promise; LDRD of an aligned doubleword is single-copy atomic with LPAE.
    unsafe {
        core::arch::asm!("ldrd r2, r3, [{p}]", p = in(reg) ptr, out("r2") lo, out("r3") hi,
            options(nostack, preserves_flags, readonly))
    };
    u64::from(lo) | (u64::from(hi) << 32)
}

/// Writes a descriptor at `ptr` (one STRD) and cleans it to the point of coherency.
///
/// # Safety
/// `ptr` is an 8-byte aligned, mapped table descriptor that the caller owns.
unsafe fn write_desc(ptr: *mut u64, value: u64) {
    // SAFETY: the caller's promise; one STRD is single-copy atomic for the walker.
    unsafe {
        core::arch::asm!("strd r2, r3, [{p}]", p = in(reg) ptr, in("r2") value as u32, in("r3") (value >> 32) as u32,
            options(nostack, preserves_flags))
    };
    cache::clean_dcache_range_poc(ptr as usize, 8);
}

/// The linear-map address of `pa`, if lowmem.
pub fn linear_va(lowmem: &[LinearRun], pa: u64) -> Option<usize> {
    lowmem
        .iter()
        .find(|r| pa >= r.pa.as_u64() && pa < r.pa.as_u64() + r.size)
        .map(|r| (pa - r.pa.as_u64() + u64::from(r.va.raw())) as usize)
}

/// Table memory: new pages from the buddy (in lowmem) when it is up, else the pool;
/// the pool's pages are still read, written and freed where they are.
pub struct HypTables<'a> {
    pool: &'a mut TablePool,
    mem: Option<&'a mut MemState>,
    owner: Owner,
    /// For one guest's stage-2: its VTTBR, so TLB invalidation is by its VMID alone.
    guest: Option<u64>,
    /// A test switch of `selftest` builds: skip the stage-2 TLB invalidations,
    /// so a test can show that a stale translation is seen without them.
    #[cfg(feature = "selftest")]
    skip_tlbi: bool,
}

impl<'a> HypTables<'a> {
    /// Table memory over `pool` and, if up, the buddy; new pages are `owner`'s.
    pub fn new(pool: &'a mut TablePool, mem: Option<&'a mut MemState>, owner: Owner) -> Self {
        Self {
            pool,
            mem,
            owner,
            guest: None,
            #[cfg(feature = "selftest")]
            skip_tlbi: false,
        }
    }

    /// Table memory for the stage-2 of the guest whose VTTBR is `vttbr`: its
    /// TLB invalidations are by that VMID ([`cache::tlb_invalidate_vmid_is`]).
    pub fn for_guest(pool: &'a mut TablePool, mem: Option<&'a mut MemState>, vttbr: u64) -> Self {
        Self {
            pool,
            mem,
            owner: Owner::Stage2Tables,
            guest: Some(vttbr),
            #[cfg(feature = "selftest")]
            skip_tlbi: false,
        }
    }

    /// [`HypTables::for_guest`] that leaves the TLB alone: the descriptors
    /// change, but a translation the guest's CPU holds stays (a test's broken
    /// monitor, to show the stale-translation check fails without the invalidation).
    #[cfg(feature = "selftest")]
    pub fn for_guest_without_tlbi(pool: &'a mut TablePool, mem: Option<&'a mut MemState>, vttbr: u64) -> Self {
        Self { skip_tlbi: true, ..Self::for_guest(pool, mem, vttbr) }
    }

    fn va_of(&self, table: PhysAddr, index: usize) -> *mut u64 {
        if self.pool.owns(table) {
            return self.pool.slot_ptr(table, index);
        }
        let lowmem = self.mem.as_ref().map(|m| m.lowmem.as_slice()).unwrap_or(&[]);
        match linear_va(lowmem, table.as_u64()) {
            Some(va) if index < 1024 && table.as_u64() & (PAGE_SIZE - 1) == 0 => (va + 8 * index) as *mut u64,
            _ => panic!("descriptor {:#x}[{}] is neither in the pool nor in lowmem", table.as_u64(), index),
        }
    }

    fn alloc_buddy(mem: &mut MemState, order: u8, owner: Owner) -> Option<PhysAddr> {
        // Table pages must be in lowmem to be written: put back what is not.
        let mut rejected: alloc::vec::Vec<Pfn> = alloc::vec::Vec::new();
        let mut found = None;
        for _ in 0..32 {
            let Ok(pfn) = mem.buddy.alloc(order, owner) else { break };
            if linear_va(&mem.lowmem, pfn.raw_addr()).is_some()
                && linear_va(&mem.lowmem, pfn.raw_addr() + (PAGE_SIZE << order) - 1).is_some()
            {
                found = Some(pfn);
                break;
            }
            rejected.push(pfn);
        }
        for p in rejected {
            let _ = mem.buddy.free(p, order);
        }
        if found.is_none() {
            let lo = mem.lowmem.first()?.pa.as_u64();
            let hi = mem.lowmem.iter().map(|r| r.pa.as_u64() + r.size).max()?;
            let r = mem.buddy.alloc_contig(1 << order, 1 << order, PhysRange::from_bounds(lo, hi), owner).ok()?;
            found = Some(Pfn::of(r.base));
        }
        found.and_then(|p| p.addr())
    }
}

impl TableMemory for HypTables<'_> {
    fn alloc_table(&mut self, pages: usize) -> Option<PhysAddr> {
        let owner = self.owner;
        let Some(mem) = self.mem.as_deref_mut() else { return self.pool.alloc_table(pages) };
        let order = match pages {
            1 => 0,
            2 => 1,
            _ => return None,
        };
        let pa = Self::alloc_buddy(mem, order, owner)?;
        let va = linear_va(&mem.lowmem, pa.as_u64())?;
        let len = pages * PAGE_SIZE as usize;
        // SAFETY: [va, va + len) is the linear map of a block the buddy just gave
        // us (checked to be in lowmem): nobody else holds a reference to it.
        unsafe { core::ptr::write_bytes(va as *mut u8, 0, len) };
        cache::clean_dcache_range_poc(va, len);
        Some(pa)
    }

    fn free_table(&mut self, table: PhysAddr, pages: usize) {
        if self.pool.owns(table) {
            return self.pool.free_table(table, pages);
        }
        let mem = self.mem.as_deref_mut().expect("a table outside the pool with no buddy");
        let order = if pages == 2 { 1 } else { 0 };
        if let Err(e) = mem.buddy.free(Pfn::of(table), order) {
            panic!("freeing table {:#x}: {}", table.as_u64(), e);
        }
    }

    fn read(&self, table: PhysAddr, index: usize) -> u64 {
        let ptr = self.va_of(table, index);
        // SAFETY: va_of gives an aligned descriptor of a pool page or of a lowmem table page.
        unsafe { read_desc(ptr) }
    }

    fn write(&mut self, table: PhysAddr, index: usize, value: u64) {
        let ptr = self.va_of(table, index);
        // SAFETY: as in `read`; `&mut self` is the tables' one writer.
        unsafe { write_desc(ptr, value) }
    }

    fn invalidate_tlb(&mut self, regime: RegimeKind, root: PhysAddr, input: u64, size: u64) {
        #[cfg(feature = "selftest")]
        if self.skip_tlbi {
            return;
        }
        match (regime, self.guest) {
            (RegimeKind::Stage2, Some(vttbr)) => cache::tlb_invalidate_vmid_is(vttbr),
            _ => self.pool.invalidate_tlb(regime, root, input, size),
        }
    }
}

/// Writes a pattern seeded by `seed` over `[va, va + len)` and reads it back: true if it all came back.
#[cfg(feature = "selftest")] // only the self-tests and test calls
pub fn pattern_check(va: u32, len: usize, seed: u32) -> bool {
    let words = len / 4;
    let p = va as usize as *mut u32;
    let val = |i: usize| seed.wrapping_mul(0x9e37_79b9) ^ (i as u32).wrapping_mul(0x85eb_ca6b);
    for i in 0..words {
        // SAFETY: the caller mapped [va, va + len) read/write normal memory it owns.
        unsafe { p.add(i).write_volatile(val(i)) };
    }
    // SAFETY: as above.
    (0..words).all(|i| unsafe { p.add(i).read_volatile() } == val(i))
}

/// Zeroes `[va, va + len)` and checks it reads as zero.
#[cfg(feature = "selftest")] // only the self-tests and test calls
pub fn zero_check(va: u32, len: usize) -> bool {
    let p = va as usize as *mut u32;
    for i in 0..len / 4 {
        // SAFETY: the caller mapped [va, va + len) read/write normal memory it owns.
        unsafe { p.add(i).write_volatile(0) };
    }
    // SAFETY: as above.
    (0..len / 4).all(|i| unsafe { p.add(i).read_volatile() } == 0)
}

/// A 32-bit device register read at `va`.
#[cfg(feature = "selftest")] // only the self-tests and test calls
pub fn read32(va: u32) -> u32 {
    // SAFETY: the caller ioremapped the register page at `va` (Device memory).
    unsafe { (va as usize as *const u32).read_volatile() }
}

/// Copies the 4 KiB page at `src` to `dst` through the linear map, or through
/// `map`ped addresses (a CPU's fixmap slots) for pages outside lowmem; the
/// caller passes the virtual addresses [`carve_core::mm::KmapAtomic`] gave.
/// The source is cleaned and invalidated first (a guest running with its
/// caches off wrote around the cache), the destination cleaned to the point
/// of coherency after (the guest may read it with its caches off).
#[cfg_attr(not(feature = "selftest"), allow(dead_code))] // only CMA moves copy pages, and only tests claim CMA memory yet
pub fn copy_page_va(dst: u32, src: u32) {
    let len = PAGE_SIZE as usize;
    cache::clean_invalidate_dcache_range_poc(src as usize, len);
    // SAFETY: the caller mapped both pages read/write Normal memory at these
    // page-aligned addresses for the time of the call; they are distinct
    // frames (a migration's source and a fresh buddy page), so they do not overlap.
    unsafe { core::ptr::copy_nonoverlapping(src as usize as *const u32, dst as usize as *mut u32, len / 4) };
    cache::clean_dcache_range_poc(dst as usize, len);
}

/// Fills `[va, va + len)` with the words `f(i)` (i: word index).
#[cfg(feature = "selftest")] // only the self-tests and test calls
pub fn fill_words(va: u32, len: usize, f: impl Fn(usize) -> u32) {
    let p = va as usize as *mut u32;
    for i in 0..len / 4 {
        // SAFETY: the caller mapped [va, va + len) read/write normal memory it owns.
        unsafe { p.add(i).write_volatile(f(i)) };
    }
    cache::clean_dcache_range_poc(va as usize, len);
}

/// Whether `[va, va + len)` holds the words `f(i)`.
#[cfg(feature = "selftest")] // only the self-tests and test calls
pub fn check_words(va: u32, len: usize, f: impl Fn(usize) -> u32) -> bool {
    let p = va as usize as *const u32;
    // SAFETY: the caller mapped [va, va + len) readable normal memory.
    (0..len / 4).all(|i| unsafe { p.add(i).read_volatile() } == f(i))
}

/// Runs `f` on the `len` bytes at `va`, then cleans them to the point of
/// coherency (a guest with its caches off, or a device, sees what `f` wrote).
pub fn with_bytes<R>(va: u32, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    let r = with_bytes_raw(va, len, f);
    cache::clean_dcache_range_poc(va as usize, len);
    r
}

/// Runs `f` on the `len` bytes at `va`, with no cache maintenance after.
pub fn with_bytes_raw<R>(va: u32, len: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
    // SAFETY: the caller mapped [va, va + len) read/write Normal memory for the
    // time of the call (a page through `mm::with_page`, a window through
    // `window`, or the linear map), outside every Rust object; nothing else
    // references it meanwhile (this CPU's kmap slot or window, or guest RAM or a
    // boot module the monitor alone touches here).
    let bytes = unsafe { core::slice::from_raw_parts_mut(va as usize as *mut u8, len) };
    f(bytes)
}
