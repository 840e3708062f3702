//! Reads a host directory into a [`FileTree`], as any user.
//!
//! Each entry is looked at once with `lstat` (through `readdir`'s directory
//! handle), never following a symbolic link. Recorded: type, permission bits
//! (setuid, setgid and sticky included), uid and gid, modification time to the
//! nanosecond, extended attributes (every namespace the kernel lets us list;
//! a file system without xattr support simply gives none), device numbers, symbolic
//! link targets as bytes, and hard links (non-directories with more than one link,
//! by device and inode number). File contents stay on the host: a [`HostFile`]
//! reopens the file when the writer reads it, and reports its holes with
//! `SEEK_DATA`/`SEEK_HOLE`.
//!
//! Each regular file is opened once while loading, so an unreadable file is an
//! error naming it now rather than halfway through writing an image. Left out:
//! access and change times (file systems get the modification time for all), and
//! the directories' own link counts (the writer computes them).

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abforge_partitions::tree::{
    Content, ContentSource, FileTree, Metadata, Node, NodeId, NodeKind, Timestamp,
};
use anyhow::Context;
use rustix::fs::SeekFrom;
use rustix::io::Errno;

use super::{SourceOptions, is_excluded, show};

/// Reads the directory `root` (its own metadata becomes the tree root's).
pub fn load_directory(root: &Path, opts: &SourceOptions) -> anyhow::Result<FileTree> {
    let root_stat = fs::metadata(root)
        .with_context(|| format!("cannot read the source directory '{}'", root.display()))?;
    let mut xattrs = XattrReader::default();
    let mut root_meta = metadata_of(&root_stat);
    root_meta.xattrs = xattrs.read(root)?;
    let mut tree = FileTree::new(root_meta);

    // Hard-linked non-directories already in the tree, by (device, inode).
    let mut inodes: HashMap<(u64, u64), NodeId> = HashMap::new();
    // Directories still to read: host path, path in the tree, node.
    let mut pending: Vec<(PathBuf, Vec<u8>, NodeId)> =
        vec![(root.to_path_buf(), Vec::new(), tree.root())];

    while let Some((dir_path, tree_path, dir_id)) = pending.pop() {
        let mut entries = Vec::new();
        for entry in fs::read_dir(&dir_path)
            .with_context(|| format!("cannot read the directory '{}'", dir_path.display()))?
        {
            let entry = entry
                .with_context(|| format!("cannot read the directory '{}'", dir_path.display()))?;
            entries.push(entry);
        }
        // Sorted so that hard links and errors come out the same whatever the
        // order `readdir` returned.
        entries.sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));

        for entry in entries {
            let name = entry.file_name();
            let name = name.as_bytes();
            let mut entry_tree_path = tree_path.clone();
            if !entry_tree_path.is_empty() {
                entry_tree_path.push(b'/');
            }
            entry_tree_path.extend_from_slice(name);
            if is_excluded(opts, &entry_tree_path) {
                continue;
            }
            let host_path = entry.path();
            // `DirEntry::metadata` is an `fstatat(AT_SYMLINK_NOFOLLOW)` on the
            // directory handle: one stat per entry, links not followed.
            let stat = entry
                .metadata()
                .with_context(|| format!("cannot stat '{}'", host_path.display()))?;
            let file_type = stat.file_type();

            if !file_type.is_dir() && stat.nlink() > 1 {
                if let Some(&first) = inodes.get(&(stat.dev(), stat.ino())) {
                    tree.link(dir_id, name, first).with_context(|| {
                        format!("cannot add '{}' to the tree", host_path.display())
                    })?;
                    continue;
                }
            }

            let mut meta = metadata_of(&stat);
            meta.xattrs = xattrs.read(&host_path)?;
            let kind = if file_type.is_dir() {
                NodeKind::Directory(BTreeMap::new())
            } else if file_type.is_file() {
                // Opened once now so that an unreadable file fails the load, naming it.
                File::open(&host_path)
                    .with_context(|| format!("cannot read '{}'", host_path.display()))?;
                NodeKind::File(Content::Source(Arc::new(HostFile {
                    path: host_path.clone(),
                    len: stat.len(),
                })))
            } else if file_type.is_symlink() {
                let target = fs::read_link(&host_path).with_context(|| {
                    format!("cannot read the symbolic link '{}'", host_path.display())
                })?;
                NodeKind::Symlink(target.into_os_string().into_vec())
            } else if file_type.is_char_device() {
                let (major, minor) = split_dev(stat.rdev());
                NodeKind::CharDevice { major, minor }
            } else if file_type.is_block_device() {
                let (major, minor) = split_dev(stat.rdev());
                NodeKind::BlockDevice { major, minor }
            } else if file_type.is_fifo() {
                NodeKind::Fifo
            } else if file_type.is_socket() {
                NodeKind::Socket
            } else {
                anyhow::bail!("'{}' has a file type abforge does not know", host_path.display());
            };
            let is_dir = kind.is_dir();
            let id = tree.add(dir_id, name, Node { meta, kind }).with_context(|| {
                format!(
                    "cannot add '{}' ({}) to the tree",
                    host_path.display(),
                    show(&entry_tree_path)
                )
            })?;
            if is_dir {
                pending.push((host_path, entry_tree_path, id));
            } else if stat.nlink() > 1 {
                inodes.insert((stat.dev(), stat.ino()), id);
            }
        }
    }
    Ok(tree)
}

fn metadata_of(stat: &fs::Metadata) -> Metadata {
    // `st_mode & 0o7777` fits in 12 bits, and `mtime_nsec` is in 0..1e9.
    let permissions = (stat.mode() & 0o7777) as u16;
    let nanoseconds = u32::try_from(stat.mtime_nsec()).unwrap_or(0);
    Metadata::new(
        permissions,
        stat.uid(),
        stat.gid(),
        Timestamp { seconds: stat.mtime(), nanoseconds },
    )
}

/// Splits a Linux `dev_t` into major and minor numbers: the major is bits 8–19
/// and 32–63, the minor bits 0–7 and 20–31 (glibc's `gnu_dev_major/minor`).
pub fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    // Both masks keep at most 32 bits.
    let narrow = |value: u64| u32::try_from(value).unwrap_or(u32::MAX);
    (narrow(major), narrow(minor))
}

/// Lists and reads extended attributes, reusing its buffers across entries.
#[derive(Default)]
struct XattrReader {
    names: Vec<u8>,
    value: Vec<u8>,
}

impl XattrReader {
    fn read(&mut self, path: &Path) -> anyhow::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut out = BTreeMap::new();
        let names_len = loop {
            if self.names.is_empty() {
                self.names.resize(4096, 0);
            }
            match rustix::fs::llistxattr(path, &mut self.names[..]) {
                Ok(len) => break len,
                // A file system without extended attributes has none to copy.
                Err(Errno::NOTSUP) => return Ok(out),
                Err(Errno::RANGE) => {
                    let needed = rustix::fs::llistxattr_query(path).with_context(|| {
                        format!("cannot list the extended attributes of '{}'", path.display())
                    })?;
                    self.names.resize(needed.max(self.names.len() * 2), 0);
                }
                Err(err) => {
                    return Err(io::Error::from(err)).with_context(|| {
                        format!("cannot list the extended attributes of '{}'", path.display())
                    });
                }
            }
        };
        let names = std::mem::take(&mut self.names);
        for name in names[..names_len].split(|&b| b == 0).filter(|name| !name.is_empty()) {
            if let Some(value) = self.value_of(path, name)? {
                out.insert(name.to_vec(), value);
            }
        }
        self.names = names;
        Ok(out)
    }

    /// One attribute's value; `None` when it vanished or is not readable on this
    /// file system (ENODATA, ENOTSUP).
    fn value_of(&mut self, path: &Path, name: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
        let describe = || {
            format!(
                "cannot read the extended attribute '{}' of '{}'",
                String::from_utf8_lossy(name),
                path.display()
            )
        };
        loop {
            if self.value.is_empty() {
                self.value.resize(4096, 0);
            }
            match rustix::fs::lgetxattr(path, name, &mut self.value[..]) {
                Ok(len) => return Ok(Some(self.value[..len].to_vec())),
                Err(Errno::NODATA | Errno::NOTSUP) => return Ok(None),
                Err(Errno::RANGE) => {
                    let needed = rustix::fs::lgetxattr_query(path, name)
                        .map_err(io::Error::from)
                        .with_context(describe)?;
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
}

impl HostFile {
    pub fn new(path: PathBuf, len: u64) -> HostFile {
        HostFile { path, len }
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
        if self.len == 0 {
            return Ok(Vec::new());
        }
        let file = self.open()?;
        let mut ranges = Vec::new();
        let mut position = 0;
        while position < self.len {
            let start = match rustix::fs::seek(&file, SeekFrom::Data(position)) {
                Ok(start) => start,
                // No data after `position`: the rest is a hole.
                Err(Errno::NXIO) => break,
                // A file system without SEEK_DATA: treat the whole file as data.
                Err(Errno::INVAL | Errno::NOTSUP) => {
                    return Ok(std::iter::once(0..self.len).collect());
                }
                Err(err) => return Err(self.name_error(err.into())),
            };
            if start >= self.len {
                break;
            }
            let end = match rustix::fs::seek(&file, SeekFrom::Hole(start)) {
                Ok(end) => end.min(self.len),
                Err(err) => return Err(self.name_error(err.into())),
            };
            if end <= start {
                // Cannot happen on a sane file system; stop rather than loop.
                ranges.push(start..self.len);
                break;
            }
            ranges.push(start..end);
            position = end;
        }
        Ok(ranges)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_linux_device_numbers() {
        // makedev(8, 1) and makedev(0x12345, 0x6789a) in the Linux encoding.
        assert_eq!(split_dev(0x0801), (8, 1));
        let dev = ((0x12345u64 & 0xfffff000) << 32)
            | ((0x12345u64 & 0xfff) << 8)
            | ((0x6789au64 & 0xffffff00) << 12)
            | (0x6789au64 & 0xff);
        assert_eq!(split_dev(dev), (0x12345, 0x6789a));
    }
}
