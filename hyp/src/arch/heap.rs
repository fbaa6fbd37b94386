//! The global allocator: embedded-alloc's linked-list heap over a static 2 MiB region in `.bss`.
//!
//! carve-core uses `alloc` (device-tree descriptions, the plan). The monitor's
//! own page allocator replaces this region later; until then it is a fixed
//! array, so its size is part of the image's footprint (see `link.x`).

use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, Ordering};

use embedded_alloc::LlffHeap;

/// Bytes in the heap.
pub const HEAP_SIZE: usize = 2 << 20;

#[global_allocator]
static ALLOCATOR: LlffHeap = LlffHeap::empty();

/// The heap's memory. Only the allocator touches it, through the address given at [`init`].
#[repr(C, align(4096))]
struct HeapArea([MaybeUninit<u8>; HEAP_SIZE]);

static mut HEAP_AREA: HeapArea = HeapArea([MaybeUninit::uninit(); HEAP_SIZE]);

static READY: AtomicBool = AtomicBool::new(false);

/// Hands the heap region to the allocator. Later calls do nothing.
pub fn init() {
    if READY.swap(true, Ordering::AcqRel) {
        return;
    }
    let start = (&raw mut HEAP_AREA) as usize;
    // SAFETY: runs once (READY), the region is a static nothing else names, and
    // HEAP_SIZE > 0; after this only the allocator uses it.
    unsafe { ALLOCATOR.init(start, HEAP_SIZE) }
}

/// Bytes the heap still has free.
pub fn free() -> usize {
    ALLOCATOR.free()
}

/// Bytes of the heap in use.
pub fn used() -> usize {
    ALLOCATOR.used()
}
