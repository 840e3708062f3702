//! dm-verity hash trees and superblocks, byte-identical to cryptsetup's
//! `veritysetup format` (checked against veritysetup 2.6.1; the format is in
//! shared/reference/formats.md §2 and cryptsetup lib/verity/verity_hash.c).
//!
//! Supported: hash types 1 (normal) and 0 (Chrome OS legacy), sha1, sha256 and
//! sha512, data and hash block sizes that are powers of two from 512 bytes to
//! 512 KiB, salts of up to 256 bytes, with or without the 512-byte superblock,
//! the tree in its own file or after the data in the same file (veritysetup's
//! `--hash-offset`), and an explicit data-block count. Left out: the other
//! kernel hash algorithms, forward error correction (`--fec-device`) and the
//! root-hash signature (produced by the builder, not here).
//!
//! How it runs: the data is read with positioned reads (several threads read at
//! once, the file's cursor is not used) in bounded buffers; the leaf level is
//! hashed in parallel with rayon over chunks of a few MiB, then each upper level.
//! SHA-256 hashes several blocks at once through a multi-buffer kernel (see
//! `digest.rs`). Blocks that lie in holes of the data file (SEEK_DATA /
//! SEEK_HOLE) are not read and, like blocks read as all zeros, take one
//! precomputed digest; a block equal to the one before it reuses its digest.
//! Memory is the tree itself plus a 1 MiB buffer per thread; the data is never
//! held.
//!
//! Typical use by the image builder, tree appended after a file system:
//!
//! ```no_run
//! # fn demo(image: &std::fs::File, fs_size: u64) -> Result<(), abforge_verity::VerityError> {
//! use abforge_verity::{format, hash_area_size, HashAlgorithm, VerityParams};
//! let params = VerityParams { salt: vec![0x5a; 32], uuid: [7; 16], ..VerityParams::default() };
//! let data_blocks = fs_size / u64::from(params.data_block_size);
//! let partition_size = fs_size + hash_area_size(data_blocks, &params)?; // size the partition first
//! let out = format(image, 0, data_blocks, image, fs_size, &params)?;
//! println!("root hash {}", abforge_verity::to_hex(&out.root_hash));
//! # let _ = (partition_size, HashAlgorithm::Sha256); Ok(()) }
//! ```

mod digest;
mod error;
mod geometry;
mod sparse;
pub mod superblock;
mod tree;

use std::fs::File;

pub use digest::sha256_blocks;
pub use error::VerityError;
pub use geometry::{Level, TreeGeometry};
pub use superblock::{SUPERBLOCK_SIZE, Superblock, SuperblockError};

/// Smallest block size veritysetup accepts.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size veritysetup accepts (the kernel also needs the data block
/// size to be at most the page size to activate the device).
pub const MAX_BLOCK_SIZE: u32 = 512 * 1024;
/// Longest salt the superblock can hold.
pub const MAX_SALT_SIZE: usize = 256;

/// The digest algorithms supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HashAlgorithm {
    Sha1,
    #[default]
    Sha256,
    Sha512,
}

impl HashAlgorithm {
    /// The lower-case name used by veritysetup, the kernel and the superblock.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha1 => "sha1",
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha512 => "sha512",
        }
    }

    /// The algorithm with this lower-case name.
    pub fn from_name(name: &str) -> Option<HashAlgorithm> {
        match name {
            "sha1" => Some(HashAlgorithm::Sha1),
            "sha256" => Some(HashAlgorithm::Sha256),
            "sha512" => Some(HashAlgorithm::Sha512),
            _ => None,
        }
    }

    /// Digest length in bytes.
    pub fn digest_size(self) -> usize {
        match self {
            HashAlgorithm::Sha1 => 20,
            HashAlgorithm::Sha256 => 32,
            HashAlgorithm::Sha512 => 64,
        }
    }
}

/// Everything that shapes a tree, as veritysetup's options do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    /// 1 (normal, salt before the block) or 0 (Chrome OS legacy, salt after the
    /// block and digests not padded to a power of two).
    pub hash_type: u32,
    pub algorithm: HashAlgorithm,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    /// 0 to 256 bytes.
    pub salt: Vec<u8>,
    /// Superblock UUID in RFC 4122 byte order (the order of the printed string).
    /// Unused without a superblock.
    pub uuid: [u8; 16],
    /// Write (or expect) the 512-byte superblock at the hash offset.
    pub superblock: bool,
}

impl Default for VerityParams {
    /// veritysetup's defaults, with an empty salt and a zero UUID instead of
    /// random ones: callers choose their own reproducible values.
    fn default() -> VerityParams {
        VerityParams {
            hash_type: 1,
            algorithm: HashAlgorithm::Sha256,
            data_block_size: 4096,
            hash_block_size: 4096,
            salt: Vec::new(),
            uuid: [0; 16],
            superblock: true,
        }
    }
}

impl VerityParams {
    /// Checks the block sizes, the salt length and the hash type.
    pub fn validate(&self) -> Result<(), VerityError> {
        for (what, size) in [("data", self.data_block_size), ("hash", self.hash_block_size)] {
            if !size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size) {
                return Err(VerityError::BlockSize { what, size });
            }
        }
        if self.salt.len() > MAX_SALT_SIZE {
            return Err(VerityError::SaltTooLong { len: self.salt.len() });
        }
        if self.hash_type > 1 {
            return Err(VerityError::HashType(self.hash_type));
        }
        Ok(())
    }

    /// The parameters recorded in a superblock (with `superblock: true`).
    pub fn from_superblock(sb: &Superblock) -> VerityParams {
        VerityParams {
            hash_type: sb.hash_type,
            algorithm: sb.algorithm,
            data_block_size: sb.data_block_size,
            hash_block_size: sb.hash_block_size,
            salt: sb.salt.clone(),
            uuid: sb.uuid,
            superblock: true,
        }
    }

    /// The superblock describing a tree over `data_blocks` blocks.
    pub fn to_superblock(&self, data_blocks: u64) -> Superblock {
        Superblock {
            hash_type: self.hash_type,
            uuid: self.uuid,
            algorithm: self.algorithm,
            data_block_size: self.data_block_size,
            hash_block_size: self.hash_block_size,
            data_blocks,
            salt: self.salt.clone(),
        }
    }
}

/// What [`format`] produced.
#[derive(Debug, Clone)]
pub struct FormatOutput {
    /// The digest to give the kernel (`veritysetup`'s "Root hash").
    pub root_hash: Vec<u8>,
    /// Where everything lies on the hash file.
    pub geometry: TreeGeometry,
}

impl FormatOutput {
    /// Byte offset of the first tree block in the hash file.
    pub fn hash_start(&self) -> u64 {
        self.geometry.hash_start()
    }

    /// Byte offset just past the tree in the hash file.
    pub fn hash_end(&self) -> u64 {
        self.geometry.hash_end()
    }

    /// Bytes from the hash offset to the end of the tree, superblock included.
    pub fn hash_tree_bytes(&self) -> u64 {
        self.geometry.hash_area_bytes()
    }

    /// Number of tree blocks, superblock excluded (veritysetup's "Hash blocks").
    pub fn hash_blocks(&self) -> u64 {
        self.geometry.tree_blocks()
    }
}

/// Bytes a tree over `data_blocks` blocks takes from a hash offset that is a
/// multiple of the hash block size: the superblock padded to one hash block
/// (when `params.superblock`) plus every tree block. The builder sizes a
/// partition as data + this before formatting.
pub fn hash_area_size(data_blocks: u64, params: &VerityParams) -> Result<u64, VerityError> {
    Ok(TreeGeometry::new(params, data_blocks, 0)?.hash_area_bytes())
}

/// Computes the tree over `data_blocks` blocks of `data` starting at byte
/// `data_offset`, and writes it (with the superblock when `params.superblock`)
/// into `hash` at byte `hash_offset`, as `veritysetup format` does.
///
/// `data` and `hash` may be the same file (opened twice or not), in which case
/// the hash area must not overlap the data area. Only the superblock and the
/// tree blocks are written, and a shorter hash file is extended to the end of
/// the tree: the hash file is never truncated, and the bytes between the
/// superblock and the first tree block are left as they are (zero, or a hole,
/// in a new file), like veritysetup. Nothing is written unless the whole tree
/// was computed, so a failed call leaves `hash` untouched. The file cursors of `data` and
/// `hash` are not used (positioned I/O); `data`'s may be moved by SEEK_DATA.
pub fn format(
    data: &File,
    data_offset: u64,
    data_blocks: u64,
    hash: &File,
    hash_offset: u64,
    params: &VerityParams,
) -> Result<FormatOutput, VerityError> {
    tree::format(data, data_offset, data_blocks, hash, hash_offset, params)
}

/// Recomputes the tree over the data and checks it against the tree in `hash`
/// and against `root_hash`, the way `veritysetup verify` does. With
/// `params.superblock`, the superblock at `hash_offset` must agree with
/// `params` and `data_blocks` (its UUID is not compared).
///
/// The stored tree is checked from the root down first, so a damaged hash block
/// is named as such ([`VerityError::HashBlockMismatch`]); then every data block
/// is hashed and the first one that differs is named
/// ([`VerityError::DataBlockMismatch`]).
pub fn verify(
    data: &File,
    data_offset: u64,
    data_blocks: u64,
    hash: &File,
    hash_offset: u64,
    params: &VerityParams,
    root_hash: &[u8],
) -> Result<(), VerityError> {
    tree::verify(data, data_offset, data_blocks, hash, hash_offset, params, root_hash)
}

/// Reads and parses the superblock at `hash_offset` of `hash`.
pub fn read_superblock(hash: &File, hash_offset: u64) -> Result<Superblock, VerityError> {
    use std::os::unix::fs::FileExt;
    let mut bytes = [0u8; SUPERBLOCK_SIZE];
    hash.read_exact_at(&mut bytes, hash_offset)
        .map_err(VerityError::io("reading the verity superblock", hash_offset))?;
    Superblock::parse(&bytes)
        .map_err(|source| VerityError::Superblock { offset: hash_offset, source })
}

/// A 32-byte salt derived from `context` (SHA-256 of a fixed label and the
/// context), for callers that need a reproducible salt rather than
/// veritysetup's random one. The command line derives its default salt this
/// way from the UUID (or from nothing); the image builder from its seed.
pub fn derive_salt(context: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    Sha256::new_with_prefix(b"abforge verity salt\0").chain_update(context).finalize().to_vec()
}

/// A UUID (RFC 4122 byte order, version-4 and variant bits set) derived from
/// `context`: the first 16 bytes of SHA-256 of a fixed label and the context.
pub fn derive_uuid(context: &[u8]) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new_with_prefix(b"abforge verity uuid\0").chain_update(context).finalize();
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&digest[..16]);
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    uuid
}

/// Lower-case hex, the form veritysetup prints and the kernel table takes.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pinned: the command line's default salt and UUID derive from these, so
    // changing them changes every default root hash (a deliberate format change).
    #[test]
    fn derived_values_are_pinned() {
        // Checked independently with Python's hashlib.
        assert_eq!(
            to_hex(&derive_salt(b"")),
            "8ca67d187d15da91321cc4ce15c532855fa1c0e60b7cc6cacbd6c13d2999146a"
        );
        assert_eq!(to_hex(&derive_uuid(&derive_salt(b""))), "864135c69f1c4afdbe34fa7638be7b0e");
        let uuid = derive_uuid(b"x");
        assert_eq!(uuid[6] >> 4, 4);
        assert_eq!(uuid[8] >> 6, 2);
        assert_ne!(derive_salt(b"a"), derive_salt(b"b"));
    }

    #[test]
    fn hex() {
        assert_eq!(to_hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(to_hex(&[]), "");
    }
}
