//! The VHDX metadata region (MS-VHDX 2.2.4, 2.6): a 64 KiB table of items, then
//! the item values. abforge writes exactly the five required items of a dynamic
//! disk (cloud-hypervisor rejects any other item) and reads those five, refusing
//! a file with any other item marked required (a parent locator, or one unknown).

use abforge_partitions::Guid;

use super::{
    KIB, MAX_BLOCK_SIZE, MAX_VIRTUAL_SIZE, MIN_BLOCK_SIZE, VhdxError, guid, guid_at, le32, le64,
    put_guid,
};

pub const METADATA_REGION_LENGTH: u32 = 1 << 20;
pub const TABLE_SIZE: usize = 64 * 1024;
const SIGNATURE: &[u8; 8] = b"metadata";
const ENTRY_COUNT_AT: usize = 10;
const ENTRIES_AT: usize = 32;
const ENTRY_SIZE: usize = 32;
const MAX_ENTRIES: u16 = 2047;
/// Items may be at most 1 MiB long.
const MAX_ITEM_LENGTH: u32 = 1 << 20;

const FLAG_IS_VIRTUAL_DISK: u32 = 1 << 1;
const FLAG_IS_REQUIRED: u32 = 1 << 2;

pub const FILE_PARAMETERS: Guid =
    guid(0xCAA1_6737, 0xFA36, 0x4D43, [0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44, 0xE7, 0x6B]);
pub const VIRTUAL_DISK_SIZE: Guid =
    guid(0x2FA5_4224, 0xCD1B, 0x4876, [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8]);
pub const PAGE_83_DATA: Guid =
    guid(0xBECA_12AB, 0xB2E6, 0x4523, [0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00, 0xC7, 0x46]);
pub const LOGICAL_SECTOR_SIZE: Guid =
    guid(0x8141_BF1D, 0xA96F, 0x4709, [0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA, 0xAB, 0x5F]);
pub const PHYSICAL_SECTOR_SIZE: Guid =
    guid(0xCDA3_48C7, 0x445D, 0x4471, [0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51, 0xC5, 0x56]);
pub const PARENT_LOCATOR: Guid =
    guid(0xA8D3_5F2D, 0xB30B, 0x454D, [0xAB, 0xF7, 0xD3, 0xD8, 0x48, 0x34, 0xAB, 0x0C]);

/// The disk described by the five required metadata items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskParameters {
    pub block_size: u32,
    /// Set for fixed disks (every block allocated).
    pub leave_blocks_allocated: bool,
    pub virtual_size: u64,
    pub page83: Guid,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
}

/// One metadata table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataEntry {
    pub item: Guid,
    /// From the start of the metadata region.
    pub offset: u32,
    pub length: u32,
    pub flags: u32,
}

/// The whole metadata region (1 MiB): the table, then the values packed from 64 KiB.
pub fn metadata_region_bytes(params: &DiskParameters) -> Vec<u8> {
    let mut b = vec![0u8; METADATA_REGION_LENGTH as usize];
    b[0..8].copy_from_slice(SIGNATURE);
    let mut file_parameters = [0u8; 8];
    file_parameters[0..4].copy_from_slice(&params.block_size.to_le_bytes());
    file_parameters[4..8].copy_from_slice(&u32::from(params.leave_blocks_allocated).to_le_bytes());
    let items: [(Guid, u32, Vec<u8>); 5] = [
        // File Parameters carries IsRequired only, not IsVirtualDisk (qemu writes it so).
        (FILE_PARAMETERS, FLAG_IS_REQUIRED, file_parameters.to_vec()),
        (
            VIRTUAL_DISK_SIZE,
            FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK,
            params.virtual_size.to_le_bytes().to_vec(),
        ),
        (
            PAGE_83_DATA,
            FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK,
            params.page83.to_mixed_endian().to_vec(),
        ),
        (
            LOGICAL_SECTOR_SIZE,
            FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK,
            params.logical_sector_size.to_le_bytes().to_vec(),
        ),
        (
            PHYSICAL_SECTOR_SIZE,
            FLAG_IS_REQUIRED | FLAG_IS_VIRTUAL_DISK,
            params.physical_sector_size.to_le_bytes().to_vec(),
        ),
    ];
    b[ENTRY_COUNT_AT..ENTRY_COUNT_AT + 2].copy_from_slice(&5u16.to_le_bytes());
    let mut value_at = TABLE_SIZE;
    for (i, (item, flags, value)) in items.iter().enumerate() {
        let at = ENTRIES_AT + i * ENTRY_SIZE;
        put_guid(&mut b, at, *item);
        // value_at < 64 KiB + 40 and values are at most 16 bytes: both fit in u32.
        let (offset, length) =
            (u32::try_from(value_at).unwrap_or(u32::MAX), u32::try_from(value.len()).unwrap_or(0));
        b[at + 16..at + 20].copy_from_slice(&offset.to_le_bytes());
        b[at + 20..at + 24].copy_from_slice(&length.to_le_bytes());
        b[at + 24..at + 28].copy_from_slice(&flags.to_le_bytes());
        b[value_at..value_at + value.len()].copy_from_slice(value);
        value_at += value.len();
    }
    b
}

/// Parses the metadata table (the first 64 KiB of a region of `region_length` bytes).
pub fn parse_metadata_table(b: &[u8], region_length: u32) -> Result<Vec<MetadataEntry>, VhdxError> {
    let corrupt = |what: String| VhdxError::Corrupt(format!("the metadata table {what}"));
    if b.len() < TABLE_SIZE {
        return Err(corrupt("is truncated".into()));
    }
    if &b[0..8] != SIGNATURE {
        return Err(corrupt("has no \"metadata\" signature".into()));
    }
    let count = u16::from_le_bytes([b[ENTRY_COUNT_AT], b[ENTRY_COUNT_AT + 1]]);
    if count > MAX_ENTRIES {
        return Err(corrupt(format!("claims {count} entries, more than the 2047 allowed")));
    }
    let mut entries: Vec<MetadataEntry> = Vec::new();
    for i in 0..usize::from(count) {
        let at = ENTRIES_AT + i * ENTRY_SIZE;
        let entry = MetadataEntry {
            item: guid_at(b, at),
            offset: le32(b, at + 16),
            length: le32(b, at + 20),
            flags: le32(b, at + 24),
        };
        let in_bounds = if entry.length == 0 {
            entry.offset == 0
        } else {
            u64::from(entry.offset) >= 64 * KIB
                && entry.length <= MAX_ITEM_LENGTH
                && u64::from(entry.offset) + u64::from(entry.length) <= u64::from(region_length)
        };
        if !in_bounds {
            return Err(corrupt(format!(
                "entry {i} ({}) has its value at offset {} with length {}, outside the {region_length}-byte region",
                entry.item, entry.offset, entry.length
            )));
        }
        if entries.iter().any(|e| e.item == entry.item) {
            return Err(corrupt(format!("lists item {} twice", entry.item)));
        }
        entries.push(entry);
    }
    Ok(entries)
}

/// Reads the five required items through `read_value(offset, length)` and checks them.
pub fn parse_parameters(
    entries: &[MetadataEntry],
    mut read_value: impl FnMut(u32, u32) -> Result<Vec<u8>, VhdxError>,
) -> Result<DiskParameters, VhdxError> {
    for entry in entries {
        let known = [
            FILE_PARAMETERS,
            VIRTUAL_DISK_SIZE,
            PAGE_83_DATA,
            LOGICAL_SECTOR_SIZE,
            PHYSICAL_SECTOR_SIZE,
        ];
        if entry.item == PARENT_LOCATOR {
            return Err(VhdxError::Unsupported(
                "the file is a differencing disk (it has a parent locator)".into(),
            ));
        }
        if !known.contains(&entry.item) && entry.flags & FLAG_IS_REQUIRED != 0 {
            return Err(VhdxError::Unsupported(format!(
                "the file requires unknown metadata item {}",
                entry.item
            )));
        }
    }
    let mut item = |id: Guid, name: &str, length: u32| -> Result<Vec<u8>, VhdxError> {
        let entry = entries
            .iter()
            .find(|e| e.item == id)
            .ok_or_else(|| VhdxError::Corrupt(format!("the metadata has no {name} item")))?;
        if entry.length != length {
            return Err(VhdxError::Corrupt(format!(
                "the {name} metadata item is {} bytes long, expected {length}",
                entry.length
            )));
        }
        read_value(entry.offset, length)
    };
    let file_parameters = item(FILE_PARAMETERS, "file parameters", 8)?;
    let virtual_size = le64(&item(VIRTUAL_DISK_SIZE, "virtual disk size", 8)?, 0);
    let page83 = guid_at(&item(PAGE_83_DATA, "page 83 data", 16)?, 0);
    let logical_sector_size = le32(&item(LOGICAL_SECTOR_SIZE, "logical sector size", 4)?, 0);
    let physical_sector_size = le32(&item(PHYSICAL_SECTOR_SIZE, "physical sector size", 4)?, 0);
    let block_size = le32(&file_parameters, 0);
    let bits = le32(&file_parameters, 4);
    if bits & 2 != 0 {
        return Err(VhdxError::Unsupported(
            "the file is a differencing disk (HasParent is set)".into(),
        ));
    }
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(VhdxError::Corrupt(format!(
            "the block size {block_size} is not a power of two from 1 MiB to 256 MiB"
        )));
    }
    if ![512, 4096].contains(&logical_sector_size) {
        return Err(VhdxError::Corrupt(format!(
            "the logical sector size {logical_sector_size} is neither 512 nor 4096"
        )));
    }
    if ![512, 4096].contains(&physical_sector_size) {
        return Err(VhdxError::Corrupt(format!(
            "the physical sector size {physical_sector_size} is neither 512 nor 4096"
        )));
    }
    if !virtual_size.is_multiple_of(u64::from(logical_sector_size))
        || virtual_size > MAX_VIRTUAL_SIZE
    {
        return Err(VhdxError::Corrupt(format!(
            "the virtual size {virtual_size} is not a multiple of the {logical_sector_size}-byte sector up to 64 TiB"
        )));
    }
    Ok(DiskParameters {
        block_size,
        leave_blocks_allocated: bits & 1 != 0,
        virtual_size,
        page83,
        logical_sector_size,
        physical_sector_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_guids_are_mixed_endian_on_disk() {
        assert_eq!(
            FILE_PARAMETERS.to_mixed_endian(),
            [
                0x37, 0x67, 0xA1, 0xCA, 0x36, 0xFA, 0x43, 0x4D, 0xB3, 0xB6, 0x33, 0xF0, 0xAA, 0x44,
                0xE7, 0x6B
            ]
        );
        assert_eq!(
            VIRTUAL_DISK_SIZE.to_mixed_endian(),
            [
                0x24, 0x42, 0xA5, 0x2F, 0x1B, 0xCD, 0x76, 0x48, 0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B,
                0xF4, 0xB8
            ]
        );
        assert_eq!(
            PAGE_83_DATA.to_mixed_endian(),
            [
                0xAB, 0x12, 0xCA, 0xBE, 0xE6, 0xB2, 0x23, 0x45, 0x93, 0xEF, 0xC3, 0x09, 0xE0, 0x00,
                0xC7, 0x46
            ]
        );
        assert_eq!(
            LOGICAL_SECTOR_SIZE.to_mixed_endian(),
            [
                0x1D, 0xBF, 0x41, 0x81, 0x6F, 0xA9, 0x09, 0x47, 0xBA, 0x47, 0xF2, 0x33, 0xA8, 0xFA,
                0xAB, 0x5F
            ]
        );
        assert_eq!(
            PHYSICAL_SECTOR_SIZE.to_mixed_endian(),
            [
                0xC7, 0x48, 0xA3, 0xCD, 0x5D, 0x44, 0x71, 0x44, 0x9C, 0xC9, 0xE9, 0x88, 0x52, 0x51,
                0xC5, 0x56
            ]
        );
    }

    #[test]
    fn round_trip_with_flags() {
        let params = DiskParameters {
            block_size: 32 << 20,
            leave_blocks_allocated: false,
            virtual_size: 5 << 30,
            page83: Guid::from_rfc_bytes([9; 16]),
            logical_sector_size: 512,
            physical_sector_size: 4096,
        };
        let region = metadata_region_bytes(&params);
        let entries = parse_metadata_table(&region, METADATA_REGION_LENGTH).unwrap();
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[0].flags, 0x4);
        assert!(entries[1..].iter().all(|e| e.flags == 0x6));
        assert_eq!(entries[0].offset, 0x10000);
        let parsed = parse_parameters(&entries, |offset, length| {
            Ok(region[offset as usize..(offset + length) as usize].to_vec())
        })
        .unwrap();
        assert_eq!(parsed, params);
    }
}
