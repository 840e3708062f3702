//! `system.files`: files, directories and symlinks a team bakes into the image
//! without rebuilding its source tree. Applied after every generated entry, so
//! they can also replace one. A path under the Data mount point (/var) lands on
//! the Data partition's initial content; nothing can be placed under the Log
//! mount point (the Log partition starts empty). Owner names are looked up in the
//! root's own /etc/passwd and /etc/group (as the running system will see them),
//! never the build host's.

use std::collections::BTreeMap;
use std::sync::Arc;

use abforge_partitions::tree::{Content, Metadata, Node, NodeKind};
use anyhow::{Context, bail};

use super::config::{
    EntryKind, FileEntry, OwnerSpec, is_within, normal_absolute_path, parse_owner,
};
use super::{Composer, MAX_EDITED_FILE, ProfileContext};
use crate::error::UsageError;

/// Largest host file a `system.files` entry may copy (they are read into memory).
pub const MAX_SOURCE_FILE: u64 = 64 << 20;

pub(crate) fn apply_files(
    c: &mut Composer<'_>,
    entries: &[FileEntry],
    ctx: &ProfileContext,
) -> anyhow::Result<()> {
    for entry in entries {
        let path = normal_absolute_path(&entry.path.value)
            .map_err(|e| UsageError::new(format!("system.files: {e}")))?;
        if is_within(&path, &ctx.log_mount) {
            bail!(UsageError::new(format!(
                "system.files: '{path}' is on the Log partition ({}), which starts empty; nothing can be baked there",
                ctx.log_mount
            )));
        }
        if path == ctx.data_mount {
            bail!(UsageError::new(format!(
                "system.files: '{path}' is the Data partition's mount point and cannot be replaced"
            )));
        }
        let permissions = entry
            .permissions()
            .map_err(|e| UsageError::new(format!("system.files: '{path}': {e}")))?;
        let (uid, gid) = match &entry.owner {
            None => (0, 0),
            Some(owner) => {
                let spec = parse_owner(&owner.value)
                    .map_err(|e| UsageError::new(format!("system.files: '{path}': {e}")))?;
                resolve_owner(c, &spec)
                    .map_err(|e| UsageError::new(format!("system.files: '{path}': {e}")))?
            }
        };
        let meta = Metadata::new(permissions, uid, gid, c.mtime);
        match entry.kind() {
            EntryKind::Directory => {
                if matches!(c.lookup_kind(&path), Some(NodeKind::Directory(_))) {
                    c.set_meta(&path, meta);
                } else {
                    c.put_node_with(
                        &path,
                        Node { meta, kind: NodeKind::Directory(BTreeMap::new()) },
                    )?;
                }
            }
            EntryKind::Symlink => {
                let target = entry.link.clone().unwrap_or_default();
                c.put_node_with(
                    &path,
                    Node { meta, kind: NodeKind::Symlink(target.into_bytes()) },
                )?;
            }
            EntryKind::File => {
                let bytes: Vec<u8> = match (&entry.source, &entry.content) {
                    (Some(source), _) => read_source(&c.base_dir.join(&source.value))
                        .with_context(|| format!("system.files: '{path}'"))?,
                    (None, Some(text)) => text.clone().into_bytes(),
                    (None, None) => Vec::new(),
                };
                let kind = NodeKind::File(Content::Bytes(Arc::from(bytes)));
                c.put_node_with(&path, Node { meta, kind })?;
            }
        }
    }
    Ok(())
}

fn read_source(full: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let meta = std::fs::metadata(full)
        .map_err(|e| UsageError::new(format!("cannot read source {}: {e}", full.display())))?;
    if !meta.is_file() {
        bail!(UsageError::new(format!("source {} is not a regular file", full.display())));
    }
    if meta.len() > MAX_SOURCE_FILE {
        bail!(UsageError::new(format!(
            "source {} is larger than {} MiB; put big files in the root source instead",
            full.display(),
            MAX_SOURCE_FILE >> 20
        )));
    }
    std::fs::read(full).with_context(|| format!("reading {}", full.display()))
}

/// Looks a name up in a passwd- or group-style file: `name:x:id:...`; returns
/// the fields after the name.
fn lookup_entry<'t>(text: &'t str, name: &str) -> Option<Vec<&'t str>> {
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(name)).then(|| fields.collect())
    })
}

fn resolve_owner(c: &Composer<'_>, spec: &OwnerSpec) -> Result<(u32, u32), String> {
    let (user, group) = match spec {
        OwnerSpec::Ids(uid, gid) => return Ok((*uid, *gid)),
        OwnerSpec::Names { user, group } => (user, group),
    };
    let read = |path: &str| -> Result<String, String> {
        match super::read_tree_file(c.root, path, MAX_EDITED_FILE) {
            Ok(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Ok(None) => Err(format!("the root has no {path} to look owner names up in")),
            Err(e) => Err(format!("{e:#}")),
        }
    };
    let (uid, primary_gid) = if user == "root" && group.as_deref().is_none_or(|g| g == "root") {
        (0, 0)
    } else {
        let passwd = read("/etc/passwd")?;
        let fields = lookup_entry(&passwd, user)
            .ok_or_else(|| format!("user '{user}' is not in the root's /etc/passwd"))?;
        let uid = fields.get(1).and_then(|f| f.parse::<u32>().ok());
        let gid = fields.get(2).and_then(|f| f.parse::<u32>().ok());
        match (uid, gid) {
            (Some(u), Some(g)) => (u, g),
            _ => return Err(format!("the root's /etc/passwd entry of '{user}' is malformed")),
        }
    };
    let gid = match group {
        None => primary_gid,
        Some(g) if g == "root" => 0,
        Some(g) => {
            let groups = read("/etc/group")?;
            let fields = lookup_entry(&groups, g)
                .ok_or_else(|| format!("group '{g}' is not in the root's /etc/group"))?;
            fields
                .get(1)
                .and_then(|f| f.parse::<u32>().ok())
                .ok_or_else(|| format!("the root's /etc/group entry of '{g}' is malformed"))?
        }
    };
    Ok((uid, gid))
}
