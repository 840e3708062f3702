//! Sources: turns what the user hands over (a directory or a tar archive) into the
//! [`FileTree`] the file-system writers consume.
//!
//! Both kinds of source go through one last step, [`canonicalize`], which rebuilds
//! the tree in its canonical walk order (a directory before its children, children
//! by name bytes), numbers the nodes in that order, leaves out excluded paths and
//! applies the owner mapping and SOURCE_DATE_EPOCH clamping. So the same tree given
//! as a directory or as a tar, whatever order the archive or `readdir` listed it
//! in, gives the same `FileTree`, node numbers included.
//!
//! Nothing in the source is ever written: directories are read with `lstat`,
//! `readlink`, `llistxattr` and read-only opens; archives with positioned reads.

pub mod dir;
pub mod dump;
pub mod owner;
pub mod tar;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use abforge_partitions::tree::{
    FileTree, Metadata, Node, NodeId, NodeKind, Timestamp, child_path, components,
};
use anyhow::Context;

use crate::error::UsageError;

pub use dump::dump;
pub use owner::OwnerMapping;

/// How a source is read.
#[derive(Clone, Debug, Default)]
pub struct SourceOptions {
    /// Owners given to the image's entries instead of the source's own.
    pub owner: Option<OwnerMapping>,
    /// Every modification time later than this is set to it (seconds since the epoch).
    pub source_date_epoch: Option<i64>,
    /// Paths left out of the tree, with everything under them.
    pub exclude: Vec<Exclude>,
    /// Where a compressed archive is decompressed (into an unlinked file);
    /// the system temporary directory when `None`.
    pub scratch_dir: Option<PathBuf>,
}

impl SourceOptions {
    /// Metadata of a directory the source implies but does not list (a tar
    /// archive that names `usr/bin/x` without `usr/`): 0755 root:root, dated
    /// SOURCE_DATE_EPOCH or the epoch itself, so it is the same on every build.
    pub fn implicit_dir_meta(&self) -> Metadata {
        Metadata::new(0o755, 0, 0, Timestamp::from_seconds(self.source_date_epoch.unwrap_or(0)))
    }
}

/// A path to leave out of a source: an exact path (`/etc/machine-id`), or a path
/// whose last component ends in `*` to match every name starting with what comes
/// before it (`/etc/ssh/ssh_host_*`, `/var/cache/apt/*`). A matched directory is
/// left out with everything under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exclude {
    /// Components before the last one, matched exactly.
    parents: Vec<Vec<u8>>,
    /// The last component, or the prefix before its trailing `*`.
    last: Vec<u8>,
    prefix: bool,
}

impl Exclude {
    pub fn new(pattern: &str) -> Result<Exclude, UsageError> {
        let mut parts: Vec<Vec<u8>> = components(pattern.as_bytes()).map(<[u8]>::to_vec).collect();
        let refuse = |why: &str| UsageError::new(format!("exclude pattern '{pattern}' {why}"));
        let Some(mut last) = parts.pop() else {
            return Err(refuse("names the whole tree"));
        };
        let prefix = last.last() == Some(&b'*');
        if prefix {
            last.pop();
        }
        if parts.iter().chain([&last]).any(|part| part.contains(&b'*')) {
            return Err(refuse(
                "has a '*' that is not at the end (only a trailing '*' is supported)",
            ));
        }
        if parts.iter().chain([&last]).any(|part| part == b"." || part == b"..") {
            return Err(refuse("has a '.' or '..' component"));
        }
        Ok(Exclude { parents: parts, last, prefix })
    }

    /// Whether `path` (relative to the tree root, `/`-separated) is this path or under it.
    pub fn matches(&self, path: &[u8]) -> bool {
        let mut parts = components(path);
        for parent in &self.parents {
            if parts.next() != Some(parent.as_slice()) {
                return false;
            }
        }
        match parts.next() {
            Some(name) if self.prefix => name.starts_with(&self.last),
            Some(name) => name == self.last.as_slice(),
            None => false,
        }
    }
}

fn is_excluded(opts: &SourceOptions, path: &[u8]) -> bool {
    opts.exclude.iter().any(|exclude| exclude.matches(path))
}

/// Reads SOURCE, a directory or a tar archive (plain, gzip or zstd, recognised
/// by their first bytes), into a file tree in canonical form.
pub fn load_source(path: &Path, opts: &SourceOptions) -> anyhow::Result<FileTree> {
    if let Some(owner) = &opts.owner {
        owner.validate().map_err(UsageError::new)?;
    }
    // The source itself may be a symbolic link to a directory or an archive: the
    // user named it, so it is followed. Nothing inside the source is followed.
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(
                UsageError::new(format!("source '{}' does not exist", path.display())).into()
            );
        }
        Err(err) => {
            return Err(err).with_context(|| format!("cannot read source '{}'", path.display()));
        }
    };
    let raw = if meta.is_dir() {
        dir::load_directory(path, opts)?
    } else if meta.is_file() {
        tar::load_archive(path, opts)?
    } else {
        return Err(UsageError::new(format!(
            "source '{}' is neither a directory nor a tar archive",
            path.display()
        ))
        .into());
    };
    Ok(canonicalize(raw, opts))
}

/// Rebuilds `raw` in canonical walk order: nodes numbered in the order
/// [`FileTree::walk`] first reaches them, unreachable nodes dropped, excluded
/// paths left out, owners mapped and times clamped.
pub fn canonicalize(mut raw: FileTree, opts: &SourceOptions) -> FileTree {
    let finish = |meta: Metadata| finish_meta(opts, meta);

    let raw_root = raw.root();
    let root_meta = std::mem::take(&mut raw.node_mut(raw_root).meta);
    let root_children = take_children(&mut raw, raw_root);
    let mut tree = FileTree::new(finish(root_meta));
    // For each raw node already placed, its new id (hard links).
    let mut placed: Vec<Option<NodeId>> = vec![None; raw.node_count()];

    struct Pending {
        raw: NodeId,
        parent: NodeId,
        name: Vec<u8>,
        path: Vec<u8>,
    }
    let mut stack: Vec<Pending> = Vec::new();
    let push_children =
        |stack: &mut Vec<Pending>, children: BTreeMap<Vec<u8>, NodeId>, parent, dir_path: &[u8]| {
            for (name, child) in children.into_iter().rev() {
                let path = child_path(dir_path, &name);
                stack.push(Pending { raw: child, parent, name, path });
            }
        };
    push_children(&mut stack, root_children, tree.root(), b"");

    while let Some(entry) = stack.pop() {
        if is_excluded(opts, &entry.path) {
            continue;
        }
        // Both trees only ever hold names that passed `check_name`, and each
        // parent is a directory created just before: these cannot fail.
        if let Some(existing) = placed[entry.raw.index()] {
            tree.link(entry.parent, &entry.name, existing).expect("a valid link in a valid tree");
            continue;
        }
        let meta = finish(std::mem::take(&mut raw.node_mut(entry.raw).meta));
        let is_dir = raw.node(entry.raw).kind.is_dir();
        let (kind, children) = if is_dir {
            (NodeKind::Directory(BTreeMap::new()), take_children(&mut raw, entry.raw))
        } else {
            (std::mem::replace(&mut raw.node_mut(entry.raw).kind, NodeKind::Fifo), BTreeMap::new())
        };
        let id = tree
            .add(entry.parent, &entry.name, Node { meta, kind })
            .expect("a valid name in a valid tree");
        placed[entry.raw.index()] = Some(id);
        if is_dir {
            push_children(&mut stack, children, id, &entry.path);
        }
    }
    tree
}

/// A node's metadata as the tree holds it: owners mapped, time clamped.
fn finish_meta(opts: &SourceOptions, mut meta: Metadata) -> Metadata {
    if let Some(owner) = &opts.owner {
        meta.uid = owner.map_uid(meta.uid);
        meta.gid = owner.map_gid(meta.gid);
    }
    if let Some(limit) = opts.source_date_epoch.map(Timestamp::from_seconds) {
        meta.mtime = meta.mtime.clamped_to(limit);
    }
    meta
}

fn take_children(tree: &mut FileTree, dir: NodeId) -> BTreeMap<Vec<u8>, NodeId> {
    match &mut tree.node_mut(dir).kind {
        NodeKind::Directory(children) => std::mem::take(children),
        _ => BTreeMap::new(),
    }
}

/// A path relative to the source root, for messages: `/etc/passwd`.
pub(crate) fn show(path: &[u8]) -> String {
    format!("/{}", String::from_utf8_lossy(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use abforge_partitions::tree::Content;

    #[test]
    fn exclude_patterns() {
        let keys = Exclude::new("/etc/ssh/ssh_host_*").unwrap();
        assert!(keys.matches(b"etc/ssh/ssh_host_rsa_key"));
        assert!(keys.matches(b"/etc/ssh/ssh_host_rsa_key.pub"));
        assert!(!keys.matches(b"etc/ssh/sshd_config"));
        assert!(!keys.matches(b"etc/ssh"));
        let cache = Exclude::new("var/cache/apt/*").unwrap();
        assert!(cache.matches(b"var/cache/apt/archives/x.deb"));
        assert!(!cache.matches(b"var/cache/apt"));
        let exact = Exclude::new("/etc/machine-id").unwrap();
        assert!(exact.matches(b"etc/machine-id"));
        assert!(!exact.matches(b"etc/machine-id2"));
        assert!(Exclude::new("/").is_err());
        assert!(Exclude::new("/etc/*/x").is_err());
        assert!(Exclude::new("/etc/../x").is_err());
    }

    fn meta(uid: u32, seconds: i64) -> Metadata {
        Metadata::new(0o644, uid, uid, Timestamp { seconds, nanoseconds: 5 })
    }

    #[test]
    fn canonical_form_does_not_depend_on_insertion_order() {
        let file = |uid, seconds| Node {
            meta: meta(uid, seconds),
            kind: NodeKind::File(Content::Bytes(std::sync::Arc::from(&b"x"[..]))),
        };
        let dir = || Node { meta: meta(0, 1), kind: NodeKind::Directory(BTreeMap::new()) };

        let mut a = FileTree::new(meta(0, 1));
        let root = a.root();
        let z = a.add(root, b"z", file(1000, 10)).unwrap();
        let d = a.add(root, b"d", dir()).unwrap();
        a.link(d, b"link", z).unwrap();
        a.add(d, b"gone", file(1000, 10)).unwrap();

        let mut b = FileTree::new(meta(0, 1));
        let root = b.root();
        let d = b.add(root, b"d", dir()).unwrap();
        let link = b.add(d, b"link", file(1000, 10)).unwrap();
        b.add(d, b"gone", file(1000, 10)).unwrap();
        b.link(root, b"z", link).unwrap();

        let opts = SourceOptions {
            owner: Some(OwnerMapping::force(0, 0)),
            source_date_epoch: Some(5),
            exclude: vec![Exclude::new("/d/gone").unwrap()],
            scratch_dir: None,
        };
        let (a, b) = (canonicalize(a, &opts), canonicalize(b, &opts));
        assert_eq!(dump(&a), dump(&b));
        assert_eq!(a.walk(), b.walk());
        assert_eq!(a.node_count(), 3);
        let z = a.lookup(b"z").unwrap();
        assert_eq!(a.node(z).meta.uid, 0);
        assert_eq!(a.node(z).meta.mtime, Timestamp::from_seconds(5));
    }
}
