//! GUID Partition Table: planning, writing and reading.
//!
//! Follows the UEFI specification 2.10, chapter 5 ("GUID Partition Table (GPT) Disk
//! Layout") for 512-byte logical sectors: a protective MBR in LBA 0, the primary
//! header in LBA 1 and its partition entry array from LBA 2, and a backup entry
//! array followed by the backup header in the last LBAs of the disk. CRC32 is the
//! standard IEEE CRC (`crc32fast`), over the entry array and over the header with
//! its CRC field zeroed.
//!
//! Supported subset: writing always uses 128 entries of 128 bytes (the size every
//! tool expects, 32 sectors per array), so the first usable LBA is 34. Reading
//! accepts any entry count and entry size the specification allows, within
//! bounds that keep allocation small (see [`read`]).
//!
//! Left out: 4096-byte logical sectors, hybrid MBRs, and repairing a damaged
//! table (the reader reports which copy it used; it never writes).

mod header;
mod mbr;
pub mod read;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::guid::Guid;

pub use header::{ENTRY_SIZE, HEADER_SIZE};
pub use mbr::protective_mbr;
pub use read::{GptCopy, GptReadReport, HeaderInfo, read_gpt, read_gpt_report};

/// Logical sector size this module reads and writes.
pub const SECTOR_SIZE: u64 = 512;
/// [`SECTOR_SIZE`] as a buffer length.
pub const SECTOR_BYTES: usize = 512;

/// Number of partition entries written.
pub const ENTRY_COUNT: u32 = 128;

/// Sectors taken by a written entry array: 128 entries x 128 bytes / 512.
pub const ENTRY_ARRAY_SECTORS: u64 = 32;

/// Longest partition name in UTF-16 code units (72 bytes).
pub const MAX_NAME_UNITS: usize = 36;

/// GPT partition attribute bits (UEFI §5.3.3 and the Discoverable Partitions
/// Specification for bits 59..63).
pub mod attributes {
    /// Bit 0: the platform needs the partition to function.
    pub const REQUIRED: u64 = 1 << 0;
    /// Bit 2: legacy BIOS bootable.
    pub const LEGACY_BIOS_BOOTABLE: u64 = 1 << 2;
    /// Bit 59: grow the file system to the partition size on first boot.
    pub const GROW_FS: u64 = 1 << 59;
    /// Bit 60: mount read-only (roots, verity and signature partitions).
    pub const READ_ONLY: u64 = 1 << 60;
    /// Bit 63: do not mount automatically.
    pub const NO_AUTO: u64 = 1 << 63;
}

/// Parses a GUID literal at compile time: a malformed constant is a build error.
const fn guid_const(text: &str) -> Guid {
    let t = text.as_bytes();
    assert!(t.len() == 36, "GUID literal must have 36 characters");
    let mut bytes = [0u8; 16];
    let mut i = 0;
    let mut out = 0;
    while i < 36 {
        if i == 8 || i == 13 || i == 18 || i == 23 {
            assert!(t[i] == b'-', "GUID literal needs dashes at 8, 13, 18, 23");
            i += 1;
            continue;
        }
        bytes[out] = hex_digit(t[i]) * 16 + hex_digit(t[i + 1]);
        out += 1;
        i += 2;
    }
    Guid::from_rfc_bytes(bytes)
}

const fn hex_digit(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("GUID literal has a non-hex digit"),
    }
}

/// Partition types known by name (Discoverable Partitions Specification, x86-64).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PartitionType {
    Esp,
    Root,
    RootVerity,
    RootVeritySig,
    Xbootldr,
    Var,
    Linux,
}

impl PartitionType {
    pub const ALL: [PartitionType; 7] = [
        PartitionType::Esp,
        PartitionType::Root,
        PartitionType::RootVerity,
        PartitionType::RootVeritySig,
        PartitionType::Xbootldr,
        PartitionType::Var,
        PartitionType::Linux,
    ];

    /// The manifest name (`esp`, `root`, `root-verity`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            PartitionType::Esp => "esp",
            PartitionType::Root => "root",
            PartitionType::RootVerity => "root-verity",
            PartitionType::RootVeritySig => "root-verity-sig",
            PartitionType::Xbootldr => "xbootldr",
            PartitionType::Var => "var",
            PartitionType::Linux => "linux",
        }
    }

    pub const fn guid(self) -> Guid {
        match self {
            PartitionType::Esp => guid_const("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
            PartitionType::Root => guid_const("4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
            PartitionType::RootVerity => guid_const("2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"),
            PartitionType::RootVeritySig => guid_const("41092b05-9fc8-4523-994f-2def0408b176"),
            PartitionType::Xbootldr => guid_const("bc13c2ff-59e6-4262-a352-b275fd6f7172"),
            PartitionType::Var => guid_const("4d21b016-b534-45c2-a9fb-5c16e091fd2d"),
            PartitionType::Linux => guid_const("0fc63daf-8483-4772-8e79-3d69d8477de4"),
        }
    }

    pub fn from_name(name: &str) -> Option<PartitionType> {
        PartitionType::ALL.into_iter().find(|t| t.name() == name)
    }

    pub fn from_guid(guid: Guid) -> Option<PartitionType> {
        PartitionType::ALL.into_iter().find(|t| t.guid() == guid)
    }
}

/// Names of the attribute bits that are set, for display (`read-only`, `no-auto`,
/// ...); other set bits are shown as `bit N`.
pub fn attribute_names(attributes: u64) -> Vec<String> {
    (0..64)
        .filter(|bit| attributes & (1u64 << bit) != 0)
        .map(|bit| match bit {
            0 => "required".to_string(),
            2 => "legacy-bios-bootable".to_string(),
            59 => "grow-fs".to_string(),
            60 => "read-only".to_string(),
            63 => "no-auto".to_string(),
            other => format!("bit {other}"),
        })
        .collect()
}

/// Reads bytes at absolute offsets of a disk: a raw file, or the virtual disk of a
/// container (VHDX) seen through its block table.
pub trait ReadAt {
    /// Fills `buf` from `offset`; an error if the disk ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).ok().filter(|&s| s <= self.len());
        let end = start.and_then(|s| s.checked_add(buf.len())).filter(|&e| e <= self.len());
        match (start, end) {
            (Some(start), Some(end)) => {
                buf.copy_from_slice(&self[start..end]);
                Ok(())
            }
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read of {} bytes at {offset} is past the end", buf.len()),
            )),
        }
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }
}

/// One partition of a layout.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PartitionEntry {
    pub type_guid: Guid,
    pub unique_guid: Guid,
    /// First sector of the partition.
    pub first_lba: u64,
    /// Last sector of the partition (inclusive).
    pub last_lba: u64,
    pub attributes: u64,
    /// At most 36 UTF-16 code units.
    pub name: String,
}

impl PartitionEntry {
    /// Size in bytes (0 if `last_lba < first_lba`).
    pub fn size_bytes(&self) -> u64 {
        self.last_lba
            .checked_sub(self.first_lba)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(SECTOR_SIZE))
            .unwrap_or(0)
    }

    /// Offset of the first byte in the disk (saturating for hostile values).
    pub fn offset_bytes(&self) -> u64 {
        self.first_lba.saturating_mul(SECTOR_SIZE)
    }
}

/// A whole partition table: what is written, and what the reader returns.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct GptLayout {
    pub disk_guid: Guid,
    /// Size of the disk in bytes, a multiple of [`SECTOR_SIZE`].
    pub disk_size_bytes: u64,
    /// Partitions in entry order (entry 1 first); at most 128 when writing.
    pub entries: Vec<PartitionEntry>,
}

/// Why a layout cannot be written, or a table cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("the disk size {size} bytes is not a multiple of the 512-byte sector")]
    DiskSizeUnaligned { size: u64 },
    #[error("the disk of {size} bytes is too small for a GPT (at least {min} bytes are needed)")]
    DiskTooSmall { size: u64, min: u64 },
    #[error("{count} partitions do not fit in a GPT of {max} entries")]
    TooManyPartitions { count: usize, max: u32 },
    #[error("partition {index} '{name}': its name has {units} UTF-16 units, at most 36 fit")]
    NameTooLong { index: usize, name: String, units: usize },
    #[error("partition {index} '{name}' has the nil type GUID, which marks an unused entry")]
    NilType { index: usize, name: String },
    #[error("partition {index} '{name}' ends (LBA {last}) before it starts (LBA {first})")]
    Inverted { index: usize, name: String, first: u64, last: u64 },
    #[error(
        "partition {index} '{name}' (LBA {first}..={last}) is outside the usable sectors {usable_first}..={usable_last}"
    )]
    OutsideUsable {
        index: usize,
        name: String,
        first: u64,
        last: u64,
        usable_first: u64,
        usable_last: u64,
    },
    #[error("partitions {index_a} '{name_a}' and {index_b} '{name_b}' overlap")]
    Overlap { index_a: usize, name_a: String, index_b: usize, name_b: String },
    #[error(
        "partitions {index_a} '{name_a}' and {index_b} '{name_b}' have the same unique GUID {guid}"
    )]
    DuplicateGuid { index_a: usize, name_a: String, index_b: usize, name_b: String, guid: Guid },
    #[error("the {copy} GPT header at LBA {lba} is invalid: {reason}")]
    BadHeader { copy: GptCopy, lba: u64, reason: String },
    #[error("no valid GPT: primary header: {primary}; backup header: {backup}")]
    NoValidTable { primary: Box<GptError>, backup: Box<GptError> },
    #[error("reading the GPT at byte {offset}: {source}")]
    Io {
        offset: u64,
        #[source]
        source: io::Error,
    },
}

/// First sector a partition may use with a 128-entry table.
pub fn first_usable_lba() -> u64 {
    2 + ENTRY_ARRAY_SECTORS
}

/// Last sector a partition may use on a disk of `disk_size_bytes` with a
/// 128-entry table (the backup array and header take the last 33 sectors);
/// `None` if the disk is too small for any partition.
pub fn last_usable_lba(disk_size_bytes: u64) -> Option<u64> {
    let sectors = disk_size_bytes / SECTOR_SIZE;
    // The backup entry array and header take the last 33 sectors.
    let last = sectors.checked_sub(ENTRY_ARRAY_SECTORS + 2)?;
    (last >= first_usable_lba()).then_some(last)
}

impl GptLayout {
    /// Number of sectors on the disk.
    pub fn sector_count(&self) -> u64 {
        self.disk_size_bytes / SECTOR_SIZE
    }

    /// Checks everything [`GptLayout::primary_bytes`] relies on; errors name
    /// partitions by their 1-based entry number and name.
    pub fn validate(&self) -> Result<(), GptError> {
        if !self.disk_size_bytes.is_multiple_of(SECTOR_SIZE) {
            return Err(GptError::DiskSizeUnaligned { size: self.disk_size_bytes });
        }
        let min = (first_usable_lba() + ENTRY_ARRAY_SECTORS + 2) * SECTOR_SIZE;
        let usable_last = last_usable_lba(self.disk_size_bytes)
            .ok_or(GptError::DiskTooSmall { size: self.disk_size_bytes, min })?;
        if self.entries.len() > ENTRY_COUNT as usize {
            return Err(GptError::TooManyPartitions {
                count: self.entries.len(),
                max: ENTRY_COUNT,
            });
        }
        let usable_first = first_usable_lba();
        for (i, entry) in self.entries.iter().enumerate() {
            let index = i + 1;
            let name = entry.name.clone();
            let units = entry.name.encode_utf16().count();
            if units > MAX_NAME_UNITS {
                return Err(GptError::NameTooLong { index, name, units });
            }
            if entry.type_guid.is_nil() {
                return Err(GptError::NilType { index, name });
            }
            if entry.last_lba < entry.first_lba {
                return Err(GptError::Inverted {
                    index,
                    name,
                    first: entry.first_lba,
                    last: entry.last_lba,
                });
            }
            if entry.first_lba < usable_first || entry.last_lba > usable_last {
                return Err(GptError::OutsideUsable {
                    index,
                    name,
                    first: entry.first_lba,
                    last: entry.last_lba,
                    usable_first,
                    usable_last,
                });
            }
        }
        // Sorting by start makes overlap a property of neighbours only.
        let mut by_start: Vec<usize> = (0..self.entries.len()).collect();
        by_start.sort_by_key(|&i| (self.entries[i].first_lba, i));
        for pair in by_start.windows(2) {
            let (a, b) = (&self.entries[pair[0]], &self.entries[pair[1]]);
            if b.first_lba <= a.last_lba {
                let (first, second) = (pair[0].min(pair[1]), pair[0].max(pair[1]));
                return Err(GptError::Overlap {
                    index_a: first + 1,
                    name_a: self.entries[first].name.clone(),
                    index_b: second + 1,
                    name_b: self.entries[second].name.clone(),
                });
            }
        }
        let mut by_guid: Vec<usize> = (0..self.entries.len()).collect();
        by_guid.sort_by_key(|&i| (self.entries[i].unique_guid, i));
        for pair in by_guid.windows(2) {
            let (a, b) = (&self.entries[pair[0]], &self.entries[pair[1]]);
            if a.unique_guid == b.unique_guid {
                return Err(GptError::DuplicateGuid {
                    index_a: pair[0] + 1,
                    name_a: a.name.clone(),
                    index_b: pair[1] + 1,
                    name_b: b.name.clone(),
                    guid: a.unique_guid,
                });
            }
        }
        Ok(())
    }

    /// The 128-entry array (16 KiB), entries in order, unused slots zero.
    fn entry_array(&self) -> Vec<u8> {
        let mut array = vec![0u8; ENTRY_COUNT as usize * ENTRY_SIZE];
        for (slot, entry) in array.chunks_exact_mut(ENTRY_SIZE).zip(&self.entries) {
            header::write_entry(entry, slot);
        }
        array
    }

    fn header(&self, copy: GptCopy, entries_crc: u32) -> header::Header {
        let last_lba = self.sector_count() - 1;
        let (my_lba, alternate_lba, entries_lba) = match copy {
            GptCopy::Primary => (1, last_lba, 2),
            GptCopy::Backup => (last_lba, 1, last_lba - ENTRY_ARRAY_SECTORS),
        };
        header::Header {
            my_lba,
            alternate_lba,
            first_usable_lba: first_usable_lba(),
            last_usable_lba: last_lba - ENTRY_ARRAY_SECTORS - 1,
            disk_guid: self.disk_guid,
            entries_lba,
            entry_count: ENTRY_COUNT,
            entry_size: header::ENTRY_SIZE_U32,
            entries_crc,
        }
    }

    /// Sectors 0..=33: protective MBR, primary header and entry array, to be
    /// written at byte 0 of the disk.
    pub fn primary_bytes(&self) -> Result<Vec<u8>, GptError> {
        self.validate()?;
        let array = self.entry_array();
        let crc = crc32fast::hash(&array);
        let mut out = Vec::with_capacity(34 * SECTOR_BYTES);
        out.extend_from_slice(&protective_mbr(self.sector_count()));
        out.extend_from_slice(&self.header(GptCopy::Primary, crc).to_sector());
        out.extend_from_slice(&array);
        Ok(out)
    }

    /// The last 33 sectors: backup entry array then backup header, to be written
    /// at [`GptLayout::backup_offset`].
    pub fn backup_bytes(&self) -> Result<Vec<u8>, GptError> {
        self.validate()?;
        let array = self.entry_array();
        let crc = crc32fast::hash(&array);
        let mut out = array;
        out.extend_from_slice(&self.header(GptCopy::Backup, crc).to_sector());
        Ok(out)
    }

    /// Byte offset of [`GptLayout::backup_bytes`] in the disk.
    pub fn backup_offset(&self) -> u64 {
        self.sector_count().saturating_sub(ENTRY_ARRAY_SECTORS + 1) * SECTOR_SIZE
    }

    /// Writes both copies into `file` at their offsets (the file should already
    /// have its final length: sparse, so nothing else is written).
    pub fn write_to(&self, file: &File) -> Result<(), GptError> {
        self.write_to_at(file, 0)
    }

    /// Like [`GptLayout::write_to`], for a disk that starts `base` bytes into `file`
    /// (a VHDX payload mapped one to one, say).
    pub fn write_to_at(&self, file: &File, base: u64) -> Result<(), GptError> {
        let primary = self.primary_bytes()?;
        let backup = self.backup_bytes()?;
        let offset = base + self.backup_offset();
        file.write_all_at(&primary, base)
            .map_err(|source| GptError::Io { offset: base, source })?;
        file.write_all_at(&backup, offset).map_err(|source| GptError::Io { offset, source })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
