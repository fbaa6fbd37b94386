//! Memory management that does not touch hardware: LPAE translation tables.
//!
//! The physical side of the monitor (sections, vmemmap, buddy, CMA) and its
//! virtual allocators (vmalloc, kmap, fixmap, ioremap) also live here.

pub mod table;
