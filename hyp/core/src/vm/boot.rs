//! Where a Linux guest's kernel, initrd and DTB go in its IPA space.
//!
//! Linux's ARM boot protocol (Documentation/arm/booting.rst): the zImage may
//! sit anywhere in the first 128 MiB of RAM (its decompressor takes the start
//! of RAM from its own address, rounded down to 128 MiB); the DTB and initrd
//! must not be overwritten by the decompressed kernel, so they go above
//! 128 MiB when RAM allows. The same offsets QEMU's own loader uses.

use crate::addr::{Address, Ipa, IpaRange, Mib, PAGE_SIZE, SIZE_2M};
use alloc::format;

use super::super::plan::PlanError;

/// The zImage's offset from the start of guest RAM (as QEMU's loader uses).
pub use carve_abi::KERNEL_OFFSET;
/// Where the initrd goes when RAM allows (QEMU's `INITRD_LOAD_ADDR`).
pub const INITRD_OFFSET: u64 = 0x800_0000;
/// The most a guest DTB may grow to.
pub const DTB_MAX: u64 = 2 << 20;

/// IPA placements for one guest boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootLayout {
    pub kernel: IpaRange,
    pub initrd: Option<IpaRange>,
    pub dtb: IpaRange,
}

/// Places a kernel of `kernel` bytes, an initrd of `initrd` bytes and a DTB of
/// at most [`DTB_MAX`] in guest RAM `ram`.
pub fn layout(name: &str, ram: IpaRange, kernel: u64, initrd: Option<u64>) -> Result<BootLayout, PlanError> {
    let base = ram.start();
    let kernel_r =
        IpaRange::from_raw(base + KERNEL_OFFSET, kernel).filter(|k| k.end() <= ram.end()).ok_or_else(|| {
            PlanError::new(name, format!("its kernel ({}) does not fit its RAM ({})", Mib(kernel), Mib(ram.size)))
        })?;
    // The decompressed kernel needs room too: about 4x the zImage from the start of RAM.
    let low_end = (base + kernel * 4).next_multiple_of(SIZE_2M);
    let above = base + INITRD_OFFSET;
    let need = initrd.unwrap_or(0).next_multiple_of(PAGE_SIZE) + DTB_MAX;
    let start = if above + need <= ram.end() {
        above
    } else if low_end + need <= ram.end() {
        low_end
    } else {
        return Err(PlanError::new(
            name,
            format!(
                "its RAM ({}) has no room for the kernel ({}), initrd ({}) and DTB",
                Mib(ram.size),
                Mib(kernel),
                Mib(initrd.unwrap_or(0))
            ),
        ));
    };
    let initrd_r = initrd.and_then(|s| IpaRange::from_raw(start, s));
    let dtb_at = start + initrd.unwrap_or(0).next_multiple_of(PAGE_SIZE);
    let dtb = IpaRange { base: Ipa::from_u64(dtb_at).expect("inside guest RAM"), size: DTB_MAX };
    Ok(BootLayout { kernel: kernel_r, initrd: initrd_r, dtb })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_guest_of_768m() {
        let ram = IpaRange::from_raw(0x4000_0000, 768 << 20).unwrap();
        let l = layout("g", ram, 5_526_016, Some(900_000)).unwrap();
        assert_eq!(l.kernel.start(), 0x4001_0000);
        assert_eq!(l.initrd.unwrap().start(), 0x4800_0000);
        assert_eq!(l.dtb.start(), 0x4800_0000 + 0xdc000);
        assert!(l.dtb.end() <= ram.end());
    }

    #[test]
    fn small_guest_keeps_things_apart_or_refuses() {
        let ram = IpaRange::from_raw(0x4000_0000, 64 << 20).unwrap();
        let l = layout("g", ram, 5 << 20, Some(1 << 20)).unwrap();
        assert!(l.initrd.unwrap().start() >= l.kernel.end());
        assert!(l.dtb.end() <= ram.end());
        let tiny = IpaRange::from_raw(0x4000_0000, 8 << 20).unwrap();
        let e = layout("g", tiny, 5 << 20, Some(4 << 20)).unwrap_err().to_string();
        assert!(e.starts_with("g: its RAM (8 MiB) has no room"), "{e}");
    }
}
