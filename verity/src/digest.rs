//! Block digests with the salt, as dm-verity computes them: H(salt ‖ block) for
//! hash type 1, H(block ‖ salt) for hash type 0 (cryptsetup verify_hash_block).
//!
//! SHA-256 and SHA-1 run on the CPU's SHA extensions when it has them (the
//! `sha2` and `sha1` crates detect them at run time through `cpufeatures`).

use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};

use crate::{HashAlgorithm, VerityParams};

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
}

fn finish<D: Digest + Clone>(start: &D, block: &[u8], suffix: &[u8], out: &mut [u8]) {
    let mut hasher = start.clone();
    hasher.update(block);
    if !suffix.is_empty() {
        hasher.update(suffix);
    }
    out.copy_from_slice(&hasher.finalize());
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
        BlockHasher { start, suffix, digest_size: params.algorithm.digest_size() }
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
