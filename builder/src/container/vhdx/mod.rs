//! Dynamic VHDX: writer and reader.
//!
//! Follows [MS-VHDX] v1.0 (Microsoft Open Specifications), with the layout and the
//! qemu / cloud-hypervisor checks collected in shared/reference/formats.md §1.
//! Supported: dynamic disks, version 1, written with logical sector 512 and
//! physical 4096, block sizes 1–256 MiB; read back with any block size, blocks
//! NOT_PRESENT / ZERO / UNMAPPED (read as zeros) or FULLY_PRESENT, BAT and metadata
//! regions in either order, and fixed disks (all blocks present).
//! Left out: differencing disks (parent locators, PARTIALLY_PRESENT blocks, sector
//! bitmaps) and log replay: a file with a non-zero log GUID is refused, as it was
//! not closed cleanly.
//!
//! Layout written (all offsets 1 MiB aligned):
//! `0` file identifier, `64 KiB` / `128 KiB` headers (sequence 1 and 2),
//! `192 KiB` / `256 KiB` region tables, `1 MiB` log (1 MiB, empty), `2 MiB`
//! metadata (1 MiB), `3 MiB` BAT, then payload blocks in virtual-disk order.

pub mod bat;
pub mod direct;
pub mod header;
pub mod metadata;
pub mod reader;
pub mod region;
pub mod writer;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use abforge_partitions::Guid;

pub use reader::VhdxReader;
pub use writer::{VhdxOptions, write_vhdx};

/// The file type identifier at offset 0.
pub const FILE_SIGNATURE: &[u8; 8] = b"vhdxfile";

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
/// The largest virtual disk the format allows.
pub const MAX_VIRTUAL_SIZE: u64 = 64 << 40;
pub const MIN_BLOCK_SIZE: u32 = 1 << 20;
pub const MAX_BLOCK_SIZE: u32 = 256 << 20;
pub const DEFAULT_BLOCK_SIZE: u32 = 32 << 20;

pub const HEADER_1_OFFSET: u64 = 64 * KIB;
pub const HEADER_2_OFFSET: u64 = 128 * KIB;
pub const REGION_TABLE_1_OFFSET: u64 = 192 * KIB;
pub const REGION_TABLE_2_OFFSET: u64 = 256 * KIB;
/// Everything below this offset is the header section.
pub const HEADER_SECTION_SIZE: u64 = MIB;

/// Region GUIDs (MS-VHDX 2.2.3.2).
pub const BAT_REGION_GUID: Guid =
    guid(0x2DC2_7766, 0xF623, 0x4200, [0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD, 0x4A, 0x08]);
pub const METADATA_REGION_GUID: Guid =
    guid(0x8B7C_A206, 0x4790, 0x4B9A, [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E]);

/// A GUID from its printed fields, as constants in the specification are given.
pub const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
    let a = d1.to_be_bytes();
    let b = d2.to_be_bytes();
    let c = d3.to_be_bytes();
    Guid::from_rfc_bytes([
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ])
}

/// What can be wrong with a VHDX file.
#[derive(Debug, thiserror::Error)]
pub enum VhdxError {
    /// The file breaks the format (a checksum, a signature, an offset).
    #[error("{0}")]
    Corrupt(String),
    /// The file is valid but uses a feature abforge does not read.
    #[error("{0}")]
    Unsupported(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

impl VhdxError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> VhdxError {
        let context = context.into();
        move |source| VhdxError::Io { context, source }
    }
}

impl From<VhdxError> for io::Error {
    fn from(err: VhdxError) -> io::Error {
        match err {
            VhdxError::Io { source, .. } => source,
            other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
        }
    }
}

/// Positioned reads of an image held in a file or in memory (the fuzz target
/// parses bytes).
#[allow(clippy::len_without_is_empty)]
pub trait ImageBytes: Sync {
    fn len(&self) -> io::Result<u64>;
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ImageBytes for File {
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ImageBytes for &[u8] {
    fn len(&self) -> io::Result<u64> {
        // usize always fits in u64 on supported targets.
        Ok(<[u8]>::len(self) as u64)
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).ok();
        let end = start.and_then(|s| s.checked_add(buf.len()));
        match (start, end) {
            (Some(start), Some(end)) if end <= <[u8]>::len(self) => {
                buf.copy_from_slice(&self[start..end]);
                Ok(())
            }
            _ => {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the image"))
            }
        }
    }
}

impl ImageBytes for Vec<u8> {
    fn len(&self) -> io::Result<u64> {
        ImageBytes::len(&self.as_slice())
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        ImageBytes::read_exact_at(&self.as_slice(), buf, offset)
    }
}

/// Little-endian field accessors at named offsets of an on-disk structure.
pub(crate) fn le16(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}
pub(crate) fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}
pub(crate) fn le64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}
pub(crate) fn guid_at(bytes: &[u8], at: usize) -> Guid {
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes[at..at + 16]);
    Guid::from_mixed_endian(b)
}
pub(crate) fn put_guid(bytes: &mut [u8], at: usize, guid: Guid) {
    bytes[at..at + 16].copy_from_slice(&guid.to_mixed_endian());
}

/// CRC-32C of `bytes` with the 4-byte checksum field at `checksum_at` taken as zero.
pub(crate) fn crc32c_with_zeroed_field(bytes: &[u8], checksum_at: usize) -> u32 {
    let crc = crc32c::crc32c(&bytes[..checksum_at]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &bytes[checksum_at + 4..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_guids_are_mixed_endian_on_disk() {
        assert_eq!(
            BAT_REGION_GUID.to_mixed_endian(),
            [
                0x66, 0x77, 0xC2, 0x2D, 0x23, 0xF6, 0x00, 0x42, 0x9D, 0x64, 0x11, 0x5E, 0x9B, 0xFD,
                0x4A, 0x08
            ]
        );
        assert_eq!(
            METADATA_REGION_GUID.to_mixed_endian(),
            [
                0x06, 0xA2, 0x7C, 0x8B, 0x90, 0x47, 0x9A, 0x4B, 0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F,
                0x88, 0x6E
            ]
        );
        assert_eq!(BAT_REGION_GUID.to_string(), "2dc27766-f623-4200-9d64-115e9bfd4a08");
    }

    #[test]
    fn crc32c_is_castagnoli_with_final_xor() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        let mut bytes = b"ab\xff\xff\xff\xffcd".to_vec();
        let with_field = crc32c_with_zeroed_field(&bytes, 2);
        bytes[2..6].fill(0);
        assert_eq!(with_field, crc32c::crc32c(&bytes));
    }
}
