//! Planning: inode numbers, link counts and the number of blocks every inode needs
//! (checked before anything is written), and the geometry of a file system of a
//! given size: groups, inodes per group, reserved superblock copies, and the
//! placement of bitmaps, inode tables and the journal.

use super::alloc::Allocator;
use super::extent::{self, ExtentList, MAX_EXTENT_LEN};
use super::{BLOCK_SIZE, BLOCK_SIZE_USIZE, BLOCKS_PER_GROUP, Ext4Error, Ext4Options, FIRST_INO};
use super::{INODE_SIZE, ROOT_INO};
use super::{dir, journal, xattr};
use crate::tree::{Content, FileTree, NodeId, NodeKind};
use std::ops::Range;

/// Longest file: logical block numbers are 32-bit.
const MAX_FILE_BLOCKS: u64 = 1 << 32;
/// Most names a non-directory may have (EXT4_LINK_MAX).
const MAX_LINKS: u64 = 65000;
/// Blocks read at once when scanning or copying file content (1 MiB).
pub(crate) const CHUNK_BLOCKS: u64 = 256;

/// How file blocks are counted when planning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Every block inside the data ranges counts (no reads).
    Bound,
    /// Content is read and all-zero blocks are not counted.
    Exact,
}

/// What an inode is made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Node(NodeId),
    /// lost+found made here (the tree has none).
    LostFound,
    Journal,
}

#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub ino: u32,
    pub source: Source,
    /// First path of the node, for messages.
    pub path: Vec<u8>,
    /// Parent directory's inode (directories only).
    pub parent: u32,
    pub links: u64,
    pub is_dir: bool,
}

impl Entry {
    pub(crate) fn path_string(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

#[derive(Debug)]
pub(crate) struct Plan<'t> {
    pub tree: &'t FileTree,
    /// In inode-number order.
    pub entries: Vec<Entry>,
    /// Inode number of each node (0 when unreachable).
    pub node_ino: Vec<u32>,
    pub last_ino: u32,
    /// Whether root holds a lost+found made here (inode 11).
    pub made_lost_found: bool,
    /// Blocks for every inode's data, directory, tree and xattr blocks (not the journal).
    pub content_blocks: u64,
    /// Margin for extents split by reserved ranges and for zero-block holes that
    /// deepen an extent tree (see [`Plan::new`]).
    pub slack_blocks: u64,
}

/// Block ranges (logical, sorted, merged) of a file that may hold data.
pub(crate) fn data_block_runs(content: &Content, path: &str) -> Result<Vec<Range<u64>>, Ext4Error> {
    let len = content.len();
    let mut ranges = content.data_ranges().map_err(|source| Ext4Error::Content {
        path: path.to_string(),
        source_name: content.describe(),
        source,
    })?;
    ranges.sort_by_key(|r| r.start);
    let mut runs: Vec<Range<u64>> = Vec::new();
    for range in ranges {
        let end = range.end.min(len);
        if range.start >= end {
            continue;
        }
        let run = range.start / BLOCK_SIZE..end.div_ceil(BLOCK_SIZE);
        match runs.last_mut() {
            Some(last) if last.end >= run.start => last.end = last.end.max(run.end),
            _ => runs.push(run),
        }
    }
    Ok(runs)
}

pub(crate) fn is_zero(block: &[u8]) -> bool {
    let mut words = block.chunks_exact(16);
    // chunks_exact yields 16-byte slices, so the conversion cannot fail.
    words.all(|w| u128::from_ne_bytes(w.try_into().unwrap_or([1; 16])) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

/// The data blocks and extent count of a file: from its data ranges, or exactly.
fn file_blocks(content: &Content, path: &str, mode: Mode) -> Result<(u64, u64), Ext4Error> {
    let runs = data_block_runs(content, path)?;
    let mut blocks = 0;
    let mut extents = 0;
    match mode {
        Mode::Bound => {
            for run in &runs {
                let n = run.end - run.start;
                blocks += n;
                extents += n.div_ceil(MAX_EXTENT_LEN);
            }
        }
        Mode::Exact => {
            let mut buf = vec![0u8; BLOCK_SIZE_USIZE * 256];
            let mut list = ExtentList::default();
            for run in &runs {
                let mut block = run.start;
                while block < run.end {
                    let n = (run.end - block).min(CHUNK_BLOCKS);
                    let bytes = &mut buf[..BLOCK_SIZE_USIZE * usize::try_from(n).unwrap_or(256)];
                    content.read_exact_at(bytes, block * BLOCK_SIZE).map_err(|source| {
                        Ext4Error::Content {
                            path: path.to_string(),
                            source_name: content.describe(),
                            source,
                        }
                    })?;
                    for (i, chunk) in bytes.chunks_exact(BLOCK_SIZE_USIZE).enumerate() {
                        if !is_zero(chunk) {
                            // Physical = logical: contiguity as if nothing intervened.
                            let logical = block + i as u64;
                            list.push(logical, logical, 1);
                        }
                    }
                    block += n;
                }
            }
            blocks = list.blocks;
            extents = list.extents.len() as u64;
        }
    }
    Ok((blocks, extents))
}

impl<'t> Plan<'t> {
    pub(crate) fn new(
        tree: &'t FileTree,
        opts: &Ext4Options,
        mode: Mode,
    ) -> Result<Plan<'t>, Ext4Error> {
        let root = tree.root();
        let mut node_ino = vec![0u32; tree.node_count()];
        let mut names = vec![0u64; tree.node_count()];
        let lost_found_node =
            tree.children(root).find(|(name, _)| *name == b"lost+found").map(|(_, id)| id);
        let made_lost_found = lost_found_node.is_none();
        let mut next_ino = match lost_found_node {
            Some(id) if tree.node(id).kind.is_dir() => FIRST_INO + 1,
            Some(_) => FIRST_INO,
            None => FIRST_INO + 1,
        };
        let mut entries = vec![Entry {
            ino: ROOT_INO,
            source: Source::Node(root),
            path: Vec::new(),
            parent: ROOT_INO,
            links: 0,
            is_dir: true,
        }];
        node_ino[root.index()] = ROOT_INO;
        if made_lost_found {
            entries.push(Entry {
                ino: FIRST_INO,
                source: Source::LostFound,
                path: b"lost+found".to_vec(),
                parent: ROOT_INO,
                links: 2,
                is_dir: true,
            });
        }
        if opts.journal {
            entries.push(Entry {
                ino: super::JOURNAL_INO,
                source: Source::Journal,
                path: b"<journal>".to_vec(),
                parent: 0,
                links: 1,
                is_dir: false,
            });
        }
        // Depth-first in name order, like FileTree::walk, remembering each parent.
        let mut stack: Vec<(Vec<u8>, NodeId, u32)> = Vec::new();
        let push_children =
            |stack: &mut Vec<(Vec<u8>, NodeId, u32)>, path: &[u8], id: NodeId, ino: u32| {
                let children: Vec<(&[u8], NodeId)> = tree.children(id).collect();
                for (name, child) in children.into_iter().rev() {
                    let mut child_path = path.to_vec();
                    if !child_path.is_empty() {
                        child_path.push(b'/');
                    }
                    child_path.extend_from_slice(name);
                    stack.push((child_path, child, ino));
                }
            };
        push_children(&mut stack, b"", root, ROOT_INO);
        while let Some((path, id, parent)) = stack.pop() {
            names[id.index()] += 1;
            if node_ino[id.index()] != 0 {
                continue;
            }
            let is_dir = tree.node(id).kind.is_dir();
            let ino = if Some(id) == lost_found_node && is_dir {
                FIRST_INO
            } else {
                let ino = next_ino;
                next_ino =
                    next_ino.checked_add(1).ok_or(Ext4Error::TooManyInodes { count: 1 << 32 })?;
                ino
            };
            node_ino[id.index()] = ino;
            if is_dir {
                push_children(&mut stack, &path, id, ino);
            }
            entries.push(Entry { ino, source: Source::Node(id), path, parent, links: 0, is_dir });
        }
        entries.sort_by_key(|e| e.ino);
        let last_ino = next_ino - 1;
        let mut content_blocks = 0u64;
        let mut slack_blocks = 0u64;
        for entry in &mut entries {
            let Source::Node(id) = entry.source else {
                if entry.source == Source::LostFound {
                    content_blocks += 4;
                }
                continue;
            };
            let node = tree.node(id);
            let path = entry.path_string();
            // Links: names for non-directories; 2 + subdirectories for directories.
            entry.links = match &node.kind {
                NodeKind::Directory(children) => {
                    let subdirs =
                        children.values().filter(|c| tree.node(**c).kind.is_dir()).count() as u64;
                    2 + subdirs + u64::from(id == root && made_lost_found)
                }
                _ => names[id.index()],
            };
            if !entry.is_dir && entry.links > MAX_LINKS {
                return Err(Ext4Error::TooManyLinks { path, count: entry.links });
            }
            let attrs = xattr::prepare(&node.meta.xattrs).map_err(|p| xattr_error(&path, p))?;
            let (_, in_block) = xattr::place(attrs).map_err(|p| xattr_error(&path, p))?;
            if !in_block.is_empty() {
                content_blocks += 1;
            }
            match &node.kind {
                NodeKind::Directory(children) => {
                    let mut lens: Vec<usize> = children.keys().map(|n| n.len()).collect();
                    if id == root && made_lost_found {
                        lens.push(b"lost+found".len());
                    }
                    let mut blocks = dir::block_count(lens.into_iter());
                    if entry.ino == FIRST_INO {
                        blocks = blocks.max(4);
                    }
                    content_blocks += blocks + extent::tree_blocks(blocks.div_ceil(MAX_EXTENT_LEN));
                }
                NodeKind::File(content) => {
                    if content.len() > (MAX_FILE_BLOCKS - 1) * BLOCK_SIZE {
                        return Err(Ext4Error::FileTooLarge { path, size: content.len() });
                    }
                    let (blocks, extents) = file_blocks(content, &path, mode)?;
                    content_blocks += blocks + extent::tree_blocks(extents);
                    // Holes found while writing can deepen a tree by one or two blocks
                    // past 1360 extents (see the module notes in write.rs).
                    if mode == Mode::Bound && blocks > 1360 {
                        slack_blocks += 2;
                    }
                }
                NodeKind::Symlink(target) => {
                    check_symlink(target, &path)?;
                    if target.len() >= 60 {
                        content_blocks += 1;
                    }
                }
                _ => {}
            }
        }
        Ok(Plan {
            tree,
            entries,
            node_ino,
            last_ino,
            made_lost_found,
            content_blocks,
            slack_blocks,
        })
    }
}

fn xattr_error(path: &str, problem: xattr::XattrProblem) -> Ext4Error {
    match problem {
        xattr::XattrProblem::NameTooLong(name) => Ext4Error::BadXattr {
            path: path.to_string(),
            name: String::from_utf8_lossy(&name).into_owned(),
            reason: "its name is longer than 255 bytes after the namespace prefix",
        },
        xattr::XattrProblem::BadAcl(name, reason) => Ext4Error::BadXattr {
            path: path.to_string(),
            name: String::from_utf8_lossy(&name).into_owned(),
            reason,
        },
        xattr::XattrProblem::TooLarge => Ext4Error::XattrsTooLarge { path: path.to_string() },
    }
}

fn check_symlink(target: &[u8], path: &str) -> Result<(), Ext4Error> {
    let reason = if target.is_empty() {
        "its target is empty"
    } else if target.contains(&0) {
        "its target contains a NUL byte"
    } else if target.len() >= BLOCK_SIZE_USIZE {
        "its target is longer than 4095 bytes"
    } else {
        return Ok(());
    };
    Err(Ext4Error::BadSymlink { path: path.to_string(), reason })
}

/// s_backup_bgs of sparse_super2 for `groups` groups, as mke2fs sets it: group 1
/// and the last group, sorted, 0 for "none" (one group: no copy; two: only group 1).
pub(crate) fn backup_bgs(groups: u32) -> [u32; 2] {
    let last = groups.saturating_sub(1);
    let first = 1.min(last);
    if first == last { [0, first] } else { [first, last] }
}

/// Whether group `group` holds a superblock and descriptor-table copy (group 0 holds
/// the primary).
pub(crate) fn has_backup(group: u32, bgs: [u32; 2]) -> bool {
    group == 0 || bgs.contains(&group)
}

/// The shape of a file system of a given size, with its metadata and journal placed.
#[derive(Clone, Debug)]
pub(crate) struct Geometry {
    pub blocks: u64,
    pub groups: u32,
    pub inodes_per_group: u32,
    pub gdt_blocks: u64,
    pub block_bitmaps: Vec<u64>,
    pub inode_bitmaps: Vec<u64>,
    pub inode_tables: Vec<u64>,
    /// Groups holding a superblock: 0, then the sparse_super2 backups.
    pub backup_groups: Vec<u32>,
    pub backup_bgs: [u32; 2],
    pub journal: Option<(ExtentList, Vec<u64>)>,
    pub allocator: Allocator,
}

impl Geometry {
    /// The geometry for a region of `region_blocks` blocks, or `None` when even the
    /// metadata does not fit.
    pub(crate) fn new(
        region_blocks: u64,
        plan: &Plan<'_>,
        opts: &Ext4Options,
    ) -> Result<Option<Geometry>, Ext4Error> {
        let per_group = u64::from(BLOCKS_PER_GROUP);
        let mut blocks = region_blocks;
        let mut groups_u64 = blocks.div_ceil(per_group);
        if groups_u64 > u64::from(u32::MAX) {
            return Err(Ext4Error::TooLarge(region_blocks.saturating_mul(BLOCK_SIZE)));
        }
        let desc_per_block = (BLOCK_SIZE / super::DESC_SIZE as u64).max(1);
        // Drop a last group too small to be useful (or to hold its superblock copy).
        if groups_u64 > 1 {
            let last = blocks - (groups_u64 - 1) * per_group;
            // The last group holds a superblock copy (sparse_super2).
            let gdt = groups_u64.div_ceil(desc_per_block);
            let minimum = 1 + gdt + 16;
            if last < minimum {
                groups_u64 -= 1;
                blocks = groups_u64 * per_group;
            }
        }
        if blocks < 16 {
            return Ok(None);
        }
        // Bounded by the check above.
        let groups = u32::try_from(groups_u64).unwrap_or(u32::MAX);
        let gdt_blocks = groups_u64.div_ceil(desc_per_block);

        // Inodes: what the tree needs plus headroom, or one per `inode_ratio` bytes.
        let needed = u64::from(plan.last_ino) + u64::from(opts.extra_inodes);
        let by_ratio = opts.inode_ratio.filter(|r| *r > 0).map_or(0, |r| blocks * BLOCK_SIZE / r);
        let inodes_per_block = BLOCK_SIZE / INODE_SIZE as u64;
        let max_ipg = (u64::from(u32::MAX) / groups_u64 / inodes_per_block * inodes_per_block)
            .min(u64::from(BLOCKS_PER_GROUP));
        let ipg_for =
            |count: u64| count.div_ceil(groups_u64).div_ceil(inodes_per_block) * inodes_per_block;
        let ipg_needed = ipg_for(needed).max(inodes_per_block);
        if ipg_needed > max_ipg {
            return Ok(None);
        }
        let ipg = ipg_for(by_ratio).clamp(ipg_needed, max_ipg);
        let inode_table_blocks = ipg / inodes_per_block;

        let backup_bgs = backup_bgs(groups);
        let mut backup_groups = vec![0];
        backup_groups.extend(backup_bgs.iter().copied().filter(|&g| g != 0));
        let reserved = backup_groups
            .iter()
            .map(|&g| {
                let start = u64::from(g) * per_group;
                start..(start + 1 + gdt_blocks).min(blocks)
            })
            .collect();
        let mut allocator = Allocator::new(blocks, reserved);
        let place = |n: u64, allocator: &mut Allocator| -> Option<Vec<u64>> {
            (0..groups).map(|_| allocator.alloc_contiguous(n).map(|r| r.start)).collect()
        };
        let Some(block_bitmaps) = place(1, &mut allocator) else { return Ok(None) };
        let Some(inode_bitmaps) = place(1, &mut allocator) else { return Ok(None) };
        let Some(inode_tables) = place(inode_table_blocks, &mut allocator) else { return Ok(None) };
        let journal = if opts.journal {
            let length = journal::default_blocks(blocks);
            let mut list = ExtentList::default();
            while list.blocks < length {
                let Some(run) = allocator.alloc(length - list.blocks) else { return Ok(None) };
                list.push(list.blocks, run.start, run.end - run.start);
            }
            let mut tree_blocks = Vec::new();
            for _ in 0..extent::tree_blocks(list.extents.len() as u64) {
                let Some(run) = allocator.alloc(1) else { return Ok(None) };
                tree_blocks.push(run.start);
            }
            Some((list, tree_blocks))
        } else {
            None
        };
        Ok(Some(Geometry {
            blocks,
            groups,
            inodes_per_group: u32::try_from(ipg).unwrap_or(BLOCKS_PER_GROUP),
            gdt_blocks,
            block_bitmaps,
            inode_bitmaps,
            inode_tables,
            backup_groups,
            backup_bgs,
            journal,
            allocator,
        }))
    }

    /// Whether the plan's blocks fit what is left after the metadata.
    pub(crate) fn fits(&self, plan: &Plan<'_>) -> bool {
        // Each reserved range can split one extent, adding at most 3 tree blocks.
        let split_margin = 3 * self.backup_groups.len() as u64;
        plan.content_blocks + plan.slack_blocks + split_margin <= self.allocator.remaining()
    }
}

/// Smallest number of blocks whose geometry fits `plan`.
pub(crate) fn min_blocks(plan: &Plan<'_>, opts: &Ext4Options) -> Result<u64, Ext4Error> {
    let mut blocks = (plan.content_blocks + plan.slack_blocks + 16).max(16);
    loop {
        match Geometry::new(blocks, plan, opts)? {
            Some(geometry) => {
                let need = plan.content_blocks
                    + plan.slack_blocks
                    + 3 * geometry.backup_groups.len() as u64;
                let have = geometry.allocator.remaining();
                if need <= have {
                    return Ok(blocks);
                }
                blocks += need.saturating_sub(have).max(1);
            }
            None => blocks += (blocks / 64).max(16),
        }
        if blocks > 1 << 48 {
            return Err(Ext4Error::TooLarge(blocks.saturating_mul(BLOCK_SIZE)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_are_in_group_1_and_the_last_group() {
        assert_eq!(backup_bgs(1), [0, 0]);
        assert_eq!(backup_bgs(2), [0, 1]);
        assert_eq!(backup_bgs(16384), [1, 16383]);
        let groups: Vec<u32> = (0..100).filter(|&g| has_backup(g, backup_bgs(100))).collect();
        assert_eq!(groups, [0, 1, 99]);
        assert!(!has_backup(3, backup_bgs(100)));
    }
}
