//! Typed addresses: physical (`PhysAddr`), intermediate physical (`Ipa`) and Hyp virtual (`VirtAddr`).
//!
//! LPAE makes physical and intermediate physical addresses 40 bits wide (Arm ARM
//! B3.6), so both are `u64`; the Hyp stage-1 input is a 32-bit virtual address.
//! On the target `usize` is 32 bits, so no address is ever held in a `usize`.
//! The three kinds cannot be mixed by accident: converting one into another is
//! always an explicit call that says why the numbers are equal.

use core::fmt;

/// The widest output or intermediate address LPAE supports: 40 bits.
pub const PA_BITS: u32 = 40;
/// One past the highest 40-bit address.
pub const PA_LIMIT: u64 = 1 << PA_BITS;

/// 4 KiB translation granule.
pub const PAGE_SIZE: u64 = 0x1000;
/// Level-2 block: 2 MiB.
pub const SIZE_2M: u64 = 0x20_0000;
/// Level-1 block: 1 GiB.
pub const SIZE_1G: u64 = 0x4000_0000;
/// 4 GiB: the end of what a 32-bit address reaches.
pub const SIZE_4G: u64 = 0x1_0000_0000;

/// Operations every address kind shares. Arithmetic is checked: an address
/// that would leave its space is `None`, never a wrapped value.
pub trait Address: Copy + Ord + fmt::Debug {
    /// One past the highest address of this kind.
    const LIMIT: u64;
    fn from_u64(raw: u64) -> Option<Self>;
    fn as_u64(self) -> u64;

    fn checked_add(self, off: u64) -> Option<Self> {
        self.as_u64().checked_add(off).and_then(Self::from_u64)
    }
    fn is_aligned(self, align: u64) -> bool {
        align.is_power_of_two() && self.as_u64() & (align - 1) == 0
    }
    fn align_down(self, align: u64) -> Self {
        debug_assert!(align.is_power_of_two());
        // Rounding down never leaves the space.
        Self::from_u64(self.as_u64() & !(align - 1)).unwrap_or(self)
    }
    fn align_up(self, align: u64) -> Option<Self> {
        debug_assert!(align.is_power_of_two());
        let raw = self.as_u64().checked_add(align - 1)? & !(align - 1);
        Self::from_u64(raw)
    }
}

macro_rules! address_kind {
    ($(#[$doc:meta])* $name:ident($raw:ty), limit = $limit:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name($raw);

        impl $name {
            /// The address `raw`. Panics only on a constant out of range; use
            /// [`Address::from_u64`] for values that come from input.
            pub const fn new(raw: $raw) -> Self {
                assert!((raw as u64) < $limit || $limit == 0, "address out of range");
                Self(raw)
            }
            pub const fn raw(self) -> $raw {
                self.0
            }
        }

        impl Address for $name {
            const LIMIT: u64 = $limit;
            fn from_u64(raw: u64) -> Option<Self> {
                if raw < $limit {
                    <$raw>::try_from(raw).ok().map(Self)
                } else {
                    None
                }
            }
            fn as_u64(self) -> u64 {
                self.0 as u64
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

address_kind!(
    /// A physical address (the output of stage-2, or of Hyp stage-1), 40 bits.
    PhysAddr(u64), limit = PA_LIMIT
);
address_kind!(
    /// An intermediate physical address: what a guest calls physical, the input of stage-2.
    Ipa(u64), limit = PA_LIMIT
);
address_kind!(
    /// A Hyp-mode virtual address: the input of the monitor's own stage-1 translation.
    VirtAddr(u32), limit = SIZE_4G
);

/// A half-open range `[base, base + size)` of one address kind. `size` may be 0.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range<A> {
    pub base: A,
    pub size: u64,
}

pub type PhysRange = Range<PhysAddr>;
pub type IpaRange = Range<Ipa>;
pub type VirtRange = Range<VirtAddr>;

impl<A: Address> Range<A> {
    /// The range `[base, base + size)`, or `None` if it would run past the address space.
    pub fn new(base: A, size: u64) -> Option<Self> {
        let end = base.as_u64().checked_add(size)?;
        (end <= A::LIMIT).then_some(Self { base, size })
    }
    /// The range from raw numbers, or `None` if it does not fit the address kind.
    pub fn from_raw(base: u64, size: u64) -> Option<Self> {
        Self::new(A::from_u64(base)?, size)
    }
    /// The range `[start, end)`; `None` if `end < start`.
    pub fn from_bounds(start: u64, end: u64) -> Option<Self> {
        Self::from_raw(start, end.checked_sub(start)?)
    }
    pub fn start(&self) -> u64 {
        self.base.as_u64()
    }
    /// One past the last byte; at most `A::LIMIT`, so it never overflows a `u64`.
    pub fn end(&self) -> u64 {
        self.base.as_u64() + self.size
    }
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.start() && addr < self.end()
    }
    pub fn contains_range(&self, other: &Self) -> bool {
        other.start() >= self.start() && other.end() <= self.end()
    }
    pub fn overlaps(&self, other: &Self) -> bool {
        self.start() < other.end() && other.start() < self.end() && !self.is_empty() && !other.is_empty()
    }
    pub fn intersect(&self, other: &Self) -> Option<Self> {
        let start = self.start().max(other.start());
        let end = self.end().min(other.end());
        (start < end).then(|| Self::from_bounds(start, end)).flatten()
    }
}

impl<A: Address> fmt::Debug for Range<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}..{:#x})", self.start(), self.end())
    }
}

impl<A: Address> fmt::Display for Range<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}-{:#010x}", self.start(), self.end())
    }
}

/// A byte count printed the way a person reads it: `768 MiB`, `4 KiB`, `1 GiB`, `1536 bytes`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b != 0 && b.is_multiple_of(SIZE_1G) {
            write!(f, "{} GiB", b / SIZE_1G)
        } else if b != 0 && b.is_multiple_of(1 << 20) {
            write!(f, "{} MiB", b >> 20)
        } else if b != 0 && b.is_multiple_of(1 << 10) {
            write!(f, "{} KiB", b >> 10)
        } else {
            write!(f, "{} bytes", b)
        }
    }
}

impl fmt::Debug for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `Size` in MiB even when it is a whole number of GiB, for messages that compare figures.
pub struct Mib(pub u64);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b.is_multiple_of(1 << 20) {
            write!(f, "{} MiB", b >> 20)
        } else {
            write!(f, "{} KiB", b.div_ceil(1 << 10))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_their_own_limits() {
        assert!(PhysAddr::from_u64(PA_LIMIT - 1).is_some());
        assert!(PhysAddr::from_u64(PA_LIMIT).is_none());
        assert!(VirtAddr::from_u64(SIZE_4G).is_none());
        assert!(VirtAddr::from_u64(SIZE_4G - 1).is_some());
    }

    #[test]
    fn ranges_are_checked() {
        assert!(VirtRange::from_raw(0xffff_f000, 0x1000).is_some());
        assert!(VirtRange::from_raw(0xffff_f000, 0x2000).is_none());
        assert!(PhysRange::from_raw(u64::MAX, 2).is_none());
        let a = PhysRange::from_raw(0x1000, 0x1000).unwrap();
        let b = PhysRange::from_raw(0x1fff, 0x10).unwrap();
        assert!(a.overlaps(&b));
        assert_eq!(a.intersect(&b), PhysRange::from_raw(0x1fff, 1));
        assert!(!a.overlaps(&PhysRange::from_raw(0x2000, 1).unwrap()));
    }

    #[test]
    fn alignment() {
        let a = PhysAddr::new(0x4020_1000);
        assert_eq!(a.align_up(SIZE_2M), Some(PhysAddr::new(0x4040_0000)));
        assert_eq!(a.align_down(SIZE_2M), PhysAddr::new(0x4020_0000));
        assert_eq!(VirtAddr::new(0xffff_f001).align_up(PAGE_SIZE), None);
    }

    #[test]
    fn sizes_read_like_a_person_writes_them() {
        extern crate std;
        use std::format;
        assert_eq!(format!("{}", Size(768 << 20)), "768 MiB");
        assert_eq!(format!("{}", Size(SIZE_1G)), "1 GiB");
        assert_eq!(format!("{}", Size(4096)), "4 KiB");
        assert_eq!(format!("{}", Size(10)), "10 bytes");
        assert_eq!(format!("{}", Mib(2 * SIZE_1G)), "2048 MiB");
    }
}
