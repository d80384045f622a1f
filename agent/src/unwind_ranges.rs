//! Free space in the kernel's unwind entries array: every file's table is one contiguous
//! range of it. New tables go first-fit into the free ranges; a freed range merges with
//! free neighbours, so that tables evicted side by side make room for a larger one.

use std::collections::BTreeMap;

/// The free ranges of an array of `capacity` entries.
#[derive(Debug)]
pub struct Ranges {
    /// Start → length, never adjacent (neighbours are merged) nor overlapping.
    free: BTreeMap<u32, u32>,
    capacity: u32,
}

impl Ranges {
    /// All of `capacity` entries free.
    pub fn new(capacity: u32) -> Self {
        let mut free = BTreeMap::new();
        if capacity > 0 {
            free.insert(0, capacity);
        }
        Ranges { free, capacity }
    }

    /// The size of the array.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Entries not in any range handed out.
    pub fn free_entries(&self) -> u32 {
        self.free.values().sum()
    }

    /// The longest range that `alloc` could hand out now.
    pub fn largest(&self) -> u32 {
        self.free.values().copied().max().unwrap_or(0)
    }

    /// The first entry of `count` free entries (the lowest that fits), now taken; `None` if
    /// no free range is that long, or `count` is 0.
    pub fn alloc(&mut self, count: u32) -> Option<u32> {
        if count == 0 {
            return None;
        }
        let (&start, &len) = self.free.iter().find(|(_, &len)| len >= count)?;
        self.free.remove(&start);
        if len > count {
            self.free.insert(start + count, len - count);
        }
        Some(start)
    }

    /// Gives back `count` entries from `first`, a range `alloc` handed out.
    pub fn free(&mut self, first: u32, count: u32) {
        if count == 0 {
            return;
        }
        let (mut start, mut len) = (first, count);
        if let Some((&before, &before_len)) = self.free.range(..first).next_back() {
            if before + before_len == first {
                self.free.remove(&before);
                start = before;
                len += before_len;
            }
        }
        if let Some(after_len) = self.free.remove(&(first + count)) {
            len += after_len;
        }
        debug_assert!(start as u64 + len as u64 <= self.capacity as u64);
        self.free.insert(start, len);
    }

    /// Whether a range of `count` would fit once `also` (ranges handed out) were given back.
    pub fn would_fit(&self, count: u32, also: impl IntoIterator<Item = (u32, u32)>) -> bool {
        let mut trial = Ranges {
            free: self.free.clone(),
            capacity: self.capacity,
        };
        for (first, n) in also {
            trial.free(first, n);
        }
        trial.largest() >= count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_first_fit_from_the_start() {
        let mut r = Ranges::new(100);
        assert_eq!(r.alloc(10), Some(0));
        assert_eq!(r.alloc(20), Some(10));
        assert_eq!(r.alloc(0), None);
        assert_eq!(r.free_entries(), 70);
        assert_eq!(r.largest(), 70);
    }

    #[test]
    fn a_full_array_refuses_and_an_exact_fit_fills_it() {
        let mut r = Ranges::new(100);
        assert_eq!(r.alloc(101), None);
        assert_eq!(r.alloc(60), Some(0));
        assert_eq!(r.alloc(41), None, "40 left");
        assert_eq!(r.alloc(40), Some(60));
        assert_eq!(r.alloc(1), None);
        assert_eq!((r.free_entries(), r.largest()), (0, 0));
        assert_eq!(Ranges::new(0).alloc(1), None);
    }

    #[test]
    fn freed_ranges_are_reused_lowest_first() {
        let mut r = Ranges::new(100);
        let a = r.alloc(10).unwrap();
        let b = r.alloc(10).unwrap();
        let c = r.alloc(10).unwrap();
        r.free(b, 10);
        // The hole left by b is the first that fits.
        assert_eq!(r.alloc(5), Some(b));
        assert_eq!(r.alloc(5), Some(b + 5));
        // Too long for any hole: after the last table.
        r.free(a, 10);
        assert_eq!(r.alloc(15), Some(c + 10));
    }

    #[test]
    fn neighbours_coalesce_on_either_side() {
        let mut r = Ranges::new(40);
        let ids: Vec<u32> = (0..4).map(|_| r.alloc(10).unwrap()).collect();
        assert_eq!(r.largest(), 0);
        // Free the outer two, then the middle ones: one range of 40 in the end.
        r.free(ids[0], 10);
        r.free(ids[2], 10);
        assert_eq!((r.free_entries(), r.largest()), (20, 10));
        r.free(ids[1], 10); // joins 0 and 2 on both sides
        assert_eq!(r.largest(), 30);
        r.free(ids[3], 10);
        assert_eq!(r.largest(), 40);
        assert_eq!(r.free.len(), 1);
        assert_eq!(r.alloc(40), Some(0));
    }

    #[test]
    fn would_fit_counts_ranges_that_would_be_given_back() {
        let mut r = Ranges::new(30);
        let a = r.alloc(10).unwrap();
        let b = r.alloc(10).unwrap();
        let _c = r.alloc(10).unwrap();
        assert!(!r.would_fit(20, []));
        assert!(!r.would_fit(20, [(a, 10)]));
        assert!(r.would_fit(20, [(a, 10), (b, 10)]));
        // Nothing was freed by asking.
        assert_eq!(r.free_entries(), 0);
    }
}
