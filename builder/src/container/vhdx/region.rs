//! The VHDX region table (MS-VHDX 2.2.3): 64 KiB, stored twice (192 KiB and
//! 256 KiB), listing where the BAT and metadata regions are.

use abforge_partitions::Guid;

use super::{MIB, VhdxError, crc32c_with_zeroed_field, guid_at, le32, le64, put_guid};

pub const REGION_TABLE_SIZE: usize = 64 * 1024;
const SIGNATURE: &[u8; 4] = b"regi";
const CHECKSUM_AT: usize = 4;
const ENTRY_COUNT_AT: usize = 8;
const RESERVED_AT: usize = 12;
const ENTRIES_AT: usize = 16;
const ENTRY_SIZE: usize = 32;
/// The most entries that fit in the table (MS-VHDX: at most 2047).
const MAX_ENTRIES: u32 = 2047;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionEntry {
    pub guid: Guid,
    pub file_offset: u64,
    pub length: u32,
    pub required: bool,
}

impl RegionEntry {
    pub fn end(&self) -> Option<u64> {
        self.file_offset.checked_add(u64::from(self.length))
    }
}

/// Serialises a region table (64 KiB).
pub fn region_table_bytes(entries: &[RegionEntry]) -> Vec<u8> {
    let mut b = vec![0u8; REGION_TABLE_SIZE];
    b[0..4].copy_from_slice(SIGNATURE);
    // The writer passes two entries.
    let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
    b[ENTRY_COUNT_AT..ENTRY_COUNT_AT + 4].copy_from_slice(&count.to_le_bytes());
    for (i, entry) in entries.iter().enumerate() {
        let at = ENTRIES_AT + i * ENTRY_SIZE;
        put_guid(&mut b, at, entry.guid);
        b[at + 16..at + 24].copy_from_slice(&entry.file_offset.to_le_bytes());
        b[at + 24..at + 28].copy_from_slice(&entry.length.to_le_bytes());
        b[at + 28..at + 32].copy_from_slice(&u32::from(entry.required).to_le_bytes());
    }
    let crc = crc32c_with_zeroed_field(&b, CHECKSUM_AT);
    b[CHECKSUM_AT..CHECKSUM_AT + 4].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Parses and checks one region table copy (`which` names it in errors): the
/// signature, checksum, entry count, and that each region is whole MiB.
pub fn parse_region_table(b: &[u8], which: &str) -> Result<Vec<RegionEntry>, VhdxError> {
    let corrupt = |what: String| VhdxError::Corrupt(format!("{which} {what}"));
    if b.len() < REGION_TABLE_SIZE {
        return Err(corrupt("is truncated".into()));
    }
    let b = &b[..REGION_TABLE_SIZE];
    if &b[0..4] != SIGNATURE {
        return Err(corrupt("has no \"regi\" signature".into()));
    }
    let stored = le32(b, CHECKSUM_AT);
    let computed = crc32c_with_zeroed_field(b, CHECKSUM_AT);
    if stored != computed {
        return Err(corrupt(format!(
            "has a bad checksum (stored {stored:#010x}, computed {computed:#010x})"
        )));
    }
    let count = le32(b, ENTRY_COUNT_AT);
    if count > MAX_ENTRIES {
        return Err(corrupt(format!("claims {count} entries, more than the 2047 allowed")));
    }
    if le32(b, RESERVED_AT) != 0 {
        return Err(corrupt("has a non-zero reserved field".into()));
    }
    let mut entries: Vec<RegionEntry> = Vec::new();
    // count <= 2047, so the entries lie within the 64 KiB table.
    for i in 0..count as usize {
        let at = ENTRIES_AT + i * ENTRY_SIZE;
        let entry = RegionEntry {
            guid: guid_at(b, at),
            file_offset: le64(b, at + 16),
            length: le32(b, at + 24),
            required: le32(b, at + 28) & 1 != 0,
        };
        if !entry.file_offset.is_multiple_of(MIB)
            || entry.file_offset < MIB
            || u64::from(entry.length) % MIB != 0
            || entry.length == 0
        {
            return Err(corrupt(format!(
                "entry {i} ({}) places a region at byte {} with length {}, not whole MiB after the header section",
                entry.guid, entry.file_offset, entry.length
            )));
        }
        if entries.iter().any(|e| e.guid == entry.guid) {
            return Err(corrupt(format!("lists region {} twice", entry.guid)));
        }
        entries.push(entry);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::super::{BAT_REGION_GUID, METADATA_REGION_GUID};
    use super::*;

    fn sample() -> Vec<RegionEntry> {
        vec![
            RegionEntry {
                guid: BAT_REGION_GUID,
                file_offset: 3 << 20,
                length: 1 << 20,
                required: true,
            },
            RegionEntry {
                guid: METADATA_REGION_GUID,
                file_offset: 2 << 20,
                length: 1 << 20,
                required: true,
            },
        ]
    }

    #[test]
    fn round_trip() {
        let bytes = region_table_bytes(&sample());
        assert_eq!(bytes.len(), 65536);
        assert_eq!(
            &bytes[16..32],
            &[
                0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD,
                0x4A, 0x08
            ]
        );
        assert_eq!(parse_region_table(&bytes, "region table 1").unwrap(), sample());
    }

    #[test]
    fn checksum_covers_all_64_kib() {
        let mut bytes = region_table_bytes(&sample());
        bytes[65535] = 1;
        let err = parse_region_table(&bytes, "region table 1").unwrap_err().to_string();
        assert!(err.contains("bad checksum"), "{err}");
    }
}
