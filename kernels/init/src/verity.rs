//! The dm-verity target line for the root, and a check of the verity superblock.
//!
//! Follows the kernel's Documentation/admin-guide/device-mapper/verity.rst (table
//! format, version 1) and cryptsetup's on-disk superblock (`struct verity_sb` in
//! lib/verity/verity.c, 512 bytes, little-endian) as written by `veritysetup format`.
//! With a superblock at `hash_offset`, veritysetup places the hash tree at the first
//! hash block after the 512-byte superblock: block `ceil((hash_offset + 512) /
//! hash_block_size)` of the hash device, which is `hash_offset / hash_block_size + 1`
//! for an aligned offset. Supported: superblock version 1, hash type 1 (the normal
//! format). Left out: hash type 0 (Chrome OS), forward error correction, root hash
//! signatures (`root_hash_sig_key_desc`).

use abforge_kernels::cmdline::{OnCorruption, VerityParams, hex};

/// Size of the verity superblock veritysetup writes at `hash_offset`.
pub const SUPERBLOCK_SIZE: u64 = 512;
const SIGNATURE: &[u8; 8] = b"verity\0\0";
// Field offsets of `struct verity_sb`.
const OFF_VERSION: usize = 8;
const OFF_HASH_TYPE: usize = 12;
const OFF_ALGORITHM: usize = 32;
const ALGORITHM_LEN: usize = 32;
const OFF_DATA_BLOCK_SIZE: usize = 64;
const OFF_HASH_BLOCK_SIZE: usize = 68;
const OFF_DATA_BLOCKS: usize = 72;
const OFF_SALT_SIZE: usize = 80;
const OFF_SALT: usize = 88;

/// Why the verity table could not be made or the superblock does not match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerityError {
    #[error("the verity geometry overflows: {0}")]
    Overflow(&'static str),
    #[error("no verity superblock at byte {offset} of {device} (no 'verity' signature)")]
    NoSuperblock { device: String, offset: u64 },
    #[error(
        "the verity superblock at byte {offset} of {device} {what}, but the command line says {expected}"
    )]
    Mismatch { device: String, offset: u64, what: String, expected: String },
    #[error("the verity superblock at byte {offset} of {device} has unsupported {what}")]
    Unsupported { device: String, offset: u64, what: String },
}

/// The block of the hash device where the hash tree starts (the table's `<hash_start_block>`),
/// counting the superblock that veritysetup writes at `hash_offset`.
pub fn hash_start_block(hash_offset: u64, hash_block_size: u32) -> Result<u64, VerityError> {
    let size = u64::from(hash_block_size);
    if size == 0 {
        return Err(VerityError::Overflow("the hash block size is 0"));
    }
    let end = hash_offset
        .checked_add(SUPERBLOCK_SIZE)
        .and_then(|e| e.checked_add(size - 1))
        .ok_or(VerityError::Overflow("hash offset too large"))?;
    Ok(end / size)
}

/// Length of the data area in 512-byte sectors (the table's length).
pub fn data_sectors(v: &VerityParams) -> Result<u64, VerityError> {
    v.data_blocks
        .checked_mul(u64::from(v.data_block_size))
        .map(|bytes| bytes / 512)
        .ok_or(VerityError::Overflow("data blocks times data block size exceeds 64 bits"))
}

/// The device-mapper table line (start, length, target, parameters) for the root,
/// with the devices given as `major:minor`.
pub fn table(
    v: &VerityParams,
    on_corruption: OnCorruption,
    data_dev: &str,
    hash_dev: &str,
) -> Result<VerityTable, VerityError> {
    let mut params = format!(
        "1 {data_dev} {hash_dev} {} {} {} {} {} {} {}",
        v.data_block_size,
        v.hash_block_size,
        v.data_blocks,
        hash_start_block(v.hash_offset, v.hash_block_size)?,
        v.hash_algorithm.name(),
        hex(&v.root_hash),
        if v.salt.is_empty() { "-".to_string() } else { hex(&v.salt) },
    );
    if let Some(option) = on_corruption.table_option() {
        // One optional argument follows.
        params.push_str(" 1 ");
        params.push_str(option);
    }
    Ok(VerityTable { sectors: data_sectors(v)?, params })
}

/// One dm table line of target `verity` starting at sector 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerityTable {
    pub sectors: u64,
    pub params: String,
}

impl std::fmt::Display for VerityTable {
    /// The form `dmsetup table` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0 {} verity {}", self.sectors, self.params)
    }
}

fn le_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

/// Checks that the superblock read at `hash_offset` describes the tree the command
/// line asks for, so a stale or wrong command line fails with a clear message instead
/// of an opaque verification error. `block` is the first 512 bytes at `hash_offset`.
pub fn check_superblock(
    block: &[u8; 512],
    v: &VerityParams,
    device: &str,
) -> Result<(), VerityError> {
    let offset = v.hash_offset;
    if &block[..8] != SIGNATURE {
        return Err(VerityError::NoSuperblock { device: device.to_string(), offset });
    }
    let unsupported =
        |what: String| VerityError::Unsupported { device: device.to_string(), offset, what };
    let version = le_u32(block, OFF_VERSION);
    if version != 1 {
        return Err(unsupported(format!("version {version}")));
    }
    let hash_type = le_u32(block, OFF_HASH_TYPE);
    if hash_type != 1 {
        return Err(unsupported(format!("hash type {hash_type}")));
    }
    let mismatch = |what: String, expected: String| VerityError::Mismatch {
        device: device.to_string(),
        offset,
        what,
        expected,
    };
    let algorithm = &block[OFF_ALGORITHM..OFF_ALGORITHM + ALGORITHM_LEN];
    let algorithm = &algorithm[..algorithm.iter().position(|&b| b == 0).unwrap_or(ALGORITHM_LEN)];
    if algorithm != v.hash_algorithm.name().as_bytes() {
        return Err(mismatch(
            format!("uses hash {}", String::from_utf8_lossy(algorithm)),
            v.hash_algorithm.name().to_string(),
        ));
    }
    let sizes = (le_u32(block, OFF_DATA_BLOCK_SIZE), le_u32(block, OFF_HASH_BLOCK_SIZE));
    if sizes != (v.data_block_size, v.hash_block_size) {
        return Err(mismatch(
            format!("has block sizes {}/{}", sizes.0, sizes.1),
            format!("{}/{}", v.data_block_size, v.hash_block_size),
        ));
    }
    let mut blocks = [0u8; 8];
    blocks.copy_from_slice(&block[OFF_DATA_BLOCKS..OFF_DATA_BLOCKS + 8]);
    let data_blocks = u64::from_le_bytes(blocks);
    if data_blocks != v.data_blocks {
        return Err(mismatch(
            format!("covers {data_blocks} data blocks"),
            v.data_blocks.to_string(),
        ));
    }
    let salt_size =
        usize::from(u16::from_le_bytes([block[OFF_SALT_SIZE], block[OFF_SALT_SIZE + 1]]));
    let salt = block
        .get(OFF_SALT..OFF_SALT + salt_size)
        .ok_or_else(|| unsupported(format!("salt size {salt_size}")))?;
    if salt != v.salt.as_slice() {
        return Err(mismatch(format!("has salt {}", hex(salt)), hex(&v.salt)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use abforge_kernels::cmdline::HashAlgorithm;

    fn sample() -> VerityParams {
        VerityParams {
            root_hash: (0u8..32).collect(),
            salt: vec![0xab; 4],
            hash_device: None,
            hash_offset: 4_259_840_000,
            data_blocks: 1_040_000,
            data_block_size: 4096,
            hash_block_size: 4096,
            hash_algorithm: HashAlgorithm::Sha256,
        }
    }

    #[test]
    fn hash_start_follows_veritysetup() {
        // Aligned offset: the block after the superblock's block.
        assert_eq!(hash_start_block(4_259_840_000, 4096).unwrap(), 4_259_840_000 / 4096 + 1);
        assert_eq!(hash_start_block(0, 4096).unwrap(), 1);
        // Unaligned: rounded up past the 512-byte superblock.
        assert_eq!(hash_start_block(4096 + 3584, 4096).unwrap(), 2);
        assert_eq!(hash_start_block(4096 + 3585, 4096).unwrap(), 3);
        assert_eq!(hash_start_block(0, 512).unwrap(), 1);
        assert!(hash_start_block(u64::MAX - 100, 4096).is_err());
    }

    #[test]
    fn table_line_is_exact() {
        let mut v = sample();
        let t = table(&v, OnCorruption::Eio, "254:3", "254:3").unwrap();
        assert_eq!(
            t.to_string(),
            "0 8320000 verity 1 254:3 254:3 4096 4096 1040000 1040001 sha256 \
             000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f abababab"
        );
        v.salt.clear();
        let t = table(&v, OnCorruption::Restart, "8:3", "8:4").unwrap();
        assert!(t.params.starts_with("1 8:3 8:4 "), "{t}");
        assert!(t.params.ends_with("1e1f - 1 restart_on_corruption"), "{t}");
        let t = table(&v, OnCorruption::Panic, "8:3", "8:4").unwrap();
        assert!(t.params.ends_with("1e1f - 1 panic_on_corruption"), "{t}");
        v.data_blocks = u64::MAX;
        assert!(table(&v, OnCorruption::Eio, "8:3", "8:3").is_err());
    }

    fn superblock(v: &VerityParams) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[..8].copy_from_slice(SIGNATURE);
        b[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&1u32.to_le_bytes());
        b[OFF_HASH_TYPE..OFF_HASH_TYPE + 4].copy_from_slice(&1u32.to_le_bytes());
        b[OFF_ALGORITHM..OFF_ALGORITHM + 6].copy_from_slice(b"sha256");
        b[OFF_DATA_BLOCK_SIZE..OFF_DATA_BLOCK_SIZE + 4]
            .copy_from_slice(&v.data_block_size.to_le_bytes());
        b[OFF_HASH_BLOCK_SIZE..OFF_HASH_BLOCK_SIZE + 4]
            .copy_from_slice(&v.hash_block_size.to_le_bytes());
        b[OFF_DATA_BLOCKS..OFF_DATA_BLOCKS + 8].copy_from_slice(&v.data_blocks.to_le_bytes());
        let salt_len = u16::try_from(v.salt.len()).unwrap();
        b[OFF_SALT_SIZE..OFF_SALT_SIZE + 2].copy_from_slice(&salt_len.to_le_bytes());
        b[OFF_SALT..OFF_SALT + v.salt.len()].copy_from_slice(&v.salt);
        b
    }

    #[test]
    fn superblock_check_accepts_match_and_names_mismatches() {
        let v = sample();
        let good = superblock(&v);
        check_superblock(&good, &v, "/dev/vda3").unwrap();

        let mut other = v.clone();
        other.data_blocks = 7;
        let err = check_superblock(&good, &other, "/dev/vda3").unwrap_err().to_string();
        assert!(err.contains("covers 1040000 data blocks, but the command line says 7"), "{err}");
        other = v.clone();
        other.salt = vec![1];
        let err = check_superblock(&good, &other, "/dev/vda3").unwrap_err().to_string();
        assert!(err.contains("has salt abababab, but the command line says 01"), "{err}");
        other = v.clone();
        other.hash_algorithm = HashAlgorithm::Sha512;
        assert!(
            check_superblock(&good, &other, "d")
                .unwrap_err()
                .to_string()
                .contains("uses hash sha256")
        );

        let err = check_superblock(&[0; 512], &v, "/dev/vda3").unwrap_err().to_string();
        assert_eq!(
            err,
            "no verity superblock at byte 4259840000 of /dev/vda3 (no 'verity' signature)"
        );
        let mut bad = good;
        bad[OFF_SALT_SIZE..OFF_SALT_SIZE + 2].copy_from_slice(&1000u16.to_le_bytes());
        assert!(
            check_superblock(&bad, &v, "d").unwrap_err().to_string().contains("salt size 1000")
        );
    }
}
