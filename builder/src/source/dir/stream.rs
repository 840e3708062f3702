//! Reading a host directory while an image is written from it.
//!
//! [`super::load_directory`] reads everything before anything is written, and on a
//! tree of many small files that reading (a few system calls per file) takes about
//! as long as writing the image. Here it is done in two steps so the two overlap:
//!
//! 1. **List**: every directory is listed (in parallel), and only directories are
//!    looked at: their metadata and xattrs. Other entries are known by the type and
//!    inode number the listing gives; names sharing a device and inode number are
//!    one node (a hard link). From that the *skeleton* is assembled in canonical
//!    order: the whole shape of the tree, which is all a writer needs to number
//!    inodes and lay out directories.
//! 2. **Load**: the other entries are read exactly as [`super::load_directory`] reads
//!    them, in canonical order, a chunk at a time by a few threads that start as soon
//!    as the assembler hands over the first chunk; each node goes to the writer
//!    through [`PendingNodes`] as soon as it is read. The writer starts once the
//!    skeleton is whole.
//!
//! The listing's word is checked as the entries are read: an entry whose type
//! changed, or hard links the inode numbers of the listing did not show (some
//! overlay file systems list other inode numbers than `stat` gives), make the
//! result [`Streamed::Whole`], read again the ordinary way, so the tree, and the
//! image, are always those of [`super::load_directory`]. So does a listing without
//! types, and any failure while scanning: the ordinary reader then reports the
//! first failure in its order, as it always does. A failure while loading is
//! reported as it is (entries are loaded in canonical order and the first failure
//! in that order wins); `mkfs` then does the whole job again the ordinary way, so
//! that what it reports is exactly what it always reported.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use abforge_partitions::FileRegion;
use abforge_partitions::ext4::{self, Ext4Options, Ext4Summary};
use abforge_partitions::tree::{
    Content, FileTree, Metadata, Node, NodeId, NodeKind, PendingNodes, child_path,
};
use anyhow::Context;
use rayon::prelude::*;
use rustix::fs::{AtFlags, CWD, Dir, FileType, StatxFlags, statx};

use super::{HostPath, INLINE_BUDGET, Loader, Scratch, What, XattrReader, XattrsOf};
use super::{metadata_of, open_dir, open_subdir};
use crate::source::{SourceOptions, finish_meta, is_excluded, load_source};

/// Entries each loading thread takes at a time: small, so that the entries come
/// nearly in the order the writer wants them.
const LOAD_CHUNK: usize = 64;

/// Most threads loading entries (each mostly waits on system calls).
const MAX_LOADERS: usize = 4;

/// What came of [`write_while_loading`].
pub enum Streamed<T> {
    /// The writer finished with the tree as it was read.
    Written(T),
    /// The writer could not finish from a stream, or the listing could not be
    /// trusted: here is the whole tree, to write the ordinary way.
    Whole(FileTree),
}

/// Reads the directory `root` (as [`crate::source::load_source`] would) while `write`
/// writes from it: `write` gets the skeleton and the nodes still being read (see
/// [`abforge_partitions::ext4::write_streamed`]) and returns `None` when it needs the
/// whole tree. A failure to read the source is returned before any of `write`'s.
pub fn write_while_loading<T>(
    root: &Path,
    opts: &SourceOptions,
    write: impl FnOnce(&FileTree, &PendingNodes) -> anyhow::Result<Option<T>>,
) -> anyhow::Result<Streamed<T>> {
    match Listing::new(root, opts) {
        Ok(Some(listing)) => write_listed(listing, root, opts, write),
        // The ordinary reader reports the first failure in canonical order.
        Ok(None) | Err(_) => Ok(Streamed::Whole(load_source(root, opts)?)),
    }
}

/// [`write_while_loading`] once the directories are listed: the loading threads
/// start while the skeleton is still being assembled (they take its chunks as they
/// come), and `write` once it is whole.
fn write_listed<T>(
    listing: Listing<'_>,
    root: &Path,
    opts: &SourceOptions,
    write: impl FnOnce(&FileTree, &PendingNodes) -> anyhow::Result<Option<T>>,
) -> anyhow::Result<Streamed<T>> {
    let Listing { loader, root_meta, root_dev, entries, total } = listing;
    // Node numbers are below 1 + the number of entries (hard links take none).
    let pending = PendingNodes::new(total + 1);
    let feed = Feed::default();
    let (skeleton, written, loaded) = std::thread::scope(|scope| {
        let loading = scope.spawn(|| {
            // Whatever happens, every slot gets filled, so the writer never waits forever.
            let _stop = StopOnDrop(&pending);
            load(&loader, &feed, &pending)
        });
        let skeleton = assemble(opts, root_meta, (root_dev, entries), total, &feed);
        let written = skeleton.as_ref().ok().map(|skeleton| write(&skeleton.tree, &pending));
        let loaded = loading.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the loader panicked")));
        (skeleton, written, loaded)
    });
    let held = match (skeleton, loaded?) {
        (Ok(skeleton), Some(linked)) if links_agree(&skeleton.links, &linked) => Some(skeleton),
        _ => None,
    };
    let (skeleton, written) = match (held, written) {
        (Some(skeleton), Some(written)) => (skeleton, written),
        other => {
            // A listing that could not be assembled or was wrong: read everything
            // again, with nothing of this attempt held.
            drop((other, pending));
            return Ok(Streamed::Whole(load_source(root, opts)?));
        }
    };
    Ok(match written? {
        Some(value) => Streamed::Written(value),
        None => {
            let mut tree = skeleton.tree;
            pending.complete(&mut tree);
            Streamed::Whole(tree)
        }
    })
}

/// Writes an ext4 file system of `size` bytes filling `file` (sized by the caller;
/// it holds nothing else, since it is emptied if the attempt must start again) from
/// the directory `root`, while it is read: the bytes [`ext4::write`] gives for the
/// loaded tree, sooner. Errors are those of reading and writing the streamed tree,
/// which may name another entry than the ordinary path would when several are
/// wrong; `mkfs` redoes a failed attempt the ordinary way for its message.
pub fn write_ext4_while_loading(
    root: &Path,
    opts: &SourceOptions,
    ext4_options: &Ext4Options,
    file: &File,
    size: u64,
) -> anyhow::Result<Ext4Summary> {
    let region = || FileRegion::new(file, 0, size);
    let streamed = write_while_loading(root, opts, |skeleton, pending| {
        Ok(ext4::write_streamed(skeleton, pending, ext4_options, region())?)
    })?;
    match streamed {
        Streamed::Written(summary) => Ok(summary),
        Streamed::Whole(tree) => {
            // Start again from an empty file: the bytes must not depend on what the
            // attempt left.
            file.set_len(0)?;
            file.set_len(size)?;
            Ok(ext4::write(&tree, ext4_options, region())?)
        }
    }
}

struct StopOnDrop<'p>(&'p PendingNodes);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Why a loading thread stopped early.
enum Stop {
    Failed(anyhow::Error),
    Inconsistent,
}

/// A host file's device (major, minor) and inode number.
type HostInode = (u32, u32, u64);

/// A directory of the skeleton, as the entries to read in it name it.
struct ScanDir {
    host_path: PathBuf,
    /// The source root, opened as the user named it (a symbolic link is followed).
    is_root: bool,
}

/// A name of a non-directory, to read.
struct ToRead {
    id: NodeId,
    dir: Arc<ScanDir>,
    name: CString,
    listed: FileType,
}

/// Chunks of entries to read, handed from the assembler to the loading threads in
/// canonical order as the skeleton grows.
#[derive(Default)]
struct Feed {
    state: Mutex<FeedState>,
    grown: Condvar,
}

#[derive(Default)]
struct FeedState {
    chunks: Vec<Arc<[ToRead]>>,
    /// No more chunks are coming.
    done: bool,
}

impl Feed {
    fn push(&self, chunk: Vec<ToRead>) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).chunks.push(chunk.into());
        self.grown.notify_all();
    }

    fn finish(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).done = true;
        self.grown.notify_all();
    }

    /// Chunk `index`, once made; `None` when there will be none.
    fn get(&self, index: usize) -> Option<Arc<[ToRead]>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(chunk) = state.chunks.get(index) {
                return Some(Arc::clone(chunk));
            }
            if state.done {
                return None;
            }
            state = self.grown.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

struct FinishOnDrop<'f>(&'f Feed);

impl Drop for FinishOnDrop<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// One directory as listed.
struct Listed {
    xattrs: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    /// In name order.
    entries: Vec<ListedEntry>,
    /// Entries here and below.
    total: usize,
    /// The directory's device: with the listing's inode numbers, it tells names of one
    /// file apart from files of another file system mounted inside the source.
    dev: (u32, u32),
}

struct ListedEntry {
    name: CString,
    /// Path in the tree (directories, and everything when there are exclusions).
    tree_path: Vec<u8>,
    listed: FileType,
    ino: u64,
    /// A subdirectory: its metadata and listing.
    dir: Option<(Metadata, Listed)>,
}

/// Every directory of a source, listed.
struct Listing<'o> {
    loader: Loader<'o>,
    /// The root's metadata (owners mapped, time clamped) and path.
    root_meta: (Metadata, PathBuf),
    root_dev: (u32, u32),
    entries: Vec<ListedEntry>,
    total: usize,
}

impl<'o> Listing<'o> {
    /// Lists `root`; `None` when the listing does not give every entry's type.
    fn new(root: &Path, opts: &'o SourceOptions) -> anyhow::Result<Option<Listing<'o>>> {
        if let Some(owner) = &opts.owner {
            owner.validate().map_err(crate::error::UsageError::new)?;
        }
        let root_fd = open_dir(CWD, root)?;
        let root_stat = statx(&root_fd, c"", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)?;
        let dev = (root_stat.stx_dev_major, root_stat.stx_dev_minor);
        let Some(listed) = list_dir(opts, root_fd, root, &[], dev)? else {
            return Ok(None);
        };
        let mut root_meta = metadata_of(&root_stat);
        root_meta.xattrs = listed.xattrs;
        Ok(Some(Listing {
            loader: Loader { opts, inline_left: AtomicU64::new(INLINE_BUDGET) },
            root_meta: (finish_meta(opts, root_meta), root.to_path_buf()),
            root_dev: dev,
            entries: listed.entries,
            total: listed.total,
        }))
    }
}

/// The shape of the tree, with the names to check once the nodes are read.
struct Skeleton {
    tree: FileTree,
    /// The further names of nodes with several names.
    links: Vec<ToRead>,
}

/// Builds the skeleton in canonical order (so node numbers are those
/// [`crate::source::canonicalize`] gives), handing the non-directories to read to
/// `feed` a chunk at a time; the feed is finished however this ends.
fn assemble(
    opts: &SourceOptions,
    (root_meta, root_path): (Metadata, PathBuf),
    (root_dev, root_entries): ((u32, u32), Vec<ListedEntry>),
    total: usize,
    feed: &Feed,
) -> anyhow::Result<Skeleton> {
    let _finish = FinishOnDrop(feed);
    let mut tree = FileTree::new(root_meta);
    tree.reserve(total);
    let mut links = Vec::new();
    let mut chunk = Vec::with_capacity(LOAD_CHUNK);
    let mut by_ino: HashMap<HostInode, NodeId, InoHash> =
        HashMap::with_capacity_and_hasher(total, InoHash::default());
    let root_dir = Arc::new(ScanDir { host_path: root_path, is_root: true });
    let mut stack = vec![(tree.root(), root_dir, root_dev, root_entries.into_iter())];
    while let Some((dir_id, dir, dev, entries)) = stack.last_mut() {
        let (dir_id, dir, dev) = (*dir_id, Arc::clone(dir), *dev);
        let Some(entry) = entries.next() else {
            stack.pop();
            continue;
        };
        let name = entry.name.as_bytes();
        if let Some((mut meta, listed)) = entry.dir {
            meta.xattrs = listed.xattrs;
            let kind = NodeKind::Directory(Default::default());
            let id = tree.add(dir_id, name, Node { meta: finish_meta(opts, meta), kind })?;
            let host_path = dir.host_path.join(OsStr::from_bytes(name));
            let sub = Arc::new(ScanDir { host_path, is_root: false });
            stack.push((id, sub, listed.dev, listed.entries.into_iter()));
            continue;
        }
        let mut to_read = ToRead { id: dir_id, dir, name: entry.name, listed: entry.listed };
        let inode = (dev.0, dev.1, entry.ino);
        if let Some(&first) = by_ino.get(&inode) {
            tree.link(dir_id, to_read.name.as_bytes(), first)?;
            to_read.id = first;
            links.push(to_read);
        } else {
            let node = Node { meta: Metadata::default(), kind: placeholder(entry.listed) };
            to_read.id = tree.add(dir_id, to_read.name.as_bytes(), node)?;
            by_ino.insert(inode, to_read.id);
            chunk.push(to_read);
            if chunk.len() == LOAD_CHUNK {
                feed.push(std::mem::replace(&mut chunk, Vec::with_capacity(LOAD_CHUNK)));
            }
        }
    }
    if !chunk.is_empty() {
        feed.push(chunk);
    }
    Ok(Skeleton { tree, links })
}

/// What the loading threads share.
#[derive(Default)]
struct LoadState {
    /// The next chunk to take.
    next: AtomicUsize,
    /// Set when a chunk failed: take no more.
    stopped: AtomicBool,
    /// The earliest chunk that failed, and why.
    first_stop: Mutex<Option<(usize, Stop)>>,
    /// For each chunk read, the number after its last node; and the first chunk not
    /// read: every node before the end of the chunk before it is read.
    read: Mutex<(Vec<Option<usize>>, usize)>,
    /// Nodes of several links (`stat` says so): their device and inode numbers.
    linked: Mutex<Vec<(HostInode, NodeId)>>,
}

/// Reads every non-directory the feed hands over into `pending`, in canonical order,
/// with a few threads taking chunks in turn; returns the nodes with several links
/// once every entry is read as the listing said, `None` when the listing was wrong
/// about an entry (everything must be read again).
fn load(
    loader: &Loader<'_>,
    feed: &Feed,
    pending: &PendingNodes,
) -> anyhow::Result<Option<Vec<(HostInode, NodeId)>>> {
    let state = LoadState::default();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(MAX_LOADERS);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| load_chunks(loader, feed, &state, pending));
        }
    });
    let linked = state.linked.into_inner().unwrap_or_else(PoisonError::into_inner);
    match state.first_stop.into_inner().unwrap_or_else(PoisonError::into_inner) {
        Some((_, Stop::Failed(error))) => Err(error),
        Some((_, Stop::Inconsistent)) => Ok(None),
        None => Ok(Some(linked)),
    }
}

/// One loading thread: takes chunks in order until none is left or one failed.
/// A chunk taken is finished (unless it fails itself), so that the failure of an
/// earlier chunk is always found.
fn load_chunks(loader: &Loader<'_>, feed: &Feed, state: &LoadState, pending: &PendingNodes) {
    let mut scratch = Scratch::default();
    let mut linked = Vec::new();
    while !state.stopped.load(Ordering::Relaxed) {
        let index = state.next.fetch_add(1, Ordering::Relaxed);
        let Some(chunk) = feed.get(index) else { break };
        if let Err(stop) = load_chunk(loader, &chunk, pending, &mut scratch, &mut linked) {
            state.stopped.store(true, Ordering::Relaxed);
            let mut first = state.first_stop.lock().unwrap_or_else(PoisonError::into_inner);
            if first.as_ref().is_none_or(|(at, _)| index < *at) {
                *first = Some((index, stop));
            }
            break;
        }
        // Publish the nodes of the chunks read without a gap from the start.
        let mut read = state.read.lock().unwrap_or_else(PoisonError::into_inner);
        let (ends, first_unread) = &mut *read;
        if ends.len() <= index {
            ends.resize(index + 1, None);
        }
        ends[index] = chunk.last().map(|last| last.id.index() + 1);
        let before = *first_unread;
        while ends.get(*first_unread).is_some_and(Option::is_some) {
            *first_unread += 1;
        }
        if *first_unread > before
            && let Some(Some(ready)) = ends.get(*first_unread - 1)
        {
            pending.publish(*ready);
        }
    }
    state.linked.lock().unwrap_or_else(PoisonError::into_inner).append(&mut linked);
}

/// Reads the entries of `chunk` and hands them over.
fn load_chunk(
    loader: &Loader<'_>,
    chunk: &[ToRead],
    pending: &PendingNodes,
    scratch: &mut Scratch,
    linked: &mut Vec<(HostInode, NodeId)>,
) -> Result<(), Stop> {
    let mut open: Option<(&Arc<ScanDir>, OwnedFd)> = None;
    for item in chunk {
        let dir_fd = match &open {
            Some((dir, fd)) if Arc::ptr_eq(dir, &item.dir) => fd,
            _ => &open.insert((&item.dir, open_scan_dir(&item.dir).map_err(Stop::Failed)?)).1,
        };
        let host =
            HostPath { dir: &item.dir.host_path, name: OsStr::from_bytes(item.name.as_bytes()) };
        let loaded = loader
            .read_entry(dir_fd.as_fd(), host, &item.name, item.listed, scratch)
            .map_err(Stop::Failed)?;
        let What::Other(kind) = loaded.what else { return Err(Stop::Inconsistent) };
        if std::mem::discriminant(&kind) != std::mem::discriminant(&placeholder(item.listed)) {
            return Err(Stop::Inconsistent);
        }
        if let Some(inode) = loaded.hard_link {
            linked.push((inode, item.id));
        }
        pending.fill(item.id, Node { meta: finish_meta(loader.opts, loaded.meta), kind });
    }
    Ok(())
}

fn open_scan_dir(dir: &ScanDir) -> anyhow::Result<OwnedFd> {
    let path = &dir.host_path;
    let fd = if dir.is_root { open_dir(CWD, path) } else { open_subdir(path) };
    fd.with_context(|| format!("cannot read the directory '{}'", path.display()))
}

/// Whether the hard links of the listing are those `stat` shows: every node's
/// several names are one inode, and no two nodes are.
fn links_agree(links: &[ToRead], linked: &[(HostInode, NodeId)]) -> bool {
    let mut seen: HashSet<HostInode> = HashSet::with_capacity(linked.len());
    let mut inode_of: HashMap<NodeId, HostInode> = HashMap::with_capacity(linked.len());
    for &(inode, id) in linked {
        if !seen.insert(inode) {
            return false;
        }
        inode_of.insert(id, inode);
    }
    links.iter().all(|link| {
        let path = link.dir.host_path.join(OsStr::from_bytes(link.name.as_bytes()));
        let stat = statx(CWD, &path, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS);
        matches!(stat, Ok(stat)
            if inode_of.get(&link.id) == Some(&(stat.stx_dev_major, stat.stx_dev_minor, stat.stx_ino)))
    })
}

/// Hashes inode numbers (already well spread) with one multiplication instead of
/// SipHash: the map holds every name of a large tree.
type InoHash = std::hash::BuildHasherDefault<InoHasher>;

#[derive(Default)]
struct InoHasher(u64);

impl std::hash::Hasher for InoHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte) | (self.0 << 8));
        }
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        // Fibonacci hashing: high and low bits both depend on every bit of the value.
        self.0 = (self.0 ^ value).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }
}

/// The node a listed non-directory stands for until it is read: the right kind,
/// nothing else.
fn placeholder(listed: FileType) -> NodeKind {
    match listed {
        FileType::Symlink => NodeKind::Symlink(Vec::new()),
        FileType::CharacterDevice => NodeKind::CharDevice { major: 0, minor: 0 },
        FileType::BlockDevice => NodeKind::BlockDevice { major: 0, minor: 0 },
        FileType::Fifo => NodeKind::Fifo,
        FileType::Socket => NodeKind::Socket,
        _ => NodeKind::File(Content::empty()),
    }
}

/// Lists the open directory `dir_fd` and, in parallel, its subdirectories; `None`
/// when an entry's type is not listed or a listed directory is not one any more.
fn list_dir(
    opts: &SourceOptions,
    dir_fd: OwnedFd,
    dir_path: &Path,
    tree_path: &[u8],
    dev: (u32, u32),
) -> anyhow::Result<Option<Listed>> {
    let cannot_read = || format!("cannot read the directory '{}'", dir_path.display());
    let xattrs = XattrReader::default().read(XattrsOf::Fd(dir_fd.as_fd()), &dir_path.display())?;
    let mut entries = Vec::new();
    for entry in Dir::read_from(&dir_fd).map_err(std::io::Error::from).with_context(cannot_read)? {
        let entry = entry.map_err(std::io::Error::from).with_context(cannot_read)?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let listed = entry.file_type();
        if listed == FileType::Unknown {
            return Ok(None);
        }
        // Made only when something needs it: most entries are neither directories
        // nor tested against exclusions.
        let mut entry_tree_path = Vec::new();
        if listed == FileType::Directory || !opts.exclude.is_empty() {
            entry_tree_path = child_path(tree_path, name.to_bytes());
            if is_excluded(opts, &entry_tree_path) {
                continue;
            }
        }
        entries.push(ListedEntry {
            name: name.to_owned(),
            tree_path: entry_tree_path,
            listed,
            ino: entry.ino(),
            dir: None,
        });
    }
    entries.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    // Subdirectories are looked at through the open directory, then read once it is
    // closed, so a directory with many subdirectories does not hold a descriptor each.
    let mut subdirs = Vec::new();
    for (index, entry) in
        entries.iter().enumerate().filter(|(_, e)| e.listed == FileType::Directory)
    {
        let stat = statx(&dir_fd, &entry.name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS)?;
        if !FileType::from_raw_mode(u32::from(stat.stx_mode)).is_dir() {
            return Ok(None);
        }
        subdirs.push((index, metadata_of(&stat), (stat.stx_dev_major, stat.stx_dev_minor)));
    }
    drop(dir_fd);
    let listings: Vec<anyhow::Result<(usize, Metadata, Option<Listed>)>> = subdirs
        .into_par_iter()
        .map(|(index, meta, dev)| {
            let entry = &entries[index];
            let host_path = dir_path.join(std::ffi::OsStr::from_bytes(entry.name.as_bytes()));
            let fd = open_subdir(&host_path)?;
            Ok((index, meta, list_dir(opts, fd, &host_path, &entry.tree_path, dev)?))
        })
        .collect();
    let mut total = entries.len();
    for listing in listings {
        let (index, meta, listed) = listing?;
        let Some(listed) = listed else { return Ok(None) };
        total += listed.total;
        entries[index].dir = Some((meta, listed));
    }
    Ok(Some(Listed { xattrs, entries, total, dev }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{Exclude, OwnerMapping, dump};
    use std::fs;

    /// A tree with small and large files, a sparse one, links of every kind, a FIFO,
    /// an xattr where the file system allows, and a path to exclude.
    fn tree(root: &Path) {
        fs::create_dir_all(root.join("etc/ssh")).unwrap();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::create_dir_all(root.join("var/empty")).unwrap();
        fs::write(root.join("etc/passwd"), b"root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::write(root.join("etc/ssh/ssh_host_key"), b"secret").unwrap();
        fs::write(root.join("usr/bin/big"), vec![7u8; 300_000]).unwrap();
        let sparse = fs::File::create(root.join("var/sparse")).unwrap();
        sparse.set_len(4 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&sparse, b"x", 1 << 20).unwrap();
        fs::hard_link(root.join("etc/passwd"), root.join("usr/passwd.link")).unwrap();
        fs::hard_link(root.join("usr/bin/big"), root.join("big.link")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        rustix::fs::mknodat(
            CWD,
            root.join("var/fifo"),
            FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let _ = rustix::fs::setxattr(
            root.join("etc/passwd"),
            "user.t",
            b"v",
            rustix::fs::XattrFlags::empty(),
        );
    }

    fn options() -> SourceOptions {
        SourceOptions {
            owner: Some(OwnerMapping::force(0, 0)),
            source_date_epoch: Some(1_700_000_000),
            exclude: vec![Exclude::new("/etc/ssh/ssh_host_*").unwrap()],
            scratch_dir: None,
        }
    }

    /// Lists `root`, lets `between` change it, assembles and loads (one after the
    /// other); the completed tree when the listing held.
    fn scan_then_load(
        root: &Path,
        opts: &SourceOptions,
        between: impl FnOnce(),
    ) -> anyhow::Result<Result<FileTree, ()>> {
        let listing = Listing::new(root, opts)?.expect("the listing has types");
        between();
        let Listing { loader, root_meta, root_dev, entries, total } = listing;
        let pending = PendingNodes::new(total + 1);
        let feed = Feed::default();
        let skeleton = assemble(opts, root_meta, (root_dev, entries), total, &feed)?;
        let loaded = load(&loader, &feed, &pending);
        pending.stop();
        Ok(match loaded? {
            Some(linked) if links_agree(&skeleton.links, &linked) => {
                let mut tree = skeleton.tree;
                pending.complete(&mut tree);
                Ok(tree)
            }
            _ => Err(()),
        })
    }

    #[test]
    fn the_streamed_tree_is_the_loaded_tree() {
        let temp = tempfile::tempdir().unwrap();
        tree(temp.path());
        let opts = options();
        let streamed = scan_then_load(temp.path(), &opts, || {}).unwrap().unwrap();
        let loaded = load_source(temp.path(), &opts).unwrap();
        assert_eq!(dump(&streamed), dump(&loaded));
        assert_eq!(streamed.walk(), loaded.walk(), "the same node numbers");
        assert!(streamed.lookup(b"etc/ssh/ssh_host_key").is_none(), "excluded");

        // Through the driver, a writer that asks for the whole tree gets it whole.
        let whole = write_while_loading(temp.path(), &opts, |skeleton, pending| {
            for (_, id) in skeleton.walk() {
                if !skeleton.node(id).kind.is_dir() {
                    assert!(pending.wait(id).is_some());
                }
            }
            Ok(None::<()>)
        })
        .unwrap();
        let Streamed::Whole(whole) = whole else { panic!("the writer asked for the whole tree") };
        assert_eq!(dump(&whole), dump(&loaded));
    }

    /// Many chunks: files in several directories (some larger than a block, read by
    /// the writer's reader threads), hard links across chunks.
    fn many(root: &Path) {
        for d in 0..5 {
            let dir = root.join(format!("d{d}"));
            fs::create_dir_all(dir.join("sub")).unwrap();
            for f in 0..90 {
                let bytes = if f % 17 == 0 { vec![b'x'; 9000 + f] } else { vec![b'a'; f] };
                fs::write(dir.join(format!("f{f:03}")), bytes).unwrap();
            }
            fs::write(dir.join("sub/last"), b"last").unwrap();
        }
        fs::hard_link(root.join("d0/f001"), root.join("d4/sub/link")).unwrap();
    }

    #[test]
    fn many_chunks_load_in_order_and_the_earliest_failure_wins() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path();
        many(root);
        let opts = SourceOptions::default();
        let streamed = scan_then_load(root, &opts, || {}).unwrap().unwrap();
        assert_eq!(dump(&streamed), dump(&load_source(root, &opts).unwrap()));
        // Two files gone, several chunks apart: the first in canonical order is named.
        let error = scan_then_load(root, &opts, || {
            fs::remove_file(root.join("d3/f050")).unwrap();
            fs::remove_file(root.join("d1/f020")).unwrap();
        })
        .expect_err("gone files loaded");
        let message = format!("{error:#}");
        assert!(message.contains(&root.join("d1/f020").display().to_string()), "{message}");
    }

    /// Whether a listing of [`tree`] taken before `change` makes the load read
    /// everything again.
    fn read_again_after(change: impl FnOnce(&Path)) -> bool {
        let temp = tempfile::tempdir().unwrap();
        tree(temp.path());
        let root = temp.path();
        scan_then_load(root, &options(), || change(root)).unwrap().is_err()
    }

    #[test]
    fn an_entry_changed_since_the_listing_makes_it_read_again() {
        // A file that became a symbolic link.
        assert!(read_again_after(|root| {
            fs::remove_file(root.join("var/sparse")).unwrap();
            std::os::unix::fs::symlink("elsewhere", root.join("var/sparse")).unwrap();
        }));
    }

    #[test]
    fn hard_links_the_listing_did_not_show_make_it_read_again() {
        // Two names the listing saw as one inode are two files now.
        assert!(read_again_after(|root| {
            fs::remove_file(root.join("usr/passwd.link")).unwrap();
            fs::write(root.join("usr/passwd.link"), b"a copy").unwrap();
        }));
        // Two names the listing saw as two inodes are one now.
        assert!(read_again_after(|root| {
            fs::remove_file(root.join("var/sparse")).unwrap();
            fs::hard_link(root.join("etc/passwd"), root.join("var/sparse")).unwrap();
        }));
    }

    #[test]
    fn a_file_gone_since_the_listing_is_an_error_naming_it() {
        let temp = tempfile::tempdir().unwrap();
        tree(temp.path());
        let root = temp.path();
        let error = scan_then_load(root, &options(), || fs::remove_file(root.join("bin")).unwrap())
            .expect_err("a vanished entry loaded");
        let message = format!("{error:#}");
        assert!(message.contains(&root.join("bin").display().to_string()), "{message}");

        // Through the driver: the writer waiting for the gone entry is woken with
        // nothing, and the loader's error is the one reported, not the writer's.
        let opts = options();
        let listing = Listing::new(root, &opts).unwrap().unwrap();
        fs::remove_file(root.join("etc/passwd")).unwrap();
        let result = write_listed(listing, root, &opts, |skeleton, pending| {
            let gone = skeleton.lookup(b"etc/passwd").unwrap();
            assert!(pending.wait(gone).is_none(), "a node for a file that is gone");
            Err::<Option<()>, _>(anyhow::anyhow!("the writer's own error"))
        });
        let message = format!("{:#}", result.err().expect("an error"));
        assert!(message.contains(&root.join("etc/passwd").display().to_string()), "{message}");
        assert!(!message.contains("the writer's own error"), "{message}");
    }
}
