//! Reading a GPT from untrusted bytes.
//!
//! Both headers are checked (signature, revision 1.x, header CRC, their own LBA,
//! entry geometry inside the disk, entry array CRC); the primary is used when it
//! is valid, the backup otherwise. Entry arrays larger than [`MAX_ARRAY_BYTES`]
//! are refused so a hostile header cannot make us allocate much. Errors are
//! values, never panics: the fuzz target `read_gpt` checks that.

use super::header::{self, Header};
use super::{GptError, GptLayout, PartitionEntry, ReadAt, SECTOR_BYTES, SECTOR_SIZE};
use std::fmt;

/// Largest entry array read: 8 MiB would be 65536 entries; real tables use 16 KiB.
pub const MAX_ARRAY_BYTES: u64 = 1 << 20;

/// Which copy of the table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum GptCopy {
    Primary,
    Backup,
}

impl fmt::Display for GptCopy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GptCopy::Primary => "primary",
            GptCopy::Backup => "backup",
        })
    }
}

/// Geometry of the header that was used.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct HeaderInfo {
    pub lba: u64,
    pub alternate_lba: u64,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub entries_lba: u64,
    pub entry_count: u32,
    pub entry_size: u32,
}

/// A table as read, with what is known about both copies.
#[derive(Debug)]
pub struct GptReadReport {
    /// Used entries in slot order (empty slots skipped).
    pub layout: GptLayout,
    /// The 1-based slot number of each entry of `layout.entries`.
    pub slots: Vec<u32>,
    /// Which copy `layout` comes from.
    pub used: GptCopy,
    pub header: HeaderInfo,
    /// Why the primary copy was not valid, if it was not.
    pub primary_problem: Option<GptError>,
    /// Why the backup copy was not valid, if it was not.
    pub backup_problem: Option<GptError>,
}

/// Reads the partition table of a disk of `disk_size` bytes, from the primary
/// copy or, when it is damaged, from the backup.
pub fn read_gpt(disk: &dyn ReadAt, disk_size: u64) -> Result<GptLayout, GptError> {
    read_gpt_report(disk, disk_size).map(|report| report.layout)
}

/// Like [`read_gpt`], also telling which copy was used and what is wrong with
/// the other one.
pub fn read_gpt_report(disk: &dyn ReadAt, disk_size: u64) -> Result<GptReadReport, GptError> {
    let sectors = disk_size / SECTOR_SIZE;
    if sectors < 3 {
        return Err(GptError::DiskTooSmall { size: disk_size, min: 3 * SECTOR_SIZE });
    }
    let last_lba = sectors - 1;
    let primary = read_copy(disk, sectors, GptCopy::Primary, 1);
    let backup_lba = match &primary {
        // A disk grown after partitioning keeps its backup where the primary says.
        Ok(table) if table.header.alternate_lba < sectors && table.header.alternate_lba > 1 => {
            table.header.alternate_lba
        }
        _ => last_lba,
    };
    let backup = read_copy(disk, sectors, GptCopy::Backup, backup_lba);
    let (table, used, primary_problem, backup_problem) = match (primary, backup) {
        (Ok(p), Ok(_)) => (p, GptCopy::Primary, None, None),
        (Ok(p), Err(b)) => (p, GptCopy::Primary, None, Some(b)),
        (Err(p), Ok(b)) => (b, GptCopy::Backup, Some(p), None),
        (Err(p), Err(b)) => {
            return Err(GptError::NoValidTable { primary: Box::new(p), backup: Box::new(b) });
        }
    };
    let (slots, entries) = table.entries.into_iter().unzip();
    Ok(GptReadReport {
        layout: GptLayout {
            disk_guid: table.header_raw.disk_guid,
            disk_size_bytes: disk_size,
            entries,
        },
        slots,
        used,
        header: table.header,
        primary_problem,
        backup_problem,
    })
}

struct Table {
    header_raw: Header,
    header: HeaderInfo,
    entries: Vec<(u32, PartitionEntry)>,
}

fn read_at(disk: &dyn ReadAt, buf: &mut [u8], offset: u64) -> Result<(), GptError> {
    disk.read_exact_at(buf, offset).map_err(|source| GptError::Io { offset, source })
}

fn read_copy(disk: &dyn ReadAt, sectors: u64, copy: GptCopy, lba: u64) -> Result<Table, GptError> {
    let bad = |reason: String| GptError::BadHeader { copy, lba, reason };
    let mut sector = [0u8; SECTOR_BYTES];
    // lba < sectors, so lba * 512 < disk size: no overflow.
    read_at(disk, &mut sector, lba * SECTOR_SIZE)?;
    let h = Header::parse(&sector).map_err(bad)?;
    if h.my_lba != lba {
        return Err(bad(format!("it says it is at LBA {}", h.my_lba)));
    }
    if h.entry_size < 128 || !h.entry_size.is_power_of_two() {
        return Err(bad(format!("entry size {} is not 128 times a power of two", h.entry_size)));
    }
    let array_bytes = u64::from(h.entry_count) * u64::from(h.entry_size);
    if array_bytes > MAX_ARRAY_BYTES {
        return Err(bad(format!(
            "{} entries of {} bytes exceed the {MAX_ARRAY_BYTES}-byte limit",
            h.entry_count, h.entry_size
        )));
    }
    let array_sectors = array_bytes.div_ceil(SECTOR_SIZE);
    let array_end = h.entries_lba.checked_add(array_sectors).filter(|&end| end <= sectors);
    let Some(array_end) = array_end else {
        return Err(bad(format!(
            "its entry array at LBA {} runs past the disk end",
            h.entries_lba
        )));
    };
    if h.entries_lba < 2 || (h.entries_lba..array_end).contains(&lba) {
        return Err(bad(format!("its entry array at LBA {} overlaps a header", h.entries_lba)));
    }
    if h.first_usable_lba > h.last_usable_lba.saturating_add(1) || h.last_usable_lba >= sectors {
        return Err(bad(format!(
            "usable sectors {}..={} are not inside the disk of {sectors} sectors",
            h.first_usable_lba, h.last_usable_lba
        )));
    }
    // array_bytes <= MAX_ARRAY_BYTES (1 MiB): it fits in usize.
    let array_len =
        usize::try_from(array_bytes).map_err(|_| bad("entry array too large".into()))?;
    let mut array = vec![0u8; array_len];
    read_at(disk, &mut array, h.entries_lba * SECTOR_SIZE)?;
    let crc = crc32fast::hash(&array);
    if crc != h.entries_crc {
        return Err(bad(format!(
            "entry array CRC {:#010x} does not match {crc:#010x}",
            h.entries_crc
        )));
    }
    // entry_size >= 128 was checked, so each chunk holds a whole entry.
    let entries = array
        .chunks_exact(h.entry_size as usize)
        .zip(1u32..)
        .filter_map(|(slot, number)| header::parse_entry(slot).map(|e| (number, e)))
        .collect();
    let header = HeaderInfo {
        lba,
        alternate_lba: h.alternate_lba,
        first_usable_lba: h.first_usable_lba,
        last_usable_lba: h.last_usable_lba,
        entries_lba: h.entries_lba,
        entry_count: h.entry_count,
        entry_size: h.entry_size,
    };
    Ok(Table { header_raw: h, header, entries })
}
