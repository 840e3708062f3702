//! The one error type of the crate.

use std::io;

use crate::superblock::SuperblockError;

/// What went wrong while formatting or verifying a dm-verity tree.
///
/// [`VerityError::is_invalid_input`] separates mistakes in the request
/// (parameters, sizes, overlapping areas) from failures of the work itself
/// (I/O errors, verification mismatches), so a command line can exit 2 for the
/// former and 1 for the latter.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("{what} block size {size} is not a power of two between 512 bytes and 512 KiB")]
    BlockSize { what: &'static str, size: u32 },

    #[error("the salt is {len} bytes long; dm-verity allows at most 256")]
    SaltTooLong { len: usize },

    #[error("hash type {0} is not supported (only 0, the Chrome OS legacy format, and 1)")]
    HashType(u32),

    #[error("there are no data blocks to protect")]
    NoDataBlocks,

    #[error(
        "the hash offset {offset} is not a multiple of 512 bytes, which the verity superblock requires"
    )]
    UnalignedHashOffset { offset: u64 },

    #[error("the sizes overflow 64-bit arithmetic ({what})")]
    Overflow { what: &'static str },

    #[error(
        "the data area is {available} bytes from offset {data_offset}, too small for {data_blocks} blocks of {data_block_size} bytes"
    )]
    DataTooShort { data_offset: u64, data_blocks: u64, data_block_size: u32, available: u64 },

    #[error(
        "the hash area (bytes {hash_start}..{hash_end}) overlaps the data area (bytes {data_start}..{data_end}) of the same file"
    )]
    Overlap { data_start: u64, data_end: u64, hash_start: u64, hash_end: u64 },

    #[error(
        "the hash area is truncated: the tree ends at byte {needed} but the hash file has only {available} bytes"
    )]
    TreeTruncated { needed: u64, available: u64 },

    #[error("the root hash is {got} bytes long, but {algorithm} digests are {expected} bytes")]
    RootHashLength { algorithm: &'static str, got: usize, expected: usize },

    #[error("the verity superblock at byte {offset} is invalid")]
    Superblock {
        offset: u64,
        #[source]
        source: SuperblockError,
    },

    #[error(
        "the verity superblock at byte {offset} says {field} is {found}, but {expected} was expected"
    )]
    SuperblockMismatch { offset: u64, field: &'static str, found: String, expected: String },

    #[error("{what} at byte {offset}")]
    Io {
        what: &'static str,
        offset: u64,
        #[source]
        source: io::Error,
    },

    #[error("data block {block} (byte {offset} of the data) does not match its hash in the tree")]
    DataBlockMismatch { block: u64, offset: u64 },

    #[error(
        "hash block {block} (level {level}, byte {offset} of the hash file) does not match {parent}"
    )]
    HashBlockMismatch { block: u64, level: usize, offset: u64, parent: &'static str },
}

impl VerityError {
    /// True when the request itself cannot be carried out (bad parameters,
    /// sizes or placement), as opposed to an I/O failure, a damaged tree or a
    /// verification mismatch.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            VerityError::BlockSize { .. }
                | VerityError::SaltTooLong { .. }
                | VerityError::HashType(_)
                | VerityError::NoDataBlocks
                | VerityError::UnalignedHashOffset { .. }
                | VerityError::Overflow { .. }
                | VerityError::DataTooShort { .. }
                | VerityError::Overlap { .. }
                | VerityError::RootHashLength { .. }
        )
    }

    /// True for a verification mismatch (the data or the tree do not match).
    pub fn is_mismatch(&self) -> bool {
        matches!(
            self,
            VerityError::DataBlockMismatch { .. } | VerityError::HashBlockMismatch { .. }
        )
    }

    pub(crate) fn io(what: &'static str, offset: u64) -> impl FnOnce(io::Error) -> VerityError {
        move |source| VerityError::Io { what, offset, source }
    }
}
