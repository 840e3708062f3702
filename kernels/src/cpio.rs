//! A reproducible "newc" cpio writer for initramfs images.
//!
//! Follows the "new ASCII" format (magic `070701`) as the kernel unpacks it
//! (Documentation/driver-api/early-userspace/buffer-format.rst, `init/initramfs.c`):
//! a 110-byte header of the magic and thirteen 8-digit hexadecimal fields (inode,
//! mode, uid, gid, nlink, mtime, file size, device major/minor, rdev major/minor,
//! name size, check), the NUL-terminated name padded so header and name end on a
//! multiple of 4 bytes, then the data padded to a multiple of 4, and a last entry
//! named `TRAILER!!!`.
//!
//! What makes two runs byte-identical: entries come from a [`FileTree`] walk (a
//! directory before its children, children sorted by name bytes); owners are always
//! 0:0; every entry has the one given modification time; inode numbers count up from
//! 1 in write order; the device fields of the archive's own file system are 0; gzip
//! output has no name and a zero time in its header; compression settings are fixed.
//!
//! Supported: directories (the root as `.`), regular files (streamed from their
//! [`Content`], never held whole), symlinks, character and block devices, FIFOs and
//! sockets. Left out: extended attributes (newc has none), hard links (each name is
//! written as its own file: the kernel would otherwise need all links to share an
//! inode and put the data on the last), the `070702` checksum variant, files of
//! 4 GiB or more (the size field is 32 bits), and padding the archive to 512 bytes.

use std::io::{self, Write};

use abforge_partitions::tree::{
    Content, FileTree, Metadata, Node, NodeId, NodeKind, Timestamp, TreeError, components,
};

/// Longest name (with its NUL) the kernel's unpacker accepts (`PATH_MAX`).
pub const MAX_NAME_SIZE: usize = 4096;

const HEADER_LEN: usize = 110;
const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

const S_IFSOCK: u32 = 0o140000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;
const S_IFBLK: u32 = 0o060000;
const S_IFDIR: u32 = 0o040000;
const S_IFCHR: u32 = 0o020000;
const S_IFIFO: u32 = 0o010000;

/// Why an archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("writing the cpio archive: {0}")]
    Write(#[source] io::Error),
    #[error("reading '{path}' for the cpio archive: {source}")]
    Read { path: String, source: io::Error },
    #[error("'{path}' is {size} bytes: a newc cpio entry holds less than 4 GiB")]
    TooLarge { path: String, size: u64 },
    #[error("the path '{0}' is longer than the kernel's 4095-byte limit")]
    NameTooLong(String),
    #[error("initramfs path '{path}': {source}")]
    Tree { path: String, source: TreeError },
    #[error("{0} compression is not built into this abforge-kernels (cargo feature '{0}')")]
    CompressionUnavailable(&'static str),
}

/// How the archive is compressed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Compression {
    None,
    /// gzip, level 9, no file name, modification time 0.
    Gzip,
    /// zstd, level 9, with a content checksum, single-threaded.
    Zstd,
}

/// Level used for gzip output (fixed: part of the reproducible format).
pub const GZIP_LEVEL: u32 = 9;
/// Level used for zstd output (fixed: part of the reproducible format).
pub const ZSTD_LEVEL: i32 = 9;

/// Writes `tree` as a newc archive to `out` with every entry owned by 0:0 and
/// modified at `mtime` (seconds since the epoch), compressed as asked. Returns `out`
/// once everything, including the compressor's last frame, is written.
pub fn write_newc<W: Write>(
    tree: &FileTree,
    mtime: u32,
    compression: Compression,
    out: W,
) -> Result<W, CpioError> {
    match compression {
        Compression::None => {
            let mut out = out;
            write_entries(tree, mtime, &mut out)?;
            out.flush().map_err(CpioError::Write)?;
            Ok(out)
        }
        Compression::Gzip => write_gzip(tree, mtime, out),
        Compression::Zstd => write_zstd(tree, mtime, out),
    }
}

#[cfg(feature = "gzip")]
fn write_gzip<W: Write>(tree: &FileTree, mtime: u32, out: W) -> Result<W, CpioError> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255) // "unknown": the same on every host
        .write(out, flate2::Compression::new(GZIP_LEVEL));
    write_entries(tree, mtime, &mut encoder)?;
    encoder.finish().map_err(CpioError::Write)
}

#[cfg(not(feature = "gzip"))]
fn write_gzip<W: Write>(_: &FileTree, _: u32, _: W) -> Result<W, CpioError> {
    Err(CpioError::CompressionUnavailable("gzip"))
}

#[cfg(feature = "zstd")]
fn write_zstd<W: Write>(tree: &FileTree, mtime: u32, out: W) -> Result<W, CpioError> {
    let mut encoder =
        zstd::stream::write::Encoder::new(out, ZSTD_LEVEL).map_err(CpioError::Write)?;
    encoder.include_checksum(true).map_err(CpioError::Write)?;
    write_entries(tree, mtime, &mut encoder)?;
    encoder.finish().map_err(CpioError::Write)
}

#[cfg(not(feature = "zstd"))]
fn write_zstd<W: Write>(_: &FileTree, _: u32, _: W) -> Result<W, CpioError> {
    Err(CpioError::CompressionUnavailable("zstd"))
}

/// The fields of one header, in on-disk order after the magic.
struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

fn write_header(out: &mut impl Write, header: &Header, name: &str) -> Result<(), CpioError> {
    let name_size = name.len() + 1;
    if name_size > MAX_NAME_SIZE {
        return Err(CpioError::NameTooLong(name.to_string()));
    }
    // At most 4096, so it fits in u32.
    let name_size_field =
        u32::try_from(name_size).map_err(|_| CpioError::NameTooLong(name.to_string()))?;
    let fields: [u32; 13] = [
        header.ino,
        header.mode,
        0, // uid
        0, // gid
        header.nlink,
        header.mtime,
        header.filesize,
        0, // devmajor of the archive's own file system
        0, // devminor
        header.rdev_major,
        header.rdev_minor,
        name_size_field,
        0, // check: only the 070702 variant uses it
    ];
    let mut bytes = Vec::with_capacity(HEADER_LEN + name_size + 3);
    bytes.extend_from_slice(MAGIC);
    for field in fields {
        bytes.extend_from_slice(format!("{field:08X}").as_bytes());
    }
    bytes.extend_from_slice(name.as_bytes());
    bytes.push(0);
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    out.write_all(&bytes).map_err(CpioError::Write)
}

fn write_padding(out: &mut impl Write, len: u64) -> Result<(), CpioError> {
    let pad = len.next_multiple_of(4) - len;
    // pad < 4, so the slice index cannot fail.
    out.write_all(&[0u8; 3][..usize::try_from(pad).unwrap_or(0)]).map_err(CpioError::Write)
}

fn write_entries(tree: &FileTree, mtime: u32, out: &mut impl Write) -> Result<(), CpioError> {
    let mut ino: u32 = 0;
    for (path_bytes, id) in tree.walk() {
        let path = String::from_utf8_lossy(&path_bytes).into_owned();
        let name = if path.is_empty() { ".".to_string() } else { path.clone() };
        let node = tree.node(id);
        ino = ino
            .checked_add(1)
            .ok_or_else(|| CpioError::TooLarge { path: name.clone(), size: u64::MAX })?;
        let permissions = u32::from(node.meta.permissions & 0o7777);
        let mut header = Header {
            ino,
            mode: permissions,
            nlink: 1,
            mtime,
            filesize: 0,
            rdev_major: 0,
            rdev_minor: 0,
        };
        match &node.kind {
            NodeKind::Directory(_) => {
                header.mode |= S_IFDIR;
                let subdirs =
                    tree.children(id).filter(|(_, c)| tree.node(*c).kind.is_dir()).count();
                header.nlink = u32::try_from(subdirs).unwrap_or(u32::MAX).saturating_add(2);
                write_header(out, &header, &name)?;
            }
            NodeKind::File(content) => {
                header.mode |= S_IFREG;
                let size = content.len();
                header.filesize = u32::try_from(size)
                    .map_err(|_| CpioError::TooLarge { path: name.clone(), size })?;
                write_header(out, &header, &name)?;
                copy_content(content, &name, out)?;
                write_padding(out, size)?;
            }
            NodeKind::Symlink(target) => {
                header.mode |= S_IFLNK;
                let size = target.len() as u64; // usize always fits in u64 on supported targets
                header.filesize = u32::try_from(size)
                    .map_err(|_| CpioError::TooLarge { path: name.clone(), size })?;
                write_header(out, &header, &name)?;
                out.write_all(target).map_err(CpioError::Write)?;
                write_padding(out, size)?;
            }
            NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor } => {
                header.mode |= if matches!(node.kind, NodeKind::CharDevice { .. }) {
                    S_IFCHR
                } else {
                    S_IFBLK
                };
                header.rdev_major = *major;
                header.rdev_minor = *minor;
                write_header(out, &header, &name)?;
            }
            NodeKind::Fifo => {
                header.mode |= S_IFIFO;
                write_header(out, &header, &name)?;
            }
            NodeKind::Socket => {
                header.mode |= S_IFSOCK;
                write_header(out, &header, &name)?;
            }
        }
    }
    let trailer =
        Header { ino: 0, mode: 0, nlink: 1, mtime: 0, filesize: 0, rdev_major: 0, rdev_minor: 0 };
    write_header(out, &trailer, TRAILER)
}

/// Streams a file's content in bounded chunks.
fn copy_content(content: &Content, name: &str, out: &mut impl Write) -> Result<(), CpioError> {
    const CHUNK: u64 = 256 * 1024;
    let len = content.len();
    let mut buf = vec![0u8; usize::try_from(CHUNK.min(len)).unwrap_or(0)];
    let mut offset = 0u64;
    while offset < len {
        let n = CHUNK.min(len - offset);
        // n <= CHUNK, which fits in usize.
        let chunk = &mut buf[..usize::try_from(n).unwrap_or(0)];
        content
            .read_exact_at(chunk, offset)
            .map_err(|source| CpioError::Read { path: name.to_string(), source })?;
        out.write_all(chunk).map_err(CpioError::Write)?;
        offset += n;
    }
    Ok(())
}

/// An initramfs under construction: a [`FileTree`] whose nodes are all owned by
/// 0:0 with one modification time, and whose missing parent directories are created
/// (mode 0755) as entries are added.
#[derive(Clone, Debug)]
pub struct Initramfs {
    tree: FileTree,
    mtime: u32,
}

impl Initramfs {
    /// An empty initramfs whose entries are dated `mtime` (SOURCE_DATE_EPOCH).
    pub fn new(mtime: u32) -> Initramfs {
        Initramfs { tree: FileTree::new(Initramfs::meta_for(0o755, mtime)), mtime }
    }

    fn meta_for(permissions: u16, mtime: u32) -> Metadata {
        Metadata::new(permissions, 0, 0, Timestamp::from_seconds(i64::from(mtime)))
    }

    fn meta(&self, permissions: u16) -> Metadata {
        Initramfs::meta_for(permissions, self.mtime)
    }

    /// Adds a node at `path` (leading `/` optional), creating missing parents.
    fn add(&mut self, path: &str, node: Node) -> Result<NodeId, CpioError> {
        let tree_error = |source| CpioError::Tree { path: path.to_string(), source };
        let parts: Vec<&[u8]> = components(path.as_bytes()).collect();
        let Some((last, parents)) = parts.split_last() else {
            return Err(tree_error(TreeError::Exists { path: Vec::new() }));
        };
        let dir_meta = self.meta(0o755);
        let parent = self.tree.make_dirs(parents, &dir_meta).map_err(tree_error)?;
        self.tree.add(parent, last, node).map_err(tree_error)
    }

    /// Makes sure the directory `path` exists (creating parents); sets its permissions.
    pub fn add_dir(&mut self, path: &str, permissions: u16) -> Result<(), CpioError> {
        let parts: Vec<&[u8]> = components(path.as_bytes()).collect();
        let dir_meta = self.meta(0o755);
        let id = self
            .tree
            .make_dirs(&parts, &dir_meta)
            .map_err(|source| CpioError::Tree { path: path.to_string(), source })?;
        self.tree.node_mut(id).meta = self.meta(permissions);
        Ok(())
    }

    /// Adds a regular file; its bytes are read only when the archive is written.
    pub fn add_file(
        &mut self,
        path: &str,
        permissions: u16,
        content: Content,
    ) -> Result<(), CpioError> {
        let node = Node { meta: self.meta(permissions), kind: NodeKind::File(content) };
        self.add(path, node).map(drop)
    }

    /// Adds a symbolic link to `target`.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), CpioError> {
        let node =
            Node { meta: self.meta(0o777), kind: NodeKind::Symlink(target.as_bytes().to_vec()) };
        self.add(path, node).map(drop)
    }

    /// Adds a character device node (`/dev/console` is 5:1, mode 0600).
    pub fn add_char_device(
        &mut self,
        path: &str,
        permissions: u16,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        let node =
            Node { meta: self.meta(permissions), kind: NodeKind::CharDevice { major, minor } };
        self.add(path, node).map(drop)
    }

    /// Adds a block device node.
    pub fn add_block_device(
        &mut self,
        path: &str,
        permissions: u16,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        let node =
            Node { meta: self.meta(permissions), kind: NodeKind::BlockDevice { major, minor } };
        self.add(path, node).map(drop)
    }

    pub fn tree(&self) -> &FileTree {
        &self.tree
    }

    /// Writes the archive (see [`write_newc`]).
    pub fn write<W: Write>(&self, compression: Compression, out: W) -> Result<W, CpioError> {
        write_newc(&self.tree, self.mtime, compression, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn sample() -> Initramfs {
        let mut initramfs = Initramfs::new(1_700_000_000);
        initramfs.add_file("/init", 0o755, Content::Bytes(Arc::from(&b"#!/bin/sh\n"[..]))).unwrap();
        initramfs.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        initramfs.add_symlink("bin/sh", "busybox").unwrap();
        initramfs.add_dir("proc", 0o555).unwrap();
        initramfs
    }

    /// Splits an uncompressed archive into (name, header fields, data).
    fn entries(archive: &[u8]) -> Vec<(String, [u32; 13], Vec<u8>)> {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            assert_eq!(&archive[pos..pos + 6], MAGIC);
            let mut fields = [0u32; 13];
            for (i, field) in fields.iter_mut().enumerate() {
                let text =
                    std::str::from_utf8(&archive[pos + 6 + 8 * i..pos + 14 + 8 * i]).unwrap();
                *field = u32::from_str_radix(text, 16).unwrap();
            }
            let name_size = fields[11] as usize;
            let name =
                std::str::from_utf8(&archive[pos + HEADER_LEN..pos + HEADER_LEN + name_size - 1])
                    .unwrap()
                    .to_string();
            assert_eq!(archive[pos + HEADER_LEN + name_size - 1], 0);
            pos = (pos + HEADER_LEN + name_size).next_multiple_of(4);
            let size = fields[6] as usize;
            let data = archive[pos..pos + size].to_vec();
            pos = (pos + size).next_multiple_of(4);
            let done = name == TRAILER;
            out.push((name, fields, data));
            if done {
                assert_eq!(pos, archive.len());
                return out;
            }
        }
    }

    #[test]
    fn writes_sorted_entries_with_fixed_metadata() {
        let archive = sample().write(Compression::None, Vec::new()).unwrap();
        let got = entries(&archive);
        let names: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, [".", "bin", "bin/sh", "dev", "dev/console", "init", "proc", TRAILER]);
        for (index, (name, fields, _)) in got.iter().enumerate() {
            if name == TRAILER {
                assert_eq!(fields[0], 0);
                continue;
            }
            assert_eq!(fields[0] as usize, index + 1, "inode of {name}");
            assert_eq!((fields[2], fields[3]), (0, 0), "owner of {name}");
            assert_eq!(fields[5], 1_700_000_000, "mtime of {name}");
        }
        let by_name = |n: &str| got.iter().find(|(name, _, _)| name == n).unwrap();
        assert_eq!(by_name(".").1[1], 0o040755);
        assert_eq!(by_name(".").1[4], 5, "root nlink: 2 + bin, dev, proc");
        assert_eq!(by_name("init").1[1], 0o100755);
        assert_eq!(by_name("init").2, b"#!/bin/sh\n");
        assert_eq!(by_name("bin/sh").1[1], 0o120777);
        assert_eq!(by_name("bin/sh").2, b"busybox");
        let console = by_name("dev/console").1;
        assert_eq!((console[1], console[9], console[10]), (0o020600, 5, 1));
        assert_eq!(by_name("proc").1[1], 0o040555);
    }

    #[test]
    fn header_layout_is_exact() {
        let archive = Initramfs::new(0x5f5e100).write(Compression::None, Vec::new()).unwrap();
        let expected_root = concat!(
            "070701", "00000001", "000041ED", "00000000", "00000000", "00000002", "05F5E100",
            "00000000", "00000000", "00000000", "00000000", "00000000", "00000002", "00000000",
            ".\0"
        )
        .as_bytes();
        assert_eq!(&archive[..expected_root.len()], expected_root);
        // Header (110) + name (2) padded to 112; then the trailer header + 11-byte name padded to 124.
        assert_eq!(archive.len(), 112 + 124);
        assert!(archive.ends_with(b"TRAILER!!!\0\0\0\0"));
    }

    #[test]
    fn output_is_reproducible() {
        let a = sample().write(Compression::None, Vec::new()).unwrap();
        let b = sample().write(Compression::None, Vec::new()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn existing_paths_are_refused() {
        let mut initramfs = sample();
        let err = initramfs.add_symlink("init", "x").unwrap_err();
        assert!(err.to_string().contains("initramfs path 'init'"), "{err}");
        assert!(initramfs.add_file("init/x", 0o644, Content::empty()).is_err());
        assert!(initramfs.add_file("/", 0o644, Content::empty()).is_err());
    }

    #[test]
    fn short_content_is_an_error_naming_the_file() {
        #[derive(Debug)]
        struct Short;
        impl abforge_partitions::tree::ContentSource for Short {
            fn len(&self) -> u64 {
                10
            }
            fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
                let n = if offset < 4 {
                    buf.len().min(4 - usize::try_from(offset).unwrap())
                } else {
                    0
                };
                buf[..n].fill(b'x');
                Ok(n)
            }
            fn describe(&self) -> String {
                "short-source".into()
            }
        }
        let mut initramfs = Initramfs::new(0);
        initramfs.add_file("lib/modules/x.ko", 0o644, Content::Source(Arc::new(Short))).unwrap();
        let err = initramfs.write(Compression::None, Vec::new()).unwrap_err();
        assert!(err.to_string().contains("reading 'lib/modules/x.ko'"), "{err}");
    }

    #[cfg(feature = "gzip")]
    #[test]
    fn gzip_round_trips_and_has_no_timestamp() {
        use std::io::Read;
        let plain = sample().write(Compression::None, Vec::new()).unwrap();
        let gz = sample().write(Compression::Gzip, Vec::new()).unwrap();
        assert_eq!(&gz[..4], &[0x1f, 0x8b, 8, 0], "no FNAME flag");
        assert_eq!(&gz[4..8], &[0, 0, 0, 0], "MTIME is zero");
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, plain);
        assert_eq!(gz, sample().write(Compression::Gzip, Vec::new()).unwrap());
    }

    #[cfg(feature = "zstd")]
    #[test]
    fn zstd_round_trips() {
        let plain = sample().write(Compression::None, Vec::new()).unwrap();
        let zst = sample().write(Compression::Zstd, Vec::new()).unwrap();
        assert_eq!(zstd::stream::decode_all(&zst[..]).unwrap(), plain);
        assert_eq!(zst, sample().write(Compression::Zstd, Vec::new()).unwrap());
    }
}
