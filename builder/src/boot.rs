//! The boot chain of an image (`boot:` in the manifest): what goes on each Boot
//! partition (kernel, initramfs, that slot's `abforge/grub.cfg`) and on each ESP
//! (GRUB as `\EFI\BOOT\BOOTX64.EFI`, the A/B selector and its environment block).
//!
//! The kernel and its modules come from the root tree (`/boot/vmlinuz-*`,
//! `/lib/modules/<version>`) or from a directory laid out the same way. The
//! initramfs holds abforge-init as `/init`, the closure of the modules it needs
//! and their load list. Everything is checked before anything is written; only
//! each slot's command line waits for the build, since it carries the root hash.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use abforge_kernels::Slot;
use abforge_kernels::cmdline::{
    Cmdline, DeviceRef, HashAlgorithm, InitParams, Param, RootStyle, VerityParams,
};
use abforge_kernels::cpio::{Compression, Initramfs};
use abforge_kernels::grub::{
    ENVBLK_PATH, SELECTOR_PATH, SLOT_CONFIG_PATH, SelectorConfig, SelectorSlot, SlotConfig,
    SlotState, render_selector, render_slot_config,
};
use abforge_kernels::modules::{
    Aliases, LOAD_LIST_PATH, ModuleIndex, ModulesDep, SoftDeps, parse_builtin, render_load_list,
};
use abforge_partitions::tree::{Content, FileTree, Metadata, Node, NodeKind, Timestamp};
use serde::Deserialize;

use crate::build::parse_hex;
use crate::manifest::{ManifestError, SourceLocation, Spanned, location_of};
use crate::plan::{Contents, Plan, PlannedPartition};
use crate::profile::resolve_in_tree;
use crate::report::VerityReport;
use crate::source::{SourceOptions, load_source};

/// `boot:` in the manifest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSpec {
    /// `from-rootfs` (the default), or a directory holding `boot/vmlinuz-<version>`
    /// and `lib/modules/<version>` (an unpacked kernel package).
    #[serde(default)]
    pub kernel: Option<Spanned<String>>,
    /// abforge-init, the static PID 1 of the initramfs (`make init` builds it).
    #[serde(default)]
    pub init: Option<Spanned<String>>,
    /// A ready initrd to use instead of building one (for a systemd initrd).
    #[serde(default)]
    pub initrd: Option<Spanned<String>>,
    /// The GRUB EFI binary installed as `\EFI\BOOT\BOOTX64.EFI`; its embedded
    /// config must search for and run `/EFI/abforge/select.cfg` (README).
    pub bootloader: Spanned<String>,
    /// Extra kernel parameters, appended after abforge's (put `console=` last).
    #[serde(default)]
    pub cmdline: Option<Spanned<String>>,
    /// Modules the initramfs loads besides the defaults (their dependencies follow).
    #[serde(default)]
    pub modules: Vec<Spanned<String>>,
    /// How the root is described on the command line.
    #[serde(default)]
    pub root_style: Option<Spanned<RootStyleName>>,
    /// Seconds GRUB's hidden menu waits (default 0).
    #[serde(default)]
    pub timeout: Option<u32>,
    /// Also drive GRUB's console on the first serial port (default true).
    #[serde(default)]
    pub serial_console: Option<bool>,
}

/// Names of [`RootStyle`] in manifests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RootStyleName {
    /// abforge-init's `abforge.*` parameters.
    Abforge,
    /// A systemd initrd with `systemd.verity_root_*` parameters.
    Systemd,
}

/// Modules every abforge initramfs tries to load: disk drivers for qemu
/// (virtio) and Hyper-V, and what the root needs. Absent ones are skipped.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "hv_vmbus",
    "hv_storvsc",
    "ext4",
    "dm-verity",
    "overlay",
];

/// Everything the boot chain needs, read and checked before the build writes.
#[derive(Debug, Clone)]
pub struct BootPayload {
    kernel_name: String,
    kernel: Content,
    initrd_name: String,
    initrd: Content,
    bootloader: Content,
    user_params: Vec<Param>,
    style: RootStyle,
    timeout: u32,
    serial_console: bool,
    mtime: Timestamp,
    /// Modules in the initramfs, in load order.
    pub modules: Vec<String>,
    /// Default modules that the kernel does not have.
    pub skipped_modules: Vec<String>,
}

fn at<T>(plan: &Plan, spanned: &Spanned<T>, message: String) -> ManifestError {
    ManifestError { location: Some(location_of(&plan.manifest_path, spanned)), message }
}

/// The bytes of a regular file of `tree` at `path`, following symlinks.
fn tree_file(tree: &FileTree, path: &str) -> Option<Content> {
    let resolved = resolve_in_tree(tree, path)?;
    match &tree.node(tree.lookup(resolved.as_bytes())?).kind {
        NodeKind::File(content) => Some(content.clone()),
        _ => None,
    }
}

fn read_all(content: &Content) -> std::io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; usize::try_from(content.len()).unwrap_or(usize::MAX)];
    content.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

/// Whether `bytes` start an x86-64 PE image (what UEFI firmware runs).
fn is_x86_64_pe(bytes: &[u8]) -> bool {
    let u32_at =
        |at: usize| bytes.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let Some(pe) = u32_at(0x3c).and_then(|p| usize::try_from(p).ok()) else { return false };
    bytes.starts_with(b"MZ")
        && bytes.get(pe..pe + 4) == Some(b"PE\0\0")
        && bytes.get(pe + 4..pe + 6) == Some(&[0x64, 0x86][..])
}

fn host_file(plan: &Plan, spanned: &Spanned<String>, what: &str) -> Result<Vec<u8>, ManifestError> {
    let path = plan.manifest_path.parent().unwrap_or(Path::new(".")).join(&spanned.value);
    std::fs::read(&path).map_err(|e| {
        at(plan, spanned, format!("boot: cannot read the {what} {}: {e}", path.display()))
    })
}

/// Reads and checks the boot chain's inputs.
pub fn prepare_boot(
    plan: &Plan,
    spec: &BootSpec,
    root: Option<&FileTree>,
) -> Result<BootPayload, Vec<ManifestError>> {
    let mut errors = Vec::new();
    let base_dir = plan.manifest_path.parent().unwrap_or(Path::new("."));

    let bootloader = match host_file(plan, &spec.bootloader, "bootloader") {
        Ok(bytes) if is_x86_64_pe(&bytes) => Some(Content::Bytes(Arc::from(bytes))),
        Ok(_) => {
            errors.push(at(plan, &spec.bootloader, format!("boot: the bootloader {} is not an x86-64 PE image (UEFI firmware cannot run it)", spec.bootloader.value)));
            None
        }
        Err(e) => {
            errors.push(e);
            None
        }
    };

    // The tree the kernel and modules come from.
    let kernel_tree_owned;
    let kernel_tree = match &spec.kernel {
        Some(k) if k.value != "from-rootfs" => {
            let path = base_dir.join(&k.value);
            match load_source(&path, &SourceOptions::default()) {
                Ok(tree) => {
                    kernel_tree_owned = tree;
                    Some(&kernel_tree_owned)
                }
                Err(e) => {
                    errors.push(at(
                        plan,
                        k,
                        format!("boot: cannot read the kernel directory {}: {e:#}", path.display()),
                    ));
                    None
                }
            }
        }
        _ => root,
    };
    let kernel_location = spec.kernel.as_ref().map_or_else(
        || location_of(&plan.manifest_path, &spec.bootloader),
        |k| location_of(&plan.manifest_path, k),
    );
    let kernel = kernel_tree.and_then(|tree| match find_kernel(tree) {
        Ok(found) => Some(found),
        Err(message) => {
            errors.push(ManifestError { location: Some(kernel_location.clone()), message });
            None
        }
    });

    let mut modules = Vec::new();
    let mut skipped = Vec::new();
    let mut initrd = None;
    if let (Some(tree), Some((version, _))) = (kernel_tree, &kernel) {
        match (&spec.init, &spec.initrd) {
            (Some(init), None) => match build_initramfs(plan, spec, tree, version, init, &kernel_location) {
                Ok(built) => {
                    initrd = Some(Content::Bytes(Arc::from(built.bytes)));
                    modules = built.modules;
                    skipped = built.skipped;
                }
                Err(mut e) => errors.append(&mut e),
            },
            (None, Some(given)) => match host_file(plan, given, "initrd") {
                Ok(bytes) => initrd = Some(Content::Bytes(Arc::from(bytes))),
                Err(e) => errors.push(e),
            },
            _ => errors.push(at(plan, &spec.bootloader, "boot: give exactly one of init (abforge-init, to build the initramfs) and initrd (a ready one)".to_string())),
        }
    }

    let user_params = match &spec.cmdline {
        Some(text) => match abforge_kernels::cmdline::split_kernel_args(&text.value) {
            Ok(params) => params,
            Err(e) => {
                errors.push(at(plan, text, format!("boot: cmdline: {e}")));
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    let style = match spec.root_style.as_ref().map(|s| s.value) {
        None | Some(RootStyleName::Abforge) => RootStyle::Abforge,
        Some(RootStyleName::Systemd) => RootStyle::SystemdExplicit,
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let (Some((version, kernel)), Some(initrd), Some(bootloader)) = (kernel, initrd, bootloader)
    else {
        return Err(vec![at(plan, &spec.bootloader, "boot: incomplete boot inputs".to_string())]);
    };
    let payload = BootPayload {
        kernel_name: format!("vmlinuz-{version}"),
        kernel,
        initrd_name: format!("initrd.img-{version}"),
        initrd,
        bootloader,
        user_params,
        style,
        timeout: spec.timeout.unwrap_or(0),
        serial_console: spec.serial_console.unwrap_or(true),
        mtime: Timestamp::from_seconds(plan.source_date_epoch),
        modules,
        skipped_modules: skipped,
    };
    // Every slot's command line, with a root hash of the real length, must be valid now.
    for partition in plan.partitions.iter().filter(|p| p.contents == Some(Contents::Boot)) {
        let placeholder = placeholder_verity(plan, partition);
        if let Err(message) = payload.slot_config(plan, partition, placeholder.as_ref()) {
            errors.push(ManifestError { location: partition.contents_location.clone(), message });
        }
    }
    if errors.is_empty() { Ok(payload) } else { Err(errors) }
}

/// `boot/vmlinuz-<version>` of a tree: exactly one.
fn find_kernel(tree: &FileTree) -> Result<(String, Content), String> {
    let boot = tree
        .lookup(b"boot")
        .ok_or("boot: the kernel tree has no /boot directory (no kernel installed?)")?;
    let versions: Vec<String> = tree
        .children(boot)
        .filter_map(|(name, _)| {
            std::str::from_utf8(name).ok()?.strip_prefix("vmlinuz-").map(str::to_string)
        })
        .collect();
    let version = match versions.as_slice() {
        [one] => one.clone(),
        [] => return Err("boot: no /boot/vmlinuz-<version> in the kernel tree: install a kernel (linux-image-amd64)".to_string()),
        many => return Err(format!("boot: several kernels in /boot ({}): keep one", many.join(", "))),
    };
    let kernel = tree_file(tree, &format!("boot/vmlinuz-{version}"))
        .ok_or_else(|| format!("boot: /boot/vmlinuz-{version} is not a regular file"))?;
    Ok((version, kernel))
}

/// An initramfs and what went into it.
struct BuiltInitramfs {
    /// The gzip-compressed newc archive.
    bytes: Vec<u8>,
    /// Modules it loads, in order.
    modules: Vec<String>,
    /// Default modules the kernel does not have.
    skipped: Vec<String>,
}

/// The initramfs: abforge-init, /dev/console, the modules and their load list.
fn build_initramfs(
    plan: &Plan,
    spec: &BootSpec,
    tree: &FileTree,
    version: &str,
    init: &Spanned<String>,
    kernel_location: &SourceLocation,
) -> Result<BuiltInitramfs, Vec<ManifestError>> {
    let located =
        |message: String| vec![ManifestError { location: Some(kernel_location.clone()), message }];
    let init_bytes = host_file(plan, init, "init").map_err(|e| vec![e])?;
    let dir = format!("lib/modules/{version}");
    let read = |name: &str| {
        tree_file(tree, &format!("{dir}/{name}"))
            .and_then(|c| read_all(&c).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let dep_text = read("modules.dep").ok_or_else(|| {
        located(format!("boot: /{dir}/modules.dep is missing: run `depmod {version}` in the root (a kernel installed by apt has it)"))
    })?;
    let index = ModuleIndex {
        dep: ModulesDep::parse(&dep_text)
            .map_err(|e| located(format!("boot: /{dir}/modules.dep: {e}")))?,
        softdeps: read("modules.softdep")
            .and_then(|t| SoftDeps::parse(&t).ok())
            .unwrap_or_default(),
        aliases: read("modules.alias").and_then(|t| Aliases::parse(&t).ok()).unwrap_or_default(),
        builtin: read("modules.builtin").map(|t| parse_builtin(&t)).unwrap_or_default(),
    };
    // Listed modules must exist; defaults the kernel lacks are skipped.
    let mut errors = Vec::new();
    for module in &spec.modules {
        if let Err(e) = index.closure(&[module.value.as_str()]) {
            errors.push(at(plan, module, format!("boot: module '{}': {e}", module.value)));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut wanted: Vec<String> = Vec::new();
    let mut skipped = Vec::new();
    for name in DEFAULT_MODULES {
        if index.closure(&[*name]).is_ok() {
            wanted.push((*name).to_string());
        } else {
            skipped.push((*name).to_string());
        }
    }
    wanted.extend(spec.modules.iter().map(|m| m.value.clone()));
    let closure = index.closure(&wanted).map_err(|e| located(format!("boot: modules: {e}")))?;

    let mtime = u32::try_from(plan.source_date_epoch.max(0)).unwrap_or(u32::MAX);
    let mut initramfs = Initramfs::new(mtime);
    let fail =
        |e: abforge_kernels::cpio::CpioError| located(format!("boot: building the initramfs: {e}"));
    for dir in ["proc", "sys", "dev", "run", "sysroot", "etc/abforge"] {
        initramfs.add_dir(dir, 0o755).map_err(fail)?;
    }
    initramfs.add_char_device("dev/console", 0o600, 5, 1).map_err(fail)?;
    initramfs.add_file("init", 0o755, Content::Bytes(Arc::from(init_bytes))).map_err(fail)?;
    for module in &closure {
        let path = format!("{dir}/{}", module.path);
        let content = tree_file(tree, &path).ok_or_else(|| {
            located(format!("boot: /{path} is listed in modules.dep but missing"))
        })?;
        initramfs.add_file(&path, 0o644, content).map_err(fail)?;
    }
    initramfs
        .add_file(
            LOAD_LIST_PATH,
            0o644,
            Content::Bytes(Arc::from(render_load_list(&closure).into_bytes())),
        )
        .map_err(fail)?;
    let bytes = initramfs.write(Compression::Gzip, Vec::new()).map_err(fail)?;
    Ok(BuiltInitramfs { bytes, modules: closure.into_iter().map(|m| m.name).collect(), skipped })
}

/// A verity entry with a root hash of the right length, to check command lines
/// before the real root hash exists.
pub fn placeholder_verity(plan: &Plan, boot: &PlannedPartition) -> Option<VerityReport> {
    let root = slot_root(plan, boot)?;
    let hash_partition = root
        .hash_partition
        .and_then(|index| plan.partitions.iter().find(|p| p.index == index))
        .map(|p| p.name.clone());
    (root.verity != crate::manifest::VerityMode::None).then(|| VerityReport {
        partition: root.name.clone(),
        slot: root.slot.clone(),
        root_hash: "0".repeat(64),
        salt: "0".repeat(64),
        hash_algorithm: "sha256".to_string(),
        data_block_size: 4096,
        hash_block_size: 4096,
        data_blocks: root.fs_size / 4096,
        hash_offset: if hash_partition.is_some() { 0 } else { root.fs_size },
        hash_partition,
    })
}

/// The root partition of the Boot partition's slot.
fn slot_root<'a>(plan: &'a Plan, boot: &PlannedPartition) -> Option<&'a PlannedPartition> {
    plan.partitions.iter().find(|p| p.slot == boot.slot && p.contents == Some(Contents::Rootfs))
}

impl BootPayload {
    /// The slot's `grub.cfg`: kernel, initrd and command line (with the root hash).
    fn slot_config(
        &self,
        plan: &Plan,
        boot: &PlannedPartition,
        verity: Option<&VerityReport>,
    ) -> Result<String, String> {
        let slot_name = boot.slot.as_deref().ok_or_else(|| {
            format!("partition '{}' takes boot contents but is not per_slot", boot.name)
        })?;
        let slot: Slot = slot_name.parse().map_err(|e| format!("slot '{slot_name}': {e}"))?;
        let root = slot_root(plan, boot).ok_or_else(|| {
            format!("slot {slot_name} has no partition with contents: rootfs to boot")
        })?;
        let mut params = InitParams::new(slot.clone(), DeviceRef::PartUuid(root.uuid));
        params.verity = verity.map(|v| VerityParams {
            root_hash: parse_hex(&v.root_hash).unwrap_or_default(),
            salt: parse_hex(&v.salt).unwrap_or_default(),
            hash_device: v
                .hash_partition
                .as_ref()
                .and_then(|name| plan.partitions.iter().find(|p| &p.name == name))
                .map(|p| DeviceRef::PartUuid(p.uuid)),
            hash_offset: v.hash_offset,
            data_blocks: v.data_blocks,
            data_block_size: v.data_block_size,
            hash_block_size: v.hash_block_size,
            hash_algorithm: HashAlgorithm::Sha256,
        });
        let by_mount = |mount: &str| {
            plan.partitions
                .iter()
                .find(|p| p.mount.as_deref() == Some(mount))
                .map(|p| DeviceRef::PartUuid(p.uuid))
        };
        params.data = by_mount(crate::inputs::DATA_MOUNT);
        params.log = by_mount(crate::inputs::LOG_MOUNT);
        let mut cmdline = Cmdline::new();
        cmdline
            .extend(params.to_params(self.style).map_err(|e| format!("boot: {e}"))?)
            .map_err(|e| format!("boot: {e}"))?;
        cmdline
            .extend(self.user_params.iter().cloned())
            .map_err(|e| format!("boot: cmdline: {e}"))?;
        cmdline.render().map_err(|e| format!("boot: cmdline of slot {slot_name}: {e}"))?;
        let config = SlotConfig {
            slot,
            kernel: format!("/{}", self.kernel_name),
            initrd: format!("/{}", self.initrd_name),
            params: cmdline.params().to_vec(),
        };
        render_slot_config(&config).map_err(|e| format!("boot: grub.cfg of slot {slot_name}: {e}"))
    }

    fn meta(&self, permissions: u16) -> Metadata {
        Metadata::new(permissions, 0, 0, self.mtime)
    }

    fn put(&self, tree: &mut FileTree, path: &str, bytes: Content) -> anyhow::Result<()> {
        tree.put(
            path.as_bytes(),
            Node { meta: self.meta(0o644), kind: NodeKind::File(bytes) },
            &self.meta(0o755),
        )?;
        Ok(())
    }

    /// The tree of a slot's Boot partition, once its root hash is known.
    pub fn boot_tree(
        &self,
        plan: &Plan,
        boot: &PlannedPartition,
        verity: Option<&VerityReport>,
    ) -> anyhow::Result<FileTree> {
        let config = self.slot_config(plan, boot, verity).map_err(anyhow::Error::msg)?;
        let mut tree = FileTree::new(self.meta(0o755));
        self.put(&mut tree, &self.kernel_name, self.kernel.clone())?;
        self.put(&mut tree, &self.initrd_name, self.initrd.clone())?;
        self.put(&mut tree, SLOT_CONFIG_PATH, Content::Bytes(Arc::from(config.into_bytes())))?;
        Ok(tree)
    }

    /// An ESP's tree: its own contents, plus GRUB, the selector and the
    /// environment block (default: the first slot).
    pub fn esp_tree(
        &self,
        plan: &Plan,
        base: Option<&FileTree>,
        boot_fs_uuids: &BTreeMap<String, abforge_partitions::Guid>,
    ) -> anyhow::Result<FileTree> {
        let mut tree = base.cloned().unwrap_or_else(|| FileTree::new(self.meta(0o755)));
        let slots = plan
            .slots
            .iter()
            .filter_map(|s| {
                Some(SelectorSlot { slot: s.parse().ok()?, boot_fs_uuid: *boot_fs_uuids.get(s)? })
            })
            .collect::<Vec<_>>();
        let first = slots
            .first()
            .map(|s| s.slot.clone())
            .ok_or_else(|| anyhow::anyhow!("no slot has a Boot partition"))?;
        let selector = render_selector(&SelectorConfig {
            slots,
            timeout_seconds: self.timeout,
            serial_console: self.serial_console,
        })?;
        self.put(&mut tree, "EFI/BOOT/BOOTX64.EFI", self.bootloader.clone())?;
        self.put(&mut tree, SELECTOR_PATH, Content::Bytes(Arc::from(selector.into_bytes())))?;
        let envblk = SlotState::new(first).render_envblk()?;
        self.put(&mut tree, ENVBLK_PATH, Content::Bytes(Arc::from(&envblk[..])))?;
        Ok(tree)
    }
}
