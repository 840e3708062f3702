//! Planning: inode numbers, link counts and the number of blocks every inode needs
//! (checked before anything is written), and the geometry of a file system of a
//! given size: groups, inodes per group, reserved superblock copies, and the
//! placement of bitmaps, inode tables and the journal.

use super::alloc::Allocator;
use super::extent::{self, ExtentList, MAX_EXTENT_LEN};
use super::{BLOCK_SIZE, BLOCK_SIZE_USIZE, BLOCKS_PER_GROUP, Ext4Error, Ext4Options, FIRST_INO};
use super::{INODE_SIZE, ROOT_INO};
use super::{dir, journal, xattr};
use crate::tree::{Content, FileTree, Node, NodeId, NodeKind, PendingNodes, child_path};
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
    /// The tree, or its skeleton when `pending` holds its other nodes.
    pub tree: &'t FileTree,
    /// Non-directory nodes still being read (see [`PendingNodes`]): their blocks and
    /// checks are left to the writer, which counts them in as it meets them.
    pub pending: Option<&'t PendingNodes>,
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
pub(crate) fn data_block_runs(
    content: &Content,
    entry: &Entry,
) -> Result<Vec<Range<u64>>, Ext4Error> {
    let len = content.len();
    let mut ranges = content.data_ranges().map_err(|source| Ext4Error::Content {
        path: entry.path_string(),
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
fn file_blocks(content: &Content, entry: &Entry, mode: Mode) -> Result<(u64, u64), Ext4Error> {
    let runs = data_block_runs(content, entry)?;
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
                            path: entry.path_string(),
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
        Plan::with_pending(tree, None, opts, mode)
    }

    /// The plan of a tree whose non-directories are still being read into `pending`:
    /// numbered, linked and counted from the skeleton, leaving out what the pending
    /// nodes need (see [`Plan::pending`]).
    pub(crate) fn streamed(
        skeleton: &'t FileTree,
        pending: &'t PendingNodes,
        opts: &Ext4Options,
    ) -> Result<Plan<'t>, Ext4Error> {
        Plan::with_pending(skeleton, Some(pending), opts, Mode::Bound)
    }

    fn with_pending(
        tree: &'t FileTree,
        pending: Option<&'t PendingNodes>,
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
                    stack.push((child_path(path, name), child, ino));
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
                return Err(Ext4Error::TooManyLinks {
                    path: entry.path_string(),
                    count: entry.links,
                });
            }
            if let NodeKind::Directory(children) = &node.kind {
                content_blocks += xattr_blocks(node, entry)?;
                let mut lens: Vec<usize> = children.keys().map(|n| n.len()).collect();
                if id == root && made_lost_found {
                    lens.push(b"lost+found".len());
                }
                let mut blocks = dir::block_count(lens.into_iter());
                if entry.ino == FIRST_INO {
                    blocks = blocks.max(4);
                }
                content_blocks += blocks + extent::tree_blocks(blocks.div_ceil(MAX_EXTENT_LEN));
            } else if pending.is_none() {
                let needs = Needs::of(node, entry, mode)?;
                content_blocks += needs.blocks;
                slack_blocks += needs.slack;
            }
        }
        Ok(Plan {
            tree,
            pending,
            entries,
            node_ino,
            last_ino,
            made_lost_found,
            content_blocks,
            slack_blocks,
        })
    }
}

impl Plan<'_> {
    /// Whether [`Plan::node`] would wait for the node `id`.
    pub(crate) fn must_wait(&self, id: NodeId) -> bool {
        self.pending
            .is_some_and(|pending| !self.tree.node(id).kind.is_dir() && !pending.is_filled(id))
    }

    /// The node of `entry`, waiting for it when it is still being read; an error
    /// when the loader stopped before reaching it.
    pub(crate) fn node(&self, entry: &Entry, id: NodeId) -> Result<&Node, Ext4Error> {
        let skeleton = self.tree.node(id);
        match self.pending {
            Some(pending) if !skeleton.kind.is_dir() => pending
                .wait(id)
                .ok_or_else(|| Ext4Error::SourceStopped { path: entry.path_string() }),
            _ => Ok(skeleton),
        }
    }
}

/// What a non-directory needs on top of its inode, checked as it is counted.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Needs {
    /// Data, extent-tree, xattr and symlink blocks.
    pub blocks: u64,
    /// Margin for holes that deepen its extent tree (see [`Plan::slack_blocks`]).
    pub slack: u64,
}

impl Needs {
    /// Checks the non-directory `node` (its xattrs, its size, its symlink target) and
    /// counts its blocks.
    pub(crate) fn of(node: &Node, entry: &Entry, mode: Mode) -> Result<Needs, Ext4Error> {
        let mut needs = Needs { blocks: xattr_blocks(node, entry)?, slack: 0 };
        match &node.kind {
            NodeKind::File(content) => {
                if content.len() > (MAX_FILE_BLOCKS - 1) * BLOCK_SIZE {
                    return Err(Ext4Error::FileTooLarge {
                        path: entry.path_string(),
                        size: content.len(),
                    });
                }
                let (blocks, extents) = file_blocks(content, entry, mode)?;
                needs.blocks += blocks + extent::tree_blocks(extents);
                // Holes found while writing can deepen a tree by one or two blocks
                // past 1360 extents (see the module notes in write.rs).
                if mode == Mode::Bound && blocks > 1360 {
                    needs.slack += 2;
                }
            }
            NodeKind::Symlink(target) => {
                check_symlink(target, entry)?;
                if target.len() >= 60 {
                    needs.blocks += 1;
                }
            }
            _ => {}
        }
        Ok(needs)
    }
}

/// Checks the xattrs of `node`: 1 when they need a block of their own, else 0.
fn xattr_blocks(node: &Node, entry: &Entry) -> Result<u64, Ext4Error> {
    let attrs = xattr::prepare(&node.meta.xattrs).map_err(|p| xattr_error(entry, p))?;
    let (_, in_block) = xattr::place(attrs).map_err(|p| xattr_error(entry, p))?;
    Ok(u64::from(!in_block.is_empty()))
}

fn xattr_error(entry: &Entry, problem: xattr::XattrProblem) -> Ext4Error {
    let path = entry.path_string();
    match problem {
        xattr::XattrProblem::NameTooLong(name) => Ext4Error::BadXattr {
            path,
            name: String::from_utf8_lossy(&name).into_owned(),
            reason: "its name is longer than 255 bytes after the namespace prefix",
        },
        xattr::XattrProblem::BadAcl(name, reason) => {
            Ext4Error::BadXattr { path, name: String::from_utf8_lossy(&name).into_owned(), reason }
        }
        xattr::XattrProblem::TooLarge => Ext4Error::XattrsTooLarge { path },
    }
}

fn check_symlink(target: &[u8], entry: &Entry) -> Result<(), Ext4Error> {
    let reason = if target.is_empty() {
        "its target is empty"
    } else if target.contains(&0) {
        "its target contains a NUL byte"
    } else if target.len() >= BLOCK_SIZE_USIZE {
        "its target is longer than 4095 bytes"
    } else {
        return Ok(());
    };
    Err(Ext4Error::BadSymlink { path: entry.path_string(), reason })
}

/// s_backup_bgs of sparse_super2: one superblock and descriptor-table copy, in the
/// last group, when `keep_copy` ([`Ext4Options::backup_superblock`]), none
/// otherwise. Stored as mke2fs does: sorted, 0 for "none".
pub(crate) fn backup_bgs(groups: u32, keep_copy: bool) -> [u32; 2] {
    [0, if keep_copy { groups.saturating_sub(1) } else { 0 }]
}

/// Whether group `group` holds a superblock and descriptor-table copy (group 0 holds
/// the primary).
pub(crate) fn has_backup(group: u32, bgs: [u32; 2]) -> bool {
    group == 0 || bgs.contains(&group)
}

/// The shape of a file system of a given size, with its metadata and journal placed.
///
/// Placement keeps every block that is ever written near the start, so that a sparse
/// file or a dynamically expanding disk stores one dense stretch per file system,
/// whatever its size (flex_bg lets bitmaps and tables sit anywhere):
///
/// * the front, from block 1 + descriptor table on: the block bitmaps of the groups
///   that are always initialised (group 0, the last group, the groups holding the
///   journal), the inode bitmaps and inode tables of the groups holding used inodes
///   (inodes are numbered from 1, so these are the first groups and the used inodes
///   fill the start of the tables), the journal's first block (its superblock) and
///   extent-tree blocks, then the content;
/// * every other group keeps its own metadata at its start ("at home", after its
///   superblock copy if any): its block bitmap unless it is in the front, its inode
///   bitmap and table when it holds no used inode. Such a group is BLOCK_UNINIT and
///   INODE_UNINIT unless content reaches it, so nothing there is written; a group
///   that content reaches has its bitmap inside the content;
/// * the journal's other blocks (zeros) fill the end of the file system, around the
///   home metadata of its groups, and the superblock copy, if any, starts the last
///   group.
#[derive(Clone, Debug)]
pub(crate) struct Geometry {
    pub blocks: u64,
    pub groups: u32,
    pub inodes_per_group: u32,
    pub gdt_blocks: u64,
    pub block_bitmaps: Vec<u64>,
    pub inode_bitmaps: Vec<u64>,
    pub inode_tables: Vec<u64>,
    /// Groups holding a superblock: 0, then the sparse_super2 backup if any.
    pub backup_groups: Vec<u32>,
    pub backup_bgs: [u32; 2],
    pub journal: Option<(ExtentList, Vec<u64>)>,
    pub allocator: Allocator,
}

/// Group count, inode density and backups of a file system, before placement.
struct Shape {
    blocks: u64,
    groups: u32,
    gdt_blocks: u64,
    inodes_per_group: u64,
    table_blocks: u64,
    backup_bgs: [u32; 2],
    /// Groups 0..used_groups hold the used inodes.
    used_groups: u64,
}

impl Shape {
    /// The shape for a region of `region_blocks` blocks, or `None` when it is too small.
    fn new(
        region_blocks: u64,
        plan: &Plan<'_>,
        opts: &Ext4Options,
    ) -> Result<Option<Shape>, Ext4Error> {
        let per_group = u64::from(BLOCKS_PER_GROUP);
        let desc_per_block = BLOCK_SIZE / super::DESC_SIZE as u64;
        let inodes_per_block = BLOCK_SIZE / INODE_SIZE as u64;
        let mut blocks = region_blocks;
        // Runs twice at most: after dropping a short last group, the last group is whole.
        loop {
            if blocks < 16 {
                return Ok(None);
            }
            let groups_u64 = blocks.div_ceil(per_group);
            let groups = u32::try_from(groups_u64)
                .map_err(|_| Ext4Error::TooLarge(region_blocks.saturating_mul(BLOCK_SIZE)))?;
            // Inodes: what the tree needs plus headroom, or one per `inode_ratio` bytes.
            let needed = u64::from(plan.last_ino) + u64::from(opts.extra_inodes);
            let by_ratio =
                opts.inode_ratio.filter(|r| *r > 0).map_or(0, |r| blocks * BLOCK_SIZE / r);
            let max_ipg = (u64::from(u32::MAX) / groups_u64 / inodes_per_block * inodes_per_block)
                .min(per_group);
            let ipg_for = |count: u64| {
                count.div_ceil(groups_u64).div_ceil(inodes_per_block) * inodes_per_block
            };
            let ipg_needed = ipg_for(needed).max(inodes_per_block);
            if ipg_needed > max_ipg {
                return Ok(None);
            }
            let ipg = ipg_for(by_ratio).clamp(ipg_needed, max_ipg);
            let shape = Shape {
                blocks,
                groups,
                gdt_blocks: groups_u64.div_ceil(desc_per_block),
                inodes_per_group: ipg,
                table_blocks: ipg / inodes_per_block,
                backup_bgs: backup_bgs(groups, opts.backup_superblock),
                // ipg × groups ≥ needed ≥ last_ino, so this is at most `groups`.
                used_groups: u64::from(plan.last_ino).saturating_sub(1) / ipg + 1,
            };
            // Drop a last group too short to hold its home metadata and some data.
            let last = groups - 1;
            if last > 0 && shape.group_end(last) < shape.home_end(last, false) + 16 {
                blocks = u64::from(last) * per_group;
                continue;
            }
            return Ok(Some(shape));
        }
    }

    fn group_start(&self, group: u32) -> u64 {
        u64::from(group) * u64::from(BLOCKS_PER_GROUP)
    }

    fn group_end(&self, group: u32) -> u64 {
        self.blocks.min(self.group_start(group) + u64::from(BLOCKS_PER_GROUP))
    }

    /// Blocks of the superblock and descriptor table (or their copy) starting the group.
    fn base(&self, group: u32) -> u64 {
        if has_backup(group, self.backup_bgs) { 1 + self.gdt_blocks } else { 0 }
    }

    /// Whether the group's inode bitmap and table stay in the group (it holds no used inode).
    fn tables_at_home(&self, group: u32) -> bool {
        u64::from(group) >= self.used_groups
    }

    /// End of the group's superblock copy and home metadata, its block bitmap
    /// included when `bitmap_at_home`.
    fn home_end(&self, group: u32, bitmap_at_home: bool) -> u64 {
        let mut end = self.group_start(group) + self.base(group);
        if group != 0 {
            end += u64::from(bitmap_at_home);
            if self.tables_at_home(group) {
                end += 1 + self.table_blocks;
            }
        }
        end
    }

    /// Places the metadata and the journal, or `None` when they do not fit.
    fn place(self, opts: &Ext4Options) -> Option<Geometry> {
        let groups = usize::try_from(self.groups).ok()?;
        let last = self.groups - 1;
        // Groups whose block bitmap is in the front: those always initialised.
        let mut front_bitmap = vec![false; groups];
        front_bitmap[0] = true;
        front_bitmap[groups - 1] = true;

        // The journal's blocks after its first, from the end of the file system down.
        let journal_blocks = if opts.journal { journal::default_blocks(self.blocks) } else { 0 };
        let mut journal_body: Vec<Range<u64>> = Vec::new();
        let mut needed = journal_blocks.saturating_sub(1);
        let mut group = last;
        while needed > 0 {
            let end = self.group_end(group);
            let take = needed.min(end.saturating_sub(self.home_end(group, false)));
            if take > 0 {
                journal_body.push(end - take..end);
                front_bitmap[usize::try_from(group).ok()?] = true;
                needed -= take;
            }
            if needed > 0 {
                group = group.checked_sub(1)?;
            }
        }
        journal_body.reverse();

        // Superblock copies and home metadata, reserved before the front is allocated.
        let mut block_bitmaps = vec![0u64; groups];
        let mut inode_bitmaps = vec![0u64; groups];
        let mut inode_tables = vec![0u64; groups];
        let mut reserved: Vec<Range<u64>> = Vec::with_capacity(2 * groups + journal_body.len());
        for (group, g) in (0..self.groups).zip(0..groups) {
            let start = self.group_start(group);
            let home = start + self.base(group);
            if home > start {
                reserved.push(start..home);
            }
            let end = self.home_end(group, !front_bitmap[g]);
            if end > self.group_end(group) {
                return None;
            }
            if group != 0 {
                let mut at = home;
                if !front_bitmap[g] {
                    block_bitmaps[g] = at;
                    at += 1;
                }
                if self.tables_at_home(group) {
                    inode_bitmaps[g] = at;
                    inode_tables[g] = at + 1;
                }
                if end > home {
                    reserved.push(home..end);
                }
            }
        }
        reserved.extend(journal_body.iter().cloned());
        reserved.sort_by_key(|r| r.start);

        // The front, in the order described above.
        let mut allocator = Allocator::new(self.blocks, reserved);
        for (bitmap, _) in block_bitmaps.iter_mut().zip(&front_bitmap).filter(|(_, f)| **f) {
            *bitmap = allocator.alloc(1)?.start;
        }
        // used_groups ≤ groups, a usize.
        let used = usize::try_from(self.used_groups).ok()?;
        for bitmap in &mut inode_bitmaps[..used] {
            *bitmap = allocator.alloc(1)?.start;
        }
        for table in &mut inode_tables[..used] {
            *table = allocator.alloc_contiguous(self.table_blocks)?.start;
        }
        let journal = if opts.journal {
            let mut list = ExtentList::default();
            list.push(0, allocator.alloc(1)?.start, 1);
            for run in &journal_body {
                list.push(list.blocks, run.start, run.end - run.start);
            }
            let mut tree_blocks = Vec::new();
            for _ in 0..extent::tree_blocks(list.extents.len() as u64) {
                tree_blocks.push(allocator.alloc(1)?.start);
            }
            Some((list, tree_blocks))
        } else {
            None
        };
        let mut backup_groups = vec![0];
        backup_groups.extend(self.backup_bgs.iter().copied().filter(|&g| g != 0));
        Some(Geometry {
            blocks: self.blocks,
            groups: self.groups,
            // At most BLOCKS_PER_GROUP.
            inodes_per_group: u32::try_from(self.inodes_per_group).unwrap_or(BLOCKS_PER_GROUP),
            gdt_blocks: self.gdt_blocks,
            block_bitmaps,
            inode_bitmaps,
            inode_tables,
            backup_groups,
            backup_bgs: self.backup_bgs,
            journal,
            allocator,
        })
    }
}

impl Geometry {
    /// The geometry for a region of `region_blocks` blocks, or `None` when even the
    /// metadata does not fit.
    pub(crate) fn new(
        region_blocks: u64,
        plan: &Plan<'_>,
        opts: &Ext4Options,
    ) -> Result<Option<Geometry>, Ext4Error> {
        Ok(Shape::new(region_blocks, plan, opts)?.and_then(|shape| shape.place(opts)))
    }

    /// Blocks the plan may need on top of its count: each reserved range ahead of the
    /// allocator can split one extent, adding at most 3 tree blocks.
    fn split_margin(&self) -> u64 {
        3 * self.allocator.reserved_ahead()
    }

    /// Whether the plan's blocks fit what is left after the metadata.
    pub(crate) fn fits(&self, plan: &Plan<'_>) -> bool {
        self.content_limit().is_some_and(|limit| plan.content_blocks + plan.slack_blocks <= limit)
    }

    /// Most content and slack blocks a plan may count to fit, before anything is
    /// allocated; `None` when not even the margin fits.
    pub(crate) fn content_limit(&self) -> Option<u64> {
        self.allocator.remaining().checked_sub(self.split_margin())
    }
}

/// Smallest number of blocks whose geometry fits `plan`.
pub(crate) fn min_blocks(plan: &Plan<'_>, opts: &Ext4Options) -> Result<u64, Ext4Error> {
    let mut blocks = (plan.content_blocks + plan.slack_blocks + 16).max(16);
    loop {
        match Geometry::new(blocks, plan, opts)? {
            Some(geometry) => {
                let need = plan.content_blocks + plan.slack_blocks + geometry.split_margin();
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
    fn a_copy_in_the_last_group_or_none() {
        assert_eq!(backup_bgs(1, true), [0, 0]);
        assert_eq!(backup_bgs(2, true), [0, 1]);
        assert_eq!(backup_bgs(16384, true), [0, 16383]);
        assert_eq!(backup_bgs(16384, false), [0, 0]);
        let groups: Vec<u32> = (0..100).filter(|&g| has_backup(g, backup_bgs(100, true))).collect();
        assert_eq!(groups, [0, 99]);
        assert!(!has_backup(1, backup_bgs(100, true)));
        let groups: Vec<u32> =
            (0..100).filter(|&g| has_backup(g, backup_bgs(100, false))).collect();
        assert_eq!(groups, [0]);
    }
}
