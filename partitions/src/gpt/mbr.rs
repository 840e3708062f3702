//! The protective MBR in LBA 0 (UEFI §5.2.3): one partition record of type 0xEE
//! covering the disk from LBA 1, so MBR-only tools see the disk as in use.

use super::SECTOR_BYTES;

const OFF_DISK_SIGNATURE: usize = 440;
const OFF_RECORD: usize = 446;
const OFF_BOOT_SIGNATURE: usize = 510;

// Offsets inside the 16-byte partition record.
const REC_BOOT_INDICATOR: usize = 0;
const REC_START_CHS: usize = 1;
const REC_OS_TYPE: usize = 4;
const REC_END_CHS: usize = 5;
const REC_START_LBA: usize = 8;
const REC_SIZE_LBA: usize = 12;

const OS_TYPE_GPT_PROTECTIVE: u8 = 0xEE;

/// CHS address of `lba` with the conventional 255 heads and 63 sectors per
/// track, or 0xFFFFFF when the cylinder does not fit in 10 bits (UEFI §5.2.3).
fn chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let cylinder = lba / (HEADS * SECTORS);
    if cylinder > 1023 {
        return [0xFF; 3];
    }
    // Each value is bounded by its modulus (255, 63, 1024), so it fits a byte.
    let byte = |value: u64| u8::try_from(value).unwrap_or(0xFF);
    let head = byte((lba / SECTORS) % HEADS);
    let sector = byte(lba % SECTORS + 1);
    let cylinder_high = byte(cylinder >> 8) << 6;
    [head, sector | cylinder_high, byte(cylinder & 0xFF)]
}

/// The 512-byte protective MBR for a disk of `sector_count` sectors: disk
/// signature 0, one 0xEE record from LBA 1 of min(sectors - 1, 0xFFFFFFFF)
/// sectors, boot signature 55 AA.
pub fn protective_mbr(sector_count: u64) -> [u8; SECTOR_BYTES] {
    let mut mbr = [0u8; SECTOR_BYTES];
    mbr[OFF_DISK_SIGNATURE..OFF_DISK_SIGNATURE + 4].copy_from_slice(&[0; 4]);
    let size = u32::try_from(sector_count.saturating_sub(1)).unwrap_or(u32::MAX);
    let record = &mut mbr[OFF_RECORD..OFF_RECORD + 16];
    record[REC_BOOT_INDICATOR] = 0;
    record[REC_START_CHS..REC_START_CHS + 3].copy_from_slice(&chs(1));
    record[REC_OS_TYPE] = OS_TYPE_GPT_PROTECTIVE;
    record[REC_END_CHS..REC_END_CHS + 3].copy_from_slice(&chs(u64::from(size)));
    record[REC_START_LBA..REC_START_LBA + 4].copy_from_slice(&1u32.to_le_bytes());
    record[REC_SIZE_LBA..REC_SIZE_LBA + 4].copy_from_slice(&size.to_le_bytes());
    mbr[OFF_BOOT_SIGNATURE] = 0x55;
    mbr[OFF_BOOT_SIGNATURE + 1] = 0xAA;
    mbr
}
