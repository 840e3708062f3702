//! The ext4 superblock (1024 bytes at byte 1024; with sparse_super2 its copies are
//! in the groups named by s_backup_bgs: none, or the last group only, so a large
//! file system has no metadata scattered over its length).
//!
//! Field offsets follow e2fsprogs `lib/ext2fs/ext2_fs.h` (struct ext2_super_block);
//! see shared/reference/formats.md §3.2. The writer sets the subset listed there;
//! every other field stays zero. [`probe`] reads back the fields `inspect` shows and
//! treats its input as untrusted: every value is range-checked before use.

use super::checksum;
use super::le::{get_u16, get_u32, hi32, lo8, lo32, put_u8, put_u16, put_u32};
use crate::{FileRegion, Guid};

pub(crate) const SUPERBLOCK_OFFSET: u64 = 1024;
pub(crate) const SUPERBLOCK_SIZE: usize = 1024;
pub(crate) const MAGIC: u16 = 0xEF53;

pub(crate) const COMPAT_HAS_JOURNAL: u32 = 0x4;
pub(crate) const COMPAT_EXT_ATTR: u32 = 0x8;
pub(crate) const COMPAT_DIR_INDEX: u32 = 0x20;
pub(crate) const COMPAT_SPARSE_SUPER2: u32 = 0x200;
pub(crate) const INCOMPAT_FILETYPE: u32 = 0x2;
pub(crate) const INCOMPAT_EXTENTS: u32 = 0x40;
pub(crate) const INCOMPAT_64BIT: u32 = 0x80;
pub(crate) const INCOMPAT_FLEX_BG: u32 = 0x200;
pub(crate) const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
pub(crate) const RO_COMPAT_LARGE_FILE: u32 = 0x2;
pub(crate) const RO_COMPAT_HUGE_FILE: u32 = 0x8;
pub(crate) const RO_COMPAT_DIR_NLINK: u32 = 0x20;
pub(crate) const RO_COMPAT_EXTRA_ISIZE: u32 = 0x40;
pub(crate) const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

/// Everything the writer puts in a superblock.
#[derive(Clone, Debug)]
pub(crate) struct SuperblockFields {
    pub inodes_count: u32,
    pub blocks_count: u64,
    pub free_blocks: u64,
    pub free_inodes: u32,
    pub inodes_per_group: u32,
    pub uuid: Guid,
    pub hash_seed: Guid,
    pub label: [u8; 16],
    /// File-system creation and last-write time (seconds since the epoch).
    pub time: i64,
    pub log_groups_per_flex: u8,
    /// s_backup_bgs: the groups (besides 0) holding superblock copies; 0 = none.
    pub backup_bgs: [u32; 2],
    /// The journal inode's i_block, i_size_high and i_size (s_jnl_blocks), if any.
    pub journal_backup: Option<[u32; 17]>,
}

impl SuperblockFields {
    /// The 1024-byte superblock as stored in group `group_nr` (0 for the primary).
    pub(crate) fn encode(&self, group_nr: u16) -> [u8; SUPERBLOCK_SIZE] {
        let mut sb = [0u8; SUPERBLOCK_SIZE];
        put_u32(&mut sb, 0x00, self.inodes_count);
        put_u32(&mut sb, 0x04, lo32(self.blocks_count));
        put_u32(&mut sb, 0x0C, lo32(self.free_blocks));
        put_u32(&mut sb, 0x10, self.free_inodes);
        put_u32(&mut sb, 0x14, 0); // s_first_data_block: 0 with 4 KiB blocks
        put_u32(&mut sb, 0x18, 2); // s_log_block_size: 1024 << 2
        put_u32(&mut sb, 0x1C, 2); // s_log_cluster_size
        put_u32(&mut sb, 0x20, super::BLOCKS_PER_GROUP);
        put_u32(&mut sb, 0x24, super::BLOCKS_PER_GROUP);
        put_u32(&mut sb, 0x28, self.inodes_per_group);
        let (time_lo, time_hi) = split_time(self.time);
        put_u32(&mut sb, 0x30, time_lo); // s_wtime
        put_u16(&mut sb, 0x36, 0xFFFF); // s_max_mnt_count: -1, no forced checks
        put_u16(&mut sb, 0x38, MAGIC);
        put_u16(&mut sb, 0x3A, 1); // s_state: clean
        put_u16(&mut sb, 0x3C, 1); // s_errors: continue
        put_u32(&mut sb, 0x40, time_lo); // s_lastcheck
        put_u32(&mut sb, 0x4C, 1); // s_rev_level: dynamic
        put_u32(&mut sb, 0x54, super::FIRST_INO);
        put_u16(&mut sb, 0x58, super::INODE_SIZE_U16);
        put_u16(&mut sb, 0x5A, group_nr);
        let mut compat = COMPAT_EXT_ATTR | COMPAT_DIR_INDEX | COMPAT_SPARSE_SUPER2;
        if self.journal_backup.is_some() {
            compat |= COMPAT_HAS_JOURNAL;
        }
        put_u32(&mut sb, 0x5C, compat);
        put_u32(
            &mut sb,
            0x60,
            INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG,
        );
        put_u32(
            &mut sb,
            0x64,
            RO_COMPAT_SPARSE_SUPER
                | RO_COMPAT_LARGE_FILE
                | RO_COMPAT_HUGE_FILE
                | RO_COMPAT_DIR_NLINK
                | RO_COMPAT_EXTRA_ISIZE
                | RO_COMPAT_METADATA_CSUM,
        );
        sb[0x68..0x78].copy_from_slice(&self.uuid.to_rfc_bytes());
        sb[0x78..0x88].copy_from_slice(&self.label);
        if let Some(backup) = &self.journal_backup {
            put_u32(&mut sb, 0xE0, super::JOURNAL_INO);
            for (i, word) in backup.iter().enumerate() {
                put_u32(&mut sb, 0x10C + 4 * i, *word);
            }
            put_u8(&mut sb, 0xFD, 1); // s_jnl_backup_type: EXT3_JNL_BACKUP_BLOCKS
        }
        sb[0xEC..0xFC].copy_from_slice(&self.hash_seed.to_rfc_bytes());
        put_u8(&mut sb, 0xFC, 1); // s_def_hash_version: half_md4
        put_u16(&mut sb, 0xFE, super::DESC_SIZE_U16);
        put_u32(&mut sb, 0x100, 0x0C); // s_default_mount_opts: user_xattr | acl
        put_u32(&mut sb, 0x108, time_lo); // s_mkfs_time
        put_u32(&mut sb, 0x150, hi32(self.blocks_count));
        put_u32(&mut sb, 0x158, hi32(self.free_blocks));
        put_u16(&mut sb, 0x15C, super::EXTRA_ISIZE);
        put_u16(&mut sb, 0x15E, super::EXTRA_ISIZE);
        put_u32(&mut sb, 0x160, 0x1); // s_flags: signed directory hash, as mke2fs on x86
        put_u8(&mut sb, 0x174, self.log_groups_per_flex);
        put_u8(&mut sb, 0x175, 1); // s_checksum_type: crc32c
        put_u32(&mut sb, 0x24C, self.backup_bgs[0]);
        put_u32(&mut sb, 0x250, self.backup_bgs[1]);
        put_u8(&mut sb, 0x274, time_hi); // s_wtime_hi
        put_u8(&mut sb, 0x276, time_hi); // s_mkfs_time_hi
        put_u8(&mut sb, 0x277, time_hi); // s_lastcheck_hi
        let csum = checksum::raw(!0, &sb[..0x3FC]);
        put_u32(&mut sb, 0x3FC, csum);
        sb
    }
}

/// Splits a time into the low 32 bits and the 8 high bits of the superblock's
/// unsigned 40-bit times; times before the epoch are stored as 0.
fn split_time(seconds: i64) -> (u32, u8) {
    let unsigned = u64::try_from(seconds).unwrap_or(0).min((1 << 40) - 1);
    (lo32(unsigned), lo8(hi32(unsigned)))
}

/// What `inspect` shows about an ext4 file system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ext4Info {
    pub label: String,
    pub uuid: Guid,
    pub block_size: u64,
    pub block_count: u64,
    pub free_blocks: u64,
    pub inode_count: u32,
    pub free_inodes: u32,
    pub has_journal: bool,
    pub metadata_csum: bool,
    /// Whether the stored superblock checksum matches (always true without metadata_csum).
    pub checksum_ok: bool,
}

impl Ext4Info {
    /// Bytes in use: (blocks − free blocks) × block size.
    pub fn used_bytes(&self) -> u64 {
        self.block_count.saturating_sub(self.free_blocks).saturating_mul(self.block_size)
    }
}

/// Reads the superblock of the ext4 file system at the start of `region`, or `None`
/// when there is none (wrong magic, impossible geometry, unreadable region).
pub fn probe(region: FileRegion<'_>) -> Option<Ext4Info> {
    let mut sb = [0u8; SUPERBLOCK_SIZE];
    region.read_exact_at(&mut sb, SUPERBLOCK_OFFSET).ok()?;
    parse(&sb)
}

/// Parses a 1024-byte superblock; untrusted input.
pub(crate) fn parse(sb: &[u8; SUPERBLOCK_SIZE]) -> Option<Ext4Info> {
    if get_u16(sb, 0x38) != MAGIC {
        return None;
    }
    let log_block_size = get_u32(sb, 0x18);
    // Linux supports 1 KiB to 64 KiB blocks.
    if log_block_size > 6 {
        return None;
    }
    let block_size = 1024u64 << log_block_size;
    let incompat = get_u32(sb, 0x60);
    let ro_compat = get_u32(sb, 0x64);
    let is_64bit = incompat & INCOMPAT_64BIT != 0;
    let high = |offset: usize| if is_64bit { u64::from(get_u32(sb, offset)) << 32 } else { 0 };
    let block_count = u64::from(get_u32(sb, 0x04)) | high(0x150);
    let free_blocks = u64::from(get_u32(sb, 0x0C)) | high(0x158);
    let inode_count = get_u32(sb, 0x00);
    let free_inodes = get_u32(sb, 0x10);
    if block_count == 0 || free_blocks > block_count || free_inodes > inode_count {
        return None;
    }
    let label_bytes = &sb[0x78..0x88];
    let label_len = label_bytes.iter().position(|&b| b == 0).unwrap_or(label_bytes.len());
    let label = String::from_utf8_lossy(&label_bytes[..label_len]).into_owned();
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&sb[0x68..0x78]);
    let metadata_csum = ro_compat & RO_COMPAT_METADATA_CSUM != 0;
    let checksum_ok = !metadata_csum || checksum::raw(!0, &sb[..0x3FC]) == get_u32(sb, 0x3FC);
    Some(Ext4Info {
        label,
        uuid: Guid::from_rfc_bytes(uuid),
        block_size,
        block_count,
        free_blocks,
        inode_count,
        free_inodes,
        has_journal: get_u32(sb, 0x5C) & COMPAT_HAS_JOURNAL != 0,
        metadata_csum,
        checksum_ok,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> SuperblockFields {
        SuperblockFields {
            inodes_count: 32,
            blocks_count: 1000,
            free_blocks: 900,
            free_inodes: 20,
            inodes_per_group: 32,
            uuid: "0b0ab1d5-3c9f-4e46-9a39-2ad2b1a7c0de".parse().unwrap(),
            hash_seed: Guid::NIL,
            label: *b"root\0\0\0\0\0\0\0\0\0\0\0\0",
            time: 1_700_000_000,
            log_groups_per_flex: 4,
            backup_bgs: [0, 0],
            journal_backup: None,
        }
    }

    #[test]
    fn encode_then_parse_round_trips() {
        let sb = fields().encode(0);
        let info = parse(&sb).unwrap();
        assert_eq!(info.label, "root");
        assert_eq!(info.uuid.to_string(), "0b0ab1d5-3c9f-4e46-9a39-2ad2b1a7c0de");
        assert_eq!((info.block_count, info.free_blocks, info.block_size), (1000, 900, 4096));
        assert!(info.metadata_csum && info.checksum_ok && !info.has_journal);
        assert_eq!(info.used_bytes(), 100 * 4096);
    }

    #[test]
    fn rejects_garbage_and_detects_a_bad_checksum() {
        assert!(parse(&[0u8; SUPERBLOCK_SIZE]).is_none());
        let mut sb = fields().encode(0);
        put_u32(&mut sb, 0x18, 40);
        assert!(parse(&sb).is_none());
        let mut sb = fields().encode(0);
        sb[0x78] = b'R';
        assert!(!parse(&sb).unwrap().checksum_ok);
        let mut sb = fields().encode(0);
        put_u32(&mut sb, 0x0C, 5000);
        assert!(parse(&sb).is_none());
    }
}
