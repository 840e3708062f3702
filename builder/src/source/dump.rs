//! A readable, deterministic listing of a [`FileTree`], one line per name in
//! canonical walk order, for tests that compare trees and for snapshots:
//!
//! ```text
//! / dir 0755 0:0 - mtime=1700000000.000000000
//! /etc/passwd file 0644 0:0 size=12 sha256=9f86d0… mtime=1700000000.123456789 links=2 xattr=user.a:3:ba7816bf8f01cfea
//! /etc/passwd.bak file 0644 0:0 size=12 sha256=9f86d0… mtime=1700000000.123456789 links=2 same-as=/etc/passwd
//! /bin sym 0777 0:0 size=7 target=usr/bin mtime=1700000000.000000000 links=1
//! /dev/null chr 0666 0:0 dev=1,3 mtime=1700000000.000000000 links=1
//! ```
//!
//! Bytes that are not printable ASCII (and space and `\`) are written `\xNN`, so
//! every line splits on spaces. Hard links show the link count and, from the
//! second name on, the first name of the node. Xattrs show name, value length
//! and the first 16 hex digits of the value's SHA-256.

use std::collections::HashMap;
use std::fmt::Write as _;

use abforge_partitions::tree::{Content, FileTree, NodeId, NodeKind};
use sha2::{Digest, Sha256};

/// The listing of `tree`.
pub fn dump(tree: &FileTree) -> String {
    let walk = tree.walk();
    let mut names: HashMap<NodeId, usize> = HashMap::new();
    for (_, id) in &walk {
        *names.entry(*id).or_default() += 1;
    }
    let mut first_name: HashMap<NodeId, &[u8]> = HashMap::new();
    let mut out = String::new();
    for (path, id) in &walk {
        let node = tree.node(*id);
        let meta = &node.meta;
        let kind = match &node.kind {
            NodeKind::Directory(_) => "dir",
            NodeKind::File(_) => "file",
            NodeKind::Symlink(_) => "sym",
            NodeKind::CharDevice { .. } => "chr",
            NodeKind::BlockDevice { .. } => "blk",
            NodeKind::Fifo => "fifo",
            NodeKind::Socket => "sock",
        };
        let _ = write!(
            out,
            "/{} {kind} {:04o} {}:{} ",
            escape(path),
            meta.permissions,
            meta.uid,
            meta.gid
        );
        match &node.kind {
            NodeKind::File(content) => {
                let _ = write!(out, "size={} sha256={}", content.len(), content_sha256(content));
            }
            NodeKind::Symlink(target) => {
                let _ = write!(out, "size={} target={}", target.len(), escape(target));
            }
            NodeKind::CharDevice { major, minor } | NodeKind::BlockDevice { major, minor } => {
                let _ = write!(out, "dev={major},{minor}");
            }
            NodeKind::Directory(_) | NodeKind::Fifo | NodeKind::Socket => out.push('-'),
        }
        let _ = write!(out, " mtime={}.{:09}", meta.mtime.seconds, meta.mtime.nanoseconds);
        if !node.kind.is_dir() {
            let _ = write!(out, " links={}", names[id]);
            match first_name.get(id) {
                Some(first) => {
                    let _ = write!(out, " same-as=/{}", escape(first));
                }
                None => {
                    first_name.insert(*id, path);
                }
            }
        }
        for (name, value) in &meta.xattrs {
            let digest = hex(&Sha256::digest(value)[..8]);
            let _ = write!(out, " xattr={}:{}:{digest}", escape(name), value.len());
        }
        out.push('\n');
    }
    out
}

fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &byte in bytes {
        if byte.is_ascii_graphic() && byte != b'\\' {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// The SHA-256 of the content, or the read error in its place.
fn content_sha256(content: &Content) -> String {
    let mut hasher = Sha256::new();
    let len = content.len();
    let mut buf = vec![0u8; usize::try_from(len).map_or(1 << 20, |len| len.min(1 << 20))];
    let mut offset = 0;
    while offset < len {
        let chunk = usize::try_from(len - offset).map_or(buf.len(), |left| left.min(buf.len()));
        if let Err(err) = content.read_exact_at(&mut buf[..chunk], offset) {
            return format!("<error:{}>", escape(err.to_string().as_bytes()));
        }
        hasher.update(&buf[..chunk]);
        offset += chunk as u64;
    }
    hex(&hasher.finalize())
}
