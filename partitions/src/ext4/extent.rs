//! Extent trees (formats.md §3.7): the 60-byte root in i_block and, when a file has
//! more than 4 extents, index and leaf blocks of up to 340 entries each, at any
//! depth, each with a crc32c tail at byte 4092.
//!
//! Only initialised extents are written (length ≤ 32768); unwritten extents and
//! the `eh_generation` field are not used.

use super::BLOCK_SIZE_USIZE;
use super::checksum;
use super::le::{bits32_48, lo16, lo32, put_u16, put_u32};

pub(crate) const MAX_EXTENT_LEN: u64 = 32768;
const MAGIC: u16 = 0xF30A;
const ROOT_MAX: usize = 4;
const BLOCK_MAX: usize = (BLOCK_SIZE_USIZE - 12) / 12;

/// `len` blocks of a file starting at logical block `logical`, stored from `physical`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Extent {
    pub logical: u32,
    /// 1..=32768, which does not fit a u16 (32768 is stored as 0x8000).
    pub len: u32,
    pub physical: u64,
}

/// The extents of one file, merged as blocks are appended.
#[derive(Clone, Debug, Default)]
pub(crate) struct ExtentList {
    pub extents: Vec<Extent>,
    pub blocks: u64,
}

impl ExtentList {
    /// Appends `len` blocks at logical block `logical` stored from `physical`,
    /// extending the last extent when both are contiguous. The caller guarantees
    /// that `logical + len` stays within 2^32 (checked when the file was planned).
    pub(crate) fn push(&mut self, mut logical: u64, mut physical: u64, mut len: u64) {
        self.blocks += len;
        while len > 0 {
            if let Some(last) = self.extents.last_mut() {
                let last_len = u64::from(last.len);
                if u64::from(last.logical) + last_len == logical
                    && last.physical + last_len == physical
                    && last_len < MAX_EXTENT_LEN
                {
                    let take = len.min(MAX_EXTENT_LEN - last_len);
                    last.len += lo32(take);
                    logical += take;
                    physical += take;
                    len -= take;
                    continue;
                }
            }
            let take = len.min(MAX_EXTENT_LEN);
            self.extents.push(Extent { logical: lo32(logical), len: lo32(take), physical });
            logical += take;
            physical += take;
            len -= take;
        }
    }
}

/// Number of index and leaf blocks a tree of `extents` extents needs.
pub(crate) fn tree_blocks(extents: u64) -> u64 {
    let mut entries = extents;
    let mut blocks = 0;
    while entries > ROOT_MAX as u64 {
        let nodes = entries.div_ceil(BLOCK_MAX as u64);
        blocks += nodes;
        entries = nodes;
    }
    blocks
}

fn header(buf: &mut [u8], entries: usize, max: usize, depth: u16) {
    put_u16(buf, 0, MAGIC);
    // Both counts are at most 340 (checked by construction: chunks of BLOCK_MAX).
    put_u16(buf, 2, u16::try_from(entries).unwrap_or(u16::MAX));
    put_u16(buf, 4, u16::try_from(max).unwrap_or(u16::MAX));
    put_u16(buf, 6, depth);
}

fn leaf_entry(extent: &Extent) -> [u8; 12] {
    let mut e = [0u8; 12];
    put_u32(&mut e, 0, extent.logical);
    put_u16(&mut e, 4, lo16(extent.len));
    put_u16(&mut e, 6, bits32_48(extent.physical));
    put_u32(&mut e, 8, lo32(extent.physical));
    e
}

fn index_entry(first_logical: u32, child: u64) -> [u8; 12] {
    let mut e = [0u8; 12];
    put_u32(&mut e, 0, first_logical);
    put_u32(&mut e, 4, lo32(child));
    put_u16(&mut e, 8, bits32_48(child));
    e
}

/// A tree block to write: its block number and contents.
pub(crate) type TreeBlock = (u64, Vec<u8>);

/// Builds the i_block root and the tree blocks for `extents`, using `tree_block_numbers`
/// (exactly `tree_blocks(extents.len())` of them, in order) and checksumming them for
/// inode `ino`.
pub(crate) fn build(
    extents: &[Extent],
    tree_block_numbers: &[u64],
    ino: u32,
    fs_seed: u32,
) -> ([u8; 60], Vec<TreeBlock>) {
    let mut level: Vec<(u32, [u8; 12])> =
        extents.iter().map(|e| (e.logical, leaf_entry(e))).collect();
    let mut numbers = tree_block_numbers.iter();
    let mut blocks = Vec::new();
    let mut depth: u16 = 0;
    let tail_seed = checksum::inode_seed(fs_seed, ino, 0);
    while level.len() > ROOT_MAX {
        let mut next = Vec::with_capacity(level.len().div_ceil(BLOCK_MAX));
        for chunk in level.chunks(BLOCK_MAX) {
            let number = numbers.next().copied().unwrap_or(0);
            let mut block = vec![0u8; BLOCK_SIZE_USIZE];
            header(&mut block, chunk.len(), BLOCK_MAX, depth);
            for (i, (_, entry)) in chunk.iter().enumerate() {
                block[12 + 12 * i..24 + 12 * i].copy_from_slice(entry);
            }
            let tail = 12 + 12 * BLOCK_MAX;
            let csum = checksum::raw(tail_seed, &block[..tail]);
            put_u32(&mut block, tail, csum);
            next.push((chunk[0].0, index_entry(chunk[0].0, number)));
            blocks.push((number, block));
        }
        level = next;
        depth += 1;
    }
    let mut root = [0u8; 60];
    header(&mut root, level.len(), ROOT_MAX, depth);
    for (i, (_, entry)) in level.iter().enumerate() {
        root[12 + 12 * i..24 + 12 * i].copy_from_slice(entry);
    }
    (root, blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ext4::le::get_u16;

    #[test]
    fn push_merges_and_splits_at_32768() {
        let mut list = ExtentList::default();
        list.push(0, 100, 10);
        list.push(10, 110, 40000);
        list.push(50000, 200_000, 1);
        assert_eq!(list.blocks, 40011);
        let lens: Vec<u32> = list.extents.iter().map(|e| e.len).collect();
        assert_eq!(lens, [32768, 7242, 1]);
        assert_eq!(list.extents[1].logical, 32768);
    }

    #[test]
    fn tree_depths() {
        assert_eq!(tree_blocks(4), 0);
        assert_eq!(tree_blocks(5), 1);
        assert_eq!(tree_blocks(1360), 4);
        assert_eq!(tree_blocks(1361), 5 + 1);
        let extents: Vec<Extent> = (0..1361)
            .map(|i| Extent { logical: i * 2, len: 1, physical: u64::from(i) * 2 + 1000 })
            .collect();
        let numbers: Vec<u64> = (0..6).collect();
        let (root, blocks) = build(&extents, &numbers, 12, 0);
        assert_eq!(get_u16(&root, 6), 2); // depth 2
        assert_eq!(get_u16(&root, 2), 1); // one index block under the root
        assert_eq!(blocks.len(), 6);
    }
}
