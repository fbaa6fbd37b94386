//! Reading memory the loader handed over (the DTB) by its physical address.
//!
//! At boot the monitor runs with the MMU off, so a physical address is also
//! the address to load from; once the boot map is on, the DTB is read through
//! the fixmap's early DT window instead.
//! Nothing here knows yet where RAM is (that comes from the DTB itself): an
//! address with nothing behind it makes the load take a synchronous external
//! abort, which the fatal path (`vectors.rs`) reports and ends the run with.

/// Why a physical range cannot be read here.
#[derive(Clone, Copy, PartialEq, Eq, Debug, defmt::Format)]
pub enum PhysReadError {
    /// The address is not 4-byte aligned (with the MMU off, every access is to
    /// Strongly-ordered memory, where an unaligned word load faults).
    Misaligned,
    /// The range runs past the end of the 32-bit address space.
    Wraps,
    /// The range overlaps the monitor's own image, which Rust code owns.
    OverlapsImage,
}

/// Reads `out.len()` big-endian 32-bit words starting at physical address `pa`
/// (identity mapped), refusing ranges that overlap `image` (`[start, end)`).
pub fn read_be32(pa: u32, out: &mut [u32], image: (usize, usize)) -> Result<(), PhysReadError> {
    if pa & 3 != 0 {
        return Err(PhysReadError::Misaligned);
    }
    let len = u32::try_from(out.len() * 4).map_err(|_| PhysReadError::Wraps)?;
    let end = pa.checked_add(len).ok_or(PhysReadError::Wraps)?;
    if (pa as usize) < image.1 && image.0 < end as usize {
        return Err(PhysReadError::OverlapsImage);
    }
    for (i, word) in out.iter_mut().enumerate() {
        let addr = (pa as usize + 4 * i) as *const u32;
        // SAFETY: the address is aligned and outside every Rust object (the image
        // holds them all, and the range does not touch it), so no reference
        // aliases it; MMU off or identity map, so the physical address is the
        // virtual one. A hole in the address map aborts, and the abort is reported.
        *word = u32::from_be(unsafe { addr.read_volatile() });
    }
    Ok(())
}

/// The DTB's used bytes as the boot map's fixmap window shows them (`va`,
/// `len`: what `mmu::enable_boot_map` mapped read-only and returned).
///
/// The slice lives until `mmu::unmap_early_dtb`, which the caller runs only
/// after copying the tree out, so it is never used past that point.
pub fn dtb_bytes(va: u32, len: u32) -> &'static [u8] {
    // SAFETY: [va, va + len) is mapped read-only (the fixmap's early DT
    // window) and lies outside every Rust object; nothing writes it, so a
    // shared slice cannot alias a mutable reference. The caller drops it
    // before the window is unmapped.
    unsafe { core::slice::from_raw_parts(va as usize as *const u8, len as usize) }
}
