//! A set of chunk indices stored as sorted, disjoint, non-adjacent ranges: compact for
//! what resume tracks (mostly one long run per file, with a few gaps).

use std::collections::BTreeMap;

/// Chunk indices as ranges `[start, end)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkSet {
    /// start → end, disjoint and never touching.
    ranges: BTreeMap<u64, u64>,
}

impl ChunkSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `index` is in the set.
    pub fn contains(&self, index: u64) -> bool {
        self.ranges
            .range(..=index)
            .next_back()
            .is_some_and(|(_, end)| index < *end)
    }

    /// Adds `[start, end)`, merging with neighbours.
    pub fn insert_range(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        // Merge with a range that starts before and reaches `start`.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                self.ranges.remove(&s);
            }
        }
        // Absorb every range that starts inside or right after.
        while let Some((&s, &e)) = self.ranges.range(start..=end).next() {
            end = end.max(e);
            self.ranges.remove(&s);
        }
        self.ranges.insert(start, end);
    }

    pub fn insert(&mut self, index: u64) {
        self.insert_range(index, index + 1);
    }

    /// Number of chunks in the set.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges, in order.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(s, e)| (*s, *e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn behaves_like_a_plain_set(ops in prop::collection::vec((0u64..200, 1u64..20), 0..60)) {
            let mut set = ChunkSet::new();
            let mut model = std::collections::BTreeSet::new();
            for (start, len) in ops {
                set.insert_range(start, start + len);
                model.extend(start..start + len);
            }
            prop_assert_eq!(set.len(), model.len() as u64);
            for i in 0..230 {
                prop_assert_eq!(set.contains(i), model.contains(&i), "index {}", i);
            }
            let ranges: Vec<_> = set.ranges().collect();
            for w in ranges.windows(2) {
                prop_assert!(w[0].1 < w[1].0, "disjoint and not touching: {:?}", ranges);
            }
        }
    }
}
