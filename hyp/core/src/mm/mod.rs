//! Memory management that does not touch hardware: LPAE translation tables.
//!
//! The physical side of the monitor (sections, vmemmap, buddy, CMA) and its
//! virtual allocators (vmalloc, kmap, fixmap, ioremap) also live here.

pub mod table;

pub use table::{
    Access, Attrs, HypStage1, Leaf, MapError, MapStats, MemType, PageTable, Regime, RegimeKind, Stage2, TableMemory,
    Translation, VecMemory, HMAIR0, HTCR_VALUE, VTCR_VALUE,
};
