//! Reading memory the loader handed over (the DTB) through the fixmap.
//!
//! The monitor never reads the DTB at its physical address: `mmu::map_early_dtb`
//! maps it in the fixmap's early DT window. Nothing here knows yet where RAM
//! is (that comes from the DTB itself): an address with nothing behind it
//! makes the load take a synchronous external abort, which the fatal path
//! (`vectors.rs`) reports and ends the run with.

/// The bytes at `va`, `len` long, as the fixmap's early DT window shows them
/// (what `mmu::map_early_dtb` mapped read-only and returned).
///
/// The slice lives until `mmu::unmap_early_dtb`, which the caller runs only
/// after copying what it needs out of it, so it is never used past that point.
pub fn dtb_bytes(va: u32, len: u32) -> &'static [u8] {
    // SAFETY: [va, va + len) is mapped read-only (the fixmap's early DT
    // window) and lies outside every Rust object; nothing writes it, so a
    // shared slice cannot alias a mutable reference. The caller drops it
    // before the window is unmapped.
    unsafe { core::slice::from_raw_parts(va as usize as *const u8, len as usize) }
}
