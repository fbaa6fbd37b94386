//! Sets of physical ranges: sorted, disjoint, coalesced. The plan's arithmetic on RAM.

use alloc::vec::Vec;

use crate::addr::{PhysRange, PAGE_SIZE};

/// A set of physical addresses held as sorted, disjoint, non-adjacent ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<PhysRange>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_ranges(rs: impl IntoIterator<Item = PhysRange>) -> Self {
        let mut s = Self::new();
        for r in rs {
            s.insert(r);
        }
        s
    }

    pub fn ranges(&self) -> &[PhysRange] {
        &self.ranges
    }

    pub fn total(&self) -> u64 {
        self.ranges.iter().map(|r| r.size).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Adds `r`, merging with whatever it touches.
    pub fn insert(&mut self, r: PhysRange) {
        if r.is_empty() {
            return;
        }
        let (mut start, mut end) = (r.start(), r.end());
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        let mut placed = false;
        for x in self.ranges.drain(..) {
            if x.end() < start {
                out.push(x);
            } else if x.start() > end {
                if !placed {
                    out.push(PhysRange::from_bounds(start, end).expect("bounds from valid ranges"));
                    placed = true;
                }
                out.push(x);
            } else {
                start = start.min(x.start());
                end = end.max(x.end());
            }
        }
        if !placed {
            out.push(PhysRange::from_bounds(start, end).expect("bounds from valid ranges"));
        }
        self.ranges = out;
    }

    /// Removes `r` from the set.
    pub fn remove(&mut self, r: PhysRange) {
        if r.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        for x in self.ranges.drain(..) {
            if !x.overlaps(&r) {
                out.push(x);
                continue;
            }
            if x.start() < r.start() {
                out.extend(PhysRange::from_bounds(x.start(), r.start()));
            }
            if x.end() > r.end() {
                out.extend(PhysRange::from_bounds(r.end(), x.end()));
            }
        }
        self.ranges = out;
    }

    pub fn remove_all(&mut self, other: &RangeSet) {
        for r in &other.ranges {
            self.remove(*r);
        }
    }

    /// The part of the set inside `within`.
    pub fn intersect(&self, within: PhysRange) -> RangeSet {
        RangeSet { ranges: self.ranges.iter().filter_map(|x| x.intersect(&within)).collect() }
    }

    pub fn overlaps(&self, r: &PhysRange) -> bool {
        self.ranges.iter().any(|x| x.overlaps(r))
    }

    pub fn contains_range(&self, r: &PhysRange) -> bool {
        self.ranges.iter().any(|x| x.contains_range(r))
    }

    /// Shrinks every range inward to `align` boundaries, dropping what vanishes.
    pub fn align_inward(&self, align: u64) -> RangeSet {
        let ranges = self
            .ranges
            .iter()
            .filter_map(|r| {
                let start = r.start().checked_add(align - 1)? & !(align - 1);
                let end = r.end() & !(align - 1);
                (start < end).then(|| PhysRange::from_bounds(start, end)).flatten()
            })
            .collect();
        RangeSet { ranges }
    }

    /// Grows every range outward to page boundaries (reserved regions cover whole pages).
    pub fn page_outward(&self) -> RangeSet {
        RangeSet::from_ranges(self.ranges.iter().filter_map(|r| {
            let start = r.start() & !(PAGE_SIZE - 1);
            let end = r.end().checked_add(PAGE_SIZE - 1)? & !(PAGE_SIZE - 1);
            PhysRange::from_bounds(start, end)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(a: u64, s: u64) -> PhysRange {
        PhysRange::from_raw(a, s).unwrap()
    }

    #[test]
    fn insert_merges_and_remove_splits() {
        let mut s = RangeSet::from_ranges([r(0x1000, 0x1000), r(0x3000, 0x1000)]);
        s.insert(r(0x2000, 0x1000));
        assert_eq!(s.ranges(), &[r(0x1000, 0x3000)]);
        s.remove(r(0x2000, 0x800));
        assert_eq!(s.ranges(), &[r(0x1000, 0x1000), r(0x2800, 0x1800)]);
        assert_eq!(s.total(), 0x2800);
    }

    proptest! {
        /// The set agrees with a bitmap model of the same inserts and removes.
        #[test]
        fn matches_a_bitmap(ops in proptest::collection::vec((any::<bool>(), 0u64..64, 1u64..16), 1..40)) {
            let mut s = RangeSet::new();
            let mut model = [false; 80];
            for (add, start, len) in ops {
                let range = r(start * 0x1000, len * 0x1000);
                if add { s.insert(range) } else { s.remove(range) }
                for b in model.iter_mut().skip(start as usize).take(len as usize) { *b = add; }
            }
            for (i, b) in model.iter().enumerate() {
                prop_assert_eq!(s.contains_range(&r(i as u64 * 0x1000, 0x1000)), *b);
            }
            // Sorted, disjoint, not adjacent.
            for w in s.ranges().windows(2) {
                prop_assert!(w[0].end() < w[1].start());
            }
        }
    }
}
