//! The FDT header and the `/memreserve/` block, checked before any parser sees the blob.
//!
//! Devicetree Specification v0.4, chapter 5. fdt 0.2 sums header offsets in
//! `u32` (they can wrap) and has no `/memreserve/` API, so carve validates every
//! offset and size here with checked arithmetic and reads the memory
//! reservation block itself. Only a blob that passes goes to the `fdt` crate.

use alloc::vec::Vec;
use core::fmt;

use crate::addr::{Address, PhysAddr, PhysRange};

pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// The header is ten big-endian u32 words (version 17).
pub const HEADER_SIZE: usize = 40;
/// carve reads version 17 blobs (what dtc, QEMU and U-Boot write) and those compatible with 16.
pub const MIN_VERSION: u32 = 16;
/// The most `/memreserve/` entries accepted; real trees have a handful.
pub const MAX_MEMRESERVE: usize = 256;

/// A validated header: every block lies inside `totalsize`, which lies inside the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub totalsize: u32,
    pub off_dt_struct: u32,
    pub off_dt_strings: u32,
    pub off_mem_rsvmap: u32,
    pub version: u32,
    pub last_comp_version: u32,
    pub boot_cpuid_phys: u32,
    pub size_dt_strings: u32,
    pub size_dt_struct: u32,
}

/// Why a blob is not a device tree carve can read. Each names the numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than a header.
    Truncated {
        len: usize,
    },
    BadMagic {
        found: u32,
    },
    /// `totalsize` claims more than the buffer holds, or less than a header.
    BadTotalSize {
        totalsize: u32,
        len: usize,
    },
    /// A version carve does not read.
    Version {
        version: u32,
        last_comp: u32,
    },
    /// A block that ends past the bytes a loader mapped ([`Header::parse_in`]).
    PastMapped {
        block: &'static str,
        end: u64,
        mapped: usize,
    },
    /// A block that starts or ends past `totalsize`, or overlaps the header.
    BlockOutOfBounds {
        block: &'static str,
        offset: u32,
        size: u32,
        totalsize: u32,
    },
    /// A block offset that breaks the alignment the specification requires.
    Misaligned {
        block: &'static str,
        offset: u32,
        align: u32,
    },
    /// The `/memreserve/` list runs past the end of the blob without its terminating entry.
    MemreserveUnterminated {
        offset: u32,
    },
    /// A `/memreserve/` entry beyond the 40-bit physical address space.
    MemreserveOutOfRange {
        address: u64,
        size: u64,
    },
    TooManyMemreserve,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { len } => {
                write!(f, "FDT header: only {len} bytes, a header needs {HEADER_SIZE}")
            }
            Self::BadMagic { found } => {
                write!(f, "FDT header: bad magic {found:#010x} (expected {FDT_MAGIC:#010x})")
            }
            Self::BadTotalSize { totalsize, len } => write!(
                f,
                "FDT header: totalsize {totalsize} does not fit the {len} bytes given (or is smaller than the header)"
            ),
            Self::Version { version, last_comp } => write!(
                f,
                "FDT header: version {version} (last compatible {last_comp}); carve reads version 17, and later versions compatible with it"
            ),
            Self::BlockOutOfBounds { block, offset, size, totalsize } => write!(
                f,
                "FDT header: {block} block at offset {offset:#x} size {size:#x} lies outside the blob (totalsize {totalsize:#x})"
            ),
            Self::PastMapped { block, end, mapped } => write!(
                f,
                "FDT header: {block} block ends at byte {end:#x}, past the {mapped:#x} bytes of it mapped"
            ),
            Self::Misaligned { block, offset, align } => {
                write!(f, "FDT header: {block} block offset {offset:#x} is not {align}-byte aligned")
            }
            Self::MemreserveUnterminated { offset } => write!(
                f,
                "FDT /memreserve/ block at {offset:#x} has no terminating entry inside the blob"
            ),
            Self::MemreserveOutOfRange { address, size } => write!(
                f,
                "FDT /memreserve/ entry {address:#x} size {size:#x} runs past the 40-bit physical address space"
            ),
            Self::TooManyMemreserve => {
                write!(f, "FDT /memreserve/ block has more than {MAX_MEMRESERVE} entries")
            }
        }
    }
}

/// The bytes from a blob's start that its blocks use: the end of the
/// structure block, of the strings block or of the first memory-reservation
/// entry, whichever is last, capped at `totalsize`. What a loader must map of a
/// blob whose `totalsize` counts free space (QEMU pads its own to 1 MiB and a
/// `-dtb` blob to twice its size). `header`: the blob's first 40 bytes or more;
/// `None` if they are not an FDT header.
pub fn used_len(header: &[u8]) -> Option<u32> {
    if header.len() < HEADER_SIZE || be32(header, 0) != FDT_MAGIC {
        return None;
    }
    let end = |off: usize, size: usize| u64::from(be32(header, off)) + u64::from(be32(header, size));
    let last = end(8, 36).max(end(12, 32)).max(u64::from(be32(header, 16)) + 16).max(HEADER_SIZE as u64);
    Some(last.min(u64::from(be32(header, 4))) as u32)
}

/// A copy of `prefix`, the first bytes of a blob `available` bytes long
/// (checked as [`Header::parse_in`] checks it), whose `totalsize` says
/// `prefix.len()`: a whole blob for the reader and the `fdt` crate, made from
/// the part of a padded blob a loader mapped.
pub fn trimmed(prefix: &[u8], available: usize) -> Result<Vec<u8>, HeaderError> {
    Header::parse_in(prefix, available)?;
    let mut copy = Vec::from(prefix);
    let len = u32::try_from(copy.len()).map_err(|_| HeaderError::Truncated { len: copy.len() })?;
    copy[4..8].copy_from_slice(&len.to_be_bytes());
    Ok(copy)
}

fn be32(blob: &[u8], at: usize) -> u32 {
    // Callers check bounds first; a short read yields 0 rather than a panic.
    blob.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes).unwrap_or(0)
}

fn be64(blob: &[u8], at: usize) -> u64 {
    blob.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0)
}

impl Header {
    /// Reads and validates the header of `blob`. On success every block the
    /// header names lies within `blob[..totalsize]`.
    pub fn parse(blob: &[u8]) -> Result<Self, HeaderError> {
        Self::parse_in(blob, blob.len())
    }

    /// As [`Self::parse`], for `blob`, the first bytes of a blob `available`
    /// bytes long of which a loader mapped only the part its blocks use
    /// ([`used_len`]): `totalsize` must fit `available`, and every block must
    /// lie inside `blob` too.
    pub fn parse_in(blob: &[u8], available: usize) -> Result<Self, HeaderError> {
        if blob.len() < HEADER_SIZE {
            return Err(HeaderError::Truncated { len: blob.len() });
        }
        let magic = be32(blob, 0);
        if magic != FDT_MAGIC {
            return Err(HeaderError::BadMagic { found: magic });
        }
        let h = Header {
            totalsize: be32(blob, 4),
            off_dt_struct: be32(blob, 8),
            off_dt_strings: be32(blob, 12),
            off_mem_rsvmap: be32(blob, 16),
            version: be32(blob, 20),
            last_comp_version: be32(blob, 24),
            boot_cpuid_phys: be32(blob, 28),
            size_dt_strings: be32(blob, 32),
            size_dt_struct: be32(blob, 36),
        };
        if (h.totalsize as usize) < HEADER_SIZE || h.totalsize as usize > available.max(blob.len()) {
            return Err(HeaderError::BadTotalSize { totalsize: h.totalsize, len: available.max(blob.len()) });
        }
        // Version 17 added size_dt_struct; 16 blobs written by old tools lack it,
        // and fdt 0.2 needs it, so carve asks for 17 unless the blob is also compatible with 16.
        if h.version < MIN_VERSION || h.last_comp_version > 17 || h.version < 17 {
            return Err(HeaderError::Version { version: h.version, last_comp: h.last_comp_version });
        }
        let check = |block: &'static str, offset: u32, size: u32| {
            let end = (offset as u64) + (size as u64);
            if (offset as usize) < HEADER_SIZE || end > h.totalsize as u64 {
                Err(HeaderError::BlockOutOfBounds { block, offset, size, totalsize: h.totalsize })
            } else if end > blob.len() as u64 {
                Err(HeaderError::PastMapped { block, end, mapped: blob.len() })
            } else {
                Ok(())
            }
        };
        check("structure", h.off_dt_struct, h.size_dt_struct)?;
        check("strings", h.off_dt_strings, h.size_dt_strings)?;
        // The memory reservation block's length is only known by reading it.
        check("memory reservation", h.off_mem_rsvmap, 16)?;
        if !h.off_dt_struct.is_multiple_of(4) || !h.size_dt_struct.is_multiple_of(4) {
            return Err(HeaderError::Misaligned { block: "structure", offset: h.off_dt_struct, align: 4 });
        }
        if !h.off_mem_rsvmap.is_multiple_of(8) {
            return Err(HeaderError::Misaligned { block: "memory reservation", offset: h.off_mem_rsvmap, align: 8 });
        }
        Ok(h)
    }

    /// The `/memreserve/` entries, in blob order; zero-size entries are dropped.
    pub fn memreserve(&self, blob: &[u8]) -> Result<Vec<PhysRange>, HeaderError> {
        let mut out = Vec::new();
        let end = self.totalsize as usize;
        let mut at = self.off_mem_rsvmap as usize;
        loop {
            if at + 16 > end {
                return Err(HeaderError::MemreserveUnterminated { offset: self.off_mem_rsvmap });
            }
            let (address, size) = (be64(blob, at), be64(blob, at + 8));
            if address == 0 && size == 0 {
                return Ok(out);
            }
            if out.len() == MAX_MEMRESERVE {
                return Err(HeaderError::TooManyMemreserve);
            }
            if size != 0 {
                let range = PhysAddr::from_u64(address)
                    .and_then(|a| PhysRange::new(a, size))
                    .ok_or(HeaderError::MemreserveOutOfRange { address, size })?;
                out.push(range);
            }
            at += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid v17 blob: header, one memreserve entry, empty root node, no strings.
    pub(crate) fn minimal(memreserve: &[(u64, u64)]) -> Vec<u8> {
        let rsv_off = 40u32;
        let rsv_len = (memreserve.len() as u32 + 1) * 16;
        let struct_off = rsv_off + rsv_len;
        let structure: [u32; 5] = [1, 0, 2, 9, 0]; // BEGIN_NODE "" (padded) END_NODE END
        let struct_len = 16u32;
        let strings_off = struct_off + struct_len;
        let total = strings_off;
        let mut b = Vec::new();
        for w in [0xd00dfeed, total, struct_off, strings_off, rsv_off, 17, 16, 0, 0, struct_len] {
            b.extend_from_slice(&u32::to_be_bytes(w));
        }
        for &(a, s) in memreserve.iter().chain([(0, 0)].iter()) {
            b.extend_from_slice(&a.to_be_bytes());
            b.extend_from_slice(&s.to_be_bytes());
        }
        // BEGIN_NODE, name "\0" padded to 4, END_NODE, END
        for w in [structure[0], structure[1], structure[2], structure[3]] {
            b.extend_from_slice(&w.to_be_bytes());
        }
        b
    }

    #[test]
    fn a_padded_blob_is_read_from_its_used_part() {
        let mut b = minimal(&[(0x4800_0000, 0x10_0000)]);
        let used = b.len();
        // Padding, as QEMU adds: totalsize 1 MiB, the blocks where they were.
        b.resize(1 << 20, 0);
        b[4..8].copy_from_slice(&(1u32 << 20).to_be_bytes());
        assert_eq!(used_len(&b[..40]), Some(used as u32));
        let t = trimmed(&b[..used], b.len()).unwrap();
        let h = Header::parse(&t).unwrap();
        assert_eq!(h.totalsize as usize, used);
        assert_eq!(h.memreserve(&t).unwrap(), Header::parse(&b).unwrap().memreserve(&b).unwrap());
        // Less than the used part is refused, naming the block.
        assert_eq!(
            trimmed(&b[..used - 4], b.len()),
            Err(HeaderError::PastMapped { block: "structure", end: used as u64, mapped: used - 4 })
        );
        // A block past totalsize is refused as before, however much is mapped.
        let mut bad = minimal(&[]);
        let total = bad.len() as u32;
        bad[36..40].copy_from_slice(&(total).to_be_bytes());
        let used_bad = used_len(&bad).unwrap();
        assert_eq!(used_bad, total, "capped at totalsize");
        assert!(matches!(trimmed(&bad, bad.len()), Err(HeaderError::BlockOutOfBounds { block: "structure", .. })));
        assert_eq!(used_len(&[0u8; 40]), None);
        assert_eq!(used_len(&b[..39]), None);
    }

    #[test]
    fn reads_a_minimal_blob() {
        let b = minimal(&[(0x4800_0000, 0x10_0000)]);
        let h = Header::parse(&b).unwrap();
        assert_eq!(h.version, 17);
        let r = h.memreserve(&b).unwrap();
        assert_eq!(r, [PhysRange::from_raw(0x4800_0000, 0x10_0000).unwrap()]);
    }

    #[test]
    fn refuses_what_does_not_add_up() {
        let b = minimal(&[]);
        assert!(matches!(Header::parse(&b[..39]), Err(HeaderError::Truncated { len: 39 })));
        let mut bad = b.clone();
        bad[0] = 0;
        assert!(matches!(Header::parse(&bad), Err(HeaderError::BadMagic { .. })));
        let mut bad = b.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(Header::parse(&bad), Err(HeaderError::BadTotalSize { .. })));
        // An offset whose u32 sum with its size wraps.
        let mut bad = b.clone();
        bad[12..16].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        bad[32..36].copy_from_slice(&0x20u32.to_be_bytes());
        assert!(matches!(Header::parse(&bad), Err(HeaderError::BlockOutOfBounds { block: "strings", .. })));
        let mut bad = b.clone();
        bad[20..24].copy_from_slice(&2u32.to_be_bytes());
        assert!(matches!(Header::parse(&bad), Err(HeaderError::Version { version: 2, .. })));
    }

    #[test]
    fn memreserve_must_end_inside_the_blob() {
        let b = minimal(&[(0x1000, 0x1000)]);
        let mut bad = b.clone();
        // Overwrite the terminator with a non-zero entry; the next "entry" is the structure block,
        // then the blob ends: the list must be refused, not read past the end.
        bad[56..64].copy_from_slice(&1u64.to_be_bytes());
        let h = Header::parse(&bad).unwrap();
        let _ = h.memreserve(&bad); // must not panic whatever it returns
        let mut bad = b;
        bad[40..48].copy_from_slice(&(u64::MAX - 4).to_be_bytes());
        let h = Header::parse(&bad).unwrap();
        assert!(matches!(h.memreserve(&bad), Err(HeaderError::MemreserveOutOfRange { .. })));
    }
}
