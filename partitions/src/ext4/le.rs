//! Little-endian field access at named offsets, and lossless integer splits.
//!
//! Every on-disk field of ext4 is little-endian (the JBD2 journal superblock is the
//! one big-endian exception, written in `journal.rs`). These helpers never cast
//! native structs onto bytes; splitting a wide value into its on-disk low and high
//! halves goes through byte arrays, so no `as` truncation is needed anywhere.

pub(crate) fn put_u8(buf: &mut [u8], offset: usize, value: u8) {
    buf[offset] = value;
}

pub(crate) fn put_u16(buf: &mut [u8], offset: usize, value: u16) {
    buf[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn put_u32(buf: &mut [u8], offset: usize, value: u32) {
    buf[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

pub(crate) fn get_u16(buf: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([buf[offset], buf[offset + 1]])
}

pub(crate) fn get_u32(buf: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([buf[offset], buf[offset + 1], buf[offset + 2], buf[offset + 3]])
}

/// Low 32 bits of a 64-bit value.
pub(crate) fn lo32(value: u64) -> u32 {
    let b = value.to_le_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// High 32 bits of a 64-bit value.
pub(crate) fn hi32(value: u64) -> u32 {
    let b = value.to_le_bytes();
    u32::from_le_bytes([b[4], b[5], b[6], b[7]])
}

/// Low 16 bits of a 32-bit value.
pub(crate) fn lo16(value: u32) -> u16 {
    let b = value.to_le_bytes();
    u16::from_le_bytes([b[0], b[1]])
}

/// High 16 bits of a 32-bit value.
pub(crate) fn hi16(value: u32) -> u16 {
    let b = value.to_le_bytes();
    u16::from_le_bytes([b[2], b[3]])
}

/// Bits 32..48 of a 64-bit value (the `_hi` half of 48-bit block numbers).
pub(crate) fn bits32_48(value: u64) -> u16 {
    let b = value.to_le_bytes();
    u16::from_le_bytes([b[4], b[5]])
}

/// Lowest byte.
pub(crate) fn lo8(value: u32) -> u8 {
    value.to_le_bytes()[0]
}

/// Rounds `value` up to a multiple of 4 (directory entries, xattr names and values).
pub(crate) fn round4(value: usize) -> usize {
    value.div_ceil(4) * 4
}
