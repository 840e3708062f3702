//! Where each level of a dm-verity tree lies on the hash device, following
//! cryptsetup's VERITY_create_or_verify_hash (formats.md §2.2 and §2.3).
//!
//! - hashes per block = 2^floor(log2(hash block size / digest size));
//! - each digest takes a slot of next_pow2(digest size) bytes (hash type 1) or
//!   exactly the digest size (hash type 0); the rest of a hash block is zero;
//! - the number of levels is the smallest L with (n - 1) >> (L * bits) == 0, so
//!   one data block gives no hash blocks at all;
//! - level i (0 hashes the data) has ceil(n / hpb^(i+1)) blocks, and the levels
//!   are stored top level first, level 0 last;
//! - the tree starts at ceil((hash offset + 512) / hash block size) with a
//!   superblock, at floor(hash offset / hash block size) without one.

use crate::{SUPERBLOCK_SIZE, VerityError, VerityParams};

/// The superblock size as a byte count (512 fits any integer type).
const SUPERBLOCK_BYTES: u64 = SUPERBLOCK_SIZE as u64;

/// One level of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level {
    /// Index of the level's first block on the hash device, in hash blocks.
    pub first_block: u64,
    /// Number of hash blocks in the level.
    pub blocks: u64,
}

/// The shape and placement of a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeGeometry {
    data_blocks: u64,
    data_block_size: u64,
    hash_block_size: u64,
    digest_size: usize,
    slot_size: usize,
    hashes_per_block_bits: u32,
    hash_offset: u64,
    superblock: bool,
    hash_start_block: u64,
    /// `levels[0]` hashes the data blocks; the last one is the single top block.
    levels: Vec<Level>,
}

/// Smallest `i` with `2^i >= x` (for `x >= 1`).
fn bits_up(x: usize) -> u32 {
    x.next_power_of_two().trailing_zeros()
}

/// Largest `i` with `2^i <= x` (for `x >= 1`).
fn bits_down(x: u64) -> u32 {
    x.ilog2()
}

impl TreeGeometry {
    /// The geometry of a tree over `data_blocks` blocks whose hash area starts
    /// at byte `hash_offset` of the hash device.
    pub fn new(
        params: &VerityParams,
        data_blocks: u64,
        hash_offset: u64,
    ) -> Result<TreeGeometry, VerityError> {
        params.validate()?;
        if data_blocks == 0 {
            return Err(VerityError::NoDataBlocks);
        }
        let data_block_size = u64::from(params.data_block_size);
        data_blocks
            .checked_mul(data_block_size)
            .ok_or(VerityError::Overflow { what: "data size" })?;
        let hash_block_size = u64::from(params.hash_block_size);
        let digest_size = params.algorithm.digest_size();
        let slot_size =
            if params.hash_type == 0 { digest_size } else { 1usize << bits_up(digest_size) };
        // The smallest hash block (512) holds at least 8 of the largest digests (64).
        let digest_size_u64 =
            u64::try_from(digest_size).map_err(|_| VerityError::Overflow { what: "digest" })?;
        let hashes_per_block_bits = bits_down(hash_block_size / digest_size_u64);

        let hash_start_block = if params.superblock {
            if !hash_offset.is_multiple_of(SUPERBLOCK_BYTES) {
                return Err(VerityError::UnalignedHashOffset { offset: hash_offset });
            }
            hash_offset
                .checked_add(SUPERBLOCK_BYTES + hash_block_size - 1)
                .ok_or(VerityError::Overflow { what: "hash offset" })?
                / hash_block_size
        } else {
            // veritysetup rounds a misaligned offset down without a superblock.
            hash_offset / hash_block_size
        };

        let mut level_count = 0u32;
        while hashes_per_block_bits * level_count < 64
            && (data_blocks - 1) >> (hashes_per_block_bits * level_count) != 0
        {
            level_count += 1;
        }
        // Sizes bottom-up, then positions top-down.
        let mut sizes = Vec::new();
        for level in 0..level_count {
            let shift = (level + 1) * hashes_per_block_bits;
            let blocks = if shift >= 64 { 1 } else { ((data_blocks - 1) >> shift) + 1 };
            sizes.push(blocks);
        }
        let mut levels = vec![Level { first_block: 0, blocks: 0 }; sizes.len()];
        let mut position = hash_start_block;
        for (index, &blocks) in sizes.iter().enumerate().rev() {
            levels[index] = Level { first_block: position, blocks };
            position =
                position.checked_add(blocks).ok_or(VerityError::Overflow { what: "tree size" })?;
        }
        position.checked_mul(hash_block_size).ok_or(VerityError::Overflow { what: "tree size" })?;

        Ok(TreeGeometry {
            data_blocks,
            data_block_size,
            hash_block_size,
            digest_size,
            slot_size,
            hashes_per_block_bits,
            hash_offset,
            superblock: params.superblock,
            hash_start_block,
            levels,
        })
    }

    pub fn data_blocks(&self) -> u64 {
        self.data_blocks
    }

    pub fn data_block_size(&self) -> u64 {
        self.data_block_size
    }

    pub fn hash_block_size(&self) -> u64 {
        self.hash_block_size
    }

    /// Bytes of the data area.
    pub fn data_bytes(&self) -> u64 {
        // new() checked that this product fits.
        self.data_blocks * self.data_block_size
    }

    pub fn digest_size(&self) -> usize {
        self.digest_size
    }

    /// Bytes each digest takes in a hash block.
    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    pub fn hashes_per_block(&self) -> u64 {
        1u64 << self.hashes_per_block_bits
    }

    /// Levels from the one hashing the data (index 0) to the top.
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// The kernel's `hash_start_block`: index of the first tree block.
    pub fn hash_start_block(&self) -> u64 {
        self.hash_start_block
    }

    /// Where the superblock is, if there is one.
    pub fn superblock_offset(&self) -> Option<u64> {
        self.superblock.then_some(self.hash_offset)
    }

    /// Byte offset of the first tree block.
    pub fn hash_start(&self) -> u64 {
        // Bounded by hash_end, which new() checked.
        self.hash_start_block * self.hash_block_size
    }

    /// Number of tree blocks (superblock excluded).
    pub fn tree_blocks(&self) -> u64 {
        self.levels.iter().map(|level| level.blocks).sum()
    }

    /// Byte offset just past the last tree block. With a single data block
    /// there is no tree block and this is the tree start, which with a
    /// superblock lies past it (veritysetup makes the hash file that long).
    pub fn hash_end(&self) -> u64 {
        // new() checked that (start + tree blocks) * hash block size fits.
        (self.hash_start_block + self.tree_blocks()) * self.hash_block_size
    }

    /// Where the hash area (superblock or first tree block) begins.
    pub fn hash_area_start(&self) -> u64 {
        if self.superblock { self.hash_offset } else { self.hash_start() }
    }

    /// Bytes from the hash offset to the end of the tree.
    pub fn hash_area_bytes(&self) -> u64 {
        self.hash_end().saturating_sub(self.hash_offset)
    }

    /// Byte offset of a level's first block.
    pub fn level_offset(&self, level: usize) -> u64 {
        self.levels[level].first_block * self.hash_block_size
    }

    /// Bytes of a level.
    pub fn level_bytes(&self, level: usize) -> u64 {
        self.levels[level].blocks * self.hash_block_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HashAlgorithm;

    fn blocks(params: &VerityParams, n: u64) -> Vec<u64> {
        TreeGeometry::new(params, n, 0).unwrap().levels().iter().map(|l| l.blocks).collect()
    }

    #[test]
    fn level_counts() {
        let p = VerityParams::default();
        assert_eq!(blocks(&p, 1), Vec::<u64>::new());
        assert_eq!(blocks(&p, 2), vec![1]);
        assert_eq!(blocks(&p, 128), vec![1]);
        assert_eq!(blocks(&p, 129), vec![2, 1]);
        assert_eq!(blocks(&p, 16384), vec![128, 1]);
        assert_eq!(blocks(&p, 16385), vec![129, 2, 1]);
        assert_eq!(blocks(&p, 20000), vec![157, 2, 1]);
        // formats.md §2.3: 1 GiB, 2 GiB, 8 GiB of 4 KiB blocks.
        assert_eq!(blocks(&p, 262144), vec![2048, 16, 1]);
        assert_eq!(blocks(&p, 524288), vec![4096, 32, 1]);
        assert_eq!(blocks(&p, 2097152), vec![16384, 128, 1]);
    }

    #[test]
    fn slots_and_hashes_per_block() {
        let geometry = |algorithm, hash_type, hash_block_size| {
            let p =
                VerityParams { algorithm, hash_type, hash_block_size, ..VerityParams::default() };
            let g = TreeGeometry::new(&p, 1000, 0).unwrap();
            (g.slot_size(), g.hashes_per_block())
        };
        assert_eq!(geometry(HashAlgorithm::Sha1, 1, 4096), (32, 128));
        assert_eq!(geometry(HashAlgorithm::Sha1, 0, 4096), (20, 128));
        assert_eq!(geometry(HashAlgorithm::Sha256, 1, 4096), (32, 128));
        assert_eq!(geometry(HashAlgorithm::Sha512, 1, 4096), (64, 64));
        assert_eq!(geometry(HashAlgorithm::Sha512, 1, 512), (64, 8));
        assert_eq!(geometry(HashAlgorithm::Sha1, 1, 512), (32, 16));
    }

    #[test]
    fn placement() {
        let p = VerityParams::default();
        // Separate file: superblock at 0, tree from block 1, top level first.
        let g = TreeGeometry::new(&p, 20000, 0).unwrap();
        assert_eq!(g.hash_start_block(), 1);
        assert_eq!(g.levels()[2].first_block, 1);
        assert_eq!(g.levels()[1].first_block, 2);
        assert_eq!(g.levels()[0].first_block, 4);
        assert_eq!(g.hash_end(), 659456);
        // Same file, formats.md §2.2: superblock at 1228800, tree at block 301.
        let g = TreeGeometry::new(&p, 300, 1228800).unwrap();
        assert_eq!(g.hash_start_block(), 301);
        assert_eq!(g.levels()[1].first_block, 301);
        assert_eq!(g.levels()[0].first_block, 302);
        assert_eq!(g.hash_end(), 1228800 + 20480);
        assert_eq!(g.hash_area_bytes(), 20480);
        // Without a superblock a misaligned offset rounds down.
        let p = VerityParams { superblock: false, ..VerityParams::default() };
        let g = TreeGeometry::new(&p, 300, 5000).unwrap();
        assert_eq!(g.hash_start_block(), 1);
        assert_eq!(g.hash_area_bytes(), 4 * 4096 + 4096 - 5000);
        // One data block: no tree, just the superblock.
        let p = VerityParams::default();
        let g = TreeGeometry::new(&p, 1, 0).unwrap();
        assert_eq!((g.tree_blocks(), g.hash_end()), (0, 4096));
    }

    #[test]
    fn rejects_bad_parameters() {
        let p = VerityParams::default();
        assert!(matches!(TreeGeometry::new(&p, 0, 0), Err(VerityError::NoDataBlocks)));
        assert!(matches!(
            TreeGeometry::new(&p, 1, 100),
            Err(VerityError::UnalignedHashOffset { offset: 100 })
        ));
        let bad = VerityParams { data_block_size: 3000, ..VerityParams::default() };
        assert!(matches!(
            TreeGeometry::new(&bad, 1, 0),
            Err(VerityError::BlockSize { what: "data", size: 3000 })
        ));
        let bad = VerityParams { hash_block_size: 256, ..VerityParams::default() };
        assert!(matches!(
            TreeGeometry::new(&bad, 1, 0),
            Err(VerityError::BlockSize { what: "hash", size: 256 })
        ));
        let bad = VerityParams { salt: vec![0; 257], ..VerityParams::default() };
        assert!(matches!(
            TreeGeometry::new(&bad, 1, 0),
            Err(VerityError::SaltTooLong { len: 257 })
        ));
        assert!(matches!(TreeGeometry::new(&p, u64::MAX, 0), Err(VerityError::Overflow { .. })));
        assert!(matches!(
            TreeGeometry::new(&p, 1, u64::MAX - 511),
            Err(VerityError::Overflow { .. })
        ));
    }
}
