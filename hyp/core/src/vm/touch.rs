//! First touch: which of a guest's RAM is mapped yet, and what a first touch zeroes and maps.
//!
//! A guest's RAM starts unmapped in stage-2. Its first access to a unit of
//! it is a stage-2 translation fault; the monitor then zeroes the unit and
//! maps it, so nothing that was in that memory before (a bootloader's, an
//! earlier guest's, the monitor's) is ever readable by the guest, and a guest
//! that touches little of its RAM pays for little. A restart forgets every
//! unit ([`FirstTouch::forget`]) instead of zeroing all of the RAM at once.
//!
//! The units: each 2 MiB-aligned window of IPA space, as far as it lies in
//! the plan's extents (one 2 MiB block where the extent's PA is aligned
//! alike, else pages; a window an extent boundary crosses is zeroed and
//! mapped in each extent's part), and each 4 KiB page of the movable part
//! (mapped page by page so that each can be moved alone).
//!
//! What the monitor writes into guest RAM before the guest runs (kernel,
//! initrd, DTB) goes into units that are first touched by the monitor: the
//! parts the images do not cover are zeroed ([`gaps`]), then the images
//! copied, then the units mapped.

use alloc::vec::Vec;

use crate::addr::{Address, Ipa, IpaRange, PhysAddr, PAGE_SIZE, SIZE_2M};
use crate::plan::GuestPlan;

/// One unit of a guest's RAM.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Unit {
    /// 2 MiB window `n` of the guest's IPA space, counted from its RAM base rounded down to 2 MiB.
    Window(usize),
    /// Page `n` of the movable part.
    Movable(usize),
}

/// A piece of guest RAM that is contiguous in IPA and PA space.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Piece {
    pub ipa: Ipa,
    pub pa: PhysAddr,
    pub size: u64,
}

impl Piece {
    pub fn ipa_range(&self) -> IpaRange {
        IpaRange { base: self.ipa, size: self.size }
    }
}

/// Which units of a guest's RAM are mapped (touched), and the counts of first touches.
#[derive(Clone, Debug)]
pub struct FirstTouch {
    /// The IPA window 0 starts at (the RAM base rounded down to 2 MiB).
    base: u64,
    windows: Vec<bool>,
    movable: Vec<bool>,
    /// The movable part's first IPA (0 without one).
    movable_base: u64,
    /// Units touched since the last [`forget`](Self::forget), and bytes they zeroed.
    pub touches: u64,
    pub zeroed: u64,
}

impl FirstTouch {
    /// Nothing touched yet, for the RAM of `g`.
    pub fn new(g: &GuestPlan) -> Self {
        let base = g.ipa_base.as_u64() & !(SIZE_2M - 1);
        let end = extents_end(g).next_multiple_of(SIZE_2M);
        let windows = alloc::vec![false; ((end.max(base) - base) / SIZE_2M) as usize];
        let (movable_base, pages) = g.movable.as_ref().map_or((0, 0), |m| (m.ipa.as_u64(), m.size / PAGE_SIZE));
        FirstTouch { base, windows, movable: alloc::vec![false; pages as usize], movable_base, touches: 0, zeroed: 0 }
    }

    /// The unit guest RAM at `ipa` is in, if it is RAM of `g`.
    pub fn unit(&self, g: &GuestPlan, ipa: u64) -> Option<Unit> {
        if g.extents.iter().any(|e| e.ipa_range().contains(ipa)) {
            return Some(Unit::Window(((ipa - self.base) / SIZE_2M) as usize));
        }
        let m = g.movable.as_ref().filter(|m| m.ipa_range().contains(ipa))?;
        Some(Unit::Movable(((ipa - m.ipa.as_u64()) / PAGE_SIZE) as usize))
    }

    /// The IPA range a unit spans (a window's whole 2 MiB, whatever part of it is RAM).
    pub fn span(&self, u: Unit) -> IpaRange {
        let (start, size) = match u {
            Unit::Window(n) => (self.base + n as u64 * SIZE_2M, SIZE_2M),
            Unit::Movable(n) => (self.movable_base + n as u64 * PAGE_SIZE, PAGE_SIZE),
        };
        IpaRange::from_raw(start, size).unwrap_or(IpaRange { base: Ipa::new(0), size: 0 })
    }

    pub fn is_touched(&self, u: Unit) -> bool {
        match u {
            Unit::Window(n) => self.windows.get(n).copied().unwrap_or(false),
            Unit::Movable(n) => self.movable.get(n).copied().unwrap_or(false),
        }
    }

    /// Records the first touch of `u`, which zeroed `zeroed` bytes.
    pub fn set_touched(&mut self, u: Unit, zeroed: u64) {
        let slot = match u {
            Unit::Window(n) => self.windows.get_mut(n),
            Unit::Movable(n) => self.movable.get_mut(n),
        };
        if let Some(s) = slot {
            if !*s {
                *s = true;
                self.touches += 1;
                self.zeroed += zeroed;
            }
        }
    }

    /// Every unit untouched again (a restart), the counts from zero.
    pub fn forget(&mut self) {
        self.windows.iter_mut().for_each(|w| *w = false);
        self.movable.iter_mut().for_each(|m| *m = false);
        self.touches = 0;
        self.zeroed = 0;
    }

    /// Units touched now: (windows, movable pages).
    pub fn touched(&self) -> (usize, usize) {
        (self.windows.iter().filter(|&&w| w).count(), self.movable.iter().filter(|&&m| m).count())
    }

    /// Every unit touched (mapped) now, windows first.
    pub fn touched_units(&self) -> Vec<Unit> {
        let windows = self.windows.iter().enumerate().filter(|(_, &t)| t).map(|(n, _)| Unit::Window(n));
        let pages = self.movable.iter().enumerate().filter(|(_, &t)| t).map(|(n, _)| Unit::Movable(n));
        windows.chain(pages).collect()
    }

    /// The units `[ipa, ipa + len)` of `g` lies in, in IPA order (none for IPAs that are not RAM).
    pub fn units_of(&self, g: &GuestPlan, ipa: u64, len: u64) -> Vec<Unit> {
        let mut out = Vec::new();
        let mut at = ipa;
        let end = ipa.saturating_add(len);
        while at < end {
            let Some(u) = self.unit(g, at) else { break };
            if out.last() != Some(&u) {
                out.push(u);
            }
            at = self.span(u).end();
        }
        out
    }

    /// The pieces of window `n` that lie in `g`'s extents (movable units are
    /// one page whose frame only the monitor's `vm` layer knows).
    pub fn window_pieces(&self, g: &GuestPlan, n: usize) -> Vec<Piece> {
        let w = self.span(Unit::Window(n));
        g.extents
            .iter()
            .filter_map(|e| {
                let part = e.ipa_range().intersect(&w)?;
                let pa = PhysAddr::from_u64(e.pa.as_u64() + (part.start() - e.ipa.as_u64()))?;
                Some(Piece { ipa: part.base, pa, size: part.size })
            })
            .collect()
    }
}

/// The end of the IPA range the extents cover.
fn extents_end(g: &GuestPlan) -> u64 {
    g.extents.iter().map(|e| e.ipa_range().end()).max().unwrap_or(g.ipa_base.as_u64())
}

/// The parts of `range` that none of `covered` covers, in order: what a
/// first touch by the monitor must zero before it copies its images in.
pub fn gaps(range: IpaRange, covered: &[IpaRange]) -> Vec<IpaRange> {
    let mut cuts: Vec<(u64, u64)> =
        covered.iter().filter_map(|c| c.intersect(&range)).map(|c| (c.start(), c.end())).collect();
    cuts.sort_unstable();
    let mut out = Vec::new();
    let mut at = range.start();
    for (s, e) in cuts {
        if s > at {
            out.extend(IpaRange::from_bounds(at, s));
        }
        at = at.max(e);
    }
    if at < range.end() {
        out.extend(IpaRange::from_bounds(at, range.end()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Extent, Movable};

    fn r(start: u64, end: u64) -> IpaRange {
        IpaRange::from_bounds(start, end).unwrap()
    }

    /// 8 MiB at 0x40000000: 3 MiB at PA 0x60000000, then 3 MiB at PA 0x70100000
    /// (not 2 MiB-aligned like its IPA), then 2 MiB movable.
    fn plan() -> GuestPlan {
        GuestPlan {
            name: "g".into(),
            ipa_base: Ipa::new(0x4000_0000),
            size: 8 << 20,
            cpus: 1,
            first_cpu: 0,
            cpu_ids: alloc::vec![0],
            extents: alloc::vec![
                Extent { ipa: Ipa::new(0x4000_0000), pa: PhysAddr::new(0x6000_0000), size: 3 << 20 },
                Extent { ipa: Ipa::new(0x4030_0000), pa: PhysAddr::new(0x7010_0000), size: 3 << 20 },
            ],
            movable: Some(Movable { pool: "cma".into(), ipa: Ipa::new(0x4060_0000), size: 2 << 20 }),
            desc: None,
        }
    }

    #[test]
    fn units_cover_extents_by_window_and_movable_by_page() {
        let g = plan();
        let t = FirstTouch::new(&g);
        assert_eq!(t.unit(&g, 0x4000_0000), Some(Unit::Window(0)));
        assert_eq!(t.unit(&g, 0x401f_ffff), Some(Unit::Window(0)));
        assert_eq!(t.unit(&g, 0x4020_0000), Some(Unit::Window(1)));
        assert_eq!(t.unit(&g, 0x405f_ffff), Some(Unit::Window(2)));
        assert_eq!(t.unit(&g, 0x4060_0000), Some(Unit::Movable(0)));
        assert_eq!(t.unit(&g, 0x407f_f000), Some(Unit::Movable(511)));
        assert_eq!(t.unit(&g, 0x4080_0000), None);
        assert_eq!(t.unit(&g, 0x3fff_ffff), None);
        assert_eq!(t.span(Unit::Movable(3)), r(0x4060_3000, 0x4060_4000));
        assert_eq!(t.span(Unit::Window(2)), r(0x4040_0000, 0x4060_0000));
    }

    #[test]
    fn a_window_an_extent_boundary_crosses_is_two_pieces() {
        let g = plan();
        let t = FirstTouch::new(&g);
        assert_eq!(
            t.window_pieces(&g, 0),
            [Piece { ipa: Ipa::new(0x4000_0000), pa: PhysAddr::new(0x6000_0000), size: 2 << 20 }]
        );
        assert_eq!(
            t.window_pieces(&g, 1),
            [
                Piece { ipa: Ipa::new(0x4020_0000), pa: PhysAddr::new(0x6020_0000), size: 1 << 20 },
                Piece { ipa: Ipa::new(0x4030_0000), pa: PhysAddr::new(0x7010_0000), size: 1 << 20 },
            ]
        );
        // The last window of the extents stops where the movable part starts.
        assert_eq!(
            t.window_pieces(&g, 2),
            [Piece { ipa: Ipa::new(0x4040_0000), pa: PhysAddr::new(0x7020_0000), size: 2 << 20 }]
        );
        assert!(t.window_pieces(&g, 3).is_empty());
    }

    #[test]
    fn touches_are_counted_once_and_forgotten_on_restart() {
        let g = plan();
        let mut t = FirstTouch::new(&g);
        assert!(!t.is_touched(Unit::Window(1)));
        t.set_touched(Unit::Window(1), 2 << 20);
        t.set_touched(Unit::Window(1), 2 << 20);
        t.set_touched(Unit::Movable(5), 4096);
        t.set_touched(Unit::Movable(9999), 4096); // not a unit: ignored
        assert!(t.is_touched(Unit::Window(1)) && t.is_touched(Unit::Movable(5)));
        assert_eq!((t.touches, t.zeroed, t.touched()), (2, (2 << 20) + 4096, (1, 1)));
        assert_eq!(t.touched_units(), [Unit::Window(1), Unit::Movable(5)]);
        t.forget();
        assert!(!t.is_touched(Unit::Window(1)) && !t.is_touched(Unit::Movable(5)));
        assert_eq!((t.touches, t.zeroed, t.touched()), (0, 0, (0, 0)));
        assert!(t.touched_units().is_empty());
    }

    #[test]
    fn units_of_a_range_crossing_into_the_movable_part() {
        let g = plan();
        let t = FirstTouch::new(&g);
        assert_eq!(t.units_of(&g, 0x405f_f000, 0x2001), [Unit::Window(2), Unit::Movable(0), Unit::Movable(1)]);
        assert_eq!(t.units_of(&g, 0x4010_0000, 0x20_0000), [Unit::Window(0), Unit::Window(1)]);
        assert!(t.units_of(&g, 0x9000_0000, 0x1000).is_empty());
        assert!(t.units_of(&g, 0x4000_0000, 0).is_empty());
    }

    #[test]
    fn gaps_are_what_the_images_leave() {
        let w = r(0x4000_0000, 0x4020_0000);
        assert_eq!(gaps(w, &[]), [w]);
        assert_eq!(
            gaps(w, &[r(0x4001_0000, 0x4008_0000), r(0x4010_0000, 0x4010_1000), r(0x3000_0000, 0x3000_1000)]),
            [r(0x4000_0000, 0x4001_0000), r(0x4008_0000, 0x4010_0000), r(0x4010_1000, 0x4020_0000)]
        );
        // Overlapping and out-of-order covers, and one past the end.
        assert_eq!(
            gaps(w, &[r(0x4018_0000, 0x4030_0000), r(0x4000_0000, 0x4002_0000), r(0x4001_0000, 0x4003_0000)]),
            [r(0x4003_0000, 0x4018_0000)]
        );
        assert!(gaps(w, &[r(0x3000_0000, 0x5000_0000)]).is_empty());
    }
}
