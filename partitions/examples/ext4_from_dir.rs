//! Measuring harness only (not the product's directory reader): walks a host
//! directory with std::fs into a FileTree and writes an ext4 image of a given size.
//!
//! Usage: cargo run --release -p abforge-partitions --example ext4_from_dir -- DIR IMAGE SIZE_MIB

use abforge_partitions::FileRegion;
use abforge_partitions::ext4::{self, Ext4Options};
use abforge_partitions::tree::{
    Content, ContentSource, FileTree, Metadata, Node, NodeId, NodeKind, Timestamp,
};
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug)]
struct HostFile {
    path: PathBuf,
    len: u64,
}

impl ContentSource for HostFile {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        File::open(&self.path)?.read_at(buf, offset)
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

fn meta(md: &std::fs::Metadata) -> Metadata {
    let mode = u16::try_from(md.mode() & 0o7777).unwrap_or(0);
    let time =
        Timestamp { seconds: md.mtime(), nanoseconds: u32::try_from(md.mtime_nsec()).unwrap_or(0) };
    Metadata::new(mode, md.uid(), md.gid(), time)
}

fn walk(
    tree: &mut FileTree,
    dir: NodeId,
    path: &Path,
    seen: &mut HashMap<(u64, u64), NodeId>,
) -> io::Result<()> {
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let child = entry.path();
        let md = std::fs::symlink_metadata(&child)?;
        let name = entry.file_name();
        let name = name.as_bytes();
        if !md.is_dir()
            && md.nlink() > 1
            && let Some(&id) = seen.get(&(md.dev(), md.ino()))
        {
            tree.link(dir, name, id).map_err(io::Error::other)?;
            continue;
        }
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            NodeKind::Directory(BTreeMap::new())
        } else if ft.is_file() {
            NodeKind::File(Content::Source(Arc::new(HostFile {
                path: child.clone(),
                len: md.len(),
            })))
        } else if ft.is_symlink() {
            NodeKind::Symlink(std::fs::read_link(&child)?.as_os_str().as_bytes().to_vec())
        } else if ft.is_char_device() || ft.is_block_device() {
            let rdev = md.rdev();
            let major = u32::try_from(((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff)).unwrap_or(0);
            let minor = u32::try_from((rdev & 0xff) | ((rdev >> 12) & !0xff)).unwrap_or(0);
            if ft.is_char_device() {
                NodeKind::CharDevice { major, minor }
            } else {
                NodeKind::BlockDevice { major, minor }
            }
        } else if ft.is_fifo() {
            NodeKind::Fifo
        } else {
            NodeKind::Socket
        };
        let is_dir = ft.is_dir();
        let id = tree.add(dir, name, Node { meta: meta(&md), kind }).map_err(io::Error::other)?;
        if is_dir {
            walk(tree, id, &child, seen)?;
        } else if md.nlink() > 1 {
            seen.insert((md.dev(), md.ino()), id);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, source, image, size_mib] = args.as_slice() else {
        return Err("usage: ext4_from_dir DIR IMAGE SIZE_MIB".into());
    };
    let start = Instant::now();
    let root_md = std::fs::metadata(source)?;
    let mut tree = FileTree::new(meta(&root_md));
    let root = tree.root();
    walk(&mut tree, root, Path::new(source), &mut HashMap::new())?;
    let walked = start.elapsed();
    let size = size_mib.parse::<u64>()? << 20;
    let file = File::options().read(true).write(true).create(true).truncate(true).open(image)?;
    file.set_len(size)?;
    let opts = Ext4Options {
        label: "bench".into(),
        timestamp: Timestamp::from_seconds(1_700_000_000),
        ..Ext4Options::default()
    };
    let summary = ext4::write(&tree, &opts, FileRegion::new(&file, 0, size))?;
    eprintln!(
        "walk {:.3}s, total {:.3}s, {summary:?}",
        walked.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
