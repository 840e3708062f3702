//! The 256-byte ext4 inode with a 32-byte extra part (formats.md §3.6).
//!
//! Written fields: mode, owners (with the high halves), size, the four times with
//! nanoseconds and epoch bits, link count, i_blocks in 512-byte units (huge_file
//! high half), flags, i_block, the xattr block and the in-inode xattr area.
//! i_generation, i_version and the project id stay 0.

use super::checksum;
use super::le::{bits32_48, hi16, hi32, lo16, lo32, put_u16, put_u32};
use super::{EXTRA_ISIZE, INODE_SIZE};
use crate::tree::Timestamp;

pub(crate) const S_IFIFO: u16 = 0o010000;
pub(crate) const S_IFCHR: u16 = 0o020000;
pub(crate) const S_IFDIR: u16 = 0o040000;
pub(crate) const S_IFBLK: u16 = 0o060000;
pub(crate) const S_IFREG: u16 = 0o100000;
pub(crate) const S_IFLNK: u16 = 0o120000;
pub(crate) const S_IFSOCK: u16 = 0o140000;

pub(crate) const EXTENTS_FL: u32 = 0x80000;

/// Offset of the in-inode extended attribute area (128 + i_extra_isize).
pub(crate) const XATTR_AREA_OFFSET: usize = 128 + EXTRA_ISIZE as usize;
pub(crate) const XATTR_AREA_SIZE: usize = INODE_SIZE - XATTR_AREA_OFFSET;

#[derive(Clone, Debug)]
pub(crate) struct Inode {
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub links: u16,
    /// Blocks held (data, extent tree, xattr block), in file-system blocks.
    pub fs_blocks: u64,
    pub flags: u32,
    pub i_block: [u8; 60],
    pub xattr_block: u64,
    pub time: Timestamp,
    /// The in-inode xattr area (magic included), or all zeros.
    pub xattr_area: [u8; XATTR_AREA_SIZE],
}

impl Inode {
    pub(crate) fn new(mode: u16, uid: u32, gid: u32, time: Timestamp) -> Inode {
        Inode {
            mode,
            uid,
            gid,
            size: 0,
            links: 1,
            fs_blocks: 0,
            flags: 0,
            i_block: [0; 60],
            xattr_block: 0,
            time,
            xattr_area: [0; XATTR_AREA_SIZE],
        }
    }

    /// The on-disk inode number `ino`, checksummed with `fs_seed`.
    pub(crate) fn encode(&self, ino: u32, fs_seed: u32) -> [u8; INODE_SIZE] {
        let mut b = [0u8; INODE_SIZE];
        put_u16(&mut b, 0x00, self.mode);
        put_u16(&mut b, 0x02, lo16(self.uid));
        put_u32(&mut b, 0x04, lo32(self.size));
        let (seconds, extra) = encode_time(self.time);
        for offset in [0x08, 0x0C, 0x10, 0x90] {
            put_u32(&mut b, offset, seconds);
        }
        for offset in [0x84, 0x88, 0x8C, 0x94] {
            put_u32(&mut b, offset, extra);
        }
        put_u16(&mut b, 0x18, lo16(self.gid));
        put_u16(&mut b, 0x1A, self.links);
        // i_blocks counts 512-byte sectors: 8 per 4 KiB block; 48 bits with huge_file.
        let sectors = self.fs_blocks.saturating_mul(8);
        put_u32(&mut b, 0x1C, lo32(sectors));
        put_u32(&mut b, 0x20, self.flags);
        b[0x28..0x64].copy_from_slice(&self.i_block);
        put_u32(&mut b, 0x68, lo32(self.xattr_block));
        put_u32(&mut b, 0x6C, hi32(self.size));
        put_u16(&mut b, 0x74, bits32_48(sectors));
        put_u16(&mut b, 0x76, bits32_48(self.xattr_block));
        put_u16(&mut b, 0x78, hi16(self.uid));
        put_u16(&mut b, 0x7A, hi16(self.gid));
        put_u16(&mut b, 0x80, EXTRA_ISIZE);
        b[XATTR_AREA_OFFSET..].copy_from_slice(&self.xattr_area);
        let csum = checksum::raw(checksum::inode_seed(fs_seed, ino, 0), &b);
        put_u16(&mut b, 0x7C, lo16(csum));
        put_u16(&mut b, 0x82, hi16(csum));
        b
    }
}

/// The 32-bit seconds field and the `_extra` field ((nanoseconds << 2) | epoch) of a
/// time, with the time clamped to what ext4 can store (1901 to 2446).
pub(crate) fn encode_time(time: Timestamp) -> (u32, u32) {
    let min = i64::from(i32::MIN);
    let max = i64::from(i32::MAX) + (3 << 32);
    let seconds = time.seconds.clamp(min, max);
    // The low 32 bits are stored as a signed value; the epoch bits count how many
    // times 2^32 must be added to it.
    let low = lo32(u64::from_le_bytes(seconds.to_le_bytes()));
    let low_signed = i64::from(i32::from_le_bytes(low.to_le_bytes()));
    let epoch = u32::try_from((seconds - low_signed) >> 32).unwrap_or(0) & 3;
    let nanos = time.nanoseconds.min(999_999_999);
    (low, (nanos << 2) | epoch)
}

/// i_block of a character or block device (old encoding when both numbers are below 256).
pub(crate) fn device_i_block(major: u32, minor: u32) -> [u8; 60] {
    let mut i_block = [0u8; 60];
    if major < 256 && minor < 256 {
        put_u32(&mut i_block, 0, (major << 8) | minor);
    } else {
        let encoded = (minor & 0xFF) | ((major & 0xFFF) << 8) | ((minor & !0xFF) << 12);
        put_u32(&mut i_block, 4, encoded);
    }
    i_block
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_carry_nanoseconds_and_epoch() {
        assert_eq!(encode_time(Timestamp { seconds: 1, nanoseconds: 5 }), (1, 20));
        // 2040-01-01 is past 2^31: low word wraps, epoch 1.
        let t = Timestamp { seconds: 2_208_988_800, nanoseconds: 0 };
        assert_eq!(encode_time(t), (2_208_988_800u32, 1));
        // Before 1970: negative low word, epoch 0.
        let t = Timestamp { seconds: -1, nanoseconds: 0 };
        assert_eq!(encode_time(t), (u32::MAX, 0));
    }

    #[test]
    fn devices_use_old_and_new_encodings() {
        assert_eq!(&device_i_block(8, 1)[..8], &[1, 8, 0, 0, 0, 0, 0, 0]);
        // major 300, minor 70000 (0x11170): (0x70) | (300 << 8) | (0x11100 << 12)
        let b = device_i_block(300, 70000);
        assert_eq!(&b[..4], &[0, 0, 0, 0]);
        let expect: u32 = 0x70 | (300 << 8) | (0x11100 << 12);
        assert_eq!(&b[4..8], &expect.to_le_bytes());
    }
}

#[cfg(test)]
mod known_image {
    use super::*;
    use crate::ext4::extent::{self, Extent};

    /// The journal inode of `E2FSPROGS_FAKE_TIME=1700000000 mke2fs -t ext4 -b 4096 -I 256
    /// -O ^resize_inode -U 0b0ab1d5-3c9f-4e46-9a39-2ad2b1a7c0de j.img 64M` (e2fsprogs
    /// 1.47.0), whose checksum debugfs shows as 0x184ac633.
    #[test]
    fn journal_inode_checksum_matches_mke2fs() {
        let uuid: crate::Guid = "0b0ab1d5-3c9f-4e46-9a39-2ad2b1a7c0de".parse().unwrap();
        let seed = crate::ext4::checksum::fs_seed(&uuid.to_rfc_bytes());
        let extents = [
            Extent { logical: 0, len: 10, physical: 8 },
            Extent { logical: 10, len: 15, physical: 19 },
            Extent { logical: 25, len: 999, physical: 1058 },
        ];
        let (root, blocks) = extent::build(&extents, &[], 8, seed);
        assert!(blocks.is_empty());
        let mut inode = Inode::new(S_IFREG | 0o600, 0, 0, Timestamp::from_seconds(0x6553_f100));
        inode.size = 4 << 20;
        inode.fs_blocks = 1024;
        inode.flags = EXTENTS_FL;
        inode.i_block = root;
        let bytes = inode.encode(8, seed);
        let csum = u32::from(crate::ext4::le::get_u16(&bytes, 0x7C))
            | (u32::from(crate::ext4::le::get_u16(&bytes, 0x82)) << 16);
        assert_eq!(csum, 0x184a_c633);
    }
}
