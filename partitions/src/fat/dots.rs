//! Repairs the "." and ".." entries fatfs 0.3.6 writes into new directories.
//!
//! fatfs (with long names enabled) writes a long-name entry before each of the
//! "." and ".." entries, so slot 0 of a directory is not ".", which `fsck.fat`
//! rejects ("Expected a valid '.' entry in this slot") and the FAT
//! specification forbids. It also points ".." at cluster 2 when the parent is
//! a FAT32 root, where the specification says 0. This pass walks the finished
//! volume's directories (from the boot sector, the FATs and the directory
//! entries, Microsoft FAT specification §4 and §6) and rewrites each directory
//! with "." and ".." first and the rest moved up two slots.
//!
//! Everything read here was written by fatfs a moment ago, but chains are still
//! bounded by the cluster count so a corrupt FAT cannot make the walk loop.

use super::{FatError, FatType};
use crate::region::FileRegion;

const ENTRY: usize = 32;
const ATTR_OFFSET: usize = 11;
const ATTR_LONG_NAME: u8 = 0x0F;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const DELETED: u8 = 0xE5;
const DOT: &[u8; 11] = b".          ";
const DOTDOT: &[u8; 11] = b"..         ";

struct Volume<'a> {
    region: FileRegion<'a>,
    fat_type: FatType,
    fat_offset: u64,
    cluster_size: u64,
    first_data: u64,
    clusters: u32,
    /// FAT12/16: the fixed root directory (offset, length); FAT32: its first cluster.
    root: Root,
}

enum Root {
    Fixed { offset: u64, len: u64 },
    Cluster(u32),
}

fn io(e: std::io::Error) -> FatError {
    FatError::Format(e)
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

impl<'a> Volume<'a> {
    fn open(region: FileRegion<'a>, fat_type: FatType, clusters: u32) -> Result<Self, FatError> {
        let mut boot = [0u8; 512];
        region.read_exact_at(&mut boot, 0).map_err(io)?;
        let sector = le16(&boot, 0x0B);
        let per_cluster = u64::from(boot[0x0D]);
        let reserved = le16(&boot, 0x0E);
        let fats = u64::from(boot[0x10]);
        let root_entries = le16(&boot, 0x11);
        let fat_sectors = match le16(&boot, 0x16) {
            0 => le32(&boot, 0x24),
            n => n,
        };
        let root_start = (reserved + fats * fat_sectors) * sector;
        let root_len = root_entries * 32;
        let root = match fat_type {
            FatType::Fat32 => Root::Cluster(u32::try_from(le32(&boot, 0x2C)).unwrap_or(0)),
            _ => Root::Fixed { offset: root_start, len: root_len },
        };
        Ok(Volume {
            region,
            fat_type,
            fat_offset: reserved * sector,
            cluster_size: per_cluster * sector,
            first_data: root_start + root_len.div_ceil(sector) * sector,
            clusters,
            root,
        })
    }

    fn next_cluster(&self, cluster: u32) -> Result<Option<u32>, FatError> {
        let n = u64::from(cluster);
        let (value, end) = match self.fat_type {
            FatType::Fat12 => {
                let mut b = [0u8; 2];
                self.region.read_exact_at(&mut b, self.fat_offset + n * 3 / 2).map_err(io)?;
                let pair = u16::from_le_bytes(b);
                let v = if cluster % 2 == 1 { pair >> 4 } else { pair & 0xFFF };
                (u32::from(v), 0xFF8)
            }
            FatType::Fat16 => {
                let mut b = [0u8; 2];
                self.region.read_exact_at(&mut b, self.fat_offset + n * 2).map_err(io)?;
                (u32::from(u16::from_le_bytes(b)), 0xFFF8)
            }
            FatType::Fat32 => {
                let mut b = [0u8; 4];
                self.region.read_exact_at(&mut b, self.fat_offset + n * 4).map_err(io)?;
                (u32::from_le_bytes(b) & 0x0FFF_FFFF, 0x0FFF_FFF8)
            }
        };
        Ok((value >= 2 && value < end).then_some(value))
    }

    fn in_range(&self, cluster: u32) -> bool {
        cluster >= 2 && u64::from(cluster) < u64::from(self.clusters) + 2
    }

    /// Byte ranges of a cluster chain.
    fn chain(&self, first: u32) -> Result<Vec<(u64, u64)>, FatError> {
        let mut out = Vec::new();
        let mut cluster = Some(first);
        while let Some(c) = cluster {
            if !self.in_range(c) || out.len() > self.clusters as usize {
                return Err(FatError::Format(std::io::Error::other(format!(
                    "directory cluster chain from {first} is broken at {c}"
                ))));
            }
            out.push((self.first_data + u64::from(c - 2) * self.cluster_size, self.cluster_size));
            cluster = self.next_cluster(c)?;
        }
        Ok(out)
    }

    fn read(&self, ranges: &[(u64, u64)]) -> Result<Vec<u8>, FatError> {
        let mut out = Vec::new();
        for &(offset, len) in ranges {
            let start = out.len();
            out.resize(
                start
                    + usize::try_from(len)
                        .map_err(|_| io(std::io::Error::other("huge cluster")))?,
                0,
            );
            self.region.read_exact_at(&mut out[start..], offset).map_err(io)?;
        }
        Ok(out)
    }

    fn write(&self, ranges: &[(u64, u64)], data: &[u8]) -> Result<(), FatError> {
        let mut done = 0usize;
        for &(offset, len) in ranges {
            let len =
                usize::try_from(len).map_err(|_| io(std::io::Error::other("huge cluster")))?;
            self.region.write_all_at(&data[done..done + len], offset).map_err(io)?;
            done += len;
        }
        Ok(())
    }
}

/// Subdirectories (first clusters) listed in a directory's entries.
fn subdirectories(entries: &[u8]) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in entries.chunks_exact(ENTRY) {
        match entry[0] {
            0 => break,
            DELETED => continue,
            _ => {}
        }
        let attr = entry[ATTR_OFFSET];
        if attr == ATTR_LONG_NAME || attr & ATTR_VOLUME_ID != 0 || attr & ATTR_DIRECTORY == 0 {
            continue;
        }
        if &entry[..11] == DOT || &entry[..11] == DOTDOT {
            continue;
        }
        let cluster = (le16(entry, 20) << 16) | le16(entry, 26);
        if let Ok(cluster) = u32::try_from(cluster) {
            out.push(cluster);
        }
    }
    out
}

/// Puts "." and ".." in slots 0 and 1 of every directory below the root.
pub fn fix_dot_entries(
    region: FileRegion,
    fat_type: FatType,
    clusters: u32,
) -> Result<(), FatError> {
    let volume = Volume::open(region, fat_type, clusters)?;
    let (root_ranges, root_cluster) = match volume.root {
        Root::Fixed { offset, len } => (vec![(offset, len)], 0),
        Root::Cluster(c) => (volume.chain(c)?, c),
    };
    let mut pending = subdirectories(&volume.read(&root_ranges)?);
    let mut visited = 0usize;
    while let Some(dir) = pending.pop() {
        visited += 1;
        if visited > clusters as usize {
            break;
        }
        let ranges = volume.chain(dir)?;
        let mut data = volume.read(&ranges)?;
        pending.extend(subdirectories(&data));
        let name = |slot: usize| &data[slot * ENTRY..slot * ENTRY + 11];
        let attr = |slot: usize| data[slot * ENTRY + ATTR_OFFSET];
        let fatfs_layout = data.len() >= 4 * ENTRY
            && attr(0) == ATTR_LONG_NAME
            && name(1) == DOT
            && attr(2) == ATTR_LONG_NAME
            && name(3) == DOTDOT;
        if !fatfs_layout {
            continue;
        }
        // Drop the two long-name slots: "." and ".." move to 0 and 1, every
        // later entry up two slots, and the last two slots become free.
        let mut fixed = Vec::with_capacity(data.len());
        fixed.extend_from_slice(&data[ENTRY..2 * ENTRY]);
        fixed.extend_from_slice(&data[3 * ENTRY..]);
        fixed.resize(data.len(), 0);
        // ".." of a directory in the root points to cluster 0 (FAT32 included).
        let dotdot = &mut fixed[ENTRY..2 * ENTRY];
        if root_cluster != 0
            && ((le16(dotdot, 20) << 16) | le16(dotdot, 26)) == u64::from(root_cluster)
        {
            dotdot[20..22].fill(0);
            dotdot[26..28].fill(0);
        }
        data = fixed;
        volume.write(&ranges, &data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fat::{FatOptions, write_fat};
    use crate::tree::{Content, FileTree, Metadata, Node, NodeKind, Timestamp};
    use std::sync::Arc;

    #[test]
    fn dot_entries_come_first_and_dotdot_of_root_children_is_zero() {
        let meta = Metadata::default();
        let mut tree = FileTree::new(meta.clone());
        let file =
            Node { meta: meta.clone(), kind: NodeKind::File(Content::Bytes(Arc::from(&b"x"[..]))) };
        tree.put(b"EFI/BOOT/a long name.efi", file, &meta).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for size in [8u64 << 20, 192 << 20] {
            let f = std::fs::File::create_new(dir.path().join(size.to_string())).unwrap();
            f.set_len(size).unwrap();
            let region = FileRegion::new(&f, 0, size);
            let opts = FatOptions {
                volume_id: 1,
                label: String::new(),
                timestamp: Timestamp::from_seconds(0),
                hidden_sectors: 0,
            };
            let summary = write_fat(&tree, &opts, region).unwrap();
            let volume = Volume::open(region, summary.fat_type, summary.clusters).unwrap();
            let root_ranges = match volume.root {
                Root::Fixed { offset, len } => vec![(offset, len)],
                Root::Cluster(c) => volume.chain(c).unwrap(),
            };
            let efi = subdirectories(&volume.read(&root_ranges).unwrap());
            assert_eq!(efi.len(), 1);
            let efi_data = volume.read(&volume.chain(efi[0]).unwrap()).unwrap();
            let boot = subdirectories(&efi_data);
            assert_eq!(boot.len(), 1);
            let boot_data = volume.read(&volume.chain(boot[0]).unwrap()).unwrap();
            for (data, parent) in [(&efi_data, 0), (&boot_data, efi[0])] {
                assert_eq!(&data[..11], DOT);
                assert_eq!(&data[ENTRY..ENTRY + 11], DOTDOT);
                let dotdot = &data[ENTRY..2 * ENTRY];
                assert_eq!((le16(dotdot, 20) << 16) | le16(dotdot, 26), u64::from(parent));
            }
        }
    }
}
