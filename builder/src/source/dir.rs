//! Reads a host directory into a [`FileTree`], as any user.
//!
//! Each entry is looked at once with `statx` relative to its open directory,
//! never following a symbolic link. Recorded: type, permission bits
//! (setuid, setgid and sticky included), uid and gid, modification time to the
//! nanosecond, extended attributes (every namespace the kernel lets us list;
//! a file system without xattr support simply gives none), device numbers, symbolic
//! link targets as bytes, and hard links (non-directories with more than one link,
//! by device and inode number).
//!
//! Each regular file is opened once while loading, so an unreadable file is an
//! error naming it now rather than halfway through writing an image; its xattrs
//! are read through that descriptor (symbolic links, devices and FIFOs, which must
//! not be opened, by path). Small files (up to [`INLINE_MAX`] bytes, while the
//! [`INLINE_BUDGET`] lasts) are read through it too and kept in memory: a root file
//! system is mostly small files, and opening each one again to write it costs more
//! than reading it. Larger contents stay on the host: a [`HostFile`] reopens the
//! file when the writer reads it, and reports the holes found with
//! `SEEK_DATA`/`SEEK_HOLE` while loading. Left out:
//! access and change times (file systems get the modification time for all), and
//! the directories' own link counts (the writer computes them).
//!
//! Directories are read in parallel (rayon): a directory's entries, then its
//! subdirectories, each directory opened only while its own entries are read, so
//! the descriptors held stay few. The tree is then assembled in one pass in the
//! canonical order (names sorted by bytes, a directory before what it holds), so
//! hard links, the first error reported and the tree itself never depend on the
//! listing order or on which thread read what. Only which small files are kept
//! in memory (first come within the budget) varies, which changes no byte written.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, CString, OsStr};
use std::fmt::Display;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use abforge_partitions::tree::{
    Content, ContentSource, FileTree, Metadata, Node, NodeId, NodeKind, Timestamp, child_path,
};
use anyhow::Context;
use rayon::prelude::*;
use rustix::fs::{
    AtFlags, CWD, Dir, FileType, Mode, OFlags, SeekFrom, Statx, StatxFlags, openat, readlinkat,
    statx,
};
use rustix::io::Errno;

use super::{SourceOptions, is_excluded, show};

mod stream;

pub use stream::{Streamed, write_ext4_while_loading, write_while_loading};

/// Largest file read into memory while loading: one block. Such a file costs one
/// more system call now and saves opening it again later; a larger one is cheaper
/// to leave to the writer's reader threads, whose reading overlaps the writing of
/// the image (measured on a Debian root: the load a third shorter, the whole run
/// about a sixth, and less memory).
pub const INLINE_MAX: u64 = 4 << 10;

/// Most bytes of small files held in memory per tree; later files are read when written.
pub const INLINE_BUDGET: u64 = 64 << 20;

/// One directory as read from the host: its xattrs and its entries in name order.
struct Listing {
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    entries: Vec<Loaded>,
}

/// One entry of a directory as read from the host.
struct Loaded {
    name: Vec<u8>,
    /// Tree path, for messages.
    tree_path: Vec<u8>,
    host_path: PathBuf,
    node: LoadedNode,
}

/// What reading one entry gives.
struct LoadedNode {
    meta: Metadata,
    /// Device and inode number when it is a non-directory with several names.
    hard_link: Option<(u32, u32, u64)>,
    what: What,
}

/// The host path of an entry, made only when it is needed (a message, a file read
/// later, xattrs read by path): most entries never need it.
#[derive(Clone, Copy)]
struct HostPath<'a> {
    dir: &'a Path,
    name: &'a OsStr,
}

impl HostPath<'_> {
    fn get(&self) -> PathBuf {
        self.dir.join(self.name)
    }
}

impl std::fmt::Display for HostPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().display().fmt(f)
    }
}

enum What {
    Directory(Listing),
    Other(NodeKind),
}

/// What every directory read shares: the options and the small-file budget left.
struct Loader<'o> {
    opts: &'o SourceOptions,
    inline_left: AtomicU64,
}

/// Reads the directory `root` (its own metadata becomes the tree root's).
pub fn load_directory(root: &Path, opts: &SourceOptions) -> anyhow::Result<FileTree> {
    let cannot_read = |path: &Path| format!("cannot read the directory '{}'", path.display());
    let root_fd = open_dir(CWD, root).with_context(|| cannot_read(root))?;
    let root_stat = statx(&root_fd, c"", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS)
        .map_err(io::Error::from)
        .with_context(|| cannot_read(root))?;
    let loader = Loader { opts, inline_left: AtomicU64::new(INLINE_BUDGET) };
    let listing = loader.read_dir(root_fd, root, &[])?;

    let mut tree = FileTree::new(metadata_of(&root_stat));
    let root_id = tree.root();
    tree.node_mut(root_id).meta.xattrs = listing.xattrs;
    // Hard-linked non-directories already in the tree, by device and inode: the
    // first name in canonical order makes the node, the others link to it.
    let mut inodes: HashMap<(u32, u32, u64), NodeId> = HashMap::new();
    let mut pending: Vec<(NodeId, std::vec::IntoIter<Loaded>)> =
        vec![(root_id, listing.entries.into_iter())];
    while let Some((dir_id, entries)) = pending.last_mut() {
        let dir_id = *dir_id;
        let Some(entry) = entries.next() else {
            pending.pop();
            continue;
        };
        let added = |tree: &mut FileTree, node: Node| {
            tree.add(dir_id, &entry.name, node).with_context(|| {
                format!(
                    "cannot add '{}' ({}) to the tree",
                    entry.host_path.display(),
                    show(&entry.tree_path)
                )
            })
        };
        if let Some(inode) = entry.node.hard_link
            && let Some(&first) = inodes.get(&inode)
        {
            tree.link(dir_id, &entry.name, first).with_context(|| {
                format!("cannot add '{}' to the tree", entry.host_path.display())
            })?;
            continue;
        }
        match entry.node.what {
            What::Directory(listing) => {
                let mut meta = entry.node.meta;
                meta.xattrs = listing.xattrs;
                let node = Node { meta, kind: NodeKind::Directory(BTreeMap::new()) };
                let id = added(&mut tree, node)?;
                pending.push((id, listing.entries.into_iter()));
            }
            What::Other(kind) => {
                let id = added(&mut tree, Node { meta: entry.node.meta, kind })?;
                if let Some(inode) = entry.node.hard_link {
                    inodes.insert(inode, id);
                }
            }
        }
    }
    Ok(tree)
}

impl Loader<'_> {
    /// Reads the open directory `dir_fd` (at `dir_path` on the host, `tree_path` in
    /// the tree), then its subdirectories, in parallel. Of several failures, the
    /// first among this directory's own entries (in name order) is reported, else
    /// the first subdirectory's (in name order): the same whatever the threads do.
    fn read_dir(
        &self,
        dir_fd: OwnedFd,
        dir_path: &Path,
        tree_path: &[u8],
    ) -> anyhow::Result<Listing> {
        let cannot_read = || format!("cannot read the directory '{}'", dir_path.display());
        let xattrs =
            XattrReader::default().read(XattrsOf::Fd(dir_fd.as_fd()), &dir_path.display())?;
        // Names with the type the listing gives (a hint: looked at again below).
        let mut names: Vec<(CString, FileType)> = Vec::new();
        for entry in Dir::read_from(&dir_fd).map_err(io::Error::from).with_context(cannot_read)? {
            let entry = entry.map_err(io::Error::from).with_context(cannot_read)?;
            let name = entry.file_name();
            if name != c"." && name != c".." {
                names.push((name.to_owned(), entry.file_type()));
            }
        }
        names.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));

        // The entries first, with the directory open; subdirectories are opened
        // (and read) only after it is closed, so a directory with many
        // subdirectories does not hold a descriptor for each.
        let loaded: Vec<anyhow::Result<Option<Loaded>>> = names
            .par_iter()
            .with_min_len(16)
            .map_init(Scratch::default, |scratch, (c_name, listed)| {
                let name = OsStr::from_bytes(c_name.as_bytes());
                let entry_tree_path = child_path(tree_path, c_name.as_bytes());
                if is_excluded(self.opts, &entry_tree_path) {
                    return Ok(None);
                }
                let host = HostPath { dir: dir_path, name };
                let node = self.read_entry(dir_fd.as_fd(), host, c_name, *listed, scratch)?;
                Ok(Some(Loaded {
                    name: c_name.as_bytes().to_vec(),
                    tree_path: entry_tree_path,
                    host_path: host.get(),
                    node,
                }))
            })
            .collect();
        drop(dir_fd);
        let mut entries = Vec::with_capacity(loaded.len());
        let mut subdirs = Vec::new();
        for result in loaded {
            if let Some(entry) = result? {
                if matches!(entry.node.what, What::Directory(_)) {
                    subdirs.push(entries.len());
                }
                entries.push(entry);
            }
        }
        let listings: Vec<(usize, anyhow::Result<Listing>)> = subdirs
            .into_par_iter()
            .map(|index| {
                let entry = &entries[index];
                let listing = open_subdir(&entry.host_path)
                    .with_context(|| {
                        format!("cannot read the directory '{}'", entry.host_path.display())
                    })
                    .and_then(|fd| self.read_dir(fd, &entry.host_path, &entry.tree_path));
                (index, listing)
            })
            .collect();
        for (index, listing) in listings {
            entries[index].node.what = What::Directory(listing?);
        }
        Ok(Listing { xattrs, entries })
    }

    /// Reads the entry `c_name` of the open directory `dir_fd` (`host` on the host;
    /// `listed`: the type the listing gave). A directory comes back empty, its
    /// contents still to read.
    fn read_entry(
        &self,
        dir_fd: BorrowedFd<'_>,
        host: HostPath<'_>,
        c_name: &CStr,
        listed: FileType,
        scratch: &mut Scratch,
    ) -> anyhow::Result<LoadedNode> {
        let xattrs = &mut scratch.xattrs;
        // One stat per entry, never following a link. A file listed as regular is
        // opened first and looked at through its descriptor (one name lookup, not
        // two); the stat says what it really is, and anything else, or a failure,
        // goes the general way: a stat relative to the open directory.
        let mut opened = None;
        if listed == FileType::RegularFile {
            let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY;
            // NONBLOCK: should a FIFO have taken the file's place, opening it does not wait.
            if let Ok(fd) = openat(dir_fd, c_name, flags | OFlags::NONBLOCK, Mode::empty()) {
                match statx(&fd, c"", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS) {
                    Ok(stat) if FileType::from_raw_mode(u32::from(stat.stx_mode)).is_file() => {
                        opened = Some((fd, stat));
                    }
                    _ => {}
                }
            }
        }
        let (opened, stat) = match opened {
            Some((fd, stat)) => (Some(fd), stat),
            None => {
                let stat =
                    statx(dir_fd, c_name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS)
                        .map_err(io::Error::from)
                        .with_context(|| format!("cannot stat '{host}'"))?;
                (None, stat)
            }
        };
        let file_type = FileType::from_raw_mode(u32::from(stat.stx_mode));
        let hard_link = (file_type != FileType::Directory && stat.stx_nlink > 1).then_some((
            stat.stx_dev_major,
            stat.stx_dev_minor,
            stat.stx_ino,
        ));
        let mut meta = metadata_of(&stat);
        let kind = match file_type {
            // Its xattrs are read when it is read.
            FileType::Directory => NodeKind::Directory(BTreeMap::new()),
            FileType::RegularFile => {
                // Opened once now so that an unreadable file fails the load,
                // naming it; its xattrs are read through the same descriptor.
                let file = match opened {
                    Some(fd) => fd,
                    None => openat(
                        dir_fd,
                        c_name,
                        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY,
                        Mode::empty(),
                    )
                    .map_err(io::Error::from)
                    .with_context(|| format!("cannot read '{host}'"))?,
                };
                meta.xattrs = xattrs.read(XattrsOf::Fd(file.as_fd()), &host)?;
                let file = File::from(file);
                let len = stat.stx_size;
                let content = if len == 0 {
                    Content::empty()
                } else if len <= INLINE_MAX && self.take_inline(len) {
                    Content::Bytes(read_whole(&file, len, &host, &mut scratch.content)?)
                } else {
                    let ranges = data_ranges_of(&file, len)
                        .with_context(|| format!("cannot read '{host}'"))?;
                    Content::Source(Arc::new(HostFile {
                        path: host.get(),
                        len,
                        ranges: Some(ranges),
                    }))
                };
                NodeKind::File(content)
            }
            FileType::Symlink => {
                let target = readlinkat(dir_fd, c_name, Vec::new())
                    .map_err(io::Error::from)
                    .with_context(|| format!("cannot read the symbolic link '{host}'"))?;
                NodeKind::Symlink(target.into_bytes())
            }
            FileType::CharacterDevice => {
                NodeKind::CharDevice { major: stat.stx_rdev_major, minor: stat.stx_rdev_minor }
            }
            FileType::BlockDevice => {
                NodeKind::BlockDevice { major: stat.stx_rdev_major, minor: stat.stx_rdev_minor }
            }
            FileType::Fifo => NodeKind::Fifo,
            FileType::Socket => NodeKind::Socket,
            FileType::Unknown => {
                anyhow::bail!("'{host}' has a file type abforge does not know")
            }
        };
        if !matches!(kind, NodeKind::Directory(_) | NodeKind::File(_)) {
            // Not opened (a FIFO or device must not be): xattrs by path.
            meta.xattrs = xattrs.read(XattrsOf::Path(&host.get()), &host)?;
        }
        let what = match kind {
            NodeKind::Directory(_) => {
                What::Directory(Listing { xattrs: BTreeMap::new(), entries: Vec::new() })
            }
            kind => What::Other(kind),
        };
        Ok(LoadedNode { meta, hard_link, what })
    }

    /// Takes `len` bytes from the small-file budget, if that many are left.
    fn take_inline(&self, len: u64) -> bool {
        self.inline_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(len))
            .is_ok()
    }
}

/// Buffers one loading thread reuses from entry to entry.
#[derive(Default)]
struct Scratch {
    xattrs: XattrReader,
    content: Vec<u8>,
}

/// The `len` bytes of a small file, read through its descriptor (into `scratch`,
/// then copied once to their final place); a file that changed length since its
/// `statx` is an error naming it.
fn read_whole(
    file: &File,
    len: u64,
    path: &dyn Display,
    scratch: &mut Vec<u8>,
) -> anyhow::Result<Arc<[u8]>> {
    // `len` is at most INLINE_MAX.
    let len = usize::try_from(len).unwrap_or(0);
    if scratch.len() < len {
        scratch.resize(len, 0);
    }
    let bytes = &mut scratch[..len];
    let mut done = 0;
    while done < bytes.len() {
        match file.read_at(&mut bytes[done..], done as u64) {
            Ok(0) => {
                anyhow::bail!("cannot read '{path}': it shrank to {done} bytes while being read")
            }
            Ok(n) => done += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read '{path}'"));
            }
        }
    }
    Ok(Arc::from(&bytes[..]))
}

/// Byte ranges of `file` (first `len` bytes) that may hold data, from
/// `SEEK_DATA`/`SEEK_HOLE`; the whole length where the file system cannot tell.
fn data_ranges_of(file: &File, len: u64) -> io::Result<Vec<Range<u64>>> {
    let mut ranges = Vec::new();
    let mut position = 0;
    while position < len {
        let start = match rustix::fs::seek(file, SeekFrom::Data(position)) {
            Ok(start) => start,
            // No data after `position`: the rest is a hole.
            Err(Errno::NXIO) => break,
            // A file system without SEEK_DATA: treat the whole file as data.
            Err(Errno::INVAL | Errno::NOTSUP) => return Ok(std::iter::once(0..len).collect()),
            Err(err) => return Err(err.into()),
        };
        if start >= len {
            break;
        }
        let end = rustix::fs::seek(file, SeekFrom::Hole(start))?.min(len);
        if end <= start {
            // Cannot happen on a sane file system; stop rather than loop.
            ranges.push(start..len);
            break;
        }
        ranges.push(start..end);
        position = end;
    }
    Ok(ranges)
}

/// Opens the source root (a symbolic link the user named is followed).
fn open_dir(at: impl AsFd, path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(openat(at, path, flags, Mode::empty())?)
}

/// Opens a directory inside the source, never through a symbolic link in its last
/// component (one put there since it was listed is refused).
fn open_subdir(path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(openat(CWD, path, flags, Mode::empty())?)
}

fn metadata_of(stat: &Statx) -> Metadata {
    Metadata::new(
        stat.stx_mode & 0o7777,
        stat.stx_uid,
        stat.stx_gid,
        Timestamp { seconds: stat.stx_mtime.tv_sec, nanoseconds: stat.stx_mtime.tv_nsec },
    )
}

/// Whose extended attributes to read: an open file, or a path (not followed).
#[derive(Clone, Copy)]
enum XattrsOf<'a> {
    Fd(BorrowedFd<'a>),
    Path(&'a Path),
}

/// Lists and reads extended attributes, reusing its buffers across entries.
#[derive(Default)]
struct XattrReader {
    names: Vec<u8>,
    value: Vec<u8>,
}

impl XattrReader {
    /// All attributes of `of` (`path` names it in messages). A file system
    /// without xattr support gives none.
    fn read(
        &mut self,
        of: XattrsOf<'_>,
        path: &dyn Display,
    ) -> anyhow::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut out = BTreeMap::new();
        let cannot_list = || format!("cannot list the extended attributes of '{path}'");
        let names_len = loop {
            if self.names.is_empty() {
                self.names.resize(4096, 0);
            }
            let listed = match of {
                XattrsOf::Fd(fd) => rustix::fs::flistxattr(fd, &mut self.names[..]),
                XattrsOf::Path(path) => rustix::fs::llistxattr(path, &mut self.names[..]),
            };
            match listed {
                Ok(len) => break len,
                Err(Errno::NOTSUP) => return Ok(out),
                Err(Errno::RANGE) => {
                    let needed = match of {
                        XattrsOf::Fd(fd) => rustix::fs::flistxattr_query(fd),
                        XattrsOf::Path(path) => rustix::fs::llistxattr_query(path),
                    };
                    let needed = needed.map_err(io::Error::from).with_context(cannot_list)?;
                    self.names.resize(needed.max(self.names.len() * 2), 0);
                }
                Err(err) => return Err(io::Error::from(err)).with_context(cannot_list),
            }
        };
        if names_len == 0 {
            return Ok(out);
        }
        let names = std::mem::take(&mut self.names);
        for name in names[..names_len].split(|&b| b == 0).filter(|name| !name.is_empty()) {
            if let Some(value) = self.value_of(of, path, name)? {
                out.insert(name.to_vec(), value);
            }
        }
        self.names = names;
        Ok(out)
    }

    /// One attribute's value; `None` when it vanished or is not readable on this
    /// file system (ENODATA, ENOTSUP).
    fn value_of(
        &mut self,
        of: XattrsOf<'_>,
        path: &dyn Display,
        name: &[u8],
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let describe = || {
            format!(
                "cannot read the extended attribute '{}' of '{path}'",
                String::from_utf8_lossy(name),
            )
        };
        loop {
            if self.value.is_empty() {
                self.value.resize(4096, 0);
            }
            let read = match of {
                XattrsOf::Fd(fd) => rustix::fs::fgetxattr(fd, name, &mut self.value[..]),
                XattrsOf::Path(path) => rustix::fs::lgetxattr(path, name, &mut self.value[..]),
            };
            match read {
                Ok(len) => return Ok(Some(self.value[..len].to_vec())),
                Err(Errno::NODATA | Errno::NOTSUP) => return Ok(None),
                Err(Errno::RANGE) => {
                    let needed = match of {
                        XattrsOf::Fd(fd) => rustix::fs::fgetxattr_query(fd, name),
                        XattrsOf::Path(path) => rustix::fs::lgetxattr_query(path, name),
                    };
                    let needed = needed.map_err(io::Error::from).with_context(describe)?;
                    self.value.resize(needed.max(self.value.len() * 2), 0);
                }
                Err(err) => return Err(io::Error::from(err)).with_context(describe),
            }
        }
    }
}

/// A regular file of a host directory, read when the writer copies it.
///
/// The file is opened anew by each read rather than kept open, so a tree of
/// 100 000 files never holds 100 000 descriptors. Reads stop at the length seen
/// when the tree was loaded; a file that shrank since gives an error.
#[derive(Debug)]
pub struct HostFile {
    path: PathBuf,
    len: u64,
    /// Data ranges found while loading; `None`: asked of the file when needed.
    ranges: Option<Vec<Range<u64>>>,
}

impl HostFile {
    pub fn new(path: PathBuf, len: u64) -> HostFile {
        HostFile { path, len, ranges: None }
    }

    fn open(&self) -> io::Result<File> {
        File::open(&self.path).map_err(|err| self.name_error(err))
    }

    fn name_error(&self, err: io::Error) -> io::Error {
        io::Error::new(err.kind(), format!("reading '{}': {err}", self.path.display()))
    }
}

impl ContentSource for HostFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let available = self.len.saturating_sub(offset);
        let wanted = usize::try_from(available).unwrap_or(usize::MAX).min(buf.len());
        if wanted == 0 {
            return Ok(0);
        }
        let file = self.open()?;
        let mut done = 0;
        while done < wanted {
            // `done` is at most `wanted`, itself at most `self.len - offset`.
            match file.read_at(&mut buf[done..wanted], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(self.name_error(err)),
            }
        }
        Ok(done)
    }

    fn data_ranges(&self) -> io::Result<Vec<Range<u64>>> {
        if let Some(ranges) = &self.ranges {
            return Ok(ranges.clone());
        }
        if self.len == 0 {
            return Ok(Vec::new());
        }
        data_ranges_of(&self.open()?, self.len).map_err(|err| self.name_error(err))
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_file_reads_within_its_length_and_reports_holes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let content = Content::Source(Arc::new(HostFile::new(path.clone(), 10)));
        let mut buf = [0xffu8; 6];
        content.read_exact_at(&mut buf, 7).unwrap();
        assert_eq!(&buf, b"789\0\0\0");
        assert_eq!(content.data_ranges().unwrap(), std::iter::once(0..10).collect::<Vec<_>>());

        // A file that shrank after loading is an error naming it.
        std::fs::write(&path, b"01234").unwrap();
        let err = content.read_exact_at(&mut [0u8; 10], 0).unwrap_err();
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");

        // All hole: no data ranges; a deleted file: an error naming it.
        let file = File::create(&path).unwrap();
        file.set_len(1 << 20).unwrap();
        let holes = HostFile::new(path.clone(), 1 << 20);
        assert_eq!(holes.data_ranges().unwrap(), []);
        std::fs::remove_file(&path).unwrap();
        let err = holes.read_at(&mut [0u8; 4], 0).unwrap_err();
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn small_files_are_read_while_loading_and_large_ones_keep_their_holes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("small"), b"hello").unwrap();
        let large = File::create(dir.path().join("large")).unwrap();
        large.set_len(4 << 20).unwrap();
        large.write_all_at(&[1u8; 4096], 1 << 20).unwrap();
        let tree = load_directory(dir.path(), &SourceOptions::default()).unwrap();
        let content = |name: &[u8]| match &tree.node(tree.lookup(name).unwrap()).kind {
            NodeKind::File(content) => content.clone(),
            other => panic!("{other:?}"),
        };
        assert!(matches!(content(b"small"), Content::Bytes(ref b) if &b[..] == b"hello"));
        let large = content(b"large");
        assert!(matches!(large, Content::Source(_)));
        let expected = std::iter::once((1 << 20)..(1 << 20) + 4096).collect::<Vec<_>>();
        assert_eq!(large.data_ranges().unwrap(), expected);
        // The ranges were found while loading: a deleted file still reports them.
        std::fs::remove_file(dir.path().join("large")).unwrap();
        assert_eq!(large.data_ranges().unwrap(), expected);
    }
}
