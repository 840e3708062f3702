//! The block allocator: a cursor that only moves forward, skipping the reserved
//! ranges (superblock and descriptor-table copies, metadata kept in its own group,
//! the journal's body). Nothing is ever freed, so this is
//! first-fit; a run that must be contiguous (an inode table) skips to after a
//! reserved range when it does not fit before it. Allocations happen in one fixed
//! order, so the layout is deterministic.

use std::ops::Range;

#[derive(Clone, Debug)]
pub(crate) struct Allocator {
    total: u64,
    next: u64,
    /// Sorted, disjoint reserved ranges (already used).
    reserved: Vec<Range<u64>>,
    /// Index of the first reserved range that ends after `next`.
    reserved_index: usize,
    /// Allocated ranges, sorted and merged.
    used: Vec<Range<u64>>,
}

impl Allocator {
    pub(crate) fn new(total: u64, reserved: Vec<Range<u64>>) -> Allocator {
        Allocator { total, next: 0, reserved, reserved_index: 0, used: Vec::new() }
    }

    fn skip_reserved(&mut self) {
        while let Some(range) = self.reserved.get(self.reserved_index) {
            if range.end <= self.next {
                self.reserved_index += 1;
            } else if range.start <= self.next {
                self.next = range.end;
                self.reserved_index += 1;
            } else {
                break;
            }
        }
    }

    /// Where the free stretch starting at `next` ends.
    fn limit(&self) -> u64 {
        self.reserved.get(self.reserved_index).map_or(self.total, |r| r.start.min(self.total))
    }

    fn record(&mut self, range: Range<u64>) {
        match self.used.last_mut() {
            Some(last) if last.end == range.start => last.end = range.end,
            _ => self.used.push(range),
        }
    }

    /// Between 1 and `max` contiguous blocks, or `None` when the disk is full.
    pub(crate) fn alloc(&mut self, max: u64) -> Option<Range<u64>> {
        self.skip_reserved();
        let limit = self.limit();
        if self.next >= limit || max == 0 {
            return None;
        }
        let len = max.min(limit - self.next);
        let range = self.next..self.next + len;
        self.next = range.end;
        self.record(range.clone());
        Some(range)
    }

    /// Exactly `len` contiguous blocks.
    pub(crate) fn alloc_contiguous(&mut self, len: u64) -> Option<Range<u64>> {
        loop {
            self.skip_reserved();
            let limit = self.limit();
            if self.next >= self.total {
                return None;
            }
            if limit - self.next >= len {
                return self.alloc(len);
            }
            self.next = limit;
        }
    }

    /// Blocks still available to [`Allocator::alloc`].
    pub(crate) fn remaining(&self) -> u64 {
        let reserved_ahead: u64 = self
            .reserved
            .iter()
            .map(|r| r.end.min(self.total).saturating_sub(r.start.max(self.next)))
            .sum();
        self.total.saturating_sub(self.next).saturating_sub(reserved_ahead)
    }

    /// Reserved ranges not yet passed: those an allocation may still have to skip.
    pub(crate) fn reserved_ahead(&self) -> u64 {
        self.reserved.iter().filter(|r| r.end > self.next).count() as u64
    }

    /// Every used block range (reserved and allocated), sorted and merged.
    pub(crate) fn used_ranges(&self) -> Vec<Range<u64>> {
        let mut all: Vec<Range<u64>> = self.reserved.iter().chain(&self.used).cloned().collect();
        all.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(all.len());
        for range in all {
            match merged.last_mut() {
                Some(last) if last.end >= range.start => last.end = last.end.max(range.end),
                _ => merged.push(range),
            }
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_reserved_ranges() {
        let mut a = Allocator::new(100, vec![0..3, 10..12]);
        assert_eq!(a.remaining(), 95);
        assert_eq!(a.alloc(5), Some(3..8));
        assert_eq!(a.alloc(5), Some(8..10));
        assert_eq!(a.alloc_contiguous(3), Some(12..15));
        let mut b = Allocator::new(20, vec![0..3, 10..12]);
        b.alloc(5);
        assert_eq!(b.alloc_contiguous(4), Some(12..16)); // 8..10 is too short
        assert_eq!(b.remaining(), 4);
        assert_eq!(b.alloc_contiguous(5), None);
        assert_eq!(b.used_ranges(), vec![0..8, 10..16]);
    }
}
