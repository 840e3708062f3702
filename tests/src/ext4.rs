//! Helpers for the ext4 writer tests: generated trees with every kind of entry,
//! a patterned sparse content source, writing an image, and checking it with
//! e2fsck, ext4-view and (as root) a read-only loop mount.

use abforge_partitions::ext4::{self, Ext4Options, Ext4Summary};
use abforge_partitions::tree::{
    Content, ContentSource, FileTree, Metadata, Node, NodeId, NodeKind, Timestamp,
};
use abforge_partitions::{FileRegion, Guid};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

/// Content that is a byte pattern inside `ranges` and zeros elsewhere.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub len: u64,
    pub ranges: Vec<Range<u64>>,
    pub seed: u8,
    /// Advertise the whole file as data (so the writer must find zero blocks itself).
    pub dense: bool,
}

impl Pattern {
    pub fn byte_at(&self, offset: u64) -> u8 {
        // Ranges are sorted: find the last one starting at or before `offset`.
        let i = self.ranges.partition_point(|r| r.start <= offset);
        if i > 0 && self.ranges[i - 1].contains(&offset) {
            // Never zero, so a pattern block is never taken for a hole.
            (offset.wrapping_mul(31).wrapping_add(u64::from(self.seed)) % 251) as u8 + 1
        } else {
            0
        }
    }
}

impl ContentSource for Pattern {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n =
            buf.len().min(usize::try_from(self.len.saturating_sub(offset)).unwrap_or(usize::MAX));
        // Fill range by range so holes cost nothing.
        buf[..n].fill(0);
        let end = offset + n as u64;
        for r in &self.ranges {
            let (lo, hi) = (r.start.max(offset), r.end.min(end));
            for pos in lo..hi {
                buf[usize::try_from(pos - offset).unwrap()] = self.byte_at(pos);
            }
        }
        Ok(n)
    }
    fn data_ranges(&self) -> io::Result<Vec<Range<u64>>> {
        if self.dense {
            Ok(std::iter::once(0..self.len).collect())
        } else {
            Ok(self.ranges.clone())
        }
    }
    fn describe(&self) -> String {
        format!("pattern {}", self.seed)
    }
}

/// A source whose reads fail, to check the error names the path.
#[derive(Debug)]
pub struct Unreadable;

impl ContentSource for Unreadable {
    fn len(&self) -> u64 {
        10
    }
    fn read_at(&self, _: &mut [u8], _: u64) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "permission denied"))
    }
    fn describe(&self) -> String {
        "/host/secret".into()
    }
}

pub const T0: Timestamp = Timestamp { seconds: 1_700_000_000, nanoseconds: 0 };

pub fn meta(mode: u16) -> Metadata {
    Metadata::new(mode, 0, 0, T0)
}

pub fn dir(mode: u16) -> Node {
    Node { meta: meta(mode), kind: NodeKind::Directory(BTreeMap::new()) }
}

pub fn file(bytes: &[u8]) -> Node {
    Node { meta: meta(0o644), kind: NodeKind::File(Content::Bytes(Arc::from(bytes))) }
}

pub fn pattern_file(pattern: Pattern) -> Node {
    Node { meta: meta(0o644), kind: NodeKind::File(Content::Source(Arc::new(pattern))) }
}

pub fn options() -> Ext4Options {
    Ext4Options {
        label: "root".into(),
        uuid: "0b0ab1d5-3c9f-4e46-9a39-2ad2b1a7c0de".parse::<Guid>().unwrap(),
        hash_seed: "6f1e2d3c-4b5a-4968-8776-655443322110".parse::<Guid>().unwrap(),
        timestamp: Timestamp::from_seconds(1_700_000_100),
        ..Ext4Options::default()
    }
}

/// A VFS (version 2) POSIX ACL value.
pub fn vfs_acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// A tree with every kind of entry the writer supports.
pub fn everything_tree() -> FileTree {
    let mut root_meta = meta(0o755);
    root_meta.mtime = Timestamp { seconds: 1_690_000_000, nanoseconds: 123_456_789 };
    let mut tree = FileTree::new(root_meta);
    let root = tree.root();
    let etc = tree.add(root, b"etc", dir(0o755)).unwrap();
    let hosts = tree.add(etc, b"hosts", file(b"127.0.0.1 localhost\n")).unwrap();
    tree.link(root, b"hosts-hardlink", hosts).unwrap();
    tree.link(etc, b"hosts-again", hosts).unwrap();
    tree.add(etc, b"empty", file(b"")).unwrap();
    let mut shadow = file(b"root:*:19000:0:99999:7:::\n");
    shadow.meta = Metadata::new(0o640, 0, 42, T0);
    tree.add(etc, b"shadow", shadow).unwrap();
    let bin = tree.add(root, b"bin", dir(0o755)).unwrap();
    let mut ping = file(&[0x7f, b'E', b'L', b'F', 1, 2, 3]);
    ping.meta.permissions = 0o4755;
    ping.meta.xattrs.insert(
        b"security.capability".to_vec(),
        vec![1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    tree.add(bin, b"ping", ping).unwrap();
    let mut wall = file(b"#!/bin/sh\n");
    wall.meta.permissions = 0o2755;
    wall.meta.gid = 5;
    tree.add(bin, b"wall", wall).unwrap();
    let mut tmp = dir(0o1777);
    tmp.meta.mtime = Timestamp { seconds: 1_600_000_000, nanoseconds: 999_999_999 };
    let tmp = tree.add(root, b"tmp", tmp).unwrap();
    let mut owned = file(b"big ids");
    owned.meta = Metadata::new(
        0o600,
        100_000,
        200_000,
        Timestamp { seconds: 1_650_000_000, nanoseconds: 1 },
    );
    tree.add(tmp, b"owned", owned).unwrap();
    tree.add(
        root,
        b"fast-link",
        Node { meta: meta(0o777), kind: NodeKind::Symlink(b"etc/hosts".to_vec()) },
    )
    .unwrap();
    let long_target = format!("/{}", "a-long-directory-name/".repeat(5)).into_bytes();
    tree.add(root, b"slow-link", Node { meta: meta(0o777), kind: NodeKind::Symlink(long_target) })
        .unwrap();
    let exactly_60 = vec![b'x'; 60];
    tree.add(root, b"link-60", Node { meta: meta(0o777), kind: NodeKind::Symlink(exactly_60) })
        .unwrap();
    let dev = tree.add(root, b"dev", dir(0o755)).unwrap();
    let devices = [
        (b"null".as_slice(), NodeKind::CharDevice { major: 1, minor: 3 }),
        (b"sda1", NodeKind::BlockDevice { major: 8, minor: 1 }),
        (b"big-char", NodeKind::CharDevice { major: 300, minor: 70000 }),
        (b"big-block", NodeKind::BlockDevice { major: 4095, minor: 1_048_575 }),
        (b"fifo", NodeKind::Fifo),
        (b"socket", NodeKind::Socket),
    ];
    for (name, kind) in devices {
        tree.add(dev, name, Node { meta: meta(0o660), kind }).unwrap();
    }
    tree.add(root, &[b'n'; 255], file(b"longest name")).unwrap();
    tree.add(root, "ünïcødé name\t\x01".as_bytes(), file(b"odd bytes")).unwrap();
    let mut attrs = file(b"xattrs");
    attrs.meta.xattrs.insert(b"user.small".to_vec(), b"v".to_vec());
    attrs.meta.xattrs.insert(b"user.big".to_vec(), vec![b'B'; 3000]);
    attrs.meta.xattrs.insert(b"trusted.t".to_vec(), b"trusted value".to_vec());
    attrs
        .meta
        .xattrs
        .insert(b"security.selinux".to_vec(), b"system_u:object_r:etc_t:s0\0".to_vec());
    attrs.meta.xattrs.insert(
        b"system.posix_acl_access".to_vec(),
        vfs_acl(&[
            (1, 6, u32::MAX),
            (2, 4, 1000),
            (4, 4, u32::MAX),
            (0x10, 4, u32::MAX),
            (0x20, 0, u32::MAX),
        ]),
    );
    tree.add(root, b"xattrs", attrs).unwrap();
    let mut acl_dir = dir(0o755);
    acl_dir.meta.xattrs.insert(
        b"system.posix_acl_default".to_vec(),
        vfs_acl(&[
            (1, 7, u32::MAX),
            (4, 5, u32::MAX),
            (8, 5, 2000),
            (0x10, 5, u32::MAX),
            (0x20, 5, u32::MAX),
        ]),
    );
    tree.add(root, b"acl-dir", acl_dir).unwrap();
    // Holes: data, a hole, data; and a file whose advertised data is mostly zeros.
    let mib = 1 << 20;
    tree.add(
        root,
        b"sparse",
        pattern_file(Pattern {
            len: 3 * mib + 5,
            ranges: vec![0..mib, 2 * mib..3 * mib + 5],
            seed: 1,
            dense: false,
        }),
    )
    .unwrap();
    tree.add(
        root,
        b"zeros-inside",
        pattern_file(Pattern {
            len: 2 * mib,
            ranges: vec![4096..8192, mib..mib + 100],
            seed: 2,
            dense: true,
        }),
    )
    .unwrap();
    // 700 fragments: an extent tree of depth 1.
    let fragments: Vec<Range<u64>> = (0..700u64).map(|i| i * 8192..i * 8192 + 4096).collect();
    tree.add(
        root,
        b"fragmented",
        pattern_file(Pattern { len: 700 * 8192, ranges: fragments, seed: 3, dense: false }),
    )
    .unwrap();
    // A 3000-entry directory spanning many blocks.
    let many = tree.add(root, b"many", dir(0o755)).unwrap();
    for i in 0..3000 {
        tree.add(
            many,
            format!("entry-{i:05}-with-a-longer-name").as_bytes(),
            file(format!("{i}").as_bytes()),
        )
        .unwrap();
    }
    let nested = tree.make_dirs(&[b"a", b"b", b"c", b"d"], &meta(0o700)).unwrap();
    tree.add(nested, b"deep", file(b"deep file")).unwrap();
    tree
}

/// Writes `tree` into a new image of `size` bytes at `path`.
pub fn write_image(
    tree: &FileTree,
    opts: &Ext4Options,
    path: &Path,
    size: u64,
) -> Result<Ext4Summary, ext4::Ext4Error> {
    let file =
        File::options().read(true).write(true).create(true).truncate(true).open(path).unwrap();
    file.set_len(size).unwrap();
    ext4::write(tree, opts, FileRegion::new(&file, 0, size))
}

/// Runs `e2fsck -fn` and asserts it exits 0.
pub fn assert_e2fsck_clean(image: &Path) {
    let out = Command::new(crate::tool("e2fsck"))
        .arg("-fn")
        .arg(image)
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck -fn {} exited {}:\n{}{}",
        image.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ext4_path(path: &[u8]) -> ext4_view::PathBuf {
    let mut p = b"/".to_vec();
    p.extend_from_slice(path);
    ext4_view::PathBuf::try_from(p).unwrap()
}

/// Reads every entry of `tree` back through ext4-view and compares type, mode,
/// owners, size, content, symlink target and mtime. Returns the number checked.
pub fn assert_reads_back(tree: &FileTree, image: &Path) -> usize {
    assert_reads_back_every(tree, image, 1)
}

/// Like [`assert_reads_back`] but looks up only every `step`-th entry (ext4-view
/// looks names up linearly, so a full check of a 60 000-entry directory is
/// quadratic); every directory listing is still compared in full.
pub fn assert_reads_back_every(tree: &FileTree, image: &Path, step: usize) -> usize {
    let fs = ext4_view::Ext4::load_from_path(image).unwrap();
    let mut checked = 0;
    for (index, (path, id)) in tree.walk().into_iter().enumerate() {
        if index % step != 0 && !tree.node(id).kind.is_dir() {
            continue;
        }
        let node = tree.node(id);
        let p = ext4_path(&path);
        let md = fs.symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let shown = String::from_utf8_lossy(&path).into_owned();
        assert_eq!(md.mode() & 0o7777, node.meta.permissions, "{shown}: mode");
        assert_eq!((md.uid(), md.gid()), (node.meta.uid, node.meta.gid), "{shown}: owners");
        let mtime = md.modified();
        assert_eq!(
            (mtime.seconds(), mtime.nanoseconds()),
            (node.meta.mtime.seconds, node.meta.mtime.nanoseconds),
            "{shown}: mtime"
        );
        match &node.kind {
            NodeKind::Directory(children) => {
                assert!(md.is_dir(), "{shown}: not a directory");
                let mut names: Vec<Vec<u8>> = fs
                    .read_dir(&p)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().as_ref().to_vec())
                    .filter(|n| n != b"." && n != b"..")
                    .collect();
                names.sort();
                let mut expected: Vec<Vec<u8>> = children.keys().cloned().collect();
                if path.is_empty() && !children.contains_key(&b"lost+found"[..]) {
                    expected.push(b"lost+found".to_vec());
                    expected.sort();
                }
                assert_eq!(names, expected, "{shown}: entries");
            }
            NodeKind::File(content) => {
                assert_eq!(md.file_type(), ext4_view::FileType::Regular, "{shown}");
                assert_eq!(md.len(), content.len(), "{shown}: size");
                let mut f = fs.open(&p).unwrap();
                let mut expected = vec![0u8; 1 << 20];
                let mut got = vec![0u8; 1 << 20];
                let mut offset = 0u64;
                while offset < content.len() {
                    let n = usize::try_from(content.len() - offset)
                        .unwrap_or(usize::MAX)
                        .min(got.len());
                    let mut filled = 0;
                    while filled < n {
                        let r = f.read_bytes(&mut got[filled..n]).unwrap();
                        assert!(r > 0, "{shown}: short read at {}", offset + filled as u64);
                        filled += r;
                    }
                    content.read_exact_at(&mut expected[..n], offset).unwrap();
                    assert!(
                        got[..n] == expected[..n],
                        "{shown}: content differs near offset {offset}"
                    );
                    offset += n as u64;
                }
            }
            NodeKind::Symlink(target) => {
                assert!(md.is_symlink(), "{shown}: not a symlink");
                let back = fs.read_link(&p).unwrap();
                assert_eq!(back.as_ref(), target.as_slice(), "{shown}: target");
            }
            NodeKind::CharDevice { .. } => {
                assert_eq!(md.file_type(), ext4_view::FileType::CharacterDevice, "{shown}")
            }
            NodeKind::BlockDevice { .. } => {
                assert_eq!(md.file_type(), ext4_view::FileType::BlockDevice, "{shown}")
            }
            NodeKind::Fifo => assert_eq!(md.file_type(), ext4_view::FileType::Fifo, "{shown}"),
            NodeKind::Socket => assert_eq!(md.file_type(), ext4_view::FileType::Socket, "{shown}"),
        }
        checked += 1;
    }
    checked
}

/// Counts the names of each node, as the link count of non-directories.
pub fn name_counts(tree: &FileTree) -> BTreeMap<NodeId, u64> {
    let mut counts = BTreeMap::new();
    for (_, id) in tree.walk() {
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// A read-only loop mount, unmounted on drop.
pub struct LoopMount {
    pub dir: PathBuf,
}

impl LoopMount {
    pub fn new(image: &Path, dir: &Path, options: &str) -> LoopMount {
        std::fs::create_dir_all(dir).unwrap();
        crate::run_ok(Command::new("mount").arg("-o").arg(options).arg(image).arg(dir));
        LoopMount { dir: dir.to_path_buf() }
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

/// The distinct `region`-aligned regions (offset / region) of a sparse file that hold
/// a non-zero byte: what a dynamic VHDX with `region`-byte blocks would store.
pub fn nonzero_regions(path: &Path, region: u64) -> std::collections::BTreeSet<u64> {
    crate::layout::nonzero_blocks(path).iter().map(|(offset, _)| offset / region).collect()
}

/// `dumpe2fs` output (header and groups) of an image.
pub fn dumpe2fs(image: &Path, header_only: bool) -> String {
    let mut cmd = Command::new(crate::tool("dumpe2fs"));
    if header_only {
        cmd.arg("-h");
    }
    let out = crate::run_ok(cmd.arg(image).env("LC_ALL", "C"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
