//! Finding where a file's bytes are in a FAT file system, read-only, so they can be
//! rewritten in place (as GRUB's `save_env` rewrites its environment block).
//!
//! Follows the Microsoft FAT specification ("FAT: General Overview of On-Disk
//! Format", 1.03): the BIOS parameter block of sector 0 (field offsets below), the
//! FAT type from the cluster count alone, FAT12/16/32 entries, 32-byte directory
//! entries with long-name (VFAT) entries checked against their short entry's
//! checksum. Names are compared ignoring ASCII case, as FAT does for ASCII (the
//! paths looked up here are ASCII).
//!
//! Everything read is untrusted: geometry is range-checked, cluster numbers must be
//! data clusters, chains are bounded (a loop is an error, not a hang) and a directory
//! is read only up to the 65536 entries the specification allows.
//! Left out: writing anything (the FAT, directory entries and timestamps are never
//! changed), the FAT32 FSInfo sector, non-ASCII case folding, and the OEM code page
//! of short names (non-ASCII bytes of a short name never match).

use std::io;

use abforge_partitions::gpt::ReadAt;

// BIOS parameter block (sector 0) field offsets.
const BPB_BYTES_PER_SECTOR: usize = 11;
const BPB_SECTORS_PER_CLUSTER: usize = 13;
const BPB_RESERVED_SECTORS: usize = 14;
const BPB_FAT_COUNT: usize = 16;
const BPB_ROOT_ENTRIES: usize = 17;
const BPB_TOTAL_SECTORS_16: usize = 19;
const BPB_FAT_SIZE_16: usize = 22;
const BPB_TOTAL_SECTORS_32: usize = 32;
const BPB_FAT_SIZE_32: usize = 36;
const BPB_ROOT_CLUSTER: usize = 44;
const BOOT_SIGNATURE_AT: usize = 510;

// Directory entry field offsets and values.
const DIR_ENTRY_SIZE: usize = 32;
const DIR_ATTRIBUTES: usize = 11;
const DIR_FIRST_CLUSTER_HIGH: usize = 20;
const DIR_FIRST_CLUSTER_LOW: usize = 26;
const DIR_FILE_SIZE: usize = 28;
const ATTR_VOLUME_ID: u8 = 0x08;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_LONG_NAME: u8 = 0x0F;
const ATTR_LONG_NAME_MASK: u8 = 0x3F;
const ENTRY_END: u8 = 0x00;
const ENTRY_DELETED: u8 = 0xE5;
/// A short name starting with byte 0xE5 is stored with 0x05.
const ENTRY_KANJI_E5: u8 = 0x05;
const LFN_LAST: u8 = 0x40;
const LFN_ORDER_MASK: u8 = 0x1F;
const LFN_CHECKSUM: usize = 13;
/// Where a long-name entry keeps its 13 UTF-16 units: (offset, units).
const LFN_UNIT_RUNS: [(usize, usize); 3] = [(1, 5), (14, 6), (28, 2)];
/// The specification's limit on a directory: 65536 entries.
const MAX_DIR_BYTES: u64 = 65536 * 32;
/// The smallest data cluster number.
const FIRST_CLUSTER: u32 = 2;

/// Why a FAT volume cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FatReadError {
    #[error("not a usable FAT file system: {0}")]
    Corrupt(String),
    #[error("cannot read the FAT file system at byte {offset} of the disk: {source}")]
    Io {
        offset: u64,
        #[source]
        source: io::Error,
    },
}

fn corrupt(message: impl Into<String>) -> FatReadError {
    FatReadError::Corrupt(message.into())
}

/// The FAT variant, by cluster count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatKind {
    Fat12,
    Fat16,
    Fat32,
}

/// A directory entry found by [`FatVolume::find`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FatEntry {
    pub is_dir: bool,
    /// 0 for an empty file.
    pub first_cluster: u32,
    pub size: u32,
}

/// A run of a file's bytes: `len` bytes at byte `disk_offset` of the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub disk_offset: u64,
    pub len: u64,
}

/// A FAT file system at byte `base` of a disk.
pub struct FatVolume<'a> {
    disk: &'a dyn ReadAt,
    base: u64,
    kind: FatKind,
    bytes_per_sector: u64,
    cluster_size: u64,
    /// Byte offset of the first FAT within the volume.
    fat_offset: u64,
    /// FAT12/16: the fixed root directory (offset, bytes) within the volume.
    root_region: (u64, u64),
    /// FAT32: the root directory's first cluster.
    root_cluster: u32,
    /// Byte offset of cluster 2 within the volume.
    data_offset: u64,
    clusters: u32,
}

fn le16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

impl<'a> FatVolume<'a> {
    /// Reads and checks the boot sector of the volume at byte `base` of `disk`, which
    /// must fit in the `len` bytes of its partition.
    pub fn open(disk: &'a dyn ReadAt, base: u64, len: u64) -> Result<FatVolume<'a>, FatReadError> {
        let mut boot = [0u8; 512];
        disk.read_exact_at(&mut boot, base)
            .map_err(|source| FatReadError::Io { offset: base, source })?;
        if boot[BOOT_SIGNATURE_AT..BOOT_SIGNATURE_AT + 2] != [0x55, 0xAA] {
            return Err(corrupt("the boot sector has no 55 AA signature"));
        }
        let bytes_per_sector = u64::from(le16(&boot, BPB_BYTES_PER_SECTOR));
        if ![512, 1024, 2048, 4096].contains(&bytes_per_sector) {
            return Err(corrupt(format!("{bytes_per_sector} bytes per sector")));
        }
        let sectors_per_cluster = boot[BPB_SECTORS_PER_CLUSTER];
        if !sectors_per_cluster.is_power_of_two() {
            return Err(corrupt(format!("{sectors_per_cluster} sectors per cluster")));
        }
        let reserved = u64::from(le16(&boot, BPB_RESERVED_SECTORS));
        let fat_count = u64::from(boot[BPB_FAT_COUNT]);
        if reserved == 0 || fat_count == 0 {
            return Err(corrupt("no reserved sector or no FAT"));
        }
        let root_entries = u64::from(le16(&boot, BPB_ROOT_ENTRIES));
        let total_sectors = match le16(&boot, BPB_TOTAL_SECTORS_16) {
            0 => u64::from(le32(&boot, BPB_TOTAL_SECTORS_32)),
            n => u64::from(n),
        };
        let fat_sectors = match le16(&boot, BPB_FAT_SIZE_16) {
            0 => u64::from(le32(&boot, BPB_FAT_SIZE_32)),
            n => u64::from(n),
        };
        // All factors are at most 32 bits wide, so these products fit in u64.
        let root_sectors = (root_entries * DIR_ENTRY_SIZE as u64).div_ceil(bytes_per_sector);
        let first_data_sector = reserved + fat_count * fat_sectors + root_sectors;
        let data_sectors = total_sectors.checked_sub(first_data_sector).ok_or_else(|| {
            corrupt(format!("its {total_sectors} sectors do not hold its FATs and root directory"))
        })?;
        let clusters = u32::try_from(data_sectors / u64::from(sectors_per_cluster))
            .map_err(|_| corrupt("more clusters than FAT32 can number"))?;
        let kind = match clusters {
            0..4085 => FatKind::Fat12,
            4085..65525 => FatKind::Fat16,
            _ => FatKind::Fat32,
        };
        let volume_bytes = total_sectors * bytes_per_sector;
        if volume_bytes > len {
            return Err(corrupt(format!(
                "it claims {volume_bytes} bytes, more than its {len}-byte partition"
            )));
        }
        let entry_bits: u64 = match kind {
            FatKind::Fat12 => 12,
            FatKind::Fat16 => 16,
            FatKind::Fat32 => 32,
        };
        if fat_sectors * bytes_per_sector * 8 < (u64::from(clusters) + 2) * entry_bits {
            return Err(corrupt(format!(
                "a FAT of {fat_sectors} sectors cannot map {clusters} clusters"
            )));
        }
        let root_cluster = le32(&boot, BPB_ROOT_CLUSTER);
        match kind {
            FatKind::Fat32 if root_entries != 0 => {
                return Err(corrupt("a FAT32 volume with a fixed root directory"));
            }
            FatKind::Fat12 | FatKind::Fat16 if root_entries == 0 => {
                return Err(corrupt("a FAT12/16 volume without a root directory"));
            }
            _ => {}
        }
        let volume = FatVolume {
            disk,
            base,
            kind,
            bytes_per_sector,
            cluster_size: bytes_per_sector * u64::from(sectors_per_cluster),
            fat_offset: reserved * bytes_per_sector,
            root_region: (
                (reserved + fat_count * fat_sectors) * bytes_per_sector,
                root_entries * DIR_ENTRY_SIZE as u64,
            ),
            root_cluster,
            data_offset: first_data_sector * bytes_per_sector,
            clusters,
        };
        if kind == FatKind::Fat32 && !volume.is_data_cluster(root_cluster) {
            return Err(corrupt(format!("the root directory starts at cluster {root_cluster}")));
        }
        Ok(volume)
    }

    pub fn kind(&self) -> FatKind {
        self.kind
    }

    pub fn cluster_size(&self) -> u64 {
        self.cluster_size
    }

    fn read(&self, buf: &mut [u8], volume_offset: u64) -> Result<(), FatReadError> {
        let offset = self
            .base
            .checked_add(volume_offset)
            .ok_or_else(|| corrupt("an offset past 2^64 bytes"))?;
        self.disk.read_exact_at(buf, offset).map_err(|source| FatReadError::Io { offset, source })
    }

    fn is_data_cluster(&self, cluster: u32) -> bool {
        cluster >= FIRST_CLUSTER && u64::from(cluster) < u64::from(self.clusters) + 2
    }

    /// The byte offset of data cluster `cluster` within the volume (checked by the caller).
    fn cluster_offset(&self, cluster: u32) -> u64 {
        // cluster - 2 < clusters, so this stays within the volume checked at open.
        self.data_offset + u64::from(cluster - FIRST_CLUSTER) * self.cluster_size
    }

    /// The cluster after `cluster` in its chain, or `None` at the end of the chain.
    fn next_cluster(&self, cluster: u32) -> Result<Option<u32>, FatReadError> {
        let n = u64::from(cluster);
        let (at, end_of_chain, bad) = match self.kind {
            FatKind::Fat12 => (n + n / 2, 0xFF8, 0xFF7),
            FatKind::Fat16 => (n * 2, 0xFFF8, 0xFFF7),
            FatKind::Fat32 => (n * 4, 0x0FFF_FFF8, 0x0FFF_FFF7),
        };
        let mut raw = [0u8; 4];
        let width = if self.kind == FatKind::Fat32 { 4 } else { 2 };
        self.read(&mut raw[..width], self.fat_offset + at)?;
        let word = u32::from_le_bytes(raw);
        let value = match self.kind {
            // A FAT12 entry is the high 12 bits of its 16-bit word for odd clusters.
            FatKind::Fat12 if cluster % 2 == 1 => word >> 4,
            FatKind::Fat12 => word & 0xFFF,
            FatKind::Fat16 => word,
            FatKind::Fat32 => word & 0x0FFF_FFFF,
        };
        if value >= end_of_chain {
            Ok(None)
        } else if value == bad {
            Err(corrupt(format!("cluster {cluster} is marked bad")))
        } else if self.is_data_cluster(value) {
            Ok(Some(value))
        } else {
            Err(corrupt(format!("the FAT entry of cluster {cluster} is {value:#x}")))
        }
    }

    /// The first `count` clusters of the chain starting at `first`; fewer if the
    /// chain ends before (the caller decides whether that is an error).
    fn chain(&self, first: u32, count: u64) -> Result<Vec<u32>, FatReadError> {
        if !self.is_data_cluster(first) {
            return Err(corrupt(format!("a chain starts at cluster {first}")));
        }
        let mut clusters = vec![first];
        let mut current = first;
        // `count` is bounded by the caller (a file size or the directory limit).
        while (clusters.len() as u64) < count {
            match self.next_cluster(current)? {
                Some(next) => {
                    clusters.push(next);
                    current = next;
                }
                None => break,
            }
        }
        Ok(clusters)
    }

    /// The bytes of a directory: the fixed root region, or a cluster chain.
    fn read_dir(&self, first_cluster: Option<u32>) -> Result<Vec<u8>, FatReadError> {
        let Some(first) = first_cluster else {
            let (offset, len) = self.root_region;
            // At most 65535 entries of 32 bytes: 2 MiB.
            let mut bytes = vec![0u8; crate::container::idx(len)];
            self.read(&mut bytes, offset)?;
            return Ok(bytes);
        };
        let limit = MAX_DIR_BYTES.div_ceil(self.cluster_size);
        let clusters = self.chain(first, limit + 1)?;
        if clusters.len() as u64 > limit {
            return Err(corrupt(format!(
                "the directory at cluster {first} is longer than 65536 entries (or its chain loops)"
            )));
        }
        // clusters.len() * cluster_size ≤ MAX_DIR_BYTES + a cluster: a few MiB.
        let mut bytes = vec![0u8; crate::container::idx(clusters.len() as u64 * self.cluster_size)];
        for (chunk, &cluster) in
            bytes.chunks_exact_mut(crate::container::idx(self.cluster_size)).zip(&clusters)
        {
            self.read(chunk, self.cluster_offset(cluster))?;
        }
        Ok(bytes)
    }

    /// Looks up `path` (`/`-separated, absolute or not); `None` when a component
    /// does not exist or a non-final component is not a directory.
    pub fn find(&self, path: &str) -> Result<Option<FatEntry>, FatReadError> {
        let mut dir: Option<u32> =
            if self.kind == FatKind::Fat32 { Some(self.root_cluster) } else { None };
        let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for (index, component) in components.iter().enumerate() {
            let entries = self.read_dir(dir)?;
            let Some(entry) = lookup(&entries, component, self.kind) else {
                return Ok(None);
            };
            if index + 1 == components.len() {
                return Ok(Some(entry));
            }
            if !entry.is_dir {
                return Ok(None);
            }
            if !self.is_data_cluster(entry.first_cluster) {
                return Err(corrupt(format!(
                    "directory '{component}' starts at cluster {}",
                    entry.first_cluster
                )));
            }
            dir = Some(entry.first_cluster);
        }
        Ok(None)
    }

    /// Where the `size` bytes of a file are on the disk, in file order; contiguous
    /// clusters are merged into one extent.
    pub fn file_extents(&self, entry: &FatEntry) -> Result<Vec<Extent>, FatReadError> {
        let size = u64::from(entry.size);
        if size == 0 {
            return Ok(Vec::new());
        }
        let needed = size.div_ceil(self.cluster_size);
        let clusters = self.chain(entry.first_cluster, needed)?;
        if (clusters.len() as u64) < needed {
            return Err(corrupt(format!(
                "a {size}-byte file has a chain of {} clusters of {} bytes",
                clusters.len(),
                self.cluster_size
            )));
        }
        let mut extents: Vec<Extent> = Vec::new();
        let mut remaining = size;
        for cluster in clusters {
            let len = remaining.min(self.cluster_size);
            remaining -= len;
            let disk_offset = self
                .base
                .checked_add(self.cluster_offset(cluster))
                .ok_or_else(|| corrupt("an offset past 2^64 bytes"))?;
            match extents.last_mut() {
                Some(last) if last.disk_offset + last.len == disk_offset => last.len += len,
                _ => extents.push(Extent { disk_offset, len }),
            }
        }
        Ok(extents)
    }

    /// The sector size, which every extent of a file starts aligned to.
    pub fn bytes_per_sector(&self) -> u64 {
        self.bytes_per_sector
    }
}

/// The SFN checksum a long name carries (FAT specification, "ChkSum").
fn short_name_checksum(name: &[u8]) -> u8 {
    // Rotate right by one bit, then add the next byte.
    name.iter().fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// A short (8.3) name as text: `NAME.EXT`, padding removed.
fn short_name(raw: &[u8]) -> Vec<u8> {
    let mut base: Vec<u8> = raw[..8].to_vec();
    if base[0] == ENTRY_KANJI_E5 {
        base[0] = ENTRY_DELETED;
    }
    let trim = |bytes: &[u8]| -> Vec<u8> {
        let end = bytes.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
        bytes[..end].to_vec()
    };
    let mut name = trim(&base);
    let ext = trim(&raw[8..11]);
    if !ext.is_empty() {
        name.push(b'.');
        name.extend_from_slice(&ext);
    }
    name
}

/// A long name being collected from its entries (which come last part first).
struct LongName {
    checksum: u8,
    /// The order number expected next (counting down to 1).
    expected: u8,
    /// 13 units per entry, indexed by order - 1.
    units: Vec<u16>,
}

/// Finds `name` among directory entries (long or short name, ASCII case ignored).
fn lookup(entries: &[u8], name: &str, kind: FatKind) -> Option<FatEntry> {
    let mut long: Option<LongName> = None;
    for entry in entries.chunks_exact(DIR_ENTRY_SIZE) {
        let first = entry[0];
        if first == ENTRY_END {
            break;
        }
        if first == ENTRY_DELETED {
            long = None;
            continue;
        }
        let attributes = entry[DIR_ATTRIBUTES];
        if attributes & ATTR_LONG_NAME_MASK == ATTR_LONG_NAME {
            let order = first & LFN_ORDER_MASK;
            if first & LFN_LAST != 0 && order >= 1 {
                long = Some(LongName {
                    checksum: entry[LFN_CHECKSUM],
                    expected: order,
                    units: vec![0xFFFF; usize::from(order) * 13],
                });
            }
            match &mut long {
                Some(part)
                    if order >= 1
                        && part.expected == order
                        && part.checksum == entry[LFN_CHECKSUM] =>
                {
                    let mut at = usize::from(order - 1) * 13;
                    for (offset, count) in LFN_UNIT_RUNS {
                        for unit in 0..count {
                            part.units[at] = le16(entry, offset + unit * 2);
                            at += 1;
                        }
                    }
                    part.expected -= 1;
                }
                _ => long = None,
            }
            continue;
        }
        let long_name = long.take().filter(|part| {
            part.expected == 0 && part.checksum == short_name_checksum(&entry[..11])
        });
        if attributes & ATTR_VOLUME_ID != 0 {
            continue;
        }
        let matches_long = long_name.is_some_and(|part| {
            let end = part.units.iter().position(|&u| u == 0).unwrap_or(part.units.len());
            String::from_utf16(&part.units[..end]).is_ok_and(|text| text.eq_ignore_ascii_case(name))
        });
        if matches_long || short_name(&entry[..11]).eq_ignore_ascii_case(name.as_bytes()) {
            let high = if kind == FatKind::Fat32 { le16(entry, DIR_FIRST_CLUSTER_HIGH) } else { 0 };
            return Some(FatEntry {
                is_dir: attributes & ATTR_DIRECTORY != 0,
                first_cluster: (u32::from(high) << 16)
                    | u32::from(le16(entry, DIR_FIRST_CLUSTER_LOW)),
                size: le32(entry, DIR_FILE_SIZE),
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use abforge_partitions::fat::{FatOptions, write_fat};
    use abforge_partitions::region::FileRegion;
    use abforge_partitions::tree::{Content, FileTree, Metadata, Node, NodeKind, Timestamp};

    fn meta() -> Metadata {
        Metadata::new(0o755, 0, 0, Timestamp::from_seconds(1_700_000_000))
    }

    fn file(bytes: Vec<u8>) -> Node {
        Node { meta: meta(), kind: NodeKind::File(Content::Bytes(bytes.into())) }
    }

    /// A volume of `size` bytes at byte 4096 of a file, with a few files.
    fn volume(size: u64) -> (std::fs::File, Vec<(String, Vec<u8>)>) {
        let mut tree = FileTree::new(meta());
        let files: Vec<(String, Vec<u8>)> = vec![
            ("EFI/BOOT/BOOTX64.EFI".into(), (0..70_000u32).map(|i| (i % 251) as u8).collect()),
            ("EFI/abforge/grubenv".into(), vec![b'#'; 1024]),
            ("EFI/abforge/A much longer name than 8.3.cfg".into(), b"long".to_vec()),
            ("empty".into(), Vec::new()),
        ];
        for (path, bytes) in &files {
            let parts: Vec<&[u8]> = path.split('/').map(str::as_bytes).collect();
            let dir = tree.make_dirs(&parts[..parts.len() - 1], &meta()).unwrap();
            tree.add(dir, parts[parts.len() - 1], file(bytes.clone())).unwrap();
        }
        let disk = tempfile::tempfile().unwrap();
        disk.set_len(4096 + size).unwrap();
        let options = FatOptions {
            volume_id: 0x1234_5678,
            label: "ESP".into(),
            timestamp: Timestamp::from_seconds(1_700_000_000),
            hidden_sectors: 8,
        };
        write_fat(&tree, &options, FileRegion::new(&disk, 4096, size)).unwrap();
        (disk, files)
    }

    fn read_extents(disk: &std::fs::File, extents: &[Extent]) -> Vec<u8> {
        let mut out = Vec::new();
        for extent in extents {
            let mut buf = vec![0u8; crate::container::idx(extent.len)];
            ReadAt::read_exact_at(disk, &mut buf, extent.disk_offset).unwrap();
            out.extend_from_slice(&buf);
        }
        out
    }

    #[test]
    fn finds_files_in_fat12_fat16_and_fat32() {
        for (size, kind) in
            [(1 << 20, FatKind::Fat12), (8 << 20, FatKind::Fat16), (80 << 20, FatKind::Fat32)]
        {
            let (disk, files) = volume(size);
            let fat = FatVolume::open(&disk, 4096, size).unwrap();
            assert_eq!(fat.kind(), kind);
            for (path, bytes) in &files {
                let entry = fat.find(path).unwrap().unwrap_or_else(|| panic!("{path} in {kind:?}"));
                assert!(!entry.is_dir);
                assert_eq!(entry.size as usize, bytes.len());
                let extents = fat.file_extents(&entry).unwrap();
                assert_eq!(read_extents(&disk, &extents), *bytes, "{path} in {kind:?}");
                for extent in &extents {
                    assert_eq!(extent.disk_offset % fat.bytes_per_sector(), 0);
                }
            }
            // Case is ignored, a leading slash is allowed, directories are found.
            assert!(fat.find("/efi/ABFORGE/GrubEnv").unwrap().is_some());
            assert!(fat.find("/EFI/abforge").unwrap().unwrap().is_dir);
            assert_eq!(fat.find("/EFI/abforge/missing").unwrap(), None);
            assert_eq!(fat.find("/EFI/abforge/grubenv/below").unwrap(), None);
            assert_eq!(fat.find("/nothing/grubenv").unwrap(), None);
        }
    }

    #[test]
    fn damaged_volumes_are_errors_not_panics() {
        let size = 8 << 20;
        let (disk, _) = volume(size);
        let mut image = vec![0u8; 4096 + crate::container::idx(size)];
        ReadAt::read_exact_at(&disk, &mut image, 0).unwrap();
        assert!(FatVolume::open(&image, 4096, size - 512 * 1024).is_err(), "partition too small");
        let mut positions: Vec<usize> = (4096..4096 + 64).collect();
        positions.push(4096 + 510);
        for position in positions {
            let original = image[position];
            for value in [0x00, 0xff, 0x01, 0x80] {
                image[position] = value;
                if let Ok(fat) = FatVolume::open(&image, 4096, size)
                    && let Ok(Some(entry)) = fat.find("/EFI/abforge/grubenv")
                {
                    let _ = fat.file_extents(&entry);
                }
            }
            image[position] = original;
        }
        // A FAT16 chain that loops on itself: every FAT entry points at cluster 2.
        let fat = FatVolume::open(&image, 4096, size).unwrap();
        let fat_start = 4096 + crate::container::idx(fat.fat_offset);
        for entry in 2..64 {
            image[fat_start + entry * 2..fat_start + entry * 2 + 2]
                .copy_from_slice(&2u16.to_le_bytes());
        }
        let fat = FatVolume::open(&image, 4096, size).unwrap();
        let err = fat.find("/EFI/BOOT/BOOTX64.EFI").unwrap_err();
        assert!(err.to_string().contains("loops"), "{err}");
    }

    #[test]
    fn short_names_drop_their_padding() {
        assert_eq!(short_name(b"GRUBENV    "), b"GRUBENV");
        assert_eq!(short_name(b"BOOTX64 EFI"), b"BOOTX64.EFI");
        assert_eq!(short_name(b"\x05BC     TXT"), b"\xe5BC.TXT");
    }
}
