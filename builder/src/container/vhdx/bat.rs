//! The VHDX block allocation table (MS-VHDX 2.5): one 64-bit entry per payload
//! block, with a sector-bitmap entry interleaved after every `chunk_ratio` payload
//! entries (those stay 0 on dynamic and fixed disks).

use super::{MIB, VhdxError};

/// Payload block states (MS-VHDX 2.5.1.1).
pub const PAYLOAD_BLOCK_NOT_PRESENT: u64 = 0;
pub const PAYLOAD_BLOCK_UNDEFINED: u64 = 1;
pub const PAYLOAD_BLOCK_ZERO: u64 = 2;
pub const PAYLOAD_BLOCK_UNMAPPED: u64 = 3;
/// The value the v0.95 draft gave UNMAPPED; old qemu files may carry it.
pub const PAYLOAD_BLOCK_UNMAPPED_V095: u64 = 5;
pub const PAYLOAD_BLOCK_FULLY_PRESENT: u64 = 6;
pub const PAYLOAD_BLOCK_PARTIALLY_PRESENT: u64 = 7;

const STATE_MASK: u64 = 0b111;
/// FileOffsetMB occupies bits 20..64, so the offset in bytes is the entry with the low 20 bits cleared.
const OFFSET_MASK: u64 = !(MIB - 1);

/// The shape of a BAT for a disk: how many entries, and where each block's entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatGeometry {
    pub block_size: u64,
    /// Payload blocks per chunk: the interval at which sector-bitmap entries appear.
    pub chunk_ratio: u64,
    pub data_blocks: u64,
    pub total_entries: u64,
}

impl BatGeometry {
    /// The BAT of a dynamic or fixed disk. Inputs are checked elsewhere: `block_size`
    /// a power of two 1–256 MiB, `logical_sector_size` 512 or 4096, `virtual_size` ≤ 64 TiB.
    pub fn new(
        virtual_size: u64,
        block_size: u32,
        logical_sector_size: u32,
    ) -> Result<BatGeometry, VhdxError> {
        let block_size = u64::from(block_size);
        if block_size == 0 {
            return Err(VhdxError::Corrupt("the block size is zero".into()));
        }
        let chunk_ratio = ((1u64 << 23) * u64::from(logical_sector_size)) / block_size;
        if chunk_ratio == 0 {
            return Err(VhdxError::Corrupt(format!(
                "a block size of {block_size} is too large for {logical_sector_size}-byte sectors"
            )));
        }
        let data_blocks = virtual_size.div_ceil(block_size);
        let total_entries =
            if data_blocks == 0 { 0 } else { data_blocks + (data_blocks - 1) / chunk_ratio };
        Ok(BatGeometry { block_size, chunk_ratio, data_blocks, total_entries })
    }

    /// The BAT index of payload block `block`.
    pub fn payload_index(&self, block: u64) -> u64 {
        block + block / self.chunk_ratio
    }

    /// The BAT index of the sector-bitmap entry of chunk `chunk`.
    pub fn bitmap_index(&self, chunk: u64) -> u64 {
        chunk * (self.chunk_ratio + 1) + self.chunk_ratio
    }

    /// Whether BAT entry `index` is a sector-bitmap entry.
    pub fn is_bitmap_index(&self, index: u64) -> bool {
        index % (self.chunk_ratio + 1) == self.chunk_ratio
    }

    /// The BAT's size in bytes (8 per entry).
    pub fn bytes(&self) -> u64 {
        self.total_entries * 8
    }

    /// The BAT region's length: the table rounded up to a whole MiB (at least 1 MiB).
    pub fn region_length(&self) -> u64 {
        self.bytes().div_ceil(MIB).max(1) * MIB
    }
}

/// An entry: `state` in bits 0..3, the 1 MiB-aligned file offset above.
pub fn entry(state: u64, file_offset: u64) -> u64 {
    (file_offset & OFFSET_MASK) | (state & STATE_MASK)
}

pub fn entry_state(entry: u64) -> u64 {
    entry & STATE_MASK
}

pub fn entry_offset(entry: u64) -> u64 {
    entry & OFFSET_MASK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_gib_with_32_mib_blocks_has_161_entries() {
        let bat = BatGeometry::new(5 << 30, 32 << 20, 512).unwrap();
        assert_eq!(bat.chunk_ratio, 128);
        assert_eq!(bat.data_blocks, 160);
        assert_eq!(bat.total_entries, 161);
        assert_eq!(bat.bitmap_index(0), 128);
        assert!(bat.is_bitmap_index(128));
        assert!(!bat.is_bitmap_index(127) && !bat.is_bitmap_index(129));
        assert_eq!(bat.payload_index(127), 127);
        assert_eq!(bat.payload_index(128), 129);
        assert_eq!(bat.payload_index(159), 160);
        assert_eq!(bat.region_length(), 1 << 20);
        // Every payload index is distinct from every bitmap index and within the table.
        for block in 0..bat.data_blocks {
            let index = bat.payload_index(block);
            assert!(index < bat.total_entries && !bat.is_bitmap_index(index));
        }
    }

    #[test]
    fn chunk_ratios() {
        let ratio =
            |bs: u32, sector: u32| BatGeometry::new(1 << 30, bs, sector).unwrap().chunk_ratio;
        assert_eq!(ratio(1 << 20, 512), 4096);
        assert_eq!(ratio(8 << 20, 512), 512);
        assert_eq!(ratio(32 << 20, 512), 128);
        assert_eq!(ratio(256 << 20, 512), 16);
        assert_eq!(ratio(32 << 20, 4096), 1024);
    }

    #[test]
    fn qemu_256_mib_layout_skips_entry_16() {
        let bat = BatGeometry::new(5 << 30, 256 << 20, 512).unwrap();
        assert_eq!(bat.data_blocks, 20);
        assert_eq!(bat.total_entries, 21);
        assert_eq!(bat.bitmap_index(0), 16);
        assert_eq!(bat.payload_index(16), 17);
    }

    #[test]
    fn exact_multiple_of_a_chunk_has_no_trailing_bitmap_entry() {
        // 128 blocks of 32 MiB: one full chunk, whose bitmap entry is not needed.
        let bat = BatGeometry::new(4 << 30, 32 << 20, 512).unwrap();
        assert_eq!(bat.total_entries, 128);
        assert_eq!(BatGeometry::new(0, 32 << 20, 512).unwrap().total_entries, 0);
    }

    #[test]
    fn entry_encoding() {
        assert_eq!(entry(PAYLOAD_BLOCK_FULLY_PRESENT, 8 << 20), 0x80_0006);
        assert_eq!(entry_offset(0x80_0006), 8 << 20);
        assert_eq!(entry_state(0x80_0006), 6);
    }
}
