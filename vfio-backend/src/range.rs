//! A first-fit allocator of aligned ranges in a 64-bit space: pure bookkeeping, no memory
//! access. It serves twice: for I/O virtual addresses inside the IOMMU's usable ranges, and
//! for carving small DMA allocations out of one 2 MiB hugepage chunk.

use std::collections::BTreeMap;

/// Why a range could not be given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FreeError {
    /// Zero length or wrapping past `u64::MAX`.
    Invalid,
    /// Part of the range is already free (a double free, or a range never handed out).
    NotAllocated,
}

/// Free space as disjoint, non-adjacent intervals `start ..= last` (inclusive ends, so the
/// very top of the 64-bit space is representable).
#[derive(Debug, Clone, Default)]
pub(crate) struct RangeAllocator {
    free: BTreeMap<u64, u64>,
}

impl RangeAllocator {
    /// No free space.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Free space `start ..= last`.
    pub(crate) fn with_range(start: u64, last: u64) -> Self {
        let mut a = Self::new();
        a.add(start, last);
        a
    }

    /// Adds `start ..= last` to the free space (overlaps with existing free space merge).
    pub(crate) fn add(&mut self, start: u64, last: u64) {
        if last < start {
            return;
        }
        // Intervals are disjoint and sorted, so walking down from the last one that starts at
        // or before `last + 1`, the ends decrease too: stop at the first that ends before
        // `start - 1` (neither overlapping nor touching).
        let hits: Vec<(u64, u64)> = self
            .free
            .range(..=last.saturating_add(1))
            .rev()
            .take_while(|(_, &b)| b.saturating_add(1) >= start)
            .map(|(&a, &b)| (a, b))
            .collect();
        let (mut s, mut l) = (start, last);
        for (a, b) in hits {
            self.free.remove(&a);
            s = s.min(a);
            l = l.max(b);
        }
        self.free.insert(s, l);
    }

    /// Removes `start ..= last` from the free space (a reserved window), wherever it overlaps.
    pub(crate) fn remove(&mut self, start: u64, last: u64) {
        if last < start {
            return;
        }
        let hits: Vec<(u64, u64)> = self
            .free
            .range(..=last)
            .filter(|(_, &b)| b >= start)
            .map(|(&a, &b)| (a, b))
            .collect();
        for (a, b) in hits {
            self.free.remove(&a);
            if a < start {
                self.free.insert(a, start - 1);
            }
            if b > last {
                self.free.insert(last + 1, b);
            }
        }
    }

    /// Takes the lowest `size` bytes aligned to `align` (a power of two) that are free.
    pub(crate) fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        if size == 0 || !align.is_power_of_two() {
            return None;
        }
        let found = self.free.iter().find_map(|(&a, &b)| {
            let at = a.checked_next_multiple_of(align)?;
            let end = at.checked_add(size - 1)?;
            (at >= a && end <= b).then_some((a, b, at, end))
        });
        let (a, b, at, end) = found?;
        self.free.remove(&a);
        if a < at {
            self.free.insert(a, at - 1);
        }
        if end < b {
            self.free.insert(end + 1, b);
        }
        Some(at)
    }

    /// Gives back `start .. start + size`, which must be entirely allocated now.
    pub(crate) fn free(&mut self, start: u64, size: u64) -> Result<(), FreeError> {
        if size == 0 {
            return Err(FreeError::Invalid);
        }
        let last = start.checked_add(size - 1).ok_or(FreeError::Invalid)?;
        let overlaps = self
            .free
            .range(..=last)
            .next_back()
            .is_some_and(|(_, &b)| b >= start);
        if overlaps {
            return Err(FreeError::NotAllocated);
        }
        self.add(start, last);
        Ok(())
    }

    /// Total free bytes (saturating).
    pub(crate) fn free_bytes(&self) -> u64 {
        self.free.iter().fold(0u64, |acc, (&a, &b)| {
            acc.saturating_add((b - a).saturating_add(1))
        })
    }

    /// The free intervals, lowest first, as `(start, last)`.
    pub(crate) fn intervals(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.free.iter().map(|(&a, &b)| (a, b))
    }

    /// True if `start ..= last` is entirely free.
    #[cfg(test)]
    pub(crate) fn is_free(&self, start: u64, last: u64) -> bool {
        self.free
            .range(..=start)
            .next_back()
            .is_some_and(|(_, &b)| b >= last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(a: &RangeAllocator) -> Vec<(u64, u64)> {
        a.intervals().collect()
    }

    #[test]
    fn add_merges_touching_and_overlapping() {
        let mut a = RangeAllocator::new();
        a.add(0x1000, 0x1fff);
        a.add(0x3000, 0x3fff);
        assert_eq!(iv(&a), vec![(0x1000, 0x1fff), (0x3000, 0x3fff)]);
        a.add(0x2000, 0x2fff);
        assert_eq!(iv(&a), vec![(0x1000, 0x3fff)]);
        a.add(0x0, 0x10ff);
        assert_eq!(iv(&a), vec![(0x0, 0x3fff)]);
        a.add(0x8000, u64::MAX);
        a.add(0x4000, 0x4fff);
        assert_eq!(iv(&a), vec![(0x0, 0x4fff), (0x8000, u64::MAX)]);
        a.add(0x100, 0x9000);
        assert_eq!(iv(&a), vec![(0, u64::MAX)]);
    }

    #[test]
    fn remove_splits() {
        let mut a = RangeAllocator::with_range(0, 0xffff_ffff);
        a.remove(0xfee0_0000, 0xfeef_ffff);
        assert_eq!(iv(&a), vec![(0, 0xfedf_ffff), (0xfef0_0000, 0xffff_ffff)]);
        a.remove(0, 0xf_ffff);
        assert_eq!(iv(&a)[0], (0x10_0000, 0xfedf_ffff));
        a.remove(0xfe00_0000, 0xff00_0000);
        assert_eq!(
            iv(&a),
            vec![(0x10_0000, 0xfdff_ffff), (0xff00_0001, 0xffff_ffff)]
        );
    }

    #[test]
    fn alloc_is_aligned_first_fit_and_free_coalesces() {
        let mut a = RangeAllocator::with_range(0x1000, 0x80_0fff);
        let x = a.alloc(0x1000, 0x1000).unwrap();
        assert_eq!(x, 0x1000);
        let y = a.alloc(0x20_0000, 0x20_0000).unwrap();
        assert_eq!(y, 0x20_0000);
        let z = a.alloc(0x1000, 0x1000).unwrap();
        assert_eq!(
            z, 0x2000,
            "first fit reuses the hole below the aligned block"
        );
        assert_eq!(a.free(y, 0x20_0000), Ok(()));
        assert_eq!(a.free(x, 0x1000), Ok(()));
        assert_eq!(a.free(z, 0x1000), Ok(()));
        assert_eq!(iv(&a), vec![(0x1000, 0x80_0fff)]);
    }

    #[test]
    fn double_free_and_bad_requests_are_refused() {
        let mut a = RangeAllocator::with_range(0, 0xffff);
        let x = a.alloc(0x1000, 0x1000).unwrap();
        assert_eq!(a.free(x, 0x1000), Ok(()));
        assert_eq!(a.free(x, 0x1000), Err(FreeError::NotAllocated));
        assert_eq!(a.free(x, 0), Err(FreeError::Invalid));
        assert_eq!(a.free(u64::MAX, 2), Err(FreeError::Invalid));
        assert_eq!(a.alloc(0, 0x1000), None);
        assert_eq!(a.alloc(0x1000, 3), None);
        assert_eq!(a.alloc(0x1_0001, 1), None);
        assert_eq!(a.free_bytes(), 0x1_0000);
    }

    #[test]
    fn exhaustion_and_top_of_space() {
        let mut a = RangeAllocator::with_range(u64::MAX - 0x1fff, u64::MAX);
        assert_eq!(a.alloc(0x1000, 0x1000), Some(u64::MAX - 0x1fff));
        assert_eq!(a.alloc(0x1000, 0x1000), Some(u64::MAX - 0xfff));
        assert_eq!(a.alloc(0x1000, 0x1000), None);
        assert!(!a.is_free(u64::MAX - 0xfff, u64::MAX));
        a.free(u64::MAX - 0xfff, 0x1000).unwrap();
        assert!(a.is_free(u64::MAX - 0xfff, u64::MAX));
    }

    /// Random alloc/free against a page bitmap: no two live ranges overlap, every live range
    /// stays inside the space, and freeing everything restores the whole space.
    #[test]
    fn randomized_against_bitmap() {
        const PAGES: u64 = 256;
        let mut a = RangeAllocator::with_range(0, PAGES * 4096 - 1);
        let mut used = [false; PAGES as usize];
        let mut live: Vec<(u64, u64)> = Vec::new();
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut rnd = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..5000 {
            if rnd() % 3 != 0 || live.is_empty() {
                let pages = 1 + rnd() % 8;
                let align = 4096u64 << (rnd() % 3);
                if let Some(at) = a.alloc(pages * 4096, align) {
                    assert_eq!(at % align, 0);
                    for p in at / 4096..at / 4096 + pages {
                        assert!(p < PAGES && !used[p as usize], "overlap at page {p}");
                        used[p as usize] = true;
                    }
                    live.push((at, pages));
                }
            } else {
                let i = (rnd() % live.len() as u64) as usize;
                let (at, pages) = live.swap_remove(i);
                a.free(at, pages * 4096).unwrap();
                for p in at / 4096..at / 4096 + pages {
                    used[p as usize] = false;
                }
            }
            let free_pages = used.iter().filter(|u| !**u).count() as u64;
            assert_eq!(a.free_bytes(), free_pages * 4096);
        }
        for (at, pages) in live {
            a.free(at, pages * 4096).unwrap();
        }
        assert_eq!(iv(&a), vec![(0, PAGES * 4096 - 1)]);
    }
}
