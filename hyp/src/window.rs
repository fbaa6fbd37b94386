//! Bulk access to physical memory (guest images copied in, guest RAM zeroed): a whole range through one mapping.
//!
//! Lowmem is reached through the linear map. Anything else (highmem, RAM
//! above 4 GiB) is mapped a window of up to [`WINDOW`] bytes at a time in
//! vmalloc space, at a virtual address congruent to the physical one modulo
//! 2 MiB and widened to whole 2 MiB blocks where those are RAM, so the table
//! code writes a few level-2 blocks rather than a descriptor per page, and
//! unmapped after with one TLB invalidation for the window (Linux's `vmap` of
//! a range for a large copy, rather than `kmap_atomic` and a TLB invalidation
//! per page). So the cost of a copy is that of the bytes copied, whatever
//! memory they lie in. Without room in vmalloc space, the per-page
//! `kmap_atomic` path of [`crate::mm::with_page`] still serves.
//!
//! What is written is cleaned to the point of coherency: a guest may read it
//! with its caches off.

use alloc::format;
use alloc::string::String;

use carve_core::addr::{Address, PhysAddr, PhysRange, VirtAddr, PAGE_SIZE, SIZE_2M};
use carve_core::mm::{Attrs, Pfn, VmKind};
use carve_core::plan::{Plan, RangeSet};
use spin::Mutex;

use crate::arch::memmap::{self, linear_va, MEM};
use crate::arch::{cache, memops, mmu};
use crate::mm::VMALLOC;

/// The most bytes mapped at once: 8 MiB, so that a window with its alignment
/// slack and guard fits the smallest dedicated vmalloc area (16 MiB).
pub const WINDOW: u64 = 8 << 20;

/// RAM that may be mapped as Normal memory: the plan's RAM less its `no-map`
/// carveouts. A window is widened to whole 2 MiB blocks inside it.
static MAPPABLE: Mutex<Option<RangeSet>> = Mutex::new(None);

/// Learns from the plan which RAM a window may cover (before the first copy).
pub fn init(plan: &Plan) {
    let mut ram = RangeSet::from_ranges(plan.ram.iter().copied());
    for c in plan.carveouts.iter().filter(|c| c.no_map) {
        ram.remove(c.range);
    }
    *MAPPABLE.lock() = Some(ram);
}

/// A piece of physical memory made addressable.
struct Mapped {
    /// The virtual address of the piece's first byte.
    va: u32,
    /// The vmalloc area and the mapped page range, when the piece was mapped for the occasion.
    area: Option<(VirtAddr, VirtAddr, u64)>,
}

/// Makes physical `[pa, pa + len)` addressable: its linear address in lowmem,
/// else a fresh mapping of its pages; `None` if vmalloc has no room for it.
fn map(pa: u64, len: u64) -> Result<Option<Mapped>, String> {
    let mut mem = MEM.lock();
    let m = mem.as_mut().ok_or("no page allocator")?;
    if let (Some(va), Some(last)) = (linear_va(&m.lowmem, pa), linear_va(&m.lowmem, pa + len - 1)) {
        if last - va == (len - 1) as usize {
            return Ok(Some(Mapped { va: va as u32, area: None }));
        }
    }
    let (mut first, mut end) = (pa & !(PAGE_SIZE - 1), (pa + len).next_multiple_of(PAGE_SIZE));
    // Whole 2 MiB blocks when they are RAM the monitor may map: a handful of
    // descriptors instead of one per page (no-map carveouts and device space
    // are never mapped this way: the CPU may fetch speculatively from Normal memory).
    let wide = PhysRange::from_bounds(first & !(SIZE_2M - 1), end.next_multiple_of(SIZE_2M));
    if wide.is_some_and(|w| MAPPABLE.lock().as_ref().is_some_and(|m| m.contains_range(&w))) {
        (first, end) = (first & !(SIZE_2M - 1), end.next_multiple_of(SIZE_2M));
    }
    let size = end - first;
    let slack = first % SIZE_2M;
    let mut vmalloc = VMALLOC.lock();
    let v = vmalloc.as_mut().ok_or("no vmalloc")?;
    let start = PhysAddr::from_u64(first).ok_or_else(|| format!("{first:#x} is past the physical space"))?;
    let Ok(area) = v.alloc_phys(slack + size, SIZE_2M, VmKind::Vmap, start) else { return Ok(None) };
    let mapped = VirtAddr::from_u64(area.start() + slack)
        .ok_or_else(|| String::from("past the virtual space"))
        .and_then(|at| match mmu::with_hyp_table(Some(m), |t, tm| t.map(tm, at, start, size, Attrs::ram_nx())) {
            Some(Ok(_)) => Ok(at),
            Some(Err(e)) => Err(format!("{e}")),
            None => Err(String::from("no Hyp map")),
        });
    match mapped {
        Ok(at) => Ok(Some(Mapped { va: at.raw() + (pa - first) as u32, area: Some((area.base, at, size)) })),
        Err(e) => {
            let _ = v.free(area.base);
            Err(format!("mapping {size:#x} bytes at PA {first:#x}: {e}"))
        }
    }
}

/// Undoes [`map`]: the window unmapped (its TLB entries invalidated) and its space freed.
fn unmap(m: Mapped) -> Result<(), String> {
    let Some((area, at, size)) = m.area else { return Ok(()) };
    let mut mem = MEM.lock();
    let r = mmu::with_hyp_table(mem.as_mut(), |t, tm| t.unmap(tm, at, size)).ok_or("no Hyp map")?;
    r.map_err(|e| format!("unmapping a window: {e}"))?;
    VMALLOC.lock().as_mut().ok_or("no vmalloc")?.free(area).map_err(|e| format!("{e}"))?;
    Ok(())
}

/// Runs `f` on the bytes of physical `[pa, pa + len)` (`len` at most [`WINDOW`]),
/// then cleans them to the point of coherency if `write`. `None` if the range
/// could not be mapped whole (no vmalloc space).
fn with_range<R>(pa: u64, len: u64, write: bool, f: impl FnOnce(&mut [u8]) -> R) -> Result<Option<R>, String> {
    if len == 0 {
        return Ok(Some(f(&mut [])));
    }
    let Some(m) = map(pa, len)? else { return Ok(None) };
    let r = memmap::with_bytes_raw(m.va, len as usize, f);
    if write {
        cache::clean_dcache_range_poc(m.va as usize, len as usize);
    }
    unmap(m)?;
    Ok(Some(r))
}

/// Calls `f(bytes, offset)` on pieces of physical `[pa, pa + len)` in order:
/// windows where vmalloc has room, pages through `kmap_atomic` where not.
fn for_each_piece(pa: u64, len: u64, write: bool, mut f: impl FnMut(&mut [u8], u64)) -> Result<(), String> {
    let mut done = 0u64;
    while done < len {
        let at = pa + done;
        let n = (WINDOW - at % WINDOW).min(len - done);
        // A page or less goes through kmap_atomic (cheaper than a window); so does all when vmalloc has no room.
        if n > PAGE_SIZE && with_range(at, n, write, |b| f(b, done))?.is_some() {
            done += n;
            continue;
        }
        let off = at % PAGE_SIZE;
        let n = (PAGE_SIZE - off).min(len - done);
        crate::mm::with_page(Pfn(at / PAGE_SIZE), |va| {
            memmap::with_bytes(va + off as u32, n as usize, |b| f(b, done))
        })?;
        done += n;
    }
    Ok(())
}

/// Writes `bytes` at physical `pa`.
pub fn write_phys(pa: u64, bytes: &[u8]) -> Result<(), String> {
    for_each_piece(pa, bytes.len() as u64, true, |b, off| memops::copy(b, &bytes[off as usize..]))
}

/// Reads physical `[pa, pa + out.len())` into `out`.
pub fn read_phys(pa: u64, out: &mut [u8]) -> Result<(), String> {
    for_each_piece(pa, out.len() as u64, false, |b, off| memops::copy(&mut out[off as usize..], b))
}

/// Zeroes physical `[pa, pa + len)`.
pub fn zero_phys(pa: u64, len: u64) -> Result<(), String> {
    for_each_piece(pa, len, true, |b, _| memops::zero(b))
}

/// Copies `len` bytes from physical `src` to physical `dst` (ranges that do not overlap).
pub fn copy_phys(dst: u64, src: u64, len: u64) -> Result<(), String> {
    let mut done = 0u64;
    while done < len {
        // A window of the source at a time, written out through the destination's windows.
        let s = src + done;
        let n = (WINDOW - s % WINDOW).min(len - done);
        let d = dst + done;
        let copied = with_range(s, n, false, |from| write_phys(d, from))?;
        match copied {
            Some(r) => r?,
            None => {
                let off = s % PAGE_SIZE;
                let k = (PAGE_SIZE - off).min(len - done);
                let mut page = alloc::vec![0u8; k as usize];
                read_phys(s, &mut page)?;
                write_phys(d, &page)?;
                done += k;
                continue;
            }
        }
        done += n;
    }
    Ok(())
}
