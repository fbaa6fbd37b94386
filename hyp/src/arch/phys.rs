//! Reading memory the loader handed over (the DTB) by its physical address.
//!
//! At boot the monitor runs with the MMU off, or with the identity map that
//! `mmu.rs` builds, so a physical address is also the address to load from.
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

/// The DTB as bytes, once the boot map has identity-mapped it read-only.
///
/// `boot::check_dtb` has checked that `[pa, pa + len)` lies outside the image
/// and `mmu::enable_boot_map` mapped exactly that range; nothing ever writes it.
pub fn dtb_bytes(pa: u32, len: u32, image: (usize, usize)) -> Result<&'static [u8], PhysReadError> {
    let end = pa.checked_add(len).ok_or(PhysReadError::Wraps)?;
    if (pa as usize) < image.1 && image.0 < end as usize {
        return Err(PhysReadError::OverlapsImage);
    }
    // SAFETY: the range is mapped (identity, read-only) by the boot map for the
    // rest of the run, lies outside every Rust object, and is never written:
    // a shared 'static slice of it cannot alias a mutable reference.
    Ok(unsafe { core::slice::from_raw_parts(pa as usize as *const u8, len as usize) })
}
