//! Building and checking a dm-verity hash tree (cryptsetup
//! lib/verity/verity_hash.c semantics; the layout is in `geometry.rs`).
//!
//! The whole tree is held in memory (1/128 of the data for sha256 with 4 KiB
//! blocks: 32 MiB for 4 GiB); the data is streamed through one buffer of at
//! most [`READ_BYTES`] per worker thread, reused from task to task. The leaf
//! level is cut into tasks of about [`TASK_BYTES`] of data hashed in parallel;
//! each task owns a disjoint part of level 0, so no locking is needed. Blocks
//! are hashed in batches (`digest::Batch`), so SHA-256 runs several at once.
//!
//! Repeated blocks are not hashed again: a zero data block, or a hash block
//! over zero data, takes a precomputed digest; a block equal to the block
//! before it (compared only when both are at hand) takes that block's digest.
//! Above holes and empty space the levels are long runs of identical blocks,
//! so these cost a comparison each instead of a hash.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};

use rayon::prelude::*;
use rustix::fs::{SeekFrom, seek};

use crate::digest::{Batch, BlockHasher, is_zero};
use crate::geometry::TreeGeometry;
use crate::sparse::{DataRuns, Run};
use crate::{FormatOutput, VerityError, VerityParams};

/// Data bytes per parallel task: large enough to amortise scheduling, small
/// enough to balance two to dozens of threads.
const TASK_BYTES: u64 = 4 << 20;
/// Largest read buffer of one worker.
const READ_BYTES: u64 = 1 << 20;
/// The tree is written in pieces of this size, in parallel.
const WRITE_BYTES: usize = 1 << 20;

fn to_usize(value: u64, what: &'static str) -> Result<usize, VerityError> {
    usize::try_from(value).map_err(|_| VerityError::Overflow { what })
}

/// Size of a file or block device, without disturbing its cursor.
fn file_size(file: &File, what: &'static str) -> Result<u64, VerityError> {
    let metadata = file.metadata().map_err(VerityError::io(what, 0))?;
    if metadata.is_file() {
        return Ok(metadata.len());
    }
    let io = |e: rustix::io::Errno| VerityError::io(what, 0)(e.into());
    let saved = seek(file, SeekFrom::Current(0)).map_err(io)?;
    let size = seek(file, SeekFrom::End(0)).map_err(io)?;
    seek(file, SeekFrom::Start(saved)).map_err(io)?;
    Ok(size)
}

/// The sizes the hashing loops index with, as `usize`.
#[derive(Debug, Clone, Copy)]
struct Shape {
    data_block_size: usize,
    hash_block_size: usize,
    hashes_per_block: usize,
    slot_size: usize,
    digest_size: usize,
}

impl Shape {
    fn new(geometry: &TreeGeometry) -> Result<Shape, VerityError> {
        Ok(Shape {
            data_block_size: to_usize(geometry.data_block_size(), "data block size")?,
            hash_block_size: to_usize(geometry.hash_block_size(), "hash block size")?,
            hashes_per_block: to_usize(geometry.hashes_per_block(), "hashes per block")?,
            slot_size: geometry.slot_size(),
            digest_size: geometry.digest_size(),
        })
    }

    /// Where the digest of the `relative`-th block lies in a buffer laid out
    /// like a level from a block whose slot starts the buffer.
    fn slot_offset(&self, relative: usize) -> usize {
        (relative / self.hashes_per_block) * self.hash_block_size
            + (relative % self.hashes_per_block) * self.slot_size
    }

    /// How many digests a buffer of `len` bytes laid out that way holds.
    fn capacity(&self, len: usize) -> usize {
        (len / self.hash_block_size) * self.hashes_per_block
            + (len % self.hash_block_size) / self.slot_size
    }
}

/// Everything needed to hash data blocks.
struct Leaves<'a> {
    data: &'a File,
    data_offset: u64,
    geometry: &'a TreeGeometry,
    shape: Shape,
    hasher: &'a BlockHasher,
    runs: DataRuns,
    /// Digest of an all-zero data block, used for holes and zero blocks.
    zero_digest: Vec<u8>,
}

impl<'a> Leaves<'a> {
    fn new(
        data: &'a File,
        data_offset: u64,
        geometry: &'a TreeGeometry,
        hasher: &'a BlockHasher,
    ) -> Result<Leaves<'a>, VerityError> {
        let shape = Shape::new(geometry)?;
        let available =
            file_size(data, "reading the size of the data file")?.saturating_sub(data_offset);
        let needed = geometry.data_bytes();
        if available < needed {
            return Err(VerityError::DataTooShort {
                data_offset,
                data_blocks: geometry.data_blocks(),
                // Block sizes come from u32 parameters.
                data_block_size: u32::try_from(geometry.data_block_size()).unwrap_or(u32::MAX),
                available,
            });
        }
        data_offset.checked_add(needed).ok_or(VerityError::Overflow { what: "data area end" })?;
        let runs =
            DataRuns::find(data, data_offset, geometry.data_blocks(), geometry.data_block_size())
                .map_err(VerityError::io("finding the holes of the data file", data_offset))?;
        let zero_digest = hasher.digest(&vec![0u8; shape.data_block_size]);
        Ok(Leaves { data, data_offset, geometry, shape, hasher, runs, zero_digest })
    }

    /// How many data blocks from `first` on a buffer of `len` bytes covers.
    fn count_from(&self, first: u64, len: usize) -> usize {
        let remaining = self.geometry.data_blocks().saturating_sub(first);
        let capacity = self.shape.capacity(len);
        usize::try_from(remaining).map_or(capacity, |remaining| remaining.min(capacity))
    }

    /// Hashes the data blocks from `first` on into `out`, which is laid out
    /// like level 0 from the slot of block `first`: whole hash blocks when
    /// `first` is a multiple of the hashes per block, otherwise a run of slots
    /// inside one hash block. Stops at the end of `out` or of the data.
    /// `buffer` is the calling worker's read buffer, reused from task to task.
    fn hash_range(
        &self,
        first: u64,
        out: &mut [u8],
        buffer: &mut Vec<u8>,
    ) -> Result<(), VerityError> {
        let shape = self.shape;
        let count = self.count_from(first, out.len());
        // At least one block, at most READ_BYTES when blocks are smaller.
        let buffer_blocks =
            usize::try_from(READ_BYTES / self.geometry.data_block_size()).unwrap_or(1).max(1);
        let mut done = 0usize;
        while done < count {
            let (kind, run_end) = self.runs.run_at(first + done as u64, first + count as u64);
            // run_end lies between first + done and first + count.
            let run_len = usize::try_from(run_end - first).unwrap_or(count) - done;
            match kind {
                Run::Hole => {
                    for relative in done..done + run_len {
                        let at = shape.slot_offset(relative);
                        out[at..at + shape.digest_size].copy_from_slice(&self.zero_digest);
                    }
                }
                Run::Data => {
                    let mut next = done;
                    while next < done + run_len {
                        let blocks = (done + run_len - next).min(buffer_blocks);
                        let bytes = blocks * shape.data_block_size;
                        if buffer.len() < bytes {
                            buffer.resize(bytes, 0);
                        }
                        let offset = self.data_offset
                            + (first + next as u64) * self.geometry.data_block_size();
                        self.data
                            .read_exact_at(&mut buffer[..bytes], offset)
                            .map_err(VerityError::io("reading the data", offset))?;
                        self.hash_blocks(&buffer[..bytes], next, out);
                        next += blocks;
                    }
                }
            }
            done += run_len;
        }
        Ok(())
    }

    /// Hashes the whole data blocks of `data` into `out` from the slot of
    /// the `relative`-th block on. A zero block takes the precomputed digest;
    /// a block equal to the one before it takes that one's digest.
    fn hash_blocks(&self, data: &[u8], relative: usize, out: &mut [u8]) {
        let blocks = data.chunks_exact(self.shape.data_block_size).enumerate();
        let blocks = blocks.map(|(index, block)| (self.shape.slot_offset(relative + index), block));
        digest_blocks(self.hasher, blocks, is_zero, &self.zero_digest, out);
    }

    /// The byte ranges of level 0 each parallel task fills, with the first data
    /// block of each; increasing and disjoint.
    fn task_ranges(&self) -> Result<Vec<(u64, Range<usize>)>, VerityError> {
        let Shape { hash_block_size: hbs, hashes_per_block: hpb, slot_size: slot, .. } = self.shape;
        let level0_blocks = to_usize(self.geometry.levels()[0].blocks, "tree size")?;
        let per_task =
            to_usize((TASK_BYTES / self.geometry.data_block_size()).max(1), "task size")?;
        let mut ranges = Vec::new();
        if per_task >= hpb {
            let hash_blocks_per_task = per_task / hpb;
            let mut start = 0;
            while start < level0_blocks {
                let end = (start + hash_blocks_per_task).min(level0_blocks);
                ranges.push(((start * hpb) as u64, start * hbs..end * hbs));
                start = end;
            }
        } else {
            // Large data blocks with many hashes per block: split inside each hash block.
            for hash_block in 0..level0_blocks {
                let block_first = (hash_block * hpb) as u64;
                let mut slot_index = 0;
                while slot_index < hpb
                    && block_first + (slot_index as u64) < self.geometry.data_blocks()
                {
                    let end = (slot_index + per_task).min(hpb);
                    let base = hash_block * hbs;
                    ranges.push((
                        block_first + slot_index as u64,
                        base + slot_index * slot..base + end * slot,
                    ));
                    slot_index = end;
                }
            }
        }
        Ok(ranges)
    }

    /// Fills level 0 (zeroed, `levels[0].blocks` hash blocks).
    fn fill_level0(&self, level0: &mut [u8]) -> Result<(), VerityError> {
        let mut tasks = Vec::new();
        let mut rest = level0;
        let mut consumed = 0;
        for (first, range) in self.task_ranges()? {
            let (_, tail) = rest.split_at_mut(range.start - consumed);
            let (chunk, tail) = tail.split_at_mut(range.len());
            tasks.push((first, chunk));
            rest = tail;
            consumed = range.end;
        }
        tasks.into_par_iter().try_for_each_init(Vec::new, |buffer, (first, chunk)| {
            self.hash_range(first, chunk, buffer)
        })
    }

    /// The first data block whose digest differs from the stored level 0.
    fn first_mismatch(&self, stored_level0: &[u8]) -> Result<Option<u64>, VerityError> {
        let shape = self.shape;
        let results: Vec<Option<u64>> = self
            .task_ranges()?
            .into_par_iter()
            .map_init(
                || (Vec::new(), Vec::new()),
                |(buffer, computed), (first, range)| {
                    let stored = &stored_level0[range];
                    computed.clear();
                    computed.resize(stored.len(), 0);
                    self.hash_range(first, computed, buffer)?;
                    let bad = (0..self.count_from(first, stored.len())).find(|&relative| {
                        let at = shape.slot_offset(relative);
                        computed[at..at + shape.digest_size] != stored[at..at + shape.digest_size]
                    });
                    Ok(bad.map(|relative| first + relative as u64))
                },
            )
            .collect::<Result<_, VerityError>>()?;
        Ok(results.into_iter().flatten().min())
    }

    /// Digest of data block 0 alone (the root when there is one data block).
    fn first_block_digest(&self) -> Result<Vec<u8>, VerityError> {
        let mut slot = vec![0u8; self.shape.slot_size];
        self.hash_range(0, &mut slot, &mut Vec::new())?;
        slot.truncate(self.shape.digest_size);
        Ok(slot)
    }
}

/// The hash blocks that cover only zero data, one per level, with their
/// digests. Holes and zero-filled areas make many such blocks, all alike, so
/// comparing a block with the pattern (cheap) replaces hashing it.
struct ZeroBlocks {
    /// `blocks[i]`: a full block of level i whose every slot holds the digest
    /// of a zero block of the level below (of a zero data block for i = 0).
    blocks: Vec<Vec<u8>>,
    /// `digests[i]`: the digest of `blocks[i]`.
    digests: Vec<Vec<u8>>,
}

impl ZeroBlocks {
    fn new(
        shape: Shape,
        hasher: &BlockHasher,
        zero_data_digest: &[u8],
        levels: usize,
    ) -> ZeroBlocks {
        let mut digest = zero_data_digest.to_vec();
        let (mut blocks, mut digests) = (Vec::new(), Vec::new());
        for _ in 0..levels {
            let mut block = vec![0u8; shape.hash_block_size];
            for slot in 0..shape.hashes_per_block {
                let at = slot * shape.slot_size;
                block[at..at + shape.digest_size].copy_from_slice(&digest);
            }
            digest = hasher.digest(&block);
            blocks.push(block);
            digests.push(digest.clone());
        }
        ZeroBlocks { blocks, digests }
    }

    /// True when `block`, a block of level `level`, covers only zero data.
    fn is_zero_block(&self, level: usize, block: &[u8]) -> bool {
        block == self.blocks[level].as_slice()
    }
}

/// Computes level `index` (>= 1) from `child`, the level below it: `blocks`
/// hash blocks, in parallel over groups of parent blocks. A child block
/// covering only zeros takes its precomputed digest, and one equal to the
/// child before it takes that one's digest, so the long runs of identical
/// blocks above holes and empty space cost a comparison each, not a hash.
fn upper_level(
    shape: Shape,
    hasher: &BlockHasher,
    zeros: &ZeroBlocks,
    child: &[u8],
    index: usize,
    blocks: usize,
) -> Vec<u8> {
    let Shape { hash_block_size: hbs, hashes_per_block: hpb, .. } = shape;
    let child_level = index - 1;
    // Children hashed per task: about TASK_BYTES of them, whole parents.
    let parents_per_task = usize::try_from(TASK_BYTES).unwrap_or(usize::MAX) / (hpb * hbs);
    let parents_per_task = parents_per_task.max(1);
    let mut level = vec![0u8; blocks * hbs];
    level.par_chunks_mut(hbs * parents_per_task).enumerate().for_each(|(task, parents)| {
        let first_child = task * parents_per_task * hpb;
        let children = child.get(first_child * hbs..).unwrap_or(&[]);
        let children = children.chunks_exact(hbs).take(parents.len() / hbs * hpb);
        let children =
            children.enumerate().map(|(relative, block)| (shape.slot_offset(relative), block));
        let is_zero = |block: &[u8]| zeros.is_zero_block(child_level, block);
        digest_blocks(hasher, children, is_zero, &zeros.digests[child_level], parents);
    });
    level
}

/// Puts the digest of each block into `out` at the offset given with it: an all-zero
/// block (`is_zero`) takes `zero_digest`, a block equal to the one before it that
/// one's digest, the others are hashed in batches.
fn digest_blocks<'b>(
    hasher: &BlockHasher,
    blocks: impl Iterator<Item = (usize, &'b [u8])>,
    is_zero: impl Fn(&[u8]) -> bool,
    zero_digest: &[u8],
    out: &mut [u8],
) {
    let digest_size = zero_digest.len();
    let mut batch = Batch::new(hasher);
    let mut previous: Option<(&[u8], usize)> = None;
    for (at, block) in blocks {
        if is_zero(block) {
            out[at..at + digest_size].copy_from_slice(zero_digest);
        } else if let Some((_, source)) = previous.filter(|&(before, _)| before == block) {
            batch.flush(out);
            out.copy_within(source..source + digest_size, at);
        } else {
            batch.push(block, at, out);
            previous = Some((block, at));
        }
    }
    batch.flush(out);
}

fn same_file(a: &File, b: &File) -> Result<bool, VerityError> {
    let a = a.metadata().map_err(VerityError::io("reading the data file's metadata", 0))?;
    let b = b.metadata().map_err(VerityError::io("reading the hash file's metadata", 0))?;
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

fn check_overlap(
    data: &File,
    data_offset: u64,
    hash: &File,
    geometry: &TreeGeometry,
) -> Result<(), VerityError> {
    if !same_file(data, hash)? {
        return Ok(());
    }
    let data_end = data_offset + geometry.data_bytes();
    let hash_start = geometry.hash_area_start();
    let hash_end = geometry.hash_end();
    if data_offset < hash_end && hash_start < data_end {
        return Err(VerityError::Overlap {
            data_start: data_offset,
            data_end,
            hash_start,
            hash_end,
        });
    }
    Ok(())
}

fn check_tree_fits(geometry: &TreeGeometry) -> Result<(), VerityError> {
    let bytes: u64 = (0..geometry.levels().len()).map(|i| geometry.level_bytes(i)).sum();
    to_usize(bytes, "tree size held in memory").map(|_| ())
}

pub(crate) fn format(
    data: &File,
    data_offset: u64,
    data_blocks: u64,
    hash: &File,
    hash_offset: u64,
    params: &VerityParams,
) -> Result<FormatOutput, VerityError> {
    let geometry = TreeGeometry::new(params, data_blocks, hash_offset)?;
    check_tree_fits(&geometry)?;
    let hasher = BlockHasher::new(params);
    let leaves = Leaves::new(data, data_offset, &geometry, &hasher)?;
    check_overlap(data, data_offset, hash, &geometry)?;

    let level_count = geometry.levels().len();
    let mut levels: Vec<Vec<u8>> = Vec::with_capacity(level_count);
    let root_hash = if level_count == 0 {
        leaves.first_block_digest()?
    } else {
        let mut level0 = vec![0u8; to_usize(geometry.level_bytes(0), "tree size")?];
        leaves.fill_level0(&mut level0)?;
        levels.push(level0);
        let shape = Shape::new(&geometry)?;
        let zeros = ZeroBlocks::new(shape, &hasher, &leaves.zero_digest, level_count);
        for index in 1..level_count {
            let blocks = to_usize(geometry.levels()[index].blocks, "tree size")?;
            let next = upper_level(shape, &hasher, &zeros, &levels[index - 1], index, blocks);
            levels.push(next);
        }
        let top = &levels[level_count - 1];
        hasher.digest(top)
    };

    // Like veritysetup, make the hash file long enough for the whole area
    // (with one data block there is only the superblock, yet the file reaches
    // the tree start). Longer files are left as they are.
    let hash_size = file_size(hash, "reading the size of the hash file")?;
    if hash_size < geometry.hash_end() && hash.metadata().is_ok_and(|m| m.is_file()) {
        hash.set_len(geometry.hash_end())
            .map_err(VerityError::io("extending the hash file", geometry.hash_end()))?;
    }
    if let Some(offset) = geometry.superblock_offset() {
        let superblock = params.to_superblock(data_blocks).to_bytes();
        hash.write_all_at(&superblock, offset)
            .map_err(VerityError::io("writing the verity superblock", offset))?;
    }
    // In pieces written in parallel: copying into the page cache is most of
    // the cost, and it scales with the threads.
    let mut pieces = Vec::new();
    for (index, level) in levels.iter().enumerate().rev() {
        let mut offset = geometry.level_offset(index);
        for piece in level.chunks(WRITE_BYTES) {
            pieces.push((offset, piece));
            // A piece is at most WRITE_BYTES long.
            offset += piece.len() as u64;
        }
    }
    pieces.into_par_iter().try_for_each(|(offset, piece)| {
        hash.write_all_at(piece, offset).map_err(VerityError::io("writing the hash tree", offset))
    })?;
    Ok(FormatOutput { root_hash, geometry })
}

fn check_superblock(
    hash: &File,
    geometry: &TreeGeometry,
    params: &VerityParams,
) -> Result<(), VerityError> {
    let Some(offset) = geometry.superblock_offset() else { return Ok(()) };
    let found = crate::read_superblock(hash, offset)?;
    let expected = params.to_superblock(geometry.data_blocks());
    let mismatch = |field: &'static str, found: String, expected: String| {
        Err(VerityError::SuperblockMismatch { offset, field, found, expected })
    };
    if found.hash_type != expected.hash_type {
        return mismatch(
            "the hash type",
            found.hash_type.to_string(),
            expected.hash_type.to_string(),
        );
    }
    if found.algorithm != expected.algorithm {
        return mismatch(
            "the algorithm",
            found.algorithm.name().into(),
            expected.algorithm.name().into(),
        );
    }
    if found.data_block_size != expected.data_block_size {
        return mismatch(
            "the data block size",
            found.data_block_size.to_string(),
            expected.data_block_size.to_string(),
        );
    }
    if found.hash_block_size != expected.hash_block_size {
        return mismatch(
            "the hash block size",
            found.hash_block_size.to_string(),
            expected.hash_block_size.to_string(),
        );
    }
    if found.data_blocks != expected.data_blocks {
        return mismatch(
            "the number of data blocks",
            found.data_blocks.to_string(),
            expected.data_blocks.to_string(),
        );
    }
    if found.salt != expected.salt {
        return mismatch("the salt", crate::to_hex(&found.salt), crate::to_hex(&expected.salt));
    }
    Ok(())
}

pub(crate) fn verify(
    data: &File,
    data_offset: u64,
    data_blocks: u64,
    hash: &File,
    hash_offset: u64,
    params: &VerityParams,
    root_hash: &[u8],
) -> Result<(), VerityError> {
    let geometry = TreeGeometry::new(params, data_blocks, hash_offset)?;
    check_tree_fits(&geometry)?;
    let digest_size = params.algorithm.digest_size();
    if root_hash.len() != digest_size {
        return Err(VerityError::RootHashLength {
            algorithm: params.algorithm.name(),
            got: root_hash.len(),
            expected: digest_size,
        });
    }
    let hasher = BlockHasher::new(params);
    let leaves = Leaves::new(data, data_offset, &geometry, &hasher)?;
    check_overlap(data, data_offset, hash, &geometry)?;
    let available = file_size(hash, "reading the size of the hash file")?;
    if available < geometry.hash_end() {
        return Err(VerityError::TreeTruncated { needed: geometry.hash_end(), available });
    }
    check_superblock(hash, &geometry, params)?;

    let level_count = geometry.levels().len();
    if level_count == 0 {
        if leaves.first_block_digest()? != root_hash {
            return Err(VerityError::DataBlockMismatch { block: 0, offset: data_offset });
        }
        return Ok(());
    }
    let mut stored = Vec::with_capacity(level_count);
    for index in 0..level_count {
        let offset = geometry.level_offset(index);
        let mut level = vec![0u8; to_usize(geometry.level_bytes(index), "tree size")?];
        hash.read_exact_at(&mut level, offset)
            .map_err(VerityError::io("reading the hash tree", offset))?;
        stored.push(level);
    }

    // From the root down, so a damaged hash block is named rather than the data below it.
    let top = level_count - 1;
    if hasher.digest(&stored[top]) != root_hash {
        return Err(VerityError::HashBlockMismatch {
            block: geometry.levels()[top].first_block,
            level: top,
            offset: geometry.level_offset(top),
            parent: "the root hash",
        });
    }
    let shape = Shape::new(&geometry)?;
    let zeros = ZeroBlocks::new(shape, &hasher, &leaves.zero_digest, level_count);
    for index in (1..level_count).rev() {
        let parent = &stored[index];
        let blocks = to_usize(geometry.levels()[index].blocks, "tree size")?;
        let computed = upper_level(shape, &hasher, &zeros, &stored[index - 1], index, blocks);
        let children = stored[index - 1].len() / shape.hash_block_size;
        let bad = (0..children).find(|&child_index| {
            let at = shape.slot_offset(child_index);
            computed[at..at + digest_size] != parent[at..at + digest_size]
        });
        if let Some(child_index) = bad {
            let block = geometry.levels()[index - 1].first_block + child_index as u64;
            return Err(VerityError::HashBlockMismatch {
                block,
                level: index - 1,
                offset: block * geometry.hash_block_size(),
                parent: "its digest in the level above",
            });
        }
    }
    if let Some(block) = leaves.first_mismatch(&stored[0])? {
        return Err(VerityError::DataBlockMismatch {
            block,
            offset: data_offset + block * geometry.data_block_size(),
        });
    }
    Ok(())
}

// Test sizes are small: the casts in the tests cannot truncate.
#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    use super::*;
    use crate::HashAlgorithm;
    use std::io::Write;

    /// A straightforward sequential model of the format (formats.md §2.3),
    /// independent of the parallel engine: returns the root hash and the tree
    /// bytes in on-disk order (top level first).
    fn model(data: &[u8], p: &VerityParams) -> (Vec<u8>, Vec<u8>) {
        let hasher = BlockHasher::new(p);
        let ds = p.algorithm.digest_size();
        let slot = if p.hash_type == 0 { ds } else { ds.next_power_of_two() };
        let hbs = p.hash_block_size as usize;
        let mut hpb = 1;
        while hpb * 2 * ds <= hbs {
            hpb *= 2;
        }
        let mut digests: Vec<Vec<u8>> =
            data.chunks(p.data_block_size as usize).map(|b| hasher.digest(b)).collect();
        let mut levels: Vec<Vec<u8>> = Vec::new();
        while digests.len() > 1 {
            let mut level = Vec::new();
            for group in digests.chunks(hpb) {
                let mut block = vec![0u8; hbs];
                for (i, d) in group.iter().enumerate() {
                    block[i * slot..i * slot + ds].copy_from_slice(d);
                }
                level.extend_from_slice(&block);
            }
            digests = level.chunks(hbs).map(|b| hasher.digest(b)).collect();
            levels.push(level);
        }
        (digests.remove(0), levels.into_iter().rev().flatten().collect())
    }

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    fn read_all(file: &File) -> Vec<u8> {
        let len = file.metadata().unwrap().len() as usize;
        let mut out = vec![0u8; len];
        file.read_exact_at(&mut out, 0).unwrap();
        out
    }

    fn check_against_model(p: &VerityParams, blocks: u64) {
        let data = pseudo_random(blocks as usize * p.data_block_size as usize, blocks);
        let data_file = file_with(&data);
        let hash_file = tempfile::tempfile().unwrap();
        let out = format(&data_file, 0, blocks, &hash_file, 0, p).unwrap();
        let (root, tree) = model(&data, p);
        assert_eq!(out.root_hash, root, "root for {blocks} blocks, {p:?}");
        let written = read_all(&hash_file);
        let start = out.hash_start() as usize;
        assert_eq!(
            &written[start.min(written.len())..],
            &tree[..],
            "tree for {blocks} blocks, {p:?}"
        );
        assert_eq!(written.len() as u64, out.hash_end());
        verify(&data_file, 0, blocks, &hash_file, 0, p, &out.root_hash).unwrap();
    }

    #[test]
    fn matches_the_model_for_zero_to_three_levels() {
        for blocks in [1, 2, 127, 128, 129, 300, 3000, 16385] {
            check_against_model(&VerityParams::default(), blocks);
        }
    }

    #[test]
    fn matches_the_model_for_each_algorithm_and_type() {
        for algorithm in [HashAlgorithm::Sha1, HashAlgorithm::Sha256, HashAlgorithm::Sha512] {
            for hash_type in [0, 1] {
                for salt in [vec![], vec![1, 2, 3, 4], vec![0x5a; 256]] {
                    let p = VerityParams { algorithm, hash_type, salt, ..VerityParams::default() };
                    for blocks in [1, 65, 129, 2100] {
                        check_against_model(&p, blocks);
                    }
                }
            }
        }
    }

    #[test]
    fn matches_the_model_for_other_block_sizes() {
        for (data_block_size, hash_block_size, blocks) in [
            (1024, 4096, 5000),
            (4096, 512, 300),
            (512, 512, 9000),
            (65536, 4096, 300),
            (524288, 524288, 20),
        ] {
            for superblock in [true, false] {
                let p = VerityParams {
                    data_block_size,
                    hash_block_size,
                    superblock,
                    ..VerityParams::default()
                };
                check_against_model(&p, blocks);
            }
        }
    }

    #[test]
    fn holes_and_zero_blocks_hash_like_zeros_read_from_disk() {
        let p = VerityParams { salt: vec![9; 32], ..VerityParams::default() };
        let blocks = 5000u64;
        let len = blocks * 4096;
        // Data at a few places, holes elsewhere.
        let sparse = tempfile::tempfile().unwrap();
        sparse.set_len(len).unwrap();
        let mut dense_bytes = vec![0u8; len as usize];
        for (offset, seed) in [(0u64, 1u64), (3 << 20, 2), (len - 10000, 3)] {
            let chunk = pseudo_random(10000, seed);
            sparse.write_all_at(&chunk, offset).unwrap();
            dense_bytes[offset as usize..offset as usize + chunk.len()].copy_from_slice(&chunk);
        }
        let dense = file_with(&dense_bytes);
        let (hash_sparse, hash_dense) =
            (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
        let a = format(&sparse, 0, blocks, &hash_sparse, 0, &p).unwrap();
        let b = format(&dense, 0, blocks, &hash_dense, 0, &p).unwrap();
        assert_eq!(a.root_hash, b.root_hash);
        assert_eq!(read_all(&hash_sparse), read_all(&hash_dense));
        assert_eq!(a.root_hash, model(&dense_bytes, &p).0);
    }

    #[test]
    fn same_file_with_offsets() {
        let p = VerityParams::default();
        let data = pseudo_random(300 * 4096, 7);
        let mut image = vec![0u8; 8192];
        image.extend_from_slice(&data);
        let file = file_with(&image);
        let hash_offset = 8192 + data.len() as u64;
        let out = format(&file, 8192, 300, &file, hash_offset, &p).unwrap();
        assert_eq!(out.root_hash, model(&data, &p).0);
        assert_eq!(out.hash_tree_bytes(), crate::hash_area_size(300, &p).unwrap());
        assert_eq!(read_all(&file).len() as u64, hash_offset + out.hash_tree_bytes());
        verify(&file, 8192, 300, &file, hash_offset, &p, &out.root_hash).unwrap();
        // The tree may not overlap the data.
        let err = format(&file, 8192, 300, &file, hash_offset - 4096, &p).unwrap_err();
        assert!(matches!(err, VerityError::Overlap { .. }), "{err}");
        assert!(err.is_invalid_input());
    }

    #[test]
    fn verify_names_the_first_bad_block() {
        let p = VerityParams { salt: vec![1; 4], ..VerityParams::default() };
        let blocks = 20000u64;
        let mut data = pseudo_random(blocks as usize * 4096, 3);
        let data_file = file_with(&data);
        let hash_file = tempfile::tempfile().unwrap();
        let out = format(&data_file, 0, blocks, &hash_file, 0, &p).unwrap();
        let tree = read_all(&hash_file);

        // Data flips: the block holding the byte is named.
        for position in [0usize, 4095, 4096, 12345678, data.len() - 1] {
            data[position] ^= 0x40;
            let damaged = file_with(&data);
            data[position] ^= 0x40;
            let err = verify(&damaged, 0, blocks, &hash_file, 0, &p, &out.root_hash).unwrap_err();
            match err {
                VerityError::DataBlockMismatch { block, .. } => {
                    assert_eq!(block, position as u64 / 4096)
                }
                other => panic!("flip at {position}: {other}"),
            }
        }
        // Tree flips: the hash block holding the byte is named.
        for position in [4096usize, 8191, 8192, 20000, tree.len() - 1] {
            let mut bytes = tree.clone();
            bytes[position] ^= 1;
            let damaged = file_with(&bytes);
            let err = verify(&data_file, 0, blocks, &damaged, 0, &p, &out.root_hash).unwrap_err();
            match err {
                VerityError::HashBlockMismatch { block, .. } => {
                    assert_eq!(block, position as u64 / 4096)
                }
                other => panic!("flip at {position}: {other}"),
            }
            assert!(err_is_mismatch(&data_file, &damaged, blocks, &p, &out.root_hash));
        }
        // Superblock damage and truncation are reported too.
        let mut bytes = tree.clone();
        bytes[80] = 9;
        let err =
            verify(&data_file, 0, blocks, &file_with(&bytes), 0, &p, &out.root_hash).unwrap_err();
        assert!(matches!(err, VerityError::SuperblockMismatch { field: "the salt", .. }), "{err}");
        let err = verify(
            &data_file,
            0,
            blocks,
            &file_with(&tree[..tree.len() - 1]),
            0,
            &p,
            &out.root_hash,
        )
        .unwrap_err();
        assert!(matches!(err, VerityError::TreeTruncated { .. }), "{err}");
        let mut wrong_root = out.root_hash.clone();
        wrong_root[0] ^= 1;
        let err = verify(&data_file, 0, blocks, &hash_file, 0, &p, &wrong_root).unwrap_err();
        assert!(matches!(err, VerityError::HashBlockMismatch { block: 1, level: 2, .. }), "{err}");
    }

    fn err_is_mismatch(
        data: &File,
        hash: &File,
        blocks: u64,
        p: &VerityParams,
        root: &[u8],
    ) -> bool {
        verify(data, 0, blocks, hash, 0, p, root).unwrap_err().is_mismatch()
    }

    /// Runs of identical blocks (non-zero and zero, across task and hash
    /// block boundaries, so whole hash blocks repeat too) reuse digests and
    /// still give the model's tree; verify names a changed block in a run.
    #[test]
    fn repeated_blocks_match_the_model() {
        let p = VerityParams { salt: vec![3; 32], ..VerityParams::default() };
        let blocks = 6000usize;
        let patterns: Vec<Vec<u8>> = (1..=4).map(|seed| pseudo_random(4096, seed)).collect();
        let mut data = Vec::with_capacity(blocks * 4096);
        for index in 0..blocks {
            match (index / 700) % 5 {
                4 => data.extend_from_slice(&[0u8; 4096]),
                run => data.extend_from_slice(&patterns[run]),
            }
        }
        // One odd block inside a run.
        data[2100 * 4096 + 17] ^= 1;
        let data_file = file_with(&data);
        let hash_file = tempfile::tempfile().unwrap();
        let out = format(&data_file, 0, blocks as u64, &hash_file, 0, &p).unwrap();
        let (root, tree) = model(&data, &p);
        assert_eq!(out.root_hash, root);
        assert_eq!(&read_all(&hash_file)[out.hash_start() as usize..], &tree[..]);

        data[1000 * 4096 + 4095] ^= 0x80;
        let err = verify(&file_with(&data), 0, blocks as u64, &hash_file, 0, &p, &out.root_hash)
            .unwrap_err();
        assert!(matches!(err, VerityError::DataBlockMismatch { block: 1000, .. }), "{err}");
    }

    #[test]
    fn single_block_root_is_the_block_digest() {
        let p = VerityParams::default();
        let data = pseudo_random(4096, 11);
        let data_file = file_with(&data);
        let hash_file = tempfile::tempfile().unwrap();
        let out = format(&data_file, 0, 1, &hash_file, 0, &p).unwrap();
        assert_eq!(out.root_hash, BlockHasher::new(&p).digest(&data));
        let mut other = data.clone();
        other[5] ^= 1;
        let err = verify(&file_with(&other), 0, 1, &hash_file, 0, &p, &out.root_hash).unwrap_err();
        assert!(matches!(err, VerityError::DataBlockMismatch { block: 0, .. }), "{err}");
    }

    #[test]
    fn short_data_is_rejected() {
        let p = VerityParams::default();
        let data_file = file_with(&[1u8; 4096 * 3]);
        let hash_file = tempfile::tempfile().unwrap();
        let err = format(&data_file, 0, 4, &hash_file, 0, &p).unwrap_err();
        assert!(matches!(err, VerityError::DataTooShort { available: 12288, .. }), "{err}");
        assert_eq!(hash_file.metadata().unwrap().len(), 0);
    }
}
