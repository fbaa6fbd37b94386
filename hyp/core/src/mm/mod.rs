//! Memory management that does not touch hardware: LPAE translation tables.
//!
//! The physical side of the monitor (sections, vmemmap, buddy, CMA) and its
//! virtual allocators (vmalloc, kmap, fixmap, ioremap) also live here.

pub mod buddy;
pub mod cma;
pub mod kmap;
pub mod page;
pub mod table;
pub mod vmalloc;

#[cfg(test)]
mod overhead;

pub use table::{
    Access, Attrs, HypStage1, Leaf, MapError, MapStats, MemType, PageTable, Regime, RegimeKind, Stage2, TableMemory,
    Translation, VecMemory, HMAIR0, HTCR_VALUE, VTCR_VALUE,
};

pub use buddy::{Block, Buddy, BuddyError, MAX_ORDER};
pub use cma::{CmaAllocation, CmaError, CmaPool, Migration};
pub use kmap::{AtomicMapping, KmapAtomic, KmapError, Kmapped, Pkmap};
pub use page::{MemMap, MemMapError, Owner, Page, PageStore, Pfn, Sections, VecPageStore, VmemmapChunk};
pub use vmalloc::{VmArea, VmKind, Vmalloc, VmallocError};
