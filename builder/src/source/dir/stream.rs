//! Reading a host directory while an image is written from it.
//!
//! [`super::load_directory`] reads everything before anything is written, and on a
//! tree of many small files that reading (a few system calls per file) takes about
//! as long as writing the image. Here it is done in two steps so the two overlap:
//!
//! 1. **Scan**: every directory is listed (in parallel), and only directories are
//!    looked at: their metadata and xattrs. Other entries are known by the type and
//!    inode number the listing gives; names sharing an inode number are one node (a
//!    hard link). That is the whole shape of the tree, the *skeleton*, in canonical
//!    order, which is all a writer needs to number inodes and lay out directories.
//! 2. **Load**: the other entries are read exactly as [`super::load_directory`] reads
//!    them, in canonical order, a chunk at a time by a few threads, each node handed
//!    to the writer through [`PendingNodes`] as soon as it is read.
//!
//! The listing's word is checked as the entries are read: an entry whose type
//! changed, or hard links the inode numbers of the listing did not show (some
//! overlay file systems list other inode numbers than `stat` gives), make the
//! result [`Streamed::Whole`], read again the ordinary way, so the tree, and the
//! image, are always those of [`super::load_directory`]. So does a listing without
//! types, and any failure while scanning: the ordinary reader then reports the
//! first failure in canonical order, as it always does. A failure while loading is
//! reported as it is: entries are loaded in canonical order and the first failure
//! in that order wins.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use abforge_partitions::FileRegion;
use abforge_partitions::ext4::{self, Ext4Options, Ext4Summary};
use abforge_partitions::tree::{Content, FileTree, Metadata, Node, NodeId, NodeKind, PendingNodes};
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
    match Scan::new(root, opts) {
        Ok(Some(scan)) => write_scanned(scan, root, opts, write),
        // The ordinary reader reports the first failure in canonical order.
        Ok(None) | Err(_) => Ok(Streamed::Whole(load_source(root, opts)?)),
    }
}

/// [`write_while_loading`] once the listing is made.
fn write_scanned<T>(
    scan: Scan<'_>,
    root: &Path,
    opts: &SourceOptions,
    write: impl FnOnce(&FileTree, &PendingNodes) -> anyhow::Result<Option<T>>,
) -> anyhow::Result<Streamed<T>> {
    let pending = PendingNodes::new(scan.tree.node_count());
    let (written, loaded) = std::thread::scope(|scope| {
        let loader = scope.spawn(|| {
            // Whatever happens, every slot gets filled, so the writer never waits forever.
            let _stop = StopOnDrop(&pending);
            scan.load(&pending)
        });
        let written = write(&scan.tree, &pending);
        let loaded = loader.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the loader panicked")));
        (written, loaded)
    });
    match loaded? {
        Loaded::Inconsistent => Ok(Streamed::Whole(load_source(root, opts)?)),
        Loaded::Complete => Ok(match written? {
            Some(value) => Streamed::Written(value),
            None => {
                let mut tree = scan.tree;
                pending.complete(&mut tree);
                Streamed::Whole(tree)
            }
        }),
    }
}

/// Writes an ext4 file system of `size` bytes at the start of `file` (sized by the
/// caller) from the directory `root`, while it is read: the bytes
/// [`ext4::write`] gives for the loaded tree, sooner.
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

/// How loading ended (failures are errors).
enum Loaded {
    /// Every entry read, as the listing said.
    Complete,
    /// The listing was wrong about an entry: read everything again.
    Inconsistent,
}

/// Why a loading thread stopped early.
enum Stop {
    Failed(anyhow::Error),
    Inconsistent,
}

/// A host file's device (major, minor) and inode number.
type HostInode = (u32, u32, u64);

/// What the loading threads share.
struct LoadState<'s> {
    chunks: Vec<&'s [ToRead]>,
    /// The next chunk to take.
    next: AtomicUsize,
    /// Set when a chunk failed: take no more.
    stopped: AtomicBool,
    /// The earliest chunk that failed, and why.
    first_stop: Mutex<Option<(usize, Stop)>>,
    /// Which chunks are read, and the first that is not.
    read: Mutex<(Vec<bool>, usize)>,
    /// Nodes of several links (`stat` says so): their device and inode numbers.
    linked: Mutex<Vec<(HostInode, NodeId)>>,
}

/// A directory of the skeleton: where it is on the host.
struct ScanDir {
    host_path: PathBuf,
}

/// A name of a non-directory, to read.
struct ToRead {
    id: NodeId,
    /// Index in [`Scan::dirs`] of its directory.
    dir: usize,
    name: CString,
    listed: FileType,
}

/// One directory as listed.
struct Listed {
    xattrs: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    /// In name order.
    entries: Vec<ListedEntry>,
    /// Entries here and below.
    total: usize,
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

/// The skeleton of a directory source and what is left to read.
struct Scan<'o> {
    loader: Loader<'o>,
    tree: FileTree,
    dirs: Vec<ScanDir>,
    /// The first name of every non-directory, in node (canonical) order.
    files: Vec<ToRead>,
    /// The other names of nodes with several names.
    links: Vec<ToRead>,
}

impl<'o> Scan<'o> {
    /// Lists `root`; `None` when the listing does not give every entry's type.
    fn new(root: &Path, opts: &'o SourceOptions) -> anyhow::Result<Option<Scan<'o>>> {
        if let Some(owner) = &opts.owner {
            owner.validate().map_err(crate::error::UsageError::new)?;
        }
        let root_fd = open_dir(CWD, root)?;
        let root_stat = statx(&root_fd, c"", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)?;
        let loader = Loader { opts, inline_left: AtomicU64::new(INLINE_BUDGET) };
        let Some(listed) = list_dir(opts, root_fd, root, &[])? else {
            return Ok(None);
        };
        let mut root_meta = metadata_of(&root_stat);
        root_meta.xattrs = listed.xattrs;
        let mut scan = Scan {
            loader,
            tree: FileTree::new(finish_meta(opts, root_meta)),
            dirs: vec![ScanDir { host_path: root.to_path_buf() }],
            files: Vec::new(),
            links: Vec::new(),
        };
        scan.assemble(listed.entries, listed.total)?;
        Ok(Some(scan))
    }

    /// Builds the skeleton in canonical order (so node numbers are those
    /// [`crate::source::canonicalize`] gives).
    fn assemble(&mut self, root_entries: Vec<ListedEntry>, total: usize) -> anyhow::Result<()> {
        let opts = self.loader.opts;
        self.tree.reserve(total);
        self.files.reserve(total);
        let mut by_ino: HashMap<u64, NodeId, InoHash> =
            HashMap::with_capacity_and_hasher(total, InoHash::default());
        let mut stack = vec![(self.tree.root(), 0usize, root_entries.into_iter())];
        while let Some((dir_id, dir_index, entries)) = stack.last_mut() {
            let (dir_id, dir_index) = (*dir_id, *dir_index);
            let Some(entry) = entries.next() else {
                stack.pop();
                continue;
            };
            let name = entry.name.as_bytes();
            if let Some((mut meta, listed)) = entry.dir {
                meta.xattrs = listed.xattrs;
                let node = Node {
                    meta: finish_meta(opts, meta),
                    kind: NodeKind::Directory(Default::default()),
                };
                let id = self.tree.add(dir_id, name, node)?;
                let host_path =
                    self.dirs[dir_index].host_path.join(std::ffi::OsStr::from_bytes(name));
                self.dirs.push(ScanDir { host_path });
                stack.push((id, self.dirs.len() - 1, listed.entries.into_iter()));
                continue;
            }
            let mut to_read =
                ToRead { id: dir_id, dir: dir_index, name: entry.name, listed: entry.listed };
            if let Some(&first) = by_ino.get(&entry.ino) {
                self.tree.link(dir_id, to_read.name.as_bytes(), first)?;
                to_read.id = first;
                self.links.push(to_read);
            } else {
                let node = Node { meta: Metadata::default(), kind: placeholder(entry.listed) };
                to_read.id = self.tree.add(dir_id, to_read.name.as_bytes(), node)?;
                by_ino.insert(entry.ino, to_read.id);
                self.files.push(to_read);
            }
        }
        Ok(())
    }

    /// Reads every non-directory into `pending`, in canonical order, with a few
    /// threads taking chunks in turn; then checks the hard links.
    fn load(&self, pending: &PendingNodes) -> anyhow::Result<Loaded> {
        let chunks: Vec<&[ToRead]> = self.files.chunks(LOAD_CHUNK).collect();
        let state = LoadState {
            chunks,
            next: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            first_stop: Mutex::new(None),
            read: Mutex::new((vec![false; self.files.len().div_ceil(LOAD_CHUNK)], 0)),
            linked: Mutex::new(Vec::new()),
        };
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(MAX_LOADERS);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| self.load_chunks(&state, pending));
            }
        });
        match state.first_stop.into_inner().unwrap_or_else(PoisonError::into_inner) {
            Some((_, Stop::Failed(error))) => return Err(error),
            Some((_, Stop::Inconsistent)) => return Ok(Loaded::Inconsistent),
            None => {}
        }
        let linked = state.linked.into_inner().unwrap_or_else(PoisonError::into_inner);
        Ok(if self.links_agree(linked) { Loaded::Complete } else { Loaded::Inconsistent })
    }

    /// One loading thread: takes chunks in order until none is left or one failed.
    /// A chunk taken is finished (unless it fails itself), so that the failure of an
    /// earlier chunk is always found.
    fn load_chunks(&self, state: &LoadState<'_>, pending: &PendingNodes) {
        let mut scratch = Scratch::default();
        let mut linked = Vec::new();
        while !state.stopped.load(Ordering::Relaxed) {
            let index = state.next.fetch_add(1, Ordering::Relaxed);
            let Some(chunk) = state.chunks.get(index) else { break };
            if let Err(stop) = self.load_chunk(chunk, pending, &mut scratch, &mut linked) {
                state.stopped.store(true, Ordering::Relaxed);
                let mut first = state.first_stop.lock().unwrap_or_else(PoisonError::into_inner);
                if first.as_ref().is_none_or(|(at, _)| index < *at) {
                    *first = Some((index, stop));
                }
                break;
            }
            // Publish the nodes of the chunks read without a gap from the start.
            let mut read = state.read.lock().unwrap_or_else(PoisonError::into_inner);
            let (is_read, first_unread) = &mut *read;
            is_read[index] = true;
            if *first_unread == index {
                while is_read.get(*first_unread) == Some(&true) {
                    *first_unread += 1;
                }
                let ready = state
                    .chunks
                    .get(*first_unread)
                    .map_or(self.tree.node_count(), |chunk| chunk[0].id.index());
                pending.publish(ready);
            }
        }
        state.linked.lock().unwrap_or_else(PoisonError::into_inner).append(&mut linked);
    }
    /// Reads the entries of `chunk` and hands them over.
    fn load_chunk(
        &self,
        chunk: &[ToRead],
        pending: &PendingNodes,
        scratch: &mut Scratch,
        linked: &mut Vec<(HostInode, NodeId)>,
    ) -> Result<(), Stop> {
        let mut open: Option<(usize, OwnedFd)> = None;
        for item in chunk {
            let dir = &self.dirs[item.dir];
            let dir_fd = match &open {
                Some((index, fd)) if *index == item.dir => fd,
                _ => {
                    let fd = self.open_dir(item.dir).map_err(Stop::Failed)?;
                    &open.insert((item.dir, fd)).1
                }
            };
            let host =
                HostPath { dir: &dir.host_path, name: OsStr::from_bytes(item.name.as_bytes()) };
            let loaded = self
                .loader
                .read_entry(dir_fd.as_fd(), host, &item.name, item.listed, scratch)
                .map_err(Stop::Failed)?;
            let What::Other(kind) = loaded.what else { return Err(Stop::Inconsistent) };
            let listed = &self.tree.node(item.id).kind;
            if std::mem::discriminant(&kind) != std::mem::discriminant(listed) {
                return Err(Stop::Inconsistent);
            }
            if let Some(inode) = loaded.hard_link {
                linked.push((inode, item.id));
            }
            pending.fill(item.id, Node { meta: finish_meta(self.loader.opts, loaded.meta), kind });
        }
        Ok(())
    }

    fn open_dir(&self, index: usize) -> anyhow::Result<OwnedFd> {
        let path = &self.dirs[index].host_path;
        // The root as the user named it (a symbolic link is followed), as when scanning.
        let fd = if index == 0 { open_dir(CWD, path) } else { open_subdir(path) };
        fd.with_context(|| format!("cannot read the directory '{}'", path.display()))
    }

    /// Whether the hard links of the listing are those `stat` shows: every node's
    /// several names are one inode, and no two nodes are.
    fn links_agree(&self, linked: Vec<(HostInode, NodeId)>) -> bool {
        let mut node_of: HashMap<HostInode, NodeId> = HashMap::with_capacity(linked.len());
        for (inode, id) in linked {
            if node_of.insert(inode, id).is_some() {
                return false;
            }
        }
        let inode_of: HashMap<NodeId, HostInode> =
            node_of.into_iter().map(|(inode, id)| (id, inode)).collect();
        self.links.iter().all(|link| {
            let path = self.dirs[link.dir].host_path.join(std::ffi::OsStr::from_bytes(link.name.as_bytes()));
            let stat = statx(CWD, &path, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS);
            matches!(stat, Ok(stat)
                if inode_of.get(&link.id) == Some(&(stat.stx_dev_major, stat.stx_dev_minor, stat.stx_ino)))
        })
    }
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
            entry_tree_path = super::child_path(tree_path, name.to_bytes());
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
        subdirs.push((index, metadata_of(&stat)));
    }
    drop(dir_fd);
    let listings: Vec<anyhow::Result<(usize, Metadata, Option<Listed>)>> = subdirs
        .into_par_iter()
        .map(|(index, meta)| {
            let entry = &entries[index];
            let host_path = dir_path.join(std::ffi::OsStr::from_bytes(entry.name.as_bytes()));
            let fd = open_subdir(&host_path)?;
            Ok((index, meta, list_dir(opts, fd, &host_path, &entry.tree_path)?))
        })
        .collect();
    let mut total = entries.len();
    for listing in listings {
        let (index, meta, listed) = listing?;
        let Some(listed) = listed else { return Ok(None) };
        total += listed.total;
        entries[index].dir = Some((meta, listed));
    }
    Ok(Some(Listed { xattrs, entries, total }))
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

    /// Scans `root`, lets `between` change it, loads; the completed tree on success.
    fn scan_then_load(
        root: &Path,
        opts: &SourceOptions,
        between: impl FnOnce(),
    ) -> anyhow::Result<Result<FileTree, ()>> {
        let scan = Scan::new(root, opts)?.expect("the listing has types");
        between();
        let pending = PendingNodes::new(scan.tree.node_count());
        let loaded = scan.load(&pending);
        pending.stop();
        Ok(match loaded? {
            Loaded::Complete => {
                let mut tree = scan.tree;
                pending.complete(&mut tree);
                Ok(tree)
            }
            Loaded::Inconsistent => Err(()),
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

    #[test]
    fn an_entry_changed_since_the_listing_makes_it_read_again() {
        let temp = tempfile::tempdir().unwrap();
        tree(temp.path());
        let root = temp.path();
        // A file that became a symbolic link.
        let result = scan_then_load(root, &options(), || {
            fs::remove_file(root.join("var/sparse")).unwrap();
            std::os::unix::fs::symlink("elsewhere", root.join("var/sparse")).unwrap();
        });
        assert!(result.unwrap().is_err());
    }

    #[test]
    fn hard_links_the_listing_did_not_show_make_it_read_again() {
        let temp = tempfile::tempdir().unwrap();
        tree(temp.path());
        let root = temp.path();
        // Two names the listing saw as one inode are two files now.
        let result = scan_then_load(root, &options(), || {
            fs::remove_file(root.join("usr/passwd.link")).unwrap();
            fs::write(root.join("usr/passwd.link"), b"a copy").unwrap();
        });
        assert!(result.unwrap().is_err());
        // Two names the listing saw as two inodes are one now.
        let result = scan_then_load(root, &options(), || {
            fs::remove_file(root.join("var/sparse")).unwrap();
            fs::hard_link(root.join("etc/passwd"), root.join("var/sparse")).unwrap();
        });
        assert!(result.unwrap().is_err());
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
        let scan = Scan::new(root, &opts).unwrap().unwrap();
        let gone = scan.files.iter().find(|f| f.name.as_bytes() == b"passwd").unwrap().id;
        fs::remove_file(root.join("etc/passwd")).unwrap();
        let result = write_scanned(scan, root, &opts, |_, pending| {
            assert!(pending.wait(gone).is_none(), "a node for a file that is gone");
            Err::<Option<()>, _>(anyhow::anyhow!("the writer's own error"))
        });
        let message = format!("{:#}", result.err().expect("an error"));
        assert!(message.contains(&root.join("etc/passwd").display().to_string()), "{message}");
        assert!(!message.contains("the writer's own error"), "{message}");
    }
}
