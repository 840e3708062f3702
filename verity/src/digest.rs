//! Block digests with the salt, as dm-verity computes them: H(salt ‖ block) for
//! hash type 1, H(block ‖ salt) for hash type 0 (cryptsetup verify_hash_block).
//!
//! Blocks are hashed in batches ([`Batch`]): SHA-256 with hash type 1, the
//! case that matters, goes to a multi-buffer kernel (`tape-sha256`, feature
//! `multi-buffer-sha256`) that runs several independent messages through the
//! CPU's SHA unit at once. One SHA-256 is a chain of dependent rounds that
//! leaves the unit idle between instructions; interleaving four messages fills
//! those gaps, about 1.7 times the single-message rate on this machine (the
//! same idea as the kernel's sha256_finup_2x for dm-verity). Everything else,
//! and machines where that crate has no hardware kernel, uses the `sha1` and
//! `sha2` crates one block at a time (they use the SHA extensions when the CPU
//! has them, detected at run time through `cpufeatures`).

use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use crate::{HashAlgorithm, VerityParams};

/// The longest digest supported (sha512).
pub(crate) const MAX_DIGEST_SIZE: usize = 64;

/// Blocks hashed together: a multiple of every multi-buffer kernel's lane
/// count (4 with the SHA extensions, 8 or 16 with AVX2 / AVX-512), small
/// enough for the stack.
pub(crate) const BATCH: usize = 16;

/// A hasher state that has already absorbed the salt (type 1), cloned for
/// every block so the salt is not hashed again and again.
#[derive(Clone)]
enum State {
    Sha1(Sha1),
    Sha256(Sha256),
    Sha512(Sha512),
}

/// Computes the digest of one block (data or hash) with the salt.
#[derive(Clone)]
pub(crate) struct BlockHasher {
    start: State,
    /// The salt to append, for hash type 0.
    suffix: Vec<u8>,
    digest_size: usize,
    /// With SHA-256 and hash type 1 where the multi-buffer kernel runs on
    /// hardware support: the salt, hashed before each block of a batch.
    multi_buffer_prefix: Option<Vec<u8>>,
}

fn finish<D: Digest + Clone>(start: &D, block: &[u8], suffix: &[u8], out: &mut [u8]) {
    let mut hasher = start.clone();
    hasher.update(block);
    if !suffix.is_empty() {
        hasher.update(suffix);
    }
    out.copy_from_slice(&hasher.finalize());
}

/// True when the multi-buffer SHA-256 kernel runs on hardware support here
/// (its portable fallbacks are slower than the `sha2` crate).
#[cfg(feature = "multi-buffer-sha256")]
fn multi_buffer_available() -> bool {
    !tape_sha256::backend().starts_with("portable")
}

#[cfg(not(feature = "multi-buffer-sha256"))]
fn multi_buffer_available() -> bool {
    false
}

/// SHA-256 of `prefix ‖ blocks[i]` into `out[i]`, several blocks at once.
#[cfg(feature = "multi-buffer-sha256")]
fn sha256_many(prefix: &[u8], blocks: &[&[u8]], out: &mut [[u8; 32]]) {
    tape_sha256::hash_many_prefixed(prefix, blocks, out);
}

/// Without the multi-buffer kernel (never chosen then, but kept exact).
#[cfg(not(feature = "multi-buffer-sha256"))]
fn sha256_many(prefix: &[u8], blocks: &[&[u8]], out: &mut [[u8; 32]]) {
    for (digest, block) in out.iter_mut().zip(blocks) {
        digest.copy_from_slice(&Sha256::new_with_prefix(prefix).chain_update(block).finalize());
    }
}

impl BlockHasher {
    pub(crate) fn new(params: &VerityParams) -> BlockHasher {
        let prefix: &[u8] = if params.hash_type == 0 { &[] } else { &params.salt };
        let suffix = if params.hash_type == 0 { params.salt.clone() } else { Vec::new() };
        let start = match params.algorithm {
            HashAlgorithm::Sha1 => State::Sha1(Sha1::new_with_prefix(prefix)),
            HashAlgorithm::Sha256 => State::Sha256(Sha256::new_with_prefix(prefix)),
            HashAlgorithm::Sha512 => State::Sha512(Sha512::new_with_prefix(prefix)),
        };
        let multi_buffer = params.algorithm == HashAlgorithm::Sha256
            && params.hash_type == 1
            && multi_buffer_available();
        BlockHasher {
            start,
            suffix,
            digest_size: params.algorithm.digest_size(),
            multi_buffer_prefix: multi_buffer.then(|| prefix.to_vec()),
        }
    }

    /// The same hasher without the multi-buffer kernel, to check one path
    /// against the other.
    #[cfg(test)]
    pub(crate) fn one_at_a_time(mut self) -> BlockHasher {
        self.multi_buffer_prefix = None;
        self
    }

    /// Writes the digest of `block` into `out`, which is exactly one digest long.
    pub(crate) fn digest_into(&self, block: &[u8], out: &mut [u8]) {
        match &self.start {
            State::Sha1(h) => finish(h, block, &self.suffix, out),
            State::Sha256(h) => finish(h, block, &self.suffix, out),
            State::Sha512(h) => finish(h, block, &self.suffix, out),
        }
    }

    pub(crate) fn digest(&self, block: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; self.digest_size];
        self.digest_into(block, &mut out);
        out
    }

    /// Digests of up to [`BATCH`] blocks: `out[i][..digest_size]` receives
    /// the digest of `blocks[i]`.
    fn digest_many(&self, blocks: &[&[u8]], out: &mut [[u8; MAX_DIGEST_SIZE]]) {
        if let Some(prefix) = &self.multi_buffer_prefix {
            let mut digests = [[0u8; 32]; BATCH];
            let digests = &mut digests[..blocks.len()];
            sha256_many(prefix, blocks, digests);
            for (slot, digest) in out.iter_mut().zip(digests.iter()) {
                slot[..32].copy_from_slice(digest);
            }
            return;
        }
        for (slot, block) in out.iter_mut().zip(blocks) {
            self.digest_into(block, &mut slot[..self.digest_size]);
        }
    }
}

/// Plain SHA-256 (no salt) of each of `blocks` into `out`, through the
/// multi-buffer kernel where it runs on hardware support, for callers with many
/// independent blocks to hash (the build report's data digest).
pub fn sha256_blocks(blocks: &[&[u8]], out: &mut [[u8; 32]]) {
    assert_eq!(blocks.len(), out.len(), "one digest per block");
    if multi_buffer_available() {
        for (blocks, out) in blocks.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
            sha256_many(&[], blocks, out);
        }
    } else {
        for (block, digest) in blocks.iter().zip(out.iter_mut()) {
            digest.copy_from_slice(&Sha256::digest(block));
        }
    }
}

/// Blocks waiting to be hashed together, each with where its digest goes in
/// an output buffer the caller passes to [`Batch::push`] and [`Batch::flush`]
/// (always the same one between flushes).
pub(crate) struct Batch<'h, 'b> {
    hasher: &'h BlockHasher,
    blocks: [&'b [u8]; BATCH],
    targets: [usize; BATCH],
    len: usize,
}

impl<'h, 'b> Batch<'h, 'b> {
    pub(crate) fn new(hasher: &'h BlockHasher) -> Batch<'h, 'b> {
        Batch { hasher, blocks: [&[]; BATCH], targets: [0; BATCH], len: 0 }
    }

    /// Queues `block`, whose digest goes to `out[target..target + digest
    /// size]`; hashes the queue when it is full.
    pub(crate) fn push(&mut self, block: &'b [u8], target: usize, out: &mut [u8]) {
        self.blocks[self.len] = block;
        self.targets[self.len] = target;
        self.len += 1;
        if self.len == BATCH {
            self.flush(out);
        }
    }

    /// Hashes the queued blocks into `out`.
    pub(crate) fn flush(&mut self, out: &mut [u8]) {
        if self.len == 0 {
            return;
        }
        let mut digests = [[0u8; MAX_DIGEST_SIZE]; BATCH];
        self.hasher.digest_many(&self.blocks[..self.len], &mut digests[..self.len]);
        let size = self.hasher.digest_size;
        for (&target, digest) in self.targets[..self.len].iter().zip(&digests) {
            out[target..target + size].copy_from_slice(&digest[..size]);
        }
        self.len = 0;
    }
}

/// True when every byte is zero; reads 64 bytes at a time so the compiler
/// vectorises the inner loop.
pub(crate) fn is_zero(block: &[u8]) -> bool {
    let mut chunks = block.chunks_exact(64);
    let whole = chunks.by_ref().all(|chunk| chunk.iter().fold(0u8, |acc, &b| acc | b) == 0);
    whole && chunks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_sha256_of_many_blocks() {
        let blocks: Vec<Vec<u8>> = (0..37u8).map(|i| vec![i; 4096 + usize::from(i)]).collect();
        let refs: Vec<&[u8]> = blocks.iter().map(Vec::as_slice).collect();
        let mut out = vec![[0u8; 32]; refs.len()];
        sha256_blocks(&refs, &mut out);
        for (block, digest) in refs.iter().zip(&out) {
            assert_eq!(digest[..], Sha256::digest(block)[..]);
        }
    }

    #[test]
    fn salt_placement() {
        let block = [0xabu8; 512];
        let salt = [1u8, 2, 3, 4];
        let mut p = VerityParams { salt: salt.to_vec(), ..VerityParams::default() };
        let prefixed: Vec<u8> = salt.iter().chain(block.iter()).copied().collect();
        assert_eq!(BlockHasher::new(&p).digest(&block), Sha256::digest(&prefixed).to_vec());
        p.hash_type = 0;
        let suffixed: Vec<u8> = block.iter().chain(salt.iter()).copied().collect();
        assert_eq!(BlockHasher::new(&p).digest(&block), Sha256::digest(&suffixed).to_vec());
    }

    /// Batches give the digests of one-at-a-time hashing, for every
    /// algorithm, hash type, salt length (around the 64-byte SHA block) and
    /// block size, with partial batches.
    #[test]
    fn batches_match_single_digests() {
        let bytes: Vec<u8> = (0..64 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
            .collect();
        for algorithm in [HashAlgorithm::Sha1, HashAlgorithm::Sha256, HashAlgorithm::Sha512] {
            for hash_type in [0, 1] {
                for salt_len in [0usize, 4, 32, 55, 56, 63, 64, 65, 256] {
                    let salt: Vec<u8> =
                        (0..salt_len).map(|i| (i * 7 + 1).to_le_bytes()[0]).collect();
                    let p = VerityParams { algorithm, hash_type, salt, ..VerityParams::default() };
                    let hasher = BlockHasher::new(&p);
                    let single = hasher.clone().one_at_a_time();
                    let size = algorithm.digest_size();
                    for block_size in [512usize, 4096] {
                        for count in [1usize, 3, BATCH - 1, BATCH, BATCH + 5] {
                            let blocks: Vec<&[u8]> = bytes.chunks(block_size).take(count).collect();
                            let mut out = vec![0u8; count * size];
                            let mut batch = Batch::new(&hasher);
                            for (index, block) in blocks.iter().enumerate() {
                                batch.push(block, index * size, &mut out);
                            }
                            batch.flush(&mut out);
                            for (index, block) in blocks.iter().enumerate() {
                                assert_eq!(
                                    &out[index * size..(index + 1) * size],
                                    &single.digest(block)[..],
                                    "{algorithm:?} type {hash_type} salt {salt_len} block {index} of {count}x{block_size}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn zero_detection() {
        let mut block = vec![0u8; 4096];
        assert!(is_zero(&block));
        for position in [0, 63, 64, 4000, 4095] {
            block[position] = 1;
            assert!(!is_zero(&block));
            block[position] = 0;
        }
        assert!(is_zero(&block[..100]) && !is_zero(&[0, 0, 1]));
    }
}
