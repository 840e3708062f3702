//! The internal JBD2 journal of a read-write file system: inode 8, its size chosen
//! like e2fsprogs `ext2fs_default_journal_size`, and an empty (clean) version 2
//! journal superblock in its first block. JBD2 is big-endian.
//!
//! The journal's other blocks are left as holes (zeros), as mke2fs leaves them after
//! zeroing. Journal features stay 0: the kernel enables 64bit and csum v3 itself
//! when it first mounts the file system.

use crate::Guid;

const JBD2_MAGIC: u32 = 0xC03B_3998;
const JBD2_SUPERBLOCK_V2: u32 = 4;

/// Journal length in blocks for a file system of `fs_blocks` 4 KiB blocks.
pub(crate) fn default_blocks(fs_blocks: u64) -> u64 {
    match fs_blocks {
        // mke2fs makes no journal below 2048 blocks; 1024 is JBD2's minimum.
        0..32768 => 1024,
        32768..262_144 => 4096,
        262_144..524_288 => 8192,
        524_288..4_194_304 => 16384,
        4_194_304..8_388_608 => 32768,
        8_388_608..16_777_216 => 65536,
        16_777_216..33_554_432 => 131_072,
        _ => 262_144,
    }
}

fn put_be32(buf: &mut [u8], offset: usize, value: u32) {
    buf[offset..offset + 4].copy_from_slice(&value.to_be_bytes());
}

/// The first block of a clean, empty journal of `blocks` blocks.
pub(crate) fn superblock(blocks: u32, uuid: Guid) -> Vec<u8> {
    let mut b = vec![0u8; super::BLOCK_SIZE_USIZE];
    put_be32(&mut b, 0x00, JBD2_MAGIC);
    put_be32(&mut b, 0x04, JBD2_SUPERBLOCK_V2);
    put_be32(&mut b, 0x08, 0); // h_sequence
    put_be32(&mut b, 0x0C, super::BLOCK_SIZE_U32);
    put_be32(&mut b, 0x10, blocks); // s_maxlen
    put_be32(&mut b, 0x14, 1); // s_first: the log starts after this block
    put_be32(&mut b, 0x18, 1); // s_sequence: first transaction id expected
    put_be32(&mut b, 0x1C, 0); // s_start: 0 means the journal is empty
    b[0x30..0x40].copy_from_slice(&uuid.to_rfc_bytes());
    put_be32(&mut b, 0x40, 1); // s_nr_users
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_mke2fs() {
        assert_eq!(default_blocks(16384), 1024);
        assert_eq!(default_blocks(262_144), 8192);
        assert_eq!(default_blocks(1 << 30), 262_144);
    }

    #[test]
    fn superblock_matches_mke2fs_layout() {
        let sb = superblock(1024, Guid::NIL);
        assert_eq!(
            &sb[..0x20],
            &[
                0xc0, 0x3b, 0x39, 0x98, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 4, 0, 0, 0, 0,
                1, 0, 0, 0, 1, 0, 0, 0, 0
            ]
        );
    }
}
