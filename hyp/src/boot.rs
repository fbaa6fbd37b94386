//! What the loader handed over: the DTB's location and a first check of its header.
//!
//! Only the magic and the sizes are checked here, enough to map the blob and
//! hand it on; the device-tree reader in carve-core validates the rest before
//! anything parses it. Every refusal is a value with the numbers in it.

/// Where QEMU puts the DTB when it starts an ELF image (`-kernel`, r2 = 0): the start of RAM on `virt`.
pub const QEMU_VIRT_DTB: u32 = 0x4000_0000;
/// FDT header magic (Devicetree Specification v0.4, 5.2).
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// The header is ten big-endian words.
pub const FDT_HEADER_WORDS: usize = 10;
pub const FDT_HEADER_SIZE: u32 = 4 * FDT_HEADER_WORDS as u32;
/// The largest blob the monitor maps at boot; more is taken for garbage.
/// Board DTBs are tens of KiB, but `totalsize` counts free space too: QEMU
/// grows a `-dtb` blob to twice its file size plus 20000 bytes (a 1 MiB
/// `dumpdtb` file arrives as 2,117,152 bytes).
pub const MAX_DTB_SIZE: u32 = 8 << 20;

/// The DTB's place and the header fields the boot needs.
#[derive(Clone, Copy, PartialEq, Eq, Debug, defmt::Format)]
pub struct Dtb {
    /// Physical address of the blob.
    pub addr: u32,
    /// `totalsize`: the blob's length in bytes.
    pub size: u32,
    /// The bytes its blocks use from the start (at most `size`): what the boot map maps.
    pub used: u32,
    /// `version` and `last_comp_version`.
    pub version: u32,
    pub last_comp_version: u32,
}

/// Why the monitor will not use the blob it was pointed at.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DtbError {
    /// The Devicetree Specification requires an 8-byte aligned blob.
    Misaligned { addr: u32 },
    /// No FDT magic: not a device tree, or the wrong address.
    BadMagic { addr: u32, found: u32 },
    /// `totalsize` smaller than a header or larger than [`MAX_DTB_SIZE`].
    BadSize { addr: u32, totalsize: u32 },
    /// The blob would run past 4 GiB or into the monitor's image.
    BadRange { addr: u32, totalsize: u32 },
}

impl defmt::Format for DtbError {
    fn format(&self, f: defmt::Formatter) {
        match *self {
            Self::Misaligned { addr } => {
                defmt::write!(f, "DTB at {=u32:#010x}: not 8-byte aligned", addr)
            }
            Self::BadMagic { addr, found } => defmt::write!(
                f,
                "DTB at {=u32:#010x}: bad magic {=u32:#010x} (an FDT starts with {=u32:#010x})",
                addr,
                found,
                FDT_MAGIC
            ),
            Self::BadSize { addr, totalsize } => defmt::write!(
                f,
                "DTB at {=u32:#010x}: totalsize {=u32} bytes is not between {=u32} and {=u32}",
                addr,
                totalsize,
                FDT_HEADER_SIZE,
                MAX_DTB_SIZE
            ),
            Self::BadRange { addr, totalsize } => defmt::write!(
                f,
                "DTB at {=u32:#010x}: {=u32} bytes run past 4 GiB or into the monitor image",
                addr,
                totalsize
            ),
        }
    }
}

/// The DTB address the loader passed: r2, or QEMU's fixed place when r2 is 0.
pub fn dtb_address(r2: u32) -> u32 {
    if r2 == 0 {
        QEMU_VIRT_DTB
    } else {
        r2
    }
}

/// Checks the FDT header of the blob at physical `addr`, whose first bytes are
/// `header` (the caller mapped them); `image` is the monitor's physical `[start, end)`.
pub fn check_dtb(addr: u32, header: &[u8], image: (u64, u64)) -> Result<Dtb, DtbError> {
    if addr & 7 != 0 {
        return Err(DtbError::Misaligned { addr });
    }
    let word =
        |i: usize| header.get(4 * i..4 * i + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
    let (magic, totalsize, version, last_comp_version) = (word(0), word(1), word(5), word(6));
    if magic != FDT_MAGIC {
        return Err(DtbError::BadMagic { addr, found: magic });
    }
    if !(FDT_HEADER_SIZE..=MAX_DTB_SIZE).contains(&totalsize) {
        return Err(DtbError::BadSize { addr, totalsize });
    }
    let end = addr.checked_add(totalsize).ok_or(DtbError::BadRange { addr, totalsize })?;
    if u64::from(addr) < image.1 && image.0 < u64::from(end) {
        return Err(DtbError::BadRange { addr, totalsize });
    }
    let used = header.get(..4 * FDT_HEADER_WORDS).and_then(carve_core::dt::header::used_len).unwrap_or(totalsize);
    Ok(Dtb { addr, size: totalsize, used, version, last_comp_version })
}
