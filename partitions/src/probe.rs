//! Recognising what a partition holds, for `inspect` and `verify`.
//!
//! Reads a few sectors at the start of a region and recognises:
//! - FAT12/16/32 (Microsoft FAT specification: the BIOS parameter block in
//!   sector 0, the type from the cluster count), with label and volume id;
//! - ext2/3/4 (the superblock at byte 1024, magic 0xEF53 at offset 0x38), with
//!   label, UUID, block size, block count and free blocks;
//! - a dm-verity superblock (`verity\0\0`, cryptsetup's format) at the start of
//!   the region, or at a hash offset the caller gives to [`probe_verity`];
//! - an empty region (its first 64 KiB are zero).
//!
//! Everything read is untrusted: fields are range-checked and nothing is sized
//! from them. Left out: checksums (ext4 metadata_csum, FAT32 FSInfo) and any
//! walk of the file system beyond its superblock.

use std::io;

use crate::fat::FatType;
use crate::gpt::ReadAt;
use crate::guid::Guid;

/// How many leading bytes must be zero for a region to count as empty.
const EMPTY_PROBE_BYTES: u64 = 64 * 1024;

/// What a region was found to hold.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum FsProbe {
    Fat {
        fat_type: FatType,
        /// The boot-sector label, trailing spaces removed ("NO NAME" kept).
        label: String,
        volume_id: u32,
        cluster_size: u32,
        clusters: u32,
    },
    Ext4 {
        label: String,
        uuid: Guid,
        block_size: u32,
        blocks: u64,
        free_blocks: u64,
    },
    Verity(VeritySuperblock),
    /// The first 64 KiB (or the whole region, if smaller) are zero.
    Empty,
    Unknown,
    /// The region could not be read.
    Unreadable {
        reason: String,
    },
}

impl FsProbe {
    /// A short name: `vfat`, `ext4`, `verity`, `empty`, `unknown`, `unreadable`.
    pub fn kind(&self) -> &'static str {
        match self {
            FsProbe::Fat { .. } => "vfat",
            FsProbe::Ext4 { .. } => "ext4",
            FsProbe::Verity(_) => "verity",
            FsProbe::Empty => "empty",
            FsProbe::Unknown => "unknown",
            FsProbe::Unreadable { .. } => "unreadable",
        }
    }
}

/// The fields of a dm-verity superblock (512 bytes, little-endian).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VeritySuperblock {
    pub version: u32,
    pub hash_type: u32,
    /// Stored in RFC 4122 byte order.
    pub uuid: Guid,
    pub algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

fn u16_at(buf: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([buf[offset], buf[offset + 1]])
}

fn u32_at(buf: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([buf[offset], buf[offset + 1], buf[offset + 2], buf[offset + 3]])
}

fn u64_at(buf: &[u8], offset: usize) -> u64 {
    u64::from(u32_at(buf, offset)) | (u64::from(u32_at(buf, offset + 4)) << 32)
}

fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).trim_end().to_string()
}

/// Reads `len` bytes at `at` of the region, or `None` when the region is shorter.
fn read(
    disk: &dyn ReadAt,
    offset: u64,
    region_len: u64,
    at: u64,
    len: usize,
) -> io::Result<Option<Vec<u8>>> {
    // len is a small constant of this module: the widening cannot fail.
    let end = at.checked_add(len as u64);
    if end.is_none_or(|end| end > region_len) {
        return Ok(None);
    }
    let absolute = offset
        .checked_add(at)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "region offset overflows"))?;
    let mut buf = vec![0u8; len];
    disk.read_exact_at(&mut buf, absolute)?;
    Ok(Some(buf))
}

/// Recognises the file system (or verity superblock) at `offset` of `disk`,
/// in a region of `len` bytes.
pub fn probe_filesystem(disk: &dyn ReadAt, offset: u64, len: u64) -> FsProbe {
    match probe(disk, offset, len) {
        Ok(found) => found,
        Err(e) => FsProbe::Unreadable { reason: e.to_string() },
    }
}

fn probe(disk: &dyn ReadAt, offset: u64, len: u64) -> io::Result<FsProbe> {
    if let Some(sector) = read(disk, offset, len, 0, 512)? {
        if let Some(verity) = parse_verity(&sector) {
            return Ok(FsProbe::Verity(verity));
        }
        if let Some(fat) = parse_fat(&sector) {
            return Ok(fat);
        }
    }
    if let Some(sb) = read(disk, offset, len, 1024, 1024)?
        && let Some(ext4) = parse_ext4(&sb)
    {
        return Ok(ext4);
    }
    // len.min(64 KiB) fits in usize.
    let head = read(disk, offset, len, 0, len.min(EMPTY_PROBE_BYTES) as usize)?.unwrap_or_default();
    Ok(if head.iter().all(|&b| b == 0) { FsProbe::Empty } else { FsProbe::Unknown })
}

/// Reads a dm-verity superblock at `at` bytes into a region (the hash offset
/// when the tree is appended to the data); `None` if there is none.
pub fn probe_verity(
    disk: &dyn ReadAt,
    offset: u64,
    len: u64,
    at: u64,
) -> io::Result<Option<VeritySuperblock>> {
    Ok(read(disk, offset, len, at, 512)?.and_then(|sector| parse_verity(&sector)))
}

fn parse_verity(sb: &[u8]) -> Option<VeritySuperblock> {
    if &sb[0..8] != b"verity\0\0" {
        return None;
    }
    let salt_size = usize::from(u16_at(sb, 80));
    if salt_size > 256 {
        return None;
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&sb[16..32]);
    Some(VeritySuperblock {
        version: u32_at(sb, 8),
        hash_type: u32_at(sb, 12),
        uuid: Guid::from_rfc_bytes(uuid),
        algorithm: text(&sb[32..64]),
        data_block_size: u32_at(sb, 64),
        hash_block_size: u32_at(sb, 68),
        data_blocks: u64_at(sb, 72),
        salt: sb[88..88 + salt_size].to_vec(),
    })
}

fn parse_fat(boot: &[u8]) -> Option<FsProbe> {
    if boot[510..512] != [0x55, 0xAA] || !matches!(boot[0], 0xEB | 0xE9) {
        return None;
    }
    let bytes_per_sector = u32::from(u16_at(boot, 0x0B));
    let sectors_per_cluster = u32::from(boot[0x0D]);
    let reserved = u32::from(u16_at(boot, 0x0E));
    let fats = u32::from(boot[0x10]);
    let root_entries = u32::from(u16_at(boot, 0x11));
    if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096)
        || !sectors_per_cluster.is_power_of_two()
        || reserved == 0
        || fats == 0
    {
        return None;
    }
    let total = match u16_at(boot, 0x13) {
        0 => u32_at(boot, 0x20),
        small => u32::from(small),
    };
    let fat32 = u16_at(boot, 0x16) == 0;
    let sectors_per_fat = if fat32 { u32_at(boot, 0x24) } else { u32::from(u16_at(boot, 0x16)) };
    let root_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
    let meta = u64::from(reserved)
        + u64::from(fats) * u64::from(sectors_per_fat)
        + u64::from(root_sectors);
    let data = u64::from(total).checked_sub(meta)?;
    let clusters = u32::try_from(data / u64::from(sectors_per_cluster)).ok()?;
    let fat_type = FatType::from_clusters(clusters);
    // The extended BPB sits after the FAT32-only fields on FAT32.
    let ext = if fat32 { 0x40 } else { 0x24 };
    let (label, volume_id) = if boot[ext + 2] == 0x29 {
        (text(&boot[ext + 7..ext + 18]), u32_at(boot, ext + 3))
    } else {
        (String::new(), 0)
    };
    Some(FsProbe::Fat {
        fat_type,
        label,
        volume_id,
        cluster_size: bytes_per_sector * sectors_per_cluster,
        clusters,
    })
}

fn parse_ext4(sb: &[u8]) -> Option<FsProbe> {
    if u16_at(sb, 0x38) != 0xEF53 {
        return None;
    }
    let log_block_size = u32_at(sb, 0x18);
    if log_block_size > 6 {
        return None;
    }
    const INCOMPAT_64BIT: u32 = 0x80;
    let wide = u32_at(sb, 0x60) & INCOMPAT_64BIT != 0;
    let hi = |offset| if wide { u64::from(u32_at(sb, offset)) << 32 } else { 0 };
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&sb[0x68..0x78]);
    Some(FsProbe::Ext4 {
        label: text(&sb[0x78..0x88]),
        uuid: Guid::from_rfc_bytes(uuid),
        block_size: 1024 << log_block_size,
        blocks: u64::from(u32_at(sb, 0x04)) | hi(0x150),
        free_blocks: u64::from(u32_at(sb, 0x0C)) | hi(0x158),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_unknown_and_short_regions() {
        let disk = vec![0u8; 256 * 1024];
        assert_eq!(probe_filesystem(&disk, 4096, 128 * 1024), FsProbe::Empty);
        assert_eq!(probe_filesystem(&disk, 0, 100), FsProbe::Empty);
        let mut noisy = disk.clone();
        noisy[70_000] = 1;
        assert_eq!(probe_filesystem(&noisy, 0, 128 * 1024), FsProbe::Empty);
        noisy[60_000] = 1;
        assert_eq!(probe_filesystem(&noisy, 0, 128 * 1024), FsProbe::Unknown);
        assert!(matches!(
            probe_filesystem(&disk, 200 * 1024, 128 * 1024),
            FsProbe::Unreadable { .. }
        ));
    }

    #[test]
    fn ext4_superblock() {
        let mut disk = vec![0u8; 8192];
        let sb = &mut disk[1024..2048];
        sb[0x38..0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[0x18] = 2;
        sb[0x04..0x08].copy_from_slice(&1000u32.to_le_bytes());
        sb[0x0C..0x10].copy_from_slice(&10u32.to_le_bytes());
        sb[0x60] = 0x80;
        sb[0x150] = 1;
        sb[0x68..0x78].copy_from_slice(&[0x11; 16]);
        sb[0x78..0x7C].copy_from_slice(b"root");
        match probe_filesystem(&disk, 0, 8192) {
            FsProbe::Ext4 { label, uuid, block_size, blocks, free_blocks } => {
                assert_eq!(label, "root");
                assert_eq!(uuid.to_string(), "11111111-1111-1111-1111-111111111111");
                assert_eq!((block_size, blocks, free_blocks), (4096, (1 << 32) + 1000, 10));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn verity_superblock() {
        let mut disk = vec![0u8; 4096];
        disk[0..8].copy_from_slice(b"verity\0\0");
        disk[8] = 1;
        disk[12] = 1;
        disk[32..38].copy_from_slice(b"sha256");
        disk[64..68].copy_from_slice(&4096u32.to_le_bytes());
        disk[68..72].copy_from_slice(&4096u32.to_le_bytes());
        disk[72] = 10;
        disk[80] = 4;
        disk[88..92].copy_from_slice(&[1, 2, 3, 4]);
        let found = probe_verity(&disk, 0, 4096, 0).unwrap().unwrap();
        assert_eq!(found.algorithm, "sha256");
        assert_eq!(found.salt, [1, 2, 3, 4]);
        assert_eq!(found.data_blocks, 10);
        assert_eq!(probe_filesystem(&disk, 0, 4096).kind(), "verity");
        disk[80] = 0xFF;
        disk[81] = 0xFF;
        assert_eq!(probe_filesystem(&disk, 0, 4096).kind(), "unknown");
    }

    #[test]
    fn fat_written_by_us() {
        use crate::fat::{FatOptions, write_fat};
        use crate::region::FileRegion;
        use crate::tree::{FileTree, Metadata, Timestamp};
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create_new(dir.path().join("esp")).unwrap();
        let size = 8 << 20;
        file.set_len(size).unwrap();
        let tree = FileTree::new(Metadata::default());
        let opts = FatOptions {
            volume_id: 0xDEAD_BEEF,
            label: "ESP A".into(),
            timestamp: Timestamp::from_seconds(0),
            hidden_sectors: 2048,
        };
        let summary = write_fat(&tree, &opts, FileRegion::new(&file, 0, size)).unwrap();
        let file = std::fs::File::open(dir.path().join("esp")).unwrap();
        assert_eq!(
            probe_filesystem(&file, 0, size),
            FsProbe::Fat {
                fat_type: FatType::Fat16,
                label: "ESP A".into(),
                volume_id: 0xDEAD_BEEF,
                cluster_size: summary.cluster_size,
                clusters: summary.clusters,
            }
        );
    }
}

#[cfg(test)]
mod fuzz_smoke {
    use super::*;

    /// Random sectors with planted magic numbers never make the probe panic.
    #[test]
    fn random_superblocks_never_panic() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..2000u32 {
            let mut region: Vec<u8> = (0..4096).map(|_| next().to_le_bytes()[0]).collect();
            match round % 4 {
                0 => region[0..8].copy_from_slice(b"verity\0\0"),
                1 => {
                    region[0] = 0xEB;
                    region[510] = 0x55;
                    region[511] = 0xAA;
                    region[0x0B..0x0D].copy_from_slice(&512u16.to_le_bytes());
                    region[0x0D] = 1 << (round % 8);
                }
                2 => region[1024 + 0x38..1024 + 0x3A].copy_from_slice(&0xEF53u16.to_le_bytes()),
                _ => {}
            }
            let len = u64::from(round % 5000);
            let _ = probe_filesystem(&region, 0, len);
            let _ = probe_filesystem(&region, u64::MAX - 10, 4096);
            let _ = probe_verity(&region, 0, 4096, u64::from(round));
        }
    }
}
