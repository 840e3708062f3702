//! The file tree that file-system writers consume.
//!
//! A tree is a set of nodes (inodes) and directories that map names to nodes. A
//! regular file, symlink, device, FIFO or socket reached under several names is a
//! hard link; a directory has exactly one name. Children are kept sorted by their
//! name bytes, so every walk is in one canonical order whatever order the source
//! listed them in: that is what makes a directory and a tar of the same tree give
//! the same image.
//!
//! File contents are not held here: a [`Content`] is either a small byte buffer
//! (generated files) or a [`ContentSource`] implemented by the caller (a host file,
//! a range of a tar archive), read only when the writer copies it.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};

/// Index of a node in its [`FileTree`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct NodeId(usize);

impl NodeId {
    pub fn index(self) -> usize {
        self.0
    }
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Timestamp {
    pub seconds: i64,
    pub nanoseconds: u32,
}

impl Timestamp {
    pub const fn from_seconds(seconds: i64) -> Timestamp {
        Timestamp { seconds, nanoseconds: 0 }
    }

    /// This time, or `limit` if this time is later (SOURCE_DATE_EPOCH clamping).
    pub fn clamped_to(self, limit: Timestamp) -> Timestamp {
        self.min(limit)
    }
}

/// Ownership, permissions, time and extended attributes of a node.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Metadata {
    /// Permission bits with setuid, setgid and sticky (`0o7777`); never the type bits.
    pub permissions: u16,
    pub uid: u32,
    pub gid: u32,
    /// Written as the modification, access, change and creation time.
    pub mtime: Timestamp,
    /// Full attribute names (`security.capability`, `user.x`) to raw values.
    /// POSIX ACLs are given in the VFS form (`system.posix_acl_access`, version 2);
    /// a writer converts them to its on-disk form.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Metadata {
    pub fn new(permissions: u16, uid: u32, gid: u32, mtime: Timestamp) -> Metadata {
        Metadata { permissions: permissions & 0o7777, uid, gid, mtime, xattrs: BTreeMap::new() }
    }
}

/// Where the bytes of a regular file come from, read when the writer copies them.
pub trait ContentSource: Send + Sync + fmt::Debug {
    /// Length of the content in bytes.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read
    /// (fewer only at the end of the content).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Byte ranges that may hold non-zero data, in order. Everything outside them
    /// reads as zeros (holes in a sparse host file). The default is the whole file.
    fn data_ranges(&self) -> io::Result<Vec<Range<u64>>> {
        Ok(std::iter::once(0..self.len()).collect())
    }

    /// What to name in an error message: a host path, or `archive.tar:member`.
    fn describe(&self) -> String;
}

/// The bytes of a regular file.
#[derive(Clone, Debug)]
pub enum Content {
    /// Bytes held in memory (generated files: configuration, units).
    Bytes(Arc<[u8]>),
    /// Bytes read on demand from the caller's source.
    Source(Arc<dyn ContentSource>),
}

impl Content {
    pub fn empty() -> Content {
        Content::Bytes(Arc::from(&[][..]))
    }

    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(bytes) => bytes.len() as u64,
            Content::Source(source) => source.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `buf` from `offset`, with zeros past the end of the content.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            Content::Bytes(bytes) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(bytes.len());
                let end = start.saturating_add(buf.len()).min(bytes.len());
                let n = end - start;
                buf[..n].copy_from_slice(&bytes[start..end]);
                buf[n..].fill(0);
                Ok(())
            }
            Content::Source(source) => {
                let mut done = 0;
                while done < buf.len() {
                    let n = source.read_at(&mut buf[done..], offset + done as u64)?;
                    if n == 0 {
                        if offset + (done as u64) < source.len() {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!("{} ended before its recorded length", source.describe()),
                            ));
                        }
                        buf[done..].fill(0);
                        break;
                    }
                    done += n;
                }
                Ok(())
            }
        }
    }

    /// Ranges that may hold data (see [`ContentSource::data_ranges`]).
    pub fn data_ranges(&self) -> io::Result<Vec<Range<u64>>> {
        match self {
            Content::Bytes(bytes) if bytes.is_empty() => Ok(Vec::new()),
            Content::Bytes(bytes) => Ok(std::iter::once(0..bytes.len() as u64).collect()),
            Content::Source(source) => source.data_ranges(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Content::Bytes(bytes) => format!("{} generated bytes", bytes.len()),
            Content::Source(source) => source.describe(),
        }
    }
}

/// What a node is.
#[derive(Clone, Debug)]
pub enum NodeKind {
    /// Children by name, sorted by bytes.
    Directory(BTreeMap<Vec<u8>, NodeId>),
    File(Content),
    /// The link target, as bytes.
    Symlink(Vec<u8>),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
    Socket,
}

impl NodeKind {
    pub fn is_dir(&self) -> bool {
        matches!(self, NodeKind::Directory(_))
    }

    /// The type name used in messages and dumps.
    pub fn type_name(&self) -> &'static str {
        match self {
            NodeKind::Directory(_) => "directory",
            NodeKind::File(_) => "file",
            NodeKind::Symlink(_) => "symlink",
            NodeKind::CharDevice { .. } => "character device",
            NodeKind::BlockDevice { .. } => "block device",
            NodeKind::Fifo => "fifo",
            NodeKind::Socket => "socket",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub meta: Metadata,
    pub kind: NodeKind,
}

/// Why a tree operation was refused. Paths are shown relative to the tree root.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("'{}' is not a valid file name: {reason}", String::from_utf8_lossy(.name))]
    InvalidName { name: Vec<u8>, reason: &'static str },
    #[error("'/{}' already exists", String::from_utf8_lossy(.path))]
    Exists { path: Vec<u8> },
    #[error("'/{}' does not exist", String::from_utf8_lossy(.path))]
    NotFound { path: Vec<u8> },
    #[error("'/{}' is not a directory", String::from_utf8_lossy(.path))]
    NotADirectory { path: Vec<u8> },
    #[error("cannot hard-link to the directory '/{}'", String::from_utf8_lossy(.path))]
    LinkToDirectory { path: Vec<u8> },
}

/// Longest name a directory entry can hold (ext4 and most Unix file systems).
pub const MAX_NAME_LEN: usize = 255;

/// Checks one path component: not empty, not `.` or `..`, no `/` or NUL, at most 255 bytes.
pub fn check_name(name: &[u8]) -> Result<(), TreeError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name == b"." || name == b".." {
        "'.' and '..' are not allowed"
    } else if name.contains(&b'/') {
        "it contains '/'"
    } else if name.contains(&0) {
        "it contains a NUL byte"
    } else if name.len() > MAX_NAME_LEN {
        "it is longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(TreeError::InvalidName { name: name.to_vec(), reason })
}

/// A file tree: nodes, with node 0 the root directory.
#[derive(Clone, Debug)]
pub struct FileTree {
    nodes: Vec<Node>,
}

impl FileTree {
    /// An empty tree whose root directory has `root_meta`.
    pub fn new(root_meta: Metadata) -> FileTree {
        FileTree {
            nodes: vec![Node { meta: root_meta, kind: NodeKind::Directory(BTreeMap::new()) }],
        }
    }

    pub fn root(&self) -> NodeId {
        NodeId(0)
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id.0]
    }

    /// Children of a directory in name order (empty for other nodes).
    pub fn children(&self, dir: NodeId) -> impl Iterator<Item = (&[u8], NodeId)> {
        let map = match &self.nodes[dir.0].kind {
            NodeKind::Directory(children) => Some(children),
            _ => None,
        };
        map.into_iter().flatten().map(|(name, id)| (name.as_slice(), *id))
    }

    /// Adds a new node named `name` in the directory `parent`.
    pub fn add(&mut self, parent: NodeId, name: &[u8], node: Node) -> Result<NodeId, TreeError> {
        check_name(name)?;
        let id = NodeId(self.nodes.len());
        self.attach(parent, name, id)?;
        self.nodes.push(node);
        Ok(id)
    }

    /// Adds another name for an existing non-directory node (a hard link).
    pub fn link(&mut self, parent: NodeId, name: &[u8], target: NodeId) -> Result<(), TreeError> {
        check_name(name)?;
        if self.nodes[target.0].kind.is_dir() {
            return Err(TreeError::LinkToDirectory { path: name.to_vec() });
        }
        self.attach(parent, name, target)
    }

    fn attach(&mut self, parent: NodeId, name: &[u8], id: NodeId) -> Result<(), TreeError> {
        match &mut self.nodes[parent.0].kind {
            NodeKind::Directory(children) => match children.entry(name.to_vec()) {
                std::collections::btree_map::Entry::Occupied(_) => {
                    Err(TreeError::Exists { path: name.to_vec() })
                }
                std::collections::btree_map::Entry::Vacant(slot) => {
                    slot.insert(id);
                    Ok(())
                }
            },
            _ => Err(TreeError::NotADirectory { path: name.to_vec() }),
        }
    }

    /// Removes the entry `name` from `parent` and returns the node it named. The
    /// node itself stays allocated but is unreachable unless linked elsewhere.
    pub fn unlink(&mut self, parent: NodeId, name: &[u8]) -> Option<NodeId> {
        match &mut self.nodes[parent.0].kind {
            NodeKind::Directory(children) => children.remove(name),
            _ => None,
        }
    }

    /// Looks up a `/`-separated path relative to the root (leading `/` allowed).
    pub fn lookup(&self, path: &[u8]) -> Option<NodeId> {
        let mut current = self.root();
        for component in components(path) {
            match &self.nodes[current.0].kind {
                NodeKind::Directory(children) => current = *children.get(component)?,
                _ => return None,
            }
        }
        Some(current)
    }

    /// Places `node` at `path`, replacing whatever was there, and creates missing
    /// parent directories with `dir_meta`. Used to compose generated files over a
    /// source tree.
    pub fn put(
        &mut self,
        path: &[u8],
        node: Node,
        dir_meta: &Metadata,
    ) -> Result<NodeId, TreeError> {
        let parts: Vec<&[u8]> = components(path).collect();
        let Some((last, parents)) = parts.split_last() else {
            return Err(TreeError::Exists { path: b"".to_vec() });
        };
        let parent = self.make_dirs(parents, dir_meta)?;
        self.unlink(parent, last);
        self.add(parent, last, node)
    }

    /// Makes sure each directory along `parts` exists and returns the last one.
    pub fn make_dirs(&mut self, parts: &[&[u8]], dir_meta: &Metadata) -> Result<NodeId, TreeError> {
        let mut current = self.root();
        let mut walked: Vec<u8> = Vec::new();
        for part in parts {
            if !walked.is_empty() {
                walked.push(b'/');
            }
            walked.extend_from_slice(part);
            let existing = match &self.nodes[current.0].kind {
                NodeKind::Directory(children) => children.get(*part).copied(),
                _ => return Err(TreeError::NotADirectory { path: walked }),
            };
            current = match existing {
                Some(id) if self.nodes[id.0].kind.is_dir() => id,
                Some(_) => return Err(TreeError::NotADirectory { path: walked }),
                None => self.add(
                    current,
                    part,
                    Node { meta: dir_meta.clone(), kind: NodeKind::Directory(BTreeMap::new()) },
                )?,
            };
        }
        Ok(current)
    }

    /// Every reachable entry in canonical order (a directory before its children,
    /// children by name), as `(path, id)` with the root as the empty path. A hard
    /// link appears once per name.
    pub fn walk(&self) -> Vec<(Vec<u8>, NodeId)> {
        let mut out = Vec::new();
        let mut stack = vec![(Vec::new(), self.root())];
        while let Some((path, id)) = stack.pop() {
            if let NodeKind::Directory(children) = &self.nodes[id.0].kind {
                for (name, child) in children.iter().rev() {
                    stack.push((child_path(&path, name), *child));
                }
            }
            out.push((path, id));
        }
        out
    }

    /// Makes room for `additional` more nodes.
    pub fn reserve(&mut self, additional: usize) {
        self.nodes.reserve(additional);
    }

    /// Number of nodes ever allocated (reachable or not).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

/// The nodes of a tree that are still being read, so that a writer can start on a
/// tree's skeleton (every directory whole, every other node's kind known from the
/// directory listing) while a loader fills in the rest in canonical order.
///
/// The loader fills slots ([`PendingNodes::fill`]) and now and then says up to which
/// node everything is filled ([`PendingNodes::publish`]); a writer that finds a slot
/// empty sleeps until then. Waking once per published batch rather than once per node
/// keeps the two from trading the processor back and forth for every file. A loader
/// must end with [`PendingNodes::stop`], after which an empty slot stays empty.
#[derive(Debug)]
pub struct PendingNodes {
    slots: Vec<OnceLock<Node>>,
    /// Every slot below `ready` is filled (or the loader stopped).
    progress: Mutex<Progress>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Progress {
    ready: usize,
    stopped: bool,
}

impl PendingNodes {
    /// Slots for the nodes of a tree of `count` nodes (only the pending ones are used).
    pub fn new(count: usize) -> PendingNodes {
        PendingNodes {
            slots: (0..count).map(|_| OnceLock::new()).collect(),
            progress: Mutex::new(Progress::default()),
            changed: Condvar::new(),
        }
    }

    /// Hands over the node `id` (a second fill of the same slot is ignored).
    pub fn fill(&self, id: NodeId, node: Node) {
        let _ = self.slots[id.0].set(node);
    }

    /// Says that every pending node numbered below `ready` is filled.
    pub fn publish(&self, ready: usize) {
        let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        if ready > progress.ready {
            progress.ready = ready;
            self.changed.notify_all();
        }
    }

    /// Says that no more nodes are coming, waking whoever waits.
    pub fn stop(&self) {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner).stopped = true;
        self.changed.notify_all();
    }

    /// Whether the node `id` is there already (so [`PendingNodes::wait`] would not wait).
    pub fn is_filled(&self, id: NodeId) -> bool {
        self.slots[id.0].get().is_some()
    }

    /// The node `id` once the loader has filled it; `None` when the loader stopped first.
    pub fn wait(&self, id: NodeId) -> Option<&Node> {
        if let Some(node) = self.slots[id.0].get() {
            return Some(node);
        }
        let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        while progress.ready <= id.0 && !progress.stopped {
            progress = self.changed.wait(progress).unwrap_or_else(PoisonError::into_inner);
        }
        self.slots[id.0].get()
    }

    /// Puts the filled nodes into `tree` (the skeleton they belong to), making it whole.
    pub fn complete(self, tree: &mut FileTree) {
        for (index, slot) in self.slots.into_iter().enumerate() {
            if let Some(node) = slot.into_inner() {
                tree.nodes[index] = node;
            }
        }
    }
}

/// The tree path of the entry `name` in the directory at `dir` (the root's path is
/// empty, so its entries' paths are their names).
pub fn child_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(dir.len() + 1 + name.len());
    path.extend_from_slice(dir);
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// The non-empty components of a `/`-separated path.
pub fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Metadata {
        Metadata::new(0o755, 0, 0, Timestamp::from_seconds(1))
    }

    fn dir() -> Node {
        Node { meta: meta(), kind: NodeKind::Directory(BTreeMap::new()) }
    }

    fn file(bytes: &[u8]) -> Node {
        Node { meta: meta(), kind: NodeKind::File(Content::Bytes(Arc::from(bytes))) }
    }

    #[test]
    fn pending_nodes_wake_their_waiter_per_batch_and_on_stop() {
        let pending = PendingNodes::new(4);
        let mut skeleton = FileTree::new(meta());
        let root = skeleton.root();
        let ids: Vec<NodeId> =
            (0..3).map(|i| skeleton.add(root, &[b'a' + i], file(b"")).unwrap()).collect();
        // A filled slot is there at once, published or not.
        pending.fill(ids[0], file(b"zero"));
        assert!(
            matches!(pending.wait(ids[0]), Some(node) if matches!(node.kind, NodeKind::File(_)))
        );
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| pending.wait(ids[1]).map(|n| n.meta.uid));
            std::thread::sleep(std::time::Duration::from_millis(20));
            // Filled but not published: the waiter may see it or keep waiting.
            let mut node = file(b"one");
            node.meta.uid = 7;
            pending.fill(ids[1], node);
            pending.publish(ids[2].index());
            assert_eq!(waiter.join().unwrap(), Some(7));
            // Never filled: the waiter gets nothing once the loader stops.
            let waiter = scope.spawn(|| pending.wait(ids[2]).is_none());
            std::thread::sleep(std::time::Duration::from_millis(20));
            pending.stop();
            assert!(waiter.join().unwrap());
        });
        pending.complete(&mut skeleton);
        assert!(
            matches!(&skeleton.node(ids[1]).kind, NodeKind::File(Content::Bytes(b)) if &b[..] == b"one")
        );
        assert!(
            matches!(&skeleton.node(ids[2]).kind, NodeKind::File(Content::Bytes(b)) if b.is_empty())
        );
    }

    #[test]
    fn walk_is_sorted_whatever_the_insertion_order() {
        let mut tree = FileTree::new(meta());
        let root = tree.root();
        let etc = tree.add(root, b"etc", dir()).unwrap();
        tree.add(etc, b"passwd", file(b"root")).unwrap();
        tree.add(root, b"bin", dir()).unwrap();
        let hosts = tree.add(etc, b"hosts", file(b"localhost")).unwrap();
        tree.link(root, b"hosts-link", hosts).unwrap();
        let paths: Vec<String> =
            tree.walk().into_iter().map(|(p, _)| String::from_utf8(p).unwrap()).collect();
        assert_eq!(paths, ["", "bin", "etc", "etc/hosts", "etc/passwd", "hosts-link"]);
        assert_eq!(tree.lookup(b"/etc/hosts"), Some(hosts));
        assert_eq!(tree.lookup(b"hosts-link"), Some(hosts));
    }

    #[test]
    fn refuses_bad_names_duplicates_and_directory_links() {
        let mut tree = FileTree::new(meta());
        let root = tree.root();
        assert!(tree.add(root, b"..", dir()).is_err());
        assert!(tree.add(root, b"a/b", dir()).is_err());
        assert!(tree.add(root, &[b'x'; 256], dir()).is_err());
        assert!(tree.add(root, &[b'x'; 255], dir()).is_ok());
        let d = tree.add(root, b"d", dir()).unwrap();
        assert!(matches!(tree.add(root, b"d", dir()), Err(TreeError::Exists { .. })));
        assert!(matches!(tree.link(root, b"e", d), Err(TreeError::LinkToDirectory { .. })));
    }

    #[test]
    fn put_replaces_and_creates_parents() {
        let mut tree = FileTree::new(meta());
        tree.put(b"/etc/ssh/sshd_config.d/abforge.conf", file(b"a"), &meta()).unwrap();
        let id = tree.put(b"etc/ssh/sshd_config.d/abforge.conf", file(b"bb"), &meta()).unwrap();
        assert_eq!(tree.lookup(b"etc/ssh/sshd_config.d/abforge.conf"), Some(id));
        match &tree.node(id).kind {
            NodeKind::File(content) => assert_eq!(content.len(), 2),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn content_reads_pad_with_zeros() {
        let content = Content::Bytes(Arc::from(&b"hello"[..]));
        let mut buf = [0xffu8; 8];
        content.read_exact_at(&mut buf, 3).unwrap();
        assert_eq!(&buf, b"lo\0\0\0\0\0\0");
    }
}
