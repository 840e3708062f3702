//! The crc32c flavour of ext4 metadata_csum (e2fsprogs `lib/ext2fs/csum.c`).
//!
//! ext4 chains the "raw" crc32c: the register is seeded with the previous value and
//! never inverted at the end. With the `crc32c` crate, which inverts on the way in
//! and out, raw(seed, data) = !crc32c_append(!seed, data).

/// Raw crc32c of `data` continuing from `seed`.
pub(crate) fn raw(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// The per-file-system seed: raw(~0, s_uuid).
pub(crate) fn fs_seed(uuid: &[u8; 16]) -> u32 {
    raw(!0, uuid)
}

/// Seed for an inode's own structures: raw(fs_seed, le32 ino) then le32 generation.
pub(crate) fn inode_seed(fs_seed: u32, ino: u32, generation: u32) -> u32 {
    raw(raw(fs_seed, &ino.to_le_bytes()), &generation.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_is_the_uninverted_register() {
        // crc32c("123456789") = 0xE3069283 with the usual inversions.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(raw(!0, b"123456789"), !0xE306_9283);
        // Chaining equals one pass.
        assert_eq!(raw(raw(7, b"1234"), b"56789"), raw(7, b"123456789"));
    }
}
