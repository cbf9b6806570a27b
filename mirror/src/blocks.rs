//! Block math: a blob is cut into fixed, aligned blocks (`index * block_size ..`, the last
//! one shorter); a byte range maps to the blocks that cover it, and missing blocks next to
//! each other are fetched as one run (one upstream range request), up to a size cap.

use std::ops::Range;

/// Smallest block size accepted.
pub const MIN_BLOCK_SIZE: u64 = 64 << 10;
/// Largest block size accepted.
pub const MAX_BLOCK_SIZE: u64 = 16 << 20;
/// Default block size.
pub const DEFAULT_BLOCK_SIZE: u64 = 128 << 10;

/// The blocks of one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocks {
    /// Bytes per block (a power of two).
    pub block_size: u64,
    /// The blob's size.
    pub blob_size: u64,
}

impl Blocks {
    /// The blocks of a blob of `blob_size` bytes.
    pub fn new(block_size: u64, blob_size: u64) -> Self {
        Blocks {
            block_size,
            blob_size,
        }
    }

    /// How many blocks the blob has.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.blob_size.div_ceil(self.block_size)
    }

    /// The bytes block `index` holds (the last block is short).
    pub fn bytes_of(&self, index: u64) -> Range<u64> {
        let start = index * self.block_size;
        start..(start + self.block_size).min(self.blob_size)
    }

    /// The blocks that hold `range` (non-empty, inside the blob).
    pub fn covering(&self, range: &Range<u64>) -> Range<u64> {
        if range.start >= range.end {
            return 0..0;
        }
        range.start / self.block_size..range.end.div_ceil(self.block_size)
    }

    /// The bytes of block `index` that `range` wants, relative to the block's start.
    pub fn slice_in(&self, index: u64, range: &Range<u64>) -> Range<usize> {
        let b = self.bytes_of(index);
        let start = range.start.max(b.start) - b.start;
        let end = range.end.min(b.end).saturating_sub(b.start);
        start as usize..end.max(start) as usize
    }
}

/// Groups sorted block indices into runs of consecutive indices, each at most `max_blocks`
/// long (one upstream request per run).
pub fn runs(indices: &[u64], max_blocks: u64) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for &i in indices {
        match out.last_mut() {
            Some(r) if r.end == i && r.end - r.start < max_blocks.max(1) => r.end = i + 1,
            _ => out.push(i..i + 1),
        }
    }
    out
}

/// Checks a configured block size: a power of two between 64 KiB and 16 MiB.
pub fn check_block_size(size: u64) -> Result<(), String> {
    if !size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size) {
        return Err(format!(
            "block size {size} is not a power of two between {MIN_BLOCK_SIZE} (64KiB) and {MAX_BLOCK_SIZE} (16MiB)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_ranges_and_the_short_last_block() {
        let b = Blocks::new(100, 250);
        assert_eq!(b.count(), 3);
        assert_eq!(b.bytes_of(0), 0..100);
        assert_eq!(b.bytes_of(2), 200..250);
        assert_eq!(b.covering(&(0..1)), 0..1);
        assert_eq!(b.covering(&(99..101)), 0..2);
        assert_eq!(b.covering(&(100..200)), 1..2);
        assert_eq!(b.covering(&(0..250)), 0..3);
        assert_eq!(b.covering(&(5..5)), 0..0);
        assert_eq!(Blocks::new(100, 0).count(), 0);
        assert_eq!(Blocks::new(100, 200).count(), 2);
    }

    #[test]
    fn slices_cut_a_block_to_the_range() {
        let b = Blocks::new(100, 250);
        assert_eq!(b.slice_in(0, &(50..150)), 50..100);
        assert_eq!(b.slice_in(1, &(50..150)), 0..50);
        assert_eq!(b.slice_in(2, &(0..250)), 0..50);
        assert_eq!(b.slice_in(1, &(120..130)), 20..30);
    }

    #[test]
    fn runs_merge_neighbours_up_to_the_cap() {
        assert_eq!(runs(&[], 4), Vec::<Range<u64>>::new());
        assert_eq!(runs(&[1, 2, 3, 5, 6, 9], 4), vec![1..4, 5..7, 9..10]);
        assert_eq!(runs(&[0, 1, 2, 3, 4, 5], 4), vec![0..4, 4..6]);
        assert_eq!(runs(&[0, 1, 2], 1), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn block_sizes_are_checked() {
        assert!(check_block_size(DEFAULT_BLOCK_SIZE).is_ok());
        assert!(check_block_size(MIN_BLOCK_SIZE).is_ok());
        assert!(check_block_size(MAX_BLOCK_SIZE).is_ok());
        assert!(check_block_size(1000).unwrap_err().contains("power of two"));
        assert!(check_block_size(32 << 20).is_err());
        assert!(check_block_size(4096).is_err());
    }
}
