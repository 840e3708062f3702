//! The security profile baked into the read-only root (the manifest's `system:`).
//!
//! Follows the EFLOW-style target of reference/boot-and-signing.md §1: a
//! read-only root whose /etc, /home and /root are made writable by overlays on
//! the Data partition, /var on Data and /logs on Log, an iptables firewall that
//! drops inbound traffic except rate-limited SSH, key-only SSH with host keys
//! generated on first boot, and an empty machine id.
//!
//! [`compose`] works on a clone of the source tree the caller owns: it splits
//! the source's /var off into the initial content of the Data partition
//! ([`split_var`]), then lays generated entries over the root. The user's source
//! on disk is never touched. Everything generated is owned by root, has fixed
//! content and the SOURCE_DATE_EPOCH as its time, so the same inputs give the same
//! trees. Nothing in the root depends on the slot it will be written to: the
//! same root image serves slot A and slot B (the slot comes from the kernel
//! command line), so one verity root hash describes a release.
//!
//! Left out: SELinux labels for generated files (none are set), nftables rule
//! syntax (iptables-restore format only, which Debian's iptables-nft also loads),
//! and mounting the overlays (done by the initramfs init, which reads
//! `/usr/lib/abforge/profile.json` or the fstab comments; see [`fstab`]).

pub mod config;
pub mod files;
pub mod firewall;
pub mod fstab;
pub mod identity;
pub mod inspect;
pub mod ssh;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abforge_partitions::Guid;
use abforge_partitions::tree::{
    Content, FileTree, Metadata, Node, NodeId, NodeKind, Timestamp, components,
};
use anyhow::{Context, bail};

use crate::error::UsageError;

pub use config::{ConfigProblem, SystemConfig};
pub use inspect::{ProfileRecord, ProfileReport, RootReader, describe_profile};

/// Where generated systemd units go (the vendor directory: part of the
/// read-only image, not removable from the writable /etc).
pub const UNIT_DIR: &str = "/usr/lib/systemd/system";

/// The machine-readable record of the profile baked into the root.
pub const RECORD_PATH: &str = "/usr/lib/abforge/profile.json";

/// Largest file of the root the profile reads to edit (os-release, sshd_config,
/// passwd, group).
const MAX_EDITED_FILE: u64 = 4 << 20;

/// What the profile needs to know about the image being built.
#[derive(Clone, Debug)]
pub struct ProfileContext {
    /// The manifest's `name`: becomes os-release's IMAGE_ID.
    pub image_name: String,
    /// The manifest's `version`: becomes os-release's IMAGE_VERSION.
    pub image_version: String,
    /// PARTUUID of the Log partition (mounted at `log_mount`).
    pub log_partuuid: Guid,
    /// PARTUUID of the Data partition (mounted at `data_mount`).
    pub data_partuuid: Guid,
    /// Mount point of the Data partition, `/var`.
    pub data_mount: String,
    /// Mount point of the Log partition, `/logs`.
    pub log_mount: String,
    /// The device the root is mounted from, the same for either slot:
    /// `/dev/mapper/root` (the verity device the initramfs opens).
    pub root_device: String,
    /// Time given to every generated entry.
    pub source_date_epoch: i64,
    /// Host files named in `system:` (keys, `files` sources) are relative to this
    /// directory (the manifest's).
    pub base_dir: PathBuf,
}

impl ProfileContext {
    /// The EFLOW layout's mount points and root device, for the given identity.
    pub fn new(
        image_name: &str,
        image_version: &str,
        log_partuuid: Guid,
        data_partuuid: Guid,
        source_date_epoch: i64,
        base_dir: &Path,
    ) -> ProfileContext {
        ProfileContext {
            image_name: image_name.to_string(),
            image_version: image_version.to_string(),
            log_partuuid,
            data_partuuid,
            data_mount: "/var".to_string(),
            log_mount: "/logs".to_string(),
            root_device: "/dev/mapper/root".to_string(),
            source_date_epoch,
            base_dir: base_dir.to_path_buf(),
        }
    }
}

/// What [`compose`] produced besides the edited root.
#[derive(Clone, Debug)]
pub struct ProfileSummary {
    /// The initial content of the Data partition: the source's /var and the
    /// overlay directories.
    pub data: FileTree,
    /// Paths written into the root (or into Data, shown under its mount point), in order.
    pub written: Vec<String>,
    /// Paths removed from the root or Data (SSH host keys, machine-specific state).
    pub removed: Vec<String>,
    /// Things the release engineer should know (a tool missing from the root, ...).
    pub warnings: Vec<String>,
    /// What was baked in (also written as [`RECORD_PATH`]).
    pub record: ProfileRecord,
}

/// Lays the profile over `root` (a clone of the source tree) and returns the
/// Data partition's tree with it. Calls [`split_var`] itself: do not call it before.
pub fn compose(
    root: &mut FileTree,
    cfg: &SystemConfig,
    ctx: &ProfileContext,
) -> anyhow::Result<ProfileSummary> {
    let problems = cfg.validate(&ctx.base_dir);
    if !problems.is_empty() {
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(UsageError::new(format!("system: {}", text.join("; "))).into());
    }
    identity::check_image_id(&ctx.image_name).map_err(UsageError::new)?;
    identity::check_image_version(&ctx.image_version).map_err(UsageError::new)?;
    let overlays = plan_overlays(cfg, ctx)?;

    let mut data = split_var_planned(root, &overlays, ctx)?;
    let mtime = Timestamp::from_seconds(ctx.source_date_epoch);
    let mut c = Composer {
        root,
        data: &mut data,
        base_dir: &ctx.base_dir,
        data_mount: &ctx.data_mount,
        mtime,
        written: Vec::new(),
        removed: Vec::new(),
        warnings: Vec::new(),
    };
    for overlay in &overlays {
        c.written.push(format!("{} (overlay upper and work directories)", overlay.dir));
    }

    // Mount point of the Log partition: empty, whatever the source had there.
    let log = normal(&ctx.log_mount, "the Log partition's mount point")?;
    if let Some(id) = c.root.lookup(log.as_bytes())
        && c.root.children(id).next().is_some()
    {
        c.warn(format!("the source's {log} is not empty; its content is left out (the Log partition is mounted over it)"));
    }
    c.put_node(&log, NodeKind::Directory(BTreeMap::new()), 0o755)?;

    identity::compose_identity(&mut c, &cfg.identity, ctx)?;
    c.put_text(fstab::FSTAB, &fstab::fstab(ctx, &overlays), 0o644)?;
    if cfg.firewall.enabled {
        firewall::compose_firewall(&mut c, &cfg.firewall)?;
    }
    let ssh = ssh::compose_ssh(&mut c, &cfg.ssh)?;
    c.removed.extend(ssh.removed_host_keys.iter().cloned());

    let record = ProfileRecord::new(cfg, ctx, &overlays, &ssh);
    let json = serde_json::to_string_pretty(&record).context("serialising the profile record")?;
    c.put_text(RECORD_PATH, &(json + "\n"), 0o644)?;

    files::apply_files(&mut c, &cfg.files, ctx)?;

    let Composer { written, removed, warnings, .. } = c;
    Ok(ProfileSummary { data, written, removed, warnings, record })
}

/// One overlaid directory, with its upper and work directories as the running
/// system sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayPlan {
    /// The overlaid directory, e.g. `/etc`.
    pub dir: String,
    /// e.g. `/var/.eflow/overlays/etc/upper`.
    pub upper: String,
    pub work: String,
}

/// Normal forms of the overlay paths and where their directories go; checks
/// they fit the mount points.
pub fn plan_overlays(cfg: &SystemConfig, ctx: &ProfileContext) -> anyhow::Result<Vec<OverlayPlan>> {
    let data = normal(&ctx.data_mount, "the Data partition's mount point")?;
    let log = normal(&ctx.log_mount, "the Log partition's mount point")?;
    let under = normal(&cfg.overlays.under.value, "system.overlays.under")?;
    if under == data || !config::is_within(&under, &data) {
        bail!(UsageError::new(format!(
            "system.overlays.under '{under}' must be a directory inside {data}, where the Data partition is mounted"
        )));
    }
    let mut plans = Vec::new();
    for path in &cfg.overlays.paths {
        let dir = normal(&path.value, "system.overlays.paths")?;
        for (mount, what) in [(&data, "Data"), (&log, "Log")] {
            if config::is_within(&dir, mount) || config::is_within(mount, &dir) {
                bail!(UsageError::new(format!(
                    "system.overlays.paths: '{dir}' overlaps {mount}, where the {what} partition is mounted; overlay directories of the read-only root only"
                )));
            }
        }
        let name = config::overlay_name(&dir);
        plans.push(OverlayPlan {
            upper: format!("{under}/{name}/upper"),
            work: format!("{under}/{name}/work"),
            dir,
        });
    }
    Ok(plans)
}

fn normal(path: &str, what: &str) -> anyhow::Result<String> {
    config::normal_absolute_path(path).map_err(|e| UsageError::new(format!("{what}: {e}")).into())
}

/// Detaches the source's Data mount point (/var) content into a new tree, the
/// initial content of the Data partition, leaves an empty mount point in its
/// place, and adds `<under>/<name>/{upper,work}` for each overlay to the Data tree.
/// Hard links inside /var stay hard links; a hard link between /var and the
/// rest of the root becomes two copies (they end up on different file systems).
pub fn split_var(
    root: &mut FileTree,
    cfg: &SystemConfig,
    ctx: &ProfileContext,
) -> anyhow::Result<FileTree> {
    let overlays = plan_overlays(cfg, ctx)?;
    split_var_planned(root, &overlays, ctx)
}

fn split_var_planned(
    root: &mut FileTree,
    overlays: &[OverlayPlan],
    ctx: &ProfileContext,
) -> anyhow::Result<FileTree> {
    let mtime = Timestamp::from_seconds(ctx.source_date_epoch);
    let generated_dir = Metadata::new(0o755, 0, 0, mtime);
    let mount = normal(&ctx.data_mount, "the Data partition's mount point")?;
    let mount_parts: Vec<&[u8]> = components(mount.as_bytes()).collect();
    let Some((mount_name, mount_parents)) = mount_parts.split_last() else {
        bail!(UsageError::new("the Data partition cannot be mounted at '/'"));
    };

    let existing = root.lookup(mount.as_bytes());
    let mount_meta = match existing {
        Some(id) if root.node(id).kind.is_dir() => root.node(id).meta.clone(),
        Some(id) => bail!(UsageError::new(format!(
            "the source's {mount} is a {}, not a directory: it cannot hold the Data partition's content",
            root.node(id).kind.type_name()
        ))),
        None => generated_dir.clone(),
    };
    let mut data = FileTree::new(mount_meta.clone());
    if let Some(var_id) = existing {
        copy_subtree(root, var_id, &mut data)
            .with_context(|| format!("moving {mount} to the Data partition"))?;
    }
    let parent = root
        .make_dirs(mount_parents, &generated_dir)
        .with_context(|| format!("making the mount point {mount} in the root"))?;
    root.unlink(parent, mount_name);
    root.add(
        parent,
        mount_name,
        Node { meta: mount_meta, kind: NodeKind::Directory(BTreeMap::new()) },
    )
    .with_context(|| format!("making the mount point {mount} in the root"))?;

    for overlay in overlays {
        // The lower directory must exist in the read-only root to be mounted over.
        let lower_perms = if overlay.dir == "/root" { 0o700 } else { 0o755 };
        let lower_meta = match root.lookup(overlay.dir.as_bytes()) {
            Some(id) if root.node(id).kind.is_dir() => root.node(id).meta.clone(),
            Some(id) => bail!(UsageError::new(format!(
                "system.overlays.paths: the source's {} is a {}, not a directory",
                overlay.dir,
                root.node(id).kind.type_name()
            ))),
            None => {
                let parts: Vec<&[u8]> = components(overlay.dir.as_bytes()).collect();
                let id =
                    root.make_dirs(&parts, &Metadata::new(lower_perms, 0, 0, mtime)).with_context(
                        || format!("making the overlaid directory {} in the root", overlay.dir),
                    )?;
                root.node(id).meta.clone()
            }
        };
        // overlayfs shows the upper directory's owner and mode on the merged
        // directory, so the upper copies the lower's.
        let mut upper_meta = lower_meta;
        upper_meta.mtime = mtime;
        for (path, meta) in
            [(&overlay.upper, upper_meta), (&overlay.work, Metadata::new(0o700, 0, 0, mtime))]
        {
            let inside = path.strip_prefix(&mount).unwrap_or(path);
            data.put(
                inside.as_bytes(),
                Node { meta, kind: NodeKind::Directory(BTreeMap::new()) },
                &generated_dir,
            )
            .with_context(|| format!("making {path} on the Data partition"))?;
        }
    }
    Ok(data)
}

/// Copies the subtree under `src_dir` of `src` into the root of `dst`
/// (whose root directory already exists), keeping hard links among the copied nodes.
fn copy_subtree(src: &FileTree, src_dir: NodeId, dst: &mut FileTree) -> anyhow::Result<()> {
    let mut copied: HashMap<NodeId, NodeId> = HashMap::new();
    let mut stack: Vec<(NodeId, NodeId)> = vec![(src_dir, dst.root())];
    while let Some((from_dir, to_dir)) = stack.pop() {
        for (name, child) in src.children(from_dir) {
            let node = src.node(child);
            if node.kind.is_dir() {
                let new_dir = dst.add(
                    to_dir,
                    name,
                    Node { meta: node.meta.clone(), kind: NodeKind::Directory(BTreeMap::new()) },
                )?;
                stack.push((child, new_dir));
            } else if let Some(&existing) = copied.get(&child) {
                dst.link(to_dir, name, existing)?;
            } else {
                let new = dst.add(to_dir, name, node.clone())?;
                copied.insert(child, new);
            }
        }
    }
    Ok(())
}

/// Resolves symlinks along `path` inside `tree` (absolute targets are relative
/// to the tree's root, `..` stops at the root), giving the path of the entry it
/// names in normal form. The last component need not exist. `None` for a
/// symlink loop or a component that is not a directory.
pub fn resolve_in_tree(tree: &FileTree, path: &str) -> Option<String> {
    let mut pending: Vec<String> =
        path.split('/').filter(|p| !p.is_empty()).rev().map(str::to_string).collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate =
            format!("/{}", resolved.iter().chain([&part]).cloned().collect::<Vec<_>>().join("/"));
        match tree.lookup(candidate.as_bytes()).map(|id| &tree.node(id).kind) {
            Some(NodeKind::Symlink(target)) => {
                hops += 1;
                if hops > 40 {
                    return None;
                }
                let target = String::from_utf8_lossy(target).into_owned();
                if target.starts_with('/') {
                    resolved.clear();
                }
                pending
                    .extend(target.split('/').filter(|p| !p.is_empty()).rev().map(str::to_string));
            }
            Some(NodeKind::Directory(_)) => resolved.push(part),
            Some(_) | None => {
                if !pending.is_empty() {
                    return None;
                }
                resolved.push(part);
            }
        }
    }
    Some(format!("/{}", resolved.join("/")))
}

/// Reads a regular file of `tree` (no symlink following) up to `limit` bytes.
pub(crate) fn read_tree_file(
    tree: &FileTree,
    path: &str,
    limit: u64,
) -> anyhow::Result<Option<Vec<u8>>> {
    let Some(id) = tree.lookup(path.as_bytes()) else {
        return Ok(None);
    };
    let NodeKind::File(content) = &tree.node(id).kind else {
        return Ok(None);
    };
    if content.len() > limit {
        bail!(
            "{path} in the root is larger than {limit} bytes; it is not a configuration file abforge can edit"
        );
    }
    let len = usize::try_from(content.len()).context("file length")?;
    let mut buf = vec![0u8; len];
    content
        .read_exact_at(&mut buf, 0)
        .with_context(|| format!("reading {path} of the root ({})", content.describe()))?;
    Ok(Some(buf))
}

/// Writes generated entries into the root (and Data) trees, remembering what it did.
pub(crate) struct Composer<'a> {
    pub root: &'a mut FileTree,
    pub data: &'a mut FileTree,
    pub base_dir: &'a Path,
    /// Normal form of the Data mount point: entries under it go to `data`.
    pub data_mount: &'a str,
    pub mtime: Timestamp,
    pub written: Vec<String>,
    pub removed: Vec<String>,
    pub warnings: Vec<String>,
}

impl Composer<'_> {
    pub fn meta(&self, permissions: u16) -> Metadata {
        Metadata::new(permissions, 0, 0, self.mtime)
    }

    pub fn warn(&mut self, message: String) {
        self.warnings.push(message);
    }

    /// Places a node owned by root at `path` of the root.
    pub fn put_node(
        &mut self,
        path: &str,
        kind: NodeKind,
        permissions: u16,
    ) -> anyhow::Result<NodeId> {
        let meta = self.meta(permissions);
        self.put_node_with(path, Node { meta, kind })
    }

    /// Places `node` at `path`, in the Data tree when the path is under its mount point.
    pub fn put_node_with(&mut self, path: &str, node: Node) -> anyhow::Result<NodeId> {
        let dir_meta = self.meta(0o755);
        let (tree, inside) = self.tree_for(path);
        let id = tree
            .put(inside.as_bytes(), node, &dir_meta)
            .with_context(|| format!("writing {path} into the image"))?;
        self.written.push(path.to_string());
        Ok(id)
    }

    /// The tree a path of the running system lives in, and the path inside it.
    fn tree_for<'p>(&mut self, path: &'p str) -> (&mut FileTree, &'p str) {
        match path.strip_prefix(self.data_mount) {
            Some(rest) if rest.starts_with('/') => (&mut *self.data, rest),
            _ => (&mut *self.root, path),
        }
    }

    pub fn put_text(&mut self, path: &str, text: &str, permissions: u16) -> anyhow::Result<NodeId> {
        self.put_node(path, NodeKind::File(Content::Bytes(Arc::from(text.as_bytes()))), permissions)
    }

    pub fn put_symlink(&mut self, path: &str, target: &str) -> anyhow::Result<NodeId> {
        self.put_node(path, NodeKind::Symlink(target.as_bytes().to_vec()), 0o777)
    }

    /// Makes sure `path` is a directory of the root owned by root with `permissions`,
    /// keeping its content when it exists.
    pub fn make_dir(&mut self, path: &str, permissions: u16) -> anyhow::Result<NodeId> {
        let parts: Vec<&[u8]> = components(path.as_bytes()).collect();
        let dir_meta = self.meta(0o755);
        let id = self
            .root
            .make_dirs(&parts, &dir_meta)
            .with_context(|| format!("making the directory {path} in the root"))?;
        self.root.node_mut(id).meta = self.meta(permissions);
        Ok(id)
    }

    /// Enables a unit of [`UNIT_DIR`] for `target` with a symlink in the vendor
    /// `<target>.wants/` directory, so it cannot be disabled from the writable /etc
    /// (only masked).
    pub fn enable_unit(&mut self, unit: &str, target: &str) -> anyhow::Result<()> {
        self.put_symlink(&format!("{UNIT_DIR}/{target}.wants/{unit}"), &format!("../{unit}"))?;
        Ok(())
    }

    /// Replaces the metadata of the entry at `path` (a directory kept with its content).
    pub fn set_meta(&mut self, path: &str, meta: Metadata) {
        let (tree, inside) = self.tree_for(path);
        if let Some(id) = tree.lookup(inside.as_bytes()) {
            tree.node_mut(id).meta = meta;
        }
        self.written.push(path.to_string());
    }

    pub fn read_root_file(&self, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
        read_tree_file(self.root, path, MAX_EDITED_FILE)
    }

    /// What is at `path` (in the Data tree when under its mount point).
    pub fn lookup_kind(&self, path: &str) -> Option<&NodeKind> {
        let (tree, inside): (&FileTree, &str) = match path.strip_prefix(self.data_mount) {
            Some(rest) if rest.starts_with('/') => (self.data, rest),
            _ => (self.root, path),
        };
        tree.lookup(inside.as_bytes()).map(|id| &tree.node(id).kind)
    }

    /// Removes `path` from the root; records it when something was there.
    pub fn remove(&mut self, path: &str) -> bool {
        let (tree, inside) = self.tree_for(path);
        let parts: Vec<&[u8]> = components(inside.as_bytes()).collect();
        let Some((name, parents)) = parts.split_last() else {
            return false;
        };
        let parent_path = parents.join(&b'/');
        let Some(parent) = tree.lookup(&parent_path) else {
            return false;
        };
        if tree.unlink(parent, name).is_some() {
            self.removed.push(path.to_string());
            true
        } else {
            false
        }
    }
}
