//! The GPT header (UEFI §5.3.2) and partition entry (§5.3.3) byte layouts.
//!
//! Every field is read and written little-endian at its named offset.

use crate::guid::Guid;

use super::{PartitionEntry, SECTOR_BYTES};

/// Bytes of header covered by the CRC in the headers written here (revision 1.0).
pub const HEADER_SIZE: usize = 92;
/// Bytes per partition entry written here.
pub const ENTRY_SIZE: usize = 128;
pub const ENTRY_SIZE_U32: u32 = 128;
const HEADER_SIZE_U32: u32 = 92;

pub const SIGNATURE: &[u8; 8] = b"EFI PART";
pub const REVISION_1_0: u32 = 0x0001_0000;

// Header field offsets.
const OFF_SIGNATURE: usize = 0;
const OFF_REVISION: usize = 8;
const OFF_HEADER_SIZE: usize = 12;
const OFF_HEADER_CRC: usize = 16;
const OFF_RESERVED: usize = 20;
const OFF_MY_LBA: usize = 24;
const OFF_ALTERNATE_LBA: usize = 32;
const OFF_FIRST_USABLE: usize = 40;
const OFF_LAST_USABLE: usize = 48;
const OFF_DISK_GUID: usize = 56;
const OFF_ENTRIES_LBA: usize = 72;
const OFF_ENTRY_COUNT: usize = 80;
const OFF_ENTRY_SIZE: usize = 84;
const OFF_ENTRIES_CRC: usize = 88;

// Entry field offsets.
const ENT_TYPE: usize = 0;
const ENT_UNIQUE: usize = 16;
const ENT_FIRST: usize = 32;
const ENT_LAST: usize = 40;
const ENT_ATTRIBUTES: usize = 48;
const ENT_NAME: usize = 56;
const ENT_NAME_BYTES: usize = 72;

/// The fields of a header other than signature, revision, size and CRCs.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Header {
    pub my_lba: u64,
    pub alternate_lba: u64,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub disk_guid: Guid,
    pub entries_lba: u64,
    pub entry_count: u32,
    pub entry_size: u32,
    pub entries_crc: u32,
}

fn put_u32(buf: &mut [u8], offset: usize, value: u32) {
    buf[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(buf: &mut [u8], offset: usize, value: u64) {
    buf[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

pub fn get_u32(buf: &[u8], offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[offset..offset + 4]);
    u32::from_le_bytes(bytes)
}

fn get_u64(buf: &[u8], offset: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[offset..offset + 8]);
    u64::from_le_bytes(bytes)
}

fn get_guid(buf: &[u8], offset: usize) -> Guid {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&buf[offset..offset + 16]);
    Guid::from_mixed_endian(bytes)
}

/// CRC32 of the first `size` bytes of a header sector with the CRC field zeroed.
pub fn header_crc(sector: &[u8], size: usize) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&sector[..OFF_HEADER_CRC]);
    hasher.update(&[0; 4]);
    hasher.update(&sector[OFF_RESERVED..size]);
    hasher.finalize()
}

impl Header {
    /// The whole 512-byte sector: the 92-byte header then zeros.
    pub fn to_sector(&self) -> [u8; SECTOR_BYTES] {
        let mut s = [0u8; SECTOR_BYTES];
        s[OFF_SIGNATURE..OFF_SIGNATURE + 8].copy_from_slice(SIGNATURE);
        put_u32(&mut s, OFF_REVISION, REVISION_1_0);
        put_u32(&mut s, OFF_HEADER_SIZE, HEADER_SIZE_U32);
        put_u32(&mut s, OFF_RESERVED, 0);
        put_u64(&mut s, OFF_MY_LBA, self.my_lba);
        put_u64(&mut s, OFF_ALTERNATE_LBA, self.alternate_lba);
        put_u64(&mut s, OFF_FIRST_USABLE, self.first_usable_lba);
        put_u64(&mut s, OFF_LAST_USABLE, self.last_usable_lba);
        s[OFF_DISK_GUID..OFF_DISK_GUID + 16].copy_from_slice(&self.disk_guid.to_mixed_endian());
        put_u64(&mut s, OFF_ENTRIES_LBA, self.entries_lba);
        put_u32(&mut s, OFF_ENTRY_COUNT, self.entry_count);
        put_u32(&mut s, OFF_ENTRY_SIZE, self.entry_size);
        put_u32(&mut s, OFF_ENTRIES_CRC, self.entries_crc);
        let crc = header_crc(&s, HEADER_SIZE);
        put_u32(&mut s, OFF_HEADER_CRC, crc);
        s
    }

    /// Parses and checks a header sector: signature, revision 1.x, header size,
    /// CRC. The fields are returned unchecked against the disk; the caller does
    /// that. Errors are reasons, the caller adds which copy.
    pub fn parse(sector: &[u8; SECTOR_BYTES]) -> Result<Header, String> {
        if &sector[OFF_SIGNATURE..OFF_SIGNATURE + 8] != SIGNATURE {
            return Err("no 'EFI PART' signature".to_string());
        }
        let revision = get_u32(sector, OFF_REVISION);
        if revision >> 16 != 1 {
            return Err(format!("unsupported revision {revision:#010x}"));
        }
        let size = get_u32(sector, OFF_HEADER_SIZE);
        let size = usize::try_from(size)
            .ok()
            .filter(|s| (HEADER_SIZE..=SECTOR_BYTES).contains(s))
            .ok_or_else(|| format!("header size {size} is outside 92..=512"))?;
        let stored = get_u32(sector, OFF_HEADER_CRC);
        let computed = header_crc(sector, size);
        if stored != computed {
            return Err(format!("header CRC {stored:#010x} does not match {computed:#010x}"));
        }
        Ok(Header {
            my_lba: get_u64(sector, OFF_MY_LBA),
            alternate_lba: get_u64(sector, OFF_ALTERNATE_LBA),
            first_usable_lba: get_u64(sector, OFF_FIRST_USABLE),
            last_usable_lba: get_u64(sector, OFF_LAST_USABLE),
            disk_guid: get_guid(sector, OFF_DISK_GUID),
            entries_lba: get_u64(sector, OFF_ENTRIES_LBA),
            entry_count: get_u32(sector, OFF_ENTRY_COUNT),
            entry_size: get_u32(sector, OFF_ENTRY_SIZE),
            entries_crc: get_u32(sector, OFF_ENTRIES_CRC),
        })
    }
}

/// Writes one entry into a 128-byte slot. The name must already be validated
/// (at most 36 UTF-16 units); a longer one is cut, never overruns.
pub fn write_entry(entry: &PartitionEntry, slot: &mut [u8]) {
    slot[ENT_TYPE..ENT_TYPE + 16].copy_from_slice(&entry.type_guid.to_mixed_endian());
    slot[ENT_UNIQUE..ENT_UNIQUE + 16].copy_from_slice(&entry.unique_guid.to_mixed_endian());
    put_u64(slot, ENT_FIRST, entry.first_lba);
    put_u64(slot, ENT_LAST, entry.last_lba);
    put_u64(slot, ENT_ATTRIBUTES, entry.attributes);
    let name = &mut slot[ENT_NAME..ENT_NAME + ENT_NAME_BYTES];
    for (pair, unit) in name.chunks_exact_mut(2).zip(entry.name.encode_utf16()) {
        pair.copy_from_slice(&unit.to_le_bytes());
    }
}

/// Parses one entry of at least 128 bytes; `None` for an unused (nil type) slot.
/// Names end at the first NUL; unpaired surrogates become U+FFFD.
pub fn parse_entry(slot: &[u8]) -> Option<PartitionEntry> {
    let type_guid = get_guid(slot, ENT_TYPE);
    if type_guid.is_nil() {
        return None;
    }
    let units: Vec<u16> = slot[ENT_NAME..ENT_NAME + ENT_NAME_BYTES]
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .take_while(|&unit| unit != 0)
        .collect();
    Some(PartitionEntry {
        type_guid,
        unique_guid: get_guid(slot, ENT_UNIQUE),
        first_lba: get_u64(slot, ENT_FIRST),
        last_lba: get_u64(slot, ENT_LAST),
        attributes: get_u64(slot, ENT_ATTRIBUTES),
        name: String::from_utf16_lossy(&units),
    })
}
