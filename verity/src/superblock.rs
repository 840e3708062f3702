//! The dm-verity superblock as cryptsetup writes it (`struct verity_sb` in
//! cryptsetup lib/verity/verity.c, version 1), confirmed byte for byte against
//! veritysetup 2.6.1 (shared/reference/formats.md §2.1).
//!
//! Supported: version 1, hash types 0 and 1, the algorithms of
//! [`HashAlgorithm`], block sizes that are powers of two from 512 bytes to
//! 512 KiB, salts of up to 256 bytes. Left out: other algorithms (sha224,
//! sha384, ...) are rejected when parsing. Padding bytes are written as zeros
//! and ignored when parsing, as veritysetup does.
//!
//! Layout (512 bytes, little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | signature `"verity\0\0"` |
//! | 8 | 4 | version (1) |
//! | 12 | 4 | hash type |
//! | 16 | 16 | uuid, RFC 4122 byte order (as printed) |
//! | 32 | 32 | algorithm name, lower case, NUL padded |
//! | 64 | 4 | data block size |
//! | 68 | 4 | hash block size |
//! | 72 | 8 | data blocks |
//! | 80 | 2 | salt size |
//! | 82 | 6 | padding |
//! | 88 | 256 | salt, zero padded |
//! | 344 | 168 | padding |
//!
//! The superblock is not covered by the root hash: parse it as untrusted input.

use crate::{HashAlgorithm, MAX_BLOCK_SIZE, MAX_SALT_SIZE, MIN_BLOCK_SIZE};

/// Size of the superblock on disk.
pub const SUPERBLOCK_SIZE: usize = 512;

const SIGNATURE: &[u8; 8] = b"verity\0\0";
const VERSION: u32 = 1;

const OFF_SIGNATURE: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_HASH_TYPE: usize = 12;
const OFF_UUID: usize = 16;
const OFF_ALGORITHM: usize = 32;
const ALGORITHM_FIELD_LEN: usize = 32;
const OFF_DATA_BLOCK_SIZE: usize = 64;
const OFF_HASH_BLOCK_SIZE: usize = 68;
const OFF_DATA_BLOCKS: usize = 72;
const OFF_SALT_SIZE: usize = 80;
const OFF_SALT: usize = 88;

/// The fields of a verity superblock, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// 1 for the normal format, 0 for the Chrome OS legacy one.
    pub hash_type: u32,
    /// RFC 4122 byte order, the order of the printed string.
    pub uuid: [u8; 16],
    pub algorithm: HashAlgorithm,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

/// Why a superblock cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuperblockError {
    #[error("it is {0} bytes long, shorter than the 512 bytes of a superblock")]
    Short(usize),
    #[error("the signature is not \"verity\"")]
    Signature,
    #[error("version {0} is not supported (only 1)")]
    Version(u32),
    #[error("hash type {0} is not supported (only 0 and 1)")]
    HashType(u32),
    #[error("the algorithm name is not NUL-terminated printable ASCII")]
    AlgorithmName,
    #[error("algorithm {0:?} is not supported (only sha1, sha256 and sha512)")]
    Algorithm(String),
    #[error("the {what} block size {size} is not a power of two between 512 bytes and 512 KiB")]
    BlockSize { what: &'static str, size: u32 },
    #[error("the salt size {0} exceeds 256 bytes")]
    SaltSize(u16),
}

fn read_u16(bytes: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
}

fn read_u32(bytes: &[u8], offset: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&bytes[offset..offset + 4]);
    u32::from_le_bytes(raw)
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(raw)
}

fn valid_block_size(size: u32) -> bool {
    size.is_power_of_two() && (MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size)
}

impl Superblock {
    /// Parses the first 512 bytes of `bytes`. Every field is checked; errors
    /// are fine on arbitrary input, panics are bugs (see the fuzz target).
    pub fn parse(bytes: &[u8]) -> Result<Superblock, SuperblockError> {
        if bytes.len() < SUPERBLOCK_SIZE {
            return Err(SuperblockError::Short(bytes.len()));
        }
        let bytes = &bytes[..SUPERBLOCK_SIZE];
        if &bytes[OFF_SIGNATURE..OFF_SIGNATURE + SIGNATURE.len()] != SIGNATURE {
            return Err(SuperblockError::Signature);
        }
        let version = read_u32(bytes, OFF_VERSION);
        if version != VERSION {
            return Err(SuperblockError::Version(version));
        }
        let hash_type = read_u32(bytes, OFF_HASH_TYPE);
        if hash_type > 1 {
            return Err(SuperblockError::HashType(hash_type));
        }
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&bytes[OFF_UUID..OFF_UUID + 16]);

        let field = &bytes[OFF_ALGORITHM..OFF_ALGORITHM + ALGORITHM_FIELD_LEN];
        let name_len = field.iter().position(|&b| b == 0).ok_or(SuperblockError::AlgorithmName)?;
        let name = &field[..name_len];
        if !name.iter().all(|b| b.is_ascii_graphic()) {
            return Err(SuperblockError::AlgorithmName);
        }
        // Printable ASCII was just checked, so this is valid UTF-8.
        let name = String::from_utf8_lossy(name).into_owned();
        let algorithm = HashAlgorithm::from_name(&name).ok_or(SuperblockError::Algorithm(name))?;

        let data_block_size = read_u32(bytes, OFF_DATA_BLOCK_SIZE);
        if !valid_block_size(data_block_size) {
            return Err(SuperblockError::BlockSize { what: "data", size: data_block_size });
        }
        let hash_block_size = read_u32(bytes, OFF_HASH_BLOCK_SIZE);
        if !valid_block_size(hash_block_size) {
            return Err(SuperblockError::BlockSize { what: "hash", size: hash_block_size });
        }
        let data_blocks = read_u64(bytes, OFF_DATA_BLOCKS);
        let salt_size = read_u16(bytes, OFF_SALT_SIZE);
        if usize::from(salt_size) > MAX_SALT_SIZE {
            return Err(SuperblockError::SaltSize(salt_size));
        }
        let salt = bytes[OFF_SALT..OFF_SALT + usize::from(salt_size)].to_vec();
        Ok(Superblock {
            hash_type,
            uuid,
            algorithm,
            data_block_size,
            hash_block_size,
            data_blocks,
            salt,
        })
    }

    /// The 512 bytes on disk. The caller guarantees a salt of at most 256 bytes
    /// (checked by [`crate::VerityParams::validate`]); a longer one is cut.
    pub fn to_bytes(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut out = [0u8; SUPERBLOCK_SIZE];
        out[OFF_SIGNATURE..OFF_SIGNATURE + SIGNATURE.len()].copy_from_slice(SIGNATURE);
        out[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&VERSION.to_le_bytes());
        out[OFF_HASH_TYPE..OFF_HASH_TYPE + 4].copy_from_slice(&self.hash_type.to_le_bytes());
        out[OFF_UUID..OFF_UUID + 16].copy_from_slice(&self.uuid);
        let name = self.algorithm.name().as_bytes();
        out[OFF_ALGORITHM..OFF_ALGORITHM + name.len()].copy_from_slice(name);
        out[OFF_DATA_BLOCK_SIZE..OFF_DATA_BLOCK_SIZE + 4]
            .copy_from_slice(&self.data_block_size.to_le_bytes());
        out[OFF_HASH_BLOCK_SIZE..OFF_HASH_BLOCK_SIZE + 4]
            .copy_from_slice(&self.hash_block_size.to_le_bytes());
        out[OFF_DATA_BLOCKS..OFF_DATA_BLOCKS + 8].copy_from_slice(&self.data_blocks.to_le_bytes());
        let salt = &self.salt[..self.salt.len().min(MAX_SALT_SIZE)];
        // At most 256 after the cut above, so it fits in u16.
        let salt_size = u16::try_from(salt.len()).unwrap_or(0);
        out[OFF_SALT_SIZE..OFF_SALT_SIZE + 2].copy_from_slice(&salt_size.to_le_bytes());
        out[OFF_SALT..OFF_SALT + salt.len()].copy_from_slice(salt);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        Superblock {
            hash_type: 1,
            uuid: [
                0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
                0xcd, 0xef,
            ],
            algorithm: HashAlgorithm::Sha256,
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 300,
            salt: vec![0x00, 0x11, 0x22, 0x33],
        }
    }

    #[test]
    fn round_trip() {
        for algorithm in [HashAlgorithm::Sha1, HashAlgorithm::Sha256, HashAlgorithm::Sha512] {
            for salt in [vec![], vec![7u8; 4], vec![0xa5; 256]] {
                let sb = Superblock { algorithm, salt, ..sample() };
                assert_eq!(Superblock::parse(&sb.to_bytes()), Ok(sb));
            }
        }
    }

    #[test]
    fn field_offsets() {
        let bytes = sample().to_bytes();
        assert_eq!(&bytes[0..8], b"verity\0\0");
        assert_eq!(bytes[8..12], [1, 0, 0, 0]);
        assert_eq!(bytes[12..16], [1, 0, 0, 0]);
        assert_eq!(bytes[16], 0x01);
        assert_eq!(&bytes[32..39], b"sha256\0");
        assert_eq!(bytes[64..68], 4096u32.to_le_bytes());
        assert_eq!(bytes[72..80], 300u64.to_le_bytes());
        assert_eq!(bytes[80..82], [4, 0]);
        assert_eq!(bytes[88..92], [0x00, 0x11, 0x22, 0x33]);
        assert!(bytes[92..].iter().all(|&b| b == 0));
    }

    /// A small stable-toolchain stand-in for the fuzz target: random byte
    /// changes to a valid superblock never panic, and what parses round-trips.
    #[test]
    fn mutations_never_panic() {
        let good = sample().to_bytes();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20000 {
            let mut bytes = good;
            for _ in 0..(next() % 4 + 1) {
                let position = usize::try_from(next() % 512).unwrap_or(0);
                bytes[position] =
                    bytes[position].wrapping_add(u8::try_from(next() % 255 + 1).unwrap_or(1));
            }
            // Mostly whole superblocks, sometimes a short read.
            let cut =
                if next() % 8 == 0 { usize::try_from(next() % 512).unwrap_or(0) } else { 512 };
            if let Ok(sb) = Superblock::parse(&bytes[..cut]) {
                assert_eq!(Superblock::parse(&sb.to_bytes()), Ok(sb));
            }
        }
    }

    #[test]
    fn rejects_bad_fields() {
        let good = sample().to_bytes();
        let with = |offset: usize, patch: &[u8]| {
            let mut bytes = good;
            bytes[offset..offset + patch.len()].copy_from_slice(patch);
            Superblock::parse(&bytes)
        };
        assert_eq!(Superblock::parse(&good[..511]), Err(SuperblockError::Short(511)));
        assert_eq!(with(0, b"veritx"), Err(SuperblockError::Signature));
        assert_eq!(with(8, &2u32.to_le_bytes()), Err(SuperblockError::Version(2)));
        assert_eq!(with(12, &2u32.to_le_bytes()), Err(SuperblockError::HashType(2)));
        assert_eq!(with(32, &[b'x'; 32]), Err(SuperblockError::AlgorithmName));
        assert_eq!(with(32, b"md5\0"), Err(SuperblockError::Algorithm("md5".into())));
        assert_eq!(
            with(64, &4095u32.to_le_bytes()),
            Err(SuperblockError::BlockSize { what: "data", size: 4095 })
        );
        assert_eq!(
            with(68, &256u32.to_le_bytes()),
            Err(SuperblockError::BlockSize { what: "hash", size: 256 })
        );
        assert_eq!(with(80, &257u16.to_le_bytes()), Err(SuperblockError::SaltSize(257)));
    }
}
