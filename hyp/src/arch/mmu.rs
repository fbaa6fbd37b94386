//! Translation-table memory for carve-core's table code, and the monitor's Hyp stage-1 map.
//!
//! [`TablePool`] implements [`TableMemory`] over a static, page-aligned pool of
//! table pages in `.bss`: the one place where descriptors are written to
//! memory a table walker reads. Each descriptor is one 64-bit `STRD` (single-copy
//! atomic with LPAE, Arm ARM A3.5.3), then its cache line is cleaned to the point
//! of coherency and a DSB completes it, because a walker need not snoop the data
//! cache (ID_MMFR3.CohWalk; HTCR asks for cacheable walks, which QEMU ignores).
//! The image runs at its link address, not where it was loaded: a pool
//! page's physical address (what a descriptor holds) is its virtual address
//! plus the image's offset ([`super::image_pa`]).
//!
//! `_start` turned the MMU on with a boot table that maps the whole image
//! read/write/execute (`entry.rs`). [`enable_boot_map`] builds the monitor's
//! own map (the image with per-section permissions: text RX, rodata RO XN,
//! data/bss/stacks RW XN, stack guard pages unmapped) and switches HTTBR to
//! it (Arm ARM B3.10: tables visible to the walker, HTTBR, ISB, TLBIALLH,
//! DSB, ISB); both map the image at the same addresses with the same memory
//! type, so the code runs on across the switch. The device tree goes into the
//! fixmap's early DT window ([`map_early_dtb`]), never at its physical address.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

use carve_core::addr::{Address, PhysAddr, VirtAddr, PAGE_SIZE};
use carve_core::mm::{Attrs, HypStage1, MapError, MapStats, PageTable, RegimeKind, TableMemory};
use spin::Mutex;

use super::cache;
use super::entry::{stack_ranges, HYP_HTTBR};
use super::regs::Httbr;
use super::ImageLayout;

/// Pages in the table pool. The boot map needs a root, one level-2 table and a
/// level-3 table per 2 MiB touched: seven or so. The rest is for what follows.
pub const POOL_PAGES: usize = 256;
const PAGE: usize = PAGE_SIZE as usize;
const POOL_BYTES: usize = POOL_PAGES * PAGE;
/// Descriptors per 4 KiB table.
const ENTRIES_PER_PAGE: usize = PAGE / 8;

/// The pool's memory. Two-page roots (stage-2) must be aligned to their size
/// physically, and the image is only 4 KiB aligned where it was loaded:
/// [`TablePool::alloc_table`] picks pairs by their physical address.
#[repr(C, align(8192))]
struct PoolArea([[u64; ENTRIES_PER_PAGE]; POOL_PAGES]);

static mut POOL_AREA: PoolArea = PoolArea([[0; ENTRIES_PER_PAGE]; POOL_PAGES]);
/// Set when the one [`TablePool`] exists: it owns `POOL_AREA`.
static POOL_TAKEN: AtomicBool = AtomicBool::new(false);

/// The table pages, handed out by a bitmap. There is at most one: it owns the pool's memory.
pub struct TablePool {
    /// Bit `i % 64` of word `i / 64` set: page `i` is in use.
    used: [u64; POOL_PAGES / 64],
}
const _: () = assert!(POOL_PAGES % 64 == 0);

impl TablePool {
    fn in_use(&self, page: usize) -> bool {
        self.used[page / 64] & (1 << (page % 64)) != 0
    }
    fn set(&mut self, page: usize, on: bool) {
        if on {
            self.used[page / 64] |= 1 << (page % 64);
        } else {
            self.used[page / 64] &= !(1 << (page % 64));
        }
    }
}

impl TablePool {
    /// The pool, the first time; `None` after that.
    pub fn take() -> Option<Self> {
        if POOL_TAKEN.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Self { used: [0; POOL_PAGES / 64] })
    }

    /// The pool's virtual address.
    fn base() -> usize {
        (&raw const POOL_AREA) as usize
    }

    /// The pool's physical address.
    fn pa_base() -> u64 {
        super::image_pa(Self::base())
    }

    /// Pages in use.
    pub fn pages_in_use(&self) -> u32 {
        self.used.iter().map(|w| w.count_ones()).sum()
    }

    /// Whether `table` is one of the pool's pages.
    pub fn owns(&self, table: PhysAddr) -> bool {
        let base = Self::pa_base();
        table.as_u64() >= base && table.as_u64() < base + POOL_BYTES as u64
    }

    /// [`slot`](Self::slot), for the other table memory that still reads the pool's pages.
    pub(super) fn slot_ptr(&self, table: PhysAddr, index: usize) -> *mut u64 {
        self.slot(table, index)
    }

    /// The virtual address of descriptor `index` of `table` (physical), which
    /// must lie in the pool. Anything else is a bug in the table code: it stops the run.
    fn slot(&self, table: PhysAddr, index: usize) -> *mut u64 {
        let base = Self::pa_base();
        let addr = table.as_u64().checked_add(8 * index as u64);
        match addr {
            Some(a) if a >= base && a < base + POOL_BYTES as u64 && table.as_u64() & (PAGE_SIZE - 1) == 0 => {
                let page = ((table.as_u64() - base) / PAGE_SIZE) as usize;
                assert!(self.in_use(page), "table {:#x} is not allocated", table.as_u64());
                (Self::base() + (a - base) as usize) as *mut u64
            }
            _ => panic!("descriptor {:#x}[{}] is outside the table pool", table.as_u64(), index),
        }
    }
}

impl TableMemory for TablePool {
    fn alloc_table(&mut self, pages: usize) -> Option<PhysAddr> {
        if pages == 0 || pages > 2 {
            return None; // roots are at most two pages (stage-2); the pool is 8 KiB aligned
        }
        // A root of `pages` pages is aligned to its size physically (VTTBR, Arm ARM B4.1.159).
        let aligned = |i: usize| (Self::pa_base() + (i * PAGE) as u64) % (pages * PAGE) as u64 == 0;
        let first = (0..=POOL_PAGES - pages).find(|&i| aligned(i) && (i..i + pages).all(|p| !self.in_use(p)))?;
        (first..first + pages).for_each(|p| self.set(p, true));
        let start = Self::base() + first * PAGE;
        for i in 0..pages * ENTRIES_PER_PAGE {
            // SAFETY: the pages were just marked in use by the pool's only owner,
            // lie inside POOL_AREA, and no reference to them exists.
            unsafe { (start as *mut u64).add(i).write_volatile(0) };
        }
        // The walker must see the zeroes (invalid descriptors) before the table is linked.
        cache::clean_dcache_range_poc(start, pages * PAGE);
        PhysAddr::from_u64(super::image_pa(start))
    }

    fn free_table(&mut self, table: PhysAddr, pages: usize) {
        let base = Self::pa_base();
        let offset = table.as_u64().wrapping_sub(base);
        let first = (offset / PAGE_SIZE) as usize;
        assert!(
            offset & (PAGE_SIZE - 1) == 0 && (1..=2).contains(&pages) && first + pages <= POOL_PAGES,
            "freeing {:#x} ({} pages), which is not a pool table",
            table.as_u64(),
            pages
        );
        assert!(
            (first..first + pages).all(|p| self.in_use(p)),
            "freeing {:#x}, which is not allocated",
            table.as_u64()
        );
        (first..first + pages).for_each(|p| self.set(p, false));
    }

    fn read(&self, table: PhysAddr, index: usize) -> u64 {
        let ptr = self.slot(table, index);
        let (lo, hi): (u32, u32);
        // SAFETY: `slot` checked the address lies in an allocated pool page and
        // is 8-byte aligned; LDRD of an 8-byte aligned doubleword is single-copy
        // atomic with LPAE (Arm ARM A3.5.3). LDRD needs an even/odd pair: r2, r3.
        unsafe {
            asm!(
                "ldrd r2, r3, [{ptr}]",
                ptr = in(reg) ptr,
                out("r2") lo,
                out("r3") hi,
                options(nostack, preserves_flags, readonly)
            )
        };
        u64::from(lo) | (u64::from(hi) << 32)
    }

    fn write(&mut self, table: PhysAddr, index: usize, value: u64) {
        let ptr = self.slot(table, index);
        // SAFETY: as in `read`; the pool's only owner writes it (`&mut self`), and
        // one STRD makes the descriptor change single-copy atomic for the walker.
        unsafe {
            asm!(
                "strd r2, r3, [{ptr}]",
                ptr = in(reg) ptr,
                in("r2") value as u32,
                in("r3") (value >> 32) as u32,
                options(nostack, preserves_flags)
            )
        };
        // Clean to the point of coherency, with the DSBs that order it (cache.rs).
        cache::clean_dcache_range_poc(ptr as usize, 8);
    }

    /// Inner Shareable forms: every CPU walks the same Hyp tables. Stage-2 has no
    /// by-IPA operation in ARMv7, so it drops every guest entry (all VMIDs).
    fn invalidate_tlb(&mut self, regime: RegimeKind, _root: PhysAddr, input: u64, size: u64) {
        match regime {
            RegimeKind::HypStage1 if size <= 64 * PAGE_SIZE => {
                let mut va = input & !(PAGE_SIZE - 1);
                while va < input.saturating_add(size) && va < 1 << 32 {
                    cache::tlb_invalidate_hyp_va_is(va as u32);
                    va += PAGE_SIZE;
                }
            }
            RegimeKind::HypStage1 => cache::tlb_invalidate_hyp_all_is(),
            RegimeKind::Stage2 => cache::tlb_invalidate_guests_all_is(),
        }
    }
}

/// The monitor's Hyp stage-1 translation after [`enable_boot_map`]: its table and the pool it lives in.
pub struct HypMap {
    /// The tables HTTBR points at.
    pub table: PageTable<HypStage1>,
    /// Where those tables (and any later ones) come from.
    pub pool: TablePool,
}

/// The live Hyp map, for whatever maps more later (ioremap, vmalloc, secondary CPUs' HTTBR).
pub static HYP_MAP: Mutex<Option<HypMap>> = Mutex::new(None);

/// Why the boot map could not be built or switched on.
#[derive(Clone, Copy, Debug)]
pub enum MmuError {
    /// The table pool was already taken: the boot map is built once.
    PoolTaken,
    /// The table code refused a mapping; `what` names the region.
    Map { what: &'static str, error: MapError },
    /// A region's bounds are not in the 32-bit Hyp address space.
    BadRegion { what: &'static str, start: u64, end: u64 },
    /// The device tree's used bytes do not fit the fixmap's early DT window.
    DtbTooLarge { size: u64, max: u64 },
}

impl defmt::Format for MmuError {
    fn format(&self, f: defmt::Formatter) {
        match self {
            Self::PoolTaken => defmt::write!(f, "the table pool is taken (boot map built twice)"),
            Self::Map { what, error } => {
                defmt::write!(f, "mapping {=str}: {}", what, defmt::Display2Format(error))
            }
            Self::BadRegion { what, start, end } => {
                defmt::write!(f, "{=str}: {=u64:#x}-{=u64:#x} is not a valid Hyp range", what, start, end)
            }
            Self::DtbTooLarge { size, max } => defmt::write!(
                f,
                "the device tree's blocks take {=u64} bytes, more than the {=u64} of the fixmap's early DT window",
                size,
                max
            ),
        }
    }
}

/// What the boot map holds.
#[derive(Clone, Copy, Debug)]
pub struct MapReport {
    /// HTTBR: the root table's physical address.
    pub root: u64,
    /// Table pages used.
    pub table_pages: u32,
    /// Leaves written.
    pub stats: MapStats,
}

impl defmt::Format for MapReport {
    fn format(&self, f: defmt::Formatter) {
        defmt::write!(
            f,
            "HTTBR {=u64:#010x}, {=u32} table pages, {=u32} 4 KiB pages + {=u32} 2 MiB blocks mapped",
            self.root,
            self.table_pages,
            self.stats.pages_4k,
            self.stats.blocks_2m
        )
    }
}

/// Maps the image's `[start, end)` (virtual, rounded out to pages) at its
/// physical address (where the loader put it) with `attrs`.
fn map_image(
    table: &mut PageTable<HypStage1>,
    pool: &mut TablePool,
    what: &'static str,
    (start, end): (u64, u64),
    attrs: Attrs,
) -> Result<MapStats, MmuError> {
    let bad = MmuError::BadRegion { what, start, end };
    let first = start & !(PAGE_SIZE - 1);
    let last = end.checked_add(PAGE_SIZE - 1).ok_or(bad)? & !(PAGE_SIZE - 1);
    if last <= first {
        return Ok(MapStats::default()); // an empty section (no .data, say)
    }
    let va = VirtAddr::from_u64(first).ok_or(bad)?;
    let pa = PhysAddr::from_u64(super::image_pa(first as usize)).ok_or(bad)?;
    table.map(pool, va, pa, last - first, attrs).map_err(|error| MmuError::Map { what, error })
}

/// Builds the monitor's Hyp stage-1 map and switches to it from `_start`'s boot table.
///
/// The image and stacks are mapped at their link addresses, each part with
/// its own permissions; nothing else yet (the device tree goes into the
/// fixmap with [`map_early_dtb`]). Every other CPU switches to the same map
/// after turning its MMU on ([`HYP_HTTBR`]).
pub fn enable_boot_map(layout: &ImageLayout) -> Result<MapReport, MmuError> {
    let mut pool = TablePool::take().ok_or(MmuError::PoolTaken)?;
    let mut table = PageTable::<HypStage1>::new(&mut pool).map_err(|error| MmuError::Map { what: "root", error })?;
    let r = |(start, end): (usize, usize)| (start as u64, end as u64);

    let mut stats = MapStats::default();
    stats += map_image(&mut table, &mut pool, ".text", r(layout.text), Attrs::text())?;
    stats += map_image(&mut table, &mut pool, ".rodata", r(layout.rodata), Attrs::rodata())?;
    // .data and .bss (heap and table pool included) are contiguous.
    stats += map_image(&mut table, &mut pool, ".data/.bss", (r(layout.data).0, r(layout.bss).1), Attrs::ram_nx())?;
    for (start, end) in stack_ranges() {
        stats += map_image(&mut table, &mut pool, "stack", r((start, end)), Attrs::ram_nx())?;
    }

    let root = table.root().as_u64();
    // SAFETY: the new table maps everything this CPU touches from here on
    // (code, data, its stack, the fault stack) at the addresses it uses now,
    // to the same physical pages and with the same memory type as the boot
    // table; every descriptor was cleaned to the point of coherency.
    unsafe { switch_tables(root) };
    HYP_HTTBR.store(root, core::sync::atomic::Ordering::Release);
    // The other CPUs read it with their caches off.
    cache::clean_dcache_range_poc((&raw const HYP_HTTBR) as usize, 8);

    let report = MapReport { root, table_pages: pool.pages_in_use(), stats };
    *HYP_MAP.lock() = Some(HypMap { table, pool });
    Ok(report)
}

/// Points HTTBR at `root` while the MMU is on (Arm ARM B3.10): the table
/// writes complete, HTTBR, ISB, then TLBIALLH, DSB, ISB drop every entry of
/// the old table.
///
/// # Safety
/// `root` must be a complete Hyp stage-1 table, visible to the walker, that
/// maps the code, data and stack in use at the same addresses, to the same
/// physical pages and with the same memory type, as the table in use.
unsafe fn switch_tables(root: u64) {
    cache::dsb();
    // SAFETY: the caller's promise; bits [4:0] of the root are zero (32-byte aligned root).
    unsafe { Httbr::write(root) };
    cache::isb();
    cache::tlb_invalidate_hyp_all();
}

/// Maps `len` bytes of the device tree at physical `pa` read-only in the
/// fixmap's early DT window, before any allocator exists, so a blob anywhere
/// in physical memory cannot collide with the linear map or vmalloc. Returns
/// the virtual address of its first byte. Undo with [`unmap_early_dtb`].
pub fn map_early_dtb(pa: u32, len: u32) -> Result<u32, MmuError> {
    let fdt = carve_core::mm::kmap::fixmap::fdt(PhysAddr::new(u64::from(pa)), u64::from(len)).map_err(|e| match e {
        carve_core::mm::KmapError::TooLarge { size, max } => MmuError::DtbTooLarge { size, max },
        _ => MmuError::BadRegion { what: "DTB", start: u64::from(pa), end: u64::from(pa) + u64::from(len) },
    })?;
    let mut guard = HYP_MAP.lock();
    let map = guard.as_mut().ok_or(MmuError::PoolTaken)?;
    map.table
        .map(&mut map.pool, fdt.va, fdt.pa, fdt.size, Attrs::rodata())
        .map_err(|error| MmuError::Map { what: "DTB (fixmap)", error })?;
    Ok(fdt.target.raw())
}

/// Maps the plan's lowmem linear map (`va = pa - phys_offset + PAGE_OFFSET`),
/// normal memory, read/write, execute-never, with the largest blocks alignment allows.
pub fn map_linear(runs: &[carve_core::plan::LinearRun]) -> Result<MapStats, MmuError> {
    let mut guard = HYP_MAP.lock();
    let map = guard.as_mut().ok_or(MmuError::PoolTaken)?;
    let mut stats = MapStats::default();
    for r in runs {
        stats += map
            .table
            .map(&mut map.pool, r.va, r.pa, r.size, Attrs::ram_nx())
            .map_err(|error| MmuError::Map { what: "lowmem", error })?;
    }
    Ok(stats)
}

/// Runs `f` with the memory stage-2 tables come from: the buddy allocator
/// (`Owner::Stage2Tables`, lowmem pages) once it is up, the table pool before.
pub fn with_pool<R>(f: impl FnOnce(&mut dyn TableMemory) -> R) -> Option<R> {
    let mut mem = super::memmap::MEM.lock();
    let mut guard = HYP_MAP.lock();
    let map = guard.as_mut()?;
    let mut tables = super::memmap::HypTables::new(&mut map.pool, mem.as_mut(), carve_core::mm::Owner::Stage2Tables);
    Some(f(&mut tables))
}

/// As [`with_pool`], for the stage-2 of the guest whose VTTBR is `vttbr`:
/// TLB invalidations are by its VMID alone.
pub fn with_guest_tables<R>(vttbr: u64, f: impl FnOnce(&mut dyn TableMemory) -> R) -> Option<R> {
    let mut mem = super::memmap::MEM.lock();
    let mut guard = HYP_MAP.lock();
    let map = guard.as_mut()?;
    let mut tables = super::memmap::HypTables::for_guest(&mut map.pool, mem.as_mut(), vttbr);
    Some(f(&mut tables))
}

/// [`with_guest_tables`] without the TLB invalidations (a test switch of `selftest` builds).
#[cfg(feature = "selftest")]
pub fn with_guest_tables_without_tlbi<R>(vttbr: u64, f: impl FnOnce(&mut dyn TableMemory) -> R) -> Option<R> {
    let mut mem = super::memmap::MEM.lock();
    let mut guard = HYP_MAP.lock();
    let map = guard.as_mut()?;
    let mut tables = super::memmap::HypTables::for_guest_without_tlbi(&mut map.pool, mem.as_mut(), vttbr);
    Some(f(&mut tables))
}

/// Runs `f` with the Hyp stage-1 table and table memory whose new pages come
/// from the buddy (`Owner::HypTables`) once it is up: for vmalloc, ioremap, kmap.
pub fn with_hyp_table<R>(
    mem: Option<&mut super::memmap::MemState>,
    f: impl FnOnce(&mut PageTable<HypStage1>, &mut dyn TableMemory) -> R,
) -> Option<R> {
    let mut guard = HYP_MAP.lock();
    let map = guard.as_mut()?;
    let mut tables = super::memmap::HypTables::new(&mut map.pool, mem, carve_core::mm::Owner::HypTables);
    Some(f(&mut map.table, &mut tables))
}

/// Free table pages, as `INFO_FREE_TABLE_PAGES` reports them: the buddy's free
/// pages once it is up (stage-2 tables come from it), else the pool's.
pub fn free_table_pages() -> Option<i32> {
    if let Some(m) = super::memmap::MEM.lock().as_ref() {
        return Some(m.buddy.free_pages().min(i32::MAX as u64) as i32);
    }
    HYP_MAP.lock().as_ref().map(|m| POOL_PAGES as i32 - m.pool.pages_in_use() as i32)
}

/// Maps the register block of the UART at physical `pa` (`size` bytes, all
/// in one page) as Device memory in the fixmap's console slot, for the
/// monitor's own log; returns the block's virtual address.
pub fn map_console(pa: u64, size: u64) -> Result<usize, MmuError> {
    let fix = carve_core::mm::kmap::fixmap::console(PhysAddr::new(pa));
    let bad = MmuError::BadRegion { what: "log UART", start: pa, end: pa.saturating_add(size) };
    if size == 0 || (pa & (PAGE_SIZE - 1)) + size > PAGE_SIZE || PhysAddr::from_u64(pa).is_none() {
        return Err(bad);
    }
    map_fixed_device(fix, "log UART (fixmap)")
}

/// Maps a fixmap slot's device page as Device memory, for good; returns the
/// virtual address of the byte asked for.
fn map_fixed_device(fix: carve_core::mm::kmap::fixmap::FixMapping, what: &'static str) -> Result<usize, MmuError> {
    let mut guard = HYP_MAP.lock();
    let map = guard.as_mut().ok_or(MmuError::PoolTaken)?;
    map.table
        .map(&mut map.pool, fix.va, fix.pa, fix.size, Attrs::device())
        .map_err(|error| MmuError::Map { what, error })?;
    Ok(fix.target.raw() as usize)
}

/// Which board page of the fixmap ([`map_board`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BoardPage {
    /// The Versatile Express system registers (power-off, SYS_FLAGS).
    SysRegs = 0,
    /// The GIC distributor (waking CPUs with an SGI).
    GicDistributor = 1,
}

/// Maps the page holding the board's control registers at physical `pa` as
/// Device memory in the fixmap's board slot `page`, for good; returns the
/// virtual address of `pa`.
pub fn map_board(page: BoardPage, pa: u64) -> Result<usize, MmuError> {
    let bad = MmuError::BadRegion { what: "board registers", start: pa, end: pa };
    let at = PhysAddr::from_u64(pa).ok_or(bad)?;
    let fix = carve_core::mm::kmap::fixmap::board(page as u32, at).map_err(|_| bad)?;
    map_fixed_device(fix, "board registers (fixmap)")
}

/// Unmaps the fixmap's early DT window once the tree has been copied out of it.
pub fn unmap_early_dtb(va: u32, len: u32) -> Result<(), MmuError> {
    let first = u64::from(va) & !(PAGE_SIZE - 1);
    let size = (u64::from(va) + u64::from(len)).next_multiple_of(PAGE_SIZE) - first;
    let mut guard = HYP_MAP.lock();
    let map = guard.as_mut().ok_or(MmuError::PoolTaken)?;
    map.table
        .unmap(&mut map.pool, VirtAddr::new(first as u32), size)
        .map_err(|error| MmuError::Map { what: "DTB (fixmap)", error })
}
