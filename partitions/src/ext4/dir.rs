//! Linear directories (formats.md §3.8): `.` and `..` first, then the entries in
//! the order given (the tree's byte order), packed first-fit into blocks whose last
//! 12 bytes are the metadata_csum tail. No htree index is written: the kernel and
//! e2fsck read linear directories of any size.

use super::BLOCK_SIZE_USIZE;
use super::checksum;
use super::le::{lo8, put_u8, put_u16, put_u32, round4};

/// Usable bytes of a directory block: the checksum tail takes the last 12.
const USABLE: usize = BLOCK_SIZE_USIZE - 12;

pub(crate) const FT_REG: u8 = 1;
pub(crate) const FT_DIR: u8 = 2;
pub(crate) const FT_CHR: u8 = 3;
pub(crate) const FT_BLK: u8 = 4;
pub(crate) const FT_FIFO: u8 = 5;
pub(crate) const FT_SOCK: u8 = 6;
pub(crate) const FT_SYMLINK: u8 = 7;

/// One name in a directory.
#[derive(Clone, Debug)]
pub(crate) struct DirEntry<'a> {
    pub name: &'a [u8],
    pub ino: u32,
    pub file_type: u8,
}

fn rec_len(name_len: usize) -> usize {
    round4(8 + name_len)
}

/// Number of blocks a directory whose entries have names of `name_lens` takes
/// (`.` and `..` included).
pub(crate) fn block_count(name_lens: impl Iterator<Item = usize>) -> u64 {
    let mut blocks = 1u64;
    let mut used = rec_len(1) + rec_len(2);
    for len in name_lens {
        let rec = rec_len(len);
        if used + rec > USABLE {
            blocks += 1;
            used = 0;
        }
        used += rec;
    }
    blocks
}

/// The blocks of directory `ino` (parent `parent`), at least `min_blocks` of them
/// (lost+found is made 4 blocks long, like mke2fs, so fsck has room to reconnect).
pub(crate) fn encode(
    ino: u32,
    parent: u32,
    entries: &[DirEntry<'_>],
    min_blocks: u64,
    fs_seed: u32,
) -> Vec<Vec<u8>> {
    let dot = [
        DirEntry { name: b".", ino, file_type: FT_DIR },
        DirEntry { name: b"..", ino: parent, file_type: FT_DIR },
    ];
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut block = vec![0u8; BLOCK_SIZE_USIZE];
    let mut used = 0;
    let mut last_offset = 0;
    for entry in dot.iter().chain(entries) {
        let rec = rec_len(entry.name.len());
        if used + rec > USABLE {
            finish_block(&mut block, last_offset, ino, fs_seed);
            blocks.push(std::mem::replace(&mut block, vec![0u8; BLOCK_SIZE_USIZE]));
            used = 0;
        }
        put_u32(&mut block, used, entry.ino);
        // rec and the name length are below 4096 and 256: they fit their fields.
        put_u16(&mut block, used + 4, u16::try_from(rec).unwrap_or(0));
        put_u8(&mut block, used + 6, u8::try_from(entry.name.len()).unwrap_or(0));
        put_u8(&mut block, used + 7, entry.file_type);
        block[used + 8..used + 8 + entry.name.len()].copy_from_slice(entry.name);
        last_offset = used;
        used += rec;
    }
    finish_block(&mut block, last_offset, ino, fs_seed);
    blocks.push(block);
    while (blocks.len() as u64) < min_blocks {
        let mut empty = vec![0u8; BLOCK_SIZE_USIZE];
        // One unused entry spanning the block.
        put_u16(&mut empty, 4, lo16_usize(USABLE));
        finish_block_tail(&mut empty, ino, fs_seed);
        blocks.push(empty);
    }
    blocks
}

fn lo16_usize(value: usize) -> u16 {
    u16::try_from(value).unwrap_or(0)
}

/// Stretches the last entry to the tail and writes the checksum tail.
fn finish_block(block: &mut [u8], last_offset: usize, ino: u32, fs_seed: u32) {
    put_u16(block, last_offset + 4, lo16_usize(USABLE - last_offset));
    finish_block_tail(block, ino, fs_seed);
}

fn finish_block_tail(block: &mut [u8], ino: u32, fs_seed: u32) {
    put_u32(block, USABLE, 0);
    put_u16(block, USABLE + 4, 12);
    put_u8(block, USABLE + 6, 0);
    put_u8(block, USABLE + 7, lo8(0xDE));
    let csum = checksum::raw(checksum::inode_seed(fs_seed, ino, 0), &block[..USABLE]);
    put_u32(block, USABLE + 8, csum);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ext4::le::{get_u16, get_u32};

    #[test]
    fn entries_fill_blocks_and_the_last_reaches_the_tail() {
        let names: Vec<Vec<u8>> = (0..300).map(|i| format!("file-{i:04}").into_bytes()).collect();
        let entries: Vec<DirEntry> =
            names.iter().map(|n| DirEntry { name: n, ino: 20, file_type: FT_REG }).collect();
        let blocks = encode(12, 2, &entries, 1, 0);
        assert_eq!(blocks.len() as u64, block_count(names.iter().map(|n| n.len())));
        assert_eq!(blocks.len(), 2); // 24 + 300 * 20 bytes > 4084
        for block in &blocks {
            let mut offset = 0;
            while offset < USABLE {
                offset += usize::from(get_u16(block, offset + 4));
            }
            assert_eq!(offset, USABLE);
            assert_eq!(get_u16(block, USABLE + 4), 12);
            assert_eq!(block[USABLE + 7], 0xDE);
        }
        assert_eq!(get_u32(&blocks[0], 12), 2); // '..'
        assert_eq!(encode(11, 2, &[], 4, 0).len(), 4);
    }
}
