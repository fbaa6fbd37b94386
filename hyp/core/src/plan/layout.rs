//! The monitor's Hyp virtual layout: lowmem linear map, vmalloc with carveout holes, highmem.
//!
//! The monitor shapes its address space like a 32-bit Linux kernel with a
//! 3G/1G split, so that the same limits bite and the same cures apply:
//!
//! ```text
//! 0xffff_f000  guard page
//! 0xfff0_0000  fixmap      (per-CPU slots, early mappings)
//! 0xffe0_0000  guard
//! 0xffc0_0000  pkmap       (kmap window for highmem)
//!              vmemmap     (page records for the PFN span, sparse)
//! VMALLOC_END  dedicated vmalloc
//! lowmem end   ...
//! PAGE_OFFSET  lowmem linear map: va = pa - phys_offset + PAGE_OFFSET
//! ```
//!
//! Below `PAGE_OFFSET` the monitor keeps only its own image, at its one link
//! address (0xbf000000, `hyp/link.x`), mapped to wherever it was loaded.
//!
//! Seed 000 (lowmem/vmalloc intermix): the virtual range a `no-map` hole (or
//! a gap between banks) takes inside the linear map is vmalloc space, and the
//! dedicated vmalloc area shrinks by as much, so the linear map reaches as much
//! RAM as if the hole were not there. The vmalloc budget counts all of it.

use alloc::format;
use alloc::vec::Vec;

use super::{Carveout, PlanError, RangeSet};
use crate::addr::{Address, Mib, PhysAddr, PhysRange, Size, VirtAddr, VirtRange, PAGE_SIZE, SIZE_2M};

/// Bytes of one page record in the vmemmap (see `mm`).
pub const PAGE_RECORD_SIZE: u64 = 16;
pub const FIXMAP_BASE: VirtAddr = VirtAddr::new(0xfff0_0000);
pub const FIXMAP_END: VirtAddr = VirtAddr::new(0xffff_f000);
pub const PKMAP_BASE: VirtAddr = VirtAddr::new(0xffc0_0000);
pub const PKMAP_SIZE: u64 = SIZE_2M;

/// The layout's knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayoutConfig {
    /// Where the linear map starts.
    pub page_offset: VirtAddr,
    /// All vmalloc space, hole space included (the monitor's `vmalloc=`).
    pub vmalloc_size: u64,
    /// The dedicated vmalloc area never shrinks below this, holes or not.
    pub vmalloc_min_dedicated: u64,
}

impl Default for LayoutConfig {
    fn default() -> Self {
        LayoutConfig {
            page_offset: VirtAddr::new(0xc000_0000),
            vmalloc_size: 240 << 20,
            vmalloc_min_dedicated: 16 << 20,
        }
    }
}

/// A piece of the linear map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearRun {
    pub va: VirtAddr,
    pub pa: PhysAddr,
    pub size: u64,
}

impl LinearRun {
    pub fn va_range(&self) -> VirtRange {
        VirtRange { base: self.va, size: self.size }
    }
}

/// Where a piece of vmalloc space comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmallocSource {
    /// The virtual shadow of a `no-map` hole (or a gap between banks) inside the linear map.
    Hole,
    /// The dedicated area above lowmem.
    Dedicated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmallocRange {
    pub va: VirtAddr,
    pub size: u64,
    pub source: VmallocSource,
}

/// The monitor's virtual layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonitorLayout {
    pub page_offset: VirtAddr,
    /// The PA the linear map puts at `page_offset` (lowest RAM, 2 MiB aligned down).
    pub phys_offset: PhysAddr,
    pub lowmem: Vec<LinearRun>,
    /// One past the last linear-map VA (Linux's `high_memory`).
    pub lowmem_end: VirtAddr,
    pub vmalloc: Vec<VmallocRange>,
    /// RAM the linear map does not reach: kmap and fixmap territory.
    pub highmem: Vec<PhysRange>,
    pub vmemmap: VirtRange,
    pub pkmap: VirtRange,
    pub fixmap: VirtRange,
    /// Lowmem the same RAM would get without any holes, for comparison.
    pub lowmem_without_holes: u64,
    pub config: LayoutConfig,
}

impl MonitorLayout {
    pub fn lowmem_total(&self) -> u64 {
        self.lowmem.iter().map(|l| l.size).sum()
    }
    pub fn highmem_total(&self) -> u64 {
        self.highmem.iter().map(|h| h.size).sum()
    }
    pub fn vmalloc_total(&self) -> u64 {
        self.vmalloc.iter().map(|v| v.size).sum()
    }
    pub fn vmalloc_in_holes(&self) -> u64 {
        self.vmalloc.iter().filter(|v| v.source == VmallocSource::Hole).map(|v| v.size).sum()
    }
    /// The linear-map VA of `pa`, if lowmem.
    pub fn linear_va(&self, pa: PhysAddr) -> Option<VirtAddr> {
        self.lowmem
            .iter()
            .find(|l| PhysRange { base: l.pa, size: l.size }.contains(pa.as_u64()))
            .and_then(|l| VirtAddr::from_u64(l.va.as_u64() + (pa.as_u64() - l.pa.as_u64())))
    }
}

/// Lays out the monitor's virtual space for `ram` less the `no-map` carveouts.
pub fn lay_out(ram: &RangeSet, carveouts: &[Carveout], cfg: &LayoutConfig) -> Result<MonitorLayout, PlanError> {
    let mut mappable = ram.clone();
    for c in carveouts.iter().filter(|c| c.no_map) {
        mappable.remove(c.range);
    }
    let mappable = mappable.align_inward(PAGE_SIZE);
    let first = mappable
        .ranges()
        .first()
        .ok_or_else(|| PlanError::new("monitor", "no RAM left to map once no-map carveouts are out"))?;
    let phys_offset = first.start() & !(SIZE_2M - 1);

    // The vmemmap covers the PFN span of all RAM.
    let span_pfns =
        (ram.ranges().last().map(|r| r.end()).unwrap_or(0) - (ram.ranges()[0].start() & !(SIZE_2M - 1))) / PAGE_SIZE;
    let vmemmap_size = (span_pfns * PAGE_RECORD_SIZE).next_multiple_of(SIZE_2M);
    let vmemmap_base =
        PKMAP_BASE.as_u64().checked_sub(vmemmap_size).filter(|b| *b > cfg.page_offset.as_u64()).ok_or_else(|| {
            PlanError::new(
                "monitor",
                format!(
                    "the page records for a {} PFN span need {} of virtual space",
                    Size(span_pfns * PAGE_SIZE),
                    Size(vmemmap_size)
                ),
            )
        })?;
    let vmalloc_end = vmemmap_base;
    let window = vmalloc_end - cfg.page_offset.as_u64();
    if window < cfg.vmalloc_min_dedicated + SIZE_2M {
        return Err(PlanError::new(
            "monitor",
            format!("only {} of virtual space between PAGE_OFFSET and the vmemmap", Mib(window)),
        ));
    }

    // Walk the physical span from phys_offset: RAM pieces join the linear map,
    // holes become vmalloc, as long as linear + dedicated vmalloc fit the window.
    let dedicated = |holes: u64| cfg.vmalloc_size.saturating_sub(holes).max(cfg.vmalloc_min_dedicated);
    let mut lowmem = Vec::new();
    let mut hole_ranges: Vec<(u64, u64)> = Vec::new(); // (va, size)
    let mut span = 0u64; // VA bytes used by the linear map so far
    let mut holes = 0u64;
    let mut pos = phys_offset;
    'walk: for r in mappable.ranges() {
        // The hole before this run.
        if r.start() > pos {
            let h = r.start() - pos;
            if span + h + dedicated(holes + h) >= window {
                break 'walk;
            }
            hole_ranges.push((cfg.page_offset.as_u64() + span, h));
            span += h;
            holes += h;
        }
        let room = window.saturating_sub(span + dedicated(holes));
        let take = r.size.min(room);
        // End lowmem on a 2 MiB boundary so the linear map keeps its blocks.
        let take = if take < r.size { (r.start() + take) & !(SIZE_2M - 1) } else { r.end() }.saturating_sub(r.start());
        if take > 0 {
            lowmem.push(LinearRun {
                va: VirtAddr::from_u64(cfg.page_offset.as_u64() + span).expect("inside the window"),
                pa: r.base,
                size: take,
            });
            span += take;
        }
        pos = r.start() + take;
        if take < r.size {
            break;
        }
    }
    let lowmem_end = cfg.page_offset.as_u64() + span;
    let mut vmalloc: Vec<VmallocRange> = hole_ranges
        .iter()
        .map(|&(va, size)| VmallocRange {
            va: VirtAddr::from_u64(va).expect("inside the window"),
            size,
            source: VmallocSource::Hole,
        })
        .collect();
    vmalloc.push(VmallocRange {
        va: VirtAddr::from_u64(lowmem_end).expect("inside the window"),
        size: vmalloc_end - lowmem_end,
        source: VmallocSource::Dedicated,
    });

    let mut high = mappable.clone();
    for l in &lowmem {
        high.remove(PhysRange { base: l.pa, size: l.size });
    }
    let lowmem_without_holes =
        mappable.total().min((window - cfg.vmalloc_size.max(cfg.vmalloc_min_dedicated)) & !(SIZE_2M - 1));
    Ok(MonitorLayout {
        page_offset: cfg.page_offset,
        phys_offset: PhysAddr::from_u64(phys_offset).expect("from a physical range"),
        lowmem,
        lowmem_end: VirtAddr::from_u64(lowmem_end).expect("inside the window"),
        vmalloc,
        highmem: high.ranges().to_vec(),
        vmemmap: VirtRange { base: VirtAddr::from_u64(vmemmap_base).expect("below pkmap"), size: vmemmap_size },
        pkmap: VirtRange { base: PKMAP_BASE, size: PKMAP_SIZE },
        fixmap: VirtRange { base: FIXMAP_BASE, size: FIXMAP_END.as_u64() - FIXMAP_BASE.as_u64() },
        lowmem_without_holes,
        config: *cfg,
    })
}
