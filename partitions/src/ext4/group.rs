//! Block group descriptors (64 bytes with the 64bit feature) and the block and
//! inode bitmaps they point to (formats.md §3.4, §3.5, checksums §3.10).
//!
//! Lazy initialisation as mke2fs does it (`lazy_itable_init`, checked against
//! `dumpe2fs` of `mke2fs -t ext4` on a 2 TiB sparse file): a group other than the
//! last whose only used blocks are its own superblock copy, descriptor copy and
//! own metadata inside it is BLOCK_UNINIT; a group with no used inode is
//! INODE_UNINIT. The bitmap of an uninitialised kind is not written (it stays a
//! hole) and its checksum field is 0; the kernel and e2fsck compute such bitmaps
//! from the descriptors. bg_itable_unused counts the unused inodes at the end of
//! each table. Every group is ITABLE_ZEROED: unwritten inode-table blocks read as
//! zeros, so the kernel never starts a lazy-init pass that would write them. The
//! group-descriptor checksums of metadata_csum are what make these flags valid.

use super::checksum;
use super::le::{bits32_48, hi16, lo16, lo32, put_u16, put_u32};
use super::{BLOCK_SIZE_USIZE, BLOCKS_PER_GROUP, DESC_SIZE};
use std::ops::Range;

pub(crate) const BG_INODE_UNINIT: u16 = 0x1;
pub(crate) const BG_BLOCK_UNINIT: u16 = 0x2;
pub(crate) const BG_ITABLE_ZEROED: u16 = 0x4;

/// One group's descriptor fields.
#[derive(Clone, Debug, Default)]
pub(crate) struct GroupDesc {
    pub block_bitmap: u64,
    pub inode_bitmap: u64,
    pub inode_table: u64,
    pub free_blocks: u32,
    pub free_inodes: u32,
    pub used_dirs: u32,
    /// BG_* flags.
    pub flags: u16,
    /// Unused inodes at the end of the inode table.
    pub itable_unused: u32,
    pub block_bitmap_csum: u32,
    pub inode_bitmap_csum: u32,
}

impl GroupDesc {
    /// The 64-byte descriptor of group `group`, with its checksum.
    pub(crate) fn encode(&self, group: u32, fs_seed: u32) -> [u8; DESC_SIZE] {
        let mut d = [0u8; DESC_SIZE];
        put_u32(&mut d, 0x00, lo32(self.block_bitmap));
        put_u32(&mut d, 0x04, lo32(self.inode_bitmap));
        put_u32(&mut d, 0x08, lo32(self.inode_table));
        put_u16(&mut d, 0x0C, lo16(self.free_blocks));
        put_u16(&mut d, 0x0E, lo16(self.free_inodes));
        put_u16(&mut d, 0x10, lo16(self.used_dirs));
        put_u16(&mut d, 0x12, self.flags);
        put_u16(&mut d, 0x18, lo16(self.block_bitmap_csum));
        put_u16(&mut d, 0x1A, lo16(self.inode_bitmap_csum));
        put_u16(&mut d, 0x1C, lo16(self.itable_unused));
        put_u32(&mut d, 0x20, u32::from(bits32_48(self.block_bitmap)));
        put_u32(&mut d, 0x24, u32::from(bits32_48(self.inode_bitmap)));
        put_u32(&mut d, 0x28, u32::from(bits32_48(self.inode_table)));
        put_u16(&mut d, 0x2C, hi16(self.free_blocks));
        put_u16(&mut d, 0x2E, hi16(self.free_inodes));
        put_u16(&mut d, 0x30, hi16(self.used_dirs));
        put_u16(&mut d, 0x32, hi16(self.itable_unused));
        put_u16(&mut d, 0x38, hi16(self.block_bitmap_csum));
        put_u16(&mut d, 0x3A, hi16(self.inode_bitmap_csum));
        let csum = checksum::raw(checksum::raw(fs_seed, &group.to_le_bytes()), &d);
        put_u16(&mut d, 0x1E, lo16(csum));
        d
    }
}

/// Sets bits `range` (relative to the bitmap start) in `bitmap`.
fn set_bits(bitmap: &mut [u8], range: Range<usize>) {
    let mut bit = range.start;
    while bit < range.end {
        if bit.is_multiple_of(8) && bit + 8 <= range.end {
            let end_byte = (bit + (range.end - bit) / 8 * 8) / 8;
            bitmap[bit / 8..end_byte].fill(0xFF);
            bit = end_byte * 8;
        } else {
            bitmap[bit / 8] |= 1 << (bit % 8);
            bit += 1;
        }
    }
}

/// The block bitmap of group `group` given the sorted, disjoint `used` block ranges
/// (starting the search at `*cursor`, which advances so that consecutive groups scan
/// the list once), the number of blocks in the group, and the count of used blocks.
pub(crate) fn block_bitmap(
    group: u32,
    blocks_in_group: u64,
    used: &[Range<u64>],
    cursor: &mut usize,
) -> (Vec<u8>, u64) {
    let mut bitmap = vec![0u8; BLOCK_SIZE_USIZE];
    let start = u64::from(group) * u64::from(BLOCKS_PER_GROUP);
    let end = start + blocks_in_group;
    let mut used_count = 0;
    while *cursor < used.len() && used[*cursor].end <= start {
        *cursor += 1;
    }
    let mut i = *cursor;
    while i < used.len() && used[i].start < end {
        let lo = used[i].start.max(start) - start;
        let hi = used[i].end.min(end) - start;
        used_count += hi - lo;
        // Both bounds are below BLOCKS_PER_GROUP, so they fit a usize.
        set_bits(&mut bitmap, to_usize(lo)..to_usize(hi));
        i += 1;
    }
    // Blocks past the end of the file system in the last group are marked used.
    set_bits(&mut bitmap, to_usize(blocks_in_group)..BLOCK_SIZE_USIZE * 8);
    (bitmap, used_count)
}

/// How many blocks of `start..end` the sorted, disjoint `used` ranges cover. Like
/// [`block_bitmap`], it first moves `*cursor` past the ranges ending before `start`,
/// so that consecutive groups scan the list once.
pub(crate) fn used_in(start: u64, end: u64, used: &[Range<u64>], cursor: &mut usize) -> u64 {
    while *cursor < used.len() && used[*cursor].end <= start {
        *cursor += 1;
    }
    used[*cursor..]
        .iter()
        .take_while(|r| r.start < end)
        .map(|r| r.end.min(end) - r.start.max(start))
        .sum()
}

/// The inode bitmap of a group whose first `used` inodes are in use, out of `ipg`.
pub(crate) fn inode_bitmap(used: u32, ipg: u32) -> Vec<u8> {
    let mut bitmap = vec![0u8; BLOCK_SIZE_USIZE];
    set_bits(&mut bitmap, 0..to_usize(u64::from(used)));
    // Padding past inodes_per_group is marked used.
    set_bits(&mut bitmap, to_usize(u64::from(ipg))..BLOCK_SIZE_USIZE * 8);
    bitmap
}

/// Checksum of a block bitmap (all of it: clusters_per_group / 8 = 4096 bytes).
pub(crate) fn block_bitmap_csum(bitmap: &[u8], fs_seed: u32) -> u32 {
    checksum::raw(fs_seed, bitmap)
}

/// Checksum of an inode bitmap: only the first ipg / 8 bytes count.
pub(crate) fn inode_bitmap_csum(bitmap: &[u8], ipg: u32, fs_seed: u32) -> u32 {
    checksum::raw(fs_seed, &bitmap[..to_usize(u64::from(ipg / 8))])
}

/// A value known to be at most 8 × 4096 (a bit index inside one bitmap block).
fn to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_mark_used_ranges_and_padding() {
        let used = [0..10, 20..21, 32770..32780];
        let mut cursor = 0;
        let (bm, n) = block_bitmap(0, 32768, &used, &mut cursor);
        assert_eq!(n, 11);
        assert_eq!(&bm[..3], &[0xFF, 0x03, 0x10]);
        let (bm, n) = block_bitmap(1, 100, &used, &mut cursor);
        assert_eq!(n, 10);
        assert_eq!(&bm[..2], &[0xFC, 0x0F]);
        assert_eq!(bm[12], 0xF0); // bits 100.. are padding
        assert!(bm[13..].iter().all(|&b| b == 0xFF));
        let ib = inode_bitmap(11, 32);
        assert_eq!(&ib[..5], &[0xFF, 0x07, 0, 0, 0xFF]);
        let mut cursor = 0;
        assert_eq!(used_in(0, 32768, &used, &mut cursor), 11);
        assert_eq!(used_in(32768, 32775, &used, &mut cursor), 5);
        assert_eq!(cursor, 2);
    }
}
