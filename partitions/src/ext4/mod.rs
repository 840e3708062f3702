//! A native ext4 writer: a [`FileTree`] in, a complete file system out, written in
//! one pass into a sparse [`FileRegion`], without root, mke2fs or a kernel.
//!
//! Spec: the ext4 on-disk format as documented in the kernel's
//! `Documentation/filesystems/ext4/` and e2fsprogs `lib/ext2fs/ext2_fs.h`, with the
//! facts and traps of shared/reference/formats.md §3 (checked with e2fsck 1.47 and
//! Linux 6.x).
//!
//! Supported subset: 4096-byte blocks, 256-byte inodes (extra_isize 32), features
//! ext_attr, dir_index (set for later read-write use; directories are written linear),
//! filetype, extents, 64bit, flex_bg, sparse_super with sparse_super2 (no superblock
//! copy, or one in the last group: [`Ext4Options::backup_superblock`]), large_file,
//! huge_file, dir_nlink, extra_isize, metadata_csum, uninitialised groups
//! (BLOCK_UNINIT, INODE_UNINIT, bg_itable_unused, as mke2fs's lazy init; see
//! group.rs); an optional internal JBD2 journal (inode 8). Regular
//! files with holes (all-zero blocks become holes too) up to 16 TiB, extent trees of
//! any depth, linear directories of any size, fast and slow symlinks, hard links,
//! devices (old and new encodings), FIFOs, sockets, 32-bit owners, nanosecond times,
//! xattrs in the inode and one external block, POSIX ACLs, lost+found.
//!
//! Left out: htree directory indexes, inline data, the resize inode, meta_bg,
//! bigalloc, encryption, casefolding, xattr values in inodes (ea_inode), shared xattr
//! blocks, reserved-block percentages (always 0).
//!
//! Layout (`Geometry` in plan.rs): every block that is written sits in one
//! stretch at the start: the superblock and descriptor table, the block bitmaps of
//! the groups that are always initialised, the inode bitmaps and tables of the groups
//! holding used inodes, the journal's superblock, then for each inode in number order
//! its xattr block, its data or directory blocks and its extent-tree blocks. The
//! other groups keep their (unwritten) bitmaps and inode tables in themselves, and the
//! journal's body (zeros) fills the end of the file system. Inode
//! numbers follow the tree's canonical walk: root 2, lost+found 11, then every node
//! at its first name in walk order. Everything, including times and ids, comes from
//! the tree and [`Ext4Options`], so the same input gives the same bytes.
//!
//! Size costs nothing: what is written is the superblock and descriptor table, the
//! bitmaps of groups holding used blocks or inodes, the used part of the inode
//! tables, the journal superblock and the content, all of it from block 0 on (plus
//! the superblock copy at the start of the last group when one is kept). Everything
//! else is left unwritten (a hole in a sparse sink), so a 2 TiB empty file system is
//! well under 32 MiB of data at its start, like a 2 GiB one.
//!
//! While writing, two helper threads read file content ahead (files dealt in turn) and
//! two others perform the positioned writes (write-behind on request); the allocation
//! and layout happen on the calling thread only, so the threads never change the
//! result. Memory use is bounded (about 16 MiB of read and write buffers, one group's
//! inode table, one directory).
//!
//! ```text
//! let needed = ext4::min_size(&tree, &opts)?;          // bytes, multiple of 4096
//! let summary = ext4::write(&tree, &opts, region)?;     // fs size = region.len() rounded down
//! let info = ext4::probe(region);                       // superblock facts for `inspect`
//! ```

mod alloc;
mod checksum;
mod dir;
mod extent;
mod group;
mod inode;
mod journal;
mod le;
mod plan;
mod superblock;
mod write;
mod xattr;

pub use superblock::{Ext4Info, probe};

use crate::tree::{FileTree, PendingNodes, Timestamp};
use crate::{FileRegion, Guid};
use std::io;

pub const BLOCK_SIZE: u64 = 4096;
pub(crate) const BLOCK_SIZE_USIZE: usize = 4096;
pub(crate) const BLOCK_SIZE_U32: u32 = 4096;
pub(crate) const BLOCKS_PER_GROUP: u32 = 32768;
pub(crate) const INODE_SIZE: usize = 256;
pub(crate) const INODE_SIZE_U16: u16 = 256;
pub(crate) const EXTRA_ISIZE: u16 = 32;
pub(crate) const DESC_SIZE: usize = 64;
pub(crate) const DESC_SIZE_U16: u16 = 64;
pub(crate) const ROOT_INO: u32 = 2;
pub(crate) const JOURNAL_INO: u32 = 8;
pub(crate) const FIRST_INO: u32 = 11;

/// How to make the file system.
#[derive(Clone, Debug)]
pub struct Ext4Options {
    /// Volume label, at most 16 bytes.
    pub label: String,
    /// `s_uuid`; also seeds every metadata checksum.
    pub uuid: Guid,
    /// `s_hash_seed` (used by the kernel for htree directories it creates later).
    pub hash_seed: Guid,
    /// Creation and last-write time of the file system (SOURCE_DATE_EPOCH), also the
    /// times of lost+found and the journal inode when they are made here.
    pub timestamp: Timestamp,
    /// Write an empty internal journal (read-write partitions).
    pub journal: bool,
    /// One inode per this many bytes of file system, like mke2fs `-i` (16384 is
    /// mke2fs's default; good for read-write partitions). `None`: just the inodes
    /// the tree needs plus `extra_inodes` (read-only images).
    pub inode_ratio: Option<u64>,
    /// Free inodes to keep on top of what the tree uses.
    pub extra_inodes: u32,
    /// Keep one superblock and descriptor-table copy, at the start of the last group
    /// (sparse_super2), for e2fsck to repair a damaged primary from. It is the one
    /// block written far from the start, so it costs one more stored block in a
    /// dynamic VHDX; without it (the default) a read-only image has no copy, which
    /// e2fsck accepts.
    pub backup_superblock: bool,
    /// Have the kernel start writing each range to the device as soon as it is
    /// written (see `Sink` in write.rs), instead of at the final `fsync`: faster for
    /// an image that is not read back soon. The bytes are the same either way.
    pub write_behind: bool,
}

impl Default for Ext4Options {
    fn default() -> Ext4Options {
        Ext4Options {
            label: String::new(),
            uuid: Guid::NIL,
            hash_seed: Guid::NIL,
            timestamp: Timestamp::default(),
            journal: false,
            inode_ratio: None,
            extra_inodes: 0,
            backup_superblock: false,
            write_behind: false,
        }
    }
}

/// What [`write()`] made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ext4Summary {
    pub block_size: u64,
    /// Blocks in the file system (the region may be a few blocks longer when a tiny
    /// last group was dropped).
    pub block_count: u64,
    pub free_blocks: u64,
    /// (block_count − free_blocks) × block_size: metadata included.
    pub used_bytes: u64,
    pub inode_count: u64,
    pub used_inodes: u64,
    pub journal_blocks: u64,
}

/// Why a file system could not be made. Paths are relative to the tree root.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error(
        "the tree needs an ext4 file system of {needed} bytes but only {available} bytes are available"
    )]
    TooSmall { needed: u64, available: u64 },
    #[error("the ext4 label '{0}' is longer than 16 bytes")]
    LabelTooLong(String),
    #[error("cannot read '/{path}' from {source_name}: {source}")]
    Content { path: String, source_name: String, source: io::Error },
    #[error("'/{path}' is {size} bytes, more than ext4 with 4 KiB blocks can hold (16 TiB)")]
    FileTooLarge { path: String, size: u64 },
    #[error("the symlink '/{path}' cannot be stored: {reason}")]
    BadSymlink { path: String, reason: &'static str },
    #[error("the extended attribute '{name}' of '/{path}' cannot be stored: {reason}")]
    BadXattr { path: String, name: String, reason: &'static str },
    #[error("the extended attributes of '/{path}' do not fit in the inode and one 4 KiB block")]
    XattrsTooLarge { path: String },
    #[error("'/{path}' has {count} hard links; ext4 allows at most 65000")]
    TooManyLinks { path: String, count: u64 },
    #[error("the tree has {count} entries, more than an ext4 file system can number (2^32 inodes)")]
    TooManyInodes { count: u64 },
    #[error("a region of {0} bytes is too large for ext4 with 4 KiB blocks")]
    TooLarge(u64),
    #[error("writing the ext4 file system at block {block}: {source}")]
    Write { block: u64, source: io::Error },
    #[error(
        "internal error: the ext4 layout ran out of space while writing '/{path}' although the plan fitted"
    )]
    OutOfSpace { path: String },
    #[error("internal error: the file reader thread stopped before '/{path}' was read")]
    ReaderStopped { path: String },
    /// The loader of a streamed tree stopped before this node: its own error says why.
    #[error("the source stopped being read before '/{path}'")]
    SourceStopped { path: String },
}

/// Smallest size in bytes (a multiple of 4096) of a region that [`write()`] accepts for
/// `tree`. It counts every block inside the files' data ranges as used, without
/// reading them; all-zero blocks found while writing become holes, so a file system of
/// exactly this size may keep some free space.
pub fn min_size(tree: &FileTree, opts: &Ext4Options) -> Result<u64, Ext4Error> {
    check_options(opts)?;
    let plan = plan::Plan::new(tree, opts, plan::Mode::Bound)?;
    Ok(plan::min_blocks(&plan, opts)? * BLOCK_SIZE)
}

/// Writes the file system for `tree` into `region` (its size rounded down to 4096
/// bytes). Fails with [`Ext4Error::TooSmall`] before writing anything when the tree
/// does not fit.
pub fn write(
    tree: &FileTree,
    opts: &Ext4Options,
    region: FileRegion<'_>,
) -> Result<Ext4Summary, Ext4Error> {
    check_options(opts)?;
    let blocks = region.len() / BLOCK_SIZE;
    let mut plan = plan::Plan::new(tree, opts, plan::Mode::Bound)?;
    let mut geometry = plan::Geometry::new(blocks, &plan, opts)?;
    if !geometry.as_ref().is_some_and(|g| g.fits(&plan)) {
        // The quick bound does not fit: count exactly, reading the files for all-zero blocks.
        plan = plan::Plan::new(tree, opts, plan::Mode::Exact)?;
        geometry = plan::Geometry::new(blocks, &plan, opts)?;
    }
    match geometry {
        Some(geometry) if geometry.fits(&plan) => {
            Ok(write::write(&plan, geometry, opts, region)?.0)
        }
        _ => Err(Ext4Error::TooSmall {
            needed: plan::min_blocks(&plan, opts)? * BLOCK_SIZE,
            available: region.len(),
        }),
    }
}

/// Writes the file system for a tree still being read: `skeleton` holds every
/// directory whole and every other node's kind, and `pending` receives those nodes,
/// filled in canonical order by a loader running alongside (which must end with
/// [`PendingNodes::stop`]). Writing starts at once and waits for each node as it comes
/// to it, so reading the source and writing the image overlap.
///
/// The bytes are those [`write()`] gives for the completed tree. Whether the tree fits
/// is only known at the end: `Ok(None)` says it did not fit (by the same measure
/// [`write()`] uses first) or ran out of room, and the caller should write the whole
/// tree with [`write()`], which fits it more closely or says how much is needed.
/// [`Ext4Error::SourceStopped`] means the loader stopped: its own error is the one to
/// report.
pub fn write_streamed(
    skeleton: &FileTree,
    pending: &PendingNodes,
    opts: &Ext4Options,
    region: FileRegion<'_>,
) -> Result<Option<Ext4Summary>, Ext4Error> {
    check_options(opts)?;
    let blocks = region.len() / BLOCK_SIZE;
    let plan = plan::Plan::streamed(skeleton, pending, opts)?;
    // The geometry depends on the inode count only, which the skeleton gives.
    let Some(geometry) = plan::Geometry::new(blocks, &plan, opts)? else {
        return Ok(None);
    };
    let limit = geometry.content_limit();
    let (summary, needs) = match write::write(&plan, geometry, opts, region) {
        Ok(written) => written,
        Err(Ext4Error::OutOfSpace { .. }) => return Ok(None),
        Err(error) => return Err(error),
    };
    let counted = plan.content_blocks + plan.slack_blocks + needs.blocks + needs.slack;
    Ok(limit.filter(|&limit| counted <= limit).map(|_| summary))
}

fn check_options(opts: &Ext4Options) -> Result<(), Ext4Error> {
    if opts.label.len() > 16 {
        return Err(Ext4Error::LabelTooLong(opts.label.clone()));
    }
    Ok(())
}
